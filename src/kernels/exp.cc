#include "kernels/exp.h"

#include <immintrin.h>

#include <cmath>

#include "kernels/cpu.h"
#include "kernels/avx2_inline.h"

namespace moe::kernels {

float exp_shift_sum_ref(float* x, int64_t n, float shift) {
    float sum = 0;
    for (int64_t i = 0; i < n; ++i) {
        x[i] = std::exp(x[i] - shift);
        sum += x[i];
    }
    return sum;
}

__attribute__((target("avx2,fma"))) float exp_shift_sum_avx2(float* x, int64_t n, float shift) {
    const __m256 s = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        _mm256_storeu_ps(x + i, v);
        acc = _mm256_add_ps(acc, v);
    }
    if (i < n) {  // tail: masked lanes
        alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const int64_t m = n - i;
        for (int64_t j = 0; j < m; ++j) buf[j] = x[i + j] - shift;
        const __m256 v = exp256(_mm256_load_ps(buf));
        _mm256_store_ps(buf, v);
        for (int64_t j = 0; j < m; ++j) x[i + j] = buf[j];
        for (int64_t j = m; j < 8; ++j) buf[j] = 0;
        acc = _mm256_add_ps(acc, _mm256_load_ps(buf));
    }
    return hsum8(acc);
}

__attribute__((target("avx2,fma"))) static inline __m256 sigmoid256(__m256 g) {
    const __m256 one = _mm256_set1_ps(1.f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), g))));
}

static inline float sigmoid1(float g) { return 1.f / (1.f + std::exp(-g)); }

__attribute__((target("avx2,fma"))) void swiglu_forward_avx2(float* act, const float* gate, const float* up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        _mm256_storeu_ps(act + i, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid256(g)), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; ++i) act[i] = gate[i] * sigmoid1(gate[i]) * up[i];
}

__attribute__((target("avx2,fma"))) void swiglu_backward_avx2(float* dgate, float* dup, const float* dact,
                                                              const float* gate, const float* up, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i), s = sigmoid256(g), d = _mm256_loadu_ps(dact + i);
        const __m256 gs = _mm256_mul_ps(g, s);
        // silu'(g) = s + g s (1 - s)
        const __m256 dsilu = _mm256_add_ps(s, _mm256_mul_ps(gs, _mm256_sub_ps(one, s)));
        _mm256_storeu_ps(dgate + i, _mm256_add_ps(_mm256_loadu_ps(dgate + i),
                                                  _mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(up + i)), dsilu)));
        _mm256_storeu_ps(dup + i, _mm256_add_ps(_mm256_loadu_ps(dup + i), _mm256_mul_ps(d, gs)));
    }
    for (; i < n; ++i) {
        const float s = sigmoid1(gate[i]);
        dgate[i] += dact[i] * up[i] * (s + gate[i] * s * (1.f - s));
        dup[i] += dact[i] * gate[i] * s;
    }
}

bool swiglu_simd() { return active_isa() >= Isa::avx2; }

float exp_shift_sum(float* x, int64_t n, float shift) {
    return active_isa() >= Isa::avx2 ? exp_shift_sum_avx2(x, n, shift) : exp_shift_sum_ref(x, n, shift);
}

}  // namespace moe::kernels
