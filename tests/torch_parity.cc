// Whole-model parity with the PyTorch reference (tests/ref/model.py): for each tiny config,
// tests/ref/make_parity.py (a CTest fixture, tests/pytorch.cmake) dumps the weights, a batch, the
// logits, the loss, every parameter gradient at step 0 and a 10-step AdamW loss trajectory. This
// test loads the same weights into moe::Model and requires, in fp32:
//   logits, loss, every gradient:  max|ours - torch| / max(max|torch|, 1e-6) <= 1e-4
//   each loss (and pre-clip gradient norm) of the trajectory: relative error <= 1e-4
// The configs come from MOE_PARITY_CONFIGS (set by tests/pytorch.cmake), the dumps from
// $MOE_PARITY_DIR or the build's parity/ folder.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "io/tensor_file.h"
#include "model/config.h"
#include "model/model.h"
#include "train/optim.h"

using namespace moe;

namespace {

constexpr double kTol = 1e-4;

std::vector<std::string> parity_configs() {
    std::vector<std::string> out;
    std::stringstream ss(MOE_PARITY_CONFIGS);
    for (std::string s; std::getline(ss, s, ',');)
        if (!s.empty()) out.push_back(s);
    return out;
}

std::string dump_path(const std::string& name) {
    const char* env = std::getenv("MOE_PARITY_DIR");
    return std::string(env && *env ? env : MOE_PARITY_DIR) + "/" + name + ".bin";
}

// max|a - b| / max(max|b|, 1e-6): the error relative to the tensor's scale
struct Diff {
    double rel = 0, max_abs = 0, ref_max = 0;
};

Diff compare(const float* ours, const float* ref, int64_t n) {
    Diff d;
    for (int64_t i = 0; i < n; ++i) {
        d.max_abs = std::max(d.max_abs, std::abs((double)ours[i] - (double)ref[i]));
        d.ref_max = std::max(d.ref_max, std::abs((double)ref[i]));
    }
    // a NaN anywhere must fail: std::max drops NaNs, so check explicitly
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(ours[i])) d.max_abs = INFINITY;
    d.rel = d.max_abs / std::max(d.ref_max, 1e-6);
    return d;
}

double rel_scalar(double ours, double ref) {
    if (!std::isfinite(ours)) return INFINITY;
    return std::abs(ours - ref) / std::max(std::abs(ref), 1e-6);
}

struct Reference {
    TensorFile tf;
    Config cfg;
    int64_t B = 0, T = 0;
    nlohmann::json hp;
};

Reference load_reference(const std::string& name) {
    const std::string path = dump_path(name);
    if (!std::filesystem::exists(path))
        fail("parity dump '", path, "' is missing: run `ctest -R torch_parity` in the build directory ",
             "(its fixture writes it), or /usr/bin/python3 tests/ref/make_parity.py ",
             "tests/ref/configs/", name, ".json --out ", path);
    Reference r{TensorFile::read(path), {}, 0, 0, {}};
    r.cfg = config_from_json(r.tf.meta.at("config"), path + " (meta.config)");
    r.B = r.tf.meta.at("batch").get<int64_t>();
    r.T = r.tf.meta.at("ctx").get<int64_t>();
    r.hp = r.tf.meta.at("hparams");
    return r;
}

// Copies every weight of the dump into the model, checking that the two name the same tensors
// with the same shapes (in both directions).
void load_weights(Model& model, const Reference& ref) {
    std::fill(model.params(), model.params() + model.n_params(), 0.f);
    int64_t n_grads = 0;
    for (const auto& t : ref.tf.tensors())
        if (t.name.rfind("grad.", 0) == 0) ++n_grads;
    ASSERT_EQ(n_grads, (int64_t)model.table().params().size())
        << "the dump and the engine disagree on the number of parameters";
    for (const ParamInfo& p : model.table().params()) {
        const TensorRecord* t = ref.tf.find(p.name);
        ASSERT_NE(t, nullptr) << "the dump has no weight '" << p.name << "'";
        ASSERT_EQ(t->dtype, "f32") << p.name;
        ASSERT_EQ(t->shape, p.shape) << "shape of '" << p.name << "'";
        ASSERT_NE(ref.tf.find("grad." + p.name), nullptr) << "the dump has no grad." << p.name;
        std::copy(t->f32(), t->f32() + p.numel, model.params() + p.offset);
    }
}

std::string fmt(const char* f, double a, double b = 0, double c = 0) {
    char buf[160];
    std::snprintf(buf, sizeof buf, f, a, b, c);
    return buf;
}

class TorchParity : public ::testing::TestWithParam<std::string> {};

// logits, loss, every gradient at step 0, at 1 and at 2 threads (the parallel splits differ)
TEST_P(TorchParity, StepZeroLogitsLossGradients) {
    const Reference ref = load_reference(GetParam());
    const auto& tokens = ref.tf.get("tokens");
    const auto& targets = ref.tf.get("targets");
    ASSERT_EQ(tokens.numel(), ref.B * ref.T);
    const int64_t N = ref.B * ref.T, V = ref.cfg.model.vocab_size;

    for (int threads : {1, 2}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        set_num_threads(threads);
        Model model(ref.cfg.model);
        load_weights(model, ref);
        if (HasFatalFailure()) return;
        model.zero_grad();
        const float loss = model.forward(tokens.i32(), targets.i32(), ref.B, ref.T);
        model.backward();

        std::printf("[%s, %d threads]  tensor: max|ours - torch| / max|torch|\n", GetParam().c_str(), threads);
        struct Row { std::string name; Diff d; };
        std::vector<Row> rows;
        rows.push_back({"logits", compare(model.logits(), ref.tf.get("logits").f32(), N * V)});
        rows.push_back({"loss", compare(&loss, ref.tf.get("loss").f32(), 1)});
        for (const ParamInfo& p : model.table().params())
            rows.push_back({"grad." + p.name,
                            compare(model.grads() + p.offset, ref.tf.get("grad." + p.name).f32(), p.numel)});
        const Row* worst = &rows[0];
        for (const Row& r : rows) {
            if (!(r.d.rel <= worst->d.rel)) worst = &r;
            std::printf("  %-28s %s%s\n", r.name.c_str(),
                        fmt("rel %.3e  (abs %.3e, scale %.3e)", r.d.rel, r.d.max_abs, r.d.ref_max).c_str(),
                        r.d.rel <= kTol ? "" : "   <-- FAIL");
        }
        std::printf("  worst: %s rel %.3e (tolerance %.0e)\n", worst->name.c_str(), worst->d.rel, kTol);
        for (const Row& r : rows)
            EXPECT_LE(r.d.rel, kTol) << r.name << " differs from PyTorch (max abs " << r.d.max_abs
                                     << ", scale " << r.d.ref_max << ")";

        // the routing itself: tokens per expert of every MoE layer
        const auto load = model.expert_load();
        for (int64_t l = 0; l < ref.cfg.model.n_layer; ++l) {
            const TensorRecord* t = ref.tf.find("expert_load.blk." + std::to_string(l));
            ASSERT_EQ(t != nullptr, (bool)ref.cfg.model.layer_moe[l]) << "layer " << l;
            if (!t) continue;
            std::vector<int64_t> want(t->i32(), t->i32() + t->numel());
            EXPECT_EQ(load[l], want) << "tokens per expert differ in layer " << l;
        }
    }
}

// `steps` AdamW steps on the same batch with global-norm clipping and the warm-up + cosine
// schedule: every loss (and the gradient norm before clipping) as PyTorch's.
TEST_P(TorchParity, AdamWLossTrajectory) {
    const Reference ref = load_reference(GetParam());
    const auto& tokens = ref.tf.get("tokens");
    const auto& targets = ref.tf.get("targets");
    const auto& want_loss = ref.tf.get("loss_trajectory");
    const auto& want_norm = ref.tf.get("grad_norm_trajectory");
    const int64_t steps = ref.hp.at("steps").get<int64_t>();
    ASSERT_EQ(want_loss.numel(), steps);
    ASSERT_GE(steps, 1);

    set_num_threads(2);
    Model model(ref.cfg.model);
    load_weights(model, ref);
    if (HasFatalFailure()) return;
    AdamW adam(model.n_params());
    AdamWParams hp;
    hp.beta1 = ref.hp.at("beta1").get<double>();
    hp.beta2 = ref.hp.at("beta2").get<double>();
    hp.eps = ref.hp.at("eps").get<double>();
    hp.weight_decay = ref.hp.at("weight_decay").get<double>();
    const double clip = ref.hp.at("grad_clip").get<double>();

    std::printf("[%s] step: loss ours / torch (rel), grad norm ours / torch (rel)\n", GetParam().c_str());
    double worst = 0;
    for (int64_t step = 0; step < steps; ++step) {
        model.zero_grad();
        const double loss = model.forward(tokens.i32(), targets.i32(), ref.B, ref.T);
        model.backward();
        const double gnorm = clip_grad_norm(model.grads(), model.n_params(), clip);
        hp.lr = lr_at(step, steps, ref.hp.at("warmup_steps").get<int64_t>(), ref.hp.at("lr").get<double>(),
                      ref.hp.at("min_lr").get<double>());
        adam.step(model.params(), model.grads(), model.table(), hp, step + 1);

        const double rl = rel_scalar(loss, want_loss.f32()[step]);
        const double rn = rel_scalar(gnorm, want_norm.f32()[step]);
        worst = std::max(worst, rl);
        std::printf("  %2lld  lr %.3e  loss %.6f / %.6f (%.2e)  norm %.5f / %.5f (%.2e)\n", (long long)step,
                    hp.lr, loss, (double)want_loss.f32()[step], rl, gnorm, (double)want_norm.f32()[step], rn);
        EXPECT_LE(rl, kTol) << "loss at step " << step << ": ours " << loss << ", torch " << want_loss.f32()[step];
        if (clip > 0) {
            EXPECT_LE(rn, kTol) << "gradient norm at step " << step << ": ours " << gnorm << ", torch "
                                << want_norm.f32()[step];
        }
    }
    std::printf("  worst loss rel error %.3e (tolerance %.0e)\n", worst, kTol);
}

INSTANTIATE_TEST_SUITE_P(Configs, TorchParity, ::testing::ValuesIn(parity_configs()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                             std::string s = info.param;
                             std::replace(s.begin(), s.end(), '-', '_');
                             return s;
                         });

}  // namespace
