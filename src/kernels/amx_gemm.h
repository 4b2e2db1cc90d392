#pragma once
// The bf16 GEMM of --precision bf16 on Intel AMX tiles (TDPBF16PS), where the CPU has AMX-BF16 and
// Linux granted the tile state (kernels::active_isa() >= Isa::amx). Same contract as
// kernels/sgemm.h's sgemm_bf16: C (M, N) = alpha (bf16(op(A)) · bf16(op(B))) + beta C, row-major,
// op(A) (M, K), op(B) (K, N), both operands fp32 in memory and rounded to nearest-even bf16 inside
// the packing (f32_to_bf16's rounding, denormals included), C not read when beta == 0.
//
// Layout: operands are packed into 1 KiB tiles of 16 rows x 16 words, a word being a pair of bf16
// along k (low half k even, high half k + 1): an A tile is 16 rows of op(A) over 32 k, a B tile 16
// k pairs (32 k) over 16 columns of op(B) (the "VNNI" layout TDPBF16PS reads). K is padded with
// zeros to a multiple of 32, rows of A and columns of B to a multiple of 16, so ragged M, N, K run
// through the same whole tiles and every element of C is summed the same way wherever it lies.
// The C block is 32 x 32 (2 x 2 fp32 tiles; 2 A tiles, 2 B tiles: all 8 tile registers).
//
// Arithmetic: each TDPBF16PS adds the 32 products of a 32-k slice to the fp32 accumulator, with
// bf16 denormal inputs read as zero and denormal results flushed (DAZ/FTZ). Intel documents the
// order as pairwise fp32 additions; the hardware of the Sapphire Rapids hosts measured rounds the
// slice's sum differently (closer to one rounding per slice), so the twin below is checked against
// it with a tolerance (tests/test_amx_gemm.cc), not bit for bit.
//
// Determinism: every C tile is computed by one thread over the whole of K, slices ascending; the
// threads split C into 32 x 32 blocks, so the result does not depend on the thread count.
#include <cstdint>

namespace moe::kernels {

// The CPU has AMX-BF16 (and AVX512_BF16 for the packing), the kernel granted the tile state and
// MOE_ISA allows amx.
bool amx_bf16_available();

// 32-bit words of op(B) (K, N) packed for the tiles: ceil(N / 16) * ceil(K / 32) * 256.
int64_t amx_packed_b_words(int64_t K, int64_t N);
// Packs op(B) (op(B)[k][n] = trans_b ? B[n * ldb + k] : B[k * ldb + n]) into dst, on the calling
// thread. Needs amx_bf16_available() (AVX512_BF16 rounding).
void amx_pack_b(bool trans_b, int64_t K, int64_t N, const float* B, int64_t ldb, void* dst);

// C = alpha op(A) op(B) + beta C on tiles, op(B) packed by amx_pack_b (or packed here, B as stored).
// Called outside a parallel region with enough work, it splits C over parallel_for.
void amx_gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void amx_gemm_bf16_packed_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                            int64_t lda, const void* packed_b, float beta, float* C, int64_t ldc);

// ---- the reference twin (scalar, runs on every CPU) ----
// amx_pack_b_ref writes the same layout (and bits) as amx_pack_b with f32_to_bf16.
void amx_pack_b_ref(bool trans_b, int64_t K, int64_t N, const float* B, int64_t ldb, void* dst);
// The tile arithmetic in scalar code over a packed op(B): operands rounded to bf16, bf16 denormals
// read as zero, each 32-k slice's products summed exactly (double) and added to an fp32 sum rounded
// once per slice, denormal sums flushed to zero; then C = alpha * sum + beta C as the kernel's
// epilogue does it (alpha == 1: the sum itself; beta == 1: sum + C; else fma(beta, C, alpha sum)).
void amx_gemm_bf16_ref(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                       const void* packed_b, float beta, float* C, int64_t ldc);

}  // namespace moe::kernels
