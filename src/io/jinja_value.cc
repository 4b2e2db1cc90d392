#include "io/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include <unicode/bytestream.h>
#include <unicode/casemap.h>
#include <unicode/locid.h>
#include <unicode/uchar.h>

namespace moe::jinja {

void raise(ErrKind kind, const std::string& msg) { throw ChatTemplateError(kind, msg); }

void Budget::over(const char* what, int64_t limit) {
    raise(ErrKind::limit, "the template went over moe's limit of " + std::to_string(limit) + " " + what);
}

Value Value::undefined(std::string msg, ErrKind k) {
    Value v;
    v.obj = std::make_shared<UndefObj>(std::move(msg), k);
    return v;
}

Value Value::string(std::string s, bool markup) {
    Value v;
    v.kind = Kind::string;
    v.markup = markup;
    v.obj = std::make_shared<StrObj>(std::move(s));
    return v;
}

Value Value::seq(std::vector<Value> items, SeqKind k) {
    auto o = std::make_shared<SeqObj>();
    o->v = std::move(items);
    o->kind = k;
    Value v;
    v.kind = Kind::seq;
    v.obj = std::move(o);
    return v;
}

Value Value::dict(std::vector<std::pair<Value, Value>> items) {
    auto o = std::make_shared<DictObj>();
    o->v = std::move(items);
    Value v;
    v.kind = Kind::dict;
    v.obj = std::move(o);
    return v;
}

const Value* DictObj::find(const Value& key, Budget& b) const {
    if (key.is_string()) return find(key.str());
    for (const auto& [k, val] : v)
        if (py_eq(k, key, b)) return &val;
    return nullptr;
}

const Value* DictObj::find(std::string_view key) const {
    for (const auto& [k, val] : v)
        if (k.is_string() && k.str() == key) return &val;
    return nullptr;
}

Value* Namespace::find(std::string_view name) {
    for (auto& [k, val] : attrs)
        if (k == name) return &val;
    return nullptr;
}

void fail_undefined(const Value& u) {
    const UndefObj* o = u.undef();
    if (!o) raise(ErrKind::undefined, "value is undefined");
    raise(o->kind, o->msg);
}

// ---------------------------------------------------------------------------------------------
// Unicode

bool valid_utf8(std::string_view s, size_t* bad_at) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t i = 0, n = s.size();
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        int len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else {
            if (bad_at) *bad_at = i;
            return false;
        }
        if (i + len > n) {
            if (bad_at) *bad_at = i;
            return false;
        }
        for (int k = 1; k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) {
                if (bad_at) *bad_at = i;
                return false;
            }
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            if (bad_at) *bad_at = i;
            return false;
        }
        i += len;
    }
    return true;
}

static inline int seq_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

std::vector<uint32_t> code_points(std::string_view s) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    for (size_t i = 0; i < s.size();) {
        int len = seq_len(p[i]);
        uint32_t cp = len == 1 ? p[i] : len == 2 ? p[i] & 0x1F : len == 3 ? p[i] & 0x0F : p[i] & 0x07;
        for (int k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (p[i + k] & 0x3F);
        out.push_back(cp);
        i += len;
    }
    return out;
}

void append_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) s += (char)cp;
    else if (cp < 0x800) {
        s += (char)(0xC0 | (cp >> 6));
        s += (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s += (char)(0xE0 | (cp >> 12));
        s += (char)(0x80 | ((cp >> 6) & 0x3F));
        s += (char)(0x80 | (cp & 0x3F));
    } else {
        s += (char)(0xF0 | (cp >> 18));
        s += (char)(0x80 | ((cp >> 12) & 0x3F));
        s += (char)(0x80 | ((cp >> 6) & 0x3F));
        s += (char)(0x80 | (cp & 0x3F));
    }
}

bool is_ascii(std::string_view s) {
    for (unsigned char c : s)
        if (c >= 0x80) return false;
    return true;
}

size_t cp_count(std::string_view s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

std::vector<size_t> cp_offsets(std::string_view s) {
    std::vector<size_t> off;
    off.reserve(s.size() + 1);
    for (size_t i = 0; i < s.size(); ++i)
        if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) off.push_back(i);
    off.push_back(s.size());
    return off;
}

bool py_isspace(uint32_t c) {
    if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool py_isword(uint32_t c) {
    if (c < 0x80) return c == '_' || (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
    switch (u_charType((UChar32)c)) {
        case U_UPPERCASE_LETTER: case U_LOWERCASE_LETTER: case U_TITLECASE_LETTER:
        case U_MODIFIER_LETTER: case U_OTHER_LETTER: case U_DECIMAL_DIGIT_NUMBER:
        case U_LETTER_NUMBER: case U_OTHER_NUMBER: return true;
        default: return false;
    }
}

bool py_isprintable(uint32_t c) {
    if (c < 0x80) return c >= 0x20 && c < 0x7F;
    switch (u_charType((UChar32)c)) {
        case U_CONTROL_CHAR: case U_FORMAT_CHAR: case U_SURROGATE: case U_PRIVATE_USE_CHAR:
        case U_UNASSIGNED: case U_LINE_SEPARATOR: case U_PARAGRAPH_SEPARATOR:
        case U_SPACE_SEPARATOR: return false;
        default: return true;
    }
}

namespace {

enum class Case { upper, lower, title1 };

// ICU's full case mappings (ß -> SS, final sigma) with the root locale: what Python's str methods do.
std::string icu_case(std::string_view s, Case c) {
    std::string out;
    icu::StringByteSink<std::string> sink(&out);
    UErrorCode err = U_ZERO_ERROR;
    const char* loc = "";
    if (c == Case::upper) icu::CaseMap::utf8ToUpper(loc, 0, icu::StringPiece(s.data(), (int32_t)s.size()), sink, nullptr, err);
    else if (c == Case::lower) icu::CaseMap::utf8ToLower(loc, 0, icu::StringPiece(s.data(), (int32_t)s.size()), sink, nullptr, err);
    else
        icu::CaseMap::utf8ToTitle(loc, U_TITLECASE_WHOLE_STRING | U_TITLECASE_NO_LOWERCASE | U_TITLECASE_NO_BREAK_ADJUSTMENT,
                                  nullptr, icu::StringPiece(s.data(), (int32_t)s.size()), sink, nullptr, err);
    if (U_FAILURE(err)) raise(ErrKind::type, std::string("case mapping failed: ") + u_errorName(err));
    return out;
}

}  // namespace

std::string py_upper(std::string_view s) {
    if (is_ascii(s)) {
        std::string o(s);
        for (char& ch : o)
            if (ch >= 'a' && ch <= 'z') ch = (char)(ch - 32);
        return o;
    }
    return icu_case(s, Case::upper);
}

std::string py_lower(std::string_view s) {
    if (is_ascii(s)) {
        std::string o(s);
        for (char& ch : o)
            if (ch >= 'A' && ch <= 'Z') ch = (char)(ch + 32);
        return o;
    }
    return icu_case(s, Case::lower);
}

static std::string one_char(uint32_t cp) {
    std::string s;
    append_utf8(s, cp);
    return s;
}

// str.title(): a cased character after an uncased one is title-cased, after a cased one lowered.
std::string py_title(std::string_view s) {
    std::string out;
    bool prev_cased = false;
    for (uint32_t cp : code_points(s)) {
        std::string ch = one_char(cp);
        out += prev_cased ? icu_case(ch, Case::lower) : icu_case(ch, Case::title1);
        prev_cased = u_hasBinaryProperty((UChar32)cp, UCHAR_CASED);
    }
    return out;
}

// str.capitalize() (Python >= 3.8): the first character title-cased, the rest lowered.
std::string py_capitalize(std::string_view s) {
    if (s.empty()) return std::string();
    size_t n = (size_t)seq_len(static_cast<unsigned char>(s[0]));
    return icu_case(s.substr(0, n), Case::title1) + py_lower(s.substr(n));
}

// ---------------------------------------------------------------------------------------------
// Printing

bool truthy(const Value& v) {
    switch (v.kind) {
        case Kind::undefined:
        case Kind::none: return false;
        case Kind::boolean: return v.b;
        case Kind::integer: return v.i != 0;
        case Kind::floating: return v.f != 0.0;
        case Kind::string: return !v.str().empty();
        case Kind::seq:
            return v.seq().kind == SeqKind::generator || v.seq().kind == SeqKind::reversed || !v.seq().v.empty();
        case Kind::dict: return !v.dict().v.empty();
        case Kind::ns:
        case Kind::callable:
        case Kind::loop: return true;
    }
    return true;
}

std::string type_name(const Value& v) {
    switch (v.kind) {
        case Kind::undefined: return "Undefined";
        case Kind::none: return "NoneType";
        case Kind::boolean: return "bool";
        case Kind::integer: return "int";
        case Kind::floating: return "float";
        case Kind::string: return v.markup ? "Markup" : "str";
        case Kind::seq:
            switch (v.seq().kind) {
                case SeqKind::list: return "list";
                case SeqKind::tuple: return "tuple";
                case SeqKind::range: return "range";
                case SeqKind::generator: return "generator";
                case SeqKind::reversed: return "list_reverseiterator";
                case SeqKind::keys: return "dict_keys";
                case SeqKind::values: return "dict_values";
                case SeqKind::items: return "dict_items";
            }
            return "list";
        case Kind::dict: return "dict";
        case Kind::ns: return "TemplateNamespace";
        case Kind::callable:
        case Kind::loop: return v.obj->py_type();
    }
    return "object";
}

std::string object_type_repr(const Value& v) {
    switch (v.kind) {
        case Kind::none: return "None";
        case Kind::undefined: return "jinja2.runtime.Undefined object";
        case Kind::ns: return "transformers.utils.chat_template_utils.TemplateNamespace object";
        case Kind::loop:
        case Kind::callable: return v.obj->py_type_repr();
        case Kind::string:
            if (v.markup) return "markupsafe.Markup object";
            return "str object";
        default: return type_name(v) + " object";
    }
}

std::string float_repr(double x) {
    if (std::isnan(x)) return "nan";
    if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
    if (x == 0) return std::signbit(x) ? "-0.0" : "0.0";
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
    std::string_view s(buf, (size_t)(r.ptr - buf));
    std::string out;
    if (s[0] == '-') {
        out += '-';
        s.remove_prefix(1);
    }
    size_t e = s.find('e');
    std::string digits;
    for (char c : s.substr(0, e))
        if (c != '.') digits += c;
    while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
    int exp10 = std::atoi(std::string(s.substr(e + 1)).c_str());
    int decpt = exp10 + 1;  // the decimal point sits after `decpt` digits
    const int n = (int)digits.size();
    if (decpt > 16 || decpt <= -4) {  // Python's repr switches to exponent notation here
        out += digits[0];
        if (n > 1) {
            out += '.';
            out.append(digits, 1, std::string::npos);
        }
        char eb[16];
        std::snprintf(eb, sizeof eb, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        out += eb;
    } else if (decpt <= 0) {
        out += "0.";
        out.append((size_t)-decpt, '0');
        out += digits;
    } else if (decpt >= n) {
        out += digits;
        out.append((size_t)(decpt - n), '0');
        out += ".0";
    } else {
        out.append(digits, 0, (size_t)decpt);
        out += '.';
        out.append(digits, (size_t)decpt, std::string::npos);
    }
    return out;
}

static void hex_escape(std::string& out, const char* fmt, uint32_t cp) {
    char b[16];
    std::snprintf(b, sizeof b, fmt, cp);
    out += b;
}

// Python's repr() of a str: quotes, escapes, non-printable characters as \x / \u / \U.
void string_repr(std::string& out, std::string_view s) {
    bool has_sq = s.find('\'') != std::string_view::npos, has_dq = s.find('"') != std::string_view::npos;
    char q = has_sq && !has_dq ? '"' : '\'';
    out += q;
    if (is_ascii(s)) {
        for (unsigned char c : s) {
            if (c == (unsigned char)q || c == '\\') {
                out += '\\';
                out += (char)c;
            } else if (c == '\t') out += "\\t";
            else if (c == '\n') out += "\\n";
            else if (c == '\r') out += "\\r";
            else if (c < 0x20 || c == 0x7F) hex_escape(out, "\\x%02x", c);
            else out += (char)c;
        }
    } else {
        for (uint32_t c : code_points(s)) {
            if (c == (uint32_t)q || c == '\\') {
                out += '\\';
                out += (char)c;
            } else if (c == '\t') out += "\\t";
            else if (c == '\n') out += "\\n";
            else if (c == '\r') out += "\\r";
            else if (c < 0x20 || c == 0x7F) hex_escape(out, "\\x%02x", c);
            else if (c < 0x7F || py_isprintable(c)) append_utf8(out, c);
            else if (c <= 0xFF) hex_escape(out, "\\x%02x", c);
            else if (c <= 0xFFFF) hex_escape(out, "\\u%04x", c);
            else hex_escape(out, "\\U%08x", c);
        }
    }
    out += q;
}

static void check_out(std::string& out, Budget& b) { b.check_bytes(out.size()); }

static void repr_seq_items(std::string& out, const std::vector<Value>& v, Budget& b) {
    for (size_t k = 0; k < v.size(); ++k) {
        if (k) out += ", ";
        to_repr(out, v[k], b);
        check_out(out, b);
    }
}

static void repr_dict(std::string& out, const std::vector<std::pair<Value, Value>>& v, Budget& b) {
    out += '{';
    for (size_t k = 0; k < v.size(); ++k) {
        if (k) out += ", ";
        to_repr(out, v[k].first, b);
        out += ": ";
        to_repr(out, v[k].second, b);
        check_out(out, b);
    }
    out += '}';
}

void to_repr(std::string& out, const Value& v, Budget& b) {
    b.tick();
    DepthGuard g(b);
    switch (v.kind) {
        case Kind::undefined: out += "Undefined"; return;
        case Kind::string:
            if (v.markup) {
                out += "Markup(";
                string_repr(out, v.str());
                out += ')';
            } else {
                string_repr(out, v.str());
            }
            return;
        case Kind::seq: {
            const SeqObj& s = v.seq();
            switch (s.kind) {
                case SeqKind::list:
                    out += '[';
                    repr_seq_items(out, s.v, b);
                    out += ']';
                    return;
                case SeqKind::tuple:
                    out += '(';
                    repr_seq_items(out, s.v, b);
                    if (s.v.size() == 1) out += ',';
                    out += ')';
                    return;
                case SeqKind::range:
                    out += "range(" + std::to_string(s.start) + ", " + std::to_string(s.stop);
                    if (s.step != 1) out += ", " + std::to_string(s.step);
                    out += ')';
                    return;
                case SeqKind::keys:
                case SeqKind::values:
                case SeqKind::items:
                    out += type_name(v) + "([";
                    repr_seq_items(out, s.v, b);
                    out += "])";
                    return;
                case SeqKind::generator:
                case SeqKind::reversed:
                    raise(ErrKind::unsupported, "printing a " + type_name(v) +
                                                    " object (Python prints its memory address); convert it with |list");
            }
            return;
        }
        case Kind::dict: repr_dict(out, v.dict().v, b); return;
        default: to_str(out, v, b);
    }
}

void to_str(std::string& out, const Value& v, Budget& b) {
    switch (v.kind) {
        case Kind::undefined: return;
        case Kind::none: out += "None"; return;
        case Kind::boolean: out += v.b ? "True" : "False"; return;
        case Kind::integer: out += std::to_string(v.i); return;
        case Kind::floating: out += float_repr(v.f); return;
        case Kind::string: out += v.str(); return;
        case Kind::seq:
        case Kind::dict: to_repr(out, v, b); return;
        case Kind::ns: {
            b.tick();
            DepthGuard g(b);
            out += "<Namespace {";
            for (size_t k = 0; k < v.ns->attrs.size(); ++k) {
                if (k) out += ", ";
                string_repr(out, v.ns->attrs[k].first);
                out += ": ";
                to_repr(out, v.ns->attrs[k].second, b);
                check_out(out, b);
            }
            out += "}>";
            return;
        }
        case Kind::callable:
        case Kind::loop: v.obj->py_str(out); return;
    }
}

std::string str_of(const Value& v, Budget& b) {
    if (v.is_string()) return v.str();
    std::string s;
    to_str(s, v, b);
    return s;
}

// ---------------------------------------------------------------------------------------------
// Comparison

// int == float exactly, as Python compares them (no rounding of the int).
static bool int_eq_float(int64_t i, double f) {
    if (!std::isfinite(f) || f != std::floor(f)) return false;
    if (f < -9223372036854775808.0 || f >= 9223372036854775808.0) return false;
    return (int64_t)f == i;
}

bool py_eq(const Value& a, const Value& b, Budget& bud) {
    bud.tick();
    if (a.is_number() && b.is_number()) {
        if (a.kind != Kind::floating && b.kind != Kind::floating) return a.as_int() == b.as_int();
        if (a.kind == Kind::floating && b.kind == Kind::floating) return a.f == b.f;
        return a.kind == Kind::floating ? int_eq_float(b.as_int(), a.f) : int_eq_float(a.as_int(), b.f);
    }
    if (a.kind != b.kind) return false;
    switch (a.kind) {
        case Kind::undefined:
        case Kind::none: return true;
        case Kind::string: return a.str() == b.str();
        case Kind::seq: {
            const SeqObj &x = a.seq(), &y = b.seq();
            if (&x == &y) return true;
            auto family = [](SeqKind k) {
                return k == SeqKind::list ? 0 : k == SeqKind::tuple ? 1 : k == SeqKind::range ? 2 : 3;
            };
            if (family(x.kind) != family(y.kind) || family(x.kind) == 3) return false;
            if (x.v.size() != y.v.size()) return false;
            DepthGuard g(bud);
            for (size_t k = 0; k < x.v.size(); ++k)
                if (!py_eq(x.v[k], y.v[k], bud)) return false;
            return true;
        }
        case Kind::dict: {
            const DictObj &x = a.dict(), &y = b.dict();
            if (&x == &y) return true;
            if (x.v.size() != y.v.size()) return false;
            DepthGuard g(bud);
            for (const auto& [k, val] : x.v) {
                const Value* o = y.find(k, bud);
                if (!o || !py_eq(val, *o, bud)) return false;
            }
            return true;
        }
        case Kind::ns: return a.ns == b.ns;
        default: return a.obj == b.obj;
    }
}

namespace {

enum class Ord { lt, eq, gt, unordered };

[[noreturn]] void unorderable(const Value& a, const Value& b, const char* op) {
    raise(ErrKind::type, std::string("'") + op + "' not supported between instances of '" + type_name(a) +
                             "' and '" + type_name(b) + "'");
}

Ord ord_num(const Value& a, const Value& b) {
    if (a.kind != Kind::floating && b.kind != Kind::floating) {
        int64_t x = a.as_int(), y = b.as_int();
        return x < y ? Ord::lt : x > y ? Ord::gt : Ord::eq;
    }
    // long double holds every int64 exactly (x86's 64-bit mantissa), so mixed compares are exact.
    long double x = a.kind == Kind::floating ? (long double)a.f : (long double)a.as_int();
    long double y = b.kind == Kind::floating ? (long double)b.f : (long double)b.as_int();
    if (std::isnan(x) || std::isnan(y)) return Ord::unordered;
    return x < y ? Ord::lt : x > y ? Ord::gt : Ord::eq;
}

Ord ord3(const Value& a, const Value& b, const char* op, Budget& bud) {
    bud.tick();
    if (a.is_number() && b.is_number()) return ord_num(a, b);
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    if (a.is_string() && b.is_string()) {
        int c = a.str().compare(b.str());  // UTF-8 byte order is code point order
        return c < 0 ? Ord::lt : c > 0 ? Ord::gt : Ord::eq;
    }
    if (a.is_seq() && b.is_seq()) {
        const SeqObj &x = a.seq(), &y = b.seq();
        bool lists = x.kind == SeqKind::list && y.kind == SeqKind::list;
        bool tuples = x.kind == SeqKind::tuple && y.kind == SeqKind::tuple;
        if (lists || tuples) {
            DepthGuard g(bud);
            size_t n = std::min(x.v.size(), y.v.size());
            for (size_t k = 0; k < n; ++k)
                if (!py_eq(x.v[k], y.v[k], bud)) return ord3(x.v[k], y.v[k], op, bud);
            return x.v.size() < y.v.size() ? Ord::lt : x.v.size() > y.v.size() ? Ord::gt : Ord::eq;
        }
    }
    unorderable(a, b, op);
}

}  // namespace

bool py_less(const Value& a, const Value& b, const char* op, Budget& bud) {
    std::string_view o(op);
    Ord r = ord3(a, b, op, bud);
    if (r == Ord::unordered) return false;
    if (o == "<") return r == Ord::lt;
    if (o == "<=") return r != Ord::gt;
    if (o == ">") return r == Ord::gt;
    return r != Ord::lt;  // ">="
}

// ---------------------------------------------------------------------------------------------
// json.dumps

static void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
    out += '"';
    auto esc = [&](uint32_t c) {
        switch (c) {
            case '"': out += "\\\""; return true;
            case '\\': out += "\\\\"; return true;
            case '\n': out += "\\n"; return true;
            case '\r': out += "\\r"; return true;
            case '\t': out += "\\t"; return true;
            case '\b': out += "\\b"; return true;
            case '\f': out += "\\f"; return true;
            default:
                if (c < 0x20) {
                    hex_escape(out, "\\u%04x", c);
                    return true;
                }
                return false;
        }
    };
    if (is_ascii(s)) {
        for (unsigned char c : s)
            if (!esc(c)) out += (char)c;
    } else if (!ensure_ascii) {
        for (size_t k = 0; k < s.size(); ++k) {
            unsigned char c = static_cast<unsigned char>(s[k]);
            if (c >= 0x80 || !esc(c)) out += (char)c;
        }
    } else {
        for (uint32_t c : code_points(s)) {
            if (c < 0x80) {
                if (!esc(c)) out += (char)c;
            } else if (c <= 0xFFFF) {
                hex_escape(out, "\\u%04x", c);
            } else {
                uint32_t v = c - 0x10000;
                hex_escape(out, "\\u%04x", 0xD800 + (v >> 10));
                hex_escape(out, "\\u%04x", 0xDC00 + (v & 0x3FF));
            }
        }
    }
    out += '"';
}

static void json_float(std::string& out, double f) {
    if (std::isnan(f)) out += "NaN";
    else if (std::isinf(f)) out += f > 0 ? "Infinity" : "-Infinity";
    else out += float_repr(f);
}

[[noreturn]] static void not_serializable(const Value& v) {
    raise(ErrKind::type, "Object of type " + type_name(v) + " is not JSON serializable");
}

static void newline_indent(std::string& out, const JsonOptions& o, int level) {
    out += '\n';
    for (int k = 0; k < level; ++k) out += o.indent;
}

void json_dump(std::string& out, const Value& v, const JsonOptions& o, Budget& b, int level) {
    b.tick();
    DepthGuard g(b);
    switch (v.kind) {
        case Kind::none: out += "null"; return;
        case Kind::boolean: out += v.b ? "true" : "false"; return;
        case Kind::integer: out += std::to_string(v.i); return;
        case Kind::floating: json_float(out, v.f); return;
        case Kind::string: json_string(out, v.str(), o.ensure_ascii); return;
        case Kind::seq: {
            const SeqObj& s = v.seq();
            if (s.kind != SeqKind::list && s.kind != SeqKind::tuple) not_serializable(v);
            if (s.v.empty()) {
                out += "[]";
                return;
            }
            out += '[';
            if (o.has_indent) newline_indent(out, o, level + 1);
            for (size_t k = 0; k < s.v.size(); ++k) {
                if (k) {
                    out += o.item_sep;
                    if (o.has_indent) newline_indent(out, o, level + 1);
                }
                json_dump(out, s.v[k], o, b, level + 1);
                b.check_bytes(out.size());
            }
            if (o.has_indent) newline_indent(out, o, level);
            out += ']';
            return;
        }
        case Kind::dict: {
            const auto& items = v.dict().v;
            if (items.empty()) {
                out += "{}";
                return;
            }
            std::vector<const std::pair<Value, Value>*> order;
            order.reserve(items.size());
            for (const auto& kv : items) order.push_back(&kv);
            if (o.sort_keys)
                std::stable_sort(order.begin(), order.end(), [&](auto* x, auto* y) {
                    return py_less(x->first, y->first, "<", b);
                });
            out += '{';
            if (o.has_indent) newline_indent(out, o, level + 1);
            bool first = true;
            for (const auto* kv : order) {
                if (!first) {
                    out += o.item_sep;
                    if (o.has_indent) newline_indent(out, o, level + 1);
                }
                first = false;
                const Value& k = kv->first;
                switch (k.kind) {
                    case Kind::string: json_string(out, k.str(), o.ensure_ascii); break;
                    case Kind::boolean: out += k.b ? "\"true\"" : "\"false\""; break;
                    case Kind::none: out += "\"null\""; break;
                    case Kind::integer: out += '"' + std::to_string(k.i) + '"'; break;
                    case Kind::floating: {
                        std::string f;
                        json_float(f, k.f);
                        json_string(out, f, false);
                        break;
                    }
                    default:
                        raise(ErrKind::type, "keys must be str, int, float, bool or None, not " + type_name(k));
                }
                out += o.key_sep;
                json_dump(out, kv->second, o, b, level + 1);
                b.check_bytes(out.size());
            }
            if (o.has_indent) newline_indent(out, o, level);
            out += '}';
            return;
        }
        default: not_serializable(v);
    }
}

// ---------------------------------------------------------------------------------------------
// From JSON

template <class J>
static Value from_json_t(const J& j, Budget& b) {
    b.tick();
    DepthGuard g(b);
    switch (j.type()) {
        case nlohmann::json::value_t::null: return Value::none();
        case nlohmann::json::value_t::boolean: return Value::boolean(j.template get<bool>());
        case nlohmann::json::value_t::number_integer: return Value::integer(j.template get<int64_t>());
        case nlohmann::json::value_t::number_unsigned: {
            uint64_t u = j.template get<uint64_t>();
            if (u > (uint64_t)INT64_MAX)
                raise(ErrKind::unsupported, "the context holds the integer " + std::to_string(u) +
                                                ", beyond moe's 64-bit integers");
            return Value::integer((int64_t)u);
        }
        case nlohmann::json::value_t::number_float: return Value::floating(j.template get<double>());
        case nlohmann::json::value_t::string: {
            const auto& s = j.template get_ref<const std::string&>();
            size_t bad = 0;
            if (!valid_utf8(s, &bad))
                raise(ErrKind::type, "a string of the context is not valid UTF-8 (byte " + std::to_string(bad) + ")");
            b.check_bytes(s.size());
            return Value::string(s);
        }
        case nlohmann::json::value_t::array: {
            b.check_items(j.size());
            std::vector<Value> v;
            v.reserve(j.size());
            for (const auto& e : j) v.push_back(from_json_t(e, b));
            return Value::seq(std::move(v));
        }
        case nlohmann::json::value_t::object: {
            b.check_items(j.size());
            std::vector<std::pair<Value, Value>> v;
            v.reserve(j.size());
            for (auto it = j.begin(); it != j.end(); ++it) {
                if (!valid_utf8(it.key())) raise(ErrKind::type, "a key of the context is not valid UTF-8");
                v.emplace_back(Value::string(it.key()), from_json_t(it.value(), b));
            }
            return Value::dict(std::move(v));
        }
        default: raise(ErrKind::unsupported, "binary JSON values in the context");
    }
}

Value from_json(const nlohmann::ordered_json& j, Budget& b) { return from_json_t(j, b); }
Value from_json(const nlohmann::json& j, Budget& b) { return from_json_t(j, b); }

}  // namespace moe::jinja
