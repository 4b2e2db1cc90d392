#pragma once
// The 6-bit values of a Q6_K block as bytes, for the kernels that unpack it into tiles (the VNNI
// prefill tiles of ggml_quants_x86.cc, the AMX ones of amx_q8.cc). Header-only: the caller's
// target (AVX-512 / AMX) includes AVX2, so this inlines into it.
#include <immintrin.h>

#include "kernels/ggml_quants.h"

namespace moe::kernels::detail {

// Half h (values 128 h .. 128 h + 127) of blk as 4 chunks of 32 values q = 0..63 (w = d sc (q - 32)):
// chunk k holds values 128 h + 32 k ..; each value's low 4 bits from ql (low nibbles of ql[64 h ..]
// for k = 0, of ql[64 h + 32 ..] for k = 1, their high nibbles for k = 2, 3), its top 2 bits from
// qh[32 h ..] (bits 2 k, 2 k + 1).
__attribute__((target("avx2"), always_inline)) inline void q6_k_half_values(const BlockQ6_K& blk, int h,
                                                                            __m256i (&q)[4]) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(3);
    const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 64 * h));
    const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * h));
    q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
    q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
}

}  // namespace moe::kernels::detail
