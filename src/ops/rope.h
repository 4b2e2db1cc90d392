#pragma once
// Rotary position embedding, NEOX / Hugging Face style: the first and second halves of each head
// form the pairs (i, i + D/2), rotated by angle pos * theta^(-2i/D).
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/parallel.h"

namespace moe::ops {

// cos_sin (T, D/2, 2) table: [t][i] = (cos, sin) of t * theta^(-2i/D), computed in double.
template <class T>
void rope_table(T* cos_sin, int64_t Tn, int64_t D, double theta) {
    for (int64_t t = 0; t < Tn; ++t)
        for (int64_t i = 0; i < D / 2; ++i) {
            double inv = std::pow(theta, -2.0 * (double)i / (double)D);
            double a = (double)t * inv;
            cos_sin[(t * (D / 2) + i) * 2 + 0] = (T)std::cos(a);
            cos_sin[(t * (D / 2) + i) * 2 + 1] = (T)std::sin(a);
        }
}

// In place on x (B*T, NH, D); position of row n is n % T.
template <class T>
void rope_forward(T* x, const T* cos_sin, int64_t B, int64_t Tn, int64_t NH, int64_t D) {
    const int64_t half = D / 2;
    parallel_for(0, B * Tn, 16, 2 * NH * D * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* cs = cos_sin + (n % Tn) * half * 2;
            for (int64_t h = 0; h < NH; ++h) {
                T* v = x + (n * NH + h) * D;
                for (int64_t i = 0; i < half; ++i) {
                    T c = cs[2 * i], s = cs[2 * i + 1];
                    T a = v[i], b = v[i + half];
                    v[i] = a * c - b * s;
                    v[i + half] = b * c + a * s;
                }
            }
        }
    });
}

// In place on the gradient dx (B*T, NH, D): applies the transposed rotation.
template <class T>
void rope_backward(T* dx, const T* cos_sin, int64_t B, int64_t Tn, int64_t NH, int64_t D) {
    const int64_t half = D / 2;
    parallel_for(0, B * Tn, 16, 2 * NH * D * (int64_t)sizeof(T), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
            const T* cs = cos_sin + (n % Tn) * half * 2;
            for (int64_t h = 0; h < NH; ++h) {
                T* g = dx + (n * NH + h) * D;
                for (int64_t i = 0; i < half; ++i) {
                    T c = cs[2 * i], s = cs[2 * i + 1];
                    T ga = g[i], gb = g[i + half];
                    // y1 = a c - b s ; y2 = b c + a s
                    g[i] = ga * c + gb * s;          // da = dy1 c + dy2 s
                    g[i + half] = -ga * s + gb * c;  // db = -dy1 s + dy2 c
                }
            }
        }
    });
}

}  // namespace moe::ops
