// Cached attention's per-row loops (attn_rows.h). Compiled with fp-contract off: the SIMD forms
// must round every product and every sum as the reference twins do (no FMA).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels/attn_rows.h"

#include <immintrin.h>

#include <cstring>

#include "core/error.h"
#include "kernels/avx2_inline.h"
#include "kernels/bf16.h"
#include "kernels/cpu.h"
#include "kernels/dot.h"
#include "kernels/ggml_quants.h"

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

// The element types of the KV cache as loaders: L::load8 / load16 widen 8 / 16 consecutive elements
// to fp32 (exact: every f16 and bf16 value is an fp32 value), L::at one element.
struct F32 {
    using T = float;
    static float at(const float* p) { return *p; }
    __attribute__((target("avx2,fma,f16c"))) static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl"))) static __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl"))) static __m512 maskz_load16(__mmask16 m, const float* p) {
        return _mm512_maskz_loadu_ps(m, p);
    }
};
struct F16 {
    using T = uint16_t;
    static float at(const uint16_t* p) { return fp16_to_fp32(*p); }
    __attribute__((target("avx2,fma,f16c"))) static __m256 load8(const uint16_t* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl"))) static __m512 load16(const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl"))) static __m512 maskz_load16(__mmask16 m, const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
    }
};
struct BF16 {
    using T = uint16_t;
    static float at(const uint16_t* p) { return bf16_to_f32(*p); }
    __attribute__((target("avx2,fma,f16c"))) static __m256 load8(const uint16_t* p) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    }
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl"))) static __m512 load16(const uint16_t* p) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    }
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl"))) static __m512 maskz_load16(__mmask16 m, const uint16_t* p) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
    }
};

// The reference twins over f16 / bf16 elements: dot_blocked's order (kernels/dot.h) and the fp32
// accumulation of attn_accumulate_ref on the widened values
template <class L>
void scores_ref(float* out, const float* q, const typename L::T* k, int64_t ks, int64_t n, int64_t D, float scale) {
    for (int64_t u = 0; u < n; ++u) {
        const typename L::T* kr = k + u * ks;
        float acc[16] = {0};
        const int64_t full = D / 16 * 16;
        for (int64_t i = 0; i < full; i += 16)
            for (int j = 0; j < 16; ++j) acc[j] += q[i + j] * L::at(kr + i + j);
        for (int w = 8; w >= 1; w /= 2)
            for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
        float s = acc[0];
        for (int64_t i = full; i < D; ++i) s += q[i] * L::at(kr + i);
        out[u] = s * scale;
    }
}

template <class L>
void accumulate_ref(float* o, const float* p, float inv, const typename L::T* v, int64_t vs, int64_t n, int64_t D) {
    for (int64_t u = 0; u < n; ++u) {
        const float pu = p[u] * inv;
        const typename L::T* vu = v + u * vs;
        for (int64_t d = 0; d < D; ++d) o[d] += pu * L::at(vu + d);
    }
}

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

template <class L>
__attribute__((target("avx2,fma,f16c"))) void attn_scores_avx2(float* out, const float* q, const typename L::T* k, int64_t ks,
                                                               int64_t n, int64_t D, float scale) {
    const int64_t full = D / 16 * 16;
    int64_t u = 0;
    for (; u + kKeys <= n; u += kKeys) {
        __m256 lo[kKeys], hi[kKeys];
        for (int r = 0; r < kKeys; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
        for (int64_t i = 0; i < full; i += 16) {
            const __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
            for (int r = 0; r < kKeys; ++r) {
                const typename L::T* kr = k + (u + r) * ks + i;
                lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(q0, L::load8(kr)));
                hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(q1, L::load8(kr + 8)));
            }
        }
        for (int r = 0; r < kKeys; ++r) {
            const typename L::T* kr = k + (u + r) * ks;
            float s = fold16(lo[r], hi[r]);
            for (int64_t i = full; i < D; ++i) s += q[i] * L::at(kr + i);
            out[u + r] = s * scale;
        }
    }
    for (; u < n; ++u) {
        const typename L::T* kr = k + u * ks;
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        for (int64_t i = 0; i < full; i += 16) {
            lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(q + i), L::load8(kr + i)));
            hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(q + i + 8), L::load8(kr + i + 8)));
        }
        float s = fold16(lo, hi);
        for (int64_t i = full; i < D; ++i) s += q[i] * L::at(kr + i);
        out[u] = s * scale;
    }
}

__attribute__((target("avx2,fma,f16c,avx512f,avx512dq,avx512bw,avx512vl"))) inline float fold16_512(__m512 a) {
    return fold16(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
}

template <class L>
__attribute__((target("avx2,fma,f16c,avx512f,avx512dq,avx512bw,avx512vl"))) void attn_scores_avx512(
    float* out, const float* q, const typename L::T* k, int64_t ks, int64_t n, int64_t D, float scale) {
    const int64_t full = D / 16 * 16;
    int64_t u = 0;
    for (; u + kKeys <= n; u += kKeys) {
        __m512 acc[kKeys];
        for (int r = 0; r < kKeys; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t i = 0; i < full; i += 16) {
            const __m512 qv = _mm512_loadu_ps(q + i);
            for (int r = 0; r < kKeys; ++r) acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(qv, L::load16(k + (u + r) * ks + i)));
        }
        for (int r = 0; r < kKeys; ++r) {
            const typename L::T* kr = k + (u + r) * ks;
            float s = fold16_512(acc[r]);
            for (int64_t i = full; i < D; ++i) s += q[i] * L::at(kr + i);
            out[u + r] = s * scale;
        }
    }
    for (; u < n; ++u) {
        const typename L::T* kr = k + u * ks;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < full; i += 16) acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(q + i), L::load16(kr + i)));
        float s = fold16_512(acc);
        for (int64_t i = full; i < D; ++i) s += q[i] * L::at(kr + i);
        out[u] = s * scale;
    }
}

template <class L>
__attribute__((target("avx2,fma,f16c"))) void attn_accumulate_avx2(float* o, const float* p, float inv, const typename L::T* v,
                                                                   int64_t vs, int64_t n, int64_t D) {
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {  // 4 chains of adds
        __m256 a0 = _mm256_loadu_ps(o + d), a1 = _mm256_loadu_ps(o + d + 8), a2 = _mm256_loadu_ps(o + d + 16),
               a3 = _mm256_loadu_ps(o + d + 24);
        for (int64_t u = 0; u < n; ++u) {
            const __m256 pu = _mm256_set1_ps(p[u] * inv);
            const typename L::T* vu = v + u * vs + d;
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(pu, L::load8(vu)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(pu, L::load8(vu + 8)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(pu, L::load8(vu + 16)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(pu, L::load8(vu + 24)));
        }
        _mm256_storeu_ps(o + d, a0), _mm256_storeu_ps(o + d + 8, a1);
        _mm256_storeu_ps(o + d + 16, a2), _mm256_storeu_ps(o + d + 24, a3);
    }
    for (; d + 8 <= D; d += 8) {
        __m256 a = _mm256_loadu_ps(o + d);
        for (int64_t u = 0; u < n; ++u) a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(p[u] * inv), L::load8(v + u * vs + d)));
        _mm256_storeu_ps(o + d, a);
    }
    for (; d < D; ++d) {
        float a = o[d];
        for (int64_t u = 0; u < n; ++u) a += (p[u] * inv) * L::at(v + u * vs + d);
        o[d] = a;
    }
}

template <class L>
__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl"))) void attn_accumulate_avx512(
    float* o, const float* p, float inv, const typename L::T* v, int64_t vs, int64_t n, int64_t D) {
    int64_t d = 0;
    for (; d + 64 <= D; d += 64) {  // 4 chains of adds
        __m512 a0 = _mm512_loadu_ps(o + d), a1 = _mm512_loadu_ps(o + d + 16), a2 = _mm512_loadu_ps(o + d + 32),
               a3 = _mm512_loadu_ps(o + d + 48);
        for (int64_t u = 0; u < n; ++u) {
            const __m512 pu = _mm512_set1_ps(p[u] * inv);
            const typename L::T* vu = v + u * vs + d;
            a0 = _mm512_add_ps(a0, _mm512_mul_ps(pu, L::load16(vu)));
            a1 = _mm512_add_ps(a1, _mm512_mul_ps(pu, L::load16(vu + 16)));
            a2 = _mm512_add_ps(a2, _mm512_mul_ps(pu, L::load16(vu + 32)));
            a3 = _mm512_add_ps(a3, _mm512_mul_ps(pu, L::load16(vu + 48)));
        }
        _mm512_storeu_ps(o + d, a0), _mm512_storeu_ps(o + d + 16, a1);
        _mm512_storeu_ps(o + d + 32, a2), _mm512_storeu_ps(o + d + 48, a3);
    }
    for (; d < D; d += 16) {  // masked tail chunks
        const __mmask16 m = lanes16(D - d);
        __m512 a = _mm512_maskz_loadu_ps(m, o + d);
        for (int64_t u = 0; u < n; ++u)
            a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_set1_ps(p[u] * inv), L::maskz_load16(m, v + u * vs + d)));
        _mm512_mask_storeu_ps(o + d, m, a);
    }
}

Isa attn_isa() {
    const Isa isa = active_isa();
    const CpuFeatures& f = cpu_features();
    if (isa >= Isa::avx512 && f.avx512f && f.avx512dq && f.avx512bw && f.avx512vl && f.f16c) return Isa::avx512;
    if (isa >= Isa::avx2 && f.avx2 && f.fma && f.f16c) return Isa::avx2;
    return Isa::ref;
}

template <class L>
void scores_any(float* out, const float* q, const typename L::T* k, int64_t ks, int64_t n, int64_t D, float scale) {
    switch (attn_isa()) {
        case Isa::ref: return scores_ref<L>(out, q, k, ks, n, D, scale);
        case Isa::avx2: return attn_scores_avx2<L>(out, q, k, ks, n, D, scale);
        default: return attn_scores_avx512<L>(out, q, k, ks, n, D, scale);
    }
}

template <class L>
void accumulate_any(float* o, const float* p, float inv, const typename L::T* v, int64_t vs, int64_t n, int64_t D) {
    switch (attn_isa()) {
        case Isa::ref: return accumulate_ref<L>(o, p, inv, v, vs, n, D);
        case Isa::avx2: return attn_accumulate_avx2<L>(o, p, inv, v, vs, n, D);
        default: return attn_accumulate_avx512<L>(o, p, inv, v, vs, n, D);
    }
}

}  // namespace

void attn_scores(float* out, const float* q, const float* k, int64_t ks, int64_t n, int64_t D, float scale) {
    scores_any<F32>(out, q, k, ks, n, D, scale);
}

void attn_accumulate(float* o, const float* p, float inv, const float* v, int64_t vs, int64_t n, int64_t D) {
    accumulate_any<F32>(o, p, inv, v, vs, n, D);
}

void attn_scores(float* out, const float* q, const void* k, DType kt, int64_t ks, int64_t n, int64_t D, float scale) {
    switch (kt) {
        case DType::f32: return scores_any<F32>(out, q, static_cast<const float*>(k), ks, n, D, scale);
        case DType::f16: return scores_any<F16>(out, q, static_cast<const uint16_t*>(k), ks, n, D, scale);
        case DType::bf16: return scores_any<BF16>(out, q, static_cast<const uint16_t*>(k), ks, n, D, scale);
        default: MOE_ASSERT(false && "KV cache type");
    }
}

void attn_accumulate(float* o, const float* p, float inv, const void* v, DType vt, int64_t vs, int64_t n, int64_t D) {
    switch (vt) {
        case DType::f32: return accumulate_any<F32>(o, p, inv, static_cast<const float*>(v), vs, n, D);
        case DType::f16: return accumulate_any<F16>(o, p, inv, static_cast<const uint16_t*>(v), vs, n, D);
        case DType::bf16: return accumulate_any<BF16>(o, p, inv, static_cast<const uint16_t*>(v), vs, n, D);
        default: MOE_ASSERT(false && "KV cache type");
    }
}

void attn_scores_ref(float* out, const float* q, const void* k, DType kt, int64_t ks, int64_t n, int64_t D, float scale) {
    switch (kt) {
        case DType::f32: return attn_scores_ref(out, q, static_cast<const float*>(k), ks, n, D, scale);
        case DType::f16: return scores_ref<F16>(out, q, static_cast<const uint16_t*>(k), ks, n, D, scale);
        case DType::bf16: return scores_ref<BF16>(out, q, static_cast<const uint16_t*>(k), ks, n, D, scale);
        default: MOE_ASSERT(false && "KV cache type");
    }
}

void attn_accumulate_ref(float* o, const float* p, float inv, const void* v, DType vt, int64_t vs, int64_t n, int64_t D) {
    switch (vt) {
        case DType::f32: return attn_accumulate_ref(o, p, inv, static_cast<const float*>(v), vs, n, D);
        case DType::f16: return accumulate_ref<F16>(o, p, inv, static_cast<const uint16_t*>(v), vs, n, D);
        case DType::bf16: return accumulate_ref<BF16>(o, p, inv, static_cast<const uint16_t*>(v), vs, n, D);
        default: MOE_ASSERT(false && "KV cache type");
    }
}

// KV element conversions: f16 and bf16 round to nearest even (F16C's vcvtps2ph with that rounding
// mode and the scalar fp32_to_fp16 agree on every value, NaN aside; bf16: kernels/bf16.h)
__attribute__((target("avx2,fma,f16c"))) static void f32_to_f16_f16c(uint16_t* dst, const float* src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

__attribute__((target("avx2,fma,f16c"))) static void f16_to_f32_f16c(float* dst, const uint16_t* src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

void kv_store(void* dst, DType t, const float* src, int64_t n) {
    switch (t) {
        case DType::f32: std::memcpy(dst, src, (size_t)n * sizeof(float)); return;
        case DType::f16:
            if (attn_isa() >= Isa::avx2) return f32_to_f16_f16c(static_cast<uint16_t*>(dst), src, n);
            for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = fp32_to_fp16(src[i]);
            return;
        case DType::bf16: return f32_to_bf16_n(static_cast<uint16_t*>(dst), src, n);
        default: MOE_ASSERT(false && "KV cache type");
    }
}

void kv_load(float* dst, DType t, const void* src, int64_t n) {
    switch (t) {
        case DType::f32: std::memcpy(dst, src, (size_t)n * sizeof(float)); return;
        case DType::f16:
            if (attn_isa() >= Isa::avx2) return f16_to_f32_f16c(dst, static_cast<const uint16_t*>(src), n);
            for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(static_cast<const uint16_t*>(src)[i]);
            return;
        case DType::bf16: return bf16_to_f32_n(dst, static_cast<const uint16_t*>(src), n);
        default: MOE_ASSERT(false && "KV cache type");
    }
}

}  // namespace moe::kernels
