// Prefill GEMMs on ggml block weights: y (N, OUT) = x (N, IN) . W^T for N = 512 tokens, W in q8_0,
// q4_k, ... (kernels/ggml_quants.h), as a fraction of the machine's int8 dot peak measured in the
// same run (bench/int8_peak.h). Per type, side by side, best of R: qmatmul's prefill (integer dots
// over tiles of weight rows, the default: AMX-INT8 tiles where active_isa() >= amx), the same
// capped at AVX-512 (the VNNI tiles; on AMX hosts only), the alternative (x rounded to its q8 grid,
// then the packed fp32 GEMM dequantizing W inside its packing), and the fp32 GEMM on fp32 weights.
// Where the inference tools repack a type into tiles at load (kernels::repacks_type: q8_0, q4_0,
// q4_k, int8 on AVX-512 VNNI without AMX and on AVX2-only hosts; MOE_REPACK=0: not),
// qmatmul runs on the repacked matrix, as they do, and the rows as stored get a column of their own
// ("as stored"). MOE_ISA=avx2 measures an AVX2-only host's kernels and its vpmaddubsw peak.
// On AMX hosts both peaks are measured: the fractions are given against each (the host's peak is
// the AMX one; the last line uses it). On AVX2-only hosts (no AMX-INT8, no AVX-512 VNNI)
// qmatmul's prefill of the ggml types is the dequant + fp32 GEMM one, and the integer
// row dots it replaced are timed in a column of their own ("int8 row dots").
//
//   prefill_quant [--dtype q8_0,q4_k] [--tokens N] [--threads T] [--reps R] [--cpu-time]
//
// --cpu-time (on a shared host): every rate, the peaks' included, per second of this process's CPU
// time instead of wall time, so time slices taken by other processes drop out. With T threads the
// GEMM's CPU seconds are those of all T threads (waits in the pool included), so its rate per CPU
// second is set against the peak per thread (the T-thread peak / T): the fraction of what the CPU
// seconds it used could have done.
//
// Last line: fraction_of_int8_peak=X, the smallest over the types of qmatmul's rate / the peak.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <moe/moe.h>

#include "bench/int8_peak.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/gemm.h"
#include "kernels/ggml_quants.h"
#include "kernels/qmatmul.h"

using namespace moe::kernels;

// wall seconds, or this process's CPU seconds with --cpu-time
static double clock_now() {
    if (!int8_peak::cpu_time) return moe::now_seconds();
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char** argv) {
    std::string dtypes = "q8_0,q4_k";
    int64_t N = 512;
    int threads = 0, reps = 5;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--dtype" && i + 1 < argc) dtypes = argv[++i];
        else if (a == "--tokens" && i + 1 < argc) N = std::atoll(argv[++i]);
        else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (a == "--cpu-time") int8_peak::cpu_time = true;
        else {
            std::fprintf(stderr, "usage: prefill_quant [--dtype q8_0,q4_k] [--tokens N] [--threads T] [--reps R] [--cpu-time]\n");
            return 2;
        }
    }
    moe::apply_environment();  // MOE_REPACK, MOE_ISA, ...
    moe::set_num_threads(threads);
    const int T = moe::num_threads();
    std::printf("host: %s\n", host_description().c_str());
    if (int8_peak::cpu_time) std::printf("rates per second of CPU time (--cpu-time)\n");
    // the capped ISA's peak (MOE_ISA=avx2: the vpmaddubsw loop, an AVX2-only host's)
    const int8_peak::Peak peak =
        int8_peak::measure(T, 1.0, active_isa() < Isa::avx512 ? int8_peak::Which::avx2 : int8_peak::Which::best);
    std::printf("int8 dot peak: %.1f GOP/s on %d threads [%s]\n", peak.gops, T, peak.isa.c_str());
    const bool amx = peak.isa.rfind("amx", 0) == 0;
    const int8_peak::Peak vpeak = amx ? int8_peak::measure(T, 1.0, int8_peak::Which::vnni) : peak;
    if (amx) std::printf("int8 dot peak: %.1f GOP/s on %d threads [%s]\n", vpeak.gops, T, vpeak.isa.c_str());
    // the peaks the fractions use: per thread with --cpu-time (rates per CPU second), else all T threads'
    const double per = int8_peak::cpu_time ? (double)T : 1.0;
    if (int8_peak::cpu_time && T > 1)
        std::printf("fractions against the peak per thread (%.1f, vnni %.1f GOP/s): rates are per CPU second of all %d threads\n",
                    peak.gops / per, vpeak.gops / per, T);
    struct Shape {
        const char* what;
        int64_t out, in;
    };
    const Shape shapes[] = {{"q|k|v  (3072, 1024)", 3072, 1024}, {"down   (1024, 4096)", 1024, 4096}};
    std::mt19937_64 rng(1);
    std::normal_distribution<float> nd(0.f, 1.f);
    double worst = 1e30;
    std::stringstream ss(dtypes);
    for (std::string name; std::getline(ss, name, ',');) {
        const WType t = parse_wtype(name, "--dtype");
        double tq = 0, tv = 0, td = 0, tf = 0, tr = 0, ts = 0, ops = 0;
        const bool repack = repacks_type(t);  // as the inference tools decide (kernels::repack_for_host)
        const bool rows = is_ggml(t) && !ggml_prefill_on_int8(ggml_type(t));
        for (const Shape& s : shapes) {
            std::vector<float> w(s.out * s.in), x(N * s.in), y(N * s.out);
            for (auto& v : w) v = nd(rng);
            for (auto& v : x) v = nd(rng);
            QStore st;
            st.build(t, w.data(), s.out, s.in);
            QStore tiled;
            if (repack) tiled.build_tiled(st.view());
            const QMatrix m = repack ? tiled.view() : st.view(), stored = st.view();
            double bq = 1e30, bv = 1e30, bd = 1e30, bf = 1e30, br = 1e30, bs = 1e30;
            GActs acts;
            for (int r = 0; r < reps; ++r) {  // alternating, best of reps each
                double t0 = clock_now();
                qmatmul(y.data(), x.data(), m, N, false);
                bq = std::min(bq, clock_now() - t0);
                if (amx) {  // the same capped at AVX-512: the VNNI tiles (int8: the GEMM)
                    const Isa prev = set_isa_cap(Isa::avx512);
                    t0 = clock_now();
                    qmatmul(y.data(), x.data(), m, N, false);
                    bv = std::min(bv, clock_now() - t0);
                    set_isa_cap(prev);
                }
                if (repack) {  // the rows as stored (the VNNI tiles unpacking them per call)
                    t0 = clock_now();
                    qmatmul(y.data(), x.data(), stored, N, false);
                    bs = std::min(bs, clock_now() - t0);
                }
                if (is_ggml(t) && gemm_backend() == GemmBackend::packed) {
                    t0 = clock_now();
                    qmatmul_ggml_dequant_gemm(y.data(), x.data(), stored, N, false);
                    bd = std::min(bd, clock_now() - t0);
                }
                if (rows) {  // the integer row dots (ggml_matmul without tiles)
                    t0 = clock_now();
                    ggml_matmul(y.data(), x.data(), stored.raw, ggml_type(t), stored.row_bytes, N, stored.out, stored.in,
                                false, acts);
                    br = std::min(br, clock_now() - t0);
                }
                t0 = clock_now();
                gemm<float>(false, true, N, s.out, s.in, 1.f, x.data(), s.in, w.data(), s.in, 0.f, y.data(), s.out);
                bf = std::min(bf, clock_now() - t0);
            }
            const double o = 2.0 * N * s.out * s.in;
            std::printf("%-5s %s N=%lld: qmatmul %6.1f GOP/s (%.2f of int8 peak", name.c_str(), s.what, (long long)N,
                        o / bq / 1e9, o / bq / 1e9 / (peak.gops / per));
            if (amx) std::printf(", %.2f of vnni peak) | avx512-capped %6.1f (%.2f of vnni peak)", o / bq / 1e9 / (vpeak.gops / per), o / bv / 1e9, o / bv / 1e9 / (vpeak.gops / per));
            else std::printf(")");
            if (repack) std::printf(" [repacked] | as stored %6.1f (%.2f)", o / bs / 1e9, o / bs / 1e9 / (peak.gops / per));
            std::printf(" | dequant+fp32 GEMM %6.1f | fp32 GEMM %6.1f", o / bd / 1e9, o / bf / 1e9);
            if (rows) std::printf(" | int8 row dots %6.1f", o / br / 1e9);
            std::printf("\n");
            tq += bq, tv += bv, td += bd, tf += bf, tr += br, ts += bs, ops += o;
        }
        const double frac = ops / tq / 1e9 / (peak.gops / per);
        std::printf("%-5s all shapes: qmatmul %.1f GOP/s = %.3f of int8 peak", name.c_str(), ops / tq / 1e9, frac);
        if (amx)
            std::printf(" (%.3f of the vnni peak); avx512-capped %.1f GOP/s = %.3f of the vnni peak; amx/avx512 %.2fx",
                        ops / tq / 1e9 / (vpeak.gops / per), ops / tv / 1e9, ops / tv / 1e9 / (vpeak.gops / per), tv / tq);
        if (repack)
            std::printf(" (repacked); as stored %.1f GOP/s = %.3f", ops / ts / 1e9, ops / ts / 1e9 / (peak.gops / per));
        std::printf("; dequant+fp32 GEMM %.1f; fp32 GEMM %.1f", ops / td / 1e9, ops / tf / 1e9);
        if (rows) std::printf("; int8 row dots %.1f (%.3f of int8 peak)", ops / tr / 1e9, ops / tr / 1e9 / (peak.gops / per));
        std::printf("\n");
        worst = std::min(worst, frac);
    }
    std::printf("fraction_of_int8_peak=%.3f\n", worst);
    return 0;
}
