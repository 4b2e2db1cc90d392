// Expert-parallel inference (src/infer/ep_infer.h, docs/distributed.md) over the thread fake: W
// ranks, each holding experts [r·E/W, (r+1)·E/W) of a sharded Model, rank 0 running forward_cached
// with the EpLeader and the others ep_follow, give the logits of one process holding every expert,
// bit for bit: prefill of several sequences in one call, then decode steps; fp32, bf16, int8, q8_0
// and q4_k weights; SwiGLU and ReLU; a shared expert with its gate; dense and MoE layers mixed; the
// small-expert task path and the large-expert GEMM path; a rank whose experts get no row. Each rank
// holds 1/W of the expert bytes. The mpirun runs of the real binary are in test_ep_infer_cli.cc.
#include <cstring>

#include "cli_util.h"
#include "core/parallel.h"
#include "dist/fake_comm.h"
#include "infer/ep_infer.h"
#include "kernels/qmatmul.h"
#include "model/model.h"

using namespace moe_test;

namespace {

moe::ModelConfig model_config(const json& model) {
    json j = {{"model", {{"n_head", 2}, {"ffn", "moe"}, {"vocab_size", 64}, {"n_ctx", 64}}}};
    for (auto it = model.begin(); it != model.end(); ++it) j["model"][it.key()] = it.value();
    return moe::config_from_json(j, "test").model;
}

// The calls of a run: one prefill of S sequences of different lengths in one call (all rows'
// logits), then `steps` decode steps of one row per sequence (the argmax of its last logits).
struct Trace {
    std::vector<std::vector<float>> logits;  // per call, (N, V)
    std::vector<moe::EpRankStats> stats;     // per rank (expert-parallel runs)
    double expert_bytes = 0;                 // rank 0's model
};

void run_calls(moe::Model& m, int64_t S, int64_t steps, int64_t prompt, Trace& t) {
    const int64_t V = m.config().vocab_size;
    moe::layers::KvCache cache = m.make_cache(S);
    std::vector<int32_t> tk, sq, ps;
    for (int64_t s = 0; s < S; ++s)
        for (int64_t i = 0; i < prompt + 3 * s; ++i) {
            tk.push_back((int32_t)((s * 31 + i * 7 + i * i) % V));
            sq.push_back((int32_t)s);
            ps.push_back((int32_t)i);
        }
    m.forward_cached(tk.data(), sq.data(), ps.data(), (int64_t)tk.size(), cache);
    t.logits.emplace_back(m.logits(), m.logits() + tk.size() * V);
    std::vector<int32_t> last(S);
    for (int64_t s = 0; s < S; ++s) {  // the last row of each sequence
        int64_t row = 0;
        for (int64_t n = 0; n < (int64_t)sq.size(); ++n)
            if (sq[n] == s) row = n;
        const float* l = m.logits() + row * V;
        last[s] = (int32_t)(std::max_element(l, l + V) - l);
    }
    for (int64_t step = 0; step < steps; ++step) {
        tk.assign(last.begin(), last.end());
        sq.resize(S), ps.resize(S);
        for (int64_t s = 0; s < S; ++s) sq[s] = (int32_t)s, ps[s] = (int32_t)cache.len[s];
        m.forward_cached(tk.data(), sq.data(), ps.data(), S, cache, true);
        t.logits.emplace_back(m.logits(), m.logits() + S * V);
        for (int64_t s = 0; s < S; ++s) {
            const float* l = m.logits() + s * V;
            last[s] = (int32_t)(std::max_element(l, l + V) - l);
        }
    }
}

Trace one_process(const moe::ModelConfig& cfg, moe::kernels::WType t, int64_t S, int64_t steps, int64_t prompt,
                  int threads = 1) {
    moe::set_num_threads(threads);
    moe::Model m(cfg, t);
    m.init(3);
    Trace tr;
    run_calls(m, S, steps, prompt, tr);
    tr.expert_bytes = m.expert_bytes_held();
    return tr;
}

Trace expert_parallel(const moe::ModelConfig& cfg, moe::kernels::WType t, int W, int64_t S, int64_t steps,
                      int64_t prompt, int threads = 1) {
    Trace tr;
    moe::set_num_threads(threads);  // every rank's (the fake's ranks are threads of this process)
    moe::dist::run_fake_world(W, [&](moe::dist::Comm& comm) {
        moe::Model m(cfg, t, moe::expert_range_of(cfg, W, comm.rank()));
        m.init(3);
        if (comm.rank() == 0) {
            moe::EpLeader lead(comm, m);
            run_calls(m, S, steps, prompt, tr);
            tr.stats = lead.stop();
            tr.expert_bytes = m.expert_bytes_held();
        } else {
            moe::ep_follow(comm, m);
        }
    });
    moe::set_num_threads(1);
    return tr;
}

void expect_same_bits(const Trace& want, const Trace& got) {
    ASSERT_EQ(want.logits.size(), got.logits.size());
    for (size_t i = 0; i < want.logits.size(); ++i) {
        ASSERT_EQ(want.logits[i].size(), got.logits[i].size()) << "call " << i;
        EXPECT_EQ(std::memcmp(want.logits[i].data(), got.logits[i].data(), want.logits[i].size() * sizeof(float)), 0)
            << "call " << i << ": logits differ from one process";
    }
}

void check_config(const moe::ModelConfig& cfg, const std::vector<std::string>& types, const std::vector<int>& Ws,
                  int64_t S = 3, int64_t steps = 4, int64_t prompt = 5) {
    for (const std::string& ty : types) {
        const moe::kernels::WType t = moe::kernels::parse_wtype(ty, "test");
        const Trace want = one_process(cfg, t, S, steps, prompt);
        for (int W : Ws) {
            SCOPED_TRACE(ty + ", W " + std::to_string(W));
            const Trace got = expert_parallel(cfg, t, W, S, steps, prompt);
            expect_same_bits(want, got);
            // each rank holds its 1/W of the expert weights
            ASSERT_EQ((int)got.stats.size(), W);
            for (int q = 0; q < W; ++q) EXPECT_EQ(got.stats[q].expert_bytes * W, want.expert_bytes) << "rank " << q;
            EXPECT_EQ(got.expert_bytes, got.stats[0].expert_bytes);
        }
    }
}

TEST(EpInfer, SwigluEveryWeightTypeMatchesOneProcess) {
    // C and F multiples of 256 for the K-quants; a dense layer between MoE layers
    const moe::ModelConfig cfg = model_config({{"n_layer", 3}, {"n_embd", 256}, {"ffn", {"moe", "dense", "moe"}},
                                               {"n_ff", 256}, {"n_expert", 8}, {"n_expert_used", 2},
                                               {"n_ff_exp", 256}});
    check_config(cfg, {"fp32", "bf16", "int8", "q8_0", "q4_k"}, {2, 4});
}

TEST(EpInfer, ReluSharedExpertMatchesOneProcess) {
    const moe::ModelConfig cfg =
        model_config({{"n_layer", 2}, {"n_embd", 64}, {"activation", "relu"}, {"n_expert", 4}, {"n_expert_used", 2},
                      {"n_ff_exp", 32}, {"n_ff_shexp", 48}, {"shexp_gate", true}});
    check_config(cfg, {"fp32", "int8"}, {2, 4});
}

TEST(EpInfer, OneExpertPerTokenLeavesRanksWithoutRows) {
    // K = 1 of 8 experts over 4 ranks, one sequence: most decode steps send some rank nothing
    const moe::ModelConfig cfg = model_config(
        {{"n_layer", 2}, {"n_embd", 32}, {"n_expert", 8}, {"n_expert_used", 1}, {"n_ff_exp", 32}});
    check_config(cfg, {"fp32", "bf16"}, {2, 4}, 1, 8, 3);
}

TEST(EpInfer, LargeExpertGemmPathMatchesOneProcess) {
    // 600 rows, K 2 of 4 experts of 512 x 512: ~300 rows per expert, above kSmallExpertFlops (the
    // per-expert GEMMs on every thread), with 2 threads per rank
    const moe::ModelConfig cfg = model_config(
        {{"n_layer", 1}, {"n_embd", 512}, {"n_ctx", 640}, {"n_expert", 4}, {"n_expert_used", 2}, {"n_ff_exp", 512}});
    for (const char* ty : {"fp32", "int8"}) {
        SCOPED_TRACE(ty);
        const moe::kernels::WType t = moe::kernels::parse_wtype(ty, "test");
        const Trace want = one_process(cfg, t, 1, 1, 600, 2);
        expect_same_bits(want, expert_parallel(cfg, t, 2, 1, 1, 600, 2));
    }
}

TEST(EpInfer, BadLayoutsAreErrors) {
    const moe::ModelConfig cfg = model_config({{"n_layer", 1}, {"n_embd", 16}, {"n_expert", 6}, {"n_expert_used", 2},
                                               {"n_ff_exp", 16}});
    try {
        moe::expert_range_of(cfg, 4, 0);
        FAIL() << "E = 6 over 4 ranks";
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("--expert-parallel 4 must divide the number of experts"), std::string::npos)
            << e.what();
    }
    const moe::ModelConfig dense = model_config({{"n_layer", 1}, {"n_embd", 16}, {"ffn", "dense"}, {"n_ff", 16}});
    EXPECT_THROW(moe::expert_range_of(dense, 2, 0), moe::error);
    // a range outside [0, E), or on a model without MoE layers: moe::error, for every weight type
    for (const moe::kernels::WType t : {moe::kernels::WType::f32, moe::kernels::WType::q8})
        for (const moe::ExpertRange bad : {moe::ExpertRange{4, 3}, moe::ExpertRange{-1, 2}, moe::ExpertRange{0, 0}})
            EXPECT_THROW(moe::Model(cfg, t, bad), moe::error) << bad.first << " " << bad.count;
    EXPECT_THROW(moe::Model(dense, moe::ExpertRange{0, 1}), moe::error);
    // a sharded model without its runner refuses to run (it lacks the other experts)
    moe::Model m(cfg, moe::kernels::WType::f32, moe::expert_range_of(cfg, 2, 0));
    m.init(1);
    auto cache = m.make_cache(1);
    const int32_t tk = 1, sq = 0, ps = 0;
    EXPECT_THROW(m.forward_cached(&tk, &sq, &ps, 1, cache), moe::error);
    EXPECT_THROW(m.forward(&tk, nullptr, 1, 1), moe::error);  // nor forwards (no expert runner)
}

}  // namespace
