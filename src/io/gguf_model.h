#pragma once
// GGUF files as moe models, and moe models as GGUF files (docs/formats.md, "GGUF").
//
// Architectures, as llama.cpp writes them: `llama` (dense Llama / Mistral, and Mixtral with
// llama.expert_count and stacked blk.N.ffn_{gate,up,down}_exps), `qwen2`, `qwen3`, `qwen2moe`
// (shared expert + ffn_gate_inp_shexp), `qwen3moe`, `olmoe`. llama.cpp's converter permutes the
// rows of the `llama` Q / K projections for its adjacent-pair RoPE; moe's RoPE pairs (i, i + D/2)
// (ops/rope.h), so the loader undoes the permutation and the writer applies it.
//
// Tokenizers: the tokenizer.ggml.* keys (model `llama` = SentencePiece BPE with byte fallback,
// `gpt2` = byte-level BPE with a pre-tokenizer chosen by tokenizer.ggml.pre) are turned into the
// tokenizer.json that Hugging Face ships for that family and loaded by the tokenizer.json loader;
// a tokenizer.huggingface.json key (which moe's writer adds) is used as it is instead.
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/ggml_type.h"
#include "io/checkpoint.h"
#include "io/gguf.h"
#include "io/hf_config.h"

namespace moe {

class GgufWriter;

// The Hugging Face config equivalent to a GGUF file's metadata and tensors (what moe computes the
// same way from either), validated: moe::error naming the file and key for a missing key, an
// unsupported architecture or feature (RoPE scaling, sliding window, partial RoPE, gating
// functions other than softmax, ...).
HfConfig gguf_to_hf_config(const GgufHeader& h);

// Converts `n` rows starting at row `r0` of a tensor to fp32 (out: n * ne[0] floats). F32, F16 and
// BF16 are converted here; block-quantized types go through the dequantizer registered for them
// (gguf_register_dequantizer) and are "tensor type Q4_K: not yet supported" without one. This is
// the one place where a GGUF tensor's element type is interpreted for loading.
void gguf_rows_to_f32(const GgufTensorInfo& t, const void* data, int64_t r0, int64_t n, float* out,
                      const std::string& where);
using GgufDequantizeRow = void (*)(const void* src, float* dst, int64_t n);  // n values of one row
void gguf_register_dequantizer(GgmlType t, GgufDequantizeRow fn);
// Registers the block-format kernels (kernels/ggml_quants.h: Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) as the
// writer's quantizers and the loader's dequantizers; idempotent. load_gguf_model, export_gguf and
// gguf_rows_to_f32 call it; a direct user of GgufWriter::add_tensor_f32 with a block type calls it first.
void gguf_register_ggml_kernels();

// Loads a .gguf file. weight_type as in load_hf_model ("fp32", "bf16", "int8", "q8_0", "q4_0",
// "q4_k", "q5_k", "q6_k", "f16"; "": the type of blk.0.attn_q.weight when it is BF16 or one of
// those block types, else fp32). Matrices stored in the model's type are used in place from the
// mapping (BF16 and block types; `llama` Q / K rows, which need un-permuting, are copied as bytes,
// not converted); everything else is converted into the model's type (a Q4_K_M file's Q6_K
// matrices into Q4_K, ...). A block type whose block does not divide some matrix's rows: with
// weight_type "" the model becomes q8_0 (32 divides every row) or f16; named, moe::error.
// The config load_gguf_model gives the file's model, from its header alone
Config gguf_model_config(const std::string& path, int64_t n_ctx = 0);
// experts: a model holding that range of experts only (Model(cfg, t, experts)); their rows alone
// are viewed or converted.
Checkpoint load_gguf_model(const std::string& path, const std::string& weight_type = "", int64_t n_ctx = 0,
                           ExpertRange experts = {});

// The tokenizer.json (and tokenizer_config.json with bos / eos / add_bos_token / add_eos_token /
// chat_template) equivalent to a file's tokenizer.* keys. Returns false when the file has no
// tokenizer (no tokenizer.ggml.model, or "none"); moe::error for what cannot be expressed.
bool gguf_tokenizer_json(const GgufHeader& h, nlohmann::json& tokenizer_json, nlohmann::json& tokenizer_config);
// The tokenizer of a file (null when it has none).
std::shared_ptr<const HfTokenizer> gguf_tokenizer(const GgufHeader& h);

// Writes tokenizer.ggml.* (tokens padded to n_vocab with [PADi] entries, as llama.cpp's converter
// does), tokenizer.chat_template when the tokenizer config has one, and, with embed_hf_json, the
// tokenizer.json itself as tokenizer.huggingface.json. moe::error for a tokenizer GGUF cannot
// express (only BPE tokenizers: SentencePiece-style with byte fallback, or byte-level with one of
// the pre-tokenizers of docs/tokenizers.md).
void gguf_write_tokenizer(GgufWriter& w, const HfTokenizer& tok, int64_t n_vocab, bool embed_hf_json);

struct GgufExportOptions {
    // matrices (embedding and output head included); 1-D tensors (norms, biases) are always F32.
    // A block type whose block does not divide a matrix's rows writes that matrix as Q8_0 (a
    // K-quant, when 32 divides the rows) or F16, with one warning line on stderr.
    GgmlType type = GgmlType::F32;
    bool embed_hf_tokenizer_json = true;
    std::string name;  // general.name ("" = none)
};
// Writes a loaded model (fp32 or typed weights) as a GGUF file llama.cpp reads: architecture and
// hyper-parameters, tensors under llama.cpp's names (Q / K rows permuted for `llama`), the
// tokenizer and chat template. moe::error for what GGUF cannot express (an activation other than
// SwiGLU, aux-loss-free bias balancing, noise at inference, a routed scale, ...).
void export_gguf(const Checkpoint& ck, const std::string& out_path, const GgufExportOptions& opt = {});
// The same from a model path (anything load_model reads).
void export_gguf(const std::string& model_path, const std::string& out_path, const GgufExportOptions& opt = {});

// "f32" | "f16" | "bf16" | a ggml type name ("Q8_0", ...): moe::error naming `what` otherwise.
GgmlType parse_gguf_type(const std::string& s, const char* what);

}  // namespace moe
