// jinja2's filters, tests and globals, the ones transformers adds (raise_exception, strftime_now,
// a json.dumps tojson), and the Python str / list / dict methods templates call, each with the
// semantics of its Python original (jinja2/filters.py, jinja2/tests.py, CPython's str methods).
#include <algorithm>
#include <clocale>
#include <cmath>
#include <cstring>
#include <locale.h>

#include <unicode/bytestream.h>
#include <unicode/casemap.h>
#include <unicode/uchar.h>

#include "io/jinja_eval.h"

namespace moe::jinja {

namespace {

using Bound = std::vector<const Value*>;

Value arg_or(const Value* p, Value dflt) { return p ? *p : dflt; }

bool arg_bool(const Value* p, bool dflt) { return p ? truthy(*p) : dflt; }

int64_t arg_int(const Value* p, int64_t dflt, const char* what) {
    if (!p || p->is_none()) return dflt;
    if (p->is_undefined()) fail_undefined(*p);
    if (!p->is_int()) type_error(std::string("'") + type_name(*p) + "' object cannot be interpreted as an integer (" + what + ")");
    return p->as_int();
}

// Python's ADJUST_INDICES for str.find & co: start/end in code points, clamped to [0, len].
void adjust_indices(int64_t& start, int64_t& end, int64_t len) {
    if (end > len) end = len;
    else if (end < 0) {
        end += len;
        if (end < 0) end = 0;
    }
    if (start < 0) {
        start += len;
        if (start < 0) start = 0;
    }
}

// A str with code point <-> byte offset maps (only built for non-ASCII text).
struct UStr {
    explicit UStr(const std::string& str) : s(str), ascii(is_ascii(str)) {
        if (!ascii) off = cp_offsets(str);
    }
    const std::string& s;
    bool ascii;
    std::vector<size_t> off;
    int64_t len() const { return ascii ? (int64_t)s.size() : (int64_t)off.size() - 1; }
    size_t byte(int64_t cp) const { return ascii ? (size_t)cp : off[(size_t)cp]; }
    int64_t cp_of(size_t b) const {
        if (ascii) return (int64_t)b;
        return (int64_t)(std::lower_bound(off.begin(), off.end(), b) - off.begin());
    }
    std::string sub(int64_t a, int64_t b) const { return a >= b ? std::string() : s.substr(byte(a), byte(b) - byte(a)); }
};

bool is_linebreak(uint32_t c) {
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
           c == 0x2028 || c == 0x2029;
}

std::vector<std::string> py_splitlines(const std::string& s, bool keepends) {
    std::vector<uint32_t> cps = code_points(s);
    std::vector<std::string> out;
    size_t i = 0, n = cps.size();
    auto piece = [&](size_t a, size_t b) {
        std::string r;
        for (size_t k = a; k < b; ++k) append_utf8(r, cps[k]);
        return r;
    };
    while (i < n) {
        size_t j = i;
        while (i < n && !is_linebreak(cps[i])) ++i;
        size_t eol = i;
        if (i < n) {
            if (cps[i] == '\r' && i + 1 < n && cps[i + 1] == '\n') i += 2;
            else ++i;
            if (keepends) eol = i;
        }
        out.push_back(piece(j, eol));
    }
    return out;
}

// str.strip / lstrip / rstrip: whitespace, or the characters of `chars`.
std::string py_strip(const std::string& s, const Value* chars, int which /*1 left, 2 right, 3 both*/) {
    std::vector<uint32_t> set;
    bool ws = !chars || chars->is_none();
    if (!ws) {
        if (!chars->is_string()) type_error("strip arg must be None or str");
        set = code_points(chars->str());
    }
    auto strip_it = [&](uint32_t c) { return ws ? py_isspace(c) : std::find(set.begin(), set.end(), c) != set.end(); };
    std::vector<uint32_t> cps = code_points(s);
    size_t a = 0, b = cps.size();
    if (which & 1)
        while (a < b && strip_it(cps[a])) ++a;
    if (which & 2)
        while (b > a && strip_it(cps[b - 1])) --b;
    if (a == 0 && b == cps.size()) return s;
    std::vector<size_t> off = cp_offsets(s);
    return s.substr(off[a], off[b] - off[a]);
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& neu, int64_t count, Budget& b) {
    if (count < 0) count = INT64_MAX;
    std::string out;
    if (old.empty()) {
        std::vector<size_t> off = cp_offsets(s);
        int64_t done = 0;
        for (size_t k = 0; k + 1 < off.size(); ++k) {
            if (done < count) {
                out += neu;
                ++done;
            }
            out.append(s, off[k], off[k + 1] - off[k]);
            b.check_bytes(out.size());
        }
        if (done < count) out += neu;
        b.check_bytes(out.size());
        return out;
    }
    size_t pos = 0;
    int64_t done = 0;
    while (done < count) {
        size_t f = s.find(old, pos);
        if (f == std::string::npos) break;
        out.append(s, pos, f - pos);
        out += neu;
        pos = f + old.size();
        ++done;
        b.check_bytes(out.size());
        b.tick();
    }
    out.append(s, pos, std::string::npos);
    b.check_bytes(out.size());
    return out;
}

std::vector<std::string> py_split(const std::string& s, const Value* sepv, int64_t maxsplit, bool right) {
    std::vector<std::string> out;
    if (maxsplit < 0) maxsplit = INT64_MAX;
    if (!sepv || sepv->is_none()) {
        std::vector<uint32_t> c = code_points(s);
        const int64_t n = (int64_t)c.size();
        auto piece = [&](int64_t a, int64_t b) {
            std::string r;
            for (int64_t k = a; k < b; ++k) append_utf8(r, c[(size_t)k]);
            return r;
        };
        if (!right) {
            int64_t i = 0, j;
            while (maxsplit-- > 0) {
                while (i < n && py_isspace(c[(size_t)i])) ++i;
                if (i == n) break;
                j = i++;
                while (i < n && !py_isspace(c[(size_t)i])) ++i;
                out.push_back(piece(j, i));
            }
            if (i < n) {
                while (i < n && py_isspace(c[(size_t)i])) ++i;
                if (i != n) out.push_back(piece(i, n));
            }
        } else {
            int64_t i = n - 1, j;
            while (maxsplit-- > 0) {
                while (i >= 0 && py_isspace(c[(size_t)i])) --i;
                if (i < 0) break;
                j = i--;
                while (i >= 0 && !py_isspace(c[(size_t)i])) --i;
                out.push_back(piece(i + 1, j + 1));
            }
            if (i >= 0) {
                while (i >= 0 && py_isspace(c[(size_t)i])) --i;
                if (i >= 0) out.push_back(piece(0, i + 1));
            }
            std::reverse(out.begin(), out.end());
        }
        return out;
    }
    if (!sepv->is_string()) type_error("must be str or None, not " + type_name(*sepv));
    const std::string& sep = sepv->str();
    if (sep.empty()) raise(ErrKind::type, "empty separator");
    if (!right) {
        size_t pos = 0;
        while (maxsplit-- > 0) {
            size_t f = s.find(sep, pos);
            if (f == std::string::npos) break;
            out.push_back(s.substr(pos, f - pos));
            pos = f + sep.size();
        }
        out.push_back(s.substr(pos));
    } else {
        size_t end = s.size();
        while (maxsplit-- > 0) {
            if (end < sep.size()) break;
            size_t f = s.rfind(sep, end - sep.size());
            if (f == std::string::npos) break;
            out.push_back(s.substr(f + sep.size(), end - f - sep.size()));
            end = f;
        }
        out.push_back(s.substr(0, end));
        std::reverse(out.begin(), out.end());
    }
    return out;
}

Value str_list(Renderer& r, const std::vector<std::string>& v) {
    std::vector<Value> out;
    out.reserve(v.size());
    for (const auto& s : v) out.push_back(Value::string(s));
    return r.list(std::move(out));
}

std::string html_escape_str(const std::string& s) {
    std::string o;
    for (char c : s) {
        switch (c) {
            case '&': o += "&amp;"; break;
            case '<': o += "&lt;"; break;
            case '>': o += "&gt;"; break;
            case '"': o += "&#34;"; break;
            case '\'': o += "&#39;"; break;
            default: o += c;
        }
    }
    return o;
}

// Python's float(str): surrounding whitespace, a sign, digits with single underscores, nan / inf.
bool parse_py_float(const std::string& in, double& out) {
    std::string s = py_strip(in, nullptr, 3);
    if (s.empty() || !is_ascii(s)) return false;
    std::string low = py_lower(s);
    std::string body = low;
    if (body[0] == '+' || body[0] == '-') body = body.substr(1);
    if (body == "nan" || body == "inf" || body == "infinity") {
        double v = body == "nan" ? NAN : INFINITY;
        out = low[0] == '-' ? -v : v;
        return true;
    }
    std::string clean;
    size_t i = 0;
    if (s[i] == '+' || s[i] == '-') clean += s[i++];
    bool digits = false, dot = false, exp = false;
    char prev = 0;
    for (; i < s.size(); ++i) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            digits = true;
            clean += c;
        } else if (c == '_') {
            if (!(prev >= '0' && prev <= '9') || i + 1 >= s.size() || !(s[i + 1] >= '0' && s[i + 1] <= '9')) return false;
        } else if (c == '.' && !dot && !exp) {
            dot = true;
            clean += c;
        } else if ((c == 'e' || c == 'E') && digits && !exp) {
            exp = true;
            clean += c;
            if (i + 1 < s.size() && (s[i + 1] == '+' || s[i + 1] == '-')) clean += s[++i];
            if (i + 1 >= s.size()) return false;
            digits = false;
        } else {
            return false;
        }
        prev = c;
    }
    if (!digits) return false;
    char* end = nullptr;
    out = std::strtod(clean.c_str(), &end);
    return end && *end == 0;
}

// Python's int(str, base) for base 2..36 or 0; false when Python raises ValueError.
bool parse_py_int(const std::string& in, int64_t base, int64_t& out) {
    std::string s = py_strip(in, nullptr, 3);
    if (s.empty() || !is_ascii(s)) return false;
    size_t i = 0;
    bool neg = false;
    if (s[i] == '+' || s[i] == '-') neg = s[i++] == '-';
    auto lower = [](char c) { return (char)(c | 0x20); };
    if (i + 1 < s.size() && s[i] == '0' && (lower(s[i + 1]) == 'x' || lower(s[i + 1]) == 'o' || lower(s[i + 1]) == 'b')) {
        int64_t pb = lower(s[i + 1]) == 'x' ? 16 : lower(s[i + 1]) == 'o' ? 8 : 2;
        if (base == 0 || base == pb) {
            base = pb;
            i += 2;
            if (i < s.size() && s[i] == '_') ++i;
        }
    }
    if (base == 0) {
        base = 10;
        // base 0 rejects leading zeros in a non-zero decimal ("010")
        size_t k = i;
        while (k < s.size() && (s[k] == '0' || s[k] == '_')) ++k;
        if (k > i && k < s.size()) return false;
    }
    if (base < 2 || base > 36) raise(ErrKind::type, "int() base must be >= 2 and <= 36, or 0");
    if (i >= s.size()) return false;
    uint64_t v = 0;
    bool any = false;
    char prev = '_';
    for (; i < s.size(); ++i) {
        char c = s[i];
        if (c == '_') {
            if (prev == '_' || i + 1 >= s.size()) return false;
            prev = c;
            continue;
        }
        int d = c >= '0' && c <= '9' ? c - '0' : (lower(c) >= 'a' && lower(c) <= 'z') ? lower(c) - 'a' + 10 : 99;
        if (d >= base) return false;
        if (v > ((uint64_t)INT64_MAX + (neg ? 1 : 0) - (uint64_t)d) / (uint64_t)base)
            raise(ErrKind::unsupported, "integer overflow (moe's integers are 64-bit)");
        v = v * (uint64_t)base + (uint64_t)d;
        any = true;
        prev = c;
    }
    if (!any) return false;
    out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

int64_t float_to_int(double f) {
    if (std::isnan(f)) raise(ErrKind::type, "cannot convert float NaN to integer");
    if (std::isinf(f)) raise(ErrKind::type, "cannot convert float infinity to integer");
    double t = std::trunc(f);
    if (t < -9223372036854775808.0 || t >= 9223372036854775808.0)
        raise(ErrKind::unsupported, "integer overflow (moe's integers are 64-bit)");
    return (int64_t)t;
}

// round(x, n) for floats: Python rounds the exact binary value half-to-even at the decimal digit,
// so print it exactly (glibc prints every digit), round the digit string, and parse it back.
double py_round(double x, int64_t n) {
    if (!std::isfinite(x) || x == 0.0) return x;
    if (n > 340) return x;
    if (n < -340) return std::copysign(0.0, x);
    char buf[1600];
    std::snprintf(buf, sizeof buf, "%.1100f", std::fabs(x));
    std::string s(buf);
    size_t dot = s.find('.');
    std::string ip = s.substr(0, dot), fp = s.substr(dot + 1);
    std::string digits = ip + fp;  // value = digits * 10^-fp.size()
    int64_t keep = (int64_t)ip.size() + n;  // digits kept
    if (keep < 0) return std::copysign(0.0, x);
    if (keep >= (int64_t)digits.size()) return x;
    bool round_up;
    char next = digits[(size_t)keep];
    bool rest_zero = digits.find_first_not_of('0', (size_t)keep + 1) == std::string::npos;
    if (next > '5') round_up = true;
    else if (next < '5') round_up = false;
    else if (!rest_zero) round_up = true;
    else round_up = keep > 0 && ((digits[(size_t)keep - 1] - '0') & 1);  // tie: to even
    std::string kept = digits.substr(0, (size_t)keep);
    if (kept.empty()) kept = "0";
    if (round_up) {
        int64_t k = (int64_t)kept.size() - 1;
        while (k >= 0 && kept[(size_t)k] == '9') kept[(size_t)k--] = '0';
        if (k < 0) kept.insert(kept.begin(), '1');
        else kept[(size_t)k]++;
    }
    std::string num = kept + "e" + std::to_string(-n);
    double r = std::strtod(num.c_str(), nullptr);
    if (std::isinf(r)) raise(ErrKind::type, "rounded value too large to represent");
    return std::copysign(r, x);
}

// make_attrgetter: "a.b.0" looked up item-first, integer parts as integers.
Value get_path(Renderer& r, const Value& item, const Value& attribute, const Value* dflt = nullptr) {
    if (attribute.is_none()) return item;
    std::vector<Value> parts;
    if (attribute.is_string()) {
        std::string a = attribute.str();
        size_t pos = 0;
        while (true) {
            size_t d = a.find('.', pos);
            std::string p = a.substr(pos, d == std::string::npos ? std::string::npos : d - pos);
            bool digits = !p.empty() && std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; });
            int64_t iv = 0;
            if (digits && p.size() < 19) {
                for (char c : p) iv = iv * 10 + (c - '0');
                parts.push_back(Value::integer(iv));
            } else {
                parts.push_back(Value::string(p));
            }
            if (d == std::string::npos) break;
            pos = d + 1;
        }
    } else {
        parts.push_back(attribute);
    }
    Value v = item;
    for (const auto& p : parts) {
        v = r.getitem(v, p);
        if (dflt && !dflt->is_none() && v.is_undefined()) v = *dflt;
    }
    return v;
}

Value ignore_case(const Value& v) {
    if (v.is_string()) return Value::string(py_lower(v.str()));
    return v;
}

int64_t py_len(Renderer& r, const Value& v) {
    switch (v.kind) {
        case Kind::undefined: return 0;
        case Kind::string: return (int64_t)cp_count(v.str());
        case Kind::seq:
            if (v.seq().kind == SeqKind::generator || v.seq().kind == SeqKind::reversed)
                type_error("object of type '" + type_name(v) + "' has no len()");
            return (int64_t)v.seq().v.size();
        case Kind::dict: return (int64_t)v.dict().v.size();
        case Kind::loop: return (int64_t)static_cast<const LoopObj&>(*v.obj).items.size();
        default: (void)r; type_error("object of type '" + type_name(v) + "' has no len()");
    }
}

// printf-style formatting (str % args and |format): %s %r %d %i %u %f %F %e %E %g %G %x %X %o %c %%
// with flags, width and precision.
template <class T>
std::string c_format(Budget& b, const std::string& spec, T v) {
    int n = std::snprintf(nullptr, 0, spec.c_str(), v);
    if (n < 0) raise(ErrKind::type, "bad format");
    b.add_bytes((size_t)n);
    std::string out((size_t)n + 1, '\0');
    std::snprintf(out.data(), out.size(), spec.c_str(), v);
    out.pop_back();
    return out;
}
}  // namespace

Value printf_format(Renderer& r, const std::string& fmt, const Value& args) {
    // CPython's PyUnicode_Format: a tuple is the argument list, anything else one argument; an
    // argument with __getitem__ (dict, list, undefined, not str) may also serve %(key)s and may go
    // unused without "not all arguments converted".
    std::vector<Value> pos;
    const bool tuple = args.is_seq() && args.seq().kind == SeqKind::tuple;
    if (tuple) pos = args.seq().v;
    else pos.push_back(args);
    const bool maplike = !tuple && (args.is_dict() || args.is_undefined() ||
                                    (args.is_seq() && (args.seq().kind == SeqKind::list || args.seq().kind == SeqKind::range)));
    const Value* mapping = maplike ? &args : nullptr;
    size_t next_arg = 0;
    std::string out;
    for (size_t i = 0; i < fmt.size(); ++i) {
        char c = fmt[i];
        if (c != '%') {
            out += c;
            continue;
        }
        if (++i >= fmt.size()) raise(ErrKind::type, "incomplete format");
        const Value* arg = nullptr;
        if (fmt[i] == '(') {
            size_t close = fmt.find(')', i);
            if (close == std::string::npos) raise(ErrKind::type, "incomplete format key");
            if (!mapping) type_error("format requires a mapping");
            std::string key = fmt.substr(i + 1, close - i - 1);
            if (mapping->is_undefined()) fail_undefined(*mapping);
            if (!mapping->is_dict()) type_error(type_name(*mapping) + " indices must be integers or slices, not str");
            const Value* v = mapping->dict().find(key);
            if (!v) raise(ErrKind::type, "'" + key + "'");
            arg = v;
            i = close + 1;
        }
        std::string flags;
        while (i < fmt.size() && std::strchr("-+ #0", fmt[i])) flags += fmt[i++];
        std::string width, prec;
        while (i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9') width += fmt[i++];
        if (i < fmt.size() && fmt[i] == '.') {
            ++i;
            prec = ".";
            while (i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9') prec += fmt[i++];
        }
        while (i < fmt.size() && (fmt[i] == 'h' || fmt[i] == 'l' || fmt[i] == 'L')) ++i;
        if (i >= fmt.size()) raise(ErrKind::type, "incomplete format");
        if (width.size() > 6 || prec.size() > 6) raise(ErrKind::unsupported, "a format width or precision beyond 999999");
        char conv = fmt[i];
        if (conv == '%') {
            out += '%';
            continue;
        }
        if (!arg) {
            if (next_arg >= pos.size()) raise(ErrKind::type, "not enough arguments for format string");
            arg = &pos[next_arg++];
        }
        std::string piece;
        switch (conv) {
            case 's':
            case 'r': {
                piece = conv == 's' ? r.to_string(*arg) : [&] { std::string s; to_repr(s, *arg, r.budget); return s; }();
                if (prec.size() > 1) {
                    int64_t p = std::atoll(prec.c_str() + 1);
                    std::vector<size_t> off = cp_offsets(piece);
                    if ((int64_t)off.size() - 1 > p) piece = piece.substr(0, off[(size_t)p]);
                }
                int64_t w = width.empty() ? 0 : std::atoll(width.c_str());
                int64_t len = (int64_t)cp_count(piece);
                if (len < w) {
                    r.budget.add_bytes(piece.size() + (size_t)(w - len));
                    std::string pad((size_t)(w - len), ' ');
                    piece = flags.find('-') != std::string::npos ? piece + pad : pad + piece;
                }
                break;
            }
            case 'd':
            case 'i':
            case 'u':
            case 'x':
            case 'X':
            case 'o': {
                if (arg->is_undefined()) fail_undefined(*arg);
                int64_t v;
                if (arg->is_int()) v = arg->as_int();
                else if (arg->kind == Kind::floating && (conv == 'd' || conv == 'i' || conv == 'u')) v = float_to_int(arg->f);
                else type_error(std::string("%") + conv + " format: " + (conv == 'd' || conv == 'i' || conv == 'u' ? "a real number" : "an integer") +
                                " is required, not " + type_name(*arg));
                std::string spec = "%" + flags + width + prec + "ll" + (conv == 'i' || conv == 'u' ? 'd' : conv);
                if (conv == 'x' || conv == 'X' || conv == 'o') {
                    // Python prints the sign and the magnitude, C would print the two's complement
                    std::string mag_spec = "%" + flags + width + prec + "ll" + conv;
                    piece = c_format(r.budget, mag_spec, (unsigned long long)(v < 0 ? 0 - (uint64_t)v : (uint64_t)v));
                    if (v < 0) {
                        size_t k = piece.find_first_not_of(' ');
                        piece.insert(k == std::string::npos ? 0 : k, "-");
                        if (!width.empty() && piece.size() > (size_t)std::atoll(width.c_str()) && piece[0] == ' ') piece.erase(0, 1);
                    }
                    if (conv == 'o' && flags.find('#') != std::string::npos) {
                        size_t k = piece.find('0');
                        if (k != std::string::npos) piece.insert(k + 1, "o");
                    }
                } else {
                    piece = c_format(r.budget, spec, (long long)v);
                }
                break;
            }
            case 'f':
            case 'F':
            case 'e':
            case 'E':
            case 'g':
            case 'G': {
                if (arg->is_undefined()) fail_undefined(*arg);
                if (!arg->is_number()) type_error("must be real number, not " + type_name(*arg));
                std::string spec = "%" + flags + width + prec + conv;
                piece = c_format(r.budget, spec, arg->as_double());
                break;
            }
            case 'c': {
                if (arg->is_string() && cp_count(arg->str()) == 1) piece = arg->str();
                else if (arg->is_int() && arg->as_int() >= 0 && arg->as_int() <= 0x10FFFF &&
                         !(arg->as_int() >= 0xD800 && arg->as_int() <= 0xDFFF))
                    append_utf8(piece, (uint32_t)arg->as_int());
                else type_error("%c requires an int or a unicode character");
                break;
            }
            default:
                raise(ErrKind::unsupported, std::string("the printf-style conversion '%") + conv + "'");
        }
        out += piece;
        r.budget.check_bytes(out.size());
    }
    if (!maplike && next_arg < pos.size()) raise(ErrKind::type, "not all arguments converted during string formatting");
    return r.str(std::move(out));
}

namespace {

// str.format with plain fields ({}, {0}, {name}, {0.attr}, {0[key]}, !r / !s); format specs are
// not in the subset.
Value str_format(Renderer& r, const std::string& fmt, const Args& a) {
    std::string out;
    int auto_idx = 0;
    bool manual = false, automatic = false;
    for (size_t i = 0; i < fmt.size(); ++i) {
        char c = fmt[i];
        if (c == '}') {
            if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
                out += '}';
                ++i;
                continue;
            }
            raise(ErrKind::type, "Single '}' encountered in format string");
        }
        if (c != '{') {
            out += c;
            continue;
        }
        if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
            out += '{';
            ++i;
            continue;
        }
        size_t close = fmt.find('}', i);
        if (close == std::string::npos) raise(ErrKind::type, "expected '}' before end of string");
        std::string field = fmt.substr(i + 1, close - i - 1);
        i = close;
        if (field.find('{') != std::string::npos) raise(ErrKind::unsupported, "nested fields in str.format");
        char conv = 0;
        size_t colon = field.find(':');
        if (colon != std::string::npos) {
            if (colon + 1 < field.size()) raise(ErrKind::unsupported, "format specs in str.format ('" + field.substr(colon) + "')");
            field = field.substr(0, colon);
        }
        size_t bang = field.find('!');
        if (bang != std::string::npos) {
            if (bang + 2 != field.size() || (field[bang + 1] != 'r' && field[bang + 1] != 's'))
                raise(ErrKind::unsupported, "the str.format conversion '" + field.substr(bang) + "'");
            conv = field[bang + 1];
            field = field.substr(0, bang);
        }
        size_t end = field.find_first_of(".[");
        std::string first = field.substr(0, end);
        Value v;
        if (first.empty() || std::all_of(first.begin(), first.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
            size_t idx;
            if (first.empty()) {
                if (manual) raise(ErrKind::type, "cannot switch from manual field specification to automatic field numbering");
                automatic = true;
                idx = (size_t)auto_idx++;
            } else {
                if (automatic) raise(ErrKind::type, "cannot switch from automatic field numbering to manual field specification");
                manual = true;
                if (first.size() > 9) raise(ErrKind::type, "Too many decimal digits in format string");
                idx = (size_t)std::stoul(first);
            }
            if (idx >= a.pos.size())
                raise(ErrKind::type, "tuple index out of range");
            v = a.pos[idx];
        } else {
            const Value* kv = nullptr;
            for (const auto& p : a.kw)
                if (p.first == first) kv = &p.second;
            if (!kv) raise(ErrKind::type, "'" + first + "'");
            v = *kv;
        }
        while (end != std::string::npos && end < field.size()) {
            if (field[end] == '.') {
                size_t nx = field.find_first_of(".[", end + 1);
                v = r.getattr(v, field.substr(end + 1, nx == std::string::npos ? std::string::npos : nx - end - 1));
                end = nx;
            } else {
                size_t cl = field.find(']', end);
                if (cl == std::string::npos) raise(ErrKind::type, "Missing ']' in format string");
                std::string key = field.substr(end + 1, cl - end - 1);
                bool digits = !key.empty() && key.size() < 18 && std::all_of(key.begin(), key.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
                v = r.getitem(v, digits ? Value::integer(std::stoll(key)) : Value::string(key));
                end = cl + 1;
            }
        }
        if (conv == 'r') to_repr(out, v, r.budget);
        else to_str(out, v, r.budget);
        r.budget.check_bytes(out.size());
    }
    return r.str(std::move(out));
}

Value make_bool(bool b) { return Value::boolean(b); }

std::string pad_center(const std::string& s, int64_t width, uint32_t fill, int how /*0 center 1 ljust 2 rjust*/) {
    int64_t len = (int64_t)cp_count(s);
    if (width <= len) return s;
    int64_t marg = width - len;
    int64_t left = how == 0 ? marg / 2 + (marg & width & 1) : how == 1 ? 0 : marg;
    std::string f;
    append_utf8(f, fill);
    std::string out;
    for (int64_t k = 0; k < left; ++k) out += f;
    out += s;
    for (int64_t k = 0; k < marg - left; ++k) out += f;
    return out;
}

// ---------------------------------------------------------------------------------------------
// Filters

using FilterFn = Value (*)(Renderer&, const Value&, Args&);

Value f_abs(Renderer&, const Value& v, Args& a) {
    bind_args("abs", {}, a);
    if (v.kind == Kind::floating) return Value::floating(std::fabs(v.f));
    if (v.is_int()) {
        if (v.as_int() == INT64_MIN) raise(ErrKind::unsupported, "integer overflow (moe's integers are 64-bit)");
        return Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
    }
    type_error("bad operand type for abs(): '" + type_name(v) + "'");
}

Value f_attr(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("attr", {"name"}, a, 1);
    if (v.is_undefined()) fail_undefined(v);
    if (!b[0]->is_string()) type_error("attribute name must be string");
    bool found = false;
    Value x = r.attribute(v, b[0]->str(), found);
    if (found) return x;
    return undefined_attr(v, *b[0], r.budget);
}

Value f_batch(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("batch", {"linecount", "fill_with"}, a, 1);
    int64_t n = arg_int(b[0], 0, "linecount");
    Value fill = arg_or(b[1], Value::none());
    std::vector<Value> out, tmp;
    for (auto& item : r.iterate(v)) {
        if ((int64_t)tmp.size() == n) {
            out.push_back(r.list(std::move(tmp)));
            tmp.clear();
        }
        tmp.push_back(std::move(item));
    }
    if (!tmp.empty()) {
        if (!fill.is_none() && (int64_t)tmp.size() < n) {
            r.budget.check_items((size_t)n);
            while ((int64_t)tmp.size() < n) tmp.push_back(fill);
        }
        out.push_back(r.list(std::move(tmp)));
    }
    return r.list(std::move(out), SeqKind::generator);
}

Value f_capitalize(Renderer& r, const Value& v, Args& a) {
    bind_args("capitalize", {}, a);
    return r.str(py_capitalize(r.to_string(v)));
}

Value f_center(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("center", {"width"}, a);
    int64_t w = arg_int(b[0], 80, "width");
    r.budget.check_bytes((size_t)std::max<int64_t>(0, std::min<int64_t>(w, INT32_MAX)));
    return r.str(pad_center(r.to_string(v), w, ' ', 0));
}

Value f_length(Renderer& r, const Value& v, Args& a) {
    bind_args("length", {}, a);
    return Value::integer(py_len(r, v));
}

Value f_default(Renderer&, const Value& v, Args& a) {
    Bound b = bind_args("default", {"default_value", "boolean"}, a);
    if (v.is_undefined() || (arg_bool(b[1], false) && !truthy(v))) return arg_or(b[0], Value::string(""));
    return v;
}

Value f_dictsort(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("dictsort", {"case_sensitive", "by", "reverse"}, a);
    bool cs = arg_bool(b[0], false);
    std::string by = b[1] ? r.to_string(*b[1]) : "key";
    bool rev = arg_bool(b[2], false);
    int pos;
    if (by == "key") pos = 0;
    else if (by == "value") pos = 1;
    else raise(ErrKind::type, "You can only sort by either \"key\" or \"value\"");
    if (!v.is_dict()) type_error("'" + type_name(v) + "' object has no attribute 'items'");
    std::vector<std::pair<Value, Value>> items = v.dict().v;
    std::vector<Value> keys;
    for (auto& kv : items) keys.push_back(cs ? (pos ? kv.second : kv.first) : ignore_case(pos ? kv.second : kv.first));
    std::vector<size_t> idx(items.size());
    for (size_t k = 0; k < idx.size(); ++k) idx[k] = k;
    std::stable_sort(idx.begin(), idx.end(), [&](size_t x, size_t y) {
        return rev ? py_less(keys[y], keys[x], "<", r.budget) : py_less(keys[x], keys[y], "<", r.budget);
    });
    std::vector<Value> out;
    for (size_t k : idx) out.push_back(Value::seq({items[k].first, items[k].second}, SeqKind::tuple));
    return r.list(std::move(out));
}

Value f_escape(Renderer& r, const Value& v, Args& a) {
    bind_args("escape", {}, a);
    if (v.is_string() && v.markup) return v;
    return r.str(html_escape_str(r.to_string(v)), true);
}

Value f_forceescape(Renderer& r, const Value& v, Args& a) {
    bind_args("forceescape", {}, a);
    return r.str(html_escape_str(r.to_string(v)), true);
}

Value f_first(Renderer& r, const Value& v, Args& a) {
    bind_args("first", {}, a);
    if (v.is_string()) {
        if (v.str().empty()) return Value::undefined("No first item, sequence was empty.");
        std::vector<size_t> off = cp_offsets(v.str());
        return Value::string(v.str().substr(0, off[1]));
    }
    if (v.is_dict()) {
        if (v.dict().v.empty()) return Value::undefined("No first item, sequence was empty.");
        return v.dict().v.front().first;
    }
    std::vector<Value> items = r.iterate(v);
    if (items.empty()) return Value::undefined("No first item, sequence was empty.");
    return items.front();
}

Value f_last(Renderer& r, const Value& v, Args& a) {
    bind_args("last", {}, a);
    if (v.is_seq() && (v.seq().kind == SeqKind::generator || v.seq().kind == SeqKind::reversed || v.seq().kind == SeqKind::keys ||
                       v.seq().kind == SeqKind::values || v.seq().kind == SeqKind::items))
        type_error("'" + type_name(v) + "' object is not reversible");
    std::vector<Value> items = r.iterate(v);
    if (items.empty()) return Value::undefined("No last item, sequence was empty.");
    return items.back();
}

Value f_float(Renderer&, const Value& v, Args& a) {
    Bound b = bind_args("float", {"default"}, a);
    Value dflt = arg_or(b[0], Value::floating(0.0));
    if (v.is_undefined()) fail_undefined(v);
    if (v.kind == Kind::floating) return v;
    if (v.is_int()) return Value::floating((double)v.as_int());
    if (v.is_string()) {
        double d;
        if (parse_py_float(v.str(), d)) return Value::floating(d);
    }
    return dflt;
}

Value f_format(Renderer& r, const Value& v, Args& a) {
    if (!a.pos.empty() && !a.kw.empty()) raise(ErrKind::type, "can't handle positional and keyword arguments at the same time");
    Value args;
    if (!a.kw.empty()) {
        std::vector<std::pair<Value, Value>> kv;
        for (auto& p : a.kw) kv.emplace_back(Value::string(p.first), p.second);
        args = Value::dict(std::move(kv));
    } else {
        args = Value::seq(a.pos, SeqKind::tuple);
    }
    return printf_format(r, r.to_string(v), args);
}

Value f_indent(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("indent", {"width", "first", "blank"}, a);
    std::string ind;
    if (b[0] && b[0]->is_string()) ind = b[0]->str();
    else {
        int64_t w = arg_int(b[0], 4, "width");
        r.budget.check_bytes((size_t)std::max<int64_t>(0, std::min<int64_t>(w, INT32_MAX)));
        ind = std::string((size_t)std::max<int64_t>(0, w), ' ');
    }
    bool first = arg_bool(b[1], false), blank = arg_bool(b[2], false);
    if (v.is_undefined()) fail_undefined(v);
    if (!v.is_string()) type_error("unsupported operand type(s) for +=: '" + type_name(v) + "' and 'str'");
    std::string s = v.str() + "\n";
    std::vector<std::string> lines = py_splitlines(s, false);
    std::string rv;
    if (blank) {
        for (size_t k = 0; k < lines.size(); ++k) {
            if (k) rv += "\n" + ind;
            rv += lines[k];
            r.budget.check_bytes(rv.size());
        }
    } else {
        rv = lines.empty() ? std::string() : lines[0];
        for (size_t k = 1; k < lines.size(); ++k) {
            rv += "\n";
            if (!lines[k].empty()) rv += ind;
            rv += lines[k];
            r.budget.check_bytes(rv.size());
        }
    }
    if (first) rv = ind + rv;
    return r.str(std::move(rv), v.markup);
}

Value f_int(Renderer&, const Value& v, Args& a) {
    Bound b = bind_args("int", {"default", "base"}, a);
    Value dflt = arg_or(b[0], Value::integer(0));
    int64_t base = arg_int(b[1], 10, "base");
    if (v.is_undefined()) fail_undefined(v);
    if (v.is_int()) return Value::integer(v.as_int());
    if (v.kind == Kind::floating) return Value::integer(float_to_int(v.f));
    if (v.is_string()) {
        int64_t iv;
        if (parse_py_int(v.str(), base, iv)) return Value::integer(iv);
        double d;
        if (parse_py_float(v.str(), d)) {
            if (std::isnan(d) || std::isinf(d)) return dflt;
            return Value::integer(float_to_int(d));
        }
    }
    return dflt;
}

Value f_items(Renderer& r, const Value& v, Args& a) {
    bind_args("items", {}, a);
    if (v.is_undefined()) return r.list({}, SeqKind::generator);
    if (!v.is_dict()) type_error("Can only get item pairs from a mapping.");
    std::vector<Value> out;
    for (const auto& kv : v.dict().v) out.push_back(Value::seq({kv.first, kv.second}, SeqKind::tuple));
    return r.list(std::move(out), SeqKind::generator);
}

Value f_join(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("join", {"d", "attribute"}, a);
    std::string d = b[0] ? r.to_string(*b[0]) : "";
    std::string out;
    bool firstp = true;
    for (const auto& item : r.iterate(v)) {
        if (!firstp) out += d;
        firstp = false;
        Value x = b[1] && !b[1]->is_none() ? get_path(r, item, *b[1]) : item;
        to_str(out, x, r.budget);
        r.budget.check_bytes(out.size());
    }
    return r.str(std::move(out));
}

Value f_list(Renderer& r, const Value& v, Args& a) {
    bind_args("list", {}, a);
    return r.list(r.iterate(v));
}

Value f_lower(Renderer& r, const Value& v, Args& a) {
    bind_args("lower", {}, a);
    return r.str(py_lower(r.to_string(v)));
}

Value f_upper(Renderer& r, const Value& v, Args& a) {
    bind_args("upper", {}, a);
    return r.str(py_upper(r.to_string(v)));
}

Value f_map(Renderer& r, const Value& v, Args& a) {
    std::vector<Value> items = r.iterate(v);
    std::vector<Value> out;
    if (a.pos.empty()) {
        const Value* attr = nullptr;
        const Value* dflt = nullptr;
        for (const auto& kv : a.kw) {
            if (kv.first == "attribute") attr = &kv.second;
            else if (kv.first == "default") dflt = &kv.second;
            else raise(ErrKind::type, "Unexpected keyword argument '" + kv.first + "'");
        }
        if (!attr) raise(ErrKind::type, "map requires a filter argument");
        for (const auto& item : items) out.push_back(get_path(r, item, *attr, dflt));
        return r.list(std::move(out), SeqKind::generator);
    }
    Value name = a.pos[0];
    if (!name.is_string()) raise(ErrKind::type, "No filter named " + r.to_string(name) + ".");
    int id = filter_index(name.str());
    if (id < 0) raise(ErrKind::type, "No filter named '" + name.str() + "'.");
    for (const auto& item : items) {
        Args sub;
        sub.pos.assign(a.pos.begin() + 1, a.pos.end());
        sub.kw = a.kw;
        out.push_back(r.apply_filter(id, name.str(), item, sub));
    }
    return r.list(std::move(out), SeqKind::generator);
}

Value min_max(Renderer& r, const Value& v, Args& a, bool want_max) {
    Bound b = bind_args(want_max ? "max" : "min", {"case_sensitive", "attribute"}, a);
    bool cs = arg_bool(b[0], false);
    std::vector<Value> items = r.iterate(v);
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    auto key = [&](const Value& x) {
        Value k = b[1] && !b[1]->is_none() ? get_path(r, x, *b[1]) : x;
        return cs ? k : ignore_case(k);
    };
    size_t best = 0;
    Value bk = key(items[0]);
    for (size_t k = 1; k < items.size(); ++k) {
        Value kk = key(items[k]);
        if (want_max ? py_less(bk, kk, "<", r.budget) : py_less(kk, bk, "<", r.budget)) {
            best = k;
            bk = kk;
        }
    }
    return items[best];
}

Value f_max(Renderer& r, const Value& v, Args& a) { return min_max(r, v, a, true); }
Value f_min(Renderer& r, const Value& v, Args& a) { return min_max(r, v, a, false); }

Value select_reject(Renderer& r, const Value& v, Args& a, bool select, bool attr) {
    std::vector<Value> out;
    if (!truthy(v)) return r.list({}, SeqKind::generator);
    size_t off = 0;
    Value attribute;
    if (attr) {
        if (a.pos.empty()) raise(ErrKind::type, "Missing parameter for attribute name");
        attribute = a.pos[0];
        off = 1;
    }
    int tid = -1;
    std::string tname;
    if (a.pos.size() > off) {
        if (!a.pos[off].is_string()) raise(ErrKind::type, "No test named " + r.to_string(a.pos[off]) + ".");
        tname = a.pos[off].str();
        tid = test_index(tname);
        if (tid < 0) raise(ErrKind::type, "No test named '" + tname + "'.");
    }
    for (const auto& item : r.iterate(v)) {
        Value x = attr ? get_path(r, item, attribute) : item;
        bool ok;
        if (tid >= 0) {
            Args sub;
            sub.pos.assign(a.pos.begin() + (long)off + 1, a.pos.end());
            sub.kw = a.kw;
            ok = r.apply_test(tid, tname, x, sub);
        } else {
            ok = truthy(x);
        }
        if (ok == select) out.push_back(item);
    }
    return r.list(std::move(out), SeqKind::generator);
}

Value f_select(Renderer& r, const Value& v, Args& a) { return select_reject(r, v, a, true, false); }
Value f_reject(Renderer& r, const Value& v, Args& a) { return select_reject(r, v, a, false, false); }
Value f_selectattr(Renderer& r, const Value& v, Args& a) { return select_reject(r, v, a, true, true); }
Value f_rejectattr(Renderer& r, const Value& v, Args& a) { return select_reject(r, v, a, false, true); }

Value f_replace(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("replace", {"old", "new", "count"}, a, 2);
    int64_t count = b[2] && !b[2]->is_none() ? arg_int(b[2], -1, "count") : -1;
    return r.str(py_replace(r.to_string(v), r.to_string(*b[0]), r.to_string(*b[1]), count, r.budget));
}

Value f_reverse(Renderer& r, const Value& v, Args& a) {
    bind_args("reverse", {}, a);
    if (v.is_string()) {
        std::vector<uint32_t> cps = code_points(v.str());
        std::string out;
        for (size_t k = cps.size(); k-- > 0;) append_utf8(out, cps[k]);
        return Value::string(std::move(out));
    }
    if (v.is_seq() || v.is_dict() || v.is_undefined()) {
        std::vector<Value> items = r.iterate(v);
        std::reverse(items.begin(), items.end());
        bool reversible = v.is_dict() || v.is_undefined() ||
                          (v.seq().kind == SeqKind::list || v.seq().kind == SeqKind::tuple || v.seq().kind == SeqKind::range ||
                           v.seq().kind == SeqKind::keys || v.seq().kind == SeqKind::values || v.seq().kind == SeqKind::items);
        return r.list(std::move(items), reversible ? SeqKind::reversed : SeqKind::list);
    }
    raise(ErrKind::type, "argument must be iterable");
}

Value f_round(Renderer&, const Value& v, Args& a) {
    Bound b = bind_args("round", {"precision", "method"}, a);
    int64_t prec = arg_int(b[0], 0, "precision");
    std::string method = b[1] ? (b[1]->is_string() ? b[1]->str() : "?") : "common";
    if (method != "common" && method != "ceil" && method != "floor")
        raise(ErrKind::type, "method must be common, ceil or floor");
    if (v.is_undefined()) type_error("type Undefined doesn't define __round__ method");
    if (!v.is_number()) type_error("type " + type_name(v) + " doesn't define __round__ method");
    if (method == "common") {
        if (v.is_int()) {
            int64_t x = v.as_int();
            if (prec >= 0) return Value::integer(x);
            if (prec < -18) return Value::integer(0);
            int64_t p = 1;
            for (int64_t k = 0; k < -prec; ++k) p *= 10;
            int64_t q = x / p, rem = x % p;
            if (rem < 0) {
                rem += p;
                q -= 1;
            }
            if (rem * 2 > p || (rem * 2 == p && (q & 1))) ++q;
            int64_t out;
            if (__builtin_mul_overflow(q, p, &out)) raise(ErrKind::unsupported, "integer overflow (moe's integers are 64-bit)");
            return Value::integer(out);
        }
        return Value::floating(py_round(v.f, prec));
    }
    double p10 = prec >= 0 ? std::pow(10.0, (double)prec) : std::pow(10.0, (double)prec);
    if (prec >= 0 && prec <= 22) {
        p10 = 1;
        for (int64_t k = 0; k < prec; ++k) p10 *= 10;
    }
    double x = v.as_double() * p10;
    double y = method == "ceil" ? std::ceil(x) : std::floor(x);
    if (std::isnan(y)) raise(ErrKind::type, "cannot convert float NaN to integer");
    if (std::isinf(y)) raise(ErrKind::type, "cannot convert float infinity to integer");
    return Value::floating(y / p10);
}

Value f_safe(Renderer& r, const Value& v, Args& a) {
    bind_args("safe", {}, a);
    return r.str(r.to_string(v), true);
}

Value f_slice(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("slice", {"slices", "fill_with"}, a, 1);
    int64_t slices = arg_int(b[0], 1, "slices");
    Value fill = arg_or(b[1], Value::none());
    std::vector<Value> seq = r.iterate(v);
    int64_t len = (int64_t)seq.size();
    if (slices <= 0) {
        if (slices == 0) raise(ErrKind::type, "integer division or modulo by zero");
        return r.list({}, SeqKind::generator);
    }
    r.budget.check_items((size_t)slices);
    int64_t per = len / slices, extra = len % slices, offset = 0;
    std::vector<Value> out;
    for (int64_t k = 0; k < slices; ++k) {
        r.budget.tick();
        int64_t start = offset + k * per;
        if (k < extra) ++offset;
        int64_t end = offset + (k + 1) * per;
        std::vector<Value> tmp;
        for (int64_t i = std::max<int64_t>(0, start); i < std::min(end, len); ++i) tmp.push_back(seq[(size_t)i]);
        if (!fill.is_none() && k >= extra) tmp.push_back(fill);
        out.push_back(Value::seq(std::move(tmp)));
    }
    return r.list(std::move(out), SeqKind::generator);
}

Value f_sort(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("sort", {"reverse", "case_sensitive", "attribute"}, a);
    bool rev = arg_bool(b[0], false), cs = arg_bool(b[1], false);
    std::vector<Value> items = r.iterate(v);
    std::vector<Value> attrs;
    if (b[2] && !b[2]->is_none()) {
        if (b[2]->is_string()) {
            std::string s = b[2]->str();
            size_t pos = 0;
            while (true) {
                size_t c = s.find(',', pos);
                attrs.push_back(Value::string(s.substr(pos, c == std::string::npos ? std::string::npos : c - pos)));
                if (c == std::string::npos) break;
                pos = c + 1;
            }
        } else {
            attrs.push_back(*b[2]);
        }
    }
    std::vector<Value> keys;
    for (const auto& item : items) {
        if (attrs.empty()) {
            keys.push_back(cs ? item : ignore_case(item));
        } else {
            std::vector<Value> ks;
            for (const auto& at : attrs) {
                Value k = get_path(r, item, at);
                ks.push_back(cs ? k : ignore_case(k));
            }
            keys.push_back(Value::seq(std::move(ks)));
        }
    }
    std::vector<size_t> idx(items.size());
    for (size_t k = 0; k < idx.size(); ++k) idx[k] = k;
    std::stable_sort(idx.begin(), idx.end(), [&](size_t x, size_t y) {
        return rev ? py_less(keys[y], keys[x], "<", r.budget) : py_less(keys[x], keys[y], "<", r.budget);
    });
    std::vector<Value> out;
    for (size_t k : idx) out.push_back(items[k]);
    return r.list(std::move(out));
}

Value f_string(Renderer& r, const Value& v, Args& a) {
    bind_args("string", {}, a);
    if (v.is_string()) return v;
    return r.str(r.to_string(v));
}

Value f_sum(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("sum", {"attribute", "start"}, a);
    Value acc = arg_or(b[1], Value::integer(0));
    if (acc.is_string()) type_error("sum() can't sum strings [use ''.join(seq) instead]");
    for (const auto& item : r.iterate(v)) {
        Value x = b[0] && !b[0]->is_none() ? get_path(r, item, *b[0]) : item;
        acc = r.binary(Op::add, acc, x);
    }
    return acc;
}

Value f_title(Renderer& r, const Value& v, Args& a) {
    bind_args("title", {}, a);
    // jinja2's own title: split on runs of - whitespace ( { [ <, each piece's first character
    // upper-cased and the rest lowered
    std::vector<uint32_t> cps = code_points(r.to_string(v));
    auto sep = [](uint32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_isspace(c); };
    std::string out;
    size_t i = 0;
    while (i < cps.size()) {
        size_t j = i;
        if (sep(cps[i])) {
            while (j < cps.size() && sep(cps[j])) append_utf8(out, cps[j++]);
        } else {
            while (j < cps.size() && !sep(cps[j])) ++j;
            std::string first, rest;
            append_utf8(first, cps[i]);
            for (size_t k = i + 1; k < j; ++k) append_utf8(rest, cps[k]);
            out += py_upper(first) + py_lower(rest);
        }
        i = j;
    }
    return r.str(std::move(out));
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None,
// sort_keys=False), so tojson(4) sets ensure_ascii, tojson(indent=4) the indent.
Value f_tojson(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("tojson", {"ensure_ascii", "indent", "separators", "sort_keys"}, a);
    JsonOptions o;
    o.ensure_ascii = arg_bool(b[0], false);
    if (b[1] && !b[1]->is_none()) {
        o.has_indent = true;
        if (b[1]->is_string()) o.indent = b[1]->str();
        else if (b[1]->is_int()) {
            int64_t n = b[1]->as_int();
            r.budget.check_bytes((size_t)std::max<int64_t>(0, std::min<int64_t>(n, INT32_MAX)));
            o.indent = std::string((size_t)std::max<int64_t>(0, n), ' ');
        } else type_error("indent must be an int or a str, not " + type_name(*b[1]));
        o.item_sep = ",";
    }
    if (b[2] && !b[2]->is_none()) {
        std::vector<Value> sep = r.iterate(*b[2]);
        if (sep.size() != 2 || !sep[0].is_string() || !sep[1].is_string())
            type_error("separators must be a pair of strings");
        o.item_sep = sep[0].str();
        o.key_sep = sep[1].str();
    }
    o.sort_keys = arg_bool(b[3], false);
    std::string out;
    json_dump(out, v, o, r.budget);
    return r.str(std::move(out));
}

Value f_trim(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("trim", {"chars"}, a);
    return r.str(py_strip(r.to_string(v), b[0], 3));
}

bool hashable_value(const Value& v) {
    if (v.is_dict()) return false;
    if (v.is_seq()) {
        if (v.seq().kind == SeqKind::list || v.seq().kind == SeqKind::keys || v.seq().kind == SeqKind::values ||
            v.seq().kind == SeqKind::items)
            return false;
        for (const auto& x : v.seq().v)
            if (!hashable_value(x)) return false;
    }
    return true;
}

Value f_unique(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("unique", {"case_sensitive", "attribute"}, a);
    bool cs = arg_bool(b[0], false);
    std::vector<Value> seen, out;
    for (const auto& item : r.iterate(v)) {
        Value k = b[1] && !b[1]->is_none() ? get_path(r, item, *b[1]) : item;
        if (!cs) k = ignore_case(k);
        if (!hashable_value(k)) type_error("unhashable type: '" + type_name(k) + "'");
        bool dup = false;
        for (const auto& s : seen)
            if (py_eq(s, k, r.budget)) {
                dup = true;
                break;
            }
        if (!dup) {
            seen.push_back(k);
            out.push_back(item);
        }
    }
    return r.list(std::move(out), SeqKind::generator);
}

Value f_wordcount(Renderer& r, const Value& v, Args& a) {
    bind_args("wordcount", {}, a);
    int64_t n = 0;
    bool in_word = false;
    for (uint32_t c : code_points(r.to_string(v))) {
        bool w = py_isword(c);
        if (w && !in_word) ++n;
        in_word = w;
    }
    return Value::integer(n);
}

struct FilterDef {
    const char* name;
    FilterFn fn;
};

const FilterDef kFilters[] = {
    {"abs", f_abs},           {"attr", f_attr},         {"batch", f_batch},         {"capitalize", f_capitalize},
    {"center", f_center},     {"count", f_length},      {"d", f_default},           {"default", f_default},
    {"dictsort", f_dictsort}, {"e", f_escape},          {"escape", f_escape},       {"first", f_first},
    {"float", f_float},       {"forceescape", f_forceescape}, {"format", f_format}, {"indent", f_indent},
    {"int", f_int},           {"items", f_items},       {"join", f_join},           {"last", f_last},
    {"length", f_length},     {"list", f_list},         {"lower", f_lower},         {"map", f_map},
    {"max", f_max},           {"min", f_min},           {"reject", f_reject},       {"rejectattr", f_rejectattr},
    {"replace", f_replace},   {"reverse", f_reverse},   {"round", f_round},         {"safe", f_safe},
    {"select", f_select},     {"selectattr", f_selectattr}, {"slice", f_slice},     {"sort", f_sort},
    {"string", f_string},     {"sum", f_sum},           {"title", f_title},         {"tojson", f_tojson},
    {"trim", f_trim},         {"unique", f_unique},     {"upper", f_upper},         {"wordcount", f_wordcount},
};

// ---------------------------------------------------------------------------------------------
// Tests

using TestFn = bool (*)(Renderer&, const Value&, Args&);

bool py_mod_is(Renderer& r, const Value& v, int64_t m, int64_t want) {
    Value res = r.binary(Op::mod, v, Value::integer(m));
    return py_eq(res, Value::integer(want), r.budget);
}

bool t_odd(Renderer& r, const Value& v, Args& a) { bind_args("odd", {}, a); return py_mod_is(r, v, 2, 1); }
bool t_even(Renderer& r, const Value& v, Args& a) { bind_args("even", {}, a); return py_mod_is(r, v, 2, 0); }
bool t_divisibleby(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("divisibleby", {"num"}, a, 1);
    Value res = r.binary(Op::mod, v, *b[0]);
    return py_eq(res, Value::integer(0), r.budget);
}
bool t_defined(Renderer&, const Value& v, Args& a) { bind_args("defined", {}, a); return !v.is_undefined(); }
bool t_undefined(Renderer&, const Value& v, Args& a) { bind_args("undefined", {}, a); return v.is_undefined(); }
bool t_filter(Renderer&, const Value& v, Args& a) { bind_args("filter", {}, a); return v.is_string() && filter_index(v.str()) >= 0; }
bool t_test(Renderer&, const Value& v, Args& a) { bind_args("test", {}, a); return v.is_string() && test_index(v.str()) >= 0; }
bool t_none(Renderer&, const Value& v, Args& a) { bind_args("none", {}, a); return v.is_none(); }
bool t_boolean(Renderer&, const Value& v, Args& a) { bind_args("boolean", {}, a); return v.kind == Kind::boolean; }
bool t_false(Renderer&, const Value& v, Args& a) { bind_args("false", {}, a); return v.kind == Kind::boolean && !v.b; }
bool t_true(Renderer&, const Value& v, Args& a) { bind_args("true", {}, a); return v.kind == Kind::boolean && v.b; }
bool t_integer(Renderer&, const Value& v, Args& a) { bind_args("integer", {}, a); return v.kind == Kind::integer; }
bool t_float(Renderer&, const Value& v, Args& a) { bind_args("float", {}, a); return v.kind == Kind::floating; }
bool cased_all(const std::string& s, bool lower) {
    bool cased = false;
    for (uint32_t c : code_points(s)) {
        bool up = u_hasBinaryProperty((UChar32)c, UCHAR_UPPERCASE) || u_charType((UChar32)c) == U_TITLECASE_LETTER;
        bool lo = u_hasBinaryProperty((UChar32)c, UCHAR_LOWERCASE);
        if (lower ? up : (lo || u_charType((UChar32)c) == U_TITLECASE_LETTER)) return false;
        if (lower ? lo : up) cased = true;
    }
    return cased;
}
bool t_lower(Renderer& r, const Value& v, Args& a) { bind_args("lower", {}, a); return cased_all(r.to_string(v), true); }
bool t_upper(Renderer& r, const Value& v, Args& a) { bind_args("upper", {}, a); return cased_all(r.to_string(v), false); }
bool t_string(Renderer&, const Value& v, Args& a) { bind_args("string", {}, a); return v.is_string(); }
bool t_mapping(Renderer&, const Value& v, Args& a) { bind_args("mapping", {}, a); return v.is_dict(); }
bool t_number(Renderer&, const Value& v, Args& a) { bind_args("number", {}, a); return v.is_number(); }
bool t_sequence(Renderer&, const Value& v, Args& a) {
    bind_args("sequence", {}, a);
    if (v.is_undefined() || v.is_string() || v.is_dict()) return true;
    if (v.is_seq()) {
        SeqKind k = v.seq().kind;
        return k == SeqKind::list || k == SeqKind::tuple || k == SeqKind::range;
    }
    return false;
}
bool t_iterable(Renderer&, const Value& v, Args& a) {
    bind_args("iterable", {}, a);
    return v.is_undefined() || v.is_string() || v.is_seq() || v.is_dict() || v.kind == Kind::loop;
}
bool t_callable(Renderer&, const Value& v, Args& a) {
    bind_args("callable", {}, a);
    return v.kind == Kind::callable || v.kind == Kind::loop;
}
bool t_sameas(Renderer&, const Value& v, Args& a) {
    Bound b = bind_args("sameas", {"other"}, a, 1);
    const Value& o = *b[0];
    if (v.kind != o.kind) return false;
    switch (v.kind) {
        case Kind::none:
        case Kind::undefined: return v.kind == Kind::none || v.obj == o.obj;
        case Kind::boolean: return v.b == o.b;
        case Kind::integer: return v.i == o.i && v.i >= -5 && v.i <= 256;  // CPython's cached small ints
        case Kind::ns: return v.ns == o.ns;
        default: return v.obj == o.obj;
    }
}
bool t_escaped(Renderer&, const Value& v, Args& a) { bind_args("escaped", {}, a); return v.is_string() && v.markup; }
bool t_in(Renderer& r, const Value& v, Args& a) {
    Bound b = bind_args("in", {"seq"}, a, 1);
    return r.contains(*b[0], v);
}
bool cmp_test(Renderer& r, const Value& v, Args& a, Op op, const char* name) {
    Bound b = bind_args(name, {"other"}, a, 1);
    return r.compare(op, v, *b[0]);
}
bool t_eq(Renderer& r, const Value& v, Args& a) { return cmp_test(r, v, a, Op::eq, "eq"); }
bool t_ne(Renderer& r, const Value& v, Args& a) { return cmp_test(r, v, a, Op::ne, "ne"); }
bool t_lt(Renderer& r, const Value& v, Args& a) { return cmp_test(r, v, a, Op::lt, "lt"); }
bool t_le(Renderer& r, const Value& v, Args& a) { return cmp_test(r, v, a, Op::le, "le"); }
bool t_gt(Renderer& r, const Value& v, Args& a) { return cmp_test(r, v, a, Op::gt, "gt"); }
bool t_ge(Renderer& r, const Value& v, Args& a) { return cmp_test(r, v, a, Op::ge, "ge"); }

struct TestDef {
    const char* name;
    TestFn fn;
};

const TestDef kTests[] = {
    {"odd", t_odd},         {"even", t_even},         {"divisibleby", t_divisibleby}, {"defined", t_defined},
    {"undefined", t_undefined}, {"filter", t_filter}, {"test", t_test},             {"none", t_none},
    {"boolean", t_boolean}, {"false", t_false},       {"true", t_true},             {"integer", t_integer},
    {"float", t_float},     {"lower", t_lower},       {"upper", t_upper},           {"string", t_string},
    {"mapping", t_mapping}, {"number", t_number},     {"sequence", t_sequence},     {"iterable", t_iterable},
    {"callable", t_callable}, {"sameas", t_sameas},   {"escaped", t_escaped},       {"in", t_in},
    {"==", t_eq},           {"eq", t_eq},             {"equalto", t_eq},            {"!=", t_ne},
    {"ne", t_ne},           {">", t_gt},              {"gt", t_gt},                 {"greaterthan", t_gt},
    {"ge", t_ge},           {">=", t_ge},             {"<", t_lt},                  {"lt", t_lt},
    {"lessthan", t_lt},     {"<=", t_le},             {"le", t_le},
};

const char* kPyStrMethods[] = {
    "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format", "format_map",
    "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric",
    "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans", "partition",
    "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip", "split",
    "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill"};

bool in_list(const std::string& n, std::initializer_list<const char*> l) {
    for (const char* x : l)
        if (n == x) return true;
    return false;
}

Value method_value(const Value& self, const std::string& name) {
    Value m;
    m.kind = Kind::callable;
    m.obj = std::make_shared<BuiltinFn>(BuiltinFn::method, name, self);
    return m;
}

Value unsafe_attr(const Value& obj, const std::string& name) {
    return Value::undefined("access to attribute '" + name + "' of '" + type_name(obj) + "' object is unsafe.", ErrKind::security);
}

}  // namespace

int filter_index(const std::string& name) {
    for (size_t k = 0; k < sizeof kFilters / sizeof kFilters[0]; ++k)
        if (name == kFilters[k].name) return (int)k;
    return -1;
}

int test_index(const std::string& name) {
    for (size_t k = 0; k < sizeof kTests / sizeof kTests[0]; ++k)
        if (name == kTests[k].name) return (int)k;
    return -1;
}

bool jinja2_has_filter(const std::string& name) {
    return in_list(name, {"filesizeformat", "groupby", "pprint", "random", "striptags", "truncate", "urlencode", "urlize",
                          "wordwrap", "xmlattr"});
}

Value Renderer::apply_filter(int id, const std::string& name, const Value& v, Args& a) {
    budget.tick();
    (void)name;
    return kFilters[id].fn(*this, v, a);
}

bool Renderer::apply_test(int id, const std::string& name, const Value& v, Args& a) {
    budget.tick();
    (void)name;
    return kTests[id].fn(*this, v, a);
}

// ---------------------------------------------------------------------------------------------
// Attributes (no item fallback): methods of str / list / dict, namespace and loop attributes.

Value Renderer::attribute(const Value& obj, const std::string& name, bool& found) {
    found = true;
    switch (obj.kind) {
        case Kind::string:
            for (const char* m : kPyStrMethods)
                if (name == m) return method_value(obj, name);
            break;
        case Kind::seq: {
            SeqKind k = obj.seq().kind;
            if (k == SeqKind::list) {
                if (in_list(name, {"copy", "count", "index"})) return method_value(obj, name);
                if (in_list(name, {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"}))
                    return unsafe_attr(obj, name);
            } else if (k == SeqKind::tuple) {
                if (in_list(name, {"count", "index"})) return method_value(obj, name);
            } else if (k == SeqKind::range) {
                if (in_list(name, {"count", "index"})) return method_value(obj, name);
                if (name == "start") return Value::integer(obj.seq().start);
                if (name == "stop") return Value::integer(obj.seq().stop);
                if (name == "step") return Value::integer(obj.seq().step);
            }
            break;
        }
        case Kind::dict:
            if (in_list(name, {"copy", "get", "items", "keys", "values", "fromkeys"})) return method_value(obj, name);
            if (in_list(name, {"clear", "pop", "popitem", "setdefault", "update"})) return unsafe_attr(obj, name);
            break;
        case Kind::ns:
            if (Value* v = obj.ns->find(name)) return *v;
            break;
        case Kind::loop: {
            const auto& L = static_cast<const LoopObj&>(*obj.obj);
            const int64_t n = (int64_t)L.items.size(), i = L.index0;
            if (name == "index") return Value::integer(i + 1);
            if (name == "index0") return Value::integer(i);
            if (name == "revindex") return Value::integer(n - i);
            if (name == "revindex0") return Value::integer(n - i - 1);
            if (name == "first") return Value::boolean(i == 0);
            if (name == "last") return Value::boolean(i == n - 1);
            if (name == "length") return Value::integer(n);
            if (name == "depth") return Value::integer(L.depth0 + 1);
            if (name == "depth0") return Value::integer(L.depth0);
            if (name == "previtem") return i > 0 ? L.items[(size_t)i - 1] : Value::undefined("there is no previous item");
            if (name == "nextitem") return i + 1 < n ? L.items[(size_t)i + 1] : Value::undefined("there is no next item");
            if (name == "cycle" || name == "changed") {
                Value m;
                m.kind = Kind::callable;
                m.obj = std::make_shared<BuiltinFn>(name == "cycle" ? BuiltinFn::loop_cycle : BuiltinFn::loop_changed, name, obj);
                return m;
            }
            break;
        }
        case Kind::integer:
        case Kind::boolean:
        case Kind::floating:
            if (in_list(name, {"real", "imag", "numerator", "denominator", "conjugate", "bit_length", "bit_count", "to_bytes",
                               "from_bytes", "as_integer_ratio", "is_integer", "hex", "fromhex"}))
                raise(ErrKind::unsupported, "the number attribute '" + name + "'");
            break;
        default: break;
    }
    found = false;
    return Value();
}

// ---------------------------------------------------------------------------------------------
// Globals

Value Renderer::global(const std::string& name) {
    static const struct {
        const char* name;
        BuiltinFn::Id id;
    } globals[] = {{"range", BuiltinFn::range},
                   {"namespace", BuiltinFn::namespace_},
                   {"dict", BuiltinFn::dict},
                   {"raise_exception", BuiltinFn::raise_exception},
                   {"strftime_now", BuiltinFn::strftime_now},
                   {"lipsum", BuiltinFn::lipsum},
                   {"cycler", BuiltinFn::cycler},
                   {"joiner", BuiltinFn::joiner}};
    for (const auto& g : globals)
        if (name == g.name) {
            Value v;
            v.kind = Kind::callable;
            v.obj = std::make_shared<BuiltinFn>(g.id, name);
            return v;
        }
    return Value::undefined("'" + name + "' is undefined");
}

Value BuiltinFn::call(Renderer& r, Args& a) const { return r.call_builtin(*this, a); }

namespace {

// dict(*args, **kwargs) / namespace(...): one mapping or iterable of pairs, then keywords.
std::vector<std::pair<Value, Value>> dict_args(Renderer& r, const Args& a, const char* fn) {
    if (a.pos.size() > 1) type_error(std::string(fn) + " expected at most 1 argument, got " + std::to_string(a.pos.size()));
    std::vector<std::pair<Value, Value>> out;
    auto put = [&](const Value& k, const Value& v) {
        for (auto& kv : out)
            if (py_eq(kv.first, k, r.budget)) {
                kv.second = v;
                return;
            }
        out.emplace_back(k, v);
    };
    if (!a.pos.empty()) {
        const Value& src = a.pos[0];
        if (src.is_dict()) {
            for (const auto& kv : src.dict().v) put(kv.first, kv.second);
        } else {
            for (const auto& item : r.iterate(src)) {
                std::vector<Value> pair = r.iterate(item);
                if (pair.size() != 2)
                    raise(ErrKind::type, "dictionary update sequence element has length " + std::to_string(pair.size()) + "; 2 is required");
                put(pair[0], pair[1]);
            }
        }
    }
    for (const auto& kv : a.kw) put(Value::string(kv.first), kv.second);
    r.budget.check_items(out.size());
    return out;
}

}  // namespace

Value Renderer::call_builtin(const BuiltinFn& fn, Args& a) {
    budget.tick();
    switch (fn.id) {
        case BuiltinFn::range: {
            if (!a.kw.empty()) type_error("range() takes no keyword arguments");
            if (a.pos.empty() || a.pos.size() > 3)
                type_error("range expected at least 1 argument, got " + std::to_string(a.pos.size()));
            int64_t p[3] = {0, 0, 0};
            for (size_t k = 0; k < a.pos.size(); ++k) {
                if (a.pos[k].is_undefined()) fail_undefined(a.pos[k]);
                if (!a.pos[k].is_int()) type_error("'" + type_name(a.pos[k]) + "' object cannot be interpreted as an integer");
                p[k] = a.pos[k].as_int();
            }
            int64_t start = a.pos.size() == 1 ? 0 : p[0], stop = a.pos.size() == 1 ? p[0] : p[1];
            int64_t step = a.pos.size() == 3 ? p[2] : 1;
            if (step == 0) raise(ErrKind::type, "range() arg 3 must not be zero");
            long double len = step > 0 ? (stop > start ? ((long double)stop - start - 1) / step + 1 : 0)
                                       : (stop < start ? ((long double)start - stop - 1) / -(long double)step + 1 : 0);
            if (len > 100000)
                raise(ErrKind::security, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
            std::vector<Value> v;
            for (int64_t k = 0; k < (int64_t)len; ++k) v.push_back(Value::integer(start + k * step));
            Value out = list(std::move(v), SeqKind::range);
            auto* o = static_cast<SeqObj*>(out.obj.get());
            o->start = start;
            o->stop = stop;
            o->step = step;
            return out;
        }
        case BuiltinFn::namespace_: {
            Namespace* ns = new_namespace();
            for (auto& [k, v] : dict_args(*this, a, "namespace")) {
                if (!k.is_string()) raise(ErrKind::unsupported, "a namespace() attribute that is not a string");
                if (!k.str().empty() && k.str()[0] == '_')
                    raise(ErrKind::security, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" +
                                                 k.str() + "'. Please rename the attribute.");
                ns->attrs.emplace_back(k.str(), v);
            }
            return Value::namespace_(ns);
        }
        case BuiltinFn::dict: return Value::dict(dict_args(*this, a, "dict"));
        case BuiltinFn::raise_exception: {
            Bound b = bind_args("raise_exception", {"message"}, a, 1);
            raise(ErrKind::raised, to_string(*b[0]));
        }
        case BuiltinFn::strftime_now: {
            Bound b = bind_args("strftime_now", {"format"}, a, 1);
            if (!b[0]->is_string()) type_error("strftime() argument 1 must be str, not " + type_name(*b[0]));
            // datetime.strftime of a naive datetime: %f is the microseconds (0 here), %z and %Z empty
            std::string f;
            const std::string& in = b[0]->str();
            for (size_t k = 0; k < in.size(); ++k) {
                if (in[k] == '%' && k + 1 < in.size()) {
                    char c = in[k + 1];
                    if (c == 'f') f += "000000";
                    else if (c == 'z' || c == 'Z') {
                    } else {
                        f += '%';
                        f += c;
                    }
                    ++k;
                } else {
                    f += in[k];
                }
            }
            std::tm tm = now();
            static locale_t c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
            std::string out;
            for (size_t cap = 64 + f.size() * 4; cap <= 64 + f.size() * 256; cap *= 4) {
                std::vector<char> buf(cap);
                size_t n = strftime_l(buf.data(), cap, f.c_str(), &tm, c_locale);
                if (n > 0 || f.empty()) {
                    out.assign(buf.data(), n);
                    break;
                }
            }
            if (!valid_utf8(out)) raise(ErrKind::type, "strftime produced invalid UTF-8");
            return str(std::move(out));
        }
        case BuiltinFn::lipsum:
        case BuiltinFn::cycler:
        case BuiltinFn::joiner:
        case BuiltinFn::unsupported: raise(ErrKind::unsupported, "the global '" + fn.name + "'");
        case BuiltinFn::method: return call_method(fn.self, fn.name, a);
        case BuiltinFn::loop_cycle: {
            if (!a.kw.empty()) type_error("cycle() takes no keyword arguments");
            if (a.pos.empty()) type_error("no items for cycling given");
            const auto& L = static_cast<const LoopObj&>(*fn.self.obj);
            return a.pos[(size_t)(L.index0 % (int64_t)a.pos.size())];
        }
        case BuiltinFn::loop_changed: {
            auto& L = const_cast<LoopObj&>(static_cast<const LoopObj&>(*fn.self.obj));
            Value cur = Value::seq(a.pos, SeqKind::tuple);
            bool changed = !L.has_last_changed || !py_eq(L.last_changed, cur, budget);
            L.last_changed = cur;
            L.has_last_changed = true;
            return Value::boolean(changed);
        }
        case BuiltinFn::loop_call: {
            const auto& L = static_cast<const LoopObj&>(*fn.self.obj);
            if (!L.stmt || !L.stmt->recursive) type_error("The loop must have the 'recursive' marker to be called recursively.");
            if (a.pos.size() != 1 || !a.kw.empty()) type_error("loop() takes exactly one argument");
            FramePtr f = L.frame.lock();
            if (!f) raise(ErrKind::unsupported, "a recursive loop called after its scope ended");
            DepthGuard g(budget);
            std::string out;
            run_for(*L.stmt, f, out, a.pos[0], L.depth0 + 1);
            return str(std::move(out));
        }
    }
    return Value();
}

// ---------------------------------------------------------------------------------------------
// Methods of str, list, tuple, range and dict

Value Renderer::call_method(const Value& self, const std::string& name, Args& a) {
    budget.tick();
    if (self.is_string()) {
        const std::string& s = self.str();
        auto no_kw = [&]() {
            if (!a.kw.empty()) type_error("str." + name + "() takes no keyword arguments");
        };
        if (name == "strip" || name == "lstrip" || name == "rstrip") {
            no_kw();
            if (a.pos.size() > 1) type_error(name + " expected at most 1 argument");
            return str(py_strip(s, a.pos.empty() ? nullptr : &a.pos[0], name == "strip" ? 3 : name == "lstrip" ? 1 : 2));
        }
        if (name == "split" || name == "rsplit") {
            Bound b = bind_args(name.c_str(), {"sep", "maxsplit"}, a);
            int64_t maxsplit = arg_int(b[1], -1, "maxsplit");
            std::vector<std::string> parts = py_split(s, b[0], maxsplit, name == "rsplit");
            budget.tick((int64_t)parts.size());
            return str_list(*this, parts);
        }
        if (name == "splitlines") {
            Bound b = bind_args("splitlines", {"keepends"}, a);
            return str_list(*this, py_splitlines(s, arg_bool(b[0], false)));
        }
        if (name == "upper" || name == "lower" || name == "title" || name == "capitalize" || name == "casefold") {
            no_kw();
            if (!a.pos.empty()) type_error("str." + name + "() takes no arguments");
            if (name == "upper") return str(py_upper(s));
            if (name == "lower") return str(py_lower(s));
            if (name == "title") return str(py_title(s));
            if (name == "capitalize") return str(py_capitalize(s));
            std::string out;
            icu::StringByteSink<std::string> sink(&out);
            UErrorCode err = U_ZERO_ERROR;
            icu::CaseMap::utf8Fold(0, icu::StringPiece(s.data(), (int32_t)s.size()), sink, nullptr, err);
            return str(std::move(out));
        }
        if (name == "startswith" || name == "endswith") {
            no_kw();
            if (a.pos.empty() || a.pos.size() > 3) type_error(name + "() takes from 1 to 3 arguments");
            UStr u(s);
            int64_t start = a.pos.size() > 1 ? arg_int(&a.pos[1], 0, "start") : 0;
            int64_t end = a.pos.size() > 2 ? arg_int(&a.pos[2], INT64_MAX, "end") : INT64_MAX;
            int64_t len = u.len();
            adjust_indices(start, end, len);
            std::vector<Value> cands;
            if (a.pos[0].is_string()) cands.push_back(a.pos[0]);
            else if (a.pos[0].is_seq() && a.pos[0].seq().kind == SeqKind::tuple) cands = a.pos[0].seq().v;
            else type_error(name + " first arg must be str or a tuple of str, not " + type_name(a.pos[0]));
            for (const auto& c : cands) {
                if (!c.is_string()) type_error("tuple for " + name + " must only contain str, not " + type_name(c));
                if (start > len) continue;
                std::string window = u.sub(start, std::max(start, end));
                const std::string& p = c.str();
                if (p.size() > window.size()) continue;
                if (name == "startswith" ? window.compare(0, p.size(), p) == 0 : window.compare(window.size() - p.size(), p.size(), p) == 0)
                    return Value::boolean(true);
            }
            return Value::boolean(false);
        }
        if (name == "replace") {
            no_kw();
            if (a.pos.size() < 2 || a.pos.size() > 3) type_error("replace expected 2 or 3 arguments");
            for (int k = 0; k < 2; ++k)
                if (!a.pos[(size_t)k].is_string()) type_error("replace() argument " + std::to_string(k + 1) + " must be str, not " + type_name(a.pos[(size_t)k]));
            int64_t count = a.pos.size() > 2 ? arg_int(&a.pos[2], -1, "count") : -1;
            return str(py_replace(s, a.pos[0].str(), a.pos[1].str(), count, budget));
        }
        if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
            no_kw();
            if (a.pos.empty() || a.pos.size() > 3) type_error(name + "() takes from 1 to 3 arguments");
            if (!a.pos[0].is_string()) type_error("must be str, not " + type_name(a.pos[0]));
            UStr u(s);
            int64_t len = u.len();
            int64_t start = a.pos.size() > 1 ? arg_int(&a.pos[1], 0, "start") : 0;
            int64_t end = a.pos.size() > 2 ? arg_int(&a.pos[2], INT64_MAX, "end") : INT64_MAX;
            adjust_indices(start, end, len);
            const std::string& sub = a.pos[0].str();
            int64_t sublen = (int64_t)cp_count(sub);
            if (name == "count") {
                if (start > len) return Value::integer(0);
                if (sub.empty()) return Value::integer(end >= start ? end - start + 1 : 0);
                std::string window = u.sub(start, std::max(start, end));
                int64_t n = 0;
                for (size_t p = window.find(sub); p != std::string::npos; p = window.find(sub, p + sub.size())) ++n;
                return Value::integer(n);
            }
            int64_t found = -1;
            if (start <= len && end - start >= sublen) {
                std::string window = u.sub(start, std::max(start, end));
                size_t p = name[0] == 'r' ? window.rfind(sub) : window.find(sub);
                if (p != std::string::npos) found = start + (int64_t)cp_count(std::string_view(window).substr(0, p));
            }
            if (found < 0 && (name == "index" || name == "rindex")) raise(ErrKind::type, "substring not found");
            return Value::integer(found);
        }
        if (name == "join") {
            no_kw();
            if (a.pos.size() != 1) type_error("str.join() takes exactly one argument");
            std::string out;
            size_t k = 0;
            for (const auto& item : iterate(a.pos[0])) {
                if (!item.is_string())
                    type_error("sequence item " + std::to_string(k) + ": expected str instance, " + type_name(item) + " found");
                if (k++) out += s;
                out += item.str();
                budget.check_bytes(out.size());
            }
            return str(std::move(out));
        }
        if (name == "format") return str_format(*this, s, a);
        if (name == "center" || name == "ljust" || name == "rjust") {
            no_kw();
            if (a.pos.empty() || a.pos.size() > 2) type_error(name + "() takes 1 or 2 arguments");
            int64_t w = arg_int(&a.pos[0], 0, "width");
            uint32_t fill = ' ';
            if (a.pos.size() > 1) {
                if (!a.pos[1].is_string() || cp_count(a.pos[1].str()) != 1)
                    type_error("The fill character must be exactly one character long");
                fill = code_points(a.pos[1].str())[0];
            }
            budget.check_bytes((size_t)std::max<int64_t>(0, std::min<int64_t>(w, INT32_MAX)));
            return str(pad_center(s, w, fill, name == "center" ? 0 : name == "ljust" ? 1 : 2));
        }
        if (name == "zfill") {
            no_kw();
            if (a.pos.size() != 1) type_error("zfill() takes exactly one argument");
            int64_t w = arg_int(&a.pos[0], 0, "width");
            budget.check_bytes((size_t)std::max<int64_t>(0, std::min<int64_t>(w, INT32_MAX)));
            int64_t len = (int64_t)cp_count(s);
            if (w <= len) return self;
            std::string out = s;
            size_t at = !s.empty() && (s[0] == '+' || s[0] == '-') ? 1 : 0;
            out.insert(at, std::string((size_t)(w - len), '0'));
            return str(std::move(out));
        }
        if (name == "partition" || name == "rpartition") {
            no_kw();
            if (a.pos.size() != 1 || !a.pos[0].is_string()) type_error(name + "() argument must be str");
            const std::string& sep = a.pos[0].str();
            if (sep.empty()) raise(ErrKind::type, "empty separator");
            size_t p = name == "partition" ? s.find(sep) : s.rfind(sep);
            if (p == std::string::npos)
                return name == "partition" ? Value::seq({self, Value::string(""), Value::string("")}, SeqKind::tuple)
                                           : Value::seq({Value::string(""), Value::string(""), self}, SeqKind::tuple);
            return Value::seq({Value::string(s.substr(0, p)), a.pos[0], Value::string(s.substr(p + sep.size()))}, SeqKind::tuple);
        }
        if (name == "removeprefix" || name == "removesuffix") {
            no_kw();
            if (a.pos.size() != 1 || !a.pos[0].is_string()) type_error(name + "() argument must be str");
            const std::string& p = a.pos[0].str();
            if (name == "removeprefix" && s.compare(0, p.size(), p) == 0) return str(s.substr(p.size()));
            if (name == "removesuffix" && !p.empty() && s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0)
                return str(s.substr(0, s.size() - p.size()));
            return self;
        }
        if (name == "isdigit" || name == "isdecimal" || name == "isnumeric" || name == "isalpha" || name == "isalnum" ||
            name == "isspace" || name == "isascii" || name == "islower" || name == "isupper") {
            no_kw();
            if (!a.pos.empty()) type_error("str." + name + "() takes no arguments");
            if (name == "isascii") return make_bool(is_ascii(s));
            if (name == "islower" || name == "isupper") return make_bool(cased_all(s, name == "islower"));
            if (s.empty()) return make_bool(false);
            for (uint32_t c : code_points(s)) {
                int8_t t = u_charType((UChar32)c);
                bool alpha = t == U_UPPERCASE_LETTER || t == U_LOWERCASE_LETTER || t == U_TITLECASE_LETTER ||
                             t == U_MODIFIER_LETTER || t == U_OTHER_LETTER;
                bool dec = t == U_DECIMAL_DIGIT_NUMBER;
                bool digit = dec || u_getIntPropertyValue((UChar32)c, UCHAR_NUMERIC_TYPE) == U_NT_DIGIT;
                bool numeric = digit || u_getIntPropertyValue((UChar32)c, UCHAR_NUMERIC_TYPE) != U_NT_NONE;
                bool ok = name == "isdigit" ? digit : name == "isdecimal" ? dec : name == "isnumeric" ? numeric
                          : name == "isalpha" ? alpha : name == "isalnum" ? (alpha || numeric) : py_isspace(c);
                if (!ok) return make_bool(false);
            }
            return make_bool(true);
        }
        raise(ErrKind::unsupported, "the str method '" + name + "'");
    }
    if (self.is_seq()) {
        const SeqObj& so = self.seq();
        if (name == "copy") {
            bind_args("copy", {}, a);
            return list(so.v, SeqKind::list);
        }
        if (name == "count") {
            if (a.pos.size() != 1 || !a.kw.empty()) type_error("count() takes exactly one argument");
            int64_t n = 0;
            for (const auto& x : so.v) n += py_eq(x, a.pos[0], budget);
            return Value::integer(n);
        }
        if (name == "index") {
            if (a.pos.empty() || a.pos.size() > 3 || !a.kw.empty()) type_error("index() takes 1 to 3 arguments");
            int64_t len = (int64_t)so.v.size();
            int64_t start = a.pos.size() > 1 ? arg_int(&a.pos[1], 0, "start") : 0;
            int64_t end = a.pos.size() > 2 ? arg_int(&a.pos[2], INT64_MAX, "end") : INT64_MAX;
            adjust_indices(start, end, len);
            for (int64_t k = start; k < end; ++k)
                if (py_eq(so.v[(size_t)k], a.pos[0], budget)) return Value::integer(k);
            raise(ErrKind::type, to_string(a.pos[0]) + " is not in " + type_name(self));
        }
    }
    if (self.is_dict()) {
        const DictObj& d = self.dict();
        if (name == "get") {
            if (!a.kw.empty()) type_error("dict.get() takes no keyword arguments");
            if (a.pos.empty() || a.pos.size() > 2) type_error("get expected 1 or 2 arguments");
            if (!hashable_value(a.pos[0])) type_error("unhashable type: '" + type_name(a.pos[0]) + "'");
            if (const Value* v = d.find(a.pos[0], budget)) return *v;
            return a.pos.size() > 1 ? a.pos[1] : Value::none();
        }
        if (name == "items" || name == "keys" || name == "values") {
            if (!a.pos.empty() || !a.kw.empty()) type_error("dict." + name + "() takes no arguments");
            std::vector<Value> out;
            out.reserve(d.v.size());
            for (const auto& kv : d.v)
                out.push_back(name == "keys" ? kv.first : name == "values" ? kv.second : Value::seq({kv.first, kv.second}, SeqKind::tuple));
            return Value::seq(std::move(out), name == "keys" ? SeqKind::keys : name == "values" ? SeqKind::values : SeqKind::items);
        }
        if (name == "copy") {
            bind_args("copy", {}, a);
            return Value::dict(d.v);
        }
        raise(ErrKind::unsupported, "the dict method '" + name + "'");
    }
    raise(ErrKind::unsupported, "the method '" + name + "' of " + type_name(self));
}

}  // namespace moe::jinja
