#pragma once
// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight   (eps inside the sqrt, as HF Llama/Mixtral)
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/parallel.h"

namespace moe::ops {

// sum_c a[c] * b[c] in a fixed order: 16 running sums (lane j takes c = j mod 16 over the whole
// 16-blocks), added pairwise, then the tail in order. The 16 sums are independent, so the compiler
// vectorizes the loop for any target (a single running sum is one serial chain of adds, about
// 4x slower) and the bits are the same on every x86-64 CPU; they do not depend on the thread count.
template <class T>
T dot_blocked(const T* a, const T* b, int64_t n) {
    T acc[16] = {};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
    T s = acc[0];
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// out (N, C), rstd (N) saved for backward; inp (N, C); weight (C)
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int64_t N, int64_t C, double eps) {
    parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* x = inp + n * C;
            const T ss = dot_blocked(x, x, C);
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
    parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
        constexpr int64_t kMaxC = 4096;  // dxhat's row on the stack (C above it: in pieces)
        T gw[kMaxC];
        for (int64_t n = n0; n < n1; ++n) {
            const T* x = inp + n * C;
            const T* g = dout + n * C;
            const T r = rstd[n];
            // xhat = x * r ; out = xhat * w ; dxhat = dout * w
            T dot = 0;  // sum_c dxhat_c * xhat_c = r * sum_c dxhat_c * x_c
            for (int64_t c0 = 0; c0 < C; c0 += kMaxC) {
                const int64_t cn = std::min(kMaxC, C - c0);
                for (int64_t c = 0; c < cn; ++c) gw[c] = g[c0 + c] * weight[c0 + c];
                dot += dot_blocked(gw, x + c0, cn);
            }
            dot = dot * r / T(C);
            T* dx = dinp + n * C;
            // dx = r * (dxhat - xhat * mean(dxhat * xhat))
            for (int64_t c = 0; c < C; ++c) dx[c] += r * (g[c] * weight[c] - x[c] * r * dot);
        }
    });
    // dweight[c] += sum_n dout[n,c] * xhat[n,c]; threads split channels (deterministic)
    parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
        for (int64_t n = 0; n < N; ++n) {
            const T* x = inp + n * C;
            const T* g = dout + n * C;
            const T r = rstd[n];
            for (int64_t c = c0; c < c1; ++c) dweight[c] += g[c] * x[c] * r;
        }
    });
}

}  // namespace moe::ops
