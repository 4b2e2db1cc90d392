#pragma once
// Key/value cache for inference: per layer, per sequence slot, per position, the RoPE-rotated key
// and the value of every kv head. Sequences are independent slots, so several sequences of
// different lengths decode together in one batch.
#include <cstdint>
#include <vector>

#include "core/error.h"

namespace moe::layers {

struct KvCache {
    int64_t L = 0, S = 0, n_ctx = 0, KD = 0;  // layers, sequence slots, positions, Hkv*D
    std::vector<float> k, v;                  // (L, S, n_ctx, KD)
    std::vector<int64_t> len;                 // (S) positions filled

    KvCache() = default;
    KvCache(int64_t layers, int64_t slots, int64_t ctx, int64_t kd)
        : L(layers), S(slots), n_ctx(ctx), KD(kd), k(layers * slots * ctx * kd), v(k.size()), len(slots, 0) {}
    float* k_at(int64_t l, int64_t s, int64_t pos) { return k.data() + ((l * S + s) * n_ctx + pos) * KD; }
    float* v_at(int64_t l, int64_t s, int64_t pos) { return v.data() + ((l * S + s) * n_ctx + pos) * KD; }
    void reset(int64_t s) { len[s] = 0; }
    size_t bytes() const { return (k.size() + v.size()) * sizeof(float); }
};

}  // namespace moe::layers
