#pragma once
// Attention block: x_out = x_in + W_o · attention(rope(W_q·n), rope(W_k·n), W_v·n), n = rmsnorm(x_in)
#include <cstdint>

#include "layers/kv_cache.h"
#include "layers/qweights.h"
#include "layers/weights.h"

namespace moe::layers {

struct Dims {
    int64_t B = 0, T = 0, N = 0;  // N = B*T
    int64_t C = 0, H = 0, Hkv = 0, D = 0;
    bool qk_norm_head = false;    // the q/k RMSNorm runs over each head's D (rows of D), not H*D
};

struct AttentionCache {
    float* xn = nullptr;    // (N, C) normed input
    float* rstd = nullptr;  // (N)
    float* q = nullptr;     // (N, H*D) after RoPE
    float* k = nullptr;     // (N, Hkv*D) after RoPE
    float* v = nullptr;     // (N, Hkv*D)
    float* att = nullptr;   // (B, H, T, T) softmax probabilities
    float* y = nullptr;     // (N, H*D) attention output before W_o
    // qk_norm: the projections before their RMSNorm and its reciprocal RMS
    float* q_raw = nullptr;   // (N, H*D)
    float* k_raw = nullptr;   // (N, Hkv*D)
    float* q_rstd = nullptr;  // (N), or (N, H) per head
    float* k_rstd = nullptr;  // (N), or (N, Hkv) per head
};

struct AttentionScratch {
    float* dxn = nullptr;   // (N, C)
    float* dq = nullptr;    // (N, H*D)
    float* dk = nullptr;    // (N, Hkv*D)
    float* dv = nullptr;    // (N, Hkv*D)
    float* datt = nullptr;  // (B, H, T, T)
    float* dy = nullptr;    // (N, H*D)
    float* dq_raw = nullptr;  // (N, H*D)   qk_norm
    float* dk_raw = nullptr;  // (N, Hkv*D) qk_norm
};

// Whether the training passes below run in groups of whole sequences as tasks (enough sequences
// for every thread to take two groups) or op by op over all rows; both give the same bits.
bool attention_grouped(const Dims& d);

// out (N, C) = inp + attention(inp); rope (T, D/2, 2) table
void attention_forward(float* out, AttentionCache& c, const float* inp, const LayerWeights& w,
                       const float* rope, const Dims& d, double eps);

// dresid (N, C): in = d out, out = d inp (the residual path plus the block). Accumulates into g.
void attention_backward(float* dresid, LayerWeights& g, AttentionScratch& s, const AttentionCache& c,
                        const float* inp, const LayerWeights& w, const float* rope, const Dims& d);

// Inference with a KV cache: N rows, row i is token at position pos[i] of sequence slot seq[i].
// Writes each row's key/value into the cache at (layer, seq, pos) (its page must be writable:
// KvCache::prepare), then attends to positions 0..pos[i] of its sequence through its page table. rope_full (n_ctx, D/2, 2); c.att holds (N, H, n_ctx) scores.
// Projections through q (weights in their inference storage type).
void attention_forward_cached(float* out, AttentionCache& c, const float* inp, const LayerWeights& w,
                              const float* rope_full, const Dims& d, double eps, KvCache& cache,
                              int64_t layer, const int32_t* seq, const int32_t* pos, const QLayer& q);

}  // namespace moe::layers
