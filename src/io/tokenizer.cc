#include "io/tokenizer.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"

namespace moe {

std::vector<uint32_t> utf8_decode(const std::string& s, const std::string& where) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t i = 0, n = s.size();
    while (i < n) {
        unsigned char c = p[i];
        uint32_t cp;
        int len;
        if (c < 0x80) { cp = c; len = 1; }
        else if ((c >> 5) == 0x6) { cp = c & 0x1F; len = 2; }
        else if ((c >> 4) == 0xE) { cp = c & 0x0F; len = 3; }
        else if ((c >> 3) == 0x1E) { cp = c & 0x07; len = 4; }
        else fail(where, ": invalid UTF-8 byte 0x", std::hex, (int)c, std::dec, " at byte offset ", i);
        if (i + len > n) fail(where, ": truncated UTF-8 sequence at byte offset ", i);
        for (int k = 1; k < len; ++k) {
            if ((p[i + k] >> 6) != 0x2) fail(where, ": invalid UTF-8 continuation byte at byte offset ", i + k);
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        out.push_back(cp);
        i += len;
    }
    return out;
}

std::string utf8_encode(uint32_t cp) {
    std::string s;
    if (cp < 0x80) s += (char)cp;
    else if (cp < 0x800) { s += (char)(0xC0 | (cp >> 6)); s += (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        s += (char)(0xE0 | (cp >> 12)); s += (char)(0x80 | ((cp >> 6) & 0x3F)); s += (char)(0x80 | (cp & 0x3F));
    } else {
        s += (char)(0xF0 | (cp >> 18)); s += (char)(0x80 | ((cp >> 12) & 0x3F));
        s += (char)(0x80 | ((cp >> 6) & 0x3F)); s += (char)(0x80 | (cp & 0x3F));
    }
    return s;
}

static std::string describe(uint32_t cp) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "U+%04X", cp);
    if (cp >= 0x20 && cp != 0x7F) return "'" + utf8_encode(cp) + "' (" + buf + ")";
    return buf;
}

Tokenizer Tokenizer::byte_level() { return Tokenizer(); }

Tokenizer Tokenizer::char_level(const std::string& text, const std::string& where) {
    Tokenizer t;
    t.kind_ = Kind::chr;
    std::vector<uint32_t> cps = utf8_decode(text, where);
    std::sort(cps.begin(), cps.end());
    cps.erase(std::unique(cps.begin(), cps.end()), cps.end());
    if (cps.empty()) fail(where, ": no text to build a character vocabulary from");
    t.chars_ = cps;
    t.index_.assign(cps.back() + 1, -1);
    for (size_t i = 0; i < cps.size(); ++i) t.index_[cps[i]] = (int32_t)i;
    return t;
}

nlohmann::json Tokenizer::to_json() const {
    if (kind_ == Kind::byte) return {{"type", "byte"}};
    return {{"type", "char"}, {"chars", chars_}};
}

Tokenizer Tokenizer::from_json(const nlohmann::json& j, const std::string& where) {
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
        fail(where, ": tokenizer entry is missing its 'type'");
    std::string type = j["type"];
    if (type == "byte") return byte_level();
    if (type != "char") fail(where, ": unknown tokenizer type '", type, "'");
    Tokenizer t;
    t.kind_ = Kind::chr;
    if (!j.contains("chars") || !j["chars"].is_array()) fail(where, ": char tokenizer has no 'chars' list");
    t.chars_ = j["chars"].get<std::vector<uint32_t>>();
    if (t.chars_.empty()) fail(where, ": char tokenizer has an empty vocabulary");
    uint32_t mx = *std::max_element(t.chars_.begin(), t.chars_.end());
    if (mx > 0x10FFFF) fail(where, ": char tokenizer has an invalid code point ", mx);
    t.index_.assign(mx + 1, -1);
    for (size_t i = 0; i < t.chars_.size(); ++i) t.index_[t.chars_[i]] = (int32_t)i;
    return t;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, const std::string& what) const {
    std::vector<int32_t> ids;
    if (kind_ == Kind::byte) {
        ids.reserve(text.size());
        for (unsigned char c : text) ids.push_back(c);
        return ids;
    }
    std::vector<uint32_t> cps = utf8_decode(text, what);
    ids.reserve(cps.size());
    for (size_t i = 0; i < cps.size(); ++i) {
        uint32_t cp = cps[i];
        if (cp >= index_.size() || index_[cp] < 0)
            fail(what, ": character ", describe(cp), " at position ", i,
                 " is not in the model's vocabulary (", chars_.size(), " characters)");
        ids.push_back(index_[cp]);
    }
    return ids;
}

std::string Tokenizer::decode_one(int32_t id) const {
    MOE_ASSERT(id >= 0 && id < vocab_size());
    if (kind_ == Kind::byte) return std::string(1, (char)(unsigned char)id);
    return utf8_encode(chars_[id]);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string s;
    for (int32_t id : ids) s += decode_one(id);
    return s;
}

}  // namespace moe
