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
    // A model holding only experts [range.first, range.first + range.count) of every MoE layer
    // (expert parallelism, docs/distributed.md; range.all(): every expert, the models above). The
    // expert stacks of table() have range.count experts' rows (source_rows: which rows of the whole
    // stack), everything else is the whole model. Its routed experts run only through an expert
    // runner: set_expert_runner for forward / backward (training ranks, train/expert_parallel.h;
    // fp32 only), set_cached_expert_runner for forward_cached (inference ranks, infer/ep_infer.h;
    // any weight type). moe::error for a range outside [0, E) or a model without MoE layers.
    Model(const ModelConfig& cfg, kernels::WType t, ExpertRange range);
    // The fp32 model of that: trainable, with the runner (expert-parallel training)
    Model(const ModelConfig& cfg, ExpertRange range);
    ~Model();
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    const ModelConfig& config() const { return cfg_; }
    const ParamTable& table() const { return table_; }
    // The routed experts this model holds (all of them unless made with an ExpertRange)
    const ExpertRange& expert_range() const { return experts_; }
    bool experts_sharded() const { return !experts_.all(); }
    int64_t n_params() const { return table_.total(); }  // flat buffer length (with padding)
    // The flat fp32 buffer of an fp32 model (ParamTable layout). Not for a typed model.
    float* params();
    // Where parameter p of table() (as a (numel / IN, IN) matrix) lies in the whole model's tensor
    // of that name (every expert): (first row, rows). (0, all) but for an expert stack of a model
    // holding a range of experts: (range.first · rows per expert, range.count · rows per expert).
    // Loaders read these rows of a file's tensor into param_f32 / param_store / set_param_view.
    std::pair<int64_t, int64_t> source_rows(const ParamInfo& p) const;
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
    // run every expert here unless the model holds a range of experts (then they use r too, so
    // every rank of the group must evaluate together); forward_cached never uses it. null: off.
    void set_expert_runner(layers::ExpertRunner* r) { expert_runner_ = r; }
    // Expert-parallel inference (infer/ep_infer.h): while set, forward_cached hands every MoE
    // layer's routed rows to `r` (ExpertRunner::forward_cached) instead of running the experts
    // here. A model holding a range of experts needs it for forward_cached. null: off.
    void set_cached_expert_runner(layers::ExpertRunner* r) { cached_runner_ = r; }
    // The inference views of MoE layer l's expert stacks (this model's range of them), as
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
    // Elements of the caches make_cache returns: f32 (default) | f16 | bf16 (--cache-type;
    // layers/kv_cache.h); anything else is a moe::error
    void set_cache_type(DType t);
    DType cache_type() const { return cache_type_; }
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
    // Q8_0, Q4_0, Q4_K and int8 matrices repacked into the tiles of this host's kernels where
    // kernels::q8_0_tiled_active() (AVX-512 VNNI without AMX; kernels/ggml_quants.h), the same
    // four on AVX2 hosts without them (kernels::repack_for_host decides per matrix): the same bytes per matrix, reordered once so
    // that every product reads them in place, with the block order's bits (which a batch-invariant
    // product has on those hosts anyway). Views of a mapped file become owned copies (the mapping's
    // pages are no longer read; an fp32 model's set_weight_type copies are repacked in place, until
    // the next set_weight_type). For inference: call after the load. Returns the bytes repacked (0
    // where the host has no such kernel or the model no Q8_0 / int8 matrix). Expert stacks whose experts'
    // rows are not a multiple of 32 stay as they are.
    double repack_for_inference();
    bool repacked() const { return repacked_; }  // repack_for_inference ran (and found the kernels)
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
    ExpertRange experts_;
    ParamTable table_;
    bool typed_ = false;
    bool repacked_ = false;  // repack_for_inference: the tied head's Q8_0 copy is repacked too
    Arena params_;                  // fp32 model: everything; typed: the fp32-kept tensors only
    std::vector<int64_t> f32_off_;  // (params) offset into params_, -1 for a typed matrix
    const ops::ExpertGradSink* expert_sink_ = nullptr;
    layers::ExpertRunner* expert_runner_ = nullptr;  // forward / backward (set_expert_runner)
    layers::ExpertRunner* cached_runner_ = nullptr;  // forward_cached (set_cached_expert_runner)
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
    DType cache_type_ = DType::f32;
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
