#pragma once
// Packed GEMMs for the shapes moe trains with: fp32 on AVX2 + FMA, and bf16 (operands rounded to
// bfloat16, products summed in fp32) on AVX512_BF16.
//
// Why hand-written: oneDNN 2.6's dnnl_sgemm runs the small, K = 128 GEMMs of a small MoE (one per
// expert and projection, e.g. 128 rows x 512 x 128) at 45-55 GFLOP/s per core on the AVX2 hosts,
// about half of the FMA peak, and its threaded calls split work in a way that depends on the
// thread count. This is the textbook BLIS structure: op(B) packed into 16-column panels, op(A)
// into 6-row panels, and a 6 x 16 register-tile micro-kernel (12 accumulators) over k.
//
// Same contract as gemm_f32 (row-major; op(A) (M, K), op(B) (K, N); C = alpha op(A) op(B) + beta C,
// C not read when beta == 0). Every element of C is summed over k in one fixed order (k blocks of
// kKc, ascending), whichever thread computes it, so the result does not depend on the thread
// count. Called outside a parallel region with enough work, it splits C over parallel_for.
// The reference twin is gemm_ref (tests/test_sgemm.cc compares them).
//
// fp32 runs on one of two kernels with the same arithmetic (the same bits on every shape, checked
// by tests/test_sgemm.cc): the AVX2 6 x 16 tile, or a 12 x 32 tile of zmm registers where the CPU
// has AVX-512F. Which one is a matter of speed only (sgemm_kernel below).
#include <cstdint>
#include <string>

namespace moe::kernels {

// True when sgemm_packed can run here (the CPU has AVX2 and FMA and MOE_ISA allows them).
bool sgemm_packed_available();

// The fp32 kernel: automatic (the default) times both once per process on a fixed GEMM shape and
// takes the AVX-512 one where it is at least 10% faster (two full 512-bit FMA units per core); avx2
// and avx512 force one (MOE_SGEMM=auto|avx2|avx512, read by moe::apply_environment). Without
// AVX-512F, or MOE_ISA below avx512, it is always avx2. Set it once, outside steps: op(B) packed
// by sgemm_pack_b must be multiplied under the kernel it was packed for. Where the calibration
// picks avx512, GEMMs of N <= 16 columns still run the AVX2 kernel (they fill one of its panels,
// part of a 32-column one): the choice per shape class; a forced avx512 runs every shape on it.
enum class SgemmKernel { automatic, avx2, avx512 };
void set_sgemm_kernel(SgemmKernel k);
SgemmKernel parse_sgemm_kernel(const std::string& s, const char* where);  // "auto" | "avx2" | "avx512"
// The kernel that runs (avx2 or avx512; the first call with automatic calibrates, ~1 ms).
SgemmKernel sgemm_kernel();
// For banners: e.g. "packed AVX-512 12x32, AVX2 6x16 for N <= 16 (calibrated: 150 vs 84 GFLOP/s on
// 1 thread)".
std::string sgemm_kernel_description();

void sgemm_packed(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                  int64_t ldc);

// Writes row `row` of W, entries [k0, k0 + kc), as fp32 to dst. k0 is a multiple of 256.
using SgemmRowLoader = void (*)(const void* ctx, int64_t row, int64_t k0, int64_t kc, float* dst);

// C (M, N) = A (M, K) · W^T + beta C, where W (N, K) is read through `load` (weights stored as bf16
// or int8): each row slice is converted inside the packing of B, so no fp32 copy of W is made.
void sgemm_packed_wrows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, SgemmRowLoader load,
                        const void* ctx, float beta, float* C, int64_t ldc);

// The bf16 GEMM of training's --precision bf16: C = alpha (bf16(op(A)) · bf16(op(B))) + beta C,
// both operands rounded to nearest-even bf16 inside the packing (fp32 in memory, as the master
// weights and activations are), multiplied by vdpbf16ps with fp32 sums: pairs of k are added to
// each other first, then to the sum (a 12 x 32 tile; C summed in one fixed order, so the result
// does not depend on the thread count). Same contract as sgemm_packed otherwise.
bool sgemm_bf16_available();  // the CPU has AVX512_BF16 and MOE_ISA allows avx512
void sgemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The same bf16 GEMM where the CPU has no bf16 instructions (sgemm_packed_available() suffices):
// both operands rounded to nearest-even bf16 inside the fp32 kernels' packing, then multiplied by
// the fp32 kernel (sgemm_kernel()): exactly the bits of sgemm_packed on bf16-rounded copies of A and
// B, at sgemm_packed's speed. Not the bits of sgemm_bf16 (which sums pairs of k first).
void sgemm_bf16_emulated(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Which of the GEMMs above a packed op(B) is for: sgemm_packed (fp32), sgemm_bf16_emulated or
// sgemm_bf16 (native).
enum class SgemmForm { fp32, bf16_emulated, bf16_native };

// op(B) (K, N) packed once for several GEMMs that multiply it (the row blocks of one expert's
// tokens all multiply the expert's weights): sgemm_pack_b writes it in the layout the packing
// inside the GEMM of that form would (bf16_native: the bf16 kernel's, else the fp32 kernel
// sgemm_kernel() names) into dst of sgemm_packed_b_words(form, K, N) 32-bit words, on the calling
// thread; sgemm_packed_b then multiplies by it with no B packing. Results are bit-identical to the
// GEMM of that form.
int64_t sgemm_packed_b_words(SgemmForm form, int64_t K, int64_t N);
void sgemm_pack_b(SgemmForm form, bool trans_b, int64_t K, int64_t N, const float* B, int64_t ldb, void* dst);
void sgemm_packed_b(SgemmForm form, bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const void* packed_b, float beta, float* C, int64_t ldc);

}  // namespace moe::kernels
