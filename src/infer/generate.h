#pragma once
// Text generation on the KV cache: the prompt is prefilled in one batched forward (tokens grouped
// per expert, one GEMM per expert), then each new token is one cached decode step that reads only
// the chosen experts' weights. Several independent sequences decode together in one batch.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <moe/moe.h>  // SampleOptions, check_sample_options

#include "model/model.h"

namespace moe {

// Picks the next token from logits (V). `context` (the sequence so far) feeds the repetition
// penalty; u01 is a uniform draw in [0, 1). scratch is reused between calls.
int32_t sample_token(const float* logits, int64_t V, const SampleOptions& opt, const std::vector<int32_t>& context,
                     double u01, std::vector<double>& scratch);

// Called with (sequence index, new token id); return false to stop that sequence (e.g. a stop
// string was produced).
using TokenCallback = std::function<bool(int64_t, int32_t)>;

// Continues each prompt (1..n_ctx tokens, checked) by up to opt.max_tokens tokens, all sequences
// decoding together in one batch. Sequence i samples from its own random stream (seed, i). When a
// sequence fills the context, its cache is refilled from the last n_ctx/2 tokens and it goes on.
std::vector<std::vector<int32_t>> generate_batch(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 const SampleOptions& opt, const TokenCallback& on_token = nullptr);

// One sequence: generate_batch with one prompt.
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<bool(int32_t)>& on_token = nullptr);

}  // namespace moe
