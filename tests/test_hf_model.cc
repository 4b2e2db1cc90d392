// Hugging Face models against the real transformers: tiny random models of every family, written
// by transformers 5.23.0 (scripts/gen_hf_models.py, tests/data/hf/), loaded by moe; the logits of
// a plain forward over 96 tokens within 1e-4 of transformers' (relative to the row's largest), the
// cached prefill + decode path the same, and the greedy 32-token continuation token for token.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/hf_model.h"
#include "io/safetensors.h"

using namespace moe;

namespace {

const std::string kDir = std::string(MOE_TEST_DIR) + "/data/hf/";

struct Reference {
    std::vector<int32_t> prompt, tokens;  // (64), (96) = prompt + greedy continuation
    std::vector<float> logits;            // (96, V)
};

// The sharded and fused-layout copies of mixtral hold its weights: its reference is theirs.
Reference read_reference(std::string name) {
    if (!std::filesystem::exists(kDir + name + "/reference.safetensors")) name = "mixtral";
    const SafetensorsSource src = SafetensorsSource::open(kDir + name + "/reference.safetensors");
    Reference r;
    auto ids = [&](const char* k) {
        const TensorView& t = src.get(k);
        EXPECT_EQ(t.dtype, DType::i64);
        std::vector<int32_t> out(t.numel());
        for (int64_t i = 0; i < t.numel(); ++i) out[i] = (int32_t) static_cast<const int64_t*>(t.data)[i];
        return out;
    };
    r.prompt = ids("prompt");
    r.tokens = ids("tokens");
    const TensorView& l = src.get("logits");
    r.logits.assign(l.f32(), l.f32() + l.numel());
    return r;
}

// largest |a - b| of a row over the row's largest |b|, over all rows
double max_rel_row_error(const float* a, const float* b, int64_t rows, int64_t V) {
    double worst = 0;
    for (int64_t r = 0; r < rows; ++r) {
        double d = 0, m = 0;
        for (int64_t j = 0; j < V; ++j) {
            d = std::max(d, (double)std::fabs(a[r * V + j] - b[r * V + j]));
            m = std::max(m, (double)std::fabs(b[r * V + j]));
        }
        worst = std::max(worst, d / std::max(m, 1e-30));
    }
    return worst;
}

class HfModels : public ::testing::TestWithParam<std::string> {};

TEST_P(HfModels, LogitsAndGreedyMatchTransformers) {
    const std::string name = GetParam();
    const Reference ref = read_reference(name);
    const int64_t T = (int64_t)ref.tokens.size(), P = (int64_t)ref.prompt.size();
    for (const char* dtype : {"fp32", ""}) {  // fp32, and the type the file stores (bf16 in place)
        Checkpoint ck = load_model(kDir + name, dtype);
        Model& m = *ck.model;
        const int64_t V = m.config().vocab_size;
        ASSERT_EQ((int64_t)ref.logits.size(), T * V);
        const std::string what = name + (dtype[0] ? " fp32" : " as stored");
        if (!m.typed()) {  // a plain forward over all 96 tokens
            m.forward(ref.tokens.data(), nullptr, 1, T);
            const double err = max_rel_row_error(m.logits(), ref.logits.data(), T, V);
            std::printf("%-16s plain forward: max relative row error %.2e\n", what.c_str(), err);
            EXPECT_LE(err, 1e-4) << what;
        }
        // cached: prefill of the prompt, then greedy decoding of 32 tokens
        auto cache = m.make_cache(1);
        std::vector<int32_t> seq(P, 0), pos(P);
        for (int64_t i = 0; i < P; ++i) pos[i] = (int32_t)i;
        m.forward_cached(ref.prompt.data(), seq.data(), pos.data(), P, cache);
        const double err = max_rel_row_error(m.logits(), ref.logits.data(), P, V);
        std::printf("%-16s cached prefill: max relative row error %.2e\n", what.c_str(), err);
        EXPECT_LE(err, 1e-4) << what;
        std::vector<int32_t> got(ref.prompt);
        int32_t next = (int32_t)(std::max_element(m.logits() + (P - 1) * V, m.logits() + P * V) - (m.logits() + (P - 1) * V));
        for (int64_t t = P; t < T; ++t) {
            got.push_back(next);
            const int32_t s0 = 0, p = (int32_t)t;
            m.forward_cached(&got.back(), &s0, &p, 1, cache, true);
            next = (int32_t)(std::max_element(m.logits(), m.logits() + V) - m.logits());
        }
        EXPECT_EQ(got, ref.tokens) << what << ": greedy continuation differs from transformers'";
    }
}

INSTANTIATE_TEST_SUITE_P(Families, HfModels,
                         ::testing::Values("mixtral", "mixtral_sharded", "mixtral_fused", "mixtral_bf16", "qwen2_moe",
                                           "qwen2_moe_norm", "qwen3_moe", "olmoe", "llama", "llama_tied", "mistral",
                                           "qwen2", "qwen3"),
                         [](const auto& info) { return info.param; });

}  // namespace

// A BF16 checkpoint runs in bf16 by default with every matrix viewed in the mapping: the plain
// ones, and the experts, which live in one tensor each (per-expert layout) or as halves of a fused
// gate_up tensor. The fused copy made here from mixtral_bf16 computes the same bits.
TEST(HfModel, Bf16MatricesAreUsedInPlace) {
    Checkpoint ck = load_model(kDir + "mixtral_bf16");
    ASSERT_TRUE(ck.model->typed());
    EXPECT_EQ(ck.model->weight_type(), kernels::WType::bf16);
    int matrices = 0, experts = 0;
    for (const auto& p : ck.model->table().params()) {
        if (ck.model->param_f32(p)) continue;  // norms, routers, the embedding: fp32
        ++matrices;
        experts += p.expert;
        EXPECT_TRUE(ck.model->param_is_view(p)) << p.name;
    }
    EXPECT_GT(matrices, 0);
    EXPECT_GT(experts, 0);

    // the fused layout (transformers 5 in memory): mlp.experts.gate_up_proj (E, 2F, C) = [w1; w3] per
    // expert, mlp.experts.down_proj (E, C, F), the router as mlp.gate.weight
    const std::string out = ::testing::TempDir() + "/mixtral_bf16_fused";
    std::filesystem::create_directories(out);
    std::filesystem::copy_file(kDir + "mixtral_bf16/config.json", out + "/config.json",
                               std::filesystem::copy_options::overwrite_existing);
    const SafetensorsSource src = SafetensorsSource::open(kDir + "mixtral_bf16");
    const HfConfig hf = read_hf_config(kDir + "mixtral_bf16");
    const int64_t E = hf.num_experts, F = hf.expert_intermediate_size, C = hf.hidden_size;
    std::vector<TensorView> tensors;
    std::vector<std::vector<uint16_t>> owned;
    for (const TensorView& tv : src.tensors()) {
        const std::string& name = tv.name;
        const size_t at = name.find("block_sparse_moe.");
        if (at == std::string::npos) {
            tensors.push_back(src.get(name));
            continue;
        }
        const std::string layer = name.substr(0, at);
        if (name.find(".experts.0.w1.") == std::string::npos) {
            if (name.find(".gate.weight") != std::string::npos) {
                TensorView t = src.get(name);
                t.name = layer + "mlp.gate.weight";
                tensors.push_back(t);
            }
            continue;
        }
        std::vector<uint16_t> gate_up((size_t)(E * 2 * F * C)), down((size_t)(E * C * F));
        for (int64_t e = 0; e < E; ++e) {
            const std::string x = layer + "block_sparse_moe.experts." + std::to_string(e) + ".";
            std::memcpy(&gate_up[(size_t)(e * 2 * F * C)], src.get(x + "w1.weight").data, (size_t)(F * C * 2));
            std::memcpy(&gate_up[(size_t)((e * 2 + 1) * F * C)], src.get(x + "w3.weight").data, (size_t)(F * C * 2));
            std::memcpy(&down[(size_t)(e * C * F)], src.get(x + "w2.weight").data, (size_t)(C * F * 2));
        }
        owned.push_back(std::move(gate_up));
        tensors.push_back({layer + "mlp.experts.gate_up_proj", DType::bf16, {E, 2 * F, C}, owned.back().data(),
                           owned.back().size() * 2});
        owned.push_back(std::move(down));
        tensors.push_back({layer + "mlp.experts.down_proj", DType::bf16, {E, C, F}, owned.back().data(),
                           owned.back().size() * 2});
    }
    write_safetensors(out + "/model.safetensors", tensors);
    Checkpoint fused = load_model(out);
    for (const auto& p : fused.model->table().params())
        if (!fused.model->param_f32(p)) EXPECT_TRUE(fused.model->param_is_view(p)) << p.name;
    const Reference ref = read_reference("mixtral_bf16");
    const int64_t V = ck.config.model.vocab_size, N = (int64_t)ref.tokens.size();
    std::vector<int32_t> seq(N, 0), pos(N);
    for (int64_t i = 0; i < N; ++i) pos[i] = (int32_t)i;
    auto c1 = ck.model->make_cache(1);
    ck.model->forward_cached(ref.tokens.data(), seq.data(), pos.data(), N, c1);
    const std::vector<float> a(ck.model->logits(), ck.model->logits() + N * V);
    auto c2 = fused.model->make_cache(1);
    fused.model->forward_cached(ref.tokens.data(), seq.data(), pos.data(), N, c2);
    EXPECT_EQ(0, std::memcmp(a.data(), fused.model->logits(), (size_t)(N * V) * sizeof(float)));
}

TEST(HfModel, BadPathsAreClearErrors) {
    try {
        load_model("/nonexistent/model");
        ADD_FAILURE();
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent/model"), std::string::npos) << e.what();
    }
    try {
        load_model(std::string(MOE_TEST_DIR) + "/data");
        ADD_FAILURE();
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("neither a moe checkpoint"), std::string::npos) << e.what();
    }
}
