#pragma once
// The two inner loops of cached attention's per-row path (ops::attention_cached_forward and its
// contiguous twin): scores of one query against n consecutive cached keys, and the probability-
// weighted sum of n consecutive cached values. Each result element is a function of its own
// inputs alone (never of n, of where a call starts, or of the other rows of a batch), so a row's
// attention is the same whether its positions come in one call (contiguous cache) or page by page,
// and whatever batch it is in. The SIMD forms give the reference twins' bits on every x86-64 CPU
// (products and sums rounded separately, no FMA; the same order of additions).
#include <cstdint>

#include "core/dtype.h"

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

// The KV cache in f16 or bf16 (--cache-type; DType::f32 is the float forms above): the same
// arithmetic on each element widened to fp32 (exact), so the bits of the float forms on a widened
// copy of the rows. ks / vs count elements.
void attn_scores(float* out, const float* q, const void* k, DType kt, int64_t ks, int64_t n, int64_t D, float scale);
void attn_accumulate(float* o, const float* p, float inv, const void* v, DType vt, int64_t vs, int64_t n, int64_t D);
void attn_scores_ref(float* out, const float* q, const void* k, DType kt, int64_t ks, int64_t n, int64_t D, float scale);
void attn_accumulate_ref(float* o, const float* p, float inv, const void* v, DType vt, int64_t vs, int64_t n, int64_t D);

// n floats into the cache's element type t (f32: copied; f16, bf16: rounded to nearest even, as
// fp32_to_fp16 / f32_to_bf16 round), and back (exact)
void kv_store(void* dst, DType t, const float* src, int64_t n);
void kv_load(float* dst, DType t, const void* src, int64_t n);

// Asks for the first `bytes` bytes of n rows (at p, `stride` bytes apart) to be brought into the
// cache ahead of their use; changes no result. The pages of a sequence lie anywhere in the KV
// pool, so the per-row loop calls this for a page of positions while it computes the one before.
inline void attn_prefetch(const void* p, int64_t stride, int64_t n, int64_t bytes) {
    for (int64_t u = 0; u < n; ++u) {
        const char* r = static_cast<const char*>(p) + u * stride;
        for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(r + b, 0, 3);
    }
}

}  // namespace moe::kernels
