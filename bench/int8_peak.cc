// The int8 dot-product peak of the machine (bench/int8_peak.h): what bench/prefill_quant divides by.
// With AMX-INT8 (active_isa() >= amx) it prints the AMX tile peak and the AVX-512 VNNI peak side by
// side and names the host's peak (the larger); MOE_ISA=avx512 (or --vnni) measures VNNI alone.
//
//   int8_peak [--threads T] [--seconds S] [--vnni | --avx2] [--cpu-time] [--json]
// --cpu-time: each thread's rate per second of its own CPU time (a shared host's time slices out)
#include "bench/int8_peak.h"

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
    int threads = (int)std::thread::hardware_concurrency();
    double seconds = 1.0;
    bool json = false;
    int8_peak::Which which = int8_peak::Which::best;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--seconds" && i + 1 < argc) seconds = std::atof(argv[++i]);
        else if (a == "--avx2") which = int8_peak::Which::avx2;
        else if (a == "--vnni") which = int8_peak::Which::vnni;
        else if (a == "--json") json = true;
        else if (a == "--cpu-time") int8_peak::cpu_time = true;
        else {
            std::fprintf(stderr, "usage: int8_peak [--threads T] [--seconds S] [--vnni | --avx2] [--cpu-time] [--json]\n");
            return 2;
        }
    }
    threads = std::max(1, threads);
    const int8_peak::Peak one = int8_peak::measure(1, seconds, which);
    if (one.isa.empty()) {
        std::fprintf(stderr, "int8_peak: this CPU has neither AVX2 nor AVX-512 VNNI\n");
        return 1;
    }
    const int8_peak::Peak all = threads > 1 ? int8_peak::measure(threads, seconds, which) : one;
    // with AMX: the vector peak too, side by side
    const bool amx = one.isa.rfind("amx", 0) == 0;
    int8_peak::Peak v1, vt;
    if (amx) {
        v1 = int8_peak::measure(1, seconds, int8_peak::Which::vnni);
        vt = threads > 1 ? int8_peak::measure(threads, seconds, int8_peak::Which::vnni) : v1;
    }
    if (json) {
        std::printf("{\"threads\": %d, \"int8_gops_1thread\": %.1f, \"int8_gops\": %.1f, \"isa\": \"%s\"", threads, one.gops,
                    all.gops, all.isa.c_str());
        if (amx)
            std::printf(", \"vector_gops_1thread\": %.1f, \"vector_gops\": %.1f, \"vector_isa\": \"%s\"", v1.gops, vt.gops,
                        vt.isa.c_str());
        std::printf(", \"host\": \"%s\"}\n", moe::kernels::host_description().c_str());
    } else {
        std::printf("host: %s\n", moe::kernels::host_description().c_str());
        std::printf("int8 dot peak: %8.1f GOP/s on 1 thread, %8.1f on %d threads   [%s]\n", one.gops, all.gops, threads,
                    all.isa.c_str());
        if (amx) {
            std::printf("int8 dot peak: %8.1f GOP/s on 1 thread, %8.1f on %d threads   [%s]\n", v1.gops, vt.gops, threads,
                        vt.isa.c_str());
            std::printf("host int8 peak: %s (%.1fx the vector peak on %d threads)\n", all.isa.c_str(), all.gops / vt.gops,
                        threads);
        } else {
            std::printf("host int8 peak: %s\n", all.isa.c_str());
        }
    }
    return 0;
}
