#include "train/optim.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "kernels/adamw.h"

namespace moe {

static constexpr int64_t kBlock = 16384;

AdamW::AdamW(int64_t n) : n_(n) { state_.allocate(2 * n * sizeof(float)); }

static kernels::AdamWScalars adamw_scalars(const AdamWParams& hp, int64_t t, float grad_scale) {
    const double bc1 = 1.0 - std::pow(hp.beta1, (double)t);
    const double bc2 = 1.0 - std::pow(hp.beta2, (double)t);
    kernels::AdamWScalars s;
    s.beta1 = (float)hp.beta1;
    s.beta2 = (float)hp.beta2;
    s.eps = (float)hp.eps;
    s.step_size = (float)(hp.lr / bc1);
    s.bc2_sqrt = (float)std::sqrt(bc2);
    s.grad_scale = grad_scale;
    s.decay = 1.f;
    return s;
}

static float decay_factor(const AdamWParams& hp) { return (float)(1.0 - hp.lr * hp.weight_decay); }

void AdamW::update(float* params, int64_t offset, const float* g, int64_t n, bool decay, const AdamWParams& hp,
                   int64_t t, float grad_scale) {
    kernels::AdamWScalars s = adamw_scalars(hp, t, grad_scale);
    s.decay = decay ? decay_factor(hp) : 1.f;
    kernels::adamw(params + offset, m() + offset, v() + offset, g, n, s);
}

void AdamW::step(float* params, const float* grads, const ParamTable& table, const AdamWParams& hp, int64_t t,
                 float grad_scale, const std::vector<std::pair<int64_t, int64_t>>* skip) {
    const kernels::AdamWScalars s = adamw_scalars(hp, t, grad_scale);
    float* M = m();
    float* Vv = v();
    const float decay = decay_factor(hp);
    // Blocks of 16K elements within each trainable tensor (a fixed split, so results do not depend
    // on the thread count), all tensors' blocks in one parallel region: a region per tensor (75 of
    // them in makeMoE, most of one block) spent a quarter of AdamW's thread time waiting at joins.
    struct Block {
        int64_t offset, n;
        bool decay;
    };
    thread_local std::vector<Block> blocks_storage;  // reused: no allocation once warm
    std::vector<Block>& blocks = blocks_storage;
    blocks.clear();
    size_t next = 0;  // the next skipped range
    for (const auto& p : table.params()) {
        if (!p.trainable) continue;
        const int64_t end = p.offset + p.numel;
        for (int64_t i = p.offset; i < end;) {
            while (skip && next < skip->size() && (*skip)[next].first + (*skip)[next].second <= i) ++next;
            if (skip && next < skip->size() && (*skip)[next].first <= i) {  // inside a skipped range
                i = (*skip)[next].first + (*skip)[next].second;
                continue;
            }
            int64_t stop = std::min(end, i + kBlock);
            if (skip && next < skip->size()) stop = std::min(stop, (*skip)[next].first);
            blocks.push_back({i, stop - i, p.decay});
            i = stop;
        }
    }
    // handed out dynamically: the blocks range from a norm's 128 floats to 16K, and an even split
    // by count left a third of the region's thread time waiting (makeMoE, experts skipped)
    parallel_tasks((int64_t)blocks.size(), [&](int64_t b) {
        kernels::AdamWScalars bs = s;
        const Block& k = blocks[b];
        bs.decay = k.decay ? decay : 1.f;
        kernels::adamw(params + k.offset, M + k.offset, Vv + k.offset, grads + k.offset, k.n, bs);
    });
}

double grad_sumsq(const float* grads, int64_t n) {
    // per-chunk partial sums in a fixed chunking, added in chunk order: deterministic and
    // independent of the thread count
    const int64_t chunk = 1 << 16;
    const int64_t nchunks = (n + chunk - 1) / chunk;
    thread_local std::vector<double> part_storage;
    std::vector<double>& part = part_storage;
    part.assign(nchunks, 0.0);
    parallel_for(0, nchunks, 1, chunk * (int64_t)sizeof(float), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) part[c] = kernels::sumsq(grads + c * chunk, std::min(n, (c + 1) * chunk) - c * chunk);
    });
    double ss = 0;
    for (double s : part) ss += s;
    return ss;
}

double grad_norm(const float* grads, int64_t n) { return std::sqrt(grad_sumsq(grads, n)); }

float clip_coefficient(double norm, double max_norm) {
    if (max_norm <= 0) return 1.f;
    const double coef = max_norm / (norm + 1e-6);  // as torch.nn.utils.clip_grad_norm_
    return coef < 1.0 ? (float)coef : 1.f;
}

double clip_grad_norm(float* grads, int64_t n, double max_norm) {
    const double norm = grad_norm(grads, n);
    const float cf = clip_coefficient(norm, max_norm);
    if (cf != 1.f) {
        parallel_for(0, n, 1 << 14, [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) grads[i] *= cf;
        });
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
