// The int8 dot-product peak of the machine (bench/int8_peak.h): what bench/prefill_quant divides by.
//
//   int8_peak [--threads T] [--seconds S] [--avx2] [--json]
#include "bench/int8_peak.h"

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
    int threads = (int)std::thread::hardware_concurrency();
    double seconds = 1.0;
    bool json = false, avx2 = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--seconds" && i + 1 < argc) seconds = std::atof(argv[++i]);
        else if (a == "--avx2") avx2 = true;
        else if (a == "--json") json = true;
        else {
            std::fprintf(stderr, "usage: int8_peak [--threads T] [--seconds S] [--avx2] [--json]\n");
            return 2;
        }
    }
    threads = std::max(1, threads);
    const int8_peak::Peak one = int8_peak::measure(1, seconds, avx2);
    if (one.isa.empty()) {
        std::fprintf(stderr, "int8_peak: this CPU has neither AVX2 nor AVX-512 VNNI\n");
        return 1;
    }
    const int8_peak::Peak all = threads > 1 ? int8_peak::measure(threads, seconds, avx2) : one;
    if (json) {
        std::printf("{\"threads\": %d, \"int8_gops_1thread\": %.1f, \"int8_gops\": %.1f, \"isa\": \"%s\", \"host\": \"%s\"}\n",
                    threads, one.gops, all.gops, all.isa.c_str(), moe::kernels::host_description().c_str());
    } else {
        std::printf("host: %s\n", moe::kernels::host_description().c_str());
        std::printf("int8 dot peak: %7.1f GOP/s on 1 thread, %7.1f on %d threads   [%s]\n", one.gops, all.gops, threads,
                    all.isa.c_str());
    }
    return 0;
}
