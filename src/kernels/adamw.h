#pragma once
// AdamW element update and the sum of squares for the global gradient norm. Hand-written because
// no library fuses them: one pass over (param, grad, m, v) instead of five. The AVX2 variant does
// the same IEEE operations in the same order as the scalar reference (no FMA contraction), so the
// two give bit-identical parameters; tests/test_kernels.cc checks that.
#include <cstdint>

namespace moe::kernels {

struct AdamWScalars {
    float decay;      // 1 - lr * weight_decay (1 for parameters without decay)
    float beta1, beta2;
    float step_size;  // lr / (1 - beta1^t)
    float bc2_sqrt;   // sqrt(1 - beta2^t)
    float eps;
    float grad_scale;  // gradient clipping coefficient (1 = none)
};

// x, m, v, g: [n]
void adamw_ref(float* x, float* m, float* v, const float* g, int64_t n, const AdamWScalars& s);
void adamw_avx2(float* x, float* m, float* v, const float* g, int64_t n, const AdamWScalars& s);
void adamw_avx512(float* x, float* m, float* v, const float* g, int64_t n, const AdamWScalars& s);
void adamw(float* x, float* m, float* v, const float* g, int64_t n, const AdamWScalars& s);

// sum of g[i]^2 in double; the SIMD variant sums in another (fixed) order
double sumsq_ref(const float* g, int64_t n);
double sumsq_avx2(const float* g, int64_t n);
double sumsq(const float* g, int64_t n);

}  // namespace moe::kernels
