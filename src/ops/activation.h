#pragma once
// FFN activations. SwiGLU: act = silu(g) * u (Llama/Mixtral experts: w2(silu(w1 x) * w3 x)).
// ReLU: act = max(h, 0) (the makeMoE tutorial's experts).
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/exp.h"

namespace moe::ops {

enum class Activation { swiglu, relu };

template <class T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// act (n) = silu(gate) * up
// (float: the AVX2 kernel when the CPU has it, src/kernels/exp.cc; this loop is its twin)
template <class T>
void swiglu_forward_ref(T* act, const T* gate, const T* up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) act[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

template <class T>
void swiglu_forward(T* act, const T* gate, const T* up, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
        if (kernels::swiglu_simd()) return kernels::swiglu_forward_avx2(act, gate, up, n);
    }
    swiglu_forward_ref(act, gate, up, n);
}

// Accumulates dgate, dup.
template <class T>
void swiglu_backward_ref(T* dgate, T* dup, const T* dact, const T* gate, const T* up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const T s = sigmoid(gate[i]);
        const T silu = gate[i] * s;
        // act = silu(g) * u ; silu'(g) = s + g s (1 - s)
        dgate[i] += dact[i] * up[i] * (s + gate[i] * s * (T(1) - s));
        dup[i] += dact[i] * silu;
    }
}

template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dact, const T* gate, const T* up, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
        if (kernels::swiglu_simd()) return kernels::swiglu_backward_avx2(dgate, dup, dact, gate, up, n);
    }
    swiglu_backward_ref(dgate, dup, dact, gate, up, n);
}

// act (n) = max(h, 0)
template <class T>
void relu_forward(T* act, const T* h, int64_t n) {
    for (int64_t i = 0; i < n; ++i) act[i] = h[i] > T(0) ? h[i] : T(0);
}

// Accumulates dh; uses the forward output (act > 0 <=> h > 0).
template <class T>
void relu_backward(T* dh, const T* dact, const T* act, int64_t n) {
    // both loads unconditional: the compiler turns the select into a vector blend (a branch on
    // the sign of act mispredicted half the time and cost 3 ns per element)
    for (int64_t i = 0; i < n; ++i) {
        const T d = dact[i];
        dh[i] += act[i] > T(0) ? d : T(0);
    }
}

// The same gradient written in place over dact (the expert path's ReLU, which has no other use
// for dact): dact[i] = act[i] > 0 ? dact[i] : 0. Saves zeroing a dh buffer and a pass over it.
template <class T>
void relu_backward_inplace(T* dact, const T* act, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dact[i] = act[i] > T(0) ? dact[i] : T(0);
}

}  // namespace moe::ops
