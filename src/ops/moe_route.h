#pragma once
// The route of one MoE layer's forward: which expert serves each (token, slot) and with what
// combine weight (the router's result), and the grouping of the routed rows by expert built from it
// (moe_dispatch_build), which the gather, the grouped expert FFN and the combine read.
// Shape letters: N tokens, K slots per token, E experts, R routed rows (<= N·K; a dropped slot has
// no row), R_max the rows the caller's routed-row buffers hold.
//
// Pointers into caller-owned memory (the model's activation arena, a test's vectors): the ops fill
// and read them, never allocate them. T is the float type of the combine weights (float for the
// engine, double for the finite-difference checks); the indices are int32 in every T.
#include <cstdint>

namespace moe::ops {

template <class T>
struct MoeRouteT {
    int64_t N = 0, K = 0, E = 0;        // tokens, slots per token, experts of this forward
    int32_t* topk_expert = nullptr;     // (N, K) expert serving each (token, slot), -1 if dropped
    T* topk_weight = nullptr;           // (N, K) combine weight (0 for a dropped slot)
    int32_t* expert_offsets = nullptr;  // (E+1) rows of expert e: [off[e], off[e+1])
    int32_t* row_token = nullptr;       // (R_max) routed row -> token, grouped by expert
    int32_t* row_slot = nullptr;        // (R_max) routed row -> slot
    int32_t* token_row = nullptr;       // (N, K) (token, slot) -> row, -1 if dropped
    int64_t R = 0;                      // routed rows of this forward: expert_offsets[E]
    // Rows the routed-row buffers hold (row_token, row_slot, and the caller's (R, C) / (R, F)
    // activations). Planned explicitly rather than assumed to be N·K: a rank of an expert-parallel
    // run receives rows from other ranks, so its R is not bounded by its own N·K.
    int64_t R_max = 0;
};

// The engine's route (fp32 combine weights).
using MoeRoute = MoeRouteT<float>;

}  // namespace moe::ops
