#pragma once
// AMX-INT8 prefill (many activation rows) for int8 block weights: moe's own int8 (per-row, per-32
// fp32 scales, kernels/qmatmul.h) and ggml's q8_0, q4_0, q4_k, q5_k and q6_k (kernels/ggml_quants.h).
// Used by qmatmul / ggml_matmul when active_isa() >= Isa::amx (MOE_ISA=avx512 gives the VNNI path
// back).
//
// Why hand-written: the weights carry a float scale per block of 32 (16 in q6_k) values, so every
// tile product covers one block and is scaled into fp32 accumulators before the next; oneDNN's
// int8 matmul (the AMX GEMM on this host) takes scales per tensor or per output channel, not per 32
// values along K on both operands, and no library reads ggml blocks in place.
//
// Layout (one thread's step): a tile of 32 weight rows is unpacked once into TDPBSSD's B layout
// (per block, the 4-byte groups of the 32 rows side by side: the AVX-512 VNNI tile layout of
// ggml_quants_x86.cc, signed bytes, or unsigned for the K-quants' 0..31 with their mins apart), and
// every group of 16 activation rows (packed once per call: per block a 16 x K-byte A tile) passes
// over it: per block one tile product C (16 activation rows x 16 weight rows, int32, exact) per
// half of the weight tile, stored and scaled into 16 zmm accumulators. Two C tiles alternate so the
// tile unit computes block b + 1 while the vector units scale block b.
//
// Arithmetic: per block, the exact integer sums times the same fp32 scale products, added in the
// same order as the AVX-512 VNNI tiles (ggml_quants_x86.cc): q8_0, q4_0, q4_k and q5_k give the
// VNNI path's bits exactly. moe's int8 (whose other prefill is the fp32 GEMM) and q6_k (whose other
// prefill is the row dots) follow the definition of qmatmul.h / ggml_quants.h: fp32 rounding apart
// from the double reference.
#include <cstdint>

#include "kernels/ggml_quants.h"

namespace moe::kernels::amx {

// AMX-INT8 usable: active_isa() >= Isa::amx (which includes the kernel's tile permission)
bool int8_active();
bool ggml_supported(GType w);  // q8_0, q4_0, q4_k, q5_k, q6_k

// Activation rows packed for the A tiles: groups of 16 rows (the last padded with zero rows), per
// (group g, block b) K * 16 bytes at xp + (g * nb + b) * 16 * K, row m at m * K; per (g, b, m) at
// [(g * nb + b) * 16 + m]: xs the row's scale for that block (fp32), am (K-quants) xs * the sum of
// the row's 32 values. K = 32 (16 for q6_k), nb = in / K.
struct Acts {
    const int8_t* xp = nullptr;
    const float* xs = nullptr;
    const float* am = nullptr;
};
inline int64_t groups(int64_t N) { return (N + 15) / 16; }
// bytes of xp and floats of xs / am for N rows of `in` values in blocks of K (K: 32, 16 for q6_k)
inline int64_t acts_bytes(int64_t N, int64_t in, int64_t K) { return groups(N) * ((in + K - 1) / K) * 16 * K; }
inline int64_t acts_floats(int64_t N, int64_t in, int64_t K) { return groups(N) * ((in + K - 1) / K) * 16; }
// groups [g0, g1) of moe int8 rows (q (N, in) int8, scales (N, ceil(in / 32)) fp32); a tail block
// is zero-padded
void pack_acts_q8(const int8_t* q, const float* scales, int64_t N, int64_t in, int64_t g0, int64_t g1, int8_t* xp,
                  float* xs);
// groups [g0, g1) of ggml activation rows (q8_0 or q8_k, row_bytes apart) for weights of type w
void pack_acts_ggml(const uint8_t* rows, int64_t row_bytes, GType w, int64_t N, int64_t in, int64_t g0, int64_t g1,
                    int8_t* xp, float* xs, float* am);

// Scratch of one thread (64-byte aligned, at least this many bytes)
int64_t scratch_bytes(int64_t in);

// y[n * ys + o] (+)= for o in [o0, o1), n < N, on the calling thread (which it configures for the
// tiles and releases). moe int8: wq (OUT, in) int8, ws (OUT, ceil(in / 32)) fp32.
void prefill_q8(float* y, int64_t ys, const Acts& xa, const int8_t* wq, const float* ws, int64_t N, int64_t in,
                int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch);
void prefill_ggml(float* y, int64_t ys, const Acts& xa, const void* w, GType t, int64_t row_stride, int64_t N,
                  int64_t in, int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch);

}  // namespace moe::kernels::amx
