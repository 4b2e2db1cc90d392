#pragma once
// Stop strings for streamed generation: text is released as soon as it can no longer be the start
// of a stop string, and at the first occurrence of one the text before it is released and the
// stream ends. Feed it each token's text (Tokenizer::decode_one) as it is sampled.
#include <string>
#include <string_view>
#include <vector>

#include <moe/moe.h>  // check_stop_strings

namespace moe {

class StopStrings {
public:
    // Throws moe::error for an empty stop string (check_stop_strings). No stop strings: every
    // piece is released at once.
    explicit StopStrings(std::vector<std::string> stops);

    // Adds the next piece of text; returns the text now safe to release (possibly empty). Once
    // a stop string has appeared, stopped() is true and what it returns ends before the
    // earliest one; feed must not be called again.
    std::string feed(std::string_view piece);
    bool stopped() const { return stopped_; }

    // The text still held back (the end of the stream: a prefix of a stop string that did not
    // complete); empty after a stop.
    std::string finish();

private:
    std::vector<std::string> stops_;
    std::string pending_;  // text not yet released
    bool stopped_ = false;
};

}  // namespace moe
