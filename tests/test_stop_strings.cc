// StopStrings (infer/stop_strings.h): the streaming cut of generated text at stop strings that
// `moe generate --stop` and moe::generate_text use. Text is released as soon as it can no longer
// be the start of a stop string; at the earliest stop string the text before it is released and
// the stream ends.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "infer/stop_strings.h"

using moe::StopStrings;

TEST(StopStrings, NoStopsReleaseEverythingAtOnce) {
    StopStrings s({});
    EXPECT_EQ(s.feed("ab"), "ab");
    EXPECT_EQ(s.feed(""), "");
    EXPECT_EQ(s.feed("c"), "c");
    EXPECT_FALSE(s.stopped());
    EXPECT_EQ(s.finish(), "");
}

TEST(StopStrings, StopInsideOnePiece) {
    StopStrings s({"XY"});
    EXPECT_EQ(s.feed("abXYcd"), "ab");
    EXPECT_TRUE(s.stopped());
    EXPECT_EQ(s.finish(), "");
}

TEST(StopStrings, StopSplitOverPiecesIsHeldBackThenDropped) {
    StopStrings s({"XYZ"});
    EXPECT_EQ(s.feed("abX"), "ab");
    EXPECT_EQ(s.feed("Y"), "");
    EXPECT_FALSE(s.stopped());
    EXPECT_EQ(s.feed("Zq"), "");
    EXPECT_TRUE(s.stopped());
    EXPECT_EQ(s.finish(), "");
}

TEST(StopStrings, FalseStartIsReleasedOnceItCannotMatch) {
    StopStrings s({"XYZ"});
    EXPECT_EQ(s.feed("aX"), "a");
    EXPECT_EQ(s.feed("Yb"), "XYb");
    EXPECT_FALSE(s.stopped());
}

TEST(StopStrings, HeldTailComesOutAtTheEnd) {
    StopStrings s({"XYZ"});
    EXPECT_EQ(s.feed("aXY"), "a");
    EXPECT_EQ(s.finish(), "XY");
    EXPECT_FALSE(s.stopped());
}

TEST(StopStrings, EarliestOfSeveralWinsWhateverTheirOrder) {
    for (const std::vector<std::string>& stops : {std::vector<std::string>{"cd", "b"}, {"b", "cd"}}) {
        StopStrings s(stops);
        EXPECT_EQ(s.feed("abcd"), "a");
        EXPECT_TRUE(s.stopped());
    }
    StopStrings s({"long stop", "op"});
    EXPECT_EQ(s.feed("a long st"), "a ");  // "long st" may become "long stop"
    EXPECT_EQ(s.feed("op"), "");            // it did: cut there, before the "op" inside it
    EXPECT_TRUE(s.stopped());
}

// Two stop strings completed by the same piece: the cut is before the one that starts first, not
// before the one found first (the CLI's loop once cut at "bc" and printed the "a" that starts "ab").
TEST(StopStrings, CutBeforeTheStopThatStartsFirst) {
    for (const std::vector<std::string>& stops : {std::vector<std::string>{"bc", "ab"}, {"ab", "bc"}}) {
        StopStrings s(stops);
        EXPECT_EQ(s.feed("aa"), "a");  // the second "a" may start "ab"
        EXPECT_EQ(s.feed("bc"), "");   // "abc": "ab" at 0, "bc" at 1
        EXPECT_TRUE(s.stopped());
    }
}

TEST(StopStrings, SelfOverlappingStop) {
    StopStrings s({"aab"});
    EXPECT_EQ(s.feed("aa"), "");  // could be the start of "aab"
    EXPECT_EQ(s.feed("a"), "a");  // "aaa": only the last "aa" can still start it
    EXPECT_EQ(s.feed("ab"), "a");  // "aaab" -> stop at index 1
    EXPECT_TRUE(s.stopped());
}

TEST(StopStrings, MultiByteText) {
    StopStrings s({"\xE2\x80\x94"});  // an em dash
    EXPECT_EQ(s.feed("caf\xC3\xA9 \xE2\x80"), "caf\xC3\xA9 ");
    EXPECT_EQ(s.feed("\x94 x"), "");
    EXPECT_TRUE(s.stopped());
}

TEST(StopStrings, EmptyStopIsAnError) {
    EXPECT_THROW(StopStrings({"x", ""}), moe::error);
    try {
        moe::check_stop_strings({""}, "--");
        FAIL() << "no error";
    } catch (const moe::error& e) {
        EXPECT_EQ(std::string(e.what()), "--stop: an empty stop string would stop at once");
    }
}

// Random texts over a small alphabet, cut into random pieces, against an oracle that sees the
// whole text so far after each piece: the output ends before the earliest stop string in the
// first prefix that holds one (the whole text when none does), and at no point is more than the
// longest stop string minus one character held back.
TEST(StopStrings, RandomPiecesMatchAnOracle) {
    std::mt19937 rng(7);
    auto word = [&](int n) {
        std::string w;
        for (int i = 0; i < n; ++i) w += "abc"[rng() % 3];
        return w;
    };
    for (int iter = 0; iter < 5000; ++iter) {
        std::vector<std::string> stops;
        size_t longest = 0;
        for (int k = 0, n = 1 + (int)(rng() % 3); k < n; ++k) {
            stops.push_back(word(1 + (int)(rng() % 4)));
            longest = std::max(longest, stops.back().size());
        }
        const std::string text = word((int)(rng() % 30));
        std::vector<std::string> pieces;
        for (size_t at = 0; at < text.size();) {
            const size_t n = std::min(text.size() - at, (size_t)(1 + rng() % 3));
            pieces.push_back(text.substr(at, n));
            at += n;
        }
        std::string expected = text, prefix;
        bool stop_expected = false;
        for (const auto& p : pieces) {
            prefix += p;
            size_t cut = std::string::npos;
            for (const auto& st : stops) cut = std::min(cut, prefix.find(st));
            if (cut != std::string::npos) {
                expected = prefix.substr(0, cut);
                stop_expected = true;
                break;
            }
        }

        StopStrings s(stops);
        std::string out, fed;
        for (const auto& p : pieces) {
            out += s.feed(p);
            fed += p;
            if (s.stopped()) break;
            ASSERT_LT(fed.size() - out.size(), longest) << text;
            ASSERT_EQ(fed.compare(0, out.size(), out), 0) << text;
        }
        out += s.finish();
        std::string what = "text '" + text + "', stops";
        for (const auto& st : stops) what += " '" + st + "'";
        SCOPED_TRACE(what);
        EXPECT_EQ(out, expected);
        EXPECT_EQ(s.stopped(), stop_expected);
    }
}
