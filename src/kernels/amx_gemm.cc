#include "kernels/amx_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "kernels/avx2_inline.h"
#include "kernels/bf16_avx512_inline.h"
#include "kernels/bf16.h"
#include "kernels/cpu.h"

namespace moe::kernels {

namespace {

constexpr int64_t kT = 16;           // rows of a tile (of C and A; k pairs of B), words per row
constexpr int64_t kKs = 32;          // k per tile slice (16 pairs)
constexpr int64_t kTileWords = 256;  // 16 x 16 words = 1 KiB
// Below this many flops per thread a fork costs more than it saves (as in sgemm.cc).
constexpr double kMinFlopsPerThread = 0.5e6;

int64_t strips(int64_t n) { return (n + kT - 1) / kT; }
int64_t slices(int64_t k) { return (k + kKs - 1) / kKs; }

// GCC 12 warns that the _mm512_undefined_* placeholders inside its own intrinsics "may be used
// uninitialized" (GCC bug 105593): they are placeholders for fully written lanes.
#pragma GCC diagnostic push
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define MOE_AMX_PACK_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define MOE_AMX_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))



// Lines [0, lines) of an operand -- rows of op(A) or columns of op(B) -- packed as strips of 16
// lines over the slices [s0, s1) of K: strip j at dst + j * S * 256 words, its slice sl at
// + sl * 256 (S = slices(K)); lines past `lines` and k past K zero. A line is stored either
// contiguous in k (line i at src + i * ld, element k at + k) or across (element k of line i at
// src + k * ld + i). A tiles hold lines as rows (word [line][pair]), B tiles as columns (word
// [pair][line]): `lines_are_rows` picks. Each form walks memory in stored order (one row after
// another), which the hardware prefetchers follow; strided walks cost more than the tiles' work.
MOE_AMX_PACK_TARGET void pack_lines(uint32_t* dst, const float* src, int64_t ld, bool contiguous, int64_t lines,
                                    int64_t K, bool lines_are_rows, int64_t s0, int64_t s1) {
    const int64_t S = slices(K), J = strips(lines);
    if (contiguous && lines_are_rows) {
        // op(A) rows: row by row along k; each row's 16 pairs of a slice are its tile row
        for (int64_t j = 0; j < J; ++j)
            for (int64_t i = 0; i < kT; ++i) {
                const int64_t line = j * kT + i;
                uint32_t* d = dst + j * S * kTileWords + i * kT;
                for (int64_t sl = s0; sl < s1; ++sl) {
                    const int64_t k0 = sl * kKs;
                    const __m512i v = line < lines ? bf16x::bf16_run(src + line * ld + k0, std::min(kKs, K - k0))
                                                   : _mm512_setzero_si512();
                    _mm512_storeu_si512(d + sl * kTileWords, v);
                }
            }
        return;
    }
    if (contiguous) {
        // op(B) columns stored as rows (op(B) = W^T): 16 columns' pairs, transposed to tile rows
        for (int64_t j = 0; j < J; ++j)
            for (int64_t sl = s0; sl < s1; ++sl) {
                const int64_t k0 = sl * kKs, kn = std::min(kKs, K - k0);
                __m512i v[16];
                for (int i = 0; i < 16; ++i) {
                    const int64_t line = j * kT + i;
                    v[i] = line < lines ? bf16x::bf16_run(src + line * ld + k0, kn) : _mm512_setzero_si512();
                }
                bf16x::transpose16x16_words(v);
                uint32_t* d = dst + (j * S + sl) * kTileWords;
                for (int i = 0; i < 16; ++i) _mm512_storeu_si512(d + i * kT, v[i]);
            }
        return;
    }
    // across: stored rows k and k + 1 read in full, pair p of every strip's tile at once
    for (int64_t sl = s0; sl < s1; ++sl) {
        for (int64_t p = 0; p < kT; ++p) {
            const int64_t k = sl * kKs + 2 * p;
            const float* r0 = k < K ? src + k * ld : nullptr;
            const float* r1 = k + 1 < K ? src + (k + 1) * ld : nullptr;
            for (int64_t j = 0; j < J; ++j) {
                const __mmask16 m = lanes16(lines - j * kT);
                const __m512 lo = r0 ? _mm512_maskz_loadu_ps(m, r0 + j * kT) : _mm512_setzero_ps();
                const __m512 hi = r1 ? _mm512_maskz_loadu_ps(m, r1 + j * kT) : _mm512_setzero_ps();
                _mm512_storeu_si512(dst + (j * S + sl) * kTileWords + p * kT, bf16x::bf16_pairs(lo, hi));
            }
        }
        if (!lines_are_rows) continue;
        // op(A) rows: the tiles hold [pair][line] so far, transposed in place
        for (int64_t j = 0; j < J; ++j) {
            uint32_t* d = dst + (j * S + sl) * kTileWords;
            __m512i v[16];
            for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_si512(d + i * kT);
            bf16x::transpose16x16_words(v);
            for (int i = 0; i < 16; ++i) _mm512_storeu_si512(d + i * kT, v[i]);
        }
    }
}

// All of op(B) (K, N) packed (strips of columns), split over threads: by strips where columns are
// stored rows, else by slices.
void pack_b_all(uint32_t* dst, const float* B, int64_t ldb, bool trans_b, int64_t K, int64_t N) {
    const int64_t S = slices(K), J = strips(N);
    const int64_t grain_words = 1 << 16;  // about 64K elements a task
    if (trans_b) {
        parallel_for(0, J, std::max<int64_t>(1, grain_words / (kT * S * kKs)), [&](int64_t j0, int64_t j1) {
            pack_lines(dst + j0 * S * kTileWords, B + j0 * kT * ldb, ldb, true, std::min(N - j0 * kT, (j1 - j0) * kT),
                       K, false, 0, S);
        });
    } else {
        parallel_for(0, S, std::max<int64_t>(1, grain_words / (kKs * J * kT)), [&](int64_t s0, int64_t s1) {
            pack_lines(dst, B, ldb, false, N, K, false, s0, s1);
        });
    }
}

// The tile configuration: every tile 16 rows x 64 bytes (C: 16 x 16 fp32; A: 16 x 32 bf16; B: 16
// pairs x 16 columns). Tiles 0..3: C (r0c0, r0c1, r1c0, r1c1); 4, 5: A (rows 0-15, 16-31); 6, 7: B.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

constexpr TileConfig make_tile_config() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    return cfg;
}
// A constant in memory: GCC 12's _tile_loadconfig tells the compiler it reads only the first byte
// of its operand, so the stores of a local configuration can be dropped as dead (then the tiles
// stay unconfigured and the first tile instruction faults).
constexpr TileConfig kTileConfig = make_tile_config();

MOE_AMX_TARGET void load_tile_config() { _tile_loadconfig(&kTileConfig); }

// Marks the tile state unused again (the kernel then need not save it on a context switch).
MOE_AMX_TARGET void release_tiles() { _tile_release(); }

// The epilogue of one 16 x 16 tile (acc, row-major) into C[0:mr, 0:nr]: the twin's arithmetic.
MOE_AMX_TARGET inline void store_tile(const float* acc, float* c, int64_t ldc, float alpha, float beta, int64_t mr,
                                      int64_t nr) {
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    const __mmask16 m = lanes16(nr);
    for (int64_t r = 0; r < mr; ++r) {
        float* cr = c + r * ldc;
        __m512 v = _mm512_load_ps(acc + r * kT);
        if (alpha != 1.f) v = _mm512_mul_ps(va, v);
        if (beta == 1.f) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, cr));
        else if (beta != 0.f) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, cr), v);
        _mm512_mask_storeu_ps(cr, m, v);
    }
}

// C[0:mr, 0:nr] (mr <= 16 RB, nr <= 16 CB) of a block of RB x CB tiles over S slices: a0/a1 the
// packed A strips, b0/b1 the packed B strips.
template <int RB, int CB>
MOE_AMX_TARGET void tile_block(const uint32_t* a0, const uint32_t* a1, const uint32_t* b0, const uint32_t* b1,
                               int64_t S, float* c, int64_t ldc, float alpha, float beta, int64_t mr, int64_t nr) {
    constexpr int64_t kStride = 64;  // bytes per tile row
    _tile_zero(0);
    if constexpr (CB == 2) _tile_zero(1);
    if constexpr (RB == 2) _tile_zero(2);
    if constexpr (RB == 2 && CB == 2) _tile_zero(3);
    for (int64_t s = 0; s < S; ++s) {
        const int64_t o = s * kTileWords;
        _tile_loadd(4, a0 + o, kStride);
        _tile_loadd(6, b0 + o, kStride);
        if constexpr (CB == 2) _tile_loadd(7, b1 + o, kStride);
        _tile_dpbf16ps(0, 4, 6);
        if constexpr (CB == 2) _tile_dpbf16ps(1, 4, 7);
        if constexpr (RB == 2) {
            _tile_loadd(5, a1 + o, kStride);
            _tile_dpbf16ps(2, 5, 6);
            if constexpr (CB == 2) _tile_dpbf16ps(3, 5, 7);
        }
    }
    // whole tiles with alpha 1, beta 0 go straight to C; the rest through the epilogue
    // (GCC's tile intrinsics are macros that paste the tile number: literals only)
    const bool direct = alpha == 1.f && beta == 0.f;
    const int64_t ldc_bytes = ldc * (int64_t)sizeof(float);
    alignas(64) float acc[kT * kT];
#define MOE_AMX_OUT(tile, r, cc)                                                                  \
    do {                                                                                          \
        const int64_t h = std::min(kT, mr - (r) * kT), w = std::min(kT, nr - (cc) * kT);          \
        float* dst = c + (r) * kT * ldc + (cc) * kT;                                              \
        if (direct && h == kT && w == kT) {                                                       \
            _tile_stored(tile, dst, ldc_bytes);                                                   \
        } else if (h > 0 && w > 0) {                                                              \
            _tile_stored(tile, acc, 64);                                                          \
            store_tile(acc, dst, ldc, alpha, beta, h, w);                                         \
        }                                                                                         \
    } while (0)
    MOE_AMX_OUT(0, 0, 0);
    if constexpr (CB == 2) MOE_AMX_OUT(1, 0, 1);
    if constexpr (RB == 2) MOE_AMX_OUT(2, 1, 0);
    if constexpr (RB == 2 && CB == 2) MOE_AMX_OUT(3, 1, 1);
#undef MOE_AMX_OUT
}

// Per-thread scratch: the packed A strips (all of op(A) for trans_a; B when the caller did not pack it). Grows to the
// largest shape seen, then stays (no allocation once warm); A's starts at K = 4096 (256 KiB), so
// which thread runs which GEMM of a step (dynamic task schedules) does not make a later step
// allocate.
struct Scratch {
    std::vector<uint32_t, LargeAllocator<uint32_t>> a, b;
    std::vector<uint32_t, LargeAllocator<uint32_t>> at;  // all of op(A), for trans_a
};
constexpr int64_t kMinScratchSlices = 4096 / kKs;
constexpr int64_t kPanelKiB = 1024;  // see run_packed (the hosts' L2: 2 MiB per core)

Scratch& scratch() {
    thread_local Scratch s;
    return s;
}


// C = alpha op(A) op(B) + beta C over op(B) packed (bp: strips(N) strips of slices(K) tiles), the
// 32 x 32 blocks of C split over threads in runs (row-major within column panels, see PW); each block over all of K on one thread.
// op(A) stored by rows (trans_a false) is packed a 32-row block at a time by the thread that needs
// it; stored by columns (trans_a, the weight gradients' X^T) all of it first, slice by slice, so
// that its stored rows are read in order.
void run_packed(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const uint32_t* bp, float beta, float* C, int64_t ldc) {
    const int64_t S = slices(K), RB = (M + 2 * kT - 1) / (2 * kT), CB = (N + 2 * kT - 1) / (2 * kT);
    const double flops = 2.0 * (double)M * (double)N * (double)K;
    const uint32_t* ap = nullptr;  // all of op(A) packed (trans_a)
    if (trans_a) {
        Scratch& sc = scratch();
        const int64_t words = strips(M) * S * kTileWords;
        if ((int64_t)sc.at.size() < words) sc.at.resize(words);
        uint32_t* d = sc.at.data();
        const int64_t grain = std::max<int64_t>(1, (1 << 16) / (kKs * M));
        parallel_for(0, S, grain, [&](int64_t s0, int64_t s1) { pack_lines(d, A, lda, false, M, K, true, s0, s1); });
        ap = d;
    }
    const int64_t blocks = RB * CB;
    // Packed op(B) larger than kPanelKiB is swept in panels of PW block columns: all block rows of
    // one panel, then the next, so the panel stays in L2 while the rows pass (and op(A) is read once
    // per panel). Over all of a 2 MiB op(B) at once (the weight gradients at K = 2048: dh^T.x), every
    // block row streamed op(B) from L3 again: 1024 x 512 x 2048 ran at 740 GFLOP/s, in 1 MiB panels
    // at 950 (1 thread, Sapphire Rapids, bench/gemm_shapes). Only where op(A) is packed whole
    // (trans_a): packed per block row, each panel would pack it again (a quiet 2-thread bench-moe
    // bf16 step was 0.96x with panels everywhere). Blocking K instead (partial sums kept in fp32
    // between K chunks) did not help. The order of blocks changes no result: each is still
    // computed by one thread over all of K.
    const int64_t PW = ap ? std::max<int64_t>(1, std::min(CB, kPanelKiB / (2 * S))) : CB;
    const int64_t grain = std::max<int64_t>(1, (int64_t)(kMinFlopsPerThread / (flops / (double)blocks)));
    parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
        Scratch& sc = scratch();
        if (!ap && (int64_t)sc.a.size() < 2 * S * kTileWords)
            sc.a.resize(2 * std::max(S, kMinScratchSlices) * kTileWords);
        load_tile_config();
        int64_t packed_rb = -1;
        const uint32_t *a0 = nullptr, *a1 = nullptr;
        for (int64_t b = b0; b < b1; ++b) {
            // block b: panel p's blocks row-major, after the PW * RB blocks of each panel before it
            const int64_t p = b / (PW * RB), pc0 = p * PW, pw = std::min(PW, CB - pc0), local = b - p * PW * RB;
            const int64_t rb = local / pw, cb = pc0 + local % pw;
            const int64_t m0 = rb * 2 * kT, n0 = cb * 2 * kT;
            const int64_t mr = std::min(2 * kT, M - m0), nr = std::min(2 * kT, N - n0);
            if (rb != packed_rb) {  // (again in each panel)
                if (ap) {
                    a0 = ap + 2 * rb * S * kTileWords;
                } else {
                    pack_lines(sc.a.data(), A + m0 * lda, lda, true, mr, K, true, 0, S);
                    a0 = sc.a.data();
                }
                a1 = a0 + S * kTileWords;
                packed_rb = rb;
            }
            const uint32_t* p0 = bp + 2 * cb * S * kTileWords;
            const uint32_t* p1 = p0 + S * kTileWords;
            float* c = C + m0 * ldc + n0;
            if (mr > kT && nr > kT) tile_block<2, 2>(a0, a1, p0, p1, S, c, ldc, alpha, beta, mr, nr);
            else if (mr > kT) tile_block<2, 1>(a0, a1, p0, p1, S, c, ldc, alpha, beta, mr, nr);
            else if (nr > kT) tile_block<1, 2>(a0, a1, p0, p1, S, c, ldc, alpha, beta, mr, nr);
            else tile_block<1, 1>(a0, a1, p0, p1, S, c, ldc, alpha, beta, mr, nr);
        }
        release_tiles();
    });
}

// C = beta C (the product of an empty K)
void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.f ? 0.f : beta * C[m * ldc + n];
}

#undef MOE_AMX_TARGET
#undef MOE_AMX_PACK_TARGET
#pragma GCC diagnostic pop

// bf16 with denormals read as zero (the tiles' DAZ), as a float
float daz_bf16(uint16_t h) { return (h & 0x7f80u) == 0 ? bf16_to_f32((uint16_t)(h & 0x8000u)) : bf16_to_f32(h); }

float flush_denormal(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.f, x) : x; }

}  // namespace

bool amx_bf16_available() { return active_isa() >= Isa::amx && cpu_features().avx512_bf16 && cpu_features().avx512dq; }

int64_t amx_packed_b_words(int64_t K, int64_t N) { return strips(N) * slices(K) * kTileWords; }

void amx_pack_b(bool trans_b, int64_t K, int64_t N, const float* B, int64_t ldb, void* dst) {
    MOE_ASSERT(amx_bf16_available());
    if (K <= 0 || N <= 0) return;
    pack_lines(static_cast<uint32_t*>(dst), B, ldb, trans_b, N, K, false, 0, slices(K));
}

void amx_gemm_bf16_packed_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                            int64_t lda, const void* packed_b, float beta, float* C, int64_t ldc) {
    MOE_ASSERT(amx_bf16_available());
    if (M <= 0 || N <= 0) return;
    if (K <= 0) return scale_c(M, N, beta, C, ldc);
    run_packed(trans_a, M, N, K, alpha, A, lda, static_cast<const uint32_t*>(packed_b), beta, C, ldc);
}

void amx_gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    MOE_ASSERT(amx_bf16_available());
    if (M <= 0 || N <= 0) return;
    if (K <= 0) return scale_c(M, N, beta, C, ldc);
    // op(B) packed once into the calling thread's scratch, split over threads
    Scratch& sc = scratch();
    const int64_t words = amx_packed_b_words(K, N);
    if ((int64_t)sc.b.size() < words) sc.b.resize(words);
    uint32_t* bp = sc.b.data();
    pack_b_all(bp, B, ldb, trans_b, K, N);
    run_packed(trans_a, M, N, K, alpha, A, lda, bp, beta, C, ldc);
}

void amx_pack_b_ref(bool trans_b, int64_t K, int64_t N, const float* B, int64_t ldb, void* dst) {
    const int64_t S = slices(K);
    uint32_t* d = static_cast<uint32_t*>(dst);
    auto half = [&](int64_t k, int64_t n) -> uint32_t {
        if (k >= K || n >= N) return 0;
        return f32_to_bf16(trans_b ? B[n * ldb + k] : B[k * ldb + n]);
    };
    for (int64_t j = 0; j < strips(N); ++j)
        for (int64_t s = 0; s < S; ++s)
            for (int64_t p = 0; p < kT; ++p)
                for (int64_t i = 0; i < kT; ++i) {
                    const int64_t k = s * kKs + 2 * p, n = j * kT + i;
                    d[(j * S + s) * kTileWords + p * kT + i] = half(k, n) | half(k + 1, n) << 16;
                }
}

void amx_gemm_bf16_ref(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                       const void* packed_b, float beta, float* C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) return scale_c(M, N, beta, C, ldc);
    const int64_t S = slices(K);
    const uint32_t* bp = static_cast<const uint32_t*>(packed_b);
    parallel_for(0, M, 4, [&](int64_t m0, int64_t m1) {
        std::vector<float> arow(S * kKs, 0.f);  // op(A) row m as the tiles read it (zero past K)
        for (int64_t m = m0; m < m1; ++m) {
            for (int64_t k = 0; k < K; ++k) arow[k] = daz_bf16(f32_to_bf16(trans_a ? A[k * lda + m] : A[m * lda + k]));
            for (int64_t n = 0; n < N; ++n) {
                float acc = 0.f;
                for (int64_t s = 0; s < S; ++s) {
                    double sum = 0;  // the slice's 32 products (each exact in double)
                    const uint32_t* w = bp + ((n / kT) * S + s) * kTileWords + n % kT;
                    for (int64_t p = 0; p < kT; ++p) {
                        const float* a = arow.data() + s * kKs + 2 * p;
                        sum += (double)a[0] * (double)daz_bf16((uint16_t)w[p * kT]);
                        sum += (double)a[1] * (double)daz_bf16((uint16_t)(w[p * kT] >> 16));
                    }
                    acc = flush_denormal((float)((double)acc + sum));
                }
                float& c = C[m * ldc + n];
                float v = alpha == 1.f ? acc : alpha * acc;
                c = beta == 0.f ? v : beta == 1.f ? v + c : std::fma(beta, c, v);
            }
        }
    });
}

}  // namespace moe::kernels
