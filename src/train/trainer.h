#pragma once
// The training loop: data, model, AdamW, schedule, evaluation, progress, JSONL log, checkpoints.
#include <cstdint>
#include <functional>
#include <string>

#include <moe/moe.h>  // TrainOptions, TrainResult

#include "io/tokenizer.h"
#include "model/config.h"
#include "model/model.h"
#include "train/grad_sync.h"

namespace moe {

// Text continuing the token `first` from the trained model, for the summary at the end of a run
// (opt.summary). Generation lives in infer/, beside train/, so the caller (src/api) supplies it;
// null: no sample.
using SampleFn = std::function<std::string(Model& model, const Tokenizer& tok, int32_t first, int64_t tokens,
                                           uint64_t seed)>;

// sync: the gradient seam between backward and optimizer (null: LocalSync, the identity).
TrainResult train(Config cfg, const TrainOptions& opt, const SampleFn& sample = nullptr, GradientSync* sync = nullptr);

}  // namespace moe
