#pragma once
// Hugging Face `tokenizer.json` tokenizers, giving the ids of the Python `tokenizers` library
// (Tokenizer.encode(text).ids) for the pipelines of Mixtral / Mistral / Llama 2 (SentencePiece
// BPE with byte fallback), Llama 3, Qwen2 / Qwen3 (-MoE), OLMoE / GPT-NeoX and GPT-2.
//
// encode: added tokens are cut out of the text first (the ones with normalized=false on the raw
// text, then the normalizer runs on each remaining segment and the normalized=true ones are cut
// out), the pre-tokenizer splits each segment, the model (BPE, WordLevel) turns each piece into
// ids, and the post-processor adds BOS/EOS when add_special_tokens is set.
// decode: each id's token string goes through the decoder chain (ByteLevel, Metaspace,
// ByteFallback, ...); invalid UTF-8 comes out as U+FFFD, as in Python.
//
// tokenizer_config.json (optional) is read the way transformers reads it: bos_token / eos_token
// name the BOS / EOS tokens, added_tokens_decoder adds tokens that tokenizer.json lacks, and when
// add_bos_token or add_eos_token is present the post-processor becomes
// "[BOS] $A [EOS]" with each part as the flags say (LlamaTokenizerFast / GPTNeoXTokenizerFast).
// Truncation and padding settings of tokenizer.json are ignored, as transformers does.
//
// Every problem in a file (bad JSON, a missing field, an unknown type, a merge naming a token the
// vocabulary lacks, an invalid regex) is a moe::error naming the file and the field.
// Full list of what is supported: docs/tokenizers.md.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {

namespace hf {
struct TokenizerImpl;
}

class HfTokenizer {
public:
    // `tokenizer_config` / `generation_config` may be null (absent). `where` names tokenizer.json
    // in errors; `config_where` tokenizer_config.json.
    static std::shared_ptr<const HfTokenizer> from_json(const nlohmann::json& tokenizer_json,
                                                        const nlohmann::json& tokenizer_config,
                                                        const std::string& where,
                                                        const std::string& config_where = "tokenizer_config.json",
                                                        const nlohmann::json& generation_config = nullptr);
    // Parses JSON text (a bad document is a moe::error naming `where`).
    static std::shared_ptr<const HfTokenizer> from_string(std::string_view tokenizer_json,
                                                          std::string_view tokenizer_config = {},
                                                          const std::string& where = "tokenizer.json");
    // Paths; an empty path means the file is absent.
    static std::shared_ptr<const HfTokenizer> from_files(const std::string& tokenizer_json_path,
                                                         const std::string& tokenizer_config_path = "",
                                                         const std::string& generation_config_path = "");
    ~HfTokenizer();

    // Tokenizer.encode(text, add_special_tokens).ids. `what` names the text in errors (invalid
    // UTF-8, a WordLevel piece without an unknown token).
    std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true,
                                const std::string& what = "text") const;
    // Tokenizer.decode(ids, skip_special_tokens). An id outside [0, vocab_size()) is a moe::error;
    // an id inside it that names no token is skipped, as in Python.
    std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
    // The bytes one token adds in the middle of a decoded text: no leading-space strip of
    // SentencePiece decoders, and byte tokens (ByteLevel bytes, <0xNN>) come out raw, so the
    // result may end inside a UTF-8 character. For a streaming consumer of single tokens.
    std::string decode_one(int32_t id) const;

    // Largest id (model vocabulary and added tokens) + 1.
    int64_t vocab_size() const;
    int32_t bos_id() const;                     // -1: none
    const std::vector<int32_t>& eos_ids() const;  // may be empty
    // Added tokens marked special, and the BOS / EOS ids.
    bool is_special(int32_t id) const;
    // The vocabulary string of an id ("Ġthe", "▁the", "<0x0A>", "<|im_end|>"); empty for an id
    // that names no token. A moe::error outside [0, vocab_size()).
    std::string token_text(int32_t id) const;
    int32_t token_to_id(std::string_view token) const;  // -1: none

    const nlohmann::json& tokenizer_json() const;
    const nlohmann::json& tokenizer_config() const;    // null when none was given
    const nlohmann::json& generation_config() const;   // null when none was given

    const hf::TokenizerImpl& impl() const { return *impl_; }

private:
    HfTokenizer();
    std::unique_ptr<hf::TokenizerImpl> impl_;
};

// Streaming decode: feed one id at a time, get the text that became final. A token that ends
// inside a UTF-8 character gives nothing until the character is complete; the first token's
// leading space of SentencePiece decoders is handled as decode() handles it, so the concatenation
// of every step() and finish() equals decode(all ids) (for ids whose byte-fallback tokens form
// valid UTF-8; docs/tokenizers.md). Like Python's DecodeStream, it decodes a short window of
// recent ids at each step.
class HfDecodeStream {
public:
    HfDecodeStream(std::shared_ptr<const HfTokenizer> tok, bool skip_special_tokens = false);
    std::string step(int32_t id);
    // What is still held back (an incomplete character at the end comes out as U+FFFD, as in
    // decode()). The stream starts afresh afterwards.
    std::string finish();

private:
    std::shared_ptr<const HfTokenizer> tok_;
    bool skip_;
    std::vector<int32_t> ids_;
    std::string prefix_;
    size_t prefix_index_ = 0;
};

}  // namespace moe
