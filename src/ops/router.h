#pragma once
// MoE router: selection of the experts per token (not differentiable) and the combine weights
// (differentiable with respect to the router logits).
//
// Semantics (docs/conventions.md): top-K on fp32 logits, ties to the lower expert index; the
// combine weights are a softmax over the logits of the experts that serve the token; every other
// expert has weight 0 (its logit is treated as -inf). This equals "softmax over all E, take top-K,
// renormalise".
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/parallel.h"

namespace moe::ops {

// topk_expert (N, K) <- indices of the K largest scores (N, E), best first, ties to lower index.
template <class T>
void router_topk(int32_t* topk_expert, const T* scores, int64_t N, int64_t E, int64_t K) {
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* s = scores + n * E;
            int32_t* out = topk_expert + n * K;
            for (int64_t k = 0; k < K; ++k) {
                int32_t best = -1;
                for (int64_t e = 0; e < E; ++e) {
                    bool taken = false;
                    for (int64_t j = 0; j < k; ++j) taken |= out[j] == e;
                    if (taken) continue;
                    // strict '>' keeps the lower index on ties; NaN never wins
                    if (best < 0 || s[e] > s[best]) best = (int32_t)e;
                }
                out[k] = best;
            }
        }
    });
}

// topk_weight (N, K) = softmax over { logits[n, e] : e = topk_expert[n, k] >= 0 }; a slot with
// expert -1 (dropped) gets weight 0.
template <class T>
void router_weights_forward(T* topk_weight, const T* logits, const int32_t* topk_expert, int64_t N,
                            int64_t E, int64_t K) {
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* l = logits + n * E;
            const int32_t* ex = topk_expert + n * K;
            T* w = topk_weight + n * K;
            T mx = -std::numeric_limits<T>::infinity();
            for (int64_t k = 0; k < K; ++k)
                if (ex[k] >= 0 && l[ex[k]] > mx) mx = l[ex[k]];
            T sum = 0;
            for (int64_t k = 0; k < K; ++k) {
                w[k] = ex[k] >= 0 ? std::exp(l[ex[k]] - mx) : T(0);
                sum += w[k];
            }
            if (sum > T(0))
                for (int64_t k = 0; k < K; ++k) w[k] /= sum;
        }
    });
}

// Accumulates dlogits (N, E) from dweight (N, K). Uses the forward output topk_weight.
template <class T>
void router_weights_backward(T* dlogits, const T* dweight, const T* topk_weight,
                             const int32_t* topk_expert, int64_t N, int64_t E, int64_t K) {
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const int32_t* ex = topk_expert + n * K;
            const T* w = topk_weight + n * K;
            const T* dw = dweight + n * K;
            // w_k = exp(l_k) / sum_j exp(l_j)  =>  dl_k = w_k (dw_k - sum_j w_j dw_j)
            T dot = 0;
            for (int64_t k = 0; k < K; ++k)
                if (ex[k] >= 0) dot += w[k] * dw[k];
            T* dl = dlogits + n * E;
            for (int64_t k = 0; k < K; ++k)
                if (ex[k] >= 0) dl[ex[k]] += w[k] * (dw[k] - dot);
        }
    });
}

}  // namespace moe::ops
