#include "kernels/gemm.h"

#if MOE_WITH_ONEDNN
#include <dnnl.h>
#endif

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/amx_gemm.h"
#include "kernels/bf16.h"
#include "kernels/sgemm.h"

#include <cstdlib>
#include <string>
#include <vector>

namespace moe::kernels {

template <class T>
void gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
    parallel_for(0, M, 4, [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) {
            for (int64_t n = 0; n < N; ++n) {
                T acc = 0;
                for (int64_t k = 0; k < K; ++k) {
                    T a = trans_a ? A[k * lda + m] : A[m * lda + k];
                    T b = trans_b ? B[n * ldb + k] : B[k * ldb + n];
                    acc += a * b;
                }
                T& c = C[m * ldc + n];
                c = (beta == T(0) ? T(0) : beta * c) + alpha * acc;
            }
        }
    });
}

template void gemm_ref<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                              const float*, int64_t, float, float*, int64_t);
template void gemm_ref<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                               const double*, int64_t, double, double*, int64_t);

static Precision g_precision = Precision::fp32;

// onednn|packed picks the fp32 GEMM for A/B measurements; the default is the packed one where the
// CPU runs it
static GemmBackend g_backend = GemmBackend::packed;

GemmBackend parse_gemm_backend(const std::string& v, const char* where) {
    if (v == "onednn") {
#if !MOE_WITH_ONEDNN
        fail(where, "=onednn: this moe was built without oneDNN (-DMOE_WITH_ONEDNN=OFF)");
#endif
        return GemmBackend::onednn;
    }
    if (v != "packed") fail(where, " must be \"onednn\" or \"packed\", got \"", v, "\"");
    return GemmBackend::packed;
}

void set_gemm_backend(GemmBackend b) { g_backend = b; }

GemmBackend gemm_backend() {
    return g_backend == GemmBackend::packed && sgemm_packed_available() ? GemmBackend::packed : GemmBackend::onednn;
}

void set_gemm_precision(Precision p) { g_precision = p; }
Precision gemm_precision() { return g_precision; }
const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }
Precision parse_precision(const char* s, const char* where) {
    const std::string v = s;
    if (v == "fp32") return Precision::fp32;
    if (v == "bf16") return Precision::bf16;
    fail(where, ": precision must be \"fp32\" or \"bf16\", got \"", v, "\"");
}

// bf16 GEMMs on sgemm_bf16 (else, in bf16, emulated on the fp32 backend)
static bool native_bf16() { return g_precision == Precision::bf16 && sgemm_bf16_available(); }
// bf16 GEMMs on AMX tiles (kernels/amx_gemm.h) where the CPU has them, before vdpbf16ps
static bool amx_bf16() { return g_precision == Precision::bf16 && amx_bf16_available(); }
// bf16 without bf16 instructions: the operands rounded inside the packed fp32 kernel's packing
static bool emulated_bf16() {
    return g_precision == Precision::bf16 && !amx_bf16() && !native_bf16() && gemm_backend() == GemmBackend::packed;
}
static SgemmForm sgemm_form() {
    return native_bf16() ? SgemmForm::bf16_native : emulated_bf16() ? SgemmForm::bf16_emulated : SgemmForm::fp32;
}

const char* gemm_engine_name() {
    if (amx_bf16()) return "AMX bf16 tiles";
    if (g_precision == Precision::bf16)
        return native_bf16()     ? "native vdpbf16ps"
               : emulated_bf16() ? "emulated: no bf16 instructions on this CPU, operands rounded to bf16 in the "
                                   "packed fp32 GEMM, at fp32's speed"
                                 : "emulated: bf16-rounded operands, fp32 GEMM";
    if (gemm_backend() != GemmBackend::packed) return "oneDNN";
    thread_local std::string packed;  // valid until the next call on this thread
    packed = sgemm_kernel_description();
    return packed.c_str();
}

// Copies the stored rows x cols block (row stride ld) into dst (contiguous), rounded to bf16.
static void round_block(float* dst, const float* src, int64_t rows, int64_t cols, int64_t ld) {
    for (int64_t r = 0; r < rows; ++r) bf16_round_n(dst + r * cols, src + r * ld, cols);
}

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.f ? 0.f : beta * C[m * ldc + n];
        return;
    }
    if (amx_bf16()) return amx_gemm_bf16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (native_bf16()) {
        // native: the rounding happens inside the packing
        sgemm_bf16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (emulated_bf16()) {
        // no AVX512_BF16 (or MOE_ISA below avx512): rounded inside the packing
        sgemm_bf16_emulated(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (g_precision == Precision::bf16) {
        // emulated on oneDNN (no AVX2 + FMA, or MOE_GEMM=onednn): thread-local scratch, reused: no allocation once warm
        thread_local std::vector<float> sa, sb;
        const int64_t ar = trans_a ? K : M, ac = trans_a ? M : K;  // A as stored
        const int64_t br = trans_b ? N : K, bc = trans_b ? K : N;  // B as stored
        if ((int64_t)sa.size() < ar * ac) sa.resize(ar * ac);
        if ((int64_t)sb.size() < br * bc) sb.resize(br * bc);
        round_block(sa.data(), A, ar, ac, lda);
        round_block(sb.data(), B, br, bc, ldb);
        A = sa.data(), lda = ac, B = sb.data(), ldb = bc;  // the rounded operands, multiplied in fp32
    }
    if (gemm_backend() == GemmBackend::packed) {
        sgemm_packed(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#if MOE_WITH_ONEDNN
    dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda,
                                  B, ldb, beta, C, ldc);
    MOE_ASSERT(st == dnnl_success);
#else
    // built without oneDNN (-DMOE_WITH_ONEDNN=OFF) on a CPU without AVX2 + FMA: the portable twin,
    // rows split over threads (correct everywhere, slow)
    gemm_ref<float>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

// Whether B is packed for the GEMM at the current precision, and by which kernel.
static bool packs_b() { return amx_bf16() || native_bf16() || gemm_backend() == GemmBackend::packed; }

int64_t gemm_packed_b_floats(int64_t K, int64_t N) {
    if (amx_bf16()) return amx_packed_b_words(K, N);
    return packs_b() ? sgemm_packed_b_words(sgemm_form(), K, N) : 0;  // 32-bit words = floats
}

PackedB gemm_pack_b(bool trans_b, int64_t K, int64_t N, const float* B, int64_t ldb, float* dst) {
    if (!packs_b() || K <= 0 || N <= 0) return gemm_unpacked_b(trans_b, B, ldb);
    if (amx_bf16()) amx_pack_b(trans_b, K, N, B, ldb, dst);
    else sgemm_pack_b(sgemm_form(), trans_b, K, N, B, ldb, dst);
    PackedB p = gemm_unpacked_b(trans_b, B, ldb);
    p.packed = dst;
    return p;
}

void gemm_f32_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const PackedB& b, float beta, float* C, int64_t ldc) {
    if (!b.packed || M <= 0 || N <= 0 || K <= 0) {
        gemm_f32(trans_a, b.trans_b, M, N, K, alpha, A, lda, b.B, b.ldb, beta, C, ldc);
        return;
    }
    MOE_ASSERT(packs_b());  // packed under the precision it is used with
    if (amx_bf16()) return amx_gemm_bf16_packed_b(trans_a, M, N, K, alpha, A, lda, b.packed, beta, C, ldc);
    sgemm_packed_b(sgemm_form(), trans_a, M, N, K, alpha, A, lda, b.packed, beta, C, ldc);
}

void PackedWeights::pack(const PackJob* jobs, int64_t n) {
    b_.resize(n);  // no allocation once warm
    offset_.resize(n);
    int64_t total = 0;
    for (int64_t i = 0; i < n; ++i) {
        offset_[i] = total;
        if (jobs[i].pack) total += gemm_packed_b_floats(jobs[i].K, jobs[i].N);
    }
    if ((int64_t)scratch_.size() < total) scratch_.resize(total);
    parallel_tasks(n, [&](int64_t i) {
        const PackJob& j = jobs[i];
        b_[i] = j.pack ? gemm_pack_b(j.trans_b, j.K, j.N, j.B, j.ldb, scratch_.data() + offset_[i])
                       : gemm_unpacked_b(j.trans_b, j.B, j.ldb);
    });
}

}  // namespace moe::kernels
