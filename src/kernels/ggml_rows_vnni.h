#pragma once
// Decode GEMV of Q8_0 and Q4_0 weights on AVX-512 VNNI hosts (ggml_rows_vnni.cc): up to 8 activation
// rows per pass over a weight row, one 512-bit vpdpbusd per two blocks and row (Q4_0's nibbles
// taken as unsigned bytes, the offset of 8 carried by the activations). For ggml_quants.cc's
// dispatch only: call after q8_0_rows_vnni_supported().
#include <cstdint>

namespace moe::kernels::detail {

bool q8_0_rows_vnni_supported();  // AVX-512 F/BW/VL/DQ + VNNI + F16C, within MOE_ISA

// The activation rows (q8_0 blocks, row_bytes apart) in the kernel's layout: qu (N, in) the bytes
// q + 128 (unsigned), s16 (N, (in / 32 + 1) / 2, 16) per pair of blocks the two blocks' scales as
// floats, 8 lanes each (a lone last block: its scale in the low 8 lanes, 0 in the high 8).
void q8_0_rows_acts(const uint8_t* rows, int64_t row_bytes, int64_t N, int64_t in, uint8_t* qu, float* s16);

// y[n * ys + o] (+)= dot(weight row o, activation row n) for o in [o0, o1), n in [n0, n0 + nr),
// nr <= 8, weight row o at w + o * row_stride. Each row's result has the bits of the single-row
// dots (row_dots(q8_0) on AVX2 and AVX-512 VNNI) whatever nr and n0: the same exact int32 sum per
// 4 values, the same fp32 scale products and FMAs in the same order (even blocks in the low 8
// lanes, odd blocks in the high 8), the same final sum.
void q8_0_rows_vnni(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const void* w,
                    int64_t row_stride, int64_t n0, int nr, int64_t o0, int64_t o1, bool accumulate);
// Q4_0 weights: the activation rows in their own layout (q4_0_rows_acts), sp = (in / 32 + 1) / 2
// pairs of blocks per row; per pair k = n * sp + p: xq + k * 64 the two blocks' 64 signed bytes in
// the order [b0 values 0-15, b1 values 0-15, b0 values 16-31, b1 values 16-31] (the order of the
// weights' nibbles, lows then highs, as a pair's 32 bytes give them), xc + k * 16 per 4 of those
// bytes -8 * their sum (int32: the weights' offset of 8), xs + k * 16 the scales (b0, b1, b0, b1)
// 4 lanes each (a lone last block: b1's bytes, offsets and scales 0).
void q4_0_rows_acts(const uint8_t* rows, int64_t row_bytes, int64_t N, int64_t in, int8_t* xq, int32_t* xc, float* xs);
// The same rows as q8_0_rows_vnni for Q4_0 weights, with the bits of row_dots(q4_0) (the nibbles
// are vpdpbusd's unsigned operand as stored: each lane's int32 is still the exact sum of its w * x).
void q4_0_rows_vnni(float* y, int64_t ys, const int8_t* xq, const int32_t* xc, const float* xs, int64_t in,
                    const void* w, int64_t row_stride, int64_t n0, int nr, int64_t o0, int64_t o1, bool accumulate);

// na = 1 or 2 activation rows (act: their q8_0 blocks, act_bytes apart) in the block order below
// (the AMX rows' arithmetic, the twin q8_0_rows_block_ref's bits) on AVX-512 VNNI without AMX:
// y[n * ys + o] (+)= for n < na, o in [o0, o1). With ggml_quants.cc's VNNI prefill tiles for three
// rows or more (the same order), the batch-invariant Q8_0 path of VNNI hosts. row_stride * 15 must
// fit an int32.
void q8_0_row_block_vnni(float* y, int64_t ys, const uint8_t* act, int64_t act_bytes, int na, int64_t in, const void* w,
                         int64_t row_stride, int64_t o0, int64_t o1, bool accumulate);
// The same for moe's int8 (wq (OUT, in), ws (OUT, in / 32); the activation rows q (na, in) with their
// block scales qs (na, in / 32), as QActs has them): the bits of q8_rows_block_ref. in a multiple of
// 32, in * 15 must fit an int32.
void q8_row_block_vnni(float* y, int64_t ys, const int8_t* q, const float* qs, int na, int64_t in, const int8_t* wq,
                       const float* ws, int64_t o0, int64_t o1, bool accumulate);

// ---- AMX-INT8 decode rows (ggml_rows_amx.cc), used instead of the above where
// q8_0_rows_amx_supported() (active_isa() >= amx). Their arithmetic is the "block order" of the
// AMX / VNNI prefill tiles, not the single-row dots' lane order: for every (activation row n,
// weight row o)
//     acc = accumulate ? y[n * ys + o] : 0
//     for b = 0, 1, ..., in / 32 - 1:  acc = fma((float)isum_b, wd_b * xd_b, acc)
//     y[n * ys + o] = acc
// isum_b the exact int32 dot of block b's 32 signed bytes (weights x activations), wd_b / xd_b the
// blocks' fp16 scales as fp32, wd_b * xd_b one fp32 product, one fused multiply-add per block. A
// row's result depends on that row alone: not on N, the group of 16 it falls in, the output range
// or the thread. q8_0_rows_block_ref is the scalar twin of exactly this.
bool q8_0_rows_amx_supported();  // q8_0_rows_vnni_supported() and amx::int8_active()

// The activation rows in the AMX kernel's layout: groups of 16 rows (the last padded with zero
// rows); per (group g, block b) TDPBSSD's B tile at qu + (g * nb + b) * 512 (8 rows of 64 bytes:
// row k holds bytes 4k..4k+3 of the block of the 16 rows side by side) and the 16 rows' scales at
// s16 + (g * nb + b) * 16 (0 for padding rows). nb = in / 32.
int64_t q8_0_rows_amx_qu_bytes(int64_t N, int64_t in);
int64_t q8_0_rows_amx_s16_floats(int64_t N, int64_t in);
void q8_0_rows_acts_amx(const uint8_t* rows, int64_t row_bytes, int64_t N, int64_t in, uint8_t* qu, float* s16);

// y[n * ys + o] (+)= for all N activation rows and o in [o0, o1) (any N, any range), in the block
// order above, on the calling thread (which it configures for the tiles and releases). Weight rows
// are the A tiles in place (16 rows of 32 bytes, row_stride apart: no unpacking).
void q8_0_rows_amx(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const void* w,
                   int64_t row_stride, int64_t N, int64_t o0, int64_t o1, bool accumulate);

// The scalar twin of the block order (portable; acts: N q8_0 rows, act_bytes apart).
void q8_0_rows_block_ref(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                         const void* w, int64_t row_stride, int64_t o0, int64_t o1, bool accumulate);

// The same decode rows for moe's own int8 (kernels/qmatmul.h: wq (OUT, in) int8, ws (OUT, in / 32)
// fp32 scales; activations quantized per block as QActs does), in the same block order with the
// fp32 scales: acc = fma((float)isum_b, ws[o, b] * xs[n, b], acc). in a multiple of 32. The int8
// VNNI rows (qmatmul.cc) sum in another order: a host with AMX-INT8 gets its own int8 bits, the
// same for every N, thread count and output range. q8_rows_block_ref is the twin.
void q8_rows_acts_amx(const int8_t* q, const float* scales, int64_t N, int64_t in, uint8_t* qu, float* s16);
void q8_rows_amx(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const int8_t* wq,
                 const float* ws, int64_t N, int64_t o0, int64_t o1, bool accumulate);
void q8_rows_block_ref(float* y, int64_t ys, const int8_t* q, const float* qs, int64_t N, int64_t in, const int8_t* wq,
                       const float* ws, int64_t o0, int64_t o1, bool accumulate);

}  // namespace moe::kernels::detail
