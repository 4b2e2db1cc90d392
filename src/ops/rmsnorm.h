#pragma once
// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight   (eps inside the sqrt, as HF Llama/Mixtral)
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "kernels/dot.h"

namespace moe::ops {

// out (N, C), rstd (N) saved for backward; inp (N, C); weight (C)
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int64_t N, int64_t C, double eps) {
    parallel_for(0, N, 16, 2 * C * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* x = inp + n * C;
            const T ss = kernels::dot_blocked(x, x, C);
            T r = T(1) / std::sqrt(ss / T(C) + T(eps));
            rstd[n] = r;
            T* o = out + n * C;
            for (int64_t c = 0; c < C; ++c) o[c] = x[c] * r * weight[c];
        }
    });
}

// Accumulates into dinp (N, C) and dweight (C). Derivation: docs/derivations/rmsnorm.md
template <class T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight, const T* rstd,
                      int64_t N, int64_t C) {
    parallel_for(0, N, 16, 4 * C * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* x = inp + n * C;
            const T* g = dout + n * C;
            const T r = rstd[n];
            // xhat = x * r ; out = xhat * w ; dxhat = dout * w
            // sum_c dxhat_c * xhat_c = r * sum_c dxhat_c * x_c
            const T dot = kernels::sum_blocked<T>(C, [&](int64_t c) { return g[c] * weight[c] * x[c]; }) * r / T(C);
            T* dx = dinp + n * C;
            // dx = r * (dxhat - xhat * mean(dxhat * xhat))
            for (int64_t c = 0; c < C; ++c) dx[c] += r * (g[c] * weight[c] - x[c] * r * dot);
        }
    });
    // dweight[c] += sum_n dout[n,c] * xhat[n,c]; threads split channels (deterministic)
    parallel_for(0, C, 16, 2 * N * (int64_t)sizeof(T), [&](int64_t c0, int64_t c1) {
        for (int64_t n = 0; n < N; ++n) {
            const T* x = inp + n * C;
            const T* g = dout + n * C;
            const T r = rstd[n];
            for (int64_t c = c0; c < c1; ++c) dweight[c] += g[c] * x[c] * r;
        }
    });
}

}  // namespace moe::ops
