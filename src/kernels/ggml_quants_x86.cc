// x86 SIMD kernels of the ggml block formats (see ggml_quants.h for why they are hand-written):
// the activation quantizers (AVX2, bit-identical to the scalar ones) and the row dot products,
// compiled twice from ggml_quants_kern.inc: AVX2 (vpmaddubsw + vpmaddwd) and AVX-512 VL + VNNI
// (vpdpbusd / vpdpwssd at 256-bit width). Picked at run time by ggml_quants.cc.
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "kernels/ggml_quants_simd.h"

namespace moe::kernels::detail {

namespace avx2 {
#define KFN __attribute__((target("avx2,fma,f16c")))
constexpr bool kVnni = false;
#include "kernels/ggml_quants_kern.inc"
#undef KFN
}  // namespace avx2

namespace avx512 {
#define KFN __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
constexpr bool kVnni = true;
#include "kernels/ggml_quants_kern.inc"
#undef KFN
}  // namespace avx512

RowDots row_dots_avx2(GType w) { return avx2::row_dots(w); }
RowDots row_dots_avx512vnni(GType w) { return avx512::row_dots(w); }

#define KFN __attribute__((target("avx2,fma,f16c")))

KFN static inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// 4 x 8 int32 (each in [-128, 127]) to 32 int8 in order
KFN static inline __m256i pack32(const __m256i (&i32)[4]) {
    const __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]), p16b = _mm256_packs_epi32(i32[2], i32[3]);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// quantize_row_q8_0's operations in the same order: max|x| exact, d = amax / 127, x * (1 / d) one
// rounding, then roundf (ties away from zero) as trunc + a step where the exact remainder is >= 0.5
KFN void quantize_q8_0_avx2(const float* x, void* vy, int64_t n) {
    BlockQ8_0* y = static_cast<BlockQ8_0*>(vy);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 signmask = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f);
    for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
        __m256 v[4];
        for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(x + 8 * k);
        const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
                                       _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
        const float d = hmax_ps(m) / 127.f, id = d != 0.f ? 1.f / d : 0.f;
        y[b].d = fp32_to_fp16(d);
        __m256i q[4];
        for (int k = 0; k < 4; ++k) {
            const __m256 p = _mm256_mul_ps(v[k], _mm256_set1_ps(id));
            const __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __m256 up = _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(p, t), absmask), half, _CMP_GE_OQ);
            const __m256 step = _mm256_and_ps(up, _mm256_or_ps(_mm256_and_ps(p, signmask), one));
            q[k] = _mm256_cvttps_epi32(_mm256_add_ps(t, step));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), pack32(q));
    }
}

// quantize_row_q8_k's operations: the first value of largest magnitude sets iscale = -127 / max,
// q = round-to-nearest-even(iscale * x) capped at 127 (vcvtps2dq under the default rounding mode)
KFN void quantize_q8_k_avx2(const float* x, void* vy, int64_t n) {
    BlockQ8_K* y = static_cast<BlockQ8_K*>(vy);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i cap = _mm256_set1_epi32(127);
    for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 32; ++k) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + 8 * k), absmask));
        const float amax = hmax_ps(m);
        if (amax == 0.f) {
            std::memset(&y[b], 0, sizeof(BlockQ8_K));
            continue;
        }
        const __m256 am = _mm256_set1_ps(amax);
        int first = 0;
        for (int k = 0; k < 32; ++k) {
            const int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), absmask), am, _CMP_EQ_OQ));
            if (bits) {
                first = 8 * k + __builtin_ctz((unsigned)bits);
                break;
            }
        }
        const float iscale = -127.f / x[first];
        const __m256 is = _mm256_set1_ps(iscale);
        for (int k = 0; k < 8; ++k) {
            __m256i q[4];
            for (int i = 0; i < 4; ++i)
                q[i] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(is, _mm256_loadu_ps(x + 32 * k + 8 * i))), cap);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs + 32 * k), pack32(q));
        }
        for (int g = 0; g < 16; ++g) {
            int s = 0;
            for (int j = 0; j < 16; ++j) s += y[b].qs[16 * g + j];
            y[b].bsums[g] = (int16_t)s;
        }
        y[b].d = 1 / iscale;
    }
}

#undef KFN

}  // namespace moe::kernels::detail
