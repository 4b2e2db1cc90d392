#include "kernels/sgemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "kernels/avx2_inline.h"
#include "kernels/cpu.h"

namespace moe::kernels {

namespace {

constexpr int64_t kMr = 6;     // rows of the register tile
constexpr int64_t kNr = 16;    // columns of the register tile (two ymm)
constexpr int64_t kKc = 256;   // k block: a 16-column B panel (16 KB) stays in L1
constexpr int64_t kMc = 120;    // row block: the packed A block (72 KB) stays in L2
constexpr int64_t kNc = 512;   // column block: the packed B block (512 KB) stays in L2/L3
// Below this many flops per thread a fork costs more than it saves.
constexpr double kMinFlopsPerThread = 4e6;

// Per-thread packing buffers, allocated once at their largest size (no allocation in a step).
struct PackBuffers {
    float* a = nullptr;  // [kMc / kMr panels][kKc][kMr]
    float* b = nullptr;  // [kNc / kNr panels][kKc][kNr]
    float* rows = nullptr;  // [kNr][kKc]: rows of W from a loader, before their transpose
    PackBuffers() {
        a = (float*)alloc_large(sizeof(float) * (kMc * kKc + 8));  // + pack_a's overhang
        b = (float*)alloc_large(sizeof(float) * kNc * kKc);
        rows = (float*)alloc_large(sizeof(float) * kNr * kKc);
    }
    ~PackBuffers() {
        free_large(a);
        free_large(b);
        free_large(rows);
    }
};

PackBuffers& pack_buffers() {
    thread_local PackBuffers buf;
    return buf;
}

// Where op(B) comes from: a stored matrix (B, ldb, trans_b), or the rows of W = op(B)^T written
// as fp32 by a loader (weights stored as bf16 / int8, converted inside the packing).
struct BSource {
    const float* B = nullptr;
    int64_t ldb = 0;
    bool trans_b = false;
    SgemmRowLoader load = nullptr;
    const void* ctx = nullptr;
};

// Packs op(B)[p0 : p0+kc, n0 : n0+nc] into panels of kNr columns: dst[panel][k][kNr], the columns
// past nc zero. op(B)[k][n] = trans_b ? B[n * ldb + k] : B[k * ldb + n].
__attribute__((target("avx2,fma"))) void pack_b(float* dst, const BSource& src, int64_t p0, int64_t kc,
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
__attribute__((target("avx2,fma"))) void pack_a(float* dst, const float* A, int64_t lda, bool trans_a,
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
__attribute__((target("avx2,fma"))) void micro_kernel(int64_t kc, const float* __restrict a,
                                                      const float* __restrict b, float* c, int64_t ldc,
                                                      float beta, int64_t mr, int64_t nr) {
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

// C[m0:m1, n0:n1] of the product, on the calling thread.
void sgemm_block(bool trans_a, const BSource& bs, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K,
                 float alpha, const float* A, int64_t lda, float beta, float* C, int64_t ldc) {
    PackBuffers& buf = pack_buffers();
    for (int64_t jc = n0; jc < n1; jc += kNc) {
        const int64_t nc = std::min(kNc, n1 - jc);
        for (int64_t pc = 0; pc < K; pc += kKc) {
            const int64_t kc = std::min(kKc, K - pc);
            const float b_eff = pc == 0 ? beta : 1.f;  // later k blocks add to the first's result
            pack_b(buf.b, bs, pc, kc, jc, nc, buf.rows);
            for (int64_t ic = m0; ic < m1; ic += kMc) {
                const int64_t mc = std::min(kMc, m1 - ic);
                pack_a(buf.a, A, lda, trans_a, alpha, ic, mc, pc, kc);
                for (int64_t jr = 0; jr < nc; jr += kNr)
                    for (int64_t ir = 0; ir < mc; ir += kMr)
                        micro_kernel(kc, buf.a + ir * kc, buf.b + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc,
                                     b_eff, std::min(kMr, mc - ir), std::min(kNr, nc - jr));
            }
        }
    }
}

}  // namespace

bool sgemm_packed_available() { return active_isa() >= Isa::avx2; }

namespace {

void sgemm_run(bool trans_a, const BSource& bs, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, float beta, float* C, int64_t ldc) {
    MOE_ASSERT(sgemm_packed_available());
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.f ? 0.f : beta * C[m * ldc + n];
        return;
    }
    // Threads split C into blocks of whole register tiles (columns when there are enough of
    // them, else rows); each block is computed exactly as on one thread.
    const double flops = 2.0 * (double)M * (double)N * (double)K;
    const int64_t col_panels = (N + kNr - 1) / kNr, row_panels = (M + kMr - 1) / kMr;
    const bool by_cols = col_panels >= 4 * num_threads() || col_panels >= row_panels;
    const int64_t panels = by_cols ? col_panels : row_panels;
    const int64_t grain = std::max<int64_t>(1, (int64_t)(kMinFlopsPerThread / (flops / (double)panels)));
    parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
        if (by_cols)
            sgemm_block(trans_a, bs, 0, M, p0 * kNr, std::min(N, p1 * kNr), K, alpha, A, lda, beta, C, ldc);
        else
            sgemm_block(trans_a, bs, p0 * kMr, std::min(M, p1 * kMr), 0, N, K, alpha, A, lda, beta, C, ldc);
    });
}

}  // namespace

void sgemm_packed(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                  int64_t ldc) {
    BSource bs;
    bs.B = B, bs.ldb = ldb, bs.trans_b = trans_b;
    sgemm_run(trans_a, bs, M, N, K, alpha, A, lda, beta, C, ldc);
}

void sgemm_packed_wrows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, SgemmRowLoader load,
                        const void* ctx, float beta, float* C, int64_t ldc) {
    BSource bs;
    bs.trans_b = true, bs.load = load, bs.ctx = ctx;
    sgemm_run(false, bs, M, N, K, 1.f, A, lda, beta, C, ldc);
}

}  // namespace moe::kernels
