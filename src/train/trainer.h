#pragma once
// The training loop: data, model, AdamW, schedule, evaluation, progress, JSONL log, checkpoints.
#include <cstdint>
#include <string>

#include "model/config.h"

namespace moe {

struct TrainOptions {
    std::string out_dir = "runs/default";
    std::string resume_dir;     // continue from this checkpoint
    bool config_from_checkpoint = false;  // resuming: take the training section from the checkpoint too
    std::string log_path;       // JSONL log (one object per logged step / eval)
    std::string data_override;  // --data
    int64_t steps = -1;         // total steps (also when resuming); -1 = the config's
    int64_t seed = -1;          // -1 = the config's (resuming: the checkpoint's)
    int threads = 0;            // 0 = all cores
    std::string precision;      // --precision: "fp32" | "bf16" ("" = the config's train.precision)
    bool summary = true;        // print a sample and the expert table at the end
    int64_t sample_tokens = 300;
};

struct TrainResult {
    double final_train_loss = 0, final_val_loss = 0, unigram_entropy = 0;
    int64_t steps_done = 0;
    double seconds = 0;
};

TrainResult train(Config cfg, const TrainOptions& opt);

}  // namespace moe
