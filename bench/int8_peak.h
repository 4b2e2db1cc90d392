#pragma once
// The machine's int8 dot-product peak, measured: register-only loops of independent multiply-adds
// (no memory traffic), one copy per thread, run side by side (the best of three runs). Shared by
// bench/int8_peak.cc and bench/prefill_quant.cc, which divides its GEMM rate by it.
//   AMX-INT8: TDPBSSD on full tiles (16 x 64 bytes times 16 x 64 bytes: 16 x 16 x 64 = 16384 s8 x s8
//   products into 16 x 16 int32 per instruction), four independent accumulator tiles (C0-C3 over
//   two A and two B tiles, the 2 x 2 blocking a GEMM uses), nothing loaded or stored in the loop.
//   AVX-512 VNNI: vpdpbusd on 512-bit registers, 64 u8 x s8 products summed into 16 int32 per
//   instruction, 16 independent accumulators. AVX2: vpmaddubsw + vpmaddwd + vpaddd, 32 products per
//   triple, 12 accumulators (what moe's and ggml's AVX2 int8 kernels issue).
// Rates count one multiply-add as 2 operations (GOP/s), as FLOP/s count an FMA.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu.h"

namespace int8_peak {

inline double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
// CPU time of the calling thread: on a host shared with other processes, the rate per second the
// thread actually ran (time slices lost to others not counted). Used when cpu_time is set.
inline double thread_cpu() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
inline bool cpu_time = false;

constexpr long kInner = 1 << 18;

__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline double vnni512(long iters, int* sink) {
    __m512i a[16];
    const __m512i x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(-1);
    for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_epi32(i);
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
    }
    __m512i s = a[0];
    for (int i = 1; i < 16; ++i) s = _mm512_add_epi32(s, a[i]);
    alignas(64) int l[16];
    _mm512_store_si512(l, s);
    *sink = l[0];
    return (double)iters * 16 * 64 * 2;
}

struct alignas(64) AmxConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

__attribute__((target("amx-tile,amx-int8"))) inline double amx_int8(long iters, int* sink) {
    AmxConfig c;
    for (int t = 0; t < 8; ++t) c.rows[t] = 16, c.colsb[t] = 64;
    alignas(64) int8_t buf[1024];
    for (int i = 0; i < 1024; ++i) buf[i] = (int8_t)(i % 7 - 3);
    asm volatile("" ::: "memory");
    _tile_loadconfig(&c);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, buf, 64);
    _tile_loadd(5, buf, 64);
    _tile_loadd(6, buf, 64);
    _tile_loadd(7, buf, 64);
    iters /= 16;  // a tile product is 256 times a vpdpbusd's work
    for (long it = 0; it < iters; ++it) {
        _tile_dpbssd(0, 4, 6);
        _tile_dpbssd(1, 4, 7);
        _tile_dpbssd(2, 5, 6);
        _tile_dpbssd(3, 5, 7);
    }
    alignas(64) int32_t out[256];
    _tile_stored(0, out, 64);
    _tile_release();
    *sink = out[0];
    return (double)iters * 4 * 16 * 16 * 64 * 2;
}

__attribute__((target("avx2"))) inline double avx2_maddubs(long iters, int* sink) {
    __m256i a[12];
    const __m256i x = _mm256_set1_epi8(1), y = _mm256_set1_epi8(-1), ones = _mm256_set1_epi16(1);
    for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_epi32(i);
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), ones));
    }
    __m256i s = a[0];
    for (int i = 1; i < 12; ++i) s = _mm256_add_epi32(s, a[i]);
    *sink = _mm256_extract_epi32(s, 0);
    return (double)iters * 12 * 32 * 2;
}

using Loop = double (*)(long, int*);

inline double measure_once(Loop loop, int threads, double seconds) {
    int sink[64];
    loop(kInner / 16, sink);  // warm up
    std::vector<double> ops(threads, 0), secs(threads, 0);
    std::vector<std::thread> pool;
    std::atomic<int> ready{0};
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            ready++;
            while (ready.load() < threads) {
            }
            const double t0 = now(), c0 = thread_cpu();
            double f = 0;
            do f += loop(kInner, sink + t);
            while (now() - t0 < seconds);
            ops[t] = f, secs[t] = cpu_time ? thread_cpu() - c0 : now() - t0;
        });
    for (auto& th : pool) th.join();
    double g = 0;
    for (int t = 0; t < threads; ++t) g += ops[t] / secs[t] / 1e9;
    return g;
}

struct Peak {
    double gops = 0;  // int8 GOP/s (2 per multiply-add) over all threads
    std::string isa;  // which instructions
};

enum class Which { best, vnni, avx2 };

// The best int8 dot instruction the CPU has (AMX-INT8 where active_isa() allows it, then AVX-512
// VNNI, then AVX2), or the one asked for: vnni = the best without AMX, avx2 = the AVX2 loop
inline Peak measure(int threads, double seconds, Which which = Which::best) {
    const auto& f = moe::kernels::cpu_features();
    Peak p;
    Loop loop = nullptr;
    const bool avx2_only = which == Which::avx2;
    if (which == Which::best && moe::kernels::active_isa() >= moe::kernels::Isa::amx && f.amx_int8) {
        loop = amx_int8, p.isa = "amx_int8 (TDPBSSD tiles 16x16x64)";
    } else if (!avx2_only && f.avx512f && f.avx512bw && f.avx512_vnni) {
        loop = vnni512, p.isa = "avx512_vnni (512-bit vpdpbusd)";
    } else if (f.avx2) {
        loop = avx2_maddubs, p.isa = "avx2 (256-bit vpmaddubsw + vpmaddwd + vpaddd)";
    } else {
        return p;
    }
    for (int r = 0; r < 3; ++r) p.gops = std::max(p.gops, measure_once(loop, threads, seconds / 3));
    return p;
}

}  // namespace int8_peak
