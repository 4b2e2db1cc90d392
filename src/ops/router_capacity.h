#pragma once
// Expert capacity: at most `capacity` routed (token, slot) pairs per expert per batch, and what
// happens to the pairs that overflow it (OverflowPolicy). Shape letters: N tokens, E experts,
// K slots per token.
//
// router_assign replaces router_topk when a capacity is in force. It is not differentiable (like
// router_topk); the router learns through the combine weights, which are the softmax over the
// scores of the experts that finally serve the token:
//     router_assign(route.topk_expert, load, &stats, sel_scores, N, E, K, cap, policy);
//     router_weights_forward(route, scores);      // route.topk_weight (ops/moe_route.h)
// where sel_scores are the selection scores (the logits, the noisy scores H of noisy_gating.h, plus
// the aux-loss-free bias of balance_loss.h if used) and scores are the same without the bias.
// A dropped slot has expert -1: router_weights gives it weight 0, moe_dispatch_build gives it no
// row, and a token whose every slot is dropped gets 0 from the MoE (residual only).
//
// ---------------------------------------------------------------------------------------------
// The assignment rule (exact; docs/derivations/routing.md has a worked example)
//
//   pref(n)   = the experts sorted by (-sel_scores[n, e], e): best first, ties to the lower index
//               (the comparison of router_topk; scores are assumed finite or -inf).
//   orig[n,k] = pref(n)[k] for k < min(K, E); -1 for k >= E (no such slot; never counted).
//   fill[e]   = 0 for every e.
//   Slots are placed rank by rank: for k = 0 .. K-1, for n = 0 .. N-1 (token order):
//     e0 = orig[n, k]; skip if -1.
//     if fill[e0] < cap:       topk_expert[n, k] = e0, fill[e0] += 1.
//     else (e0 is full):
//       drop:    topk_expert[n, k] = -1                                    (dropped += 1)
//       reroute: candidates = experts e with fill[e] < cap that are neither
//                  - already assigned to this token: topk_expert[n, j], j < k, nor
//                  - one of its own not-yet-placed original choices: orig[n, j], j > k
//                    (those get placed at their own rank);
//                the best candidate by pref(n) gets the slot (rerouted += 1, fill += 1);
//                with no candidate the slot is dropped, -1 (dropped += 1).
//   none (or cap <= 0): no limit; topk_expert = orig (exactly router_topk).
//
// Consequences: every first choice is placed before any second choice, so a token's best expert
// is never taken from it by another token's lower-ranked slot; within a rank, earlier tokens win.
// A token's experts stay distinct. The slot order of a rerouted token is no longer best-first
// (slot k holds whatever rank k resolved to). The result depends only on (sel_scores, N, E, K,
// cap, policy): not on the thread count (top-K is per token; the placement is serial).
// Cost: top-K O(N K E) in parallel; placement O(N K) plus O(E K) per rerouted slot.
// ---------------------------------------------------------------------------------------------
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "ops/router.h"

namespace moe::ops {

enum class OverflowPolicy {
    none,     // dropless: no capacity, plain top-K
    drop,     // an overflowing slot is dropped (Switch Transformer / GShard)
    reroute,  // an overflowing slot goes to the token's best remaining expert with room
};

// Counts of one router_assign call (over its N·K slots).
struct RouteStats {
    int64_t rerouted = 0;  // slots placed on an expert other than their original choice
    int64_t dropped = 0;   // slots left without an expert (-1) because of capacity
};

// cap = ceil(capacity_factor · N · K / E), at least 1; 0 (= no limit) when capacity_factor <= 0.
// A relative 1e-9 is taken off before the ceil so that a product that is an integer in exact
// arithmetic (1.1 · 10 = 11.000000000000002 in double) does not round up to the next one.
inline int64_t expert_capacity(double capacity_factor, int64_t N, int64_t E, int64_t K) {
    if (!(capacity_factor > 0)) return 0;
    const double x = capacity_factor * (double)N * (double)K / (double)E;
    const int64_t cap = (int64_t)std::ceil(x * (1.0 - 1e-9));
    return cap < 1 ? 1 : cap;
}

// expert_load (E) <- the number of slots of topk_expert (N, K) on each expert (-1 = dropped, not
// counted). For a plain router_topk routing; router_assign already returns it.
inline void count_expert_load(int64_t* expert_load, const int32_t* topk_expert, int64_t N, int64_t E,
                              int64_t K) {
    for (int64_t e = 0; e < E; ++e) expert_load[e] = 0;
    for (int64_t i = 0; i < N * K; ++i)
        if (topk_expert[i] >= 0) expert_load[topk_expert[i]]++;
}

// topk_expert (N, K) <- the assignment described above, from the selection scores (N, E).
// expert_load (E) <- the number of (token, slot) pairs assigned to each expert (overwritten; it is
// also the fill counter, so it is the only scratch the op needs: no allocation). stats (may be
// null) <- rerouted / dropped counts (overwritten). capacity <= 0: no limit.
template <class T>
void router_assign(int32_t* topk_expert, int64_t* expert_load, RouteStats* stats, const T* sel_scores,
                   int64_t N, int64_t E, int64_t K, int64_t capacity, OverflowPolicy policy) {
    MOE_ASSERT(expert_load != nullptr && E > 0 && K > 0);
    RouteStats st;
    router_topk(topk_expert, sel_scores, N, E, K);  // orig, best first
    if (policy == OverflowPolicy::none || capacity <= 0) {
        count_expert_load(expert_load, topk_expert, N, E, K);
        if (stats) *stats = st;
        return;
    }
    for (int64_t e = 0; e < E; ++e) expert_load[e] = 0;
    // In place: while rank k is placed, slots j < k of a token hold its final assignment and
    // slots j > k its original choices, so "excluded" = { topk_expert[n, j] : j != k }.
    for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) {
            int32_t* ex = topk_expert + n * K;
            const int32_t e0 = ex[k];
            if (e0 < 0) continue;
            if (expert_load[e0] < capacity) {
                expert_load[e0]++;
                continue;
            }
            int32_t best = -1;
            if (policy == OverflowPolicy::reroute) {
                const T* s = sel_scores + n * E;
                for (int64_t e = 0; e < E; ++e) {
                    if (expert_load[e] >= capacity) continue;
                    bool excluded = false;
                    for (int64_t j = 0; j < K; ++j) excluded |= j != k && ex[j] == e;
                    if (excluded) continue;
                    // strict '>' keeps the lower index on ties: the pref(n) order
                    if (best < 0 || s[e] > s[best]) best = (int32_t)e;
                }
            }
            ex[k] = best;
            if (best >= 0) {
                expert_load[best]++;
                st.rerouted++;
            } else {
                st.dropped++;
            }
        }
    if (stats) *stats = st;
}

}  // namespace moe::ops
