#pragma once
// Load balancing of the MoE router. Shape letters: N tokens, E experts, K slots per token.
//
//  - Switch load-balancing loss (Fedus et al. 2021): switch_loss_forward / _backward.
//  - Router z-loss (Zoph et al. 2022, ST-MoE): z_loss_forward / _backward.
//  - Aux-loss-free balancing (DeepSeek-V3): a per-expert bias added to the selection scores only,
//    updated after each optimizer step by the sign of the load error: add_selection_bias,
//    balance_bias_update.
//
// The losses take the clean router logits (N, E) (= xn . W_g^T; never the noisy scores H or the
// biased selection scores) and return a scalar in double. Their forward sums run serially in a
// fixed order, so the value does not depend on the thread count. Backward accumulates (+=) into
// dlogits, scaled by the upstream gradient dloss of the scalar (1 for a loss added as is to the
// objective; the trainer's 1/grad_accum under gradient accumulation).
// Derivations: docs/derivations/routing.md. Finite-difference checks: tests/test_grad_routing.cc.
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "ops/router.h"  // router_softmax

namespace moe::ops {

// ---------------------------------------------------------------- Switch load-balancing loss
//
//   p[n, i] = softmax over all E of logits[n]        (full, unmasked; saved as probs (N, E))
//   P_i     = (1/N) sum_n p[n, i]
//   f_i     = expert_load[i] / (N·K)                  (constant: no gradient)
//   L       = coeff · E · sum_i f_i · P_i
//
// expert_load (E) counts the (token, slot) pairs routed to each expert by the FINAL assignment
// (router_assign's expert_load; after capacity). Dropped slots are not in any load but the
// denominator stays N·K, so dropping lowers f. With perfect balance (f_i = P_i = 1/E) L = coeff;
// with everything on one expert with certainty L = coeff · E.
// Note: Hugging Face's Mixtral load_balancing_loss_func normalises the counts per token, not per
// (token, slot): its f sums to K, so its value is K times this one (coeff · K at perfect balance).
template <class T>
double switch_loss_forward(T* probs, const T* logits, const int64_t* expert_load, int64_t N,
                           int64_t E, int64_t K, double coeff) {
    router_softmax(probs, logits, N, E);  // p (N, E)
    // L = coeff E sum_i f_i (1/N) sum_n p[n, i] = coeff E / (N · N K) sum_n sum_i load_i p[n, i]
    double s = 0;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t e = 0; e < E; ++e) s += (double)expert_load[e] * (double)probs[n * E + e];
    return coeff * (double)E * s / ((double)N * (double)N * (double)K);
}

// Accumulates dlogits (N, E) for dL = dloss. Saved: probs (N, E) of the forward; expert_load as
// in the forward.
template <class T>
void switch_loss_backward(T* dlogits, const T* probs, const int64_t* expert_load, int64_t N,
                          int64_t E, int64_t K, double coeff, double dloss) {
    const double inv_nk = 1.0 / ((double)N * (double)K);
    const T scale = (T)(dloss * coeff * (double)E / (double)N);
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* p = probs + n * E;
            T* d = dlogits + n * E;
            // L = coeff E / N sum_n sum_i f_i p[n, i], dp_i/dl_j = p_i ([i = j] - p_j)
            //  => dl_j = coeff E / N · p_j (f_j - sum_i f_i p_i)
            T fp = 0;
            for (int64_t e = 0; e < E; ++e) fp += (T)((double)expert_load[e] * inv_nk) * p[e];
            for (int64_t e = 0; e < E; ++e)
                d[e] += scale * p[e] * ((T)((double)expert_load[e] * inv_nk) - fp);
        }
    });
}

// ---------------------------------------------------------------- router z-loss
//
//   z_n = logsumexp_e logits[n, e]                   (saved as lse (N))
//   L   = coeff · (1/N) sum_n z_n^2
template <class T>
double z_loss_forward(T* lse, const T* logits, int64_t N, int64_t E, double coeff) {
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* l = logits + n * E;
            T mx = l[0];
            for (int64_t e = 1; e < E; ++e) mx = l[e] > mx ? l[e] : mx;
            T sum = 0;
            for (int64_t e = 0; e < E; ++e) sum += std::exp(l[e] - mx);
            lse[n] = mx + std::log(sum);
        }
    });
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += (double)lse[n] * (double)lse[n];
    return coeff * s / (double)N;
}

// Accumulates dlogits (N, E) for dL = dloss. Saved: lse (N) of the forward.
template <class T>
void z_loss_backward(T* dlogits, const T* logits, const T* lse, int64_t N, int64_t E, double coeff,
                     double dloss) {
    const T scale = (T)(dloss * coeff * 2.0 / (double)N);
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            // L = coeff/N sum_n z_n^2, dz_n/dl_j = softmax_j = exp(l_j - z_n)
            //  => dl_j = 2 coeff / N · z_n · exp(l_j - z_n)
            const T* l = logits + n * E;
            T* d = dlogits + n * E;
            for (int64_t e = 0; e < E; ++e) d[e] += scale * lse[n] * std::exp(l[e] - lse[n]);
        }
    });
}

// ---------------------------------------------------------------- aux-loss-free balancing
//
// A per-expert bias b (E) (float state, not a parameter: it gets no gradient, the optimizer does not
// see it; it belongs in the checkpoint) is added to the scores used for SELECTION only:
//     sel_scores = scores + b      -> router_topk / router_assign
//     combine weights = softmax over the chosen experts' scores WITHOUT b (router_weights_forward
//     on scores), so b never enters a gradient.
// After each optimizer step: b_i += rate · sign(mean_load - load_i), mean_load = sum_j load_j / E
// (sign(0) = 0): an overloaded expert is made less attractive, an idle one more.

// sel_scores (N, E) = scores (N, E) + bias (E) (broadcast over tokens). May alias scores.
template <class T>
void add_selection_bias(T* sel_scores, const T* scores, const float* bias, int64_t N, int64_t E) {
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t e = 0; e < E; ++e) sel_scores[n * E + e] = scores[n * E + e] + (T)bias[e];
    });
}

// bias (E) += rate · sign(mean(load) - load_i), load (E) = expert_load of the step (summed over
// its micro-batches if any). The sign is taken exactly in integers: sign(sum_j load_j - E·load_i).
inline void balance_bias_update(float* bias, const int64_t* load, int64_t E, double rate) {
    int64_t total = 0;
    for (int64_t e = 0; e < E; ++e) total += load[e];
    for (int64_t e = 0; e < E; ++e) {
        const int64_t d = total - E * load[e];
        const double sgn = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
        bias[e] = (float)((double)bias[e] + rate * sgn);
    }
}

}  // namespace moe::ops
