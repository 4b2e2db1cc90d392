// Short-context attention, side by side: the fused per-head kernels (src/kernels/attention_small.cc)
// against the per-head GEMM path (ops::attention_forward_gemm / attention_backward_gemm), forward
// and backward, alternating in one run, median of R repetitions each (the training ops pick the
// fused kernels only where kernels::attention_small_preferred says they win).
//
//   attention_small [--threads T] [--reps R] [--B B --T T --H H --D D]   (default: makemoe's 16 32 8 16)
//
// Last line: `ratio=X`, GEMM-path time over fused time (forward + backward).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/attention_small.h"
#include "ops/attention.h"

namespace {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    int threads = 0, reps = 200;
    int64_t B = 16, T = 32, H = 8, D = 16;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) {
            std::fprintf(stderr, "attention_small: %s needs a value\n", a.c_str());
            return 2;
        }
        const long long v = std::atoll(argv[++i]);
        if (a == "--threads") threads = (int)v;
        else if (a == "--reps") reps = (int)v;
        else if (a == "--B") B = v;
        else if (a == "--T") T = v;
        else if (a == "--H") H = v;
        else if (a == "--D") D = v;
        else {
            std::fprintf(stderr, "usage: attention_small [--threads T] [--reps R] [--B B --T T --H H --D D]\n");
            return 2;
        }
    }
    if (!moe::kernels::attention_small_supported(T, D)) {
        std::fprintf(stderr, "attention_small: the fused kernels do not run here for T=%lld D=%lld\n", (long long)T,
                     (long long)D);
        return 1;
    }
    moe::set_num_threads(threads);
    const int64_t N = B * T;
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto randn = [&](int64_t n) {
        std::vector<float> v(n);
        for (float& x : v) x = nd(rng);
        return v;
    };
    auto q = randn(N * H * D), k = randn(N * H * D), v = randn(N * H * D), g = randn(N * H * D);
    std::vector<float> out(N * H * D), att(B * H * T * T), datt(B * H * T * T), dq(N * H * D), dk(N * H * D),
        dv(N * H * D);
    std::vector<double> ff, fg, bf, bg;
    for (int r = 0; r < reps; ++r) {
        double t0 = moe::now_seconds();
        moe::ops::attention_forward_fused(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, H, D);
        ff.push_back(moe::now_seconds() - t0);
        t0 = moe::now_seconds();
        moe::ops::attention_backward_fused(dq.data(), dk.data(), dv.data(), datt.data(), g.data(), q.data(), k.data(),
                                     v.data(), att.data(), B, T, H, H, D);
        bf.push_back(moe::now_seconds() - t0);
        t0 = moe::now_seconds();
        moe::ops::attention_forward_gemm(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, H, D);
        fg.push_back(moe::now_seconds() - t0);
        t0 = moe::now_seconds();
        moe::ops::attention_backward_gemm(dq.data(), dk.data(), dv.data(), datt.data(), g.data(), q.data(),
                                          k.data(), v.data(), att.data(), B, T, H, H, D);
        bg.push_back(moe::now_seconds() - t0);
    }
    std::printf("attention B=%lld T=%lld H=%lld D=%lld, %d threads, median of %d (microseconds)\n", (long long)B,
                (long long)T, (long long)H, (long long)D, moe::num_threads(), reps);
    std::printf("%-10s %10s %10s %8s\n", "", "fused", "gemm", "ratio");
    std::printf("%-10s %10.1f %10.1f %8.2f\n", "forward", 1e6 * median(ff), 1e6 * median(fg), median(fg) / median(ff));
    std::printf("%-10s %10.1f %10.1f %8.2f\n", "backward", 1e6 * median(bf), 1e6 * median(bg), median(bg) / median(bf));
    std::printf("ratio=%.3f\n", (median(fg) + median(bg)) / (median(ff) + median(bf)));
    return 0;
}
