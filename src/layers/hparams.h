#pragma once
// The model's hyper-parameters as the layers read them (shape, activation, which layers are MoE,
// the router section). Plain data with no JSON: model/config.h parses and validates it. It lives
// here, below model/, because the layers take it as an argument (a layer must not include model/).
#include <cstdint>
#include <vector>

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
    bool norm_topk = true;             // combine weights: softmax over the K chosen scores (Mixtral);
                                       // false: the full softmax's probabilities of the chosen
                                       // experts (Hugging Face norm_topk_prob = false: Qwen2-MoE, OLMoE)
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
    bool qk_norm_head = false;  // with qk_norm: over each head's D instead, one (D) weight shared by
                                // the heads (Qwen3)
    bool attn_bias_qkv = false; // biases on the q, k, v projections (Qwen2)
    bool attn_bias_o = false;   // a bias on the output projection (Llama's attention_bias)
    int64_t n_head_dim = 0;     // D when set apart from n_embd / n_head (Qwen3); 0 = n_embd / n_head
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

    int64_t head_dim() const { return n_head_dim > 0 ? n_head_dim : n_embd / n_head; }  // D
    bool any_moe() const {
        for (bool b : layer_moe)
            if (b) return true;
        return false;
    }
};

}  // namespace moe
