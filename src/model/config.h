#pragma once
// Model and training configuration, read from JSON (configs/*.json). Unknown fields are errors.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "layers/hparams.h"

namespace moe {

// model.vocab_size when train.tokenizer is "bpe" and the config gives none: the vocabulary to learn
inline constexpr int64_t kDefaultBpeVocab = 2048;

struct TrainConfig {
    std::string data;            // text file (path relative to the working dir or the source tree)
    std::string tokenizer = "char";  // "char" | "byte" | "bpe"
    double val_fraction = 0.1;   // last fraction of the tokens held out for validation
    int64_t batch_size = 16;     // B per micro-batch
    int64_t block_size = 0;      // T (0 = n_ctx)
    int64_t grad_accum = 1;      // micro-batches per optimizer step
    int64_t steps = 1000;
    double lr = 1e-3;
    double min_lr = 1e-4;
    int64_t warmup_steps = 100;
    double weight_decay = 0.1;
    double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
    double grad_clip = 1.0;      // global norm; 0 = off
    int64_t eval_interval = 100;
    int64_t eval_batches = 20;
    int64_t log_interval = 10;
    int64_t ckpt_interval = 0;   // 0 = only at the end
    uint64_t seed = 1337;
    std::string precision = "fp32";  // GEMM precision: "fp32" | "bf16" (fp32 master weights either way)
};

struct Config {
    std::string path;  // where it was read from ("" when built in code)
    ModelConfig model;
    TrainConfig train;
};

// Parse and validate. `where` names the source in error messages (usually the file path).
Config config_from_json(const nlohmann::json& j, const std::string& where);
Config load_config(const std::string& path);
nlohmann::json config_to_json(const Config& c);
// Validation shared by parse and by code that edits a config (throws moe::error naming the field).
void validate(const ModelConfig& m, const std::string& where);
void validate_router(const RouterConfig& r, const std::string& where);

}  // namespace moe
