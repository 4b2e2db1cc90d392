#pragma once
// The routed part of an MoE layer (layers/ffn.cc without its rmsnorm, shared expert and residual),
// run through the very functions ffn_forward / ffn_backward call: layers::moe_forward (route ->
// gather -> experts -> combine) and layers::moe_backward, for any T. In double it is what the
// finite difference checks differentiate; in float it runs the oneDNN path that
// tests/test_moe_ref.cc compares against the per-token oracle ops/moe_ref.h.
//
// The pipeline owns the buffers the model's activation arena would hold, sized for R_max = N*K
// routed rows, and exposes them as vectors (the (R, ·) ones cut to this forward's R rows).
#include <cstdint>
#include <vector>

#include "layers/ffn.h"
#include "model/config.h"

namespace moe::test {

// A route that holds only the slots: topk_expert and topk_weight (N, K) of E experts, what
// router_weights_forward / _backward read (router_weights_forward writes topk_weight: pass a
// writable buffer there). For the op tests; moe_dispatch_build needs the row buffers as well.
template <class T>
ops::MoeRouteT<T> slots_route(int64_t N, int64_t E, int64_t K, const int32_t* topk_expert, const T* topk_weight) {
    ops::MoeRouteT<T> r;
    r.N = N, r.E = E, r.K = K;
    r.topk_expert = const_cast<int32_t*>(topk_expert);
    r.topk_weight = const_cast<T*>(topk_weight);
    return r;
}

template <class T>
struct MoePipeline {
    int64_t N = 0, C = 0, E = 0, K = 0, F = 0;
    ops::Activation act = ops::Activation::swiglu;
    ModelConfig m;              // the layer's dims and router options (default: the plain router)
    layers::RouteContext ctx;   // training or evaluation, and the key of the noise draw

    // forward record (the buffers of c)
    std::vector<T> logits, noise_logits, eps, scores, sel, probs, lse;  // (N, E), lse (N)
    std::vector<T> topk_weight, xe, hg, hu, a, ye, out;
    std::vector<int32_t> topk_expert, expert_offsets, row_token, row_slot, token_row;
    std::vector<int64_t> expert_load;
    int64_t R = 0;
    layers::FfnCacheT<T> c;
    layers::MoeWeights<T> w;

    // rc, ctx: the router options and context of the forward (noise, capacity, bias, aux losses)
    MoePipeline(int64_t N_, int64_t C_, int64_t E_, int64_t K_, int64_t F_, ops::Activation act_,
                const RouterConfig& rc = {}, const layers::RouteContext& ctx_ = {})
        : N(N_), C(C_), E(E_), K(K_), F(F_), act(act_), ctx(ctx_) {
        m.n_embd = C, m.n_expert = E, m.n_expert_used = K, m.n_ff_exp = F, m.activation = act;
        m.router = rc;
    }
    // c points into this object's vectors
    MoePipeline(const MoePipeline&) = delete;
    MoePipeline& operator=(const MoePipeline&) = delete;

    // out (N, C) for x (N, C), router wr (E, C), experts wg, wu (E, F, C), wd (E, C, F).
    // routing (N, K): when non-null it replaces the router's choice (held fixed). wn (E, C): W_noise
    // (noisy gating); bias (E): the selection bias (bias_balance).
    void forward(const T* x, const T* wr, const T* wg, const T* wu, const T* wd,
                 const int32_t* routing = nullptr, const T* wn = nullptr, const float* bias = nullptr) {
        const int64_t RM = N * K;
        for (auto* v : {&logits, &noise_logits, &eps, &scores, &sel, &probs}) v->assign(N * E, T(0));
        lse.assign(N, T(0));
        topk_expert.assign(N * K, 0);
        topk_weight.assign(N * K, T(0));
        expert_offsets.assign(E + 1, 0);
        row_token.assign(RM, 0);
        row_slot.assign(RM, 0);
        token_row.assign(N * K, 0);
        expert_load.assign(E, 0);
        xe.assign(RM * C, T(0));
        hg.assign(RM * F, T(0));
        hu.assign(RM * F, T(0));
        a.assign(RM * F, T(0));
        ye.assign(RM * C, T(0));
        out.assign(N * C, T(0));
        c = {};
        // the layer only reads its input and weights (LayerWeights and FfnCache hold them non-const)
        c.xn = const_cast<T*>(x);
        c.logits = logits.data(), c.noise_logits = noise_logits.data(), c.eps = eps.data();
        c.scores = scores.data(), c.sel = sel.data(), c.probs = probs.data(), c.lse = lse.data();
        c.expert_load = expert_load.data();
        c.route.topk_expert = topk_expert.data(), c.route.topk_weight = topk_weight.data();
        c.route.expert_offsets = expert_offsets.data(), c.route.row_token = row_token.data();
        c.route.row_slot = row_slot.data(), c.route.token_row = token_row.data(), c.route.R_max = RM;
        c.xe = xe.data(), c.hg = hg.data(), c.hu = hu.data(), c.act = a.data(), c.ye = ye.data();
        w = {};
        w.ffn_gate_inp = const_cast<T*>(wr), w.ffn_gate_inp_noise = const_cast<T*>(wn);
        w.ffn_gate_bias = const_cast<float*>(bias);
        w.ffn_gate_exps = const_cast<T*>(wg), w.ffn_up_exps = const_cast<T*>(wu);
        w.ffn_down_exps = const_cast<T*>(wd);
        layers::moe_forward(out.data(), c, w, m, N, ctx, false, nullptr, routing);
        R = c.route.R;
        // this forward's rows (shrinking keeps the storage c points to)
        for (auto* v : {&xe, &ye}) v->resize(R * C);
        for (auto* v : {&hg, &hu, &a}) v->resize(R * F);
        row_token.resize(R);
        row_slot.resize(R);
    }

    // Accumulates dx (N, C), dwr (E, C), dwg, dwu (E, F, C), dwd (E, C, F) and, with noisy gating,
    // dwn (E, C) for dout (N, C) (the auxiliary losses with upstream gradient 1).
    void backward(T* dx, T* dwr, T* dwg, T* dwu, T* dwd, const T* dout, T* dwn = nullptr) const {
        const int64_t RM = N * K;
        std::vector<T> dlogits(N * E), dscores(N * E), dnoise(N * E), dweight(N * K), dxe(RM * C),
            dye(RM * C), dact(RM * F), dhg(RM * F), dhu(RM * F);
        layers::FfnScratchT<T> s;
        s.dlogits = dlogits.data(), s.dscores = dscores.data(), s.dnoise = dnoise.data();
        s.dweight = dweight.data(), s.dxe = dxe.data(), s.dye = dye.data(), s.dact = dact.data();
        s.dhg = dhg.data(), s.dhu = dhu.data();
        layers::MoeWeights<T> g;
        g.ffn_gate_inp = dwr, g.ffn_gate_inp_noise = dwn, g.ffn_gate_exps = dwg, g.ffn_up_exps = dwu;
        g.ffn_down_exps = dwd;
        layers::moe_backward(dx, g, s, dout, c, w, m, N, 1.f);
    }
};

}  // namespace moe::test
