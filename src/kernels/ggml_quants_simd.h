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

}  // namespace moe::kernels::detail
