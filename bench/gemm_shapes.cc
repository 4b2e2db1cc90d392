// GEMM shapes of training, side by side: oneDNN's dnnl_sgemm against moe's packed sgemm
// (src/kernels/sgemm.cc) in the same run, alternating, best of R repetitions each; and, where the
// CPU has AVX512_BF16, the bf16 GEMM of --precision bf16 (sgemm_bf16) in a third column, and where
// AMX is active the AMX bf16 tile GEMM (amx_gemm_bf16, what --precision bf16 runs there) in a fourth.
//
//   gemm_shapes [--threads T] [--reps R] [--config makemoe|bench-moe|all]
//
// Prints one line per shape (GFLOP/s of each and their ratio) and, last, `ratio=X`: the total
// time of oneDNN over the total time of the packed GEMM across the shapes.
#include <dnnl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/amx_gemm.h"
#include "kernels/sgemm.h"

namespace {

struct Shape {
    const char* what;
    bool ta, tb;
    int64_t M, N, K;
};

// makemoe: 512 tokens a step, C 128, F 512, about 128 rows per expert.
const Shape kMakemoe[] = {
    {"makemoe expert up   x.W^T", false, true, 128, 512, 128},
    {"makemoe expert down a.W^T", false, true, 128, 128, 512},
    {"makemoe expert dact dy.W", false, false, 128, 512, 128},
    {"makemoe expert dx   dh.W", false, false, 128, 128, 512},
    {"makemoe expert dWdn dy^T.a", true, false, 128, 512, 128},
    {"makemoe expert dWup dh^T.x", true, false, 512, 128, 128},
    {"makemoe qkv         x.W^T", false, true, 512, 384, 128},
    {"makemoe qkv dW      dy^T.x", true, false, 384, 128, 512},
};
// bench-moe: 2048 tokens a step, C 512; 8 routed experts of F 512 (about 512 rows each) and a
// shared expert of F 1024 over all 2048 rows (configs/bench-moe.json since session 8).
const Shape kBenchMoe[] = {
    {"bench-moe expert up   x.W^T", false, true, 512, 512, 512},
    {"bench-moe expert dWup dh^T.x", true, false, 512, 512, 512},
    {"bench-moe shexp up    x.W^T", false, true, 2048, 1024, 512},
    {"bench-moe shexp down  a.W^T", false, true, 2048, 512, 1024},
    {"bench-moe shexp dact  dy.W", false, false, 2048, 1024, 512},
    {"bench-moe shexp dWup  dh^T.x", true, false, 1024, 512, 2048},
    {"bench-moe qkv         x.W^T", false, true, 2048, 1536, 512},
    {"bench-moe qkv dW      dy^T.x", true, false, 1536, 512, 2048},
};

}  // namespace

int main(int argc, char** argv) {
    int threads = 1, reps = 20;
    std::string which = "all";
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (a == "--config" && i + 1 < argc) which = argv[++i];
        else {
            std::fprintf(stderr, "usage: gemm_shapes [--threads T] [--reps R] [--config makemoe|bench-moe|all]\n");
            return 2;
        }
    }
    if (!moe::kernels::sgemm_packed_available()) {
        std::fprintf(stderr, "gemm_shapes: this CPU lacks AVX2+FMA; the packed sgemm does not run here\n");
        return 1;
    }
    moe::set_num_threads(threads);
    std::vector<Shape> shapes;
    if (which == "makemoe" || which == "all") shapes.insert(shapes.end(), std::begin(kMakemoe), std::end(kMakemoe));
    if (which == "bench-moe" || which == "all") shapes.insert(shapes.end(), std::begin(kBenchMoe), std::end(kBenchMoe));
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    double t_dnnl = 0, t_ours = 0;
    const bool bf16 = moe::kernels::sgemm_bf16_available(), amx = moe::kernels::amx_bf16_available();
    std::printf("%-30s %5s %5s %5s  %9s %9s %6s %9s %9s\n", "shape (op(A) M x K, op(B) K x N)", "M", "N", "K",
                "oneDNN", "packed", "ratio", bf16 ? "bf16" : "", amx ? "amx bf16" : "");
    for (const Shape& s : shapes) {
        const int64_t lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
        std::vector<float> A(s.M * s.K), B(s.K * s.N), C(s.M * s.N);
        for (float& v : A) v = u(rng);
        for (float& v : B) v = u(rng);
        double best_d = 1e30, best_o = 1e30, best_b = 1e30, best_x = 1e30;
        for (int r = 0; r < reps; ++r) {
            double t0 = moe::now_seconds();
            dnnl_sgemm(s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                       C.data(), s.N);
            best_d = std::min(best_d, moe::now_seconds() - t0);
            t0 = moe::now_seconds();
            moe::kernels::sgemm_packed(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                                       C.data(), s.N);
            best_o = std::min(best_o, moe::now_seconds() - t0);
            if (!bf16) continue;
            t0 = moe::now_seconds();
            moe::kernels::sgemm_bf16(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), s.N);
            best_b = std::min(best_b, moe::now_seconds() - t0);
            if (!amx) continue;
            t0 = moe::now_seconds();
            moe::kernels::amx_gemm_bf16(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(),
                                        s.N);
            best_x = std::min(best_x, moe::now_seconds() - t0);
        }
        const double gf = 2.0 * s.M * s.N * s.K / 1e9;
        std::printf("%-30s %5lld %5lld %5lld  %9.1f %9.1f %6.2f", s.what, (long long)s.M, (long long)s.N,
                    (long long)s.K, gf / best_d, gf / best_o, best_d / best_o);
        if (bf16) std::printf(" %9.1f", gf / best_b);
        if (amx) std::printf(" %9.1f", gf / best_x);
        std::printf("\n");
        t_dnnl += best_d;
        t_ours += best_o;
    }
    std::printf("GFLOP/s columns: best of %d; threads %d\n", reps, moe::num_threads());
    std::printf("ratio=%.3f\n", t_dnnl / t_ours);
    return 0;
}
