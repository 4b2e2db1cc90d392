#pragma once
// The decoder-only Transformer, dense or MoE per layer: its weights (fp32, or typed for inference),
// plus the training state and the inference plan, each made on first use.
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "kernels/gemm.h"
#include "layers/attention.h"
#include "layers/ffn.h"
#include "model/config.h"
#include "model/params.h"

namespace moe {

// Training-only state: the gradient buffer (ParamTable layout) and its views, the training
// activation plan for (B, T) (every layer's activations kept for the backward, (B, H, T, T)
// attention probabilities, (N, V) probabilities) and the backward scratch. A Model creates it on
// its first training call (forward, backward, grads); inference (forward_cached) never does.
struct TrainingState;

// The activation plan of cached inference, sized by the rows of the largest call (N): one set of
// layer buffers reused by every layer, two residual buffers, the scores of each row against the
// context (N, H, n_ctx), logits (N, V); no gradients, no per-layer copies, no probabilities.
struct InferencePlan;

// Expert-parallel inference (docs/distributed.md): the experts of every MoE layer this model holds,
// [first, first + count) of E. count 0: all of them (every other model).
struct ExpertShard {
    int64_t first = 0, count = 0;
};

// An expert-parallel job's split: rank `rank` of `size` holds experts [rank·E/size, (rank+1)·E/size).
struct ExpertSplit {
    int size = 1, rank = 0;
};
// The shard a split gives a model of config m ({0, 0}: all experts, for size 1). moe::error naming
// the values when the model has no MoE layer or size does not divide E.
ExpertShard expert_shard_of(const ModelConfig& m, ExpertSplit split);

class Model {
public:
    // An fp32 model: every parameter in one flat fp32 buffer (ParamTable layout), trainable; its
    // inference weights are views of that buffer unless set_weight_type makes typed copies.
    explicit Model(const ModelConfig& cfg);
    // An inference model whose matmul weights (typed_at_inference) are bf16 or int8 and nothing
    // else: they are filled by init (converted slice by slice) or by a loader (in-place views of
    // a mapped file, or converted), never held in fp32; norms, routers and the embedding stay
    // fp32. Training calls on it throw moe::error. t = f32 is the fp32 model.
    Model(const ModelConfig& cfg, kernels::WType t);
    // The same holding only experts [shard.first, shard.first + shard.count) of every MoE layer
    // (expert-parallel inference): each expert stack (param.expert) is stored, loaded and viewed as
    // its shard.count experts' rows (local_rows), everything else whole. Inference only (training
    // calls and params() are for whole models); forward_cached needs set_cached_expert_runner.
    // moe::error for a shard outside [0, E) or on a model without MoE layers.
    Model(const ModelConfig& cfg, kernels::WType t, ExpertShard shard);
    ~Model();
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    const ModelConfig& config() const { return cfg_; }
    const ParamTable& table() const { return table_; }
    int64_t n_params() const { return table_.total(); }  // flat buffer length (with padding)
    // The flat fp32 buffer of an fp32 model (ParamTable layout). Not for a typed or sharded model.
    float* params();
    // The experts held (count = E unless sharded) and whether only some are.
    ExpertShard expert_shard() const { return shard_; }
    bool sharded() const { return shard_.count != cfg_.n_expert && cfg_.any_moe(); }
    // The rows of parameter p (as a (numel / IN, IN) matrix) this model holds: (first row, rows);
    // all of them but for an expert stack of a sharded model. param_f32, param_store and the views
    // a loader sets hold exactly these rows.
    std::pair<int64_t, int64_t> local_rows(const ParamInfo& p) const;
    // Bytes of the expert stacks' inference weights this model holds (views included).
    double expert_bytes_held() const;
    // True when the matmul weights are stored typed without an fp32 master copy.
    bool typed() const { return typed_; }
    // fp32 data of parameter p: any parameter of an fp32 model, or one that is not
    // typed_at_inference in a typed model; null otherwise.
    float* param_f32(const ParamInfo& p);
    // A typed model's matrix p (typed_at_inference): storage to fill (allocated on first call).
    kernels::QStore& param_store(const ParamInfo& p);
    // A typed model's matrix p as a view of memory someone else owns (a mapped file); `keep`
    // holds that memory alive as long as the model.
    void set_param_view(const ParamInfo& p, const kernels::QMatrix& m, std::shared_ptr<const void> keep);
    // The same for a stack of experts whose matrices live apart (one tensor each in a Hugging Face
    // file): parts[e] is expert e's (rows, IN), all of p's type; the view's rows() reach them.
    void set_param_expert_views(const ParamInfo& p, std::vector<kernels::QMatrix> parts, std::shared_ptr<const void> keep);
    // Whether a typed model's matrix p views memory it does not own (set_param_view).
    bool param_is_view(const ParamInfo& p) const;
    // A typed model's matrix p (typed_at_inference) as forward_cached reads it (bf16 or int8, owned
    // or viewed); an empty QMatrix (out == 0) for an fp32 parameter (param_f32 has those).
    kernels::QMatrix param_typed(const ParamInfo& p) const;
    // The gradient buffer (ParamTable layout), allocated and zeroed on first use: inference never
    // asks for it, so a model that only runs forward_cached holds no gradients.
    float* grads();
    const Weights& weights() const { return w_; }

    // Precision of the model's float GEMMs (training forward/backward, prefill): every call of the
    // model runs under it (kernels::PrecisionScope) and restores the previous one after. fp32 by default.
    void set_precision(kernels::Precision p) { precision_ = p; }
    kernels::Precision precision() const { return precision_; }

    // Inference with a different number of experts per token (1 <= K <= E); the parameters do
    // not depend on K. Throws moe::error naming the value when it is out of range.
    void set_experts_per_token(int64_t K);

    // Random init from the seed: N(0, 0.02) matrices, N(0, 0.02/sqrt(2L)) for the projections
    // into the residual stream, ones for norms. A typed model draws the same values and converts
    // them a slice of rows at a time (the same bits as converting the fp32 model's).
    void init(uint64_t seed);

    // Training or evaluation, and the key of the router noise, for the following forwards.
    // Default: evaluation (no router noise, the eval capacity factor).
    void set_mode(bool train, uint64_t seed = 0, int64_t step = 0, int64_t micro = 0) {
        mode_ = {train, seed, step, 0, micro};
    }

    // tokens (B, T). With targets (B, T): returns the mean cross-entropy (the LM loss) and keeps
    // what backward needs. Without: returns 0; logits() holds (B*T, V).
    // The auxiliary router losses of this forward are in aux_balance_loss() / aux_z_loss().
    // Creates the training state (an fp32 model only).
    float forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T);
    // Accumulates d(scale * (LM loss + auxiliary losses))/dparams into grads(). Call after forward
    // with targets.
    void backward(float scale = 1.f);
    double aux_balance_loss() const;  // sum over MoE layers of the Switch loss (coeff applied)
    double aux_z_loss() const;        // sum over MoE layers of the z-loss (coeff applied)

    // Aux-loss-free balancing: loads of the training forwards since the last call (summed over
    // micro-batches) nudge each layer's selection bias; then the sums restart.
    void update_balance_bias();
    // Data parallel: the loads update_balance_bias() uses, (L, E) summed over every rank's micro-batches
    void set_step_load(std::vector<std::vector<int64_t>> load) { step_load_ = std::move(load); }
    // Training's fused optimizer step for expert weights: while set, backward() hands the routed
    // experts' weight gradients to `sink` instead of writing them into grads() (null: off).
    void set_expert_grad_sink(const ops::ExpertGradSink* sink) { expert_sink_ = sink; }
    // Expert parallelism (train/expert_parallel.h): while set, training-mode forwards and their
    // backward run the routed experts through `r` (the rows go to their experts' ranks), and the
    // routed experts' weight gradients are r's, not written into grads(). Evaluation-mode forwards
    // and forward_cached run every expert here. null: off.
    void set_expert_runner(layers::ExpertRunner* r) { expert_runner_ = r; }
    // Expert-parallel inference (infer/expert_parallel.h): while set, forward_cached hands every MoE
    // layer's routed rows to `r` (ExpertRunner::forward_cached) instead of running the experts
    // here. A sharded model needs it. null: off.
    void set_cached_expert_runner(layers::ExpertRunner* r) { cached_runner_ = r; }
    // The inference views of MoE layer l's expert stacks (this model's shard of them), as
    // forward_cached reads them: what an expert-parallel rank runs its experts with.
    const layers::QFfn& cached_expert_views(int64_t l);
    void zero_grad();  // both threads write (a serial 36 MB memset was 2% of a makeMoE step)

    // Inference with a KV cache (no targets, evaluation routing): N rows, row i is token tokens[i]
    // at position pos[i] of sequence slot seq[i] of `cache`. Rows of one sequence must come in
    // position order, each at most one past the last (a position below the cache length rewrites
    // the sequence from there), so every earlier position is in the cache or earlier in the call
    // (prefill = the rows of a prompt in one call; decode = one row per sequence). Logits of all N
    // rows (last_only: only the last row of each sequence in this call is computed, the others are
    // left as they were) land in logits(): (N, V). Raises moe::error on ids or positions out of range
    // and when the cache's pool has no page left for a row (a sequence that rewrites a page shared
    // with another copies it first).
    // Calls with less than kSerialFlops of matmul work run on the calling thread alone (SerialScope).
    static constexpr double kSerialFlops = 64e6;
    void forward_cached(const int32_t* tokens, const int32_t* seq, const int32_t* pos, int64_t N,
                        layers::KvCache& cache, bool last_only = false);
    // A paged KV cache of `slots` sequences over a pool of `positions` (0: slots × n_ctx, so no
    // sequence ever waits for a page); forward_cached takes pages from it as sequences grow and
    // raises moe::error when none is free (layers/kv_cache.h).
    layers::KvCache make_cache(int64_t slots, int64_t positions = 0) const;
    // Tokens routed to each expert of each MoE layer by the last forward_cached: (L, E), empty
    // rows for dense layers.
    const std::vector<std::vector<int64_t>>& cached_expert_load() const { return cached_load_; }
    // Route capture (moe serve's return_routing): the rows listed here (indices into the N rows of
    // the following forward_cached calls) have the experts and combine weights chosen for them in
    // every MoE layer copied out; nothing is copied while the list is empty (the default).
    // captured_experts() / captured_weights(): (rows, L, K) of the last forward_cached, in the order
    // of the list, expert -1 and weight 0 for a dropped slot and for every slot of a dense layer;
    // K = n_expert_used (inference K).
    void set_route_capture(const int32_t* rows, int64_t n) { capture_rows_.assign(rows, rows + n); }
    const std::vector<int32_t>& captured_experts() const { return capture_expert_; }
    const std::vector<float>& captured_weights() const { return capture_weight_; }
    // Storage type of the matmul weights forward_cached reads (attention, experts / dense FFN,
    // output head; the router and embeddings stay fp32). On an fp32 model, bf16 / int8 make copies
    // of the current parameters (call again after they change; fp32: views, no copy). A typed
    // model has one type for life: asking for another throws moe::error.
    void set_weight_type(kernels::WType t);
    kernels::WType weight_type() const { return wtype_; }
    double weight_bytes_per_token() const;  // bytes of weights one decoded token reads (K experts)

    const float* logits() const { return logits_; }  // (N, V) of the last forward or forward_cached
    // Tokens per expert in the last training-state forward, per layer (empty for dense layers): (L, E)
    std::vector<std::vector<int64_t>> expert_load() const;
    // Routing record of layer l from the last forward (MoE layers only; null otherwise):
    // topk_expert (N, K), topk_weight (N, K), logits (N, E), with N = B*T of that forward.
    const layers::FfnCache* ffn_cache(int64_t l) const;
    int64_t last_tokens() const;
    // Per-layer routing telemetry of the last forward: loads (E), rerouted/dropped, entropy.
    struct LayerRouting {
        std::vector<int64_t> load;  // (E)
        int64_t rerouted = 0, dropped = 0, slots = 0;  // slots = N*K
        double entropy_sum = 0;     // sum over tokens of the router entropy (nats)
        int64_t tokens = 0;
    };
    std::vector<LayerRouting> routing() const;  // (L); empty load for dense layers
    size_t activation_bytes() const;  // training activations + backward scratch + inference plan
    bool has_training_state() const { return tr_ != nullptr; }

private:
    TrainingState& training();  // created on first use; throws on a typed model
    void ensure_activations(int64_t B, int64_t T);
    void ensure_inference_plan(int64_t N);
    void build_views();  // qviews_ / q_output_ from the current weights

    ModelConfig cfg_;
    ParamTable table_;
    bool typed_ = false;
    Arena params_;                  // fp32 model: everything; typed: the fp32-kept tensors only
    std::vector<int64_t> f32_off_;  // (params) offset into params_, -1 for a typed matrix
    const ops::ExpertGradSink* expert_sink_ = nullptr;
    layers::ExpertRunner* expert_runner_ = nullptr;
    layers::ExpertRunner* cached_runner_ = nullptr;
    ExpertShard shard_;  // count = E (or 0 without MoE layers) unless sharded
    bool ran_experts_remote_ = false;  // the last forward used expert_runner_
    Weights w_;  // fp32 views (a typed model's typed matrices are null here)
    std::unique_ptr<TrainingState> tr_;
    std::unique_ptr<InferencePlan> inf_;
    layers::RouteContext mode_;
    std::vector<std::vector<int64_t>> step_load_;  // (L, E) training loads since update_balance_bias
    std::vector<std::vector<int64_t>> cached_load_;  // (L, E) loads of the last forward_cached
    std::vector<int32_t> capture_rows_;    // rows whose route forward_cached copies out
    std::vector<int32_t> capture_expert_;  // (rows, L, K)
    std::vector<float> capture_weight_;    // (rows, L, K)
    double matmul_params_ = 0;         // active matmul weights per token (count_flops; follows K)
    const float* logits_ = nullptr;    // of the last forward / forward_cached
    kernels::WType wtype_ = kernels::WType::f32;
    kernels::Precision precision_ = kernels::Precision::fp32;
    // typed matrices per parameter (typed_at_inference ones): owned storage, or a view of memory
    // kept alive by keep_; fp32 models fill stores_ only in set_weight_type
    std::vector<kernels::QStore> stores_;  // (params)
    std::vector<kernels::QMatrix> views_;  // (params) the matrix forward_cached reads
    std::vector<std::vector<kernels::QMatrix>> parts_;  // (params) set_param_expert_views' experts
    std::vector<std::shared_ptr<const void>> keep_;
    std::vector<layers::QLayer> qviews_;  // (L)
    kernels::QStore q_output_store_;      // tied head in the weight type (a copy of tok_embd)
    kernels::QMatrix q_output_;
};

}  // namespace moe
