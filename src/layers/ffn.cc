#include "layers/ffn.h"

#include <cstring>

#include "core/parallel.h"
#include "core/profile.h"
#include "ops/linear.h"
#include "ops/moe_dispatch.h"
#include "ops/moe_ffn.h"
#include "ops/rmsnorm.h"
#include "ops/router.h"

namespace moe::layers {

// out (n) += a (n)
static void add_into(float* out, const float* a, int64_t n) {
    parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) out[i] += a[i];
    });
}

void ffn_forward(float* out, FfnCache& c, const float* inp, const LayerWeights& w,
                 const ModelConfig& m, bool moe_layer, int64_t N) {
    const int64_t C = m.n_embd;
    if (!moe_layer) {
        MOE_PROFILE_SCOPE("dense ffn fwd");
        ops::rmsnorm_forward(c.xn, c.rstd, inp, w.ffn_norm, N, C, m.norm_eps);  // (N, C)
        const int32_t offsets[2] = {0, (int32_t)N};
        c.R = N;
        // dense FFN = one expert serving every token; out (N, C)
        ops::moe_ffn_forward(out, c.hg, c.hu, c.act, c.xn, w.ffn_gate, w.ffn_up, w.ffn_down, offsets,
                             1, C, m.n_ff, m.activation);
        add_into(out, inp, N * C);
        return;
    }
    const int64_t E = m.n_expert, K = m.n_expert_used, F = m.n_ff_exp;
    {
        MOE_PROFILE_SCOPE("moe route+gather fwd");
        ops::rmsnorm_forward(c.xn, c.rstd, inp, w.ffn_norm, N, C, m.norm_eps);         // (N, C)
        ops::linear_forward(c.logits, c.xn, w.ffn_gate_inp, N, C, E);                   // (N, E)
        ops::router_topk(c.topk_expert, c.logits, N, E, K);                             // (N, K)
        ops::router_weights_forward(c.topk_weight, c.logits, c.topk_expert, N, E, K);   // (N, K)
        c.R = ops::moe_dispatch_build(c.expert_offsets, c.row_token, c.row_slot, c.token_row,
                                      c.topk_expert, N, E, K);
        ops::moe_gather_forward(c.xe, c.xn, c.row_token, c.R, C);                        // (R, C)
    }
    {
        MOE_PROFILE_SCOPE("moe experts fwd");
        ops::moe_ffn_forward(c.ye, c.hg, c.hu, c.act, c.xe, w.ffn_gate_exps, w.ffn_up_exps,
                             w.ffn_down_exps, c.expert_offsets, E, C, F, m.activation);  // (R, C)
    }
    MOE_PROFILE_SCOPE("moe combine fwd");
    // out = inp + sum_k w[n,k] * ye[row(n,k)]
    ops::moe_combine_forward(out, c.ye, c.topk_weight, c.token_row, N, K, C);           // (N, C)
    add_into(out, inp, N * C);
}

void ffn_backward(float* dresid, LayerWeights& g, FfnScratch& s, const FfnCache& c, const float* inp,
                  const LayerWeights& w, const ModelConfig& m, bool moe_layer, int64_t N) {
    const int64_t C = m.n_embd;
    std::memset(s.dxn, 0, N * C * sizeof(float));
    if (!moe_layer) {
        MOE_PROFILE_SCOPE("dense ffn bwd");
        const int32_t offsets[2] = {0, (int32_t)N};
        // out = inp + ffn(xn): d ffn-output = dresid
        ops::moe_ffn_backward(s.dxn, g.ffn_gate, g.ffn_up, g.ffn_down, s.dact, s.dhg, s.dhu, dresid,
                              c.xn, c.hg, c.hu, c.act, w.ffn_gate, w.ffn_up, w.ffn_down, offsets, 1,
                              C, m.n_ff, m.activation);
        ops::rmsnorm_backward(dresid, g.ffn_norm, s.dxn, inp, w.ffn_norm, c.rstd, N, C);
        return;
    }
    const int64_t E = m.n_expert, K = m.n_expert_used, F = m.n_ff_exp, R = c.R;
    {
        MOE_PROFILE_SCOPE("moe combine bwd");
        std::memset(s.dye, 0, R * C * sizeof(float));
        std::memset(s.dweight, 0, N * K * sizeof(float));
        ops::moe_combine_backward(s.dye, s.dweight, dresid, c.ye, c.topk_weight, c.token_row, N, K, C);
    }
    {
        MOE_PROFILE_SCOPE("moe experts bwd");
        std::memset(s.dxe, 0, R * C * sizeof(float));
        ops::moe_ffn_backward(s.dxe, g.ffn_gate_exps, g.ffn_up_exps, g.ffn_down_exps, s.dact, s.dhg,
                              s.dhu, s.dye, c.xe, c.hg, c.hu, c.act, w.ffn_gate_exps, w.ffn_up_exps,
                              w.ffn_down_exps, c.expert_offsets, E, C, F, m.activation);
    }
    MOE_PROFILE_SCOPE("moe route+gather bwd");
    std::memset(s.dlogits, 0, N * E * sizeof(float));
    ops::moe_gather_backward(s.dxn, s.dxe, c.token_row, N, K, C);
    // routing indices are not differentiable; the router learns through the combine weights
    ops::router_weights_backward(s.dlogits, s.dweight, c.topk_weight, c.topk_expert, N, E, K);
    ops::linear_backward(s.dxn, g.ffn_gate_inp, s.dlogits, c.xn, w.ffn_gate_inp, N, C, E);
    ops::rmsnorm_backward(dresid, g.ffn_norm, s.dxn, inp, w.ffn_norm, c.rstd, N, C);
}

}  // namespace moe::layers
