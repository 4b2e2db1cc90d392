#include "kernels/qmatmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/bf16.h"
#include "kernels/cpu.h"
#include "kernels/gemm.h"

namespace moe::kernels {

const char* wtype_name(WType t) {
    switch (t) {
        case WType::f32: return "fp32";
        case WType::bf16: return "bf16";
        case WType::q8: return "int8";
    }
    return "?";
}

WType parse_wtype(const std::string& s, const char* where) {
    if (s == "fp32") return WType::f32;
    if (s == "bf16") return WType::bf16;
    if (s == "int8") return WType::q8;
    fail(where, ": dtype must be fp32, bf16 or int8, got \"", s, "\"");
}

double QMatrix::bytes() const {
    const double n = (double)out * (double)in;
    switch (type) {
        case WType::f32: return 4 * n;
        case WType::bf16: return 2 * n;
        case WType::q8: return n + 4.0 * (double)out * (double)blocks();
    }
    return 0;
}

QMatrix QMatrix::rows(int64_t r0, int64_t n) const {
    QMatrix m = *this;
    m.out = n;
    if (f32) m.f32 = f32 + r0 * in;
    if (bf16) m.bf16 = bf16 + r0 * in;
    if (q) m.q = q + r0 * in, m.scales = scales + r0 * blocks();
    return m;
}

void quantize_q8_row(int8_t* q, float* scales, const float* w, int64_t in) {
    for (int64_t b = 0; b * kQ8Block < in; ++b) {
        const int64_t i0 = b * kQ8Block, i1 = std::min(in, i0 + kQ8Block);
        float amax = 0;
        for (int64_t i = i0; i < i1; ++i) amax = std::max(amax, std::fabs(w[i]));
        const float s = amax / 127.f;
        scales[b] = s;
        const float inv = s > 0 ? 1.f / s : 0.f;
        for (int64_t i = i0; i < i1; ++i) q[i] = (int8_t)std::lrint(std::clamp(w[i] * inv, -127.f, 127.f));
    }
}

void QStore::build(WType t, const float* w, int64_t o, int64_t i) {
    type = t, out = o, in = i, f32 = nullptr;
    bf16.clear(), q.clear(), scales.clear();
    if (t == WType::f32) {
        f32 = w;
    } else if (t == WType::bf16) {
        bf16.resize(o * i);
        parallel_for(0, o, 64, [&](int64_t r0, int64_t r1) { f32_to_bf16_n(bf16.data() + r0 * i, w + r0 * i, (r1 - r0) * i); });
    } else {
        const int64_t nb = (i + kQ8Block - 1) / kQ8Block;
        q.resize(o * i);
        scales.resize(o * nb);
        parallel_for(0, o, 64, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) quantize_q8_row(q.data() + r * i, scales.data() + r * nb, w + r * i, i);
        });
    }
}

QMatrix QStore::view() const {
    QMatrix m;
    m.type = type, m.out = out, m.in = in;
    m.f32 = f32;
    m.bf16 = bf16.empty() ? nullptr : bf16.data();
    m.q = q.empty() ? nullptr : q.data();
    m.scales = scales.empty() ? nullptr : scales.data();
    return m;
}

void dequantize_row(float* dst, const QMatrix& w, int64_t r) {
    const int64_t in = w.in;
    switch (w.type) {
        case WType::f32:
            std::copy(w.f32 + r * in, w.f32 + (r + 1) * in, dst);
            break;
        case WType::bf16:
            bf16_to_f32_n(dst, w.bf16 + r * in, in);
            break;
        case WType::q8: {
            const int8_t* q = w.q + r * in;
            const float* s = w.scales + r * w.blocks();
            for (int64_t i = 0; i < in; ++i) dst[i] = s[i / kQ8Block] * (float)q[i];
            break;
        }
    }
}

void qmatmul_ref(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate) {
    std::vector<float> row(w.in);
    for (int64_t o = 0; o < w.out; ++o) {
        dequantize_row(row.data(), w, o);
        for (int64_t n = 0; n < N; ++n) {
            double acc = 0;
            for (int64_t i = 0; i < w.in; ++i) acc += (double)x[n * w.in + i] * row[i];
            y[n * w.out + o] = (float)(accumulate ? y[n * w.out + o] + acc : acc);
        }
    }
}

namespace {

// weight (o, i) as fp32, one at a time (tails and the reference twin)
inline float weight_at(const QMatrix& w, int64_t o, int64_t i) {
    switch (w.type) {
        case WType::f32: return w.f32[o * w.in + i];
        case WType::bf16: return bf16_to_f32(w.bf16[o * w.in + i]);
        case WType::q8: return w.scales[o * w.blocks() + i / kQ8Block] * (float)w.q[o * w.in + i];
    }
    return 0.f;
}

constexpr int64_t kMaxRows = 2;  // x rows per pass of the GEMV kernel (4 accumulators each)

// 8 weights of row r at column i, as fp32 (the type is a template argument: no branch per load)
template <WType TY>
__attribute__((target("avx2,fma"))) inline __m256 load8(const QMatrix& w, int64_t r, int64_t i) {
    if constexpr (TY == WType::f32) {
        return _mm256_loadu_ps(w.f32 + r * w.in + i);
    } else if constexpr (TY == WType::bf16) {
        const __m128i h = _mm_loadu_si128((const __m128i*)(w.bf16 + r * w.in + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
        const __m128i b = _mm_loadl_epi64((const __m128i*)(w.q + r * w.in + i));
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    }
}

// y[n, o] for o in [o0, o1), n in [n0, n0 + NR): the weight row is read once for the NR rows.
// Four independent accumulators per x row (one per 8-lane quarter of a 32-block) keep the FMA
// pipes busy instead of waiting on one dependency chain; type and NR are compile-time so the
// accumulators stay in registers. int8 weights are scaled in registers (w * scale) before the
// FMA. A tail (IN not a multiple of 32) goes scalar.
template <WType TY, int NR>
__attribute__((target("avx2,fma"))) void gemv_rows_avx2(float* y, const float* x, const QMatrix& w, int64_t n0,
                                                        int64_t o0, int64_t o1, bool accumulate) {
    const int64_t in = w.in, full = (in / kQ8Block) * kQ8Block, nb = w.blocks();
    for (int64_t o = o0; o < o1; ++o) {
        __m256 acc[NR][4];
        for (int j = 0; j < NR; ++j)
            for (int k = 0; k < 4; ++k) acc[j][k] = _mm256_setzero_ps();
        for (int64_t i = 0; i < full; i += kQ8Block) {
            __m256 w0 = load8<TY>(w, o, i), w1 = load8<TY>(w, o, i + 8), w2 = load8<TY>(w, o, i + 16),
                   w3 = load8<TY>(w, o, i + 24);
            if constexpr (TY == WType::q8) {
                const __m256 sc = _mm256_set1_ps(w.scales[o * nb + i / kQ8Block]);
                w0 = _mm256_mul_ps(w0, sc), w1 = _mm256_mul_ps(w1, sc);
                w2 = _mm256_mul_ps(w2, sc), w3 = _mm256_mul_ps(w3, sc);
            }
            for (int j = 0; j < NR; ++j) {
                const float* xr = x + (n0 + j) * in + i;
                acc[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc[j][0]);
                acc[j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), acc[j][1]);
                acc[j][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), acc[j][2]);
                acc[j][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), acc[j][3]);
            }
        }
        for (int j = 0; j < NR; ++j) {
            alignas(32) float l[8];
            _mm256_store_ps(l, _mm256_add_ps(_mm256_add_ps(acc[j][0], acc[j][1]), _mm256_add_ps(acc[j][2], acc[j][3])));
            float s = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
            const float* xr = x + (n0 + j) * in;
            for (int64_t i = full; i < in; ++i) s += weight_at(w, o, i) * xr[i];  // tail
            float& dst = y[(n0 + j) * w.out + o];
            dst = accumulate ? dst + s : s;
        }
    }
}

template <WType TY>
void gemv_avx2(float* y, const float* x, const QMatrix& w, int64_t n0, int64_t nr, int64_t o0, int64_t o1,
               bool accumulate) {
    if (nr == 2) gemv_rows_avx2<TY, 2>(y, x, w, n0, o0, o1, accumulate);
    else gemv_rows_avx2<TY, 1>(y, x, w, n0, o0, o1, accumulate);
}

void gemv_rows_avx2_any(float* y, const float* x, const QMatrix& w, int64_t n0, int64_t nr, int64_t o0, int64_t o1,
                        bool accumulate) {
    switch (w.type) {
        case WType::f32: gemv_avx2<WType::f32>(y, x, w, n0, nr, o0, o1, accumulate); break;
        case WType::bf16: gemv_avx2<WType::bf16>(y, x, w, n0, nr, o0, o1, accumulate); break;
        case WType::q8: gemv_avx2<WType::q8>(y, x, w, n0, nr, o0, o1, accumulate); break;
    }
}

void gemv_rows_ref(float* y, const float* x, const QMatrix& w, int64_t n0, int64_t nr, int64_t o0, int64_t o1,
                   bool accumulate) {
    const int64_t in = w.in;
    for (int64_t o = o0; o < o1; ++o)
        for (int64_t j = 0; j < nr; ++j) {
            float s = 0;
            const float* xr = x + (n0 + j) * in;
            for (int64_t i = 0; i < in; ++i) s += weight_at(w, o, i) * xr[i];
            float& dst = y[(n0 + j) * w.out + o];
            dst = accumulate ? dst + s : s;
        }
}

}  // namespace

// Decode: N <= kGemvMaxN rows use the streaming kernel; more rows dequantize W (in blocks of
// output rows, into thread-local scratch) and use the GEMM.
void qmatmul_rows(float* y, const float* x, const QMatrix& w, int64_t N, int64_t o0, int64_t o1, bool accumulate) {
    MOE_ASSERT(N <= kGemvMaxN);
    const bool simd = active_isa() >= Isa::avx2;
    for (int64_t n0 = 0; n0 < N; n0 += kMaxRows) {
        const int64_t nr = std::min(kMaxRows, N - n0);
        if (simd) gemv_rows_avx2_any(y, x, w, n0, nr, o0, o1, accumulate);
        else gemv_rows_ref(y, x, w, n0, nr, o0, o1, accumulate);
    }
}

void qmatmul(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate) {
    if (N <= 0 || w.out == 0) return;
    if (w.type == WType::f32 && N > kGemvMaxN) {
        gemm<float>(false, true, N, w.out, w.in, 1.f, x, w.in, w.f32, w.in, accumulate ? 1.f : 0.f, y, w.out);
        return;
    }
    if (N <= kGemvMaxN) {
        // below kGemvParallelBytes of weights the call runs on this thread alone: a fork/join costs
        // more than the work, and a core busy with another process stalls every barrier
        const int64_t grain = w.bytes() < kGemvParallelBytes ? w.out : 32;
        parallel_for(0, w.out, grain, [&](int64_t o0, int64_t o1) { qmatmul_rows(y, x, w, N, o0, o1, accumulate); });
        return;
    }
    // prefill: dequantize 256 output rows at a time, GEMM each block (y columns o0..o1)
    thread_local std::vector<float> scratch;
    const int64_t blk = 256;
    if ((int64_t)scratch.size() < blk * w.in) scratch.resize(blk * w.in);
    for (int64_t o0 = 0; o0 < w.out; o0 += blk) {
        const int64_t nb = std::min(blk, w.out - o0);
        float* wf = scratch.data();
        parallel_for(0, nb, 16, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) dequantize_row(wf + r * w.in, w, o0 + r);
        });
        gemm<float>(false, true, N, nb, w.in, 1.f, x, w.in, wf, w.in, accumulate ? 1.f : 0.f, y + o0, w.out);
    }
}

}  // namespace moe::kernels
