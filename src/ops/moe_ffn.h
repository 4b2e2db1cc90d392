#pragma once
// Grouped expert FFN: rows grouped by expert (see moe_dispatch.h), one GEMM per expert and
// projection. A dense FFN is the special case E = 1 with every token one row.
//
//   hg = xe · w_gate[e]^T   (rows_e, F)      (SwiGLU only)
//   hu = xe · w_up[e]^T     (rows_e, F)
//   act = silu(hg) * hu  |  relu(hu)
//   ye = act · w_down[e]^T  (rows_e, C)
#include <cstdint>

#include "core/parallel.h"
#include "kernels/gemm.h"
#include "ops/activation.h"

namespace moe::ops {

// ye (R, C); hg, hu, act (R, F) saved for backward (hg unused for relu);
// xe (R, C); w_gate, w_up (E, F, C); w_down (E, C, F); expert_offsets (E+1)
template <class T>
void moe_ffn_forward(T* ye, T* hg, T* hu, T* act, const T* xe, const T* w_gate, const T* w_up,
                     const T* w_down, const int32_t* expert_offsets, int64_t E, int64_t C, int64_t F,
                     Activation activation) {
    for (int64_t e = 0; e < E; ++e) {
        const int64_t r0 = expert_offsets[e], rows = expert_offsets[e + 1] - r0;
        if (rows == 0) continue;
        const T* x = xe + r0 * C;
        kernels::gemm<T>(false, true, rows, F, C, T(1), x, C, w_up + e * F * C, C, T(0), hu + r0 * F, F);
        if (activation == Activation::swiglu) {
            kernels::gemm<T>(false, true, rows, F, C, T(1), x, C, w_gate + e * F * C, C, T(0), hg + r0 * F, F);
            parallel_for(0, rows, 8, [&](int64_t a, int64_t b) {
                swiglu_forward(act + (r0 + a) * F, hg + (r0 + a) * F, hu + (r0 + a) * F, (b - a) * F);
            });
        } else {
            parallel_for(0, rows, 8, [&](int64_t a, int64_t b) {
                relu_forward(act + (r0 + a) * F, hu + (r0 + a) * F, (b - a) * F);
            });
        }
        kernels::gemm<T>(false, true, rows, C, F, T(1), act + r0 * F, F, w_down + e * C * F, F, T(0), ye + r0 * C, C);
    }
}

// Accumulates dxe (R, C), dw_gate, dw_up (E, F, C), dw_down (E, C, F).
// dact, dhg, dhu (R, F) are scratch (overwritten).
template <class T>
void moe_ffn_backward(T* dxe, T* dw_gate, T* dw_up, T* dw_down, T* dact, T* dhg, T* dhu,
                      const T* dye, const T* xe, const T* hg, const T* hu, const T* act,
                      const T* w_gate, const T* w_up, const T* w_down, const int32_t* expert_offsets,
                      int64_t E, int64_t C, int64_t F, Activation activation) {
    for (int64_t e = 0; e < E; ++e) {
        const int64_t r0 = expert_offsets[e], rows = expert_offsets[e + 1] - r0;
        if (rows == 0) continue;
        const T* x = xe + r0 * C;
        const T* g = dye + r0 * C;
        // ye = act · w_down^T
        kernels::gemm<T>(false, false, rows, F, C, T(1), g, C, w_down + e * C * F, F, T(0), dact + r0 * F, F);
        kernels::gemm<T>(true, false, C, F, rows, T(1), g, C, act + r0 * F, F, T(1), dw_down + e * C * F, F);
        parallel_for(0, rows, 8, [&](int64_t a, int64_t b) {
            const int64_t o = (r0 + a) * F, n = (b - a) * F;
            for (int64_t i = 0; i < n; ++i) dhu[o + i] = 0;
            if (activation == Activation::swiglu) {
                for (int64_t i = 0; i < n; ++i) dhg[o + i] = 0;
                swiglu_backward(dhg + o, dhu + o, dact + o, hg + o, hu + o, n);
            } else {
                relu_backward(dhu + o, dact + o, act + o, n);
            }
        });
        // hu = xe · w_up^T ; hg = xe · w_gate^T
        kernels::gemm<T>(false, false, rows, C, F, T(1), dhu + r0 * F, F, w_up + e * F * C, C, T(1), dxe + r0 * C, C);
        kernels::gemm<T>(true, false, F, C, rows, T(1), dhu + r0 * F, F, x, C, T(1), dw_up + e * F * C, C);
        if (activation == Activation::swiglu) {
            kernels::gemm<T>(false, false, rows, C, F, T(1), dhg + r0 * F, F, w_gate + e * F * C, C, T(1), dxe + r0 * C, C);
            kernels::gemm<T>(true, false, F, C, rows, T(1), dhg + r0 * F, F, x, C, T(1), dw_gate + e * F * C, C);
        }
    }
}

}  // namespace moe::ops
