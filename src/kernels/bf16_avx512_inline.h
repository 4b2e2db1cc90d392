#pragma once
// AVX-512 helpers that round fp32 to bf16 words as kernels/bf16.h's f32_to_bf16 does and lay them
// out for bf16 dot products: shared by the vdpbf16ps GEMM (sgemm.cc) and the AMX tile GEMM
// (amx_gemm.cc), whose packing must give the same bf16 bits. Header-only: each function carries its
// target attribute, so only code compiled for AVX512_BF16 calls it (after a run-time check).
#include <immintrin.h>

#include <cstdint>

#include "kernels/avx2_inline.h"

namespace moe::kernels::bf16x {

// GCC 12 warns that the _mm512_undefined_* placeholders inside its own shift / convert intrinsics
// "may be used uninitialized" (GCC bug 105593); they are placeholders for fully written lanes.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define MOE_BF16X_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

// 16 floats rounded to bf16 as f32_to_bf16 does (nearest, ties to even; NaN stays a quiet NaN), the
// bf16 in the high half of each 32-bit lane, the low half garbage.
MOE_BF16X_TARGET inline __m512i bf16_round_hi(__m512i u) {
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
}

// Whether any of the 16 floats is a denormal (nonzero, exponent zero): the one input the
// instruction vcvtne2ps2bf16 rounds differently from f32_to_bf16 (it flushes it to zero), so the
// conversions below take the integer recipe for the rare vectors that hold one.
MOE_BF16X_TARGET inline bool any_denormal(__m512 a, __m512 b) {
    return (_mm512_fpclass_ps_mask(a, 0x20) | _mm512_fpclass_ps_mask(b, 0x20)) != 0;
}

// Words of (lo[i], hi[i]) as bf16: the pair of k and k + 1 for 16 rows or columns.
MOE_BF16X_TARGET inline __m512i bf16_pairs(__m512 lo, __m512 hi) {
    if (__builtin_expect(any_denormal(lo, hi), 0)) {
        const __m512i l = _mm512_srli_epi32(bf16_round_hi(_mm512_castps_si512(lo)), 16);
        const __m512i h = _mm512_and_si512(bf16_round_hi(_mm512_castps_si512(hi)), _mm512_set1_epi32((int)0xffff0000u));
        return _mm512_or_si512(l, h);
    }
    // one instruction rounds both (bf16 0..15 = lo, 16..31 = hi), one permute interleaves them
    alignas(64) static constexpr uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                             21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                             11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    return _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

// n contiguous floats (n <= 32, the rest zero) as 16 words of consecutive bf16 pairs.
MOE_BF16X_TARGET inline __m512i bf16_run(const float* s, int64_t n) {
    const __m512 lo = _mm512_maskz_loadu_ps(lanes16(n), s), hi = _mm512_maskz_loadu_ps(lanes16(n - 16), s + 16);
    if (__builtin_expect(!any_denormal(lo, hi), 1)) return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // in order
    const __m512i a = _mm512_srli_epi32(bf16_round_hi(_mm512_castps_si512(lo)), 16);
    const __m512i b = _mm512_srli_epi32(bf16_round_hi(_mm512_castps_si512(hi)), 16);
    // 32 bf16 in order: words (s[0], s[1]), (s[2], s[3]), ...
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(a)), _mm512_cvtepi32_epi16(b), 1);
}

// r[i] = column i of the 16 x 16 matrix of 32-bit words whose rows are r[0..15] (in registers:
// 32-bit, then 64-bit interleaves within 128-bit lanes, then two rounds of 128-bit lane shuffles).
MOE_BF16X_TARGET inline void transpose16x16_words(__m512i (&r)[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // u[4g + e], 128-bit lane l: rows 4g..4g+3 of word 4l + e
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int e = 0; e < 4; ++e) {
        const __m512i a = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88), b = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xdd);
        const __m512i c = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88), d = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xdd);
        r[e] = _mm512_shuffle_i32x4(a, c, 0x88);
        r[4 + e] = _mm512_shuffle_i32x4(b, d, 0x88);
        r[8 + e] = _mm512_shuffle_i32x4(a, c, 0xdd);
        r[12 + e] = _mm512_shuffle_i32x4(b, d, 0xdd);
    }
}

#undef MOE_BF16X_TARGET
#pragma GCC diagnostic pop

}  // namespace moe::kernels::bf16x
