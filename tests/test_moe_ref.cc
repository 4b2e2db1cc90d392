// Fast kernels against their naive reference twins:
//  - the fast float MoE pipeline (layers::moe_forward / moe_backward of layers/ffn.cc, GEMMs on
//    oneDNN) against the slow per-token oracle ops/moe_ref.h, forward and every gradient;
//  - the oracle itself by central finite differences in double;
//  - router_topk against the oracle's independent top-K (sort by (-logit, index)), ties included;
//  - kernels::gemm_f32 (oneDNN) against kernels::gemm_ref<float>.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gradcheck.h"
#include "kernels/gemm.h"
#include "moe_pipeline.h"
#include "ops/moe_ffn.h"
#include "ops/moe_ref.h"
#include "ops/router.h"

using namespace moe;
using namespace moe::test;
using ops::Activation;

namespace {

using FVec = std::vector<float>;

FVec randn_f(int64_t n, Rng& rng, double scale = 1.0) {
    FVec v(n);
    for (auto& x : v) x = (float)(scale * rng.normal());
    return v;
}

struct Shape {
    int64_t N, C, E, K, F;
    Activation act;
    double router_bias;  // > 0: tokens concentrate on expert 0 (ragged groups)
    uint64_t seed;
};

std::string name(const Shape& s) {
    return "N" + std::to_string(s.N) + " C" + std::to_string(s.C) + " E" + std::to_string(s.E) +
           " K" + std::to_string(s.K) + " F" + std::to_string(s.F) +
           (s.act == Activation::swiglu ? " swiglu" : " relu") +
           (s.router_bias > 0 ? " biased" : "");
}

// Weights of one MoE layer, in T.
template <class T>
struct MoeWeights {
    std::vector<T> x, wr, wg, wu, wd, g;
};

MoeWeights<float> make_weights(const Shape& s) {
    Rng rng(s.seed);
    MoeWeights<float> w;
    w.x = randn_f(s.N * s.C, rng);
    w.wr = randn_f(s.E * s.C, rng, 1.0 / std::sqrt((double)s.C));
    w.wg = randn_f(s.E * s.F * s.C, rng, 1.0 / std::sqrt((double)s.C));
    w.wu = randn_f(s.E * s.F * s.C, rng, 1.0 / std::sqrt((double)s.C));
    w.wd = randn_f(s.E * s.C * s.F, rng, 1.0 / std::sqrt((double)s.F));
    w.g = randn_f(s.N * s.C, rng);
    if (s.router_bias > 0) {
        for (int64_t n = 0; n < s.N; ++n) w.x[n * s.C] = std::fabs(w.x[n * s.C]) + 1.0f;
        w.wr[0] += (float)s.router_bias;
    }
    return w;
}

// Fast float pipeline vs moe_ref<float>: routing, combine weights, output and all gradients.
void compare_fast_vs_ref(const Shape& s) {
    SCOPED_TRACE(name(s));
    const int64_t N = s.N, C = s.C, E = s.E, K = s.K, F = s.F;
    const bool swiglu = s.act == Activation::swiglu;
    MoeWeights<float> w = make_weights(s);

    MoePipeline<float> fast(N, C, E, K, F, s.act);
    fast.forward(w.x.data(), w.wr.data(), swiglu ? w.wg.data() : nullptr, w.wu.data(), w.wd.data());

    // The oracle's own routing must agree, except where two logits are within float round-off
    // (the two compute the logits with different summation orders).
    std::vector<int32_t> ref_topk(N * K);
    FVec ref_w(N * K), ref_out(N * C);
    ops::ref::moe_ref_forward(ref_out.data(), ref_topk.data(), ref_w.data(), w.x.data(), w.wr.data(),
                              swiglu ? w.wg.data() : nullptr, w.wu.data(), w.wd.data(), N, C, E, K, F, s.act);
    int64_t mismatched = 0;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
            const int32_t a = fast.topk_expert[n * K + k], b = ref_topk[n * K + k];
            if (a == b) continue;
            ++mismatched;
            ASSERT_TRUE(a >= 0 && b >= 0) << "token " << n;
            const float la = fast.logits[n * E + a], lb = fast.logits[n * E + b];
            EXPECT_LE(std::fabs(la - lb), 1e-5f * (1.0f + std::fabs(la))) << "token " << n << " slot " << k;
        }
    EXPECT_LE(mismatched, 2);
    if (mismatched == 0) {
        EXPECT_LE(max_rel_diff(fast.topk_weight, ref_w), 1e-5);
        EXPECT_LE(max_rel_diff(fast.out, ref_out), 1e-5);
    }
    // compare with the fast routing (identical unless a near-tie flipped)
    ops::ref::moe_ref_forward(ref_out.data(), (int32_t*)nullptr, ref_w.data(), w.x.data(), w.wr.data(),
                              swiglu ? w.wg.data() : nullptr, w.wu.data(), w.wd.data(), N, C, E, K, F,
                              s.act, fast.topk_expert.data());
    const double e_w = max_rel_diff(fast.topk_weight, ref_w), e_out = max_rel_diff(fast.out, ref_out);
    EXPECT_LE(e_w, 1e-5);
    EXPECT_LE(e_out, 1e-5);

    FVec dx(N * C, 0.f), dwr(E * C, 0.f), dwg(E * F * C, 0.f), dwu(E * F * C, 0.f), dwd(E * C * F, 0.f);
    fast.backward(dx.data(), dwr.data(), swiglu ? dwg.data() : nullptr, dwu.data(), dwd.data(), w.g.data());
    FVec rx(N * C, 0.f), rwr(E * C, 0.f), rwg(E * F * C, 0.f), rwu(E * F * C, 0.f), rwd(E * C * F, 0.f);
    ops::ref::moe_ref_backward(rx.data(), rwr.data(), swiglu ? rwg.data() : nullptr, rwu.data(), rwd.data(),
                               w.g.data(), w.x.data(), w.wr.data(), swiglu ? w.wg.data() : nullptr,
                               w.wu.data(), w.wd.data(), fast.topk_expert.data(), N, C, E, K, F, s.act);
    const double e_dx = max_rel_diff(dx, rx), e_dwr = max_rel_diff(dwr, rwr),
                 e_dwg = swiglu ? max_rel_diff(dwg, rwg) : 0.0, e_dwu = max_rel_diff(dwu, rwu),
                 e_dwd = max_rel_diff(dwd, rwd);
    EXPECT_LE(e_dx, 1e-5);
    if (K > 1) {
        EXPECT_LE(e_dwr, 1e-5);
    } else {  // K = 1: the combine weight is 1 whatever the logits: no router gradient at all
        EXPECT_EQ(dwr, FVec(E * C, 0.f));
        EXPECT_EQ(rwr, FVec(E * C, 0.f));
    }
    EXPECT_LE(e_dwg, 1e-5);
    EXPECT_LE(e_dwu, 1e-5);
    EXPECT_LE(e_dwd, 1e-5);
    std::vector<int32_t> counts(E);
    for (int64_t e = 0; e < E; ++e) counts[e] = fast.expert_offsets[e + 1] - fast.expert_offsets[e];
    std::string cs;
    for (int32_t c : counts) cs += " " + std::to_string(c);
    std::printf("  [fast vs ref] %-34s rows/expert:%s | out %.2e w %.2e dx %.2e dwr %.2e dwg %.2e dwu %.2e dwd %.2e\n",
                name(s).c_str(), cs.c_str(), e_out, e_w, e_dx, e_dwr, e_dwg, e_dwu, e_dwd);
}

}  // namespace

TEST(MoeRef, FastPipelineMatchesOracleSwiglu) { compare_fast_vs_ref({16, 8, 4, 2, 6, Activation::swiglu, 0, 1}); }
TEST(MoeRef, FastPipelineMatchesOracleRelu) { compare_fast_vs_ref({33, 12, 8, 2, 10, Activation::relu, 0, 2}); }
TEST(MoeRef, FastPipelineMatchesOracleLarger) { compare_fast_vs_ref({96, 48, 8, 2, 40, Activation::swiglu, 0, 3}); }
TEST(MoeRef, FastPipelineMatchesOracleTop1Concentrated) {
    const Shape s{40, 16, 6, 1, 12, Activation::swiglu, 8.0, 4};
    compare_fast_vs_ref(s);
    // the case is ragged: expert 0 takes every token, the others none
    MoeWeights<float> w = make_weights(s);
    MoePipeline<float> p(s.N, s.C, s.E, s.K, s.F, s.act);
    p.forward(w.x.data(), w.wr.data(), w.wg.data(), w.wu.data(), w.wd.data());
    EXPECT_EQ(p.expert_offsets[1], s.N);
}
TEST(MoeRef, FastPipelineMatchesOracleTop2Concentrated) {
    compare_fast_vs_ref({37, 10, 5, 2, 7, Activation::relu, 8.0, 5});
}
TEST(MoeRef, FastPipelineMatchesOracleMultiBlockExperts) {
    // experts of more than ops::kRowBlock rows run as several row blocks, which share weights
    // packed once per call (where the float GEMM packs B): forward and backward through that path
    for (Activation act : {Activation::swiglu, Activation::relu}) {
        const Shape s{600, 24, 4, 2, 40, act, 0, 21};
        compare_fast_vs_ref(s);
        MoeWeights<float> w = make_weights(s);
        MoePipeline<float> p(s.N, s.C, s.E, s.K, s.F, s.act);
        p.forward(w.x.data(), w.wr.data(), w.wg.data(), w.wu.data(), w.wd.data());
        int64_t most = 0;
        for (int64_t e = 0; e < s.E; ++e) most = std::max<int64_t>(most, p.expert_offsets[e + 1] - p.expert_offsets[e]);
        EXPECT_GT(most, ops::kRowBlock);
    }
}
TEST(MoeRef, FastPipelineMatchesOracleTopAll) { compare_fast_vs_ref({21, 9, 4, 4, 5, Activation::swiglu, 0, 6}); }
TEST(MoeRef, FastPipelineMatchesOracleMoreExpertsThanTokens) {
    compare_fast_vs_ref({3, 8, 16, 2, 5, Activation::swiglu, 0, 7});
}
TEST(MoeRef, FastPipelineMatchesOracleSlotsBeyondExperts) {
    // K > E: the extra slots are dropped (expert -1) by both
    compare_fast_vs_ref({9, 6, 2, 3, 4, Activation::swiglu, 0, 8});
}

// ---------------------------------------------------------------- the oracle, by finite differences

static void fd_oracle(const Shape& s) {
    SCOPED_TRACE(name(s));
    const int64_t N = s.N, C = s.C, E = s.E, K = s.K, F = s.F;
    const bool swiglu = s.act == Activation::swiglu;
    Rng rng(s.seed);
    Vec x = randn(N * C, rng), wr = randn(E * C, rng), wg = randn(E * F * C, rng, 0.6),
        wu = randn(E * F * C, rng, 0.6), wd = randn(E * C * F, rng, 0.6), g = randn(N * C, rng);
    std::vector<int32_t> routing(N * K);
    Vec out(N * C), tw(N * K);
    ops::ref::moe_ref_forward(out.data(), routing.data(), tw.data(), x.data(), wr.data(),
                              swiglu ? wg.data() : nullptr, wu.data(), wd.data(), N, C, E, K, F, s.act);
    Vec dx(N * C, 0), dwr(E * C, 0), dwg(E * F * C, 0), dwu(E * F * C, 0), dwd(E * C * F, 0);
    ops::ref::moe_ref_backward(dx.data(), dwr.data(), swiglu ? dwg.data() : nullptr, dwu.data(), dwd.data(),
                               g.data(), x.data(), wr.data(), swiglu ? wg.data() : nullptr, wu.data(),
                               wd.data(), routing.data(), N, C, E, K, F, s.act);
    // ReLU kinks: refuse a perturbation that changes the sign of any up projection
    auto hu_signs = [&](const Vec& xx, const Vec& ww) {
        std::vector<char> sg;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k) {
                const int32_t e = routing[n * K + k];
                if (e < 0) continue;
                for (int64_t f = 0; f < F; ++f) {
                    double h = 0;
                    for (int64_t c = 0; c < C; ++c) h += ww[(e * F + f) * C + c] * xx[n * C + c];
                    sg.push_back(h > 0);
                }
            }
        return sg;
    };
    const auto signs0 = hu_signs(x, wu);
    auto make = [&](int which) {
        return [&, which](const Vec& p, Vec& o) {
            o.assign(N * C, 0);
            const Vec& xx = which == 0 ? p : x;
            const Vec& uu = which == 3 ? p : wu;
            // routing held fixed at the unperturbed choice
            ops::ref::moe_ref_forward(o.data(), (int32_t*)nullptr, (double*)nullptr, xx.data(),
                                      (which == 1 ? p : wr).data(),
                                      swiglu ? (which == 2 ? p : wg).data() : nullptr, uu.data(),
                                      (which == 4 ? p : wd).data(), N, C, E, K, F, s.act, routing.data());
            return swiglu || hu_signs(xx, uu) == signs0;
        };
    };
    EXPECT_GRAD_OK(check_grad(make(0), x, g, dx), 1e-6, name(s) + " dx");
    EXPECT_GRAD_OK(check_grad(make(1), wr, g, dwr), 1e-6, name(s) + " dw_router");
    if (swiglu) {
        EXPECT_GRAD_OK(check_grad(make(2), wg, g, dwg), 1e-6, name(s) + " dw_gate");
    }
    EXPECT_GRAD_OK(check_grad(make(3), wu, g, dwu), 1e-6, name(s) + " dw_up");
    EXPECT_GRAD_OK(check_grad(make(4), wd, g, dwd), 1e-6, name(s) + " dw_down");

    // and the double fast pipeline agrees with the oracle to round-off
    MoePipeline<double> fast(N, C, E, K, F, s.act);
    fast.forward(x.data(), wr.data(), swiglu ? wg.data() : nullptr, wu.data(), wd.data());
    EXPECT_EQ(fast.topk_expert, routing);
    EXPECT_LE(max_rel_diff(fast.out, out), 1e-12);
    Vec fx(N * C, 0), fwr(E * C, 0), fwg(E * F * C, 0), fwu(E * F * C, 0), fwd(E * C * F, 0);
    fast.backward(fx.data(), fwr.data(), swiglu ? fwg.data() : nullptr, fwu.data(), fwd.data(), g.data());
    EXPECT_LE(max_rel_diff(fx, dx), 1e-12);
    EXPECT_LE(max_rel_diff(fwr, dwr), 1e-12);
    EXPECT_LE(max_rel_diff(fwg, dwg), 1e-12);
    EXPECT_LE(max_rel_diff(fwu, dwu), 1e-12);
    EXPECT_LE(max_rel_diff(fwd, dwd), 1e-12);

    // backward accumulates
    Vec dx2 = dx;
    ops::ref::moe_ref_backward(dx2.data(), (double*)nullptr, (double*)nullptr, (double*)nullptr,
                               (double*)nullptr, g.data(), x.data(), wr.data(), swiglu ? wg.data() : nullptr,
                               wu.data(), wd.data(), routing.data(), N, C, E, K, F, s.act);
    EXPECT_LE(doubling_error(dx, dx2), 1e-12);
}

TEST(MoeRef, OracleFiniteDifferencesSwiglu) { fd_oracle({6, 5, 4, 2, 3, Activation::swiglu, 0, 11}); }
TEST(MoeRef, OracleFiniteDifferencesRelu) { fd_oracle({6, 5, 4, 2, 3, Activation::relu, 0, 12}); }
TEST(MoeRef, OracleFiniteDifferencesTopAll) { fd_oracle({4, 4, 3, 3, 3, Activation::swiglu, 0, 13}); }
TEST(MoeRef, OracleFiniteDifferencesSlotsBeyondExperts) { fd_oracle({4, 4, 2, 3, 3, Activation::swiglu, 0, 14}); }

// ---------------------------------------------------------------- top-K

TEST(MoeRef, RouterTopkMatchesOracleWithTies) {
    const int64_t N = 200, E = 7;
    Rng rng(21);
    FVec logits(N * E);
    for (auto& l : logits) l = (float)rng.below(4);  // small integers: many ties
    logits[5 * E + 3] = -std::numeric_limits<float>::infinity();
    for (int64_t K : {1, 2, 3, 7, 9}) {
        std::vector<int32_t> fast(N * K), ref(N * K);
        ops::router_topk(fast.data(), logits.data(), N, E, K);
        for (int64_t n = 0; n < N; ++n) ops::ref::moe_ref_route(ref.data() + n * K, logits.data() + n * E, E, K);
        EXPECT_EQ(fast, ref) << "K=" << K;
    }
}

// ---------------------------------------------------------------- GEMM: oneDNN vs reference

TEST(Gemm, F32MatchesReference) {
    struct Sz {
        int64_t M, N, K;
    };
    const Sz sizes[] = {{1, 1, 1}, {7, 13, 5}, {17, 3, 29}, {5, 1, 9}, {1, 9, 5}, {64, 48, 33}, {31, 65, 127}};
    Rng rng(31);
    double worst = 0;
    int cases = 0;
    for (const Sz& sz : sizes)
        for (int ta = 0; ta < 2; ++ta)
            for (int tb = 0; tb < 2; ++tb)
                for (float beta : {0.f, 1.f, 0.5f})
                    for (float alpha : {1.f, -0.75f})
                        for (int pad : {0, 3}) {
                            const int64_t M = sz.M, N = sz.N, K = sz.K;
                            // stored shapes: A is (M, K) or (K, M); B is (K, N) or (N, K)
                            const int64_t arows = ta ? K : M, acols = ta ? M : K;
                            const int64_t brows = tb ? N : K, bcols = tb ? K : N;
                            const int64_t lda = acols + pad, ldb = bcols + 2 * pad, ldc = N + pad;
                            FVec A = randn_f(arows * lda, rng), B = randn_f(brows * ldb, rng),
                                 C0 = randn_f(M * ldc, rng);
                            // beta = 0 must not read C: fill it with NaN
                            if (beta == 0.f)
                                for (int64_t m = 0; m < M; ++m)
                                    for (int64_t n = 0; n < N; ++n)
                                        C0[m * ldc + n] = std::numeric_limits<float>::quiet_NaN();
                            FVec Cf = C0, Cr = C0;
                            kernels::gemm_f32(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, Cf.data(), ldc);
                            kernels::gemm_ref<float>(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta,
                                                     Cr.data(), ldc);
                            SCOPED_TRACE("M" + std::to_string(M) + " N" + std::to_string(N) + " K" +
                                         std::to_string(K) + " ta" + std::to_string(ta) + " tb" +
                                         std::to_string(tb) + " beta" + std::to_string(beta) + " pad" +
                                         std::to_string(pad));
                            // padding columns of C are untouched
                            for (int64_t m = 0; m < M; ++m)
                                for (int64_t n = N; n < ldc; ++n) ASSERT_EQ(Cf[m * ldc + n], C0[m * ldc + n]);
                            // error relative to the scale of the terms summed: |alpha| sum |a||b| + |beta c|
                            double e = 0;
                            for (int64_t m = 0; m < M; ++m)
                                for (int64_t n = 0; n < N; ++n) {
                                    double mag = 0;
                                    for (int64_t k = 0; k < K; ++k) {
                                        const double a = ta ? A[k * lda + m] : A[m * lda + k];
                                        const double b = tb ? B[n * ldb + k] : B[k * ldb + n];
                                        mag += std::fabs(a * b);
                                    }
                                    mag = std::fabs(alpha) * mag + (beta != 0.f ? std::fabs(beta * C0[m * ldc + n]) : 0.0);
                                    ASSERT_TRUE(std::isfinite(Cf[m * ldc + n]));
                                    e = std::max(e, std::fabs((double)Cf[m * ldc + n] - Cr[m * ldc + n]) / mag);
                                }
                            EXPECT_LE(e, 1e-6);
                            worst = std::max(worst, e);
                            ++cases;
                        }
    std::printf("  [gemm] %d cases, max |f32 - ref| / (|alpha| sum|a b| + |beta c|) = %.2e\n", cases, worst);
}

TEST(Gemm, F32ZeroK) {
    // K = 0: C = beta * C
    FVec C = {1, 2, 3, 4, 5, 6};
    FVec A(1), B(1);
    kernels::gemm_f32(false, false, 2, 3, 0, 1.f, A.data(), 1, B.data(), 3, 0.5f, C.data(), 3);
    EXPECT_EQ(C, (FVec{0.5f, 1, 1.5f, 2, 2.5f, 3}));
    kernels::gemm_f32(false, false, 2, 3, 0, 1.f, A.data(), 1, B.data(), 3, 0.f, C.data(), 3);
    EXPECT_EQ(C, FVec(6, 0.f));
}
