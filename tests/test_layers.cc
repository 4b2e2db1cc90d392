// layers::ffn_forward / ffn_backward (float, oneDNN GEMMs), dense and MoE, against a reference
// composed in double from a plain-loop rmsnorm written here and the per-token MoE oracle
// ops/moe_ref.h:   out = inp + moe_ref(rmsnorm(inp) * ffn_norm)
// A dense FFN is the oracle with one expert, K = 1 and a zero router (combine weight 1).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "gradcheck.h"
#include "layers/ffn.h"
#include "ops/moe_ref.h"

using namespace moe;
using namespace moe::test;
using ops::Activation;

namespace {

using FVec = std::vector<float>;

FVec randn_f(int64_t n, Rng& rng, double scale) {
    FVec v(n);
    for (auto& x : v) x = (float)(scale * rng.normal());
    return v;
}
Vec to_d(const FVec& v) { return Vec(v.begin(), v.end()); }

struct Case {
    bool moe;
    int64_t N, C, E, K, F;
    Activation act;
    double router_bias;
    uint64_t seed;
};

void compare_layer(const Case& cs) {
    const int64_t N = cs.N, C = cs.C, F = cs.F;
    const int64_t E = cs.moe ? cs.E : 1, K = cs.moe ? cs.K : 1;
    const bool swiglu = cs.act == Activation::swiglu;
    const double eps = 1e-5;
    SCOPED_TRACE(std::string(cs.moe ? "moe" : "dense") + " N" + std::to_string(N) + " E" +
                 std::to_string(E) + " K" + std::to_string(K) + (swiglu ? " swiglu" : " relu"));
    Rng rng(cs.seed);
    ModelConfig m;
    m.n_embd = C;
    m.norm_eps = eps;
    m.activation = cs.act;
    if (cs.moe) {
        m.n_expert = E, m.n_expert_used = K, m.n_ff_exp = F;
    } else {
        m.n_ff = F;
    }
    FVec inp = randn_f(N * C, rng, 1.0), dout = randn_f(N * C, rng, 1.0);
    FVec norm(C);
    for (auto& v : norm) v = (float)(0.5 + rng.uniform());
    FVec wr = randn_f(E * C, rng, 1.0 / std::sqrt((double)C));
    FVec wg = randn_f(E * F * C, rng, 1.0 / std::sqrt((double)C));
    FVec wu = randn_f(E * F * C, rng, 1.0 / std::sqrt((double)C));
    FVec wd = randn_f(E * C * F, rng, 1.0 / std::sqrt((double)F));
    if (cs.router_bias > 0) {
        for (int64_t n = 0; n < N; ++n) inp[n * C] = std::fabs(inp[n * C]) + 1.0f;
        wr[0] += (float)cs.router_bias;
    }

    LayerWeights w, g;
    FVec gnorm(C, 0.f), gwr(E * C, 0.f), gwg(E * F * C, 0.f), gwu(E * F * C, 0.f), gwd(E * C * F, 0.f);
    w.ffn_norm = norm.data(), g.ffn_norm = gnorm.data();
    if (cs.moe) {
        w.ffn_gate_inp = wr.data(), g.ffn_gate_inp = gwr.data();
        w.ffn_gate_exps = swiglu ? wg.data() : nullptr, g.ffn_gate_exps = swiglu ? gwg.data() : nullptr;
        w.ffn_up_exps = wu.data(), g.ffn_up_exps = gwu.data();
        w.ffn_down_exps = wd.data(), g.ffn_down_exps = gwd.data();
    } else {
        w.ffn_gate = swiglu ? wg.data() : nullptr, g.ffn_gate = swiglu ? gwg.data() : nullptr;
        w.ffn_up = wu.data(), g.ffn_up = gwu.data();
        w.ffn_down = wd.data(), g.ffn_down = gwd.data();
    }

    // cache and scratch sized for the most rows (N * K)
    const int64_t RM = N * K;
    FVec xn(N * C), rstd(N), logits(N * E), topk_weight(N * K), xe(RM * C), hg(RM * F), hu(RM * F),
        act(RM * F), ye(RM * C);
    std::vector<int32_t> topk_expert(N * K), offsets(E + 1), row_token(RM), row_slot(RM), token_row(N * K);
    layers::FfnCache c;
    c.xn = xn.data(), c.rstd = rstd.data(), c.logits = logits.data(), c.topk_expert = topk_expert.data();
    c.topk_weight = topk_weight.data(), c.expert_offsets = offsets.data(), c.row_token = row_token.data();
    c.row_slot = row_slot.data(), c.token_row = token_row.data(), c.xe = xe.data(), c.hg = hg.data();
    c.hu = hu.data(), c.act = act.data(), c.ye = ye.data();
    FVec probs(N * E), scores(N * E), sel(N * E), lse(N);
    std::vector<int64_t> load(E);
    c.probs = probs.data(), c.scores = scores.data(), c.sel = sel.data(), c.lse = lse.data();
    c.expert_load = load.data();
    FVec sdxn(N * C), sdl(N * E), sdw(N * K), sdxe(RM * C), sdye(RM * C), sdact(RM * F), sdhg(RM * F), sdhu(RM * F);
    layers::FfnScratch s;
    s.dxn = sdxn.data(), s.dlogits = sdl.data(), s.dweight = sdw.data(), s.dxe = sdxe.data();
    s.dye = sdye.data(), s.dact = sdact.data(), s.dhg = sdhg.data(), s.dhu = sdhu.data();

    FVec out(N * C);
    layers::ffn_forward(out.data(), c, inp.data(), w, m, cs.moe, N, layers::RouteContext{});
    FVec dresid = dout;
    layers::ffn_backward(dresid.data(), g, s, c, inp.data(), w, m, cs.moe, N, 1.f);

    // ---- reference in double
    const Vec x = to_d(inp), nw = to_d(norm), dwr_w = cs.moe ? to_d(wr) : Vec(E * C, 0.0), dg = to_d(dout);
    const Vec dwg_w = to_d(wg), dwu_w = to_d(wu), dwd_w = to_d(wd);
    Vec r(N), xhat(N * C), xnr(N * C);
    for (int64_t n = 0; n < N; ++n) {
        double ss = 0;
        for (int64_t c2 = 0; c2 < C; ++c2) ss += x[n * C + c2] * x[n * C + c2];
        r[n] = 1.0 / std::sqrt(ss / C + eps);
        for (int64_t c2 = 0; c2 < C; ++c2) {
            xhat[n * C + c2] = x[n * C + c2] * r[n];
            xnr[n * C + c2] = xhat[n * C + c2] * nw[c2];
        }
    }
    // routing: the oracle's own top-K must match the layer's (float logits; a near-tie may flip)
    std::vector<int32_t> routing(N * K);
    Vec y(N * C), tw(N * K);
    ops::ref::moe_ref_forward(y.data(), routing.data(), tw.data(), xnr.data(), dwr_w.data(),
                              swiglu ? dwg_w.data() : nullptr, dwu_w.data(), dwd_w.data(), N, C, E, K, F, cs.act);
    if (cs.moe) {
        int64_t flips = 0;
        for (int64_t i = 0; i < N * K; ++i) flips += routing[i] != topk_expert[i];
        EXPECT_LE(flips, 1);
        routing.assign(topk_expert.begin(), topk_expert.end());
    } else {
        routing.assign(N, 0);
    }
    ops::ref::moe_ref_forward(y.data(), (int32_t*)nullptr, tw.data(), xnr.data(), dwr_w.data(),
                              swiglu ? dwg_w.data() : nullptr, dwu_w.data(), dwd_w.data(), N, C, E, K, F,
                              cs.act, routing.data());
    Vec ref_out(N * C);
    for (int64_t i = 0; i < N * C; ++i) ref_out[i] = x[i] + y[i];
    Vec dxn(N * C, 0), rwr(E * C, 0), rwg(E * F * C, 0), rwu(E * F * C, 0), rwd(E * C * F, 0);
    ops::ref::moe_ref_backward(dxn.data(), rwr.data(), swiglu ? rwg.data() : nullptr, rwu.data(), rwd.data(),
                               dg.data(), xnr.data(), dwr_w.data(), swiglu ? dwg_w.data() : nullptr,
                               dwu_w.data(), dwd_w.data(), routing.data(), N, C, E, K, F, cs.act);
    // rmsnorm backward (docs/derivations/rmsnorm.md), plus the residual path
    Vec rdx(N * C), rnorm(C, 0);
    for (int64_t n = 0; n < N; ++n) {
        double mean = 0;  // mean_c (dxhat_c * xhat_c)
        for (int64_t c2 = 0; c2 < C; ++c2) mean += dxn[n * C + c2] * nw[c2] * xhat[n * C + c2];
        mean /= C;
        for (int64_t c2 = 0; c2 < C; ++c2) {
            const double dxh = dxn[n * C + c2] * nw[c2];
            rdx[n * C + c2] = dg[n * C + c2] + r[n] * (dxh - xhat[n * C + c2] * mean);
            rnorm[c2] += dxn[n * C + c2] * xhat[n * C + c2];
        }
    }
    if (cs.router_bias > 0) {
        EXPECT_EQ(offsets[1], N) << "router bias did not concentrate the tokens on expert 0";
    }
    if (cs.moe && K == 1) {
        EXPECT_EQ(gwr, FVec(E * C, 0.f));  // combine weight 1 whatever the logits
    }
    const double e_out = max_rel_diff(out, ref_out), e_dx = max_rel_diff(dresid, rdx),
                 e_norm = max_rel_diff(gnorm, rnorm), e_wg = swiglu ? max_rel_diff(gwg, rwg) : 0.0,
                 e_wu = max_rel_diff(gwu, rwu), e_wd = max_rel_diff(gwd, rwd);
    const double e_wr = cs.moe && K > 1 ? max_rel_diff(gwr, rwr) : 0.0;
    EXPECT_LE(e_out, 1e-5);
    EXPECT_LE(e_dx, 1e-5);
    EXPECT_LE(e_norm, 1e-5);
    EXPECT_LE(e_wr, 1e-5);
    EXPECT_LE(e_wg, 1e-5);
    EXPECT_LE(e_wu, 1e-5);
    EXPECT_LE(e_wd, 1e-5);
    std::printf("  [layer vs ref] %-5s N%-3lld E%lld K%lld %-6s | out %.2e dinp %.2e dnorm %.2e drouter %.2e dgate %.2e dup %.2e ddown %.2e\n",
                cs.moe ? "moe" : "dense", (long long)N, (long long)E, (long long)K, swiglu ? "swiglu" : "relu",
                e_out, e_dx, e_norm, e_wr, e_wg, e_wu, e_wd);
}

}  // namespace

TEST(Layers, DenseFfnSwigluMatchesReference) { compare_layer({false, 13, 16, 1, 1, 24, Activation::swiglu, 0, 1}); }
TEST(Layers, DenseFfnReluMatchesReference) { compare_layer({false, 11, 12, 1, 1, 20, Activation::relu, 0, 2}); }
TEST(Layers, MoeFfnSwigluMatchesReference) { compare_layer({true, 29, 16, 6, 2, 12, Activation::swiglu, 0, 3}); }
TEST(Layers, MoeFfnReluMatchesReference) { compare_layer({true, 25, 12, 4, 2, 10, Activation::relu, 0, 4}); }
TEST(Layers, MoeFfnTop1ConcentratedMatchesReference) {
    compare_layer({true, 20, 10, 4, 1, 8, Activation::swiglu, 8.0, 5});
}
TEST(Layers, MoeFfnTopAllMatchesReference) { compare_layer({true, 9, 8, 3, 3, 6, Activation::swiglu, 0, 6}); }
