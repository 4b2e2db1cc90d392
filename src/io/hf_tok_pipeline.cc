#include "io/hf_tok_pipeline.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>

#include "core/error.h"
#include "io/hf_tok_regex.h"

namespace moe::hf {

// ---- JSON access ------------------------------------------------------------------------------

Where Where::operator/(std::string_view key) const {
    Where w = *this;
    if (!w.path.empty()) w.path += '.';
    w.path += key;
    return w;
}

Where Where::operator[](size_t i) const {
    Where w = *this;
    w.path += "[" + std::to_string(i) + "]";
    return w;
}

std::string Where::str() const { return path.empty() ? file : file + ": " + path; }

const Json& field(const Json& obj, const char* key, const Where& w) {
    if (!obj.is_object()) fail(w.str(), ": expected an object, got ", obj.type_name());
    auto it = obj.find(key);
    if (it == obj.end()) fail((w / key).str(), ": missing field");
    return *it;
}

const Json* optional_field(const Json& obj, const char* key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
}

static std::string checked_string(const Json& v, const Where& w) {
    if (!v.is_string()) fail(w.str(), ": expected a string, got ", v.type_name());
    const std::string& s = v.get_ref<const std::string&>();
    if (!utf8_valid(s)) fail(w.str(), ": the string is not valid UTF-8");
    return s;
}

std::string get_string(const Json& obj, const char* key, const Where& w) {
    return checked_string(field(obj, key, w), w / key);
}

bool get_bool(const Json& obj, const char* key, bool dflt, const Where& w) {
    const Json* v = optional_field(obj, key);
    if (!v) return dflt;
    if (!v->is_boolean()) fail((w / key).str(), ": expected true or false, got ", v->dump());
    return v->get<bool>();
}

uint32_t get_char(const Json& obj, const char* key, const Where& w) {
    const std::string s = get_string(obj, key, w);
    const std::u32string cs = utf8_chars(s);
    if (cs.size() != 1) fail((w / key).str(), ": expected exactly one character, got '", s, "'");
    return cs[0];
}

static uint64_t get_uint(const Json& obj, const char* key, const Where& w, uint64_t max) {
    const Json& v = field(obj, key, w);
    if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0))
        fail((w / key).str(), ": expected a non-negative integer, got ", v.dump());
    const uint64_t x = v.get<uint64_t>();
    if (x > max) fail((w / key).str(), ": ", x, " is too large (at most ", max, ")");
    return x;
}

std::string type_of(const Json& obj, const Where& w) {
    if (!obj.is_object()) fail(w.str(), ": expected an object with a 'type', got ", obj.type_name());
    return get_string(obj, "type", w);
}

static const Json& array_field(const Json& obj, const char* key, const Where& w) {
    const Json& a = field(obj, key, w);
    if (!a.is_array()) fail((w / key).str(), ": expected a list, got ", a.type_name());
    return a;
}

// ---- patterns and splitting -------------------------------------------------------------------

namespace {

struct Match {
    size_t b, e;
    bool m;  // matched the pattern (or, in the splits below, "to remove")
};

// Pattern::find_matches: covers the whole text with matched and unmatched ranges.
void regex_matches(const Regex& re, std::string_view s, bool invert, std::vector<Match>& out) {
    out.clear();
    if (s.empty()) {
        out.push_back({0, 0, invert});
        return;
    }
    std::vector<std::pair<size_t, size_t>> found;
    re.find_all(s, found);
    size_t prev = 0;
    for (auto [b, e] : found) {
        if (prev != b) out.push_back({prev, b, invert});
        out.push_back({b, e, !invert});
        prev = e;
    }
    if (prev != s.size()) out.push_back({prev, s.size(), invert});
}

template <class Pred>
void pred_matches(std::string_view s, Pred pred, std::vector<Match>& out) {
    out.clear();
    if (s.empty()) {
        out.push_back({0, 0, false});
        return;
    }
    size_t last = 0, i = 0;
    while (i < s.size()) {
        const size_t b = i;
        const uint32_t c = utf8_next(s, i);
        if (pred(c)) {
            if (last < b) out.push_back({last, b, false});
            out.push_back({b, i, true});
            last = i;
        }
    }
    if (s.size() > last) out.push_back({last, s.size(), false});
}

enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

Behavior parse_behavior(const Json& obj, const char* key, const Where& w, bool has_default, Behavior dflt) {
    const Json* v = optional_field(obj, key);
    if (!v) {
        if (has_default) return dflt;
        fail((w / key).str(), ": missing field");
    }
    const std::string s = checked_string(*v, w / key);
    if (s == "Removed") return Behavior::removed;
    if (s == "Isolated") return Behavior::isolated;
    if (s == "MergedWithPrevious") return Behavior::merged_with_previous;
    if (s == "MergedWithNext") return Behavior::merged_with_next;
    if (s == "Contiguous") return Behavior::contiguous;
    fail((w / key).str(), ": unknown split behavior '", s,
         "' (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)");
}

// NormalizedString::split: the matches turned into the pieces the behaviour keeps.
void split_piece(const NormStr& p, std::vector<Match>& matches, Behavior behavior, std::vector<NormStr>& out) {
    std::vector<Match> splits;  // here .m means "remove"
    switch (behavior) {
        case Behavior::isolated:
            for (auto& m : matches) splits.push_back({m.b, m.e, false});
            break;
        case Behavior::removed:
            splits = matches;
            break;
        case Behavior::contiguous: {
            bool prev = false;
            for (auto& m : matches) {
                if (m.m == prev && !splits.empty()) splits.back().e = m.e;
                else splits.push_back({m.b, m.e, false});
                prev = m.m;
            }
            break;
        }
        case Behavior::merged_with_previous: {
            bool prev = false;
            for (auto& m : matches) {
                if (m.m && !prev && !splits.empty()) splits.back().e = m.e;
                else splits.push_back({m.b, m.e, false});
                prev = m.m;
            }
            break;
        }
        case Behavior::merged_with_next: {
            bool prev = false;
            for (size_t k = matches.size(); k-- > 0;) {
                const Match& m = matches[k];
                if (m.m && !prev && !splits.empty()) splits.back().b = m.b;
                else splits.push_back({m.b, m.e, false});
                prev = m.m;
            }
            std::reverse(splits.begin(), splits.end());
            break;
        }
    }
    for (auto& s : splits)
        if (!s.m && s.e > s.b) out.push_back(p.slice(s.b, s.e));
}

// A Split / Replace pattern: {"String": "..."} (a literal) or {"Regex": "..."}.
std::unique_ptr<Regex> parse_pattern(const Json& obj, const char* key, const Where& w) {
    const Json& p = field(obj, key, w);
    const Where pw = w / key;
    if (p.is_object() && p.size() == 1) {
        if (p.contains("Regex")) return std::make_unique<Regex>(checked_string(p["Regex"], pw / "Regex"), Regex::Syntax::onig, (pw / "Regex").str());
        if (p.contains("String")) return std::make_unique<Regex>(checked_string(p["String"], pw / "String"), Regex::Syntax::literal, (pw / "String").str());
    }
    fail(pw.str(), ": expected {\"String\": ...} or {\"Regex\": ...}, got ", p.dump());
}

// Replaces every match of `re` in n by `content` (NormalizedString::replace). A replacement takes
// the input offset of the last byte it replaces.
void replace_all(NormStr& n, const Regex& re, std::string_view content) {
    if (n.s.empty()) return;
    std::vector<std::pair<size_t, size_t>> found;
    re.find_all(n.s, found);
    if (found.empty()) return;
    NormStr out;
    out.s.reserve(n.s.size());
    out.orig.reserve(n.s.size());
    size_t last = 0;
    for (auto [b, e] : found) {
        out.append(n, last, b);
        out.append(content, e >= 1 ? n.orig[e - 1] : n.orig[0]);
        last = e;
    }
    out.append(n, last, n.s.size());
    n = std::move(out);
}

// Rewrites each character through f(c, out) keeping its offset.
template <class F>
void map_chars(NormStr& n, F f) {
    NormStr out;
    out.s.reserve(n.s.size());
    out.orig.reserve(n.s.size());
    std::string buf;
    size_t i = 0;
    while (i < n.s.size()) {
        const size_t b = i;
        const uint32_t c = utf8_next(n.s, i);
        buf.clear();
        f(c, buf);
        out.append(buf, n.orig[b]);
    }
    n = std::move(out);
}

// Replaces each character of `s` by `rep` when pred(c), keeping offsets (Metaspace's space -> ▁).
template <class Pred>
void replace_chars(NormStr& n, Pred pred, std::string_view rep) {
    bool any = false;
    size_t i = 0;
    while (i < n.s.size() && !any) any = pred(utf8_next(n.s, i));
    if (!any) return;
    map_chars(n, [&](uint32_t c, std::string& out) {
        if (pred(c)) out.append(rep);
        else utf8_append(out, c);
    });
}

const std::array<std::string, 256>& byte_table() {
    static const std::array<std::string, 256> t = [] {
        std::array<std::string, 256> m;
        int n = 0;
        for (int b = 0; b < 256; ++b) {
            const bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            m[b] = utf8_of(self ? (uint32_t)b : 256u + (uint32_t)n++);
        }
        return m;
    }();
    return t;
}

void byte_level_map(NormStr& n) {
    const auto& t = byte_table();
    NormStr out;
    out.s.reserve(n.s.size() * 2);
    out.orig.reserve(n.s.size() * 2);
    for (size_t k = 0; k < n.s.size(); ++k) out.append(t[(unsigned char)n.s[k]], n.orig[k]);
    n = std::move(out);
}

}  // namespace

const std::string& byte_level_char(uint8_t b) { return byte_table()[b]; }

int byte_level_byte(uint32_t cp) {
    if ((cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF)) return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    static const std::array<int, 68> back = [] {
        std::array<int, 68> r{};
        int n = 0;
        for (int b = 0; b < 256; ++b) {
            const bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            if (!self) r[n++] = b;
        }
        return r;
    }();
    return back[cp - 256];
}

// ---- normalizers ------------------------------------------------------------------------------

namespace {

struct FormNormalizer : Normalizer {
    NormForm form;
    explicit FormNormalizer(NormForm f) : form(f) {}
    void normalize(NormStr& n) const override { normalize_form(n, form); }
};

struct LowercaseNormalizer : Normalizer {
    void normalize(NormStr& n) const override {
        map_chars(n, [](uint32_t c, std::string& out) { append_lowercase(out, c); });
    }
};

struct StripNormalizer : Normalizer {
    bool left, right;
    void normalize(NormStr& n) const override {
        const std::u32string cs = utf8_chars(n.s);
        size_t lead = 0, trail = 0;
        if (left) while (lead < cs.size() && is_whitespace(cs[lead])) ++lead;
        if (right) while (trail < cs.size() - lead && is_whitespace(cs[cs.size() - 1 - trail])) ++trail;
        if (lead == 0 && trail == 0) return;
        size_t b = 0, i = 0, k = 0;
        for (; k < lead; ++k) utf8_next(n.s, i);
        b = i;
        size_t e = b;
        for (; k < cs.size() - trail; ++k) utf8_next(n.s, e);
        n = n.slice(b, e);
    }
};

struct StripAccentsNormalizer : Normalizer {
    void normalize(NormStr& n) const override {
        map_chars(n, [](uint32_t c, std::string& out) {
            if (!is_combining_mark(c)) utf8_append(out, c);
        });
    }
};

struct NmtNormalizer : Normalizer {
    void normalize(NormStr& n) const override {
        map_chars(n, [](uint32_t c, std::string& out) {
            if ((c >= 0x01 && c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || c == 0x8F || c == 0x9F)
                return;
            if (c == 0x09 || c == 0x0A || c == 0x0C || c == 0x0D || c == 0x1680 || (c >= 0x200B && c <= 0x200F) ||
                c == 0x2028 || c == 0x2029 || c == 0x2581 || c == 0xFEFF || c == 0xFFFD)
                c = ' ';
            utf8_append(out, c);
        });
    }
};

struct ByteLevelNormalizer : Normalizer {
    void normalize(NormStr& n) const override { byte_level_map(n); }
};

struct ReplaceNormalizer : Normalizer {
    std::unique_ptr<Regex> re;
    std::string content;
    void normalize(NormStr& n) const override { replace_all(n, *re, content); }
};

struct PrependNormalizer : Normalizer {
    std::string prepend;
    void normalize(NormStr& n) const override { n.prepend(prepend); }
};

struct SequenceNormalizer : Normalizer {
    std::vector<std::unique_ptr<Normalizer>> items;
    void normalize(NormStr& n) const override {
        for (auto& x : items) x->normalize(n);
    }
};

}  // namespace

std::unique_ptr<Normalizer> parse_normalizer(const Json& j, const Where& w, int depth) {
    if (depth > kMaxDepth) fail(w.str(), ": sequences nested deeper than ", kMaxDepth);
    const std::string t = type_of(j, w);
    if (t == "NFC") return std::make_unique<FormNormalizer>(NormForm::nfc);
    if (t == "NFD") return std::make_unique<FormNormalizer>(NormForm::nfd);
    if (t == "NFKC") return std::make_unique<FormNormalizer>(NormForm::nfkc);
    if (t == "NFKD") return std::make_unique<FormNormalizer>(NormForm::nfkd);
    if (t == "Lowercase") return std::make_unique<LowercaseNormalizer>();
    if (t == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
    if (t == "Nmt") return std::make_unique<NmtNormalizer>();
    if (t == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
    if (t == "Strip") {
        auto n = std::make_unique<StripNormalizer>();
        field(j, "strip_left", w);
        field(j, "strip_right", w);
        n->left = get_bool(j, "strip_left", false, w);
        n->right = get_bool(j, "strip_right", false, w);
        return n;
    }
    if (t == "Replace") {
        auto n = std::make_unique<ReplaceNormalizer>();
        n->re = parse_pattern(j, "pattern", w);
        n->content = get_string(j, "content", w);
        return n;
    }
    if (t == "Prepend") {
        auto n = std::make_unique<PrependNormalizer>();
        n->prepend = get_string(j, "prepend", w);
        return n;
    }
    if (t == "Sequence") {
        auto n = std::make_unique<SequenceNormalizer>();
        const Json& a = array_field(j, "normalizers", w);
        for (size_t i = 0; i < a.size(); ++i) n->items.push_back(parse_normalizer(a[i], (w / "normalizers")[i], depth + 1));
        return n;
    }
    if (t == "BertNormalizer" || t == "Precompiled")
        fail((w / "type").str(), ": the normalizer '", t, "' is not supported (docs/tokenizers.md lists what is)");
    fail((w / "type").str(), ": unknown normalizer type '", t, "'");
}

// ---- pre-tokenizers ---------------------------------------------------------------------------

namespace {

const Regex& gpt2_regex() {
    static const Regex re(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
                          Regex::Syntax::onig, "the ByteLevel pre-tokenizer's pattern");
    return re;
}

// The `regex` crate's \w+|[^\w\s]+ (Whitespace pre-tokenizer), with its Unicode \w and \s.
const Regex& whitespace_regex() {
    static const Regex re(
        R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]+|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}\p{White_Space}]+)",
        Regex::Syntax::onig, "the Whitespace pre-tokenizer's pattern");
    return re;
}

template <class F>
void for_each_piece(std::vector<NormStr>& pieces, F f) {
    std::vector<NormStr> out;
    out.reserve(pieces.size());
    for (NormStr& p : pieces) f(p, out);
    pieces.swap(out);
}

struct ByteLevelPre : PreTokenizer {
    bool add_prefix_space = true, use_regex = true;
    void pre_tokenize(std::vector<NormStr>& pieces) const override {
        std::vector<Match> m;
        for_each_piece(pieces, [&](NormStr& p, std::vector<NormStr>& out) {
            if (add_prefix_space && (p.s.empty() || p.s[0] != ' ')) p.prepend(" ");
            if (!use_regex) {
                if (!p.empty()) out.push_back(std::move(p));
                return;
            }
            regex_matches(gpt2_regex(), p.s, false, m);
            split_piece(p, m, Behavior::isolated, out);
        });
        for (NormStr& p : pieces) byte_level_map(p);
    }
};

struct SplitPre : PreTokenizer {
    std::unique_ptr<Regex> re;
    Behavior behavior;
    bool invert;
    void pre_tokenize(std::vector<NormStr>& pieces) const override {
        std::vector<Match> m;
        for_each_piece(pieces, [&](NormStr& p, std::vector<NormStr>& out) {
            regex_matches(*re, p.s, invert, m);
            split_piece(p, m, behavior, out);
        });
    }
};

enum class Prepend { always, first, never };

struct MetaspacePre : PreTokenizer {
    uint32_t replacement;
    std::string rep;
    Prepend scheme;
    bool split;
    void pre_tokenize(std::vector<NormStr>& pieces) const override {
        std::vector<Match> m;
        for_each_piece(pieces, [&](NormStr& p, std::vector<NormStr>& out) {
            replace_chars(p, [](uint32_t c) { return c == ' '; }, rep);
            const bool starts = p.s.compare(0, rep.size(), rep) == 0;
            if (scheme == Prepend::always && !starts) p.prepend(rep);
            // "first": only for the piece that begins at the start of the input text
            if (scheme == Prepend::first && !starts && p.first_orig() == 0) p.prepend(rep);
            if (!split) {
                if (!p.empty()) out.push_back(std::move(p));
                return;
            }
            pred_matches(p.s, [&](uint32_t c) { return c == replacement; }, m);
            split_piece(p, m, Behavior::merged_with_next, out);
        });
    }
};

template <class Pred>
struct PredPre : PreTokenizer {
    Pred pred;
    Behavior behavior;
    PredPre(Pred p, Behavior b) : pred(p), behavior(b) {}
    void pre_tokenize(std::vector<NormStr>& pieces) const override {
        std::vector<Match> m;
        for_each_piece(pieces, [&](NormStr& p, std::vector<NormStr>& out) {
            pred_matches(p.s, pred, m);
            split_piece(p, m, behavior, out);
        });
    }
};
template <class Pred>
std::unique_ptr<PreTokenizer> make_pred_pre(Pred p, Behavior b) {
    return std::make_unique<PredPre<Pred>>(p, b);
}

struct WhitespacePre : PreTokenizer {
    void pre_tokenize(std::vector<NormStr>& pieces) const override {
        std::vector<Match> m;
        for_each_piece(pieces, [&](NormStr& p, std::vector<NormStr>& out) {
            regex_matches(whitespace_regex(), p.s, true, m);  // inverted: drop what the pattern misses
            split_piece(p, m, Behavior::removed, out);
        });
    }
};

struct SequencePre : PreTokenizer {
    std::vector<std::unique_ptr<PreTokenizer>> items;
    void pre_tokenize(std::vector<NormStr>& pieces) const override {
        for (auto& x : items) x->pre_tokenize(pieces);
    }
};

}  // namespace

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const Json& j, const Where& w, int depth) {
    if (depth > kMaxDepth) fail(w.str(), ": sequences nested deeper than ", kMaxDepth);
    const std::string t = type_of(j, w);
    if (t == "ByteLevel") {
        auto p = std::make_unique<ByteLevelPre>();
        field(j, "add_prefix_space", w);
        p->add_prefix_space = get_bool(j, "add_prefix_space", true, w);
        p->use_regex = get_bool(j, "use_regex", true, w);
        return p;
    }
    if (t == "Split") {
        auto p = std::make_unique<SplitPre>();
        p->re = parse_pattern(j, "pattern", w);
        p->behavior = parse_behavior(j, "behavior", w, false, Behavior::isolated);
        field(j, "invert", w);
        p->invert = get_bool(j, "invert", false, w);
        return p;
    }
    if (t == "Metaspace") {
        auto p = std::make_unique<MetaspacePre>();
        p->replacement = get_char(j, "replacement", w);
        p->rep = utf8_of(p->replacement);
        p->scheme = Prepend::always;
        const Json* ps = optional_field(j, "prepend_scheme");
        if (ps) {
            const std::string s = checked_string(*ps, w / "prepend_scheme");
            if (s == "always") p->scheme = Prepend::always;
            else if (s == "first") p->scheme = Prepend::first;
            else if (s == "never") p->scheme = Prepend::never;
            else fail((w / "prepend_scheme").str(), ": unknown prepend scheme '", s, "' (expected always, first or never)");
        }
        // the older field: add_prefix_space false means "never", and must not contradict prepend_scheme
        if (!get_bool(j, "add_prefix_space", true, w)) {
            if (p->scheme != Prepend::never)
                fail((w / "add_prefix_space").str(), ": false does not match prepend_scheme (", ps ? ps->dump() : "\"always\" by default", ")");
            p->scheme = Prepend::never;
        }
        p->split = get_bool(j, "split", true, w);
        return p;
    }
    if (t == "Digits") {
        field(j, "individual_digits", w);
        const bool individual = get_bool(j, "individual_digits", false, w);
        return make_pred_pre([](uint32_t c) { return is_numeric(c); }, individual ? Behavior::isolated : Behavior::contiguous);
    }
    if (t == "Punctuation")
        return make_pred_pre([](uint32_t c) { return is_punctuation(c); }, parse_behavior(j, "behavior", w, true, Behavior::isolated));
    if (t == "WhitespaceSplit") return make_pred_pre([](uint32_t c) { return is_whitespace(c); }, Behavior::removed);
    if (t == "Whitespace") return std::make_unique<WhitespacePre>();
    if (t == "CharDelimiterSplit") {
        const uint32_t d = get_char(j, "delimiter", w);
        return make_pred_pre([d](uint32_t c) { return c == d; }, Behavior::removed);
    }
    if (t == "BertPreTokenizer") {
        auto s = std::make_unique<SequencePre>();
        s->items.push_back(make_pred_pre([](uint32_t c) { return is_whitespace(c); }, Behavior::removed));
        s->items.push_back(make_pred_pre([](uint32_t c) { return is_punctuation(c); }, Behavior::isolated));
        return s;
    }
    if (t == "Sequence") {
        auto s = std::make_unique<SequencePre>();
        const Json& a = array_field(j, "pretokenizers", w);
        for (size_t i = 0; i < a.size(); ++i) s->items.push_back(parse_pre_tokenizer(a[i], (w / "pretokenizers")[i], depth + 1));
        return s;
    }
    if (t == "UnicodeScripts" || t == "FixedLength")
        fail((w / "type").str(), ": the pre-tokenizer '", t, "' is not supported (docs/tokenizers.md lists what is)");
    fail((w / "type").str(), ": unknown pre-tokenizer type '", t, "'");
}

// ---- post-processors --------------------------------------------------------------------------

namespace {

struct TemplatePost : PostProcessor {
    // a piece: the sequence (empty ids, is_seq) or a special token's ids
    struct Piece {
        bool is_seq;
        std::vector<int32_t> ids;
    };
    std::vector<Piece> single;
    void process(std::vector<int32_t>& ids, bool add) const override {
        if (!add) return;
        std::vector<int32_t> out;
        out.reserve(ids.size() + 4);
        for (const Piece& p : single) {
            if (p.is_seq) out.insert(out.end(), ids.begin(), ids.end());
            else out.insert(out.end(), p.ids.begin(), p.ids.end());
        }
        ids.swap(out);
    }
};

struct WrapPost : PostProcessor {  // BertProcessing / RobertaProcessing: [cls] $A [sep]
    int32_t cls, sep;
    void process(std::vector<int32_t>& ids, bool add) const override {
        if (!add) return;
        ids.insert(ids.begin(), cls);
        ids.push_back(sep);
    }
};

struct NoPost : PostProcessor {  // ByteLevel: offsets only
    void process(std::vector<int32_t>&, bool) const override {}
};

struct SequencePost : PostProcessor {
    std::vector<std::unique_ptr<PostProcessor>> items;
    void process(std::vector<int32_t>& ids, bool add) const override {
        for (auto& x : items) x->process(ids, add);
    }
};

int32_t checked_id(const Json& v, const Where& w, int64_t vocab_size) {
    if (!v.is_number_integer()) fail(w.str(), ": expected a token id, got ", v.dump());
    const int64_t id = v.is_number_unsigned() ? (int64_t)std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX) : v.get<int64_t>();
    if (id < 0 || id >= vocab_size) fail(w.str(), ": token id ", id, " is outside the vocabulary [0, ", vocab_size, ")");
    return (int32_t)id;
}

// ["<s>", 1]
int32_t parse_named_id(const Json& j, const char* key, const Where& w, int64_t vocab_size) {
    const Json& v = field(j, key, w);
    if (!v.is_array() || v.size() != 2 || !v[0].is_string()) fail((w / key).str(), ": expected [\"token\", id], got ", v.dump());
    return checked_id(v[1], (w / key)[1], vocab_size);
}

}  // namespace

std::unique_ptr<PostProcessor> make_bos_eos_template(int32_t bos, int32_t eos) {
    auto t = std::make_unique<TemplatePost>();
    if (bos >= 0) t->single.push_back({false, {bos}});
    t->single.push_back({true, {}});
    if (eos >= 0) t->single.push_back({false, {eos}});
    return t;
}

std::unique_ptr<PostProcessor> parse_post_processor(const Json& j, const Where& w, int64_t vocab_size, int depth) {
    if (depth > kMaxDepth) fail(w.str(), ": sequences nested deeper than ", kMaxDepth);
    const std::string t = type_of(j, w);
    if (t == "TemplateProcessing") {
        auto p = std::make_unique<TemplatePost>();
        // special tokens: name -> ids
        std::map<std::string, std::vector<int32_t>> specials;
        if (const Json* st = optional_field(j, "special_tokens")) {
            const Where sw = w / "special_tokens";
            if (!st->is_object()) fail(sw.str(), ": expected an object, got ", st->type_name());
            for (auto it = st->begin(); it != st->end(); ++it) {
                const Where ew = sw / it.key();
                const Json& ids = array_field(it.value(), "ids", ew);
                const Json& toks = array_field(it.value(), "tokens", ew);
                if (ids.size() != toks.size()) fail(ew.str(), ": 'ids' and 'tokens' differ in length");
                std::vector<int32_t> v;
                for (size_t i = 0; i < ids.size(); ++i) v.push_back(checked_id(ids[i], (ew / "ids")[i], vocab_size));
                specials[it.key()] = std::move(v);
            }
        }
        const Json& single = array_field(j, "single", w);
        for (size_t i = 0; i < single.size(); ++i) {
            const Where pw = (w / "single")[i];
            const Json& x = single[i];
            std::string seq, name;
            if (x.is_object() && x.size() == 1 && x.contains("Sequence")) {
                seq = get_string(x["Sequence"], "id", pw / "Sequence");
            } else if (x.is_object() && x.size() == 1 && x.contains("SpecialToken")) {
                name = get_string(x["SpecialToken"], "id", pw / "SpecialToken");
            } else if (x.is_string()) {  // the "$A:0" / "<s>:0" shorthand
                std::string s = checked_string(x, pw);
                s = s.substr(0, s.find(':'));
                if (!s.empty() && s[0] == '$') seq = s.size() == 1 ? "A" : s.substr(1);
                else name = s;
            } else {
                fail(pw.str(), ": expected {\"Sequence\": ...} or {\"SpecialToken\": ...}, got ", x.dump());
            }
            if (!seq.empty()) {
                if (seq != "A" && seq != "0") fail(pw.str(), ": the single-sequence template refers to sequence '", seq, "'");
                p->single.push_back({true, {}});
            } else {
                auto it = specials.find(name);
                if (it == specials.end()) fail(pw.str(), ": special token '", name, "' is not in special_tokens");
                p->single.push_back({false, it->second});
            }
        }
        return p;
    }
    if (t == "BertProcessing" || t == "RobertaProcessing") {
        auto p = std::make_unique<WrapPost>();
        p->cls = parse_named_id(j, "cls", w, vocab_size);
        p->sep = parse_named_id(j, "sep", w, vocab_size);
        return p;
    }
    if (t == "ByteLevel") return std::make_unique<NoPost>();
    if (t == "Sequence") {
        auto s = std::make_unique<SequencePost>();
        const Json& a = array_field(j, "processors", w);
        for (size_t i = 0; i < a.size(); ++i)
            s->items.push_back(parse_post_processor(a[i], (w / "processors")[i], vocab_size, depth + 1));
        return s;
    }
    fail((w / "type").str(), ": unknown post-processor type '", t, "'");
}

// ---- decoders ---------------------------------------------------------------------------------

namespace {

// Runs f on the valid UTF-8 stretches of s; the bytes between them (raw mode only) pass unchanged.
template <class F>
std::string on_valid_runs(const std::string& s, F f) {
    if (utf8_valid(s)) return f(s);
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
        size_t j = i;
        while (j < s.size()) {
            const int len = utf8_valid_len(s, j);
            if (len == 0) break;
            j += len;
        }
        if (j > i) out += f(s.substr(i, j - i));
        if (j < s.size()) out += s[j++];
        i = j;
    }
    return out;
}

void replace_bytes(std::string& s, std::string_view from, std::string_view to) {
    if (from.empty() || s.find(from) == std::string::npos) return;
    std::string out;
    size_t i = 0;
    for (;;) {
        const size_t k = s.find(from, i);
        if (k == std::string::npos) break;
        out.append(s, i, k - i);
        out.append(to);
        i = k + from.size();
    }
    out.append(s, i, std::string::npos);
    s.swap(out);
}

struct ByteLevelDec : Decoder {
    void decode_chain(std::vector<std::string>& toks, const DecodeMode& mode, bool& fused) const override {
        std::string bytes;
        for (const std::string& t : toks) {
            // a token with a character outside the byte table keeps its own bytes
            std::string b;
            bool all = utf8_valid(t);
            size_t i = 0;
            while (all && i < t.size()) {
                const int x = byte_level_byte(utf8_next(t, i));
                if (x < 0) all = false;
                else b += (char)x;
            }
            bytes += all ? b : t;
        }
        toks.assign(1, mode.raw ? bytes : utf8_lossy(bytes));
        fused = true;
    }
};

struct MetaspaceDec : Decoder {
    std::string rep;
    bool strip_first;  // prepend_scheme other than "never"
    void decode_chain(std::vector<std::string>& toks, const DecodeMode& mode, bool&) const override {
        for (size_t i = 0; i < toks.size(); ++i)
            replace_bytes(toks[i], rep, i == 0 && strip_first && !mode.continuation ? "" : " ");
    }
};

struct ReplaceDec : Decoder {
    std::unique_ptr<Regex> re;
    std::string content;
    void decode_chain(std::vector<std::string>& toks, const DecodeMode&, bool&) const override {
        std::vector<std::pair<size_t, size_t>> found;
        for (std::string& t : toks) {
            t = on_valid_runs(t, [&](const std::string& s) {
                found.clear();
                re->find_all(s, found);
                std::string out;
                size_t last = 0;
                for (auto [b, e] : found) {
                    out.append(s, last, b - last);
                    out += content;
                    last = e;
                }
                out.append(s, last, std::string::npos);
                return out;
            });
        }
    }
};

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// "<0xNN>" -> NN, as u8::from_str_radix reads the two characters (a leading '+' is accepted)
int fallback_byte(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    if (t[3] == '+') return hex_digit(t[4]);
    const int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

struct ByteFallbackDec : Decoder {
    void decode_chain(std::vector<std::string>& toks, const DecodeMode& mode, bool&) const override {
        std::vector<std::string> out;
        std::string pending;
        auto flush = [&] {
            if (pending.empty()) return;
            if (utf8_valid(pending)) out.push_back(pending);
            else for (size_t k = 0; k < pending.size(); ++k) out.push_back("\xEF\xBF\xBD");
            pending.clear();
        };
        for (std::string& t : toks) {
            const int b = fallback_byte(t);
            if (b >= 0 && mode.raw) {
                out.push_back(std::string(1, (char)b));
            } else if (b >= 0) {
                pending += (char)b;
            } else {
                flush();
                out.push_back(std::move(t));
            }
        }
        flush();
        toks.swap(out);
    }
};

struct FuseDec : Decoder {
    void decode_chain(std::vector<std::string>& toks, const DecodeMode&, bool& fused) const override {
        std::string all;
        for (auto& t : toks) all += t;
        toks.assign(1, all);
        fused = true;
    }
};

struct StripDec : Decoder {
    std::string content;
    uint64_t start, stop;
    void decode_chain(std::vector<std::string>& toks, const DecodeMode& mode, bool& fused) const override {
        for (size_t i = 0; i < toks.size(); ++i) {
            std::string& t = toks[i];
            // after a fuse, token 0 is the whole text: mid-stream its start is not the text's start
            const bool keep_start = mode.continuation && fused && i == 0;
            size_t b = 0, e = t.size();
            for (uint64_t k = 0; !keep_start && k < start && t.compare(b, content.size(), content) == 0 && b < e; ++k)
                b += content.size();
            for (uint64_t k = 0; k < stop && e >= b + content.size() && t.compare(e - content.size(), content.size(), content) == 0; ++k)
                e -= content.size();
            t = t.substr(b, e - b);
        }
    }
};

struct BpeDec : Decoder {
    std::string suffix;
    void decode_chain(std::vector<std::string>& toks, const DecodeMode&, bool&) const override {
        for (size_t i = 0; i < toks.size(); ++i) replace_bytes(toks[i], suffix, i + 1 == toks.size() ? "" : " ");
    }
};

struct WordPieceDec : Decoder {
    std::string prefix;
    bool cleanup;
    void decode_chain(std::vector<std::string>& toks, const DecodeMode& mode, bool&) const override {
        for (size_t i = 0; i < toks.size(); ++i) {
            std::string& t = toks[i];
            if (i != 0 || mode.continuation) {
                if (t.compare(0, prefix.size(), prefix) == 0) t.erase(0, prefix.size());
                else t.insert(t.begin(), ' ');
            }
            if (cleanup) {
                static const std::pair<const char*, const char*> rules[] = {
                    {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
                    {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
                for (auto [a, b] : rules) replace_bytes(t, a, b);
            }
        }
    }
};

struct SequenceDec : Decoder {
    std::vector<std::unique_ptr<Decoder>> items;
    void decode_chain(std::vector<std::string>& toks, const DecodeMode& mode, bool& fused) const override {
        for (auto& x : items) x->decode_chain(toks, mode, fused);
    }
};

}  // namespace

std::unique_ptr<Decoder> parse_decoder(const Json& j, const Where& w, int depth) {
    if (depth > kMaxDepth) fail(w.str(), ": sequences nested deeper than ", kMaxDepth);
    const std::string t = type_of(j, w);
    if (t == "ByteLevel") return std::make_unique<ByteLevelDec>();
    if (t == "Metaspace") {
        auto d = std::make_unique<MetaspaceDec>();
        d->rep = utf8_of(get_char(j, "replacement", w));
        std::string scheme = "always";
        if (const Json* ps = optional_field(j, "prepend_scheme")) scheme = checked_string(*ps, w / "prepend_scheme");
        if (scheme != "always" && scheme != "first" && scheme != "never")
            fail((w / "prepend_scheme").str(), ": unknown prepend scheme '", scheme, "' (expected always, first or never)");
        if (!get_bool(j, "add_prefix_space", true, w)) {
            if (scheme != "never" && optional_field(j, "prepend_scheme"))
                fail((w / "add_prefix_space").str(), ": false does not match prepend_scheme '", scheme, "'");
            if (scheme != "never" && !optional_field(j, "prepend_scheme"))
                fail((w / "add_prefix_space").str(), ": false does not match the default prepend_scheme 'always'");
            scheme = "never";
        }
        d->strip_first = scheme != "never";
        return d;
    }
    if (t == "Replace") {
        auto d = std::make_unique<ReplaceDec>();
        d->re = parse_pattern(j, "pattern", w);
        d->content = get_string(j, "content", w);
        return d;
    }
    if (t == "ByteFallback") return std::make_unique<ByteFallbackDec>();
    if (t == "Fuse") return std::make_unique<FuseDec>();
    if (t == "Strip") {
        auto d = std::make_unique<StripDec>();
        d->content = utf8_of(get_char(j, "content", w));
        d->start = get_uint(j, "start", w, UINT32_MAX);
        d->stop = get_uint(j, "stop", w, UINT32_MAX);
        return d;
    }
    if (t == "BPEDecoder") {
        auto d = std::make_unique<BpeDec>();
        d->suffix = optional_field(j, "suffix") ? get_string(j, "suffix", w) : "</w>";
        return d;
    }
    if (t == "WordPiece") {
        auto d = std::make_unique<WordPieceDec>();
        d->prefix = optional_field(j, "prefix") ? get_string(j, "prefix", w) : "##";
        d->cleanup = get_bool(j, "cleanup", true, w);
        return d;
    }
    if (t == "Sequence") {
        auto d = std::make_unique<SequenceDec>();
        const Json& a = array_field(j, "decoders", w);
        for (size_t i = 0; i < a.size(); ++i) d->items.push_back(parse_decoder(a[i], (w / "decoders")[i], depth + 1));
        return d;
    }
    if (t == "CTC") fail((w / "type").str(), ": the decoder 'CTC' is not supported (docs/tokenizers.md lists what is)");
    fail((w / "type").str(), ": unknown decoder type '", t, "'");
}

}  // namespace moe::hf
