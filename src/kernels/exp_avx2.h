#pragma once
// The AVX2 exp shared by the kernels that inline it (exp.cc, attention_small.cc). Include only
// from .cc files compiled for the portable baseline: the function carries its own target
// attribute and must only be called after a run-time check for AVX2 + FMA.
#include <immintrin.h>

namespace moe::kernels {

// exp(a) for a <= 88: a = n ln2 + r, |r| <= ln2/2; exp(r) by a degree-6 polynomial; 2^n through the
// exponent bits. Arguments below -87.3 give 0-ish denormal-free results (clamped to exp(-87.3)).
__attribute__((target("avx2,fma"))) inline __m256 exp256(__m256 a) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.33654475f);
    a = _mm256_max_ps(_mm256_min_ps(a, hi), lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), a);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 r2 = _mm256_mul_ps(r, r);
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

}  // namespace moe::kernels
