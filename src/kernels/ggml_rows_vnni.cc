// Q8_0 / Q4_0 x Q8_0 decode rows with AVX-512 VNNI (ggml_rows_vnni.h). All float work is explicit
// intrinsics (FMAs where the single-row kernels have FMAs); fp-contract off as in ggml_quants_x86.cc.
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's _mm512_cvtepi32_ps (bug 105593)
#endif
#include "kernels/ggml_rows_vnni.h"

#include <immintrin.h>

#include "kernels/cpu.h"
#include "kernels/ggml_quants.h"

namespace moe::kernels::detail {

#define KFN __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

bool q8_0_rows_vnni_supported() {
    const CpuFeatures& f = cpu_features();
    return active_isa() >= Isa::avx512 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512_vnni &&
           f.f16c;
}

namespace {

// ggml_quants_kern.inc's final sum of 8 lanes (the single-row kernels' order)
KFN inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

KFN inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// -128 * (sum of w over each lane's 4 bytes): the accumulator's start, so that (x + 128) . w
// summed by vpdpbusd gives x . w
KFN inline __m512i offset_of(__m512i wv) {
    return _mm512_sub_epi32(_mm512_setzero_si512(),
                            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), wv));
}

// one block's 32 weights as signed bytes in value order: Q8_0 as stored; Q4_0 the low nibbles
// (values 0..15) then the high ones (16..31), minus 8 (ggml_quants_kern.inc's q4_0_bytes)
KFN inline __m256i block_bytes(const BlockQ8_0& b) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)); }
KFN inline __m256i block_bytes(const BlockQ4_0& b) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)), m4 = _mm_set1_epi8(0xF);
    return _mm256_sub_epi8(_mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4)),
                           _mm256_set1_epi8(8));
}

// Block = BlockQ8_0 or BlockQ4_0 (both against q8_0 activations): every lane's int32 is the exact
// sum of its 4 products w * x (w in [-127, 127] or [-8, 7]), as the single-row kernels' lanes are
template <class Block, int NR>
KFN void rows_t(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const uint8_t* w,
                int64_t row_stride, int64_t n0, int64_t o0, int64_t o1, bool accumulate) {
    const int64_t nb = in / 32, pairs = nb / 2, sp = (nb + 1) / 2;
    for (int64_t o = o0; o < o1; ++o) {
        const Block* wr = reinterpret_cast<const Block*>(w + o * row_stride);
        __m512 acc[NR];
        for (int j = 0; j < NR; ++j) acc[j] = _mm512_setzero_ps();
        for (int64_t p = 0; p < pairs; ++p) {
            // the stream 4 KB ahead: a pair is 68 (Q8_0) or 36 (Q4_0) bytes, at most two lines
            const char* pf = reinterpret_cast<const char*>(wr + 2 * p) + 4096;
            _mm_prefetch(pf, _MM_HINT_T0);
            _mm_prefetch(pf + 2 * sizeof(Block) - 1, _MM_HINT_T0);
            const Block& b0 = wr[2 * p];
            const Block& b1 = wr[2 * p + 1];
            const __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(block_bytes(b0)), block_bytes(b1), 1);
            const __m512i corr = offset_of(wv);
            const __m512 wsv =
                _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(h2f(b0.d))), _mm256_set1_ps(h2f(b1.d)), 1);
            for (int j = 0; j < NR; ++j) {
                const int64_t n = n0 + j;
                const __m512i is = _mm512_dpbusd_epi32(corr, _mm512_loadu_si512(qu + n * in + p * 64), wv);
                const __m512 sc = _mm512_mul_ps(wsv, _mm512_loadu_ps(s16 + (n * sp + p) * 16));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), sc, acc[j]);
            }
        }
        if (nb & 1) {  // the last block is even: the low half alone, as the single-row kernels add it
            const int64_t b = nb - 1;
            const __m512i wv = _mm512_zextsi256_si512(block_bytes(wr[b]));
            const __m512i corr = offset_of(wv);
            const __m512 wsv = _mm512_set1_ps(h2f(wr[b].d));
            for (int j = 0; j < NR; ++j) {
                const int64_t n = n0 + j;
                const __m512i xv =
                    _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qu + n * in + b * 32)));
                const __m512i is = _mm512_dpbusd_epi32(corr, xv, wv);
                const __m512 sc = _mm512_mul_ps(wsv, _mm512_loadu_ps(s16 + (n * sp + pairs) * 16));
                acc[j] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(is), sc, acc[j], 0x00ff);  // high lanes kept
            }
        }
        for (int j = 0; j < NR; ++j) {
            const float s = hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(acc[j]), _mm512_extractf32x8_ps(acc[j], 1)));
            float& d = y[(n0 + j) * ys + o];
            d = accumulate ? d + s : s;
        }
    }
}

}  // namespace

KFN void q8_0_rows_acts(const uint8_t* rows, int64_t row_bytes, int64_t N, int64_t in, uint8_t* qu, float* s16) {
    const int64_t nb = in / 32, sp = (nb + 1) / 2;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t n = 0; n < N; ++n) {
        const BlockQ8_0* a = reinterpret_cast<const BlockQ8_0*>(rows + n * row_bytes);
        for (int64_t b = 0; b < nb; ++b) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].qs));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(qu + n * in + b * 32), _mm256_xor_si256(v, flip));
            _mm256_storeu_ps(s16 + (n * sp + b / 2) * 16 + (b % 2) * 8, _mm256_set1_ps(h2f(a[b].d)));
        }
        if (nb & 1) _mm256_storeu_ps(s16 + (n * sp + nb / 2) * 16 + 8, _mm256_setzero_ps());
    }
}

template <class Block>
void rows_nr(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const uint8_t* wb,
             int64_t row_stride, int64_t n0, int nr, int64_t o0, int64_t o1, bool accumulate) {
    switch (nr) {
        case 8: return rows_t<Block, 8>(y, ys, qu, s16, in, wb, row_stride, n0, o0, o1, accumulate);
        case 7: return rows_t<Block, 7>(y, ys, qu, s16, in, wb, row_stride, n0, o0, o1, accumulate);
        case 6: return rows_t<Block, 6>(y, ys, qu, s16, in, wb, row_stride, n0, o0, o1, accumulate);
        case 5: return rows_t<Block, 5>(y, ys, qu, s16, in, wb, row_stride, n0, o0, o1, accumulate);
        case 4: return rows_t<Block, 4>(y, ys, qu, s16, in, wb, row_stride, n0, o0, o1, accumulate);
        case 3: return rows_t<Block, 3>(y, ys, qu, s16, in, wb, row_stride, n0, o0, o1, accumulate);
        case 2: return rows_t<Block, 2>(y, ys, qu, s16, in, wb, row_stride, n0, o0, o1, accumulate);
        default: return rows_t<Block, 1>(y, ys, qu, s16, in, wb, row_stride, n0, o0, o1, accumulate);
    }
}

void q8_0_rows_vnni(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const void* w,
                    int64_t row_stride, int64_t n0, int nr, int64_t o0, int64_t o1, bool accumulate) {
    rows_nr<BlockQ8_0>(y, ys, qu, s16, in, static_cast<const uint8_t*>(w), row_stride, n0, nr, o0, o1, accumulate);
}

void q4_0_rows_vnni(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const void* w,
                    int64_t row_stride, int64_t n0, int nr, int64_t o0, int64_t o1, bool accumulate) {
    rows_nr<BlockQ4_0>(y, ys, qu, s16, in, static_cast<const uint8_t*>(w), row_stride, n0, nr, o0, o1, accumulate);
}

#undef KFN

}  // namespace moe::kernels::detail
