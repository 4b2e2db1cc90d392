#include "kernels/read_probe.h"

#include <immintrin.h>

#include "kernels/cpu.h"

namespace moe::kernels {

double read_sum_ref(const float* x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += x[i];
    return s;
}

__attribute__((target("avx2"))) static double read_sum_avx2(const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x + i + 24));
    }
    alignas(32) float l[8];
    _mm256_store_ps(l, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    double s = 0;
    for (float v : l) s += v;
    for (; i < n; ++i) s += x[i];
    return s;
}

double read_sum(const float* x, int64_t n) {
    return active_isa() >= Isa::avx2 ? read_sum_avx2(x, n) : read_sum_ref(x, n);
}

}  // namespace moe::kernels
