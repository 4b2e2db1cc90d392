// The machine's arithmetic peak, measured: register-only loops of independent FMAs (no memory
// traffic), one copy per thread, run side by side.
//
//   fma_peak [--threads T] [--seconds S] [--json]
//
// fp32: vfmadd on 256-bit (AVX2) or 512-bit (AVX-512) registers, 12/16 independent accumulators
// (enough to cover the FMA latency on 2 pipes). bf16: vdpbf16ps (AVX512_BF16: 32 bf16 products
// summed into 16 fp32 lanes per instruction). Without bf16 dot-product instructions, bf16 GEMMs
// run on the fp32 FMAs, so the bf16 peak reported is the fp32 one (and says so).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu.h"

using moe::kernels::cpu_features;

namespace {

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr long kInner = 1 << 20;

// Each returns FLOPs done; the result is stored to `sink` so the loop is not removed.
__attribute__((target("avx2,fma"))) double fp32_avx2(long iters, float* sink) {
    __m256 a[12];
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
    }
    __m256 s = a[0];
    for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
    *sink = _mm256_cvtss_f32(s);
    return (double)iters * 12 * 8 * 2;
}

// The 16 lanes' sum (GCC 12's _mm512_reduce_add_ps trips its own -Wuninitialized, bug 105593).
__attribute__((target("avx512f"))) float sum_lanes(__m512 s) {
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, s);
    float total = 0.f;
    for (float v : lanes) total += v;
    return total;
}

__attribute__((target("avx512f"))) double fp32_avx512(long iters, float* sink) {
    __m512 a[16];
    const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
    }
    __m512 s = a[0];
    for (int i = 1; i < 16; ++i) s = _mm512_add_ps(s, a[i]);
    *sink = sum_lanes(s);
    return (double)iters * 16 * 16 * 2;
}

__attribute__((target("avx512f,avx512bf16"))) double bf16_avx512(long iters, float* sink) {
    __m512 a[16];
    const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3400);
    for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) a[i] = _mm512_dpbf16_ps(a[i], x, y);
    }
    __m512 s = a[0];
    for (int i = 1; i < 16; ++i) s = _mm512_add_ps(s, a[i]);
    *sink = sum_lanes(s);
    return (double)iters * 16 * 32 * 2;
}

using Loop = double (*)(long, float*);

// GFLOP/s summed over `threads` copies run at once for about `seconds`
double measure_once(Loop loop, int threads, double seconds) {
    float sink[64];
    loop(kInner / 16, sink);  // warm up (clock ramp)
    std::vector<double> flops(threads, 0), secs(threads, 0);
    std::vector<std::thread> pool;
    std::atomic<int> ready{0};
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            ready++;
            while (ready.load() < threads) {
            }
            const double t0 = now();
            double f = 0;
            do f += loop(kInner, sink + t);
            while (now() - t0 < seconds);
            flops[t] = f;
            secs[t] = now() - t0;
        });
    for (auto& th : pool) th.join();
    double gf = 0;
    for (int t = 0; t < threads; ++t) gf += flops[t] / secs[t] / 1e9;
    return gf;
}

// the best of three: a peak is what the machine can do, and a run can lose its core for a while
double measure(Loop loop, int threads, double seconds) {
    double best = 0;
    for (int r = 0; r < 3; ++r) best = std::max(best, measure_once(loop, threads, seconds / 3));
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    int threads = (int)std::thread::hardware_concurrency();
    double seconds = 1.0;
    bool json = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--seconds" && i + 1 < argc) seconds = std::atof(argv[++i]);
        else if (a == "--json") json = true;
        else {
            std::fprintf(stderr, "usage: fma_peak [--threads T] [--seconds S] [--json]\n");
            return 2;
        }
    }
    if (threads < 1) threads = 1;
    const auto& f = cpu_features();
    Loop fp32 = nullptr;
    std::string fp32_isa, bf16_isa;
    if (f.avx512f) fp32 = fp32_avx512, fp32_isa = "avx512 (512-bit vfmadd231ps)";
    else if (f.avx2 && f.fma) fp32 = fp32_avx2, fp32_isa = "avx2 (256-bit vfmadd231ps)";
    if (!fp32) {
        std::fprintf(stderr, "fma_peak: this CPU has neither AVX2+FMA nor AVX-512\n");
        return 1;
    }
    const double fp32_1 = measure(fp32, 1, seconds), fp32_t = threads > 1 ? measure(fp32, threads, seconds) : fp32_1;
    double bf16_1 = fp32_1, bf16_t = fp32_t;
    bool native_bf16 = false;
    if (f.avx512_bf16) {
        native_bf16 = true;
        bf16_isa = "avx512_bf16 (vdpbf16ps)";
        bf16_1 = measure(bf16_avx512, 1, seconds);
        bf16_t = threads > 1 ? measure(bf16_avx512, threads, seconds) : bf16_1;
    } else {
        bf16_isa = "none: no bf16 dot-product instructions, bf16 GEMMs run on the fp32 FMAs";
    }
    if (json) {
        std::printf("{\"threads\": %d, \"fp32_gflops_1thread\": %.1f, \"fp32_gflops\": %.1f, \"bf16_gflops_1thread\": %.1f, "
                    "\"bf16_gflops\": %.1f, \"native_bf16\": %s, \"fp32_isa\": \"%s\"}\n",
                    threads, fp32_1, fp32_t, bf16_1, bf16_t, native_bf16 ? "true" : "false", fp32_isa.c_str());
    } else {
        std::printf("fp32 FMA peak: %7.1f GFLOP/s on 1 thread, %7.1f on %d threads   [%s]\n", fp32_1, fp32_t, threads,
                    fp32_isa.c_str());
        std::printf("bf16 peak:     %7.1f GFLOP/s on 1 thread, %7.1f on %d threads   [%s]\n", bf16_1, bf16_t, threads,
                    bf16_isa.c_str());
    }
    return 0;
}
