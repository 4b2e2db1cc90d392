// Q8_0 x Q8_0 decode rows with AMX-INT8 tiles (ggml_rows_vnni.h, "AMX-INT8 decode rows").
//
// Per tile of 16 weight rows and group of 16 activation rows, per 32-value block b: one TDPBSSD
// C (16 weight rows x 16 activation rows, int32: each element the exact integer dot of the block)
// from an A tile of the weight rows read in place (16 rows of the blocks' 32 quants, row_stride
// apart) and the activations' B tile (packed once per call); C is stored and scaled into 16 zmm
// accumulators (one per weight row, lanes = activation rows): acc = fma(cvt(C), wd * xd, acc), the
// blocks in ascending order. Two C tiles alternate, so the tile unit multiplies block b + 1 while
// the vector units scale block b. The fp32 work per block is 16 vector FMAs for up to 256 outputs
// (the VNNI rows kernel needs one FMA per output and pair of blocks), and the weights are read from
// memory once per call whatever N.
//
// All float work is explicit intrinsics; fp-contract off as in ggml_quants_x86.cc.
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's _mm512_cvtepi32_ps (bug 105593)
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "kernels/amx_q8.h"
#include "kernels/cpu.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_rows_vnni.h"
#include "kernels/amx_target.h"

namespace moe::kernels::detail {


bool q8_0_rows_amx_supported() { return q8_0_rows_vnni_supported() && amx::int8_active(); }

int64_t q8_0_rows_amx_qu_bytes(int64_t N, int64_t in) { return (N + 15) / 16 * (in / 32) * 512; }
int64_t q8_0_rows_amx_s16_floats(int64_t N, int64_t in) { return (N + 15) / 16 * (in / 32) * 16; }

// The B tiles of groups of 16 activation rows whose block b of row r is 32 bytes at `quants(r, b)`
// with fp32 scale `scale(r, b)` (q8_0_rows_acts_amx, q8_rows_acts_amx)
template <class Q, class S>
KA inline void pack_rows_acts(int64_t N, int64_t in, uint8_t* qu, float* s16, const Q& quants, const S& scale) {
    const int64_t nb = in / 32, G = (N + 15) / 16;
    for (int64_t g = 0; g < G; ++g)
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t* dst = qu + (g * nb + b) * 512;
            float* xs = s16 + (g * nb + b) * 16;
            __m512i t[8];  // row k of the B tile: bytes 4k..4k+3 of the 16 rows' blocks
            for (int k = 0; k < 8; ++k) t[k] = _mm512_setzero_si512();
            for (int n = 0; n < 16; ++n) {
                const int64_t r = 16 * g + n;
                if (r >= N) {
                    xs[n] = 0.f;
                    continue;
                }
                xs[n] = scale(r, b);
                int32_t v[8];
                std::memcpy(v, quants(r, b), 32);
                for (int k = 0; k < 8; ++k) t[k] = _mm512_mask_set1_epi32(t[k], (__mmask16)(1u << n), v[k]);
            }
            for (int k = 0; k < 8; ++k) _mm512_storeu_si512(dst + 64 * k, t[k]);
        }
}

KA void q8_rows_acts_amx(const int8_t* q, const float* scales, int64_t N, int64_t in, uint8_t* qu, float* s16) {
    const int64_t nb = in / 32;
    pack_rows_acts(N, in, qu, s16, [&](int64_t r, int64_t b) { return q + r * in + b * 32; },
                   [&](int64_t r, int64_t b) { return scales[r * nb + b]; });
}

KA void q8_0_rows_acts_amx(const uint8_t* rows, int64_t row_bytes, int64_t N, int64_t in, uint8_t* qu, float* s16) {
    pack_rows_acts(N, in, qu, s16,
                   [&](int64_t r, int64_t b) { return reinterpret_cast<const BlockQ8_0*>(rows + r * row_bytes)[b].qs; },
                   [&](int64_t r, int64_t b) KA_LAMBDA { return _cvtsh_ss(reinterpret_cast<const BlockQ8_0*>(rows + r * row_bytes)[b].d); });
}

namespace {

inline void compiler_fence() { asm volatile("" ::: "memory"); }  // the tile asm has no memory inputs

// ldtilecfg's 64 bytes: C tiles 0, 1 (m rows x 16 int32), A tiles 4, 5 (m weight rows x 32 bytes),
// B tiles 6, 7 (8 rows x 64 bytes)
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// cols: the activation columns of the C and B tiles (16, or 1 / 2 / 4 / 8 for the narrow form)
KA void configure(int m, int cols) {
    TileConfig c;
    for (int t : {0, 1}) c.rows[t] = (uint8_t)m, c.colsb[t] = (uint16_t)(4 * cols);
    for (int t : {4, 5}) c.rows[t] = (uint8_t)m, c.colsb[t] = 32;
    for (int t : {6, 7}) c.rows[t] = 8, c.colsb[t] = (uint16_t)(4 * cols);
    compiler_fence();
    _tile_loadconfig(&c);
    compiler_fence();
}

// v[r][c] -> v[c][r] for a 16 x 16 block of floats (unpack, in-lane shuffle, then a 4 x 4
// transpose of the 128-bit lanes)
KA inline void transpose16(__m512 (&v)[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {  // u[4i + k], lane L: column 4L + k of rows 4i..4i+3
        u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int k = 0; k < 4; ++k) {
        const __m512 p0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x44), p1 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xEE);
        const __m512 q0 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x44),
                     q1 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xEE);
        v[k] = _mm512_shuffle_f32x4(p0, q0, 0x88);
        v[4 + k] = _mm512_shuffle_f32x4(p0, q0, 0xDD);
        v[8 + k] = _mm512_shuffle_f32x4(p1, q1, 0x88);
        v[12 + k] = _mm512_shuffle_f32x4(p1, q1, 0xDD);
    }
}

// The tile pipeline of one tile of weight rows x one activation group over its nb blocks (wq: block
// 0's quants of the first weight row; blocks kBlk bytes apart: 34 in q8_0, 32 in moe's int8): block b's C tile (C0 for even b, C1 for odd) is stored at cb
// (+ 256 for odd b, rows cstride bytes apart), the tile unit starts block b + 2 in it, and the
// vector units scale block b - 1, stored one step before: vector loads of a tile store's bytes wait
// until the store has completed, so each store gets a block's vector work to do so. post(c, b)
// runs for b = 0, 1, ..., nb - 1 in order (the block order).
template <int64_t kBlk, class Post>
KA inline __attribute__((always_inline)) void run_blocks(const uint8_t* wq, int64_t row_stride, const uint8_t* xb,
                                                         int64_t nb, int32_t* cb, int cstride, Post& post) {
    compiler_fence();
    _tile_loadd(4, wq, row_stride);
    _tile_loadd(6, xb, 64);
    _tile_zero(0);
    _tile_dpbssd(0, 4, 6);
    if (nb >= 2) {
        _tile_loadd(5, wq + kBlk, row_stride);
        _tile_loadd(7, xb + 512, 64);
        _tile_zero(1);
        _tile_dpbssd(1, 5, 7);
    }
    for (int64_t b = 0; b < nb; b += 2) {
        _tile_stored(0, cb, cstride);
        if (b + 2 < nb) {
            _tile_loadd(4, wq + (b + 2) * kBlk, row_stride);
            _tile_loadd(6, xb + (b + 2) * 512, 64);
            _tile_zero(0);
            _tile_dpbssd(0, 4, 6);
        }
        compiler_fence();
        if (b >= 1) post(cb + 256, b - 1);
        compiler_fence();
        if (b + 1 < nb) {
            _tile_stored(1, cb + 256, cstride);
            if (b + 3 < nb) {
                _tile_loadd(5, wq + (b + 3) * kBlk, row_stride);
                _tile_loadd(7, xb + (b + 3) * 512, 64);
                _tile_zero(1);
                _tile_dpbssd(1, 5, 7);
            }
            compiler_fence();
            post(cb, b);
            compiler_fence();
        }
    }
    if (nb % 2 == 1) post(cb, nb - 1);  // the last block, even, stored in the last step
    else post(cb + 256, nb - 1);
    compiler_fence();
}

// With block b of this tile, the next tile's line that holds the last byte of block b, in each of
// its pf_rows rows (row_stride apart): each line of the rows once, in the order the tile loads will
// want them (blocks are 34 bytes, so about every other block starts a new line; a block whose last
// byte shares the line of the block before asks for nothing: asking again costs the load ports and
// the fill buffers the same as a new line). When row_stride is a multiple of 64 every row has row
// 0's line boundaries. On the s20 Xeon, asking for every block's line (twice as many prefetches)
// was 3-7% slower on 8 and 16 rows (build/bench/decode_rows, one thread); none at all, 1.1-1.6x.
template <int64_t kBlk>
KA inline __attribute__((always_inline)) void prefetch_next(const uint8_t* pf, int pf_rows, int64_t row_stride,
                                                            int64_t b) {
    const int64_t last = b * kBlk + (kBlk - 1);
    if (row_stride % 64 == 0) {
        const uintptr_t a0 = reinterpret_cast<uintptr_t>(pf) + (uintptr_t)last;
        if (b > 0 && (a0 >> 6) == ((a0 - kBlk) >> 6)) return;
        for (int r = 0; r < pf_rows; ++r) _mm_prefetch(reinterpret_cast<const char*>(pf + r * row_stride + last), _MM_HINT_T1);
        return;
    }
    for (int r = 0; r < pf_rows; ++r) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(pf + r * row_stride) + (uintptr_t)last;
        if (b == 0 || (a >> 6) != ((a - kBlk) >> 6)) _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T1);
    }
}

// Lane r: r * step for the rows r < m of a tile, 0 past them (the gather offsets of the rows' scales)
KA inline __m512i row_offsets(int m, int64_t step) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_maskz_mullo_epi32((__mmask16)((1u << m) - 1), lane, _mm512_set1_epi32((int32_t)step));
}

// The two weight formats of the decode rows: where a tile's quants are (the A tiles, rows `stride`
// bytes apart, block b at a0 + b * kBlk) and its 16 rows' scales of block b as fp32 (rows past m
// read row 0's: their accumulators are never stored).
struct Q8_0Tile {  // ggml q8_0: per block the fp16 scale, then the 32 quants
    static constexpr int64_t kBlk = sizeof(BlockQ8_0);
    const uint8_t* w;  // row 0's block 0
    int64_t stride;    // bytes from row to row
    const uint8_t* a0() const { return w + 2; }
    KA __m512i index(int m) const { return row_offsets(m, stride); }  // byte offsets of the rows' blocks
    KA __m512 scales(__m512i idx, int64_t b) const {  // 4 bytes at each row's block: its fp16 scale in the low half
        return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(idx, w + b * kBlk, 1)));
    }
    void prefetch_scales(int) const {}  // in the blocks
};
struct Int8Tile {  // moe's int8: rows of int8 quants, an fp32 scale per row and block apart
    static constexpr int64_t kBlk = 32;
    const uint8_t* w;    // row 0's quants
    int64_t stride;      // bytes from row to row (IN)
    const float* ws;     // row 0's scales
    int64_t nb;          // scales per row
    const uint8_t* a0() const { return w; }
    KA __m512i index(int m) const { return row_offsets(m, nb); }  // float offsets of the rows' scales
    KA __m512 scales(__m512i idx, int64_t b) const { return _mm512_i32gather_ps(idx, ws + b, 4); }
    // the rows' scales (contiguous: rows x nb floats), ahead of the gathers
    void prefetch_scales(int rows) const {
        const char* p = reinterpret_cast<const char*>(ws);
        for (int64_t i = 0; i < rows * nb * 4; i += 64) _mm_prefetch(p + i, _MM_HINT_T1);
    }
};

#define MOE_REP16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)

// m weight rows (at wt, row_stride apart; m <= 16, the tiles configured for m) x one group of nr
// activation rows (xb, xs at the group's block 0): y[n * ys + r] for r < m, n < nr
// pf, pf_rows: the next tile's weight rows (row_stride apart), prefetched into L2 in the order the
// tile loads will read them (prefetch_next: with block b of this tile, the lines that hold the last
// byte of block b of each of the pf_rows rows; these lines cover every line of the rows).
// The tile loads read 16 rows side by side, 16 streams the hardware prefetchers do not follow; a
// prefetch in address order (row after row) would ask for the last rows' first blocks last.
template <class W>
KA void tile16(float* y, int64_t ys, int nr, int m, const uint8_t* xb, const float* xs, const W& wt, int64_t nb,
               bool accumulate, int32_t* cb, const uint8_t* pf, int pf_rows) {
    const __mmask16 kout = (__mmask16)((1u << m) - 1);
    __m512 v[16];  // y's rows (n) <-> the accumulators (r): one transpose at each end
    if (accumulate) {
        for (int n = 0; n < 16; ++n) v[n] = n < nr ? _mm512_maskz_loadu_ps(kout, y + n * ys) : _mm512_setzero_ps();
        transpose16(v);
    }
    const __m512i sidx = wt.index(m);  // the weight rows' scales, gathered per block
    alignas(64) float wsa[16];
#define MOE_INIT(r) __m512 a##r = accumulate ? v[r] : _mm512_setzero_ps();
    MOE_REP16(MOE_INIT)
#undef MOE_INIT
    auto post = [&](const int32_t* c, int64_t b) KA_LAMBDA {
        prefetch_next<W::kBlk>(pf, pf_rows, wt.stride, b);
        const __m512 xv = _mm512_loadu_ps(xs + b * 16);
        _mm512_store_ps(wsa, wt.scales(sidx, b));
#define MOE_STEP(r)                                                                          \
    a##r = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * r)),                \
                           _mm512_mul_ps(_mm512_set1_ps(wsa[r]), xv), a##r);
        MOE_REP16(MOE_STEP)
#undef MOE_STEP
    };
    run_blocks<W::kBlk>(wt.a0(), wt.stride, xb, nb, cb, 64, post);
#define MOE_OUT(r) v[r] = a##r;
    MOE_REP16(MOE_OUT)
#undef MOE_OUT
    transpose16(v);
    for (int n = 0; n < nr; ++n) _mm512_mask_storeu_ps(y + n * ys, kout, v[n]);
}
#undef MOE_REP16

// The narrow form of tile16 for a group of nr <= C activation rows, C = 1, 2, 4 or 8: the C and B
// tiles are C columns wide (the B tile reads the first C of the group's 16 packed columns) and the
// C tile is stored packed, row r's C sums at cb + r * C, so one vector holds R = 16 / C weight rows
// x C activation rows: lane l of vector q is weight row q * R + l / C, activation row l % C. Per
// block C vector FMAs instead of 16, each lane the same operations as in tile16 and the twin:
// acc = fma((float)isum_b, wd_b * xd_b, acc) with wd_b * xd_b rounded to fp32, blocks in order.
// So a row's bits do not depend on the form its call takes (batch invariance).
template <int C, class W>
KA void tile_narrow(float* y, int64_t ys, int nr, int m, const uint8_t* xb, const float* xs, const W& wt, int64_t nb,
                    bool accumulate, int32_t* cb, const uint8_t* pf, int pf_rows) {
    static_assert(C == 1 || C == 2 || C == 4 || C == 8);
    constexpr int R = 16 / C, kShift = C == 1 ? 0 : C == 2 ? 1 : C == 4 ? 2 : 3;
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i col = _mm512_and_si512(lane, _mm512_set1_epi32(C - 1));  // l % C
    __m512i row[C];                                                        // q * R + l / C
    for (int q = 0; q < C; ++q) row[q] = _mm512_add_epi32(_mm512_set1_epi32(q * R), _mm512_srli_epi32(lane, kShift));
    alignas(64) float tmp[16 * C];
    __m512 a[C];
    if (accumulate) {
        for (int e = 0; e < 16 * C; ++e) {
            const int r = e / C, n = e % C;
            tmp[e] = r < m && n < nr ? y[n * ys + r] : 0.f;
        }
        for (int q = 0; q < C; ++q) a[q] = _mm512_load_ps(tmp + 16 * q);
    } else {
        for (int q = 0; q < C; ++q) a[q] = _mm512_setzero_ps();
    }
    const __m512i sidx = wt.index(m);
    auto post = [&](const int32_t* c, int64_t b) KA_LAMBDA {
        prefetch_next<W::kBlk>(pf, pf_rows, wt.stride, b);
        const __m512 xv = _mm512_permutexvar_ps(col, _mm512_loadu_ps(xs + b * 16));
        const __m512 ws = wt.scales(sidx, b);
        for (int q = 0; q < C; ++q)
            a[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * q)),
                                   _mm512_mul_ps(_mm512_permutexvar_ps(row[q], ws), xv), a[q]);
    };
    run_blocks<W::kBlk>(wt.a0(), wt.stride, xb, nb, cb, 4 * C, post);
    for (int q = 0; q < C; ++q) _mm512_store_ps(tmp + 16 * q, a[q]);
    for (int n = 0; n < nr; ++n)
        for (int r = 0; r < m; ++r) y[n * ys + r] = tmp[r * C + n];
}

// The driver of both formats: tiles of 16 weight rows over [o0, o1), each through the narrow form
// (N <= 8) or every group of 16 activation rows through tile16. tile_at(ot): the W of the tile whose
// first row is ot.
template <class TileAt>
KA void rows_amx(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, int64_t N, int64_t o0,
                 int64_t o1, bool accumulate, const TileAt& tile_at) {
    if (N <= 0 || o1 <= o0) return;
    const int64_t nb = in / 32, G = (N + 15) / 16;
    alignas(64) int32_t cb[512] = {};  // the two C tiles as stored
    int cfg = 0;
    // one group of up to 8 rows: the narrow form, C = the next power of two (its own tile shapes)
    const int cols = N <= 1 ? 1 : N <= 2 ? 2 : N <= 4 ? 4 : N <= 8 ? 8 : 16;
    {  // the first tile's first blocks (the next tiles are prefetched while the one before runs)
        const auto t0 = tile_at(o0);
        const int64_t rows = std::min<int64_t>(16, o1 - o0), bytes = std::min<int64_t>(t0.stride, 4 * 64);
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(reinterpret_cast<const char*>(t0.w + r * t0.stride + i), _MM_HINT_T1);
        t0.prefetch_scales((int)rows);
    }
    for (int64_t ot = o0; ot < o1; ot += 16) {
        const int m = (int)std::min<int64_t>(16, o1 - ot);
        if (m != cfg) configure(m, cols), cfg = m;
        const int64_t next = std::min<int64_t>(16, std::max<int64_t>(0, o1 - ot - 16));  // rows of the next tile
        const auto wt = tile_at(ot);
        const uint8_t* pf = wt.w + 16 * wt.stride;  // the next tile's rows
        if (next > 0) tile_at(ot + 16).prefetch_scales((int)next);
        if (cols < 16) {
            using W = std::decay_t<decltype(wt)>;
            const auto narrow = cols == 1 ? tile_narrow<1, W> : cols == 2 ? tile_narrow<2, W> : cols == 4 ? tile_narrow<4, W> : tile_narrow<8, W>;
            narrow(y + ot, ys, (int)N, m, qu, s16, wt, nb, accumulate, cb, pf, (int)next);
            continue;
        }
        for (int64_t g = 0; g < G; ++g)
            tile16(y + 16 * g * ys + ot, ys, (int)std::min<int64_t>(16, N - 16 * g), m, qu + g * nb * 512, s16 + g * nb * 16,
                   wt, nb, accumulate, cb, pf, g == 0 ? (int)next : 0);
    }
    _tile_release();
}

}  // namespace

KA void q8_0_rows_amx(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const void* w,
                      int64_t row_stride, int64_t N, int64_t o0, int64_t o1, bool accumulate) {
    MOE_ASSERT(row_stride > 0 && row_stride < (int64_t(1) << 31) / 16);  // the scales' gather offsets
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    rows_amx(y, ys, qu, s16, in, N, o0, o1, accumulate, [&](int64_t ot) { return Q8_0Tile{wb + ot * row_stride, row_stride}; });
}

KA void q8_rows_amx(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const int8_t* wq,
                    const float* ws, int64_t N, int64_t o0, int64_t o1, bool accumulate) {
    MOE_ASSERT(in % 32 == 0 && in / 32 < (int64_t(1) << 31) / 16);  // the scales' gather offsets
    const int64_t nb = in / 32;
    const uint8_t* wb = reinterpret_cast<const uint8_t*>(wq);
    rows_amx(y, ys, qu, s16, in, N, o0, o1, accumulate,
             [&](int64_t ot) { return Int8Tile{wb + ot * in, in, ws + ot * nb, nb}; });
}

void q8_0_rows_block_ref(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                         const void* w, int64_t row_stride, int64_t o0, int64_t o1, bool accumulate) {
    const int64_t nb = in / 32;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    for (int64_t n = 0; n < N; ++n) {
        const BlockQ8_0* xr = reinterpret_cast<const BlockQ8_0*>(acts + n * act_bytes);
        for (int64_t o = o0; o < o1; ++o) {
            const BlockQ8_0* wr = reinterpret_cast<const BlockQ8_0*>(wb + o * row_stride);
            float acc = accumulate ? y[n * ys + o] : 0.f;
            for (int64_t b = 0; b < nb; ++b) {
                int32_t isum = 0;
                for (int i = 0; i < 32; ++i) isum += (int32_t)wr[b].qs[i] * (int32_t)xr[b].qs[i];
                const float s = fp16_to_fp32(wr[b].d) * fp16_to_fp32(xr[b].d);
                acc = std::fma((float)isum, s, acc);
            }
            y[n * ys + o] = acc;
        }
    }
}

void q8_rows_block_ref(float* y, int64_t ys, const int8_t* q, const float* qs, int64_t N, int64_t in, const int8_t* wq,
                       const float* ws, int64_t o0, int64_t o1, bool accumulate) {
    const int64_t nb = in / 32;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = o0; o < o1; ++o) {
            float acc = accumulate ? y[n * ys + o] : 0.f;
            for (int64_t b = 0; b < nb; ++b) {
                int32_t isum = 0;
                for (int i = 0; i < 32; ++i) isum += (int32_t)wq[o * in + b * 32 + i] * (int32_t)q[n * in + b * 32 + i];
                acc = std::fma((float)isum, ws[o * nb + b] * qs[n * nb + b], acc);
            }
            y[n * ys + o] = acc;
        }
}

#undef KA

}  // namespace moe::kernels::detail
