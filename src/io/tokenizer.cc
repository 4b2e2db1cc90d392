#include "io/tokenizer.h"
#include "io/json_int.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <queue>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "io/hf_tok_pipeline.h"

namespace moe {

std::vector<uint32_t> utf8_decode(const std::string& s, const std::string& where) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t i = 0, n = s.size();
    while (i < n) {
        uint32_t cp;
        int len;
        switch (utf8_next(p + i, n - i, cp, len)) {
            case Utf8::ok: break;
            case Utf8::bad_lead: fail(where, ": invalid UTF-8 byte 0x", std::hex, (int)p[i], std::dec, " at byte offset ", i);
            case Utf8::truncated: fail(where, ": truncated UTF-8 sequence at byte offset ", i);
            case Utf8::bad_continuation: fail(where, ": invalid UTF-8 continuation byte at byte offset ", i + len);
        }
        out.push_back(cp);
        i += len;
    }
    return out;
}

Utf8 utf8_next(const unsigned char* p, size_t n, uint32_t& cp, int& len) {
    const unsigned char c = p[0];
    if (c < 0x80) { cp = c; len = 1; }
    else if ((c >> 5) == 0x6) { cp = c & 0x1F; len = 2; }
    else if ((c >> 4) == 0xE) { cp = c & 0x0F; len = 3; }
    else if ((c >> 3) == 0x1E) { cp = c & 0x07; len = 4; }
    else { len = 0; return Utf8::bad_lead; }
    if ((size_t)len > n) return Utf8::truncated;
    for (int k = 1; k < len; ++k) {
        if ((p[k] >> 6) != 0x2) { len = k; return Utf8::bad_continuation; }
        cp = (cp << 6) | (p[k] & 0x3F);
    }
    return Utf8::ok;
}

std::string utf8_encode(uint32_t cp) {
    std::string s;
    if (cp < 0x80) s += (char)cp;
    else if (cp < 0x800) { s += (char)(0xC0 | (cp >> 6)); s += (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        s += (char)(0xE0 | (cp >> 12)); s += (char)(0x80 | ((cp >> 6) & 0x3F)); s += (char)(0x80 | (cp & 0x3F));
    } else {
        s += (char)(0xF0 | (cp >> 18)); s += (char)(0x80 | ((cp >> 12) & 0x3F));
        s += (char)(0x80 | ((cp >> 6) & 0x3F)); s += (char)(0x80 | (cp & 0x3F));
    }
    return s;
}

static std::string describe(uint32_t cp) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "U+%04X", cp);
    if (cp < 0x20 || cp == 0x7F) return buf;
    std::string s(1, '\'');  // appended piece by piece: GCC 12 warns (-Wrestrict) on "'" + string
    s.append(utf8_encode(cp)).append("' (").append(buf).append(")");
    return s;
}

Tokenizer Tokenizer::byte_level() { return Tokenizer(); }

// ---- byte-level BPE ----------------------------------------------------------------------------
// Hand-written: no Debian package trains a BPE vocabulary (the Python `tokenizers` is not a C++
// library), and the engine needs one without a Python stack.

namespace {

enum class ByteClass { letter, digit, space, white, punct };

ByteClass byte_class(unsigned char c) {
    if (c == ' ') return ByteClass::space;
    if (c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v') return ByteClass::white;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) return ByteClass::letter;  // UTF-8 bytes: letters
    if (c >= '0' && c <= '9') return ByteClass::digit;
    return ByteClass::punct;
}

bool is_white(ByteClass k) { return k == ByteClass::space || k == ByteClass::white; }

uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

// Replaces every (a, b) in sym, left to right, by id, in place. Returns whether any was found.
bool apply_merge(std::vector<int32_t>& sym, int32_t a, int32_t b, int32_t id) {
    size_t o = 0;
    for (size_t i = 0; i < sym.size(); ++i) {
        if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) {
            sym[o++] = id;
            ++i;
        } else {
            sym[o++] = sym[i];
        }
    }
    const bool hit = o < sym.size();
    sym.resize(o);
    return hit;
}

}  // namespace

std::vector<std::pair<size_t, size_t>> bpe_pretokenize(const std::string& text) {
    std::vector<std::pair<size_t, size_t>> out;
    const size_t n = text.size();
    auto cls = [&](size_t i) { return byte_class((unsigned char)text[i]); };
    size_t i = 0;
    while (i < n) {
        if (is_white(cls(i))) {
            size_t j = i;
            while (j < n && is_white(cls(j))) ++j;
            // a space right before a word belongs to the word (" the"), the rest is one piece
            if (j < n && text[j - 1] == ' ') {
                if (j - 1 > i) out.push_back({i, j - 1});
                i = j - 1;
            } else {
                out.push_back({i, j});
                i = j;
                continue;
            }
        }
        const size_t s = i;
        if (text[i] == ' ') ++i;
        const ByteClass k = cls(i);
        while (i < n && cls(i) == k) ++i;
        out.push_back({s, i});
    }
    return out;
}

Tokenizer Tokenizer::bpe_train(const std::string& text, int64_t vocab_size, const std::string& where, bool progress) {
    if (vocab_size < 257 || vocab_size > (int64_t)1 << 20)
        fail(where, ": a BPE vocabulary must have between 257 and ", (int64_t)1 << 20, " tokens, got ", vocab_size);
    const auto t0 = std::chrono::steady_clock::now();
    // distinct pre-tokens and their counts, in byte order (the result does not depend on the
    // order; sorting keeps the work reproducible)
    std::unordered_map<std::string_view, int64_t> freq;
    for (auto [b, e] : bpe_pretokenize(text)) freq[std::string_view(text).substr(b, e - b)]++;
    std::vector<std::pair<std::string_view, int64_t>> uniq(freq.begin(), freq.end());
    std::sort(uniq.begin(), uniq.end());
    std::vector<std::vector<int32_t>> words(uniq.size());  // [n_words][symbols]
    std::vector<int64_t> count(uniq.size());
    std::unordered_map<uint64_t, int64_t> pairs;            // pair -> occurrences in the text
    std::unordered_map<uint64_t, std::vector<int32_t>> where_pair;  // pair -> words holding it (may be stale)
    for (size_t w = 0; w < uniq.size(); ++w) {
        count[w] = uniq[w].second;
        for (unsigned char c : uniq[w].first) words[w].push_back(c);
        for (size_t i = 0; i + 1 < words[w].size(); ++i) {
            const uint64_t k = pair_key(words[w][i], words[w][i + 1]);
            pairs[k] += count[w];
            where_pair[k].push_back((int32_t)w);
        }
    }
    // max-heap of (count, pair), larger count first, then the smaller pair. Entries may be stale:
    // a pair's count only ever drops, except for pairs with the newest id, which are pushed afresh
    // after each merge, so the top entry whose count is current is the true best pair.
    using Entry = std::pair<int64_t, uint64_t>;
    auto worse = [](const Entry& a, const Entry& b) { return a.first != b.first ? a.first < b.first : a.second > b.second; };
    std::priority_queue<Entry, std::vector<Entry>, decltype(worse)> heap(worse);
    for (auto& [k, c] : pairs) heap.push({c, k});

    Tokenizer t;
    t.kind_ = Kind::bpe;
    const int64_t n_merges = vocab_size - 256;
    std::vector<uint64_t> touched;
    std::vector<int32_t> merged;
    while ((int64_t)t.merges_.size() < n_merges) {
        if (heap.empty() || heap.top().first < 2)
            fail(where, ": the text supports only ", 256 + t.merges_.size(), " BPE tokens (every further pair occurs at most once), but ",
                 vocab_size, " were asked for (model.vocab_size): use a smaller vocabulary or more text");
        const auto [c, key] = heap.top();
        heap.pop();
        auto it = pairs.find(key);
        const int64_t now = it == pairs.end() ? 0 : it->second;
        if (now != c) {
            if (now > 0) heap.push({now, key});
            continue;
        }
        const int32_t a = (int32_t)(key >> 32), b = (int32_t)(key & 0xffffffffu);
        const int32_t id = 256 + (int32_t)t.merges_.size();
        t.merges_.push_back({a, b});
        std::vector<int32_t> ws = std::move(where_pair[key]);
        where_pair.erase(key);
        std::sort(ws.begin(), ws.end());
        ws.erase(std::unique(ws.begin(), ws.end()), ws.end());
        touched.clear();
        for (int32_t w : ws) {
            std::vector<int32_t>& sym = words[w];
            merged.assign(sym.begin(), sym.end());
            if (!apply_merge(merged, a, b, id)) continue;  // a stale entry of where_pair
            for (size_t i = 0; i + 1 < sym.size(); ++i) {
                const uint64_t k = pair_key(sym[i], sym[i + 1]);
                if ((pairs[k] -= count[w]) == 0) pairs.erase(k);
            }
            for (size_t i = 0; i + 1 < merged.size(); ++i) {
                const uint64_t k = pair_key(merged[i], merged[i + 1]);
                pairs[k] += count[w];
                if (merged[i] == id || merged[i + 1] == id) {
                    where_pair[k].push_back(w);
                    touched.push_back(k);
                }
            }
            sym.swap(merged);
        }
        std::sort(touched.begin(), touched.end());
        touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
        for (uint64_t k : touched) heap.push({pairs[k], k});
        if (progress && t.merges_.size() % 1000 == 0) {
            std::printf("bpe: %zu / %lld merges\n", t.merges_.size(), (long long)n_merges);
            std::fflush(stdout);
        }
    }
    t.bpe_index();
    if (progress) {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("bpe: learned %lld merges from %zu distinct pre-tokens in %.1fs\n", (long long)n_merges, uniq.size(), s);
        std::fflush(stdout);
    }
    return t;
}

void Tokenizer::bpe_index() {
    pieces_.assign(256 + merges_.size(), std::string());
    for (int i = 0; i < 256; ++i) pieces_[i] = std::string(1, (char)(unsigned char)i);
    rank_.clear();
    for (size_t i = 0; i < merges_.size(); ++i) {
        std::string& piece = pieces_[256 + i];
        piece.assign(pieces_[merges_[i].first]);
        piece.append(pieces_[merges_[i].second]);
        rank_.push_back({pair_key(merges_[i].first, merges_[i].second), (int32_t)(256 + i)});
    }
    std::sort(rank_.begin(), rank_.end());
}

// Applies the merges to one pre-token in the order they were learned (the earliest-learned pair
// present first), as in training.
void Tokenizer::bpe_encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    std::vector<int32_t> sym;
    for (unsigned char c : piece) sym.push_back(c);
    for (;;) {
        int32_t best = -1;
        for (size_t i = 0; i + 1 < sym.size(); ++i) {
            const uint64_t k = pair_key(sym[i], sym[i + 1]);
            auto it = std::lower_bound(rank_.begin(), rank_.end(), std::make_pair(k, (int32_t)-1));
            if (it != rank_.end() && it->first == k && (best < 0 || it->second < best)) best = it->second;
        }
        if (best < 0) break;
        apply_merge(sym, merges_[best - 256].first, merges_[best - 256].second, best);
    }
    out.insert(out.end(), sym.begin(), sym.end());
}

Tokenizer Tokenizer::char_level(const std::string& text, const std::string& where) {
    Tokenizer t;
    t.kind_ = Kind::chr;
    std::vector<uint32_t> cps = utf8_decode(text, where);
    std::sort(cps.begin(), cps.end());
    cps.erase(std::unique(cps.begin(), cps.end()), cps.end());
    if (cps.empty()) fail(where, ": no text to build a character vocabulary from");
    t.chars_ = cps;
    t.index_.assign(cps.back() + 1, -1);
    for (size_t i = 0; i < cps.size(); ++i) t.index_[cps[i]] = (int32_t)i;
    return t;
}

nlohmann::json Tokenizer::to_json() const {
    if (kind_ == Kind::byte) return {{"type", "byte"}};
    if (kind_ == Kind::hf)
        return {{"type", "hf"},
                {"tokenizer_json", hf_->tokenizer_json()},
                {"tokenizer_config", hf_->tokenizer_config()},
                {"generation_config", hf_->generation_config()}};
    if (kind_ == Kind::bpe) {
        nlohmann::json m = nlohmann::json::array();
        for (auto [a, b] : merges_) m.push_back({a, b});
        return {{"type", "bpe"}, {"merges", m}};
    }
    return {{"type", "char"}, {"chars", chars_}};
}

Tokenizer Tokenizer::from_json(const nlohmann::json& j, const std::string& where) {
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
        fail(where, ": tokenizer entry is missing its 'type'");
    std::string type = j["type"];
    if (type == "byte") return byte_level();
    if (type == "hf") {
        if (!j.contains("tokenizer_json")) fail(where, ": hf tokenizer has no 'tokenizer_json'");
        const nlohmann::json none;
        return from_hf(HfTokenizer::from_json(j["tokenizer_json"], j.contains("tokenizer_config") ? j["tokenizer_config"] : none,
                                              where + " (tokenizer.json)", where + " (tokenizer_config.json)",
                                              j.contains("generation_config") ? j["generation_config"] : none));
    }
    if (type == "bpe") {
        if (!j.contains("merges") || !j["merges"].is_array()) fail(where, ": bpe tokenizer has no 'merges' list");
        Tokenizer t;
        t.kind_ = Kind::bpe;
        const nlohmann::json& m = j["merges"];
        for (size_t i = 0; i < m.size(); ++i) {
            const int64_t limit = 256 + (int64_t)i;  // a merge joins tokens that exist before it
            if (!m[i].is_array() || m[i].size() != 2 || !m[i][0].is_number_integer() || !m[i][1].is_number_integer())
                fail(where, ": bpe merge ", i, " is not a pair of token ids");
            const int64_t a = m[i][0], b = m[i][1];
            if (a < 0 || a >= limit || b < 0 || b >= limit)
                fail(where, ": bpe merge ", i, " joins tokens ", a, " and ", b, ", but only ids below ", limit, " exist before it");
            t.merges_.push_back({(int32_t)a, (int32_t)b});
        }
        t.bpe_index();
        return t;
    }
    if (type != "char") fail(where, ": unknown tokenizer type '", type, "'");
    Tokenizer t;
    t.kind_ = Kind::chr;
    if (!j.contains("chars") || !j["chars"].is_array()) fail(where, ": char tokenizer has no 'chars' list");
    for (const auto& c : j["chars"])
        t.chars_.push_back((uint32_t)json_int(c, where + ": char tokenizer code point", 0, 0x10FFFF));
    if (t.chars_.empty()) fail(where, ": char tokenizer has an empty vocabulary");
    uint32_t mx = *std::max_element(t.chars_.begin(), t.chars_.end());
    t.index_.assign(mx + 1, -1);
    for (size_t i = 0; i < t.chars_.size(); ++i) t.index_[t.chars_[i]] = (int32_t)i;
    return t;
}

Tokenizer Tokenizer::from_hf_files(const std::string& tokenizer_json_path, const std::string& tokenizer_config_path,
                                   const std::string& generation_config_path) {
    return from_hf(HfTokenizer::from_files(tokenizer_json_path, tokenizer_config_path, generation_config_path));
}

Tokenizer Tokenizer::from_hf(std::shared_ptr<const HfTokenizer> hf) {
    MOE_ASSERT(hf);
    Tokenizer t;
    t.kind_ = Kind::hf;
    t.hf_ = std::move(hf);
    return t;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, const std::string& what) const {
    return encode(text, what, true);
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, const std::string& what, bool add_special_tokens) const {
    if (kind_ == Kind::hf) return hf_->encode(text, add_special_tokens, what);
    std::vector<int32_t> ids;
    if (kind_ == Kind::byte) {
        ids.reserve(text.size());
        for (unsigned char c : text) ids.push_back(c);
        return ids;
    }
    if (kind_ == Kind::bpe) {
        ids.reserve(text.size() / 3);
        std::unordered_map<std::string_view, std::pair<size_t, size_t>> cache;  // piece -> its ids in `ids`
        for (auto [b, e] : bpe_pretokenize(text)) {
            const std::string_view piece = std::string_view(text).substr(b, e - b);
            auto it = cache.find(piece);
            if (it != cache.end()) {
                const auto [o, n] = it->second;
                for (size_t i = 0; i < n; ++i) {
                    const int32_t id = ids[o + i];
                    ids.push_back(id);
                }
                continue;
            }
            const size_t o = ids.size();
            bpe_encode_piece(piece, ids);
            cache.emplace(piece, std::make_pair(o, ids.size() - o));
        }
        return ids;
    }
    std::vector<uint32_t> cps = utf8_decode(text, what);
    ids.reserve(cps.size());
    for (size_t i = 0; i < cps.size(); ++i) {
        uint32_t cp = cps[i];
        if (cp >= index_.size() || index_[cp] < 0)
            fail(what, ": character ", describe(cp), " at position ", i,
                 " is not in the model's vocabulary (", chars_.size(), " characters)");
        ids.push_back(index_[cp]);
    }
    return ids;
}

std::string Tokenizer::decode_one(int32_t id) const {
    // a model whose vocab_size exceeds the tokenizer's can sample such an id, and a request can
    // send any: an error naming it, never an abort
    if (id < 0 || id >= vocab_size())
        fail("token id ", id, " is outside the tokenizer's vocabulary [0, ", vocab_size(), ")");
    if (kind_ == Kind::byte) return std::string(1, (char)(unsigned char)id);
    if (kind_ == Kind::bpe) return pieces_[id];
    if (kind_ == Kind::hf) return hf_->decode_one(id);
    return utf8_encode(chars_[id]);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return decode(ids, false); }

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
    if (kind_ == Kind::hf) return hf_->decode(ids, skip_special_tokens);
    std::string s;
    for (int32_t id : ids) s += decode_one(id);
    return s;
}

int32_t Tokenizer::bos_id() const { return kind_ == Kind::hf ? hf_->bos_id() : -1; }

std::vector<int32_t> Tokenizer::eos_ids() const { return kind_ == Kind::hf ? hf_->eos_ids() : std::vector<int32_t>{}; }

bool Tokenizer::is_special(int32_t id) const {
    if (kind_ == Kind::hf) return hf_->is_special(id);
    if (id < 0 || id >= vocab_size())
        fail("token id ", id, " is outside the tokenizer's vocabulary [0, ", vocab_size(), ")");
    return false;
}

std::string Tokenizer::token_text(int32_t id) const { return kind_ == Kind::hf ? hf_->token_text(id) : decode_one(id); }

// ---- export as a Hugging Face tokenizer.json -----------------------------------------------------

// bpe_pretokenize as a Split regex: ASCII letters and every non-ASCII character count as letters
// (their UTF-8 bytes are all >= 0x80), [0-9] as digits, \t\n\v\f\r and space as whitespace, the
// rest of ASCII as punctuation. A run of whitespace before a word loses its last space to the word
// only when that space is last (" \n foo" -> " \n", " foo"); a run that ends in another whitespace
// character, or the text, stays whole.
static const char* kBpePretokenizeRegex =
    " ?[^\\x00-\\x40\\x5B-\\x60\\x7B-\\x7F]+"
    "| ?[0-9]+"
    "| ?[\\x00-\\x08\\x0E-\\x1F\\x21-\\x2F\\x3A-\\x40\\x5B-\\x60\\x7B-\\x7F]+"
    "|[\\x09-\\x0D\\x20]+(?= [^\\x09-\\x0D\\x20])"
    "|[\\x09-\\x0D\\x20]+";

static nlohmann::json byte_level_stage(bool use_regex) {
    return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", use_regex}};
}

static nlohmann::json bpe_model_json(nlohmann::json vocab, nlohmann::json merges) {
    return {{"type", "BPE"},          {"dropout", nullptr},       {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},      {"byte_fallback", false},   {"ignore_merges", false},
            {"vocab", std::move(vocab)}, {"merges", std::move(merges)}};
}

nlohmann::json Tokenizer::to_hf_tokenizer_json() const {
    if (kind_ == Kind::hf) return hf_->tokenizer_json();
    nlohmann::json j = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
                        {"added_tokens", nlohmann::json::array()}, {"normalizer", nullptr},
                        {"post_processor", nullptr}};
    // byte b is the ByteLevel character of b; a BPE token the characters of its bytes
    auto spell = [](const std::string& bytes) {
        std::string s;
        for (unsigned char c : bytes) s += hf::byte_level_char(c);
        return s;
    };
    nlohmann::json vocab = nlohmann::json::object();
    nlohmann::json merges = nlohmann::json::array();
    if (kind_ == Kind::byte || kind_ == Kind::bpe) {
        const int64_t n = vocab_size();
        for (int64_t id = 0; id < n; ++id) {
            const std::string s = spell(kind_ == Kind::byte ? std::string(1, (char)(unsigned char)id) : pieces_[id]);
            if (vocab.contains(s))
                fail("tokenizer export: BPE tokens ", vocab[s].get<int64_t>(), " and ", id, " spell the same bytes; ",
                     "a tokenizer.json vocabulary cannot hold both");
            vocab[s] = id;
        }
        for (auto [a, b] : merges_) merges.push_back({spell(pieces_[a]), spell(pieces_[b])});
        if (kind_ == Kind::byte) {
            j["pre_tokenizer"] = byte_level_stage(false);
        } else {
            j["pre_tokenizer"] = {{"type", "Sequence"},
                                  {"pretokenizers",
                                   {{{"type", "Split"}, {"pattern", {{"Regex", kBpePretokenizeRegex}}},
                                     {"behavior", "Isolated"}, {"invert", false}},
                                    byte_level_stage(false)}}};
        }
        j["decoder"] = byte_level_stage(true);
    } else {
        // one token per code point: a BPE model without merges over the whole text
        for (size_t id = 0; id < chars_.size(); ++id) {
            const uint32_t cp = chars_[id];
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
                fail("tokenizer export: character ", id, " (", cp, ") is not a Unicode scalar value");
            vocab[utf8_encode(cp)] = id;
        }
        j["pre_tokenizer"] = nullptr;
        j["decoder"] = {{"type", "Fuse"}};
    }
    j["model"] = bpe_model_json(std::move(vocab), std::move(merges));
    return j;
}

}  // namespace moe
