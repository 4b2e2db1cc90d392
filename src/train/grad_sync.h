#pragma once
// The seam between the backward and the optimizer: once per optimizer step, after the last
// micro-batch's backward and before the gradient norm, clipping and AdamW, the trainer hands the
// whole gradient buffer to a GradientSync. On one process it is the identity (LocalSync); a
// data-parallel run (dist/, over MPI) reduces the replicated gradients across ranks there.
//
// The fused expert AdamW (trainer.cc) updates the routed experts inside the backward, before this
// point, so it runs only when the sync is the identity: a real sync turns it off rather than
// being skipped for the experts' gradients.
#include <cstdint>

namespace moe {

class GradientSync {
public:
    virtual ~GradientSync() = default;
    // true: sync() leaves the gradients as they are (one process)
    virtual bool identity() const = 0;
    // grads (n): the model's whole gradient buffer (ParamTable layout) of optimizer step `step`
    virtual void sync(float* grads, int64_t n, int64_t step) = 0;
};

class LocalSync final : public GradientSync {
public:
    bool identity() const override { return true; }
    void sync(float*, int64_t, int64_t) override {}
};

}  // namespace moe
