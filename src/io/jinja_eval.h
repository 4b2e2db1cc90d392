#pragma once
// The renderer: walks a Program over a context with jinja2's scoping. A for-loop iteration, a
// macro call, a call / filter / set / with block each run in a frame of their own whose reads fall
// through to the enclosing frame; {% set %} writes to the innermost frame (so a set inside a loop
// does not survive the iteration, the reason templates use namespace()). if blocks share their
// frame. Macros read the frame they were defined in at call time.
#include <ctime>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "io/jinja_ast.h"

namespace moe::jinja {

struct Frame {
    explicit Frame(std::shared_ptr<Frame> p) : parent(std::move(p)) {}
    std::shared_ptr<Frame> parent;
    std::vector<std::pair<std::string, Value>> vars;
    Value* find(std::string_view name) {
        for (auto& [k, v] : vars)
            if (k == name) return &v;
        return nullptr;
    }
    void set(const std::string& name, Value v) {
        if (Value* p = find(name)) *p = std::move(v);
        else vars.emplace_back(name, std::move(v));
    }
};
using FramePtr = std::shared_ptr<Frame>;

struct Args {
    std::vector<Value> pos;
    std::vector<std::pair<std::string, Value>> kw;
};

class Renderer;

struct Callable : Object {
    virtual Value call(Renderer& r, Args& a) const = 0;
    std::string py_type() const override { return "function"; }
    void py_str(std::string& out) const override;
};

// A macro (or the caller of a call block). It reads the frame it was defined in; held weakly, so
// a frame that stores its own macro is no reference cycle.
struct MacroFn final : Callable {
    MacroFn(const MacroDef* d, const FramePtr& f) : def(d), closure(f) {}
    const MacroDef* def;
    std::weak_ptr<Frame> closure;
    Value call(Renderer& r, Args& a) const override;
    std::string py_type() const override { return "Macro"; }
    std::string py_type_repr() const override { return "jinja2.runtime.Macro object"; }
};

// The loop variable of one for statement (jinja2's LoopContext), updated in place per iteration
// as jinja2 does, so a loop object kept past its iteration shows the last state.
struct LoopObj final : Object {
    std::vector<Value> items;
    int64_t index0 = 0;
    int64_t depth0 = 0;
    Value last_changed;
    bool has_last_changed = false;
    // recursive loops: loop(children) renders the body again one level deeper
    const Stmt* stmt = nullptr;
    std::weak_ptr<Frame> frame;
    std::string py_type() const override { return "LoopContext"; }
    std::string py_type_repr() const override { return "jinja2.runtime.LoopContext object"; }
    void py_str(std::string& out) const override;
};

// A builtin function or a bound method ('abc'.upper): which one, and the object it is bound to.
struct BuiltinFn final : Callable {
    enum Id : uint8_t {
        range, namespace_, dict, raise_exception, strftime_now, lipsum, cycler, joiner, method, loop_cycle,
        loop_changed, loop_call, unsupported
    };
    BuiltinFn(Id i, std::string n, Value s = Value()) : id(i), name(std::move(n)), self(std::move(s)) {}
    Id id;
    std::string name;
    Value self;  // the receiver of a method, the loop of loop.cycle
    Value call(Renderer& r, Args& a) const override;
    std::string py_type() const override {
        return id == method || id == loop_cycle || id == loop_changed ? "method" : "builtin_function_or_method";
    }
};

class Renderer {
public:
    Renderer(const Program& p, const ChatTemplateLimits& lim, const std::function<std::tm()>& clock)
        : budget(lim), prog_(p), clock_(clock) {}
    ~Renderer();
    Renderer(const Renderer&) = delete;
    Renderer& operator=(const Renderer&) = delete;

    std::string render(const Value& context);

    Budget budget;

    // statements
    enum class Flow { normal, brk, cont };
    Flow exec(const Body& body, const FramePtr& f, std::string& out);
    void run_for(const Stmt& s, const FramePtr& f, std::string& out, const Value& iterable, int64_t depth0);

    // expressions
    Value eval(const Expr& e, const FramePtr& f);
    Value lookup(const std::string& name, const FramePtr& f);
    Value getattr(const Value& obj, const std::string& name);
    Value getitem(const Value& obj, const Value& key);
    Value call(const Value& callee, Args& a);
    Value binary(Op op, const Value& a, const Value& b);
    bool compare(Op op, const Value& a, const Value& b);
    bool contains(const Value& container, const Value& item);
    Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
    // Python's iter(): str gives characters, dict its keys, undefined nothing.
    std::vector<Value> iterate(const Value& v);
    Value str(std::string s, bool markup = false) {
        budget.add_bytes(s.size());
        return Value::string(std::move(s), markup);
    }
    Value list(std::vector<Value> v, SeqKind k = SeqKind::list) {
        budget.add_items(v.size());
        return Value::seq(std::move(v), k);
    }
    std::string to_string(const Value& v) { return str_of(v, budget); }

    // builtins (src/io/jinja_builtins.cc)
    Value apply_filter(int id, const std::string& name, const Value& v, Args& a);
    bool apply_test(int id, const std::string& name, const Value& v, Args& a);
    Value call_method(const Value& self, const std::string& name, Args& a);
    Value call_builtin(const BuiltinFn& fn, Args& a);
    Value global(const std::string& name);
    // Attribute lookup without falling back to items (methods, namespace and loop attributes);
    // `found` tells whether the object has it.
    Value attribute(const Value& obj, const std::string& name, bool& found);
    Namespace* new_namespace() {
        namespaces_.emplace_back();
        return &namespaces_.back();
    }
    std::tm now() const;

private:
    const Program& prog_;
    const std::function<std::tm()>& clock_;
    std::deque<Namespace> namespaces_;  // every namespace() of this render; values point into it
    const Value* block_input_ = nullptr;  // the body of a {% filter %} block
    // loop.changed(x) keeps x in the loop object, and x may hold the loop: such a cycle of
    // shared_ptrs is cut when the render ends
    std::vector<std::weak_ptr<LoopObj>> loops_;
    FramePtr root_;

    void assign(const Expr& target, const Value& v, const FramePtr& f);
    Value eval_filter(const Expr& e, const FramePtr& f);
    Value eval_test(const Expr& e, const FramePtr& f);
    void eval_args(const Expr& e, const FramePtr& f, Args& a, size_t skip = 0);
    void append_out(std::string& out, const std::string& s);
    friend struct MacroFn;
    friend struct BuiltinFn;
};

[[noreturn]] void type_error(const std::string& msg);
// Python's message for an undefined attribute / element ("'dict object' has no attribute 'x'").
Value undefined_attr(const Value& obj, const Value& name, Budget& b);
// Binds positional and keyword arguments to parameter names (a Python signature): missing ones
// stay null; too many, unknown or duplicate ones are a type error naming `fn`.
std::vector<const Value*> bind_args(const char* fn, std::initializer_list<const char*> names, const Args& a,
                                    size_t required = 0);

}  // namespace moe::jinja
