// x86 SIMD kernels of the ggml block formats (see ggml_quants.h for why they are hand-written):
// the activation quantizers (AVX2, bit-identical to the scalar ones) and the row dot products,
// compiled twice from ggml_quants_kern.inc: AVX2 (vpmaddubsw + vpmaddwd) and AVX-512 VL + VNNI
// (vpdpbusd / vpdpwssd at 256-bit width). Picked at run time by ggml_quants.cc.
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
// GCC 12 warns inside its own _mm512_cvtepi32_ps (the _mm512_undefined_ps it starts from; bug 105593)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kernels/avx2_inline.h"
#include "kernels/ggml_quants_simd.h"
#include "kernels/q6_k_bits.h"

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
RowDotsW row_dots_w_avx2(GType w, int* rows) { return avx2::row_dots_w(w, rows); }
RowDotsW row_dots_w_avx512vnni(GType w, int* rows) { return avx512::row_dots_w(w, rows); }

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

// ---------------------------------------------------------------- prefill tiles (AVX-512 VNNI)
//
// For many activation rows the weight rows are unpacked once into a tile of 32 rows in vpdpbusd's
// layout: per 32-value sub-block b, for each 4-value group k, the 4 unsigned bytes of each of the
// 32 rows side by side (two 64-byte registers), with a float scale ws and offset wm per (row, b)
// such that w = ws * u - wm (q8_0: u = q + 128, wm = 128 ws; q4_0: u = nibble, wm = 8 ws;
// q4_k / q5_k: u = q, ws = d sc_j, wm = dmin m_j). One vpdpbusd then multiplies 4 activation bytes
// (broadcast, signed) with 4 bytes of 16 rows; per sub-block and activation row the int32 sums are
// converted once and scaled by ws * xs, and wm * (xs * sum x) is taken off:
//   y[n, r] = sum_b xs[n, b] (ws[b, r] isum[n, b, r] - wm[b, r] sum_{i in b} x[n, i]).

namespace {

#define KT __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
// The weight tiles' unpacking uses AVX2 alone: the VNNI and AMX kernels inline it, and AVX2 hosts'
// prefill tiles (prefill_tiles_avx2 below) unpack with it too.
#define KU __attribute__((target("avx2,fma,f16c")))

constexpr int kTileRows = 32;
constexpr int64_t kTileSubBytes = 8 * kTileRows * 4;  // one sub-block of a tile: 1024 bytes
static_assert(kTiledBlockBytes == kTileSubBytes + 2 * kTileRows);  // + 32 fp16 scales
static_assert(kTiledBlockBytesI8 == kTileSubBytes + 4 * kTileRows);  // + 32 fp32 scales

KU inline float h2f_t(uint16_t h) { return _cvtsh_ss(h); }

// the 32 unsigned values u of sub-block b of one weight row, with ws and wm
template <GType T>
KU inline __m256i unpack_sub(const uint8_t* row, int64_t b, float* s, float* m) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    if constexpr (T == GType::q8_0) {
        const BlockQ8_0* blk = reinterpret_cast<const BlockQ8_0*>(row) + b;
        *s = h2f_t(blk->d), *m = 128.f * *s;
        return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs)), _mm256_set1_epi8((char)0x80));
    } else if constexpr (T == GType::q4_0) {
        const BlockQ4_0* blk = reinterpret_cast<const BlockQ4_0*>(row) + b;
        *s = h2f_t(blk->d), *m = 8.f * *s;
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->qs));
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), _mm256_castsi256_si128(m4)),
                                _mm_and_si128(q, _mm256_castsi256_si128(m4)));
    } else {  // q4_k, q5_k: sub-block j of super-block b / 8
        using Block = std::conditional_t<T == GType::q5_k, BlockQ5_K, BlockQ4_K>;
        const Block& blk = reinterpret_cast<const Block*>(row)[b / 8];
        const int j = (int)(b % 8), c = j / 2;
        const uint8_t* scales = blk.scales;
        uint8_t sc, mn;
        if (j < 4) {
            sc = scales[j] & 63, mn = scales[j + 4] & 63;
        } else {
            sc = (uint8_t)((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
            mn = (uint8_t)((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
        }
        *s = h2f_t(blk.d) * (float)sc, *m = h2f_t(blk.dmin) * (float)mn;
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * c));
        __m256i u = (j & 1) ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
        if constexpr (T == GType::q5_k) {
            const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh));
            u = _mm256_or_si256(u, _mm256_slli_epi16(
                                       _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(j)), _mm256_set1_epi8(1)), 4));
        }
        return u;
    }
}


// rows [0, nr) of the tile (the rest zero): 8 rows at a time, their sub-block vectors transposed
// into the 4-value groups' layout
// The next 8 rows' bytes (the next tile's first 8 after the last group, past nr or the matrix
// alike: a prefetch never faults) are prefetched into L2 spread over the current group's blocks:
// 8 rows side by side are streams the hardware prefetchers do not follow, and a decode step that
// takes the tiles (batch invariant, N >= 2 on VNNI hosts) reads its weights from DRAM here.
// I8 (T = q8_0): moe's int8 rows (32 bytes a block, row_stride = in) with their fp32 scales at
// i8s[r * nsb + b]: u = q + 128, ws the scale, wm = 128 ws, as a Q8_0 block's.
template <GType T, bool I8 = false>
KU void unpack_tile_t(const uint8_t* w, int64_t row_stride, int nr, int64_t nsb, uint8_t* wq, float* ws, float* wm,
                      const float* i8s = nullptr) {
    constexpr int kAheadRows = 16;
    const int64_t span = 8 * row_stride;
    for (int r0 = 0; r0 < kTileRows; r0 += 8) {
        const char* pf = reinterpret_cast<const char*>(w + (r0 + kAheadRows) * row_stride);
        int64_t pfo = 0;
        if constexpr (I8)  // the scales of the rows 16 ahead too (a separate array)
            for (int64_t i = 0; i < 8 * nsb * (int64_t)sizeof(float); i += 64)
                _mm_prefetch(reinterpret_cast<const char*>(i8s + (r0 + kAheadRows) * nsb) + i, _MM_HINT_T1);
        for (int64_t b = 0; b < nsb; ++b) {
            for (; pfo < span * (b + 1) / nsb; pfo += 64) _mm_prefetch(pf + pfo, _MM_HINT_T1);
            __m256i v[8];
            for (int i = 0; i < 8; ++i) {
                const int r = r0 + i;
                float s = 0.f, m = 0.f;
                if constexpr (I8) {
                    if (r < nr) s = i8s[r * nsb + b], m = 128.f * s;
                    v[i] = r < nr ? _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * row_stride + 32 * b)),
                                                     _mm256_set1_epi8((char)0x80))
                                  : _mm256_setzero_si256();
                } else {
                    v[i] = r < nr ? unpack_sub<T>(w + r * row_stride, b, &s, &m) : _mm256_setzero_si256();
                }
                ws[b * kTileRows + r] = s, wm[b * kTileRows + r] = m;
            }
            transpose_dwords8(v);
            uint8_t* dst = wq + b * kTileSubBytes + 4 * r0;
            for (int k = 0; k < 8; ++k) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k * 4 * kTileRows), v[k]);
        }
    }
}

KU void unpack_tile(GType t, const uint8_t* w, int64_t row_stride, int nr, int64_t nsb, uint8_t* wq, float* ws, float* wm) {
    switch (t) {
        case GType::q8_0: return unpack_tile_t<GType::q8_0>(w, row_stride, nr, nsb, wq, ws, wm);
        case GType::q4_0: return unpack_tile_t<GType::q4_0>(w, row_stride, nr, nsb, wq, ws, wm);
        case GType::q4_k: return unpack_tile_t<GType::q4_k>(w, row_stride, nr, nsb, wq, ws, wm);
        default: return unpack_tile_t<GType::q5_k>(w, row_stride, nr, nsb, wq, ws, wm);
    }
}

// Q6_K rows (rows [nr, 32) zero) in the same layout with 16-value groups: the values u = q (0..63,
// w = d sc_G (u - 32)) of 32-value chunk b at wq + b * 1024 as above, so group G (16 values) is the
// 4-byte words k = 0..3 at wq + G * 512; ws[G * 32 + r] = d sc_G (the offset 32 is carried by the
// activations in integers: pack_tile_q6_offsets). kernels/amx_q8.cc's unpack_q6_k reads the bits
// the same way (it stores u - 32).
KU void unpack_tile_q6_k(const uint8_t* w, int64_t row_stride, int nr, int64_t nsuper, uint8_t* wq, float* ws) {
    for (int r0 = 0; r0 < kTileRows; r0 += 8)
        for (int64_t s = 0; s < nsuper; ++s)
            for (int h = 0; h < 2; ++h) {
                __m256i q[4][8];
                for (int i = 0; i < 8; ++i) {
                    const int r = r0 + i;
                    if (r >= nr) {
                        for (int k = 0; k < 4; ++k) q[k][i] = _mm256_setzero_si256();
                        for (int g = 0; g < 8; ++g) ws[(s * 16 + 8 * h + g) * kTileRows + r] = 0.f;
                        continue;
                    }
                    const BlockQ6_K& blk = reinterpret_cast<const BlockQ6_K*>(w + r * row_stride)[s];
                    __m256i v[4];
                    q6_k_half_values(blk, h, v);
                    for (int k = 0; k < 4; ++k) q[k][i] = v[k];
                    const float d = h2f_t(blk.d);
                    for (int g = 0; g < 8; ++g) ws[(s * 16 + 8 * h + g) * kTileRows + r] = d * (float)blk.scales[8 * h + g];
                }
                for (int k = 0; k < 4; ++k) {  // chunk 8 s + 4 h + k
                    transpose_dwords8(q[k]);
                    uint8_t* dst = wq + (s * 8 + 4 * h + k) * kTileSubBytes + 4 * r0;
                    for (int kk = 0; kk < 8; ++kk)
                        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + kk * 4 * kTileRows), q[k][kk]);
                }
            }
}

// acc (4 activation rows x 32 tile rows) += sub-blocks [b0, b1) of the tile times one packed group
// of 4 activation rows (xp, xs, am, xo at the group's sub-block 0). SB (q8_k activations: one scale
// per 256 values): the sub-blocks' int32 sums are scaled by ws into t and t by the activation scale
// once per super-block (one multiply fewer per sub-block). IO (q8_0 / q4_0 weights): the offset
// term starts the int32 sums (-c sum x, broadcast from memory) instead of an fnmadd by wm.
template <bool SB, bool IO>
KT void tile_kernel(const uint8_t* wq, const float* ws, const float* wm, int64_t b0, int64_t b1, const uint8_t* xp,
                    const float* xs, const float* am, const int32_t* xo, __m512 (&acc)[4][2]) {
    constexpr int NR = 4;
    __m512 t[NR][2];
    for (int j = 0; j < NR; ++j) t[j][0] = t[j][1] = _mm512_setzero_ps();
    for (int64_t b = b0; b < b1; ++b) {
        __m512i is[NR][2];
        for (int j = 0; j < NR; ++j) {
            if constexpr (IO) is[j][0] = is[j][1] = _mm512_set1_epi32(xo[4 * b + j]);
            else is[j][0] = is[j][1] = _mm512_setzero_si512();
        }
        const uint8_t* wb = wq + b * kTileSubBytes;
        const int32_t* xb = reinterpret_cast<const int32_t*>(xp + b * 128);
        // the activations 8 sub-blocks ahead (past the group's end: the next group's), into L1
        _mm_prefetch(reinterpret_cast<const char*>(xb) + 1024, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(xb) + 1088, _MM_HINT_T0);
        for (int k = 0; k < 8; ++k) {
            const __m512i w0 = _mm512_load_si512(wb + 128 * k), w1 = _mm512_load_si512(wb + 128 * k + 64);
            for (int j = 0; j < NR; ++j) {
                const __m512i x = _mm512_set1_epi32(xb[4 * k + j]);
                is[j][0] = _mm512_dpbusd_epi32(is[j][0], w0, x);
                is[j][1] = _mm512_dpbusd_epi32(is[j][1], w1, x);
            }
        }
        const __m512 s0 = _mm512_load_ps(ws + b * kTileRows), s1 = _mm512_load_ps(ws + b * kTileRows + 16);
        for (int j = 0; j < NR; ++j) {
            if constexpr (!IO) {
                const __m512 mx = _mm512_set1_ps(am[4 * b + j]);
                acc[j][0] = _mm512_fnmadd_ps(_mm512_load_ps(wm + b * kTileRows), mx, acc[j][0]);
                acc[j][1] = _mm512_fnmadd_ps(_mm512_load_ps(wm + b * kTileRows + 16), mx, acc[j][1]);
            }
            if constexpr (SB) {
                t[j][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][0]), s0, t[j][0]);
                t[j][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][1]), s1, t[j][1]);
                if (b % 8 == 7 || b + 1 == b1) {
                    const __m512 sx = _mm512_set1_ps(xs[4 * b + j]);
                    acc[j][0] = _mm512_fmadd_ps(t[j][0], sx, acc[j][0]);
                    acc[j][1] = _mm512_fmadd_ps(t[j][1], sx, acc[j][1]);
                    t[j][0] = t[j][1] = _mm512_setzero_ps();
                }
            } else {
                const __m512 sx = _mm512_set1_ps(xs[4 * b + j]);
                acc[j][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][0]), _mm512_mul_ps(s0, sx), acc[j][0]);
                acc[j][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][1]), _mm512_mul_ps(s1, sx), acc[j][1]);
            }
        }
    }
}

// Q6_K: acc (4 activation rows x 32 tile rows) += the tile's nG 16-value groups times one packed
// group of 4 q8_k activation rows. Per group G the int32 sums start at -32 * (sum of its 16 x),
// xo16[4 G + j] (so they are the exact sums of (u - 32) x), take 4 vpdpbusd per 16 tile rows, and
// t += cvt(sums) * ws; at a super-block's end (16 groups) acc += t * xs. The AMX path's Q6_K
// arithmetic (amx_q8.cc, Mode::q6) on the same operands in the same order.
KT void tile_kernel_q6(const uint8_t* wq, const float* ws, int64_t nG, const uint8_t* xp, const float* xs,
                       const int32_t* xo16, __m512 (&acc)[4][2]) {
    constexpr int NR = 4;
    __m512 t[NR][2];
    for (int j = 0; j < NR; ++j) t[j][0] = t[j][1] = _mm512_setzero_ps();
    for (int64_t G = 0; G < nG; ++G) {
        __m512i is[NR][2];
        for (int j = 0; j < NR; ++j) is[j][0] = is[j][1] = _mm512_set1_epi32(xo16[4 * G + j]);
        const uint8_t* wb = wq + G * (kTileSubBytes / 2);
        const int32_t* xb = reinterpret_cast<const int32_t*>(xp + G * 64);
        _mm_prefetch(reinterpret_cast<const char*>(xb) + 1024, _MM_HINT_T0);
        for (int k = 0; k < 4; ++k) {
            const __m512i w0 = _mm512_load_si512(wb + 128 * k), w1 = _mm512_load_si512(wb + 128 * k + 64);
            for (int j = 0; j < NR; ++j) {
                const __m512i x = _mm512_set1_epi32(xb[4 * k + j]);
                is[j][0] = _mm512_dpbusd_epi32(is[j][0], w0, x);
                is[j][1] = _mm512_dpbusd_epi32(is[j][1], w1, x);
            }
        }
        const __m512 s0 = _mm512_load_ps(ws + G * kTileRows), s1 = _mm512_load_ps(ws + G * kTileRows + 16);
        for (int j = 0; j < NR; ++j) {
            t[j][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][0]), s0, t[j][0]);
            t[j][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][1]), s1, t[j][1]);
            if (G % 16 == 15 || G + 1 == nG) {
                const __m512 sx = _mm512_set1_ps(xs[4 * (G / 2) + j]);  // xs per 32-value chunk
                acc[j][0] = _mm512_fmadd_ps(t[j][0], sx, acc[j][0]);
                acc[j][1] = _mm512_fmadd_ps(t[j][1], sx, acc[j][1]);
                t[j][0] = t[j][1] = _mm512_setzero_ps();
            }
        }
    }
}

// activation rows [4g, 4g + nr) (nr <= 4; the group's other rows are zero padding) x the tile
KT void tile_rows(float* y, int64_t ys, const TileActs& xa, int64_t g, int nr, int nr_out, const uint8_t* wq,
                  const float* ws, const float* wm, int64_t nsb, bool accumulate) {
    const uint8_t* xp = xa.xp + g * nsb * 128;
    const float* xs = xa.xs + g * nsb * 4;
    const float* am = xa.am + g * nsb * 4;
    const int32_t* xo = xa.xo ? xa.xo + g * nsb * 4 : nullptr;
    const __mmask16 k0 = (__mmask16)(nr_out >= 16 ? 0xffff : (1u << nr_out) - 1);
    const __mmask16 k1 = (__mmask16)(nr_out >= 32 ? 0xffff : nr_out <= 16 ? 0 : (1u << (nr_out - 16)) - 1);
    float* y0 = y + 4 * g * ys;
    // all nsb sub-blocks in one pass, the accumulators in registers throughout (it was passes of 16
    // sub-blocks with the sums stored to y and loaded back in between: a masked store does not
    // forward to the masked load after it, so each pass waited for its stores to reach L1)
    __m512 acc[4][2];
    for (int j = 0; j < 4; ++j) {
        float* yr = y0 + j * ys;
        const bool load = j < nr && accumulate;
        acc[j][0] = load ? _mm512_maskz_loadu_ps(k0, yr) : _mm512_setzero_ps();
        acc[j][1] = load ? _mm512_maskz_loadu_ps(k1, yr + 16) : _mm512_setzero_ps();
    }
    if (xa.xo16) tile_kernel_q6(wq, ws, 2 * nsb, xp, xs, xa.xo16 + g * nsb * 8, acc);
    else if (xa.sb) tile_kernel<true, false>(wq, ws, wm, 0, nsb, xp, xs, am, xo, acc);
    else if (xo) tile_kernel<false, true>(wq, ws, wm, 0, nsb, xp, xs, am, xo, acc);
    else tile_kernel<false, false>(wq, ws, wm, 0, nsb, xp, xs, am, xo, acc);
    for (int j = 0; j < nr; ++j) {
        float* yr = y0 + j * ys;
        _mm512_mask_storeu_ps(yr, k0, acc[j][0]);
        _mm512_mask_storeu_ps(yr + 16, k1, acc[j][1]);
    }
}

// ---- Q8_0 weights repacked once into the tiles' layout (q8_0_repack_tiled in ggml_quants.h): per
// tile of 32 rows and sub-block b, kTiledBlockBytes at tile + b * kTiledBlockBytes: the 1024 bytes
// of u = q + 128 as unpack_tile_t lays them out, then the 32 rows' fp16 scales. One pass of
// NR <= 4 activation rows over a tile: the arithmetic of tile_kernel<false, true> (the block
// order), with ws widened from fp16 (exact) instead of loaded as fp32.
// pf (the first pass over a tile): the bytes kTiledAhead further on (this tile's later blocks, then
// the next tile's: a range of tiles is one run of memory) asked into L2 as each block is read. The
// hardware prefetchers alone left one activation row at 11-15 GB/s from DRAM on Zen 4, against
// 17-20 with this (bench/decode_rows --mats 64 --repack on; 8 and 16 KB ahead about the same, L1
// and 4 KB slower).
constexpr int64_t kTiledAhead = 12 * 1024;
// K: 0 Q8_0 (kTiledBlockBytes a block: u, 32 fp16 scales), 1 moe's int8 (kTiledBlockBytesI8: u, 32
// fp32 scales), 3 Q4_0 (kTiledBlockBytesQ4_0: 512 bytes of nibbles, the low ones the 4-value groups
// 0-3 and the high ones 4-7 of a row's block, then 32 fp16 scales; its offset 8 is in xo)
template <int NR, int K>
KT void tiled_kernel(const uint8_t* tile, int64_t nsb, const uint8_t* xp, const float* xs, const int32_t* xo,
                     __m512 (&acc)[4][2], bool pf) {
    constexpr int64_t BB = K == 1 ? kTiledBlockBytesI8 : K == 3 ? kTiledBlockBytesQ4_0 : kTiledBlockBytes;
    constexpr int64_t SO = K == 3 ? 512 : 1024;  // the scales' offset in a block
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int64_t b = 0; b < nsb; ++b) {
        const uint8_t* wb = tile + b * BB;
        if (pf)
            for (int i = 0; i < BB / 64; ++i)
                _mm_prefetch(reinterpret_cast<const char*>(wb) + kTiledAhead + 64 * i, _MM_HINT_T1);
        __m512i is[NR][2];
        for (int j = 0; j < NR; ++j) is[j][0] = is[j][1] = _mm512_set1_epi32(xo[4 * b + j]);
        const int32_t* xb = reinterpret_cast<const int32_t*>(xp + b * 128);
        _mm_prefetch(reinterpret_cast<const char*>(xb) + 1024, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(xb) + 1088, _MM_HINT_T0);
        for (int k = 0; k < 8; ++k) {
            __m512i w0, w1;
            if constexpr (K == 3) {
                w0 = _mm512_loadu_si512(wb + 128 * (k % 4)), w1 = _mm512_loadu_si512(wb + 128 * (k % 4) + 64);
                if (k >= 4) w0 = _mm512_srli_epi16(w0, 4), w1 = _mm512_srli_epi16(w1, 4);
                w0 = _mm512_and_si512(w0, m4), w1 = _mm512_and_si512(w1, m4);
            } else {
                w0 = _mm512_loadu_si512(wb + 128 * k), w1 = _mm512_loadu_si512(wb + 128 * k + 64);
            }
            for (int j = 0; j < NR; ++j) {
                const __m512i x = _mm512_set1_epi32(xb[4 * k + j]);
                is[j][0] = _mm512_dpbusd_epi32(is[j][0], w0, x);
                is[j][1] = _mm512_dpbusd_epi32(is[j][1], w1, x);
            }
        }
        __m512 s0, s1;
        if constexpr (K == 1) {
            s0 = _mm512_loadu_ps(wb + 1024), s1 = _mm512_loadu_ps(wb + 1088);
        } else {
            s0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + SO)));
            s1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + SO + 32)));
        }
        for (int j = 0; j < NR; ++j) {
            const __m512 sx = _mm512_set1_ps(xs[4 * b + j]);
            acc[j][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][0]), _mm512_mul_ps(s0, sx), acc[j][0]);
            acc[j][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][1]), _mm512_mul_ps(s1, sx), acc[j][1]);
        }
    }
}

// 16 bytes as 16 floats (the decoded 6-bit scales of 16 rows)
KT inline __m512 bytes16_ps(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// Q4_K repacked (kTiledSuperBytesQ4K a super-block): tile_kernel<true, false>'s arithmetic on the
// VNNI tiles of the rows as stored, sub-block by sub-block, with ws = d sc and wm = dmin m made here
// (the same fp32 products as unpack_sub's) and u the low or high nibbles of one 64-byte load.
template <int NR>
KT void tiled_kernel_q4k(const uint8_t* tile, int64_t nsuper, const uint8_t* xp, const float* xs, const float* am,
                         __m512 (&acc)[4][2], bool pf) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int64_t s = 0; s < nsuper; ++s) {
        const uint8_t* sb = tile + s * kTiledSuperBytesQ4K;
        __m512 t[NR][2];
        for (int j = 0; j < NR; ++j) t[j][0] = t[j][1] = _mm512_setzero_ps();
        for (int j8 = 0; j8 < 8; ++j8) {
            const int c = j8 / 2, h = j8 % 2;
            const int64_t b = 8 * s + j8;
            if (pf && h == 0)
                for (int i = 0; i < 19; ++i)
                    _mm_prefetch(reinterpret_cast<const char*>(sb) + kTiledAhead + c * 1184 + 64 * i, _MM_HINT_T1);
            __m512i is[NR][2];
            for (int j = 0; j < NR; ++j) is[j][0] = is[j][1] = _mm512_setzero_si512();
            const int32_t* xb = reinterpret_cast<const int32_t*>(xp + b * 128);
            _mm_prefetch(reinterpret_cast<const char*>(xb) + 1024, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(xb) + 1088, _MM_HINT_T0);
            const uint8_t* wc = sb + c * 1024;
            for (int k = 0; k < 8; ++k) {
                __m512i u0 = _mm512_loadu_si512(wc + 128 * k), u1 = _mm512_loadu_si512(wc + 128 * k + 64);
                if (h) u0 = _mm512_srli_epi16(u0, 4), u1 = _mm512_srli_epi16(u1, 4);
                u0 = _mm512_and_si512(u0, m4), u1 = _mm512_and_si512(u1, m4);
                for (int j = 0; j < NR; ++j) {
                    const __m512i x = _mm512_set1_epi32(xb[4 * k + j]);
                    is[j][0] = _mm512_dpbusd_epi32(is[j][0], u0, x);
                    is[j][1] = _mm512_dpbusd_epi32(is[j][1], u1, x);
                }
            }
            const __m512 d0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 4096)));
            const __m512 d1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 4128)));
            const __m512 n0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 4160)));
            const __m512 n1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 4192)));
            const __m512 ws0 = _mm512_mul_ps(d0, bytes16_ps(sb + 4224 + 32 * j8)), ws1 = _mm512_mul_ps(d1, bytes16_ps(sb + 4240 + 32 * j8));
            const __m512 wm0 = _mm512_mul_ps(n0, bytes16_ps(sb + 4480 + 32 * j8)), wm1 = _mm512_mul_ps(n1, bytes16_ps(sb + 4496 + 32 * j8));
            for (int j = 0; j < NR; ++j) {
                const __m512 mx = _mm512_set1_ps(am[4 * b + j]);
                acc[j][0] = _mm512_fnmadd_ps(wm0, mx, acc[j][0]);
                acc[j][1] = _mm512_fnmadd_ps(wm1, mx, acc[j][1]);
                t[j][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][0]), ws0, t[j][0]);
                t[j][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[j][1]), ws1, t[j][1]);
            }
        }
        for (int j = 0; j < NR; ++j) {
            const __m512 sx = _mm512_set1_ps(xs[4 * (8 * s + 7) + j]);
            acc[j][0] = _mm512_fmadd_ps(t[j][0], sx, acc[j][0]);
            acc[j][1] = _mm512_fmadd_ps(t[j][1], sx, acc[j][1]);
        }
    }
}

// y rows [o0, o1) (tiles cut by the range computed whole, stored in part) of every group of 4.
// K: 0 Q8_0, 1 moe's int8, 2 Q4_K, 3 Q4_0
template <int K>
KT void tiled_rows(float* y, int64_t ys, const TileActs& xa, const uint8_t* tiled, int64_t N, int64_t in, int64_t o0,
                   int64_t o1, bool accumulate) {
    const int64_t nsb = in / 32;
    const int64_t tile_bytes = K == 2   ? in / 256 * kTiledSuperBytesQ4K
                               : K == 1 ? nsb * kTiledBlockBytesI8
                               : K == 3 ? nsb * kTiledBlockBytesQ4_0
                                        : nsb * kTiledBlockBytes;
    for (int64_t t = o0 / kTileRows; t * kTileRows < o1; ++t) {
        const int64_t base = t * kTileRows;
        const int lo = (int)(std::max(o0, base) - base), hi = (int)(std::min(o1, base + kTileRows) - base);
        const uint32_t bits = (hi >= 32 ? 0xffffffffu : (1u << hi) - 1) & ~((1u << lo) - 1);
        const __mmask16 k0 = (__mmask16)(bits & 0xffff), k1 = (__mmask16)(bits >> 16);
        const uint8_t* tile = tiled + t * tile_bytes;
        for (int64_t g = 0; 4 * g < N; ++g) {
            const int nr = (int)std::min<int64_t>(4, N - 4 * g);
            float* y0 = y + 4 * g * ys + base;
            __m512 acc[4][2];
            for (int j = 0; j < 4; ++j) {
                const bool load = j < nr && accumulate;
                acc[j][0] = load ? _mm512_maskz_loadu_ps(k0, y0 + j * ys) : _mm512_setzero_ps();
                acc[j][1] = load ? _mm512_maskz_loadu_ps(k1, y0 + j * ys + 16) : _mm512_setzero_ps();
            }
            const uint8_t* xp = xa.xp + g * nsb * 128;
            const float* xs = xa.xs + g * nsb * 4;
            if constexpr (K == 2) {
                const float* am = xa.am + g * nsb * 4;
                switch (nr) {
                    case 1: tiled_kernel_q4k<1>(tile, in / 256, xp, xs, am, acc, g == 0); break;
                    case 2: tiled_kernel_q4k<2>(tile, in / 256, xp, xs, am, acc, g == 0); break;
                    case 3: tiled_kernel_q4k<3>(tile, in / 256, xp, xs, am, acc, g == 0); break;
                    default: tiled_kernel_q4k<4>(tile, in / 256, xp, xs, am, acc, g == 0); break;
                }
            } else {
                const int32_t* xo = xa.xo + g * nsb * 4;
                switch (nr) {
                    case 1: tiled_kernel<1, K>(tile, nsb, xp, xs, xo, acc, g == 0); break;
                    case 2: tiled_kernel<2, K>(tile, nsb, xp, xs, xo, acc, g == 0); break;
                    case 3: tiled_kernel<3, K>(tile, nsb, xp, xs, xo, acc, g == 0); break;
                    default: tiled_kernel<4, K>(tile, nsb, xp, xs, xo, acc, g == 0); break;
                }
            }
            for (int j = 0; j < nr; ++j) {
                _mm512_mask_storeu_ps(y0 + j * ys, k0, acc[j][0]);
                _mm512_mask_storeu_ps(y0 + j * ys + 16, k1, acc[j][1]);
            }
        }
    }
}

#undef KT

}  // namespace

void unpack_tile_vnni(GType t, const uint8_t* rows, int64_t row_stride, int nr, int64_t nsb, uint8_t* wq, float* ws,
                      float* wm) {
    unpack_tile(t, rows, row_stride, nr, nsb, wq, ws, wm);
}

bool tiles_supported(GType t) {
    return t == GType::q8_0 || t == GType::q4_0 || t == GType::q4_k || t == GType::q5_k || t == GType::q6_k;
}

void pack_tile_q6_offsets(const uint8_t* rows, int64_t row_bytes, int64_t N, int64_t in, int64_t g0, int64_t g1,
                          int32_t* xo16) {
    const int64_t nG = in / 16;
    for (int64_t g = g0; g < g1; ++g)
        for (int64_t G = 0; G < nG; ++G)
            for (int j = 0; j < 4; ++j) {
                const int64_t n = 4 * g + j;
                int32_t v = 0;
                if (n < N) v = -32 * reinterpret_cast<const BlockQ8_K*>(rows + n * row_bytes)[G / 16].bsums[G % 16];
                xo16[(g * nG + G) * 4 + j] = v;
            }
}

int64_t tile_scratch_bytes(int64_t in) { return in / 32 * (kTileSubBytes + 2 * kTileRows * (int64_t)sizeof(float)); }

// Activation groups for the tiles: per (group, sub-block) the 4 rows' 32 bytes (two rows per zmm)
// transposed by two vpermt2d into 4-byte words (k, j); sums by vpsadbw on the bytes ^ 0x80 (q8_0)
// or from the per-16 sums (q8_k).
// i8: moe's int8 rows instead (row n's block b: 32 bytes at rows + n * row_bytes + 32 b, its scale
// i8[n * nsb + b]), summed as the q8_0 blocks are.
__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
static void pack_tile_acts_any(const uint8_t* rows, int64_t row_bytes, GType act, const float* i8, int64_t N, int64_t in,
                               int32_t c, int64_t g0, int64_t g1, uint8_t* xp, float* xs, float* am, int32_t* xo) {
    const int64_t nsb = in / 32;
    const bool q8k = act == GType::q8_k;
    // word p = 4 k + j of the output (k < 4: first half) from row j's word k: rows 0, 1 in A (0-7,
    // 8-15), rows 2, 3 in B (16 + ...)
    alignas(64) int32_t lo[16], hi[16];
    for (int k = 0; k < 4; ++k)
        for (int j = 0; j < 4; ++j) lo[4 * k + j] = (j < 2 ? 0 : 16) + (j % 2) * 8 + k, hi[4 * k + j] = lo[4 * k + j] + 4;
    const __m512i ilo = _mm512_load_si512(lo), ihi = _mm512_load_si512(hi);
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t g = g0; g < g1; ++g)
        for (int64_t b = 0; b < nsb; ++b) {
            __m256i v[4];
            const int64_t o = (g * nsb + b) * 4;
            for (int j = 0; j < 4; ++j) {
                const int64_t n = 4 * g + j;
                float sc = 0.f;
                int32_t sum = 0;
                if (n >= N) {
                    v[j] = _mm256_setzero_si256();
                } else if (q8k) {
                    const BlockQ8_K& blk = reinterpret_cast<const BlockQ8_K*>(rows + n * row_bytes)[b / 8];
                    v[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * (b % 8)));
                    sc = blk.d, sum = blk.bsums[2 * (b % 8)] + blk.bsums[2 * (b % 8) + 1];
                } else {
                    if (i8) {
                        v[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + n * row_bytes + 32 * b));
                        sc = i8[n * nsb + b];
                    } else {
                        const BlockQ8_0& blk = reinterpret_cast<const BlockQ8_0*>(rows + n * row_bytes)[b];
                        v[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs));
                        sc = _cvtsh_ss(blk.d);
                    }
                    const __m256i sad = _mm256_sad_epu8(_mm256_xor_si256(v[j], flip), _mm256_setzero_si256());
                    const __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sad), _mm256_extracti128_si256(sad, 1));
                    sum = (int32_t)(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1)) - 128 * 32;
                }
                xs[o + j] = sc, am[o + j] = sc * (float)sum;
                if (xo) xo[o + j] = -c * sum;
            }
            const __m512i A = _mm512_inserti64x4(_mm512_castsi256_si512(v[0]), v[1], 1);
            const __m512i B = _mm512_inserti64x4(_mm512_castsi256_si512(v[2]), v[3], 1);
            uint8_t* dst = xp + (g * nsb + b) * 128;
            _mm512_storeu_si512(dst, _mm512_permutex2var_epi32(A, ilo, B));
            _mm512_storeu_si512(dst + 64, _mm512_permutex2var_epi32(A, ihi, B));
        }
}

void pack_tile_acts(const uint8_t* rows, int64_t row_bytes, GType act, int64_t N, int64_t in, int32_t c, int64_t g0,
                    int64_t g1, uint8_t* xp, float* xs, float* am, int32_t* xo) {
    pack_tile_acts_any(rows, row_bytes, act, nullptr, N, in, c, g0, g1, xp, xs, am, xo);
}

void pack_tile_acts_q8(const int8_t* q, const float* scales, int64_t N, int64_t in, int64_t g0, int64_t g1, uint8_t* xp,
                       float* xs, float* am, int32_t* xo) {
    pack_tile_acts_any(reinterpret_cast<const uint8_t*>(q), in, GType::q8_0, scales, N, in, 128, g0, g1, xp, xs, am, xo);
}

void prefill_tiles_q8_vnni(float* y, int64_t ys, const TileActs& xa, const int8_t* wq, const float* ws_rows, int64_t N,
                           int64_t in, int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch) {
    const int64_t nsb = in / 32;
    uint8_t* wq_t = scratch;  // 64-byte aligned by the caller
    float* ws = reinterpret_cast<float*>(wq_t + nsb * kTileSubBytes);
    float* wm = ws + nsb * kTileRows;
    for (int64_t r0 = o0; r0 < o1; r0 += kTileRows) {
        const int nr = (int)std::min<int64_t>(kTileRows, o1 - r0);
        unpack_tile_t<GType::q8_0, true>(reinterpret_cast<const uint8_t*>(wq + r0 * in), in, nr, nsb, wq_t, ws, wm,
                                         ws_rows + r0 * nsb);
        for (int64_t g = 0; 4 * g < N; ++g)
            tile_rows(y + r0, ys, xa, g, (int)std::min<int64_t>(4, N - 4 * g), nr, wq_t, ws, wm, nsb, accumulate);
    }
}

void prefill_tiles_vnni(float* y, int64_t ys, const TileActs& xa, const void* w, GType t, int64_t row_stride,
                        int64_t N, int64_t in, int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch) {
    const int64_t nsb = in / 32;
    uint8_t* wq = scratch;  // 64-byte aligned by the caller
    float* ws = reinterpret_cast<float*>(wq + nsb * kTileSubBytes);
    float* wm = ws + nsb * kTileRows;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    for (int64_t r0 = o0; r0 < o1; r0 += kTileRows) {
        const int nr = (int)std::min<int64_t>(kTileRows, o1 - r0);
        if (t == GType::q6_k) unpack_tile_q6_k(wb + r0 * row_stride, row_stride, nr, in / 256, wq, ws);
        else unpack_tile(t, wb + r0 * row_stride, row_stride, nr, nsb, wq, ws, wm);
        float* yt = y + r0;
        for (int64_t g = 0; 4 * g < N; ++g)
            tile_rows(yt, ys, xa, g, (int)std::min<int64_t>(4, N - 4 * g), nr, wq, ws, wm, nsb, accumulate);
    }
}

// ---- repacked Q8_0 (ggml_quants.h)

// tiles [t0, t1) of 32 rows unpacked (unpack_tile_t) and stored with their scales: Q8_0 rows (the
// blocks' fp16 d) or moe's int8 (I8: rows of in bytes, fp32 scales at i8s)
template <bool I8>
KU static void repack_tiles_q8(const uint8_t* w, int64_t row_stride, const float* i8s, int64_t out, int64_t in, int64_t t0,
                            int64_t t1, uint8_t* dst, uint8_t* scratch) {
    constexpr int64_t BB = I8 ? kTiledBlockBytesI8 : kTiledBlockBytes;
    const int64_t nsb = in / 32;
    float* ws = reinterpret_cast<float*>(scratch + nsb * kTileSubBytes);
    float* wm = ws + nsb * kTileRows;
    for (int64_t t = t0; t < t1; ++t) {
        const int nr = (int)std::min<int64_t>(kTileRows, out - t * kTileRows);
        const uint8_t* rows = w + t * kTileRows * row_stride;
        unpack_tile_t<GType::q8_0, I8>(rows, row_stride, nr, nsb, scratch, ws, wm, I8 ? i8s + t * kTileRows * nsb : nullptr);
        uint8_t* tile = dst + t * nsb * BB;
        for (int64_t b = 0; b < nsb; ++b) {
            uint8_t* tb = tile + b * BB;
            std::memcpy(tb, scratch + b * kTileSubBytes, kTileSubBytes);
            if constexpr (I8) {
                std::memcpy(tb + kTileSubBytes, ws + b * kTileRows, kTileRows * sizeof(float));  // rows past nr: 0
            } else {
                uint16_t* sc = reinterpret_cast<uint16_t*>(tb + kTileSubBytes);
                for (int r = 0; r < kTileRows; ++r)
                    sc[r] = r < nr ? reinterpret_cast<const BlockQ8_0*>(rows + r * row_stride)[b].d : 0;
            }
        }
    }
}

void q8_0_repack_tiles_vnni(const uint8_t* w, int64_t row_stride, int64_t out, int64_t in, int64_t t0, int64_t t1,
                            uint8_t* dst, uint8_t* scratch) {
    repack_tiles_q8<false>(w, row_stride, nullptr, out, in, t0, t1, dst, scratch);
}

void q8_repack_tiles_vnni(const int8_t* q, const float* scales, int64_t out, int64_t in, int64_t t0, int64_t t1,
                          uint8_t* dst, uint8_t* scratch) {
    repack_tiles_q8<true>(reinterpret_cast<const uint8_t*>(q), in, scales, out, in, t0, t1, dst, scratch);
}

void tiled_rows_vnni(TiledKind k, float* y, int64_t ys, const TileActs& xa, const uint8_t* tiled, int64_t N,
                     int64_t in, int64_t o0, int64_t o1, bool accumulate) {
    switch (k) {
        case TiledKind::q8_0: return tiled_rows<0>(y, ys, xa, tiled, N, in, o0, o1, accumulate);
        case TiledKind::int8: return tiled_rows<1>(y, ys, xa, tiled, N, in, o0, o1, accumulate);
        case TiledKind::q4_k: return tiled_rows<2>(y, ys, xa, tiled, N, in, o0, o1, accumulate);
        case TiledKind::q4_0: return tiled_rows<3>(y, ys, xa, tiled, N, in, o0, o1, accumulate);
    }
}


// Small pieces of the AVX2 block kernels below: a tile block's bytes kTiledAhead on asked into L2
// (pf: the first pass over a tile), zeroed int32 sums, and each activation row's 4 bytes at p[j]
// broadcast to all 8 lanes.
__attribute__((target("avx2,fma,f16c"))) static inline void prefetch_ahead(const uint8_t* wb, int64_t bytes, bool pf) {
    if (pf)
        for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(reinterpret_cast<const char*>(wb) + kTiledAhead + i, _MM_HINT_T1);
}
template <int NR, int G>
__attribute__((target("avx2,fma,f16c"))) static inline void zero_sums(__m256i (&is)[NR][G]) {
    for (int j = 0; j < NR; ++j)
        for (int g = 0; g < G; ++g) is[j][g] = _mm256_setzero_si256();
}
template <int NR>
__attribute__((target("avx2,fma,f16c"))) static inline void broadcast_words(__m256i (&xv)[NR], const int8_t* const (&p)[NR]) {
    for (int j = 0; j < NR; ++j) {
        int32_t w4;
        std::memcpy(&w4, p[j], 4);
        xv[j] = _mm256_set1_epi32(w4);
    }
}

// ---- Q4_K tiles on AVX2 hosts (no VNNI): the layout the VNNI kernel reads (ggml_quants.h), with
// vpmaddubsw in place of vpdpbusd. One 32-byte load holds 8 rows x 4 nibble bytes; vpmaddubsw of the
// nibbles (0..15) by 4 activation bytes broadcast gives each row's two pair sums in int16 lanes
// (|pair| <= 2 * 15 * 128), summed over a sub-block's 8 groups in int16 (<= 30,720: exact), then
// one vpmaddwd by ones per sub-block gives the row's int32 sum: the VNNI kernel's integers. The float
// steps are the VNNI kernel's, in its order (acc -= wm * am and t += isum * ws per sub-block, acc +=
// t * d per super-block), so the products have its bits (and q4_k_tiled_rows_ref's). Against the row
// dots (dots_qk45, per row and 64 values: a scale shuffle pair, a vpmaddwd and an add more) about
// half the vector instructions a weight, and no per-row reductions.
// G groups of 8 rows from group g0 of the tile, NR activation rows (Q8_K rows at x[j]).
template <int NR, int G>
__attribute__((target("avx2,fma,f16c"))) static void q4k_tile_avx2(const uint8_t* tile, int64_t nsuper, int g0,
                                                                  const BlockQ8_K* const* x, __m256 (&acc)[NR][G],
                                                                  bool pf) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    for (int64_t s = 0; s < nsuper; ++s) {
        const uint8_t* sb = tile + s * kTiledSuperBytesQ4K;
        __m256 t[NR][G];
        for (int j = 0; j < NR; ++j)
            for (int g = 0; g < G; ++g) t[j][g] = _mm256_setzero_ps();
        for (int j8 = 0; j8 < 8; ++j8) {
            const int c = j8 / 2, h = j8 % 2;
            if (pf && h == 0)
                for (int i = 0; i < 19; ++i)
                    _mm_prefetch(reinterpret_cast<const char*>(sb) + kTiledAhead + c * 1184 + 64 * i, _MM_HINT_T1);
            __m256i is[NR][G];
            zero_sums(is);
            const uint8_t* wc = sb + c * 1024 + 32 * g0;
            for (int k = 0; k < 8; ++k) {
                __m256i xv[NR];
                const int8_t* xb[NR];
                for (int j = 0; j < NR; ++j) xb[j] = x[j][s].qs + 32 * j8 + 4 * k;
                broadcast_words(xv, xb);
                for (int g = 0; g < G; ++g) {
                    __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wc + 128 * k + 32 * g));
                    if (h) u = _mm256_srli_epi16(u, 4);
                    u = _mm256_and_si256(u, m4);
                    for (int j = 0; j < NR; ++j) is[j][g] = _mm256_add_epi16(is[j][g], _mm256_maddubs_epi16(u, xv[j]));
                }
            }
            float mx[NR];
            for (int j = 0; j < NR; ++j)
                mx[j] = x[j][s].d * (float)(x[j][s].bsums[2 * j8] + x[j][s].bsums[2 * j8 + 1]);
            for (int g = 0; g < G; ++g) {
                const int r0 = 8 * (g0 + g);  // the group's first row in the tile
                const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + 4096 + 2 * r0)));
                const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + 4160 + 2 * r0)));
                const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                    _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 4224 + 32 * j8 + r0))));
                const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                    _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 4480 + 32 * j8 + r0))));
                const __m256 ws = _mm256_mul_ps(d, sc), wm = _mm256_mul_ps(dm, mn);
                for (int j = 0; j < NR; ++j) {
                    acc[j][g] = _mm256_fnmadd_ps(wm, _mm256_set1_ps(mx[j]), acc[j][g]);
                    t[j][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(is[j][g], ones)), ws, t[j][g]);
                }
            }
        }
        for (int j = 0; j < NR; ++j)
            for (int g = 0; g < G; ++g) acc[j][g] = _mm256_fmadd_ps(t[j][g], _mm256_set1_ps(x[j][s].d), acc[j][g]);
    }
}

// The AVX2 tile kernels' frame: K::run<NR, G>(n0, tile, g0, acc, pf) adds activation rows
// n0 .. n0 + NR times groups [g0, g0 + G) of 8 rows of one tile into acc; this loads acc from y (or
// zeros), runs it and stores rows [lo, hi) of the groups.
template <class K, int NR, int G>
__attribute__((target("avx2,fma,f16c"))) static void tile_rows_avx2(const K& k, float* y, int64_t ys, int64_t n0,
                                                                   const uint8_t* tile, int g0, int64_t base, int lo,
                                                                   int hi, bool accumulate, bool pf) {
    alignas(32) float buf[8 * G];
    __m256 acc[NR][G];
    for (int j = 0; j < NR; ++j) {
        float* yr = y + (n0 + j) * ys + base + 8 * g0;
        for (int i = 0; i < 8 * G; ++i) buf[i] = accumulate && i >= lo && i < hi ? yr[i] : 0.f;
        for (int g = 0; g < G; ++g) acc[j][g] = _mm256_load_ps(buf + 8 * g);
    }
    k.template run<NR, G>(n0, tile, g0, acc, pf);
    for (int j = 0; j < NR; ++j) {
        float* yr = y + (n0 + j) * ys + base + 8 * g0;
        for (int g = 0; g < G; ++g) _mm256_store_ps(buf + 8 * g, acc[j][g]);
        for (int i = lo; i < hi; ++i) yr[i] = buf[i];
    }
}

// y rows [o0, o1) over the tiles (tile_bytes apart): one activation row takes the whole tile (4
// groups of 8 rows), two or more go in pairs over half tiles (16 registers: 2 x 2 accumulators,
// sums and products)
template <class K>
__attribute__((target("avx2,fma,f16c"))) static void tiles_avx2(const K& k, float* y, int64_t ys, int64_t N,
                                                               const uint8_t* tiled, int64_t tile_bytes, int64_t o0,
                                                               int64_t o1, bool accumulate) {
    for (int64_t t = o0 / kTileRows; t * kTileRows < o1; ++t) {
        const int64_t base = t * kTileRows;
        const int lo = (int)(std::max(o0, base) - base), hi = (int)(std::min(o1, base + kTileRows) - base);
        const uint8_t* tile = tiled + t * tile_bytes;
        if (N == 1) {
            tile_rows_avx2<K, 1, 4>(k, y, ys, 0, tile, 0, base, lo, hi, accumulate, true);
            continue;
        }
        for (int half = 0; half < 2; ++half) {
            const int hlo = std::max(lo, 16 * half) - 16 * half, hhi = std::min(hi, 16 * half + 16) - 16 * half;
            if (hlo >= hhi) continue;
            for (int64_t n = 0; n < N; n += 2) {
                if (N - n >= 2)
                    tile_rows_avx2<K, 2, 2>(k, y, ys, n, tile, 2 * half, base, hlo, hhi, accumulate, n == 0 && half == 0);
                else
                    tile_rows_avx2<K, 1, 2>(k, y, ys, n, tile, 2 * half, base, hlo, hhi, accumulate, false);
            }
        }
    }
}

struct Q4kTilesAvx2 {
    const uint8_t* acts;  // Q8_K rows, act_bytes apart
    int64_t act_bytes, nsuper;
    template <int NR, int G>
    __attribute__((target("avx2,fma,f16c"))) void run(int64_t n0, const uint8_t* tile, int g0, __m256 (&acc)[NR][G],
                                                      bool pf) const {
        const BlockQ8_K* x[NR];
        for (int j = 0; j < NR; ++j) x[j] = reinterpret_cast<const BlockQ8_K*>(acts + (n0 + j) * act_bytes);
        q4k_tile_avx2<NR, G>(tile, nsuper, g0, x, acc, pf);
    }
};

__attribute__((target("avx2,fma,f16c"))) void q4_k_tiled_rows_avx2(float* y, int64_t ys, const uint8_t* acts,
                                                                  int64_t act_bytes, int64_t N, int64_t in,
                                                                  const uint8_t* tiled, int64_t o0, int64_t o1,
                                                                  bool accumulate) {
    const int64_t nsuper = in / 256;
    tiles_avx2(Q4kTilesAvx2{acts, act_bytes, nsuper}, y, ys, N, tiled, nsuper * kTiledSuperBytesQ4K, o0, o1, accumulate);
}

// ---- Q4_0 tiles on AVX2 hosts: the same scheme on Q4_0's tiles (kTiledBlockBytesQ4_0: 4-value
// group k < 4 the low nibbles of the rows' bytes 4k..4k+3, k >= 4 their high nibbles, then the 32
// rows' fp16 d). Per block: the nibbles' products summed in int16 over the 8 groups, one vpmaddwd,
// plus -8 * sum x (GActs::xo8: the activations' block sums, exact), then acc = fma(isum, d * xd, acc):
// the VNNI kernel's (and q4_0_tiled_rows_ref's) bits.
template <int NR, int G>
__attribute__((target("avx2,fma,f16c"))) static void q4_0_tile_avx2(const uint8_t* tile, int64_t nsb, int g0,
                                                                   const BlockQ8_0* const* x, const int32_t* const* xo8,
                                                                   __m256 (&acc)[NR][G], bool pf) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nsb; ++b) {
        const uint8_t* wb = tile + b * kTiledBlockBytesQ4_0;
        prefetch_ahead(wb, kTiledBlockBytesQ4_0, pf);
        __m256i is[NR][G];
        zero_sums(is);
        for (int k = 0; k < 8; ++k) {
            __m256i xv[NR];
            const int8_t* xb[NR];
            for (int j = 0; j < NR; ++j) xb[j] = x[j][b].qs + 4 * k;
            broadcast_words(xv, xb);
            for (int g = 0; g < G; ++g) {
                __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 128 * (k % 4) + 32 * (g0 + g)));
                if (k >= 4) u = _mm256_srli_epi16(u, 4);
                u = _mm256_and_si256(u, m4);
                for (int j = 0; j < NR; ++j) is[j][g] = _mm256_add_epi16(is[j][g], _mm256_maddubs_epi16(u, xv[j]));
            }
        }
        for (int g = 0; g < G; ++g) {
            const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 512 + 16 * (g0 + g))));
            for (int j = 0; j < NR; ++j) {
                const __m256i isum = _mm256_add_epi32(_mm256_madd_epi16(is[j][g], ones), _mm256_set1_epi32(xo8[j][4 * b]));
                acc[j][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(_cvtsh_ss(x[j][b].d))),
                                            acc[j][g]);
            }
        }
    }
}

struct Q40TilesAvx2 {
    const uint8_t* acts;  // Q8_0 rows, act_bytes apart
    int64_t act_bytes, nsb;
    const int32_t* xo8;  // GActs::xo8: row n's block b at ((n / 4) * nsb + b) * 4 + n % 4
    template <int NR, int G>
    __attribute__((target("avx2,fma,f16c"))) void run(int64_t n0, const uint8_t* tile, int g0, __m256 (&acc)[NR][G],
                                                      bool pf) const {
        const BlockQ8_0* x[NR];
        const int32_t* xo[NR];  // row n0 + j's values, 4 apart
        for (int j = 0; j < NR; ++j) {
            const int64_t n = n0 + j;
            x[j] = reinterpret_cast<const BlockQ8_0*>(acts + n * act_bytes), xo[j] = xo8 + (n / 4) * nsb * 4 + n % 4;
        }
        q4_0_tile_avx2<NR, G>(tile, nsb, g0, x, xo, acc, pf);
    }
};

__attribute__((target("avx2,fma,f16c"))) void q4_0_tiled_rows_avx2(float* y, int64_t ys, const uint8_t* acts,
                                                                  int64_t act_bytes, const int32_t* xo8, int64_t N,
                                                                  int64_t in, const uint8_t* tiled, int64_t o0,
                                                                  int64_t o1, bool accumulate) {
    const int64_t nsb = in / 32;
    tiles_avx2(Q40TilesAvx2{acts, act_bytes, nsb, xo8}, y, ys, N, tiled, nsb * kTiledBlockBytesQ4_0, o0, o1, accumulate);
}


// ---- Q8_0 tiles on AVX2 hosts: the repacked Q8_0 tiles (kTiledBlockBytes a block: u = q + 128 as
// the VNNI kernel reads it, then the 32 rows' fp16 d). u ^ 0x80 is q; vpmaddubsw of |q| (unsigned,
// <= 128) by the activation bytes with q's sign (vpsignb) gives each row's pair sums exactly:
// |pair| <= 2 * 128 * 127 = 32,512, as moe's q8_0 activations are in [-127, 127] (quantize_q8_0:
// round(x / d) with d = max|x| / 127). No room to add two pairs in int16, so one vpmaddwd per load;
// the block's int32 sum is exact, then acc = fma(isum, d * xd, acc): the VNNI tiles' block order and
// bits (q8_0_tiled_rows_ref), for any number of rows.
// I8: moe's int8 tiles (kTiledBlockBytesI8: the same u, then 32 fp32 scales) and activations (q
// rows with fp32 scales per 32, from quantize_q8_row: also in [-127, 127]).
template <int NR, int G, bool I8>
__attribute__((target("avx2,fma,f16c"))) static void q8_tile_avx2(const uint8_t* tile, int64_t nsb, int g0,
                                                                 const int8_t* const* xq, const float* const* xsc,
                                                                 __m256 (&acc)[NR][G], bool pf) {
    constexpr int64_t BB = I8 ? kTiledBlockBytesI8 : kTiledBlockBytes;
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nsb; ++b) {
        const uint8_t* wb = tile + b * BB;
        prefetch_ahead(wb, BB, pf);
        __m256i is[NR][G];
        zero_sums(is);
        for (int k = 0; k < 8; ++k) {
            __m256i xv[NR];
            const int8_t* xb[NR];  // Q8_0: block b's 34 bytes, values after the fp16 d; int8: 32 a block
            for (int j = 0; j < NR; ++j) xb[j] = I8 ? xq[j] + 32 * b + 4 * k : xq[j] + 34 * b + 2 + 4 * k;
            broadcast_words(xv, xb);
            for (int g = 0; g < G; ++g) {
                const __m256i q = _mm256_xor_si256(
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 128 * k + 32 * (g0 + g))), flip);
                const __m256i aq = _mm256_abs_epi8(q);
                for (int j = 0; j < NR; ++j)
                    is[j][g] = _mm256_add_epi32(
                        is[j][g], _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(xv[j], q)), ones));
            }
        }
        for (int g = 0; g < G; ++g) {
            const __m256 d = I8 ? _mm256_loadu_ps(reinterpret_cast<const float*>(wb + 1024) + 8 * (g0 + g))
                                : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 1024 + 16 * (g0 + g))));
            for (int j = 0; j < NR; ++j) {
                float xs;
                if constexpr (I8) {
                    xs = xsc[j][b];
                } else {
                    uint16_t h;
                    std::memcpy(&h, xq[j] + 34 * b, 2);
                    xs = _cvtsh_ss(h);
                }
                acc[j][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[j][g]), _mm256_mul_ps(d, _mm256_set1_ps(xs)), acc[j][g]);
            }
        }
    }
}

template <bool I8>
struct Q8TilesAvx2 {
    const int8_t* q;        // Q8_0 rows (34-byte blocks), or int8 rows of in bytes
    const float* scales;    // int8: (N, nsb)
    int64_t row_bytes, nsb;
    template <int NR, int G>
    __attribute__((target("avx2,fma,f16c"))) void run(int64_t n0, const uint8_t* tile, int g0, __m256 (&acc)[NR][G],
                                                      bool pf) const {
        const int8_t* xq[NR];
        const float* xs[NR];
        for (int j = 0; j < NR; ++j) xq[j] = q + (n0 + j) * row_bytes, xs[j] = I8 ? scales + (n0 + j) * nsb : nullptr;
        q8_tile_avx2<NR, G, I8>(tile, nsb, g0, xq, xs, acc, pf);
    }
};

__attribute__((target("avx2,fma,f16c"))) void q8_0_tiled_rows_avx2(float* y, int64_t ys, const uint8_t* acts,
                                                                  int64_t act_bytes, int64_t N, int64_t in,
                                                                  const uint8_t* tiled, int64_t o0, int64_t o1,
                                                                  bool accumulate) {
    static_assert(sizeof(BlockQ8_0) == 34);
    const int64_t nsb = in / 32;
    tiles_avx2(Q8TilesAvx2<false>{reinterpret_cast<const int8_t*>(acts), nullptr, act_bytes, nsb}, y, ys, N, tiled,
               nsb * kTiledBlockBytes, o0, o1, accumulate);
}

__attribute__((target("avx2,fma,f16c"))) void q8_tiled_rows_avx2(float* y, int64_t ys, const int8_t* q,
                                                                const float* scales, int64_t N, int64_t in,
                                                                const uint8_t* tiled, int64_t o0, int64_t o1,
                                                                bool accumulate) {
    const int64_t nsb = in / 32;
    tiles_avx2(Q8TilesAvx2<true>{q, scales, in, nsb}, y, ys, N, tiled, nsb * kTiledBlockBytesI8, o0, o1, accumulate);
}

// ---- Q5_K and Q6_K prefill tiles on AVX2 hosts (and Q4_K's rows as stored). No repacked form: as on VNNI hosts
// (prefill_tiles_vnni) each tile of 32 weight rows is unpacked per call into scratch (unpack_tile_t,
// unpack_tile_q6_k: u, ws, wm) and every activation row passes over it, here with vpmaddubsw in place
// of vpdpbusd. The int16 sums stop before they could leave int16: Q5_K's u <= 31 gives pairs
// |u0 x0 + u1 x1| <= 2 * 31 * 128 = 7,936, four groups (16 values) <= 31,744, so one vpmaddwd per half
// sub-block; Q6_K's u <= 63 gives pairs <= 16,128, two groups (8 values) <= 32,256, so two vpmaddwd per
// 16-value group. The int32 sums are exact and the float steps are the VNNI tiles' (tile_kernel<true,
// false>, tile_kernel_q6) in their order, so the products have their bits (and kquant_tiles_ref's).

// is[j][g] += the int32 sums of the 4-value groups [k0, k1) of the scratch tile at wb (group k of
// 8 rows at wb + 128 k, G groups of rows side by side) times the activation bytes xb[j] + 4 k:
// vpmaddubsw summed in int16 over the groups (the caller keeps k1 - k0 within int16's bound), then
// one vpmaddwd
template <int NR, int G>
__attribute__((target("avx2,fma,f16c"))) static inline void int16_groups_avx2(const uint8_t* wb, int k0, int k1,
                                                                             const int8_t* const (&xb)[NR],
                                                                             __m256i (&is)[NR][G]) {
    __m256i h16[NR][G];
    for (int j = 0; j < NR; ++j)
        for (int g = 0; g < G; ++g) h16[j][g] = _mm256_setzero_si256();
    for (int k = k0; k < k1; ++k) {
        __m256i xv[NR];
        const int8_t* xk[NR];
        for (int j = 0; j < NR; ++j) xk[j] = xb[j] + 4 * k;
        broadcast_words(xv, xk);
        for (int g = 0; g < G; ++g) {
            const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 128 * k + 32 * g));
            for (int j = 0; j < NR; ++j) h16[j][g] = _mm256_add_epi16(h16[j][g], _mm256_maddubs_epi16(u, xv[j]));
        }
    }
    const __m256i ones = _mm256_set1_epi16(1);
    for (int j = 0; j < NR; ++j)
        for (int g = 0; g < G; ++g) is[j][g] = _mm256_add_epi32(is[j][g], _mm256_madd_epi16(h16[j][g], ones));
}

template <int NR, int G>
__attribute__((target("avx2,fma,f16c"))) static void q5k_tile_avx2(const uint8_t* wq, const float* ws, const float* wm,
                                                                  int64_t nsuper, int g0, const BlockQ8_K* const* x,
                                                                  __m256 (&acc)[NR][G]) {
    for (int64_t s = 0; s < nsuper; ++s) {
        __m256 t[NR][G];
        for (int j = 0; j < NR; ++j)
            for (int g = 0; g < G; ++g) t[j][g] = _mm256_setzero_ps();
        for (int j8 = 0; j8 < 8; ++j8) {
            const int64_t b = 8 * s + j8;
            const uint8_t* wb = wq + b * kTileSubBytes + 32 * g0;
            const int8_t* xb[NR];
            __m256i is[NR][G];
            for (int j = 0; j < NR; ++j) {
                xb[j] = x[j][s].qs + 32 * j8;
                for (int g = 0; g < G; ++g) is[j][g] = _mm256_setzero_si256();
            }
            int16_groups_avx2<NR, G>(wb, 0, 4, xb, is);  // 16 values: |sum| <= 31,744
            int16_groups_avx2<NR, G>(wb, 4, 8, xb, is);
            float mx[NR];
            for (int j = 0; j < NR; ++j)
                mx[j] = x[j][s].d * (float)(x[j][s].bsums[2 * j8] + x[j][s].bsums[2 * j8 + 1]);
            for (int g = 0; g < G; ++g) {
                const int r0 = 8 * (g0 + g);
                const __m256 wsv = _mm256_loadu_ps(ws + b * kTileRows + r0), wmv = _mm256_loadu_ps(wm + b * kTileRows + r0);
                for (int j = 0; j < NR; ++j) {
                    acc[j][g] = _mm256_fnmadd_ps(wmv, _mm256_set1_ps(mx[j]), acc[j][g]);
                    t[j][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[j][g]), wsv, t[j][g]);
                }
            }
        }
        for (int j = 0; j < NR; ++j)
            for (int g = 0; g < G; ++g) acc[j][g] = _mm256_fmadd_ps(t[j][g], _mm256_set1_ps(x[j][s].d), acc[j][g]);
    }
}

// Q6_K (unpack_tile_q6_k's layout: 16-value group q of super-block s at wq + (16 s + q) * 512, ws per
// group): per group the int32 sums start at -32 * (the group's sum of x, the Q8_K row's bsums[q]),
// t += isum * ws; per super-block acc += t * d
template <int NR, int G>
__attribute__((target("avx2,fma,f16c"))) static void q6k_tile_avx2(const uint8_t* wq, const float* ws, int64_t nsuper,
                                                                  int g0, const BlockQ8_K* const* x,
                                                                  __m256 (&acc)[NR][G]) {
    for (int64_t s = 0; s < nsuper; ++s) {
        __m256 t[NR][G];
        for (int j = 0; j < NR; ++j)
            for (int g = 0; g < G; ++g) t[j][g] = _mm256_setzero_ps();
        for (int q = 0; q < 16; ++q) {
            const int64_t gi = 16 * s + q;
            const uint8_t* wb = wq + gi * (kTileSubBytes / 2) + 32 * g0;
            const int8_t* xb[NR];
            __m256i is[NR][G];
            for (int j = 0; j < NR; ++j) {
                xb[j] = x[j][s].qs + 16 * q;
                for (int g = 0; g < G; ++g) is[j][g] = _mm256_set1_epi32(-32 * (int32_t)x[j][s].bsums[q]);
            }
            int16_groups_avx2<NR, G>(wb, 0, 2, xb, is);  // 8 values: |sum| <= 32,256
            int16_groups_avx2<NR, G>(wb, 2, 4, xb, is);
            for (int g = 0; g < G; ++g) {
                const __m256 wsv = _mm256_loadu_ps(ws + gi * kTileRows + 8 * (g0 + g));
                for (int j = 0; j < NR; ++j) t[j][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[j][g]), wsv, t[j][g]);
            }
        }
        for (int j = 0; j < NR; ++j)
            for (int g = 0; g < G; ++g) acc[j][g] = _mm256_fmadd_ps(t[j][g], _mm256_set1_ps(x[j][s].d), acc[j][g]);
    }
}

struct KqScratchTilesAvx2 {
    const uint8_t* acts;  // Q8_K rows, act_bytes apart
    int64_t act_bytes, nsuper;
    bool q6;
    const float *ws, *wm;  // the scratch tile's (the tile pointer run() gets is its u)
    template <int NR, int G>
    __attribute__((target("avx2,fma,f16c"))) void run(int64_t n0, const uint8_t* tile, int g0, __m256 (&acc)[NR][G],
                                                      bool) const {
        const BlockQ8_K* x[NR];
        for (int j = 0; j < NR; ++j) x[j] = reinterpret_cast<const BlockQ8_K*>(acts + (n0 + j) * act_bytes);
        if (q6) q6k_tile_avx2<NR, G>(tile, ws, nsuper, g0, x, acc);
        else q5k_tile_avx2<NR, G>(tile, ws, wm, nsuper, g0, x, acc);
    }
};

__attribute__((target("avx2,fma,f16c"))) void prefill_tiles_avx2(float* y, int64_t ys, const uint8_t* acts,
                                                                int64_t act_bytes, const void* w, GType t,
                                                                int64_t row_stride, int64_t N, int64_t in, int64_t o0,
                                                                int64_t o1, bool accumulate, uint8_t* scratch) {
    const int64_t nsb = in / 32;
    uint8_t* wq = scratch;
    float* ws = reinterpret_cast<float*>(wq + nsb * kTileSubBytes);
    float* wm = ws + nsb * kTileRows;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const KqScratchTilesAvx2 k{acts, act_bytes, in / 256, t == GType::q6_k, ws, wm};
    for (int64_t r0 = o0; r0 < o1; r0 += kTileRows) {
        const int nr = (int)std::min<int64_t>(kTileRows, o1 - r0);
        if (t == GType::q6_k) unpack_tile_q6_k(wb + r0 * row_stride, row_stride, nr, in / 256, wq, ws);
        else unpack_tile(t, wb + r0 * row_stride, row_stride, nr, nsb, wq, ws, wm);  // q4_k, q5_k
        tiles_avx2(k, y + r0, ys, N, wq, 0, 0, nr, accumulate);
    }
}

// Q4_K repacked (q4_k_repack_tiled) on AVX2 hosts, prefill: each tile unpacked once per call into
// the scratch layout above (the nibbles as bytes, ws = d sc and wm = dmin m as the Q4_K tile kernel
// makes them: the same fp32 products), then q5k_tile_avx2 over it: 1.1-1.2x q4k_tile_avx2 on 512
// rows (no nibble shifts and masks, no scale products per activation pass), the same bits.
__attribute__((target("avx2,fma,f16c"))) static void unpack_q4k_tiled_avx2(const uint8_t* tile, int64_t nsuper,
                                                                          uint8_t* wq, float* ws, float* wm) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t s = 0; s < nsuper; ++s) {
        const uint8_t* sb = tile + s * kTiledSuperBytesQ4K;
        // the bytes kTiledAhead on (the tile's later super-blocks, then the next tile's), as the
        // decode kernel asks them: without, a tile from DRAM cost 1.2-1.6x the direct kernel's pass
        prefetch_ahead(sb, kTiledSuperBytesQ4K, true);
        for (int c = 0; c < 4; ++c) {
            uint8_t* lo = wq + (8 * s + 2 * c) * kTileSubBytes;
            for (int i = 0; i < 1024; i += 32) {
                const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + c * 1024 + i));
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + i), _mm256_and_si256(v, m4));
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + kTileSubBytes + i),
                                    _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            }
        }
        for (int g = 0; g < 4; ++g) {
            const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + 4096 + 16 * g)));
            const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + 4160 + 16 * g)));
            for (int j8 = 0; j8 < 8; ++j8) {
                const __m256 sc = _mm256_cvtepi32_ps(
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 4224 + 32 * j8 + 8 * g))));
                const __m256 mn = _mm256_cvtepi32_ps(
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 4480 + 32 * j8 + 8 * g))));
                const int64_t o = (8 * s + j8) * kTileRows + 8 * g;
                _mm256_storeu_ps(ws + o, _mm256_mul_ps(d, sc));
                _mm256_storeu_ps(wm + o, _mm256_mul_ps(dm, mn));
            }
        }
    }
}

__attribute__((target("avx2,fma,f16c"))) void q4_k_tiled_prefill_avx2(float* y, int64_t ys, const uint8_t* acts,
                                                                     int64_t act_bytes, int64_t N, int64_t in,
                                                                     const uint8_t* tiled, int64_t o0, int64_t o1,
                                                                     bool accumulate, uint8_t* scratch) {
    const int64_t nsb = in / 32, nsuper = in / 256;
    uint8_t* wq = scratch;
    float* ws = reinterpret_cast<float*>(wq + nsb * kTileSubBytes);
    float* wm = ws + nsb * kTileRows;
    const KqScratchTilesAvx2 k{acts, act_bytes, nsuper, false, ws, wm};
    for (int64_t t = o0 / kTileRows; t * kTileRows < o1; ++t) {
        const int64_t base = t * kTileRows;
        unpack_q4k_tiled_avx2(tiled + t * nsuper * kTiledSuperBytesQ4K, nsuper, wq, ws, wm);
        tiles_avx2(k, y + base, ys, N, wq, 0, std::max(o0, base) - base, std::min(o1, base + kTileRows) - base, accumulate);
    }
}

}  // namespace moe::kernels::detail
