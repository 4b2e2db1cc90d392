#include "kernels/adamw.h"

#include <immintrin.h>

#include <cmath>

#include "kernels/cpu.h"

namespace moe::kernels {

// The update step * m / (sqrt(v) / bc2 + eps), as torch.optim.AdamW writes it, is computed as
// (step * bc2) * m / (sqrt(v) + eps * bc2): the same value with one division fewer. The divider
// bounds this loop (two divisions and a square root per element took 1.5 cycles an element on
// Zen 4; one division and the square root, 1.05), and the experts' AdamW runs on every parameter
// of the step.
struct AdamWTerms {
    float omb1, omb2, step_bc2, eps_bc2;
    explicit AdamWTerms(const AdamWScalars& s)
        : omb1(1.f - s.beta1), omb2(1.f - s.beta2), step_bc2(s.step_size * s.bc2_sqrt), eps_bc2(s.eps * s.bc2_sqrt) {}
};

void adamw_ref(float* x, float* m, float* v, const float* g, int64_t n, const AdamWScalars& s) {
    const AdamWTerms k(s);
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i] * s.grad_scale;
        x[i] *= s.decay;  // decoupled weight decay first, as torch.optim.AdamW
        m[i] = s.beta1 * m[i] + k.omb1 * gi;
        v[i] = s.beta2 * v[i] + k.omb2 * gi * gi;
        const float denom = std::sqrt(v[i]) + k.eps_bc2;
        x[i] -= k.step_bc2 * m[i] / denom;
    }
}

// "avx2" without "fma": the compiler may not fuse a*b+c, which would change the rounding.
__attribute__((target("avx2"))) void adamw_avx2(float* x, float* m, float* v, const float* g,
                                                int64_t n, const AdamWScalars& s) {
    const AdamWTerms k(s);
    const __m256 gs = _mm256_set1_ps(s.grad_scale), dec = _mm256_set1_ps(s.decay);
    const __m256 b1 = _mm256_set1_ps(s.beta1), b2 = _mm256_set1_ps(s.beta2);
    const __m256 omb1 = _mm256_set1_ps(k.omb1), omb2 = _mm256_set1_ps(k.omb2);
    const __m256 eps_bc2 = _mm256_set1_ps(k.eps_bc2), step_bc2 = _mm256_set1_ps(k.step_bc2);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), gs);
        const __m256 xi = _mm256_mul_ps(_mm256_loadu_ps(x + i), dec);
        const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(omb1, gi));
        const __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)),
                                        _mm256_mul_ps(_mm256_mul_ps(omb2, gi), gi));
        const __m256 denom = _mm256_add_ps(_mm256_sqrt_ps(vi), eps_bc2);
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(x + i, _mm256_sub_ps(xi, _mm256_div_ps(_mm256_mul_ps(step_bc2, mi), denom)));
    }
    if (i < n) adamw_ref(x + i, m + i, v + i, g + i, n - i, s);
}

// Floats ahead of the current 16 that adamw_avx512 prefetches x, m and v at (4 KiB of each): a
// step's AdamW streams all of the parameters and both moments from L3 or DRAM, where one core's
// hardware prefetchers alone left it at 0.83-1.04 ns an element; with this, 0.56-0.81 (a
// throw-away loop over 8.4 M elements in 64 Ki slices, Sapphire Rapids class Xeon, 1 thread; in a
// makemoe step about 7% of AdamW's time, docs/performance.md).
constexpr int64_t kAdamwPrefetch = 1024;

// The same on 16 lanes. AVX512F brings FMA with it, and GCC would fuse a * b + c (one rounding
// instead of two): contraction is off for this function, so it stays bit-identical to adamw_ref.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's own intrinsics (bug 105593)
__attribute__((target("avx512f"))) void adamw_avx512(float* x, float* m, float* v, const float* g, int64_t n,
                                                     const AdamWScalars& s) {
    const AdamWTerms k(s);
    const __m512 gs = _mm512_set1_ps(s.grad_scale), dec = _mm512_set1_ps(s.decay);
    const __m512 b1 = _mm512_set1_ps(s.beta1), b2 = _mm512_set1_ps(s.beta2);
    const __m512 omb1 = _mm512_set1_ps(k.omb1), omb2 = _mm512_set1_ps(k.omb2);
    const __m512 eps_bc2 = _mm512_set1_ps(k.eps_bc2), step_bc2 = _mm512_set1_ps(k.step_bc2);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        if (i + kAdamwPrefetch < n) {  // x, m, v stream from L3 / DRAM: fetch ahead (same results)
            _mm_prefetch((const char*)(x + i + kAdamwPrefetch), _MM_HINT_T0);
            _mm_prefetch((const char*)(m + i + kAdamwPrefetch), _MM_HINT_T0);
            _mm_prefetch((const char*)(v + i + kAdamwPrefetch), _MM_HINT_T0);
        }
        const __m512 gi = _mm512_mul_ps(_mm512_loadu_ps(g + i), gs);
        const __m512 xi = _mm512_mul_ps(_mm512_loadu_ps(x + i), dec);
        const __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(omb1, gi));
        const __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(v + i)),
                                        _mm512_mul_ps(_mm512_mul_ps(omb2, gi), gi));
        const __m512 denom = _mm512_add_ps(_mm512_sqrt_ps(vi), eps_bc2);
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        _mm512_storeu_ps(x + i, _mm512_sub_ps(xi, _mm512_div_ps(_mm512_mul_ps(step_bc2, mi), denom)));
    }
    if (i < n) adamw_ref(x + i, m + i, v + i, g + i, n - i, s);
}
#pragma GCC diagnostic pop
#pragma GCC pop_options

void adamw(float* x, float* m, float* v, const float* g, int64_t n, const AdamWScalars& s) {
    if (active_isa() >= Isa::avx512) adamw_avx512(x, m, v, g, n, s);
    else if (active_isa() >= Isa::avx2) adamw_avx2(x, m, v, g, n, s);
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
