#include "layers/ffn.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/batch_invariant.h"
#include "kernels/qmatmul.h"
#include "ops/linear.h"
#include "ops/moe_dispatch.h"
#include "ops/moe_ffn.h"
#include "ops/moe_route.h"
#include "ops/rmsnorm.h"
#include "ops/balance_loss.h"
#include "ops/noisy_gating.h"
#include "ops/router.h"
#include "ops/router_capacity.h"
#include "ops/shared_expert.h"

namespace moe::layers {

// out (n) += a (n)
static void add_into(float* out, const float* a, int64_t n) {
    parallel_for(0, n, 4096, 3 * (int64_t)sizeof(float), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) out[i] += a[i];
    });
}

// out (N, OUT) = xn (N, C) · w (OUT, C)^T for the small fp32 matrices beside the experts (router,
// shared-expert gate). decode: a single-thread GEMV (a library GEMM call of this size forks
// threads, and a busy core then stalls the step).
template <class T>
static void small_linear(T* out, const T* xn, const T* w, int64_t N, int64_t C, int64_t OUT, bool decode) {
    if constexpr (std::is_same_v<T, float>) {
        if (decode && kernels::gemv_path(N)) {
            kernels::QMatrix r;
            r.type = kernels::WType::f32, r.out = OUT, r.in = C, r.f32 = w;
            kernels::qmatmul(out, xn, r, N, false);
            return;
        }
    }
    ops::linear_forward(out, xn, w, N, C, OUT);
}

// The dense layer and the shared expert: one FFN over every row of x (N, C), i.e. the grouped
// expert FFN with a single expert serving all N tokens. q: inference views of the same weights
// (null: the fp32 parameters through the training GEMMs).
static void dense_ffn_forward(float* y, float* hg, float* hu, float* act, const float* x, const float* w_gate,
                              const float* w_up, const float* w_down, const QFfn* q, int64_t N, int64_t C,
                              int64_t F, ops::Activation a) {
    const int32_t all[2] = {0, (int32_t)N};
    const ops::ExpertSegments one{0, 1, all};
    if (q)
        ops::moe_ffn_forward_q(y, hg, hu, act, x, q->gate, q->up, q->down, one, C, F, a);  // (N, C)
    else
        ops::moe_ffn_forward(y, hg, hu, act, x, w_gate, w_up, w_down, one, C, F, a);       // (N, C)
}

// Backward of dense_ffn_forward: accumulates dx (N, C) and the weight gradients; dact, dhg, dhu
// (N, F) are scratch.
static void dense_ffn_backward(float* dx, float* dw_gate, float* dw_up, float* dw_down, const FfnScratch& s,
                               const float* dy, const float* x, const float* hg, const float* hu, const float* act,
                               const float* w_gate, const float* w_up, const float* w_down, int64_t N, int64_t C,
                               int64_t F, ops::Activation a) {
    const int32_t all[2] = {0, (int32_t)N};
    const ops::ExpertSegments one{0, 1, all};
    ops::moe_ffn_backward(dx, dw_gate, dw_up, dw_down, s.dact, s.dhg, s.dhu, dy, x, hg, hu, act, w_gate, w_up,
                          w_down, one, C, F, a);
}

void ExpertRunner::forward_cached(FfnCacheT<float>&, const QFfn&, const ModelConfig&, int64_t) {
    MOE_ASSERT(!"this expert runner is for training only");
}

template <class T>
const ops::MoeRouteT<T>& moe_route_forward(FfnCacheT<T>& c, const MoeWeights<T>& w, const ModelConfig& m,
                                           int64_t N, const RouteContext& ctx, bool decode,
                                           const int32_t* forced_topk) {
    const int64_t C = m.n_embd, E = m.n_expert, K = m.n_expert_used;
    const RouterConfig& rc = m.router;
    ops::MoeRouteT<T>& r = c.route;
    r.N = N, r.K = K, r.E = E;
    small_linear(c.logits, c.xn, w.ffn_gate_inp, N, C, E, decode);                   // (N, E)
    // noisy top-K: H = logits + eps * softplus(x W_noise^T); training only unless noise_at_eval
    c.noisy = rc.noisy_gating && (ctx.train || rc.noise_at_eval);
    const T* scores = c.logits;                                                      // (N, E)
    if (c.noisy) {
        ops::linear_forward(c.noise_logits, c.xn, w.ffn_gate_inp_noise, N, C, E);   // (N, E)
        ops::noisy_gating_draw_eps(c.eps, N, E, ctx.seed, ctx.train ? ctx.step : -1, ctx.layer,
                                   ctx.micro);                                       // (N, E)
        ops::noisy_scores_forward(c.scores, c.logits, c.noise_logits, c.eps, N, E);
        scores = c.scores;
    }
    // full softmax of the clean logits: Switch loss P_i and the entropy telemetry
    ops::router_softmax(c.probs, c.logits, N, E);                                    // (N, E)
    if (forced_topk) {
        // routing held fixed (tests): the given experts, no selection, no capacity
        std::copy(forced_topk, forced_topk + N * K, r.topk_expert);                  // (N, K)
        ops::count_expert_load(c.expert_load, r.topk_expert, N, E, K);               // (E)
        c.stats = {};
    } else {
        // selection scores: probabilities (same choice as logits, see docs/routing.md) and/or the
        // aux-loss-free bias, which steers selection only, never the combine weights
        const T* sel = scores;
        if (rc.topk_on_probs || rc.bias_balance) {
            if (rc.topk_on_probs) {
                if (c.noisy) {
                    ops::router_softmax(c.sel, c.scores, N, E);                      // softmax(H)
                } else {
                    std::memcpy(c.sel, c.probs, N * E * sizeof(T));
                }
            } else {
                std::memcpy(c.sel, scores, N * E * sizeof(T));
            }
            if (rc.bias_balance) ops::add_selection_bias(c.sel, c.sel, w.ffn_gate_bias, N, E);
            sel = c.sel;
        }
        const double cf = ctx.train ? rc.capacity_factor : rc.eval_capacity_factor;
        const int64_t cap = ops::expert_capacity(cf, N, E, K);
        ops::router_assign(r.topk_expert, c.expert_load, &c.stats, sel, N, E, K, cap,
                           cap > 0 ? rc.overflow : ops::OverflowPolicy::none);      // (N, K)
    }
    // combine weights: softmax over the scores of the experts that serve the token
    if (rc.norm_topk) ops::router_weights_forward(r, scores);                        // (N, K)
    else ops::router_weights_full_forward(r, scores);
    c.balance_loss = rc.balance_loss > 0
        ? ops::switch_loss_forward(c.probs, c.logits, c.expert_load, N, E, K, rc.balance_loss)
        : 0.0;
    c.z_loss = rc.z_loss > 0 ? ops::z_loss_forward(c.lse, c.logits, N, E, rc.z_loss) : 0.0;
    ops::moe_dispatch_build(r);  // expert_offsets (E+1), row_token, row_slot (R), token_row (N, K)
    return r;
}

template <class T>
void moe_experts_forward(FfnCacheT<T>& c, const MoeWeights<T>& w, const ModelConfig& m,
                         const ops::ExpertSegments& seg, const QFfn* q) {
    MOE_PROFILE_SCOPE("moe experts fwd");
    const int64_t C = m.n_embd, F = m.n_ff_exp;
    if constexpr (std::is_same_v<T, float>) {
        if (q) {
            ops::moe_ffn_forward_q(c.ye, c.hg, c.hu, c.act, c.xe, q->gate, q->up, q->down, seg, C, F,
                                   m.activation);                                    // (R, C)
            return;
        }
    } else {
        MOE_ASSERT(q == nullptr);  // inference views are float
    }
    ops::moe_ffn_forward(c.ye, c.hg, c.hu, c.act, c.xe, w.ffn_gate_exps, w.ffn_up_exps, w.ffn_down_exps,
                         seg, C, F, m.activation);                                   // (R, C)
}

template <class T>
void moe_forward(T* out, FfnCacheT<T>& c, const MoeWeights<T>& w, const ModelConfig& m, int64_t N,
                 const RouteContext& ctx, bool decode, const QFfn* q, const int32_t* forced_topk) {
    const int64_t C = m.n_embd;
    const ops::MoeRouteT<T>* r;
    {
        MOE_PROFILE_SCOPE("moe route+gather fwd");
        r = &moe_route_forward(c, w, m, N, ctx, decode, forced_topk);
        ops::moe_gather_forward(c.xe, c.xn, *r, C);                                  // (R, C)
    }
    bool ran = false;
    if constexpr (std::is_same_v<T, float>) {
        if (ctx.experts) {  // expert parallel: the rows go to their experts' ranks and come back
            MOE_ASSERT(forced_topk == nullptr);
            if (q) ctx.experts->forward_cached(c, *q, m, ctx.layer);                  // (R, C)
            else ctx.experts->forward(c, w, m, ctx.layer);                            // (R, C)
            ran = true;
        }
    }
    // one process runs every expert of the layer
    if (!ran) moe_experts_forward(c, w, m, ops::ExpertSegments{0, r->E, r->expert_offsets}, q);  // (R, C)
    MOE_PROFILE_SCOPE("moe combine fwd");
    // out = routed_scale * sum_k w[n,k] * ye[row(n,k)]
    ops::moe_combine_forward(out, c.ye, *r, C, (T)m.router.routed_scale);           // (N, C)
}

template <class T>
void moe_route_backward(T* dxn, const MoeWeights<T>& g, const FfnScratchT<T>& s, const FfnCacheT<T>& c,
                        const MoeWeights<T>& w, const ModelConfig& m, int64_t N, float aux_scale) {
    const int64_t C = m.n_embd, E = m.n_expert, K = m.n_expert_used;
    const RouterConfig& rc = m.router;
    std::memset(s.dlogits, 0, N * E * sizeof(T));
    // routing indices are not differentiable; the router learns through the combine weights
    // (and the auxiliary losses)
    if (c.noisy) {
        std::memset(s.dscores, 0, N * E * sizeof(T));
        std::memset(s.dnoise, 0, N * E * sizeof(T));
        if (rc.norm_topk) ops::router_weights_backward(s.dscores, s.dweight, c.route);
        else ops::router_weights_full_backward(s.dscores, s.dweight, c.route, c.scores);
        // H = logits + eps * softplus(noise_logits)
        ops::noisy_scores_backward(s.dlogits, s.dnoise, s.dscores, c.noise_logits, c.eps, N, E);
        ops::linear_backward(dxn, g.ffn_gate_inp_noise, s.dnoise, c.xn, w.ffn_gate_inp_noise, N, C, E);
    } else if (rc.norm_topk) {
        ops::router_weights_backward(s.dlogits, s.dweight, c.route);
    } else {
        ops::router_weights_full_backward(s.dlogits, s.dweight, c.route, c.logits);
    }
    if (rc.balance_loss > 0)
        ops::switch_loss_backward(s.dlogits, c.probs, c.expert_load, N, E, K, rc.balance_loss, aux_scale);
    if (rc.z_loss > 0) ops::z_loss_backward(s.dlogits, c.logits, c.lse, N, E, rc.z_loss, aux_scale);
    // logits = xn · W_g^T
    ops::linear_backward(dxn, g.ffn_gate_inp, s.dlogits, c.xn, w.ffn_gate_inp, N, C, E);
}

template <class T>
void moe_experts_backward(const MoeWeights<T>& g, const FfnScratchT<T>& s, const FfnCacheT<T>& c,
                          const MoeWeights<T>& w, const ModelConfig& m, const ops::ExpertSegments& seg,
                          const ops::ExpertGradSink* sink) {
    MOE_PROFILE_SCOPE("moe experts bwd");
    // dxe (R, C) is written, not accumulated: no zeroing pass
    ops::moe_ffn_backward(s.dxe, g.ffn_gate_exps, g.ffn_up_exps, g.ffn_down_exps, s.dact, s.dhg, s.dhu, s.dye,
                          c.xe, c.hg, c.hu, c.act, w.ffn_gate_exps, w.ffn_up_exps, w.ffn_down_exps, seg,
                          m.n_embd, m.n_ff_exp, m.activation, sink, true);
}

template <class T>
void moe_backward(T* dxn, const MoeWeights<T>& g, const FfnScratchT<T>& s, const T* dout,
                  const FfnCacheT<T>& c, const MoeWeights<T>& w, const ModelConfig& m, int64_t N,
                  float aux_scale, const ops::ExpertGradSink* sink, ExpertRunner* experts, int64_t layer) {
    const int64_t C = m.n_embd, K = m.n_expert_used;
    const ops::MoeRouteT<T>& r = c.route;
    {
        MOE_PROFILE_SCOPE("moe combine bwd");
        parallel_zero(s.dye, r.R * C * sizeof(T));
        std::memset(s.dweight, 0, N * K * sizeof(T));
        // out = routed_scale * sum_k w[n,k] * ye[row(n,k)]
        ops::moe_combine_backward(s.dye, s.dweight, dout, c.ye, r, C, (T)m.router.routed_scale);
    }
    bool ran = false;
    if constexpr (std::is_same_v<T, float>) {
        if (experts) {  // expert parallel: s.dxe from s.dye on the experts' ranks
            experts->backward(s, c, w, m, layer);
            ran = true;
        }
    }
    if (!ran) moe_experts_backward(g, s, c, w, m, ops::ExpertSegments{0, r.E, r.expert_offsets}, sink);
    MOE_PROFILE_SCOPE("moe route+gather bwd");
    ops::moe_gather_backward(dxn, s.dxe, r, C);  // xe = xn[row_token]
    moe_route_backward(dxn, g, s, c, w, m, N, aux_scale);
}

// The routed part in float (the engine) and double (the finite-difference checks of
// tests/moe_pipeline.h).
#define MOE_INSTANTIATE_MOE_LAYER(T)                                                                         \
    template const ops::MoeRouteT<T>& moe_route_forward(FfnCacheT<T>&, const MoeWeights<T>&,                 \
                                                        const ModelConfig&, int64_t, const RouteContext&,   \
                                                        bool, const int32_t*);                              \
    template void moe_experts_forward(FfnCacheT<T>&, const MoeWeights<T>&, const ModelConfig&,               \
                                      const ops::ExpertSegments&, const QFfn*);                             \
    template void moe_forward(T*, FfnCacheT<T>&, const MoeWeights<T>&, const ModelConfig&, int64_t,          \
                              const RouteContext&, bool, const QFfn*, const int32_t*);                      \
    template void moe_route_backward(T*, const MoeWeights<T>&, const FfnScratchT<T>&, const FfnCacheT<T>&,   \
                                     const MoeWeights<T>&, const ModelConfig&, int64_t, float);             \
    template void moe_experts_backward(const MoeWeights<T>&, const FfnScratchT<T>&, const FfnCacheT<T>&,     \
                                       const MoeWeights<T>&, const ModelConfig&, const ops::ExpertSegments&, \
                                       const ops::ExpertGradSink*);                                         \
    template void moe_backward(T*, const MoeWeights<T>&, const FfnScratchT<T>&, const T*,                    \
                               const FfnCacheT<T>&, const MoeWeights<T>&, const ModelConfig&, int64_t,      \
                               float, const ops::ExpertGradSink*, ExpertRunner*, int64_t);
MOE_INSTANTIATE_MOE_LAYER(float)
MOE_INSTANTIATE_MOE_LAYER(double)
#undef MOE_INSTANTIATE_MOE_LAYER

void ffn_forward(float* out, FfnCache& c, const float* inp, const LayerWeights& w,
                 const ModelConfig& m, bool moe_layer, int64_t N, const RouteContext& ctx,
                 const QLayer* q) {
    const int64_t C = m.n_embd;
    if (!moe_layer) {
        MOE_PROFILE_SCOPE("dense ffn fwd");
        ops::rmsnorm_forward(c.xn, c.rstd, inp, w.ffn_norm, N, C, m.norm_eps);  // (N, C)
        dense_ffn_forward(out, c.hg, c.hu, c.act, c.xn, w.ffn_gate, w.ffn_up, w.ffn_down, q ? &q->ffn : nullptr, N,
                          C, m.n_ff, m.activation);                                       // (N, C)
        add_into(out, inp, N * C);
        return;
    }
    // only Model::forward_cached passes inference views: that is the decode / prefill path
    const bool decode = q != nullptr;
    {
        MOE_PROFILE_SCOPE("moe norm+residual fwd");
        ops::rmsnorm_forward(c.xn, c.rstd, inp, w.ffn_norm, N, C, m.norm_eps);         // (N, C)
    }
    // out = routed_scale * sum_k w[n,k] * expert_k(xn[n])
    moe_forward(out, c, moe_weights(w), m, N, ctx, decode, q ? &q->ffn : nullptr);  // (N, C)
    if (m.n_ff_shexp > 0) {
        MOE_PROFILE_SCOPE("moe shared expert fwd");
        dense_ffn_forward(c.sh_y, c.sh_hg, c.sh_hu, c.sh_act, c.xn, w.ffn_gate_shexp, w.ffn_up_shexp,
                          w.ffn_down_shexp, q ? &q->shexp : nullptr, N, C, m.n_ff_shexp, m.activation);  // (N, C)
        if (m.shexp_gate) small_linear(c.sh_z, c.xn, w.ffn_gate_inp_shexp, N, C, 1, decode);  // (N, 1)
        // out += sigmoid(z) * sh_y (ungated: out += sh_y)
        ops::shared_expert_add_forward(out, c.sh_s, m.shexp_gate ? c.sh_z : nullptr, c.sh_y, N, C);
    }
    MOE_PROFILE_SCOPE("moe norm+residual fwd");
    add_into(out, inp, N * C);
}

void ffn_backward(float* dresid, LayerWeights& g, FfnScratch& s, const FfnCache& c, const float* inp,
                  const LayerWeights& w, const ModelConfig& m, bool moe_layer, int64_t N,
                  float aux_scale, const ops::ExpertGradSink* sink, ExpertRunner* experts, int64_t layer) {
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
    // out = inp + moe(xn) + shexp(xn): d moe-output = dresid
    moe_backward(s.dxn, moe_weights(g), s, dresid, c, moe_weights(w), m, N, aux_scale, sink, experts, layer);
    MOE_PROFILE_SCOPE("moe norm bwd");
    ops::rmsnorm_backward(dresid, g.ffn_norm, s.dxn, inp, w.ffn_norm, c.rstd, N, C);
}

}  // namespace moe::layers
