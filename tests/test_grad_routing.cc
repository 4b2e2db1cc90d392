// Central finite differences in double (tests/gradcheck.h) for the routing ops of issue #3, and a
// check that each of their backwards accumulates (+=):
//  - noisy_scores (dlogits, dnoise_logits), alone and through the router (router_weights on H,
//    routing held fixed) and the two router linears (dx, dW_g, dW_noise);
//  - the combine weights over a rerouted / partly dropped assignment (routing held fixed);
//  - the Switch load-balancing loss (dlogits; the loads f held fixed), the router z-loss;
//  - the oracle moe_ref with noisy gating (dx, dw_router, dw_noise), and the whole MoE layer with
//    the new router, through the layer's own functions (tests/moe_pipeline.h), against the oracle
//    (output and every gradient).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "gradcheck.h"
#include "layers/ffn.h"
#include "moe_pipeline.h"
#include "ops/balance_loss.h"
#include "ops/linear.h"
#include "ops/moe_ref.h"
#include "ops/noisy_gating.h"
#include "ops/router.h"
#include "ops/router_capacity.h"

using namespace moe;
using namespace moe::test;
using ops::OverflowPolicy;


// ---------------------------------------------------------------- noisy scores

TEST(GradRouting, NoisyScores) {
    const int64_t N = 5, E = 6;
    Rng rng(1);
    Vec logits = randn(N * E, rng), nl = randn(N * E, rng, 3.0), g = randn(N * E, rng);
    Vec eps(N * E);
    ops::noisy_gating_draw_eps(eps.data(), N, E, 9, 1, 0);
    nl[0] = 25, nl[1] = -25;  // far tails of softplus
    auto fwd_l = [&](const Vec& p, Vec& out) {
        out.assign(N * E, 0);
        ops::noisy_scores_forward(out.data(), p.data(), nl.data(), eps.data(), N, E);
        return true;
    };
    auto fwd_nl = [&](const Vec& p, Vec& out) {
        out.assign(N * E, 0);
        ops::noisy_scores_forward(out.data(), logits.data(), p.data(), eps.data(), N, E);
        return true;
    };
    Vec dl = zeros(N * E), dnl = zeros(N * E);
    ops::noisy_scores_backward(dl.data(), dnl.data(), g.data(), nl.data(), eps.data(), N, E);
    EXPECT_GRAD_OK(check_grad(fwd_l, logits, g, dl), kTol, "noisy_scores dlogits");
    EXPECT_GRAD_OK(check_grad(fwd_nl, nl, g, dnl), kTol, "noisy_scores dnoise_logits");
    Vec dl2 = dl, dnl2 = dnl;
    ops::noisy_scores_backward(dl2.data(), dnl2.data(), g.data(), nl.data(), eps.data(), N, E);
    EXPECT_LE(doubling_error(dl, dl2), kAccTol);
    EXPECT_LE(doubling_error(dnl, dnl2), kAccTol);
    // either gradient may be null
    Vec dl3 = zeros(N * E), dnl3 = zeros(N * E);
    ops::noisy_scores_backward(dl3.data(), (double*)nullptr, g.data(), nl.data(), eps.data(), N, E);
    ops::noisy_scores_backward((double*)nullptr, dnl3.data(), g.data(), nl.data(), eps.data(), N, E);
    EXPECT_EQ(dl3, dl);
    EXPECT_EQ(dnl3, dnl);
}

// x -> (logits = x W_g^T, noise_logits = x W_noise^T) -> H -> top-K on H (held fixed) ->
// combine weights = softmax over the chosen H. Checked for dx, dW_g, dW_noise.
TEST(GradRouting, NoisyGatingThroughRouterWeights) {
    const int64_t N = 7, C = 5, E = 6, K = 3;
    Rng rng(2);
    Vec x = randn(N * C, rng), wg = randn(E * C, rng, 0.7), wn = randn(E * C, rng, 0.7),
        g = randn(N * K, rng);
    Vec eps(N * E);
    ops::noisy_gating_draw_eps(eps.data(), N, E, 9, 2, 1);
    std::vector<int32_t> routing(N * K);
    auto forward = [&](const Vec& xx, const Vec& wgg, const Vec& wnn, Vec& w, Vec& logits, Vec& nl,
                       Vec& H, bool route) {
        logits.assign(N * E, 0), nl.assign(N * E, 0), H.assign(N * E, 0), w.assign(N * K, 0);
        ops::linear_forward(logits.data(), xx.data(), wgg.data(), N, C, E);
        ops::linear_forward(nl.data(), xx.data(), wnn.data(), N, C, E);
        ops::noisy_scores_forward(H.data(), logits.data(), nl.data(), eps.data(), N, E);
        if (route) ops::router_topk(routing.data(), H.data(), N, E, K);
        ops::MoeRouteT<double> r = slots_route(N, E, K, routing.data(), w.data());
        ops::router_weights_forward(r, H.data());
    };
    Vec w, logits, nl, H;
    forward(x, wg, wn, w, logits, nl, H, true);
    // noise actually changed the routing of some token (else this is the plain router test)
    std::vector<int32_t> clean(N * K);
    ops::router_topk(clean.data(), logits.data(), N, E, K);
    EXPECT_NE(clean, routing);
    // backward: dweight -> dH -> (dlogits, dnoise_logits) -> (dx, dW_g, dW_noise)
    Vec dH = zeros(N * E), dl = zeros(N * E), dnl = zeros(N * E);
    Vec dx = zeros(N * C), dwg = zeros(E * C), dwn = zeros(E * C);
    ops::router_weights_backward(dH.data(), g.data(), slots_route(N, E, K, routing.data(), w.data()));
    ops::noisy_scores_backward(dl.data(), dnl.data(), dH.data(), nl.data(), eps.data(), N, E);
    ops::linear_backward(dx.data(), dwg.data(), dl.data(), x.data(), wg.data(), N, C, E);
    ops::linear_backward(dx.data(), dwn.data(), dnl.data(), x.data(), wn.data(), N, C, E);
    auto make = [&](int which) {
        return [&, which](const Vec& p, Vec& out) {
            Vec a, b, c;
            forward(which == 0 ? p : x, which == 1 ? p : wg, which == 2 ? p : wn, out, a, b, c, false);
            return true;
        };
    };
    EXPECT_GRAD_OK(check_grad(make(0), x, g, dx), kTol, "noisy gating dx");
    EXPECT_GRAD_OK(check_grad(make(1), wg, g, dwg), kTol, "noisy gating dW_g");
    EXPECT_GRAD_OK(check_grad(make(2), wn, g, dwn), kTol, "noisy gating dW_noise");
}

// Combine weights over a capacity-constrained assignment (reroutes and drops), routing held fixed:
// the softmax over the served experts' scores, whatever slot order the reroute left.
TEST(GradRouting, RerouteCombineWeights) {
    const int64_t N = 12, E = 4, K = 2;
    Rng rng(3);
    Vec s = randn(N * E, rng), g = randn(N * K, rng);
    for (int64_t n = 0; n < N; ++n) s[n * E + 1] += 2;  // popular expert 1: overflow
    for (auto policy : {OverflowPolicy::reroute, OverflowPolicy::drop}) {
        const bool rr = policy == OverflowPolicy::reroute;
        std::vector<int32_t> ex(N * K);
        std::vector<int64_t> load(E);
        ops::RouteStats st;
        ops::router_assign(ex.data(), load.data(), &st, s.data(), N, E, K, 5, policy);
        if (rr) {
            EXPECT_GT(st.rerouted, 0);
            EXPECT_GT(st.dropped, 0);  // 20 places for 24 slots
        } else {
            EXPECT_GT(st.dropped, 0);
        }
        auto fwd = [&](const Vec& p, Vec& out) {
            out.assign(N * K, 0);
            ops::MoeRouteT<double> r = slots_route(N, E, K, ex.data(), out.data());
            ops::router_weights_forward(r, p.data());
            return true;
        };
        Vec w(N * K), ds = zeros(N * E);
        fwd(s, w);
        ops::router_weights_backward(ds.data(), g.data(), slots_route(N, E, K, ex.data(), w.data()));
        const std::string what = rr ? "rerouted combine dscores" : "dropped combine dscores";
        EXPECT_GRAD_OK(check_grad(fwd, s, g, ds), kTol, what);
        // only the served experts' scores get a gradient
        for (int64_t n = 0; n < N; ++n)
            for (int64_t e = 0; e < E; ++e) {
                bool served = false;
                for (int64_t k = 0; k < K; ++k) served |= ex[n * K + k] == e;
                int64_t kept = 0;
                for (int64_t k = 0; k < K; ++k) kept += ex[n * K + k] >= 0;
                if (!served || kept < 2) {
                    EXPECT_EQ(ds[n * E + e], 0.0) << n << " " << e;
                }
            }
    }
}

// ---------------------------------------------------------------- balancing losses

TEST(GradRouting, SwitchLoss) {
    const int64_t N = 9, E = 5, K = 2;
    Rng rng(4);
    Vec logits = randn(N * E, rng, 1.5);
    std::vector<int32_t> ex(N * K);
    std::vector<int64_t> load(E);
    ops::RouteStats st;
    ops::router_assign(ex.data(), load.data(), &st, logits.data(), N, E, K, 4, OverflowPolicy::drop);
    EXPECT_GT(st.dropped, 0);  // 20 places for 18 slots, but uneven demand: some dropped
    const double coeff = 0.7, dloss = 1.3;
    const Vec g = {dloss};
    // the loads f are held fixed (they are not differentiable)
    auto fwd = [&](const Vec& p, Vec& out) {
        Vec probs(N * E);
        out = {ops::switch_loss_forward(probs.data(), p.data(), load.data(), N, E, K, coeff)};
        return true;
    };
    Vec probs(N * E), dl = zeros(N * E);
    ops::switch_loss_forward(probs.data(), logits.data(), load.data(), N, E, K, coeff);
    ops::switch_loss_backward(dl.data(), probs.data(), load.data(), N, E, K, coeff, dloss);
    EXPECT_GRAD_OK(check_grad(fwd, logits, g, dl), kTol, "switch loss dlogits");
    Vec dl2 = dl;
    ops::switch_loss_backward(dl2.data(), probs.data(), load.data(), N, E, K, coeff, dloss);
    EXPECT_LE(doubling_error(dl, dl2), kAccTol);
    // each row's gradient sums to 0 (softmax is shift invariant)
    for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t e = 0; e < E; ++e) s += dl[n * E + e];
        EXPECT_NEAR(s, 0.0, 1e-15);
    }
}

TEST(GradRouting, ZLoss) {
    const int64_t N = 6, E = 7;
    Rng rng(5);
    Vec logits = randn(N * E, rng, 2.0);
    logits[3] = 40;  // a large logit: the stable logsumexp
    const double coeff = 0.01, dloss = -0.8;
    const Vec g = {dloss};
    auto fwd = [&](const Vec& p, Vec& out) {
        Vec lse(N);
        out = {ops::z_loss_forward(lse.data(), p.data(), N, E, coeff)};
        return true;
    };
    Vec lse(N), dl = zeros(N * E);
    ops::z_loss_forward(lse.data(), logits.data(), N, E, coeff);
    ops::z_loss_backward(dl.data(), logits.data(), lse.data(), N, E, coeff, dloss);
    EXPECT_GRAD_OK(check_grad(fwd, logits, g, dl), kTol, "z-loss dlogits");
    Vec dl2 = dl;
    ops::z_loss_backward(dl2.data(), logits.data(), lse.data(), N, E, coeff, dloss);
    EXPECT_LE(doubling_error(dl, dl2), kAccTol);
}

// ---------------------------------------------------------------- the oracle with noisy gating

// moe_ref with RouterOptions (noise, selection bias, capacity with reroute): its backward against
// finite differences of its forward with the routing held fixed, for dx, dw_router and dw_noise.
TEST(GradRouting, OracleWithNoisyGating) {
    const int64_t N = 8, C = 4, E = 4, K = 2, F = 3;
    const auto act = ops::Activation::swiglu;
    Rng rng(6);
    Vec x = randn(N * C, rng), wr = randn(E * C, rng), wn = randn(E * C, rng, 0.7),
        wg = randn(E * F * C, rng, 0.6), wu = randn(E * F * C, rng, 0.6), wd = randn(E * C * F, rng, 0.6),
        g = randn(N * C, rng);
    Vec eps(N * E);
    ops::noisy_gating_draw_eps(eps.data(), N, E, 4, 3, 2);
    const std::vector<float> bias = {0.5f, 0.f, -0.3f, 0.1f};
    ops::ref::RouterOptions<double> opt;
    opt.w_noise = wn.data();
    opt.eps = eps.data();
    opt.sel_bias = bias.data();
    opt.capacity = 4;
    opt.policy = OverflowPolicy::reroute;
    std::vector<int32_t> routing(N * K);
    Vec out(N * C), tw(N * K);
    ops::ref::moe_ref_forward(out.data(), routing.data(), tw.data(), x.data(), wr.data(), wg.data(),
                              wu.data(), wd.data(), N, C, E, K, F, act, nullptr, &opt);
    Vec dx = zeros(N * C), dwr = zeros(E * C), dwn = zeros(E * C);
    ops::ref::moe_ref_backward(dx.data(), dwr.data(), (double*)nullptr, (double*)nullptr, (double*)nullptr,
                               g.data(), x.data(), wr.data(), wg.data(), wu.data(), wd.data(),
                               routing.data(), N, C, E, K, F, act, &opt, dwn.data());
    auto make = [&](int which) {
        return [&, which](const Vec& p, Vec& o) {
            o.assign(N * C, 0);
            ops::ref::RouterOptions<double> op = opt;
            if (which == 2) op.w_noise = p.data();
            ops::ref::moe_ref_forward(o.data(), (int32_t*)nullptr, (double*)nullptr,
                                      (which == 0 ? p : x).data(), (which == 1 ? p : wr).data(),
                                      wg.data(), wu.data(), wd.data(), N, C, E, K, F, act,
                                      routing.data(), &op);
            return true;
        };
    };
    EXPECT_GRAD_OK(check_grad(make(0), x, g, dx), kTol, "oracle+noise dx");
    EXPECT_GRAD_OK(check_grad(make(1), wr, g, dwr), kTol, "oracle+noise dw_router");
    EXPECT_GRAD_OK(check_grad(make(2), wn, g, dwn), kTol, "oracle+noise dw_noise");
    Vec dwn2 = dwn;
    ops::ref::moe_ref_backward((double*)nullptr, (double*)nullptr, (double*)nullptr, (double*)nullptr,
                               (double*)nullptr, g.data(), x.data(), wr.data(), wg.data(), wu.data(),
                               wd.data(), routing.data(), N, C, E, K, F, act, &opt, dwn2.data());
    EXPECT_LE(doubling_error(dwn, dwn2), kAccTol);

}

// The whole MoE layer with the new router, through the layer's own functions in double
// (layers::moe_forward / moe_backward of layers/ffn.cc, via tests/moe_pipeline.h: a training
// forward with noisy gating, the selection bias and a capacity), against the oracle: routing,
// output and every gradient.
//   forward:  logits, noise_logits = linear; H = noisy_scores; sel = H + bias; router_assign(sel);
//             router_weights(H); dispatch, gather, grouped FFN, combine
//   backward: combine -> dweight; FFN; gather; router_weights_backward -> dH;
//             noisy_scores_backward -> dlogits, dnoise_logits; linear_backward for each
TEST(GradRouting, FastCompositionMatchesOracle) {
    const int64_t N = 24, C = 6, E = 5, K = 2, F = 4;
    const auto act = ops::Activation::swiglu;
    Rng rng(7);
    Vec x = randn(N * C, rng), wr = randn(E * C, rng), wn = randn(E * C, rng, 0.7),
        wg = randn(E * F * C, rng, 0.6), wu = randn(E * F * C, rng, 0.6), wd = randn(E * C * F, rng, 0.6),
        g = randn(N * C, rng);
    for (int64_t c = 0; c < C; ++c) wr[c] += 0.8;  // expert 0 popular: overflow
    // the noise of a training forward of layer 0 at step 8 with seed 5 (the layer draws the same)
    layers::RouteContext ctx;
    ctx.train = true, ctx.seed = 5, ctx.step = 8, ctx.layer = 0;
    Vec eps(N * E);
    ops::noisy_gating_draw_eps(eps.data(), N, E, ctx.seed, ctx.step, ctx.layer);
    const std::vector<float> bias = {0.2f, 0.f, -0.3f, 0.1f, 0.f};
    for (auto policy : {OverflowPolicy::none, OverflowPolicy::drop, OverflowPolicy::reroute}) {
        SCOPED_TRACE(policy == OverflowPolicy::none ? "none" : policy == OverflowPolicy::drop ? "drop" : "reroute");
        const int64_t cap = ops::expert_capacity(1.0, N, E, K);
        // fast forward
        RouterConfig rc;
        rc.noisy_gating = true, rc.bias_balance = true, rc.capacity_factor = 1.0, rc.overflow = policy;
        MoePipeline<double> fast(N, C, E, K, F, act, rc, ctx);
        fast.forward(x.data(), wr.data(), wg.data(), wu.data(), wd.data(), nullptr, wn.data(), bias.data());
        ASSERT_TRUE(fast.c.noisy);
        EXPECT_EQ(fast.eps, eps);
        const std::vector<int32_t>& ex = fast.topk_expert;
        const Vec &w = fast.topk_weight, &out = fast.out;
        const ops::RouteStats st = fast.c.stats;
        EXPECT_EQ(fast.R, N * K - st.dropped);
        if (policy == OverflowPolicy::reroute) {
            EXPECT_GT(st.rerouted, 0);
        }
        // oracle
        ops::ref::RouterOptions<double> opt;
        opt.w_noise = wn.data();
        opt.eps = eps.data();
        opt.sel_bias = bias.data();
        opt.capacity = cap;
        opt.policy = policy;
        std::vector<int32_t> rex(N * K);
        Vec rout(N * C), rw(N * K);
        ops::ref::moe_ref_forward(rout.data(), rex.data(), rw.data(), x.data(), wr.data(), wg.data(),
                                  wu.data(), wd.data(), N, C, E, K, F, act, nullptr, &opt);
        ASSERT_EQ(ex, rex);
        EXPECT_LE(max_rel_diff(w, rw), 1e-13);
        EXPECT_LE(max_rel_diff(out, rout), 1e-13);
        // fast backward
        Vec dx = zeros(N * C), dwr = zeros(E * C), dwn = zeros(E * C), dwg = zeros(E * F * C),
            dwu = zeros(E * F * C), dwd = zeros(E * C * F);
        fast.backward(dx.data(), dwr.data(), dwg.data(), dwu.data(), dwd.data(), g.data(), dwn.data());
        // oracle backward
        Vec rx = zeros(N * C), rwr = zeros(E * C), rwn = zeros(E * C), rwg = zeros(E * F * C),
            rwu = zeros(E * F * C), rwd = zeros(E * C * F);
        ops::ref::moe_ref_backward(rx.data(), rwr.data(), rwg.data(), rwu.data(), rwd.data(), g.data(),
                                   x.data(), wr.data(), wg.data(), wu.data(), wd.data(), rex.data(), N,
                                   C, E, K, F, act, &opt, rwn.data());
        EXPECT_LE(max_rel_diff(dx, rx), 1e-12);
        EXPECT_LE(max_rel_diff(dwr, rwr), 1e-12);
        EXPECT_LE(max_rel_diff(dwn, rwn), 1e-12);
        EXPECT_LE(max_rel_diff(dwg, rwg), 1e-12);
        EXPECT_LE(max_rel_diff(dwu, rwu), 1e-12);
        EXPECT_LE(max_rel_diff(dwd, rwd), 1e-12);
        EXPECT_GT(std::fabs(dwn[0]) + std::fabs(dwn[1]), 0.0);  // W_noise does learn
    }
}
