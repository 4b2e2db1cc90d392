#pragma once
// Feed-forward block, dense or Mixture-of-Experts: x_out = x_in + ffn(rmsnorm(x_in)).
//
// MoE pipeline (docs/conventions.md): router logits -> top-K selection -> combine weights ->
// counting sort by expert -> gather -> grouped expert FFN (one GEMM per expert) -> weighted scatter,
// plus, with model.n_ff_shexp > 0, a shared expert every token goes through (optionally gated).
#include <cstdint>
#include <vector>

#include "layers/hparams.h"
#include "layers/qweights.h"
#include "layers/weights.h"
#include "ops/router_capacity.h"

namespace moe::ops {
struct ExpertGradSink;
}

namespace moe::layers {

// What the router needs to know about this forward: training or not (noise, capacity factor) and
// the key of the noise draw (seed, step, layer, micro-batch).
struct RouteContext {
    bool train = false;
    uint64_t seed = 0;
    int64_t step = 0, layer = 0, micro = 0;
};

struct FfnCache {
    float* xn = nullptr;    // (N, C)
    float* rstd = nullptr;  // (N)
    // MoE routing record (unused for dense)
    float* logits = nullptr;            // (N, E) router logits, fp32
    float* noise_logits = nullptr;      // (N, E) x · W_noise^T (noisy gating)
    float* eps = nullptr;               // (N, E) the noise draw, N(0, 1)
    float* scores = nullptr;            // (N, E) H = logits + eps * softplus(noise_logits)
    float* sel = nullptr;               // (N, E) selection scores (probabilities and/or + bias)
    float* probs = nullptr;             // (N, E) full softmax of the clean logits (Switch loss, entropy)
    float* lse = nullptr;               // (N) logsumexp of the logits (z-loss)
    int64_t* expert_load = nullptr;     // (E) (token, slot) pairs assigned to each expert
    ops::RouteStats stats;              // rerouted / dropped slots of this forward
    bool noisy = false;                 // noise was applied in this forward
    double balance_loss = 0, z_loss = 0;  // auxiliary losses of this forward (coefficients applied)
    int32_t* topk_expert = nullptr;     // (N, K) expert serving each (token, slot), -1 if dropped
    float* topk_weight = nullptr;       // (N, K) combine weight
    int32_t* expert_offsets = nullptr;  // (E+1) rows of expert e: [off[e], off[e+1])
    int32_t* row_token = nullptr;       // (R) routed row -> token, grouped by expert
    int32_t* row_slot = nullptr;        // (R) routed row -> slot
    int32_t* token_row = nullptr;       // (N, K) (token, slot) -> row, -1 if dropped
    int64_t R = 0;                      // routed rows this forward
    float* xe = nullptr;    // (R, C) gathered rows (MoE); dense uses xn directly
    float* hg = nullptr;    // (R, F) gate projection (swiglu)
    float* hu = nullptr;    // (R, F) up projection
    float* act = nullptr;   // (R, F) activation
    float* ye = nullptr;    // (R, C) expert outputs
    // shared expert (n_ff_shexp = Fs > 0): a dense FFN of every token's xn, added to the output
    float* sh_hg = nullptr;   // (N, Fs) gate projection (swiglu)
    float* sh_hu = nullptr;   // (N, Fs) up projection
    float* sh_act = nullptr;  // (N, Fs) activation
    float* sh_y = nullptr;    // (N, C) shared expert output
    float* sh_z = nullptr;    // (N) gate logit xn . w (shexp_gate only)
    float* sh_s = nullptr;    // (N) gate sigmoid(z) (shexp_gate only)
};

struct FfnScratch {
    float* dxn = nullptr;      // (N, C)
    float* dlogits = nullptr;  // (N, E)
    float* dscores = nullptr;  // (N, E) d H
    float* dnoise = nullptr;   // (N, E) d noise_logits
    float* dweight = nullptr;  // (N, K)
    float* dxe = nullptr;      // (R, C)
    float* dye = nullptr;      // (R, C)
    float* dact = nullptr;     // (R, F)
    float* dhg = nullptr;      // (R, F)
    float* dhu = nullptr;      // (R, F)
    float* dsh_y = nullptr;    // (N, C) shared expert output (shexp_gate only)
    float* dsh_z = nullptr;    // (N) its gate logit (shexp_gate only)
};
// dact, dhg, dhu hold max(R * F, N * Fs) values: the shared expert's backward reuses them.

// out (N, C) = inp (N, C) + ffn(rmsnorm(inp)). q: inference weight views for the expert / dense
// projections (null: the fp32 parameters through the training GEMMs).
void ffn_forward(float* out, FfnCache& c, const float* inp, const LayerWeights& w,
                 const ModelConfig& m, bool moe_layer, int64_t N, const RouteContext& ctx,
                 const QLayer* q = nullptr);

// dresid (N, C): in = d out, out = d inp. Accumulates into g. aux_scale: the upstream gradient of
// the auxiliary losses (the same scale the LM loss got). With `sink`, the routed experts' weight
// gradients go there instead of into g (ops::ExpertGradSink).
void ffn_backward(float* dresid, LayerWeights& g, FfnScratch& s, const FfnCache& c, const float* inp,
                  const LayerWeights& w, const ModelConfig& m, bool moe_layer, int64_t N,
                  float aux_scale, const ops::ExpertGradSink* sink = nullptr);

}  // namespace moe::layers
