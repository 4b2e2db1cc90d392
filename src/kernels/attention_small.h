#pragma once
// Fused causal attention of one (batch, head) for short contexts (AVX2 + FMA; on AVX-512 CPUs,
// D 16 or 32 and T up to 64 run a zmm variant that takes 4 query rows (or keys) at a time).
//
// Why hand-written: at makeMoE's size (T = 32, D = 16) the per-head products are 32 x 32 x 16
// GEMMs; a library or packed GEMM spends most of such a call packing its operands, and the softmax
// between the two products is a separate pass over memory. Here one (b, h) is one function: K (and
// V in backward) is transposed once into a small stack buffer, each query row's scores are
// computed 8 keys per vector over the causal prefix only, softmax'd in registers and stored, and
// the value product accumulates D / 8 vectors in registers.
//
// The reference twins are ops::attention_forward_ref / attention_backward_ref (plain loops; also
// the GEMM path ops::attention_forward_gemm); tests/test_attention.cc compares them.
#include <cstdint>

namespace moe::kernels {

// Whether the fused kernels run here for this shape: AVX2 + FMA, D a multiple of 8 up to 64,
// T up to 128.
bool attention_small_supported(int64_t T, int64_t D);

// Whether the training ops pick them: supported, and small enough that they beat the per-head
// GEMMs (build/bench/attention_small, 2 threads: T 32 D 16 1.16-1.33x, T 64 D 32 1.05x,
// T 128 D 64 0.86x: with D / 8 = 8 the row accumulators no longer fit the 16 ymm registers).
bool attention_small_preferred(int64_t T, int64_t D);

// One (batch, head): out (T rows, stride ldq) = softmax(scale q k^T, causal) v; att (T, T) the
// probabilities (upper triangle 0). q rows have stride ldq, k and v rows stride ldkv.
void attention_small_forward(float* out, float* att, const float* q, const float* k, const float* v,
                             int64_t ldq, int64_t ldkv, int64_t T, int64_t D, float scale);

// One (batch, head), accumulating: dq (rows stride ldq) += ds k; dk += ds^T q; dv += p^T dout
// (rows stride ldkv). datt (T, T) is scratch (left holding ds). att as saved by the forward.
void attention_small_backward(float* dq, float* dk, float* dv, float* datt, const float* dout, const float* q,
                              const float* k, const float* v, const float* att, int64_t ldq, int64_t ldkv,
                              int64_t T, int64_t D, float scale);

}  // namespace moe::kernels
