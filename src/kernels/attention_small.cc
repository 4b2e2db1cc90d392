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

// ------------------------------------------------------------------------------------------------
// AVX-512: blocks of kRows query rows (and, for dk / dv, of kRows keys) at once, each score row in
// 16-key zmm chunks held in registers. The AVX2 kernels above go row by row, and at T = 32, D = 16
// a row is a handful of short dependent chains (a 16-step dot product, a horizontal max and sum, a
// 32-step weighted sum), so they wait on latency; four rows side by side keep the FMA pipes busy.
// D a multiple of 16 up to 32 and T up to 64 (attention_small_preferred's shapes); the AVX2 kernels
// take the others and every shape on CPUs without AVX-512.
// ------------------------------------------------------------------------------------------------
// GCC 12 warns that the _mm512_undefined_* placeholders inside its own intrinsics "may be used
// uninitialized" (GCC bug 105593); they are placeholders for fully written lanes.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define MOE_AVX512 __attribute__((target("avx2,fma,avx512f,avx512dq")))

constexpr int kRows = 4;
constexpr int64_t kMaxT512 = 64, kMaxD512 = 32;

// exp256's polynomial on 16 lanes.
MOE_AVX512 inline __m512 exp512(__m512 a) {
    using namespace exp_poly;
    a = _mm512_max_ps(_mm512_min_ps(a, _mm512_set1_ps(kMax)), _mm512_set1_ps(kMin));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(kLog2e)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), a);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    __m512 p = _mm512_set1_ps(kP0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

// Every lane = the sum (max) of the 16 lanes, folded in a fixed order: halves, quarters, pairs.
MOE_AVX512 inline __m512 all_sum16(__m512 v) {
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4e));  // 256-bit halves swapped
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xb1));  // 128-bit lanes swapped in pairs
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4e));
    return _mm512_add_ps(v, _mm512_permute_ps(v, 0xb1));
}
MOE_AVX512 inline __m512 all_max16(__m512 v) {
    v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, 0x4e));
    v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, 0xb1));
    v = _mm512_max_ps(v, _mm512_permute_ps(v, 0x4e));
    return _mm512_max_ps(v, _mm512_permute_ps(v, 0xb1));
}

// acc[r][c] = sum_d x[r][d] mT[d][16c : 16c + 16] for the kRows rows x[r] (stride ldx) and the
// first nch <= NC chunks
template <int NC>
MOE_AVX512 inline void rows_dot_chunks(__m512 (&acc)[kRows][NC], const float* const (&x)[kRows], const float* mT,
                                       int64_t Tp, int64_t D, int nch) {
    for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
        __m512 m[NC];
        for (int c = 0; c < NC; ++c)
            if (c < nch) m[c] = _mm512_load_ps(mT + d * Tp + 16 * c);
        for (int r = 0; r < kRows; ++r) {
            const __m512 xd = _mm512_set1_ps(x[r][d]);
            for (int c = 0; c < NC; ++c)
                if (c < nch) acc[r][c] = _mm512_fmadd_ps(xd, m[c], acc[r][c]);
        }
    }
}

// y[r][j] = sum_{u < n} w[r][u] m[u][16j : 16j + 16] for the kRows weight rows w[r] (element u at
// w[r] + u * ws) and the rows m[u] (stride ld)
template <int ND>
MOE_AVX512 inline void rows_weighted(__m512 (&y)[kRows][ND], const float* const (&w)[kRows], int64_t ws,
                                     const float* m, int64_t ld, int64_t n) {
    for (int r = 0; r < kRows; ++r)
        for (int j = 0; j < ND; ++j) y[r][j] = _mm512_setzero_ps();
    for (int64_t u = 0; u < n; ++u) {
        __m512 mu[ND];
        for (int j = 0; j < ND; ++j) mu[j] = _mm512_loadu_ps(m + u * ld + 16 * j);
        for (int r = 0; r < kRows; ++r) {
            const __m512 wu = _mm512_set1_ps(w[r][u * ws]);
            for (int j = 0; j < ND; ++j) y[r][j] = _mm512_fmadd_ps(wu, mu[j], y[r][j]);
        }
    }
}

template <int ND, int NC>
MOE_AVX512 void forward_head512(float* out, float* att, const float* q, const float* k, const float* v, int64_t ldq,
                                int64_t ldkv, int64_t T, float scale) {
    constexpr int64_t D = 16 * ND, Tp = 16 * NC;
    alignas(64) float kT[kMaxD512 * kMaxT512];  // [D][Tp]
    transpose_pad(kT, k, ldkv, T, Tp, D);
    const __m512 vs = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-__builtin_inff());
    for (int64_t t0 = 0; t0 < T; t0 += kRows) {
        const int64_t last = std::min<int64_t>(T, t0 + kRows) - 1;  // the block's last row
        const int nch = (int)(last / 16) + 1;                      // chunks holding keys 0..last
        const float* qr[kRows];
        float* ar[kRows];
        for (int r = 0; r < kRows; ++r) {
            const int64_t t = std::min(t0 + r, last);  // rows past T repeat the last (not stored)
            qr[r] = q + t * ldq;
            ar[r] = att + t * T;
        }
        // s[t][u] = scale * q[t] . k[u]
        __m512 s[kRows][NC];
        rows_dot_chunks<NC>(s, qr, kT, Tp, D, nch);
        // p = softmax(s) over the causal prefix u <= t; the row of att gets zeros past t
        for (int r = 0; r < kRows; ++r) {
            const int64_t t = std::min(t0 + r, last);
            __m512 mx = ninf;
            for (int c = 0; c < NC; ++c)
                if (c < nch) {
                    s[r][c] = _mm512_mask_mul_ps(ninf, lanes16(t + 1 - 16 * c), s[r][c], vs);
                    mx = _mm512_max_ps(mx, s[r][c]);
                }
            mx = all_max16(mx);
            __m512 sum = _mm512_setzero_ps();
            for (int c = 0; c < NC; ++c)
                if (c < nch) {
                    s[r][c] = _mm512_maskz_mov_ps(lanes16(t + 1 - 16 * c), exp512(_mm512_sub_ps(s[r][c], mx)));
                    sum = _mm512_add_ps(sum, s[r][c]);
                }
            const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.f), all_sum16(sum));
            for (int c = 0; c < NC; ++c)
                if (16 * c < T) {
                    const __m512 pc = c < nch ? _mm512_mul_ps(s[r][c], inv) : _mm512_setzero_ps();
                    _mm512_mask_storeu_ps(ar[r] + 16 * c, lanes16(T - 16 * c), pc);
                }
        }
        // o[t] = sum_{u <= t} p[t][u] v[u]  (p is 0 past t)
        __m512 o[kRows][ND];
        rows_weighted<ND>(o, ar, 1, v, ldkv, last + 1);
        for (int r = 0; r < kRows && t0 + r <= last; ++r)
            for (int j = 0; j < ND; ++j) _mm512_storeu_ps(out + (t0 + r) * ldq + 16 * j, o[r][j]);
    }
}

template <int ND, int NC>
MOE_AVX512 void backward_head512(float* dq, float* dk, float* dv, float* datt, const float* dout, const float* q,
                                 const float* k, const float* v, const float* att, int64_t ldq, int64_t ldkv,
                                 int64_t T, float scale) {
    constexpr int64_t D = 16 * ND, Tp = 16 * NC;
    alignas(64) float vT[kMaxD512 * kMaxT512];  // [D][Tp]
    transpose_pad(vT, v, ldkv, T, Tp, D);
    const __m512 vs = _mm512_set1_ps(scale);
    for (int64_t t0 = 0; t0 < T; t0 += kRows) {
        const int64_t last = std::min<int64_t>(T, t0 + kRows) - 1;
        const int nch = (int)(last / 16) + 1;
        const float* gr[kRows];
        float* dr[kRows];
        for (int r = 0; r < kRows; ++r) {
            const int64_t t = std::min(t0 + r, last);
            gr[r] = dout + t * ldq;
            dr[r] = datt + t * T;
        }
        // o = p · v  =>  dp[t][u] = dout[t] . v[u]
        __m512 dp[kRows][NC];
        rows_dot_chunks<NC>(dp, gr, vT, Tp, D, nch);
        // p = softmax(s)  =>  ds[u] = p[u] (dp[u] - sum_w p[w] dp[w]), times scale (s = scale q.k)
        for (int r = 0; r < kRows; ++r) {
            const int64_t t = std::min(t0 + r, last);
            const float* p = att + t * T;
            __m512 pc[NC], dot = _mm512_setzero_ps();
            for (int c = 0; c < NC; ++c)
                if (c < nch) {
                    pc[c] = _mm512_maskz_loadu_ps(lanes16(t + 1 - 16 * c), p + 16 * c);
                    dot = _mm512_fmadd_ps(pc[c], dp[r][c], dot);
                }
            dot = all_sum16(dot);
            for (int c = 0; c < NC; ++c)
                if (16 * c < T) {
                    const __m512 x = c < nch ? _mm512_mul_ps(_mm512_mul_ps(pc[c], _mm512_sub_ps(dp[r][c], dot)), vs)
                                             : _mm512_setzero_ps();
                    _mm512_mask_storeu_ps(dr[r] + 16 * c, lanes16(T - 16 * c), x);
                }
        }
        // s[t][u] = q[t] . k[u] * scale  =>  dq[t] += sum_{u <= t} ds[t][u] k[u]
        __m512 g[kRows][ND];
        rows_weighted<ND>(g, dr, 1, k, ldkv, last + 1);
        for (int r = 0; r < kRows && t0 + r <= last; ++r) {
            float* dqt = dq + (t0 + r) * ldq;
            for (int j = 0; j < ND; ++j) _mm512_storeu_ps(dqt + 16 * j, _mm512_add_ps(_mm512_loadu_ps(dqt + 16 * j), g[r][j]));
        }
    }
    for (int64_t u0 = 0; u0 < T; u0 += kRows) {
        // dk[u] += sum_{t >= u} ds[t][u] q[t] ; dv[u] += sum_{t >= u} p[t][u] dout[t]  (ds, p are 0
        // for t < u, so the block's sums start at its first key)
        const int64_t last = std::min<int64_t>(T, u0 + kRows) - 1;
        const float* dsc[kRows];
        const float* pcol[kRows];
        for (int r = 0; r < kRows; ++r) {
            const int64_t u = std::min(u0 + r, last);
            dsc[r] = datt + u0 * T + u;
            pcol[r] = att + u0 * T + u;
        }
        __m512 gk[kRows][ND], gv[kRows][ND];
        rows_weighted<ND>(gk, dsc, T, q + u0 * ldq, ldq, T - u0);
        rows_weighted<ND>(gv, pcol, T, dout + u0 * ldq, ldq, T - u0);
        for (int r = 0; r < kRows && u0 + r <= last; ++r) {
            float* dku = dk + (u0 + r) * ldkv;
            float* dvu = dv + (u0 + r) * ldkv;
            for (int j = 0; j < ND; ++j) {
                _mm512_storeu_ps(dku + 16 * j, _mm512_add_ps(_mm512_loadu_ps(dku + 16 * j), gk[r][j]));
                _mm512_storeu_ps(dvu + 16 * j, _mm512_add_ps(_mm512_loadu_ps(dvu + 16 * j), gv[r][j]));
            }
        }
    }
}

#undef MOE_AVX512
#pragma GCC diagnostic pop

bool use_avx512(int64_t T, int64_t D) {
    return active_isa() >= Isa::avx512 && D % 16 == 0 && D <= kMaxD512 && T <= kMaxT512;
}

// Calls f(ND, NC) as integral constants for ND = D / 16 in 1..2 and NC = ceil(T / 16) in 1..4.
template <class F>
void with_shape512(int64_t D, int64_t T, F&& f) {
    const int64_t nc = (T + 15) / 16;
    auto by_nc = [&](auto nd) {
        switch (nc) {
            case 1: return f(nd, std::integral_constant<int, 1>{});
            case 2: return f(nd, std::integral_constant<int, 2>{});
            case 3: return f(nd, std::integral_constant<int, 3>{});
            default: return f(nd, std::integral_constant<int, 4>{});
        }
    };
    if (D == 16) by_nc(std::integral_constant<int, 1>{});
    else by_nc(std::integral_constant<int, 2>{});
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
    if (use_avx512(T, D))
        return with_shape512(D, T, [&](auto nd, auto nc) {
            forward_head512<decltype(nd)::value, decltype(nc)::value>(out, att, q, k, v, ldq, ldkv, T, scale);
        });
    with_vectors_per_row(D / 8, [&](auto nd) { forward_head<decltype(nd)::value>(out, att, q, k, v, ldq, ldkv, T, scale); });
}

void attention_small_backward(float* dq, float* dk, float* dv, float* datt, const float* dout, const float* q,
                              const float* k, const float* v, const float* att, int64_t ldq, int64_t ldkv,
                              int64_t T, int64_t D, float scale) {
    MOE_ASSERT(attention_small_supported(T, D));
    if (use_avx512(T, D))
        return with_shape512(D, T, [&](auto nd, auto nc) {
            backward_head512<decltype(nd)::value, decltype(nc)::value>(dq, dk, dv, datt, dout, q, k, v, att, ldq, ldkv,
                                                                       T, scale);
        });
    with_vectors_per_row(D / 8, [&](auto nd) {
        backward_head<decltype(nd)::value>(dq, dk, dv, datt, dout, q, k, v, att, ldq, ldkv, T, scale);
    });
}

}  // namespace moe::kernels
