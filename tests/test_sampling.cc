// Token sampling: greedy, temperature, top-k, top-p, repetition penalty, and option checks.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "infer/generate.h"

using namespace moe;

TEST(Sampling, GreedyIsArgmaxWhateverTheDraw) {
    std::vector<float> l = {0.1f, 2.f, -1.f, 1.9f};
    SampleOptions o;
    o.temperature = 0;
    std::vector<double> scratch;
    for (double u : {0.0, 0.5, 0.999}) EXPECT_EQ(sample_token(l.data(), 4, o, {}, u, scratch), 1);
}

TEST(Sampling, TopKOneAndTinyTopPAreGreedy) {
    std::vector<float> l = {0.1f, 2.f, -1.f, 1.9f};
    std::vector<double> scratch;
    SampleOptions k1;
    k1.top_k = 1;
    SampleOptions p;
    p.top_p = 1e-6;
    for (double u : {0.0, 0.3, 0.999}) {
        EXPECT_EQ(sample_token(l.data(), 4, k1, {}, u, scratch), 1);
        EXPECT_EQ(sample_token(l.data(), 4, p, {}, u, scratch), 1);
    }
}

TEST(Sampling, FrequenciesFollowTheTruncatedSoftmax) {
    // weights 1, 2, 4, 0.001 (logits = log); top-k 3 drops the last; expect 1/7, 2/7, 4/7
    std::vector<float> l = {0.f, std::log(2.f), std::log(4.f), std::log(0.001f)};
    SampleOptions o;
    o.top_k = 3;
    std::vector<double> scratch;
    Rng r(5, 0);
    std::vector<int> n(4, 0);
    const int draws = 70000;
    for (int i = 0; i < draws; ++i) n[sample_token(l.data(), 4, o, {}, r.uniform(), scratch)]++;
    EXPECT_EQ(n[3], 0);
    EXPECT_NEAR(n[0] / (double)draws, 1.0 / 7, 0.01);
    EXPECT_NEAR(n[1] / (double)draws, 2.0 / 7, 0.01);
    EXPECT_NEAR(n[2] / (double)draws, 4.0 / 7, 0.01);
    // top-p 0.5 keeps only the 4/7 token (it alone reaches half); 0.6 keeps {4/7, 2/7}
    SampleOptions p;
    p.top_p = 0.5;
    for (double u : {0.0, 0.5, 0.99}) EXPECT_EQ(sample_token(l.data(), 4, p, {}, u, scratch), 2);
    p.top_p = 0.6;
    std::vector<int> m(4, 0);
    for (int i = 0; i < 30000; ++i) m[sample_token(l.data(), 4, p, {}, r.uniform(), scratch)]++;
    EXPECT_EQ(m[0] + m[3], 0);
    EXPECT_NEAR(m[2] / 30000.0, 4.0 / 6, 0.015);
}

TEST(Sampling, RepetitionPenaltyAppliesOncePerDistinctToken) {
    std::vector<float> l = {3.f, 2.f, -1.f};
    SampleOptions o;
    o.temperature = 0;
    o.repetition_penalty = 2.0;
    std::vector<double> scratch;
    // token 0 seen (twice): 3 / 2 = 1.5 < 2 -> token 1 wins; applied twice it would be 0.75 (same winner),
    // so check the value through a case where once vs twice differ: 3 / 2 = 1.5 vs token 1 at 1.6
    std::vector<float> l2 = {3.f, 1.6f, -1.f};
    EXPECT_EQ(sample_token(l.data(), 3, o, {0, 0}, 0.5, scratch), 1);
    o.repetition_penalty = 1.8;  // 3 / 1.8 = 1.67 > 1.6 once; 0.93 < 1.6 if applied twice
    EXPECT_EQ(sample_token(l2.data(), 3, o, {0, 0, 0}, 0.5, scratch), 0);
    // negative logits are multiplied: -1 * 2 = -2
    std::vector<float> l3 = {-1.f, -1.5f};
    o.repetition_penalty = 2.0;
    EXPECT_EQ(sample_token(l3.data(), 2, o, {0}, 0.5, scratch), 1);
}

TEST(Sampling, OptionChecks) {
    SampleOptions o;
    EXPECT_NO_THROW(check_sample_options(o));
    auto bad = [](auto mutate) {
        SampleOptions x;
        mutate(x);
        EXPECT_THROW(check_sample_options(x), error);
    };
    bad([](SampleOptions& x) { x.max_tokens = 0; });
    bad([](SampleOptions& x) { x.temperature = -1; });
    bad([](SampleOptions& x) { x.temperature = NAN; });
    bad([](SampleOptions& x) { x.top_k = -1; });
    bad([](SampleOptions& x) { x.top_p = 0; });
    bad([](SampleOptions& x) { x.top_p = 1.01; });
    bad([](SampleOptions& x) { x.repetition_penalty = 0; });
}
