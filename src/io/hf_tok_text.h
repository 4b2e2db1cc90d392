#pragma once
// Text helpers of the Hugging Face tokenizer pipeline (io/hf_tokenizer.h).
//
// The `tokenizers` library works on Rust strings, which are always valid UTF-8, and asks Rust's
// `char` methods (is_whitespace, is_alphanumeric, to_lowercase, ...) about characters; ICU gives
// the same Unicode properties here. Decoding is lossy the way Rust's String::from_utf8_lossy is
// (one U+FFFD per maximal invalid subpart), so that decode() returns the same text as Python.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moe::hf {

// ---- UTF-8 ------------------------------------------------------------------------------------

// Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 if none starts there (a bad
// lead byte, an overlong form, a surrogate, a code point past U+10FFFF, or a truncated sequence).
int utf8_valid_len(std::string_view s, size_t i);
// Offset of the first byte that is not part of valid UTF-8, or npos.
size_t utf8_invalid_at(std::string_view s);
inline bool utf8_valid(std::string_view s) { return utf8_invalid_at(s) == std::string_view::npos; }
// Rust's String::from_utf8_lossy.
std::string utf8_lossy(std::string_view s);
// Bytes at the end of s that are the start of a character whose remaining bytes are missing (0..3).
size_t utf8_incomplete_tail(std::string_view s);
// Decodes the character at s[i] of valid UTF-8 and advances i past it.
uint32_t utf8_next(std::string_view s, size_t& i);
void utf8_append(std::string& out, uint32_t cp);
std::string utf8_of(uint32_t cp);
// Code points of valid UTF-8.
std::u32string utf8_chars(std::string_view s);

// ---- Unicode properties (the Rust `char` methods `tokenizers` uses) ---------------------------

bool is_whitespace(uint32_t c);    // char::is_whitespace: White_Space
bool is_numeric(uint32_t c);       // char::is_numeric: Nd, Nl, No
bool is_alphanumeric(uint32_t c);  // char::is_alphanumeric: Alphabetic or numeric
bool is_punctuation(uint32_t c);   // ASCII punctuation (symbols included) or a P* category
bool is_word_char(uint32_t c);     // the `regex` crate's \w
bool is_combining_mark(uint32_t c);  // M* categories
// char::to_lowercase (full mapping, no context: U+0130 gives two characters)
void append_lowercase(std::string& out, uint32_t c);

// ---- Normalized strings -----------------------------------------------------------------------

// A piece of text on its way through normalizers and pre-tokenizers. `orig[k]` is the offset in
// the encoded input of the character that byte k came from; only Metaspace's prepend_scheme
// "first" reads it (does a piece start at the input's first character?), so a character that
// normalization turns into several keeps its source's offset for all of them.
struct NormStr {
    std::string s;
    std::vector<uint32_t> orig;

    NormStr() = default;
    NormStr(std::string_view text, uint32_t base);  // every byte of `text` from input offset base+k
    bool empty() const { return s.empty(); }
    uint32_t first_orig() const { return orig.empty() ? 0 : orig[0]; }
    NormStr slice(size_t b, size_t e) const;
    void append(std::string_view text, uint32_t from);  // inserted text, all from input offset `from`
    void append(const NormStr& o, size_t b, size_t e);  // o.s[b, e) with its offsets
    void prepend(std::string_view text);                 // aligned with the first character
};

// Unicode normalization forms through ICU, applied chunk by chunk between normalization
// boundaries so that every output character keeps the input offset of its chunk.
enum class NormForm { nfc, nfd, nfkc, nfkd };
void normalize_form(NormStr& n, NormForm form);

}  // namespace moe::hf
