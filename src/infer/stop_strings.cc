#include "infer/stop_strings.h"

#include <algorithm>

#include "core/error.h"

namespace moe {

void check_stop_strings(const std::vector<std::string>& stop, const char* prefix) {
    for (const auto& s : stop)
        if (s.empty()) fail(prefix, "stop: an empty stop string would stop at once");
}

StopStrings::StopStrings(std::vector<std::string> stops) : stops_(std::move(stops)) {
    check_stop_strings(stops_);
}

std::string StopStrings::feed(std::string_view piece) {
    MOE_ASSERT(!stopped_);
    pending_ += piece;
    // cut before the stop string that starts first (whatever the order of stops_: two may complete
    // in the same piece, and the one found first may start later)
    size_t cut = std::string::npos;
    for (const auto& st : stops_) cut = std::min(cut, pending_.find(st));
    if (cut != std::string::npos) {
        pending_.resize(cut);
        stopped_ = true;
    }
    // hold back the longest end of pending_ that is the start of a stop string
    size_t hold = 0;
    if (!stopped_)
        for (const auto& st : stops_)
            for (size_t k = std::min(st.size() - 1, pending_.size()); k > hold; --k)
                if (pending_.compare(pending_.size() - k, k, st, 0, k) == 0) {
                    hold = k;
                    break;
                }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
}

std::string StopStrings::finish() {
    std::string out;
    out.swap(pending_);
    return out;
}

}  // namespace moe
