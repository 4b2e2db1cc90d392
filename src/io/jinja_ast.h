#pragma once
// The parsed form of a template: jinja2's node types, reduced to what moe's subset evaluates.
// Built once by parse_template() (src/io/jinja_parse.cc), then only read (a ChatTemplate may be
// rendered from several threads).
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/jinja_value.h"

namespace moe::jinja {

struct Pos {
    int line = 0, col = 0;
};

enum class Op : uint8_t { add, sub, mul, div, floordiv, mod, pow, eq, ne, lt, le, gt, ge, in, notin, neg, pos };

enum class ExprKind : uint8_t {
    constant,   // value
    name,       // name
    list,       // items
    tuple,      // items
    dict,       // items: key, value, key, value, ...
    getattr,    // a.name
    getitem,    // a[b]
    slice,      // items: start, stop, step (each may be null)
    call,       // a(args, kwargs, *dyn_args, **dyn_kwargs)
    filter,     // a|name(args) (a is null in a filter block: the block's output)
    test,       // a is name(args)
    unary,      // op (neg, pos) a
    not_,       // not a
    binary,     // a op b
    compare,    // a ops[0] items[0] ops[1] items[1] ...
    and_,       // a and b
    or_,        // a or b
    concat,     // items joined with ~
    condexpr,   // a if b else c (c may be null)
    nsref,      // name.attr as an assignment target
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
    ExprKind kind;
    Pos pos;
    Op op = Op::add;
    Value value;
    std::string name, attr;
    ExprPtr a, b, c;
    std::vector<ExprPtr> items;  // also the positional arguments of call / filter / test
    std::vector<Op> ops;
    std::vector<std::pair<std::string, ExprPtr>> kwargs;
    ExprPtr dyn_args, dyn_kwargs;
    int builtin = -1;  // filter / test: index into the builtin table, -1 when unknown
};

enum class StmtKind : uint8_t {
    text,          // template data
    print,         // {{ }} and {% print %}: items
    if_,           // expr, body, else_body (an elif is an if_ alone in else_body)
    for_,          // target in expr [if cond] body [else else_body], recursive
    set,           // target = expr
    set_block,     // {% set target [| filter] %}body{% endset %}; expr is the filter chain or null
    macro,         // macro
    call_block,    // {% call(args) expr %}body: macro->body is the caller
    filter_block,  // {% filter chain %}body; expr is the chain
    with,          // targets/values in with_pairs, body
    scope,         // body in an inner scope ({% generation %})
    break_,
    continue_,
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct MacroDef {
    std::string name;
    Pos pos;
    std::vector<std::string> params;
    std::vector<ExprPtr> defaults;  // for the last defaults.size() params
    Body body;
    bool catch_varargs = false, catch_kwargs = false, uses_caller = false;
};

struct Stmt {
    StmtKind kind;
    Pos pos;
    std::string text;
    ExprPtr expr, target, cond;
    std::vector<ExprPtr> items;
    std::vector<std::pair<ExprPtr, ExprPtr>> with_pairs;
    Body body, else_body;
    bool recursive = false;
    std::shared_ptr<MacroDef> macro;  // shared: macro values point at their definition
};

struct Program {
    Body body;
};

// Parses (and checks, as jinja2's compiler does) a whole template. Throws ChatTemplateError of
// kind syntax naming line and column.
std::shared_ptr<Program> parse_template(const std::string& source);

// Builtin filters and tests the parser resolves names against (src/io/jinja_builtins.cc).
int filter_index(const std::string& name);
int test_index(const std::string& name);
// Names jinja2 has that moe leaves out: an error naming them beats "unknown filter".
bool jinja2_has_filter(const std::string& name);

}  // namespace moe::jinja
