#pragma once
// The training loop: data, model, AdamW, schedule, evaluation, progress, JSONL log, checkpoints.
#include <cstdint>
#include <functional>
#include <memory>
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

struct TrainState;  // io/checkpoint.h

// One training run: set-up (fresh, or resumed from opt.resume_dir with its optimizer state and
// data position), then optimizer steps, evaluations and checkpoints. sync: the gradient seam
// between backward and optimizer (null: LocalSync, the identity); it must outlive the trainer.
class Trainer {
public:
    Trainer(Config cfg, const TrainOptions& opt, GradientSync* sync = nullptr);
    ~Trainer();
    Trainer(const Trainer&) = delete;
    Trainer& operator=(const Trainer&) = delete;

    struct StepStats {
        double loss = 0;  // lm_loss + balance_loss + z_loss: what the gradient descends
        double lm_loss = 0, balance_loss = 0, z_loss = 0, grad_norm = 0, lr = 0;
    };
    // One optimizer step (train.grad_accum micro-batches, the gradient sync, clipping, AdamW);
    // throws moe::error if the loss or gradient norm stops being finite.
    StepStats step();
    // Validation loss over train.eval_batches batches, with the routing table printed and logged.
    double evaluate();
    // An atomic checkpoint (weights, AdamW moments, state) in opt.out_dir.
    void save();
    // Steps to train.steps with progress lines, evaluations and checkpoints at their intervals,
    // then the summary (sample via `sample`, expert table).
    TrainResult run(const SampleFn& sample = nullptr);

    Model& model();
    const Config& config() const;
    const TrainState& state() const;
    const Tokenizer& tokenizer() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Trainer(cfg, opt, sync).run(sample).
TrainResult train(Config cfg, const TrainOptions& opt, const SampleFn& sample = nullptr, GradientSync* sync = nullptr);

}  // namespace moe
