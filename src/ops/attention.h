#pragma once
// Causal multi-head attention with grouped-query heads (H query heads share Hkv key/value heads,
// query head h reads kv head h / (H / Hkv)). Inputs are already rotated by RoPE.
//
// attention_forward / attention_backward: for float on AVX2 with D a multiple of 8 and short
// contexts where they win (kernels::attention_small_preferred), the fused per-(batch, head)
// kernels of kernels/attention_small.h (attention_forward_fused / _backward_fused); otherwise
// attention_forward_gemm / attention_backward_gemm: per (batch, head) GEMMs for the T x T products
// (the causal half is computed and masked, which still beats scalar loops by far) and a
// hand-written masked softmax between them.
// attention_forward_ref / attention_backward_ref: the slow reference twin with plain loops over the
// causal triangle, used by the tests as the oracle.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/attention_small.h"
#include "kernels/attn_rows.h"
#include "kernels/batch_invariant.h"
#include "kernels/exp.h"
#include "kernels/gemm.h"

namespace moe::ops {

// out (B*T, H*D); att (B, H, T, T) softmax probabilities, saved (upper triangle left 0)
// q (B*T, H*D); k, v (B*T, Hkv*D)
template <class T>
void attention_forward_ref(T* out, T* att, const T* q, const T* k, const T* v, int64_t B, int64_t Tn,
                       int64_t H, int64_t Hkv, int64_t D) {
    const int64_t group = H / Hkv;
    const T scale = T(1) / std::sqrt(T(D));
    const int64_t qs = H * D, kvs = Hkv * D;
    parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / H, h = i % H, hk = h / group;
            for (int64_t t = 0; t < Tn; ++t) {
                const T* qt = q + (b * Tn + t) * qs + h * D;
                T* a = att + ((b * H + h) * Tn + t) * Tn;
                T mx = -std::numeric_limits<T>::infinity();
                for (int64_t u = 0; u <= t; ++u) {
                    const T* ku = k + (b * Tn + u) * kvs + hk * D;
                    T s = 0;
                    for (int64_t d = 0; d < D; ++d) s += qt[d] * ku[d];
                    s *= scale;
                    a[u] = s;
                    if (s > mx) mx = s;
                }
                T sum = 0;
                for (int64_t u = 0; u <= t; ++u) {
                    a[u] = std::exp(a[u] - mx);
                    sum += a[u];
                }
                const T inv = T(1) / sum;
                for (int64_t u = 0; u <= t; ++u) a[u] *= inv;
                for (int64_t u = t + 1; u < Tn; ++u) a[u] = 0;
                T* o = out + (b * Tn + t) * qs + h * D;
                for (int64_t d = 0; d < D; ++d) o[d] = 0;
                for (int64_t u = 0; u <= t; ++u) {
                    const T* vu = v + (b * Tn + u) * kvs + hk * D;
                    const T p = a[u];
                    for (int64_t d = 0; d < D; ++d) o[d] += p * vu[d];
                }
            }
        }
    });
}

// Accumulates into dq, dk, dv. datt (B, H, T, T) is scratch. Work is split by (b, kv head) so the
// query heads sharing one kv head run on one thread: no two threads write the same dk/dv row.
template <class T>
void attention_backward_ref(T* dq, T* dk, T* dv, T* datt, const T* dout, const T* q, const T* k,
                        const T* v, const T* att, int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                        int64_t D) {
    const int64_t group = H / Hkv;
    const T scale = T(1) / std::sqrt(T(D));
    const int64_t qs = H * D, kvs = Hkv * D;
    parallel_for(0, B * Hkv, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / Hkv, hk = i % Hkv;
            for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
                for (int64_t t = 0; t < Tn; ++t) {
                    const T* a = att + ((b * H + h) * Tn + t) * Tn;
                    T* da = datt + ((b * H + h) * Tn + t) * Tn;
                    const T* go = dout + (b * Tn + t) * qs + h * D;
                    // o[d] = sum_u p[u] * v[u, d]
                    T dot = 0;
                    for (int64_t u = 0; u <= t; ++u) {
                        const T* vu = v + (b * Tn + u) * kvs + hk * D;
                        T* dvu = dv + (b * Tn + u) * kvs + hk * D;
                        T g = 0;
                        for (int64_t d = 0; d < D; ++d) {
                            g += go[d] * vu[d];        // dp[u] = dout . v[u]
                            dvu[d] += a[u] * go[d];    // dv[u] += p[u] * dout
                        }
                        da[u] = g;
                        dot += g * a[u];
                    }
                    // p = softmax(s)  =>  ds[u] = p[u] * (dp[u] - sum_w p[w] dp[w])
                    const T* qt = q + (b * Tn + t) * qs + h * D;
                    T* dqt = dq + (b * Tn + t) * qs + h * D;
                    for (int64_t u = 0; u <= t; ++u) {
                        const T ds = a[u] * (da[u] - dot) * scale;
                        // s[u] = scale * q[t] . k[u]
                        const T* ku = k + (b * Tn + u) * kvs + hk * D;
                        T* dku = dk + (b * Tn + u) * kvs + hk * D;
                        for (int64_t d = 0; d < D; ++d) {
                            dqt[d] += ds * ku[d];
                            dku[d] += ds * qt[d];
                        }
                    }
                }
            }
        }
    });
}

// out (B*T, H*D); att (B, H, T, T) softmax probabilities, saved (upper triangle 0)
// q (B*T, H*D); k, v (B*T, Hkv*D)
template <class T>
void attention_forward_gemm(T* out, T* att, const T* q, const T* k, const T* v, int64_t B, int64_t Tn,
                            int64_t H, int64_t Hkv, int64_t D) {
    const int64_t group = H / Hkv;
    const T scale = T(1) / std::sqrt(T(D));
    const int64_t qs = H * D, kvs = Hkv * D;
    parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / H, h = i % H, hk = h / group;
            const T* qb = q + b * Tn * qs + h * D;    // (T, D) rows strided by H*D
            const T* kb = k + b * Tn * kvs + hk * D;  // (T, D) rows strided by Hkv*D
            const T* vb = v + b * Tn * kvs + hk * D;
            T* a = att + (b * H + h) * Tn * Tn;       // (T, T)
            // s = scale * q · k^T
            kernels::gemm<T>(false, true, Tn, Tn, D, scale, qb, qs, kb, kvs, T(0), a, Tn);
            for (int64_t t = 0; t < Tn; ++t) {
                T* r = a + t * Tn;
                T mx = r[0];
                for (int64_t u = 1; u <= t; ++u) mx = r[u] > mx ? r[u] : mx;
                T sum = 0;
                if constexpr (std::is_same_v<T, float>) {
                    sum = kernels::exp_shift_sum(r, t + 1, mx);  // SIMD exp: the softmax's cost
                } else {
                    for (int64_t u = 0; u <= t; ++u) {
                        r[u] = std::exp(r[u] - mx);
                        sum += r[u];
                    }
                }
                const T inv = T(1) / sum;
                for (int64_t u = 0; u <= t; ++u) r[u] *= inv;
                for (int64_t u = t + 1; u < Tn; ++u) r[u] = 0;  // causal mask
            }
            // o = p · v
            kernels::gemm<T>(false, false, Tn, D, Tn, T(1), a, Tn, vb, kvs, T(0),
                             out + b * Tn * qs + h * D, qs);
        }
    });
}

// Accumulates into dq, dk, dv. datt (B, H, T, T) is scratch. Work is split by (b, kv head) so the
// query heads sharing one kv head run on one thread: no two threads write the same dk/dv row.
template <class T>
void attention_backward_gemm(T* dq, T* dk, T* dv, T* datt, const T* dout, const T* q, const T* k,
                             const T* v, const T* att, int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                             int64_t D) {
    const int64_t group = H / Hkv;
    const T scale = T(1) / std::sqrt(T(D));
    const int64_t qs = H * D, kvs = Hkv * D;
    parallel_for(0, B * Hkv, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / Hkv, hk = i % Hkv;
            const T* kb = k + b * Tn * kvs + hk * D;
            const T* vb = v + b * Tn * kvs + hk * D;
            T* dkb = dk + b * Tn * kvs + hk * D;
            T* dvb = dv + b * Tn * kvs + hk * D;
            for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
                const T* a = att + (b * H + h) * Tn * Tn;  // (T, T)
                T* da = datt + (b * H + h) * Tn * Tn;      // (T, T)
                const T* go = dout + b * Tn * qs + h * D;
                const T* qb = q + b * Tn * qs + h * D;
                T* dqb = dq + b * Tn * qs + h * D;
                // o = p · v  =>  dp = dout · v^T ; dv += p^T · dout
                kernels::gemm<T>(false, true, Tn, Tn, D, T(1), go, qs, vb, kvs, T(0), da, Tn);
                kernels::gemm<T>(true, false, Tn, D, Tn, T(1), a, Tn, go, qs, T(1), dvb, kvs);
                // p = softmax(s)  =>  ds[u] = p[u] * (dp[u] - sum_w p[w] dp[w]), times scale
                for (int64_t t = 0; t < Tn; ++t) {
                    const T* p = a + t * Tn;
                    T* r = da + t * Tn;
                    T dot = 0;
                    for (int64_t u = 0; u <= t; ++u) dot += p[u] * r[u];
                    for (int64_t u = 0; u <= t; ++u) r[u] = p[u] * (r[u] - dot) * scale;
                    for (int64_t u = t + 1; u < Tn; ++u) r[u] = 0;
                }
                // s = scale * q · k^T  =>  dq += ds · k ; dk += ds^T · q
                kernels::gemm<T>(false, false, Tn, D, Tn, T(1), da, Tn, kb, kvs, T(1), dqb, qs);
                kernels::gemm<T>(true, false, Tn, D, Tn, T(1), da, Tn, qb, qs, T(1), dkb, kvs);
            }
        }
    });
}

// out (B*T, H*D); att (B, H, T, T) softmax probabilities, saved (upper triangle 0)
// q (B*T, H*D); k, v (B*T, Hkv*D)
// The fused path (float only; requires kernels::attention_small_supported(T, D)).
inline void attention_forward_fused(float* out, float* att, const float* q, const float* k, const float* v,
                                    int64_t B, int64_t Tn, int64_t H, int64_t Hkv, int64_t D) {
    const int64_t group = H / Hkv, qs = H * D, kvs = Hkv * D;
    const float scale = 1.f / std::sqrt((float)D);
    parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / H, h = i % H, hk = h / group;
            kernels::attention_small_forward(out + b * Tn * qs + h * D, att + i * Tn * Tn, q + b * Tn * qs + h * D,
                                             k + b * Tn * kvs + hk * D, v + b * Tn * kvs + hk * D, qs, kvs, Tn, D,
                                             scale);
        }
    });
}

template <class T>
void attention_forward(T* out, T* att, const T* q, const T* k, const T* v, int64_t B, int64_t Tn,
                       int64_t H, int64_t Hkv, int64_t D) {
    if constexpr (std::is_same_v<T, float>) {
        if (kernels::attention_small_preferred(Tn, D)) return attention_forward_fused(out, att, q, k, v, B, Tn, H, Hkv, D);
    }
    attention_forward_gemm(out, att, q, k, v, B, Tn, H, Hkv, D);
}

// Accumulates into dq, dk, dv; datt (B, H, T, T) scratch. Split by (b, kv head) as above.
inline void attention_backward_fused(float* dq, float* dk, float* dv, float* datt, const float* dout, const float* q,
                                     const float* k, const float* v, const float* att, int64_t B, int64_t Tn,
                                     int64_t H, int64_t Hkv, int64_t D) {
    const int64_t group = H / Hkv, qs = H * D, kvs = Hkv * D;
    const float scale = 1.f / std::sqrt((float)D);
    parallel_for(0, B * Hkv, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / Hkv, hk = i % Hkv;
            for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
                const int64_t o = b * Tn * qs + h * D, okv = b * Tn * kvs + hk * D, oa = (b * H + h) * Tn * Tn;
                kernels::attention_small_backward(dq + o, dk + okv, dv + okv, datt + oa, dout + o, q + o, k + okv,
                                                  v + okv, att + oa, qs, kvs, Tn, D, scale);
            }
        }
    });
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv, T* datt, const T* dout, const T* q, const T* k,
                        const T* v, const T* att, int64_t B, int64_t Tn, int64_t H, int64_t Hkv,
                        int64_t D) {
    if constexpr (std::is_same_v<T, float>) {
        if (kernels::attention_small_preferred(Tn, D))
            return attention_backward_fused(dq, dk, dv, datt, dout, q, k, v, att, B, Tn, H, Hkv, D);
    }
    attention_backward_gemm(dq, dk, dv, datt, dout, q, k, v, att, B, Tn, H, Hkv, D);
}

// Attention of N query rows against a paged key/value cache (inference, layers/kv_cache.h). Row i
// belongs to sequence seq[i] at position pos[i] and attends to that sequence's cached positions
// 0..pos[i] (its own key/value already written). y (N, H*D); q (N, H*D) rotated; k_pool, v_pool
// (n_pages, Hkv, page, D) of one layer (a page's rows head by head: one row-head's keys of a page
// are contiguous), elements of type kvt (f32, f16 or bf16: --cache-type);
// tables (S, max_pages): position u of sequence s is row u % page of page tables[s * max_pages +
// u / page]; scores (N, H, n_ctx) scratch.
// Positions are visited in order whatever page holds them: the same additions in the same order
// as attention_cached_forward_contiguous on the pool's values widened to fp32, bit for bit.
inline void attention_cached_forward(float* y, float* scores, const float* q, const void* k_pool, const void* v_pool,
                                     DType kvt, const int32_t* tables, int64_t max_pages, int64_t page,
                                     const int32_t* seq, const int32_t* pos, int64_t N, int64_t n_ctx, int64_t H,
                                     int64_t Hkv, int64_t D) {
    const int64_t group = H / Hkv, qs = H * D;
    const int64_t es = (int64_t)dtype_size(kvt);  // bytes per element
    // element index of row r of page p, head hk
    auto at = [&](int64_t p, int64_t hk, int64_t r) { return ((p * Hkv + hk) * page + r) * D; };
    const char* kb0 = static_cast<const char*>(k_pool);
    const char* vb0 = static_cast<const char*>(v_pool);
    const float scale = 1.f / std::sqrt((float)D);
    // Runs of >= kGemmRun rows that are consecutive positions of one sequence (a prefill) go
    // through GEMMs per head over the run's keys and values gathered from their pages into
    // contiguous fp32 rows: S = scale * Q K^T over the cached keys 0..last, causal softmax, Y = P V.
    // Other rows (decode) take the per-row loop below.
    constexpr int64_t kGemmRun = 16;
    thread_local std::vector<int64_t> runs_storage;  // (begin, end) pairs; reused
    std::vector<int64_t>& runs = runs_storage;
    runs.clear();
    // batch invariant (kernels/batch_invariant.h): every row takes the per-row loop
    for (int64_t n = 0; n < N && !kernels::batch_invariant();) {
        int64_t e = n + 1;
        while (e < N && seq[e] == seq[n] && pos[e] == pos[e - 1] + 1) ++e;
        if (e - n >= kGemmRun) runs.push_back(n), runs.push_back(e);
        n = e;
    }
    const int64_t n_runs = (int64_t)runs.size() / 2;
    parallel_for(0, n_runs * H, 1, [&](int64_t i0, int64_t i1) {
        thread_local std::vector<float> kv_storage;  // [2, L, D] the run's keys and values of one head
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r0 = runs[2 * (i / H)], r1 = runs[2 * (i / H) + 1], h = i % H, hk = h / group;
            const int64_t G = r1 - r0, L = pos[r1 - 1] + 1;
            const int32_t* tab = tables + (int64_t)seq[r0] * max_pages;
            if ((int64_t)kv_storage.size() < 2 * L * D) kv_storage.resize(2 * L * D);
            float* kb = kv_storage.data();  // [L, D]
            float* vb = kb + L * D;         // [L, D]
            for (int64_t u = 0; u < L; ++u) {
                const int64_t r = at(tab[u / page], hk, u % page);
                kernels::kv_load(kb + u * D, kvt, kb0 + r * es, D);
                kernels::kv_load(vb + u * D, kvt, vb0 + r * es, D);
            }
            float* sc = scores + (r0 * H + h) * n_ctx;  // [G, L] rows strided by H*n_ctx
            const int64_t lds = H * n_ctx;
            kernels::gemm<float>(false, true, G, L, D, scale, q + r0 * qs + h * D, qs, kb, D, 0.f, sc, lds);
            for (int64_t g = 0; g < G; ++g) {
                float* row = sc + g * lds;
                const int64_t P = pos[r0 + g] + 1;
                float mx = row[0];
                for (int64_t u = 1; u < P; ++u) mx = row[u] > mx ? row[u] : mx;
                const float inv = 1.f / kernels::exp_shift_sum(row, P, mx);
                for (int64_t u = 0; u < P; ++u) row[u] *= inv;
                for (int64_t u = P; u < L; ++u) row[u] = 0;  // causal
            }
            kernels::gemm<float>(false, false, G, D, L, 1.f, sc, lds, vb, D, 0.f, y + r0 * qs + h * D, qs);
        }
    });
    auto in_run = [&](int64_t n) {
        for (int64_t r = 0; r < n_runs; ++r)
            if (n >= runs[2 * r] && n < runs[2 * r + 1]) return true;
        return false;
    };
    double work = 0;  // multiply-adds of the per-row path; a small decode step stays on one thread
    for (int64_t n = 0; n < N; ++n)
        if (!in_run(n)) work += 2.0 * (pos[n] + 1) * D * H;
    if (work == 0) return;
    const int64_t head_bytes = D * es;  // one position's row of one head; a page's rows are contiguous
    parallel_for(0, N * H, work < 65536 ? N * H : 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t n = i / H, h = i % H, hk = h / group, P = pos[n] + 1;
            if (n_runs > 0 && in_run(n)) continue;
            const float* qt = q + n * qs + h * D;
            const int32_t* tab = tables + (int64_t)seq[n] * max_pages;
            float* a = scores + i * n_ctx;  // [P]
            // kernels/attn_rows.h: each score and each o[d] a function of its own inputs alone, so
            // page by page gives the contiguous twin's bits
            // this head's rows of a page are one contiguous block, and the pages of a sequence lie
            // anywhere in the pool: each page's keys / values are asked for while the page before is
            // computed (kernels::attn_prefetch; no effect on any result)
            auto kpage = [&](int64_t u0) { return kb0 + at(tab[u0 / page], hk, 0) * es; };  // [page, D]
            auto vpage = [&](int64_t u0) { return vb0 + at(tab[u0 / page], hk, 0) * es; };
            if (i == i0) kernels::attn_prefetch(kpage(0), head_bytes, std::min(P, page), head_bytes);
            for (int64_t u0 = 0; u0 < P; u0 += page) {
                if (u0 + page < P) kernels::attn_prefetch(kpage(u0 + page), head_bytes, std::min(P, u0 + 2 * page) - u0 - page, head_bytes);
                else kernels::attn_prefetch(vpage(0), head_bytes, std::min(P, page), head_bytes);
                kernels::attn_scores(a + u0, qt, kpage(u0), kvt, D, std::min(P, u0 + page) - u0, D, scale);
            }
            float mx = -std::numeric_limits<float>::infinity();
            for (int64_t u = 0; u < P; ++u) mx = a[u] > mx ? a[u] : mx;
            const float inv = 1.f / kernels::exp_shift_sum(a, P, mx);
            float* o = y + n * qs + h * D;  // [D]
            for (int64_t d = 0; d < D; ++d) o[d] = 0;
            for (int64_t u0 = 0; u0 < P; u0 += page) {
                if (u0 + page < P) {
                    kernels::attn_prefetch(vpage(u0 + page), head_bytes, std::min(P, u0 + 2 * page) - u0 - page, head_bytes);
                } else if (i + 1 < i1) {  // the next row-head's first keys
                    const int64_t n1 = (i + 1) / H, hk1 = (i + 1) % H / group;
                    if (!(n_runs > 0 && in_run(n1)))
                        kernels::attn_prefetch(kb0 + at(tables[(int64_t)seq[n1] * max_pages], hk1, 0) * es, head_bytes,
                                               std::min<int64_t>(pos[n1] + 1, page), head_bytes);
                }
                kernels::attn_accumulate(o, a + u0, inv, vpage(u0), kvt, D, std::min(P, u0 + page) - u0, D);
            }
        }
    });
}

// attention_cached_forward over a contiguous cache: k_cache, v_cache (S, n_ctx, Hkv*D) of one layer.
// The reference twin of the paged kernel above (tests/test_attention.cc: the same bits).
inline void attention_cached_forward_contiguous(float* y, float* scores, const float* q, const float* k_cache,
                                     const float* v_cache, const int32_t* seq, const int32_t* pos, int64_t N,
                                     int64_t n_ctx, int64_t H, int64_t Hkv, int64_t D) {
    const int64_t group = H / Hkv, qs = H * D, kvs = Hkv * D;
    const float scale = 1.f / std::sqrt((float)D);
    // Runs of >= kGemmRun rows that are consecutive positions of one sequence (a prefill) go
    // through GEMMs per head: S = scale * Q K^T over the cached keys 0..last, causal softmax,
    // Y = P V. Other rows (decode) take the per-row loop below.
    constexpr int64_t kGemmRun = 16;
    thread_local std::vector<int64_t> runs_storage;  // (begin, end) pairs; reused
    std::vector<int64_t>& runs = runs_storage;
    runs.clear();
    // batch invariant (kernels/batch_invariant.h): every row takes the per-row loop
    for (int64_t n = 0; n < N && !kernels::batch_invariant();) {
        int64_t e = n + 1;
        while (e < N && seq[e] == seq[n] && pos[e] == pos[e - 1] + 1) ++e;
        if (e - n >= kGemmRun) runs.push_back(n), runs.push_back(e);
        n = e;
    }
    const int64_t n_runs = (int64_t)runs.size() / 2;
    parallel_for(0, n_runs * H, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r0 = runs[2 * (i / H)], r1 = runs[2 * (i / H) + 1], h = i % H, hk = h / group;
            const int64_t G = r1 - r0, L = pos[r1 - 1] + 1;
            const float* kb = k_cache + (int64_t)seq[r0] * n_ctx * kvs + hk * D;  // [L, D] rows strided by kvs
            const float* vb = v_cache + (int64_t)seq[r0] * n_ctx * kvs + hk * D;
            float* sc = scores + (r0 * H + h) * n_ctx;                           // [G, L] rows strided by H*n_ctx
            const int64_t lds = H * n_ctx;
            kernels::gemm<float>(false, true, G, L, D, scale, q + r0 * qs + h * D, qs, kb, kvs, 0.f, sc, lds);
            for (int64_t g = 0; g < G; ++g) {
                float* row = sc + g * lds;
                const int64_t P = pos[r0 + g] + 1;
                float mx = row[0];
                for (int64_t u = 1; u < P; ++u) mx = row[u] > mx ? row[u] : mx;
                const float inv = 1.f / kernels::exp_shift_sum(row, P, mx);
                for (int64_t u = 0; u < P; ++u) row[u] *= inv;
                for (int64_t u = P; u < L; ++u) row[u] = 0;  // causal
            }
            kernels::gemm<float>(false, false, G, D, L, 1.f, sc, lds, vb, kvs, 0.f, y + r0 * qs + h * D, qs);
        }
    });
    auto in_run = [&](int64_t n) {
        for (int64_t r = 0; r < n_runs; ++r)
            if (n >= runs[2 * r] && n < runs[2 * r + 1]) return true;
        return false;
    };
    double work = 0;  // multiply-adds of the per-row path; a small decode step stays on one thread
    for (int64_t n = 0; n < N; ++n)
        if (!in_run(n)) work += 2.0 * (pos[n] + 1) * D * H;
    if (work == 0) return;
    parallel_for(0, N * H, work < 65536 ? N * H : 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t n = i / H, h = i % H, hk = h / group, P = pos[n] + 1;
            if (n_runs > 0 && in_run(n)) continue;
            const float* qt = q + n * qs + h * D;
            const float* kb = k_cache + (int64_t)seq[n] * n_ctx * kvs + hk * D;  // [n_ctx, kvs]
            const float* vb = v_cache + (int64_t)seq[n] * n_ctx * kvs + hk * D;
            float* a = scores + i * n_ctx;  // [P]
            kernels::attn_scores(a, qt, kb, kvs, P, D, scale);
            float mx = -std::numeric_limits<float>::infinity();
            for (int64_t u = 0; u < P; ++u) mx = a[u] > mx ? a[u] : mx;
            const float inv = 1.f / kernels::exp_shift_sum(a, P, mx);
            float* o = y + n * qs + h * D;  // [D]
            for (int64_t d = 0; d < D; ++d) o[d] = 0;
            kernels::attn_accumulate(o, a, inv, vb, kvs, P, D);
        }
    });
}

}  // namespace moe::ops
