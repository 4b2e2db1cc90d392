#pragma once
// Byte-level (256 ids), character-level (Unicode code points seen in a corpus, sorted) and byte-level
// BPE (256 byte ids, then one id per merge learned from a corpus, GPT-2 style: merges never cross
// the boundaries of pre-tokens, which are an optional leading space plus a run of letters, digits
// or punctuation, or a run of other whitespace). Stored inside the checkpoint as JSON.
// Kind hf wraps a Hugging Face tokenizer.json (io/hf_tokenizer.h); the checkpoint then carries the
// whole tokenizer.json and tokenizer_config.json.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/hf_tokenizer.h"

namespace moe {

class Tokenizer {
public:
    enum class Kind { byte, chr, bpe, hf };

    static Tokenizer byte_level();
    // Learns vocab_size - 256 merges from `text` (most frequent adjacent pair first; ties go to the
    // smaller pair of ids, so the result is a function of the text alone). Throws moe::error naming
    // `where` when the text has too few distinct pairs (each must occur at least twice) to reach
    // vocab_size. `progress` prints a line now and then on long runs.
    static Tokenizer bpe_train(const std::string& text, int64_t vocab_size, const std::string& where,
                               bool progress = false);
    // Every distinct code point of `text` (UTF-8), sorted. `where` names the source in errors.
    static Tokenizer char_level(const std::string& text, const std::string& where);
    // A Hugging Face tokenizer: tokenizer.json, and tokenizer_config.json / generation_config.json
    // when the paths are not empty (BOS / EOS, extra added tokens, more stop ids).
    static Tokenizer from_hf_files(const std::string& tokenizer_json_path, const std::string& tokenizer_config_path,
                                   const std::string& generation_config_path = "");
    static Tokenizer from_hf(std::shared_ptr<const HfTokenizer> hf);
    static Tokenizer from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;
    // A Hugging Face tokenizer.json with which Python's `tokenizers` (and HfTokenizer) gives the
    // same ids as encode() for any text encode() accepts (kind hf: the tokenizer.json it came from).
    nlohmann::json to_hf_tokenizer_json() const;

    Kind kind() const { return kind_; }
    int64_t vocab_size() const {
        return kind_ == Kind::byte  ? 256
               : kind_ == Kind::bpe ? 256 + (int64_t)merges_.size()
               : kind_ == Kind::hf  ? hf_->vocab_size()
                                    : (int64_t)chars_.size();
    }
    // Throws moe::error naming `what` and the first character outside the vocabulary (char level)
    // or the offset of invalid UTF-8 (hf). Kind hf adds the special tokens of its post-processor
    // (BOS / EOS), as transformers does by default; the other kinds have none.
    std::vector<int32_t> encode(const std::string& text, const std::string& what) const;
    std::vector<int32_t> encode(const std::string& text, const std::string& what, bool add_special_tokens) const;
    std::string decode(const std::vector<int32_t>& ids) const;  // special tokens included
    std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
    // The bytes of one token (a BPE token or a byte may end inside a UTF-8 character); for kind hf
    // the text the token adds in the middle of a decoded text (HfTokenizer::decode_one).
    std::string decode_one(int32_t id) const;

    // Special ids: only kind hf has them (the other kinds: -1, empty, false).
    int32_t bos_id() const;
    std::vector<int32_t> eos_ids() const;
    bool is_special(int32_t id) const;
    // The token as the vocabulary spells it: kind hf its tokenizer.json string ("Ġthe", "<0x0A>"),
    // the other kinds the bytes it decodes to.
    std::string token_text(int32_t id) const;
    // The wrapped Hugging Face tokenizer (kind hf), else null.
    const std::shared_ptr<const HfTokenizer>& hf() const { return hf_; }

private:
    Kind kind_ = Kind::byte;
    std::vector<uint32_t> chars_;  // id -> code point (char level)
    std::vector<int32_t> index_;   // code point -> id, -1 (char level, dense up to max code point)
    std::vector<std::pair<int32_t, int32_t>> merges_;  // BPE: id 256 + i = merges_[i].first ++ .second
    std::vector<std::string> pieces_;                  // BPE: id -> bytes
    std::vector<std::pair<uint64_t, int32_t>> rank_;   // BPE: (pair key, merged id), sorted by key
    std::shared_ptr<const HfTokenizer> hf_;            // kind hf

    void bpe_index();  // pieces_ and rank_ from merges_
    void bpe_encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
};

// Pre-tokenization shared by BPE training and encoding: [begin, end) byte ranges of `text`.
std::vector<std::pair<size_t, size_t>> bpe_pretokenize(const std::string& text);

// UTF-8 helpers
enum class Utf8 { ok, bad_lead, truncated, bad_continuation };
// Decodes the character starting at p[0] (n > 0 bytes available) into cp and its length in bytes;
// on an error, len is where it was found (the lead byte: 0; a continuation byte: its offset).
Utf8 utf8_next(const unsigned char* p, size_t n, uint32_t& cp, int& len);
std::vector<uint32_t> utf8_decode(const std::string& s, const std::string& where);
std::string utf8_encode(uint32_t cp);

}  // namespace moe
