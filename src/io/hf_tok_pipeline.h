#pragma once
// The configurable stages of a tokenizer.json pipeline: normalizers, pre-tokenizers,
// post-processors and decoders, each parsed from its JSON object. Their behaviour follows the
// Rust `tokenizers` crate stage by stage (docs/tokenizers.md lists the supported types); an
// unknown or malformed stage is a moe::error naming the file and the field.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/hf_tok_text.h"

namespace moe::hf {

using Json = nlohmann::json;

// The place of a JSON value, for error messages: "tokenizer.json: normalizer.normalizers[1].content".
struct Where {
    std::string file;
    std::string path;
    Where operator/(std::string_view key) const;
    Where operator[](size_t i) const;
    std::string str() const;
};

// Sequences nested deeper than this are an error (a hostile file must not exhaust the stack).
constexpr int kMaxDepth = 32;

// Field access with messages naming the field.
const Json& field(const Json& obj, const char* key, const Where& w);  // required
const Json* optional_field(const Json& obj, const char* key);          // absent or null: nullptr
std::string get_string(const Json& obj, const char* key, const Where& w);
bool get_bool(const Json& obj, const char* key, bool dflt, const Where& w);
uint32_t get_char(const Json& obj, const char* key, const Where& w);  // a one-character string
std::string type_of(const Json& obj, const Where& w);                 // the "type" field

class Normalizer {
public:
    virtual ~Normalizer() = default;
    virtual void normalize(NormStr& n) const = 0;
};
std::unique_ptr<Normalizer> parse_normalizer(const Json& j, const Where& w, int depth = 0);

class PreTokenizer {
public:
    virtual ~PreTokenizer() = default;
    // Splits each piece of one segment (the text between two added tokens) further.
    virtual void pre_tokenize(std::vector<NormStr>& pieces) const = 0;
};
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const Json& j, const Where& w, int depth = 0);

class PostProcessor {
public:
    virtual ~PostProcessor() = default;
    virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};
// `vocab_size`: special token ids must lie below it.
std::unique_ptr<PostProcessor> parse_post_processor(const Json& j, const Where& w, int64_t vocab_size, int depth = 0);
// "[bos] $A [eos]" (either may be -1: left out), as transformers' update_post_processor builds it.
std::unique_ptr<PostProcessor> make_bos_eos_template(int32_t bos, int32_t eos);

// How decoders run. `raw`: byte tokens stay raw bytes (no U+FFFD), for decode_one;
// `continuation`: the tokens are not at the start of the text (no leading-space strip).
struct DecodeMode {
    bool raw = false;
    bool continuation = false;
};
class Decoder {
public:
    virtual ~Decoder() = default;
    // `fused`: an earlier decoder joined all tokens into one (then element 0 is the whole text).
    virtual void decode_chain(std::vector<std::string>& tokens, const DecodeMode& mode, bool& fused) const = 0;
};
std::unique_ptr<Decoder> parse_decoder(const Json& j, const Where& w, int depth = 0);

// GPT-2's byte <-> character table of the ByteLevel stages.
const std::string& byte_level_char(uint8_t b);  // UTF-8 of the character standing for byte b
int byte_level_byte(uint32_t cp);              // the byte a character stands for, or -1

}  // namespace moe::hf
