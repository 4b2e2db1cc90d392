// AdamW's update loop, one thread, on an L1/L2-resident slice (the fused expert update sees its
// gradient hot) and on arrays larger than the caches: ns per element for the reference, AVX2 and
// AVX-512 variants side by side, best of R repetitions. The loop is bound by the divider (square
// root and division), not by memory, while the slice is hot.
//
//   adamw [--n ELEMENTS] [--reps R]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/cpu.h"

using namespace moe::kernels;

namespace {

using Fn = void (*)(float*, float*, float*, const float*, int64_t, const AdamWScalars&);

double ns_per_element(Fn fn, int64_t n, int reps) {
    std::vector<float> x(n), m(n), v(n), g(n);
    for (int64_t i = 0; i < n; ++i) {
        x[i] = std::sin(0.1f * (float)i), m[i] = 0.01f * std::cos(0.3f * (float)i);
        v[i] = 1e-3f * (1.1f + std::sin(0.7f * (float)i)), g[i] = 0.1f * std::sin(1.3f * (float)i);
    }
    const AdamWScalars s{0.99999f, 0.9f, 0.999f, 1e-3f, 0.5f, 1e-8f, 1.f};
    const int64_t inner = std::max<int64_t>(1, (int64_t)(2e7 / (double)n));  // ~20M elements a repetition
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < inner; ++i) fn(x.data(), m.data(), v.data(), g.data(), n, s);
        const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
        best = std::min(best, ns / ((double)inner * (double)n));
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    int64_t n_hot = 64 * 1024;  // one makemoe expert matrix
    int reps = 5;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--n" && i + 1 < argc) n_hot = std::atoll(argv[++i]);
        else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "usage: adamw [--n ELEMENTS] [--reps R]\n");
            return 2;
        }
    }
    const int64_t n_cold = 16 * 1024 * 1024;  // 4 x 64 MB
    std::printf("AdamW update, 1 thread, best of %d, ns per element\n", reps);
    std::printf("%-10s %12s %12s\n", "variant", "hot", "cold");
    const bool avx2 = active_isa() >= Isa::avx2, avx512 = active_isa() >= Isa::avx512;
    const double ref_hot = ns_per_element(adamw_ref, n_hot, reps);
    std::printf("%-10s %12.3f %12.3f\n", "ref", ref_hot, ns_per_element(adamw_ref, n_cold, 2));
    double best_hot = ref_hot;
    if (avx2) {
        const double h = ns_per_element(adamw_avx2, n_hot, reps);
        std::printf("%-10s %12.3f %12.3f\n", "avx2", h, ns_per_element(adamw_avx2, n_cold, 2));
        best_hot = std::min(best_hot, h);
    }
    if (avx512) {
        const double h = ns_per_element(adamw_avx512, n_hot, reps);
        std::printf("%-10s %12.3f %12.3f\n", "avx512", h, ns_per_element(adamw_avx512, n_cold, 2));
        best_hot = std::min(best_hot, h);
    }
    std::printf("ratio=%.2f  (reference over the fastest variant, hot)\n", ref_hot / best_hot);
}
