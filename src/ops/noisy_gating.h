#pragma once
// Noisy top-K gating (Shazeer et al. 2017, "Outrageously Large Neural Networks"), the score part.
//
//   logits       (N, E) = xn . W_g^T        (the router, ffn_gate_inp)      linear_forward
//   noise_logits (N, E) = xn . W_noise^T    (a second (E, C) matrix)          linear_forward
//   eps          (N, E) ~ N(0, 1)           drawn by the caller: noisy_gating_draw_eps
//   H            (N, E) = logits + eps * softplus(noise_logits)           noisy_scores_forward
//
// H then replaces the logits in the router: top-K (router_topk, or router_assign with a capacity)
// is taken on H (every other expert is treated as -inf) and the combine weights are the softmax
// over the chosen H values (router_weights_forward(route, H)). Backward:
// router_weights_backward gives dH, noisy_scores_backward turns it into dlogits and
// dnoise_logits, and linear_backward carries each into its weight (W_g, W_noise) and into dxn.
// The noise is a training-time device: at evaluation / inference use the clean logits (equivalently
// eps = 0, which makes H = logits and dnoise_logits = 0).
//
// Derivation: docs/derivations/routing.md. Checked by finite differences in
// tests/test_grad_routing.cc.
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "core/rng.h"
#include "ops/activation.h"  // sigmoid = softplus' (1 / (1 + e^-z): e^-z -> inf gives 0, no NaN)

namespace moe::ops {

// softplus(z) = log(1 + e^z), stable for any z: max(z, 0) + log1p(e^-|z|) (no overflow for large
// z, no loss of the small result for very negative z).
template <class T>
T softplus(T z) {
    return (z > T(0) ? z : T(0)) + std::log1p(std::exp(-std::fabs(z)));
}

// H (N, E) = logits (N, E) + eps (N, E) * softplus(noise_logits (N, E)).
// H may alias logits (in place); it must not alias noise_logits or eps.
template <class T>
void noisy_scores_forward(T* H, const T* logits, const T* noise_logits, const T* eps, int64_t N,
                          int64_t E) {
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t i = n0 * E; i < n1 * E; ++i) H[i] = logits[i] + eps[i] * softplus(noise_logits[i]);
    });
}

// Accumulates dlogits (N, E) and dnoise_logits (N, E) from dH (N, E); either may be null.
// Saved values: noise_logits and eps of the forward.
template <class T>
void noisy_scores_backward(T* dlogits, T* dnoise_logits, const T* dH, const T* noise_logits,
                           const T* eps, int64_t N, int64_t E) {
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t i = n0 * E; i < n1 * E; ++i) {
            // H = logits + eps * softplus(noise_logits)
            if (dlogits) dlogits[i] += dH[i];
            if (dnoise_logits) dnoise_logits[i] += dH[i] * eps[i] * sigmoid(noise_logits[i]);
        }
    });
}

// The RNG key of the gating noise of one MoE layer in one forward pass. eps is a pure function of
// (seed, step, layer, micro) and of the token row n, so a run resumed from a checkpoint draws the
// same noise as an uninterrupted one, and the result does not depend on the thread count. `micro`
// is the micro-batch index under gradient accumulation (0 without it), so that the micro-batches
// of one optimizer step see independent noise.
inline uint64_t noisy_gating_stream(int64_t step, int64_t layer, int64_t micro, int64_t n) {
    // a fixed domain tag keeps these streams apart from the batch sampler's (data.cc)
    uint64_t s = splitmix64(0x6E6F697379676174ull ^ (uint64_t)step);  // "noisygat"
    s = splitmix64(s ^ (uint64_t)layer);
    s = splitmix64(s ^ (uint64_t)micro);
    return splitmix64(s ^ (uint64_t)n);
}

// eps (N, E) <- independent standard normals keyed by (seed, step, layer, micro): row n is drawn
// from moe::Rng(seed, noisy_gating_stream(step, layer, micro, n)), E draws in order.
template <class T>
void noisy_gating_draw_eps(T* eps, int64_t N, int64_t E, uint64_t seed, int64_t step, int64_t layer,
                           int64_t micro = 0) {
    parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            Rng rng(seed, noisy_gating_stream(step, layer, micro, n));
            for (int64_t e = 0; e < E; ++e) eps[n * E + e] = (T)rng.normal();
        }
    });
}

}  // namespace moe::ops
