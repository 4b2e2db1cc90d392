// Expert parallelism over the thread fake (src/train/expert_parallel.h; the mpirun runs of the real
// binary are in test_data_parallel.cc): the row exchange returns what was sent, exactly, with ranks
// that send or receive nothing; a model whose MoE layers run their experts on other ranks computes
// the loss, the replicated gradients and (on the expert's rank, one piece per source) the expert
// gradients of one process, bit for bit, also when one expert receives every row and on the
// large-expert GEMM path; W Trainers with ExpertParallelSync train to the weights of one process.
#include <random>

#include <map>

#include "cli_util.h"
#include "dist/fake_comm.h"
#include "model/model.h"
#include "io/checkpoint.h"
#include "train/expert_parallel.h"
#include "train/trainer.h"

using namespace moe_test;

namespace {

moe::ModelConfig model_config(const json& model, const json& router) {
    json j = {{"model", {{"n_head", 2}, {"ffn", "moe"}, {"vocab_size", 32}}}, {"train", {{"data", "unused.txt"}}}};
    for (auto it = model.begin(); it != model.end(); ++it) j["model"][it.key()] = it.value();
    if (!router.empty()) j["router"] = router;
    return moe::config_from_json(j, "test").model;
}

// rows (R, C) whose values say (source, destination, index): every element distinct and checkable
float tag(int src, int dst, int64_t i, int64_t c) { return (float)(src * 1000000 + dst * 100000 + i * 100 + c); }

TEST(ExpertParallel, ExchangeReturnsTheRowsExactly) {
    const int64_t C = 3;
    // send_rows[src][dst] for each pattern (W = 1..4)
    for (int W = 1; W <= 4; ++W)
        for (int pattern = 0; pattern < 4; ++pattern) {
            SCOPED_TRACE("W " + std::to_string(W) + " pattern " + std::to_string(pattern));
            auto rows_of = [&](int src, int dst) -> int64_t {
                switch (pattern) {
                    case 0: return (src * 7 + dst * 3) % 5;           // mixed, some zeros
                    case 1: return dst == 0 ? 6 + src : 0;            // every row to rank 0
                    case 2: return src == 0 ? 0 : 2 + dst;            // rank 0 sends nothing
                    default: return 0;                                // nobody sends anything
                }
            };
            moe::dist::run_fake_world(W, [&](moe::dist::Comm& comm) {
                // a model is only needed for the runner's construction: 4 experts, 1 MoE layer
                const moe::ModelConfig m = model_config({{"n_layer", 1}, {"n_embd", 8}, {"n_ctx", 8}, {"n_expert", 12},
                                                         {"n_expert_used", 2}, {"n_ff_exp", 8}},
                                                        json::object());
                moe::Model model(m);
                moe::ExpertParallel ep(comm, model);
                const int r = comm.rank();
                std::vector<int64_t> send_rows(W);
                std::vector<float> rows;
                for (int d = 0; d < W; ++d) {
                    send_rows[d] = rows_of(r, d);
                    for (int64_t i = 0; i < send_rows[d]; ++i)
                        for (int64_t c = 0; c < C; ++c) rows.push_back(tag(r, d, i, c));
                }
                std::vector<float> recv, back;
                std::vector<int64_t> recv_rows, back_rows;
                ep.exchange(rows.data(), send_rows.data(), C, recv, recv_rows);
                // what arrived: source after source, its rows for me in order
                size_t at = 0;
                for (int s = 0; s < W; ++s) {
                    ASSERT_EQ(recv_rows[s], rows_of(s, r));
                    for (int64_t i = 0; i < recv_rows[s]; ++i)
                        for (int64_t c = 0; c < C; ++c, ++at) ASSERT_EQ(recv[at], tag(s, r, i, c));
                }
                ASSERT_EQ(at, recv.size());
                // and back: the input, exactly
                ep.exchange(recv.data(), recv_rows.data(), C, back, back_rows);
                EXPECT_EQ(back_rows, send_rows);
                EXPECT_TRUE(back == rows);
            });
        }
}

struct Case {
    const char* name;
    int W;
    int64_t C, F, E, K, B, T;
    bool noisy, skew;  // skew: router weights zero, K = 1: expert 0 receives every row
    std::string overflow;
};

// Each rank: the same model (same init), its own micro-batch; forward + backward with the experts
// spread over the W ranks against the same model run alone on that micro-batch.
void expect_layer_matches(const Case& k) {
    SCOPED_TRACE(k.name);
    json router = {{"noisy_gating", k.noisy}, {"balance_loss", 0.01}, {"z_loss", 0.001}};
    if (!k.overflow.empty()) router["capacity_factor"] = 1.0, router["overflow"] = k.overflow;
    const moe::ModelConfig m = model_config({{"n_layer", 2}, {"n_embd", k.C}, {"n_ctx", k.T}, {"n_expert", k.E},
                                             {"n_expert_used", k.K}, {"n_ff_exp", k.F}},
                                            router);
    const int W = k.W;
    const int64_t N = k.B * k.T;
    std::vector<std::vector<float>> ref_grads(W);  // each source's one-process gradient
    std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges(W);
    std::vector<std::vector<float>> pieces(W);
    moe::dist::run_fake_world(W, [&](moe::dist::Comm& comm) {
        const int r = comm.rank();
        std::mt19937 rng(100 + r);
        std::vector<int32_t> x(N), y(N);
        for (auto& v : x) v = (int32_t)(rng() % 32);
        for (auto& v : y) v = (int32_t)(rng() % 32);
        auto make = [&] {
            auto model = std::make_unique<moe::Model>(m);
            model->init(7);
            if (k.skew)
                for (const auto& p : model->table().params())
                    if (p.name.size() >= 12 && p.name.compare(p.name.size() - 12, 12, "ffn_gate_inp") == 0)
                        std::fill(model->params() + p.offset, model->params() + p.offset + p.numel, 0.f);
            model->set_mode(true, 3, 5, r);
            return model;
        };
        auto ref = make(), ep_model = make();
        const float want = ref->forward(x.data(), y.data(), k.B, k.T);
        ref->zero_grad();
        ref->backward(0.5f);
        moe::ExpertParallel ep(comm, *ep_model);
        ep_model->set_expert_runner(&ep);
        const float got = ep_model->forward(x.data(), y.data(), k.B, k.T);
        EXPECT_EQ(got, want) << "rank " << r;
        EXPECT_EQ(ep_model->aux_balance_loss(), ref->aux_balance_loss());
        EXPECT_EQ(ep_model->aux_z_loss(), ref->aux_z_loss());
        EXPECT_TRUE(std::equal(ep_model->logits(), ep_model->logits() + N * m.vocab_size, ref->logits()))
            << "rank " << r << ": logits differ";
        ep_model->zero_grad();
        ep_model->backward(0.5f);
        // replicated tensors: this rank's own gradient; the expert stacks: untouched (the runner's)
        for (const auto& p : ref->table().params()) {
            const float* a = ep_model->grads() + p.offset;
            const float* b = ref->grads() + p.offset;
            if (p.expert) {
                EXPECT_TRUE(std::all_of(a, a + p.numel, [](float v) { return v == 0.f; })) << p.name;
                continue;
            }
            EXPECT_TRUE(std::equal(a, a + p.numel, b)) << "rank " << r << ": " << p.name;
        }
        ref_grads[r].assign(ref->grads(), ref->grads() + ref->n_params());
        ranges[r] = ep.local_ranges();
        pieces[r].assign(ep.grads(), ep.grads() + W * ep.local_size());
        ep_model->set_expert_runner(nullptr);
    });
    // rank q's piece s: source s's gradient of q's experts, as one process computed it on s
    for (int q = 0; q < W; ++q) {
        const int64_t nl = (int64_t)pieces[q].size() / W;
        for (int s = 0; s < W; ++s) {
            const float* piece = pieces[q].data() + s * nl;
            int64_t at = 0;
            for (const auto& [off, n] : ranges[q]) {
                EXPECT_TRUE(std::equal(piece + at, piece + at + n, ref_grads[s].data() + off))
                    << "rank " << q << " source " << s << " offset " << off;
                at += n;
            }
            EXPECT_EQ(at, nl);
        }
    }
}

TEST(ExpertParallel, LayerMatchesOneProcessTwoRanks) {
    expect_layer_matches({"dropless, noisy", 2, 16, 32, 4, 2, 2, 8, true, false, ""});
}
TEST(ExpertParallel, LayerMatchesOneProcessFourRanksReroute) {
    expect_layer_matches({"reroute, noisy", 4, 16, 32, 8, 2, 2, 8, true, false, "reroute"});
}
TEST(ExpertParallel, LayerMatchesOneProcessThreeRanksDrop) {
    expect_layer_matches({"drop", 3, 16, 32, 6, 2, 2, 8, false, false, "drop"});
}
// every row to expert 0 (rank 0 receives all of them, the others none) and back
TEST(ExpertParallel, OneExpertReceivesEveryRow) {
    expect_layer_matches({"skew W2", 2, 16, 32, 4, 1, 2, 8, false, true, ""});
    expect_layer_matches({"skew W4", 4, 16, 32, 4, 1, 2, 8, false, true, ""});
}
// experts large enough for one-expert-at-a-time threaded GEMMs (ops::small_experts false): the
// owner must take the source's decision, not its own over its rows
TEST(ExpertParallel, LargeExpertsMatchOneProcess) {
    expect_layer_matches({"large experts", 2, 256, 512, 2, 2, 4, 64, false, false, ""});
}

// W Trainers over the fake with ExpertParallelSync against one process with grad_accum W·G:
// losses step for step and the final weights, bit for bit.
class ExpertParallelTrain : public CliTest {};

// Trainers on W fake ranks, experts sharded over P (each rank's model holds E/P experts and AdamW
// only their moments), step for step the losses of one process with --grad-accum W·G; each rank's
// weights are one process's (its experts' slices), and the sharded checkpoint they save together
// gathers into one process's checkpoint: every weight and moment, bit for bit.
TEST_F(ExpertParallelTrain, TrainersOverTheFakeMatchOneProcess) {
    json cfg = tiny_config();
    cfg["model"]["n_layer"] = 2;
    cfg["router"] = {{"noisy_gating", true}, {"capacity_factor", 1.0}, {"overflow", "reroute"}, {"balance_loss", 0.01}};
    moe::Config c = moe::config_from_json(cfg, "tiny");
    c.model.vocab_size = 0;
    auto options = [&](const std::string& out, int64_t accum) {
        moe::TrainOptions opt;
        opt.out_dir = path(out);
        opt.summary = false;
        opt.threads = 1;
        opt.grad_accum = accum;
        return opt;
    };
    // the tensors of `m` (a range of experts or all) as (name -> floats)
    auto tensors = [](moe::Model& m, const float* base) {
        std::map<std::string, std::vector<float>> t;
        for (const auto& p : m.table().params()) t[p.name].assign(base + p.offset, base + p.offset + p.numel);
        return t;
    };
    for (auto [W, P, G] : {std::tuple{2, 2, 1}, {4, 2, 1}, {4, 4, 1}, {2, 2, 2}}) {
        SCOPED_TRACE("W " + std::to_string(W) + " P " + std::to_string(P) + " G " + std::to_string(G));
        const int64_t steps = 4;
        std::vector<double> want;
        std::map<std::string, std::vector<float>> want_params;
        int64_t E = 0;
        {
            moe::Trainer t(c, options("one", W * G));
            for (int64_t s = 0; s < steps; ++s) want.push_back(t.step().loss);
            want_params = tensors(t.model(), t.model().params());
            E = t.model().config().n_expert;
            t.save();
        }
        std::vector<std::vector<double>> got(W);
        std::vector<std::map<std::string, std::vector<float>>> params(W);
        std::vector<moe::ExpertRange> ranges(W);
        const std::string out = "ep" + std::to_string(W) + std::to_string(P) + std::to_string(G);
        moe::dist::run_fake_world(W, [&](moe::dist::Comm& comm) {
            moe::ExpertParallelSync sync(comm, P);
            moe::Trainer t(c, options(out, G), &sync);
            for (int64_t s = 0; s < steps; ++s) got[comm.rank()].push_back(t.step().loss);
            params[comm.rank()] = tensors(t.model(), t.model().params());
            ranges[comm.rank()] = t.model().expert_range();
            t.save();  // collective: the sharded set
        });
        for (int r = 0; r < W; ++r) {
            EXPECT_EQ(got[r], want) << "rank " << r;
            ASSERT_EQ(ranges[r].count, E / P);
            EXPECT_EQ(ranges[r].first, (r % P) * (E / P));
            for (const auto& [name, v] : want_params) {
                const auto& mine = params[r].at(name);
                if (mine.size() == v.size()) {
                    EXPECT_TRUE(mine == v) << "rank " << r << ": " << name << " differs";
                    continue;
                }
                const size_t per = v.size() / (size_t)E;  // an expert stack: my slice of it
                ASSERT_EQ(mine.size(), per * (size_t)ranges[r].count) << name;
                EXPECT_TRUE(std::equal(mine.begin(), mine.end(), v.begin() + ranges[r].first * per))
                    << "rank " << r << ": " << name << " differs";
            }
        }
        // the set gathers into the one-process checkpoint (weights, moments, state)
        ASSERT_TRUE(moe::is_sharded_checkpoint(path(out)));
        moe::Checkpoint a = moe::load_checkpoint(path(out), "fp32"), b = moe::load_checkpoint(path("one"), "fp32");
        EXPECT_TRUE(tensors(*a.model, a.model->params()) == want_params);
        EXPECT_TRUE(a.adam_m == b.adam_m && a.adam_v == b.adam_v) << "moments differ";
        EXPECT_EQ(a.state.step, b.state.step);
        // and any expert range reads from it what the one-process checkpoint holds (resharding)
        for (moe::ExpertRange rg : {moe::ExpertRange{0, E}, moe::ExpertRange{1, 2}, moe::ExpertRange{E - 1, 1}}) {
            moe::Checkpoint x = moe::load_checkpoint_experts(path(out), rg),
                            y = moe::load_checkpoint_experts(path("one"), rg);
            EXPECT_TRUE(tensors(*x.model, x.model->params()) == tensors(*y.model, y.model->params()));
            EXPECT_TRUE(x.adam_m == y.adam_m && x.adam_v == y.adam_v);
        }
    }
}

TEST_F(ExpertParallelTrain, DivisibilityErrors) {
    moe::Config c = moe::config_from_json(tiny_config(), "tiny");  // E = 4
    c.model.vocab_size = 0;
    moe::TrainOptions opt;
    opt.out_dir = path("x");
    opt.summary = false;
    opt.threads = 1;
    moe::dist::run_fake_world(2, [&](moe::dist::Comm& comm) {
        try {
            moe::ExpertParallelSync sync(comm, 4);  // 4 does not divide W = 2
            ADD_FAILURE() << "no error";
        } catch (const moe::error& e) {
            EXPECT_NE(std::string(e.what()).find("must divide the number of ranks (2)"), std::string::npos) << e.what();
        }
    });
    moe::dist::run_fake_world(3, [&](moe::dist::Comm& comm) {
        moe::ExpertParallelSync sync(comm, 3);  // 3 divides W, not E = 4
        try {
            moe::Trainer t(c, opt, &sync);
            ADD_FAILURE() << "no error";
        } catch (const moe::error& e) {
            EXPECT_NE(std::string(e.what()).find("must divide the number of experts (model.n_expert = 4)"),
                      std::string::npos)
                << e.what();
        }
    });
}

}  // namespace
