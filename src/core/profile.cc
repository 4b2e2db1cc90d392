#include "core/profile.h"

#include "core/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace moe {

namespace {
struct Entry {
    const char* name;
    double seconds;
    long calls;
};
std::vector<Entry>& table() {
    static std::vector<Entry> t;
    return t;
}
}  // namespace

static std::atomic<bool> g_profiling{false};

bool profile_enabled() { return g_profiling.load(std::memory_order_relaxed); }
void set_profiling(bool on) { g_profiling.store(on, std::memory_order_relaxed); }

double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

void profile_add(const char* name, double seconds) {
    for (auto& e : table())
        if (e.name == name || std::strcmp(e.name, name) == 0) {
            e.seconds += seconds;
            e.calls++;
            return;
        }
    table().push_back({name, seconds, 1});
}

void profile_reset() { table().clear(); }

void profile_report(FILE* out) {
    if (!profile_enabled() || table().empty()) return;
    std::vector<Entry> t = table();
    std::sort(t.begin(), t.end(), [](const Entry& a, const Entry& b) { return a.seconds > b.seconds; });
    double total = 0;
    // "region: part" names a part of another region (timed inside it): left out of the total
    for (auto& e : t)
        if (!std::strchr(e.name, ':')) total += e.seconds;
    std::fprintf(out, "\nprofile (MOE_PROFILE=1): wall time per region\n");
    std::fprintf(out, "%-32s %10s %8s %10s\n", "region", "seconds", "share", "calls");
    for (auto& e : t)
        std::fprintf(out, "%-32s %10.3f %7.1f%% %10ld\n", e.name, e.seconds,
                     total > 0 ? 100.0 * e.seconds / total : 0.0, e.calls);
    // each fork and join costs a few microseconds, and the slowest thread sets its end
    std::fprintf(out, "parallel regions forked by this process: %lld\n", (long long)parallel_regions());
}

}  // namespace moe
