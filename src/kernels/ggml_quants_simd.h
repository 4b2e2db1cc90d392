#pragma once
// The SIMD twins of ggml_quants.cc's kernels (ggml_quants_x86.cc), for its dispatch only. Call
// only after the run-time checks there (AVX2 + FMA + F16C; AVX-512 F/BW/VL + VNNI).
#include <cstdint>

#include "kernels/ggml_quants.h"

namespace moe::kernels::detail {

// bit-identical to quantize_row_q8_0 / quantize_row_q8_k
void quantize_q8_0_avx2(const float* x, void* y, int64_t n);
void quantize_q8_k_avx2(const float* x, void* y, int64_t n);
// nullptr where the type has no kernel on that ISA
RowDots row_dots_avx2(GType w);
RowDots row_dots_avx512vnni(GType w);

// Prefill tiles (AVX-512 VNNI; ggml_quants_x86.cc): activation rows as the tiles read them. q: the
// rows' int8 values, the 32 of sub-block b of row n at q + n * q_stride + q_off + (b / 8) * q_stride8 +
// (b % 8) * q_sub (q8_0: 2, 272, 34; q8_k: 4, 292, 32); xs, am (N, IN / 32):
// per 32 values the activation scale and scale * sum of the values; xo (q8_0 / q4_0 weights, whose
// offset wm = c ws is the same c for every row): -c * sum of the values, the offset in integers.
struct TileActs {
    const uint8_t* q = nullptr;
    int64_t q_stride = 0, q_off = 0, q_stride8 = 0, q_sub = 0;
    const float* xs = nullptr;
    const float* am = nullptr;
    const int32_t* xo = nullptr;  // q8_0 / q4_0 weights: -c * sum of the 32 values (c = 128 / 8), else null
};
bool tiles_supported(GType w);  // q8_0, q4_0, q4_k, q5_k
int64_t tile_scratch_bytes(int64_t in);
// y[n * ys + o] (+)= for o in [o0, o1), n < N; scratch: tile_scratch_bytes(in), 64-byte aligned
void prefill_tiles_vnni(float* y, int64_t ys, const TileActs& xa, const void* w, GType t, int64_t row_stride,
                        int64_t N, int64_t in, int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch);

}  // namespace moe::kernels::detail
