#pragma once
// moe::error: the one exception type for user-facing problems (bad config, bad file, bad input).
// Its message names the file / field / value. The engine throws it (src/core/error.h builds the
// message with fail()); tools catch it once, print "moe: error: <what()>" and exit with status 1.
// Programmer bugs are not errors but MOE_ASSERT aborts (docs/conventions.md).
#include <stdexcept>
#include <string>

namespace moe {

class error : public std::runtime_error {
public:
    explicit error(const std::string& msg) : std::runtime_error(msg) {}
};

}  // namespace moe
