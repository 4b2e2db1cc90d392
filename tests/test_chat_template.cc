// Chat templates (src/io/chat_template.h): every real template in tests/data/chat_templates/ over
// conversations, and small templates over the Jinja language, rendered byte for byte as
// transformers renders them (tests/data/chat_templates/expected.json, written by
// scripts/gen_chat_template_refs.py; no Python here), down to the text of the errors; then what
// the references cannot show: syntax errors with line and column, the resource limits, apply()'s
// context, concurrent renders.
#include <gtest/gtest.h>

#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "io/chat_template.h"

namespace {

using moe::ChatTemplate;
using moe::ChatTemplateError;
using Kind = ChatTemplateError::Kind;
using ojson = nlohmann::ordered_json;

const std::string kDir = std::string(MOE_TEST_DIR) + "/data/chat_templates/";

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    EXPECT_TRUE(f.good()) << path;
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

const ojson& expected() {
    static const ojson j = ojson::parse(read_file(kDir + "expected.json"));
    return j;
}

// The oracle's clock: 2024-07-26 10:30:00.
std::tm fixed_clock() {
    std::tm tm{};
    tm.tm_year = 2024 - 1900;
    tm.tm_mon = 6;
    tm.tm_mday = 26;
    tm.tm_hour = 10;
    tm.tm_min = 30;
    std::time_t t = timegm(&tm);
    gmtime_r(&t, &tm);  // fills in the weekday and the day of the year
    return tm;
}

// What a Python exception type becomes; other types (TypeError, ValueError, ...) may be type or
// security.
bool kind_matches(const std::string& py_type, Kind k) {
    if (py_type == "TemplateError") return k == Kind::raised;
    if (py_type == "UndefinedError") return k == Kind::undefined;
    if (py_type == "SecurityError") return k == Kind::security;
    if (py_type == "TemplateSyntaxError" || py_type == "TemplateAssertionError") return k == Kind::syntax;
    return k == Kind::type || k == Kind::security;
}

// Compares one case; returns a description of the difference, empty when equal.
template <class F>
std::string check_case(const ojson& c, F render) {
    std::string got, err;
    Kind kind{};
    bool threw = false;
    try {
        got = render();
    } catch (const ChatTemplateError& e) {
        threw = true;
        err = e.detail();
        kind = e.kind();
    }
    if (c.contains("output")) {
        const std::string want = c["output"].get<std::string>();
        if (threw) return "expected output, got error: " + err;
        if (got != want) return "output differs:\n--- want\n" + want + "\n--- got\n" + got;
        return "";
    }
    const std::string want_err = c["error"].get<std::string>(), py_type = c["error_type"].get<std::string>();
    if (!threw) return "expected " + py_type + " '" + want_err + "', got output:\n" + got;
    if (err != want_err) return "error message differs: want '" + want_err + "', got '" + err + "'";
    if (!kind_matches(py_type, kind)) return "error kind " + std::to_string((int)kind) + " for " + py_type;
    return "";
}

TEST(ChatTemplate, RealTemplatesMatchTransformers) {
    const ojson& cases = expected()["templates"];
    ASSERT_GT(cases.size(), 300u);
    std::map<std::string, std::unique_ptr<ChatTemplate>> cache;
    int outputs = 0, errors = 0;
    for (const auto& c : cases) {
        const std::string file = c["template"].get<std::string>();
        auto& t = cache[file];
        if (!t) {
            t = std::make_unique<ChatTemplate>(read_file(kDir + file));
            t->set_clock(fixed_clock);
        }
        std::string diff = check_case(c, [&] {
            return t->apply(c["messages"], c["add_generation_prompt"].get<bool>(), c["bos_token"].get<std::string>(),
                            c["eos_token"].get<std::string>(), c["extra"]);
        });
        EXPECT_EQ(diff, "") << c["name"].get<std::string>();
        (c.contains("output") ? outputs : errors)++;
    }
    EXPECT_GE(cache.size(), 15u);  // every template file is exercised
    EXPECT_GT(outputs, 250);
    EXPECT_GT(errors, 20);  // raise_exception(...) and undefined-variable cases are part of the set
}

TEST(ChatTemplate, SnippetsMatchJinja2) {
    const ojson& cases = expected()["snippets"];
    ASSERT_GT(cases.size(), 150u);
    for (const auto& c : cases) {
        std::string diff = check_case(c, [&] {
            ChatTemplate t(c["source"].get<std::string>());
            t.set_clock(fixed_clock);
            return t.render(c["context"]);
        });
        EXPECT_EQ(diff, "") << c["name"].get<std::string>() << ": " << c["source"].get<std::string>();
    }
}

// ---------------------------------------------------------------------------------------------

std::string render(const std::string& src, const ojson& ctx = ojson::object()) { return ChatTemplate(src).render(ctx); }

ChatTemplateError error_of(const std::string& src, const ojson& ctx = ojson::object(),
                           moe::ChatTemplateLimits lim = {}) {
    try {
        ChatTemplate(src, lim).render(ctx);
    } catch (const ChatTemplateError& e) {
        return e;
    }
    ADD_FAILURE() << "no error from: " << src;
    return ChatTemplateError(Kind::type, "");
}

TEST(ChatTemplate, SyntaxErrorsNameLineAndColumn) {
    ChatTemplateError e = error_of("line one\n  {{ 1 + }}\n");
    EXPECT_EQ(e.kind(), Kind::syntax);
    EXPECT_EQ(e.line(), 2);
    EXPECT_EQ(e.column(), 10);
    EXPECT_NE(std::string(e.what()).find("line 2, column 10"), std::string::npos) << e.what();

    e = error_of("{% for x in xs %}\n{{ x }}\n");
    EXPECT_EQ(e.kind(), Kind::syntax);
    EXPECT_NE(e.detail().find("Unexpected end of template"), std::string::npos) << e.detail();
    EXPECT_NE(e.detail().find("'endfor'"), std::string::npos) << e.detail();

    e = error_of("ok\n{% frobnicate %}");
    EXPECT_EQ(e.line(), 2);
    EXPECT_NE(e.detail().find("unknown tag 'frobnicate'"), std::string::npos);

    e = error_of("{{ 'unterminated }}");
    EXPECT_EQ(e.kind(), Kind::syntax);
    e = error_of("{# never closed");
    EXPECT_EQ(e.detail(), "Missing end of comment tag");
    e = error_of("{% raw %} never closed");
    EXPECT_EQ(e.detail(), "Missing end of raw directive");
    e = error_of("{{ (1, 2] }}");
    EXPECT_EQ(e.detail(), "unexpected ']', expected ')'");
    e = error_of("{% break %}");
    EXPECT_EQ(e.kind(), Kind::syntax);
    e = error_of("{% macro m(a=1, b) %}{% endmacro %}");
    EXPECT_EQ(e.detail(), "non-default argument follows default argument");
    e = error_of(std::string("{{ 'a\xff' }}"));
    EXPECT_NE(e.detail().find("not valid UTF-8"), std::string::npos);
    // a column counts characters, not bytes
    e = error_of("é€{{ ) }}");
    EXPECT_EQ(e.line(), 1);
    EXPECT_EQ(e.column(), 6);
}

TEST(ChatTemplate, UnknownFiltersAndTestsFailAtParseTime) {
    EXPECT_THROW(ChatTemplate("{{ x|frobnicate }}"), ChatTemplateError);
    try {
        ChatTemplate("\n{{ x|frobnicate }}");
        FAIL();
    } catch (const ChatTemplateError& e) {
        EXPECT_EQ(e.detail(), "No filter named 'frobnicate'.");
        EXPECT_EQ(e.line(), 2);
    }
    EXPECT_THROW(ChatTemplate("{{ x is frobnicated }}"), ChatTemplateError);
    // jinja2 defers the check inside an if: the template is fine until the filter runs
    ChatTemplate guarded("{% if false %}{{ x|frobnicate }}{% endif %}ok");
    EXPECT_EQ(guarded.render(ojson::object()), "ok");
    // jinja2 filters moe leaves out are named as such
    try {
        ChatTemplate("{{ x|urlize }}");
        FAIL();
    } catch (const ChatTemplateError& e) {
        EXPECT_EQ(e.kind(), Kind::unsupported);
        EXPECT_NE(e.detail().find("urlize"), std::string::npos);
    }
    try {
        ChatTemplate("{% include 'other.jinja' %}");
        FAIL();
    } catch (const ChatTemplateError& e) {
        EXPECT_EQ(e.kind(), Kind::unsupported);
    }
}

TEST(ChatTemplate, RaiseExceptionCarriesTheMessage) {
    ChatTemplate t("{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}ok");
    ojson msgs = ojson::parse(R"([{"role": "assistant", "content": "x"}])");
    try {
        t.apply(msgs, false, "<s>", "</s>");
        FAIL();
    } catch (const ChatTemplateError& e) {
        EXPECT_EQ(e.kind(), Kind::raised);
        EXPECT_EQ(e.detail(), "Conversation roles must alternate user/assistant/user/assistant/...");
        EXPECT_EQ(std::string(e.what()), "chat template, line 1: Conversation roles must alternate user/assistant/user/assistant/...");
    }
    try {
        t.apply(msgs, false, "<s>", "</s>");
    } catch (const moe::error& e) {  // a ChatTemplateError is a moe::error
        EXPECT_NE(std::string(e.what()).find("must alternate"), std::string::npos);
    }
    EXPECT_EQ(t.apply(ojson::parse(R"([{"role": "user", "content": "x"}])"), false, "", ""), "ok");
}

TEST(ChatTemplate, UndefinedValues) {
    EXPECT_EQ(render("[{{ nothing }}][{{ d.missing }}][{{ nothing is defined }}]", {{"d", ojson::object()}}),
              "[][][False]");
    ChatTemplateError e = error_of("{{ d.missing.deeper }}", {{"d", ojson::object()}});
    EXPECT_EQ(e.kind(), Kind::undefined);
    EXPECT_EQ(e.detail(), "'dict object' has no attribute 'missing'");
    e = error_of("{{ nothing + 1 }}");
    EXPECT_EQ(e.detail(), "'nothing' is undefined");
}

TEST(ChatTemplate, WhatPythonPrintsByAddressIsUnsupported) {
    for (const char* src : {"{{ [1, 2]|select('odd') }}", "{{ [1]|reverse }}", "{{ {}.items }}", "{{ range }}"}) {
        ChatTemplateError e = error_of(src);
        EXPECT_EQ(e.kind(), Kind::unsupported) << src << ": " << e.detail();
    }
    EXPECT_EQ(render("{{ [1, 2, 3]|select('odd')|list }}"), "[1, 3]");
}

TEST(ChatTemplate, LimitsStopRunawayTemplates) {
    moe::ChatTemplateLimits lim;
    lim.max_output_bytes = 1000;
    ChatTemplateError e = error_of("{% for i in range(1000) %}0123456789{% endfor %}", ojson::object(), lim);
    EXPECT_EQ(e.kind(), Kind::limit);
    e = error_of("{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", ojson::object(), lim);
    EXPECT_EQ(e.kind(), Kind::limit);
    e = error_of("{{ 'x' * 100000 }}", ojson::object(), lim);
    EXPECT_EQ(e.kind(), Kind::limit);

    lim = {};
    lim.max_loop_iterations = 5000;
    e = error_of("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", ojson::object(), lim);
    EXPECT_EQ(e.kind(), Kind::limit);
    EXPECT_NE(e.detail().find("loop iterations"), std::string::npos);

    lim = {};
    lim.max_items = 1000;
    e = error_of("{{ ([1] * 2000)|length }}", ojson::object(), lim);
    EXPECT_EQ(e.kind(), Kind::limit);

    // unbounded recursion of a macro
    e = error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    EXPECT_EQ(e.kind(), Kind::limit);
    EXPECT_NE(e.detail().find("nesting"), std::string::npos);
    // exponential work with small values
    lim = {};
    lim.max_steps = 100000;
    e = error_of("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}", ojson::object(), lim);
    EXPECT_EQ(e.kind(), Kind::limit);
    // deep nesting in the source
    std::string deep(5000, '(');
    e = error_of("{{ " + deep + "1" + std::string(5000, ')') + " }}");
    EXPECT_EQ(e.kind(), Kind::limit);
    std::string deep_if;
    for (int i = 0; i < 2000; ++i) deep_if += "{% if true %}";
    e = error_of(deep_if);
    EXPECT_EQ(e.kind(), Kind::limit);
    // 64-bit integers
    e = error_of("{{ 2 ** 64 }}");
    EXPECT_EQ(e.kind(), Kind::unsupported);
    EXPECT_EQ(render("{{ 2 ** 62 }}"), "4611686018427387904");
}

TEST(ChatTemplate, ApplyBuildsTransformersContext) {
    ChatTemplate t(
        "{{ bos_token }}|{{ tools }}|{{ documents }}|{{ add_generation_prompt }}|{{ enable_thinking }}|"
        "{% for m in messages %}{{ m|tojson }}{% endfor %}|{{ eos_token }}");
    ojson msgs = ojson::parse(R"([{"role": "assistant", "content": "c", "reasoning_content": "r"},
                                  {"role": "assistant", "content": "d", "reasoning": "q", "thinking": null}])");
    ojson extra = {{"enable_thinking", false}};
    EXPECT_EQ(t.apply(msgs, true, "<s>", "</s>", extra),
              "<s>|None|None|True|False|"
              R"({"thinking": "r", "role": "assistant", "content": "c", "reasoning_content": "r"})"
              // the message's own "thinking": null wins over the alias, as in Python's {"thinking": r, **m}
              R"({"thinking": null, "role": "assistant", "content": "d", "reasoning": "q", "reasoning_content": "q"})"
              "|</s>");
    ojson tools = ojson::parse(R"([{"type": "function", "function": {"name": "f", "z": 1, "a": 2}}])");
    EXPECT_EQ(ChatTemplate("{{ tools|tojson }}").apply(ojson::array(), false, "", "", {{"tools", tools}}),
              R"([{"type": "function", "function": {"name": "f", "z": 1, "a": 2}}])");
    // nlohmann::json sorts object keys; ordered_json keeps them
    EXPECT_EQ(ChatTemplate("{{ d|tojson }}").render(nlohmann::json{{"d", {{"z", 1}, {"a", 2}}}}), R"({"a": 2, "z": 1})");
    EXPECT_THROW(ChatTemplate("x").apply(ojson::object(), false, "", ""), ChatTemplateError);
}

TEST(ChatTemplate, SourceFromTokenizerConfig) {
    ojson one = {{"chat_template", "{{ 1 }}"}};
    EXPECT_EQ(ChatTemplate::source_from_tokenizer_config(one), "{{ 1 }}");
    ojson named = ojson::parse(R"({"chat_template": [{"name": "default", "template": "D"},
                                                      {"name": "tool_use", "template": "T"},
                                                      {"name": "rag", "template": "R"}]})");
    EXPECT_EQ(ChatTemplate::source_from_tokenizer_config(named), "D");
    EXPECT_EQ(ChatTemplate::source_from_tokenizer_config(named, true), "T");
    EXPECT_EQ(ChatTemplate::source_from_tokenizer_config(named, true, "rag"), "R");
    EXPECT_THROW(ChatTemplate::source_from_tokenizer_config(named, false, "nope"), ChatTemplateError);
    EXPECT_THROW(ChatTemplate::source_from_tokenizer_config(ojson::object()), ChatTemplateError);
}

TEST(ChatTemplate, LanguageFeatures) {
    // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before one
    EXPECT_EQ(render("<ul>\n  {% for x in [1, 2] %}\n  <li>{{ x }}</li>\n  {% endfor %}\n</ul>"),
              "<ul>\n  <li>1</li>\n  <li>2</li>\n</ul>");
    EXPECT_EQ(render("a  {{- ' b ' -}}  c"), "a b c");
    EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");  // + keeps the indentation
    EXPECT_EQ(render("{% for x in 'abc' %}{{ loop.index }}{{ x }}{{ '|' if not loop.last }}{% endfor %}"), "1a|2b|3c");
    EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for m in ms|reverse %}{% if m > 1 %}{% set ns.n = ns.n + m %}{% endif %}{% endfor %}{{ ns.n }}",
                     {{"ms", {1, 2, 3}}}),
              "5");
    EXPECT_EQ(render("{% macro tag(name, body='') %}<{{ name }}>{{ body }}</{{ name }}>{% endmacro %}{{ tag('b', 'x') }}"), "<b>x</b>");
    EXPECT_EQ(render("{{ 'héllo'[::-1] }} {{ [1, 2, 3][1:] }} {{ 'abc'[-1] }}"), "olléh [2, 3] c");
    EXPECT_EQ(render("{{ [1, 'a', None, True, 1.0, {'k': (1,)}] }}"), "[1, 'a', None, True, 1.0, {'k': (1,)}]");
    EXPECT_EQ(render("{{ {'b': 1, 'a': [1.5, 'é']}|tojson }}"), R"({"b": 1, "a": [1.5, "é"]})");
    EXPECT_EQ(render("{{ x is none }} {{ y is defined }} {{ 3 is odd }} {{ 'a' is string }}", {{"x", nullptr}}), "True False True True");
    EXPECT_EQ(render("{{ -7 // 2 }} {{ -7 % 3 }} {{ 1 / 4 }} {{ 2 ** 10 }} {{ 'ab' * 2 }}"), "-4 2 0.25 1024 abab");
}

TEST(ChatTemplate, StrftimeNowUsesTheClock) {
    ChatTemplate t("{{ strftime_now('%d %b %Y') }}");
    t.set_clock(fixed_clock);
    EXPECT_EQ(t.render(ojson::object()), "26 Jul 2024");
    ChatTemplate now("{{ strftime_now('%Y') }}");  // the real clock: some year with four digits
    EXPECT_EQ(now.render(ojson::object()).size(), 4u);
}

TEST(ChatTemplate, RendersConcurrently) {
    ChatTemplate t(read_file(kDir + "qwen3.jinja"));
    ojson msgs = ojson::parse(R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])");
    const std::string want = t.apply(msgs, true, "", "");
    std::vector<std::thread> ths;
    std::vector<int> ok(4, 0);
    for (int k = 0; k < 4; ++k)
        ths.emplace_back([&, k] {
            for (int i = 0; i < 50; ++i) ok[k] += t.apply(msgs, true, "", "") == want;
        });
    for (auto& th : ths) th.join();
    for (int k = 0; k < 4; ++k) EXPECT_EQ(ok[k], 50);
}

TEST(ChatTemplate, ScopingFollowsJinja2) {
    // a set inside a loop body ends with the iteration; namespace attributes outlive it
    EXPECT_EQ(render("{% set x = 'o' %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}"), "o");
    EXPECT_EQ(render("{% set ns = namespace(x='o') %}{% for i in [1, 2] %}{% set ns.x = i %}{% endfor %}{{ ns.x }}"), "2");
    // a macro reads the scope it was defined in, at call time
    EXPECT_EQ(render("{% macro m() %}{{ v }}{% endmacro %}{% set v = 1 %}{{ m() }}{% for v in [2] %}{{ m() }}{% endfor %}"), "11");
    // a macro kept past the loop iteration that defined it
    ChatTemplateError e = error_of("{% set ns = namespace() %}{% for i in [1] %}{% macro m() %}{{ i }}{% endmacro %}"
                                   "{% set ns.m = m %}{% endfor %}{{ ns.m() }}");
    EXPECT_EQ(e.kind(), Kind::unsupported);
}

}  // namespace
