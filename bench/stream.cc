// DRAM bandwidth, STREAM style: copy b -> a (counted as 2 x bytes: one read, one write, as STREAM
// does) and a read-only sum (what a memory-bound decode step does to its weights), over arrays far
// larger than the caches, on T threads (moe::parallel_for, the same pool the engine uses). The
// read loop is kernels::read_sum, which `moe bench --read-probe` also runs between decode steps.
//
//   stream [--threads T] [--mb SIZE_PER_ARRAY] [--reps R] [--json]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/cpu.h"
#include "kernels/read_probe.h"

int main(int argc, char** argv) {
    int threads = 0, reps = 5;
    int64_t mb = 512;
    bool json = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--mb" && i + 1 < argc) mb = std::atoll(argv[++i]);
        else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (a == "--json") json = true;
        else {
            std::fprintf(stderr, "usage: stream [--threads T] [--mb SIZE_PER_ARRAY] [--reps R] [--json]\n");
            return 2;
        }
    }
    moe::set_num_threads(threads);
    const int64_t n = mb * (1 << 20) / 4;
    std::vector<float> a(n), b(n);
    const int64_t grain = 1 << 16;
    moe::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {  // first touch on the threads that use it
        for (int64_t i = i0; i < i1; ++i) a[i] = 0.f, b[i] = 1.f;
    });
    double best_copy = 1e30, best_read = 1e30, sink = 0;
    for (int r = 0; r < reps; ++r) {
        double t0 = moe::now_seconds();
        moe::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
            std::memcpy(a.data() + i0, b.data() + i0, (i1 - i0) * sizeof(float));
        });
        best_copy = std::min(best_copy, moe::now_seconds() - t0);
        std::atomic<double> part{0.0};  // one add per thread's chunk (the sums only keep the reads alive)
        t0 = moe::now_seconds();
        moe::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
            part.fetch_add(moe::kernels::read_sum(b.data() + i0, i1 - i0), std::memory_order_relaxed);
        });
        best_read = std::min(best_read, moe::now_seconds() - t0);
        sink += part.load();
    }
    const double bytes = (double)n * 4;
    const double copy_gbs = 2 * bytes / best_copy / 1e9, read_gbs = bytes / best_read / 1e9;
    if (json)
        std::printf("{\"threads\": %d, \"mb\": %lld, \"copy_gbytes_per_sec\": %.2f, \"read_gbytes_per_sec\": %.2f, "
                    "\"host\": \"%s\"}\n",
                    moe::num_threads(), (long long)mb, copy_gbs, read_gbs, moe::kernels::host_description().c_str());
    else
        std::printf("DRAM bandwidth, %d threads, %lld MB arrays: copy %.1f GB/s (read + write), read-only %.1f GB/s%s\n",
                    moe::num_threads(), (long long)mb, copy_gbs, read_gbs, sink == 42 ? " " : "");
    return 0;
}
