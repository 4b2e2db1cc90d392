#!/usr/bin/env python3
"""GGUF reference files for tests/test_gguf.cc, written by gguf-py (the `gguf` package llama.cpp
ships, pinned 0.19.0 in the oracle venv) the way llama.cpp's convert_hf_to_gguf.py fills them.

    $(scripts/oracle_venv.sh) scripts/gen_gguf_refs.py              # writes tests/data/gguf/
    $(scripts/oracle_venv.sh) scripts/gen_gguf_refs.py --check DIR  # reads moe-written files back
    $(scripts/oracle_venv.sh) scripts/gen_gguf_refs.py --fuzz-corpus # seeds fuzz/corpus/gguf/

Writes (tests/data/gguf/):
  <model>.<type>.gguf   tiny models of tests/data/hf converted like convert_hf_to_gguf.py: its key
                        names and hyper-parameters, its tensor names, experts stacked into
                        ffn_{gate,up,down}_exps (E, F, C), the `llama` Q / K rows permuted for
                        llama.cpp's adjacent-pair RoPE (LlamaModel.permute), 1-D tensors in F32 and
                        the others in the file type. No tokenizer (the tiny models have none).
  tok_<family>.gguf     vocabulary-only files from tests/data/tokenizers/<family>/tokenizer.json
                        (+ tokenizer_config.json): tokenizer.ggml.* as convert_hf_to_gguf.py's
                        _set_vocab_gpt2 (byte-level BPE: tokens, token_type, merges, pre) and
                        _set_vocab_llama_hf (SentencePiece: tokens, scores -1000 for everything as
                        gguf-py's LlamaHfVocab gives them, token_type, no merges) fill them.
                        gguf-py's SpecialVocab adds bos / eos / unk / pad ids, add_bos_token /
                        add_eos_token and the chat template.
The test loads these and compares logits with the HF reference logits and ids with the
tokenizer.json ids.

--check DIR: every *.gguf in DIR (written by the C++ test, MOE_GGUF_EXPORT_DIR=DIR
build/tests/moe_test_gguf --gtest_filter='GgufExport*') is read with gguf-py's GGUFReader; for the
model files each tensor is compared with the HF model it came from (un-permuting llama's Q / K),
exactly for F32 and after rounding for F16 / BF16.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType, SpecialVocab, TokenType
from gguf.quants import quantize
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF = os.path.join(ROOT, "tests", "data", "hf")
TOK = os.path.join(ROOT, "tests", "data", "tokenizers")
OUT = os.path.join(ROOT, "tests", "data", "gguf")

# (hf model, file type) pairs committed: every architecture, every float type
MODELS = [("mixtral", "f32"), ("llama", "f32"), ("qwen2_moe", "f16"), ("qwen3_moe", "bf16"), ("olmoe", "f32"),
          ("qwen2", "f16"), ("qwen3", "f32")]
ARCH = {"mixtral": "llama", "llama": "llama", "llama_tied": "llama", "mistral": "llama", "qwen2": "qwen2",
        "qwen3": "qwen3", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe"}
FTYPE = {"f32": (GGMLQuantizationType.F32, 0), "f16": (GGMLQuantizationType.F16, 1), "bf16": (GGMLQuantizationType.BF16, 32)}


def permute(w, n_head, n_head_kv):
    # convert_hf_to_gguf.py LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_to_gguf_tensors(name, cfg, t):
    """{gguf name: fp32 array} in convert_hf_to_gguf.py's names and layouts."""
    arch = ARCH[name]
    H, Hkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    out = {"token_embd.weight": t["model.embed_tokens.weight"], "output_norm.weight": t["model.norm.weight"]}
    if "lm_head.weight" in t and not cfg.get("tie_word_embeddings", False):
        out["output.weight"] = t["lm_head.weight"]
    for l in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        out[b + "attn_norm.weight"] = t[p + "input_layernorm.weight"]
        out[b + "ffn_norm.weight"] = t[p + "post_attention_layernorm.weight"]
        for hf, gg in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")]:
            for suf in ("weight", "bias"):
                k = p + f"self_attn.{hf}.{suf}"
                if k not in t:
                    continue
                v = t[k]
                if arch == "llama" and hf in ("q_proj", "k_proj"):
                    v = permute(v, H, H if hf == "q_proj" else Hkv)
                out[f"{b}{gg}.{suf}"] = v
        for hf, gg in [("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")]:
            if p + f"self_attn.{hf}.weight" in t:
                out[f"{b}{gg}.weight"] = t[p + f"self_attn.{hf}.weight"]
        if name in ("mixtral",):
            moe = p + "block_sparse_moe."
            E = cfg["num_local_experts"]
            out[b + "ffn_gate_inp.weight"] = t[moe + "gate.weight"]
            for w, gg in [("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")]:
                out[f"{b}{gg}.weight"] = np.stack([t[f"{moe}experts.{e}.{w}.weight"] for e in range(E)])
        elif p + "mlp.gate.weight" in t:
            E = cfg.get("num_experts") or cfg["num_local_experts"]
            out[b + "ffn_gate_inp.weight"] = t[p + "mlp.gate.weight"]
            for w, gg in [("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")]:
                out[f"{b}{gg}.weight"] = np.stack([t[f"{p}mlp.experts.{e}.{w}.weight"] for e in range(E)])
            for w, gg in [("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")]:
                if f"{p}mlp.shared_expert.{w}.weight" in t:
                    out[f"{b}{gg}.weight"] = t[f"{p}mlp.shared_expert.{w}.weight"]
            if p + "mlp.shared_expert_gate.weight" in t:
                out[b + "ffn_gate_inp_shexp.weight"] = t[p + "mlp.shared_expert_gate.weight"]
        else:
            for w, gg in [("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")]:
                out[f"{b}{gg}.weight"] = t[f"{p}mlp.{w}.weight"]
    return out


def hparams(w, name, cfg, ftype_id):
    arch = ARCH[name]
    rope = cfg.get("rope_parameters") or {}
    H = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or H)
    w.add_rope_freq_base(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(ftype_id)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(hd)
    if cfg.get("head_dim") and cfg["head_dim"] != cfg["hidden_size"] // H:
        w.add_key_length(hd)
        w.add_value_length(hd)
    E = cfg.get("num_local_experts") or cfg.get("num_experts")
    if E:
        w.add_expert_count(E)
        w.add_expert_used_count(cfg["num_experts_per_tok"])
    if "moe_intermediate_size" in cfg:
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size"):
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    if arch == "qwen3moe" or (arch == "qwen2moe" and cfg.get("norm_topk_prob")):
        w.add_expert_weights_norm(bool(cfg.get("norm_topk_prob", True)))


def write_model(name, ftype):
    d = os.path.join(HF, name)
    cfg = json.load(open(os.path.join(d, "config.json")))
    t = {k: v.astype(np.float32) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    qtype, ftype_id = FTYPE[ftype]
    path = os.path.join(OUT, f"{name}.{ftype}.gguf")
    w = GGUFWriter(path, ARCH[name])
    hparams(w, name, cfg, ftype_id)
    for k, v in hf_to_gguf_tensors(name, cfg, t).items():
        if v.ndim <= 1 or qtype == GGMLQuantizationType.F32:
            w.add_tensor(k, v.astype(np.float32))
        elif qtype == GGMLQuantizationType.F16:
            w.add_tensor(k, v.astype(np.float16))
        else:
            w.add_tensor(k, quantize(v, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(path, os.path.getsize(path))


def tokenizer_json(family):
    p = os.path.join(TOK, family)
    if os.path.exists(os.path.join(p, "tokenizer.json")):
        return json.load(open(os.path.join(p, "tokenizer.json")))
    patch = json.load(open(os.path.join(p, "tokenizer_patch.json")))
    base = tokenizer_json(patch["base"])
    base.update(patch["replace"])
    return base


PRE = {"qwen2": "qwen2", "llama3": "llama-bpe", "olmoe": "olmo", "gpt2": "gpt-2"}


def write_tokenizer(family):
    tj = tokenizer_json(family)
    cfg_path = os.path.join(TOK, family, "tokenizer_config.json")
    cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
    vocab = dict(tj["model"]["vocab"])
    added = {a["id"]: a for a in tj["added_tokens"]}
    n = max(max(vocab.values()), max(added) if added else 0) + 1
    by_id = {i: s for s, i in vocab.items()}
    tokens, types, scores = [], [], []
    spm = tj["model"].get("byte_fallback", False)
    for i in range(n):
        if i in added:
            a = added[i]
            tokens.append(a["content"])
            # convert_hf_to_gguf: special (or special-looking) added tokens are CONTROL, others USER_DEFINED
            types.append(TokenType.CONTROL if a["special"] else TokenType.USER_DEFINED)
            scores.append(-1000.0)
        elif i in by_id:
            s = by_id[i]
            tokens.append(s)
            if spm and len(s) == 6 and s.startswith("<0x") and s.endswith(">"):
                types.append(TokenType.BYTE)
            else:
                types.append(TokenType.NORMAL)
            scores.append(-1000.0)  # gguf-py LlamaHfVocab.get_token_score
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            scores.append(-1000.0)
    if spm and tj["model"].get("unk_token") in vocab:
        types[vocab[tj["model"]["unk_token"]]] = TokenType.UNKNOWN
    path = os.path.join(OUT, f"tok_{family}.gguf")
    w = GGUFWriter(path, "llama")
    w.add_name(f"tokenizer {family}")
    w.add_tokenizer_model("llama" if spm else "gpt2")
    w.add_tokenizer_pre("default" if spm else PRE[family])
    pt = tj.get("pre_tokenizer") or {}
    if not spm and pt.get("type") == "ByteLevel" and pt.get("add_prefix_space"):
        w.add_add_space_prefix(True)  # the gpt2 family's ByteLevel(add_prefix_space=true)
    w.add_token_list(tokens)
    if spm:
        w.add_token_scores(scores)
    w.add_token_types(types)
    # SpecialVocab reads tokenizer.json / tokenizer_config.json / config.json of a directory
    tmp = os.path.join(OUT, ".tmp_" + family)
    os.makedirs(tmp, exist_ok=True)
    json.dump(tj, open(os.path.join(tmp, "tokenizer.json"), "w"))
    json.dump(cfg, open(os.path.join(tmp, "tokenizer_config.json"), "w"))
    sv = SpecialVocab(tmp, load_merges=not spm, n_vocab=len(tokens))
    sv.add_to_gguf(w)
    for f in os.listdir(tmp):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(path, os.path.getsize(path))


def check(dirname):
    """gguf-py reads moe-written GGUF files; model tensors equal the HF ones (rounded to the type)."""
    n = 0
    for f in sorted(os.listdir(dirname)):
        if not f.endswith(".gguf"):
            continue
        r = GGUFReader(os.path.join(dirname, f))
        arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
        name = f.split(".")[0]
        n += 1
        if name not in ARCH:
            print(f"{f}: read by gguf-py, {len(r.tensors)} tensors, {len(r.fields)} keys")
            continue
        assert arch == ARCH[name], (f, arch)
        d = os.path.join(HF, name)
        cfg = json.load(open(os.path.join(d, "config.json")))
        t = {k: v.astype(np.float32) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
        want = hf_to_gguf_tensors(name, cfg, t)
        got = {x.name: x for x in r.tensors}
        assert set(got) == set(want), (f, sorted(set(got) ^ set(want)))
        for k, v in want.items():
            x = got[k]
            data = np.array(x.data)
            if x.tensor_type == GGMLQuantizationType.F32:
                exp = v
            elif x.tensor_type == GGMLQuantizationType.F16:
                exp = v.astype(np.float16)
            elif x.tensor_type == GGMLQuantizationType.BF16:
                exp = quantize(v, GGMLQuantizationType.BF16)
                data = data.view(np.uint8).reshape(exp.shape) if data.dtype != exp.dtype else data
            else:
                raise AssertionError(f"{f}: {k}: type {x.tensor_type}")
            data = data.reshape(exp.shape) if data.size == exp.size else data
            assert data.shape == exp.shape or data.size == exp.size, (f, k, data.shape, exp.shape)
            assert np.array_equal(data.reshape(-1).view(np.uint8), np.ascontiguousarray(exp).reshape(-1).view(np.uint8)), (f, k)
        print(f"{f}: {arch}, {len(want)} tensors equal the HF weights (llama Q/K permuted)")
    assert n > 0, f"no .gguf files in {dirname}"


def fuzz_corpus(out):
    """Small seeds for fuzz/fuzz_gguf.cc: valid files (every value type, nested arrays, v2, a model
    header, a tokenizer) and a few broken ones."""
    import struct
    os.makedirs(out, exist_ok=True)

    def write(name, fill, arch="llama"):
        path = os.path.join(out, name)
        w = GGUFWriter(path, arch)
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path

    def all_types(w):
        w.add_uint8("t.u8", 7); w.add_int8("t.i8", -7); w.add_uint16("t.u16", 700); w.add_int16("t.i16", -700)
        w.add_uint32("t.u32", 70000); w.add_int32("t.i32", -70000); w.add_float32("t.f32", 1.5); w.add_bool("t.bool", True)
        w.add_string("t.str", "héllo"); w.add_uint64("t.u64", 1 << 40); w.add_int64("t.i64", -(1 << 40)); w.add_float64("t.f64", 2.5)
        w.add_array("t.arr", [1, 2, 3]); w.add_array("t.nested", [[1, 2], [3]]); w.add_array("t.strs", ["a", "b c"])
        w.add_tensor("a.weight", np.arange(16, dtype=np.float32).reshape(2, 8))
        w.add_tensor("b.weight", np.ones(4, dtype=np.float16))
        w.add_tensor("q.weight", np.zeros((1, 34), dtype=np.uint8), raw_dtype=GGMLQuantizationType.Q8_0)
    valid = write("all_types.gguf", all_types)

    def model(w):
        w.add_context_length(64); w.add_embedding_length(8); w.add_block_count(1); w.add_feed_forward_length(16)
        w.add_head_count(2); w.add_head_count_kv(1); w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0)
        w.add_expert_count(2); w.add_expert_used_count(1)
        C, V, F, E = 8, 6, 16, 2
        for k, shape in [("token_embd.weight", (V, C)), ("output_norm.weight", (C,)), ("blk.0.attn_norm.weight", (C,)),
                         ("blk.0.attn_q.weight", (C, C)), ("blk.0.attn_k.weight", (4, C)), ("blk.0.attn_v.weight", (4, C)),
                         ("blk.0.attn_output.weight", (C, C)), ("blk.0.ffn_norm.weight", (C,)),
                         ("blk.0.ffn_gate_inp.weight", (E, C)), ("blk.0.ffn_gate_exps.weight", (E, F, C)),
                         ("blk.0.ffn_up_exps.weight", (E, F, C)), ("blk.0.ffn_down_exps.weight", (E, C, F))]:
            w.add_tensor(k, np.full(shape, 0.5, dtype=np.float32))
    write("model.gguf", model)

    def tok(kind):
        def f(w):
            w.add_tokenizer_model(kind)
            w.add_tokenizer_pre("default" if kind == "llama" else "qwen2")
            toks = ["<unk>", "<s>", "</s>", "<0x41>", "\u2581a", "a", "b", "ab"] if kind == "llama" else ["a", "b", "ab", "<|e|>"]
            w.add_token_list(toks)
            if kind == "llama":
                w.add_token_scores([0.0] * len(toks))
                w.add_token_types([2, 3, 3, 6, 1, 1, 1, 1])
            else:
                w.add_token_types([1, 1, 1, 3])
                w.add_token_merges(["a b"])
            w.add_bos_token_id(1 if kind == "llama" else 3); w.add_eos_token_id(2 if kind == "llama" else 3)
            w.add_chat_template("{{ messages }}")
        return f
    write("tok_llama.gguf", tok("llama"))
    write("tok_gpt2.gguf", tok("gpt2"))
    data = open(valid, "rb").read()
    v2 = bytearray(data); v2[4:8] = struct.pack("<I", 2)
    open(os.path.join(out, "v2.gguf"), "wb").write(v2)
    open(os.path.join(out, "cut.gguf"), "wb").write(data[: len(data) // 2])
    bad = bytearray(data); bad[0:4] = b"GGUG"
    open(os.path.join(out, "bad_magic.gguf"), "wb").write(bad)
    for f in sorted(os.listdir(out)):
        print(os.path.join(out, f), os.path.getsize(os.path.join(out, f)))


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--fuzz-corpus":
        fuzz_corpus(os.path.join(ROOT, "fuzz", "corpus", "gguf"))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
        return
    os.makedirs(OUT, exist_ok=True)
    for name, ftype in MODELS:
        write_model(name, ftype)
    for family in ["mixtral", "llama3", "qwen2", "olmoe", "gpt2"]:
        write_tokenizer(family)


if __name__ == "__main__":
    main()
