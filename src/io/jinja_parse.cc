// Lexer and parser of moe's Jinja subset. The lexer follows jinja2's regular-expression lexer
// (jinja2/lexer.py) configured as transformers configures it: trim_blocks (a newline right after a
// block or comment tag is dropped), lstrip_blocks (spaces and tabs before a block or comment tag at
// the start of a line are dropped), "-" / "+" whitespace control, a single trailing newline of the
// source dropped, \r\n and \r read as \n. The parser follows jinja2/parser.py's grammar and
// precedence (filters and tests bind tighter than any operator; ** is left-associative; unary minus
// binds looser than ** on its right), and a check pass after it raises what jinja2's compiler
// raises at compile time (an unknown filter or test outside an if or inline if).
#include <unicode/uchar.h>

#include <cstdio>
#include <cstring>
#include <limits>

#include "io/jinja_ast.h"

namespace moe::jinja {

namespace {

// Python's parser recurses ~14 frames per nested expression and stops at 1000, so real templates
// nest far less than this; the bound keeps moe's own recursion (and stack) small.
constexpr int kMaxParseNesting = 100;

enum class Tok : uint8_t { data, var_begin, var_end, block_begin, block_end, name, string, integer, floating, op, eof };

struct Token {
    Tok type;
    std::string text;  // data, name, operator, decoded string
    int64_t ival = 0;
    double fval = 0;
    size_t off = 0;  // byte offset in the normalized source
};

[[noreturn]] void syntax_error(const std::string& msg, Pos p) {
    throw ChatTemplateError(ErrKind::syntax, msg, p.line, p.col);
}

std::string py_repr_str(std::string_view s) {
    std::string r;
    string_repr(r, s);
    return r;
}

class Lexer {
public:
    explicit Lexer(const std::string& src) : s_(src) {
        line_starts_.push_back(0);
        for (size_t i = 0; i < s_.size(); ++i)
            if (s_[i] == '\n') line_starts_.push_back(i + 1);
    }

    Pos pos_of(size_t off) const {
        size_t lo = 0, hi = line_starts_.size();
        while (hi - lo > 1) {
            size_t mid = (lo + hi) / 2;
            if (line_starts_[mid] <= off) lo = mid;
            else hi = mid;
        }
        Pos p;
        p.line = (int)lo + 1;
        p.col = (int)cp_count(std::string_view(s_).substr(line_starts_[lo], off - line_starts_[lo])) + 1;
        return p;
    }

    std::vector<Token> run() {
        const size_t n = s_.size();
        while (pos_ < n) {
            size_t q = find_tag(pos_);
            if (q == std::string::npos) {
                emit_data(s_.substr(pos_), pos_);
                pos_ = n;
                break;
            }
            char kind = s_[q + 1];  // '{', '%', '#'
            size_t raw_end = kind == '%' ? match_raw_begin(q) : 0;
            char sign = q + 2 < n && (s_[q + 2] == '-' || s_[q + 2] == '+') ? s_[q + 2] : 0;
            std::string text = s_.substr(pos_, q - pos_);
            if (sign == '-') {
                text = rstrip(text);
            } else if (sign != '+' && kind != '{') {
                text = lstrip_line(text);
            }
            emit_data(std::move(text), pos_);
            line_starting_ = false;
            if (raw_end) {
                line_starting_ = s_[raw_end - 1] == '\n';
                pos_ = raw_end;
                lex_raw(q);
                continue;
            }
            pos_ = q + 2 + (sign ? 1 : 0);
            if (kind == '#') {
                lex_comment(q);
            } else {
                push(kind == '{' ? Tok::var_begin : Tok::block_begin, "", q);
                lex_tag(kind == '{');
            }
        }
        push(Tok::eof, "", n);
        return std::move(toks_);
    }

private:
    const std::string& s_;
    size_t pos_ = 0;
    bool line_starting_ = true;
    std::vector<Token> toks_;
    std::vector<size_t> line_starts_;
    std::vector<char> balance_;

    [[noreturn]] void fail_at(const std::string& msg, size_t off) const { syntax_error(msg, pos_of(off)); }

    void push(Tok t, std::string text, size_t off) {
        Token k;
        k.type = t;
        k.text = std::move(text);
        k.off = off;
        toks_.push_back(std::move(k));
    }
    void emit_data(std::string text, size_t off) {
        if (!text.empty()) push(Tok::data, std::move(text), off);
    }

    size_t find_tag(size_t from) const {
        for (size_t q = s_.find('{', from); q != std::string::npos; q = s_.find('{', q + 1))
            if (q + 1 < s_.size() && (s_[q + 1] == '{' || s_[q + 1] == '%' || s_[q + 1] == '#')) return q;
        return std::string::npos;
    }

    // Length in bytes of the Python-whitespace character at i, 0 if there is none.
    size_t ws_at(size_t i) const {
        if (i >= s_.size()) return 0;
        unsigned char c = static_cast<unsigned char>(s_[i]);
        if (c < 0x80) return py_isspace(c) ? 1 : 0;
        size_t len = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (i + len > s_.size()) return 0;
        uint32_t cp = code_points(std::string_view(s_).substr(i, len))[0];
        return py_isspace(cp) ? len : 0;
    }
    size_t skip_ws(size_t i) const {
        for (size_t l; (l = ws_at(i)) != 0;) i += l;
        return i;
    }

    static std::string rstrip(const std::string& t) {
        std::vector<size_t> off = cp_offsets(t);
        std::vector<uint32_t> cps = code_points(t);
        size_t k = cps.size();
        while (k > 0 && py_isspace(cps[k - 1])) --k;
        return t.substr(0, off[k]);
    }

    // lstrip_blocks: drop the spaces between the last newline (or the start of a line) and the tag.
    std::string lstrip_line(const std::string& t) const {
        size_t nl = t.rfind('\n');
        size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if (l_pos == 0 && !line_starting_) return t;
        std::string_view tail = std::string_view(t).substr(l_pos);
        if (tail.empty()) return t;
        for (uint32_t cp : code_points(tail))
            if (!py_isspace(cp)) return t;
        return t.substr(0, l_pos);
    }

    // {%[-+]? \s* raw \s* (-%}\s* | %}) at q: the end offset of the match, 0 if it is not one.
    size_t match_raw_begin(size_t q) const {
        size_t i = q + 2;
        if (i < s_.size() && (s_[i] == '-' || s_[i] == '+')) ++i;
        i = skip_ws(i);
        if (s_.compare(i, 3, "raw") != 0) return 0;
        i = skip_ws(i + 3);
        if (s_.compare(i, 3, "-%}") == 0) return skip_ws(i + 3);
        if (s_.compare(i, 2, "%}") == 0) return i + 2;
        return 0;
    }

    void lex_raw(size_t begin) {
        if (pos_ >= s_.size()) return;  // jinja2's lexer stops quietly when the source ends right here
        for (size_t q = s_.find("{%", pos_); q != std::string::npos; q = s_.find("{%", q + 1)) {
            size_t i = q + 2;
            char sign = 0;
            if (i < s_.size() && (s_[i] == '-' || s_[i] == '+')) sign = s_[i++];
            i = skip_ws(i);
            if (s_.compare(i, 6, "endraw") != 0) continue;
            i = skip_ws(i + 6);
            size_t end;
            if (s_.compare(i, 3, "+%}") == 0) end = i + 3;
            else if (s_.compare(i, 3, "-%}") == 0) end = skip_ws(i + 3);
            else if (s_.compare(i, 2, "%}") == 0) end = i + 2 + (i + 2 < s_.size() && s_[i + 2] == '\n');
            else continue;
            std::string text = s_.substr(pos_, q - pos_);
            if (sign == '-') text = rstrip(text);
            else if (sign != '+') text = lstrip_line(text);
            emit_data(std::move(text), pos_);
            line_starting_ = s_[end - 1] == '\n';
            pos_ = end;
            return;
        }
        fail_at("Missing end of raw directive", begin);
    }

    void lex_comment(size_t begin) {
        if (pos_ >= s_.size()) return;  // as for raw: nothing after the opening tag is no error
        for (size_t q = pos_; q + 1 < s_.size(); ++q) {
            if (s_.compare(q, 3, "+#}") == 0) {
                pos_ = q + 3;
                line_starting_ = false;
                return;
            }
            if (s_.compare(q, 3, "-#}") == 0) {
                pos_ = skip_ws(q + 3);
                line_starting_ = s_[pos_ - 1] == '\n';
                return;
            }
            if (s_.compare(q, 2, "#}") == 0) {
                pos_ = q + 2;
                if (pos_ < s_.size() && s_[pos_] == '\n') ++pos_;
                line_starting_ = s_[pos_ - 1] == '\n';
                return;
            }
        }
        fail_at("Missing end of comment tag", begin);
    }

    // Inside {{ }} or {% %}: tokens up to the closing tag (only when brackets are balanced, so a
    // dict literal's "}" is not taken for the end of a print).
    void lex_tag(bool var) {
        const size_t n = s_.size();
        balance_.clear();
        while (pos_ < n) {
            if (balance_.empty()) {
                if (var) {
                    if (s_.compare(pos_, 3, "-}}") == 0) {
                        push(Tok::var_end, "", pos_);
                        pos_ = skip_ws(pos_ + 3);
                        line_starting_ = s_[pos_ - 1] == '\n';
                        return;
                    }
                    if (s_.compare(pos_, 2, "}}") == 0) {
                        push(Tok::var_end, "", pos_);
                        pos_ += 2;
                        line_starting_ = false;
                        return;
                    }
                } else {
                    if (s_.compare(pos_, 3, "+%}") == 0) {
                        push(Tok::block_end, "", pos_);
                        pos_ += 3;
                        line_starting_ = false;
                        return;
                    }
                    if (s_.compare(pos_, 3, "-%}") == 0) {
                        push(Tok::block_end, "", pos_);
                        pos_ = skip_ws(pos_ + 3);
                        line_starting_ = s_[pos_ - 1] == '\n';
                        return;
                    }
                    if (s_.compare(pos_, 2, "%}") == 0) {
                        push(Tok::block_end, "", pos_);
                        pos_ += 2;
                        if (pos_ < n && s_[pos_] == '\n') ++pos_;  // trim_blocks
                        line_starting_ = s_[pos_ - 1] == '\n';
                        return;
                    }
                }
            }
            if (size_t w = skip_ws(pos_); w != pos_) {
                pos_ = w;
                continue;
            }
            if (lex_number() || lex_name() || lex_string() || lex_operator()) continue;
            std::string ch(s_.substr(pos_, (size_t)std::max<size_t>(1, ws_len_any(pos_))));
            fail_at("unexpected char " + py_repr_str(ch) + " at " + std::to_string(cp_count(std::string_view(s_).substr(0, pos_))), pos_);
        }
        // end of source inside a tag: the parser reports the missing end
    }

    size_t ws_len_any(size_t i) const {
        unsigned char c = static_cast<unsigned char>(s_[i]);
        size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        return std::min(len, s_.size() - i);
    }

    static bool digit(char c) { return c >= '0' && c <= '9'; }

    // \d+(_\d+)* at i: its end, or npos.
    size_t digits(size_t i) const {
        if (i >= s_.size() || !digit(s_[i])) return std::string::npos;
        while (true) {
            while (i < s_.size() && digit(s_[i])) ++i;
            if (i + 1 < s_.size() && s_[i] == '_' && digit(s_[i + 1])) {
                ++i;
                continue;
            }
            return i;
        }
    }

    bool lex_number() {
        size_t start = pos_;
        if (!digit(s_[start])) return false;
        // float: (?<!\.) digits ( (\.digits)? [eE][+-]?digits | \.digits )
        if (start == 0 || s_[start - 1] != '.') {
            size_t e1 = digits(start);
            size_t end = std::string::npos;
            size_t q = e1;
            size_t frac = (q < s_.size() && s_[q] == '.') ? digits(q + 1) : std::string::npos;
            auto exponent = [&](size_t at) -> size_t {
                if (at >= s_.size() || (s_[at] != 'e' && s_[at] != 'E')) return std::string::npos;
                size_t k = at + 1;
                if (k < s_.size() && (s_[k] == '+' || s_[k] == '-')) ++k;
                return digits(k);
            };
            if (frac != std::string::npos) {
                size_t ex = exponent(frac);
                end = ex != std::string::npos ? ex : frac;
            } else {
                end = exponent(q);
            }
            if (end != std::string::npos) {
                std::string t;
                for (size_t k = start; k < end; ++k)
                    if (s_[k] != '_') t += s_[k];
                Token tok;
                tok.type = Tok::floating;
                tok.text = s_.substr(start, end - start);
                tok.fval = std::strtod(t.c_str(), nullptr);
                tok.off = start;
                toks_.push_back(std::move(tok));
                pos_ = end;
                return true;
            }
        }
        // integer: 0b / 0o / 0x with optional _ separators, [1-9](_?\d)*, 0(_?0)*
        size_t i = start;
        int base = 10;
        size_t end = start;
        auto lower = [](char c) { return (char)(c | 0x20); };
        if (s_[i] == '0' && i + 1 < s_.size() && (lower(s_[i + 1]) == 'b' || lower(s_[i + 1]) == 'o' || lower(s_[i + 1]) == 'x')) {
            char p = lower(s_[i + 1]);
            base = p == 'b' ? 2 : p == 'o' ? 8 : 16;
            auto ok = [&](char c) {
                if (base == 2) return c == '0' || c == '1';
                if (base == 8) return c >= '0' && c <= '7';
                return digit(c) || (lower(c) >= 'a' && lower(c) <= 'f');
            };
            size_t k = i + 2;
            size_t last = std::string::npos;
            while (true) {
                size_t m = k;
                if (m < s_.size() && s_[m] == '_') ++m;
                if (m < s_.size() && ok(s_[m])) {
                    k = m + 1;
                    last = k;
                } else {
                    break;
                }
            }
            if (last != std::string::npos) end = last;
            else base = 10;  // "0b" without digits: the integer is the 0
        }
        if (base == 10) {
            if (s_[i] == '0') {
                size_t k = i + 1;
                while (true) {
                    size_t m = k;
                    if (m < s_.size() && s_[m] == '_') ++m;
                    if (m < s_.size() && s_[m] == '0') k = m + 1;
                    else break;
                }
                end = k;
            } else {
                size_t k = i + 1;
                while (true) {
                    size_t m = k;
                    if (m < s_.size() && s_[m] == '_') ++m;
                    if (m < s_.size() && digit(s_[m])) k = m + 1;
                    else break;
                }
                end = k;
            }
        }
        std::string t;
        for (size_t k = (base == 10 ? start : start + 2); k < end; ++k)
            if (s_[k] != '_') t += s_[k];
        uint64_t v = 0;
        for (char c : t) {
            int d = digit(c) ? c - '0' : lower(c) - 'a' + 10;
            if (v > (uint64_t)(std::numeric_limits<int64_t>::max() - d) / (uint64_t)base)
                throw ChatTemplateError(ErrKind::unsupported, "the integer " + s_.substr(start, end - start) +
                                                                  " is beyond moe's 64-bit integers",
                                        pos_of(start).line, pos_of(start).col);
            v = v * (uint64_t)base + (uint64_t)d;
        }
        Token tok;
        tok.type = Tok::integer;
        tok.text = s_.substr(start, end - start);
        tok.ival = (int64_t)v;
        tok.off = start;
        toks_.push_back(std::move(tok));
        pos_ = end;
        return true;
    }

    // One identifier character at i (its length), 0 if there is none.
    size_t ident_char(size_t i, bool first) const {
        unsigned char c = static_cast<unsigned char>(s_[i]);
        if (c < 0x80) {
            bool ok = c == '_' || (lower_ascii(c) >= 'a' && lower_ascii(c) <= 'z') || (!first && c >= '0' && c <= '9');
            return ok ? 1 : 0;
        }
        size_t len = ws_len_any(i);
        uint32_t cp = code_points(std::string_view(s_).substr(i, len))[0];
        bool ok = u_hasBinaryProperty((UChar32)cp, first ? UCHAR_XID_START : UCHAR_XID_CONTINUE);
        return ok ? len : 0;
    }
    static char lower_ascii(unsigned char c) { return (char)(c | 0x20); }

    bool lex_name() {
        size_t l = ident_char(pos_, true);
        if (!l) return false;
        size_t i = pos_ + l;
        while (i < s_.size() && (l = ident_char(i, false)) != 0) i += l;
        push(Tok::name, s_.substr(pos_, i - pos_), pos_);
        pos_ = i;
        return true;
    }

    bool lex_string() {
        char q = s_[pos_];
        if (q != '\'' && q != '"') return false;
        size_t i = pos_ + 1;
        while (i < s_.size() && s_[i] != q) i += s_[i] == '\\' ? 2 : 1;
        if (i >= s_.size()) return false;  // unterminated: "unexpected char"
        std::string raw = s_.substr(pos_ + 1, i - pos_ - 1);
        push(Tok::string, decode_escapes(raw, pos_), pos_);
        pos_ = i + 1;
        return true;
    }

    // Python's "unicode-escape" codec on the literal (after jinja2's backslashreplace of non-ASCII
    // characters, which is why a backslash before one yields "\xe9"-like text).
    std::string decode_escapes(const std::string& raw, size_t at) const {
        if (raw.find('\\') == std::string::npos) return raw;
        std::vector<uint32_t> cps = code_points(raw);
        std::string out;
        auto hexval = [](uint32_t c) -> int {
            if (c >= '0' && c <= '9') return (int)(c - '0');
            if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') return (int)((c | 0x20) - 'a' + 10);
            return -1;
        };
        for (size_t k = 0; k < cps.size(); ++k) {
            uint32_t c = cps[k];
            if (c != '\\' || k + 1 >= cps.size()) {
                append_utf8(out, c);
                continue;
            }
            uint32_t e = cps[++k];
            if (e >= 0x80) {
                char b[16];
                if (e <= 0xFF) std::snprintf(b, sizeof b, "\\x%02x", e);
                else if (e <= 0xFFFF) std::snprintf(b, sizeof b, "\\u%04x", e);
                else std::snprintf(b, sizeof b, "\\U%08x", e);
                out += b;
                continue;
            }
            switch (e) {
                case '\n': break;
                case '\\': out += '\\'; break;
                case '\'': out += '\''; break;
                case '"': out += '"'; break;
                case 'a': out += '\a'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'v': out += '\v'; break;
                case 'x':
                case 'u':
                case 'U': {
                    int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                    uint32_t v = 0;
                    for (int d = 0; d < nd; ++d) {
                        int h = k + 1 < cps.size() ? hexval(cps[k + 1]) : -1;
                        if (h < 0) {
                            const char* what = e == 'x' ? "truncated \\xXX escape" : e == 'u' ? "truncated \\uXXXX escape"
                                                                                              : "truncated \\UXXXXXXXX escape";
                            fail_at(what, at);
                        }
                        v = v * 16 + (uint32_t)h;
                        ++k;
                    }
                    if (v > 0x10FFFF) fail_at("illegal Unicode character", at);
                    if (v >= 0xD800 && v <= 0xDFFF)
                        throw ChatTemplateError(ErrKind::unsupported, "a lone surrogate escape in a string literal",
                                                pos_of(at).line, pos_of(at).col);
                    append_utf8(out, v);
                    break;
                }
                case 'N': {
                    size_t close = k + 1;
                    if (close >= cps.size() || cps[close] != '{') fail_at("malformed \\N character escape", at);
                    std::string name;
                    size_t j = close + 1;
                    while (j < cps.size() && cps[j] != '}') append_utf8(name, cps[j++]);
                    if (j >= cps.size() || name.empty()) fail_at("malformed \\N character escape", at);
                    UErrorCode err = U_ZERO_ERROR;
                    UChar32 cp = u_charFromName(U_UNICODE_CHAR_NAME, name.c_str(), &err);
                    if (U_FAILURE(err)) {
                        err = U_ZERO_ERROR;
                        cp = u_charFromName(U_CHAR_NAME_ALIAS, name.c_str(), &err);
                    }
                    if (U_FAILURE(err)) fail_at("unknown Unicode character name", at);
                    append_utf8(out, (uint32_t)cp);
                    k = j;
                    break;
                }
                default:
                    if (e >= '0' && e <= '7') {
                        uint32_t v = e - '0';
                        for (int d = 0; d < 2 && k + 1 < cps.size() && cps[k + 1] >= '0' && cps[k + 1] <= '7'; ++d)
                            v = v * 8 + (cps[++k] - '0');
                        append_utf8(out, v);
                    } else {
                        out += '\\';
                        append_utf8(out, e);
                    }
            }
        }
        return out;
    }

    bool lex_operator() {
        static const char* two[] = {"**", "//", "==", "!=", ">=", "<="};
        for (const char* o : two)
            if (s_.compare(pos_, 2, o) == 0) {
                push(Tok::op, o, pos_);
                pos_ += 2;
                return true;
            }
        char c = s_[pos_];
        if (!std::strchr("+-/*%~[](){}=.:|,;<>", c) || c == 0) return false;
        if (c == '{' || c == '(' || c == '[') balance_.push_back(c == '{' ? '}' : c == '(' ? ')' : ']');
        if (c == '}' || c == ')' || c == ']') {
            if (balance_.empty()) fail_at(std::string("unexpected '") + c + "'", pos_);
            char want = balance_.back();
            balance_.pop_back();
            if (want != c) fail_at(std::string("unexpected '") + c + "', expected '" + want + "'", pos_);
        }
        push(Tok::op, std::string(1, c), pos_);
        ++pos_;
        return true;
    }
};

// ---------------------------------------------------------------------------------------------

class Parser {
public:
    Parser(std::vector<Token> toks, const Lexer& lx) : t_(std::move(toks)), lx_(lx) {}

    Body parse_all() {
        Body b = subparse({});
        return b;
    }

private:
    std::vector<Token> t_;
    const Lexer& lx_;
    size_t i_ = 0;
    int nesting_ = 0;
    int loop_depth_ = 0;  // break / continue are valid only directly inside a for body
    std::vector<std::string> tag_stack_;
    std::vector<std::vector<std::string>> end_stack_;

    struct Nest {
        explicit Nest(Parser& p) : p_(p) {
            if (++p_.nesting_ > kMaxParseNesting) {
                --p_.nesting_;
                throw ChatTemplateError(ErrKind::limit, "the template nests deeper than moe's limit of " +
                                                            std::to_string(kMaxParseNesting), p_.pos().line, p_.pos().col);
            }
        }
        ~Nest() { --p_.nesting_; }
        Parser& p_;
    };

    const Token& cur() const { return t_[i_]; }
    const Token& look() const { return t_[std::min(i_ + 1, t_.size() - 1)]; }
    Pos pos() const { return lx_.pos_of(cur().off); }
    Pos pos_of(const Token& t) const { return lx_.pos_of(t.off); }
    void next() {
        if (i_ + 1 < t_.size()) ++i_;
    }
    bool is_op(const char* o) const { return cur().type == Tok::op && cur().text == o; }
    bool is_name(const char* n) const { return cur().type == Tok::name && cur().text == n; }
    bool skip_op(const char* o) {
        if (!is_op(o)) return false;
        next();
        return true;
    }
    bool skip_name(const char* n) {
        if (!is_name(n)) return false;
        next();
        return true;
    }

    [[noreturn]] void fail(const std::string& msg) const { syntax_error(msg, pos()); }

    static std::string describe(const Token& t) {
        switch (t.type) {
            case Tok::name: return t.text;
            case Tok::op: return t.text;
            case Tok::data: return "template data / text";
            case Tok::var_begin: return "begin of print statement";
            case Tok::var_end: return "end of print statement";
            case Tok::block_begin: return "begin of statement block";
            case Tok::block_end: return "end of statement block";
            case Tok::string: return "string";
            case Tok::integer: return "integer";
            case Tok::floating: return "float";
            case Tok::eof: return "end of template";
        }
        return "token";
    }

    void expect_type(Tok ty, const char* desc) {
        if (cur().type != ty) {
            if (cur().type == Tok::eof) fail(std::string("unexpected end of template, expected '") + desc + "'.");
            fail(std::string("expected token '") + desc + "', got '" + describe(cur()) + "'");
        }
        next();
    }
    void expect_op(const char* o) {
        if (!is_op(o)) {
            if (cur().type == Tok::eof) fail(std::string("unexpected end of template, expected '") + o + "'.");
            fail(std::string("expected token '") + o + "', got '" + describe(cur()) + "'");
        }
        next();
    }
    std::string expect_name() {
        if (cur().type != Tok::name) {
            if (cur().type == Tok::eof) fail("unexpected end of template, expected 'name'.");
            fail("expected token 'name', got '" + describe(cur()) + "'");
        }
        std::string n = cur().text;
        next();
        return n;
    }
    void expect_name_value(const char* n) {
        if (!is_name(n)) {
            if (cur().type == Tok::eof) fail(std::string("unexpected end of template, expected '") + n + "'.");
            fail(std::string("expected token '") + n + "', got '" + describe(cur()) + "'");
        }
        next();
    }

    [[noreturn]] void fail_unknown_tag_or_eof(const std::string* name, const std::vector<std::string>* extra) {
        std::vector<std::vector<std::string>> stack = end_stack_;
        if (extra) stack.push_back(*extra);
        std::string msg = name ? "Encountered unknown tag '" + *name + "'." : "Unexpected end of template.";
        if (!stack.empty()) {
            std::string looking;
            for (size_t k = 0; k < stack.back().size(); ++k) looking += (k ? " or '" : "'") + stack.back()[k] + "'";
            bool expected = false;
            if (name)
                for (const auto& v : stack)
                    for (const auto& e : v) expected |= e == *name;
            if (expected)
                msg += " You probably made a nesting mistake. Jinja is expecting this tag, but currently looking for " + looking + ".";
            else
                msg += " Jinja was looking for the following tags: " + looking + ".";
        }
        if (!tag_stack_.empty()) msg += " The innermost block that needs to be closed is '" + tag_stack_.back() + "'.";
        fail(msg);
    }

    ExprPtr node(ExprKind k, Pos p) {
        auto e = std::make_unique<Expr>();
        e->kind = k;
        e->pos = p;
        return e;
    }

    // ---- statements

    Body subparse(const std::vector<std::string>& end_tokens) {
        Body body;
        if (!end_tokens.empty()) end_stack_.push_back(end_tokens);
        while (cur().type != Tok::eof) {
            const Token& tk = cur();
            if (tk.type == Tok::data) {
                auto s = std::make_unique<Stmt>();
                s->kind = StmtKind::text;
                s->pos = pos();
                s->text = tk.text;
                body.push_back(std::move(s));
                next();
            } else if (tk.type == Tok::var_begin) {
                next();
                auto s = std::make_unique<Stmt>();
                s->kind = StmtKind::print;
                s->pos = pos();
                s->items.push_back(parse_tuple(false, true, nullptr, false, false));
                expect_type(Tok::var_end, "end of print statement");
                body.push_back(std::move(s));
            } else if (tk.type == Tok::block_begin) {
                next();
                if (cur().type == Tok::name)
                    for (const auto& e : end_tokens)
                        if (cur().text == e) {
                            end_stack_.pop_back();
                            return body;
                        }
                body.push_back(parse_statement());
                expect_type(Tok::block_end, "end of statement block");
            } else {
                fail("unexpected '" + describe(tk) + "'");
            }
        }
        if (!end_tokens.empty()) end_stack_.pop_back();
        return body;
    }

    Body parse_statements(const std::vector<std::string>& end_tokens, bool drop_needle) {
        skip_op(":");
        expect_type(Tok::block_end, "end of statement block");
        Body b = subparse(end_tokens);
        if (cur().type == Tok::eof) fail_unknown_tag_or_eof(nullptr, &end_tokens);
        if (drop_needle) next();
        return b;
    }

    StmtPtr parse_statement() {
        Nest nest(*this);
        if (cur().type != Tok::name) fail("tag name expected");
        std::string tag = cur().text;
        static const char* unsupported[] = {"block", "extends", "include", "import", "from", "autoescape"};
        for (const char* u : unsupported)
            if (tag == u)
                throw ChatTemplateError(ErrKind::unsupported, "the '" + tag + "' tag (templates that load other templates or "
                                                              "change autoescaping) is not in moe's Jinja subset",
                                        pos().line, pos().col);
        tag_stack_.push_back(tag);
        StmtPtr s;
        if (tag == "for") s = parse_for();
        else if (tag == "if") s = parse_if();
        else if (tag == "set") s = parse_set();
        else if (tag == "macro") s = parse_macro();
        else if (tag == "call") s = parse_call_block();
        else if (tag == "filter") s = parse_filter_block();
        else if (tag == "with") s = parse_with();
        else if (tag == "print") s = parse_print();
        else if (tag == "generation") s = parse_generation();
        else if (tag == "break" || tag == "continue") {
            if (loop_depth_ == 0) fail("'" + tag + "' outside a for loop");
            s = std::make_unique<Stmt>();
            s->kind = tag == "break" ? StmtKind::break_ : StmtKind::continue_;
            s->pos = pos();
            next();
        } else {
            tag_stack_.pop_back();
            fail_unknown_tag_or_eof(&tag, nullptr);
        }
        tag_stack_.pop_back();
        return s;
    }

    StmtPtr parse_for() {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::for_;
        s->pos = pos();
        expect_name_value("for");
        static const std::vector<std::string> in_rule = {"in"};
        s->target = parse_assign_target(true, false, &in_rule, false);
        check_loop_target(*s->target);
        expect_name_value("in");
        static const std::vector<std::string> rec_rule = {"recursive"};
        s->expr = parse_tuple(false, false, &rec_rule, false, false);
        if (skip_name("if")) s->cond = parse_expression(true);
        s->recursive = skip_name("recursive");
        int saved = loop_depth_;
        loop_depth_ = 1;
        s->body = parse_statements({"endfor", "else"}, false);
        loop_depth_ = saved;
        bool is_end = cur().text == "endfor";
        next();
        if (!is_end) s->else_body = parse_statements({"endfor"}, true);
        return s;
    }

    void check_loop_target(const Expr& t) {
        if (t.kind == ExprKind::name && t.name == "loop")
            syntax_error("Can't assign to special loop variable in for-loop target", t.pos);
        for (const auto& it : t.items) check_loop_target(*it);
    }

    StmtPtr parse_if() {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::if_;
        s->pos = pos();
        expect_name_value("if");
        Stmt* node = s.get();
        while (true) {
            node->expr = parse_tuple(false, false, nullptr, false, false);
            node->body = parse_statements({"elif", "else", "endif"}, false);
            std::string which = cur().text;
            next();
            if (which == "elif") {
                auto e = std::make_unique<Stmt>();
                e->kind = StmtKind::if_;
                e->pos = pos();
                Stmt* raw = e.get();
                node->else_body.push_back(std::move(e));
                node = raw;
                continue;
            }
            if (which == "else") node->else_body = parse_statements({"endif"}, true);
            break;
        }
        return s;
    }

    StmtPtr parse_set() {
        auto s = std::make_unique<Stmt>();
        s->pos = pos();
        next();
        s->target = parse_assign_target(true, false, nullptr, true);
        if (skip_op("=")) {
            s->kind = StmtKind::set;
            s->expr = parse_tuple(false, true, nullptr, false, false);
            return s;
        }
        s->kind = StmtKind::set_block;
        s->expr = parse_filter(nullptr, false);
        int saved = loop_depth_;
        loop_depth_ = 0;
        s->body = parse_statements({"endset"}, true);
        loop_depth_ = saved;
        return s;
    }

    void parse_signature(MacroDef& m) {
        expect_op("(");
        while (!is_op(")")) {
            if (!m.params.empty()) expect_op(",");
            Pos p = pos();
            std::string name = expect_name();
            if (name == "true" || name == "false" || name == "True" || name == "False" || name == "none" || name == "None")
                syntax_error("can't assign to 'const'", p);
            if (skip_op("=")) m.defaults.push_back(parse_expression(true));
            else if (!m.defaults.empty()) fail("non-default argument follows default argument");
            m.params.push_back(name);
        }
        expect_op(")");
        for (size_t k = 0; k < m.params.size(); ++k)
            if (m.params[k] == "caller" && k < m.params.size() - m.defaults.size())
                fail("When defining macros or call blocks the special \"caller\" argument must be omitted or be given a default.");
    }

    static void scan_specials(const Body& body, MacroDef& m);
    static void scan_specials(const Expr* e, MacroDef& m);

    StmtPtr parse_macro() {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::macro;
        s->pos = pos();
        next();
        auto m = std::make_shared<MacroDef>();
        m->pos = pos();
        m->name = expect_name();
        parse_signature(*m);
        int saved = loop_depth_;
        loop_depth_ = 0;
        m->body = parse_statements({"endmacro"}, true);
        loop_depth_ = saved;
        scan_specials(m->body, *m);
        for (const auto& p : m->params) {
            if (p == "varargs") m->catch_varargs = false;
            if (p == "kwargs") m->catch_kwargs = false;
        }
        s->macro = std::move(m);
        return s;
    }

    StmtPtr parse_call_block() {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::call_block;
        s->pos = pos();
        next();
        auto m = std::make_shared<MacroDef>();
        m->name = "caller";
        m->pos = s->pos;
        if (is_op("(")) parse_signature(*m);
        s->expr = parse_expression(true);
        if (s->expr->kind != ExprKind::call) syntax_error("expected call", s->pos);
        int saved = loop_depth_;
        loop_depth_ = 0;
        m->body = parse_statements({"endcall"}, true);
        loop_depth_ = saved;
        scan_specials(m->body, *m);
        s->macro = std::move(m);
        return s;
    }

    StmtPtr parse_filter_block() {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::filter_block;
        s->pos = pos();
        next();
        s->expr = parse_filter(nullptr, true);
        int saved = loop_depth_;
        loop_depth_ = 0;
        s->body = parse_statements({"endfilter"}, true);
        loop_depth_ = saved;
        return s;
    }

    StmtPtr parse_with() {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::with;
        s->pos = pos();
        next();
        while (cur().type != Tok::block_end) {
            if (!s->with_pairs.empty()) expect_op(",");
            ExprPtr target = parse_assign_target(true, false, nullptr, false);
            expect_op("=");
            ExprPtr value = parse_expression(true);
            s->with_pairs.emplace_back(std::move(target), std::move(value));
        }
        int saved = loop_depth_;
        loop_depth_ = 0;
        s->body = parse_statements({"endwith"}, true);
        loop_depth_ = saved;
        return s;
    }

    StmtPtr parse_print() {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::print;
        s->pos = pos();
        next();
        while (cur().type != Tok::block_end) {
            if (!s->items.empty()) expect_op(",");
            s->items.push_back(parse_expression(true));
        }
        return s;
    }

    // transformers' {% generation %} marks assistant text for its token mask; rendering it is a
    // call block, so the body runs in a scope of its own.
    StmtPtr parse_generation() {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::scope;
        s->pos = pos();
        next();
        int saved = loop_depth_;
        loop_depth_ = 0;
        s->body = parse_statements({"endgeneration"}, true);
        loop_depth_ = saved;
        return s;
    }

    // ---- expressions

    ExprPtr parse_assign_target(bool with_tuple, bool name_only, const std::vector<std::string>* extra_end,
                                bool with_namespace) {
        ExprPtr t;
        if (name_only) {
            t = node(ExprKind::name, pos());
            t->name = expect_name();
        } else if (with_tuple) {
            t = parse_tuple(true, true, extra_end, false, with_namespace);
        } else {
            t = parse_primary(with_namespace);
        }
        check_assignable(*t);
        return t;
    }

    void check_assignable(const Expr& t) {
        switch (t.kind) {
            case ExprKind::name:
            case ExprKind::nsref: return;
            case ExprKind::tuple:
                for (const auto& it : t.items) check_assignable(*it);
                return;
            default: {
                const char* what = t.kind == ExprKind::constant ? "const" : t.kind == ExprKind::list ? "list"
                                   : t.kind == ExprKind::dict   ? "dict"
                                                                : "expression";
                syntax_error(std::string("can't assign to '") + what + "'", t.pos);
            }
        }
    }

    bool is_tuple_end(const std::vector<std::string>* extra) const {
        if (cur().type == Tok::var_end || cur().type == Tok::block_end || is_op(")")) return true;
        if (extra && cur().type == Tok::name)
            for (const auto& e : *extra)
                if (cur().text == e) return true;
        return false;
    }

    ExprPtr parse_tuple(bool simplified, bool with_condexpr, const std::vector<std::string>* extra_end,
                        bool explicit_parens, bool with_namespace) {
        Pos p = pos();
        std::vector<ExprPtr> args;
        bool is_tuple = false;
        while (true) {
            if (!args.empty()) expect_op(",");
            if (is_tuple_end(extra_end)) break;
            args.push_back(simplified ? parse_primary(with_namespace) : parse_expression(with_condexpr));
            if (is_op(",")) is_tuple = true;
            else break;
        }
        if (!is_tuple) {
            if (!args.empty()) return std::move(args[0]);
            if (!explicit_parens) fail("Expected an expression, got '" + describe(cur()) + "'");
        }
        ExprPtr t = node(ExprKind::tuple, p);
        t->items = std::move(args);
        return t;
    }

    ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

    ExprPtr parse_condexpr() {
        Nest nest(*this);
        Pos p = pos();
        ExprPtr e1 = parse_or();
        while (skip_name("if")) {
            ExprPtr e2 = parse_or();
            ExprPtr e3 = skip_name("else") ? parse_condexpr() : nullptr;
            ExprPtr c = node(ExprKind::condexpr, p);
            c->a = std::move(e1);
            c->b = std::move(e2);
            c->c = std::move(e3);
            e1 = std::move(c);
            p = pos();
        }
        return e1;
    }

    ExprPtr binary(ExprKind k, Pos p, ExprPtr l, ExprPtr r, Op op = Op::add) {
        ExprPtr e = node(k, p);
        e->op = op;
        e->a = std::move(l);
        e->b = std::move(r);
        return e;
    }

    ExprPtr parse_or() {
        Pos p = pos();
        ExprPtr l = parse_and();
        while (skip_name("or")) l = binary(ExprKind::or_, p, std::move(l), parse_and());
        return l;
    }

    ExprPtr parse_and() {
        Pos p = pos();
        ExprPtr l = parse_not();
        while (skip_name("and")) l = binary(ExprKind::and_, p, std::move(l), parse_not());
        return l;
    }

    ExprPtr parse_not() {
        if (is_name("not")) {
            Nest nest(*this);
            Pos p = pos();
            next();
            ExprPtr e = node(ExprKind::not_, p);
            e->a = parse_not();
            return e;
        }
        return parse_compare();
    }

    ExprPtr parse_compare() {
        Pos p = pos();
        ExprPtr e = parse_math1();
        ExprPtr cmp;
        while (true) {
            Op op;
            if (is_op("==")) op = Op::eq;
            else if (is_op("!=")) op = Op::ne;
            else if (is_op("<")) op = Op::lt;
            else if (is_op("<=")) op = Op::le;
            else if (is_op(">")) op = Op::gt;
            else if (is_op(">=")) op = Op::ge;
            else if (is_name("in")) op = Op::in;
            else if (is_name("not") && look().type == Tok::name && look().text == "in") {
                next();
                op = Op::notin;
            } else {
                break;
            }
            next();
            if (!cmp) {
                cmp = node(ExprKind::compare, p);
                cmp->a = std::move(e);
            }
            cmp->ops.push_back(op);
            cmp->items.push_back(parse_math1());
        }
        return cmp ? std::move(cmp) : std::move(e);
    }

    ExprPtr parse_math1() {
        Pos p = pos();
        ExprPtr l = parse_concat();
        while (is_op("+") || is_op("-")) {
            Op op = is_op("+") ? Op::add : Op::sub;
            next();
            l = binary(ExprKind::binary, p, std::move(l), parse_concat(), op);
            p = pos();
        }
        return l;
    }

    ExprPtr parse_concat() {
        Pos p = pos();
        ExprPtr first = parse_math2();
        if (!is_op("~")) return first;
        ExprPtr c = node(ExprKind::concat, p);
        c->items.push_back(std::move(first));
        while (skip_op("~")) c->items.push_back(parse_math2());
        return c;
    }

    ExprPtr parse_math2() {
        Pos p = pos();
        ExprPtr l = parse_pow();
        while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
            Op op = is_op("*") ? Op::mul : is_op("/") ? Op::div : is_op("//") ? Op::floordiv : Op::mod;
            next();
            l = binary(ExprKind::binary, p, std::move(l), parse_pow(), op);
            p = pos();
        }
        return l;
    }

    ExprPtr parse_pow() {
        Pos p = pos();
        ExprPtr l = parse_unary(true);
        while (skip_op("**")) {
            l = binary(ExprKind::binary, p, std::move(l), parse_unary(true), Op::pow);
            p = pos();
        }
        return l;
    }

    ExprPtr parse_unary(bool with_filter) {
        Nest nest(*this);
        Pos p = pos();
        ExprPtr n;
        if (is_op("-") || is_op("+")) {
            Op op = is_op("-") ? Op::neg : Op::pos;
            next();
            n = node(ExprKind::unary, p);
            n->op = op;
            n->a = parse_unary(false);
        } else {
            n = parse_primary(false);
        }
        n = parse_postfix(std::move(n));
        if (with_filter) n = parse_filter_expr(std::move(n));
        return n;
    }

    ExprPtr parse_primary(bool with_namespace) {
        Nest nest(*this);
        const Token& tk = cur();
        Pos p = pos();
        if (tk.type == Tok::name) {
            std::string v = tk.text;
            next();
            if (v == "true" || v == "false" || v == "True" || v == "False") {
                ExprPtr e = node(ExprKind::constant, p);
                e->value = Value::boolean(v == "true" || v == "True");
                return e;
            }
            if (v == "none" || v == "None") {
                ExprPtr e = node(ExprKind::constant, p);
                e->value = Value::none();
                return e;
            }
            if (with_namespace && is_op(".")) {
                next();
                ExprPtr e = node(ExprKind::nsref, p);
                e->name = v;
                e->attr = expect_name();
                return e;
            }
            ExprPtr e = node(ExprKind::name, p);
            e->name = v;
            return e;
        }
        if (tk.type == Tok::string) {
            std::string s;
            while (cur().type == Tok::string) {
                s += cur().text;
                next();
            }
            ExprPtr e = node(ExprKind::constant, p);
            e->value = Value::string(std::move(s));
            return e;
        }
        if (tk.type == Tok::integer || tk.type == Tok::floating) {
            ExprPtr e = node(ExprKind::constant, p);
            e->value = tk.type == Tok::integer ? Value::integer(tk.ival) : Value::floating(tk.fval);
            next();
            return e;
        }
        if (is_op("(")) {
            next();
            ExprPtr e = parse_tuple(false, true, nullptr, true, false);
            expect_op(")");
            return e;
        }
        if (is_op("[")) {
            next();
            ExprPtr e = node(ExprKind::list, p);
            while (!is_op("]")) {
                if (!e->items.empty()) expect_op(",");
                if (is_op("]")) break;
                e->items.push_back(parse_expression(true));
            }
            expect_op("]");
            return e;
        }
        if (is_op("{")) {
            next();
            ExprPtr e = node(ExprKind::dict, p);
            while (!is_op("}")) {
                if (!e->items.empty()) expect_op(",");
                if (is_op("}")) break;
                e->items.push_back(parse_expression(true));
                expect_op(":");
                e->items.push_back(parse_expression(true));
            }
            expect_op("}");
            return e;
        }
        fail("unexpected '" + describe(tk) + "'");
    }

    ExprPtr parse_postfix(ExprPtr n) {
        while (true) {
            if (is_op(".") || is_op("[")) n = parse_subscript(std::move(n));
            else if (is_op("(")) n = parse_call(std::move(n));
            else break;
        }
        return n;
    }

    ExprPtr parse_filter_expr(ExprPtr n) {
        while (true) {
            if (is_op("|")) n = parse_filter(std::move(n), false);
            else if (is_name("is")) n = parse_test(std::move(n));
            else if (is_op("(")) n = parse_call(std::move(n));
            else break;
        }
        return n;
    }

    ExprPtr parse_subscript(ExprPtr n) {
        Pos p = pos();
        if (skip_op(".")) {
            const Token& at = cur();
            if (at.type == Tok::name) {
                ExprPtr e = node(ExprKind::getattr, p);
                e->a = std::move(n);
                e->name = at.text;
                next();
                return e;
            }
            if (at.type != Tok::integer) fail("expected name or number");
            ExprPtr idx = node(ExprKind::constant, pos());
            idx->value = Value::integer(at.ival);
            next();
            ExprPtr e = node(ExprKind::getitem, p);
            e->a = std::move(n);
            e->b = std::move(idx);
            return e;
        }
        expect_op("[");
        std::vector<ExprPtr> args;
        while (!is_op("]")) {
            if (!args.empty()) expect_op(",");
            args.push_back(parse_subscribed());
        }
        expect_op("]");
        ExprPtr e = node(ExprKind::getitem, p);
        e->a = std::move(n);
        if (args.size() == 1) {
            e->b = std::move(args[0]);
        } else {
            e->b = node(ExprKind::tuple, p);
            e->b->items = std::move(args);
        }
        return e;
    }

    ExprPtr parse_subscribed() {
        Pos p = pos();
        ExprPtr start;
        if (is_op(":")) {
            next();
        } else {
            ExprPtr e = parse_expression(true);
            if (!is_op(":")) return e;
            next();
            start = std::move(e);
        }
        ExprPtr s = node(ExprKind::slice, p);
        s->items.push_back(std::move(start));
        if (is_op(":")) s->items.push_back(nullptr);
        else if (!is_op("]") && !is_op(",")) s->items.push_back(parse_expression(true));
        else s->items.push_back(nullptr);
        if (skip_op(":")) {
            if (!is_op("]") && !is_op(",")) s->items.push_back(parse_expression(true));
            else s->items.push_back(nullptr);
        } else {
            s->items.push_back(nullptr);
        }
        return s;
    }

    void parse_call_args(Expr& e) {
        Pos p = pos();
        expect_op("(");
        bool require_comma = false;
        auto ensure = [&](bool ok) {
            if (!ok) syntax_error("invalid syntax for function call expression", p);
        };
        while (!is_op(")")) {
            if (require_comma) {
                expect_op(",");
                if (is_op(")")) break;
            }
            if (is_op("*")) {
                ensure(!e.dyn_args && !e.dyn_kwargs);
                next();
                e.dyn_args = parse_expression(true);
            } else if (is_op("**")) {
                ensure(!e.dyn_kwargs);
                next();
                e.dyn_kwargs = parse_expression(true);
            } else if (cur().type == Tok::name && look().type == Tok::op && look().text == "=") {
                ensure(!e.dyn_kwargs);
                std::string key = cur().text;
                next();
                next();
                e.kwargs.emplace_back(std::move(key), parse_expression(true));
            } else {
                ensure(!e.dyn_args && !e.dyn_kwargs && e.kwargs.empty());
                e.items.push_back(parse_expression(true));
            }
            require_comma = true;
        }
        expect_op(")");
    }

    ExprPtr parse_call(ExprPtr n) {
        ExprPtr e = node(ExprKind::call, pos());
        e->a = std::move(n);
        parse_call_args(*e);
        return e;
    }

    ExprPtr parse_filter(ExprPtr n, bool start_inline) {
        while (is_op("|") || start_inline) {
            if (!start_inline) next();
            Pos p = pos();
            std::string name = expect_name();
            while (skip_op(".")) {
                std::string part = expect_name();
                name += '.';
                name += part;
            }
            ExprPtr f = node(ExprKind::filter, p);
            f->a = std::move(n);
            f->name = name;
            f->builtin = filter_index(name);
            if (is_op("(")) parse_call_args(*f);
            n = std::move(f);
            start_inline = false;
        }
        return n;
    }

    ExprPtr parse_test(ExprPtr n) {
        Pos p = pos();
        next();  // "is"
        bool negated = skip_name("not");
        std::string name = expect_name();
        while (skip_op(".")) {
            std::string part = expect_name();
            name += '.';
            name += part;
        }
        ExprPtr t = node(ExprKind::test, p);
        t->a = std::move(n);
        t->name = name;
        t->builtin = test_index(name);
        if (is_op("(")) {
            parse_call_args(*t);
        } else {
            const Token& c = cur();
            bool arg_start = c.type == Tok::name || c.type == Tok::string || c.type == Tok::integer ||
                             c.type == Tok::floating || is_op("(") || is_op("[") || is_op("{");
            if (arg_start && !is_name("else") && !is_name("or") && !is_name("and")) {
                if (is_name("is")) fail("You cannot chain multiple tests with is");
                t->items.push_back(parse_postfix(parse_primary(false)));
            }
        }
        if (!negated) return t;
        ExprPtr nn = node(ExprKind::not_, p);
        nn->a = std::move(t);
        return nn;
    }
};

void Parser::scan_specials(const Expr* e, MacroDef& m) {
    if (!e) return;
    if (e->kind == ExprKind::name) {
        if (e->name == "varargs") m.catch_varargs = true;
        if (e->name == "kwargs") m.catch_kwargs = true;
        if (e->name == "caller") m.uses_caller = true;
    }
    scan_specials(e->a.get(), m);
    scan_specials(e->b.get(), m);
    scan_specials(e->c.get(), m);
    for (const auto& it : e->items) scan_specials(it.get(), m);
    for (const auto& kv : e->kwargs) scan_specials(kv.second.get(), m);
    scan_specials(e->dyn_args.get(), m);
    scan_specials(e->dyn_kwargs.get(), m);
}

// Which of varargs / kwargs / caller a macro body reads (jinja2 decides the macro's signature by
// this); nested macro bodies are their own.
void Parser::scan_specials(const Body& body, MacroDef& m) {
    for (const auto& s : body) {
        scan_specials(s->expr.get(), m);
        scan_specials(s->cond.get(), m);
        for (const auto& it : s->items) scan_specials(it.get(), m);
        for (const auto& w : s->with_pairs) scan_specials(w.second.get(), m);
        if (s->kind == StmtKind::macro) continue;
        if (s->kind == StmtKind::call_block) {
            for (const auto& d : s->macro->defaults) scan_specials(d.get(), m);
            scan_specials(s->macro->body, m);
        }
        scan_specials(s->body, m);
        scan_specials(s->else_body, m);
    }
}

// ---------------------------------------------------------------------------------------------
// jinja2's compile-time checks: a filter or test it does not know is an error when the template is
// compiled, except inside an if statement or an inline if ("soft" frames), where it fails only if
// it runs. Loop bodies, macros and other inner scopes are not soft.

void check_expr(const Expr* e, bool soft);

void check_body(const Body& body, bool soft) {
    for (const auto& s : body) {
        switch (s->kind) {
            case StmtKind::text:
            case StmtKind::break_:
            case StmtKind::continue_: break;
            case StmtKind::print:
                for (const auto& it : s->items) check_expr(it.get(), soft);
                break;
            case StmtKind::if_:
                check_expr(s->expr.get(), true);
                check_body(s->body, true);
                check_body(s->else_body, true);
                break;
            case StmtKind::for_:
                check_expr(s->expr.get(), soft);
                check_expr(s->cond.get(), false);
                check_body(s->body, false);
                check_body(s->else_body, false);
                break;
            case StmtKind::set: check_expr(s->expr.get(), soft); break;
            case StmtKind::set_block:
            case StmtKind::filter_block:
                check_expr(s->expr.get(), false);
                check_body(s->body, false);
                break;
            case StmtKind::macro:
                for (const auto& d : s->macro->defaults) check_expr(d.get(), false);
                check_body(s->macro->body, false);
                break;
            case StmtKind::call_block:
                check_expr(s->expr.get(), soft);
                for (const auto& d : s->macro->defaults) check_expr(d.get(), false);
                check_body(s->macro->body, false);
                break;
            case StmtKind::with:
                for (const auto& w : s->with_pairs) check_expr(w.second.get(), false);
                check_body(s->body, false);
                break;
            case StmtKind::scope: check_body(s->body, false); break;
        }
    }
}

void check_expr(const Expr* e, bool soft) {
    if (!e) return;
    if (e->kind == ExprKind::condexpr) soft = true;
    if ((e->kind == ExprKind::filter || e->kind == ExprKind::test) && e->builtin < 0 && !soft) {
        bool filter = e->kind == ExprKind::filter;
        if (filter && jinja2_has_filter(e->name))
            throw ChatTemplateError(ErrKind::unsupported, "the filter '" + e->name + "' is not in moe's Jinja subset",
                                    e->pos.line, e->pos.col);
        throw ChatTemplateError(ErrKind::syntax, std::string("No ") + (filter ? "filter" : "test") + " named '" + e->name + "'.",
                                e->pos.line, e->pos.col);
    }
    check_expr(e->a.get(), soft);
    check_expr(e->b.get(), soft);
    check_expr(e->c.get(), soft);
    for (const auto& it : e->items) check_expr(it.get(), soft);
    for (const auto& kv : e->kwargs) check_expr(kv.second.get(), soft);
    check_expr(e->dyn_args.get(), soft);
    check_expr(e->dyn_kwargs.get(), soft);
}

}  // namespace

std::shared_ptr<Program> parse_template(const std::string& source) {
    size_t bad = 0;
    if (!valid_utf8(source, &bad))
        throw ChatTemplateError(ErrKind::syntax, "the template is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
    // jinja2 reads \r\n and \r as \n everywhere and drops one trailing newline (keep_trailing_newline
    // is off).
    std::string src;
    src.reserve(source.size());
    for (size_t k = 0; k < source.size(); ++k) {
        if (source[k] == '\r') {
            src += '\n';
            if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
        } else {
            src += source[k];
        }
    }
    if (!src.empty() && src.back() == '\n') src.pop_back();
    Lexer lx(src);
    std::vector<Token> toks = lx.run();
    Parser p(std::move(toks), lx);
    auto prog = std::make_shared<Program>();
    prog->body = p.parse_all();
    check_body(prog->body, false);
    return prog;
}

}  // namespace moe::jinja
