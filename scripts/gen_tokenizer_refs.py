#!/usr/bin/env python3
"""Reference dumps for tests/test_hf_tokenizer.cc: small tokenizers trained offline with the Python
`tokenizers` library in the shapes of the model families moe loads, test lines, and the ids and
decoded texts `tokenizers` gives for them. The C++ test reads only these committed files.

Regenerate (the pinned oracle venv has tokenizers==0.23.3):

    cmake --build build -j2 --target moe_test_hf_tokenizer
    MOE_REGEN_TOKENIZER_EXPORTS=1 build/tests/moe_test_hf_tokenizer --gtest_filter='Export*'
    $(scripts/oracle_venv.sh) scripts/gen_tokenizer_refs.py

The second line writes moe's own tokenizers exported as tokenizer.json (moe_export/*.json, see
Tokenizer::to_hf_tokenizer_json); this script then loads them with `tokenizers` and dumps their
ids too. Everything is deterministic: the same inputs give byte-identical files.

Families (tests/data/tokenizers/<name>/):
  qwen2     byte-level BPE, NFC, the Qwen2 Split regex, <|im_start|> / <|im_end|> / <|endoftext|>,
            non-special <think> </think>
  llama3    byte-level BPE, the Llama 3 Split regex, ignore_merges, TemplateProcessing BOS,
            <|python_tag|> with rstrip, a single_word added token
  olmoe     GPT-NeoX style: NFC + ByteLevel(use_regex) (the GPT-2 regex), EOS appended by the
            template, space-run added tokens with normalized=true, <mask> with lstrip
  mixtral   Llama 2 / Mixtral SentencePiece BPE: Prepend + Replace normalizer, byte_fallback with
            the 256 <0xNN> tokens, decoder Replace/ByteFallback/Fuse/Strip, <s> template, an added
            token normalized through the normalizer (<tool>, lstrip + rstrip)
  mistral_ms the same vocabulary with the newer Metaspace pre-tokenizer (prepend_scheme first)
  gpt2      GPT-2's ByteLevel(add_prefix_space=true) over the olmoe vocabulary
  misc      NFD + StripAccents + Lowercase, Whitespace / Digits / Punctuation pre-tokenizers, BPE
            with ## prefix and </w> suffix, BPEDecoder, BertProcessing
  wordlevel NFKC + Strip, WhitespaceSplit, WordLevel with [UNK], no decoder

Files: lines.jsonl (one JSON string per test line). Per family: tokenizer.json, or
tokenizer_patch.json ({"base": family, "replace": top-level fields} for gpt2 / mistral_ms, which
share a vocabulary); tokenizer_config.json (consistent with tokenizer.json: transformers would
give the same ids); generation_config.json (llama3); ids.txt (encode(line,
add_special_tokens=False).ids for the first lines: all of them for qwen2 / llama3 / olmoe /
mixtral, N_EXTRA_IDS for the others; each id as two characters, see enc_ids); special.txt (the ids
add_special_tokens=True adds around them, "prefix|suffix"; the script checks that the full ids are
prefix + ids + suffix); checksum.json (FNV-1a of the ids of every line, see fnv); decode.jsonl
(for the first N_DECODE lines: [decode(ids), decode(ids, skip_special_tokens=True)] and, for the
first N_DECODE_FULL, the same for the ids with special tokens; null where equal to the line / to
the entry before). moe_export/: <kind>.tokenizer.json (written by the C++ test), <kind>.ids.txt
(char, bpe: the first N_EXPORT_IDS lines), checksums.json (byte, char, bpe: all lines).
"""
import json
import os
import random
import shutil
import sys
import unicodedata

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "tokenizers")
N_LINES = 5200
N_DECODE = 1500       # lines whose decoded texts are dumped
N_DECODE_FULL = 300   # ... also with the special tokens of the post-processor
N_EXTRA_IDS = 1000    # lines whose ids are dumped for the extra families (checksums cover all)
N_EXPORT_IDS = 1000

QWEN2_RE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_RE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


# ---- test lines ---------------------------------------------------------------------------------

CJK = ["我爱自然语言处理", "今天天气很好。", "東京は日本の首都です", "こんにちは、世界！", "한국어 텍스트 처리",
       "机器学习与深度神经网络", "你好，世界！", "中文标点：「引号」『书名』", "ＡＢＣ１２３ｘｙｚ", "ｶﾀｶﾅ ﾃｽﾄ",
       "汉字", "漢字かな交じり文", "龍", "一二三四五六七八九十", "ㄅㄆㄇ", "가나다라마바사"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "1️⃣", "❤️", "🧑🏿‍💻", "🤖", "🎉🎉🎉", "👩🏻‍🔬",
         "✌🏾", "🫠", "☕", "👋🏼 hi", "😂😂", "🐍🦀", "🧬"]
SCRIPTS = ["مرحبا بالعالم", "שלום עולם", "Привет, мир!", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Γειά σου Κόσμε",
           "ΣΊΣΥΦΟΣ ΟΔΟΣ", "ქართული", "Հայերեն", "Ελληνικά", "Tiếng Việt có dấu", "İstanbul İZMİR",
           "straße STRASSE", "ǅemal", "ﬁnance ﬂow", "Å Ω K", "Ⅻ ⅷ", "½ ¾ ²³", "٠١٢٣٤٥", "𝟘𝟙𝟚𝟛",
           "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "∑∫∂√∞", "α+β=γ", "€100 £5 ¥300", "©®™", "→←↑↓", "≤≥≠≈", "ſ ﬆ"]
ACCENTED = ["café", "naïve", "résumé", "Ångström", "Crème brûlée", "São Paulo", "Zoë", "Ñandú", "Ærøskøbing",
            "façade", "jalapeño", "Tiếng Việt", "한글", "Ελληνικά", "öäüÖÄÜ", "señor", "coöperate", "Dvořák"]
CONTRACTIONS = ["I'm", "don't", "WE'LL", "she'S", "y'all", "'tis", "rock'n'roll", "O'Neil", "it’s", "You'VE",
                "they'd", "I'D", "can't", "'s", "'", "''", "it's'", "Bob's"]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<unk>", "<|begin_of_text|>",
            "<|eot_id|>", "<|python_tag|>", "<|start_header_id|>", "<|end_header_id|>", "<think>", "</think>",
            "<mask>", "<tool>", "[INST]", "[/INST]", "[CLS]", "[SEP]", "[UNK]", "foo_bar", "|||EMAIL_ADDRESS|||",
            "<|padding|>", "<|end_of_text|>"]
PARTIAL = ["<|im_", "<s", "</s >", "<|endoftext", "|>", "<>", "< s>", "foo_barbaz", "xfoo_bar", "foo_bar_",
           "<mas", "<<s>>", "<tool >"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "   \n  ", " \t ", "\n\n\n\n", "\u00a0", "\u3000", "\u2009",
          "\u200b", "\u0085", "\u2028", "\ufeff", "\u180e", "\u202f", " \u00a0 ", "\t\t", "\x0b", "\x0c", "\r"]
CONTROL = ["\x00", "\x01", "\x1b[31mred\x1b[0m", "\x7f", "\x08", "a\x00b"]
WORDS = ["alpha", "beta", "gamma", "delta", "value", "count", "index", "item", "result", "buffer", "token", "model",
         "expert", "router", "layer", "weight", "grad", "step", "the", "and", "of", "King", "QUEEN", "Lord"]


def ident(rng):
    w = rng.sample(WORDS, rng.randint(1, 3))
    style = rng.randint(0, 3)
    if style == 0:
        return "_".join(x.lower() for x in w)
    if style == 1:
        return w[0].lower() + "".join(x.capitalize() for x in w[1:])
    if style == 2:
        return "_".join(x.upper() for x in w)
    return "".join(x.capitalize() for x in w)


def number(rng):
    k = rng.randint(0, 9)
    if k == 0:
        return str(rng.randint(0, 9))
    if k == 1:
        return str(rng.randint(0, 10 ** rng.randint(2, 20)))
    if k == 2:
        return f"{rng.uniform(-1000, 1000):.{rng.randint(1, 6)}f}"
    if k == 3:
        return f"{rng.randint(1, 999)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}"
    if k == 4:
        return f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if k == 5:
        return f"+1 ({rng.randint(100, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
    if k == 6:
        return hex(rng.randint(0, 2 ** 32))
    if k == 7:
        return f"{rng.randint(1, 9)}e-{rng.randint(1, 30)}"
    if k == 8:
        return "abc" + str(rng.randint(0, 999)) + "def" + str(rng.randint(0, 99999))
    return "1" * rng.randint(10, 45)


def code(rng):
    a, b, n = ident(rng), ident(rng), rng.randint(0, 1000)
    templates = [
        f"def {a}({b}, x=None):\n    return {b} + {n}  # add",
        f"for (int i = 0; i < {n}; ++i) {{ {a}[i] += {b}; }}",
        f"if {a} == None:\n\treturn -1\nelse:\n\treturn {b}",
        f'{{"{a}": "{b}", "n": {n}, "ok": true, "list": [1, 2, 3]}}',
        f"SELECT * FROM {a} WHERE id = {n};",
        f"const {a} = ({b}) => {b} ** 2;  // square",
        f"#include <vector>\nstd::vector<int> {a}{{1, 2, 3}};",
        f"    def __init__(self):\n        self.{a} = {n}\n",
        f'<div class="{a}">Hello &amp; {b}</div>',
        f'print(f"{{{a}:.2f}}")',
        f"{a} := {b}[{n}:] ; {a}++ ;; {b}--",
        f"// TODO({a}): fix {b}!!!\n/* {n} */",
        f"$ ./run.sh --{a}={n} --{b} 2>&1 | tee log.txt",
        f"{a}->{b}.at({n}) != nullptr && *{a} >= {n}",
    ]
    return rng.choice(templates)


def corpus_slice(rng, text):
    i = rng.randrange(0, len(text) - 400)
    j = i + rng.randint(10, 120)
    while i > 0 and not text[i - 1].isspace():
        i -= 1
    return text[i:j]


def fragment(rng, corpora):
    k = rng.random()
    if k < 0.34:
        return corpus_slice(rng, rng.choice(corpora))
    if k < 0.42:
        return code(rng)
    if k < 0.48:
        return " ".join(rng.choice(CJK) for _ in range(rng.randint(1, 3)))
    if k < 0.53:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
    if k < 0.59:
        return number(rng)
    if k < 0.65:
        return rng.choice(SPACES) * rng.randint(1, 3)
    if k < 0.73:
        s = rng.choice(SPECIALS)
        return rng.choice(["", " ", "  ", "\n", "x", "Hello "]) + s + rng.choice(["", " ", "  ", "\n", "y", " world"])
    if k < 0.75:
        return rng.choice(PARTIAL)
    if k < 0.81:
        w = rng.choice(ACCENTED)
        return unicodedata.normalize(rng.choice(["NFC", "NFD"]), w)
    if k < 0.86:
        return rng.choice(SCRIPTS)
    if k < 0.91:
        return " ".join(rng.choice(CONTRACTIONS) for _ in range(rng.randint(1, 3)))
    if k < 0.93:
        return rng.choice(CONTROL)
    if k < 0.95:
        return rng.choice(["a", "=", " ", "\n", "-", "ab", "é", "0"]) * rng.randint(20, 150)
    return rng.choice(["", " ", "\n", "x", "  x  ", "X", ".", "'", "\t\n"])


def make_lines(corpora, n, seed):
    rng = random.Random(seed)
    lines = ["", " ", "\n", "  \n ", "a", "Hello world", " Hello world", "Hello  world ", "<s>", " <s> ",
             "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n", "café cafe\u0301",
             "👨‍👩‍👧‍👦", "12345678901234567890", "\t\tindented\n\n\n", "I'm here, you're there.",
             "<|begin_of_text|>Hello<|eot_id|>", "foo_bar foo_barx xfoo_bar (foo_bar)", "a <mask> b  <mask>",
             "x <tool> y<tool>z", "[INST] What is 2+2? [/INST]", "<|python_tag|>   code", "😀😀", "\u0085x\u0085"]
    while len(lines) < n:
        parts = [fragment(rng, corpora) for _ in range(rng.choice([1, 1, 1, 2, 2, 3]))]
        sep = [rng.choice(["", " ", " ", "\n", "  ", "\t", ". "]) for _ in parts]
        s = "".join(p + q for p, q in zip(parts, sep))
        lines.append(s[:160])
    return lines


# ---- tokenizers ---------------------------------------------------------------------------------

def bpe_train(tok, text_iter, vocab_size, **kw):
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, **kw)
    tok.train_from_iterator(text_iter, trainer=trainer)
    return tok


def byte_level_family(training, vocab_size, normalizer, pre):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return bpe_train(tok, training, vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def family_qwen2(training):
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = byte_level_family(training, 4000, normalizers.NFC(), pre)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in
                            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ["<think>", "</think>"]])
    cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "errors": "replace",
           "model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer"}
    return tok, cfg, None


def family_llama3(training):
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = byte_level_family(training, 4000, None, pre)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_special_tokens([AddedToken("<|python_tag|>", special=True, normalized=False, rstrip=True)])
    tok.add_tokens([AddedToken("foo_bar", special=False, normalized=True, single_word=True)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(j))
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "model_max_length": 131072,
           "tokenizer_class": "PreTrainedTokenizerFast"}
    gen = {"bos_token_id": bos, "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]}
    return tok, cfg, gen


def family_olmoe(training):
    tok = byte_level_family(training, 4000, normalizers.NFC(),
                            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True))
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False),
                            AddedToken("<|padding|>", special=True, normalized=False)])
    tok.add_tokens([AddedToken(" " * k, special=False, normalized=True) for k in (24, 8, 4, 2)])
    tok.add_tokens([AddedToken("|||EMAIL_ADDRESS|||", special=False, normalized=False)])
    tok.add_special_tokens([AddedToken("<mask>", special=True, normalized=False, lstrip=True)])
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="$A:0 <|endoftext|>:0", pair="$A:0 $B:1 <|endoftext|>:1",
                                                       special_tokens=[("<|endoftext|>", eos)])
    cfg = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|padding|>",
           "tokenizer_class": "GPTNeoXTokenizer"}
    return tok, cfg, None


def family_gpt2(olmoe_json):
    j = json.loads(olmoe_json)
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    j["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    j["added_tokens"] = [t for t in j["added_tokens"] if t["content"] == "<|endoftext|>"]
    return Tokenizer.from_str(json.dumps(j)), {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}, None


def keep_chars(texts, alphabet):
    return ["".join(c for c in t if c in alphabet) for t in texts]


def sp_vocab(training):
    """A SentencePiece-style BPE: words start with ▁, merges never cross them. Its alphabet is the
    180 most frequent characters (ties by code point; `limit_alphabet` would break ties at random),
    so rarer characters go to the byte-fallback tokens."""
    training = list(training)
    counts = {}
    for t in training:
        for c in t:
            counts[c] = counts.get(c, 0) + 1
    alphabet = set(sorted(counts, key=lambda c: (-counts[c], c))[:180]) | {" "}
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    bpe_train(tok, keep_chars(training, alphabet), 4000 - 259)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    merges = j["model"]["merges"]
    full = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        full[f"<0x{b:02X}>"] = 3 + b
    for t, i in sorted(vocab.items(), key=lambda x: x[1]):
        if t not in full:
            full[t] = len(full)
    return full, merges


def sp_json(full, merges, metaspace):
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    j = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None if metaspace else {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        if metaspace else None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": full, "merges": merges},
    }
    tok = Tokenizer.from_str(json.dumps(j))
    tok.add_special_tokens([AddedToken("[INST]", special=True, normalized=False),
                            AddedToken("[/INST]", special=True, normalized=False)])
    # normalized: matched after Prepend/Replace, i.e. as "▁<tool>" (a space or a segment start before it)
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=True, lstrip=True, rstrip=True)])
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "legacy": not metaspace, "tokenizer_class": "LlamaTokenizer",
           "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}}
    return tok, cfg, None


def family_misc(training):
    """BPE with continuing_subword_prefix "##" and end_of_word_suffix "</w>". The trainer numbers
    such symbols in hash-map order (not reproducible), so a plain BPE is trained and each token t
    becomes t, ##t, t</w> and ##t</w>, each merge (a, b) the four merges that join those forms."""
    # no characters past U+2FFF in training: CJK and emoji become [UNK]
    training = ["".join(c for c in t if ord(c) < 0x3000) for t in training]
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    base.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.Punctuation(behavior="isolated")])
    bpe_train(base, training, 900)
    j = json.loads(base.to_str())
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2}
    for t in sorted(j["model"]["vocab"], key=j["model"]["vocab"].get):
        for form in (t, "##" + t, t + "</w>", "##" + t + "</w>"):
            vocab.setdefault(form, len(vocab))
    merges = []
    for a, b in j["model"]["merges"]:
        merges += [[a, "##" + b], ["##" + a, "##" + b], [a, "##" + b + "</w>"], ["##" + a, "##" + b + "</w>"]]
    j["model"] = {"type": "BPE", "dropout": None, "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "end_of_word_suffix": "</w>", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges}
    j["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, c in enumerate(["[UNK]", "[CLS]", "[SEP]"])]
    tok = Tokenizer.from_str(json.dumps(j))
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.post_processor = processors.BertProcessing(("[SEP]", 2), ("[CLS]", 1))
    return tok, {"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]"}, None


def family_wordlevel(training):
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip(left=True, right=True)])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(training, trainer=trainers.WordLevelTrainer(vocab_size=3000, special_tokens=["[UNK]"],
                                                                        show_progress=False))
    return tok, None, None


# ---- dumps --------------------------------------------------------------------------------------

def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def enc_ids(ids):
    """Two characters per id (id = 64 * a + b over the URL-safe base64 alphabet): vocabularies here
    have fewer than 4096 tokens, and this keeps the dumps a third of their decimal size."""
    for i in ids:
        if not 0 <= i < 4096:
            sys.exit(f"id {i} does not fit the two-character encoding")
    return "".join(B64[i >> 6] + B64[i & 63] for i in ids)


def fnv(ids_per_line):
    """FNV-1a 64 over each id (4 bytes, little endian) and 0xFFFFFFFF after each line."""
    h = 0xcbf29ce484222325
    for ids in ids_per_line:
        for i in list(ids) + [0xFFFFFFFF]:
            for b in int(i).to_bytes(4, "little"):
                h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def dump_family(name, tok, cfg, gen, lines, n_ids, patch_of=None):
    """n_ids: how many lines get their ids written (the checksum covers all of them)."""
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tj = json.loads(tok.to_str())
    if patch_of is None:
        path = os.path.join(d, "tokenizer.json")
        write_json(path, tj)
        tok = Tokenizer.from_file(path)  # the oracle reads exactly the committed file
    else:
        # the same vocabulary and merges as another family: only the pipeline is stored
        with open(os.path.join(OUT, patch_of, "tokenizer.json"), encoding="utf-8") as f:
            base = json.load(f)
        replace = {k: v for k, v in tj.items() if k != "model" and base.get(k) != v}
        if tj["model"] != base["model"]:
            sys.exit(f"{name}: the model differs from {patch_of}'s")
        write_json(os.path.join(d, "tokenizer_patch.json"), {"base": patch_of, "replace": replace})
        base.update(replace)
        tok = Tokenizer.from_str(json.dumps(base))
    if cfg is not None:
        write_json(os.path.join(d, "tokenizer_config.json"), cfg)
    if gen is not None:
        write_json(os.path.join(d, "generation_config.json"), gen)
    ids_out, special_out, dec_out, all_plain = [], [], [], []
    for n, line in enumerate(lines):
        plain = tok.encode(line, add_special_tokens=False).ids
        full = tok.encode(line, add_special_tokens=True).ids
        all_plain.append(plain)
        # the post-processor only adds tokens around the text
        for k in range(len(full) - len(plain) + 1):
            if full[k:k + len(plain)] == plain:
                pre, post = full[:k], full[k + len(plain):]
                break
        else:
            sys.exit(f"{name}: ids with special tokens do not contain the plain ids for {line!r}")
        if n < n_ids:
            ids_out.append(enc_ids(plain))
            special_out.append(enc_ids(pre) + "|" + enc_ids(post))
        if n < N_DECODE:
            dp = tok.decode(plain, skip_special_tokens=False)
            dps = tok.decode(plain, skip_special_tokens=True)
            row = [None if dp == line else dp, None if dps == dp else dps]
            if n < N_DECODE_FULL:
                df = tok.decode(full, skip_special_tokens=False)
                dfs = tok.decode(full, skip_special_tokens=True)
                row += [None if df == dp else df, None if dfs == dps else dfs]
            dec_out.append(json.dumps(row, ensure_ascii=False))
    for fname, rows in (("ids.txt", ids_out), ("special.txt", special_out), ("decode.jsonl", dec_out)):
        with open(os.path.join(d, fname), "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
    write_json(os.path.join(d, "checksum.json"), {"lines": len(lines), "fnv1a64": fnv(all_plain)})
    n_tok = sum(len(r) for r in all_plain)
    print(f"{name}: vocab {tok.get_vocab_size()}, {n_tok} tokens for {len(lines)} lines", file=sys.stderr)
    return tok


def dump_moe_exports(lines):
    d = os.path.join(OUT, "moe_export")
    sums = {}
    for kind in ("byte", "char", "bpe"):
        path = os.path.join(d, kind + ".tokenizer.json")
        if not os.path.exists(path):
            print(f"moe_export: {path} missing (run the Export tests with MOE_REGEN_TOKENIZER_EXPORTS=1); skipped",
                  file=sys.stderr)
            continue
        tok = Tokenizer.from_file(path)
        rows = []
        for line in lines:
            ids = tok.encode(line, add_special_tokens=False).ids
            if kind == "byte" and ids != list(line.encode("utf-8")):
                sys.exit(f"moe_export/byte: ids are not the UTF-8 bytes of {line!r}")
            if tok.decode(ids) != line:
                sys.exit(f"moe_export/{kind}: decode(encode(x)) != x for {line!r}")
            rows.append(ids)
        sums[kind] = fnv(rows)
        if kind != "byte":  # byte ids are the bytes; the checksum covers them
            with open(os.path.join(d, kind + ".ids.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(enc_ids(r) for r in rows[:N_EXPORT_IDS]) + "\n")
    if sums:
        write_json(os.path.join(d, "checksums.json"), sums)
        print(f"moe_export: {sums}", file=sys.stderr)


def main():
    shakespeare = read("data/tinyshakespeare.txt")
    stories = read("data/tinystories_v1_train_head4mb_lowercase.txt")
    corpora = [shakespeare, stories]
    lines = make_lines(corpora, N_LINES, seed=20240601)
    # training text: the corpora plus lines drawn like the test lines (other seed), so that CJK,
    # emoji and code get merges of their own
    extra = make_lines(corpora, 6000, seed=7)
    training = [shakespeare[:800000], stories[:1200000]] + extra
    train_iter = lambda: iter(training)  # noqa: E731

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "lines.jsonl"), "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")

    dump_family("qwen2", *family_qwen2(train_iter()), lines, N_LINES)
    dump_family("llama3", *family_llama3(train_iter()), lines, N_LINES)
    olmoe = family_olmoe(train_iter())
    dump_family("olmoe", *olmoe, lines, N_LINES)
    dump_family("gpt2", *family_gpt2(olmoe[0].to_str()), lines, N_EXTRA_IDS, patch_of="olmoe")
    full, merges = sp_vocab(train_iter())
    dump_family("mixtral", *sp_json(full, merges, metaspace=False), lines, N_LINES)
    dump_family("mistral_ms", *sp_json(full, merges, metaspace=True), lines, N_EXTRA_IDS, patch_of="mixtral")
    dump_family("misc", *family_misc(train_iter()), lines, N_EXTRA_IDS)
    dump_family("wordlevel", *family_wordlevel(train_iter()), lines, N_EXTRA_IDS)
    dump_moe_exports(lines)


if __name__ == "__main__":
    main()
