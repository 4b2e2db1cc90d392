#pragma once
// A Hugging Face config.json (+ generation_config.json) read into plain data. Both the transformers
// 4 form (top-level rope_theta / rope_scaling, torch_dtype) and the transformers 5 form
// (rope_parameters {rope_type, rope_theta, ...}, dtype) are accepted and give the same HfConfig.
// Missing fields take the defaults of transformers 5.23's config class of the family. Unknown fields
// are ignored; a field that would change the arithmetic in a way moe does not implement is an error
// naming it (docs/formats.md lists them).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {

enum class HfFamily { mixtral, qwen2_moe, qwen3_moe, olmoe, llama, mistral, qwen2, qwen3 };

// "mixtral", "qwen2_moe", ...: the config's model_type
const char* hf_family_name(HfFamily f);

// Normalisation of q and k after their projections, before RoPE.
enum class HfQkNorm {
    none,
    per_head,  // qwen3, qwen3_moe: RMSNorm over each head's D values, weights (D)
    full,      // olmoe: RMSNorm over the whole projection, weights (H*D) and (Hkv*D)
};

// generation_config.json; absent fields stay unset.
struct HfGenerationConfig {
    bool present = false;  // the file was read
    std::vector<int64_t> eos_token_ids;
    std::optional<int64_t> bos_token_id, pad_token_id;
    std::optional<bool> do_sample;
    std::optional<double> temperature, top_p, repetition_penalty;
    std::optional<int64_t> top_k, max_new_tokens;
};

struct HfConfig {
    std::string model_type;
    HfFamily family = HfFamily::llama;
    std::string dtype;  // "float32", "bfloat16", ... ("dtype" or "torch_dtype"); "" when absent

    int64_t vocab_size = 0;                       // V
    int64_t hidden_size = 0;                      // C
    int64_t num_hidden_layers = 0;                // L
    int64_t num_attention_heads = 0;              // H
    int64_t num_key_value_heads = 0;              // Hkv (= H when absent)
    int64_t head_dim = 0;                         // D (explicit, or C / H)
    int64_t intermediate_size = 0;                // F of a dense FFN layer
    int64_t expert_intermediate_size = 0;         // F of one routed expert (moe_intermediate_size for
                                                  // qwen*_moe, intermediate_size for mixtral / olmoe)
    int64_t shared_expert_intermediate_size = 0;  // Fs (qwen2_moe); 0 = no shared expert
    int64_t max_position_embeddings = 0;
    double rms_norm_eps = 1e-6;
    bool tie_word_embeddings = false;

    // RoPE. rope_type "default" is plain RoPE with rope_theta; "linear" (rope_factor) and "llama3"
    // (rope_factor, low/high_freq_factor, original_max_position_embeddings) are parsed but their
    // frequency scaling is not implemented yet: a loader must reject what it cannot compute.
    std::string rope_type = "default";
    double rope_theta = 10000.0;
    double rope_factor = 1.0;
    double rope_low_freq_factor = 0, rope_high_freq_factor = 0;
    int64_t rope_original_max_position_embeddings = 0;

    // Attention extras.
    bool qkv_bias = false;     // q, k, v projections have biases (qwen2 always; qwen2_moe qkv_bias; attention_bias)
    bool o_bias = false;       // the output projection has a bias (attention_bias of llama / qwen3* / olmoe)
    HfQkNorm qk_norm = HfQkNorm::none;

    // Mixture of experts (num_experts = 0 for the dense families).
    int64_t num_experts = 0;          // E: num_local_experts / num_experts
    int64_t num_experts_per_tok = 0;  // K
    // true: the K chosen softmax probabilities are renormalised to sum 1 (= softmax over the K
    // chosen logits, moe's rule); false: they are used as they are (sum < 1). Mixtral: always true.
    bool norm_topk_prob = false;
    bool shared_expert_gate = false;  // qwen2_moe: shared expert output x sigmoid(x . w_gate), w (1, C)
    int64_t decoder_sparse_step = 1;
    std::vector<int64_t> mlp_only_layers;
    std::vector<bool> layer_moe;      // (L): true where the layer's FFN is the MoE block
    double router_aux_loss_coef = 0;  // training only

    std::optional<int64_t> bos_token_id, pad_token_id;
    std::vector<int64_t> eos_token_ids;  // eos_token_id: null, one id or a list

    HfGenerationConfig generation;

    bool is_moe() const { return num_experts > 0; }
};

// Parses a config.json object; `where` names it in errors.
HfConfig parse_hf_config(const nlohmann::json& config, const std::string& where);
// The same from text (not JSON -> moe::error naming `where`).
HfConfig parse_hf_config_text(std::string_view text, const std::string& where);
// Reads generation_config.json fields into cfg.generation.
void parse_hf_generation_config(HfConfig& cfg, const nlohmann::json& gen, const std::string& where);
// `path`: a model directory (config.json, and generation_config.json when present) or a config file.
HfConfig read_hf_config(const std::string& path);

}  // namespace moe
