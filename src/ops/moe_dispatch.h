#pragma once
// Grouping of routed (token, slot) pairs by expert, and the gather / weighted-scatter around the
// grouped expert FFN, all over one layer's route (ops/moe_route.h). Shape letters: N tokens,
// K slots per token, E experts, C model dim, R = number of routed rows (<= N*K; dropped slots have
// no row).
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/dot.h"
#include "ops/moe_route.h"

namespace moe::ops {

// Counting sort of the routed slots by expert; within an expert rows keep token order.
// In: route.topk_expert (N, K), route.N, K, E. Out: route.expert_offsets (E+1) (rows of expert e
// are [expert_offsets[e], expert_offsets[e+1])), route.row_token (R), route.row_slot (R) (the
// (token, slot) of each row), route.token_row (N, K) (the row of each (token, slot), -1 when the
// slot is dropped) and route.R. Returns R.
template <class T>
int64_t moe_dispatch_build(MoeRouteT<T>& route) {
    const int64_t N = route.N, E = route.E, K = route.K;
    const int32_t* topk_expert = route.topk_expert;  // (N, K)
    int32_t* expert_offsets = route.expert_offsets;  // (E+1)
    for (int64_t e = 0; e <= E; ++e) expert_offsets[e] = 0;
    for (int64_t i = 0; i < N * K; ++i)
        if (topk_expert[i] >= 0) expert_offsets[topk_expert[i] + 1]++;
    for (int64_t e = 0; e < E; ++e) expert_offsets[e + 1] += expert_offsets[e];
    const int64_t R = expert_offsets[E];
    // the routed-row buffers are planned for R_max rows: more is a sizing bug, not a user error
    MOE_ASSERT(R <= route.R_max);
    route.R = R;
    // cursor per expert: reuse row_slot's tail would alias; walk with a small local array instead
    int32_t cursor_small[256];
    int32_t* cursor = cursor_small;
    int32_t* cursor_big = nullptr;
    if (E > 256) cursor = cursor_big = new int32_t[E];
    for (int64_t e = 0; e < E; ++e) cursor[e] = expert_offsets[e];
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
            const int32_t e = topk_expert[n * K + k];
            if (e < 0) {
                route.token_row[n * K + k] = -1;
                continue;
            }
            const int32_t r = cursor[e]++;
            route.row_token[r] = (int32_t)n;
            route.row_slot[r] = (int32_t)k;
            route.token_row[n * K + k] = r;
        }
    delete[] cursor_big;
    return R;
}

// xe (R, C) = x (N, C)[route.row_token]
template <class T>
void moe_gather_forward(T* xe, const T* x, const MoeRouteT<T>& route, int64_t C) {
    const int32_t* row_token = route.row_token;  // (R)
    parallel_for(0, route.R, 64, 2 * C * (int64_t)sizeof(T), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) std::memcpy(xe + r * C, x + (int64_t)row_token[r] * C, C * sizeof(T));
    });
}

// dx (N, C) += sum over the token's rows of dxe (R, C). Per token, slot order: deterministic.
template <class T>
void moe_gather_backward(T* dx, const T* dxe, const MoeRouteT<T>& route, int64_t C) {
    const int64_t K = route.K;
    const int32_t* token_row = route.token_row;  // (N, K)
    parallel_for(0, route.N, 16, (K + 1) * C * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t k = 0; k < K; ++k) {
                const int32_t r = token_row[n * K + k];
                if (r < 0) continue;
                const T* g = dxe + (int64_t)r * C;
                T* d = dx + n * C;
                for (int64_t c = 0; c < C; ++c) d[c] += g[c];
            }
    });
}

// out (N, C) = scale * sum_k topk_weight[n, k] * ye[token_row[n, k]]   (overwrites out; a token
// whose every slot is dropped gets 0 and passes through the residual connection only). scale is
// the router's routed_scale (DeepSeek's routed_scaling_factor; 1 for Mixtral).
template <class T>
void moe_combine_forward(T* out, const T* ye, const MoeRouteT<T>& route, int64_t C, T scale = T(1)) {
    const int64_t K = route.K;
    const T* topk_weight = route.topk_weight;    // (N, K)
    const int32_t* token_row = route.token_row;  // (N, K)
    parallel_for(0, route.N, 16, (K + 1) * C * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            T* o = out + n * C;
            for (int64_t c = 0; c < C; ++c) o[c] = 0;
            for (int64_t k = 0; k < K; ++k) {
                const int32_t r = token_row[n * K + k];
                if (r < 0) continue;
                const T w = scale * topk_weight[n * K + k];
                const T* y = ye + (int64_t)r * C;
                for (int64_t c = 0; c < C; ++c) o[c] += w * y[c];
            }
        }
    });
}

// Accumulates dye (R, C) and dweight (N, K) (the gradient of route.topk_weight) for dout (N, C).
template <class T>
void moe_combine_backward(T* dye, T* dweight, const T* dout, const T* ye, const MoeRouteT<T>& route,
                          int64_t C, T scale = T(1)) {
    const int64_t K = route.K;
    const T* topk_weight = route.topk_weight;    // (N, K)
    const int32_t* token_row = route.token_row;  // (N, K)
    parallel_for(0, route.N, 16, (3 * K + 1) * C * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* g = dout + n * C;
            for (int64_t k = 0; k < K; ++k) {
                const int32_t r = token_row[n * K + k];
                if (r < 0) continue;
                const T w = scale * topk_weight[n * K + k];
                const T* y = ye + (int64_t)r * C;
                T* dy = dye + (int64_t)r * C;
                // out[n] += scale * topk_weight[n, k] * ye[r]
                for (int64_t c = 0; c < C; ++c) dy[c] += w * g[c];
                dweight[n * K + k] += scale * kernels::dot_blocked(g, y, C);
            }
        }
    });
}

}  // namespace moe::ops
