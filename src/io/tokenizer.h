#pragma once
// Byte-level (256 ids) and character-level (Unicode code points seen in a corpus, sorted) tokenizers.
// Stored inside the checkpoint as JSON.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {

class Tokenizer {
public:
    enum class Kind { byte, chr };

    static Tokenizer byte_level();
    // Every distinct code point of `text` (UTF-8), sorted. `where` names the source in errors.
    static Tokenizer char_level(const std::string& text, const std::string& where);
    static Tokenizer from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;

    Kind kind() const { return kind_; }
    int64_t vocab_size() const { return kind_ == Kind::byte ? 256 : (int64_t)chars_.size(); }
    // Throws moe::error naming `what` and the first character outside the vocabulary.
    std::vector<int32_t> encode(const std::string& text, const std::string& what) const;
    std::string decode(const std::vector<int32_t>& ids) const;
    std::string decode_one(int32_t id) const;

private:
    Kind kind_ = Kind::byte;
    std::vector<uint32_t> chars_;  // id -> code point (char level)
    std::vector<int32_t> index_;   // code point -> id, -1 (char level, dense up to max code point)
};

// UTF-8 helpers
std::vector<uint32_t> utf8_decode(const std::string& s, const std::string& where);
std::string utf8_encode(uint32_t cp);

}  // namespace moe
