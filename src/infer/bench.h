#pragma once
// Inference speed of a model: decode (tokens/s of cached one-token steps, several sequences
// together when batch > 1) and prefill (tokens/s of one batched forward over a prompt).
#include <cstdint>
#include <string>

#include "model/model.h"

namespace moe {

struct BenchOptions {
    std::string mode = "decode";  // "decode" | "prefill"
    int64_t batch = 1;            // sequences decoding together (decode)
    int64_t tokens = 64;          // decode steps timed (decode)
    int64_t context = 16;         // prompt tokens before the timed decode steps
    int64_t prompt = 512;         // prefill length (clamped to n_ctx)
    int64_t repeats = 3;          // prefill: timed passes (the best is reported)
    double min_seconds = 1.0;     // decode: keep stepping (new sequences) until this much time
    uint64_t seed = 1;
};

struct BenchResult {
    double tokens_per_sec = 0, seconds = 0;
    int64_t tokens = 0;
    double weight_bytes_per_token = 0;  // decode: bytes of weights a token reads (active, fp32)
    double gbytes_per_sec = 0;          // decode: weight_bytes_per_token * tokens/s / 1e9
    double gflops = 0;                  // prefill: model FLOP/s / 1e9
    double parallel_regions_per_step = 0;  // decode: thread forks per decode step (0 for small models)
};

BenchResult run_bench(Model& model, const BenchOptions& opt);

}  // namespace moe
