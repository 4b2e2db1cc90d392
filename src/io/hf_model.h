#pragma once
// Hugging Face model directories (config.json, model.safetensors or shards, tokenizer.json) as moe
// models, and the one entry point for every kind of model path the tools accept.
#include <cstdint>
#include <string>

#include "io/checkpoint.h"
#include "io/hf_config.h"

namespace moe {

// moe's model config for a Hugging Face one (validated as a moe config would be). n_ctx: the
// context to serve (0: min(max_position_embeddings, kDefaultHfContext)). Throws moe::error naming
// what moe cannot compute (a RoPE scaling kind, an output bias without q/k/v biases, ...).
inline constexpr int64_t kDefaultHfContext = 4096;
Config hf_to_moe_config(const HfConfig& hf, int64_t n_ctx, const std::string& where);

// Loads a Hugging Face model directory. weight_type: the matmul weights' type ("fp32", "bf16",
// "int8"; "": bf16 when the file's matrices are BF16, else fp32). Matrices stored as BF16 that moe
// keeps as they are (bf16 model, not stacked) are used in place from the mapped files; others are
// assembled (experts stacked, fused gate/up split) and converted (F16 and BF16 to fp32 exactly;
// int8 by moe's Q8_0). The tokenizer comes from tokenizer.json (+ tokenizer_config.json).
// experts: a model holding that range of experts only (Model(cfg, t, experts)); the others'
// tensors are not read.
Checkpoint load_hf_model(const std::string& dir, const std::string& weight_type = "", int64_t n_ctx = 0,
                         ExpertRange experts = {});

// What `--model PATH` names: a moe checkpoint directory (checkpoint.bin), a Hugging Face model
// directory (config.json), a file of one of them, or a GGUF file (by its magic; io/gguf_model.h);
// moe::error naming PATH otherwise.
enum class ModelFormat { moe_checkpoint, hugging_face, gguf };
ModelFormat detect_model_format(const std::string& path);
// experts: a model holding that range of every MoE layer's experts only (expert-parallel
// inference, infer/ep_infer.h), for every format.
Checkpoint load_model(const std::string& path, const std::string& weight_type = "", int64_t n_ctx = 0,
                      ExpertRange experts = {});
// The config of the model at `path`, from its metadata alone (Hugging Face: config.json; a moe
// checkpoint: its config; GGUF: its header): what load_model's Checkpoint::config will be. No
// tensor is read or checked (load_model does that).
Config load_model_config(const std::string& path, int64_t n_ctx = 0);

}  // namespace moe
