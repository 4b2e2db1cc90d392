// The data-parallel gradient sum: moe's fixed-order all-reduce (dist/comm.h: reduce-scatter in rank
// order over alltoallv, then allgatherv) against MPI_Allreduce (whose summation order Open MPI
// picks by size), per message size, on the world this process is in. Median of R repetitions,
// each after a barrier; times are rank 0's.
//
//   mpirun -np W bench/allreduce [--reps R]        (also runs alone: W = 1)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if MOE_BENCH_MPI
#include <mpi.h>
#endif

#include "dist/comm.h"

namespace {

template <class Fn>
double median_seconds(moe::dist::Comm& c, int reps, Fn fn) {
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        c.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        fn();
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    int reps = 9;
    for (int i = 1; i + 1 < argc; ++i)
        if (std::string(argv[i]) == "--reps") reps = std::max(1, std::atoi(argv[i + 1]));
    moe::dist::Comm& c = moe::dist::world();
    const bool lead = c.rank() == 0;
    if (lead) {
        std::printf("fixed-order all-reduce vs MPI_Allreduce, %d ranks, median of %d\n", c.size(), reps);
        std::printf("%12s %12s %14s %14s %10s\n", "floats", "MB", "moe ms", "MPI ms", "moe/MPI");
    }
    for (int64_t n = 1024; n <= (int64_t(1) << 24); n *= 4) {
        std::vector<float> x(n, 1.f), y(n);
        const double a = median_seconds(c, reps, [&] { c.allreduce_sum(x.data(), n); });
        double b = 0;
#if MOE_BENCH_MPI
        if (c.size() > 1)
            b = median_seconds(c, reps, [&] {
                MPI_Allreduce(x.data(), y.data(), (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            });
#endif
        if (lead)
            std::printf("%12lld %12.2f %14.3f %14.3f %10.2f\n", (long long)n, n * 4 / 1048576.0, a * 1e3, b * 1e3,
                        b > 0 ? a / b : 0.0);
    }
    return 0;
}
