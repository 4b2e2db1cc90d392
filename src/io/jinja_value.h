#pragma once
// Values of moe's Jinja subset and the Python semantics templates rely on: str() and repr()
// (True/None, floats as repr prints them, containers with quoted strings), ==, <, truthiness,
// json.dumps, and str's Unicode-aware methods. Strings are UTF-8 and valid (checked where they
// enter: the template source, the context JSON); lengths and indices count code points as Python
// does. Lists and dicts are immutable once built (the sandbox forbids list.append & co.), so they
// are shared, not copied; a namespace() is the one mutable object and lives in the render's arena.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/chat_template.h"

namespace moe::jinja {

using ErrKind = ChatTemplateError::Kind;

[[noreturn]] void raise(ErrKind kind, const std::string& msg);

// What one render may spend; every loop over values ticks it, so no operation is unbounded.
struct Budget {
    explicit Budget(const ChatTemplateLimits& l) : lim(l) {}
    const ChatTemplateLimits& lim;
    int64_t steps = 0;
    int64_t loop_iterations = 0;
    int depth = 0;
    void tick(int64_t n = 1) {
        steps += n;
        if (steps > lim.max_steps) over("evaluation steps", lim.max_steps);
    }
    void check_bytes(size_t n) const {
        if (n > lim.max_output_bytes) over("bytes in one string", (int64_t)lim.max_output_bytes);
    }
    void check_items(size_t n) const {
        if ((int64_t)n > lim.max_items) over("items in one list", lim.max_items);
    }
    // A string or list the template builds costs steps in proportion to its size, so max_steps
    // also bounds how much a render allocates in all.
    void add_bytes(size_t n) {
        check_bytes(n);
        tick((int64_t)(n / 8));
    }
    void add_items(size_t n) {
        check_items(n);
        tick((int64_t)n * 4);
    }
    [[noreturn]] static void over(const char* what, int64_t limit);
};

// Depth guard for recursion over templates and values (nested lists, macro calls).
class DepthGuard {
public:
    explicit DepthGuard(Budget& b) : b_(b) {
        if (++b_.depth > b_.lim.max_depth) {
            --b_.depth;
            Budget::over("nesting depth", b_.lim.max_depth);
        }
    }
    ~DepthGuard() { --b_.depth; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

private:
    Budget& b_;
};

enum class Kind : uint8_t {
    undefined,
    none,
    boolean,
    integer,
    floating,
    string,
    seq,       // list, tuple, range, generator, dict views (SeqKind)
    dict,
    ns,        // namespace()
    callable,  // macros, builtins, bound methods
    loop,      // the loop variable
};

// Python types that behave like a list of values but print, index and measure differently.
enum class SeqKind : uint8_t { list, tuple, range, generator, reversed, keys, values, items };

struct Value;
struct SeqObj;
struct DictObj;
struct Namespace;

// Callables and the loop variable (src/io/jinja_eval.h) say how Python names and prints them.
struct Object {
    virtual ~Object() = default;
    virtual std::string py_type() const { return "object"; }
    virtual std::string py_type_repr() const { return py_type() + " object"; }
    virtual void py_str(std::string& out) const {
        out += '<';
        out += py_type();
        out += " object>";
    }
};

struct StrObj final : Object {
    explicit StrObj(std::string v) : s(std::move(v)) {}
    std::string s;
};

// The undefined value and what using it raises (jinja2's Undefined and its hint).
struct UndefObj final : Object {
    UndefObj(std::string m, ErrKind k) : msg(std::move(m)), kind(k) {}
    std::string msg;
    ErrKind kind;
};

struct Value {
    Kind kind = Kind::undefined;
    bool markup = false;  // a string from |safe or |escape (jinja2's Markup)
    union {
        bool b;
        int64_t i;
        double f;
        Namespace* ns;
    };
    std::shared_ptr<Object> obj;

    Value() : i(0) {}

    static Value undefined(std::string msg, ErrKind k = ErrKind::undefined);
    static Value none() {
        Value v;
        v.kind = Kind::none;
        return v;
    }
    static Value boolean(bool x) {
        Value v;
        v.kind = Kind::boolean;
        v.b = x;
        return v;
    }
    static Value integer(int64_t x) {
        Value v;
        v.kind = Kind::integer;
        v.i = x;
        return v;
    }
    static Value floating(double x) {
        Value v;
        v.kind = Kind::floating;
        v.f = x;
        return v;
    }
    static Value string(std::string s, bool markup = false);
    static Value seq(std::vector<Value> items, SeqKind k = SeqKind::list);
    static Value dict(std::vector<std::pair<Value, Value>> items);
    static Value namespace_(Namespace* n) {
        Value v;
        v.kind = Kind::ns;
        v.ns = n;
        return v;
    }

    bool is_undefined() const { return kind == Kind::undefined; }
    bool is_none() const { return kind == Kind::none; }
    bool is_string() const { return kind == Kind::string; }
    bool is_int() const { return kind == Kind::integer || kind == Kind::boolean; }  // bool is an int
    bool is_number() const { return is_int() || kind == Kind::floating; }
    bool is_seq() const { return kind == Kind::seq; }
    bool is_dict() const { return kind == Kind::dict; }

    const std::string& str() const { return static_cast<const StrObj&>(*obj).s; }
    const SeqObj& seq() const;
    const DictObj& dict() const;
    const UndefObj* undef() const { return static_cast<const UndefObj*>(obj.get()); }
    int64_t as_int() const { return kind == Kind::boolean ? (int64_t)b : i; }
    double as_double() const { return kind == Kind::floating ? f : (double)as_int(); }
};

struct SeqObj final : Object {
    std::vector<Value> v;
    SeqKind kind = SeqKind::list;
    int64_t start = 0, stop = 0, step = 1;  // range(start, stop, step), for printing
};

struct DictObj final : Object {
    std::vector<std::pair<Value, Value>> v;  // insertion order, as Python dicts
    const Value* find(const Value& key, Budget& b) const;
    const Value* find(std::string_view key) const;
};

struct Namespace {
    std::vector<std::pair<std::string, Value>> attrs;
    Value* find(std::string_view name);
};

inline const SeqObj& Value::seq() const { return static_cast<const SeqObj&>(*obj); }
inline const DictObj& Value::dict() const { return static_cast<const DictObj&>(*obj); }

// jinja2's message for using an undefined value: "'x' is undefined" etc.
[[noreturn]] void fail_undefined(const Value& u);

// Python's truth value (undefined is false, a generator is always true).
bool truthy(const Value& v);
// type(x).__name__ and jinja2's object_type_repr ("dict object", "None").
std::string type_name(const Value& v);
std::string object_type_repr(const Value& v);

// Python's str() and repr(), appended to out.
void to_str(std::string& out, const Value& v, Budget& b);
void to_repr(std::string& out, const Value& v, Budget& b);
std::string str_of(const Value& v, Budget& b);
std::string float_repr(double x);
void string_repr(std::string& out, std::string_view s);

bool py_eq(const Value& a, const Value& b, Budget& bud);
// a < b with Python's rules (numbers, str, same-kind sequences); `op` names the operator in the
// TypeError for other pairs.
bool py_less(const Value& a, const Value& b, const char* op, Budget& bud);

// json.dumps(x, ensure_ascii=..., indent=..., separators=..., sort_keys=...).
struct JsonOptions {
    bool ensure_ascii = false;
    bool has_indent = false;
    std::string indent;  // the unit of indentation when has_indent
    std::string item_sep = ", ", key_sep = ": ";
    bool sort_keys = false;
};
void json_dump(std::string& out, const Value& v, const JsonOptions& o, Budget& b, int level = 0);

// The context as values; strings must be valid UTF-8.
Value from_json(const nlohmann::ordered_json& j, Budget& b);
Value from_json(const nlohmann::json& j, Budget& b);

// Unicode helpers over valid UTF-8.
std::vector<uint32_t> code_points(std::string_view s);
void append_utf8(std::string& out, uint32_t cp);
size_t cp_count(std::string_view s);
// Byte offsets of code point indices [0, n] of s.
std::vector<size_t> cp_offsets(std::string_view s);
bool is_ascii(std::string_view s);
bool py_isspace(uint32_t cp);     // str.isspace()
bool py_isword(uint32_t cp);      // re's \w
bool py_isprintable(uint32_t cp);
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_title(std::string_view s);       // str.title()
std::string py_capitalize(std::string_view s);  // str.capitalize()
bool valid_utf8(std::string_view s, size_t* bad_at = nullptr);

}  // namespace moe::jinja
