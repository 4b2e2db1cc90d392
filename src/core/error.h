#pragma once
// Two error tiers (docs/conventions.md):
//  - MOE_ASSERT: programmer bugs. Prints file:line and aborts.
//  - moe::error (include/moe/error.h): user-facing problems (bad config, bad file, bad input). The
//    message names the file/field/value. Caught only at the CLI / server boundary.
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

#include <moe/error.h>  // class moe::error, part of the public API

namespace moe {

namespace detail {
inline void cat(std::ostringstream&) {}
template <class A, class... R>
void cat(std::ostringstream& os, const A& a, const R&... r) {
    os << a;
    cat(os, r...);
}
}  // namespace detail

// Builds a message from pieces: fail("config ", path, ": field 'n_head' = ", v, " ...")
template <class... A>
[[noreturn]] void fail(const A&... a) {
    std::ostringstream os;
    detail::cat(os, a...);
    throw error(os.str());
}

template <class... A>
std::string str(const A&... a) {
    std::ostringstream os;
    detail::cat(os, a...);
    return os.str();
}

}  // namespace moe

#define MOE_ASSERT(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            std::fprintf(stderr, "%s:%d: internal assertion failed: %s\n", __FILE__, __LINE__, \
                         #cond);                                                           \
            std::abort();                                                                  \
        }                                                                                  \
    } while (0)
