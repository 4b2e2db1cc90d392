// GEMM shapes of training, side by side: oneDNN's dnnl_sgemm against moe's packed sgemm
// (src/kernels/sgemm.cc) in the same run, alternating, best of R repetitions each: its AVX2 6x16
// kernel and, where the CPU has AVX-512F, its AVX-512 12x32 kernel (the same bits), and the
// kernel the process picked (sgemm_kernel, calibrated at start-up) is the "packed" one; where the
// CPU has AVX512_BF16, the bf16 GEMM of --precision bf16 (sgemm_bf16) in another column, and where
// AMX is active the AMX bf16 tile GEMM (amx_gemm_bf16, what --precision bf16 runs there) in a last one.
// Every host also times "bf16 emu": sgemm_bf16_emulated, what --precision bf16 runs on CPUs without
// bf16 instructions (operands rounded inside the fp32 packing); `emu_ratio=` is its total time over
// the picked fp32 kernel's (1.0: bf16 costs nothing over fp32 there).
//
//   gemm_shapes [--threads T] [--reps R] [--config makemoe|bench-moe|all] [--cpu-time]
//
// --cpu-time: times are the process's CPU seconds instead of wall-clock ones (on a shared host the
// time slices other processes take out do not count; meant for --threads 1, where CPU time is the
// one thread's).
//
// Prints one line per shape (GFLOP/s of each, oneDNN / packed and AVX-512 / AVX2 time ratios) and,
// last, `ratio=X`: the total time of oneDNN over the total time of the picked packed kernel, and
// `avx512_ratio=X`: the AVX2 kernel's total time over the AVX-512 one's.
#include <dnnl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/amx_gemm.h"
#include "kernels/cpu.h"
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
    // thin shapes: the router (8 experts) and the head (vocab 65)
    {"makemoe router      x.Wr^T", false, true, 512, 8, 128},
    {"makemoe router dx   dl.Wr", false, false, 512, 128, 8},
    {"makemoe router dWr  dl^T.x", true, false, 8, 128, 512},
    {"makemoe head        x.We^T", false, true, 512, 65, 128},
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

bool g_cpu_time = false;
// wall-clock seconds, or the process's CPU seconds with --cpu-time
double clock_s() {
    if (!g_cpu_time) return moe::now_seconds();
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
    int threads = 1, reps = 20;
    std::string which = "all";
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (a == "--config" && i + 1 < argc) which = argv[++i];
        else if (a == "--cpu-time") g_cpu_time = true;
        else {
            std::fprintf(stderr, "usage: gemm_shapes [--threads T] [--reps R] [--config makemoe|bench-moe|all] [--cpu-time]\n");
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
    using moe::kernels::SgemmKernel;
    const SgemmKernel picked = moe::kernels::sgemm_kernel();
    moe::kernels::set_sgemm_kernel(SgemmKernel::avx512);
    const bool has512 = moe::kernels::sgemm_kernel() == SgemmKernel::avx512;
    const bool bf16 = moe::kernels::sgemm_bf16_available(), amx = moe::kernels::amx_bf16_available();
    std::printf("host: %s\nfp32 kernel picked: %s\n", moe::kernels::host_description().c_str(),
                picked == SgemmKernel::avx512 ? "AVX-512 12x32" : "AVX2 6x16");
    std::printf("%-30s %5s %5s %5s  %9s %9s %9s %6s %6s %9s %9s %9s\n", "shape (op(A) M x K, op(B) K x N)", "M", "N",
                "K", "oneDNN", "avx2", has512 ? "avx512" : "", "dnn/pk", has512 ? "2/512" : "", "bf16 emu",
                bf16 ? "bf16" : "", amx ? "amx bf16" : "");
    double t_dnnl = 0, t_ours = 0, t_2 = 0, t_5 = 0, t_e = 0;
    for (const Shape& s : shapes) {
        const int64_t lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
        std::vector<float> A(s.M * s.K), B(s.K * s.N), C(s.M * s.N);
        for (float& v : A) v = u(rng);
        for (float& v : B) v = u(rng);
        double best_d = 1e30, best_2 = 1e30, best_5 = 1e30, best_b = 1e30, best_x = 1e30, best_e = 1e30;
        auto packed = [&](SgemmKernel k) {
            moe::kernels::set_sgemm_kernel(k);
            const double t0 = clock_s();
            moe::kernels::sgemm_packed(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                                       C.data(), s.N);
            return clock_s() - t0;
        };
        for (int r = 0; r < reps; ++r) {
            double t0 = clock_s();
            dnnl_sgemm(s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                       C.data(), s.N);
            best_d = std::min(best_d, clock_s() - t0);
            best_2 = std::min(best_2, packed(SgemmKernel::avx2));
            if (has512) best_5 = std::min(best_5, packed(SgemmKernel::avx512));
            moe::kernels::set_sgemm_kernel(picked);
            t0 = clock_s();
            moe::kernels::sgemm_bf16_emulated(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                                              C.data(), s.N);
            best_e = std::min(best_e, clock_s() - t0);
            if (!bf16) continue;
            t0 = clock_s();
            moe::kernels::sgemm_bf16(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), s.N);
            best_b = std::min(best_b, clock_s() - t0);
            if (!amx) continue;
            t0 = clock_s();
            moe::kernels::amx_gemm_bf16(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(),
                                        s.N);
            best_x = std::min(best_x, clock_s() - t0);
        }
        const double best_o = picked == SgemmKernel::avx512 ? best_5 : best_2;
        const double gf = 2.0 * s.M * s.N * s.K / 1e9;
        std::printf("%-30s %5lld %5lld %5lld  %9.1f %9.1f", s.what, (long long)s.M, (long long)s.N, (long long)s.K,
                    gf / best_d, gf / best_2);
        if (has512) std::printf(" %9.1f", gf / best_5);
        else std::printf(" %9s", "");
        std::printf(" %6.2f", best_d / best_o);
        if (has512) std::printf(" %6.2f", best_2 / best_5);
        else std::printf(" %6s", "");
        std::printf(" %9.1f", gf / best_e);
        if (bf16) std::printf(" %9.1f", gf / best_b);
        if (amx) std::printf(" %9.1f", gf / best_x);
        std::printf("\n");
        t_dnnl += best_d;
        t_ours += best_o;
        t_2 += best_2;
        t_5 += best_5;
        t_e += best_e;
    }
    moe::kernels::set_sgemm_kernel(SgemmKernel::automatic);
    std::printf("GFLOP/s columns: best of %d; threads %d%s\n", reps, moe::num_threads(),
                g_cpu_time ? "; per second of process CPU time" : "");
    std::printf("ratio=%.3f\n", t_dnnl / t_ours);
    if (has512) std::printf("avx512_ratio=%.3f\n", t_2 / t_5);
    std::printf("emu_ratio=%.3f\n", t_e / t_ours);
    return 0;
}
