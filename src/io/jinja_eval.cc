#include "io/jinja_eval.h"

#include <algorithm>
#include <cmath>

namespace moe::jinja {

void type_error(const std::string& msg) { raise(ErrKind::type, msg); }

static std::string repr_of(const Value& v, Budget& b) {
    std::string s;
    to_repr(s, v, b);
    return s;
}

Value undefined_attr(const Value& obj, const Value& name, Budget& b) {
    if (name.is_string())
        return Value::undefined("'" + object_type_repr(obj) + "' has no attribute " + repr_of(name, b));
    return Value::undefined(object_type_repr(obj) + " has no element " + repr_of(name, b));
}

std::vector<const Value*> bind_args(const char* fn, std::initializer_list<const char*> names, const Args& a,
                                    size_t required) {
    std::vector<const char*> nm(names);
    std::vector<const Value*> out(nm.size(), nullptr);
    if (a.pos.size() > nm.size())
        type_error(std::string(fn) + "() takes at most " + std::to_string(nm.size()) + " argument(s) (" +
                   std::to_string(a.pos.size()) + " given)");
    for (size_t k = 0; k < a.pos.size(); ++k) out[k] = &a.pos[k];
    for (const auto& [key, v] : a.kw) {
        size_t k = 0;
        while (k < nm.size() && key != nm[k]) ++k;
        if (k == nm.size()) type_error(std::string(fn) + "() got an unexpected keyword argument '" + key + "'");
        if (out[k]) type_error(std::string(fn) + "() got multiple values for argument '" + key + "'");
        out[k] = &v;
    }
    for (size_t k = 0; k < required; ++k)
        if (!out[k]) type_error(std::string(fn) + "() missing required argument '" + nm[k] + "'");
    return out;
}

void Callable::py_str(std::string& out) const {
    (void)out;
    raise(ErrKind::unsupported, "printing a " + py_type() + " object (Python prints its memory address)");
}

void LoopObj::py_str(std::string& out) const {
    out += "<LoopContext " + std::to_string(index0 + 1) + "/" + std::to_string(items.size()) + ">";
}

std::tm Renderer::now() const {
    if (clock_) return clock_();
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    return tm;
}

Renderer::~Renderer() {
    for (auto& w : loops_)
        if (auto l = w.lock()) l->last_changed = Value();
}

// ---------------------------------------------------------------------------------------------
// Statements

std::string Renderer::render(const Value& context) {
    root_ = std::make_shared<Frame>(nullptr);
    if (context.is_dict())
        for (const auto& [k, v] : context.dict().v)
            if (k.is_string()) root_->set(k.str(), v);
    std::string out;
    exec(prog_.body, root_, out);
    root_.reset();
    return out;
}

void Renderer::append_out(std::string& out, const std::string& s) {
    out += s;
    if (out.size() > budget.lim.max_output_bytes)
        Budget::over("bytes of output", (int64_t)budget.lim.max_output_bytes);
}

Renderer::Flow Renderer::exec(const Body& body, const FramePtr& f, std::string& out) {
    for (const auto& sp : body) {
        const Stmt& s = *sp;
        budget.tick();
        try {
            switch (s.kind) {
                case StmtKind::text: append_out(out, s.text); break;
                case StmtKind::print:
                    for (const auto& e : s.items) {
                        Value v = eval(*e, f);
                        if (v.is_string()) append_out(out, v.str());
                        else append_out(out, to_string(v));
                    }
                    break;
                case StmtKind::if_: {
                    DepthGuard g(budget);
                    Flow fl = truthy(eval(*s.expr, f)) ? exec(s.body, f, out) : exec(s.else_body, f, out);
                    if (fl != Flow::normal) return fl;
                    break;
                }
                case StmtKind::for_: {
                    DepthGuard g(budget);
                    run_for(s, f, out, eval(*s.expr, f), 0);
                    break;
                }
                case StmtKind::set: assign(*s.target, eval(*s.expr, f), f); break;
                case StmtKind::set_block: {
                    DepthGuard g(budget);
                    std::string buf;
                    exec(s.body, std::make_shared<Frame>(f), buf);
                    Value v = str(std::move(buf));
                    if (s.expr) {
                        const Value* saved = block_input_;
                        block_input_ = &v;
                        Value r = eval(*s.expr, f);
                        block_input_ = saved;
                        v = r;
                    }
                    assign(*s.target, v, f);
                    break;
                }
                case StmtKind::macro: {
                    Value m;
                    m.kind = Kind::callable;
                    m.obj = std::make_shared<MacroFn>(s.macro.get(), f);
                    f->set(s.macro->name, m);
                    break;
                }
                case StmtKind::call_block: {
                    DepthGuard g(budget);
                    const Expr& c = *s.expr;
                    Value callee = eval(*c.a, f);
                    Args a;
                    eval_args(c, f, a);
                    Value caller;
                    caller.kind = Kind::callable;
                    caller.obj = std::make_shared<MacroFn>(s.macro.get(), f);
                    for (const auto& kv : a.kw)
                        if (kv.first == "caller") type_error("got multiple values for keyword argument 'caller'");
                    a.kw.emplace_back("caller", caller);
                    Value r = call(callee, a);
                    append_out(out, to_string(r));
                    break;
                }
                case StmtKind::filter_block: {
                    DepthGuard g(budget);
                    std::string buf;
                    exec(s.body, std::make_shared<Frame>(f), buf);
                    Value v = str(std::move(buf));
                    const Value* saved = block_input_;
                    block_input_ = &v;
                    Value r = eval(*s.expr, f);
                    block_input_ = saved;
                    append_out(out, to_string(r));
                    break;
                }
                case StmtKind::with: {
                    DepthGuard g(budget);
                    auto inner = std::make_shared<Frame>(f);
                    std::vector<Value> vals;
                    for (const auto& [t, e] : s.with_pairs) vals.push_back(eval(*e, f));
                    for (size_t k = 0; k < vals.size(); ++k) assign(*s.with_pairs[k].first, vals[k], inner);
                    exec(s.body, inner, out);
                    break;
                }
                case StmtKind::scope: {
                    DepthGuard g(budget);
                    exec(s.body, std::make_shared<Frame>(f), out);
                    break;
                }
                case StmtKind::break_: return Flow::brk;
                case StmtKind::continue_: return Flow::cont;
            }
        } catch (const ChatTemplateError& e) {
            if (e.line() == 0) throw ChatTemplateError(e.kind(), e.detail(), s.pos.line, 0);
            throw;
        }
    }
    return Flow::normal;
}

void Renderer::run_for(const Stmt& s, const FramePtr& f, std::string& out, const Value& iterable, int64_t depth0) {
    std::vector<Value> all = iterate(iterable);
    auto loop = std::make_shared<LoopObj>();
    loops_.push_back(loop);
    loop->depth0 = depth0;
    loop->stmt = &s;
    loop->frame = f;
    if (s.cond) {
        // the filter sees the loop target but not `loop`, in a frame of its own
        for (auto& item : all) {
            auto tf = std::make_shared<Frame>(f);
            assign(*s.target, item, tf);
            if (truthy(eval(*s.cond, tf))) loop->items.push_back(std::move(item));
        }
    } else {
        loop->items = std::move(all);
    }
    Value lv;
    lv.kind = Kind::loop;
    lv.obj = loop;
    const size_t n = loop->items.size();
    for (size_t k = 0; k < n; ++k) {
        if (++budget.loop_iterations > budget.lim.max_loop_iterations)
            Budget::over("loop iterations", budget.lim.max_loop_iterations);
        loop->index0 = (int64_t)k;
        auto it = std::make_shared<Frame>(f);
        assign(*s.target, loop->items[k], it);
        it->set("loop", lv);
        Flow fl = exec(s.body, it, out);
        if (fl == Flow::brk) break;
    }
    if (n == 0 && !s.else_body.empty()) exec(s.else_body, std::make_shared<Frame>(f), out);
}

void Renderer::assign(const Expr& t, const Value& v, const FramePtr& f) {
    if (t.kind == ExprKind::name) {
        f->set(t.name, v);
        return;
    }
    if (t.kind == ExprKind::nsref) {
        Value ns = lookup(t.name, f);
        if (ns.kind != Kind::ns) raise(ErrKind::type, "cannot assign attribute on non-namespace object");
        if (!t.attr.empty() && t.attr[0] == '_')
            raise(ErrKind::security, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" +
                                         t.attr + "'. Please rename the attribute.");
        if (Value* p = ns.ns->find(t.attr)) *p = v;
        else ns.ns->attrs.emplace_back(t.attr, v);
        return;
    }
    // tuple unpacking
    std::vector<Value> items = iterate(v);
    const size_t want = t.items.size();
    if (items.size() < want)
        raise(ErrKind::type, "not enough values to unpack (expected " + std::to_string(want) + ", got " +
                                 std::to_string(items.size()) + ")");
    if (items.size() > want) raise(ErrKind::type, "too many values to unpack (expected " + std::to_string(want) + ")");
    for (size_t k = 0; k < want; ++k) assign(*t.items[k], items[k], f);
}

// ---------------------------------------------------------------------------------------------
// Expressions

Value Renderer::lookup(const std::string& name, const FramePtr& f) {
    for (Frame* fr = f.get(); fr; fr = fr->parent.get())
        if (Value* v = fr->find(name)) return *v;
    return global(name);
}

void Renderer::eval_args(const Expr& e, const FramePtr& f, Args& a, size_t skip) {
    for (size_t k = skip; k < e.items.size(); ++k) a.pos.push_back(eval(*e.items[k], f));
    for (const auto& [key, ex] : e.kwargs) {
        for (const auto& kv : a.kw)
            if (kv.first == key) type_error("got multiple values for keyword argument '" + key + "'");
        a.kw.emplace_back(key, eval(*ex, f));
    }
    if (e.dyn_args) {
        Value d = eval(*e.dyn_args, f);
        for (auto& v : iterate(d)) a.pos.push_back(std::move(v));
    }
    if (e.dyn_kwargs) {
        Value d = eval(*e.dyn_kwargs, f);
        if (!d.is_dict()) type_error("argument after ** must be a mapping, not " + type_name(d));
        for (const auto& [k, v] : d.dict().v) {
            if (!k.is_string()) type_error("keywords must be strings");
            for (const auto& kv : a.kw)
                if (kv.first == k.str()) type_error("got multiple values for keyword argument '" + k.str() + "'");
            a.kw.emplace_back(k.str(), v);
        }
    }
}

static bool hashable(const Value& v) {
    if (v.kind == Kind::seq) {
        if (v.seq().kind != SeqKind::tuple) return v.seq().kind == SeqKind::range || v.seq().kind == SeqKind::generator ||
                                                   v.seq().kind == SeqKind::reversed;
        for (const auto& x : v.seq().v)
            if (!hashable(x)) return false;
        return true;
    }
    return v.kind != Kind::dict;
}

Value Renderer::eval(const Expr& e, const FramePtr& f) {
    budget.tick();
    DepthGuard g(budget);
    switch (e.kind) {
        case ExprKind::constant: return e.value;
        case ExprKind::name: return lookup(e.name, f);
        case ExprKind::list:
        case ExprKind::tuple: {
            std::vector<Value> v;
            v.reserve(e.items.size());
            for (const auto& it : e.items) v.push_back(eval(*it, f));
            return list(std::move(v), e.kind == ExprKind::list ? SeqKind::list : SeqKind::tuple);
        }
        case ExprKind::dict: {
            std::vector<std::pair<Value, Value>> v;
            for (size_t k = 0; k + 1 < e.items.size(); k += 2) {
                Value key = eval(*e.items[k], f);
                Value val = eval(*e.items[k + 1], f);
                if (key.is_undefined()) {
                    // Undefined is hashable; one key for all of them
                }
                if (!hashable(key)) type_error("unhashable type: '" + type_name(key) + "'");
                bool replaced = false;
                for (auto& kv : v)
                    if (py_eq(kv.first, key, budget)) {
                        kv.second = val;
                        replaced = true;
                        break;
                    }
                if (!replaced) v.emplace_back(std::move(key), std::move(val));
            }
            budget.add_items(v.size());
            return Value::dict(std::move(v));
        }
        case ExprKind::getattr: return getattr(eval(*e.a, f), e.name);
        case ExprKind::getitem: {
            Value obj = eval(*e.a, f);
            if (e.b->kind == ExprKind::slice) {
                const Expr& sl = *e.b;
                Value parts[3];
                for (int k = 0; k < 3; ++k) parts[k] = sl.items[k] ? eval(*sl.items[k], f) : Value::none();
                return slice(obj, parts[0], parts[1], parts[2]);
            }
            return getitem(obj, eval(*e.b, f));
        }
        case ExprKind::slice: raise(ErrKind::unsupported, "a slice outside of a subscript");
        case ExprKind::call: {
            Value callee = eval(*e.a, f);
            Args a;
            eval_args(e, f, a);
            return call(callee, a);
        }
        case ExprKind::filter: return eval_filter(e, f);
        case ExprKind::test: return eval_test(e, f);
        case ExprKind::unary: {
            Value v = eval(*e.a, f);
            if (v.is_undefined()) fail_undefined(v);
            if (v.kind == Kind::floating) return Value::floating(e.op == Op::neg ? -v.f : v.f);
            if (v.is_int()) {
                int64_t x = v.as_int();
                if (e.op == Op::pos) return Value::integer(x);
                if (x == INT64_MIN) raise(ErrKind::unsupported, "integer overflow (moe's integers are 64-bit)");
                return Value::integer(-x);
            }
            type_error(std::string("bad operand type for unary ") + (e.op == Op::neg ? "-" : "+") + ": '" + type_name(v) + "'");
        }
        case ExprKind::not_: return Value::boolean(!truthy(eval(*e.a, f)));
        case ExprKind::binary: {
            Value l = eval(*e.a, f);
            Value r = eval(*e.b, f);
            return binary(e.op, l, r);
        }
        case ExprKind::compare: {
            Value l = eval(*e.a, f);
            for (size_t k = 0; k < e.ops.size(); ++k) {
                Value r = eval(*e.items[k], f);
                if (!compare(e.ops[k], l, r)) return Value::boolean(false);
                l = std::move(r);
            }
            return Value::boolean(true);
        }
        case ExprKind::and_: {
            Value l = eval(*e.a, f);
            return truthy(l) ? eval(*e.b, f) : l;
        }
        case ExprKind::or_: {
            Value l = eval(*e.a, f);
            return truthy(l) ? l : eval(*e.b, f);
        }
        case ExprKind::concat: {
            std::string s;
            for (const auto& it : e.items) {
                Value v = eval(*it, f);
                to_str(s, v, budget);
                budget.check_bytes(s.size());
            }
            return str(std::move(s));
        }
        case ExprKind::condexpr:
            if (truthy(eval(*e.b, f))) return eval(*e.a, f);
            if (e.c) return eval(*e.c, f);
            return Value::undefined("the inline if-expression on line " + std::to_string(e.pos.line) +
                                    " evaluated to false and no else section was defined.");
        case ExprKind::nsref: raise(ErrKind::syntax, "a namespace reference outside an assignment");
    }
    return Value();
}

Value Renderer::eval_filter(const Expr& e, const FramePtr& f) {
    Value v;
    if (e.a) v = eval(*e.a, f);
    else if (block_input_) v = *block_input_;
    Args a;
    eval_args(e, f, a);
    if (e.builtin < 0) raise(ErrKind::type, "No filter named '" + e.name + "' found.");
    return apply_filter(e.builtin, e.name, v, a);
}

Value Renderer::eval_test(const Expr& e, const FramePtr& f) {
    Value v = eval(*e.a, f);
    Args a;
    eval_args(e, f, a);
    if (e.builtin < 0) raise(ErrKind::type, "No test named '" + e.name + "' found.");
    return Value::boolean(apply_test(e.builtin, e.name, v, a));
}

// ---------------------------------------------------------------------------------------------
// Attribute and item access, with jinja2's sandboxed lookup order: obj.x tries the attribute and
// then obj['x']; obj[k] tries the item and then (for a string key) the attribute. What fails is an
// undefined value that remembers why, raised only if the template uses it.

Value Renderer::getattr(const Value& obj, const std::string& name) {
    budget.tick();
    if (obj.is_undefined()) fail_undefined(obj);
    if (name.size() >= 4 && name.compare(0, 2, "__") == 0 && name.compare(name.size() - 2, 2, "__") == 0)
        return Value::undefined("access to attribute '" + name + "' of '" + type_name(obj) + "' object is unsafe.",
                                ErrKind::security);
    bool found = false;
    Value a = attribute(obj, name, found);
    if (found) return a;
    if (obj.is_dict()) {
        if (const Value* v = obj.dict().find(name)) return *v;
    }
    return undefined_attr(obj, Value::string(name), budget);
}

Value Renderer::getitem(const Value& obj, const Value& key) {
    budget.tick();
    if (obj.is_undefined()) fail_undefined(obj);
    switch (obj.kind) {
        case Kind::string:
        case Kind::seq: {
            bool indexable = obj.is_string() || obj.seq().kind == SeqKind::list || obj.seq().kind == SeqKind::tuple ||
                             obj.seq().kind == SeqKind::range;
            if (indexable && key.is_int()) {
                int64_t i = key.as_int();
                if (obj.is_string()) {
                    const std::string& s = obj.str();
                    if (is_ascii(s)) {
                        int64_t n = (int64_t)s.size();
                        if (i < 0) i += n;
                        if (i >= 0 && i < n) return Value::string(std::string(1, s[(size_t)i]));
                    } else {
                        std::vector<size_t> off = cp_offsets(s);
                        int64_t n = (int64_t)off.size() - 1;
                        if (i < 0) i += n;
                        if (i >= 0 && i < n) return Value::string(s.substr(off[(size_t)i], off[(size_t)i + 1] - off[(size_t)i]));
                    }
                } else {
                    const auto& v = obj.seq().v;
                    int64_t n = (int64_t)v.size();
                    if (i < 0) i += n;
                    if (i >= 0 && i < n) return v[(size_t)i];
                }
            }
            break;
        }
        case Kind::dict:
            if (hashable(key))
                if (const Value* v = obj.dict().find(key, budget)) return *v;
            break;
        default: break;
    }
    if (key.is_string()) {
        const std::string& name = key.str();
        if (name.size() >= 2 && name[0] == '_')
            return Value::undefined("access to attribute '" + name + "' of '" + type_name(obj) + "' object is unsafe.",
                                    ErrKind::security);
        bool found = false;
        Value a = attribute(obj, name, found);
        if (found) return a;
    }
    return undefined_attr(obj, key, budget);
}

// Python's slice.indices(n) then the elements.
static bool slice_int(const Value& v, int64_t& out) {
    if (v.is_none()) return false;
    out = v.as_int();
    return true;
}

Value Renderer::slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
    budget.tick();
    if (obj.is_undefined()) fail_undefined(obj);
    for (const Value* p : {&start, &stop, &step})
        if (!p->is_none() && !p->is_int()) return undefined_attr(obj, Value::string("slice"), budget);
    bool seq_ok = obj.is_string() || (obj.is_seq() && (obj.seq().kind == SeqKind::list || obj.seq().kind == SeqKind::tuple ||
                                                       obj.seq().kind == SeqKind::range));
    if (!seq_ok) return Value::undefined(object_type_repr(obj) + " has no element slice(...)");
    int64_t st = 1;
    if (slice_int(step, st) && st == 0) raise(ErrKind::type, "slice step cannot be zero");
    std::vector<size_t> off;
    int64_t n;
    if (obj.is_string()) {
        off = cp_offsets(obj.str());
        n = (int64_t)off.size() - 1;
    } else {
        n = (int64_t)obj.seq().v.size();
    }
    int64_t lower = st > 0 ? 0 : -1, upper = st > 0 ? n : n - 1;
    auto clamp = [&](const Value& v, int64_t dflt) {
        int64_t x;
        if (!slice_int(v, x)) return dflt;
        if (x < 0) {
            x += n;
            if (x < lower) x = lower;
        } else if (x > upper) {
            x = upper;
        }
        return x;
    };
    int64_t b = clamp(start, st > 0 ? lower : upper);
    int64_t e = clamp(stop, st > 0 ? upper : lower);
    std::vector<int64_t> idx;
    if (st > 0)
        for (int64_t i = b; i < e; i += st) idx.push_back(i);
    else
        for (int64_t i = b; i > e; i += st) idx.push_back(i);
    budget.tick((int64_t)idx.size());
    if (obj.is_string()) {
        const std::string& s = obj.str();
        std::string r;
        if (st == 1 && b < e) r = s.substr(off[(size_t)b], off[(size_t)e] - off[(size_t)b]);
        else
            for (int64_t i : idx) r.append(s, off[(size_t)i], off[(size_t)i + 1] - off[(size_t)i]);
        return str(std::move(r));
    }
    const SeqObj& so = obj.seq();
    std::vector<Value> r;
    r.reserve(idx.size());
    for (int64_t i : idx) r.push_back(so.v[(size_t)i]);
    budget.add_items(r.size());
    Value out = Value::seq(std::move(r), so.kind);
    if (so.kind == SeqKind::range) {
        auto* o = static_cast<SeqObj*>(out.obj.get());
        o->start = so.start + b * so.step;
        o->stop = so.start + e * so.step;
        o->step = so.step * st;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Calls

Value Renderer::call(const Value& callee, Args& a) {
    budget.tick();
    if (callee.is_undefined()) fail_undefined(callee);
    if (callee.kind == Kind::loop) {
        auto* loop = static_cast<LoopObj*>(callee.obj.get());
        BuiltinFn fn(BuiltinFn::loop_call, "loop", callee);
        (void)loop;
        return call_builtin(fn, a);
    }
    if (callee.kind != Kind::callable) type_error("'" + type_name(callee) + "' object is not callable");
    return static_cast<const Callable&>(*callee.obj).call(*this, a);
}

Value MacroFn::call(Renderer& r, Args& a) const {
    DepthGuard g(r.budget);
    FramePtr parent = closure.lock();
    if (!parent)
        raise(ErrKind::unsupported, "macro '" + def->name + "' called after the scope it was defined in ended");
    auto f = std::make_shared<Frame>(parent);
    const MacroDef& d = *def;
    const size_t n = d.params.size();
    std::vector<Value> vals(n);
    std::vector<bool> have(n, false);
    size_t consumed = std::min(a.pos.size(), n);
    for (size_t k = 0; k < consumed; ++k) {
        vals[k] = a.pos[k];
        have[k] = true;
    }
    std::vector<std::pair<std::string, Value>> kw = a.kw;
    bool explicit_caller = std::find(d.params.begin(), d.params.end(), "caller") != d.params.end();
    bool found_caller = false;
    if (consumed != n) {
        for (size_t k = consumed; k < n; ++k) {
            for (auto it = kw.begin(); it != kw.end(); ++it)
                if (it->first == d.params[k]) {
                    vals[k] = std::move(it->second);
                    have[k] = true;
                    kw.erase(it);
                    break;
                }
            if (d.params[k] == "caller") found_caller = true;
        }
    } else {
        found_caller = explicit_caller;
    }
    if (d.uses_caller && !found_caller) {
        Value caller = Value::undefined("No caller defined");
        for (auto it = kw.begin(); it != kw.end(); ++it)
            if (it->first == "caller") {
                caller = std::move(it->second);
                kw.erase(it);
                break;
            }
        f->set("caller", caller);
    }
    if (d.catch_kwargs) {
        std::vector<std::pair<Value, Value>> kv;
        for (auto& [k, v] : kw) kv.emplace_back(Value::string(k), std::move(v));
        f->set("kwargs", Value::dict(std::move(kv)));
    } else if (!kw.empty()) {
        for (const auto& p : kw)
            if (p.first == "caller")
                type_error("macro '" + d.name + "' was invoked with two values for the special caller argument. This is most likely a bug.");
        type_error("macro '" + d.name + "' takes no keyword argument '" + kw.front().first + "'");
    }
    if (d.catch_varargs) {
        std::vector<Value> rest;
        for (size_t k = n; k < a.pos.size(); ++k) rest.push_back(a.pos[k]);
        f->set("varargs", Value::seq(std::move(rest), SeqKind::tuple));
    } else if (a.pos.size() > n) {
        type_error("macro '" + d.name + "' takes not more than " + std::to_string(n) + " argument(s)");
    }
    const size_t first_default = n - d.defaults.size();
    for (size_t k = 0; k < n; ++k) {
        if (!have[k]) {
            if (k >= first_default) vals[k] = r.eval(*d.defaults[k - first_default], f);
            else vals[k] = Value::undefined("parameter '" + d.params[k] + "' was not provided");
        }
        f->set(d.params[k], vals[k]);
    }
    std::string out;
    r.exec(d.body, f, out);
    return r.str(std::move(out));
}

// ---------------------------------------------------------------------------------------------
// Operators

[[noreturn]] static void overflow() { raise(ErrKind::unsupported, "integer overflow (moe's integers are 64-bit)"); }

static double py_fmod_floor(double vx, double wx, double* floordiv_out) {
    double mod = std::fmod(vx, wx);
    double div = (vx - mod) / wx;
    if (mod != 0.0) {
        if ((wx < 0) != (mod < 0)) {
            mod += wx;
            div -= 1.0;
        }
    } else {
        mod = std::copysign(0.0, wx);
    }
    double fd;
    if (div != 0.0) {
        fd = std::floor(div);
        if (div - fd > 0.5) fd += 1.0;
    } else {
        fd = std::copysign(0.0, vx / wx);
    }
    if (floordiv_out) *floordiv_out = fd;
    return mod;
}

static std::string html_escape(const std::string& s) {
    std::string o;
    o.reserve(s.size());
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

Value printf_format(Renderer& r, const std::string& fmt, const Value& args);

[[noreturn]] static void unsupported_operand_types(Op op, const Value& a, const Value& b) {
    static const char* sym[] = {"+", "-", "*", "/", "//", "%", "**"};
    type_error(std::string("unsupported operand type(s) for ") + sym[(int)op] + ": '" + type_name(a) + "' and '" +
               type_name(b) + "'");
}

Value Renderer::binary(Op op, const Value& a, const Value& b) {
    budget.tick();
    // str % x formats before x is consulted (str's own __mod__ runs first), even for undefined x
    if (op == Op::mod && a.is_string()) return printf_format(*this, a.str(), b);
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    const bool nums = a.is_number() && b.is_number();
    const bool ints = nums && a.kind != Kind::floating && b.kind != Kind::floating;
    switch (op) {
        case Op::add: {
            if (ints) {
                int64_t r;
                if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) overflow();
                return Value::integer(r);
            }
            if (nums) return Value::floating(a.as_double() + b.as_double());
            if (a.is_string() && b.is_string()) {
                if (a.markup || b.markup) {
                    std::string l = a.markup ? a.str() : html_escape(a.str());
                    std::string rr = b.markup ? b.str() : html_escape(b.str());
                    return str(l + rr, true);
                }
                budget.add_bytes(a.str().size() + b.str().size());
                return Value::string(a.str() + b.str());
            }
            if (a.is_seq() && b.is_seq() && a.seq().kind == b.seq().kind &&
                (a.seq().kind == SeqKind::list || a.seq().kind == SeqKind::tuple)) {
                budget.add_items(a.seq().v.size() + b.seq().v.size());
                std::vector<Value> v = a.seq().v;
                v.insert(v.end(), b.seq().v.begin(), b.seq().v.end());
                return Value::seq(std::move(v), a.seq().kind);
            }
            if (a.is_string()) type_error("can only concatenate str (not \"" + type_name(b) + "\") to str");
            if (a.is_seq() && (a.seq().kind == SeqKind::list || a.seq().kind == SeqKind::tuple))
                type_error("can only concatenate " + type_name(a) + " (not \"" + type_name(b) + "\") to " + type_name(a));
            unsupported_operand_types(op, a, b);
        }
        case Op::sub:
            if (ints) {
                int64_t r;
                if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) overflow();
                return Value::integer(r);
            }
            if (nums) return Value::floating(a.as_double() - b.as_double());
            unsupported_operand_types(op, a, b);
        case Op::mul: {
            if (ints) {
                int64_t r;
                if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) overflow();
                return Value::integer(r);
            }
            if (nums) return Value::floating(a.as_double() * b.as_double());
            const Value* seqv = nullptr;
            const Value* cnt = nullptr;
            if ((a.is_string() || a.is_seq()) && b.is_int()) {
                seqv = &a;
                cnt = &b;
            } else if ((b.is_string() || b.is_seq()) && a.is_int()) {
                seqv = &b;
                cnt = &a;
            }
            if (seqv && (seqv->is_string() || seqv->seq().kind == SeqKind::list || seqv->seq().kind == SeqKind::tuple)) {
                int64_t n = std::max<int64_t>(0, cnt->as_int());
                if (seqv->is_string()) {
                    const std::string& s = seqv->str();
                    if (!s.empty() && n > 0 && (uint64_t)n > budget.lim.max_output_bytes / s.size())
                        budget.check_bytes(budget.lim.max_output_bytes + 1);
                    std::string o;
                    o.reserve(s.size() * (size_t)n);
                    budget.add_bytes(s.size() * (size_t)n);
                    for (int64_t k = 0; k < n; ++k) o += s;
                    budget.tick(n);
                    return Value::string(std::move(o), seqv->markup);
                }
                const auto& v = seqv->seq().v;
                if (!v.empty() && n > 0 && n > budget.lim.max_items / (int64_t)v.size()) budget.check_items((size_t)budget.lim.max_items + 1);
                std::vector<Value> o;
                o.reserve(v.size() * (size_t)n);
                budget.add_items(v.size() * (size_t)n);
                for (int64_t k = 0; k < n; ++k) o.insert(o.end(), v.begin(), v.end());
                return Value::seq(std::move(o), seqv->seq().kind);
            }
            if ((a.is_string() || a.is_seq()) && b.kind == Kind::floating)
                type_error("can't multiply sequence by non-int of type 'float'");
            unsupported_operand_types(op, a, b);
        }
        case Op::div:
            if (nums) {
                if (b.as_double() == 0.0) raise(ErrKind::type, ints ? "division by zero" : "float division by zero");
                if (ints) return Value::floating((double)((long double)a.as_int() / (long double)b.as_int()));
                return Value::floating(a.as_double() / b.as_double());
            }
            unsupported_operand_types(op, a, b);
        case Op::floordiv:
        case Op::mod:
            if (ints) {
                int64_t x = a.as_int(), y = b.as_int();
                if (y == 0) raise(ErrKind::type, op == Op::mod ? "integer modulo by zero" : "integer division or modulo by zero");
                if (y == -1) {
                    if (op == Op::mod) return Value::integer(0);
                    if (x == INT64_MIN) overflow();
                    return Value::integer(-x);
                }
                int64_t q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) {
                    m += y;
                    q -= 1;
                }
                return Value::integer(op == Op::mod ? m : q);
            }
            if (nums) {
                double y = b.as_double();
                if (y == 0.0) raise(ErrKind::type, op == Op::mod ? "float modulo" : "float floor division by zero");
                double fd;
                double m = py_fmod_floor(a.as_double(), y, &fd);
                return Value::floating(op == Op::mod ? m : fd);
            }
            unsupported_operand_types(op, a, b);
        case Op::pow:
            if (ints && b.as_int() >= 0) {
                int64_t base = a.as_int(), e = b.as_int(), r = 1;
                while (e > 0) {
                    budget.tick();
                    if (e & 1)
                        if (__builtin_mul_overflow(r, base, &r)) overflow();
                    e >>= 1;
                    if (e && __builtin_mul_overflow(base, base, &base)) {
                        if (r == 0) break;
                        overflow();
                    }
                }
                return Value::integer(r);
            }
            if (nums) {
                double x = a.as_double(), y = b.as_double();
                if (x == 0.0 && y < 0) raise(ErrKind::type, "0.0 cannot be raised to a negative power");
                if (x < 0 && y != std::floor(y) && std::isfinite(y))
                    raise(ErrKind::unsupported, "a negative number to a fractional power (Python gives a complex number)");
                double r = std::pow(x, y);
                if (std::isinf(r) && std::isfinite(x) && std::isfinite(y)) raise(ErrKind::type, "(34, 'Numerical result out of range')");
                return Value::floating(r);
            }
            unsupported_operand_types(op, a, b);
        default: break;
    }
    return Value();
}

bool Renderer::compare(Op op, const Value& a, const Value& b) {
    switch (op) {
        case Op::eq: return py_eq(a, b, budget);
        case Op::ne: return !py_eq(a, b, budget);
        case Op::lt: return py_less(a, b, "<", budget);
        case Op::le: return py_less(a, b, "<=", budget);
        case Op::gt: return py_less(a, b, ">", budget);
        case Op::ge: return py_less(a, b, ">=", budget);
        case Op::in: return contains(b, a);
        case Op::notin: return !contains(b, a);
        default: return false;
    }
}

bool Renderer::contains(const Value& c, const Value& item) {
    budget.tick();
    switch (c.kind) {
        case Kind::undefined: return false;
        case Kind::string:
            if (!item.is_string()) type_error("'in <string>' requires string as left operand, not " + type_name(item));
            return c.str().find(item.str()) != std::string::npos;
        case Kind::seq:
            for (const auto& v : c.seq().v)
                if (py_eq(v, item, budget)) return true;
            return false;
        case Kind::dict:
            if (!hashable(item)) type_error("unhashable type: '" + type_name(item) + "'");
            return c.dict().find(item, budget) != nullptr;
        default: type_error("argument of type '" + type_name(c) + "' is not iterable");
    }
}

std::vector<Value> Renderer::iterate(const Value& v) {
    switch (v.kind) {
        case Kind::undefined: return {};
        case Kind::string: {
            std::vector<Value> out;
            const std::string& s = v.str();
            std::vector<size_t> off = cp_offsets(s);
            out.reserve(off.size());
            for (size_t k = 0; k + 1 < off.size(); ++k) out.push_back(Value::string(s.substr(off[k], off[k + 1] - off[k])));
            budget.tick((int64_t)out.size());
            return out;
        }
        case Kind::seq: budget.tick((int64_t)v.seq().v.size()); return v.seq().v;
        case Kind::dict: {
            std::vector<Value> out;
            out.reserve(v.dict().v.size());
            for (const auto& kv : v.dict().v) out.push_back(kv.first);
            budget.tick((int64_t)out.size());
            return out;
        }
        case Kind::loop: return static_cast<const LoopObj&>(*v.obj).items;
        default: type_error("'" + type_name(v) + "' object is not iterable");
    }
}

}  // namespace moe::jinja
