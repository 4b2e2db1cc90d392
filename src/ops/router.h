#pragma once
// MoE router: selection of the experts per token (not differentiable), the combine weights
// (differentiable with respect to the router logits) and the full softmax over all E experts.
//
// Semantics (docs/conventions.md): top-K on fp32 logits, ties to the lower expert index; the
// combine weights are a softmax over the logits of the experts that serve the token; every other
// expert has weight 0 (its logit is treated as -inf). This equals "softmax over all E, take top-K,
// renormalise".
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/parallel.h"
#include "ops/moe_route.h"

namespace moe::ops {

// topk_expert (N, K) <- indices of the K largest scores (N, E), best first, ties to lower index.
template <class T>
void router_topk(int32_t* topk_expert, const T* scores, int64_t N, int64_t E, int64_t K) {
    parallel_for(0, N, 64, 2 * E * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
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

// probs (N, E) = softmax over all E of logits (N, E), per token: the router's full probabilities
// (the Switch loss's P, the entropy telemetry, selection on probabilities). Not the combine
// weights, which are a softmax over the chosen experts only (router_weights_forward).
template <class T>
void router_softmax(T* probs, const T* logits, int64_t N, int64_t E) {
    parallel_for(0, N, 64, 2 * E * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* l = logits + n * E;
            T* p = probs + n * E;
            T mx = l[0];
            for (int64_t e = 1; e < E; ++e) mx = l[e] > mx ? l[e] : mx;
            T sum = 0;
            for (int64_t e = 0; e < E; ++e) {
                p[e] = std::exp(l[e] - mx);
                sum += p[e];
            }
            const T inv = T(1) / sum;
            for (int64_t e = 0; e < E; ++e) p[e] *= inv;
        }
    });
}

// route.topk_weight (N, K) = softmax over { scores[n, e] : e = route.topk_expert[n, k] >= 0 }, with
// scores (N, E) the router logits (or the noisy scores H); a slot with expert -1 (dropped) gets
// weight 0. Reads route.N, E, K.
template <class T>
void router_weights_forward(MoeRouteT<T>& route, const T* scores) {
    const int64_t E = route.E, K = route.K;
    const int32_t* topk_expert = route.topk_expert;  // (N, K)
    T* topk_weight = route.topk_weight;              // (N, K)
    parallel_for(0, route.N, 64, 2 * E * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* l = scores + n * E;
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

// Accumulates dscores (N, E) from dweight (N, K), the gradient of route.topk_weight. Uses the
// forward's output route.topk_weight.
template <class T>
void router_weights_backward(T* dscores, const T* dweight, const MoeRouteT<T>& route) {
    const int64_t E = route.E, K = route.K;
    parallel_for(0, route.N, 64, 2 * E * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const int32_t* ex = route.topk_expert + n * K;
            const T* w = route.topk_weight + n * K;
            const T* dw = dweight + n * K;
            // w_k = exp(l_k) / sum_j exp(l_j)  =>  dl_k = w_k (dw_k - sum_j w_j dw_j)
            T dot = 0;
            for (int64_t k = 0; k < K; ++k)
                if (ex[k] >= 0) dot += w[k] * dw[k];
            T* dl = dscores + n * E;
            for (int64_t k = 0; k < K; ++k)
                if (ex[k] >= 0) dl[ex[k]] += w[k] * (dw[k] - dot);
        }
    });
}

// Without renormalisation (Hugging Face's norm_topk_prob = false: Qwen2-MoE, OLMoE):
// route.topk_weight (N, K) = softmax over all E scores, read at the chosen experts; a dropped slot
// (expert -1) gets 0. The K weights sum to less than 1.
template <class T>
void router_weights_full_forward(MoeRouteT<T>& route, const T* scores) {
    const int64_t E = route.E, K = route.K;
    parallel_for(0, route.N, 64, 2 * E * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* l = scores + n * E;
            const int32_t* ex = route.topk_expert + n * K;
            T* w = route.topk_weight + n * K;
            T mx = l[0];
            for (int64_t e = 1; e < E; ++e) mx = l[e] > mx ? l[e] : mx;
            T sum = 0;
            for (int64_t e = 0; e < E; ++e) sum += std::exp(l[e] - mx);
            for (int64_t k = 0; k < K; ++k) w[k] = ex[k] >= 0 ? std::exp(l[ex[k]] - mx) / sum : T(0);
        }
    });
}

// Accumulates dscores (N, E) from dweight (N, K) for router_weights_full_forward, from its output
// route.topk_weight and its input scores (the full softmax is recomputed per token):
//   w_k = p_{e_k}, p = softmax(l)  =>  dl_j = p_j (sum_{k: e_k = j} dw_k - sum_k w_k dw_k)
template <class T>
void router_weights_full_backward(T* dscores, const T* dweight, const MoeRouteT<T>& route, const T* scores) {
    const int64_t E = route.E, K = route.K;
    parallel_for(0, route.N, 64, 2 * E * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* l = scores + n * E;
            const int32_t* ex = route.topk_expert + n * K;
            const T* w = route.topk_weight + n * K;
            const T* dw = dweight + n * K;
            T dot = 0;
            for (int64_t k = 0; k < K; ++k)
                if (ex[k] >= 0) dot += w[k] * dw[k];
            T mx = l[0];
            for (int64_t e = 1; e < E; ++e) mx = l[e] > mx ? l[e] : mx;
            T sum = 0;
            for (int64_t e = 0; e < E; ++e) sum += std::exp(l[e] - mx);
            T* dl = dscores + n * E;
            for (int64_t e = 0; e < E; ++e) dl[e] -= std::exp(l[e] - mx) / sum * dot;
            for (int64_t k = 0; k < K; ++k)
                if (ex[k] >= 0) dl[ex[k]] += w[k] * dw[k];
        }
    });
}

}  // namespace moe::ops
