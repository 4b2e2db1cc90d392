#pragma once
// Decode GEMV of Q8_0 and Q4_0 weights on AVX-512 VNNI hosts (ggml_rows_vnni.cc): up to 8 activation
// rows per pass over a weight row, one 512-bit vpdpbusd per two blocks and row (Q4_0's nibbles
// unpacked to signed bytes in registers, once for all the rows). For ggml_quants.cc's
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
// The same for Q4_0 weights (the activations of q8_0_rows_acts): the bits of row_dots(q4_0)
void q4_0_rows_vnni(float* y, int64_t ys, const uint8_t* qu, const float* s16, int64_t in, const void* w,
                    int64_t row_stride, int64_t n0, int nr, int64_t o0, int64_t o1, bool accumulate);

}  // namespace moe::kernels::detail
