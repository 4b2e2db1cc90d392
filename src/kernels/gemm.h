#pragma once
// Row-major GEMM: C (M, N) = alpha * op(A) (M, K) · op(B) (K, N) + beta * C.
// op(X) = X or X^T. lda/ldb/ldc are row strides of the matrices as stored.
//
// gemm_ref is the slow reference twin (any T, used for double-precision gradient checks).
// gemm<float> goes to the packed kernel or oneDNN (gemm_backend); gemm<double> to the reference.
#include <cstdint>
#include <string>
#include <vector>

namespace moe::kernels {

// Precision of the float GEMMs of this process. bf16: both operands are rounded to bfloat16
// (round to nearest even) and multiplied with fp32 accumulation, as a bf16 GEMM on
// bf16-capable hardware does; outputs, master weights and everything outside the GEMMs stay fp32.
// On CPUs with AMX (Isa::amx) the GEMM is kernels/amx_gemm.h's tile kernel; else, with AVX512_BF16,
// kernels/sgemm.h's sgemm_bf16 (vdpbf16ps); both fold the rounding into the packing. Elsewhere (or
// with MOE_ISA=avx2) bf16 is emulated: the numerics are those of bf16 up to the summation order,
// the speed that of fp32 (sgemm_bf16_emulated rounds inside the packed fp32 kernel's packing; on
// the oneDNN backend a rounding pass makes copies first). Set it once, outside steps.
enum class Precision { fp32, bf16 };
void set_gemm_precision(Precision p);
Precision gemm_precision();
const char* precision_name(Precision p);
Precision parse_precision(const char* s, const char* where);  // "fp32" | "bf16", else moe::error
// What runs the float GEMMs at the current precision on this CPU, for the training banner:
// "packed AVX2 6x16", "packed AVX-512 12x32 (calibrated: ...)" (kernels/sgemm.h's
// sgemm_kernel_description), "oneDNN", "AMX bf16 tiles", "native vdpbf16ps" or "emulated:
// bf16-rounded operands, fp32 GEMM".
const char* gemm_engine_name();

// Which library runs the fp32 GEMMs: moe's packed AVX2 kernel (kernels/sgemm.h; the default where
// the CPU has AVX2 + FMA) or oneDNN's dnnl_sgemm (elsewhere, for bf16 emulation, or with
// MOE_GEMM=onednn for side-by-side measurements).
enum class GemmBackend { onednn, packed };
GemmBackend gemm_backend();
// The backend asked for (the CLI from MOE_GEMM, read once by moe::apply_environment); packed falls
// back to oneDNN on CPUs without AVX2 + FMA. onednn throws moe::error in a build without oneDNN.
void set_gemm_backend(GemmBackend b);
GemmBackend parse_gemm_backend(const std::string& s, const char* where);  // "packed" | "onednn"

// Sets the float GEMMs' precision for its lifetime and restores the previous one: how a Model
// applies the precision it holds around its forward and backward.
class PrecisionScope {
public:
    explicit PrecisionScope(Precision p) : prev_(gemm_precision()) { set_gemm_precision(p); }
    ~PrecisionScope() { set_gemm_precision(prev_); }
    PrecisionScope(const PrecisionScope&) = delete;
    PrecisionScope& operator=(const PrecisionScope&) = delete;

private:
    Precision prev_;
};

template <class T>
void gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc);

// op(B) packed once for several GEMMs that multiply it (kernels/sgemm.h's sgemm_pack_b), where the
// float GEMM of the current precision packs B itself (the packed fp32 kernels, bf16 emulated on them,
// the native bf16 one, AMX tiles); elsewhere (oneDNN) a PackedB just refers to B as stored. Results are the
// same bits as gemm_f32 on B.
struct PackedB {
    const float* B = nullptr;  // B as stored, when not packed
    int64_t ldb = 0;
    bool trans_b = false;
    const void* packed = nullptr;  // op(B) packed (K, N), or null
};
// Floats of scratch gemm_pack_b needs for op(B) (K, N); 0 when the current GEMM does not pack.
int64_t gemm_packed_b_floats(int64_t K, int64_t N);
// Packs op(B) into dst (gemm_packed_b_floats(K, N) floats) on the calling thread.
PackedB gemm_pack_b(bool trans_b, int64_t K, int64_t N, const float* B, int64_t ldb, float* dst);
// An unpacked PackedB: B as stored.
inline PackedB gemm_unpacked_b(bool trans_b, const float* B, int64_t ldb) { return {B, ldb, trans_b, nullptr}; }
// C = alpha op(A) op(B) + beta C with op(B) (K, N) from gemm_pack_b / gemm_unpacked_b.
void gemm_f32_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const PackedB& b, float beta, float* C, int64_t ldc);

// Several matrices packed for the GEMMs of one layer pass (kernels/sgemm.h's sgemm_pack_b), the
// packing split over threads (one task per matrix). Job i gives data()[i]: packed where the current
// GEMM packs B and the job asks for it, else B as stored. The scratch keeps its size between
// calls, so only the first pass of a shape allocates.
struct PackJob {
    const float* B;
    bool trans_b;
    int64_t K, N, ldb;
    bool pack = true;  // false: data()[i] refers to B as stored
};
class PackedWeights {
public:
    void pack(const PackJob* jobs, int64_t n);
    const PackedB* data() const { return b_.data(); }

private:
    std::vector<float> scratch_;
    std::vector<PackedB> b_;
    std::vector<int64_t> offset_;
};

template <class T>
inline void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                 int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
    if constexpr (sizeof(T) == 4)
        gemm_f32(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        gemm_ref<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace moe::kernels
