#pragma once
// Dot products of rows for the ops that reduce along a row (RMSNorm, the MoE combine's gate
// gradient). Plain C++ that the compiler vectorizes for any target: no dispatch needed.
#include <cstdint>

namespace moe::kernels {

// sum_i term(i) for i in [0, n) in a fixed order: 16 running sums (sum j takes the i = j mod 16 of
// the whole 16-blocks), added pairwise, then the tail in order. The 16 sums are independent, so the
// compiler vectorizes the loop for any target (a single running sum is one serial chain of adds,
// about 4x slower) and the bits are the same on every x86-64 CPU; they do not depend on the thread
// count. term is inlined: a product of a few loads, e.g. a[i] * b[i].
template <class T, class Term>
T sum_blocked(int64_t n, const Term& term) {
    T acc[16] = {};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; ++j) acc[j] += term(i + j);
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
    T s = acc[0];
    for (; i < n; ++i) s += term(i);
    return s;
}

// sum_i a[i] * b[i], in sum_blocked's order
template <class T>
T dot_blocked(const T* a, const T* b, int64_t n) {
    return sum_blocked<T>(n, [&](int64_t i) { return a[i] * b[i]; });
}

}  // namespace moe::kernels
