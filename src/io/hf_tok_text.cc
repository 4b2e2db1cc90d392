#include "io/hf_tok_text.h"

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include "core/error.h"

namespace moe::hf {

int utf8_valid_len(std::string_view s, size_t i) {
    const size_t n = s.size();
    const auto b = [&](size_t k) { return (unsigned char)s[k]; };
    const unsigned char c = b(i);
    if (c < 0x80) return 1;
    int len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;       // overlong
        else if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;       // overlong
        else if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
    } else {
        return 0;
    }
    if (i + len > n) return 0;
    if (b(i + 1) < lo || b(i + 1) > hi) return 0;
    for (int k = 2; k < len; ++k)
        if ((b(i + k) & 0xC0) != 0x80) return 0;
    return len;
}

size_t utf8_invalid_at(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        if ((unsigned char)s[i] < 0x80) { ++i; continue; }
        const int len = utf8_valid_len(s, i);
        if (len == 0) return i;
        i += len;
    }
    return std::string_view::npos;
}

// How many bytes starting at s[i] are a valid prefix of some UTF-8 sequence (the "maximal
// subpart" that from_utf8_lossy replaces by one U+FFFD); at least 1.
static size_t maximal_subpart(std::string_view s, size_t i) {
    const unsigned char c = (unsigned char)s[i];
    int len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; else if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; else if (c == 0xF4) hi = 0x8F; }
    else return 1;
    size_t k = 1;
    while ((int)k < len && i + k < s.size()) {
        const unsigned char d = (unsigned char)s[i + k];
        const bool ok = k == 1 ? (d >= lo && d <= hi) : (d & 0xC0) == 0x80;
        if (!ok) break;
        ++k;
    }
    return k;
}

std::string utf8_lossy(std::string_view s) {
    if (utf8_valid(s)) return std::string(s);
    std::string out;
    out.reserve(s.size() + 8);
    size_t i = 0;
    while (i < s.size()) {
        if ((unsigned char)s[i] < 0x80) { out += s[i++]; continue; }
        const int len = utf8_valid_len(s, i);
        if (len > 0) {
            out.append(s.substr(i, len));
            i += len;
        } else {
            out += "\xEF\xBF\xBD";
            i += maximal_subpart(s, i);
        }
    }
    return out;
}

size_t utf8_incomplete_tail(std::string_view s) {
    // an incomplete character is a maximal subpart that runs into the end of the text
    const size_t n = s.size();
    for (size_t back = 1; back <= 3 && back <= n; ++back) {
        const size_t i = n - back;
        const unsigned char c = (unsigned char)s[i];
        if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
        if (c < 0xC2 || c > 0xF4) return 0;
        const size_t need = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (back >= need) return 0;
        return maximal_subpart(s, i) == back ? back : 0;
    }
    return 0;
}

uint32_t utf8_next(std::string_view s, size_t& i) {
    const unsigned char c = (unsigned char)s[i];
    if (c < 0x80) { ++i; return c; }
    uint32_t cp;
    int len;
    if (c < 0xE0) { cp = c & 0x1F; len = 2; }
    else if (c < 0xF0) { cp = c & 0x0F; len = 3; }
    else { cp = c & 0x07; len = 4; }
    for (int k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3F);
    i += len;
    return cp;
}

void utf8_append(std::string& s, uint32_t cp) {
    if (cp < 0x80) s += (char)cp;
    else if (cp < 0x800) { s += (char)(0xC0 | (cp >> 6)); s += (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        s += (char)(0xE0 | (cp >> 12)); s += (char)(0x80 | ((cp >> 6) & 0x3F)); s += (char)(0x80 | (cp & 0x3F));
    } else {
        s += (char)(0xF0 | (cp >> 18)); s += (char)(0x80 | ((cp >> 12) & 0x3F));
        s += (char)(0x80 | ((cp >> 6) & 0x3F)); s += (char)(0x80 | (cp & 0x3F));
    }
}

std::string utf8_of(uint32_t cp) {
    std::string s;
    utf8_append(s, cp);
    return s;
}

std::u32string utf8_chars(std::string_view s) {
    std::u32string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) out.push_back(utf8_next(s, i));
    return out;
}

// ---- properties -------------------------------------------------------------------------------

bool is_whitespace(uint32_t c) {
    if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
    return u_hasBinaryProperty((UChar32)c, UCHAR_WHITE_SPACE);
}

bool is_numeric(uint32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    const int8_t t = u_charType((UChar32)c);
    return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool is_alphanumeric(uint32_t c) {
    if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
    return u_hasBinaryProperty((UChar32)c, UCHAR_ALPHABETIC) || is_numeric(c);
}

bool is_punctuation(uint32_t c) {
    if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
                         (c >= 0x7B && c <= 0x7E);
    return u_ispunct((UChar32)c);
}

bool is_word_char(uint32_t c) {
    if (c < 0x80) return c == '_' || is_alphanumeric(c);
    if (u_hasBinaryProperty((UChar32)c, UCHAR_ALPHABETIC) || u_hasBinaryProperty((UChar32)c, UCHAR_JOIN_CONTROL))
        return true;
    const int8_t t = u_charType((UChar32)c);
    return t == U_NON_SPACING_MARK || t == U_ENCLOSING_MARK || t == U_COMBINING_SPACING_MARK ||
           t == U_DECIMAL_DIGIT_NUMBER || t == U_CONNECTOR_PUNCTUATION;
}

bool is_combining_mark(uint32_t c) {
    if (c < 0x80) return false;
    const int8_t t = u_charType((UChar32)c);
    return t == U_NON_SPACING_MARK || t == U_ENCLOSING_MARK || t == U_COMBINING_SPACING_MARK;
}

void append_lowercase(std::string& out, uint32_t c) {
    if (c < 0x80) { out += (char)((c >= 'A' && c <= 'Z') ? c + 32 : c); return; }
    // the only unconditional full lowercase mapping that differs from the simple one
    if (c == 0x130) { out += "i\xCC\x87"; return; }
    utf8_append(out, (uint32_t)u_tolower((UChar32)c));
}

// ---- NormStr ----------------------------------------------------------------------------------

NormStr::NormStr(std::string_view text, uint32_t base) : s(text), orig(text.size()) {
    // a character's bytes all carry the offset of its first byte
    uint32_t cur = base;
    for (size_t k = 0; k < text.size(); ++k) {
        if (((unsigned char)text[k] & 0xC0) != 0x80) cur = base + (uint32_t)k;
        orig[k] = cur;
    }
}

NormStr NormStr::slice(size_t b, size_t e) const {
    NormStr r;
    r.s.assign(s, b, e - b);
    r.orig.assign(orig.begin() + b, orig.begin() + e);
    return r;
}

void NormStr::append(std::string_view text, uint32_t from) {
    s.append(text);
    orig.insert(orig.end(), text.size(), from);
}

void NormStr::append(const NormStr& o, size_t b, size_t e) {
    s.append(o.s, b, e - b);
    orig.insert(orig.end(), o.orig.begin() + b, o.orig.begin() + e);
}

void NormStr::prepend(std::string_view text) {
    if (s.empty()) return;
    const uint32_t at = orig[0];
    s.insert(0, text);
    orig.insert(orig.begin(), text.size(), at);
}

// ---- normalization forms ----------------------------------------------------------------------

static const UNormalizer2* normalizer_for(NormForm f) {
    UErrorCode err = U_ZERO_ERROR;
    const UNormalizer2* n = nullptr;
    switch (f) {
        case NormForm::nfc: n = unorm2_getNFCInstance(&err); break;
        case NormForm::nfd: n = unorm2_getNFDInstance(&err); break;
        case NormForm::nfkc: n = unorm2_getNFKCInstance(&err); break;
        case NormForm::nfkd: n = unorm2_getNFKDInstance(&err); break;
    }
    if (U_FAILURE(err) || !n) fail("ICU: cannot load the Unicode normalization data (", u_errorName(err), ")");
    return n;
}

static void to_utf16(std::string_view s, std::u16string& out) {
    out.clear();
    size_t i = 0;
    while (i < s.size()) {
        uint32_t cp = utf8_next(s, i);
        if (cp < 0x10000) out.push_back((char16_t)cp);
        else {
            cp -= 0x10000;
            out.push_back((char16_t)(0xD800 + (cp >> 10)));
            out.push_back((char16_t)(0xDC00 + (cp & 0x3FF)));
        }
    }
}

static void append_utf16(std::string& out, const char16_t* p, size_t n) {
    for (size_t k = 0; k < n; ++k) {
        uint32_t c = p[k];
        if (c >= 0xD800 && c < 0xDC00 && k + 1 < n && p[k + 1] >= 0xDC00 && p[k + 1] < 0xE000) {
            c = 0x10000 + ((c - 0xD800) << 10) + (p[k + 1] - 0xDC00);
            ++k;
        }
        utf8_append(out, c);
    }
}

void normalize_form(NormStr& n, NormForm form) {
    if (n.s.empty()) return;
    const UNormalizer2* norm = normalizer_for(form);
    std::u16string u;
    to_utf16(n.s, u);
    UErrorCode err = U_ZERO_ERROR;
    if (unorm2_isNormalized(norm, (const UChar*)u.data(), (int32_t)u.size(), &err) && U_SUCCESS(err)) return;
    NormStr out;
    out.s.reserve(n.s.size() + 8);
    out.orig.reserve(n.s.size() + 8);
    std::u16string chunk, res;
    size_t i = 0;
    while (i < n.s.size()) {
        // a chunk runs to the next character that has a normalization boundary before it
        const size_t b = i;
        utf8_next(n.s, i);
        while (i < n.s.size()) {
            size_t j = i;
            const uint32_t cp = utf8_next(n.s, j);
            if (unorm2_hasBoundaryBefore(norm, (UChar32)cp)) break;
            i = j;
        }
        to_utf16(std::string_view(n.s).substr(b, i - b), chunk);
        res.resize(chunk.size() * 4 + 8);
        err = U_ZERO_ERROR;
        int32_t len = unorm2_normalize(norm, (const UChar*)chunk.data(), (int32_t)chunk.size(), (UChar*)res.data(),
                                       (int32_t)res.size(), &err);
        if (err == U_BUFFER_OVERFLOW_ERROR) {
            res.resize(len);
            err = U_ZERO_ERROR;
            len = unorm2_normalize(norm, (const UChar*)chunk.data(), (int32_t)chunk.size(), (UChar*)res.data(),
                                   (int32_t)res.size(), &err);
        }
        if (U_FAILURE(err)) fail("ICU: Unicode normalization failed (", u_errorName(err), ")");
        std::string piece;
        append_utf16(piece, res.data(), (size_t)len);
        out.append(piece, n.orig[b]);
    }
    n = std::move(out);
}

}  // namespace moe::hf
