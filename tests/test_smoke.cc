#include <gtest/gtest.h>

#include <filesystem>

#include "model/config.h"
#include "model/params.h"

using namespace moe;

TEST(Params, MixtralCountsExactly) {
    Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/mixtral-8x7b.json");
    ParamCount pc = count_params(c.model);
    EXPECT_EQ(pc.total, 46702792704LL);
    EXPECT_EQ(pc.active, 12879925248LL);
}

// L=1, C=8, H=2 (D=4), V=10 tied, dense SwiGLU F=16, n_ctx 4
static ModelConfig hand_model() {
    ModelConfig m;
    m.n_layer = 1, m.n_embd = 8, m.n_head = 2, m.n_head_kv = 2, m.vocab_size = 10, m.n_ctx = 4;
    m.tie_embeddings = true;
    m.n_ff = 16;
    m.layer_moe = {false};
    return m;
}

// Hand count of hand_model() at T=4.
// matmul weights: head (tied embedding) 80 + q,k,v,o 4*64 + gate,up,down 3*128 = 720;
// forward = 2*720 + attention 4*H*D*(T+1)/2 = 1440 + 80 = 1520; training = 3 * 1520.
TEST(Params, FlopsPerTokenByHand) {
    ModelConfig m = hand_model();
    FlopCount f = count_flops(m, 4);
    EXPECT_DOUBLE_EQ(f.matmul_params, 720);
    EXPECT_DOUBLE_EQ(f.forward, 1520);
    EXPECT_DOUBLE_EQ(f.training, 4560);
    // MoE with E=4, K=2, F=16 per expert: experts count 2/4, plus the router (4 x 8)
    m.layer_moe = {true};
    m.n_expert = 4, m.n_expert_used = 2, m.n_ff_exp = 16;
    f = count_flops(m, 4);
    EXPECT_DOUBLE_EQ(f.matmul_params, 80 + 256 + 3 * 4 * 128 / 2 + 32);
}

// The same hand model: norms 3 x 8 fp32 = 96 B; tied embedding: fp32 table 320 B (+ one row of
// 32 B per token) and the head's copy; attention 4 matrices (8 x 8), FFN gate/up (16 x 8), down (8 x 16).
TEST(Params, WeightBytesByHand) {
    ModelConfig m = hand_model();
    WeightBytes f = count_weight_bytes(m, kernels::WType::f32);
    EXPECT_DOUBLE_EQ(f.total, 96 + 320 + 320 + 4 * 64 * 4 + 3 * 128 * 4);
    EXPECT_DOUBLE_EQ(f.active, 96 + 32 + 320 + 4 * 64 * 4 + 3 * 128 * 4);
    WeightBytes h = count_weight_bytes(m, kernels::WType::bf16);
    EXPECT_DOUBLE_EQ(h.total, 96 + 320 + 160 + 4 * 64 * 2 + 3 * 128 * 2);
    // int8: per matrix rows*in + 4 bytes per row and 32-block (one block: in <= 32)
    WeightBytes q = count_weight_bytes(m, kernels::WType::q8);
    EXPECT_DOUBLE_EQ(q.total, 96 + 320 + (80 + 40) + 4 * (64 + 32) + 2 * (128 + 64) + (128 + 32));
}

// GGUF block types on the hand model: every matrix row (in 8 or 16) is one padded block: q8_0 34
// bytes, q4_k 144; f16 2 bytes a value. Rows: head copy 10, attention 4 x 8, gate/up 2 x 16, down 8.
TEST(Params, WeightBytesGgufTypesByHand) {
    ModelConfig m = hand_model();
    const double rows = 10 + 4 * 8 + 2 * 16 + 8;
    WeightBytes q8 = count_weight_bytes(m, kernels::GType::q8_0);
    EXPECT_DOUBLE_EQ(q8.total, 96 + 320 + rows * 34);
    EXPECT_DOUBLE_EQ(q8.active, 96 + 32 + rows * 34);
    WeightBytes q4k = count_weight_bytes(m, kernels::GType::q4_k);
    EXPECT_DOUBLE_EQ(q4k.total, 96 + 320 + rows * 144);
    WeightBytes f16 = count_weight_bytes(m, kernels::GType::f16);
    WeightBytes bf16 = count_weight_bytes(m, kernels::WType::bf16);
    EXPECT_DOUBLE_EQ(f16.total, bf16.total);
    EXPECT_DOUBLE_EQ(f16.active, bf16.active);
}

TEST(Params, OlmoeCountsExactly) {
    Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/olmoe-1b-7b.json");
    ParamCount pc = count_params(c.model);
    EXPECT_EQ(pc.total, 6919161856LL);
    EXPECT_EQ(pc.active, 1282017280LL);
}

// Every shipped config parses (a misplaced section is an error naming it), and the main job's
// default config trains with the routing fixes on (docs/main-job.md).
TEST(Configs, EveryShippedConfigParses) {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(std::string(MOE_SOURCE_DIR) + "/configs")) {
        if (e.path().extension() != ".json") continue;
        EXPECT_NO_THROW(load_config(e.path().string())) << e.path();
        ++n;
    }
    EXPECT_GE(n, 5);
    const Config d = load_config(std::string(MOE_SOURCE_DIR) + "/configs/default.json");
    EXPECT_GT(d.model.router.balance_loss, 0);
    EXPECT_GT(d.model.router.z_loss, 0);
}
