#include "kernels/sgemm.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "kernels/avx2_inline.h"
#include "kernels/bf16.h"
#include "kernels/bf16_avx512_inline.h"
#include "kernels/cpu.h"

namespace moe::kernels {

namespace {

// Below this many flops per thread a fork costs more than it saves. A fork and join of the 2
// threads costs about 0.7 us here (an empty parallel_for); 0.5 MFLOP is 2-4 us of one core, so
// makeMoE's router GEMMs (512 x 8 x 128) split too: 36 -> 17 us each. How C is split never changes
// its values.
constexpr double kMinFlopsPerThread = 0.5e6;

// Where op(B) comes from: a stored matrix (B, ldb, trans_b), or the rows of W = op(B)^T written
// as fp32 by a loader (weights stored as bf16 / int8, converted inside the packing).
struct BSource {
    const float* B = nullptr;
    int64_t ldb = 0;
    bool trans_b = false;
    SgemmRowLoader load = nullptr;
    const void* ctx = nullptr;
    // or all of op(B) packed beforehand (pack_b_all), N columns in all
    const void* packed = nullptr;
    int64_t packed_n = 0;
};

// ------------------------------------------------------------------------------------------------
// fp32 on AVX2 + FMA: a 6 x 16 register tile (12 ymm accumulators), operands packed as fp32.
// ------------------------------------------------------------------------------------------------
struct Avx2F32 {
    using Elem = float;
    static constexpr int64_t kMr = 6;     // rows of the register tile
    static constexpr int64_t kNr = 16;    // columns of the register tile (two ymm)
    static constexpr int64_t kKc = 256;   // k block: a 16-column B panel (16 KB) stays in L1
    static constexpr int64_t kMc = 120;   // row block: the packed A block (120 KB) stays in L2
    static constexpr int64_t kNc = 512;   // column block: the packed B block (512 KB) stays in L2/L3
    // packed length of one row / column over a k block of kc
    static int64_t kstride(int64_t kc) { return kc; }
    static void pack_a(float* dst, const float* A, int64_t lda, bool trans_a, float alpha, int64_t m0, int64_t mc,
                       int64_t p0, int64_t kc);
    static void pack_b(float* dst, const BSource& src, int64_t p0, int64_t kc, int64_t n0, int64_t nc,
                       float* rows_tmp);
    // alpha was applied by pack_a
    static void micro(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha, float beta,
                      int64_t mr, int64_t nr);
};

// Packs op(B)[p0 : p0+kc, n0 : n0+nc] into panels of kNr columns: dst[panel][k][kNr], the columns
// past nc zero. op(B)[k][n] = trans_b ? B[n * ldb + k] : B[k * ldb + n].
__attribute__((target("avx2,fma"))) void Avx2F32::pack_b(float* dst, const BSource& src, int64_t p0, int64_t kc,
                                                         int64_t n0, int64_t nc, float* rows_tmp) {
    for (int64_t j = 0; j < nc; j += kNr) {
        float* d = dst + j * kc;  // this panel: [kc][kNr]
        const int64_t w = std::min(kNr, nc - j);
        if (!src.trans_b && !src.load) {
            const int64_t ldb = src.ldb;
            const float* s = src.B + p0 * ldb + n0 + j;
            if (w == kNr) {
                for (int64_t k = 0; k < kc; ++k) {
                    _mm256_storeu_ps(d + k * kNr, _mm256_loadu_ps(s + k * ldb));
                    _mm256_storeu_ps(d + k * kNr + 8, _mm256_loadu_ps(s + k * ldb + 8));
                }
            } else {
                for (int64_t k = 0; k < kc; ++k)
                    for (int64_t n = 0; n < kNr; ++n) d[k * kNr + n] = n < w ? s[k * ldb + n] : 0.f;
            }
            continue;
        }
        // op(B) columns are rows of a stored matrix (row n of this panel: s + n * ld, contiguous in k)
        const float* s;
        int64_t ld;
        if (src.load) {
            for (int64_t n = 0; n < w; ++n) src.load(src.ctx, n0 + j + n, p0, kc, rows_tmp + n * kKc);
            s = rows_tmp, ld = kKc;
        } else {
            s = src.B + (n0 + j) * src.ldb + p0, ld = src.ldb;
        }
        int64_t k = 0;
        if (w == kNr) {
            for (; k + 8 <= kc; k += 8) {
                transpose8x8(d + k * kNr, kNr, s + k, ld);
                transpose8x8(d + k * kNr + 8, kNr, s + 8 * ld + k, ld);
            }
        }
        for (; k < kc; ++k)
            for (int64_t n = 0; n < kNr; ++n) d[k * kNr + n] = n < w ? s[n * ld + k] : 0.f;
    }
}

// Packs alpha * op(A)[m0 : m0+mc, p0 : p0+kc] into panels of kMr rows: dst[panel][k][kMr], the
// rows past mc zero. op(A)[m][k] = trans_a ? A[k * lda + m] : A[m * lda + k].
// Writes up to 2 floats past the packed block (the buffer has room for them).
__attribute__((target("avx2,fma"))) void Avx2F32::pack_a(float* dst, const float* A, int64_t lda, bool trans_a,
                                                         float alpha, int64_t m0, int64_t mc, int64_t p0, int64_t kc) {
    const __m256 va = _mm256_set1_ps(alpha);
    for (int64_t i = 0; i < mc; i += kMr) {
        float* d = dst + i * kc;  // this panel: [kc][kMr]
        const int64_t h = std::min(kMr, mc - i);
        if (trans_a) {
            // op(A) column k of this panel is h contiguous floats: a masked load (no read past
            // them), stored as 8 floats whose 2 extra the next k overwrites
            const float* s = A + p0 * lda + m0 + i;
            const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)h), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            for (int64_t k = 0; k < kc; ++k)
                _mm256_storeu_ps(d + k * kMr, _mm256_mul_ps(va, _mm256_maskload_ps(s + k * lda, mask)));
            continue;
        }
        const float* s = A + (m0 + i) * lda + p0;
        int64_t k = 0;
        if (h == kMr) {
            // 8 k at a time: transpose 6 rows x 8 k (rows 6, 7 zero) and store each column of 6
            // as 8 floats at its place; the 2 extra floats are overwritten by the next column
            alignas(32) float t[8][8] = {};
            for (; k + 8 <= kc; k += 8) {
                for (int64_t r = 0; r < kMr; ++r)
                    _mm256_store_ps(t[r], _mm256_mul_ps(va, _mm256_loadu_ps(s + r * lda + k)));
                alignas(32) float tt[8][8];
                transpose8x8(&tt[0][0], 8, &t[0][0], 8);
                for (int64_t kk = 0; kk < 8; ++kk) _mm256_storeu_ps(d + (k + kk) * kMr, _mm256_load_ps(tt[kk]));
            }
        }
        for (; k < kc; ++k)
            for (int64_t r = 0; r < kMr; ++r) d[k * kMr + r] = r < h ? alpha * s[r * lda + k] : 0.f;
    }
}

// C[0:mr, 0:nr] = beta C + a_panel · b_panel over kc (beta == 0: C not read).
// a: [kc][kMr], b: [kc][kNr], both packed.
__attribute__((target("avx2,fma"))) void Avx2F32::micro(int64_t kc, const float* __restrict a,
                                                        const float* __restrict b, float* c, int64_t ldc,
                                                        float /*alpha*/, float beta, int64_t mr, int64_t nr) {
    // the C tile is read or written after the k loop: start fetching its lines now
    for (int64_t r = 0; r < mr; ++r) {
        _mm_prefetch((const char*)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + r * ldc + kNr - 1), _MM_HINT_T0);
    }
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
        // C[r][:] += op(A)[r][k] * op(B)[k][:]
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        __m256 av = _mm256_broadcast_ss(a + 0);
        c00 = _mm256_fmadd_ps(av, b0, c00), c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(av, b0, c10), c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(av, b0, c20), c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(av, b0, c30), c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(av, b0, c40), c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(av, b0, c50), c51 = _mm256_fmadd_ps(av, b1, c51);
        a += kMr;
        b += kNr;
    }
    const __m256 acc[kMr][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    if (mr == kMr && nr == kNr) {
        const __m256 vb = _mm256_set1_ps(beta);
        for (int64_t r = 0; r < kMr; ++r) {
            float* cr = c + r * ldc;
            for (int h = 0; h < 2; ++h) {
                __m256 v = acc[r][h];
                if (beta == 1.f) v = _mm256_add_ps(v, _mm256_loadu_ps(cr + 8 * h));
                else if (beta != 0.f) v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8 * h), v);
                _mm256_storeu_ps(cr + 8 * h, v);
            }
        }
        return;
    }
    alignas(32) float t[kMr][kNr];
    for (int64_t r = 0; r < kMr; ++r) {
        _mm256_store_ps(t[r], acc[r][0]);
        _mm256_store_ps(t[r] + 8, acc[r][1]);
    }
    for (int64_t r = 0; r < mr; ++r)
        for (int64_t n = 0; n < nr; ++n) {
            float& cv = c[r * ldc + n];
            // the same arithmetic as the full-tile stores above, so an element's value does not
            // depend on whether its tile is whole
            cv = beta == 0.f ? t[r][n] : beta == 1.f ? cv + t[r][n] : std::fma(beta, cv, t[r][n]);
        }
}

// ------------------------------------------------------------------------------------------------
// fp32 on AVX-512F: a 12 x 32 register tile (24 zmm accumulators, 2 B registers, A broadcast from
// memory), operands packed as fp32. The AVX2 kernel's exact arithmetic: the same k blocks (kKc =
// 256), alpha applied by the same multiply in the packing, each element summed over its k block by
// fused multiply-adds in ascending k from zero, then added to C (beta) by the same operation, so the
// two kernels give the same bits on every shape. It pays where the core has two full 512-bit FMA
// units (Intel Xeon Gold / Platinum, Sapphire Rapids): twice the flops per instruction; on Zen 4,
// which runs a 512-bit FMA as two 256-bit halves, it gained nothing (docs/log/performance-history.md),
// hence the calibration below.
// ------------------------------------------------------------------------------------------------
#define MOE_F32_512_TARGET __attribute__((target("avx2,fma,avx512f")))

struct Avx512F32 {
    using Elem = float;
    static constexpr int64_t kMr = 12;
    static constexpr int64_t kNr = 32;    // two zmm
    static constexpr int64_t kKc = 256;   // must equal Avx2F32::kKc: the k blocks fix the summation
    static constexpr int64_t kMc = 120;   // the packed A block (120 KB) stays in L2
    static constexpr int64_t kNc = 512;   // the packed B block (512 KB) stays in L2
    static_assert(kKc == Avx2F32::kKc, "both fp32 kernels must sum over the same k blocks");
    static int64_t kstride(int64_t kc) { return kc; }
    static void pack_a(float* dst, const float* A, int64_t lda, bool trans_a, float alpha, int64_t m0, int64_t mc,
                       int64_t p0, int64_t kc);
    static void pack_b(float* dst, const BSource& src, int64_t p0, int64_t kc, int64_t n0, int64_t nc,
                       float* rows_tmp);
    static void micro(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha, float beta,
                      int64_t mr, int64_t nr);
};

// op(B)[p0 : p0+kc, n0 : n0+nc] into panels of 32 columns: dst[panel][k][32], columns past nc zero.
MOE_F32_512_TARGET void Avx512F32::pack_b(float* dst, const BSource& src, int64_t p0, int64_t kc, int64_t n0,
                                          int64_t nc, float* rows_tmp) {
    for (int64_t j = 0; j < nc; j += kNr) {
        float* d = dst + j * kc;  // this panel: [kc][kNr]
        const int64_t w = std::min(kNr, nc - j);
        if (!src.trans_b && !src.load) {
            const int64_t ldb = src.ldb;
            const float* s = src.B + p0 * ldb + n0 + j;
            const __mmask16 m0 = lanes16(w), m1 = lanes16(w - 16);
            for (int64_t k = 0; k < kc; ++k) {
                _mm512_storeu_ps(d + k * kNr, _mm512_maskz_loadu_ps(m0, s + k * ldb));
                _mm512_storeu_ps(d + k * kNr + 16, _mm512_maskz_loadu_ps(m1, s + k * ldb + 16));
            }
            continue;
        }
        // op(B) columns are rows of a stored matrix (row n of this panel: s + n * ld, contiguous in k)
        const float* s;
        int64_t ld;
        if (src.load) {
            for (int64_t n = 0; n < w; ++n) src.load(src.ctx, n0 + j + n, p0, kc, rows_tmp + n * kKc);
            s = rows_tmp, ld = kKc;
        } else {
            s = src.B + (n0 + j) * src.ldb + p0, ld = src.ldb;
        }
        int64_t k = 0;
        if (w == kNr) {
            for (; k + 8 <= kc; k += 8)
                for (int64_t q = 0; q < kNr; q += 8) transpose8x8(d + k * kNr + q, kNr, s + q * ld + k, ld);
        }
        for (; k < kc; ++k)
            for (int64_t n = 0; n < kNr; ++n) d[k * kNr + n] = n < w ? s[n * ld + k] : 0.f;
    }
}

// alpha * op(A)[m0 : m0+mc, p0 : p0+kc] into panels of 12 rows: dst[panel][k][12], rows past mc
// zero; alpha multiplied as Avx2F32::pack_a does. Writes nothing past the packed block.
MOE_F32_512_TARGET void Avx512F32::pack_a(float* dst, const float* A, int64_t lda, bool trans_a, float alpha,
                                          int64_t m0, int64_t mc, int64_t p0, int64_t kc) {
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < mc; i += kMr) {
        float* d = dst + i * kc;  // this panel: [kc][kMr]
        const int64_t h = std::min(kMr, mc - i);
        if (trans_a) {
            // op(A) column k of this panel: h contiguous floats
            const float* s = A + p0 * lda + m0 + i;
            const __mmask16 m = lanes16(h), store = lanes16(kMr);
            for (int64_t k = 0; k < kc; ++k)
                _mm512_mask_storeu_ps(d + k * kMr, store, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, s + k * lda)));
            continue;
        }
        const float* s = A + (m0 + i) * lda + p0;
        int64_t k = 0;
        if (h == kMr) {
            // 8 k at a time: 12 rows (rows 12..15 zero) x 8 k transposed as two 8 x 8 blocks
            alignas(32) float t[16][8] = {};
            const __m256 va8 = _mm256_set1_ps(alpha);
            for (; k + 8 <= kc; k += 8) {
                for (int64_t r = 0; r < kMr; ++r)
                    _mm256_store_ps(t[r], _mm256_mul_ps(va8, _mm256_loadu_ps(s + r * lda + k)));
                alignas(32) float lo[8][8], hi[8][8];
                transpose8x8(&lo[0][0], 8, &t[0][0], 8);
                transpose8x8(&hi[0][0], 8, &t[8][0], 8);
                for (int64_t kk = 0; kk < 8; ++kk) {
                    _mm256_storeu_ps(d + (k + kk) * kMr, _mm256_load_ps(lo[kk]));
                    _mm_storeu_ps(d + (k + kk) * kMr + 8, _mm_load_ps(hi[kk]));
                }
            }
        }
        for (; k < kc; ++k)
            for (int64_t r = 0; r < kMr; ++r) d[k * kMr + r] = r < h ? alpha * s[r * lda + k] : 0.f;
    }
}

// C[0:mr, 0:nr] = beta C + a_panel · b_panel over kc, computing the first MR >= mr rows of the
// 12-row panel (an expert's last row tile is often part empty). Per element the AVX2 kernel's
// operations: acc = fma(a, b, acc) for k ascending from acc = 0, then beta == 0: acc; beta == 1:
// acc + C; else fma(beta, C, acc).
template <int MR>
MOE_F32_512_TARGET void f32_micro512(int64_t kc, const float* __restrict a, const float* __restrict b, float* c,
                                     int64_t ldc, float beta, int64_t mr, int64_t nr) {
    constexpr int64_t kMr = Avx512F32::kMr, kNr = Avx512F32::kNr;
    for (int64_t r = 0; r < mr; ++r) {  // the C tile's lines, fetched during the k loop
        _mm_prefetch((const char*)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + r * ldc + 16), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + r * ldc + kNr - 1), _MM_HINT_T0);
    }
    __m512 acc[MR][2];
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            const __m512 av = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
        }
        a += kMr;
        b += kNr;
    }
    const __m512 vb = _mm512_set1_ps(beta);
    const __mmask16 m[2] = {lanes16(nr), lanes16(nr - 16)};
    for (int64_t r = 0; r < mr; ++r) {
        float* cr = c + r * ldc;
        for (int hh = 0; hh < 2; ++hh) {
            if (!m[hh]) continue;
            __m512 v = acc[r][hh];
            if (beta == 1.f) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m[hh], cr + 16 * hh));
            else if (beta != 0.f) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[hh], cr + 16 * hh), v);
            _mm512_mask_storeu_ps(cr + 16 * hh, m[hh], v);
        }
    }
}

MOE_F32_512_TARGET void Avx512F32::micro(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                         float /*alpha*/, float beta, int64_t mr, int64_t nr) {
    if (mr <= 4) f32_micro512<4>(kc, a, b, c, ldc, beta, mr, nr);
    else if (mr <= 8) f32_micro512<8>(kc, a, b, c, ldc, beta, mr, nr);
    else f32_micro512<12>(kc, a, b, c, ldc, beta, mr, nr);
}

#undef MOE_F32_512_TARGET

// ------------------------------------------------------------------------------------------------
// bf16 where the CPU has no bf16 instructions (AVX2-only hosts such as Zen 3, or MOE_ISA=avx2): the
// operands are rounded to bf16 inside the fp32 kernels' packing (in place, over the packed block
// while it is in L1/L2) and multiplied by the fp32 micro-kernel. The bits are those of rounding both
// matrices first and running the fp32 GEMM on the rounded copies (what gemm_f32 did before: a serial
// pass and two scratch copies per GEMM, and no op(B) packed ahead), at the fp32 GEMM's speed.
// alpha is applied after the rounding, as the fp32 packing of a rounded A applies it.
// ------------------------------------------------------------------------------------------------
template <class Base>
struct RoundedBf16 : Base {
    static void pack_a(float* dst, const float* A, int64_t lda, bool trans_a, float alpha, int64_t m0, int64_t mc,
                       int64_t p0, int64_t kc) {
        Base::pack_a(dst, A, lda, trans_a, 1.f, m0, mc, p0, kc);
        const int64_t n = (mc + Base::kMr - 1) / Base::kMr * Base::kMr * kc;  // whole panels, pads zero
        bf16_round_n(dst, dst, n);
        if (alpha != 1.f)
            for (int64_t i = 0; i < n; ++i) dst[i] = alpha * dst[i];
    }
    static void pack_b(float* dst, const BSource& src, int64_t p0, int64_t kc, int64_t n0, int64_t nc,
                       float* rows_tmp) {
        Base::pack_b(dst, src, p0, kc, n0, nc, rows_tmp);
        bf16_round_n(dst, dst, (nc + Base::kNr - 1) / Base::kNr * Base::kNr * kc);
    }
};

// ------------------------------------------------------------------------------------------------
// bf16 on AVX512_BF16: vdpbf16ps multiplies pairs of bf16 along k and adds both products to an
// fp32 lane, so the packed operands are 32-bit words holding (op(X)[.][k], op(X)[.][k+1]) as bf16,
// rounded from fp32 inside the packing (no separate rounding pass, half the packed bytes). A
// 12 x 32 register tile: 24 zmm accumulators, 2 B registers, 1 broadcast of A.
//
// Why hand-written: oneDNN's bf16 matmul needs bf16 copies of both operands made beforehand and a
// primitive per shape (ragged rows per expert), and its split over threads changes the sums. Here
// the rounding is folded into the packing and each element of C is summed in one fixed order.
// ------------------------------------------------------------------------------------------------
struct Avx512Bf16 {
    using Elem = uint32_t;  // a pair of bf16: low half k (even), high half k + 1
    static constexpr int64_t kMr = 12;
    static constexpr int64_t kNr = 32;    // two zmm of 16 fp32 lanes
    static constexpr int64_t kKc = 256;   // 128 pairs: a 32-column B panel (16 KB) stays in L1
    static constexpr int64_t kMc = 240;   // the packed A block (120 KB) stays in L2
    static constexpr int64_t kNc = 512;   // the packed B block (256 KB) stays in L2
    static int64_t kstride(int64_t kc) { return (kc + 1) / 2; }
    static void pack_a(uint32_t* dst, const float* A, int64_t lda, bool trans_a, float alpha, int64_t m0,
                       int64_t mc, int64_t p0, int64_t kc);
    static void pack_b(uint32_t* dst, const BSource& src, int64_t p0, int64_t kc, int64_t n0, int64_t nc,
                       float* rows_tmp);
    // the products are of the rounded operands; alpha scales their sums
    static void micro(int64_t kc, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, float alpha,
                      float beta, int64_t mr, int64_t nr);
};

// GCC 12 warns that the _mm512_undefined_* placeholders inside its own shift / convert intrinsics
// "may be used uninitialized" (GCC bug 105593); they are placeholders for fully written lanes.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define MOE_BF16_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
using bf16x::bf16_pairs;
using bf16x::bf16_round_hi;
using bf16x::bf16_run;
using bf16x::any_denormal;
using bf16x::transpose16x16_words;



// Words of (r0[i], r1[i]) for the first `m` lanes (the rest zero): two rows of op(X) along k, k + 1
// paired lane by lane; without has_r1 (an odd k tail) the high halves are zero.
MOE_BF16_TARGET inline __m512i bf16_pair_rows(const float* r0, const float* r1, bool has_r1, __mmask16 m) {
    return bf16_pairs(_mm512_maskz_loadu_ps(m, r0), has_r1 ? _mm512_maskz_loadu_ps(m, r1) : _mm512_setzero_ps());
}


// A run of kc floats (a row of op(X) along k) as kstride(kc) words; the odd tail's high half zero.
MOE_BF16_TARGET inline void bf16_row_words(uint32_t* dst, const float* s, int64_t kc) {
    for (int64_t k = 0; k < kc; k += 32)
        _mm512_mask_storeu_epi32(dst + k / 2, lanes16((std::min<int64_t>(32, kc - k) + 1) / 2),
                                 bf16_run(s + k, std::min<int64_t>(32, kc - k)));
}


// v[q] = the words of k pair q (0..15) of 16 stored rows that run along k (row r at s + r * ld, 32
// floats each; the rows from `rows` on read as zero): rounded and transposed in registers.
MOE_BF16_TARGET inline void pair_columns16(__m512i (&v)[16], const float* s, int64_t ld, int64_t rows) {
    for (int r = 0; r < 16; ++r) v[r] = r < rows ? bf16_run(s + r * ld, 32) : _mm512_setzero_si512();
    transpose16x16_words(v);
}

// op(B)[p0 : p0+kc, n0 : n0+nc] into panels of kNr columns: dst[panel][k/2][kNr] words, columns
// past nc and the odd k tail zero.
MOE_BF16_TARGET void Avx512Bf16::pack_b(uint32_t* dst, const BSource& src, int64_t p0, int64_t kc, int64_t n0,
                                        int64_t nc, float* rows_tmp) {
    MOE_ASSERT(!src.load);
    const int64_t kp = kstride(kc);
    for (int64_t j = 0; j < nc; j += kNr) {
        uint32_t* d = dst + j * kp;  // this panel: [kp][kNr]
        const int64_t w = std::min(kNr, nc - j);
        if (!src.trans_b) {
            // op(B) rows k and k + 1 are stored rows: their 32 columns pair up lane by lane
            const int64_t ldb = src.ldb;
            const float* s = src.B + p0 * ldb + n0 + j;
            const __mmask16 m0 = lanes16(w), m1 = lanes16(w - 16);
            for (int64_t p = 0; p < kp; ++p) {
                const float* r0 = s + 2 * p * ldb;
                const bool has_hi = 2 * p + 1 < kc;
                _mm512_storeu_si512(d + p * kNr, bf16_pair_rows(r0, r0 + ldb, has_hi, m0));
                _mm512_storeu_si512(d + p * kNr + 16, bf16_pair_rows(r0 + 16, r0 + ldb + 16, has_hi, m1));
            }
            continue;
        }
        // op(B) column n is stored row n, contiguous in k
        if (w == kNr && kc % 32 == 0) {
            // whole panel, k in runs of 32: 16 columns x 16 k pairs at a time
            for (int64_t nb = 0; nb < kNr; nb += 16)
                for (int64_t pb = 0; pb < kp; pb += 16) {
                    __m512i v[16];
                    pair_columns16(v, src.B + (n0 + j + nb) * src.ldb + p0 + 2 * pb, src.ldb, 16);
                    for (int q = 0; q < 16; ++q) _mm512_storeu_si512(d + (pb + q) * kNr + nb, v[q]);
                }
            continue;
        }
        // else: its words (columns past w zero), then a transpose in 8 x 8 blocks of words
        uint32_t* t = reinterpret_cast<uint32_t*>(rows_tmp);  // [kNr][kp]
        for (int64_t n = 0; n < w; ++n) bf16_row_words(t + n * kp, src.B + (n0 + j + n) * src.ldb + p0, kc);
        std::fill(t + w * kp, t + kNr * kp, 0u);
        int64_t p = 0;
        for (; p + 8 <= kp; p += 8)
            for (int64_t n = 0; n < kNr; n += 8)
                transpose8x8(reinterpret_cast<float*>(d + p * kNr + n), kNr,
                             reinterpret_cast<const float*>(t + n * kp + p), kp);
        for (; p < kp; ++p)
            for (int64_t n = 0; n < kNr; ++n) d[p * kNr + n] = t[n * kp + p];
    }
}

// op(A)[m0 : m0+mc, p0 : p0+kc] into panels of kMr rows: dst[panel][k/2][kMr] words, rows past mc
// and the odd k tail zero. alpha is not applied here (see micro).
MOE_BF16_TARGET void Avx512Bf16::pack_a(uint32_t* dst, const float* A, int64_t lda, bool trans_a, float /*alpha*/,
                                        int64_t m0, int64_t mc, int64_t p0, int64_t kc) {
    const int64_t kp = kstride(kc);
    // words of the panel's rows for the non-transposed case; rows kMr..15 stay zero (they feed
    // the second 8 x 8 transpose only)
    alignas(64) uint32_t t[16][kKc / 2];
    if (!trans_a)
        for (int64_t r = kMr; r < 16; ++r) std::fill(t[r], t[r] + kp, 0u);
    for (int64_t i = 0; i < mc; i += kMr) {
        uint32_t* d = dst + i * kp;  // this panel: [kp][kMr]
        const int64_t h = std::min(kMr, mc - i);
        if (trans_a) {
            // op(A) columns k and k + 1 are stored rows: h contiguous floats each
            const float* s = A + p0 * lda + m0 + i;
            const __mmask16 m = lanes16(h);
            for (int64_t p = 0; p < kp; ++p) {
                const float* r0 = s + 2 * p * lda;
                _mm512_mask_storeu_epi32(d + p * kMr, lanes16(kMr), bf16_pair_rows(r0, r0 + lda, 2 * p + 1 < kc, m));
            }
            continue;
        }
        // op(A) row r is stored row r, contiguous in k
        if (kc % 32 == 0) {
            // k in runs of 32: the panel's h rows (zero rows after them) 16 k pairs at a time, 12
            // words stored per k pair
            for (int64_t pb = 0; pb < kp; pb += 16) {
                __m512i v[16];
                pair_columns16(v, A + (m0 + i) * lda + p0 + 2 * pb, lda, h);
                for (int q = 0; q < 16; ++q) _mm512_mask_storeu_epi32(d + (pb + q) * kMr, lanes16(kMr), v[q]);
            }
            continue;
        }
        // else: its words (rows past h zero), then a transpose in 8 x 8 blocks of words. Rows 8..15
        // go first: each of their 8-word stores spills 4 words into the next k pair's rows 0..3,
        // which the rows 0..7 block then writes (the last spill lands past the panel: the next
        // panel or the buffer's slack).
        for (int64_t r = 0; r < h; ++r) bf16_row_words(t[r], A + (m0 + i + r) * lda + p0, kc);
        for (int64_t r = h; r < kMr; ++r) std::fill(t[r], t[r] + kp, 0u);
        int64_t p = 0;
        for (; p + 8 <= kp; p += 8) {
            transpose8x8(reinterpret_cast<float*>(d + p * kMr + 8), kMr, reinterpret_cast<const float*>(&t[8][p]),
                         kKc / 2);
            transpose8x8(reinterpret_cast<float*>(d + p * kMr), kMr, reinterpret_cast<const float*>(&t[0][p]),
                         kKc / 2);
        }
        for (; p < kp; ++p)
            for (int64_t r = 0; r < kMr; ++r) d[p * kMr + r] = t[r][p];
    }
}

// C[0:mr, 0:nr] = alpha (a_panel · b_panel) + beta C over kc (beta == 0: C not read), computing the
// first MR >= mr rows of the 12-row panel: an expert's last row tile is often part empty (a block of
// 75 rows ends with 3), and the rows past MR are zero padding not worth multiplying.
template <int MR>
MOE_BF16_TARGET void bf16_micro(int64_t kc, const uint32_t* __restrict a, const uint32_t* __restrict b, float* c,
                                int64_t ldc, float alpha, float beta, int64_t mr, int64_t nr) {
    constexpr int64_t kMr = Avx512Bf16::kMr, kNr = Avx512Bf16::kNr;
    for (int64_t r = 0; r < mr; ++r) {  // the C tile's lines, fetched during the k loop
        _mm_prefetch((const char*)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + r * ldc + 16), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + r * ldc + kNr - 1), _MM_HINT_T0);
    }
    __m512 acc[MR][2];
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const int64_t kp = Avx512Bf16::kstride(kc);
    for (int64_t p = 0; p < kp; ++p) {
        // C[r][:] += op(A)[r][k] op(B)[k][:] + op(A)[r][k+1] op(B)[k+1][:]
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
        a += kMr;
        b += kNr;
    }
    // the same arithmetic for whole and partial tiles (masks), so a value does not depend on where
    // its tile falls
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    const __mmask16 m[2] = {lanes16(nr), lanes16(nr - 16)};
    for (int64_t r = 0; r < mr; ++r) {
        float* cr = c + r * ldc;
        for (int hh = 0; hh < 2; ++hh) {
            if (!m[hh]) continue;
            __m512 v = alpha == 1.f ? acc[r][hh] : _mm512_mul_ps(va, acc[r][hh]);
            if (beta == 1.f) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m[hh], cr + 16 * hh));
            else if (beta != 0.f) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[hh], cr + 16 * hh), v);
            _mm512_mask_storeu_ps(cr + 16 * hh, m[hh], v);
        }
    }
}

MOE_BF16_TARGET void Avx512Bf16::micro(int64_t kc, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc,
                                       float alpha, float beta, int64_t mr, int64_t nr) {
    if (mr <= 4) bf16_micro<4>(kc, a, b, c, ldc, alpha, beta, mr, nr);
    else if (mr <= 8) bf16_micro<8>(kc, a, b, c, ldc, alpha, beta, mr, nr);
    else bf16_micro<12>(kc, a, b, c, ldc, alpha, beta, mr, nr);
}

#undef MOE_BF16_TARGET
#pragma GCC diagnostic pop

// ------------------------------------------------------------------------------------------------
// The driver (BLIS loops), shared by the kernels above.
// ------------------------------------------------------------------------------------------------

// Per-thread packing buffers, allocated once at their largest size (no allocation in a step).
template <class Kern>
struct PackBuffers {
    using E = typename Kern::Elem;
    E* a = nullptr;         // [kMc / kMr panels][kstride(kKc)][kMr]
    E* b = nullptr;         // [kNc / kNr panels][kstride(kKc)][kNr]
    float* rows = nullptr;  // [kNr][kKc]: rows of op(B)^T before their transpose
    PackBuffers() {
        a = (E*)alloc_large(sizeof(E) * (Kern::kMc * Kern::kstride(Kern::kKc) + 16));  // + pack_a's overhang
        b = (E*)alloc_large(sizeof(E) * Kern::kNc * Kern::kstride(Kern::kKc));
        rows = (float*)alloc_large(sizeof(float) * Kern::kNr * Kern::kKc);
    }
    ~PackBuffers() {
        free_large(a);
        free_large(b);
        free_large(rows);
    }
};

template <class Kern>
PackBuffers<Kern>& pack_buffers() {
    thread_local PackBuffers<Kern> buf;
    return buf;
}

// All of op(B) (K, N) packed at once, for GEMMs that share it: the k blocks one after another, each
// holding the panels of all N columns ([kstride(kc)][kNr] each), so the block of columns from jc on
// is laid out exactly as pack_b writes it.
template <class Kern>
int64_t packed_b_elems(int64_t K, int64_t N) {
    const int64_t panels = (N + Kern::kNr - 1) / Kern::kNr;
    const int64_t full = K / Kern::kKc, tail = K % Kern::kKc;
    return panels * Kern::kNr * (full * Kern::kstride(Kern::kKc) + (tail ? Kern::kstride(tail) : 0));
}

// Where the panel of columns from jc (a multiple of kNr) of the k block from pc starts.
template <class Kern>
int64_t packed_b_offset(int64_t K, int64_t N, int64_t pc, int64_t jc) {
    const int64_t panels = (N + Kern::kNr - 1) / Kern::kNr;
    const int64_t ks = Kern::kstride(std::min(Kern::kKc, K - pc));  // this block's; those before are whole
    return (pc / Kern::kKc) * panels * Kern::kNr * Kern::kstride(Kern::kKc) + (jc / Kern::kNr) * Kern::kNr * ks;
}

template <class Kern>
void pack_b_all(typename Kern::Elem* dst, const BSource& bs, int64_t K, int64_t N) {
    PackBuffers<Kern>& buf = pack_buffers<Kern>();
    for (int64_t pc = 0; pc < K; pc += Kern::kKc)
        Kern::pack_b(dst + packed_b_offset<Kern>(K, N, pc, 0), bs, pc, std::min(Kern::kKc, K - pc), 0, N, buf.rows);
}

// C[m0:m1, n0:n1] of the product, on the calling thread.
template <class Kern>
void gemm_block(bool trans_a, const BSource& bs, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K,
                float alpha, const float* A, int64_t lda, float beta, float* C, int64_t ldc) {
    PackBuffers<Kern>& buf = pack_buffers<Kern>();
    for (int64_t jc = n0; jc < n1; jc += Kern::kNc) {
        const int64_t nc = std::min(Kern::kNc, n1 - jc);
        for (int64_t pc = 0; pc < K; pc += Kern::kKc) {
            const int64_t kc = std::min(Kern::kKc, K - pc), ks = Kern::kstride(kc);
            const float b_eff = pc == 0 ? beta : 1.f;  // later k blocks add to the first's result
            const typename Kern::Elem* bp = buf.b;
            if (bs.packed)
                bp = static_cast<const typename Kern::Elem*>(bs.packed) + packed_b_offset<Kern>(K, bs.packed_n, pc, jc);
            else
                Kern::pack_b(buf.b, bs, pc, kc, jc, nc, buf.rows);
            for (int64_t ic = m0; ic < m1; ic += Kern::kMc) {
                const int64_t mc = std::min(Kern::kMc, m1 - ic);
                Kern::pack_a(buf.a, A, lda, trans_a, alpha, ic, mc, pc, kc);
                for (int64_t jr = 0; jr < nc; jr += Kern::kNr)
                    for (int64_t ir = 0; ir < mc; ir += Kern::kMr)
                        Kern::micro(kc, buf.a + ir * ks, bp + jr * ks, C + (ic + ir) * ldc + jc + jr, ldc, alpha,
                                    b_eff, std::min(Kern::kMr, mc - ir), std::min(Kern::kNr, nc - jr));
            }
        }
    }
}

template <class Kern>
void gemm_run(bool trans_a, const BSource& bs, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, float beta, float* C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.f ? 0.f : beta * C[m * ldc + n];
        return;
    }
    // Threads split C into blocks of whole register tiles; each block is computed exactly as on
    // one thread. A split by columns has every thread pack all of op(A) (M x K), a split by rows
    // all of op(B) (K x N): split so that the smaller operand is the one packed twice, as long as
    // there are enough tiles that way.
    const double flops = 2.0 * (double)M * (double)N * (double)K;
    const int64_t col_panels = (N + Kern::kNr - 1) / Kern::kNr, row_panels = (M + Kern::kMr - 1) / Kern::kMr;
    const int64_t nt = num_threads();
    const bool by_cols = row_panels < 4 * nt || (M <= N && col_panels >= 4 * nt);
    const int64_t panels = by_cols ? col_panels : row_panels;
    const int64_t grain = std::max<int64_t>(1, (int64_t)(kMinFlopsPerThread / (flops / (double)panels)));
    parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
        if (by_cols)
            gemm_block<Kern>(trans_a, bs, 0, M, p0 * Kern::kNr, std::min(N, p1 * Kern::kNr), K, alpha, A, lda, beta,
                             C, ldc);
        else
            gemm_block<Kern>(trans_a, bs, p0 * Kern::kMr, std::min(M, p1 * Kern::kMr), 0, N, K, alpha, A, lda, beta,
                             C, ldc);
    });
}

// ------------------------------------------------------------------------------------------------
// Which fp32 kernel runs: both give the same bits, so the choice is about speed only. Whether the
// 512-bit kernel pays depends on the core, not on anything CPUID says (Intel Xeon Gold/Platinum
// have two 512-bit FMA units, Silver/Bronze one; Zen 4 splits 512-bit FMAs into 256-bit halves), so
// it is measured: once per process, on the calling thread, both kernels time a fixed GEMM shaped
// like training's expert products (96 x 256 x 256, with its packing, best of 5 alternating runs;
// about a millisecond), and the 512-bit one runs where it is at least 10% faster.
// ------------------------------------------------------------------------------------------------

SgemmKernel g_sgemm_request = SgemmKernel::automatic;

struct Calibration {
    double gflops_avx2 = 0, gflops_avx512 = 0;
};

template <class Kern>
double time_block(const BSource& bs, int64_t M, int64_t N, int64_t K, const float* A, float* C) {
    const auto t0 = std::chrono::steady_clock::now();
    gemm_block<Kern>(false, bs, 0, M, 0, N, K, 1.f, A, K, 0.f, C, N);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Calibration calibrate() {
    constexpr int64_t M = 96, N = 256, K = 256;
    float* A = (float*)alloc_large(sizeof(float) * (M * K + K * N + M * N));
    float* B = A + M * K;
    float* C = B + K * N;
    for (int64_t i = 0; i < M * K + K * N; ++i) A[i] = (float)((i * 37) % 101) / 101.f - 0.5f;
    BSource bs;
    bs.B = B, bs.ldb = N;
    double best2 = 1e30, best512 = 1e30;
    for (int rep = 0; rep < 6; ++rep) {  // the first pair warms caches and the packing buffers up
        const double t2 = time_block<Avx2F32>(bs, M, N, K, A, C), t5 = time_block<Avx512F32>(bs, M, N, K, A, C);
        if (rep > 0) best2 = std::min(best2, t2), best512 = std::min(best512, t5);
    }
    free_large(A);
    const double flops = 2.0 * M * N * K;
    return {flops / best2 / 1e9, flops / best512 / 1e9};
}

const Calibration& calibration() {
    static const Calibration c = calibrate();
    return c;
}

bool avx512_f32_possible() { return active_isa() >= Isa::avx512 && cpu_features().avx512f; }

}  // namespace

bool sgemm_packed_available() { return active_isa() >= Isa::avx2; }

bool sgemm_bf16_available() {
    return active_isa() >= Isa::avx512 && cpu_features().avx512_bf16 && cpu_features().avx512dq;
}

void set_sgemm_kernel(SgemmKernel k) { g_sgemm_request = k; }

SgemmKernel parse_sgemm_kernel(const std::string& v, const char* where) {
    if (v == "auto") return SgemmKernel::automatic;
    if (v == "avx2") return SgemmKernel::avx2;
    if (v == "avx512") return SgemmKernel::avx512;
    fail(where, " must be \"auto\", \"avx2\" or \"avx512\", got \"", v, "\"");
}

SgemmKernel sgemm_kernel() {
    if (!avx512_f32_possible()) return SgemmKernel::avx2;
    if (g_sgemm_request != SgemmKernel::automatic) return g_sgemm_request;
    const Calibration& c = calibration();
    return c.gflops_avx512 >= 1.10 * c.gflops_avx2 ? SgemmKernel::avx512 : SgemmKernel::avx2;
}

// The kernel for a GEMM of N columns (the shape class). Calibrated: the AVX-512 one where it won,
// but not for N <= 16 (the router's 8 columns, say), which fill one AVX2 panel and only a part of
// a 32-column one (makemoe's router 512 x 8 x 128: 37 GFLOP/s on the AVX2 kernel, 32 on the
// AVX-512 one, build/bench/gemm_shapes); MOE_SGEMM=avx512 runs it on every shape. N alone
// decides, so op(B) packed beforehand (K and N known, M not) and its GEMM agree.
static bool use_avx512(int64_t N) {
    const SgemmKernel k = sgemm_kernel();
    return k == SgemmKernel::avx512 && (g_sgemm_request == SgemmKernel::avx512 || N > Avx2F32::kNr);
}

std::string sgemm_kernel_description() {
    const SgemmKernel k = sgemm_kernel();
    if (!avx512_f32_possible()) return "packed AVX2 6x16";
    if (g_sgemm_request != SgemmKernel::automatic)
        return k == SgemmKernel::avx2 ? "packed AVX2 6x16 (MOE_SGEMM)" : "packed AVX-512 12x32 (MOE_SGEMM)";
    const Calibration& c = calibration();
    char buf[192];
    if (k == SgemmKernel::avx512)
        std::snprintf(buf, sizeof buf,
                      "packed AVX-512 12x32, AVX2 6x16 for N <= 16 (calibrated: %.0f vs %.0f GFLOP/s on 1 thread)",
                      c.gflops_avx512, c.gflops_avx2);
    else
        std::snprintf(buf, sizeof buf, "packed AVX2 6x16 (calibrated: %.0f GFLOP/s, AVX-512 12x32 %.0f, on 1 thread)",
                      c.gflops_avx2, c.gflops_avx512);
    return buf;
}

// Calls f with (an empty value of) the kernel that runs a GEMM of N columns in this form.
template <class F>
static void with_kernel(SgemmForm form, int64_t N, F&& f) {
    switch (form) {
        case SgemmForm::bf16_native: return f(Avx512Bf16{});
        case SgemmForm::bf16_emulated: return use_avx512(N) ? f(RoundedBf16<Avx512F32>{}) : f(RoundedBf16<Avx2F32>{});
        case SgemmForm::fp32: return use_avx512(N) ? f(Avx512F32{}) : f(Avx2F32{});
    }
}

static bool form_available(SgemmForm form) {
    return form == SgemmForm::bf16_native ? sgemm_bf16_available() : sgemm_packed_available();
}

// C = alpha op(A) op(B) + beta C in this form, op(B) read from bs
static void run_form(SgemmForm form, bool trans_a, const BSource& bs, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* A, int64_t lda, float beta, float* C, int64_t ldc) {
    MOE_ASSERT(form_available(form));
    with_kernel(form, N, [&](auto k) { gemm_run<decltype(k)>(trans_a, bs, M, N, K, alpha, A, lda, beta, C, ldc); });
}

static BSource stored_b(const float* B, int64_t ldb, bool trans_b) {
    BSource bs;
    bs.B = B, bs.ldb = ldb, bs.trans_b = trans_b;
    return bs;
}

void sgemm_packed(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                  int64_t ldc) {
    run_form(SgemmForm::fp32, trans_a, stored_b(B, ldb, trans_b), M, N, K, alpha, A, lda, beta, C, ldc);
}

void sgemm_packed_wrows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, SgemmRowLoader load,
                        const void* ctx, float beta, float* C, int64_t ldc) {
    BSource bs;
    bs.trans_b = true, bs.load = load, bs.ctx = ctx;
    run_form(SgemmForm::fp32, false, bs, M, N, K, 1.f, A, lda, beta, C, ldc);
}

void sgemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    run_form(SgemmForm::bf16_native, trans_a, stored_b(B, ldb, trans_b), M, N, K, alpha, A, lda, beta, C, ldc);
}

void sgemm_bf16_emulated(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    run_form(SgemmForm::bf16_emulated, trans_a, stored_b(B, ldb, trans_b), M, N, K, alpha, A, lda, beta, C, ldc);
}

int64_t sgemm_packed_b_words(SgemmForm form, int64_t K, int64_t N) {
    int64_t words = 0;  // the rounded forms share their fp32 kernel's layout
    with_kernel(form, N, [&](auto k) { words = packed_b_elems<decltype(k)>(K, N); });
    return words;
}

void sgemm_pack_b(SgemmForm form, bool trans_b, int64_t K, int64_t N, const float* B, int64_t ldb, void* dst) {
    MOE_ASSERT(form_available(form));
    with_kernel(form, N, [&](auto k) {
        using Kern = decltype(k);
        pack_b_all<Kern>(static_cast<typename Kern::Elem*>(dst), stored_b(B, ldb, trans_b), K, N);
    });
}

void sgemm_packed_b(SgemmForm form, bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const void* packed_b, float beta, float* C, int64_t ldc) {
    BSource bs;  // bf16_emulated: B was rounded when packed; A is rounded in its packing
    bs.packed = packed_b, bs.packed_n = N;
    run_form(form, trans_a, bs, M, N, K, alpha, A, lda, beta, C, ldc);
}

}  // namespace moe::kernels
