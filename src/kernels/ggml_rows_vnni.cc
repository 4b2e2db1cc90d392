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

#include <algorithm>

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

// one Q8_0 block's 32 weights (signed bytes in value order)
KFN inline __m256i block_bytes(const BlockQ8_0& b) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)); }

// Block = BlockQ8_0 (against q8_0 activations): every lane's int32 is the exact sum of its 4
// products w * x (w in [-127, 127]), as the single-row kernels' lanes are
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

// Q4_0 weights (q4_0_rows_acts' layout): the nibbles u = w + 8 (0..15) are vpdpbusd's unsigned
// operand as loaded, the activations x its signed one, and the accumulator starts at the
// activations' -8 * (sum of each lane's 4 bytes): the exact sum of w * x per lane, as the
// single-row kernels' lanes. No unpacking to signed bytes, no sign trick, one pair's scales
// converted in one instruction: per pair and row one load of x, one of the offsets, one of the
// activation scales. The pair's bytes [qs0 | qs1] give the nibbles in the order [b0 values 0-15,
// b1 values 0-15, b0 values 16-31, b1 values 16-31] (lows then highs), which the activations
// follow; the accumulator's 128-bit quarters hold (b0 lanes 0-3, b1 lanes 0-3, b0 lanes 4-7,
// b1 lanes 4-7) and are put back in the single-row kernels' order (even blocks, odd blocks)
// before their final sum.
// NO weight rows at a time, each with its own accumulators: a row's FMA chain is serial (a pair of
// blocks per FMA latency), so one activation row takes 4 weight rows side by side (independent
// chains) and two take 2; every output's chain is the same whatever NO, and so are its bits.
template <int NR, int NO = 1>
KFN void rows_q4_t(float* y, int64_t ys, const int8_t* xq, const int32_t* xc, const float* xs, int64_t in,
                   const uint8_t* w, int64_t row_stride, int64_t n0, int64_t o0, int64_t o1, bool accumulate) {
    const int64_t nb = in / 32, pairs = nb / 2, sp = (nb + 1) / 2;
    constexpr int64_t kBlock = sizeof(BlockQ4_0);  // 18: the fp16 scale, then 16 bytes of nibbles
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    // the pair's scales, words 0 (b0) and 9 (b1) of its first 32 bytes, spread to the quarters
    const __m256i sidx = _mm256_setr_epi16(0, 0, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0, 9, 9, 9, 9);
    int64_t o = o0;
    for (; o + NO <= o1; o += NO) {
        const uint8_t* wr0 = w + o * row_stride;
        __m512 acc[NO][NR];
#pragma GCC unroll 8
        for (int r = 0; r < NO; ++r)
#pragma GCC unroll 8
            for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_setzero_ps();
        // the NO rows' bytes, every line prefetched 4 KB ahead, spread over the pairs (with NO rows
        // side by side the hardware prefetchers no longer see one stream: prefetching only each
        // pair's own line ahead left 4 rows 1.7x slower from memory than from L2)
        const char* pf = reinterpret_cast<const char*>(wr0) + 4096;
        const int64_t span = NO * row_stride;
        int64_t pfo = 0;
        for (int64_t p = 0; p < pairs; ++p) {
            for (; pfo < span * (p + 1) / pairs; pfo += 64) _mm_prefetch(pf + pfo, _MM_HINT_T0);
#pragma GCC unroll 8
            for (int r = 0; r < NO; ++r) {
                const uint8_t* b0 = wr0 + r * row_stride + p * 2 * kBlock;
                const __m256i q = _mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 2))),
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + kBlock + 2)), 1);
                const __m512i u = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m4);
                const __m512 wsv =
                    _mm512_cvtph_ps(_mm256_permutexvar_epi16(sidx, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0))));
#pragma GCC unroll 8
                for (int j = 0; j < NR; ++j) {
                    const int64_t k = (n0 + j) * sp + p;
                    const __m512i is = _mm512_dpbusd_epi32(_mm512_loadu_si512(xc + k * 16), u, _mm512_loadu_si512(xq + k * 64));
                    const __m512 sc = _mm512_mul_ps(wsv, _mm512_loadu_ps(xs + k * 16));
                    acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), sc, acc[r][j]);
                }
            }
        }
        if (nb & 1) {  // a lone last block: its quarters alone (0 and 2), as the single-row kernels add it
            for (int r = 0; r < NO; ++r) {
                const BlockQ4_0& b = reinterpret_cast<const BlockQ4_0*>(wr0 + r * row_stride)[nb - 1];
                const __m256i q = _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)));
                const __m512i u = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m4);
                const __m512 wsv = _mm512_set1_ps(h2f(b.d));
                for (int j = 0; j < NR; ++j) {
                    const int64_t k = (n0 + j) * sp + pairs;
                    const __m512i is = _mm512_dpbusd_epi32(_mm512_loadu_si512(xc + k * 16), u, _mm512_loadu_si512(xq + k * 64));
                    const __m512 sc = _mm512_mul_ps(wsv, _mm512_loadu_ps(xs + k * 16));
                    acc[r][j] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(is), sc, acc[r][j], 0x0F0F);  // b1's kept
                }
            }
        }
        for (int r = 0; r < NO; ++r)
            for (int j = 0; j < NR; ++j) {
                const __m512 a = _mm512_shuffle_f32x4(acc[r][j], acc[r][j], _MM_SHUFFLE(3, 1, 2, 0));  // even | odd
                const float s = hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)));
                float& d = y[(n0 + j) * ys + o + r];
                d = accumulate ? d + s : s;
            }
    }
    if constexpr (NO > 1)
        if (o < o1) rows_q4_t<NR, 1>(y, ys, xq, xc, xs, in, w, row_stride, n0, o, o1, accumulate);
}

// [a's lanes 2k + 2k+1 summed (k < 8) | b's]: exact int32 sums of adjacent lanes, a's then b's
KFN inline __m512i fold_pairs(__m512i a, __m512i b, __m512i ie, __m512i io) {
    return _mm512_add_epi32(_mm512_permutex2var_epi32(a, ie, b), _mm512_permutex2var_epi32(a, io, b));
}

// The block-order one-row kernel's operands. Weights: Q8_0 rows in place (row_stride bytes apart,
// a block's fp16 scale before its 32 quants) or moe's int8 (wq (OUT, in) int8, ws (OUT, in / 32)
// fp32 scales); block b's 32 signed bytes of row `row`, and the 16 rows' scales of block b
// gathered at the offsets `off` (of row 0's) as fp32. Activations: one row of q8_0 blocks, or of
// int8 with an fp32 scale per block.
struct WQ8_0 {
    const uint8_t* w;
    int64_t row_stride;
    KFN const uint8_t* row(int64_t o) const { return w + o * row_stride; }
    KFN int64_t row_off(int r) const { return r * row_stride; }  // gather offsets, bytes
    KFN __m256i bytes(const uint8_t* row, int64_t b) const {
        return block_bytes(reinterpret_cast<const BlockQ8_0*>(row)[b]);
    }
    KFN __m512 scales(const uint8_t* row0, int64_t b, __m512i off) const {
        return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(off, row0 + b * (int64_t)sizeof(BlockQ8_0), 1)));
    }
    static constexpr int64_t kBlockBytes = sizeof(BlockQ8_0);
    KFN void prefetch_scales(int64_t, int64_t) const {}  // in the rows' own lines
};
struct WInt8 {
    const int8_t* wq;
    const float* ws;
    int64_t in;
    KFN const uint8_t* row(int64_t o) const { return reinterpret_cast<const uint8_t*>(wq + o * in); }
    KFN int64_t row_off(int r) const { return r * in; }  // bytes of wq; the scales' offsets are r * in / 32
    KFN __m256i bytes(const uint8_t* row, int64_t b) const {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * b));
    }
    KFN __m512 scales(const uint8_t* row0, int64_t b, __m512i off) const {
        const float* s0 = ws + (reinterpret_cast<const int8_t*>(row0) - wq) / 32 + b;  // row0's scale of block b
        return _mm512_i32gather_ps(_mm512_srli_epi32(off, 5), s0, 4);
    }
    static constexpr int64_t kBlockBytes = 32;
    // rows [o, o + n)'s scales (contiguous) into L2: the gathers read 16 rows' lines of them
    KFN void prefetch_scales(int64_t o, int64_t n) const {
        const char* p = reinterpret_cast<const char*>(ws + o * (in / 32));
        const int64_t bytes = n * (in / 32) * (int64_t)sizeof(float);
        for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(p + i, _MM_HINT_T1);
    }
};
struct AQ8_0 {
    const uint8_t* blocks;  // row 0's q8_0 blocks
    int64_t row_bytes;      // to the next row's
    KFN __m256i x(int j, int64_t b) const {
        return block_bytes(reinterpret_cast<const BlockQ8_0*>(blocks + j * row_bytes)[b]);
    }
    KFN float d(int j, int64_t b) const { return h2f(reinterpret_cast<const BlockQ8_0*>(blocks + j * row_bytes)[b].d); }
};
struct AInt8 {
    const int8_t* q;  // (rows, in)
    const float* s;   // (rows, in / 32)
    int64_t in;
    KFN __m256i x(int j, int64_t b) const {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + j * in + 32 * b));
    }
    KFN float d(int j, int64_t b) const { return s[j * (in / 32) + b]; }
};

// One or two activation rows in the block order (ggml_rows_vnni.h, q8_0_row_block_vnni,
// q8_row_block_vnni): 16 weight rows at a time. Per pair of blocks each row's vpdpbusd gives its 8
// exact partial sums per block ((w + 128) times x from an accumulator started at -128 times x, the
// same for the 16 rows), and the 16 rows' vectors are folded pairwise (vpermt2d of the even and of
// the odd lanes, added: exact integers) in three steps into one int32 per (row, block), rows 0-7
// and 8-15 in two vectors with the blocks interleaved (the first step as the rows come, so two
// activation rows keep 16 vectors live, not 32), and a last pair of vpermt2d gives block 2p's 16
// sums and block 2p + 1's, one row per lane. The fp32 work is then per block one convert, one
// multiply (the 16 rows' scales, gathered once for both activation rows, times the activation's)
// and one FMA for 16 rows: acc = fma((float)isum_b, wd_b * xd_b, acc), blocks in ascending order.
// Two activation rows share each weight load. Rows past o1 in the last group repeat row o1 - 1
// (computed, not stored). 15 rows' bytes must fit an int32 (the gather's offsets; the callers check).
template <int NA, class W, class A>
KFN void block_row(float* y, int64_t ys, const A& x, int64_t in, const W& wt, int64_t o0, int64_t o1, bool accumulate) {
    const int64_t nb = in / 32, pairs = (nb + 1) / 2;
    const __m512i c80 = _mm512_set1_epi8((char)0x80);
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
    for (int64_t o = o0; o < o1; o += 16) {
        const int nr = (int)std::min<int64_t>(16, o1 - o);
        const __mmask16 km = (__mmask16)(nr == 16 ? 0xffff : (1u << nr) - 1);
        const uint8_t* w0 = wt.row(o);
        alignas(64) int32_t off[16];
        for (int r = 0; r < 16; ++r) off[r] = (int32_t)wt.row_off(std::min(r, nr - 1));
        const __m512i gidx = _mm512_load_si512(off);
        // the next group's rows into L2 in the order they will be read, each pair's bytes of the 16
        // rows with the same pair of this group (16 rows side by side are streams the hardware
        // prefetchers do not follow; into L1, or the next group's bytes in address order, one
        // stream's decode step was 10-20% slower than the lane-order kernel's, bench/serve_load)
        const char* pf = reinterpret_cast<const char*>(wt.row(o + 16));
        const int64_t pair_bytes = 2 * W::kBlockBytes;
        const bool ahead = o + 16 < o1;
        if (o == o0) wt.prefetch_scales(o, nr);
        if (ahead) wt.prefetch_scales(o + 16, std::min<int64_t>(16, o1 - o - 16));
        __m512 acc[NA];
        for (int j = 0; j < NA; ++j) acc[j] = accumulate ? _mm512_maskz_loadu_ps(km, y + j * ys + o) : _mm512_setzero_ps();
        for (int64_t p = 0; p < pairs; ++p) {
            if (ahead)
                for (int r = 0; r < 16; ++r) {
                    const char* q = pf + off[r] + p * pair_bytes;
                    _mm_prefetch(q, _MM_HINT_T1);
                    _mm_prefetch(q + pair_bytes - 1, _MM_HINT_T1);
                }
            const bool lone = 2 * p + 1 == nb;
            // the activations signed (x), the weights unsigned (w + 128): the offset is then the
            // activations' -128 * (sum of each lane's 4 x), the same for all 16 rows
            __m512i xs[NA], corr[NA];
            for (int j = 0; j < NA; ++j) {
                xs[j] = lone ? _mm512_zextsi256_si512(x.x(j, 2 * p))
                             : _mm512_inserti64x4(_mm512_castsi256_si512(x.x(j, 2 * p)), x.x(j, 2 * p + 1), 1);
                corr[j] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), c80, xs[j]));
            }
            __m512i s[NA][8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) {
                __m512i wu[2];
                for (int h = 0; h < 2; ++h) {
                    const uint8_t* row = w0 + off[2 * i + h];
                    const __m512i wv = lone ? _mm512_zextsi256_si512(wt.bytes(row, 2 * p))
                                            : _mm512_inserti64x4(_mm512_castsi256_si512(wt.bytes(row, 2 * p)),
                                                                 wt.bytes(row, 2 * p + 1), 1);
                    wu[h] = _mm512_xor_si512(wv, c80);
                }
                // (no lambda: clang does not give one its enclosing function's target)
                for (int j = 0; j < NA; ++j)  // (row, block) groups of 4 partials
                    s[j][i] = fold_pairs(_mm512_dpbusd_epi32(corr[j], wu[0], xs[j]), _mm512_dpbusd_epi32(corr[j], wu[1], xs[j]),
                                         ie, io);
            }
            const __m512 wd0 = wt.scales(w0, 2 * p, gidx);
            const __m512 wd1 = lone ? wd0 : wt.scales(w0, 2 * p + 1, gidx);
            for (int j = 0; j < NA; ++j) {
                __m512i t[4];
                for (int i = 0; i < 4; ++i) t[i] = fold_pairs(s[j][2 * i], s[j][2 * i + 1], ie, io);  // ... of 2
                const __m512i u0 = fold_pairs(t[0], t[1], ie, io), u1 = fold_pairs(t[2], t[3], ie, io);  // rows 0-7 / 8-15
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_permutex2var_epi32(u0, ie, u1)),
                                         _mm512_mul_ps(wd0, _mm512_set1_ps(x.d(j, 2 * p))), acc[j]);
                if (!lone)
                    acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_permutex2var_epi32(u0, io, u1)),
                                             _mm512_mul_ps(wd1, _mm512_set1_ps(x.d(j, 2 * p + 1))), acc[j]);
            }
        }
        for (int j = 0; j < NA; ++j) _mm512_mask_storeu_ps(y + j * ys + o, km, acc[j]);
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

KFN void q4_0_rows_acts(const uint8_t* rows, int64_t row_bytes, int64_t N, int64_t in, int8_t* xq, int32_t* xc,
                        float* xs) {
    const int64_t nb = in / 32, sp = (nb + 1) / 2;
    const __m512i eight = _mm512_set1_epi8(8);
    for (int64_t n = 0; n < N; ++n) {
        const BlockQ8_0* a = reinterpret_cast<const BlockQ8_0*>(rows + n * row_bytes);
        for (int64_t p = 0; p < sp; ++p) {
            const BlockQ8_0& b0 = a[2 * p];
            const bool lone = 2 * p + 1 == nb;
            const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0.qs));
            const __m256i x1 =
                lone ? _mm256_setzero_si256() : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[2 * p + 1].qs));
            // [b0 values 0-15, b1 values 0-15, b0 values 16-31, b1 values 16-31]
            const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_permute2x128_si256(x0, x1, 0x20)),
                                                 _mm256_permute2x128_si256(x0, x1, 0x31), 1);
            const int64_t k = n * sp + p;
            _mm512_storeu_si512(xq + k * 64, v);
            _mm512_storeu_si512(xc + k * 16, _mm512_sub_epi32(_mm512_setzero_si512(),
                                                                _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, v)));
            const __m128 d0 = _mm_set1_ps(h2f(b0.d)), d1 = lone ? _mm_setzero_ps() : _mm_set1_ps(h2f(a[2 * p + 1].d));
            const __m256 h = _mm256_insertf128_ps(_mm256_castps128_ps256(d0), d1, 1);
            _mm512_storeu_ps(xs + k * 16, _mm512_insertf32x8(_mm512_castps256_ps512(h), h, 1));
        }
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

void q8_0_row_block_vnni(float* y, int64_t ys, const uint8_t* act, int64_t act_bytes, int na, int64_t in, const void* w,
                         int64_t row_stride, int64_t o0, int64_t o1, bool accumulate) {
    const AQ8_0 a{act, act_bytes};
    const WQ8_0 wt{static_cast<const uint8_t*>(w), row_stride};
    if (na == 2) block_row<2>(y, ys, a, in, wt, o0, o1, accumulate);
    else block_row<1>(y, ys, a, in, wt, o0, o1, accumulate);
}

void q8_row_block_vnni(float* y, int64_t ys, const int8_t* q, const float* qs, int na, int64_t in, const int8_t* wq,
                       const float* ws, int64_t o0, int64_t o1, bool accumulate) {
    const AInt8 a{q, qs, in};
    const WInt8 wt{wq, ws, in};
    if (na == 2) block_row<2>(y, ys, a, in, wt, o0, o1, accumulate);
    else block_row<1>(y, ys, a, in, wt, o0, o1, accumulate);
}

void q4_0_rows_vnni(float* y, int64_t ys, const int8_t* xq, const int32_t* xc, const float* xs, int64_t in,
                    const void* w, int64_t row_stride, int64_t n0, int nr, int64_t o0, int64_t o1, bool accumulate) {
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    switch (nr) {
        case 8: return rows_q4_t<8>(y, ys, xq, xc, xs, in, wb, row_stride, n0, o0, o1, accumulate);
        case 7: return rows_q4_t<7>(y, ys, xq, xc, xs, in, wb, row_stride, n0, o0, o1, accumulate);
        case 6: return rows_q4_t<6>(y, ys, xq, xc, xs, in, wb, row_stride, n0, o0, o1, accumulate);
        case 5: return rows_q4_t<5>(y, ys, xq, xc, xs, in, wb, row_stride, n0, o0, o1, accumulate);
        case 4: return rows_q4_t<4>(y, ys, xq, xc, xs, in, wb, row_stride, n0, o0, o1, accumulate);
        case 3: return rows_q4_t<3>(y, ys, xq, xc, xs, in, wb, row_stride, n0, o0, o1, accumulate);
        case 2: return rows_q4_t<2, 2>(y, ys, xq, xc, xs, in, wb, row_stride, n0, o0, o1, accumulate);
        default: return rows_q4_t<1, 4>(y, ys, xq, xc, xs, in, wb, row_stride, n0, o0, o1, accumulate);
    }
}

#undef KFN

}  // namespace moe::kernels::detail
