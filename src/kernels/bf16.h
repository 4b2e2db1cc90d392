#pragma once
// bfloat16: the top 16 bits of an IEEE float. Conversion rounds to nearest, ties to even; NaN stays
// NaN (quiet). bf16_round keeps the value in a float (the low 16 bits zeroed), which is what a
// bf16 GEMM with fp32 accumulation computes with.
#include <cstdint>
#include <cstring>

namespace moe::kernels {

inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // NaN: keep it quiet
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even (overflow goes to inf)
    return (uint16_t)(u >> 16);
}

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// dst[i] = bf16_round(src[i]) (dst may equal src)
void bf16_round_ref(float* dst, const float* src, int64_t n);
void bf16_round_avx2(float* dst, const float* src, int64_t n);
void bf16_round_n(float* dst, const float* src, int64_t n);  // dispatched

// packed conversions
void f32_to_bf16_n(uint16_t* dst, const float* src, int64_t n);
void bf16_to_f32_n(float* dst, const uint16_t* src, int64_t n);

}  // namespace moe::kernels
