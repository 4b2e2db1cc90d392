#pragma once
// Feed-forward block, dense or Mixture-of-Experts: x_out = x_in + ffn(rmsnorm(x_in)).
//
// MoE pipeline (docs/conventions.md): router logits -> top-K selection -> combine weights ->
// counting sort by expert -> gather -> grouped expert FFN (one GEMM per expert) -> weighted scatter.
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace moe::layers {

struct FfnCache {
    float* xn = nullptr;    // (N, C)
    float* rstd = nullptr;  // (N)
    // MoE routing record (unused for dense)
    float* logits = nullptr;            // (N, E) router logits, fp32
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
};

struct FfnScratch {
    float* dxn = nullptr;      // (N, C)
    float* dlogits = nullptr;  // (N, E)
    float* dweight = nullptr;  // (N, K)
    float* dxe = nullptr;      // (R, C)
    float* dye = nullptr;      // (R, C)
    float* dact = nullptr;     // (R, F)
    float* dhg = nullptr;      // (R, F)
    float* dhu = nullptr;      // (R, F)
};

// out (N, C) = inp (N, C) + ffn(rmsnorm(inp))
void ffn_forward(float* out, FfnCache& c, const float* inp, const LayerWeights& w,
                 const ModelConfig& m, bool moe_layer, int64_t N);

// dresid (N, C): in = d out, out = d inp. Accumulates into g.
void ffn_backward(float* dresid, LayerWeights& g, FfnScratch& s, const FfnCache& c, const float* inp,
                  const LayerWeights& w, const ModelConfig& m, bool moe_layer, int64_t N);

}  // namespace moe::layers
