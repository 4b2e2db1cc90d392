#include "kernels/attention_small.h"

#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "core/error.h"
#include "kernels/avx2_inline.h"
#include "kernels/cpu.h"

namespace moe::kernels {

namespace {

constexpr int64_t kMaxT = 128, kMaxD = 64;

// dst [D][Tp] (32-byte aligned rows) = src^T for src (T rows of stride ld, D columns, D a
// multiple of 8); columns T..Tp zero
__attribute__((target("avx2,fma"))) void transpose_pad(float* dst, const float* src, int64_t ld, int64_t T,
                                                       int64_t Tp, int64_t D) {
    int64_t u = 0;
    for (; u + 8 <= T; u += 8)
        for (int64_t d = 0; d < D; d += 8) transpose8x8(dst + d * Tp + u, Tp, src + u * ld + d, ld);
    for (int64_t d = 0; d < D; ++d) {
        float* row = dst + d * Tp;
        for (int64_t v = u; v < T; ++v) row[v] = src[v * ld + d];
        for (int64_t v = T; v < Tp; ++v) row[v] = 0.f;
    }
}

// r[0 : 8 NC) = x (D) · mT[:, 0 : 8 NC)   (mT: [D][Tp]); NC accumulators held in registers
template <int NC>
__attribute__((target("avx2,fma"))) inline void dot_chunks(float* r, const float* x, const float* mT, int64_t Tp,
                                                           int64_t D) {
    __m256 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
        const __m256 xd = _mm256_broadcast_ss(x + d);
        const float* row = mT + d * Tp;
        for (int c = 0; c < NC; ++c) acc[c] = _mm256_fmadd_ps(xd, _mm256_load_ps(row + 8 * c), acc[c]);
    }
    for (int c = 0; c < NC; ++c) _mm256_store_ps(r + 8 * c, acc[c]);
}

// r[0 : 8 nch) = x · mT[:, 0 : 8 nch)
__attribute__((target("avx2,fma"))) inline void dot_row(float* r, const float* x, const float* mT, int64_t Tp,
                                                        int64_t D, int64_t nch) {
    int64_t c = 0;
    for (; c + 4 <= nch; c += 4) dot_chunks<4>(r + 8 * c, x, mT + 8 * c, Tp, D);
    switch (nch - c) {
        case 3: dot_chunks<3>(r + 8 * c, x, mT + 8 * c, Tp, D); break;
        case 2: dot_chunks<2>(r + 8 * c, x, mT + 8 * c, Tp, D); break;
        case 1: dot_chunks<1>(r + 8 * c, x, mT + 8 * c, Tp, D); break;
        default: break;
    }
}

// y (ND vectors) = sum_{u < n} w[u * ws] * m[u * ld : u * ld + 8 ND]  (two interleaved chains)
template <int ND>
__attribute__((target("avx2,fma"))) inline void weighted_rows(__m256* y, const float* w, int64_t ws, const float* m,
                                                              int64_t ld, int64_t n) {
    __m256 a0[ND], a1[ND];
    for (int j = 0; j < ND; ++j) a0[j] = a1[j] = _mm256_setzero_ps();
    int64_t u = 0;
    for (; u + 2 <= n; u += 2) {
        const __m256 p0 = _mm256_broadcast_ss(w + u * ws), p1 = _mm256_broadcast_ss(w + (u + 1) * ws);
        const float* m0 = m + u * ld;
        const float* m1 = m0 + ld;
        for (int j = 0; j < ND; ++j) {
            a0[j] = _mm256_fmadd_ps(p0, _mm256_loadu_ps(m0 + 8 * j), a0[j]);
            a1[j] = _mm256_fmadd_ps(p1, _mm256_loadu_ps(m1 + 8 * j), a1[j]);
        }
    }
    if (u < n) {
        const __m256 p0 = _mm256_broadcast_ss(w + u * ws);
        for (int j = 0; j < ND; ++j) a0[j] = _mm256_fmadd_ps(p0, _mm256_loadu_ps(m + u * ld + 8 * j), a0[j]);
    }
    for (int j = 0; j < ND; ++j) y[j] = _mm256_add_ps(a0[j], a1[j]);
}

// Lanes of chunk c (keys 8c .. 8c+7) that are within the causal prefix 0..t.
__attribute__((target("avx2,fma"))) inline __m256 causal_mask(int64_t c, int64_t t) {
    const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)(8 * c)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)t + 1), idx));
}

template <int ND>
__attribute__((target("avx2,fma"))) void forward_head(float* out, float* att, const float* q, const float* k,
                                                      const float* v, int64_t ldq, int64_t ldkv, int64_t T,
                                                      float scale) {
    constexpr int64_t D = 8 * ND;
    const int64_t Tp = (T + 7) / 8 * 8;
    alignas(32) float kT[kMaxD * kMaxT];  // [D][Tp]
    alignas(32) float s[kMaxT];
    transpose_pad(kT, k, ldkv, T, Tp, D);
    const __m256 vs = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-__builtin_inff());
    for (int64_t t = 0; t < T; ++t) {
        const int64_t n = t + 1;  // causal: keys 0..t
        // s[u] = scale * q[t] . k[u]
        const int64_t nch = (n + 7) / 8;
        dot_row(s, q + t * ldq, kT, Tp, D, nch);
        // p = softmax(s) over the prefix, 8 keys at a time; lanes past t are 0
        __m256 vmax = ninf;
        for (int64_t c = 0; c < nch; ++c) {
            const __m256 x = _mm256_blendv_ps(ninf, _mm256_mul_ps(_mm256_load_ps(s + 8 * c), vs), causal_mask(c, t));
            _mm256_store_ps(s + 8 * c, x);
            vmax = _mm256_max_ps(vmax, x);
        }
        const __m256 mx = _mm256_set1_ps(hmax8(vmax));
        __m256 vsum = _mm256_setzero_ps();
        for (int64_t c = 0; c < nch; ++c) {
            const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_load_ps(s + 8 * c), mx)), causal_mask(c, t));
            _mm256_store_ps(s + 8 * c, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        const __m256 inv = _mm256_set1_ps(1.f / hsum8(vsum));
        // the row of att: whole chunks straight from registers (lanes past t are already 0)
        float* a = att + t * T;
        int64_t c = 0;
        for (; c < nch && 8 * c + 8 <= T; ++c) _mm256_storeu_ps(a + 8 * c, _mm256_mul_ps(_mm256_load_ps(s + 8 * c), inv));
        for (; c < nch; ++c) {
            _mm256_store_ps(s + 8 * c, _mm256_mul_ps(_mm256_load_ps(s + 8 * c), inv));
            for (int64_t u = 8 * c; u < T; ++u) a[u] = s[u];
        }
        for (int64_t u = 8 * nch; u < T; ++u) a[u] = 0.f;
        // o[t] = sum_u p[u] v[u]
        __m256 o[ND];
        weighted_rows<ND>(o, a, 1, v, ldkv, n);
        for (int j = 0; j < ND; ++j) _mm256_storeu_ps(out + t * ldq + 8 * j, o[j]);
    }
}

template <int ND>
__attribute__((target("avx2,fma"))) void backward_head(float* dq, float* dk, float* dv, float* datt,
                                                       const float* dout, const float* q, const float* k,
                                                       const float* v, const float* att, int64_t ldq,
                                                       int64_t ldkv, int64_t T, float scale) {
    constexpr int64_t D = 8 * ND;
    const int64_t Tp = (T + 7) / 8 * 8;
    alignas(32) float vT[kMaxD * kMaxT];  // [D][Tp]
    alignas(32) float dp[kMaxT];
    transpose_pad(vT, v, ldkv, T, Tp, D);
    const __m256 vs = _mm256_set1_ps(scale);
    for (int64_t t = 0; t < T; ++t) {
        const int64_t n = t + 1;
        const float* p = att + t * T;
        float* ds = datt + t * T;
        // o = p · v  =>  dp[u] = dout[t] . v[u]
        const int64_t nch = (n + 7) / 8;
        dot_row(dp, dout + t * ldq, vT, Tp, D, nch);
        // p = softmax(s)  =>  ds[u] = p[u] (dp[u] - sum_w p[w] dp[w]), times scale (s = scale q.k);
        // p's row read by masked loads of the lanes 0..t (t < T: never past the row)
        __m256 pc[kMaxT / 8];
        __m256 vdot = _mm256_setzero_ps();
        for (int64_t c = 0; c < nch; ++c) {
            pc[c] = _mm256_maskload_ps(p + 8 * c, _mm256_castps_si256(causal_mask(c, t)));
            vdot = _mm256_fmadd_ps(pc[c], _mm256_load_ps(dp + 8 * c), vdot);
        }
        const __m256 dot = _mm256_set1_ps(hsum8(vdot));
        int64_t c = 0;
        for (; c < nch; ++c) {
            const __m256 x = _mm256_mul_ps(_mm256_mul_ps(pc[c], _mm256_sub_ps(_mm256_load_ps(dp + 8 * c), dot)), vs);
            if (8 * c + 8 <= T) {
                _mm256_storeu_ps(ds + 8 * c, x);
            } else {
                _mm256_store_ps(dp + 8 * c, x);
                for (int64_t u = 8 * c; u < T; ++u) ds[u] = dp[u];
            }
        }
        for (int64_t u = 8 * nch; u < T; ++u) ds[u] = 0.f;
        // s[u] = q[t] . k[u] * scale  =>  dq[t] += sum_u ds[u] k[u]
        __m256 g[ND];
        weighted_rows<ND>(g, ds, 1, k, ldkv, n);
        float* dqt = dq + t * ldq;
        for (int j = 0; j < ND; ++j) _mm256_storeu_ps(dqt + 8 * j, _mm256_add_ps(_mm256_loadu_ps(dqt + 8 * j), g[j]));
    }
    for (int64_t u = 0; u < T; ++u) {
        // dk[u] += sum_{t >= u} ds[t][u] q[t] ; dv[u] += sum_{t >= u} p[t][u] dout[t]
        __m256 gk[ND], gv[ND];
        weighted_rows<ND>(gk, datt + u * T + u, T, q + u * ldq, ldq, T - u);
        weighted_rows<ND>(gv, att + u * T + u, T, dout + u * ldq, ldq, T - u);
        float* dku = dk + u * ldkv;
        float* dvu = dv + u * ldkv;
        for (int j = 0; j < ND; ++j) {
            _mm256_storeu_ps(dku + 8 * j, _mm256_add_ps(_mm256_loadu_ps(dku + 8 * j), gk[j]));
            _mm256_storeu_ps(dvu + 8 * j, _mm256_add_ps(_mm256_loadu_ps(dvu + 8 * j), gv[j]));
        }
    }
}

// Calls f(std::integral_constant<int, ND>) for ND = D / 8 in 1..8: the head kernels are
// instantiated per row width so their ND accumulators live in registers.
template <class F>
void with_vectors_per_row(int64_t nd, F&& f) {
    switch (nd) {
        case 1: return f(std::integral_constant<int, 1>{});
        case 2: return f(std::integral_constant<int, 2>{});
        case 3: return f(std::integral_constant<int, 3>{});
        case 4: return f(std::integral_constant<int, 4>{});
        case 5: return f(std::integral_constant<int, 5>{});
        case 6: return f(std::integral_constant<int, 6>{});
        case 7: return f(std::integral_constant<int, 7>{});
        default: return f(std::integral_constant<int, 8>{});
    }
}

}  // namespace

bool attention_small_supported(int64_t T, int64_t D) {
    return active_isa() >= Isa::avx2 && D % 8 == 0 && D >= 8 && D <= kMaxD && T >= 1 && T <= kMaxT;
}

bool attention_small_preferred(int64_t T, int64_t D) { return attention_small_supported(T, D) && D <= 32 && T <= 64; }

void attention_small_forward(float* out, float* att, const float* q, const float* k, const float* v,
                             int64_t ldq, int64_t ldkv, int64_t T, int64_t D, float scale) {
    MOE_ASSERT(attention_small_supported(T, D));
    with_vectors_per_row(D / 8, [&](auto nd) { forward_head<decltype(nd)::value>(out, att, q, k, v, ldq, ldkv, T, scale); });
}

void attention_small_backward(float* dq, float* dk, float* dv, float* datt, const float* dout, const float* q,
                              const float* k, const float* v, const float* att, int64_t ldq, int64_t ldkv,
                              int64_t T, int64_t D, float scale) {
    MOE_ASSERT(attention_small_supported(T, D));
    with_vectors_per_row(D / 8, [&](auto nd) {
        backward_head<decltype(nd)::value>(dq, dk, dv, datt, dout, q, k, v, att, ldq, ldkv, T, scale);
    });
}

}  // namespace moe::kernels
