#pragma once
// The SIMD twins of ggml_quants.cc's kernels (ggml_quants_x86.cc), for its dispatch only. Call
// only after the run-time checks there (AVX2 + FMA + F16C; AVX-512 F/BW/VL + VNNI).
#include <cstdint>

#include "kernels/ggml_quants.h"

namespace moe::kernels::detail {

// bit-identical to quantize_row_q8_0 / quantize_row_q8_k
void quantize_q8_0_avx2(const float* x, void* y, int64_t n);
void quantize_q8_k_avx2(const float* x, void* y, int64_t n);
// the same with AVX-512 F/BW/VL/DQ + F16C (ggml_acts_avx512.cc), bit-identical too
void quantize_q8_0_avx512(const float* x, void* y, int64_t n);
void quantize_q8_k_avx512(const float* x, void* y, int64_t n);
// nullptr where the type has no kernel on that ISA
RowDots row_dots_avx2(GType w);
RowDots row_dots_avx512vnni(GType w);
RowDotsW row_dots_w_avx2(GType w, int* rows);
RowDotsW row_dots_w_avx512vnni(GType w, int* rows);

// Prefill tiles (AVX-512 VNNI; ggml_quants_x86.cc): activation rows packed once per call in the
// order the tiles read them, groups of 4 rows (the last padded with zero rows): for group g and
// 32-value sub-block b, 128 bytes at xp + (g * nsb + b) * 128, the 4-byte word of 4-value group k
// of row j at k * 16 + j * 4 (one pointer and immediate offsets in the inner loop); per (g, b, j)
// at [(g * nsb + b) * 4 + j]: xs the activation scale, am scale * sum of the 32 values, and xo
// (q8_0 / q4_0 weights, whose offset wm = c ws has one c for all rows) -c * sum: the offset in
// integers. sb: q8_k activations (one scale per 256 values).
struct TileActs {
    const uint8_t* xp = nullptr;
    const float* xs = nullptr;
    const float* am = nullptr;
    const int32_t* xo = nullptr;  // null for the K-quants
    bool sb = false;
    // Q6_K weights (16-value groups, q8_k activations): per (g, 16-value group G, j) at
    // [(g * in / 16 + G) * 4 + j] -32 * the sum of the group's 16 values (pack_tile_q6_offsets); null
    // for the other types
    const int32_t* xo16 = nullptr;
};
// packs groups [g0, g1) of the activation rows (q8_0 or q8_k, row_bytes apart) into the buffers
// above (TileActs' pointers, writable); c as for xo (0: xo not written)
void pack_tile_acts(const uint8_t* rows, int64_t row_bytes, GType act, int64_t N, int64_t in, int32_t c, int64_t g0,
                    int64_t g1, uint8_t* xp, float* xs, float* am, int32_t* xo);
bool tiles_supported(GType w);  // q8_0, q4_0, q4_k, q5_k, q6_k
// TileActs::xo16 for groups [g0, g1) of q8_k activation rows (from their per-16 sums)
void pack_tile_q6_offsets(const uint8_t* rows, int64_t row_bytes, int64_t N, int64_t in, int64_t g0, int64_t g1,
                          int32_t* xo16);
// A tile of 32 weight rows (rows [nr, 32) zero) in the layout above (not q6_k: its tile has 16-value
// groups, ggml_quants_x86.cc's unpack_tile_q6_k): per 32-value sub-block b,
// 1024 bytes at wq + b * 1024 (the 4-byte group k of row r at k * 128 + r * 4) of unsigned u, with
// ws, wm at [b * 32 + r] (w = ws * u - wm). Also the AMX prefill's weights (kernels/amx_q8.cc).
void unpack_tile_vnni(GType w, const uint8_t* rows, int64_t row_stride, int nr, int64_t nsb, uint8_t* wq, float* ws,
                      float* wm);
int64_t tile_scratch_bytes(int64_t in);
// y[n * ys + o] (+)= for o in [o0, o1), n < N; scratch: tile_scratch_bytes(in), 64-byte aligned
// moe's int8 on the same tiles (kernels/qmatmul.h's QActs and QMatrix: q (N, in) with scales
// (N, in / 32); wq (OUT, in) with ws (OUT, in / 32); in a multiple of 32): the activations packed
// as q8_0 rows are (c = 128), the weight rows unpacked as Q8_0 blocks are; every output
// fma((float)isum_b, ws[o, b] * xs[n, b], acc) in block order, q8_rows_block_ref's bits.
void pack_tile_acts_q8(const int8_t* q, const float* scales, int64_t N, int64_t in, int64_t g0, int64_t g1, uint8_t* xp,
                       float* xs, float* am, int32_t* xo);
void prefill_tiles_q8_vnni(float* y, int64_t ys, const TileActs& xa, const int8_t* wq, const float* ws, int64_t N,
                           int64_t in, int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch);
void prefill_tiles_vnni(float* y, int64_t ys, const TileActs& xa, const void* w, GType t, int64_t row_stride,
                        int64_t N, int64_t in, int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch);

// Q8_0 repacked (ggml_quants.h's q8_0_repack_tiled): tiles [t0, t1) of dst from the rows at w;
// scratch tile_scratch_bytes(in), 64-byte aligned
void q8_0_repack_tiles_vnni(const uint8_t* w, int64_t row_stride, int64_t out, int64_t in, int64_t t0, int64_t t1,
                            uint8_t* dst, uint8_t* scratch);
// moe's int8 repacked (qmatmul.h's q8_repack_tiled): tiles [t0, t1) from q (out, in), scales
// (out, in / 32)
void q8_repack_tiles_vnni(const int8_t* q, const float* scales, int64_t out, int64_t in, int64_t t0, int64_t t1,
                          uint8_t* dst, uint8_t* scratch);

// The products on repacked weights (ggml_quants.h, qmatmul.h): every group of 4 activation rows from
// pack_tile_acts / pack_tile_acts_q8 (q8_0: xo with c = 128; q4_0: c = 8; int8: pack_tile_acts_q8;
// q4_k: q8_k rows, c = 0, am used)
enum class TiledKind { q8_0, int8, q4_k, q4_0 };
void tiled_rows_vnni(TiledKind k, float* y, int64_t ys, const TileActs& xa, const uint8_t* tiled, int64_t N,
                     int64_t in, int64_t o0, int64_t o1, bool accumulate);
// Q4_K tiles on AVX2 hosts without the VNNI tiles: y rows [o0, o1) from the Q8_K rows at acts
// (act_bytes apart), the bits of q4_k_tiled_rows_ref (and of tiled_rows_vnni)
void q4_k_tiled_rows_avx2(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                          const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate);
// the same for Q4_0's tiles from Q8_0 rows and GActs::xo8 (-8 * each block's sum, per group of 4
// rows; the bits of q4_0_tiled_rows_ref)
void q4_0_tiled_rows_avx2(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, const int32_t* xo8, int64_t N,
                          int64_t in, const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate);

// Q8_0's repacked tiles on AVX2 hosts: y rows [o0, o1) from the Q8_0 rows at acts (act_bytes apart,
// values in [-127, 127] as moe's quantizer writes them), the bits of q8_0_tiled_rows_ref
void q8_0_tiled_rows_avx2(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                          const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate);
// the same on moe's int8 tiles (qmatmul.h's q8_repack_tiled) from QActs' q (N, in) and scales
// (N, in / 32): the bits of q8_tiled_rows_ref
void q8_tiled_rows_avx2(float* y, int64_t ys, const int8_t* q, const float* scales, int64_t N, int64_t in,
                        const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate);
// Q4_K (as stored), Q5_K and Q6_K prefill tiles on AVX2 hosts (no repacked form): each tile of 32 rows of w (as
// stored) unpacked into scratch (tile_scratch_bytes(in), 64-byte aligned) as prefill_tiles_vnni
// does, then the Q8_K rows at acts (act_bytes apart) over it with vpmaddubsw: y rows [o0, o1), the
// bits of prefill_tiles_vnni and of kquant_tiles_ref
void prefill_tiles_avx2(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, const void* w, GType t,
                        int64_t row_stride, int64_t N, int64_t in, int64_t o0, int64_t o1, bool accumulate,
                        uint8_t* scratch);

// Q4_K repacked, prefill on AVX2 hosts: each tile unpacked per call into scratch
// (tile_scratch_bytes(in), 64-byte aligned) and read as the Q5_K tiles are; the bits of
// q4_k_tiled_rows_avx2 (and q4_k_tiled_rows_ref)
void q4_k_tiled_prefill_avx2(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                             const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch);

}  // namespace moe::kernels::detail
