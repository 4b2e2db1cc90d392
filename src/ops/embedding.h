#pragma once
#include <cstdint>
#include <cstring>

#include "core/parallel.h"

namespace moe::ops {

// out (N, C) = wte (V, C)[tokens (N)]
template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, int64_t N, int64_t C) {
    parallel_for(0, N, 64, 2 * C * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) std::memcpy(out + n * C, wte + (int64_t)tokens[n] * C, C * sizeof(T));
    });
}

// dwte (V, C) += scatter of dout (N, C). Threads split the channels, so no two threads write the
// same element and the sum order (token order) is fixed.
template <class T>
void embedding_backward(T* dwte, const T* dout, const int32_t* tokens, int64_t N, int64_t C) {
    parallel_for(0, C, 16, 2 * N * (int64_t)sizeof(T), [&](int64_t c0, int64_t c1) {
        for (int64_t n = 0; n < N; ++n) {
            // out[n, c] = wte[tokens[n], c]
            T* d = dwte + (int64_t)tokens[n] * C;
            const T* g = dout + n * C;
            for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
        }
    });
}

}  // namespace moe::ops
