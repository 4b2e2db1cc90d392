#include "train/optim.h"

#include <cmath>

#include "core/parallel.h"

namespace moe {

AdamW::AdamW(int64_t n) : n_(n) { state_.allocate(2 * n * sizeof(float)); }

void AdamW::step(float* params, const float* grads, const ParamTable& table, const AdamWParams& hp, int64_t t) {
    const double bc1 = 1.0 - std::pow(hp.beta1, (double)t);
    const double bc2 = 1.0 - std::pow(hp.beta2, (double)t);
    const float lr = (float)hp.lr, b1 = (float)hp.beta1, b2 = (float)hp.beta2, eps = (float)hp.eps;
    const float step_size = (float)(hp.lr / bc1);
    const float bc2_sqrt = (float)std::sqrt(bc2);
    float* M = m();
    float* Vv = v();
    for (const auto& p : table.params()) {
        if (!p.trainable) continue;
        const float decay = p.decay ? (float)(1.0 - hp.lr * hp.weight_decay) : 1.f;
        float* x = params + p.offset;
        const float* g = grads + p.offset;
        float* mm = M + p.offset;
        float* vv = Vv + p.offset;
        parallel_for(0, p.numel, 4096, [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) {
                x[i] *= decay;  // decoupled weight decay first, as torch.optim.AdamW
                mm[i] = b1 * mm[i] + (1.f - b1) * g[i];
                vv[i] = b2 * vv[i] + (1.f - b2) * g[i] * g[i];
                const float denom = std::sqrt(vv[i]) / bc2_sqrt + eps;
                x[i] -= step_size * mm[i] / denom;
            }
        });
        (void)lr;
    }
}

double clip_grad_norm(float* grads, int64_t n, double max_norm) {
    // per-chunk partial sums in a fixed chunking, added in chunk order: deterministic
    const int64_t chunk = 1 << 16;
    const int64_t nchunks = (n + chunk - 1) / chunk;
    std::vector<double> part(nchunks, 0.0);
    parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            double s = 0;
            const int64_t e = std::min(n, (c + 1) * chunk);
            for (int64_t i = c * chunk; i < e; ++i) s += (double)grads[i] * grads[i];
            part[c] = s;
        }
    });
    double ss = 0;
    for (double s : part) ss += s;
    const double norm = std::sqrt(ss);
    if (max_norm > 0) {
        const double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) {
            const float cf = (float)coef;
            parallel_for(0, n, 1 << 14, [&](int64_t i0, int64_t i1) {
                for (int64_t i = i0; i < i1; ++i) grads[i] *= cf;
            });
        }
    }
    return norm;
}

double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_lr) {
    if (warmup > 0 && step < warmup) return lr * (double)(step + 1) / (double)warmup;
    const int64_t decay_steps = std::max<int64_t>(1, total - warmup);
    double progress = (double)(step - warmup) / (double)decay_steps;
    if (progress > 1) progress = 1;
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace moe
