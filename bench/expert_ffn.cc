// One makemoe layer's expert forward (ops::moe_ffn_forward: 8 experts of 90-160 rows, C 128,
// F 512, ReLU; 1024 routed rows) timed on its own, with hot caches and with the caches flushed
// (64 MB written) before each call, to tell how much of the in-step expert time is cache misses.
//
//   expert_ffn [--threads T] [--precision fp32|bf16] [--reps R]
//
// Prints best and mean per call for each case; last line `ratio=X`: flushed mean / hot mean.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/gemm.h"
#include "ops/moe_ffn.h"

int main(int argc, char** argv) {
    int threads = 2, reps = 50;
    std::string precision = "fp32";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--precision" && i + 1 < argc) precision = argv[++i];
        else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "usage: expert_ffn [--threads T] [--precision fp32|bf16] [--reps R]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    moe::set_num_threads(threads);
    try {
        moe::kernels::set_gemm_precision(moe::kernels::parse_precision(precision.c_str(), "--precision"));
    } catch (const moe::error& e) {
        std::fprintf(stderr, "expert_ffn: %s\n", e.what());
        return 2;
    }
    const int64_t E = 8, C = 128, F = 512;
    const int rows[E] = {150, 90, 130, 128, 110, 160, 140, 116};  // uneven, as routing leaves them
    std::vector<int32_t> off(E + 1, 0);
    for (int e = 0; e < E; ++e) off[e + 1] = off[e] + rows[e];
    const int64_t R = off[E];
    std::mt19937 g(1);
    std::normal_distribution<float> d(0.f, 0.1f);
    std::vector<float> xe(R * C), w_up(E * F * C), w_down(E * C * F), ye(R * C), act(R * F), unused(R * F);
    std::vector<float> flush(16 << 20);
    for (float& v : xe) v = d(g);
    for (float& v : w_up) v = d(g);
    for (float& v : w_down) v = d(g);
    const double flops = 2.0 * 2 * R * C * F;
    double mean[2] = {0, 0};
    for (int flushed = 0; flushed < 2; ++flushed) {
        double best = 1e30, total = 0;
        for (int r = 0; r < reps; ++r) {
            if (flushed)
                for (size_t i = 0; i < flush.size(); i += 16) flush[i] += 1.f;
            const double t0 = moe::now_seconds();
            // ReLU: the gate and its buffers are not used (hg, hu, w_gate)
            moe::ops::moe_ffn_forward(ye.data(), unused.data(), unused.data(), act.data(), xe.data(), w_up.data(),
                                      w_up.data(), w_down.data(), {0, E, off.data()}, C, F,
                                      moe::ops::Activation::relu);
            const double t = moe::now_seconds() - t0;
            best = std::min(best, t), total += t;
        }
        mean[flushed] = total / reps;
        std::printf("%-8s %s, %d threads: best %7.1f us (%6.1f GFLOP/s), mean %7.1f us (%6.1f GFLOP/s)\n",
                    flushed ? "flushed" : "hot", precision.c_str(), moe::num_threads(), best * 1e6,
                    flops / best / 1e9, mean[flushed] * 1e6, flops / mean[flushed] / 1e9);
    }
    std::printf("ratio=%.3f\n", mean[1] / mean[0]);
    return 0;
}
