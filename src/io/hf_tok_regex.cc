#include "io/hf_tok_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "io/hf_tok_text.h"

namespace moe::hf {

namespace {

std::string pcre2_message(int code) {
    PCRE2_UCHAR buf[256];
    if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return "PCRE2 error " + std::to_string(code);
    return std::string(reinterpret_cast<const char*>(buf));
}

// Oniguruma (Ruby syntax) and PCRE2 differ in a few escapes; rewrite them to PCRE2 spellings of
// Oniguruma's meaning:
//  - \s is Unicode White_Space in Oniguruma; PCRE2's \s also takes U+180E (a space in old Unicode)
//  - \w is Alphabetic, marks, decimal digits, connector punctuation and the joiners in
//    Oniguruma, letters, numbers and '_' in PCRE2 10.42
//  - \h is a hex digit in Ruby (horizontal space in PCRE2)
//  - \uHHHH is a code point (PCRE2 spells it \x{HHHH})
// Inside a character class a negated form (\S, \W, \H) cannot be spelled as a set, so PCRE2's own
// meaning stays there.
std::string onig_to_pcre2(std::string_view p) {
    static const char* kWord = R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D})";
    std::string out;
    out.reserve(p.size() + 16);
    int depth = 0;          // nesting of [...]
    size_t class_start = 0;  // offset in p just after the last '[' (and a '^')
    for (size_t i = 0; i < p.size(); ++i) {
        const char c = p[i];
        if (c == '\\' && i + 1 < p.size()) {
            const char e = p[i + 1];
            const bool in = depth > 0;
            if (e == 'u' && i + 6 <= p.size() && std::isxdigit((unsigned char)p[i + 2]) && std::isxdigit((unsigned char)p[i + 3]) &&
                std::isxdigit((unsigned char)p[i + 4]) && std::isxdigit((unsigned char)p[i + 5])) {
                out += "\\x{";
                out.append(p.substr(i + 2, 4));
                out += '}';
                i += 5;
                continue;
            }
            if (e == 's') out += "\\p{White_Space}";
            else if (e == 'S') out += "\\P{White_Space}";
            else if (e == 'w') out += in ? std::string(kWord) : "[" + std::string(kWord) + "]";
            else if (e == 'W' && !in) out += "[^" + std::string(kWord) + "]";
            else if (e == 'h') out += in ? "0-9a-fA-F" : "[0-9a-fA-F]";
            else if (e == 'H' && !in) out += "[^0-9a-fA-F]";
            else { out += c; out += e; }
            ++i;
            continue;
        }
        if (c == '[') {
            if (depth > 0 && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:] inside a class
                const size_t close = p.find(":]", i + 2);
                if (close != std::string_view::npos) {
                    out.append(p.substr(i, close + 2 - i));
                    i = close + 1;
                    continue;
                }
            }
            ++depth;
            class_start = i + 1 + (i + 1 < p.size() && p[i + 1] == '^');
        } else if (c == ']' && depth > 0 && i != class_start) {
            --depth;  // a ']' first in a class is a literal
        }
        out += c;
    }
    return out;
}

// Per-thread matching state: one offset pair is enough (only the whole match is read), the JIT
// gets a stack that grows to 64 MiB so that long runs of whitespace under \s+(?!\S) do not need
// the interpreter.
struct MatchState {
    pcre2_match_data* md = nullptr;
    pcre2_match_context* ctx = nullptr;
    pcre2_jit_stack* jit = nullptr;
    MatchState() {
        md = pcre2_match_data_create(1, nullptr);
        ctx = pcre2_match_context_create(nullptr);
        jit = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
        if (!md || !ctx) fail("PCRE2: out of memory");
        if (jit) pcre2_jit_stack_assign(ctx, nullptr, jit);
        pcre2_set_heap_limit(ctx, 128 * 1024);  // KiB, for the interpreter's backtracking frames
    }
    ~MatchState() {
        pcre2_match_data_free(md);
        pcre2_match_context_free(ctx);
        if (jit) pcre2_jit_stack_free(jit);
    }
};

MatchState& match_state() {
    thread_local MatchState st;
    return st;
}

}  // namespace

struct Regex::Code {
    pcre2_code* code = nullptr;
    ~Code() { pcre2_code_free(code); }
};

Regex::Regex(std::string_view pattern, Syntax syntax, std::string where) : code_(new Code), where_(std::move(where)) {
    if (!utf8_valid(pattern)) fail(where_, ": the pattern is not valid UTF-8");
    // Ruby syntax: ^ and $ match at every line; \C (one byte of a character) would cut UTF-8
    uint32_t opts = PCRE2_UTF;
    std::string pat;
    if (syntax == Syntax::literal) {
        opts |= PCRE2_LITERAL;  // which admits no other option that matters here
        pat = std::string(pattern);
    } else {
        opts |= PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C | PCRE2_MULTILINE;
        pat = onig_to_pcre2(pattern);
    }
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
    if (!cc) fail("PCRE2: out of memory");
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    pcre2_set_parens_nest_limit(cc, 200);  // deep nesting from a hostile file: an error, not a deep recursion
    code_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.data()), pat.size(), opts, &err, &off, cc);
    pcre2_compile_context_free(cc);
    if (!code_->code)
        fail(where_, ": invalid regular expression '", std::string(pattern), "': ", pcre2_message(err), " at offset ", off);
    // without JIT (an unsupported CPU) the interpreter gives the same matches, only slower
    pcre2_jit_compile(code_->code, PCRE2_JIT_COMPLETE);
}

Regex::~Regex() = default;

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
    MatchState& st = match_state();
    const size_t n = text.size();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t last_end = 0;
    bool have_last = false;
    size_t last_match_end = 0;
    while (last_end <= n) {
        // Linear patterns need a number of steps proportional to the text; catastrophic
        // backtracking needs far more and stops here.
        pcre2_set_match_limit(st.ctx, (uint32_t)std::min<size_t>(100000 + 2000 * (n - last_end), 2000000000));
        int rc = pcre2_match(code_->code, subject, n, last_end, PCRE2_NO_UTF_CHECK, st.md, st.ctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
            rc = pcre2_match(code_->code, subject, n, last_end, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, st.md, st.ctx);
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
                rc == PCRE2_ERROR_JIT_STACKLIMIT)
                fail(where_, ": the regular expression needs too much backtracking on a text of ", n,
                     " bytes (", pcre2_message(rc), ")");
            fail(where_, ": regular expression matching failed: ", pcre2_message(rc));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
        size_t s = ov[0], e = ov[1];
        if (e < s || e > n) fail(where_, ": the regular expression reports a match outside the text (\\K in a lookahead?)");
        if (s == e && have_last && last_match_end == e) {
            if (last_end >= n) break;
            const int len = utf8_valid_len(text, last_end);
            last_end += len > 0 ? len : 1;
            continue;
        }
        last_end = e;
        last_match_end = e;
        have_last = true;
        out.push_back({s, e});
    }
}

}  // namespace moe::hf
