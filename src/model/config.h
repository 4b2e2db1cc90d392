#pragma once
// Model and training configuration, read from JSON (configs/*.json). Unknown fields are errors.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ops/activation.h"
#include "ops/router_capacity.h"

namespace moe {

// What happens to a (token, slot) choice whose expert is already at capacity (ops/router_capacity.h).
using OverflowPolicy = ops::OverflowPolicy;

// The config's "router" section: how tokens are assigned to experts (issue #3).
struct RouterConfig {
    bool noisy_gating = false;         // H = logits + eps * softplus(x W_noise), eps ~ N(0, 1)
    bool noise_at_eval = false;        // keep the noise at evaluation / inference too
    double capacity_factor = 0;        // training: cap = ceil(cf * N * K / E) per expert; 0 = no limit
    double eval_capacity_factor = 0;   // evaluation / inference; 0 = no limit
    OverflowPolicy overflow = OverflowPolicy::none;  // default reroute when a capacity is set
    double balance_loss = 0;           // Switch load-balancing loss coefficient
    double z_loss = 0;                 // router z-loss coefficient
    bool bias_balance = false;         // auxiliary-loss-free balancing (DeepSeek-V3)
    double bias_rate = 1e-3;           // its per-step bias nudge
    bool topk_on_probs = false;        // select on softmax probabilities (same choice as logits)
    double routed_scale = 1.0;         // combine = routed_scale * sum_k w_k expert_k (DeepSeek's routed_scaling_factor)
};

struct ModelConfig {
    int64_t vocab_size = 0;     // V; 0 = taken from the tokenizer built from the data
    int64_t n_layer = 0;        // L
    int64_t n_embd = 0;         // C
    int64_t n_head = 0;         // H
    int64_t n_head_kv = 0;      // Hkv (grouped-query attention; = H for plain multi-head)
    int64_t n_ctx = 0;          // maximum T
    double rope_theta = 10000.0;
    double norm_eps = 1e-5;
    bool tie_embeddings = true;
    bool qk_norm = false;       // RMSNorm over the whole q (H*D) and k (Hkv*D) projections (OLMoE)
    ops::Activation activation = ops::Activation::swiglu;
    int64_t n_ff = 0;           // F of a dense FFN
    int64_t n_expert = 0;       // E
    int64_t n_expert_used = 0;  // K
    int64_t n_ff_exp = 0;       // F of one expert
    int64_t n_ff_shexp = 0;     // Fs: width of the shared expert every token of an MoE layer goes
                                // through beside its K routed ones (DeepSeekMoE, Qwen2-MoE); 0 = none
    bool shexp_gate = false;    // scale the shared expert by sigmoid(xn . w) per token (Qwen2-MoE)
    std::vector<bool> layer_moe;  // (L) true where the FFN is an MoE layer
    RouterConfig router;

    int64_t head_dim() const { return n_embd / n_head; }  // D
    bool any_moe() const;
};

// model.vocab_size when train.tokenizer is "bpe" and the config gives none: the vocabulary to learn
inline constexpr int64_t kDefaultBpeVocab = 2048;

struct TrainConfig {
    std::string data;            // text file (path relative to the working dir or the source tree)
    std::string tokenizer = "char";  // "char" | "byte" | "bpe"
    double val_fraction = 0.1;   // last fraction of the tokens held out for validation
    int64_t batch_size = 16;     // B per micro-batch
    int64_t block_size = 0;      // T (0 = n_ctx)
    int64_t grad_accum = 1;      // micro-batches per optimizer step
    int64_t steps = 1000;
    double lr = 1e-3;
    double min_lr = 1e-4;
    int64_t warmup_steps = 100;
    double weight_decay = 0.1;
    double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
    double grad_clip = 1.0;      // global norm; 0 = off
    int64_t eval_interval = 100;
    int64_t eval_batches = 20;
    int64_t log_interval = 10;
    int64_t ckpt_interval = 0;   // 0 = only at the end
    uint64_t seed = 1337;
    std::string precision = "fp32";  // GEMM precision: "fp32" | "bf16" (fp32 master weights either way)
};

struct Config {
    std::string path;  // where it was read from ("" when built in code)
    ModelConfig model;
    TrainConfig train;
};

// Parse and validate. `where` names the source in error messages (usually the file path).
Config config_from_json(const nlohmann::json& j, const std::string& where);
Config load_config(const std::string& path);
nlohmann::json config_to_json(const Config& c);
// Validation shared by parse and by code that edits a config (throws moe::error naming the field).
void validate(const ModelConfig& m, const std::string& where);
void validate_router(const RouterConfig& r, const std::string& where);

}  // namespace moe
