#pragma once
// Softmax + cross-entropy over the vocabulary.
#include <cmath>
#include <cstdint>

#include "core/parallel.h"

namespace moe::ops {

// probs (N, V) (may alias logits), losses (N) = -log p[target]; logits (N, V); targets (N)
template <class T>
void softmax_xent_forward(T* probs, T* losses, const T* logits, const int32_t* targets, int64_t N,
                          int64_t V) {
    parallel_for(0, N, 16, 2 * V * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* l = logits + n * V;
            T* p = probs + n * V;
            T mx = l[0];
            for (int64_t j = 1; j < V; ++j) mx = l[j] > mx ? l[j] : mx;
            const T lt = l[targets[n]];  // read before p overwrites an aliased logits row
            T sum = 0;
            for (int64_t j = 0; j < V; ++j) {
                p[j] = std::exp(l[j] - mx);
                sum += p[j];
            }
            const T inv = T(1) / sum;
            for (int64_t j = 0; j < V; ++j) p[j] *= inv;
            losses[n] = std::log(sum) - (lt - mx);
        }
    });
}

// loss = scale * sum_n losses[n]  =>  dlogits[n, j] += scale * (p[n, j] - [j == target[n]])
template <class T>
void softmax_xent_backward(T* dlogits, const T* probs, const int32_t* targets, T scale, int64_t N,
                           int64_t V) {
    parallel_for(0, N, 16, 2 * V * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* p = probs + n * V;
            T* d = dlogits + n * V;
            for (int64_t j = 0; j < V; ++j) d[j] += scale * p[j];
            d[targets[n]] -= scale;
        }
    });
}

}  // namespace moe::ops
