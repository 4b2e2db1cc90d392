// Decode rows of Q8_0 weights (the batch-invariant path of a serving step): CPU time per call of
// qmatmul on a stack of (OUT, IN) Q8_0 matrices (--type: another weight type) for 1..32 activation rows, on the AMX-INT8 decode
// rows and, in the same run, on the AVX-512 VNNI rows (the ISA capped at avx512), alternating
// rounds; prints each path's microseconds per matrix, GMAC/s, its time at R rows over its time at
// one row, and VNNI time / AMX time. One thread (CPU time of this thread: what other processes on a shared
// host disturb least).
// With --mats 1 the matrix stays in L2 after the warm-up call: the kernel's compute rate with no
// memory in the way (GB/s of weight bytes per thread), the ceiling a decode step's rate from DRAM
// is measured against.
//   build/bench/decode_rows [--type q8_0] [--out 1024] [--in 1024] [--mats 64] [--rows 1,2,4,8,16,32] [--rounds 5]
//                         [--invariant on|off] [--repack on|off] [--isa avx512|avx2]
// --isa avx2: the second ("vnni") columns with the ISA capped at AVX2 (an AVX2-only host's kernels)
// --repack on: Q8_0 / Q4_0 / Q4_K / int8 matrices repacked into tiles first (QStore::build_tiled, as the inference tools
// do on AVX-512 VNNI hosts without AMX; every path then reads the tiles)
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <moe/moe.h>

#include "kernels/batch_invariant.h"
#include "kernels/cpu.h"
#include "kernels/ggml_rows_vnni.h"
#include "kernels/qmatmul.h"

using namespace moe::kernels;

static double thread_cpu() {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char** argv) {
    int64_t out = 1024, in = 1024, mats = 64, rounds = 5;
    WType type = WType::q8_0;
    bool invariant = true, repack = false;
    Isa cap = Isa::avx512;  // the second column's ISA (--isa avx2: an AVX2-only host's kernels)
    std::string rows_s = "1,2,4,8,16,32";
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i], v = argv[i + 1];
        if (k == "--out") out = std::stoll(v);
        else if (k == "--in") in = std::stoll(v);
        else if (k == "--mats") mats = std::stoll(v);
        else if (k == "--rows") rows_s = v;
        else if (k == "--rounds") rounds = std::stoll(v);
        else if (k == "--type") type = parse_wtype(v, "--type");
        else if (k == "--invariant") invariant = v != "off";
        else if (k == "--repack") repack = v != "off";
        else if (k == "--isa") cap = parse_isa(v, "--isa");
    }
    moe::set_threads(1);
    std::printf("host: %s\n", host_description().c_str());
    const bool amx = detail::q8_0_rows_amx_supported() && type == WType::q8_0;
    std::vector<float> w(out * in);
    std::vector<QStore> st(mats);
    std::mt19937_64 rng(1);
    std::normal_distribution<float> d(0.f, 1.f);
    for (auto& s : st) {
        for (auto& v : w) v = d(rng);
        s.build(type, w.data(), out, in);
        if (repack) {
            if (type != WType::q8_0 && type != WType::q8 && type != WType::q4_k && type != WType::q4_0) {
                std::fprintf(stderr, "--repack on is for --type q8_0, q4_0, q4_k or int8\n");
                return 1;
            }
            s.build_tiled(s.view());
        }
    }
    const double mat_bytes = (double)st[0].view().bytes();
    std::printf("decode rows: %s%s %lld x %lld, %lld matrices (%.1f MB), batch invariant %s, 1 thread, AMX rows %s\n",
                wtype_name(type), repack ? " (repacked into tiles)" : "", (long long)out, (long long)in, (long long)mats,
                (double)mats * mat_bytes / 1e6, invariant ? "on" : "off", amx ? "on" : "unavailable");
    std::printf("\"vnni\" columns: the ISA capped at %s\n", isa_name(cap));
    std::vector<int64_t> rows;
    {
        std::stringstream ss(rows_s);
        for (std::string t; std::getline(ss, t, ',');) rows.push_back(std::stoll(t));
    }
    const int64_t nmax = *std::max_element(rows.begin(), rows.end());
    std::vector<float> x(nmax * in), y(nmax * out);
    for (auto& v : x) v = d(rng);
    const BatchInvariantScope scope(invariant);
    const Isa paths[2] = {Isa::amx, cap};
    std::vector<double> best(2 * rows.size(), 1e30);
    for (int64_t r = 0; r < rounds; ++r)
        for (int p = 0; p < (amx ? 2 : 1); ++p) {
            const Isa prev = set_isa_cap(amx ? paths[p] : cap);
            for (size_t i = 0; i < rows.size(); ++i) {
                const int64_t N = rows[i];
                for (auto& s : st) qmatmul(y.data(), x.data(), s.view(), N, false);  // warm
                const double t0 = thread_cpu();
                for (auto& s : st) qmatmul(y.data(), x.data(), s.view(), N, false);
                const double us = (thread_cpu() - t0) * 1e6 / (double)mats;
                double& b = best[(amx ? p : 1) * rows.size() + i];
                b = std::min(b, us);
            }
            set_isa_cap(prev);
        }
    // "vnni": the AVX-512 path (VNNI rows for Q8_0 / Q4_0, the row dots of the other types)
    std::printf("%6s %12s %10s %10s %12s %10s %10s %10s %10s\n", "rows", "amx us", "amx GMAC/s", "amx t/t1", "vnni us",
                "vnni GMAC/s", "vnni GB/s", "vnni t/t1", "vnni/amx");
    for (size_t i = 0; i < rows.size(); ++i) {
        const double macs = (double)rows[i] * out * in, a = best[i], v = best[rows.size() + i];
        if (amx)
            std::printf("%6lld %12.1f %10.1f %10.2f %12.1f %10.1f %10.1f %10.2f %10.2f\n", (long long)rows[i], a,
                        macs / a / 1e3, a / best[0], v, macs / v / 1e3, mat_bytes / v / 1e3, v / best[rows.size()], v / a);
        else
            std::printf("%6lld %12s %10s %10s %12.1f %10.1f %10.1f %10.2f %10s\n", (long long)rows[i], "-", "-", "-", v,
                        macs / v / 1e3, mat_bytes / v / 1e3, v / best[rows.size()], "-");
    }
    return 0;
}
