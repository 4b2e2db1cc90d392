#pragma once
// The seam between the backward and the optimizer. Once per optimizer step, after the last
// micro-batch's backward and before the gradient norm, clipping and AdamW, the trainer hands the
// whole gradient buffer to a GradientSync. On one process it is the identity (LocalSync); a
// data-parallel run (train/dp_sync.h, over a dist::Comm) sums the gradients of all ranks.
//
// Gradient accumulation (train.grad_accum = M > 1 micro-batches per step) goes through the sync
// too, so that one process and W ranks add the same numbers in the same order: the step's M
// micro-batches are global micro-batches 0..M-1; rank r of W runs m = r, W + r, 2W + r, ... (round
// j: m = j·W + r). Each micro-batch's gradient g_m is computed on its own (zeroed gradients, scale
// 1/M) and passed to accumulate(); the step's gradient is the left fold in micro-batch order
//     g = ((g_0 + g_1) + g_2) + ... + g_{M-1}        (elementwise, fp32)
// which finish() writes into the gradient buffer. M = 1 skips accumulate/finish (the backward's
// gradient is the step's).
//
// The fused expert AdamW (trainer.cc) updates the routed experts inside the backward, before this
// point, so it runs only when the sync is the identity and M = 1.
#include <cstdint>
#include <cstring>
#include <vector>

namespace moe {

class Model;
namespace dist {
class Comm;
}

class GradientSync {
public:
    virtual ~GradientSync() = default;
    // the trainer's model, once it exists (expert parallelism installs its runner there)
    virtual void attach(Model&) {}
    // true: sync() leaves the gradients as they are (one process)
    virtual bool identity() const = 0;
    // this process's rank and the number of ranks sharing each step's micro-batches
    virtual int rank() const { return 0; }
    virtual int size() const { return 1; }
    // g (n): the gradient of this rank's micro-batch of round `round` (0, 1, ... in order each step)
    virtual void accumulate(const float* g, int64_t n, int64_t round) {
        if (round == 0) {
            acc_.assign(g, g + n);
            return;
        }
        float* a = acc_.data();
        for (int64_t i = 0; i < n; ++i) a[i] += g[i];
    }
    // grads (n) = the fold of every rank's accumulated micro-batch gradients, in micro-batch order
    virtual void finish(float* grads, int64_t n) { std::memcpy(grads, acc_.data(), n * sizeof(float)); }
    // grads (n): the model's whole gradient buffer (ParamTable layout) of optimizer step `step`
    virtual void sync(float* grads, int64_t n, int64_t step) = 0;
    // The communicator of all size() ranks (null on one process), and for expert parallelism the
    // expert-parallel group (P ranks holding one copy of all experts between them) and P.
    virtual dist::Comm* world_comm() { return nullptr; }
    virtual dist::Comm* expert_group() { return nullptr; }
    virtual int expert_parallel() const { return 1; }
    // all (size() * k) = every rank's `mine` (k) in rank order (per-micro-batch losses and telemetry)
    virtual void gather(const double* mine, int64_t k, double* all) { std::memcpy(all, mine, k * sizeof(double)); }

protected:
    std::vector<float> acc_;
};

class LocalSync final : public GradientSync {
public:
    bool identity() const override { return true; }
    void sync(float*, int64_t, int64_t) override {}
};

}  // namespace moe
