#include "kernels/gemm.h"

#include <dnnl.h>

#include "core/error.h"
#include "core/parallel.h"

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

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.f ? 0.f : beta * C[m * ldc + n];
        return;
    }
    dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda,
                                  B, ldb, beta, C, ldc);
    MOE_ASSERT(st == dnnl_success);
}

}  // namespace moe::kernels
