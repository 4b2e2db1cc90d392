#pragma once
// Linear layer: out = inp · weight^T, and the bias some families add to it.
#include <cstdint>

#include "kernels/gemm.h"

namespace moe::ops {

// out (N, OUT) = inp (N, IN) · weight (OUT, IN)^T
template <class T>
void linear_forward(T* out, const T* inp, const T* weight, int64_t N, int64_t IN, int64_t OUT) {
    kernels::gemm<T>(false, true, N, OUT, IN, T(1), inp, IN, weight, IN, T(0), out, OUT);
}

// Accumulates. Either of dinp / dweight may be null.
template <class T>
void linear_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight, int64_t N,
                     int64_t IN, int64_t OUT) {
    // out[n,o] = sum_i inp[n,i] * weight[o,i]
    //   => dinp[n,i] += sum_o dout[n,o] * weight[o,i]
    if (dinp) kernels::gemm<T>(false, false, N, IN, OUT, T(1), dout, OUT, weight, IN, T(1), dinp, IN);
    //   => dweight[o,i] += sum_n dout[n,o] * inp[n,i]
    if (dweight)
        kernels::gemm<T>(true, false, OUT, IN, N, T(1), dout, OUT, inp, IN, T(1), dweight, IN);
}

// out (N, OUT) += bias (OUT), every row
template <class T>
void bias_forward(T* out, const T* bias, int64_t N, int64_t OUT) {
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < OUT; ++o) out[n * OUT + o] += bias[o];
}

// Accumulates dbias (OUT) += the column sums of dout (N, OUT), summed in row order.
template <class T>
void bias_backward(T* dbias, const T* dout, int64_t N, int64_t OUT) {
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < OUT; ++o) dbias[o] += dout[n * OUT + o];
}

}  // namespace moe::ops
