#pragma once
// Hugging Face tensor names -> moe's names (src/model/params.cc, docs/conventions.md), per family,
// as data a loader walks: for each moe tensor, which HF tensor(s) hold it and how. No transposes are
// needed: HF Linear weights are (out, in) like moe's. docs/formats.md prints every family's table.
//
// Two layouts of the routed experts exist:
//  - per_expert (what transformers 5.23's save_pretrained writes by default, and every older
//    checkpoint): one (F, C) / (C, F) matrix per expert, e.g. mixtral
//    "model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight" (gate), w3 (up), w2 (down), or
//    qwen2_moe / qwen3_moe / olmoe "model.layers.{l}.mlp.experts.{e}.gate_proj.weight", up_proj, down_proj.
//    They are stacked along a new first dimension into moe's (E, F, C) / (E, C, F).
//  - fused (transformers 5's in-memory layout, written with save_pretrained(save_original_format=False)):
//    "model.layers.{l}.mlp.experts.gate_up_proj" (E, 2F, C), whose rows [0, F) of each expert are the
//    gate and [F, 2F) the up projection, and "mlp.experts.down_proj" (E, C, F), already moe's layout.
#include <cstdint>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "io/tensor_source.h"

namespace moe {

enum class HfExpertLayout { per_expert, fused };

enum class HfMapKind {
    direct,         // hf_names[0] has moe's shape: take it as it is
    stack_experts,  // hf_names[e] is expert e's (rows, cols) matrix: stack them into (E, rows, cols)
    split_gate_up,  // hf_names[0] is (E, 2F, C): take rows [half*F, half*F + F) of every expert
};

struct HfTensorMap {
    std::string moe_name;             // "blk.0.ffn_up_exps"
    std::vector<int64_t> shape;       // moe's shape
    HfMapKind kind = HfMapKind::direct;
    std::vector<std::string> hf_names;
    std::vector<int64_t> hf_shape;    // the shape each of hf_names must have
    int64_t half = 0;                 // split_gate_up: 0 = gate, 1 = up
};

// The attention projections' biases are
// blk.{l}.attn_q.bias, attn_k.bias, attn_v.bias, attn_output.bias. Per-head q/k norms (qwen3) use
// attn_q_norm / attn_k_norm with shape (D); olmoe's whole-projection ones (H*D), (Hkv*D).

// The global tensors: tok_embd, output_norm and output (absent when the embeddings are tied).
std::vector<HfTensorMap> hf_global_map(const HfConfig& c);
// One layer's tensors.
std::vector<HfTensorMap> hf_layer_map(const HfConfig& c, int64_t layer, HfExpertLayout layout);
// Everything: globals first, then the layers in order.
std::vector<HfTensorMap> hf_tensor_map(const HfConfig& c, HfExpertLayout layout);

// The layout of the experts in `src` (fused when the first MoE layer has mlp.experts.gate_up_proj).
HfExpertLayout hf_detect_expert_layout(const HfConfig& c, const TensorSource& src);

// Checks that every HF tensor of `map` is in `src` with its hf_shape, and that the tensors making up
// one moe tensor share a dtype; moe::error naming the first missing or mismatched one. Returns the
// names in `src` the map does not use (e.g. lm_head.weight next to tied embeddings), sorted.
std::vector<std::string> hf_check_source(const std::vector<HfTensorMap>& map, const TensorSource& src);

// Assembles one moe tensor from `src` into `out` (numel(shape) * dtype size bytes, the source's
// dtype, which is returned): a copy, a stack of the experts or the gate / up half of a fused tensor.
// n_experts >= 0: only experts [first_expert, first_expert + n_experts) of an expert stack (shape[0]
// = E), out_bytes for those (expert-parallel inference).
DType hf_assemble(const HfTensorMap& m, const TensorSource& src, void* out, size_t out_bytes,
                  int64_t first_expert = 0, int64_t n_experts = -1);

}  // namespace moe
