#pragma once
// The two inner loops of cached attention's per-row path (ops::attention_cached_forward and its
// contiguous twin): scores of one query against n consecutive cached keys, and the probability-
// weighted sum of n consecutive cached values. Each result element is a function of its own
// inputs alone (never of n, of where a call starts, or of the other rows of a batch), so a row's
// attention is the same whether its positions come in one call (contiguous cache) or page by page,
// and whatever batch it is in. The SIMD forms give the reference twins' bits on every x86-64 CPU
// (products and sums rounded separately, no FMA; the same order of additions).
#include <cstdint>

namespace moe::kernels {

// out[u] = scale * dot(q, k + u * ks) for u in [0, n), each dot over D in kernels::dot_blocked's
// order (16 running sums over the 16-blocks, added pairwise, then the tail in order).
// q (D); k (n, ks) rows of which the first D are read.
void attn_scores_ref(float* out, const float* q, const float* k, int64_t ks, int64_t n, int64_t D, float scale);
void attn_scores(float* out, const float* q, const float* k, int64_t ks, int64_t n, int64_t D, float scale);

// o[d] = o[d] + (p[u] * inv) * v[u * vs + d] for u in [0, n) in order, every d in [0, D).
// o (D); p (n); v (n, vs) rows of which the first D are read.
void attn_accumulate_ref(float* o, const float* p, float inv, const float* v, int64_t vs, int64_t n, int64_t D);
void attn_accumulate(float* o, const float* p, float inv, const float* v, int64_t vs, int64_t n, int64_t D);

// Asks for the first D floats of n rows (k, ks apart) to be brought into the cache ahead of their
// use; changes no result. A cached sequence's rows of one head are a row of the KV pool apart
// (Hkv * D floats: 4 KB and more), a stride the hardware prefetchers do not follow across pages,
// so the per-row loop calls this a page of positions ahead of the one it computes.
inline void attn_prefetch(const float* k, int64_t ks, int64_t n, int64_t D) {
    for (int64_t u = 0; u < n; ++u) {
        const char* r = reinterpret_cast<const char*>(k + u * ks);
        for (int64_t b = 0; b < D * (int64_t)sizeof(float); b += 64) __builtin_prefetch(r + b, 0, 3);
    }
}

}  // namespace moe::kernels
