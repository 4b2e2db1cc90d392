#include "layers/ffn.h"

#include <cstring>

#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/qmatmul.h"
#include "ops/linear.h"
#include "ops/moe_dispatch.h"
#include "ops/moe_ffn.h"
#include "ops/rmsnorm.h"
#include "ops/balance_loss.h"
#include "ops/noisy_gating.h"
#include "ops/router.h"
#include "ops/router_capacity.h"
#include "ops/shared_expert.h"

namespace moe::layers {

// out (n) += a (n)
static void add_into(float* out, const float* a, int64_t n) {
    parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) out[i] += a[i];
    });
}

// out (N, OUT) = xn (N, C) · w (OUT, C)^T for the small fp32 matrices beside the experts (router,
// shared-expert gate). decode: a single-thread GEMV (a library GEMM call of this size forks
// threads, and a busy core then stalls the step).
static void small_linear(float* out, const float* xn, const float* w, int64_t N, int64_t C, int64_t OUT,
                         bool decode) {
    if (decode && N <= kernels::kGemvMaxN) {
        kernels::QMatrix r;
        r.type = kernels::WType::f32, r.out = OUT, r.in = C, r.f32 = w;
        kernels::qmatmul(out, xn, r, N, false);
    } else {
        ops::linear_forward(out, xn, w, N, C, OUT);
    }
}

// The dense layer and the shared expert: one FFN over every row of x (N, C), i.e. the grouped
// expert FFN with a single expert serving all N tokens. q: inference views of the same weights
// (null: the fp32 parameters through the training GEMMs).
static void dense_ffn_forward(float* y, float* hg, float* hu, float* act, const float* x, const float* w_gate,
                              const float* w_up, const float* w_down, const QFfn* q, int64_t N, int64_t C,
                              int64_t F, ops::Activation a) {
    const int32_t all[2] = {0, (int32_t)N};
    if (q)
        ops::moe_ffn_forward_q(y, hg, hu, act, x, q->gate, q->up, q->down, all, 1, C, F, a);  // (N, C)
    else
        ops::moe_ffn_forward(y, hg, hu, act, x, w_gate, w_up, w_down, all, 1, C, F, a);       // (N, C)
}

// Backward of dense_ffn_forward: accumulates dx (N, C) and the weight gradients; dact, dhg, dhu
// (N, F) are scratch.
static void dense_ffn_backward(float* dx, float* dw_gate, float* dw_up, float* dw_down, const FfnScratch& s,
                               const float* dy, const float* x, const float* hg, const float* hu, const float* act,
                               const float* w_gate, const float* w_up, const float* w_down, int64_t N, int64_t C,
                               int64_t F, ops::Activation a) {
    const int32_t all[2] = {0, (int32_t)N};
    ops::moe_ffn_backward(dx, dw_gate, dw_up, dw_down, s.dact, s.dhg, s.dhu, dy, x, hg, hu, act, w_gate, w_up,
                          w_down, all, 1, C, F, a);
}

void ffn_forward(float* out, FfnCache& c, const float* inp, const LayerWeights& w,
                 const ModelConfig& m, bool moe_layer, int64_t N, const RouteContext& ctx,
                 const QLayer* q) {
    const int64_t C = m.n_embd;
    if (!moe_layer) {
        MOE_PROFILE_SCOPE("dense ffn fwd");
        ops::rmsnorm_forward(c.xn, c.rstd, inp, w.ffn_norm, N, C, m.norm_eps);  // (N, C)
        c.R = N;
        dense_ffn_forward(out, c.hg, c.hu, c.act, c.xn, w.ffn_gate, w.ffn_up, w.ffn_down, q ? &q->ffn : nullptr, N,
                          C, m.n_ff, m.activation);                                       // (N, C)
        add_into(out, inp, N * C);
        return;
    }
    const int64_t E = m.n_expert, K = m.n_expert_used, F = m.n_ff_exp;
    {
        MOE_PROFILE_SCOPE("moe route+gather fwd");
        ops::rmsnorm_forward(c.xn, c.rstd, inp, w.ffn_norm, N, C, m.norm_eps);         // (N, C)
        const RouterConfig& rc = m.router;
        small_linear(c.logits, c.xn, w.ffn_gate_inp, N, C, E, q != nullptr);            // (N, E)
        // noisy top-K: H = logits + eps * softplus(x W_noise^T); training only unless noise_at_eval
        c.noisy = rc.noisy_gating && (ctx.train || rc.noise_at_eval);
        const float* scores = c.logits;                                                 // (N, E)
        if (c.noisy) {
            ops::linear_forward(c.noise_logits, c.xn, w.ffn_gate_inp_noise, N, C, E);  // (N, E)
            ops::noisy_gating_draw_eps(c.eps, N, E, ctx.seed, ctx.train ? ctx.step : -1, ctx.layer,
                                       ctx.micro);                                      // (N, E)
            ops::noisy_scores_forward(c.scores, c.logits, c.noise_logits, c.eps, N, E);
            scores = c.scores;
        }
        // full softmax of the clean logits: Switch loss P_i and the entropy telemetry
        c.balance_loss = ops::switch_loss_forward(c.probs, c.logits, c.expert_load, N, E, K, 0.0);
        // selection scores: probabilities (same choice as logits, see docs/routing.md) and/or the
        // aux-loss-free bias, which steers selection only, never the combine weights
        const float* sel = scores;
        if (rc.topk_on_probs || rc.bias_balance) {
            if (rc.topk_on_probs) {
                if (c.noisy) {
                    ops::switch_loss_forward(c.sel, c.scores, c.expert_load, N, E, K, 0.0);  // softmax(H)
                } else {
                    std::memcpy(c.sel, c.probs, N * E * sizeof(float));
                }
            } else {
                std::memcpy(c.sel, scores, N * E * sizeof(float));
            }
            if (rc.bias_balance) ops::add_selection_bias(c.sel, c.sel, w.ffn_gate_bias, N, E);
            sel = c.sel;
        }
        const double cf = ctx.train ? rc.capacity_factor : rc.eval_capacity_factor;
        const int64_t cap = ops::expert_capacity(cf, N, E, K);
        ops::router_assign(c.topk_expert, c.expert_load, &c.stats, sel, N, E, K, cap,
                           cap > 0 ? rc.overflow : ops::OverflowPolicy::none);          // (N, K)
        // combine weights: softmax over the scores of the experts that serve the token
        ops::router_weights_forward(c.topk_weight, scores, c.topk_expert, N, E, K);     // (N, K)
        c.balance_loss = rc.balance_loss > 0
            ? ops::switch_loss_forward(c.probs, c.logits, c.expert_load, N, E, K, rc.balance_loss)
            : 0.0;
        c.z_loss = rc.z_loss > 0 ? ops::z_loss_forward(c.lse, c.logits, N, E, rc.z_loss) : 0.0;
        c.R = ops::moe_dispatch_build(c.expert_offsets, c.row_token, c.row_slot, c.token_row,
                                      c.topk_expert, N, E, K);
        ops::moe_gather_forward(c.xe, c.xn, c.row_token, c.R, C);                        // (R, C)
    }
    {
        MOE_PROFILE_SCOPE("moe experts fwd");
        if (q)
            ops::moe_ffn_forward_q(c.ye, c.hg, c.hu, c.act, c.xe, q->ffn.gate, q->ffn.up, q->ffn.down,
                                   c.expert_offsets, E, C, F, m.activation);              // (R, C)
        else
            ops::moe_ffn_forward(c.ye, c.hg, c.hu, c.act, c.xe, w.ffn_gate_exps, w.ffn_up_exps,
                                 w.ffn_down_exps, c.expert_offsets, E, C, F, m.activation);  // (R, C)
    }
    MOE_PROFILE_SCOPE("moe combine fwd");
    // out = inp + routed_scale * sum_k w[n,k] * ye[row(n,k)]
    ops::moe_combine_forward(out, c.ye, c.topk_weight, c.token_row, N, K, C,
                             (float)m.router.routed_scale);                               // (N, C)
    if (m.n_ff_shexp > 0) {
        MOE_PROFILE_SCOPE("moe shared expert fwd");
        dense_ffn_forward(c.sh_y, c.sh_hg, c.sh_hu, c.sh_act, c.xn, w.ffn_gate_shexp, w.ffn_up_shexp,
                          w.ffn_down_shexp, q ? &q->shexp : nullptr, N, C, m.n_ff_shexp, m.activation);  // (N, C)
        if (m.shexp_gate) small_linear(c.sh_z, c.xn, w.ffn_gate_inp_shexp, N, C, 1, q != nullptr);  // (N, 1)
        // out += sigmoid(z) * sh_y (ungated: out += sh_y)
        ops::shared_expert_add_forward(out, c.sh_s, m.shexp_gate ? c.sh_z : nullptr, c.sh_y, N, C);
    }
    add_into(out, inp, N * C);
}

void ffn_backward(float* dresid, LayerWeights& g, FfnScratch& s, const FfnCache& c, const float* inp,
                  const LayerWeights& w, const ModelConfig& m, bool moe_layer, int64_t N,
                  float aux_scale, const ops::ExpertGradSink* sink) {
    const int64_t C = m.n_embd;
    parallel_zero(s.dxn, N * C * sizeof(float));
    if (!moe_layer) {
        MOE_PROFILE_SCOPE("dense ffn bwd");
        // out = inp + ffn(xn): d ffn-output = dresid
        dense_ffn_backward(s.dxn, g.ffn_gate, g.ffn_up, g.ffn_down, s, dresid, c.xn, c.hg, c.hu, c.act, w.ffn_gate,
                           w.ffn_up, w.ffn_down, N, C, m.n_ff, m.activation);
        ops::rmsnorm_backward(dresid, g.ffn_norm, s.dxn, inp, w.ffn_norm, c.rstd, N, C);
        return;
    }
    const int64_t E = m.n_expert, K = m.n_expert_used, F = m.n_ff_exp, R = c.R;
    if (m.n_ff_shexp > 0) {
        MOE_PROFILE_SCOPE("moe shared expert bwd");
        const float* dy = dresid;  // ungated: out += sh_y
        if (m.shexp_gate) {
            // out += sigmoid(z) * sh_y, z = xn . w
            ops::shared_expert_add_backward(s.dsh_y, s.dsh_z, dresid, c.sh_s, c.sh_y, N, C);
            ops::linear_backward(s.dxn, g.ffn_gate_inp_shexp, s.dsh_z, c.xn, w.ffn_gate_inp_shexp, N, C, 1);
            dy = s.dsh_y;
        }
        dense_ffn_backward(s.dxn, g.ffn_gate_shexp, g.ffn_up_shexp, g.ffn_down_shexp, s, dy, c.xn, c.sh_hg,
                           c.sh_hu, c.sh_act, w.ffn_gate_shexp, w.ffn_up_shexp, w.ffn_down_shexp, N, C,
                           m.n_ff_shexp, m.activation);
    }
    {
        MOE_PROFILE_SCOPE("moe combine bwd");
        parallel_zero(s.dye, R * C * sizeof(float));
        std::memset(s.dweight, 0, N * K * sizeof(float));
        ops::moe_combine_backward(s.dye, s.dweight, dresid, c.ye, c.topk_weight, c.token_row, N, K, C,
                                  (float)m.router.routed_scale);
    }
    {
        MOE_PROFILE_SCOPE("moe experts bwd");
        // dxe (R, C) is written, not accumulated: no zeroing pass
        ops::moe_ffn_backward(s.dxe, g.ffn_gate_exps, g.ffn_up_exps, g.ffn_down_exps, s.dact, s.dhg,
                              s.dhu, s.dye, c.xe, c.hg, c.hu, c.act, w.ffn_gate_exps, w.ffn_up_exps,
                              w.ffn_down_exps, c.expert_offsets, E, C, F, m.activation, sink, true);
    }
    MOE_PROFILE_SCOPE("moe route+gather bwd");
    std::memset(s.dlogits, 0, N * E * sizeof(float));
    ops::moe_gather_backward(s.dxn, s.dxe, c.token_row, N, K, C);
    // routing indices are not differentiable; the router learns through the combine weights
    // (and the auxiliary losses)
    const RouterConfig& rc = m.router;
    if (c.noisy) {
        std::memset(s.dscores, 0, N * E * sizeof(float));
        std::memset(s.dnoise, 0, N * E * sizeof(float));
        ops::router_weights_backward(s.dscores, s.dweight, c.topk_weight, c.topk_expert, N, E, K);
        // H = logits + eps * softplus(noise_logits)
        ops::noisy_scores_backward(s.dlogits, s.dnoise, s.dscores, c.noise_logits, c.eps, N, E);
        ops::linear_backward(s.dxn, g.ffn_gate_inp_noise, s.dnoise, c.xn, w.ffn_gate_inp_noise, N, C, E);
    } else {
        ops::router_weights_backward(s.dlogits, s.dweight, c.topk_weight, c.topk_expert, N, E, K);
    }
    if (rc.balance_loss > 0)
        ops::switch_loss_backward(s.dlogits, c.probs, c.expert_load, N, E, K, rc.balance_loss, aux_scale);
    if (rc.z_loss > 0) ops::z_loss_backward(s.dlogits, c.logits, c.lse, N, E, rc.z_loss, aux_scale);
    ops::linear_backward(s.dxn, g.ffn_gate_inp, s.dlogits, c.xn, w.ffn_gate_inp, N, C, E);
    ops::rmsnorm_backward(dresid, g.ffn_norm, s.dxn, inp, w.ffn_norm, c.rstd, N, C);
}

}  // namespace moe::layers
