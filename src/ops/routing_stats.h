#pragma once
// Routing telemetry: how evenly the experts are used. Plain serial functions (E and N·E are small);
// every value is a double computed in a fixed order, so it does not depend on the thread count.
// Inputs: expert_load (E), the (token, slot) pairs routed to each expert (router_assign's
// expert_load, or counted from topk_expert), probs (N, E) the full softmax over E of the clean
// router logits (router_softmax; the MoE layer saves it), RouteStats of router_assign.
//
// Conventions for an empty batch (sum of loads = 0): max_share = 0, load_cv = 0, every expert dead.
#include <cmath>
#include <cstdint>

#include "ops/router_capacity.h"

namespace moe::ops {

// max_i load_i · E / sum_j load_j: 1.0 = perfect balance, E = everything on one expert.
inline double load_max_share(const int64_t* expert_load, int64_t E) {
    int64_t total = 0, mx = 0;
    for (int64_t e = 0; e < E; ++e) {
        total += expert_load[e];
        mx = expert_load[e] > mx ? expert_load[e] : mx;
    }
    return total > 0 ? (double)mx * (double)E / (double)total : 0.0;
}

// Coefficient of variation of the loads: population std / mean (std over the E experts, divided by
// E). 0 = perfect balance; sqrt(E - 1) = everything on one expert.
inline double load_cv(const int64_t* expert_load, int64_t E) {
    double total = 0;
    for (int64_t e = 0; e < E; ++e) total += (double)expert_load[e];
    if (total <= 0) return 0.0;
    const double mean = total / (double)E;
    double var = 0;
    for (int64_t e = 0; e < E; ++e) var += ((double)expert_load[e] - mean) * ((double)expert_load[e] - mean);
    return std::sqrt(var / (double)E) / mean;
}

// Experts whose load is under 1% of the fair share: load_i < 0.01 · sum_j load_j / E, tested
// exactly in integers as 100 · E · load_i < sum_j load_j. All E when nothing was routed.
inline int64_t dead_experts(const int64_t* expert_load, int64_t E) {
    int64_t total = 0;
    for (int64_t e = 0; e < E; ++e) total += expert_load[e];
    if (total == 0) return E;
    int64_t dead = 0;
    for (int64_t e = 0; e < E; ++e) dead += 100 * E * expert_load[e] < total;
    return dead;
}

// Mean over the N tokens of the entropy (nats) of the token's full router softmax probs (N, E):
// -(1/N) sum_n sum_e p log p (0 log 0 = 0). log E = uniform, 0 = one-hot.
template <class T>
double router_entropy(const T* probs, int64_t N, int64_t E) {
    if (N <= 0) return 0.0;
    double s = 0;
    for (int64_t i = 0; i < N * E; ++i) {
        const double p = (double)probs[i];
        if (p > 0) s -= p * std::log(p);
    }
    return s / (double)N;
}

struct RoutingStats {
    double max_share = 0;       // load_max_share
    double cv = 0;              // load_cv
    double entropy = 0;         // router_entropy
    int64_t dead_experts = 0;   // dead_experts
    double rerouted_frac = 0;   // RouteStats::rerouted / (N·K)
    double dropped_frac = 0;    // RouteStats::dropped / (N·K)
};

// All of the above for one MoE layer and batch. probs may be null (entropy left 0).
template <class T>
RoutingStats routing_stats(const int64_t* expert_load, const T* probs, const RouteStats& route,
                           int64_t N, int64_t E, int64_t K) {
    RoutingStats r;
    r.max_share = load_max_share(expert_load, E);
    r.cv = load_cv(expert_load, E);
    r.entropy = probs ? router_entropy(probs, N, E) : 0.0;
    r.dead_experts = dead_experts(expert_load, E);
    const double nk = (double)N * (double)K;
    r.rerouted_frac = nk > 0 ? (double)route.rerouted / nk : 0.0;
    r.dropped_frac = nk > 0 ? (double)route.dropped / nk : 0.0;
    return r;
}

}  // namespace moe::ops
