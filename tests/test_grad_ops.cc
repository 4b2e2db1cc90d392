// Central finite differences in double for the backward of every op in src/ops/, and a check that
// every backward accumulates (+=) into its gradients rather than overwriting them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#include "gradcheck.h"
#include "moe_pipeline.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/moe_dispatch.h"
#include "ops/moe_ffn.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/shared_expert.h"
#include "ops/router.h"
#include "ops/softmax_xent.h"

using namespace moe;
using namespace moe::test;
using ops::Activation;

namespace {


// Values bounded away from 0 (for ReLU inputs: no kink within a finite-difference step).
Vec away_from_zero(int64_t n, Rng& rng, double margin) {
    Vec v(n);
    for (auto& x : v) {
        const double m = margin + std::fabs(rng.normal());
        x = rng.uniform() < 0.5 ? -m : m;
    }
    return v;
}

// Routing with dropped slots: each row distinct experts, some slots -1, one row fully dropped.
std::vector<int32_t> routing_with_drops(int64_t N, int64_t E, int64_t K, Rng& rng) {
    std::vector<int32_t> t(N * K);
    for (int64_t n = 0; n < N; ++n) {
        std::vector<int32_t> perm(E);
        for (int64_t e = 0; e < E; ++e) perm[e] = (int32_t)e;
        for (int64_t e = E - 1; e > 0; --e) std::swap(perm[e], perm[rng.below(e + 1)]);
        for (int64_t k = 0; k < K; ++k) t[n * K + k] = k < E ? perm[k] : -1;
    }
    t[1 * K + K - 1] = -1;  // token 1 drops its last slot
    t[2 * K + 0] = -1;      // token 2 drops its first slot
    for (int64_t k = 0; k < K; ++k) t[3 * K + k] = -1;  // token 3 is dropped entirely
    return t;
}

}  // namespace

// ---------------------------------------------------------------- linear

TEST(GradOps, Linear) {
    const int64_t N = 3, IN = 5, OUT = 4;
    Rng rng(1);
    Vec inp = randn(N * IN, rng), w = randn(OUT * IN, rng), g = randn(N * OUT, rng);
    auto fwd_inp = [&](const Vec& p, Vec& out) {
        out.assign(N * OUT, 0);
        ops::linear_forward(out.data(), p.data(), w.data(), N, IN, OUT);
        return true;
    };
    auto fwd_w = [&](const Vec& p, Vec& out) {
        out.assign(N * OUT, 0);
        ops::linear_forward(out.data(), inp.data(), p.data(), N, IN, OUT);
        return true;
    };
    Vec dinp = zeros(N * IN), dw = zeros(OUT * IN);
    ops::linear_backward(dinp.data(), dw.data(), g.data(), inp.data(), w.data(), N, IN, OUT);
    EXPECT_GRAD_OK(check_grad(fwd_inp, inp, g, dinp), kTol, "linear dinp");
    EXPECT_GRAD_OK(check_grad(fwd_w, w, g, dw), kTol, "linear dweight");

    Vec dinp2 = dinp, dw2 = dw;
    ops::linear_backward(dinp2.data(), dw2.data(), g.data(), inp.data(), w.data(), N, IN, OUT);
    EXPECT_LE(doubling_error(dinp, dinp2), kAccTol);
    EXPECT_LE(doubling_error(dw, dw2), kAccTol);
    // either gradient may be null
    Vec dinp3 = zeros(N * IN), dw3 = zeros(OUT * IN);
    ops::linear_backward(dinp3.data(), (double*)nullptr, g.data(), inp.data(), w.data(), N, IN, OUT);
    ops::linear_backward((double*)nullptr, dw3.data(), g.data(), inp.data(), w.data(), N, IN, OUT);
    EXPECT_EQ(dinp3, dinp);
    EXPECT_EQ(dw3, dw);
}

// ---------------------------------------------------------------- embedding

TEST(GradOps, Embedding) {
    const int64_t V = 6, C = 4, N = 7;
    const std::vector<int32_t> tokens = {3, 0, 3, 5, 1, 3, 0};  // repeats; tokens 2 and 4 unused
    Rng rng(2);
    Vec wte = randn(V * C, rng), g = randn(N * C, rng);
    auto fwd = [&](const Vec& p, Vec& out) {
        out.assign(N * C, 0);
        ops::embedding_forward(out.data(), tokens.data(), p.data(), N, C);
        return true;
    };
    Vec dwte = zeros(V * C);
    ops::embedding_backward(dwte.data(), g.data(), tokens.data(), N, C);
    EXPECT_GRAD_OK(check_grad(fwd, wte, g, dwte), kTol, "embedding dwte");
    Vec dwte2 = dwte;
    ops::embedding_backward(dwte2.data(), g.data(), tokens.data(), N, C);
    EXPECT_LE(doubling_error(dwte, dwte2), kAccTol);
}

// ---------------------------------------------------------------- rmsnorm

TEST(GradOps, RmsNorm) {
    const int64_t N = 4, C = 8;
    const double eps = 1e-5;
    Rng rng(3);
    Vec inp = randn(N * C, rng), w = uniform(C, rng, 0.5, 1.5), g = randn(N * C, rng);
    Vec rstd(N);
    auto fwd_inp = [&](const Vec& p, Vec& out) {
        out.assign(N * C, 0);
        Vec r(N);
        ops::rmsnorm_forward(out.data(), r.data(), p.data(), w.data(), N, C, eps);
        return true;
    };
    auto fwd_w = [&](const Vec& p, Vec& out) {
        out.assign(N * C, 0);
        Vec r(N);
        ops::rmsnorm_forward(out.data(), r.data(), inp.data(), p.data(), N, C, eps);
        return true;
    };
    Vec out(N * C);
    ops::rmsnorm_forward(out.data(), rstd.data(), inp.data(), w.data(), N, C, eps);
    Vec dinp = zeros(N * C), dw = zeros(C);
    ops::rmsnorm_backward(dinp.data(), dw.data(), g.data(), inp.data(), w.data(), rstd.data(), N, C);
    EXPECT_GRAD_OK(check_grad(fwd_inp, inp, g, dinp), kTol, "rmsnorm dinp");
    EXPECT_GRAD_OK(check_grad(fwd_w, w, g, dw), kTol, "rmsnorm dweight");
    Vec dinp2 = dinp, dw2 = dw;
    ops::rmsnorm_backward(dinp2.data(), dw2.data(), g.data(), inp.data(), w.data(), rstd.data(), N, C);
    EXPECT_LE(doubling_error(dinp, dinp2), kAccTol);
    EXPECT_LE(doubling_error(dw, dw2), kAccTol);

    // small-magnitude rows, where eps matters (mean square 1e-6 vs eps 1e-5); step scaled alike
    Vec small = inp;
    for (auto& v : small) v *= 1e-3;
    ops::rmsnorm_forward(out.data(), rstd.data(), small.data(), w.data(), N, C, eps);
    Vec ds = zeros(N * C), dws = zeros(C);
    ops::rmsnorm_backward(ds.data(), dws.data(), g.data(), small.data(), w.data(), rstd.data(), N, C);
    EXPECT_GRAD_OK(check_grad(fwd_inp, small, g, ds, 1e-9), kTol, "rmsnorm dinp (small rows)");
}

// ---------------------------------------------------------------- rope

TEST(GradOps, Rope) {
    // rope_backward transforms the gradient in place (it is not an accumulating backward).
    const int64_t B = 2, T = 5, NH = 3, D = 8;
    Rng rng(4);
    Vec table(T * (D / 2) * 2);
    ops::rope_table(table.data(), T, D, 100.0);
    Vec x = randn(B * T * NH * D, rng), g = randn(B * T * NH * D, rng);
    auto fwd = [&](const Vec& p, Vec& out) {
        out = p;
        ops::rope_forward(out.data(), table.data(), B, T, NH, D);
        return true;
    };
    Vec dx = g;
    ops::rope_backward(dx.data(), table.data(), B, T, NH, D);
    EXPECT_GRAD_OK(check_grad(fwd, x, g, dx), kTol, "rope dx");
    // rotation: backward(forward(x)) = x
    Vec y = x;
    ops::rope_forward(y.data(), table.data(), B, T, NH, D);
    ops::rope_backward(y.data(), table.data(), B, T, NH, D);
    EXPECT_LE(max_rel_diff(y, x), 1e-14);
}

// ---------------------------------------------------------------- attention

static void attention_case(int64_t H, int64_t Hkv, uint64_t seed) {
    const int64_t B = 2, T = 5, D = 4;
    Rng rng(seed);
    const int64_t nq = B * T * H * D, nkv = B * T * Hkv * D, natt = B * H * T * T;
    Vec q = randn(nq, rng), k = randn(nkv, rng), v = randn(nkv, rng), g = randn(nq, rng);
    auto run = [&](const Vec& qq, const Vec& kk, const Vec& vv, Vec& out) {
        out.assign(nq, 0);
        Vec att(natt);
        ops::attention_forward(out.data(), att.data(), qq.data(), kk.data(), vv.data(), B, T, H, Hkv, D);
        return true;
    };
    Vec out(nq), att(natt);
    ops::attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D);
    Vec dq = zeros(nq), dk = zeros(nkv), dv = zeros(nkv), datt(natt);
    ops::attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), g.data(), q.data(), k.data(),
                            v.data(), att.data(), B, T, H, Hkv, D);
    const std::string tag = "attention H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv);
    EXPECT_GRAD_OK(check_grad([&](const Vec& p, Vec& o) { return run(p, k, v, o); }, q, g, dq), kTol,
                   tag + " dq");
    EXPECT_GRAD_OK(check_grad([&](const Vec& p, Vec& o) { return run(q, p, v, o); }, k, g, dk), kTol,
                   tag + " dk");
    EXPECT_GRAD_OK(check_grad([&](const Vec& p, Vec& o) { return run(q, k, p, o); }, v, g, dv), kTol,
                   tag + " dv");
    Vec dq2 = dq, dk2 = dk, dv2 = dv;
    ops::attention_backward(dq2.data(), dk2.data(), dv2.data(), datt.data(), g.data(), q.data(),
                            k.data(), v.data(), att.data(), B, T, H, Hkv, D);
    EXPECT_LE(doubling_error(dq, dq2), kAccTol);
    EXPECT_LE(doubling_error(dk, dk2), kAccTol);
    EXPECT_LE(doubling_error(dv, dv2), kAccTol);

    // the float path (the one that is optimised) against the double one, forward and backward
    auto tof = [](const Vec& a) { return std::vector<float>(a.begin(), a.end()); };
    std::vector<float> qf = tof(q), kf = tof(k), vf = tof(v), gf = tof(g);
    std::vector<float> outf(nq), attf(natt), dqf(nq, 0.f), dkf(nkv, 0.f), dvf(nkv, 0.f), dattf(natt);
    ops::attention_forward(outf.data(), attf.data(), qf.data(), kf.data(), vf.data(), B, T, H, Hkv, D);
    ops::attention_backward(dqf.data(), dkf.data(), dvf.data(), dattf.data(), gf.data(), qf.data(),
                            kf.data(), vf.data(), attf.data(), B, T, H, Hkv, D);
    EXPECT_LE(max_rel_diff(outf, out), 1e-5) << tag;
    EXPECT_LE(max_rel_diff(dqf, dq), 1e-5) << tag;
    EXPECT_LE(max_rel_diff(dkf, dk), 1e-5) << tag;
    EXPECT_LE(max_rel_diff(dvf, dv), 1e-5) << tag;
}

TEST(GradOps, AttentionGqa) { attention_case(4, 2, 5); }
TEST(GradOps, AttentionMha) { attention_case(4, 4, 6); }
TEST(GradOps, AttentionMqa) { attention_case(4, 1, 7); }

// ---------------------------------------------------------------- activations

TEST(GradOps, SwiGlu) {
    const int64_t n = 24;
    Rng rng(8);
    Vec gate = randn(n, rng, 2.0), up = randn(n, rng), g = randn(n, rng);
    auto fwd_gate = [&](const Vec& p, Vec& out) {
        out.assign(n, 0);
        ops::swiglu_forward(out.data(), p.data(), up.data(), n);
        return true;
    };
    auto fwd_up = [&](const Vec& p, Vec& out) {
        out.assign(n, 0);
        ops::swiglu_forward(out.data(), gate.data(), p.data(), n);
        return true;
    };
    Vec dgate = zeros(n), dup = zeros(n);
    ops::swiglu_backward(dgate.data(), dup.data(), g.data(), gate.data(), up.data(), n);
    EXPECT_GRAD_OK(check_grad(fwd_gate, gate, g, dgate), kTol, "swiglu dgate");
    EXPECT_GRAD_OK(check_grad(fwd_up, up, g, dup), kTol, "swiglu dup");
    Vec dgate2 = dgate, dup2 = dup;
    ops::swiglu_backward(dgate2.data(), dup2.data(), g.data(), gate.data(), up.data(), n);
    EXPECT_LE(doubling_error(dgate, dgate2), kAccTol);
    EXPECT_LE(doubling_error(dup, dup2), kAccTol);
}

TEST(GradOps, Relu) {
    const int64_t n = 24;
    Rng rng(9);
    Vec h = away_from_zero(n, rng, 0.05), g = randn(n, rng);
    auto fwd = [&](const Vec& p, Vec& out) {
        out.assign(n, 0);
        ops::relu_forward(out.data(), p.data(), n);
        return true;
    };
    Vec act(n);
    ops::relu_forward(act.data(), h.data(), n);
    Vec dh = zeros(n);
    ops::relu_backward(dh.data(), g.data(), act.data(), n);
    EXPECT_GRAD_OK(check_grad(fwd, h, g, dh), kTol, "relu dh");
    Vec dh2 = dh;
    ops::relu_backward(dh2.data(), g.data(), act.data(), n);
    EXPECT_LE(doubling_error(dh, dh2), kAccTol);
    // the in-place twin the expert path uses writes the same gradient over the upstream
    Vec inplace = g;
    ops::relu_backward_inplace(inplace.data(), act.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(inplace[i], dh[i]) << i;
}

// ---------------------------------------------------------------- softmax + cross-entropy

TEST(GradOps, SoftmaxXent) {
    const int64_t N = 4, V = 7;
    const std::vector<int32_t> targets = {2, 0, 6, 2};
    const double scale = 0.37;
    Rng rng(10);
    Vec logits = randn(N * V, rng, 2.0);
    // the backward's upstream is one scale for the summed loss: L = scale * sum_n losses[n]
    Vec g(N, scale);
    auto fwd = [&](const Vec& p, Vec& out) {
        out.assign(N, 0);
        Vec probs(N * V);
        ops::softmax_xent_forward(probs.data(), out.data(), p.data(), targets.data(), N, V);
        return true;
    };
    Vec probs(N * V), losses(N);
    ops::softmax_xent_forward(probs.data(), losses.data(), logits.data(), targets.data(), N, V);
    Vec dl = zeros(N * V);
    ops::softmax_xent_backward(dl.data(), probs.data(), targets.data(), scale, N, V);
    EXPECT_GRAD_OK(check_grad(fwd, logits, g, dl), kTol, "softmax_xent dlogits");
    Vec dl2 = dl;
    ops::softmax_xent_backward(dl2.data(), probs.data(), targets.data(), scale, N, V);
    EXPECT_LE(doubling_error(dl, dl2), kAccTol);
    // probs may alias logits
    Vec inplace = logits, losses2(N);
    ops::softmax_xent_forward(inplace.data(), losses2.data(), inplace.data(), targets.data(), N, V);
    EXPECT_EQ(inplace, probs);
    EXPECT_EQ(losses2, losses);
}

// ---------------------------------------------------------------- shared expert

// out += sigmoid(z) * y (gated) or out += y: d y and d z against finite differences
TEST(GradOps, SharedExpertAdd) {
    const int64_t N = 7, C = 5;
    Rng rng(31);
    Vec y = randn(N * C, rng), z = randn(N, rng, 2.0), base = randn(N * C, rng), g = randn(N * C, rng);
    for (bool gated : {true, false}) {
        SCOPED_TRACE(gated ? "gated" : "ungated");
        Vec s(N);
        auto fwd_y = [&](const Vec& p, Vec& out) {
            out = base;  // forward accumulates into out
            Vec s2(N);
            ops::shared_expert_add_forward(out.data(), s2.data(), gated ? z.data() : nullptr, p.data(), N, C);
            return true;
        };
        auto fwd_z = [&](const Vec& p, Vec& out) {
            out = base;
            Vec s2(N);
            ops::shared_expert_add_forward(out.data(), s2.data(), p.data(), y.data(), N, C);
            return true;
        };
        Vec out = base;
        ops::shared_expert_add_forward(out.data(), s.data(), gated ? z.data() : nullptr, y.data(), N, C);
        Vec dy(N * C, 7.0), dz(N, 7.0);  // written, not accumulated
        ops::shared_expert_add_backward(dy.data(), gated ? dz.data() : nullptr, g.data(), gated ? s.data() : nullptr,
                                        y.data(), N, C);
        EXPECT_GRAD_OK(check_grad(fwd_y, y, g, dy), kTol, "shared_expert_add dy");
        if (gated) {
            EXPECT_GRAD_OK(check_grad(fwd_z, z, g, dz), kTol, "shared_expert_add dz");
            for (int64_t n = 0; n < N; ++n) EXPECT_NEAR(s[n], 1.0 / (1.0 + std::exp(-z[n])), 1e-15);
        } else {
            EXPECT_EQ(dy, g);  // out += y
        }
    }
}

// ---------------------------------------------------------------- router weights

TEST(GradOps, RouterWeights) {
    const int64_t N = 6, E = 5, K = 3;
    Rng rng(11);
    Vec logits = randn(N * E, rng, 2.0), g = randn(N * K, rng);
    const std::vector<int32_t> topk = routing_with_drops(N, E, K, rng);
    auto fwd = [&](const Vec& p, Vec& out) {
        out.assign(N * K, 0);
        ops::MoeRouteT<double> r = slots_route(N, E, K, topk.data(), out.data());
        ops::router_weights_forward(r, p.data());
        return true;
    };
    Vec w(N * K);
    ops::MoeRouteT<double> route = slots_route(N, E, K, topk.data(), w.data());
    ops::router_weights_forward(route, logits.data());
    for (int64_t k = 0; k < K; ++k) EXPECT_EQ(w[3 * K + k], 0.0);  // fully dropped token
    Vec dl = zeros(N * E);
    ops::router_weights_backward(dl.data(), g.data(), route);
    EXPECT_GRAD_OK(check_grad(fwd, logits, g, dl), kTol, "router_weights dlogits");
    Vec dl2 = dl;
    ops::router_weights_backward(dl2.data(), g.data(), route);
    EXPECT_LE(doubling_error(dl, dl2), kAccTol);
}

// norm_topk_prob = false: the full softmax's probabilities of the chosen experts
TEST(GradOps, RouterWeightsFull) {
    const int64_t N = 6, E = 5, K = 3;
    Rng rng(13);
    Vec logits = randn(N * E, rng, 2.0), g = randn(N * K, rng);
    const std::vector<int32_t> topk = routing_with_drops(N, E, K, rng);
    auto fwd = [&](const Vec& p, Vec& out) {
        out.assign(N * K, 0);
        ops::MoeRouteT<double> r = slots_route(N, E, K, topk.data(), out.data());
        ops::router_weights_full_forward(r, p.data());
        return true;
    };
    Vec w(N * K);
    ops::MoeRouteT<double> route = slots_route(N, E, K, topk.data(), w.data());
    ops::router_weights_full_forward(route, logits.data());
    for (int64_t n = 0; n < N; ++n) {  // probabilities of the full softmax, not renormalised
        double z = 0;
        for (int64_t e = 0; e < E; ++e) z += std::exp(logits[n * E + e]);
        for (int64_t k = 0; k < K; ++k) {
            const int32_t e = topk[n * K + k];
            EXPECT_NEAR(w[n * K + k], e >= 0 ? std::exp(logits[n * E + e]) / z : 0.0, 1e-15);
        }
    }
    Vec dl = zeros(N * E);
    ops::router_weights_full_backward(dl.data(), g.data(), route, logits.data());
    EXPECT_GRAD_OK(check_grad(fwd, logits, g, dl), kTol, "router_weights_full dlogits");
    Vec dl2 = dl;
    ops::router_weights_full_backward(dl2.data(), g.data(), route, logits.data());
    EXPECT_LE(doubling_error(dl, dl2), kAccTol);
}

// ---------------------------------------------------------------- combine / gather

TEST(GradOps, MoeCombineAndGather) {
    const int64_t N = 6, E = 4, K = 3, C = 5;
    Rng rng(12);
    const std::vector<int32_t> topk = routing_with_drops(N, E, K, rng);
    std::vector<int32_t> off(E + 1), row_token(N * K), row_slot(N * K), token_row(N * K);
    ops::MoeRouteT<double> route = slots_route(N, E, K, topk.data(), (const double*)nullptr);
    route.expert_offsets = off.data(), route.row_token = row_token.data(), route.row_slot = row_slot.data();
    route.token_row = token_row.data(), route.R_max = N * K;
    const int64_t R = ops::moe_dispatch_build(route);
    ASSERT_EQ(R, N * K - 1 - 1 - K);
    ASSERT_EQ(route.R, R);

    // combine: out (N, C) from ye (R, C) and topk_weight (N, K)
    Vec ye = randn(R * C, rng), tw = uniform(N * K, rng, 0.1, 1.0), g = randn(N * C, rng);
    route.topk_weight = tw.data();
    // the route with other combine weights
    auto with_weights = [&](const Vec& w) {
        ops::MoeRouteT<double> r = route;
        r.topk_weight = const_cast<double*>(w.data());
        return r;
    };
    auto fwd_ye = [&](const Vec& p, Vec& out) {
        out.assign(N * C, 0);
        ops::moe_combine_forward(out.data(), p.data(), route, C);
        return true;
    };
    auto fwd_w = [&](const Vec& p, Vec& out) {
        out.assign(N * C, 0);
        ops::moe_combine_forward(out.data(), ye.data(), with_weights(p), C);
        return true;
    };
    Vec dye = zeros(R * C), dw = zeros(N * K);
    ops::moe_combine_backward(dye.data(), dw.data(), g.data(), ye.data(), route, C);
    EXPECT_GRAD_OK(check_grad(fwd_ye, ye, g, dye), kTol, "moe_combine dye");
    EXPECT_GRAD_OK(check_grad(fwd_w, tw, g, dw), kTol, "moe_combine dweight");
    Vec dye2 = dye, dw2 = dw;
    ops::moe_combine_backward(dye2.data(), dw2.data(), g.data(), ye.data(), route, C);
    EXPECT_LE(doubling_error(dye, dye2), kAccTol);
    EXPECT_LE(doubling_error(dw, dw2), kAccTol);

    // with a routed scale (DeepSeek's routed_scaling_factor): out = s * sum_k w_k ye_k
    const double s = 2.5;
    auto fwd_ye_s = [&](const Vec& p, Vec& out) {
        out.assign(N * C, 0);
        ops::moe_combine_forward(out.data(), p.data(), route, C, s);
        return true;
    };
    auto fwd_w_s = [&](const Vec& p, Vec& out) {
        out.assign(N * C, 0);
        ops::moe_combine_forward(out.data(), ye.data(), with_weights(p), C, s);
        return true;
    };
    Vec dye_s = zeros(R * C), dw_s = zeros(N * K);
    ops::moe_combine_backward(dye_s.data(), dw_s.data(), g.data(), ye.data(), route, C, s);
    EXPECT_GRAD_OK(check_grad(fwd_ye_s, ye, g, dye_s), kTol, "moe_combine dye, scaled");
    EXPECT_GRAD_OK(check_grad(fwd_w_s, tw, g, dw_s), kTol, "moe_combine dweight, scaled");
    EXPECT_NEAR(dw_s[0], s * dw[0], 1e-12 + 1e-12 * std::fabs(dw[0]));

    // gather: xe (R, C) from x (N, C)
    Vec x = randn(N * C, rng), ge = randn(R * C, rng);
    auto fwd_x = [&](const Vec& p, Vec& out) {
        out.assign(R * C, 0);
        ops::moe_gather_forward(out.data(), p.data(), route, C);
        return true;
    };
    Vec dx = zeros(N * C);
    ops::moe_gather_backward(dx.data(), ge.data(), route, C);
    EXPECT_GRAD_OK(check_grad(fwd_x, x, ge, dx), kTol, "moe_gather dx");
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dx[3 * C + c], 0.0);  // the dropped token
    Vec dx2 = dx;
    ops::moe_gather_backward(dx2.data(), ge.data(), route, C);
    EXPECT_LE(doubling_error(dx, dx2), kAccTol);
}

// ---------------------------------------------------------------- grouped expert FFN

// Recomputes the forward; refuses a point where a ReLU input changed sign relative to `signs`.
static void moe_ffn_case(const std::vector<int32_t>& counts, Activation act, uint64_t seed) {
    const int64_t E = (int64_t)counts.size(), C = 4, F = 5;
    std::vector<int32_t> off(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) off[e + 1] = off[e] + counts[e];
    const int64_t R = off[E];
    const ops::ExpertSegments all{0, E, off.data()};
    Rng rng(seed);
    Vec xe = randn(R * C, rng), wg = randn(E * F * C, rng, 0.7), wu = randn(E * F * C, rng, 0.7),
        wd = randn(E * C * F, rng, 0.7), g = randn(R * C, rng);
    const bool swiglu = act == Activation::swiglu;
    Vec hg(R * F), hu(R * F), a(R * F), ye(R * C);
    auto forward = [&](const Vec& x_, const Vec& wg_, const Vec& wu_, const Vec& wd_, Vec& h_u, Vec& out) {
        out.assign(R * C, 0);
        Vec h_g(R * F), a_(R * F);
        h_u.assign(R * F, 0);
        ops::moe_ffn_forward(out.data(), h_g.data(), h_u.data(), a_.data(), x_.data(),
                             swiglu ? wg_.data() : nullptr, wu_.data(), wd_.data(), all, C, F, act);
    };
    ops::moe_ffn_forward(ye.data(), hg.data(), hu.data(), a.data(), xe.data(), swiglu ? wg.data() : nullptr,
                         wu.data(), wd.data(), all, C, F, act);
    auto same_signs = [&](const Vec& h) {
        if (swiglu) return true;
        for (int64_t i = 0; i < R * F; ++i)
            if ((h[i] > 0) != (hu[i] > 0)) return false;
        return true;
    };
    Vec dxe = zeros(R * C), dwg = zeros(E * F * C), dwu = zeros(E * F * C), dwd = zeros(E * C * F);
    Vec dact(R * F), dhg(R * F), dhu(R * F);
    ops::moe_ffn_backward(dxe.data(), swiglu ? dwg.data() : nullptr, dwu.data(), dwd.data(), dact.data(),
                          dhg.data(), dhu.data(), g.data(), xe.data(), hg.data(), hu.data(), a.data(),
                          swiglu ? wg.data() : nullptr, wu.data(), wd.data(), all, C, F, act);
    std::string tag = std::string("moe_ffn ") + (swiglu ? "swiglu" : "relu") + " counts";
    for (int32_t c : counts) tag += " " + std::to_string(c);
    auto fd = [&](int which) {
        return [&, which](const Vec& p, Vec& out) {
            Vec h;
            forward(which == 0 ? p : xe, which == 1 ? p : wg, which == 2 ? p : wu, which == 3 ? p : wd, h, out);
            return same_signs(h);
        };
    };
    EXPECT_GRAD_OK(check_grad(fd(0), xe, g, dxe), kTol, tag + " dxe");
    if (swiglu) {
        EXPECT_GRAD_OK(check_grad(fd(1), wg, g, dwg), kTol, tag + " dw_gate");
    }
    EXPECT_GRAD_OK(check_grad(fd(2), wu, g, dwu), kTol, tag + " dw_up");
    EXPECT_GRAD_OK(check_grad(fd(3), wd, g, dwd), kTol, tag + " dw_down");
    // experts with no rows get no gradient
    for (int64_t e = 0; e < E; ++e)
        if (counts[e] == 0)
            for (int64_t i = 0; i < F * C; ++i) {
                ASSERT_EQ(dwu[e * F * C + i], 0.0);
                ASSERT_EQ(dwd[e * C * F + i], 0.0);
            }
    Vec dxe2 = dxe, dwg2 = dwg, dwu2 = dwu, dwd2 = dwd;
    ops::moe_ffn_backward(dxe2.data(), swiglu ? dwg2.data() : nullptr, dwu2.data(), dwd2.data(), dact.data(),
                          dhg.data(), dhu.data(), g.data(), xe.data(), hg.data(), hu.data(), a.data(),
                          swiglu ? wg.data() : nullptr, wu.data(), wd.data(), all, C, F, act);
    EXPECT_LE(doubling_error(dxe, dxe2), kAccTol);
    if (swiglu) {
        EXPECT_LE(doubling_error(dwg, dwg2), kAccTol);
    }
    EXPECT_LE(doubling_error(dwu, dwu2), kAccTol);
    EXPECT_LE(doubling_error(dwd, dwd2), kAccTol);
    // overwrite_dxe: dxe written whatever it held (training passes an unzeroed buffer)
    Vec dxe3(R * C, std::numeric_limits<double>::quiet_NaN()), dwg3 = zeros(E * F * C), dwu3 = zeros(E * F * C),
        dwd3 = zeros(E * C * F);
    ops::moe_ffn_backward(dxe3.data(), swiglu ? dwg3.data() : nullptr, dwu3.data(), dwd3.data(), dact.data(),
                          dhg.data(), dhu.data(), g.data(), xe.data(), hg.data(), hu.data(), a.data(),
                          swiglu ? wg.data() : nullptr, wu.data(), wd.data(), all, C, F, act, nullptr, true);
    EXPECT_EQ(dxe3, dxe) << tag;
}

TEST(GradOps, MoeFfnSwigluRagged) { moe_ffn_case({3, 0, 1, 4}, Activation::swiglu, 13); }
TEST(GradOps, MoeFfnSwigluOneExpertAllRows) { moe_ffn_case({0, 6, 0}, Activation::swiglu, 14); }
TEST(GradOps, MoeFfnReluRagged) { moe_ffn_case({3, 0, 1, 4}, Activation::relu, 15); }
TEST(GradOps, MoeFfnReluOneExpertAllRows) { moe_ffn_case({0, 6, 0}, Activation::relu, 16); }
TEST(GradOps, DenseFfnAsOneExpert) { moe_ffn_case({7}, Activation::swiglu, 17); }

// ExpertSegments: the experts split into two contiguous ranges, each run on its own with its slice
// of the weight stacks and of the offsets (what one rank of an expert-parallel run would do), give
// exactly the whole call's rows and weight gradients; and the ExpertGradSink's dst still names the
// right expert's matrix inside the full gradient stack.
TEST(GradOps, MoeFfnExpertSegments) {
    const std::vector<int32_t> counts = {3, 0, 2, 4, 1};
    const int64_t E = (int64_t)counts.size(), C = 4, F = 5, split = 2;
    std::vector<int32_t> off(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) off[e + 1] = off[e] + counts[e];
    const int64_t R = off[E];
    // local expert 0 of the second range is global expert `split`: its offsets start at off[split]
    const ops::ExpertSegments all{0, E, off.data()}, lo{0, split, off.data()},
        hi{split, E - split, off.data() + split};
    for (Activation act : {Activation::swiglu, Activation::relu}) {
        SCOPED_TRACE(act == Activation::swiglu ? "swiglu" : "relu");
        Rng rng(18);
        Vec xe = randn(R * C, rng), wg = randn(E * F * C, rng, 0.7), wu = randn(E * F * C, rng, 0.7),
            wd = randn(E * C * F, rng, 0.7), g = randn(R * C, rng);
        // the whole call
        Vec hg(R * F), hu(R * F), a(R * F), ye(R * C), dxe(R * C), dact(R * F), dhg(R * F), dhu(R * F);
        Vec dwg = zeros(E * F * C), dwu = zeros(E * F * C), dwd = zeros(E * C * F);
        ops::moe_ffn_forward(ye.data(), hg.data(), hu.data(), a.data(), xe.data(), wg.data(), wu.data(), wd.data(),
                             all, C, F, act);
        ops::moe_ffn_backward(dxe.data(), dwg.data(), dwu.data(), dwd.data(), dact.data(), dhg.data(), dhu.data(),
                              g.data(), xe.data(), hg.data(), hu.data(), a.data(), wg.data(), wu.data(), wd.data(),
                              all, C, F, act, nullptr, true);
        // the two ranges, each with the slices of its experts
        Vec shg(R * F), shu(R * F), sa(R * F), sye(R * C), sdxe(R * C);
        Vec sdwg = zeros(E * F * C), sdwu = zeros(E * F * C), sdwd = zeros(E * C * F);
        for (const ops::ExpertSegments& seg : {lo, hi}) {
            const int64_t fc = seg.first_expert * F * C;  // = first_expert * C * F for w_down
            ops::moe_ffn_forward(sye.data(), shg.data(), shu.data(), sa.data(), xe.data(), wg.data() + fc,
                                 wu.data() + fc, wd.data() + fc, seg, C, F, act);
            ops::moe_ffn_backward(sdxe.data(), sdwg.data() + fc, sdwu.data() + fc, sdwd.data() + fc, dact.data(),
                                  dhg.data(), dhu.data(), g.data(), xe.data(), shg.data(), shu.data(), sa.data(),
                                  wg.data() + fc, wu.data() + fc, wd.data() + fc, seg, C, F, act, nullptr, true);
        }
        EXPECT_EQ(sye, ye);
        EXPECT_EQ(sa, a);
        EXPECT_EQ(sdxe, dxe);
        EXPECT_EQ(sdwg, dwg);
        EXPECT_EQ(sdwu, dwu);
        EXPECT_EQ(sdwd, dwd);

        // float, through a sink: each call on the upper range reports its matrices at their place
        // in the full stack (global experts split.., never an expert without rows)
        std::vector<float> fxe(xe.begin(), xe.end()), fwg(wg.begin(), wg.end()), fwu(wu.begin(), wu.end()),
            fwd(wd.begin(), wd.end()), fg(g.begin(), g.end());
        std::vector<float> fhg(R * F), fhu(R * F), fa(R * F), fye(R * C), fdxe(R * C), fdact(R * F), fdhg(R * F),
            fdhu(R * F), gw(E * F * C), gu(E * F * C), gd(E * C * F);
        std::vector<std::pair<int, int64_t>> seen;  // (matrix: 0 gate, 1 up, 2 down; global expert)
        std::mutex mu;                               // the sink runs on the worker threads
        auto record = [&](float* dst, const float*, int64_t n) {
            std::lock_guard<std::mutex> lock(mu);
            for (int mtx = 0; mtx < 3; ++mtx) {
                float* base = mtx == 0 ? gw.data() : mtx == 1 ? gu.data() : gd.data();
                if (dst >= base && dst < base + E * F * C) seen.push_back({mtx, n == F * C ? (dst - base) / (F * C) : -1});
            }
        };
        const ops::ExpertGradSink sink{record};
        const int64_t fc = hi.first_expert * F * C;
        ops::moe_ffn_forward(fye.data(), fhg.data(), fhu.data(), fa.data(), fxe.data(), fwg.data() + fc,
                             fwu.data() + fc, fwd.data() + fc, hi, C, F, act);
        ops::moe_ffn_backward(fdxe.data(), gw.data() + fc, gu.data() + fc, gd.data() + fc, fdact.data(), fdhg.data(),
                              fdhu.data(), fg.data(), fxe.data(), fhg.data(), fhu.data(), fa.data(), fwg.data() + fc,
                              fwu.data() + fc, fwd.data() + fc, hi, C, F, act, &sink, true);
        std::sort(seen.begin(), seen.end());
        std::vector<std::pair<int, int64_t>> want;
        for (int mtx = act == Activation::swiglu ? 0 : 1; mtx < 3; ++mtx)
            for (int64_t e = hi.first_expert; e < E; ++e)
                if (counts[e] > 0) want.push_back({mtx, e});
        EXPECT_EQ(seen, want);
    }
}

// ---------------------------------------------------------------- the whole MoE FFN pipeline

struct PipelineCase {
    int64_t N, C, E, K, F;
    Activation act;
    double router_bias;  // added to expert 0's router row direction: concentrates tokens on it
    uint64_t seed;
    bool near_tie = false;  // put token 0's K-th and (K+1)-th logits 3e-7 apart
};

static void pipeline_case(const PipelineCase& pc) {
    const int64_t N = pc.N, C = pc.C, E = pc.E, K = pc.K, F = pc.F;
    const bool swiglu = pc.act == Activation::swiglu;
    Rng rng(pc.seed);
    Vec x = randn(N * C, rng), wr = randn(E * C, rng), wg = randn(E * F * C, rng, 0.6),
        wu = randn(E * F * C, rng, 0.6), wd = randn(E * C * F, rng, 0.6), g = randn(N * C, rng);
    // bias: make every token like expert 0 (x has a shared positive component along channel 0)
    if (pc.router_bias != 0) {
        for (int64_t n = 0; n < N; ++n) x[n * C] = std::fabs(x[n * C]) + 1.0;
        wr[0] += pc.router_bias;
    }
    MoePipeline<double> base(N, C, E, K, F, pc.act);
    base.forward(x.data(), wr.data(), wg.data(), wu.data(), wd.data());
    if (pc.router_bias != 0) {  // ragged: expert 0 serves every token
        EXPECT_EQ(base.expert_offsets[1], N) << "router bias did not concentrate the tokens";
    }
    if (pc.near_tie) {
        // move x[0] along (wr[a] - wr[b]) so that logit a - logit b = 3e-7 (a: last chosen, b: best
        // unchosen); a step h = 1e-6 on many coordinates of x[0] or wr[a], wr[b] then flips them
        const int32_t a = base.topk_expert[K - 1];
        int32_t b = -1;
        for (int32_t e = 0; e < E; ++e) {
            bool chosen = false;
            for (int64_t k = 0; k < K; ++k) chosen |= base.topk_expert[k] == e;
            if (!chosen && (b < 0 || base.logits[e] > base.logits[b])) b = e;
        }
        ASSERT_GE(b, 0);
        const double gap = base.logits[a] - base.logits[b];
        double nrm = 0;
        for (int64_t c = 0; c < C; ++c) nrm += (wr[a * C + c] - wr[b * C + c]) * (wr[a * C + c] - wr[b * C + c]);
        for (int64_t c = 0; c < C; ++c) x[c] -= (gap - 3e-7) * (wr[a * C + c] - wr[b * C + c]) / nrm;
        base.forward(x.data(), wr.data(), wg.data(), wu.data(), wd.data());
        EXPECT_NEAR(base.logits[a] - base.logits[b], 3e-7, 1e-9);
        EXPECT_EQ(base.topk_expert[K - 1], a);
    }
    const std::vector<int32_t> routing = base.topk_expert;  // the choice at the unperturbed point
    const Vec hu0 = base.hu;
    Vec dx = zeros(N * C), dwr = zeros(E * C), dwg = zeros(E * F * C), dwu = zeros(E * F * C),
        dwd = zeros(E * C * F);
    base.backward(dx.data(), dwr.data(), swiglu ? dwg.data() : nullptr, dwu.data(), dwd.data(), g.data());

    // hold == true: reuse the recorded routing; false: recompute top-K, refuse a flipped choice.
    auto make = [&](int which, bool hold) {
        return [&, which, hold](const Vec& p, Vec& out) {
            MoePipeline<double> m(N, C, E, K, F, pc.act);
            m.forward(which == 0 ? p.data() : x.data(), which == 1 ? p.data() : wr.data(),
                      swiglu ? (which == 2 ? p.data() : wg.data()) : nullptr,
                      which == 3 ? p.data() : wu.data(), which == 4 ? p.data() : wd.data(),
                      hold ? routing.data() : nullptr);
            out = m.out;
            if (m.topk_expert != routing) return false;
            if (!swiglu)  // ReLU kink crossed: not differentiable here
                for (size_t i = 0; i < hu0.size(); ++i)
                    if ((m.hu[i] > 0) != (hu0[i] > 0)) return false;
            return true;
        };
    };
    std::string tag = "pipeline N" + std::to_string(N) + " E" + std::to_string(E) + " K" +
                      std::to_string(K) + (swiglu ? " swiglu" : " relu");
    EXPECT_GRAD_OK(check_grad(make(0, true), x, g, dx), kTol, tag + " dx (held)");
    EXPECT_GRAD_OK(check_grad(make(1, true), wr, g, dwr), kTol, tag + " dw_router (held)");
    if (swiglu) {
        EXPECT_GRAD_OK(check_grad(make(2, true), wg, g, dwg), kTol, tag + " dw_gate");
    }
    EXPECT_GRAD_OK(check_grad(make(3, true), wu, g, dwu), kTol, tag + " dw_up");
    EXPECT_GRAD_OK(check_grad(make(4, true), wd, g, dwd), kTol, tag + " dw_down");
    // the same with top-K recomputed at every perturbed point (flipped choices skipped)
    const GradCheckResult sx = check_grad(make(0, false), x, g, dx);
    const GradCheckResult sr = check_grad(make(1, false), wr, g, dwr);
    EXPECT_GRAD_OK(sx, kTol, tag + " dx (skip flips)");
    EXPECT_GRAD_OK(sr, kTol, tag + " dw_router (skip flips)");
    if (pc.near_tie) {  // the skip path was exercised
        EXPECT_GT(sx.skipped, 0);
        EXPECT_GT(sr.skipped, 0);
    }

    Vec dx2 = dx, dwr2 = dwr, dwg2 = dwg, dwu2 = dwu, dwd2 = dwd;
    base.backward(dx2.data(), dwr2.data(), swiglu ? dwg2.data() : nullptr, dwu2.data(), dwd2.data(), g.data());
    EXPECT_LE(doubling_error(dx, dx2), kAccTol);
    EXPECT_LE(doubling_error(dwr, dwr2), kAccTol);
    if (swiglu) {
        EXPECT_LE(doubling_error(dwg, dwg2), kAccTol);
    }
    EXPECT_LE(doubling_error(dwu, dwu2), kAccTol);
    EXPECT_LE(doubling_error(dwd, dwd2), kAccTol);
}

TEST(GradOps, MoePipelineSwiglu) { pipeline_case({7, 5, 4, 2, 3, Activation::swiglu, 0.0, 20}); }
TEST(GradOps, MoePipelineRelu) { pipeline_case({7, 5, 4, 2, 3, Activation::relu, 0.0, 21}); }
TEST(GradOps, MoePipelineTop1Biased) { pipeline_case({6, 4, 3, 1, 3, Activation::swiglu, 4.0, 22}); }
TEST(GradOps, MoePipelineNearTie) {
    PipelineCase pc{6, 5, 4, 2, 3, Activation::swiglu, 0.0, 24};
    pc.near_tie = true;
    pipeline_case(pc);
}
TEST(GradOps, MoePipelineTopAll) { pipeline_case({5, 4, 3, 3, 2, Activation::swiglu, 0.0, 23}); }
