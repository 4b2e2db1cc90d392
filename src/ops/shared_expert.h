#pragma once
// Shared expert's contribution to an MoE layer's output (DeepSeekMoE, Qwen2-MoE): every token goes
// through one dense FFN beside its K routed experts; with shexp_gate (Qwen2-MoE's
// shared_expert_gate) its output is scaled per token by a learned sigmoid gate:
//
//   out[n, :] += s[n] * y[n, :],   s[n] = sigmoid(z[n]),   z[n] = xn[n, :] . w_gate
//   (ungated: s[n] = 1)
//
// The FFN itself is ops::moe_ffn with one expert serving every row; z comes from ops::linear.
// Derivation of the backward: docs/derivations/moe_layer.md ("Shared expert").
#include <cmath>
#include <cstdint>

#include "core/parallel.h"

namespace moe::ops {

// out (N, C) += s (N) * y (N, C). gate: z (N) in, s (N) out (sigmoid of z); null: ungated (s = 1).
template <class T>
void shared_expert_add_forward(T* out, T* s, const T* z, const T* y, int64_t N, int64_t C) {
    parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            T g = T(1);
            if (z) {
                g = T(1) / (T(1) + std::exp(-z[n]));  // s = sigmoid(z)
                s[n] = g;
            }
            T* o = out + n * C;
            const T* yn = y + n * C;
            for (int64_t c = 0; c < C; ++c) o[c] += g * yn[c];
        }
    });
}

// Backward of shared_expert_add_forward. dy (N, C) is written (not accumulated): dy = s * dout.
// Gated: dz (N) is written: dz = s (1 - s) · sum_c dout[n, c] y[n, c]. Ungated: s, dz are null.
template <class T>
void shared_expert_add_backward(T* dy, T* dz, const T* dout, const T* s, const T* y, int64_t N, int64_t C) {
    parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* d = dout + n * C;
            const T* yn = y + n * C;
            T* dyn = dy + n * C;
            const T g = s ? s[n] : T(1);
            // out[n,c] += s[n] * y[n,c]  =>  dy[n,c] = s[n] * dout[n,c]
            for (int64_t c = 0; c < C; ++c) dyn[c] = g * d[c];
            if (dz) {
                //                           =>  ds[n] = sum_c dout[n,c] * y[n,c]
                T ds = T(0);
                for (int64_t c = 0; c < C; ++c) ds += d[c] * yn[c];
                // s = sigmoid(z)            =>  dz = ds * s * (1 - s)
                dz[n] = ds * g * (T(1) - g);
            }
        }
    });
}

}  // namespace moe::ops
