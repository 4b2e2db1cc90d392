// Routing that does not collapse (issue #3), at the op level:
//  - router_assign (ops/router_capacity.h): hand-built cases with exactly known assignments and
//    reroute / drop counts (ties, K = 1, E = K, one expert wanted by everyone, a token whose every
//    choice is full, drop vs reroute vs none on the same inputs); random cases against the
//    independent slow twin moe_ref_assign (ops/moe_ref.h); independence of the thread count;
//  - expert_capacity;
//  - the noise draws of noisy gating (ops/noisy_gating.h): reproducible from their key;
//  - top-K on softmax probabilities with renormalisation == top-K on the logits;
//  - values of the balancing losses and of the aux-loss-free bias (ops/balance_loss.h);
//  - the telemetry of ops/routing_stats.h;
//  - the fast router ops with every option against the oracle moe_ref_forward's routing.
// Gradients are checked by finite differences in test_grad_routing.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/rng.h"
#include "gradcheck.h"
#include "moe_pipeline.h"
#include "ops/balance_loss.h"
#include "ops/linear.h"
#include "ops/moe_ref.h"
#include "ops/noisy_gating.h"
#include "ops/router.h"
#include "ops/router_capacity.h"
#include "ops/routing_stats.h"

using namespace moe;
using namespace moe::test;
using ops::OverflowPolicy;

namespace {

using I32 = std::vector<int32_t>;
using I64 = std::vector<int64_t>;
using FVec = std::vector<float>;

struct Assigned {
    I32 expert;
    I64 load;
    ops::RouteStats stats;
};

template <class T>
Assigned assign(const std::vector<T>& scores, int64_t N, int64_t E, int64_t K, int64_t cap,
                OverflowPolicy policy) {
    Assigned a;
    a.expert.assign(N * K, 7777);  // overwritten everywhere
    a.load.assign(E, 12345);       // overwritten
    a.stats.rerouted = a.stats.dropped = 999;
    ops::router_assign(a.expert.data(), a.load.data(), &a.stats, scores.data(), N, E, K, cap, policy);
    return a;
}

// Checks an assignment against its exact expectation, and against the slow twin.
void expect_assignment(const Vec& scores, int64_t N, int64_t E, int64_t K, int64_t cap,
                       OverflowPolicy policy, const I32& expert, const I64& load, int64_t rerouted,
                       int64_t dropped) {
    const Assigned a = assign(scores, N, E, K, cap, policy);
    EXPECT_EQ(a.expert, expert);
    EXPECT_EQ(a.load, load);
    EXPECT_EQ(a.stats.rerouted, rerouted);
    EXPECT_EQ(a.stats.dropped, dropped);
    I32 ref(N * K);
    ops::RouteStats rs;
    ops::ref::moe_ref_assign(ref.data(), &rs, scores.data(), N, E, K, cap, policy);
    EXPECT_EQ(ref, expert) << "slow twin";
    EXPECT_EQ(rs.rerouted, rerouted) << "slow twin";
    EXPECT_EQ(rs.dropped, dropped) << "slow twin";
}

const char* pname(OverflowPolicy p) {
    return p == OverflowPolicy::none ? "none" : p == OverflowPolicy::drop ? "drop" : "reroute";
}

}  // namespace

// ---------------------------------------------------------------- hand-built assignments

// K = 1, every token's first choice is expert 0, capacity 2: tokens 0 and 1 keep expert 0, the
// rest go to their best remaining expert with room (ties to the lower index).
TEST(RouterAssign, EveryTokenWantsExpertZeroTop1) {
    const int64_t N = 6, E = 4, K = 1, cap = 2;
    const Vec s = {
        5, 1, 0, -1,  // t0 -> 0
        5, 0, 1, -1,  // t1 -> 0 (now full)
        5, 2, 1, 0,   // t2: 0 full -> 1
        5, 2, 0, 1,   // t3: 0 full -> 1 (now full)
        5, 3, 2, 1,   // t4: 0, 1 full -> 2
        5, 1, 1, 1,   // t5: 0, 1 full; 2 and 3 tie -> 2 (lower index)
    };
    expect_assignment(s, N, E, K, cap, OverflowPolicy::reroute, {0, 0, 1, 1, 2, 2}, {2, 2, 2, 0}, 4, 0);
    expect_assignment(s, N, E, K, cap, OverflowPolicy::drop, {0, 0, -1, -1, -1, -1}, {2, 0, 0, 0}, 0, 4);
    expect_assignment(s, N, E, K, cap, OverflowPolicy::none, {0, 0, 0, 0, 0, 0}, {6, 0, 0, 0}, 0, 0);
    // capacity 0 = no limit, whatever the policy
    expect_assignment(s, N, E, K, 0, OverflowPolicy::reroute, {0, 0, 0, 0, 0, 0}, {6, 0, 0, 0}, 0, 0);
    expect_assignment(s, N, E, K, 0, OverflowPolicy::drop, {0, 0, 0, 0, 0, 0}, {6, 0, 0, 0}, 0, 0);
}

// K = 2, E = 3, capacity 2 (6 places for 8 slots). Shows the rank-by-rank order and both
// exclusions: token 2's rerouted first choice may not take expert 2 (its own second choice, placed
// at rank 1) although 2 scores higher and has room, so it takes expert 1; at rank 1 the rerouted
// slots of tokens 2 and 3 find every remaining expert full or already theirs: dropped.
TEST(RouterAssign, RankByRankTop2) {
    const int64_t N = 4, E = 3, K = 2, cap = 2;
    const Vec s = {
        3, 2, 0,  // t0: orig (0, 1)
        3, 2, 0,  // t1: orig (0, 1)
        3, 0, 2,  // t2: orig (0, 2)
        0, 3, 2,  // t3: orig (1, 2)
    };
    // rank 0: t0 -> 0, t1 -> 0 (full), t2: 0 full, 2 is its own rank-1 choice -> 1, t3 -> 1 (full)
    // rank 1: t0: 1 full -> 2, t1: 1 full -> 2 (full), t2: 2 full, 0 full, 1 its own -> drop,
    //         t3: 2 full, 0 full, 1 its own -> drop
    expect_assignment(s, N, E, K, cap, OverflowPolicy::reroute, {0, 2, 0, 2, 1, -1, 1, -1}, {2, 2, 2}, 3, 2);
    // rank 0: t0 -> 0, t1 -> 0, t2 dropped, t3 -> 1; rank 1: t0 -> 1 (full), t1 dropped, t2 -> 2, t3 -> 2
    expect_assignment(s, N, E, K, cap, OverflowPolicy::drop, {0, 1, 0, -1, -1, 2, 1, 2}, {2, 2, 2}, 0, 2);
    expect_assignment(s, N, E, K, cap, OverflowPolicy::none, {0, 1, 0, 1, 0, 2, 1, 2}, {3, 3, 2}, 0, 0);
    // capacity for everything: all three agree with plain top-K
    for (auto p : {OverflowPolicy::none, OverflowPolicy::drop, OverflowPolicy::reroute})
        expect_assignment(s, N, E, K, 4, p, {0, 1, 0, 1, 0, 2, 1, 2}, {3, 3, 2}, 0, 0);
}

// All scores equal: every token's preference is 0, 1, 2, 3 (ties to the lower index), and the
// rerouted slots pick among tied experts by index.
TEST(RouterAssign, AllTiesTop2) {
    const int64_t N = 4, E = 4, K = 2, cap = 2;
    const Vec s(N * E, 0.0);
    // rank 0: t0 -> 0, t1 -> 0, t2: 0 full, 1 is its own rank-1 choice -> 2, t3 -> 2
    // rank 1: t0 -> 1, t1 -> 1, t2: 1 full, 2 is its own -> 3, t3 -> 3
    expect_assignment(s, N, E, K, cap, OverflowPolicy::reroute, {0, 1, 0, 1, 2, 3, 2, 3}, {2, 2, 2, 2}, 4, 0);
    expect_assignment(s, N, E, K, cap, OverflowPolicy::drop, {0, 1, 0, 1, -1, -1, -1, -1}, {2, 2, 0, 0}, 0, 4);
    expect_assignment(s, N, E, K, cap, OverflowPolicy::none, {0, 1, 0, 1, 0, 1, 0, 1}, {4, 4, 0, 0}, 0, 0);
    // -inf scores are ordinary (worst) candidates
    Vec t = s;
    t[2 * E + 2] = -INFINITY;
    expect_assignment(t, N, E, K, cap, OverflowPolicy::reroute, {0, 1, 0, 1, 3, 2, 2, 3}, {2, 2, 2, 2}, 4, 0);
}

// E = K: every token wants every expert. With capacity 1 the first token takes experts 0 and 1 and
// the second only its first choice; every other slot finds all experts full or its own: dropped.
TEST(RouterAssign, EveryExpertUsedTopE) {
    const int64_t N = 2, E = 3, K = 3;
    const Vec s = {
        3, 2, 1,  // t0: orig (0, 1, 2)
        1, 2, 3,  // t1: orig (2, 1, 0)
    };
    // rank 0: t0 -> 0, t1 -> 2; rank 1: t0 -> 1, t1: 1 full, 0 is its own rank-2 choice -> drop;
    // rank 2: t0: 2 full, 0/1 its own -> drop; t1: 0 full, 1 full -> drop
    expect_assignment(s, N, E, K, 1, OverflowPolicy::reroute, {0, 1, -1, 2, -1, -1}, {1, 1, 1}, 0, 3);
    expect_assignment(s, N, E, K, 1, OverflowPolicy::drop, {0, 1, -1, 2, -1, -1}, {1, 1, 1}, 0, 3);
    expect_assignment(s, N, E, K, 2, OverflowPolicy::reroute, {0, 1, 2, 2, 1, 0}, {2, 2, 2}, 0, 0);
    expect_assignment(s, N, E, K, 1, OverflowPolicy::none, {0, 1, 2, 2, 1, 0}, {2, 2, 2}, 0, 0);
}

// K > E: the slots past E have no expert (-1) and are neither dropped nor counted.
TEST(RouterAssign, SlotsBeyondExperts) {
    const Vec s = {1, 2, 2, 1, 0, 5};  // orig: t0 (1, 0), t1 (0, 1), t2 (1, 0); slot 2 has none
    // capacity 2: rank 0: t0 -> 1, t1 -> 0, t2 -> 1 (full); rank 1: t0 -> 0 (full), t1: 1 full,
    // 0 full -> drop; t2: 0 full, 1 its own -> drop
    expect_assignment(s, 3, 2, 3, 2, OverflowPolicy::reroute, {1, 0, -1, 0, -1, -1, 1, -1, -1}, {2, 2}, 0, 2);
    expect_assignment(s, 3, 2, 3, 0, OverflowPolicy::reroute, {1, 0, -1, 0, 1, -1, 1, 0, -1}, {3, 3}, 0, 0);
}

// A rerouted token never gets an expert it already has, and every load stays within capacity.
TEST(RouterAssign, RandomAgainstSlowTwin) {
    Rng rng(41);
    int64_t cases = 0, total_rerouted = 0, total_dropped = 0;
    for (int it = 0; it < 300; ++it) {
        const int64_t E = 1 + (int64_t)rng.below(9), K = 1 + (int64_t)rng.below(std::min<int64_t>(E, 4));
        const int64_t N = 1 + (int64_t)rng.below(40);
        Vec s(N * E);
        const bool ties = it % 2 == 0;
        for (auto& v : s) v = ties ? (double)rng.below(3) : rng.normal();
        // skew towards expert 0 in some cases: the collapse capacity exists for
        if (it % 3 == 0)
            for (int64_t n = 0; n < N; ++n) s[n * E] += 3;
        const int64_t cap = (int64_t)rng.below(N * K / E + 3);  // 0 = no limit
        for (auto p : {OverflowPolicy::none, OverflowPolicy::drop, OverflowPolicy::reroute}) {
            SCOPED_TRACE("N" + std::to_string(N) + " E" + std::to_string(E) + " K" + std::to_string(K) +
                         " cap" + std::to_string(cap) + " " + pname(p));
            const Assigned a = assign(s, N, E, K, cap, p);
            I32 ref(N * K);
            ops::RouteStats rs;
            ops::ref::moe_ref_assign(ref.data(), &rs, s.data(), N, E, K, cap, p);
            ASSERT_EQ(a.expert, ref);
            ASSERT_EQ(a.stats.rerouted, rs.rerouted);
            ASSERT_EQ(a.stats.dropped, rs.dropped);
            I64 load(E, 0);
            for (int64_t n = 0; n < N; ++n)
                for (int64_t k = 0; k < K; ++k) {
                    const int32_t e = a.expert[n * K + k];
                    if (e < 0) continue;
                    ++load[e];
                    for (int64_t j = 0; j < k; ++j) ASSERT_NE(a.expert[n * K + j], e) << "token " << n;
                }
            ASSERT_EQ(a.load, load);
            int64_t sum = 0;
            for (int64_t e = 0; e < E; ++e) {
                sum += load[e];
                if (cap > 0 && p != OverflowPolicy::none) {
                    ASSERT_LE(load[e], cap);
                }
            }
            ASSERT_EQ(sum, N * K - a.stats.dropped);
            if (p != OverflowPolicy::reroute) {
                ASSERT_EQ(a.stats.rerouted, 0);
            }
            if (p == OverflowPolicy::none) {
                ASSERT_EQ(a.stats.dropped, 0);
            }
            // rerouting never drops more than dropping does: under drop an expert holds
            // min(cap, its original demand); under reroute at least that (it takes every original
            // choice while it has room, and reroutes only add)
            if (p == OverflowPolicy::reroute) {
                const Assigned d = assign(s, N, E, K, cap, OverflowPolicy::drop);
                ASSERT_LE(a.stats.dropped, d.stats.dropped);
                total_rerouted += a.stats.rerouted;
                total_dropped += a.stats.dropped;
            }
            ++cases;
        }
    }
    // the random cases did exercise both outcomes
    EXPECT_GT(total_rerouted, 100);
    EXPECT_GT(total_dropped, 20);
    std::printf("  [assign] %lld cases, %lld rerouted, %lld dropped under reroute\n", (long long)cases,
                (long long)total_rerouted, (long long)total_dropped);
}

TEST(RouterAssign, IndependentOfThreadCount) {
    const int64_t N = 3000, E = 16, K = 2;
    Rng rng(42);
    FVec s(N * E);
    for (auto& v : s) v = (float)rng.normal();
    for (int64_t n = 0; n < N; ++n) s[n * E + 3] += 1.5f;  // popular expert
    const int64_t cap = ops::expert_capacity(1.0, N, E, K);
    const int saved = num_threads();
    for (auto p : {OverflowPolicy::none, OverflowPolicy::drop, OverflowPolicy::reroute}) {
        set_num_threads(1);
        const Assigned a1 = assign(s, N, E, K, cap, p);
        set_num_threads(2);
        ASSERT_EQ(num_threads(), 2);
        const Assigned a2 = assign(s, N, E, K, cap, p);
        EXPECT_EQ(a1.expert, a2.expert) << pname(p);
        EXPECT_EQ(a1.load, a2.load) << pname(p);
        EXPECT_EQ(a1.stats.rerouted, a2.stats.rerouted);
        EXPECT_EQ(a1.stats.dropped, a2.stats.dropped);
        if (p == OverflowPolicy::reroute) {
            EXPECT_GT(a1.stats.rerouted, 0);
        }
    }
    set_num_threads(saved);
}

TEST(RouterAssign, ExpertCapacity) {
    EXPECT_EQ(ops::expert_capacity(1.0, 8, 4, 2), 4);
    EXPECT_EQ(ops::expert_capacity(1.25, 8, 4, 2), 5);
    EXPECT_EQ(ops::expert_capacity(1.1, 10, 1, 1), 11);
    EXPECT_EQ(ops::expert_capacity(1.1, 25, 1, 2), 55);  // 1.1 · 25 · 2 = 55.00000000000001 in double
    EXPECT_EQ(ops::expert_capacity(1.5, 7, 4, 2), 6);    // 5.25 -> 6
    EXPECT_EQ(ops::expert_capacity(1e-6, 8, 4, 2), 1);   // at least 1
    EXPECT_EQ(ops::expert_capacity(0.0, 8, 4, 2), 0);    // no limit
    EXPECT_EQ(ops::expert_capacity(-1.0, 8, 4, 2), 0);
}

// ---------------------------------------------------------------- noise draws

TEST(NoisyGating, EpsReproducibleFromKey) {
    const int64_t N = 300, E = 8;
    auto draw = [&](uint64_t seed, int64_t step, int64_t layer, int64_t micro) {
        Vec eps(N * E);
        ops::noisy_gating_draw_eps(eps.data(), N, E, seed, step, layer, micro);
        return eps;
    };
    const Vec a = draw(7, 5, 1, 0);
    EXPECT_EQ(a, draw(7, 5, 1, 0));  // same key: bit-identical
    auto n_equal = [](const Vec& x, const Vec& y) {
        int64_t c = 0;
        for (size_t i = 0; i < x.size(); ++i) c += x[i] == y[i];
        return c;
    };
    EXPECT_EQ(n_equal(a, draw(7, 6, 1, 0)), 0);  // another step
    EXPECT_EQ(n_equal(a, draw(7, 5, 2, 0)), 0);  // another layer
    EXPECT_EQ(n_equal(a, draw(7, 5, 1, 1)), 0);  // another micro-batch
    EXPECT_EQ(n_equal(a, draw(8, 5, 1, 0)), 0);  // another seed
    // rows differ from each other, and the draws look standard normal
    EXPECT_NE(Vec(a.begin(), a.begin() + E), Vec(a.begin() + E, a.begin() + 2 * E));
    double m = 0, v = 0;
    for (double x : a) m += x;
    m /= (double)a.size();
    for (double x : a) v += (x - m) * (x - m);
    v /= (double)a.size();
    EXPECT_LT(std::fabs(m), 0.1);
    EXPECT_LT(std::fabs(v - 1), 0.15);
    // float draws are the double draws rounded, and do not depend on the thread count
    const int saved = num_threads();
    set_num_threads(1);
    FVec f1(N * E);
    ops::noisy_gating_draw_eps(f1.data(), N, E, 7, 5, 1, 0);
    set_num_threads(2);
    FVec f2(N * E);
    ops::noisy_gating_draw_eps(f2.data(), N, E, 7, 5, 1, 0);
    set_num_threads(saved);
    EXPECT_EQ(f1, f2);
    for (int64_t i = 0; i < N * E; ++i) ASSERT_EQ(f1[i], (float)a[i]);
}

TEST(NoisyGating, ScoresAndStableSoftplus) {
    // H = logits + eps softplus(noise_logits); softplus stays finite and accurate at the extremes
    const Vec logits = {0.5, -1, 2, 0}, nl = {0, 1000, -1000, -30}, eps = {2, 1e-3, 5, -1};
    Vec H(4);
    ops::noisy_scores_forward(H.data(), logits.data(), nl.data(), eps.data(), 1, 4);
    EXPECT_DOUBLE_EQ(H[0], 0.5 + 2 * std::log(2.0));
    EXPECT_DOUBLE_EQ(H[1], -1 + 1e-3 * 1000);
    EXPECT_DOUBLE_EQ(H[2], 2.0);  // softplus(-1000) = e^-1000 underflows to 0, not NaN
    EXPECT_NEAR(H[3], -std::exp(-30.0), 1e-25);
    EXPECT_GT(ops::softplus(-30.0), 0.0);  // the tiny value is kept, not rounded to 0
    EXPECT_NEAR(ops::softplus(-30.0) / std::exp(-30.0), 1.0, 1e-12);
    EXPECT_EQ(ops::softplus(100.f), 100.f);
    // gradients stay finite at the extremes
    Vec dl(4, 0), dnl(4, 0);
    const Vec dH = {1, 1, 1, 1};
    ops::noisy_scores_backward(dl.data(), dnl.data(), dH.data(), nl.data(), eps.data(), 1, 4);
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(std::isfinite(dnl[i]));
    EXPECT_DOUBLE_EQ(dnl[1], 1e-3);
    EXPECT_EQ(dnl[2], 0.0);
    // eps = 0 is the clean router
    const Vec zero(4, 0.0);
    ops::noisy_scores_forward(H.data(), logits.data(), nl.data(), zero.data(), 1, 4);
    EXPECT_EQ(H, logits);
}

// ---------------------------------------------------------------- top-K on probabilities

// Softmax is strictly increasing and the renormalised probabilities p_k / sum_j p_j are the
// softmax over the chosen logits (the shared factor 1 / sum_all cancels), so top-K on the
// probabilities with renormalisation == top-K on the logits with a softmax over the chosen ones.
template <class T>
void topk_on_probs_vs_logits(uint64_t seed, bool ties) {
    const int64_t N = 500, E = 8;
    Rng rng(seed);
    std::vector<T> logits(N * E), probs(N * E);
    for (auto& l : logits) l = ties ? (T)((double)rng.below(8) / 4.0) : (T)(3 * rng.normal());
    ops::router_softmax(probs.data(), logits.data(), N, E);  // full softmax
    for (int64_t K : {1, 2, 3, 8}) {
        I32 ex_l(N * K), ex_p(N * K);
        std::vector<T> w_l(N * K), w_p(N * K);
        ops::router_topk(ex_l.data(), logits.data(), N, E, K);
        ops::MoeRouteT<T> r_l = slots_route(N, E, K, ex_l.data(), w_l.data());
        ops::router_weights_forward(r_l, logits.data());
        ops::router_topk(ex_p.data(), probs.data(), N, E, K);
        for (int64_t n = 0; n < N; ++n) {
            T sum = 0;
            for (int64_t k = 0; k < K; ++k) sum += probs[n * E + ex_p[n * K + k]];
            for (int64_t k = 0; k < K; ++k) w_p[n * K + k] = probs[n * E + ex_p[n * K + k]] / sum;
        }
        EXPECT_EQ(ex_p, ex_l) << "K=" << K;
        EXPECT_LE(max_rel_diff(w_p, w_l), sizeof(T) == 4 ? 1e-6 : 1e-14) << "K=" << K;
    }
}

TEST(Routing, TopkOnProbsEqualsTopkOnLogits) {
    topk_on_probs_vs_logits<double>(51, false);
    topk_on_probs_vs_logits<double>(52, true);
    topk_on_probs_vs_logits<float>(53, true);  // exact ties stay exact ties after exp
}

// ---------------------------------------------------------------- balancing losses

TEST(BalanceLoss, SwitchLossValues) {
    const int64_t N = 4, E = 4, K = 2;
    // perfect balance: uniform probabilities, equal loads -> L = coeff
    Vec zero(N * E, 0.0), probs(N * E);
    const I64 even = {2, 2, 2, 2};
    EXPECT_NEAR(ops::switch_loss_forward(probs.data(), zero.data(), even.data(), N, E, K, 0.01), 0.01, 1e-15);
    for (double p : probs) EXPECT_DOUBLE_EQ(p, 0.25);
    // collapse: every slot on expert 0 and probability ~1 on it -> L ~ coeff E
    Vec peaked(N * E, 0.0);
    for (int64_t n = 0; n < N; ++n) peaked[n * E] = 50;
    const I64 all0 = {8, 0, 0, 0};
    EXPECT_NEAR(ops::switch_loss_forward(probs.data(), peaked.data(), all0.data(), N, E, K, 0.01), 0.04, 1e-12);
    // dropped slots lower f (denominator stays N K)
    const I64 half = {4, 0, 0, 0};
    EXPECT_NEAR(ops::switch_loss_forward(probs.data(), peaked.data(), half.data(), N, E, K, 0.01), 0.02, 1e-12);

    // against Hugging Face Mixtral's load_balancing_loss_func, which is K times this loss:
    //   tokens_per_expert (K, E) = mean over tokens of one_hot(selected (N, K)), P = mean probs,
    //   loss = E * sum_{k, e} tokens_per_expert[k, e] * P[e]
    Rng rng(61);
    const int64_t N2 = 9, E2 = 5, K2 = 2;
    Vec logits = randn(N2 * E2, rng), p2(N2 * E2);
    I32 ex(N2 * K2);
    ops::router_topk(ex.data(), logits.data(), N2, E2, K2);
    I64 load(E2);
    ops::count_expert_load(load.data(), ex.data(), N2, E2, K2);
    const double ours = ops::switch_loss_forward(p2.data(), logits.data(), load.data(), N2, E2, K2, 1.0);
    double hf = 0;
    for (int64_t k = 0; k < K2; ++k)
        for (int64_t e = 0; e < E2; ++e) {
            double tpe = 0, P = 0;
            for (int64_t n = 0; n < N2; ++n) {
                tpe += ex[n * K2 + k] == e ? 1.0 / N2 : 0.0;
                P += p2[n * E2 + e] / N2;
            }
            hf += tpe * P;
        }
    hf *= (double)E2;
    EXPECT_NEAR(hf, K2 * ours, 1e-12);
}

TEST(BalanceLoss, ZLossValues) {
    const int64_t N = 3, E = 4;
    const Vec logits = {0, 0, 0, 0, 1000, 1000, 0, 0, -2, 1, 0.5, 3};
    Vec lse(N);
    const double L = ops::z_loss_forward(lse.data(), logits.data(), N, E, 0.001);
    const double z2 = 1000 + std::log(2.0);  // stable at large logits
    const double z3 = std::log(std::exp(-2.0) + std::exp(1.0) + std::exp(0.5) + std::exp(3.0));
    EXPECT_DOUBLE_EQ(lse[0], std::log(4.0));
    EXPECT_DOUBLE_EQ(lse[1], z2);
    EXPECT_NEAR(lse[2], z3, 1e-14);
    EXPECT_NEAR(L, 0.001 * (std::log(4.0) * std::log(4.0) + z2 * z2 + z3 * z3) / 3, 1e-12);
}

TEST(BalanceLoss, BiasUpdateBySign) {
    float bias[4] = {0, 0, 0.5f, 0};
    const int64_t load[4] = {10, 2, 6, 6};  // mean 6
    ops::balance_bias_update(bias, load, 4, 0.25);
    EXPECT_EQ(bias[0], -0.25f);  // overloaded
    EXPECT_EQ(bias[1], 0.25f);   // underloaded
    EXPECT_EQ(bias[2], 0.5f);    // at the mean: unchanged
    EXPECT_EQ(bias[3], 0.0f);
    // a mean that is not an integer: 3 experts, loads 1, 1, 2 (mean 4/3)
    float b3[3] = {0, 0, 0};
    const int64_t l3[3] = {1, 1, 2};
    ops::balance_bias_update(b3, l3, 3, 1.0);
    EXPECT_EQ(b3[0], 1.0f);
    EXPECT_EQ(b3[1], 1.0f);
    EXPECT_EQ(b3[2], -1.0f);
}

// The bias changes which experts are chosen but not the combine weights of a given choice, and
// repeated updates pull a collapsed router back to a near-even load.
TEST(BalanceLoss, AuxFreeBiasSelectsOnlyAndBalances) {
    const int64_t N = 400, E = 8, K = 2;
    Rng rng(71);
    FVec logits(N * E), sel(N * E), w_sel(N * K), w_clean(N * K);
    for (auto& l : logits) l = (float)rng.normal();
    for (int64_t n = 0; n < N; ++n) logits[n * E] += 3.f, logits[n * E + 1] += 2.f;  // collapsing
    std::vector<float> bias(E, 0.f);
    I32 ex(N * K);
    I64 load(E);
    double first_share = 0, last_share = 0;
    for (int it = 0; it < 300; ++it) {
        ops::add_selection_bias(sel.data(), logits.data(), bias.data(), N, E);
        ops::router_assign(ex.data(), load.data(), (ops::RouteStats*)nullptr, sel.data(), N, E, K, 0,
                           OverflowPolicy::none);
        if (it == 0) first_share = ops::load_max_share(load.data(), E);
        last_share = ops::load_max_share(load.data(), E);
        ops::balance_bias_update(bias.data(), load.data(), E, 0.01);
    }
    EXPECT_GT(first_share, 3.0);
    EXPECT_LT(last_share, 1.3);
    // the combine weights come from the clean scores: softmax over the chosen clean logits
    ops::MoeRouteT<float> r_clean = slots_route(N, E, K, ex.data(), w_clean.data());
    ops::router_weights_forward(r_clean, logits.data());
    for (int64_t n = 0; n < N; ++n) {
        const float a = logits[n * E + ex[n * K]], b = logits[n * E + ex[n * K + 1]];
        ASSERT_NEAR(w_clean[n * K], 1.f / (1.f + std::exp(b - a)), 1e-6f);
    }
    ops::MoeRouteT<float> r_sel = slots_route(N, E, K, ex.data(), w_sel.data());
    ops::router_weights_forward(r_sel, sel.data());
    EXPECT_GT(max_rel_diff(w_sel, w_clean), 1e-3);  // (using the biased scores would differ)
    std::printf("  [aux-free] max_share %.2f -> %.2f over 300 bias updates\n", first_share, last_share);
}

// ---------------------------------------------------------------- telemetry

TEST(RoutingStats, Values) {
    const I64 even = {4, 4, 4, 4}, one = {16, 0, 0, 0}, mixed = {1000, 1000, 1000, 7},
              edge = {1000, 1000, 1000, 8}, empty = {0, 0, 0, 0};
    EXPECT_DOUBLE_EQ(ops::load_max_share(even.data(), 4), 1.0);
    EXPECT_DOUBLE_EQ(ops::load_cv(even.data(), 4), 0.0);
    EXPECT_EQ(ops::dead_experts(even.data(), 4), 0);
    EXPECT_DOUBLE_EQ(ops::load_max_share(one.data(), 4), 4.0);
    EXPECT_NEAR(ops::load_cv(one.data(), 4), std::sqrt(3.0), 1e-15);
    EXPECT_EQ(ops::dead_experts(one.data(), 4), 3);
    // fair share 3007 / 4 = 751.75, 1% of it 7.5175: load 7 is dead, 8 (of 3008) is not
    EXPECT_EQ(ops::dead_experts(mixed.data(), 4), 1);
    EXPECT_EQ(ops::dead_experts(edge.data(), 4), 0);
    const I64 boundary = {133, 133, 133, 1};  // 1 is exactly 1% of the fair share 400 / 4: alive
    EXPECT_EQ(ops::dead_experts(boundary.data(), 4), 0);
    EXPECT_DOUBLE_EQ(ops::load_max_share(empty.data(), 4), 0.0);
    EXPECT_DOUBLE_EQ(ops::load_cv(empty.data(), 4), 0.0);
    EXPECT_EQ(ops::dead_experts(empty.data(), 4), 4);

    const Vec uniform(3 * 4, 0.25), onehot = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1};
    EXPECT_NEAR(ops::router_entropy(uniform.data(), 3, 4), std::log(4.0), 1e-15);
    EXPECT_EQ(ops::router_entropy(onehot.data(), 3, 4), 0.0);
    const Vec half = {0.5, 0.5, 0, 0};
    EXPECT_NEAR(ops::router_entropy(half.data(), 1, 4), std::log(2.0), 1e-15);

    ops::RouteStats rs;
    rs.rerouted = 3;
    rs.dropped = 1;
    const ops::RoutingStats st = ops::routing_stats(one.data(), uniform.data(), rs, 3, 4, 2);
    EXPECT_DOUBLE_EQ(st.max_share, 4.0);
    EXPECT_NEAR(st.cv, std::sqrt(3.0), 1e-15);
    EXPECT_NEAR(st.entropy, std::log(4.0), 1e-15);
    EXPECT_EQ(st.dead_experts, 3);
    EXPECT_DOUBLE_EQ(st.rerouted_frac, 0.5);
    EXPECT_DOUBLE_EQ(st.dropped_frac, 1.0 / 6);
    EXPECT_EQ(ops::routing_stats<float>(even.data(), nullptr, rs, 3, 4, 2).entropy, 0.0);
}

// ---------------------------------------------------------------- fast router ops vs the oracle

// The router with every option composed from the fast ops in float (noisy scores, selection bias,
// capacity with reroute, combine weights on the unbiased scores) gives the routing and the combine
// weights of the per-token oracle moe_ref_forward with the same RouterOptions.
TEST(Routing, FastRouterOpsMatchOracle) {
    const int64_t N = 64, C = 12, E = 6, F = 4;
    Rng rng(81);
    auto rf = [&](int64_t n, double sc) {
        FVec v(n);
        for (auto& x : v) x = (float)(sc * rng.normal());
        return v;
    };
    const FVec x = rf(N * C, 1), wr = rf(E * C, 0.5), wn = rf(E * C, 0.5), wu = rf(E * F * C, 0.3),
               wg = rf(E * F * C, 0.3), wd = rf(E * C * F, 0.3);
    FVec eps(N * E);
    ops::noisy_gating_draw_eps(eps.data(), N, E, 3, 17, 0);
    const std::vector<float> bias = {0.8f, -0.2f, 0.f, 0.3f, -0.5f, 0.1f};
    int64_t compared = 0;
    for (int64_t K : {1, 2, 3})
        for (auto p : {OverflowPolicy::none, OverflowPolicy::drop, OverflowPolicy::reroute}) {
            SCOPED_TRACE("K" + std::to_string(K) + " " + pname(p));
            const int64_t cap = ops::expert_capacity(1.0, N, E, K);
            // fast: logits, noise logits, H, sel = H + bias, assignment, weights on H
            FVec logits(N * E), nl(N * E), H(N * E), sel(N * E), w(N * K);
            I32 ex(N * K);
            I64 load(E);
            ops::RouteStats st;
            ops::linear_forward(logits.data(), x.data(), wr.data(), N, C, E);
            ops::linear_forward(nl.data(), x.data(), wn.data(), N, C, E);
            ops::noisy_scores_forward(H.data(), logits.data(), nl.data(), eps.data(), N, E);
            ops::add_selection_bias(sel.data(), H.data(), bias.data(), N, E);
            ops::router_assign(ex.data(), load.data(), &st, sel.data(), N, E, K, cap, p);
            ops::MoeRouteT<float> r = slots_route(N, E, K, ex.data(), w.data());
            ops::router_weights_forward(r, H.data());
            if (p == OverflowPolicy::reroute && K > 1) {
                EXPECT_GT(st.rerouted, 0);
            }
            // oracle
            ops::ref::RouterOptions<float> opt;
            opt.w_noise = wn.data();
            opt.eps = eps.data();
            opt.sel_bias = bias.data();
            opt.capacity = cap;
            opt.policy = p;
            FVec out(N * C), rw(N * K);
            I32 rex(N * K);
            ops::ref::moe_ref_forward(out.data(), rex.data(), rw.data(), x.data(), wr.data(), wg.data(),
                                      wu.data(), wd.data(), N, C, E, K, F, ops::Activation::swiglu,
                                      nullptr, &opt);
            // the two compute the scores in different summation orders: a near-tie may flip
            int64_t mismatched = 0;
            for (int64_t i = 0; i < N * K; ++i) mismatched += ex[i] != rex[i];
            ASSERT_LE(mismatched, 2);
            if (mismatched) continue;
            EXPECT_LE(max_rel_diff(w, rw), 1e-5);
            ++compared;
        }
    EXPECT_GE(compared, 7);
}
