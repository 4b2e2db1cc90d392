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
    int64_t Fs = 0;     // shared expert width (MoE only); 0 = none
    bool gate = false;  // its sigmoid gate
};

void compare_layer(const Case& cs) {
    const int64_t N = cs.N, C = cs.C, F = cs.F;
    const int64_t E = cs.moe ? cs.E : 1, K = cs.moe ? cs.K : 1;
    const bool swiglu = cs.act == Activation::swiglu;
    const double eps = 1e-5;
    SCOPED_TRACE(std::string(cs.moe ? "moe" : "dense") + " N" + std::to_string(N) + " E" +
                 std::to_string(E) + " K" + std::to_string(K) + (swiglu ? " swiglu" : " relu") +
                 (cs.Fs ? " shared " + std::to_string(cs.Fs) + (cs.gate ? " gated" : "") : ""));
    Rng rng(cs.seed);
    ModelConfig m;
    m.n_embd = C;
    m.norm_eps = eps;
    m.activation = cs.act;
    if (cs.moe) {
        m.n_expert = E, m.n_expert_used = K, m.n_ff_exp = F;
        m.n_ff_shexp = cs.Fs, m.shexp_gate = cs.gate;
    } else {
        m.n_ff = F;
    }
    const int64_t Fs = cs.moe ? cs.Fs : 0;
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

    // shared expert (Fs, C), (Fs, C), (C, Fs) and its gate (1, C)
    FVec sg = randn_f(Fs * C, rng, 1.0 / std::sqrt((double)C)), su = randn_f(Fs * C, rng, 1.0 / std::sqrt((double)C));
    FVec sd = randn_f(C * Fs, rng, 1.0 / std::sqrt((double)std::max<int64_t>(Fs, 1)));
    FVec sgate = randn_f(C, rng, 1.0 / std::sqrt((double)C));
    FVec gsg(Fs * C, 0.f), gsu(Fs * C, 0.f), gsd(C * Fs, 0.f), gsgate(C, 0.f);

    LayerWeights w, g;
    FVec gnorm(C, 0.f), gwr(E * C, 0.f), gwg(E * F * C, 0.f), gwu(E * F * C, 0.f), gwd(E * C * F, 0.f);
    w.ffn_norm = norm.data(), g.ffn_norm = gnorm.data();
    if (cs.moe) {
        w.ffn_gate_inp = wr.data(), g.ffn_gate_inp = gwr.data();
        w.ffn_gate_exps = swiglu ? wg.data() : nullptr, g.ffn_gate_exps = swiglu ? gwg.data() : nullptr;
        w.ffn_up_exps = wu.data(), g.ffn_up_exps = gwu.data();
        w.ffn_down_exps = wd.data(), g.ffn_down_exps = gwd.data();
        if (Fs > 0) {
            w.ffn_gate_shexp = swiglu ? sg.data() : nullptr, g.ffn_gate_shexp = swiglu ? gsg.data() : nullptr;
            w.ffn_up_shexp = su.data(), g.ffn_up_shexp = gsu.data();
            w.ffn_down_shexp = sd.data(), g.ffn_down_shexp = gsd.data();
            if (cs.gate) w.ffn_gate_inp_shexp = sgate.data(), g.ffn_gate_inp_shexp = gsgate.data();
        }
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
    c.xn = xn.data(), c.rstd = rstd.data(), c.logits = logits.data(), c.route.topk_expert = topk_expert.data();
    c.route.topk_weight = topk_weight.data(), c.route.expert_offsets = offsets.data();
    c.route.row_token = row_token.data(), c.route.row_slot = row_slot.data(), c.route.token_row = token_row.data();
    c.route.R_max = RM, c.xe = xe.data(), c.hg = hg.data();
    c.hu = hu.data(), c.act = act.data(), c.ye = ye.data();
    FVec probs(N * E), scores(N * E), sel(N * E), lse(N);
    std::vector<int64_t> load(E);
    c.probs = probs.data(), c.scores = scores.data(), c.sel = sel.data(), c.lse = lse.data();
    c.expert_load = load.data();
    FVec sh_hg(N * Fs), sh_hu(N * Fs), sh_act(N * Fs), sh_y(N * C), sh_z(N), sh_s(N);
    c.sh_hg = sh_hg.data(), c.sh_hu = sh_hu.data(), c.sh_act = sh_act.data(), c.sh_y = sh_y.data();
    c.sh_z = sh_z.data(), c.sh_s = sh_s.data();
    const int64_t RF = std::max(RM * F, N * Fs);
    FVec sdxn(N * C), sdl(N * E), sdw(N * K), sdxe(RM * C), sdye(RM * C), sdact(RF), sdhg(RF), sdhu(RF);
    FVec sdsy(N * C), sdsz(N);
    layers::FfnScratch s;
    s.dxn = sdxn.data(), s.dlogits = sdl.data(), s.dweight = sdw.data(), s.dxe = sdxe.data();
    s.dye = sdye.data(), s.dact = sdact.data(), s.dhg = sdhg.data(), s.dhu = sdhu.data();
    s.dsh_y = sdsy.data(), s.dsh_z = sdsz.data();

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
    // shared expert: the oracle with one expert, a zero router and every token on it, written out
    // here: ref_out += s * ysh, s = sigmoid(xn . w) (1 ungated)
    Vec rsg(Fs * C, 0), rsu(Fs * C, 0), rsd(C * Fs, 0), rsgate(C, 0);
    if (Fs > 0) {
        const Vec dsg = to_d(sg), dsu = to_d(su), dsd = to_d(sd), dgate = to_d(sgate), zero_router(C, 0.0);
        const std::vector<int32_t> all(N, 0);
        Vec ysh(N * C), tw1(N), sgt(N, 1.0), dysh(N * C), dxsh(N * C, 0), dummy(C, 0);
        ops::ref::moe_ref_forward(ysh.data(), (int32_t*)nullptr, tw1.data(), xnr.data(), zero_router.data(),
                                  swiglu ? dsg.data() : nullptr, dsu.data(), dsd.data(), N, C, 1, 1, Fs, cs.act,
                                  all.data());
        for (int64_t n = 0; n < N; ++n) {
            double z = 0, ds = 0;
            for (int64_t c2 = 0; c2 < C; ++c2) z += xnr[n * C + c2] * dgate[c2];
            if (cs.gate) sgt[n] = 1.0 / (1.0 + std::exp(-z));
            for (int64_t c2 = 0; c2 < C; ++c2) {
                ref_out[n * C + c2] += sgt[n] * ysh[n * C + c2];
                dysh[n * C + c2] = sgt[n] * dg[n * C + c2];
                ds += dg[n * C + c2] * ysh[n * C + c2];
            }
            if (cs.gate) {
                const double dz = ds * sgt[n] * (1 - sgt[n]);
                for (int64_t c2 = 0; c2 < C; ++c2) {
                    rsgate[c2] += dz * xnr[n * C + c2];
                    dxn[n * C + c2] += dz * dgate[c2];
                }
            }
        }
        ops::ref::moe_ref_backward(dxsh.data(), dummy.data(), swiglu ? rsg.data() : nullptr, rsu.data(), rsd.data(),
                                   dysh.data(), xnr.data(), zero_router.data(), swiglu ? dsg.data() : nullptr,
                                   dsu.data(), dsd.data(), all.data(), N, C, 1, 1, Fs, cs.act);
        for (int64_t i = 0; i < N * C; ++i) dxn[i] += dxsh[i];
    }
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
    if (Fs > 0) {
        const double e_sg = swiglu ? max_rel_diff(gsg, rsg) : 0.0, e_su = max_rel_diff(gsu, rsu),
                     e_sd = max_rel_diff(gsd, rsd), e_sgate = cs.gate ? max_rel_diff(gsgate, rsgate) : 0.0;
        EXPECT_LE(e_sg, 1e-5);
        EXPECT_LE(e_su, 1e-5);
        EXPECT_LE(e_sd, 1e-5);
        EXPECT_LE(e_sgate, 1e-5);
        if (!cs.gate) EXPECT_EQ(gsgate, FVec(C, 0.f));
        std::printf("  [layer vs ref] shared expert Fs %lld%s | dgate %.2e dup %.2e ddown %.2e dsgate %.2e\n",
                    (long long)Fs, cs.gate ? " gated" : "", e_sg, e_su, e_sd, e_sgate);
    }
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
TEST(Layers, MoeFfnSharedExpertMatchesReference) {
    Case cs{true, 27, 16, 6, 2, 12, Activation::swiglu, 0, 7};
    cs.Fs = 20;
    compare_layer(cs);
}
TEST(Layers, MoeFfnGatedSharedExpertMatchesReference) {
    Case cs{true, 23, 16, 5, 2, 8, Activation::swiglu, 0, 8};
    cs.Fs = 24, cs.gate = true;
    compare_layer(cs);
}
TEST(Layers, MoeFfnGatedSharedExpertReluMatchesReference) {
    Case cs{true, 19, 12, 4, 1, 10, Activation::relu, 0, 9};
    cs.Fs = 14, cs.gate = true;
    compare_layer(cs);
}
TEST(Layers, MoeFfnTopAllMatchesReference) { compare_layer({true, 9, 8, 3, 3, 6, Activation::swiglu, 0, 6}); }
