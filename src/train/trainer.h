#pragma once
// The training loop: data, model, AdamW, schedule, evaluation, progress, JSONL log, checkpoints.
#include <cstdint>
#include <string>

#include <moe/moe.h>  // TrainOptions, TrainResult

#include "model/config.h"

namespace moe {

TrainResult train(Config cfg, const TrainOptions& opt);

}  // namespace moe
