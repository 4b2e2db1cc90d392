// Whole-model parity with the PyTorch reference (tests/ref/model.py): for each tiny config,
// tests/ref/make_parity.py (a CTest fixture, tests/pytorch.cmake) dumps the weights, a batch, the
// logits, the loss, every parameter gradient at step 0 and a 10-step AdamW loss trajectory. This
// test loads the same weights into moe::Model and requires, in fp32:
//   logits, loss, every gradient:  max|ours - torch| / max(max|torch|, 1e-6) <= 1e-4
//   each loss (and pre-clip gradient norm) of the trajectory: relative error <= 1e-4
// With a "router" section (noisy gating, capacity with drop / reroute, Switch and z losses, the
// aux-loss-free bias, top-K on probabilities) the forwards are training forwards, as the trainer's:
// Model::set_mode(true, noise_seed, step, 0) with the seed the reference drew its noise with, and
// also: the auxiliary losses (Switch, z) each within 1e-4; the noise draw eps bit for bit; per
// layer the slots per expert and the rerouted / dropped counts exactly, at step 0 and at every
// step of the trajectory (a binding capacity must reroute / drop some at step 0); the logits of
// an evaluation forward (no noise, the eval capacity); the trajectory's total loss (LM + Switch +
// z), with update_balance_bias() after each optimizer step, and the final balancing bias exactly.
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
    uint64_t noise_seed = 0;  // the key of the router noise: set_mode(true, noise_seed, step, 0)
};

Reference load_reference(const std::string& name) {
    const std::string path = dump_path(name);
    if (!std::filesystem::exists(path))
        fail("parity dump '", path, "' is missing: run `ctest -R torch_parity` in the build directory ",
             "(its fixture writes it), or /usr/bin/python3 tests/ref/make_parity.py ",
             "tests/ref/configs/", name, ".json --out ", path);
    Reference r{TensorFile::read(path), {}, 0, 0, {}, 0};
    r.cfg = config_from_json(r.tf.meta.at("config"), path + " (meta.config)");
    r.B = r.tf.meta.at("batch").get<int64_t>();
    r.T = r.tf.meta.at("ctx").get<int64_t>();
    r.hp = r.tf.meta.at("hparams");
    if (!r.tf.meta.contains("noise_seed"))
        fail("parity dump '", path, "' has no meta.noise_seed: it predates the router options; ",
             "run `ctest -R torch_parity` again (its fixture rewrites it)");
    r.noise_seed = r.tf.meta.at("noise_seed").get<uint64_t>();
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
        const TensorView* t = ref.tf.find(p.name);
        ASSERT_NE(t, nullptr) << "the dump has no weight '" << p.name << "'";
        ASSERT_EQ(t->dtype, DType::f32) << p.name;
        ASSERT_EQ(t->shape, p.shape) << "shape of '" << p.name << "'";
        ASSERT_NE(ref.tf.find("grad." + p.name), nullptr) << "the dump has no grad." << p.name;
        std::copy(t->f32(), t->f32() + p.numel, model.params() + p.offset);
    }
}

// The i32 tensor `name` of the dump as int64 values.
std::vector<int64_t> ints(const Reference& ref, const std::string& name) {
    const TensorView& t = ref.tf.get(name);
    if (t.dtype != DType::i32) fail("dump tensor '", name, "' is ", t.dtype, ", not i32");
    return std::vector<int64_t>(t.i32(), t.i32() + t.numel());
}

std::string fmt(const char* f, double a, double b = 0, double c = 0) {
    char buf[160];
    std::snprintf(buf, sizeof buf, f, a, b, c);
    return buf;
}

class TorchParity : public ::testing::TestWithParam<std::string> {};

// logits, loss, every gradient at step 0, at 1 and at 2 threads (the parallel splits differ);
// the routing (loads, rerouted / dropped, noise) and the evaluation-mode logits
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
        model.set_mode(true, ref.noise_seed, 0, 0);  // a training forward, as the trainer's
        const float loss = model.forward(tokens.i32(), targets.i32(), ref.B, ref.T);
        const float bal = (float)model.aux_balance_loss(), zl = (float)model.aux_z_loss();
        model.backward();

        std::printf("[%s, %d threads]  tensor: max|ours - torch| / max|torch|\n", GetParam().c_str(), threads);
        struct Row { std::string name; Diff d; };
        std::vector<Row> rows;
        rows.push_back({"logits", compare(model.logits(), ref.tf.get("logits").f32(), N * V)});
        rows.push_back({"loss", compare(&loss, ref.tf.get("loss").f32(), 1)});
        // the auxiliary losses are 0 (exactly, on both sides) where they are off
        rows.push_back({"balance_loss", compare(&bal, ref.tf.get("balance_loss").f32(), 1)});
        rows.push_back({"z_loss", compare(&zl, ref.tf.get("z_loss").f32(), 1)});
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

        // the routing itself: slots per expert (after capacity) of every MoE layer, the rerouted
        // and dropped slots, and the noise draw, which must be the reference's bit for bit
        const auto load = model.expert_load();
        const auto routing = model.routing();
        const RouterConfig& rc = ref.cfg.model.router;
        int64_t rerouted = 0, dropped = 0;
        for (int64_t l = 0; l < ref.cfg.model.n_layer; ++l) {
            const std::string b = ".blk." + std::to_string(l);
            const TensorView* t = ref.tf.find("expert_load" + b);
            ASSERT_EQ(t != nullptr, (bool)ref.cfg.model.layer_moe[l]) << "layer " << l;
            if (!t) continue;
            const std::vector<int64_t> want = ints(ref, "expert_load" + b);
            EXPECT_EQ(load[l], want) << "tokens per expert differ in layer " << l;
            EXPECT_EQ(routing[l].load, want) << "Model::routing() loads differ in layer " << l;
            const std::vector<int64_t> st = ints(ref, "route_stats" + b);
            ASSERT_EQ(st.size(), 2u);
            EXPECT_EQ(routing[l].rerouted, st[0]) << "rerouted slots differ in layer " << l;
            EXPECT_EQ(routing[l].dropped, st[1]) << "dropped slots differ in layer " << l;
            rerouted += routing[l].rerouted;
            dropped += routing[l].dropped;
            const TensorView* eps = ref.tf.find("noise_eps" + b);
            ASSERT_EQ(eps != nullptr, rc.noisy_gating) << "noise_eps" << b;
            if (eps) {
                const layers::FfnCache* c = model.ffn_cache(l);
                ASSERT_TRUE(c && c->noisy) << "layer " << l << ": no noise in a training forward";
                const int64_t E = ref.cfg.model.n_expert;
                ASSERT_EQ(eps->numel(), N * E);
                int64_t differ = 0;
                for (int64_t i = 0; i < N * E; ++i) differ += c->eps[i] != eps->f32()[i];
                EXPECT_EQ(differ, 0) << "layer " << l << ": " << differ << " of " << N * E
                                     << " noise values differ from the reference's moe::Rng port";
            }
        }
        std::printf("  routing at step 0: %lld rerouted, %lld dropped slots (all layers)\n",
                    (long long)rerouted, (long long)dropped);
        // a configured capacity must bind, or the test would not exercise it
        if (rc.capacity_factor > 0 && rc.overflow != OverflowPolicy::none) {
            EXPECT_GT(dropped, 0) << "the capacity drops no slot at step 0";
            if (rc.overflow == OverflowPolicy::reroute) {
                EXPECT_GT(rerouted, 0) << "no slot rerouted at step 0";
            }
        }

        // evaluation mode, same weights: no noise (unless noise_at_eval), the eval capacity factor
        model.set_mode(false);
        model.forward(tokens.i32(), targets.i32(), ref.B, ref.T);
        const Diff de = compare(model.logits(), ref.tf.get("eval_logits").f32(), N * V);
        std::printf("  %-28s %s%s\n", "eval_logits",
                    fmt("rel %.3e  (abs %.3e, scale %.3e)", de.rel, de.max_abs, de.ref_max).c_str(),
                    de.rel <= kTol ? "" : "   <-- FAIL");
        EXPECT_LE(de.rel, kTol) << "evaluation-mode logits differ from PyTorch";
        const auto eval_routing = model.routing();
        int64_t eval_rerouted = 0, eval_dropped = 0;
        for (int64_t l = 0; l < ref.cfg.model.n_layer; ++l) {
            if (!ref.cfg.model.layer_moe[l]) continue;
            const std::vector<int64_t> st = ints(ref, "eval_route_stats.blk." + std::to_string(l));
            ASSERT_EQ(st.size(), 2u);
            EXPECT_EQ(eval_routing[l].rerouted, st[0]) << "evaluation: rerouted slots differ in layer " << l;
            EXPECT_EQ(eval_routing[l].dropped, st[1]) << "evaluation: dropped slots differ in layer " << l;
            eval_rerouted += eval_routing[l].rerouted;
            eval_dropped += eval_routing[l].dropped;
        }
        std::printf("  routing in evaluation mode: %lld rerouted, %lld dropped slots\n",
                    (long long)eval_rerouted, (long long)eval_dropped);
    }
}

// `steps` AdamW steps on the same batch with global-norm clipping and the warm-up + cosine
// schedule, as the trainer takes them (training forwards keyed by the step, loss = LM + Switch +
// z, update_balance_bias() after the optimizer step): every total loss (and the gradient norm
// before clipping) as PyTorch's, the routing of every step exactly, the final balancing bias.
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

    const ModelConfig& mc = ref.cfg.model;
    std::printf("[%s] step: loss ours / torch (rel), grad norm ours / torch (rel)\n", GetParam().c_str());
    double worst = 0;
    for (int64_t step = 0; step < steps; ++step) {
        model.zero_grad();
        model.set_mode(true, ref.noise_seed, step, 0);
        const double lm = model.forward(tokens.i32(), targets.i32(), ref.B, ref.T);
        const double loss = lm + model.aux_balance_loss() + model.aux_z_loss();  // as the trainer's
        model.backward();
        // the routing of this step's forward: slots per expert, rerouted / dropped
        const auto routing = model.routing();
        for (int64_t l = 0; l < mc.n_layer; ++l) {
            if (!mc.layer_moe[l]) continue;
            const std::string b = ".blk." + std::to_string(l);
            const std::vector<int64_t> load = ints(ref, "expert_load_trajectory" + b);
            const std::vector<int64_t> st = ints(ref, "route_stats_trajectory" + b);
            ASSERT_EQ((int64_t)load.size(), steps * mc.n_expert);
            ASSERT_EQ((int64_t)st.size(), steps * 2);
            EXPECT_EQ(routing[l].load, std::vector<int64_t>(load.begin() + step * mc.n_expert,
                                                            load.begin() + (step + 1) * mc.n_expert))
                << "slots per expert differ in layer " << l << " at step " << step;
            EXPECT_EQ(routing[l].rerouted, st[2 * step]) << "rerouted, layer " << l << ", step " << step;
            EXPECT_EQ(routing[l].dropped, st[2 * step + 1]) << "dropped, layer " << l << ", step " << step;
        }
        const double gnorm = clip_grad_norm(model.grads(), model.n_params(), clip);
        hp.lr = lr_at(step, steps, ref.hp.at("warmup_steps").get<int64_t>(), ref.hp.at("lr").get<double>(),
                      ref.hp.at("min_lr").get<double>());
        adam.step(model.params(), model.grads(), model.table(), hp, step + 1);
        model.update_balance_bias();  // aux-loss-free balancing (no-op unless configured)

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

    // the balancing bias after the last update: +-bias_rate steps from the same loads, so equal
    for (int64_t l = 0; l < mc.n_layer; ++l) {
        const TensorView* t = ref.tf.find("balance_bias_final.blk." + std::to_string(l));
        ASSERT_EQ(t != nullptr, mc.layer_moe[l] && mc.router.bias_balance) << "layer " << l;
        if (!t) continue;
        const float* ours = model.weights().layers[l].ffn_gate_bias;
        ASSERT_NE(ours, nullptr);
        ASSERT_EQ(t->numel(), mc.n_expert);
        std::printf("  layer %lld bias:", (long long)l);
        for (int64_t e = 0; e < mc.n_expert; ++e) std::printf(" %+.3f", ours[e]);
        std::printf("\n");
        for (int64_t e = 0; e < mc.n_expert; ++e)
            EXPECT_EQ(ours[e], t->f32()[e]) << "balancing bias of expert " << e << " in layer " << l;
    }
}

INSTANTIATE_TEST_SUITE_P(Configs, TorchParity, ::testing::ValuesIn(parity_configs()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                             std::string s = info.param;
                             std::replace(s.begin(), s.end(), '-', '_');
                             return s;
                         });

}  // namespace
