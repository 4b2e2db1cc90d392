// Cached inference against the no-cache full forward (the oracle): batched prefill of a prompt,
// then token-by-token decode from the KV cache, for one sequence and for several sequences of
// different lengths decoded together in one batch, dense and MoE, multi-head and grouped-query.
// Also the bad-input errors of forward_cached.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "model/model.h"

using namespace moe;

namespace {

ModelConfig make_config(bool moe, int64_t Hkv) {
    ModelConfig m;
    m.vocab_size = 37, m.n_layer = 2, m.n_embd = 32, m.n_head = 4, m.n_head_kv = Hkv, m.n_ctx = 24;
    if (moe) {
        m.n_expert = 4, m.n_expert_used = 2, m.n_ff_exp = 24;
        m.layer_moe = {true, false};  // a mixed stack: one MoE layer, one dense
        m.n_ff = 48;
    } else {
        m.n_ff = 48;
        m.layer_moe = {false, false};
    }
    return m;
}

std::vector<int32_t> tokens(int64_t n, uint64_t seed, int64_t V) {
    Rng r(seed, 1);
    std::vector<int32_t> t(n);
    for (auto& x : t) x = (int32_t)(r.next_u64() % (uint64_t)V);
    return t;
}

// logits (T, V) of the full, uncached forward over seq
std::vector<float> full_logits(Model& m, const std::vector<int32_t>& seq) {
    m.set_mode(false);
    m.forward(seq.data(), nullptr, 1, (int64_t)seq.size());
    const int64_t V = m.config().vocab_size;
    return std::vector<float>(m.logits(), m.logits() + seq.size() * V);
}

void expect_close(const float* a, const float* b, int64_t n, const std::string& what) {
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n; ++i) {
        worst = std::max(worst, (double)std::fabs(a[i] - b[i]));
        scale = std::max(scale, (double)std::fabs(b[i]));
    }
    EXPECT_LT(worst, 1e-5 * std::max(1.0, scale)) << what << ": max |diff| " << worst << " (scale " << scale << ")";
}

class Infer : public ::testing::TestWithParam<std::pair<bool, int64_t>> {};

TEST_P(Infer, PrefillThenDecodeEqualsFullForward) {
    auto [moe_layers, Hkv] = GetParam();
    Model m(make_config(moe_layers, Hkv));
    m.init(7);
    const int64_t V = m.config().vocab_size, T = 20, P = 17;  // P >= 16: the GEMM prefill path
    auto seq = tokens(T, 3, V);
    auto ref = full_logits(m, seq);
    auto cache = m.make_cache(1);
    std::vector<int32_t> sid(P, 0), pos(P);
    for (int64_t i = 0; i < P; ++i) pos[i] = (int32_t)i;
    m.forward_cached(seq.data(), sid.data(), pos.data(), P, cache);  // prefill: all P rows' logits
    expect_close(m.logits(), ref.data(), P * V, "prefill");
    for (int64_t t = P; t < T; ++t) {
        const int32_t s0 = 0, p = (int32_t)t;
        m.forward_cached(&seq[t], &s0, &p, 1, cache, true);
        expect_close(m.logits(), ref.data() + t * V, V, "decode position " + std::to_string(t));
    }
    EXPECT_EQ(cache.len[0], T);
}

TEST_P(Infer, SequencesOfDifferentLengthsDecodeTogether) {
    auto [moe_layers, Hkv] = GetParam();
    Model m(make_config(moe_layers, Hkv));
    m.init(11);
    const int64_t V = m.config().vocab_size, S = 3, steps = 6;
    const int64_t prompt_len[S] = {3, 17, 1};  // 17: a GEMM prefill run mixed with per-row rows
    std::vector<std::vector<int32_t>> seqs;
    std::vector<std::vector<float>> refs;
    for (int64_t s = 0; s < S; ++s) {
        seqs.push_back(tokens(prompt_len[s] + steps, 100 + s, V));
        refs.push_back(full_logits(m, seqs[s]));
    }
    auto cache = m.make_cache(S);
    // prefill sequences 0 and 1 together in one call (rows of both), sequence 2 alone
    {
        std::vector<int32_t> tk, sid, pos;
        for (int64_t s = 0; s < 2; ++s)
            for (int64_t i = 0; i < prompt_len[s]; ++i) tk.push_back(seqs[s][i]), sid.push_back((int32_t)s), pos.push_back((int32_t)i);
        m.forward_cached(tk.data(), sid.data(), pos.data(), (int64_t)tk.size(), cache, true);
        expect_close(m.logits() + (prompt_len[0] - 1) * V, refs[0].data() + (prompt_len[0] - 1) * V, V, "prefill seq 0");
        expect_close(m.logits() + (tk.size() - 1) * V, refs[1].data() + (prompt_len[1] - 1) * V, V, "prefill seq 1");
        const int32_t s2 = 2, p0 = 0;
        m.forward_cached(&seqs[2][0], &s2, &p0, 1, cache, true);
        expect_close(m.logits(), refs[2].data(), V, "prefill seq 2");
    }
    for (int64_t step = 0; step < steps; ++step) {
        std::vector<int32_t> tk(S), sid(S), pos(S);
        for (int64_t s = 0; s < S; ++s) {
            pos[s] = (int32_t)(prompt_len[s] + step);
            tk[s] = seqs[s][pos[s]];
            sid[s] = (int32_t)s;
        }
        m.forward_cached(tk.data(), sid.data(), pos.data(), S, cache, true);
        for (int64_t s = 0; s < S; ++s)
            expect_close(m.logits() + s * V, refs[s].data() + pos[s] * V, V,
                         "batch decode seq " + std::to_string(s) + " step " + std::to_string(step));
    }
}

INSTANTIATE_TEST_SUITE_P(Configs, Infer,
                         ::testing::Values(std::make_pair(false, (int64_t)4), std::make_pair(false, (int64_t)2),
                                           std::make_pair(true, (int64_t)4), std::make_pair(true, (int64_t)1)),
                         [](const auto& info) {
                             return std::string(info.param.first ? "moe" : "dense") + "_kv" + std::to_string(info.param.second);
                         });

TEST(InferErrors, BadIdsPositionsAndSlots) {
    Model m(make_config(true, 2));
    m.init(1);
    auto cache = m.make_cache(2);
    const int32_t ok_tok = 1, bad_tok = 37, neg_tok = -1, s0 = 0, s9 = 9, p0 = 0, p5 = 5, p24 = 24;
    EXPECT_THROW(m.forward_cached(&bad_tok, &s0, &p0, 1, cache), error);
    EXPECT_THROW(m.forward_cached(&neg_tok, &s0, &p0, 1, cache), error);
    EXPECT_THROW(m.forward_cached(&ok_tok, &s9, &p0, 1, cache), error);
    EXPECT_THROW(m.forward_cached(&ok_tok, &s0, &p24, 1, cache), error);  // beyond n_ctx
    EXPECT_THROW(m.forward_cached(&ok_tok, &s0, &p5, 1, cache), error);   // skips positions 0..4
    EXPECT_THROW(m.make_cache(0), error);
    // a cache made for another model, and a full forward longer than the context: errors, not aborts
    Model other(make_config(true, 4));
    auto wrong = other.make_cache(1);
    EXPECT_THROW(m.forward_cached(&ok_tok, &s0, &p0, 1, wrong), error);
    std::vector<int32_t> long_seq(25, 1);
    try {
        m.forward(long_seq.data(), nullptr, 1, 25);
        ADD_FAILURE() << "expected an error for T = 25 > n_ctx = 24";
    } catch (const error& e) {
        EXPECT_NE(std::string(e.what()).find("25"), std::string::npos) << e.what();
    }
    try {
        m.forward_cached(&bad_tok, &s0, &p0, 1, cache);
    } catch (const error& e) {
        EXPECT_NE(std::string(e.what()).find("37"), std::string::npos) << e.what();
    }
}

}  // namespace

namespace {

// logits of a cached prefill of `seq` (all rows) under weight type t
std::vector<float> cached_logits(Model& m, const std::vector<int32_t>& seq, kernels::WType t) {
    m.set_weight_type(t);
    auto cache = m.make_cache(1);
    const int64_t T = (int64_t)seq.size();
    std::vector<int32_t> sid(T, 0), pos(T);
    for (int64_t i = 0; i < T; ++i) pos[i] = (int32_t)i;
    m.forward_cached(seq.data(), sid.data(), pos.data(), T, cache);
    return std::vector<float>(m.logits(), m.logits() + T * m.config().vocab_size);
}

}  // namespace

// bf16 and int8 weights against fp32: relative RMS error of the logits and top-1 agreement, on a
// model with sharper weights than the init (matrices * 3) so the logits carry signal. Tolerances:
// bf16 RMS <= 1%, top-1 >= 95%; int8 RMS <= 3%, top-1 >= 90% (docs/inference.md). Decode (N = 1,
// the GEMV path) and prefill (N > 8, dequantize + GEMM) are both covered.
TEST(InferDtypes, Bf16AndInt8LogitsTrackFp32) {
    ModelConfig cfg = make_config(true, 2);
    cfg.n_ctx = 24;
    Model m(cfg);
    m.init(3);
    for (const auto& p : m.table().params())  // matrices only (norm weights stay 1)
        if (p.shape.size() >= 2)
            for (int64_t i = 0; i < p.numel; ++i) m.params()[p.offset + i] *= 3.f;
    const int64_t V = cfg.vocab_size, T = 24;
    auto seq = tokens(T, 9, V);
    auto f = cached_logits(m, seq, kernels::WType::f32);
    for (auto [t, max_rms, min_top1] : {std::tuple{kernels::WType::bf16, 0.01, 0.95}, std::tuple{kernels::WType::q8, 0.03, 0.90}}) {
        auto q = cached_logits(m, seq, t);
        double num = 0, den = 0;
        int agree = 0;
        for (int64_t r = 0; r < T; ++r) {
            const float* a = f.data() + r * V;
            const float* b = q.data() + r * V;
            for (int64_t j = 0; j < V; ++j) num += (a[j] - b[j]) * (a[j] - b[j]), den += a[j] * a[j];
            agree += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
        }
        const double rms = std::sqrt(num / den), top1 = agree / (double)T;
        std::printf("%s: logits relative RMS error %.4f, top-1 agreement %.3f\n", kernels::wtype_name(t), rms, top1);
        EXPECT_LT(rms, max_rms) << kernels::wtype_name(t);
        EXPECT_GT(rms, 1e-6) << kernels::wtype_name(t) << ": identical to fp32, the type was not applied";
        EXPECT_GE(top1, min_top1) << kernels::wtype_name(t);
        // decode through the GEMV path gives the prefill's last row
        auto cache = m.make_cache(1);
        std::vector<int32_t> sid(T - 1, 0), pos(T - 1);
        for (int64_t i = 0; i < T - 1; ++i) pos[i] = (int32_t)i;
        m.forward_cached(seq.data(), sid.data(), pos.data(), T - 1, cache, true);
        const int32_t s0 = 0, p = (int32_t)(T - 1);
        m.forward_cached(&seq[T - 1], &s0, &p, 1, cache, true);
        expect_close(m.logits(), q.data() + (T - 1) * V, V, std::string("decode vs prefill ") + kernels::wtype_name(t));
    }
    m.set_weight_type(kernels::WType::f32);
}

TEST(InferQkNorm, CachedDecodeEqualsFullForward) {
    ModelConfig cfg = make_config(true, 2);
    cfg.qk_norm = true;
    cfg.tie_embeddings = false;
    Model m(cfg);
    m.init(5);
    for (const auto& p : m.table().params())  // non-trivial norm weights
        if (p.name.find("_norm") != std::string::npos)
            for (int64_t i = 0; i < p.numel; ++i) m.params()[p.offset + i] = 0.5f + 0.05f * (float)(i % 7);
    const int64_t V = cfg.vocab_size, T = 14;
    auto seq = tokens(T, 21, V);
    auto ref = full_logits(m, seq);
    auto cache = m.make_cache(1);
    for (int64_t t = 0; t < T; ++t) {
        const int32_t s0 = 0, p = (int32_t)t;
        m.forward_cached(&seq[t], &s0, &p, 1, cache, true);
        expect_close(m.logits(), ref.data() + t * V, V, "qk_norm decode position " + std::to_string(t));
    }
}

// A gated shared expert (n_ff_shexp, shexp_gate) in the MoE layer: prefill and decode from the
// cache give the full forward's logits; with bf16 weights (the shared expert's copied too) the
// logits stay close to fp32, and a change of the fp32 shared expert after the copy is not seen.
TEST(InferSharedExpert, CachedDecodeEqualsFullForward) {
    ModelConfig cfg = make_config(true, 2);
    cfg.n_ff_shexp = 40;
    cfg.shexp_gate = true;
    Model m(cfg);
    m.init(13);
    for (const auto& p : m.table().params())  // larger matrices: the shared expert matters
        if (p.shape.size() >= 2)
            for (int64_t i = 0; i < p.numel; ++i) m.params()[p.offset + i] *= 3.f;
    const int64_t V = cfg.vocab_size, T = 20, P = 17;
    auto seq = tokens(T, 23, V);
    auto ref = full_logits(m, seq);
    auto cache = m.make_cache(1);
    std::vector<int32_t> sid(P, 0), pos(P);
    for (int64_t i = 0; i < P; ++i) pos[i] = (int32_t)i;
    m.forward_cached(seq.data(), sid.data(), pos.data(), P, cache);
    expect_close(m.logits(), ref.data(), P * V, "shared expert prefill");
    for (int64_t t = P; t < T; ++t) {
        const int32_t s0 = 0, p = (int32_t)t;
        m.forward_cached(&seq[t], &s0, &p, 1, cache, true);
        expect_close(m.logits(), ref.data() + t * V, V, "shared expert decode position " + std::to_string(t));
    }
    auto b = cached_logits(m, seq, kernels::WType::bf16);
    double num = 0, den = 0;
    for (int64_t i = 0; i < T * V; ++i) num += (b[i] - ref[i]) * (b[i] - ref[i]), den += ref[i] * ref[i];
    EXPECT_LT(std::sqrt(num / den), 0.01);
    EXPECT_GT(std::sqrt(num / den), 1e-6) << "bf16 weights were not applied";
    // the bf16 copies are what inference reads: zeroing the fp32 shared expert changes nothing
    const ParamInfo* up = m.table().find("blk.0.ffn_up_shexp");
    ASSERT_NE(up, nullptr);
    std::fill(m.params() + up->offset, m.params() + up->offset + up->numel, 0.f);
    auto cache2 = m.make_cache(1);
    std::vector<int32_t> sid2(T, 0), pos2(T);
    for (int64_t i = 0; i < T; ++i) pos2[i] = (int32_t)i;
    m.forward_cached(seq.data(), sid2.data(), pos2.data(), T, cache2);
    expect_close(m.logits(), b.data(), T * V, "bf16 copy of the shared expert");
    m.set_weight_type(kernels::WType::f32);  // fp32 views of the zeroed expert: the logits move
    auto z = cached_logits(m, seq, kernels::WType::f32);
    double moved = 0;
    for (int64_t i = 0; i < T * V; ++i) moved = std::max(moved, (double)std::fabs(z[i] - ref[i]));
    EXPECT_GT(moved, 1e-3) << "the shared expert does not reach the logits";
}

// A small model's decode step and a short prefill never fork threads (Model::kSerialFlops), at any
// thread count: nothing can stall on a core held by another process. A call with more work than
// kSerialFlops does use the threads. Results are the same either way.
TEST(InferThreads, SmallWorkRunsOnOneThread) {
    ModelConfig cfg = make_config(true, 2);
    cfg.n_ctx = 64;
    Model m(cfg);
    m.init(11);
    set_num_threads(2);
    auto seq = tokens(40, 13, cfg.vocab_size);
    auto cache = m.make_cache(1);
    std::vector<int32_t> sid(40, 0), pos(40);
    for (int i = 0; i < 40; ++i) pos[i] = i;
    const int64_t r0 = parallel_regions();
    m.forward_cached(seq.data(), sid.data(), pos.data(), 16, cache, true);  // prefill of 16
    for (int i = 16; i < 24; ++i) m.forward_cached(&seq[i], &sid[i], &pos[i], 1, cache, true);  // decode
    EXPECT_EQ(parallel_regions() - r0, 0) << "small-model prefill/decode forked threads";
    std::vector<float> got(m.logits(), m.logits() + cfg.vocab_size);
    // the same steps on one thread give the same logits
    set_num_threads(1);
    auto c1 = m.make_cache(1);
    m.forward_cached(seq.data(), sid.data(), pos.data(), 16, c1, true);
    for (int i = 16; i < 24; ++i) m.forward_cached(&seq[i], &sid[i], &pos[i], 1, c1, true);
    for (int64_t j = 0; j < cfg.vocab_size; ++j) ASSERT_EQ(got[j], m.logits()[j]) << j;
    set_num_threads(0);
    // the counter does count: a parallel_for with enough work forks once
    const int64_t r1 = parallel_regions();
    std::vector<float> v(1 << 16);
    parallel_for(0, (int64_t)v.size(), 1024, [&](int64_t a, int64_t b) { for (int64_t i = a; i < b; ++i) v[i] = 1.f; });
    if (num_threads() > 1) EXPECT_EQ(parallel_regions() - r1, 1);
}
