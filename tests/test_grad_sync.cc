// The gradient-sync seam of the training step (src/train/grad_sync.h): called once per optimizer
// step with the whole gradient, before AdamW; a sync that is not the identity turns the fused
// expert AdamW off, so the experts' gradients reach it too (they would be zero otherwise: the
// fused path never writes them).
#include "cli_util.h"
#include "train/trainer.h"

using namespace moe_test;

namespace {

struct CountingSync : moe::GradientSync {
    bool ident = false;
    std::vector<int64_t> steps;
    std::vector<double> expert_sumsq;  // per call: sum of squares of the routed experts' gradients
    const moe::ParamTable* table = nullptr;
    bool identity() const override { return ident; }
    void sync(float* g, int64_t n, int64_t step) override {
        steps.push_back(step);
        double ss = 0;
        for (const auto& p : table->params())
            if (p.expert && p.trainable)
                for (int64_t i = 0; i < p.numel; ++i) ss += (double)g[p.offset + i] * g[p.offset + i];
        expert_sumsq.push_back(ss);
        EXPECT_GT(n, 0);
    }
};

class GradSync : public CliTest {};

TEST_F(GradSync, CalledEveryStepWithTheExpertsGradients) {
    for (bool ident : {false, true}) {
        SCOPED_TRACE(ident ? "identity" : "not identity");
        json cfg = tiny_config();
        cfg["train"]["grad_clip"] = 0;  // the fused expert AdamW's condition
        moe::Config c = moe::config_from_json(cfg, "tiny");
        c.model.vocab_size = 0;
        moe::TrainOptions opt;
        opt.out_dir = path(ident ? "i" : "n");
        opt.summary = false;
        opt.threads = 1;
        CountingSync s;
        s.ident = ident;
        moe::ParamTable probe = [&] {  // the table of the model train() builds (vocab from the data)
            moe::ModelConfig m = c.model;
            m.vocab_size = moe::Tokenizer::char_level(corpus(), "corpus").vocab_size();
            return moe::ParamTable(m);
        }();
        s.table = &probe;
        moe::train(c, opt, nullptr, &s);
        ASSERT_EQ(s.steps, (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
        for (size_t i = 0; i < s.expert_sumsq.size(); ++i) {
            if (ident)
                EXPECT_EQ(s.expert_sumsq[i], 0.0) << "fused: the experts were updated inside the backward";
            else
                EXPECT_GT(s.expert_sumsq[i], 0.0) << "call " << i << ": the experts' gradients bypassed the sync";
        }
    }
}

}  // namespace

// Data parallel over the thread fake (no mpirun): W ranks, each with its own Trainer and a
// DataParallelSync, step for step the losses and at the end the weights of one process with
// grad_accum W·G, bit for bit (noisy gating, capacity with reroute and the balancing loss on).
#include "dist/fake_comm.h"
#include "train/dp_sync.h"

namespace {

TEST_F(GradSync, DataParallelOverTheFakeMatchesOneProcess) {
    json cfg = tiny_config();
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
    for (auto [W, G] : {std::pair{2, 1}, {3, 1}, {2, 2}}) {
        SCOPED_TRACE("W " + std::to_string(W) + " G " + std::to_string(G));
        const int64_t steps = 5;
        std::vector<double> want;
        std::vector<float> want_params;
        {
            moe::Trainer t(c, options("one", W * G));
            for (int64_t s = 0; s < steps; ++s) want.push_back(t.step().loss);
            want_params.assign(t.model().params(), t.model().params() + t.model().n_params());
        }
        std::vector<std::vector<double>> got(W);
        std::vector<std::vector<float>> params(W);
        moe::dist::run_fake_world(W, [&](moe::dist::Comm& comm) {
            moe::DataParallelSync sync(comm);
            moe::Trainer t(c, options("dp" + std::to_string(comm.rank()), G), &sync);
            for (int64_t s = 0; s < steps; ++s) got[comm.rank()].push_back(t.step().loss);
            params[comm.rank()].assign(t.model().params(), t.model().params() + t.model().n_params());
        });
        for (int r = 0; r < W; ++r) {
            EXPECT_EQ(got[r], want) << "rank " << r;
            EXPECT_TRUE(params[r] == want_params) << "rank " << r << ": weights differ";
        }
    }
}

}  // namespace
