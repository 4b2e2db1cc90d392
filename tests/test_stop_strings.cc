// StopStrings (infer/stop_strings.h): the streaming cut of generated text at stop strings that
// `moe generate --stop` and moe::generate_text use. Text is released as soon as it can no longer
// be the start of a stop string; at the earliest stop string the text before it is released and
// the stream ends.
#include <gtest/gtest.h>

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
