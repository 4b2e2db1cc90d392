#include "io/hf_tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <queue>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "io/hf_tok_pipeline.h"
#include "io/hf_tok_text.h"

namespace moe {
namespace hf {

namespace {

struct StrHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>>;

uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

// Ids index a table, so they must be dense enough that a hostile file cannot ask for gigabytes.
constexpr int64_t kMaxId = (int64_t)1 << 30;
void check_dense(int64_t max_id, size_t count, const Where& w) {
    if (max_id >= kMaxId || max_id + 1 > 2 * (int64_t)count + 65536)
        fail(w.str(), ": token ids are too sparse (largest id ", max_id, " for ", count,
             " tokens); moe keeps a table indexed by id");
}

int32_t parse_id(const Json& v, const Where& w) {
    if (!v.is_number_integer()) fail(w.str(), ": expected a token id (an integer), got ", v.dump());
    if (v.is_number_unsigned() ? v.get<uint64_t>() >= (uint64_t)kMaxId : (v.get<int64_t>() < 0 || v.get<int64_t>() >= kMaxId))
        fail(w.str(), ": token id ", v.dump(), " is outside [0, ", kMaxId, ")");
    return (int32_t)v.get<int64_t>();
}

// ---- models -----------------------------------------------------------------------------------

struct Model {
    TokenMap vocab;
    std::vector<std::string> by_id;  // "" where no token has the id (see has)
    std::vector<uint8_t> has;
    virtual ~Model() = default;
    // Appends the ids of one pre-tokenized piece (non-empty, valid UTF-8).
    virtual void tokenize(std::string_view piece, std::vector<int32_t>& out, const std::string& what) const = 0;

    int32_t find(std::string_view t) const {
        auto it = vocab.find(t);
        return it == vocab.end() ? -1 : it->second;
    }
    const std::string* token(int32_t id) const {
        return id >= 0 && (size_t)id < has.size() && has[id] ? &by_id[id] : nullptr;
    }
    void parse_vocab(const Json& v, const Where& w) {
        if (!v.is_object()) fail(w.str(), ": expected an object {token: id}, got ", v.type_name());
        int64_t max_id = -1;
        for (auto it = v.begin(); it != v.end(); ++it) {
            if (!utf8_valid(it.key())) fail(w.str(), ": a token is not valid UTF-8");
            const int32_t id = parse_id(it.value(), w / it.key());
            vocab.emplace(it.key(), id);
            max_id = std::max<int64_t>(max_id, id);
        }
        check_dense(max_id, vocab.size(), w);
        by_id.assign(max_id + 1, std::string());
        has.assign(max_id + 1, 0);
        for (auto& [t, id] : vocab) {
            if (has[id]) fail(w.str(), ": tokens '", by_id[id], "' and '", t, "' both have id ", id);
            by_id[id] = t;
            has[id] = 1;
        }
    }
};

// (left id, right id) -> (rank, merged id), open addressing: the lookup of every BPE step.
class MergeTable {
public:
    struct Merge {
        uint32_t rank;
        int32_t id;
    };
    const Merge* find(int32_t a, int32_t b) const {
        if (slots_.empty()) return nullptr;
        const uint64_t k = pair_key(a, b);
        for (size_t i = hash(k) & mask_;; i = (i + 1) & mask_) {
            const Slot& s = slots_[i];
            if (s.id < 0) return nullptr;
            if (s.key == k) return &s.m;
        }
    }
    // a repeated pair takes the later rank, as the Rust hash map does
    void put(int32_t a, int32_t b, Merge m) {
        if ((count_ + 1) * 2 > slots_.size()) grow();
        const uint64_t k = pair_key(a, b);
        size_t i = hash(k) & mask_;
        while (slots_[i].id >= 0 && slots_[i].key != k) i = (i + 1) & mask_;
        if (slots_[i].id < 0) ++count_;
        slots_[i] = {k, m, m.id};
    }

private:
    struct Slot {
        uint64_t key = 0;
        Merge m{};
        int32_t id = -1;  // -1: empty
    };
    static size_t hash(uint64_t k) {
        k ^= k >> 33;
        k *= 0xff51afd7ed558ccdull;
        k ^= k >> 33;
        return (size_t)k;
    }
    void grow() {
        std::vector<Slot> old(std::max<size_t>(16, slots_.size() * 2));
        old.swap(slots_);
        mask_ = slots_.size() - 1;
        count_ = 0;
        for (const Slot& s : old)
            if (s.id >= 0) put((int32_t)(s.key >> 32), (int32_t)(s.key & 0xffffffffu), s.m);
    }
    std::vector<Slot> slots_;
    size_t mask_ = 0, count_ = 0;
};

struct BpeModel : Model {
    using Merge = MergeTable::Merge;
    MergeTable merges;
    std::string unk_token;
    bool has_unk = false, fuse_unk = false, byte_fallback = false, ignore_merges = false;
    std::string prefix, suffix;  // continuing_subword_prefix, end_of_word_suffix
    std::array<int32_t, 256> byte_ids{};
    std::vector<int32_t> char_ids;  // code point -> id of the one-character token, -1 (the low planes)
    std::string where;

    void index_chars() {
        char_ids.assign(0x3000, -1);
        for (auto& [t, id] : vocab) {
            size_t k = 0;
            if (t.empty()) continue;
            const uint32_t cp = utf8_next(t, k);
            if (k == t.size() && cp < char_ids.size()) char_ids[cp] = id;
        }
    }

    struct Sym {
        int32_t c, prev, next;
        uint32_t len;
    };
    void add(std::vector<Sym>& w, int32_t c, uint32_t len) const {
        const int32_t n = (int32_t)w.size();
        if (n > 0) w.back().next = n;
        w.push_back({c, n - 1, -1, len});
    }
    int32_t unk_id() const {
        const int32_t id = find(unk_token);
        if (id < 0) fail(where, ": model.unk_token '", unk_token, "' is not in the vocabulary");
        return id;
    }

    // BPE::merge_word: characters to ids (byte fallback, unknown tokens), then every merge,
    // lowest rank first and leftmost first among equal ranks.
    void tokenize(std::string_view piece, std::vector<int32_t>& out, const std::string&) const override {
        if (ignore_merges) {
            const int32_t id = find(piece);
            if (id >= 0) { out.push_back(id); return; }
        }
        std::vector<Sym> w;
        w.reserve(piece.size());
        bool unk = false;
        int32_t unk_c = 0;
        uint32_t unk_len = 0;
        std::string tmp;
        size_t i = 0;
        while (i < piece.size()) {
            const size_t b = i;
            const uint32_t cp = utf8_next(piece, i);
            std::string_view s = piece.substr(b, i - b);
            const uint32_t byte_len = (uint32_t)s.size();
            int32_t id;
            if ((b > 0 && !prefix.empty()) || (i == piece.size() && !suffix.empty())) {
                tmp.clear();
                if (b > 0) tmp += prefix;
                tmp += s;
                if (i == piece.size()) tmp += suffix;
                s = tmp;
                id = find(s);
            } else {
                id = cp < char_ids.size() ? char_ids[cp] : find(s);
            }
            if (id >= 0) {
                if (unk) { add(w, unk_c, unk_len); unk = false; }
                add(w, id, byte_len);
                continue;
            }
            if (byte_fallback) {
                bool all = true;
                for (unsigned char c : s) all = all && byte_ids[c] >= 0;
                if (all) {
                    for (unsigned char c : s) add(w, byte_ids[c], 1);
                    continue;
                }
            }
            if (has_unk) {
                if (unk && fuse_unk) {
                    unk_len += byte_len;
                } else {
                    if (unk) add(w, unk_c, unk_len);
                    unk = true;
                    unk_c = unk_id();
                    unk_len = byte_len;
                }
            }
            // no unknown token: the character is dropped, as in `tokenizers`
        }
        if (unk) add(w, unk_c, unk_len);
        merge_all(w);
        for (const Sym& s : w)
            if (s.len != 0) out.push_back(s.c);
    }

    void merge_all(std::vector<Sym>& w) const {
        struct Entry {
            uint32_t rank, pos;
            int32_t id;
        };
        auto later = [](const Entry& a, const Entry& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
        std::priority_queue<Entry, std::vector<Entry>, decltype(later)> q(later);
        for (size_t k = 0; k + 1 < w.size(); ++k) {
            if (const Merge* m = merges.find(w[k].c, w[k + 1].c)) q.push({m->rank, (uint32_t)k, m->id});
        }
        while (!q.empty()) {
            const Entry top = q.top();
            q.pop();
            Sym& cur = w[top.pos];
            if (cur.len == 0 || cur.next == -1) continue;
            const int32_t next_pos = cur.next;
            const Sym right = w[next_pos];
            // an entry that no longer describes the pair there is stale
            const Merge* m = merges.find(cur.c, right.c);
            if (!m || m->id != top.id) continue;
            cur.c = top.id;
            cur.len += right.len;
            cur.next = right.next;
            w[next_pos].len = 0;
            if (right.next > -1 && (size_t)right.next < w.size()) w[right.next].prev = (int32_t)top.pos;
            if (cur.prev >= 0) {
                if (const Merge* p = merges.find(w[cur.prev].c, cur.c)) q.push({p->rank, (uint32_t)cur.prev, p->id});
            }
            if (cur.next >= 0 && (size_t)cur.next < w.size()) {
                if (const Merge* p = merges.find(cur.c, w[cur.next].c)) q.push({p->rank, top.pos, p->id});
            }
        }
    }
};

struct WordLevelModel : Model {
    std::string unk_token;
    void tokenize(std::string_view piece, std::vector<int32_t>& out, const std::string& what) const override {
        int32_t id = find(piece);
        if (id < 0) id = find(unk_token);
        if (id < 0)
            fail(what, ": '", std::string(piece), "' is not in the WordLevel vocabulary and its unk_token '", unk_token,
                 "' is not either");
        out.push_back(id);
    }
};

std::unique_ptr<Model> parse_model(const Json& j, const Where& w) {
    const std::string t = type_of(j, w);
    if (t == "BPE") {
        auto m = std::make_unique<BpeModel>();
        m->where = w.file;
        m->parse_vocab(field(j, "vocab", w), w / "vocab");
        if (const Json* d = optional_field(j, "dropout")) {
            if (!d->is_number()) fail((w / "dropout").str(), ": expected a number, got ", d->dump());
            const double p = d->get<double>();
            if (!(p >= 0.0 && p <= 1.0)) fail((w / "dropout").str(), ": ", p, " is not a probability");
            if (p > 0.0) fail((w / "dropout").str(), ": BPE dropout (", p, ") makes encoding random; moe does not support it");
        }
        if (optional_field(j, "unk_token")) {
            m->unk_token = get_string(j, "unk_token", w);
            m->has_unk = true;
        }
        if (optional_field(j, "continuing_subword_prefix")) m->prefix = get_string(j, "continuing_subword_prefix", w);
        if (optional_field(j, "end_of_word_suffix")) m->suffix = get_string(j, "end_of_word_suffix", w);
        m->fuse_unk = get_bool(j, "fuse_unk", false, w);
        m->byte_fallback = get_bool(j, "byte_fallback", false, w);
        m->ignore_merges = get_bool(j, "ignore_merges", false, w);
        m->index_chars();
        for (int b = 0; b < 256; ++b) {
            char name[8];
            std::snprintf(name, sizeof name, "<0x%02X>", b);
            m->byte_ids[b] = m->find(name);
        }
        // merges: ["a b", ...] (a line of merges.txt) or [["a", "b"], ...]
        const Json& ms = field(j, "merges", w);
        const Where mw = w / "merges";
        if (!ms.is_array()) fail(mw.str(), ": expected a list, got ", ms.type_name());
        const bool legacy = !ms.empty() && ms[0].is_string();
        uint32_t rank = 0;
        std::string merged;
        for (size_t i = 0; i < ms.size(); ++i) {
            const Json& x = ms[i];
            std::string a, b;
            if (legacy) {
                if (!x.is_string()) fail(mw[i].str(), ": expected a string \"a b\" like the merges before it, got ", x.dump());
                const std::string& line = x.get_ref<const std::string&>();
                if (line.rfind("#version", 0) == 0) continue;
                const size_t sp = line.find(' ');
                if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
                    fail(mw[i].str(), ": '", line, "' is not two tokens separated by one space");
                a = line.substr(0, sp);
                b = line.substr(sp + 1);
            } else {
                if (!x.is_array() || x.size() != 2 || !x[0].is_string() || !x[1].is_string())
                    fail(mw[i].str(), ": expected a pair [\"a\", \"b\"], got ", x.dump());
                a = x[0].get<std::string>();
                b = x[1].get<std::string>();
            }
            const int32_t ia = m->find(a), ib = m->find(b);
            if (ia < 0) fail(mw[i].str(), ": '", a, "' is not in the vocabulary");
            if (ib < 0) fail(mw[i].str(), ": '", b, "' is not in the vocabulary");
            if (b.size() < m->prefix.size())
                fail(mw[i].str(), ": '", b, "' is shorter than continuing_subword_prefix '", m->prefix, "'");
            merged = a;
            merged.append(b, m->prefix.size(), std::string::npos);
            const int32_t id = m->find(merged);
            if (id < 0) fail(mw[i].str(), ": the merged token '", merged, "' is not in the vocabulary");
            m->merges.put(ia, ib, {rank++, id});
        }
        return m;
    }
    if (t == "WordLevel") {
        auto m = std::make_unique<WordLevelModel>();
        m->parse_vocab(field(j, "vocab", w), w / "vocab");
        m->unk_token = optional_field(j, "unk_token") ? get_string(j, "unk_token", w) : "<unk>";
        return m;
    }
    if (t == "Unigram" || t == "WordPiece")
        fail((w / "type").str(), ": the model '", t, "' is not supported (moe reads BPE and WordLevel tokenizers)");
    fail((w / "type").str(), ": unknown model type '", t, "'");
}

// ---- added tokens -----------------------------------------------------------------------------

struct AddedToken {
    std::string content;
    bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
    bool operator==(const AddedToken&) const = default;
};

// Leftmost-longest matching of the added tokens (the Aho-Corasick automaton of `tokenizers`).
struct Trie {
    struct Node {
        std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
        int32_t id = -1;
    };
    std::vector<Node> nodes{1};
    std::array<bool, 256> first{};

    bool empty() const { return nodes[0].next.empty(); }
    int32_t child(int32_t n, uint8_t b) const {
        const auto& v = nodes[n].next;
        auto it = std::lower_bound(v.begin(), v.end(), std::make_pair(b, (int32_t)-1));
        return it != v.end() && it->first == b ? it->second : -1;
    }
    // returns the id already stored for this text, or -1
    int32_t insert(std::string_view s, int32_t id) {
        int32_t n = 0;
        for (unsigned char b : s) {
            int32_t c = child(n, b);
            if (c < 0) {
                c = (int32_t)nodes.size();
                nodes.emplace_back();
                auto& v = nodes[n].next;
                v.insert(std::lower_bound(v.begin(), v.end(), std::make_pair((uint8_t)b, (int32_t)-1)), {(uint8_t)b, c});
            }
            n = c;
        }
        if (nodes[n].id >= 0) return nodes[n].id;
        nodes[n].id = id;
        first[(unsigned char)s[0]] = true;
        return -1;
    }
    // the longest match starting at s[i]: (length, id), length 0 if none
    std::pair<size_t, int32_t> longest(std::string_view s, size_t i) const {
        int32_t n = 0;
        size_t len = 0;
        int32_t id = -1;
        for (size_t k = i; k < s.size(); ++k) {
            n = child(n, (unsigned char)s[k]);
            if (n < 0) break;
            if (nodes[n].id >= 0) { len = k + 1 - i; id = nodes[n].id; }
        }
        return {len, id};
    }
};

size_t char_start_before(std::string_view s, size_t i) {
    do { --i; } while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80);
    return i;
}

}  // namespace

struct TokenizerImpl {
    std::string where, config_where;
    Json tokenizer_json, tokenizer_config, generation_config;

    std::unique_ptr<Normalizer> normalizer;
    std::unique_ptr<PreTokenizer> pre_tokenizer;
    std::unique_ptr<Model> model;
    std::unique_ptr<PostProcessor> post;
    std::unique_ptr<Decoder> decoder;

    std::map<int32_t, AddedToken> added;       // id -> token
    TokenMap added_ids;                        // content -> id
    std::unordered_set<std::string> specials;  // contents of special added tokens
    std::unordered_map<int32_t, std::string> normalized_form;  // id -> content after the normalizer
    Trie raw_trie, norm_trie;

    int64_t vocab_size = 0;
    int32_t bos = -1;
    std::vector<int32_t> eos;

    // Model ids of pieces seen before (texts repeat words); shared by the threads that encode, and
    // filled only up to a size, as in `tokenizers`.
    static constexpr size_t kCacheEntries = 10000, kCachePieceBytes = 256;
    mutable std::mutex cache_mu;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

    void tokenize_piece(const std::string& piece, std::vector<int32_t>& ids, const std::string& what) const {
        const bool cacheable = piece.size() < kCachePieceBytes;
        if (cacheable) {
            std::lock_guard<std::mutex> lock(cache_mu);
            auto it = cache.find(piece);
            if (it != cache.end()) {
                ids.insert(ids.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        const size_t o = ids.size();
        model->tokenize(piece, ids, what);
        if (cacheable) {
            std::lock_guard<std::mutex> lock(cache_mu);
            if (cache.size() < kCacheEntries) cache.emplace(piece, std::vector<int32_t>(ids.begin() + (ptrdiff_t)o, ids.end()));
        }
    }

    int32_t token_to_id(std::string_view t) const {
        auto it = added_ids.find(t);
        if (it != added_ids.end()) return it->second;
        return model->find(t);
    }
    const std::string* id_to_token(int32_t id) const {
        auto it = added.find(id);
        if (it != added.end()) {
            auto n = normalized_form.find(id);
            return n != normalized_form.end() ? &n->second : &it->second.content;
        }
        return model->token(id);
    }
    void check_id(int32_t id) const {
        if (id < 0 || id >= vocab_size)
            fail("token id ", id, " is outside the tokenizer's vocabulary [0, ", vocab_size, ")");
    }

    // AddedVocabulary::add_tokens: a token already in the vocabulary keeps its id, a new one gets
    // the next id after the model's vocabulary (the `id` written in the file is not used).
    void add_tokens(const std::vector<AddedToken>& toks, const Where& w) {
        int64_t next = (int64_t)model->vocab.size();
        if (!added.empty()) {
            const int64_t mx = added.rbegin()->first;
            next = (mx >= (int64_t)model->vocab.size() || model->vocab.empty()) ? mx + 1 : (int64_t)model->vocab.size();
        }
        for (size_t i = 0; i < toks.size(); ++i) {
            const AddedToken& t = toks[i];
            if (t.content.empty()) continue;
            auto ex = added_ids.find(t.content);
            if (ex != added_ids.end() && added.at(ex->second) == t) continue;
            int32_t id = token_to_id(t.content);
            if (id < 0) {
                if (next >= kMaxId) fail(w[i].str(), ": too many added tokens");
                id = (int32_t)next++;
            }
            if (t.normalized && normalizer) {
                NormStr n(t.content, 0);
                normalizer->normalize(n);
                if (n.s != t.content) normalized_form[id] = n.s;
                else normalized_form.erase(id);
            }
            added_ids[t.content] = id;
            if (t.special) specials.insert(t.content);
            added[id] = t;
        }
        refresh(w);
    }

    void refresh(const Where& w) {
        raw_trie = Trie();
        norm_trie = Trie();
        for (auto& [id, t] : added) {
            const std::string* pat = &t.content;
            if (t.normalized) {
                auto n = normalized_form.find(id);
                if (n != normalized_form.end()) pat = &n->second;
            }
            if (pat->empty()) fail(w.str(), ": added token '", t.content, "' is empty after normalization");
            const int32_t other = (t.normalized ? norm_trie : raw_trie).insert(*pat, id);
            if (other >= 0) fail(w.str(), ": added tokens ", other, " and ", id, " both match the text '", *pat, "'");
        }
        int64_t mx = (int64_t)model->by_id.size() - 1;
        if (!added.empty()) mx = std::max<int64_t>(mx, added.rbegin()->first);
        vocab_size = mx + 1;
    }

    struct Cut {
        int32_t id;  // -1: text to tokenize
        size_t b, e;
    };
    // AddedVocabulary::find_matches
    void find_added(const Trie& trie, std::string_view s, std::vector<Cut>& out) const {
        out.clear();
        if (s.empty()) { out.push_back({-1, 0, 0}); return; }
        if (trie.empty()) { out.push_back({-1, 0, s.size()}); return; }
        size_t start_offset = 0, pos = 0;
        while (pos < s.size()) {
            if (!trie.first[(unsigned char)s[pos]]) { ++pos; continue; }
            auto [len, id] = trie.longest(s, pos);
            if (len == 0) { ++pos; continue; }
            const size_t mb = pos, me = pos + len;
            pos = me;
            const AddedToken& t = added.at(id);
            size_t start = mb, stop = me;
            if (t.single_word) {
                bool word_before = false, word_after = false;
                if (mb > 0) {
                    size_t k = char_start_before(s, mb);
                    word_before = is_word_char(utf8_next(s, k));
                }
                if (me < s.size()) {
                    size_t k = me;
                    word_after = is_word_char(utf8_next(s, k));
                }
                if (word_before || word_after) continue;
            }
            if (t.lstrip) {
                size_t ns = start;
                while (ns > 0) {
                    const size_t k0 = char_start_before(s, ns);
                    size_t k = k0;
                    if (!is_whitespace(utf8_next(s, k))) break;
                    ns = k0;
                }
                start = std::max(ns, start_offset);
            }
            if (t.rstrip) {
                while (stop < s.size()) {
                    size_t k = stop;
                    if (!is_whitespace(utf8_next(s, k))) break;
                    stop = k;
                }
            }
            if (start_offset < start) out.push_back({-1, start_offset, start});
            out.push_back({id, start, stop});
            start_offset = stop;
        }
        if (start_offset != s.size()) out.push_back({-1, start_offset, s.size()});
    }

    std::vector<int32_t> encode(std::string_view text, bool add_special, const std::string& what) const {
        const size_t bad = utf8_invalid_at(text);
        if (bad != std::string_view::npos) fail(what, ": invalid UTF-8 at byte offset ", bad);
        std::vector<int32_t> ids;
        ids.reserve(text.size() / 3 + 4);
        std::vector<Cut> raw_cuts, norm_cuts;
        std::vector<NormStr> pieces;
        find_added(raw_trie, text, raw_cuts);
        for (const Cut& c : raw_cuts) {
            if (c.id >= 0) { ids.push_back(c.id); continue; }
            if (c.e <= c.b) continue;
            NormStr seg(text.substr(c.b, c.e - c.b), (uint32_t)c.b);
            if (normalizer) normalizer->normalize(seg);
            find_added(norm_trie, seg.s, norm_cuts);
            for (const Cut& d : norm_cuts) {
                if (d.id >= 0) { ids.push_back(d.id); continue; }
                if (d.e <= d.b) continue;
                pieces.clear();
                pieces.push_back(seg.slice(d.b, d.e));
                if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);
                for (const NormStr& p : pieces)
                    if (!p.s.empty()) tokenize_piece(p.s, ids, what);
            }
        }
        if (post) post->process(ids, add_special);
        return ids;
    }

    std::string decode(const std::vector<int32_t>& ids, bool skip_special, const DecodeMode& mode) const {
        std::vector<std::string> toks;
        toks.reserve(ids.size());
        for (int32_t id : ids) {
            check_id(id);
            const std::string* t = id_to_token(id);
            if (!t) continue;
            if (skip_special && specials.count(*t)) continue;
            toks.push_back(*t);
        }
        std::string out;
        if (decoder) {
            bool fused = false;
            decoder->decode_chain(toks, mode, fused);
            for (auto& t : toks) out += t;
        } else {
            for (size_t k = 0; k < toks.size(); ++k) {
                if (k > 0 || mode.continuation) out += ' ';
                out += toks[k];
            }
        }
        return out;
    }

    // The post-processor's additions around the text: run it on a marker id.
    void template_specials(std::vector<int32_t>& lead, std::vector<int32_t>& trail) const {
        std::vector<int32_t> probe{-7};
        if (post) post->process(probe, true);
        auto it = std::find(probe.begin(), probe.end(), -7);
        if (it == probe.end()) return;
        lead.assign(probe.begin(), it);
        trail.assign(it + 1, probe.end());
    }
};

namespace {

AddedToken parse_added(const Json& x, const Where& w) {
    if (!x.is_object()) fail(w.str(), ": expected an object, got ", x.type_name());
    AddedToken t;
    t.content = get_string(x, "content", w);
    t.special = get_bool(x, "special", false, w);
    t.single_word = get_bool(x, "single_word", false, w);
    t.lstrip = get_bool(x, "lstrip", false, w);
    t.rstrip = get_bool(x, "rstrip", false, w);
    t.normalized = get_bool(x, "normalized", !t.special, w);
    return t;
}

// bos_token / eos_token of tokenizer_config.json: a string or an AddedToken object.
std::string config_token(const Json& cfg, const char* key, const Where& w) {
    const Json* v = optional_field(cfg, key);
    if (!v) return "";
    if (v->is_string()) return get_string(cfg, key, w);
    if (v->is_object()) return get_string(*v, "content", w / key);
    fail((w / key).str(), ": expected a string or an object with 'content', got ", v->dump());
}

// Brackets nested deeper than this are refused before parsing: copying or destroying such a
// document recurses once per level.
constexpr int kMaxJsonDepth = 128;

Json parse_json_text(std::string_view text, const std::string& where) {
    int depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (in_string) {
            if (c == '\\') ++i;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > kMaxJsonDepth) fail(where, ": JSON nested deeper than ", kMaxJsonDepth, " levels");
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    try {
        return Json::parse(text);
    } catch (const Json::exception& e) {
        fail(where, ": not valid JSON: ", e.what());
    }
}

std::string read_file_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("cannot read '", path, "'");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) fail("cannot read '", path, "'");
    return ss.str();
}

}  // namespace

}  // namespace hf

using hf::Json;
using hf::Where;

HfTokenizer::HfTokenizer() : impl_(new hf::TokenizerImpl) {}
HfTokenizer::~HfTokenizer() = default;

std::shared_ptr<const HfTokenizer> HfTokenizer::from_json(const Json& tj, const Json& cfg, const std::string& where,
                                                          const std::string& config_where, const Json& gen) {
    std::shared_ptr<HfTokenizer> tok(new HfTokenizer());
    hf::TokenizerImpl& m = *tok->impl_;
    m.where = where;
    m.config_where = config_where;
    const Where root{where, ""};
    if (!tj.is_object()) fail(where, ": expected a JSON object, got ", tj.type_name());
    if (const Json* v = hf::optional_field(tj, "version")) {
        if (!v->is_string() || v->get<std::string>() != "1.0") fail(where, ": version: unknown tokenizer.json version ", v->dump());
    }
    m.model = hf::parse_model(hf::field(tj, "model", root), root / "model");
    if (const Json* n = hf::optional_field(tj, "normalizer")) m.normalizer = hf::parse_normalizer(*n, root / "normalizer");
    if (const Json* p = hf::optional_field(tj, "pre_tokenizer")) m.pre_tokenizer = hf::parse_pre_tokenizer(*p, root / "pre_tokenizer");
    if (const Json* d = hf::optional_field(tj, "decoder")) m.decoder = hf::parse_decoder(*d, root / "decoder");

    std::vector<hf::AddedToken> toks;
    if (const Json* a = hf::optional_field(tj, "added_tokens")) {
        const Where aw = root / "added_tokens";
        if (!a->is_array()) fail(aw.str(), ": expected a list, got ", a->type_name());
        for (size_t i = 0; i < a->size(); ++i) {
            hf::parse_id(hf::field((*a)[i], "id", aw[i]), aw[i] / "id");
            toks.push_back(hf::parse_added((*a)[i], aw[i]));
        }
    }
    m.add_tokens(toks, root / "added_tokens");

    // tokenizer_config.json, the way transformers applies it
    const Where cw{config_where, ""};
    std::string bos_name, eos_name;
    if (!cfg.is_null()) {
        if (!cfg.is_object()) fail(config_where, ": expected a JSON object, got ", cfg.type_name());
        if (const Json* d = hf::optional_field(cfg, "added_tokens_decoder")) {
            const Where dw = cw / "added_tokens_decoder";
            if (!d->is_object()) fail(dw.str(), ": expected an object {id: token}, got ", d->type_name());
            std::map<int64_t, hf::AddedToken> by_id;
            for (auto it = d->begin(); it != d->end(); ++it) {
                char* end = nullptr;
                const long long id = std::strtoll(it.key().c_str(), &end, 10);
                if (it.key().empty() || *end != '\0' || id < 0 || id >= hf::kMaxId)
                    fail((dw / it.key()).str(), ": the key is not a token id");
                by_id[id] = hf::parse_added(it.value(), dw / it.key());
            }
            std::vector<hf::AddedToken> missing;
            for (auto& [id, t] : by_id)
                if (!m.added.count((int32_t)id)) missing.push_back(t);
            m.add_tokens(missing, dw);
        }
        bos_name = hf::config_token(cfg, "bos_token", cw);
        eos_name = hf::config_token(cfg, "eos_token", cw);
        // a special token the vocabulary lacks is added, as transformers does
        std::vector<hf::AddedToken> extra;
        for (const std::string* name : {&bos_name, &eos_name}) {
            if (name->empty() || m.token_to_id(*name) >= 0) continue;
            hf::AddedToken t;
            t.content = *name;
            t.special = true;
            t.normalized = false;
            extra.push_back(t);
        }
        if (!extra.empty()) m.add_tokens(extra, cw);
        if (!bos_name.empty()) m.bos = m.token_to_id(bos_name);
        if (!eos_name.empty()) m.eos.push_back(m.token_to_id(eos_name));
    }
    if (const Json* p = hf::optional_field(tj, "post_processor")) m.post = hf::parse_post_processor(*p, root / "post_processor", m.vocab_size);
    if (!cfg.is_null() && (hf::optional_field(cfg, "add_bos_token") || hf::optional_field(cfg, "add_eos_token"))) {
        const bool add_bos = hf::get_bool(cfg, "add_bos_token", false, cw);
        const bool add_eos = hf::get_bool(cfg, "add_eos_token", false, cw);
        if (add_bos && m.bos < 0) fail((cw / "add_bos_token").str(), ": true, but there is no bos_token");
        if (add_eos && m.eos.empty()) fail((cw / "add_eos_token").str(), ": true, but there is no eos_token");
        m.post = hf::make_bos_eos_template(add_bos ? m.bos : -1, add_eos ? m.eos[0] : -1);
    }

    // generation_config.json: more stop ids (Llama 3, Qwen)
    if (!gen.is_null()) {
        const Where gw{"generation_config.json", ""};
        if (!gen.is_object()) fail(gw.str(), ": expected a JSON object, got ", gen.type_name());
        if (const Json* e = hf::optional_field(gen, "eos_token_id")) {
            std::vector<Json> list = e->is_array() ? std::vector<Json>(e->begin(), e->end()) : std::vector<Json>{*e};
            for (size_t i = 0; i < list.size(); ++i) {
                const int32_t id = hf::parse_id(list[i], (gw / "eos_token_id")[i]);
                if (id >= m.vocab_size) fail((gw / "eos_token_id").str(), ": id ", id, " is outside the vocabulary");
                if (std::find(m.eos.begin(), m.eos.end(), id) == m.eos.end()) m.eos.push_back(id);
            }
        }
        if (m.bos < 0) {
            if (const Json* b = hf::optional_field(gen, "bos_token_id")) {
                const int32_t id = hf::parse_id(*b, gw / "bos_token_id");
                if (id >= m.vocab_size) fail((gw / "bos_token_id").str(), ": id ", id, " is outside the vocabulary");
                m.bos = id;
            }
        }
    }
    // without a config: what the post-processor puts around the text
    if (m.bos < 0 || m.eos.empty()) {
        std::vector<int32_t> lead, trail;
        m.template_specials(lead, trail);
        if (m.bos < 0 && lead.size() == 1) m.bos = lead[0];
        if (m.eos.empty() && trail.size() == 1) m.eos.push_back(trail[0]);
    }
    m.tokenizer_json = tj;
    m.tokenizer_config = cfg;
    m.generation_config = gen;
    return tok;
}

std::shared_ptr<const HfTokenizer> HfTokenizer::from_string(std::string_view tokenizer_json, std::string_view tokenizer_config,
                                                            const std::string& where) {
    const Json tj = hf::parse_json_text(tokenizer_json, where);
    const Json cfg = tokenizer_config.empty() ? Json() : hf::parse_json_text(tokenizer_config, "tokenizer_config.json");
    return from_json(tj, cfg, where);
}

std::shared_ptr<const HfTokenizer> HfTokenizer::from_files(const std::string& tokenizer_json_path,
                                                           const std::string& tokenizer_config_path,
                                                           const std::string& generation_config_path) {
    const Json tj = hf::parse_json_text(hf::read_file_text(tokenizer_json_path), tokenizer_json_path);
    const Json cfg = tokenizer_config_path.empty()
                         ? Json()
                         : hf::parse_json_text(hf::read_file_text(tokenizer_config_path), tokenizer_config_path);
    const Json gen = generation_config_path.empty()
                         ? Json()
                         : hf::parse_json_text(hf::read_file_text(generation_config_path), generation_config_path);
    return from_json(tj, cfg, tokenizer_json_path, tokenizer_config_path.empty() ? "tokenizer_config.json" : tokenizer_config_path, gen);
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special_tokens, const std::string& what) const {
    return impl_->encode(text, add_special_tokens, what);
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
    return impl_->decode(ids, skip_special_tokens, hf::DecodeMode{});
}

std::string HfTokenizer::decode_one(int32_t id) const {
    return impl_->decode({id}, false, hf::DecodeMode{true, true});
}

int64_t HfTokenizer::vocab_size() const { return impl_->vocab_size; }
int32_t HfTokenizer::bos_id() const { return impl_->bos; }
const std::vector<int32_t>& HfTokenizer::eos_ids() const { return impl_->eos; }

bool HfTokenizer::is_special(int32_t id) const {
    impl_->check_id(id);
    if (id == impl_->bos || std::find(impl_->eos.begin(), impl_->eos.end(), id) != impl_->eos.end()) return true;
    const std::string* t = impl_->id_to_token(id);
    return t && impl_->specials.count(*t);
}

std::string HfTokenizer::token_text(int32_t id) const {
    impl_->check_id(id);
    const std::string* t = impl_->id_to_token(id);
    return t ? *t : std::string();
}

int32_t HfTokenizer::token_to_id(std::string_view token) const { return impl_->token_to_id(token); }
const nlohmann::json& HfTokenizer::tokenizer_json() const { return impl_->tokenizer_json; }
const nlohmann::json& HfTokenizer::tokenizer_config() const { return impl_->tokenizer_config; }
const nlohmann::json& HfTokenizer::generation_config() const { return impl_->generation_config; }

// ---- streaming --------------------------------------------------------------------------------

HfDecodeStream::HfDecodeStream(std::shared_ptr<const HfTokenizer> tok, bool skip_special_tokens)
    : tok_(std::move(tok)), skip_(skip_special_tokens) {}

static bool ends_with_replacement(const std::string& s) {
    return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

std::string HfDecodeStream::step(int32_t id) {
    tok_->impl().check_id(id);
    ids_.push_back(id);
    const std::string s = tok_->decode(ids_, skip_);
    // U+FFFD at the end: a character whose bytes are still coming. A character needs at most four
    // byte tokens; a longer wait is bytes that never form one, shown as decode() shows them.
    const bool waited_enough = ids_.size() - prefix_index_ > 16;
    if (s.size() <= prefix_.size() || (ends_with_replacement(s) && !waited_enough)) return "";
    std::string out;
    if (s.compare(0, prefix_.size(), prefix_) == 0) {
        out = s.substr(prefix_.size());
    } else {
        // decoding the window no longer starts with what was printed (invalid byte-fallback
        // sequences); print what differs and resynchronise
        size_t k = 0;
        while (k < s.size() && k < prefix_.size() && s[k] == prefix_[k]) ++k;
        out = s.substr(k);
    }
    // keep the ids since the previous output as context for the next step (SentencePiece's
    // first-token strip applies to the window's first token, which already printed)
    const size_t new_index = ids_.size() - prefix_index_;
    ids_.erase(ids_.begin(), ids_.begin() + (ptrdiff_t)prefix_index_);
    prefix_ = tok_->decode(ids_, skip_);
    prefix_index_ = new_index;
    return out;
}

std::string HfDecodeStream::finish() {
    std::string out;
    if (!ids_.empty()) {
        const std::string s = tok_->decode(ids_, skip_);
        if (s.compare(0, prefix_.size(), prefix_) == 0) out = s.substr(prefix_.size());
        else {
            size_t k = 0;
            while (k < s.size() && k < prefix_.size() && s[k] == prefix_[k]) ++k;
            out = s.substr(k);
        }
    }
    ids_.clear();
    prefix_.clear();
    prefix_index_ = 0;
    return out;
}

}  // namespace moe
