#pragma once
// Inference speed of a model: decode (tokens/s of cached one-token steps, several sequences
// together when batch > 1) and prefill (tokens/s of one batched forward over a prompt).
#include <cstdint>
#include <string>

#include <moe/moe.h>  // BenchOptions, BenchResult

#include "model/model.h"

namespace moe {

BenchResult run_bench(Model& model, const BenchOptions& opt);

}  // namespace moe
