// The machine's arithmetic peak, measured: register-only loops of independent FMAs (no memory
// traffic), one copy per thread, run side by side.
//
//   fma_peak [--threads T] [--seconds S] [--json]
//
// fp32: vfmadd on 256-bit (AVX2) or 512-bit (AVX-512) registers, 12/16 independent accumulators
// (enough to cover the FMA latency on 2 pipes). bf16: vdpbf16ps (AVX512_BF16: 32 bf16 products
// summed into 16 fp32 lanes per instruction). Without bf16 dot-product instructions, bf16 GEMMs
// run on the fp32 FMAs, so the bf16 peak reported is the fp32 one (and says so).
// AMX (where Isa::amx is active: the CPU has the tiles and Linux granted their state): TDPBF16PS
// on tiles held in the tile registers (6 independent 16 x 16 accumulators, one A and one B tile
// loaded once): the AMX bf16 tile peak (16 x 16 x 32 products per instruction), and the int8 one
// (TDPBSSD, 16 x 16 x 64) from bench/int8_peak.h's loop, printed beside the others; on AMX hosts the bf16 GEMMs of
// --precision bf16 run on the tiles, so bf16_gflops (what bench/train_peak divides by) is the
// tile peak there.
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

#include "bench/int8_peak.h"
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

// A tile configuration in memory (GCC 12's _tile_loadconfig is only seen to read its first byte,
// so a configuration written just before the call could be dropped as dead stores).
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
    uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
constexpr TileConfig kTiles{};

// iters x 6 TDPBF16PS (16 x 16 x 32 multiply-adds each); tiles 0..5 accumulate, 6 = A, 7 = B
__attribute__((target("amx-tile,amx-bf16"))) double amx_bf16(long iters, float* sink) {
    alignas(64) static uint16_t ab[16 * 32];
    for (uint16_t& v : ab) v = 0x3400;  // 2^-23: sums stay finite
    alignas(64) float out[16 * 16];
    _tile_loadconfig(&kTiles);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_zero(4);
    _tile_zero(5);
    _tile_loadd(6, ab, 64);
    _tile_loadd(7, ab, 64);
    for (long it = 0; it < iters / 16; ++it) {
        _tile_dpbf16ps(0, 6, 7);
        _tile_dpbf16ps(1, 6, 7);
        _tile_dpbf16ps(2, 6, 7);
        _tile_dpbf16ps(3, 6, 7);
        _tile_dpbf16ps(4, 6, 7);
        _tile_dpbf16ps(5, 6, 7);
    }
    _tile_stored(0, out, 64);
    _tile_release();
    *sink = out[0];
    return (double)(iters / 16) * 6 * 16 * 16 * 32 * 2;
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
    // AMX tiles: the bf16 GEMMs' peak where they run on them
    const bool amx = moe::kernels::active_isa() >= moe::kernels::Isa::amx;
    double vdp_1 = bf16_1, vdp_t = bf16_t, int8_1 = 0, int8_t_ = 0;
    if (amx) {
        bf16_isa = "amx_bf16 (TDPBF16PS tiles)";
        bf16_1 = measure(amx_bf16, 1, seconds);
        bf16_t = threads > 1 ? measure(amx_bf16, threads, seconds) : bf16_1;
        // bench/int8_peak.h's tile loop (the int8 peak prefill_quant divides by)
        int8_1 = int8_peak::measure(1, seconds).gops;
        int8_t_ = threads > 1 ? int8_peak::measure(threads, seconds).gops : int8_1;
    }
    if (json) {
        std::printf("{\"threads\": %d, \"fp32_gflops_1thread\": %.1f, \"fp32_gflops\": %.1f, \"bf16_gflops_1thread\": %.1f, "
                    "\"bf16_gflops\": %.1f, \"native_bf16\": %s, \"fp32_isa\": \"%s\", \"bf16_isa\": \"%s\", "
                    "\"amx\": %s, \"vdpbf16ps_gflops\": %.1f, \"amx_int8_gops\": %.1f}\n",
                    threads, fp32_1, fp32_t, bf16_1, bf16_t, native_bf16 ? "true" : "false", fp32_isa.c_str(),
                    bf16_isa.c_str(), amx ? "true" : "false", vdp_t, int8_t_);
    } else {
        std::printf("host: %s\n", moe::kernels::host_description().c_str());
        std::printf("fp32 FMA peak: %7.1f GFLOP/s on 1 thread, %7.1f on %d threads   [%s]\n", fp32_1, fp32_t, threads,
                    fp32_isa.c_str());
        if (amx)
            std::printf("vdpbf16ps:     %7.1f GFLOP/s on 1 thread, %7.1f on %d threads   [avx512_bf16]\n", vdp_1, vdp_t,
                        threads);
        std::printf("bf16 peak:     %7.1f GFLOP/s on 1 thread, %7.1f on %d threads   [%s]\n", bf16_1, bf16_t, threads,
                    bf16_isa.c_str());
        if (amx)
            std::printf("int8 peak:     %7.1f GOP/s   on 1 thread, %7.1f on %d threads   [amx_int8 (TDPBSSD tiles)]\n",
                        int8_1, int8_t_, threads);
    }
    return 0;
}
