#pragma once
// The parameter table: every tensor of the model with its name, shape and offset into one flat
// buffer. The same table lays out the gradients and the optimizer state. Names follow GGUF's
// llama convention (tok_embd, blk.{l}.attn_q, blk.{l}.ffn_up_exps, ...).
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/ggml_quants.h"
#include "kernels/qmatmul.h"
#include "layers/weights.h"
#include "model/config.h"

namespace moe {

struct ParamInfo {
    std::string name;
    std::vector<int64_t> shape;
    int64_t offset = 0;  // in floats, into the flat buffer
    int64_t numel = 0;
    bool decay = true;   // AdamW weight decay applies (not to norms)
    bool expert = false; // stacked per-expert tensor: only K of E slices are active per token
    bool trainable = true;  // false: state kept in checkpoints but not a parameter (no gradient,
                            // not updated by AdamW, not counted), e.g. the balancing bias
};

// A contiguous range of every MoE layer's routed experts: [first, first + count). count < 0: all.
// An expert-parallel rank holds only its range, in training (train/expert_parallel.h) and in
// inference (infer/ep_infer.h): Model(cfg, [t,] range), the loaders' `experts` argument.
struct ExpertRange {
    int64_t first = 0, count = -1;
    bool all() const { return count < 0; }
};

// The range rank `q` of an expert-parallel group of P ranks holds: [q·E/P, (q+1)·E/P); all of
// them for P = 1. moe::error naming the values for P < 1, a model without MoE layers or P not
// dividing E (every rank holds the same number of experts).
ExpertRange expert_range_of(const ModelConfig& m, int P, int q);

class ParamTable {
public:
    // experts: the routed experts the expert stacks hold (shape[0] = range.count instead of E);
    // everything else is the same tensors in the same order
    explicit ParamTable(const ModelConfig& m, ExpertRange experts = {});
    const std::vector<ParamInfo>& params() const { return params_; }
    int64_t total() const { return total_; }
    const ParamInfo* find(const std::string& name) const;

private:
    void add(std::string name, std::vector<int64_t> shape, bool decay, bool expert = false,
             bool trainable = true);
    std::vector<ParamInfo> params_;
    std::unordered_map<std::string, size_t> index_;  // name -> position in params_ (find is O(1):
                                                     // binding the weights looks up every name)
    int64_t total_ = 0;
};

struct Weights {
    float* tok_embd = nullptr;     // (V, C)
    std::vector<LayerWeights> layers;
    float* output_norm = nullptr;  // (C)
    float* output = nullptr;       // (V, C); = tok_embd when tied
};

Weights bind_weights(const ParamTable& t, const ModelConfig& m, float* base);
// The same with each tensor's data from `at` (null: the tensor has no fp32 data here).
Weights bind_weights(const ParamTable& t, const ModelConfig& m, const std::function<float*(const ParamInfo&)>& at);

struct ParamCount {
    int64_t total = 0;   // every parameter (embedding and head included)
    int64_t active = 0;  // parameters used per token: K of E experts
};
ParamCount count_params(const ModelConfig& m);

// Model FLOPs per token (the usual accounting: 2 per multiply-add of a weight matrix the token
// goes through, the K chosen experts only, router and output head included, embedding lookups
// and norms left out) plus causal attention over a sequence of T tokens (QK^T and AV: 4·H·D per
// key, (T+1)/2 keys on average). Training = 3 × forward (backward: two GEMMs per forward GEMM).
struct FlopCount {
    double matmul_params = 0;  // weights a token multiplies by (active)
    double forward = 0;        // per token
    double training = 0;       // per token: forward + backward
};
FlopCount count_flops(const ModelConfig& m, int64_t T);

// Whether inference stores a parameter in the weight type (bf16 / int8): the matmul weights
// (attention, experts / dense FFN, untied head); routers, norms and the embedding table stay fp32.
bool typed_at_inference(const ParamInfo& p);

// Bytes of weights with the matmul weights in type wt, as inference keeps them (a tied head is an
// extra copy of the fp32 embedding table in the type). total: everything stored; active: what one
// decoded token reads (the K chosen experts, one embedding row). int8 is Q8_0: 1 byte + a 4-byte
// scale per 32 values.
struct WeightBytes {
    double total = 0, active = 0;
};
WeightBytes count_weight_bytes(const ModelConfig& m, kernels::WType wt);
// The same with the matmul weights in a GGUF block type (f16, q8_0, q4_0, q4_k, q5_k, q6_k): rows of
// ceil(in / block) blocks of gtype_block_bytes (a matrix whose width is not a multiple of the block is
// counted with its last block padded; moe export refuses such a matrix in that type).
WeightBytes count_weight_bytes(const ModelConfig& m, kernels::GType gt);

}  // namespace moe
