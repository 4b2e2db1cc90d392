#pragma once
// A read-only pass over memory, the loop build/bench/stream times for the host's read bandwidth and
// moe bench --read-probe runs between decode steps (the same bandwidth, measured in the same
// moments as the decode it is compared with). Hand-written: it is a measuring loop, not a library
// routine, and must read every byte at the full width of the host's loads.
#include <cstdint>

namespace moe::kernels {

// The sum of x[0, n) (AVX2 where the host has it: four independent accumulators of 8 lanes, so the
// adds never wait on memory's behalf), and its scalar twin; the two sum in different orders, so
// they agree exactly only where every partial sum is exact (the tests use small integers).
double read_sum(const float* x, int64_t n);
double read_sum_ref(const float* x, int64_t n);

}  // namespace moe::kernels
