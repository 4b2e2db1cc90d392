// Tokenizers: byte-level BPE training (merges worked out by hand on small texts, the tie-break),
// the fast encoder against a slow reference twin that applies every merge in learned order, byte
// round trips, JSON round trips and corrupt merge lists; the trainer's `bpe` tokenizer end to end.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cli_util.h"
#include "core/error.h"
#include "io/tokenizer.h"

namespace {

using moe::Tokenizer;
using namespace moe_test;

std::vector<std::string> pieces(const std::string& text) {
    std::vector<std::string> out;
    for (auto [b, e] : moe::bpe_pretokenize(text)) out.push_back(text.substr(b, e - b));
    return out;
}

std::vector<std::pair<int32_t, int32_t>> merges_of(const Tokenizer& t) {
    std::vector<std::pair<int32_t, int32_t>> m;
    const nlohmann::json j = t.to_json();  // kept alive: the loop below walks into it
    for (const auto& p : j["merges"]) m.push_back({p[0].get<int32_t>(), p[1].get<int32_t>()});
    return m;
}

// Reference twin of Tokenizer::encode for BPE: every merge, in the order learned, replaces its pair
// left to right in every pre-token (what training did to the corpus).
std::vector<int32_t> encode_ref(const Tokenizer& t, const std::string& text) {
    const auto merges = merges_of(t);
    std::vector<int32_t> out;
    for (const std::string& p : pieces(text)) {
        std::vector<int32_t> sym;
        for (unsigned char c : p) sym.push_back(c);
        for (size_t m = 0; m < merges.size(); ++m) {
            std::vector<int32_t> next;
            for (size_t i = 0; i < sym.size(); ++i) {
                if (i + 1 < sym.size() && sym[i] == merges[m].first && sym[i + 1] == merges[m].second) {
                    next.push_back(256 + (int32_t)m);
                    ++i;
                } else {
                    next.push_back(sym[i]);
                }
            }
            sym.swap(next);
        }
        out.insert(out.end(), sym.begin(), sym.end());
    }
    return out;
}

std::string shakespeare(size_t bytes) {
    std::string s = read_file(std::string(MOE_TEST_DIR) + "/../data/tinyshakespeare.txt");
    EXPECT_GT(s.size(), bytes);
    return s.substr(0, bytes);
}

TEST(Bpe, PretokenizeKeepsALeadingSpaceWithItsWord) {
    EXPECT_EQ(pieces("hello world  foo\n\nbar, baz!"),
              (std::vector<std::string>{"hello", " world", " ", " foo", "\n\n", "bar", ",", " baz", "!"}));
    EXPECT_EQ(pieces("  \n"), (std::vector<std::string>{"  \n"}));
    EXPECT_EQ(pieces("a1b"), (std::vector<std::string>{"a", "1", "b"}));
    EXPECT_EQ(pieces(""), std::vector<std::string>{});
    std::string joined;
    const std::string text = "don't stop,  me\tnow 42x  ";
    for (const auto& p : pieces(text)) joined += p;
    EXPECT_EQ(joined, text) << "pieces cover the text";
}

TEST(Bpe, MergesWorkedOutByHand) {
    // pre-tokens "ab", " ab" x2, " cd": (a,b) occurs 3 times, then (' ', ab) twice; every other
    // pair once, so a third merge cannot be learned
    const std::string text = "ab ab ab cd";
    Tokenizer t = Tokenizer::bpe_train(text, 258, "test");
    EXPECT_EQ(t.vocab_size(), 258);
    EXPECT_EQ(merges_of(t), (std::vector<std::pair<int32_t, int32_t>>{{'a', 'b'}, {' ', 256}}));
    EXPECT_EQ(t.encode("ab ab cd", "x"), (std::vector<int32_t>{256, 257, ' ', 'c', 'd'}));
    EXPECT_EQ(t.decode_one(257), " ab");
    // an id outside the vocabulary (a request can send any) is an error naming it, not an abort
    EXPECT_THROW(t.decode_one(258), moe::error);
    EXPECT_THROW(t.decode_one(-1), moe::error);
    try {
        Tokenizer::bpe_train(text, 259, "corpus.txt");
        FAIL() << "expected an error";
    } catch (const moe::error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("corpus.txt"), std::string::npos) << m;
        EXPECT_NE(m.find("only 258"), std::string::npos) << m;
        EXPECT_NE(m.find("259"), std::string::npos) << m;
    }
    EXPECT_THROW(Tokenizer::bpe_train(text, 256, "t"), moe::error);
}

TEST(Bpe, TiesGoToTheSmallerPair) {
    // (x,y), (' ',a) and (a,b) each occur twice; (' ', 'a') = (32, 97) is the smallest
    Tokenizer t = Tokenizer::bpe_train("xy xy ab ab", 257, "test");
    EXPECT_EQ(merges_of(t), (std::vector<std::pair<int32_t, int32_t>>{{' ', 'a'}}));
    // and a merge's count includes overlapping occurrences only once: "aaa" holds (a,a) once
    Tokenizer u = Tokenizer::bpe_train("aaa aaa", 257, "test");
    EXPECT_EQ(merges_of(u), (std::vector<std::pair<int32_t, int32_t>>{{'a', 'a'}}));
    EXPECT_EQ(u.encode("aaa", "x"), (std::vector<int32_t>{256, 'a'}));
}

TEST(Bpe, FastEncoderMatchesTheReferenceTwin) {
    const std::string train = shakespeare(200000);
    Tokenizer t = Tokenizer::bpe_train(train, 1024, "shakespeare");
    EXPECT_EQ(t.vocab_size(), 1024);
    const std::string held_out = read_file(std::string(MOE_TEST_DIR) + "/../data/tinyshakespeare.txt").substr(600000, 20000);
    for (const std::string& s : {train.substr(0, 30000), held_out, std::string("Zebra 12345 !!?? \n\n\t  x")}) {
        const std::vector<int32_t> ids = t.encode(s, "text");
        EXPECT_EQ(ids, encode_ref(t, s));
        EXPECT_EQ(t.decode(ids), s);
        EXPECT_LT(ids.size(), s.size()) << "BPE compresses text like its training text";
    }
    // every merge is used somewhere in the training text it was learned from
    std::vector<int> used(t.vocab_size(), 0);
    for (int32_t id : t.encode(train, "train")) used[id] = 1;
    int unused = 0;
    for (int64_t id = 256; id < t.vocab_size(); ++id) unused += !used[id];
    EXPECT_LT(unused, 64) << "merges learned but (almost) never produced by the encoder";
}

TEST(Bpe, AnyBytesRoundTrip) {
    Tokenizer t = Tokenizer::bpe_train(shakespeare(50000), 512, "shakespeare");
    std::mt19937 rng(7);
    for (int trial = 0; trial < 50; ++trial) {
        std::string s(rng() % 300, '\0');
        for (auto& c : s) c = (char)(trial % 2 ? rng() % 256 : " aeinrst\n.,'"[rng() % 12]);  // invalid UTF-8 too
        const std::vector<int32_t> ids = t.encode(s, "bytes");
        for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < t.vocab_size());
        EXPECT_EQ(t.decode(ids), s);
        EXPECT_EQ(ids, encode_ref(t, s));
    }
}

TEST(Bpe, JsonRoundTripAndCorruptMerges) {
    Tokenizer t = Tokenizer::bpe_train(shakespeare(50000), 400, "shakespeare");
    const nlohmann::json j = t.to_json();
    EXPECT_EQ(j["type"], "bpe");
    Tokenizer u = Tokenizer::from_json(j, "ck");
    EXPECT_EQ(u.vocab_size(), 400);
    EXPECT_EQ(u.kind(), Tokenizer::Kind::bpe);
    const std::string s = shakespeare(5000);
    EXPECT_EQ(u.encode(s, "s"), t.encode(s, "s"));

    auto expect_error = [](nlohmann::json bad, const std::string& needle) {
        try {
            Tokenizer::from_json(bad, "ck/checkpoint.bin");
            ADD_FAILURE() << "expected an error for " << bad.dump().substr(0, 80);
        } catch (const moe::error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("ck/checkpoint.bin"), std::string::npos) << e.what();
        }
    };
    nlohmann::json bad = j;
    bad["merges"][3] = {300, 10};  // id 300 is learned after merge 3
    expect_error(bad, "merge 3");
    bad = j;
    bad["merges"][0] = {-1, 10};
    expect_error(bad, "merge 0");
    bad = j;
    bad["merges"][5] = {1, 2, 3};
    expect_error(bad, "merge 5");
    bad = j;
    bad.erase("merges");
    expect_error(bad, "merges");
    // a char tokenizer's code points: integers in [0, 0x10FFFF] (a float went through nlohmann's
    // float-to-int conversion, undefined behaviour)
    const nlohmann::json c = Tokenizer::char_level("ab\n", "t").to_json();
    for (const nlohmann::json& x : {nlohmann::json(3.3e59), nlohmann::json(-1), nlohmann::json(0x110000), nlohmann::json("a")}) {
        nlohmann::json badc = c;
        badc["chars"][1] = x;
        expect_error(badc, "char tokenizer code point");
    }
}

class BpeCli : public CliTest {};

TEST_F(BpeCli, TrainGenerateAndResumeWithABpeVocabulary) {
    json c = tiny_config();
    c["train"]["tokenizer"] = "bpe";
    c["model"]["vocab_size"] = 300;
    write_config("bpe.json", c);
    RunResult r = moe("train --config bpe.json --out ck --threads 1 --no-sample");
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_NE(r.out.find("vocab 300 (bpe)"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("bpe: learned 44 merges"), std::string::npos) << r.out;
    RunResult g = moe("generate --checkpoint ck --prompt " + q("the quick") + " --max-tokens 8 --temperature 0");
    ASSERT_EQ(g.code(), 0) << g.describe();
    EXPECT_EQ(g.out.rfind("the quick", 0), 0u) << g.out;
    // bytes outside the corpus still encode (byte fallback), unlike the char tokenizer
    RunResult u = moe("generate --checkpoint ck --prompt " + q("Zürich") + " --max-tokens 2 --temperature 0");
    EXPECT_EQ(u.code(), 0) << u.describe();
    // the routing picture labels each BPE token, also one that ends inside a UTF-8 character
    RunResult m = moe("routing --checkpoint ck --text " + q("Zürich the quick") + " --out r.png");
    EXPECT_EQ(m.code(), 0) << m.describe();
    EXPECT_TRUE(fs::exists(path("r.png")));
    c["train"]["steps"] = 8;
    write_config("bpe8.json", c);
    RunResult res = moe("train --config bpe8.json --resume ck --threads 1 --no-sample");
    EXPECT_EQ(res.code(), 0) << res.describe();

    c["model"]["vocab_size"] = 5000;  // more than the tiny corpus can learn
    write_config("big.json", c);
    expect_clean_error(moe("train --config big.json --out ck2 --threads 1"), {"data.txt", "5000", "vocab_size"});
    c["model"]["vocab_size"] = 100;  // fewer than the 256 byte tokens
    write_config("small.json", c);
    expect_clean_error(moe("train --config small.json --out ck4 --threads 1"), {"small.json", "model.vocab_size", "100"});
    c["model"].erase("vocab_size");  // the default vocabulary to learn
    write_config("default.json", c);
    RunResult p = moe("params --config default.json --json");
    ASSERT_EQ(p.code(), 0) << p.describe();
    c["train"]["tokenizer"] = "wordpiece";
    write_config("bad.json", c);
    expect_clean_error(moe("train --config bad.json --out ck3 --threads 1"), {"train.tokenizer", "wordpiece"});
}

}  // namespace
