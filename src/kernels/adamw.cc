#include "kernels/adamw.h"

#include <immintrin.h>

#include <cmath>

#include "kernels/cpu.h"

namespace moe::kernels {

void adamw_ref(float* x, float* m, float* v, const float* g, int64_t n, const AdamWScalars& s) {
    const float omb1 = 1.f - s.beta1, omb2 = 1.f - s.beta2;
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i] * s.grad_scale;
        x[i] *= s.decay;  // decoupled weight decay first, as torch.optim.AdamW
        m[i] = s.beta1 * m[i] + omb1 * gi;
        v[i] = s.beta2 * v[i] + omb2 * gi * gi;
        const float denom = std::sqrt(v[i]) / s.bc2_sqrt + s.eps;
        x[i] -= s.step_size * m[i] / denom;
    }
}

// "avx2" without "fma": the compiler may not fuse a*b+c, which would change the rounding.
__attribute__((target("avx2"))) void adamw_avx2(float* x, float* m, float* v, const float* g,
                                                int64_t n, const AdamWScalars& s) {
    const __m256 gs = _mm256_set1_ps(s.grad_scale), dec = _mm256_set1_ps(s.decay);
    const __m256 b1 = _mm256_set1_ps(s.beta1), b2 = _mm256_set1_ps(s.beta2);
    const __m256 omb1 = _mm256_set1_ps(1.f - s.beta1), omb2 = _mm256_set1_ps(1.f - s.beta2);
    const __m256 bc2 = _mm256_set1_ps(s.bc2_sqrt), eps = _mm256_set1_ps(s.eps);
    const __m256 ss = _mm256_set1_ps(s.step_size);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), gs);
        const __m256 xi = _mm256_mul_ps(_mm256_loadu_ps(x + i), dec);
        const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(omb1, gi));
        const __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)),
                                        _mm256_mul_ps(_mm256_mul_ps(omb2, gi), gi));
        const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(x + i, _mm256_sub_ps(xi, _mm256_div_ps(_mm256_mul_ps(ss, mi), denom)));
    }
    if (i < n) adamw_ref(x + i, m + i, v + i, g + i, n - i, s);
}

void adamw(float* x, float* m, float* v, const float* g, int64_t n, const AdamWScalars& s) {
    if (active_isa() >= Isa::avx2) adamw_avx2(x, m, v, g, n, s);
    else adamw_ref(x, m, v, g, n, s);
}

double sumsq_ref(const float* g, int64_t n) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += (double)g[i] * g[i];
    return acc;
}

// four 4-lane double accumulators over 16 floats a step, summed in a fixed order at the end
__attribute__((target("avx2,fma"))) double sumsq_avx2(const float* g, int64_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 x0 = _mm256_loadu_ps(g + i), x1 = _mm256_loadu_ps(g + i + 8);
        const __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(x0));
        const __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(x0, 1));
        const __m256d d2 = _mm256_cvtps_pd(_mm256_castps256_ps128(x1));
        const __m256d d3 = _mm256_cvtps_pd(_mm256_extractf128_ps(x1, 1));
        a0 = _mm256_fmadd_pd(d0, d0, a0);
        a1 = _mm256_fmadd_pd(d1, d1, a1);
        a2 = _mm256_fmadd_pd(d2, d2, a2);
        a3 = _mm256_fmadd_pd(d3, d3, a3);
    }
    const __m256d s = _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3));
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, s);
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + sumsq_ref(g + i, n - i);
}

double sumsq(const float* g, int64_t n) {
    return active_isa() >= Isa::avx2 ? sumsq_avx2(g, n) : sumsq_ref(g, n);
}

}  // namespace moe::kernels
