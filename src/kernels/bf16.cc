#include "kernels/bf16.h"

#include <immintrin.h>

#include "kernels/cpu.h"

namespace moe::kernels {

void bf16_round_ref(float* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_round(src[i]);
}

// The same integer recipe as f32_to_bf16, 8 lanes at a time (AVX2 has no bf16 instructions).
__attribute__((target("avx2"))) void bf16_round_avx2(float* dst, const float* src, int64_t n) {
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u), qnan = _mm256_set1_epi32(0x00400000);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i u = _mm256_loadu_si256((const __m256i*)(src + i));
        const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
        const __m256i r = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)), hi);
        const __m256i nanv = _mm256_and_si256(_mm256_or_si256(u, qnan), hi);
        _mm256_storeu_si256((__m256i*)(dst + i), _mm256_blendv_epi8(r, nanv, is_nan));
    }
    if (i < n) bf16_round_ref(dst + i, src + i, n - i);
}

void bf16_round_n(float* dst, const float* src, int64_t n) {
    if (active_isa() >= Isa::avx2) bf16_round_avx2(dst, src, n);
    else bf16_round_ref(dst, src, n);
}

void f32_to_bf16_n(uint16_t* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

void bf16_to_f32_n(float* dst, const uint16_t* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

}  // namespace moe::kernels
