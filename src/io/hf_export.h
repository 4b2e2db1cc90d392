#pragma once
// moe models written as Hugging Face model directories (issue #20, `moe export --format hf`) that
// transformers' AutoModelForCausalLM.from_pretrained loads and that give moe's logits:
//   config.json             the family's fields (model_type, architectures, dtype, rope, eps, ids, ...)
//   generation_config.json
//   model.safetensors       or model-0000i-of-0000n.safetensors + model.safetensors.index.json above
//                           a size; the per-expert names transformers 5.23's save_pretrained writes
//                           (io/hf_names.h, layout per_expert)
//   tokenizer.json, tokenizer_config.json (moe's tokenizers as tokenizer.json; a Hugging Face
//                           source's tokenizer files and chat template copied as they are)
// Every file is written atomically (temp + fsync + rename). docs/formats.md "Export" has the table
// of moe config -> family and what is dropped (with a warning) or refused (moe::error).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/hf_config.h"
#include "io/hf_model.h"

namespace moe {

// The Hugging Face config a moe model config is exported as; the family follows docs/formats.md:
// dense -> llama (qwen2 with q/k/v biases only, qwen3 with per-head qk_norm); MoE -> olmoe
// (whole-projection qk_norm), qwen3_moe (per-head qk_norm), qwen2_moe (a gated shared expert),
// mixtral (every layer MoE, top-K renormalised, no attention biases). Throws moe::error naming
// `where`, the field and its value when no family computes what moe computes; settings that do not
// change inference (training-only router settings, a zero balancing bias, noise used only in
// training) are appended to `notes` as the warning to print.
HfConfig hf_config_from_moe(const ModelConfig& m, const std::string& where, std::vector<std::string>& notes);

// config.json of an HfConfig: the fields of its family's transformers 5.23 config class that
// matter for the arithmetic (rope as rope_parameters and as the top-level rope_theta of
// transformers 4), architectures, model_type, dtype; parse_hf_config reads it back to `c`.
nlohmann::ordered_json hf_config_to_json(const HfConfig& c);

struct HfExportOptions {
    uint64_t max_shard_bytes = 5000000000ull;  // a new shard above this much tensor data (5 GB)
    bool force = false;                        // write into a non-empty directory
    std::function<void(const std::string&)> progress;  // one line per file written
};

struct HfExportResult {
    std::string family;                 // model_type written
    std::string dtype;                  // config.json's dtype: "float32", "bfloat16", "float16"
    std::vector<std::string> files;     // written, in order
    std::vector<std::string> warnings;  // what was dropped or converted
    int64_t tensors = 0;
    uint64_t tensor_bytes = 0;
};

// Writes the model of `ck`, loaded from `source` (a path of format `format`), to `out`.
// A Hugging Face source: its config.json and generation_config.json are copied as they are (the
// model_type it was loaded as), every tensor keeps the dtype of its source tensor (moe widened them
// exactly), and its tokenizer files and chat template are copied. A moe checkpoint: the config of
// hf_config_from_moe; tensors F32, or for a bf16 checkpoint BF16 matrices and F32 norms / routers /
// embedding as moe stores them; int8 matrices dequantized to F32 with a warning; tokenizer.json from
// Tokenizer::to_hf_tokenizer_json. `out` must not exist or be an empty directory unless opt.force
// (then the files of a model there are replaced and stale shards removed); it must not be `source`.
HfExportResult export_hf(Checkpoint& ck, const std::string& source, ModelFormat format, const std::string& out,
                         const HfExportOptions& opt = {});

// Fails (moe::error naming --out) unless `out` can take an export: a new path, an empty directory, or
// any directory with `force`; never the directory of `source`. Creates nothing.
void check_export_dir(const std::string& out, const std::string& source, bool force);

// A size as transformers' max_shard_size spells it: "5GB" (5 * 10^9 bytes), "200KB", "500MB",
// "2GiB" (2 * 2^30), "1000" (bytes); moe::error naming `what` and the text otherwise (or for 0).
uint64_t parse_byte_size(const std::string& s, const std::string& what);

}  // namespace moe
