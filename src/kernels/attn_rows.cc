// Cached attention's per-row loops (attn_rows.h). Compiled with fp-contract off: the SIMD forms
// must round every product and every sum as the reference twins do (no FMA).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels/attn_rows.h"

#include <immintrin.h>

#include "kernels/avx2_inline.h"
#include "kernels/cpu.h"
#include "kernels/dot.h"

namespace moe::kernels {

void attn_scores_ref(float* out, const float* q, const float* k, int64_t ks, int64_t n, int64_t D, float scale) {
    for (int64_t u = 0; u < n; ++u) out[u] = dot_blocked(q, k + u * ks, D) * scale;
}

void attn_accumulate_ref(float* o, const float* p, float inv, const float* v, int64_t vs, int64_t n, int64_t D) {
    for (int64_t u = 0; u < n; ++u) {
        const float pu = p[u] * inv;
        const float* vu = v + u * vs;
        for (int64_t d = 0; d < D; ++d) o[d] += pu * vu[d];
    }
}

namespace {

// dot_blocked's pairwise fold of its 16 sums, held as two 8-lane halves (sums 0..7 and 8..15):
// s[j] += s[j + 8], then s[j] += s[j + 4], s[j] += s[j + 2], s[0] += s[1].
__attribute__((target("avx2,fma"))) inline float fold16(__m256 lo, __m256 hi) {
    const __m256 s8 = _mm256_add_ps(lo, hi);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Four keys at a time: four independent chains of adds (one key's chain is D / 16 adds long).
constexpr int kKeys = 4;

__attribute__((target("avx2,fma"))) void attn_scores_avx2(float* out, const float* q, const float* k, int64_t ks,
                                                          int64_t n, int64_t D, float scale) {
    const int64_t full = D / 16 * 16;
    int64_t u = 0;
    for (; u + kKeys <= n; u += kKeys) {
        __m256 lo[kKeys], hi[kKeys];
        for (int r = 0; r < kKeys; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
        for (int64_t i = 0; i < full; i += 16) {
            const __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
            for (int r = 0; r < kKeys; ++r) {
                const float* kr = k + (u + r) * ks + i;
                lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(q0, _mm256_loadu_ps(kr)));
                hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(q1, _mm256_loadu_ps(kr + 8)));
            }
        }
        for (int r = 0; r < kKeys; ++r) {
            const float* kr = k + (u + r) * ks;
            float s = fold16(lo[r], hi[r]);
            for (int64_t i = full; i < D; ++i) s += q[i] * kr[i];
            out[u + r] = s * scale;
        }
    }
    for (; u < n; ++u) {
        const float* kr = k + u * ks;
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        for (int64_t i = 0; i < full; i += 16) {
            lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kr + i)));
            hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(kr + i + 8)));
        }
        float s = fold16(lo, hi);
        for (int64_t i = full; i < D; ++i) s += q[i] * kr[i];
        out[u] = s * scale;
    }
}

__attribute__((target("avx2,fma,avx512f,avx512dq"))) inline float fold16_512(__m512 a) {
    return fold16(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
}

__attribute__((target("avx2,fma,avx512f,avx512dq"))) void attn_scores_avx512(float* out, const float* q,
                                                                             const float* k, int64_t ks, int64_t n,
                                                                             int64_t D, float scale) {
    const int64_t full = D / 16 * 16;
    int64_t u = 0;
    for (; u + kKeys <= n; u += kKeys) {
        __m512 acc[kKeys];
        for (int r = 0; r < kKeys; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t i = 0; i < full; i += 16) {
            const __m512 qv = _mm512_loadu_ps(q + i);
            for (int r = 0; r < kKeys; ++r)
                acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(qv, _mm512_loadu_ps(k + (u + r) * ks + i)));
        }
        for (int r = 0; r < kKeys; ++r) {
            const float* kr = k + (u + r) * ks;
            float s = fold16_512(acc[r]);
            for (int64_t i = full; i < D; ++i) s += q[i] * kr[i];
            out[u + r] = s * scale;
        }
    }
    for (; u < n; ++u) {
        const float* kr = k + u * ks;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < full; i += 16)
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(kr + i)));
        float s = fold16_512(acc);
        for (int64_t i = full; i < D; ++i) s += q[i] * kr[i];
        out[u] = s * scale;
    }
}

__attribute__((target("avx2,fma"))) void attn_accumulate_avx2(float* o, const float* p, float inv, const float* v,
                                                              int64_t vs, int64_t n, int64_t D) {
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {  // 4 chains of adds
        __m256 a0 = _mm256_loadu_ps(o + d), a1 = _mm256_loadu_ps(o + d + 8), a2 = _mm256_loadu_ps(o + d + 16),
               a3 = _mm256_loadu_ps(o + d + 24);
        for (int64_t u = 0; u < n; ++u) {
            const __m256 pu = _mm256_set1_ps(p[u] * inv);
            const float* vu = v + u * vs + d;
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(pu, _mm256_loadu_ps(vu)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(pu, _mm256_loadu_ps(vu + 8)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(pu, _mm256_loadu_ps(vu + 16)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(pu, _mm256_loadu_ps(vu + 24)));
        }
        _mm256_storeu_ps(o + d, a0), _mm256_storeu_ps(o + d + 8, a1);
        _mm256_storeu_ps(o + d + 16, a2), _mm256_storeu_ps(o + d + 24, a3);
    }
    for (; d + 8 <= D; d += 8) {
        __m256 a = _mm256_loadu_ps(o + d);
        for (int64_t u = 0; u < n; ++u)
            a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(p[u] * inv), _mm256_loadu_ps(v + u * vs + d)));
        _mm256_storeu_ps(o + d, a);
    }
    for (; d < D; ++d) {
        float a = o[d];
        for (int64_t u = 0; u < n; ++u) a += (p[u] * inv) * v[u * vs + d];
        o[d] = a;
    }
}

__attribute__((target("avx2,fma,avx512f"))) void attn_accumulate_avx512(float* o, const float* p, float inv,
                                                                        const float* v, int64_t vs, int64_t n,
                                                                        int64_t D) {
    int64_t d = 0;
    for (; d + 64 <= D; d += 64) {  // 4 chains of adds
        __m512 a0 = _mm512_loadu_ps(o + d), a1 = _mm512_loadu_ps(o + d + 16), a2 = _mm512_loadu_ps(o + d + 32),
               a3 = _mm512_loadu_ps(o + d + 48);
        for (int64_t u = 0; u < n; ++u) {
            const __m512 pu = _mm512_set1_ps(p[u] * inv);
            const float* vu = v + u * vs + d;
            a0 = _mm512_add_ps(a0, _mm512_mul_ps(pu, _mm512_loadu_ps(vu)));
            a1 = _mm512_add_ps(a1, _mm512_mul_ps(pu, _mm512_loadu_ps(vu + 16)));
            a2 = _mm512_add_ps(a2, _mm512_mul_ps(pu, _mm512_loadu_ps(vu + 32)));
            a3 = _mm512_add_ps(a3, _mm512_mul_ps(pu, _mm512_loadu_ps(vu + 48)));
        }
        _mm512_storeu_ps(o + d, a0), _mm512_storeu_ps(o + d + 16, a1);
        _mm512_storeu_ps(o + d + 32, a2), _mm512_storeu_ps(o + d + 48, a3);
    }
    for (; d < D; d += 16) {  // masked tail chunks
        const __mmask16 m = lanes16(D - d);
        __m512 a = _mm512_maskz_loadu_ps(m, o + d);
        for (int64_t u = 0; u < n; ++u)
            a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_set1_ps(p[u] * inv), _mm512_maskz_loadu_ps(m, v + u * vs + d)));
        _mm512_mask_storeu_ps(o + d, m, a);
    }
}

Isa attn_isa() {
    const Isa isa = active_isa();
    const CpuFeatures& f = cpu_features();
    if (isa >= Isa::avx512 && f.avx512f && f.avx512dq) return Isa::avx512;
    if (isa >= Isa::avx2 && f.avx2 && f.fma) return Isa::avx2;
    return Isa::ref;
}

}  // namespace

void attn_scores(float* out, const float* q, const float* k, int64_t ks, int64_t n, int64_t D, float scale) {
    switch (attn_isa()) {
        case Isa::ref: return attn_scores_ref(out, q, k, ks, n, D, scale);
        case Isa::avx2: return attn_scores_avx2(out, q, k, ks, n, D, scale);
        default: return attn_scores_avx512(out, q, k, ks, n, D, scale);
    }
}

void attn_accumulate(float* o, const float* p, float inv, const float* v, int64_t vs, int64_t n, int64_t D) {
    switch (attn_isa()) {
        case Isa::ref: return attn_accumulate_ref(o, p, inv, v, vs, n, D);
        case Isa::avx2: return attn_accumulate_avx2(o, p, inv, v, vs, n, D);
        default: return attn_accumulate_avx512(o, p, inv, v, vs, n, D);
    }
}

}  // namespace moe::kernels
