#pragma once
// Text generation by repeated full forward passes (a KV cache comes with the inference engine).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "model/model.h"

namespace moe {

struct SampleOptions {
    int64_t max_tokens = 200;
    double temperature = 1.0;  // 0 = greedy
    uint64_t seed = 0;
};

// Picks the next token from logits (V): greedy at temperature 0, else softmax(logits / temperature).
int32_t sample_token(const float* logits, int64_t V, double temperature, double u01);

// Continues `prompt` (token ids, 1..n_ctx long). The window slides once the context is full.
// on_token (optional) is called with each new id as it is produced.
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace moe
