#pragma once
// x[i] = exp(x[i] - shift) over n floats, returning their sum (accumulated in float, in order for
// the reference). The softmax of short-context attention spends most of its time here: the
// library has no fused "exp, subtract, sum" and std::exp is scalar. The AVX2 variant uses a
// Cephes-style polynomial (within 2 ulp of std::exp for arguments in [-87, 0]) and sums 8 lanes
// then folds them in a fixed order.
#include <cstdint>

namespace moe::kernels {

float exp_shift_sum_ref(float* x, int64_t n, float shift);
float exp_shift_sum_avx2(float* x, int64_t n, float shift);
float exp_shift_sum(float* x, int64_t n, float shift);  // dispatched

// SwiGLU on 8 lanes with the same exp: act = g * sigmoid(g) * u, and its backward (accumulating
// dgate += dact * u * (s + g s (1 - s)), dup += dact * g s). The scalar twins are
// ops::swiglu_forward / swiglu_backward (std::exp); swiglu_*_n dispatch.
void swiglu_forward_avx2(float* act, const float* gate, const float* up, int64_t n);
void swiglu_backward_avx2(float* dgate, float* dup, const float* dact, const float* gate, const float* up, int64_t n);
bool swiglu_simd();  // whether the dispatched path is the AVX2 one

}  // namespace moe::kernels
