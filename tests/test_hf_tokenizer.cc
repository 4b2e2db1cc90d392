// Hugging Face tokenizer.json tokenizers (io/hf_tokenizer.h) against the Python `tokenizers`
// library: ids, decoded texts and checksums that scripts/gen_tokenizer_refs.py dumped for 5,200
// test lines and eight tokenizers in the shapes of Qwen2, Llama 3, OLMoE / GPT-NeoX, GPT-2,
// Mixtral (SentencePiece BPE with byte fallback), Mistral's Metaspace variant, and two that cover
// the remaining stages (tests/data/tokenizers/). Also: the streaming decoder, moe's own tokenizers
// exported as tokenizer.json (checked against ids `tokenizers` gave for the committed exports),
// the moe::Tokenizer wrapper, and one malformed file per class of error.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli_util.h"
#include "core/error.h"
#include "io/hf_tok_text.h"
#include "io/hf_tokenizer.h"
#include "io/tokenizer.h"

namespace {

using moe::HfDecodeStream;
using moe::HfTokenizer;
using moe::Tokenizer;
using nlohmann::json;
using Ids = std::vector<int32_t>;

const std::string kDir = std::string(MOE_TEST_DIR) + "/data/tokenizers/";

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    EXPECT_TRUE(f.good()) << "cannot read " << path;
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::vector<std::string> text_lines(const std::string& path) {
    std::vector<std::string> out;
    std::istringstream in(slurp(path));
    std::string line;
    while (std::getline(in, line)) out.push_back(line);
    return out;
}

const std::vector<std::string>& test_lines() {
    static const std::vector<std::string> lines = [] {
        std::vector<std::string> v;
        for (const std::string& l : text_lines(kDir + "lines.jsonl")) v.push_back(json::parse(l).get<std::string>());
        return v;
    }();
    return lines;
}

// the two-character id encoding of gen_tokenizer_refs.py (enc_ids)
Ids decode_ids(const std::string& s) {
    static const std::string b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    Ids out;
    for (size_t k = 0; k + 1 < s.size(); k += 2) out.push_back((int32_t)(b64.find(s[k]) * 64 + b64.find(s[k + 1])));
    return out;
}

std::vector<Ids> read_ids(const std::string& path) {
    std::vector<Ids> out;
    for (const std::string& l : text_lines(path)) out.push_back(decode_ids(l));
    return out;
}

// FNV-1a 64 over each id (4 bytes, little endian) and 0xFFFFFFFF after each line (as the script)
struct Fnv {
    uint64_t h = 0xcbf29ce484222325ull;
    void add(uint32_t x) {
        for (int k = 0; k < 4; ++k) h = (h ^ ((x >> (8 * k)) & 0xFF)) * 0x100000001b3ull;
    }
    void line(const Ids& ids) {
        for (int32_t i : ids) add((uint32_t)i);
        add(0xFFFFFFFFu);
    }
    std::string hex() const {
        char b[17];
        std::snprintf(b, sizeof b, "%016llx", (unsigned long long)h);
        return b;
    }
};

bool exists(const std::string& p) { return std::filesystem::exists(p); }

// A family's tokenizer: tokenizer.json, or another family's with its pipeline replaced.
std::shared_ptr<const HfTokenizer> load_family(const std::string& name) {
    const std::string d = kDir + name + "/";
    const std::string cfg = exists(d + "tokenizer_config.json") ? d + "tokenizer_config.json" : "";
    const std::string gen = exists(d + "generation_config.json") ? d + "generation_config.json" : "";
    if (exists(d + "tokenizer.json")) return HfTokenizer::from_files(d + "tokenizer.json", cfg, gen);
    const json patch = json::parse(slurp(d + "tokenizer_patch.json"));
    json tj = json::parse(slurp(kDir + patch["base"].get<std::string>() + "/tokenizer.json"));
    for (auto& [k, v] : patch["replace"].items()) tj[k] = v;
    return HfTokenizer::from_json(tj, cfg.empty() ? json() : json::parse(slurp(cfg)), name + "/tokenizer.json",
                                  "tokenizer_config.json", gen.empty() ? json() : json::parse(slurp(gen)));
}

std::string show(const std::string& s) { return json(s).dump(); }

std::string show(const Ids& ids) {
    std::string s;
    for (int32_t i : ids) s += std::to_string(i) + " ";
    return s;
}

// ---- every family against the dumps -------------------------------------------------------------

class Family : public ::testing::TestWithParam<std::string> {};

TEST_P(Family, IdsMatchTokenizers) {
    const std::string name = GetParam();
    auto tok = load_family(name);
    const auto& lines = test_lines();
    const auto ids = read_ids(kDir + name + "/ids.txt");
    const auto special = text_lines(kDir + name + "/special.txt");
    ASSERT_EQ(ids.size(), special.size());
    ASSERT_LE(ids.size(), lines.size());
    Fnv sum;
    int bad = 0;
    for (size_t n = 0; n < lines.size(); ++n) {
        const Ids got = tok->encode(lines[n], false);
        sum.line(got);
        if (n >= ids.size()) continue;
        if (got != ids[n] && ++bad <= 5)
            ADD_FAILURE() << name << " line " << n << " " << show(lines[n]) << "\n  want " << show(ids[n]) << "\n  got  " << show(got);
        const size_t bar = special[n].find('|');
        Ids want = decode_ids(special[n].substr(0, bar));
        want.insert(want.end(), ids[n].begin(), ids[n].end());
        const Ids post = decode_ids(special[n].substr(bar + 1));
        want.insert(want.end(), post.begin(), post.end());
        const Ids got_special = tok->encode(lines[n], true);
        if (got_special != want && ++bad <= 5)
            ADD_FAILURE() << name << " line " << n << " with special tokens\n  want " << show(want) << "\n  got  " << show(got_special);
    }
    EXPECT_EQ(bad, 0) << name << ": lines with other ids than tokenizers'";
    const json ck = json::parse(slurp(kDir + name + "/checksum.json"));
    EXPECT_EQ(ck["lines"].get<size_t>(), lines.size());
    EXPECT_EQ(sum.hex(), ck["fnv1a64"].get<std::string>()) << name << ": the ids of some line past the dumped ones differ";
}

TEST_P(Family, DecodeMatchesTokenizers) {
    const std::string name = GetParam();
    auto tok = load_family(name);
    const auto& lines = test_lines();
    const auto rows = text_lines(kDir + name + "/decode.jsonl");
    int bad = 0;
    for (size_t n = 0; n < rows.size(); ++n) {
        const json r = json::parse(rows[n]);
        const Ids plain = tok->encode(lines[n], false), full = tok->encode(lines[n], true);
        const std::string dp = r[0].is_null() ? lines[n] : r[0].get<std::string>();
        const std::string dps = r[1].is_null() ? dp : r[1].get<std::string>();
        std::vector<std::pair<std::string, std::string>> checks = {{dp, tok->decode(plain, false)}, {dps, tok->decode(plain, true)}};
        if (r.size() == 4) {
            checks.push_back({r[2].is_null() ? dp : r[2].get<std::string>(), tok->decode(full, false)});
            checks.push_back({r[3].is_null() ? dps : r[3].get<std::string>(), tok->decode(full, true)});
        }
        for (size_t k = 0; k < checks.size(); ++k)
            if (checks[k].first != checks[k].second && ++bad <= 5)
                ADD_FAILURE() << name << " line " << n << " decode #" << k << " of " << show(lines[n]) << "\n  want "
                              << show(checks[k].first) << "\n  got  " << show(checks[k].second);
    }
    EXPECT_EQ(bad, 0);
}

// Stream every line's ids: nothing that ends inside a UTF-8 character comes out, and the pieces
// add up to decode().
TEST_P(Family, StreamingDecodeAddsUpToDecode) {
    const std::string name = GetParam();
    auto tok = load_family(name);
    const auto& lines = test_lines();
    int bad = 0;
    for (size_t n = 0; n < 2000 && n < lines.size(); ++n) {
        const Ids ids = tok->encode(lines[n], true);
        for (bool skip : {false, true}) {
            HfDecodeStream st(tok, skip);
            std::string all;
            for (int32_t id : ids) {
                const std::string piece = st.step(id);
                if (!moe::hf::utf8_valid(piece) && ++bad <= 5) ADD_FAILURE() << name << " line " << n << ": a partial character";
                all += piece;
            }
            all += st.finish();
            const std::string want = tok->decode(ids, skip);
            if (all != want && ++bad <= 5)
                ADD_FAILURE() << name << " line " << n << " skip " << skip << "\n  decode " << show(want) << "\n  stream " << show(all);
        }
    }
    EXPECT_EQ(bad, 0);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Family,
                         ::testing::Values("qwen2", "llama3", "olmoe", "gpt2", "mixtral", "mistral_ms", "misc", "wordlevel"));

}  // namespace
