#pragma once
// Checkpoint = one directory holding checkpoint.bin (a moe tensor file: config, tokenizer, training
// state, every parameter by name, AdamW moments) and config.json (a readable copy). Both are
// written atomically, so a crash or a failed save leaves the previous good checkpoint intact.
#include <memory>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "model/config.h"
#include "model/model.h"

namespace moe {

struct TrainState {
    int64_t step = 0;         // optimizer steps done
    int64_t tokens_seen = 0;
    double val_loss = -1;     // last evaluation (-1 = none)
};

struct Checkpoint {
    Config config;
    Tokenizer tokenizer;
    TrainState state;
    std::unique_ptr<Model> model;
    std::vector<float> adam_m, adam_v;  // empty if the checkpoint has no optimizer state
    std::string weight_type = "fp32";   // as stored: "fp32" | "bf16" | "int8" (Hugging Face: also "f16")
    bool tokenizer_missing = false;     // a Hugging Face directory without tokenizer.json: ids only
    // The Jinja chat template source a model file carries (Hugging Face: chat_template.jinja, else
    // tokenizer_config.json's "chat_template"); empty when none. A moe checkpoint whose tokenizer
    // came from Hugging Face finds it in the tokenizer_config.json it keeps.
    std::string chat_template;
};

// Writes an inference checkpoint with the matmul weights (attention, experts / dense FFN, untied
// head) stored as bf16 or int8 (Q8_0: int8 values + "NAME.scales" fp32 per 32-block); norms, routers
// and the embedding stay fp32. No optimizer state. Atomic like save_checkpoint.
void save_checkpoint_quantized(const std::string& dir, const Config& config, const Tokenizer& tok, Model& model,
                               const std::string& weight_type, const TrainState& st);

std::string checkpoint_file(const std::string& dir);

// Creates `dir` if needed. adam_m / adam_v (Model::n_params() floats each) may be null.
void save_checkpoint(const std::string& dir, const Config& config, const Tokenizer& tok,
                     Model& model, const float* adam_m, const float* adam_v, const TrainState& st);

// Throws moe::error naming the file for a missing, truncated or corrupted checkpoint, or one
// whose tensors disagree with its config. weight_type: the model's matmul weights ("fp32",
// "bf16", "int8"; empty: as stored). fp32 gives a trainable model (a copy of the weights, typed
// ones dequantized); bf16 / int8 give an inference model whose matrices stored in that type are
// used in place from the mapped file (the model keeps the mapping) and others are converted.
// verify: check the CRC-32 of the whole file (one sequential pass over the mapping); without it the
// structure (magic, sizes, header, tensor bounds) is still checked, and pages are read on use.
// split: expert-parallel inference, the model holds its rank's experts only (Model's ExpertShard);
// the other experts' bytes are never read (the file is mapped).
Checkpoint load_checkpoint(const std::string& dir, const std::string& weight_type = "", bool verify = true,
                           ExpertSplit split = {});

// Creates `dir` (and parents) or throws naming it; checks it is writable.
void ensure_writable_dir(const std::string& dir);

}  // namespace moe
