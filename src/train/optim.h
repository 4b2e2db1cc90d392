#pragma once
// AdamW (decoupled weight decay, as torch.optim.AdamW; no decay on norms), global-norm gradient
// clipping (as torch.nn.utils.clip_grad_norm_) and the warm-up + cosine learning-rate schedule.
#include <cstdint>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "model/params.h"

namespace moe {

struct AdamWParams {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
public:
    explicit AdamW(int64_t n);
    // One update of params (n) from grads (n) * grad_scale (the clipping coefficient, applied on
    // the fly: the same product torch forms in place); t counts from 1.
    // `skip`: ranges (offset, n) of the flat buffer already updated this step (sorted by offset,
    // each inside one tensor), left alone.
    void step(float* params, const float* grads, const ParamTable& table, const AdamWParams& hp, int64_t t,
              float grad_scale = 1.f, const std::vector<std::pair<int64_t, int64_t>>* skip = nullptr);
    // The update of step t for n elements at flat offset `offset` with gradient g (n): the same
    // arithmetic step() applies there (elementwise, so any split gives the same bits).
    void update(float* params, int64_t offset, const float* g, int64_t n, bool decay, const AdamWParams& hp,
                int64_t t, float grad_scale = 1.f);
    float* m() { return reinterpret_cast<float*>(state_.data()); }
    float* v() { return m() + n_; }
    int64_t size() const { return n_; }

private:
    int64_t n_;
    Arena state_;  // (2, n): first and second moments
};

// Global L2 norm of grads (n), summed in double in a fixed order; grad_sumsq is its square before
// the root (for norms that add other parts).
double grad_norm(const float* grads, int64_t n);
double grad_sumsq(const float* grads, int64_t n);
// torch.nn.utils.clip_grad_norm_'s coefficient: min(1, max_norm / (norm + 1e-6)); 1 if max_norm <= 0.
float clip_coefficient(double norm, double max_norm);

// Scales grads so their global L2 norm is at most max_norm (0 = no clipping). Returns the norm
// before clipping (computed in double, fixed order).
double clip_grad_norm(float* grads, int64_t n, double max_norm);

// lr at 0-based step: linear warm-up to lr over warmup steps, then cosine down to min_lr at `total`.
double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_lr);

}  // namespace moe
