// AVX-512 twins of the activation quantizers (quantize_row_q8_0 / quantize_row_q8_k), bit-identical
// to the scalar ones and to the AVX2 twins in ggml_quants_x86.cc: the same operations on the same
// operands, 16 values per instruction. Their time counts in every prefill product (the activations
// of each matrix product are quantized once per call): at 512 x 4096 the AVX2 q8_0 quantizer took
// 12% of a 1024 x 4096 product's CPU time (its fp16 scale through the scalar fp32_to_fp16, its
// horizontal max over 8 lanes), q8_k with its scalar per-16 sums 13%.
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's own AVX-512 intrinsics (bug 105593)
#endif
#include <immintrin.h>

#include <cstring>

#include "kernels/ggml_quants_simd.h"

namespace moe::kernels::detail {

#define KA __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))

// roundf (ties away from zero) as trunc + a step of +-1 where the exact remainder is >= 0.5, then
// the 16 int32 narrowed to 16 int8 (|q| <= 127: no saturation needed)
KA static inline __m128i round_away_i8(__m512 p) {
    const __m512 t = _mm512_roundscale_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(p, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 step = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(p), _mm512_set1_epi32((int)0x80000000u)),
                                                            _mm512_castps_si512(_mm512_set1_ps(1.f))));
    return _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, step)));
}

// quantize_row_q8_0: max|x| exact, d = amax / 127, x * (1 / d) one rounding, roundf; the fp16 scale
// by vcvtps2ph under round-to-nearest-even, what fp32_to_fp16 computes in software
KA void quantize_q8_0_avx512(const float* x, void* vy, int64_t n) {
    BlockQ8_0* y = static_cast<BlockQ8_0*>(vy);
    for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
        y[b].d = (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 0);
        const __m512 s = _mm512_set1_ps(id);
        const __m128i q0 = round_away_i8(_mm512_mul_ps(v0, s)), q1 = round_away_i8(_mm512_mul_ps(v1, s));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), _mm256_set_m128i(q1, q0));
    }
}

// quantize_row_q8_k: the first value of largest magnitude sets iscale = -127 / max, q = round to
// nearest even (vcvtps2dq under the default rounding mode) of iscale * x, capped at 127; the sums of
// 16 by vpsadbw on q ^ 0x80 (each 8-byte sum is 8 * 128 over the signed one)
KA void quantize_q8_k_avx512(const float* x, void* vy, int64_t n) {
    BlockQ8_K* y = static_cast<BlockQ8_K*>(vy);
    const __m512i cap = _mm512_set1_epi32(127);
    for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
        __m512 m = _mm512_setzero_ps();
        for (int k = 0; k < 16; ++k) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + 16 * k)));
        const float amax = _mm512_reduce_max_ps(m);
        if (amax == 0.f) {
            std::memset(&y[b], 0, sizeof(BlockQ8_K));
            continue;
        }
        const __m512 am = _mm512_set1_ps(amax);
        int first = 0;
        for (int k = 0; k < 16; ++k) {
            const __mmask16 e = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * k)), am, _CMP_EQ_OQ);
            if (e) {
                first = 16 * k + __builtin_ctz((unsigned)e);
                break;
            }
        }
        const float iscale = -127.f / x[first];
        const __m512 is = _mm512_set1_ps(iscale);
        for (int k = 0; k < 16; ++k) {
            const __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(is, _mm512_loadu_ps(x + 16 * k))), cap);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16 * k), _mm512_cvtepi32_epi8(q));
        }
        // 8-byte sums of q + 128 (vpsadbw), pairs of them added, minus 16 * 128
        const __m512i flip = _mm512_set1_epi8((char)0x80);
        __m512i s[4];
        for (int k = 0; k < 4; ++k) {
            const __m512i v = _mm512_loadu_si512(y[b].qs + 64 * k);
            s[k] = _mm512_sad_epu8(_mm512_xor_si512(v, flip), _mm512_setzero_si512());  // 8 qwords
            s[k] = _mm512_add_epi64(s[k], _mm512_bslli_epi128(s[k], 8));
        }
        // s[k] qword 2 i + 1 now holds the sum of 16 values i of the 64 (qword 2 i: of 8)
        alignas(64) int64_t q[4][8];
        for (int k = 0; k < 4; ++k) _mm512_store_si512(q[k], s[k]);
        for (int g = 0; g < 16; ++g) y[b].bsums[g] = (int16_t)(q[g / 4][2 * (g % 4) + 1] - 16 * 128);
        y[b].d = 1 / iscale;
    }
}

#undef KA

}  // namespace moe::kernels::detail
