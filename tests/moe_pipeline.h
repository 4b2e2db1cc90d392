#pragma once
// The fast MoE pipeline of layers/ffn.cc (without its rmsnorm and residual), composed from the ops
// exactly as ffn_forward / ffn_backward compose them, for any T: in double it is what the finite
// difference checks differentiate; in float it runs the oneDNN path that tests/test_moe_ref.cc
// compares against the per-token oracle ops/moe_ref.h.
#include <cstdint>
#include <vector>

#include "ops/linear.h"
#include "ops/moe_dispatch.h"
#include "ops/moe_ffn.h"
#include "ops/router.h"

namespace moe::test {

template <class T>
struct MoePipeline {
    int64_t N = 0, C = 0, E = 0, K = 0, F = 0;
    ops::Activation act = ops::Activation::swiglu;

    // forward record (as FfnCache)
    std::vector<T> logits, topk_weight, xe, hg, hu, a, ye, out;
    std::vector<int32_t> topk_expert, expert_offsets, row_token, row_slot, token_row;
    int64_t R = 0;
    const T *x = nullptr, *wr = nullptr, *wg = nullptr, *wu = nullptr, *wd = nullptr;

    MoePipeline(int64_t N_, int64_t C_, int64_t E_, int64_t K_, int64_t F_, ops::Activation act_)
        : N(N_), C(C_), E(E_), K(K_), F(F_), act(act_) {}

    // out (N, C). routing (N, K): when non-null it replaces the top-K choice (held fixed).
    void forward(const T* x_, const T* wr_, const T* wg_, const T* wu_, const T* wd_,
                 const int32_t* routing = nullptr) {
        x = x_, wr = wr_, wg = wg_, wu = wu_, wd = wd_;
        logits.assign(N * E, T(0));
        topk_expert.assign(N * K, 0);
        topk_weight.assign(N * K, T(0));
        expert_offsets.assign(E + 1, 0);
        row_token.assign(N * K, 0);
        row_slot.assign(N * K, 0);
        token_row.assign(N * K, 0);
        ops::linear_forward(logits.data(), x, wr, N, C, E);
        if (routing)
            topk_expert.assign(routing, routing + N * K);
        else
            ops::router_topk(topk_expert.data(), logits.data(), N, E, K);
        ops::router_weights_forward(topk_weight.data(), logits.data(), topk_expert.data(), N, E, K);
        R = ops::moe_dispatch_build(expert_offsets.data(), row_token.data(), row_slot.data(),
                                    token_row.data(), topk_expert.data(), N, E, K);
        xe.assign(R * C, T(0));
        hg.assign(R * F, T(0));
        hu.assign(R * F, T(0));
        a.assign(R * F, T(0));
        ye.assign(R * C, T(0));
        out.assign(N * C, T(0));
        ops::moe_gather_forward(xe.data(), x, row_token.data(), R, C);
        ops::moe_ffn_forward(ye.data(), hg.data(), hu.data(), a.data(), xe.data(), wg, wu, wd,
                             expert_offsets.data(), E, C, F, act);
        ops::moe_combine_forward(out.data(), ye.data(), topk_weight.data(), token_row.data(), N, K, C);
    }

    // Accumulates dx (N, C), dwr (E, C), dwg, dwu (E, F, C), dwd (E, C, F) for dout (N, C).
    void backward(T* dx, T* dwr, T* dwg, T* dwu, T* dwd, const T* dout) const {
        std::vector<T> dye(R * C, T(0)), dxe(R * C, T(0)), dweight(N * K, T(0)), dlogits(N * E, T(0));
        std::vector<T> dact(R * F), dhg(R * F), dhu(R * F);
        ops::moe_combine_backward(dye.data(), dweight.data(), dout, ye.data(), topk_weight.data(),
                                  token_row.data(), N, K, C);
        ops::moe_ffn_backward(dxe.data(), dwg, dwu, dwd, dact.data(), dhg.data(), dhu.data(),
                              dye.data(), xe.data(), hg.data(), hu.data(), a.data(), wg, wu, wd,
                              expert_offsets.data(), E, C, F, act);
        ops::moe_gather_backward(dx, dxe.data(), token_row.data(), N, K, C);
        ops::router_weights_backward(dlogits.data(), dweight.data(), topk_weight.data(),
                                     topk_expert.data(), N, E, K);
        ops::linear_backward(dx, dwr, dlogits.data(), x, wr, N, C, E);
    }
};

}  // namespace moe::test
