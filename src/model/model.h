#pragma once
// The decoder-only Transformer, dense or MoE per layer. Owns four arenas: parameters, gradients,
// activations (sized for the largest (B, T) seen) and backward scratch.
#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "layers/attention.h"
#include "layers/ffn.h"
#include "model/config.h"
#include "model/params.h"

namespace moe {

class Model {
public:
    explicit Model(const ModelConfig& cfg);
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    const ModelConfig& config() const { return cfg_; }
    const ParamTable& table() const { return table_; }
    int64_t n_params() const { return table_.total(); }  // flat buffer length (with padding)
    float* params() { return reinterpret_cast<float*>(params_.data()); }
    // The gradient buffer (ParamTable layout), allocated and zeroed on first use: inference never
    // asks for it, so a model that only runs forward_cached holds no gradients.
    float* grads() {
        ensure_grads();
        return reinterpret_cast<float*>(grads_.data());
    }
    const Weights& weights() const { return w_; }

    // Inference with a different number of experts per token (1 <= K <= E); the parameters do
    // not depend on K. Throws moe::error naming the value when it is out of range.
    void set_experts_per_token(int64_t K);

    // Random init from the seed: N(0, 0.02) matrices, N(0, 0.02/sqrt(2L)) for the projections
    // into the residual stream, ones for norms.
    void init(uint64_t seed);

    // Training or evaluation, and the key of the router noise, for the following forwards.
    // Default: evaluation (no router noise, the eval capacity factor).
    void set_mode(bool train, uint64_t seed = 0, int64_t step = 0, int64_t micro = 0) {
        mode_ = {train, seed, step, 0, micro};
    }

    // tokens (B, T). With targets (B, T): returns the mean cross-entropy (the LM loss) and keeps
    // what backward needs. Without: returns 0; logits() holds (B*T, V).
    // The auxiliary router losses of this forward are in aux_balance_loss() / aux_z_loss().
    float forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T);
    // Accumulates d(scale * (LM loss + auxiliary losses))/dparams into grads(). Call after forward
    // with targets.
    void backward(float scale = 1.f);
    double aux_balance_loss() const;  // sum over MoE layers of the Switch loss (coeff applied)
    double aux_z_loss() const;        // sum over MoE layers of the z-loss (coeff applied)

    // Aux-loss-free balancing: loads of the training forwards since the last call (summed over
    // micro-batches) nudge each layer's selection bias; then the sums restart.
    void update_balance_bias();
    // Training's fused optimizer step for expert weights: while set, backward() hands the routed
    // experts' weight gradients to `sink` instead of writing them into grads() (null: off).
    void set_expert_grad_sink(const ops::ExpertGradSink* sink) { expert_sink_ = sink; }
    void zero_grad();  // both threads write (a serial 36 MB memset was 2% of a makeMoE step)

    // Inference with a KV cache (no targets, evaluation routing): N rows, row i is token tokens[i]
    // at position pos[i] of sequence slot seq[i] of `cache`. Rows of one sequence must come in
    // position order, each at most one past the last (a position below the cache length rewrites
    // the sequence from there), so every earlier position is in the cache or earlier in the call
    // (prefill = the rows of a prompt in one call; decode = one row per sequence). Logits of all N
    // rows (last_only: only the last row of each sequence in this call is computed, the others are
    // left as they were) land in logits(): (N, V). Raises moe::error on ids or positions out of range.
    // Calls with less than kSerialFlops of matmul work run on the calling thread alone (SerialScope).
    static constexpr double kSerialFlops = 64e6;
    void forward_cached(const int32_t* tokens, const int32_t* seq, const int32_t* pos, int64_t N,
                        layers::KvCache& cache, bool last_only = false);
    layers::KvCache make_cache(int64_t slots) const;
    // Storage type of the matmul weights forward_cached reads (attention, experts / dense FFN,
    // output head; the router and embeddings stay fp32). bf16 / int8 make copies of the current
    // parameters: call again after the parameters change. Default fp32 (views, no copy).
    void set_weight_type(kernels::WType t);
    kernels::WType weight_type() const { return wtype_; }
    double weight_bytes_per_token() const;  // bytes of weights one decoded token reads (K experts)

    const float* logits() const { return logits_; }  // (B*T, V) of the last forward
    // Tokens per expert in the last forward, per layer (empty for dense layers): (L, E)
    std::vector<std::vector<int64_t>> expert_load() const;
    // Routing record of layer l from the last forward (MoE layers only; null otherwise):
    // topk_expert (N, K), topk_weight (N, K), logits (N, E), with N = B*T of that forward.
    const layers::FfnCache* ffn_cache(int64_t l) const {
        return (l < (int64_t)ffn_.size() && cfg_.layer_moe[l]) ? &ffn_[l] : nullptr;
    }
    int64_t last_tokens() const { return B_ * T_; }
    // Per-layer routing telemetry of the last forward: loads (E), rerouted/dropped, entropy.
    struct LayerRouting {
        std::vector<int64_t> load;  // (E)
        int64_t rerouted = 0, dropped = 0, slots = 0;  // slots = N*K
        double entropy_sum = 0;     // sum over tokens of the router entropy (nats)
        int64_t tokens = 0;
    };
    std::vector<LayerRouting> routing() const;  // (L); empty load for dense layers
    size_t activation_bytes() const { return acts_.size() + scratch_.size(); }

private:
    void ensure_activations(int64_t B, int64_t T);
    void ensure_grads();

    ModelConfig cfg_;
    ParamTable table_;
    Arena params_, grads_, acts_, scratch_;
    const ops::ExpertGradSink* expert_sink_ = nullptr;
    Weights w_, g_;

    int64_t B_ = 0, T_ = 0, cap_B_ = 0, cap_T_ = 0;
    bool have_targets_ = false;
    layers::RouteContext mode_;
    std::vector<std::vector<int64_t>> step_load_;  // (L, E) training loads since update_balance_bias
    std::vector<float> rope_;  // (T, D/2, 2)
    std::vector<float> rope_full_;     // (n_ctx, D/2, 2) for cached inference
    std::vector<float> infer_scores_;  // (N, H, n_ctx) cached-attention scores
    double matmul_params_ = 0;         // active matmul weights per token (count_flops; follows K)
    std::vector<int32_t> head_rows_;   // rows whose logits forward_cached computes
    std::vector<int64_t> next_pos_;    // (S) next position per sequence while checking a call
    kernels::WType wtype_ = kernels::WType::f32;
    // One FFN's matrices in the weight type: gate, up (rows, C), down (rows_down, F); gate may be
    // null (no SwiGLU). Returns the views forward_cached reads.
    struct FfnStores {
        kernels::QStore gate, up, down;
        layers::QFfn build(kernels::WType t, const float* g, const float* u, const float* d, int64_t rows,
                           int64_t C, int64_t rows_down, int64_t F);
    };
    struct LayerStores {
        kernels::QStore attn_q, attn_k, attn_v, attn_output;
        FfnStores ffn, shexp;  // dense FFN or the experts; the shared expert
    };
    std::vector<LayerStores> qstores_;  // (L)
    std::vector<layers::QLayer> qviews_;  // (L)
    kernels::QStore q_output_;
    const int32_t* tokens_ = nullptr;
    const int32_t* targets_ = nullptr;

    // activations
    std::vector<float*> resid_;  // (L+1) x (N, C) residual stream, resid_[0] = embeddings
    std::vector<float*> resid_mid_;  // (L) x (N, C) after attention
    std::vector<layers::AttentionCache> attn_;
    std::vector<layers::FfnCache> ffn_;
    float* xf_ = nullptr;       // (N, C) final normed
    float* xf_rstd_ = nullptr;  // (N)
    float* logits_ = nullptr;   // (N, V)
    float* probs_ = nullptr;    // (N, V)
    float* losses_ = nullptr;   // (N)

    // backward scratch (shared by all layers)
    float* dresid_ = nullptr;   // (N, C)
    float* dlogits_ = nullptr;  // (N, V)
    float* dxf_ = nullptr;      // (N, C)
    layers::AttentionScratch attn_s_;
    layers::FfnScratch ffn_s_;
};

}  // namespace moe
