// ggml block formats: scalar quantizers, dequantizers, reference dots, dispatch and the matmul.
// Hand-written because no Debian library multiplies ggml blocks in place (see ggml_quants.h); the
// SIMD kernels are in ggml_quants_x86.cc. Compiled with fp-contract off: the quantizers must
// round exactly as ggml's reference C and gguf-py do (no fused multiply-adds).
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels/ggml_quants.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/amx_q8.h"
#include "kernels/cpu.h"
#include "kernels/ggml_quants_simd.h"
#include "kernels/batch_invariant.h"
#include "kernels/ggml_rows_vnni.h"
#include "kernels/qmatmul.h"

namespace moe::kernels {

const char* gtype_name(GType t) {
    switch (t) {
        case GType::f32: return "f32";
        case GType::f16: return "f16";
        case GType::q4_0: return "q4_0";
        case GType::q8_0: return "q8_0";
        case GType::q4_k: return "q4_k";
        case GType::q5_k: return "q5_k";
        case GType::q6_k: return "q6_k";
        case GType::q8_k: return "q8_k";
        case GType::bf16: return "bf16";
    }
    return "?";
}

int64_t gtype_block(GType t) {
    switch (t) {
        case GType::f32: case GType::f16: case GType::bf16: return 1;
        case GType::q4_0: case GType::q8_0: return kQK;
        default: return kQK_K;
    }
}

int64_t gtype_block_bytes(GType t) {
    switch (t) {
        case GType::f32: return 4;
        case GType::f16: case GType::bf16: return 2;
        case GType::q4_0: return sizeof(BlockQ4_0);
        case GType::q8_0: return sizeof(BlockQ8_0);
        case GType::q4_k: return sizeof(BlockQ4_K);
        case GType::q5_k: return sizeof(BlockQ5_K);
        case GType::q6_k: return sizeof(BlockQ6_K);
        case GType::q8_k: return sizeof(BlockQ8_K);
    }
    return 0;
}

int64_t gtype_row_bytes(GType t, int64_t n) {
    MOE_ASSERT(n % gtype_block(t) == 0);
    return n / gtype_block(t) * gtype_block_bytes(t);
}

GType gtype_act(GType w) {
    switch (w) {
        case GType::q4_0: case GType::q8_0: return GType::q8_0;
        case GType::q4_k: case GType::q5_k: case GType::q6_k: return GType::q8_k;
        default: return GType::f32;
    }
}

// ---------------------------------------------------------------- half precision

static inline uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
static inline float float_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint16_t fp32_to_fp16(float f) {
    const uint32_t x = bits_of(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x3ffu);  // NaN, quiet
    if (a >= 0x47800000u) return sign | 0x7c00u;                                  // >= 2^16: inf
    if (a >= 0x38800000u) {  // normal half: rebias the exponent (127 -> 15), round 23 -> 10 bits
        uint32_t r = a - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);  // to nearest, ties to even; a carry may reach inf: right
        return sign | (uint16_t)(r >> 13);
    }
    if (a < 0x33000000u) return sign;  // below 2^-25 (or exactly: the tie goes to even 0)
    // half denormal: the value in units of 2^-24, rounded to nearest even
    const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;  // value m * 2^(e - 150)
    const uint32_t shift = 126 - e;                                 // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return sign | (uint16_t)q;
}

float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t em = h & 0x7fffu;
    if (em >= 0x7c00u) return float_of(sign | 0x7f800000u | ((em & 0x3ffu) << 13));  // inf, NaN
    // exponent and mantissa shifted into place read as an fp32 scaled by 2^-112: times 2^112 is
    // exact and also gives the denormals right
    return float_of(sign | bits_of(float_of(em << 13) * 0x1p112f));
}

static inline uint16_t fp32_to_bf16_ggml(float f) {
    uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u);  // NaN: quiet
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

// ---------------------------------------------------------------- reference quantizers

// round to nearest, ties to even, for |v| < 2^22 (ggml's nearest_int, the same trick: adding
// 1.5 * 2^23 leaves the rounded integer in the low mantissa bits; no libm call in the fit loops)
static inline int nearest_int(float v) {
    const uint32_t i = bits_of(v + 12582912.f);
    return (int)(i & 0x007fffffu) - 0x00400000;
}

void quantize_row_q8_0(const float* x, void* vy, int64_t n) {
    MOE_ASSERT(n % kQK == 0);
    BlockQ8_0* y = static_cast<BlockQ8_0*>(vy);
    for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
        float amax = 0.f;
        for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < kQK; ++j) y[i].qs[j] = (int8_t)std::round(x[j] * id);  // ties away from 0
    }
}

void quantize_row_q4_0(const float* x, void* vy, int64_t n) {
    MOE_ASSERT(n % kQK == 0);
    BlockQ4_0* y = static_cast<BlockQ4_0*>(vy);
    for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
        float amax = 0.f, max = 0.f;  // the first value of largest magnitude, signed
        for (int j = 0; j < kQK; ++j)
            if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
        const float d = max / -8.f, id = d != 0.f ? 1.f / d : 0.f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < kQK / 2; ++j) {
            const int q0 = std::min(15, (int)(int8_t)(x[j] * id + 8.5f));  // truncation toward 0
            const int q1 = std::min(15, (int)(int8_t)(x[j + 16] * id + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

namespace {

// The K-quants' sub-block fit: scale and min (value ~ scale * L - min, L in [0, nmax]) minimizing
// the weighted squared error over a small search of scales (ggml's make_qkx2_quants).
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, uint8_t* Laux,
                    float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        min = x[i] < min ? x[i] : min;
        max = x[i] > max ? x[i] : max;
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = (float)nmax / (max - min), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)std::max(0, std::min(nmax, l));
        const float diff = scale * L[i] + min - x[i];
        best += w[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; ++i) {
                const float diff = this_scale * Laux[i] + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if (err < best) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best = err, scale = this_scale, min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

// 8 six-bit (scale, min) pairs in 12 bytes (j < 4: low 6 bits of bytes j and j + 4; j >= 4: the
// nibbles of byte j + 4 and the top 2 bits of bytes j - 4 and j)
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
    if (j < 4) {
        *sc = q[j] & 63, *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

void pack_scale_min_k4(uint8_t* s, const uint8_t* ls, const uint8_t* lm) {
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            s[j] = ls[j], s[j + 4] = lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

// Q4_K / Q5_K: per 32-value sub-block a fitted (scale, min), both quantized to 6 bits against the
// super-block's largest, then every value re-rounded against the stored scales. Writes d, dmin,
// scales and L (0..nmax per value).
template <class Block>
void quantize_k_scales(const float* x, Block& y, uint8_t* L, int nmax, float rmin, float rdelta, int nstep) {
    float scales[8], mins[8], weights[32];
    uint8_t Laux[32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = std::sqrt(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
        scales[j] = fit_scale_min(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f, inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; ++j) {
        ls[j] = std::min<uint8_t>(63, (uint8_t)nearest_int(inv_scale * scales[j]));
        lm[j] = std::min<uint8_t>(63, (uint8_t)nearest_int(inv_min * mins[j]));
    }
    pack_scale_min_k4(y.scales, ls, lm);
    y.d = fp32_to_fp16(max_scale / 63.f);
    y.dmin = fp32_to_fp16(max_min / 63.f);
    for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        scale_min_k4(j, y.scales, &sc, &m);
        const float d = fp16_to_fp32(y.d) * (float)sc;
        if (d == 0.f) continue;  // keeps the fit's L (its values decode to -dm anyway)
        const float dm = fp16_to_fp32(y.dmin) * (float)m;
        for (int i = 0; i < 32; ++i) L[32 * j + i] = (uint8_t)std::max(0, std::min(nmax, nearest_int((x[32 * j + i] + dm) / d)));
    }
}

// Q6_K's sub-block fit (16 values, signed levels -nmax..nmax-1, weights x^2): ggml's
// make_qx_quants with rmse_type 1 and no importance weights. L gets level + nmax.
float fit_scale_signed(int n, int nmax, const float* x, int8_t* L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = std::fabs(x[i]);
        if (ax > amax) amax = ax, max = x[i];
    }
    if (amax < 1e-15f) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = (float)-nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        const int l = std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 != 0.f ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i])));
            const float w = x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i)
                L[i] = (int8_t)(nmax + std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2, best = scale * sumlx;
        }
    }
    return scale;
}

}  // namespace

void quantize_row_q4_k(const float* x, void* vy, int64_t n) {
    MOE_ASSERT(n % kQK_K == 0);
    BlockQ4_K* y = static_cast<BlockQ4_K*>(vy);
    uint8_t L[kQK_K];
    for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
        quantize_k_scales(x, y[i], L, 15, -1.f, 0.1f, 20);
        uint8_t* q = y[i].qs;
        for (int j = 0; j < kQK_K; j += 64, q += 32)
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

void quantize_row_q5_k(const float* x, void* vy, int64_t n) {
    MOE_ASSERT(n % kQK_K == 0);
    BlockQ5_K* y = static_cast<BlockQ5_K*>(vy);
    uint8_t L[kQK_K];
    for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
        quantize_k_scales(x, y[i], L, 31, -0.5f, 0.1f, 15);
        uint8_t* qh = y[i].qh;
        uint8_t* ql = y[i].qs;
        std::memset(qh, 0, 32);
        uint8_t m1 = 1, m2 = 2;
        for (int c = 0; c < kQK_K; c += 64, ql += 32, m1 <<= 2, m2 <<= 2)
            for (int j = 0; j < 32; ++j) {
                int l1 = L[c + j], l2 = L[c + j + 32];
                if (l1 > 15) l1 -= 16, qh[j] |= m1;
                if (l2 > 15) l2 -= 16, qh[j] |= m2;
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
    }
}

void quantize_row_q6_k(const float* x, void* vy, int64_t n) {
    MOE_ASSERT(n % kQK_K == 0);
    BlockQ6_K* y = static_cast<BlockQ6_K*>(vy);
    int8_t L[kQK_K];
    float scales[16];
    for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < 16; ++ib) {
            scales[ib] = fit_scale_signed(16, 32, x + 16 * ib, L + 16 * ib);
            if (std::fabs(scales[ib]) > max_abs_scale) max_abs_scale = std::fabs(scales[ib]), max_scale = scales[ib];
        }
        if (max_abs_scale < 1e-15f) {
            std::memset(&y[i], 0, sizeof(BlockQ6_K));
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < 16; ++ib) y[i].scales[ib] = (int8_t)std::min(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < 16; ++j) {
            const float d = fp16_to_fp32(y[i].d) * (float)y[i].scales[j];
            if (d == 0.f) continue;
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (int8_t)(std::max(-32, std::min(31, nearest_int(x[16 * j + ii] / d))) + 32);
        }
        uint8_t* ql = y[i].ql;
        uint8_t* qh = y[i].qh;
        for (int j = 0; j < kQK_K; j += 128, ql += 64, qh += 32)
            for (int l = 0; l < 32; ++l) {
                const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
                ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
    }
}

void quantize_row_q8_k(const float* x, void* vy, int64_t n) {
    MOE_ASSERT(n % kQK_K == 0);
    BlockQ8_K* y = static_cast<BlockQ8_K*>(vy);
    for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < kQK_K; ++j)
            if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), max = x[j];
        if (amax == 0.f) {  // (ggml leaves bsums unset here; zero is what they sum to)
            std::memset(&y[i], 0, sizeof(BlockQ8_K));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < kQK_K; ++j) y[i].qs[j] = (int8_t)std::min(127, nearest_int(iscale * x[j]));
        for (int g = 0; g < 16; ++g) {
            int s = 0;
            for (int j = 0; j < 16; ++j) s += y[i].qs[16 * g + j];
            y[i].bsums[g] = (int16_t)s;
        }
        y[i].d = 1 / iscale;
    }
}

void quantize_row_f16(const float* x, void* vy, int64_t n) {
    uint16_t* y = static_cast<uint16_t*>(vy);
    for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void quantize_row_bf16(const float* x, void* vy, int64_t n) {
    uint16_t* y = static_cast<uint16_t*>(vy);
    for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_bf16_ggml(x[i]);
}

// ---------------------------------------------------------------- dequantizers (gguf-py's arithmetic)

void dequantize_row_q8_0(const void* vx, float* y, int64_t n) {
    const BlockQ8_0* x = static_cast<const BlockQ8_0*>(vx);
    for (int64_t i = 0; i < n / kQK; ++i, y += kQK) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < kQK; ++j) y[j] = (float)x[i].qs[j] * d;
    }
}

void dequantize_row_q4_0(const void* vx, float* y, int64_t n) {
    const BlockQ4_0* x = static_cast<const BlockQ4_0*>(vx);
    for (int64_t i = 0; i < n / kQK; ++i, y += kQK) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < 16; ++j) {
            y[j] = d * (float)((x[i].qs[j] & 0xF) - 8);
            y[j + 16] = d * (float)((x[i].qs[j] >> 4) - 8);
        }
    }
}

void dequantize_row_q4_k(const void* vx, float* y, int64_t n) {
    const BlockQ4_K* x = static_cast<const BlockQ4_K*>(vx);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
        const uint8_t* q = x[i].qs;
        for (int c = 0; c < 4; ++c, q += 32) {
            uint8_t sc, m;
            scale_min_k4(2 * c, x[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            scale_min_k4(2 * c + 1, x[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

void dequantize_row_q5_k(const void* vx, float* y, int64_t n) {
    const BlockQ5_K* x = static_cast<const BlockQ5_K*>(vx);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
        const uint8_t* ql = x[i].qs;
        const uint8_t* qh = x[i].qh;
        uint8_t u1 = 1, u2 = 2;
        for (int c = 0; c < 4; ++c, ql += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            scale_min_k4(2 * c, x[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            scale_min_k4(2 * c + 1, x[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (float)((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

void dequantize_row_q6_k(const void* vx, float* y, int64_t n) {
    const BlockQ6_K* x = static_cast<const BlockQ6_K*>(vx);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        const uint8_t* ql = x[i].ql;
        const uint8_t* qh = x[i].qh;
        const int8_t* sc = x[i].scales;
        for (int h = 0; h < 2; ++h, y += 128, ql += 64, qh += 32, sc += 8)
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = (d * (float)sc[is]) * (float)q1;
                y[l + 32] = (d * (float)sc[is + 2]) * (float)q2;
                y[l + 64] = (d * (float)sc[is + 4]) * (float)q3;
                y[l + 96] = (d * (float)sc[is + 6]) * (float)q4;
            }
    }
}

void dequantize_row_q8_k(const void* vx, float* y, int64_t n) {
    const BlockQ8_K* x = static_cast<const BlockQ8_K*>(vx);
    for (int64_t i = 0; i < n / kQK_K; ++i, y += kQK_K)
        for (int j = 0; j < kQK_K; ++j) y[j] = x[i].d * (float)x[i].qs[j];
}

void dequantize_row_f16(const void* vx, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(vx);
    for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void dequantize_row_bf16(const void* vx, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(vx);
    for (int64_t i = 0; i < n; ++i) y[i] = float_of((uint32_t)x[i] << 16);
}

void quantize_row(GType t, const float* x, void* y, int64_t n) {
    switch (t) {
        case GType::f32: std::memcpy(y, x, n * sizeof(float)); return;
        case GType::f16: quantize_row_f16(x, y, n); return;
        case GType::bf16: quantize_row_bf16(x, y, n); return;
        case GType::q4_0: quantize_row_q4_0(x, y, n); return;
        case GType::q8_0: quantize_row_q8_0(x, y, n); return;
        case GType::q4_k: quantize_row_q4_k(x, y, n); return;
        case GType::q5_k: quantize_row_q5_k(x, y, n); return;
        case GType::q6_k: quantize_row_q6_k(x, y, n); return;
        case GType::q8_k: quantize_row_q8_k(x, y, n); return;
    }
}

void dequantize_row(GType t, const void* x, float* y, int64_t n) {
    switch (t) {
        case GType::f32: std::memcpy(y, x, n * sizeof(float)); return;
        case GType::f16: dequantize_row_f16(x, y, n); return;
        case GType::bf16: dequantize_row_bf16(x, y, n); return;
        case GType::q4_0: dequantize_row_q4_0(x, y, n); return;
        case GType::q8_0: dequantize_row_q8_0(x, y, n); return;
        case GType::q4_k: dequantize_row_q4_k(x, y, n); return;
        case GType::q5_k: dequantize_row_q5_k(x, y, n); return;
        case GType::q6_k: dequantize_row_q6_k(x, y, n); return;
        case GType::q8_k: dequantize_row_q8_k(x, y, n); return;
    }
}

void quantize_act_row(GType act, const float* x, void* y, int64_t n) {
    const bool simd = active_isa() >= Isa::avx2 && cpu_features().f16c;
    const CpuFeatures& f = cpu_features();
    const bool avx512 = simd && active_isa() >= Isa::avx512 && f.avx512f && f.avx512bw && f.avx512dq;
    if (avx512 && act == GType::q8_0) return detail::quantize_q8_0_avx512(x, y, n);
    if (avx512 && act == GType::q8_k) return detail::quantize_q8_k_avx512(x, y, n);
    if (simd && act == GType::q8_0) return detail::quantize_q8_0_avx2(x, y, n);
    if (simd && act == GType::q8_k) return detail::quantize_q8_k_avx2(x, y, n);
    quantize_row(act, x, y, n);
}

// ---------------------------------------------------------------- reference dots

namespace {

double dot_ref_q8_0(int64_t n, const void* vw, const void* va) {
    const BlockQ8_0* w = static_cast<const BlockQ8_0*>(vw);
    const BlockQ8_0* a = static_cast<const BlockQ8_0*>(va);
    double s = 0;
    for (int64_t b = 0; b < n / kQK; ++b) {
        int32_t isum = 0;
        for (int j = 0; j < kQK; ++j) isum += (int32_t)w[b].qs[j] * a[b].qs[j];
        s += (double)fp16_to_fp32(w[b].d) * (double)fp16_to_fp32(a[b].d) * (double)isum;
    }
    return s;
}

double dot_ref_q4_0(int64_t n, const void* vw, const void* va) {
    const BlockQ4_0* w = static_cast<const BlockQ4_0*>(vw);
    const BlockQ8_0* a = static_cast<const BlockQ8_0*>(va);
    double s = 0;
    for (int64_t b = 0; b < n / kQK; ++b) {
        int32_t isum = 0;
        for (int j = 0; j < 16; ++j)
            isum += ((w[b].qs[j] & 0xF) - 8) * a[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * a[b].qs[j + 16];
        s += (double)fp16_to_fp32(w[b].d) * (double)fp16_to_fp32(a[b].d) * (double)isum;
    }
    return s;
}

// Q4_K / Q5_K super-block: d * da * sum_j sc_j (q_j . a_j) - dmin * da * sum_j m_j sum(a_j)
template <bool Q5>
double dot_ref_qk45(int64_t n, const void* vw, const void* va) {
    using Block = std::conditional_t<Q5, BlockQ5_K, BlockQ4_K>;
    const Block* w = static_cast<const Block*>(vw);
    const BlockQ8_K* a = static_cast<const BlockQ8_K*>(va);
    double s = 0;
    for (int64_t b = 0; b < n / kQK_K; ++b) {
        int64_t isc = 0, imin = 0;
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            scale_min_k4(j, w[b].scales, &sc, &m);
            int32_t dot = 0;
            for (int l = 0; l < 32; ++l) {
                const int c = j / 2, i = 32 * j + l;
                int q = (j & 1) ? (w[b].qs[32 * c + l] >> 4) : (w[b].qs[32 * c + l] & 0xF);
                if constexpr (Q5) q += ((w[b].qh[l] >> j) & 1) << 4;
                dot += q * a[b].qs[i];
            }
            isc += (int64_t)sc * dot;
            imin += (int64_t)m * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
        }
        s += (double)fp16_to_fp32(w[b].d) * (double)a[b].d * (double)isc -
             (double)fp16_to_fp32(w[b].dmin) * (double)a[b].d * (double)imin;
    }
    return s;
}

double dot_ref_q6_k(int64_t n, const void* vw, const void* va) {
    const BlockQ6_K* w = static_cast<const BlockQ6_K*>(vw);
    const BlockQ8_K* a = static_cast<const BlockQ8_K*>(va);
    double s = 0;
    for (int64_t b = 0; b < n / kQK_K; ++b) {
        int64_t isum = 0;
        for (int i = 0; i < kQK_K; ++i) {
            const int h = i / 128, r = i % 128, k = r / 32, l = r % 32;  // quarter k of half h
            const uint8_t* ql = w[b].ql + 64 * h;
            const uint8_t qh = w[b].qh[32 * h + l];
            const int lo = (k & 1) ? ql[l + 32] : ql[l];
            const int q = (((k < 2) ? (lo & 0xF) : (lo >> 4)) | (((qh >> (2 * k)) & 3) << 4)) - 32;
            isum += (int64_t)w[b].scales[i / 16] * q * a[b].qs[i];
        }
        s += (double)fp16_to_fp32(w[b].d) * (double)a[b].d * (double)isum;
    }
    return s;
}

double dot_ref_f16(int64_t n, const void* vw, const void* va) {
    const uint16_t* w = static_cast<const uint16_t*>(vw);
    const float* a = static_cast<const float*>(va);
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += (double)fp16_to_fp32(w[i]) * a[i];
    return s;
}

double dot_ref_bf16(int64_t n, const void* vw, const void* va) {
    const uint16_t* w = static_cast<const uint16_t*>(vw);
    const float* a = static_cast<const float*>(va);
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += (double)float_of((uint32_t)w[i] << 16) * a[i];
    return s;
}

template <GType T>
void row_dots_ref_t(int64_t n, const void* w, const void* a, int64_t as, int nr, float* out) {
    for (int j = 0; j < nr; ++j) out[j] = (float)vec_dot_ref(T, n, w, static_cast<const uint8_t*>(a) + j * as);
}

}  // namespace

double vec_dot_ref(GType t, int64_t n, const void* w, const void* a) {
    switch (t) {
        case GType::q8_0: return dot_ref_q8_0(n, w, a);
        case GType::q4_0: return dot_ref_q4_0(n, w, a);
        case GType::q4_k: return dot_ref_qk45<false>(n, w, a);
        case GType::q5_k: return dot_ref_qk45<true>(n, w, a);
        case GType::q6_k: return dot_ref_q6_k(n, w, a);
        case GType::f16: return dot_ref_f16(n, w, a);
        case GType::bf16: return dot_ref_bf16(n, w, a);
        default: MOE_ASSERT(false && "no dot product for this weight type");
    }
    return 0;
}

RowDots row_dots_ref(GType t) {
    switch (t) {
        case GType::q8_0: return row_dots_ref_t<GType::q8_0>;
        case GType::q4_0: return row_dots_ref_t<GType::q4_0>;
        case GType::q4_k: return row_dots_ref_t<GType::q4_k>;
        case GType::q5_k: return row_dots_ref_t<GType::q5_k>;
        case GType::q6_k: return row_dots_ref_t<GType::q6_k>;
        case GType::f16: return row_dots_ref_t<GType::f16>;
        case GType::bf16: return row_dots_ref_t<GType::bf16>;
        default: MOE_ASSERT(false && "no dot product for this weight type");
    }
    return nullptr;
}

// the row dots' AVX-512 VNNI copy runs here (row_dots; ggml_prefill_on_int8)
static bool vnni_row_dots_active() {
    const CpuFeatures& f = cpu_features();
    return active_isa() >= Isa::avx512 && f.avx512_vnni && f.f16c;
}

RowDots row_dots(GType t) {
    const CpuFeatures& f = cpu_features();
    if (vnni_row_dots_active()) {
        if (RowDots k = detail::row_dots_avx512vnni(t)) return k;
    }
    if (active_isa() >= Isa::avx2 && f.f16c) {
        if (RowDots k = detail::row_dots_avx2(t)) return k;
    }
    return row_dots_ref(t);
}

RowDotsW row_dots_w(GType t, int* rows) {
    const CpuFeatures& f = cpu_features();
    *rows = 1;
    // the same ISA choice as row_dots, so that each output keeps row_dots' bits
    if (vnni_row_dots_active()) return detail::row_dots_avx512vnni(t) ? detail::row_dots_w_avx512vnni(t, rows) : nullptr;
    if (active_isa() >= Isa::avx2 && f.f16c)
        return detail::row_dots_avx2(t) ? detail::row_dots_w_avx2(t, rows) : nullptr;
    return nullptr;
}

static float dot1(GType t, int64_t n, const void* w, const void* a) {
    float r;
    row_dots(t)(n, w, a, 0, 1, &r);
    return r;
}
float vec_dot_q8_0_q8_0(int64_t n, const void* w, const void* a) { return dot1(GType::q8_0, n, w, a); }
float vec_dot_q4_0_q8_0(int64_t n, const void* w, const void* a) { return dot1(GType::q4_0, n, w, a); }
float vec_dot_q4_k_q8_k(int64_t n, const void* w, const void* a) { return dot1(GType::q4_k, n, w, a); }
float vec_dot_q5_k_q8_k(int64_t n, const void* w, const void* a) { return dot1(GType::q5_k, n, w, a); }
float vec_dot_q6_k_q8_k(int64_t n, const void* w, const void* a) { return dot1(GType::q6_k, n, w, a); }
float vec_dot_f16_f32(int64_t n, const void* w, const void* a) { return dot1(GType::f16, n, w, a); }
float vec_dot_bf16_f32(int64_t n, const void* w, const void* a) { return dot1(GType::bf16, n, w, a); }

// ---------------------------------------------------------------- matmul

void GActs::build(GType act, const float* x, int64_t n, int64_t i) {
    type = act, N = n, in = i, rows_vnni = rows_amx = rows_q4 = rows_block = rows_tiles = rows_tiles8 = false;
    row_bytes = gtype_row_bytes(act, i);
    if ((int64_t)buf.size() < N * row_bytes) buf.resize(N * row_bytes);
    uint8_t* dst = buf.data();
    const int64_t rb = row_bytes;
    auto rows = [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) quantize_act_row(act, x + r * i, dst + r * rb, i);
    };
    if (N * i < (1 << 16)) rows(0, N);  // decode: on this thread
    else parallel_for(0, N, 8, rows);
}

uint8_t* thread_scratch(int64_t bytes) {
    thread_local std::vector<uint8_t> scratch;
    if ((int64_t)scratch.size() < bytes + 64) scratch.resize(bytes + 64);
    return scratch.data() + (64 - reinterpret_cast<uintptr_t>(scratch.data()) % 64) % 64;
}

static bool vnni_tiles_active(GType t);

void GActs::prepare_rows_vnni(bool amx_ok) {
    rows_vnni = rows_amx = rows_block = rows_tiles = rows_tiles8 = false;
    if (type != GType::q8_0 || !detail::q8_0_rows_vnni_supported()) return;
    // AMX-INT8 decode rows (ggml_rows_amx.cc): for every N while batch invariant (one arithmetic for
    // every row count), else from 2 rows (one row streams faster through the VNNI kernel below)
    if (amx_ok && detail::q8_0_rows_amx_supported() && (N > 1 || batch_invariant())) {
        const int64_t nq = detail::q8_0_rows_amx_qu_bytes(N, in), ns = detail::q8_0_rows_amx_s16_floats(N, in);
        if ((int64_t)qu.size() < nq) qu.resize(nq);
        if ((int64_t)s16.size() < ns) s16.resize(ns);
        detail::q8_0_rows_acts_amx(buf.data(), row_bytes, N, in, qu.data(), s16.data());
        rows_vnni = rows_amx = true;
        return;
    }
    // batch invariant without AMX: the same block order on VNNI, so that a row's bits do not depend
    // on N (and are those of an AMX host): the prefill tiles from three rows (their arithmetic is
    // the block order), q8_0_row_block_vnni for one or two (the tiles' unpacking of 32 weight rows
    // costs more than the rows it serves below three)
    if (amx_ok && batch_invariant() && vnni_tiles_active(GType::q8_0)) {
        if (N >= 3) prepare_tiles(128), rows_tiles = true;
        else rows_block = true;  // (the kernel reads the q8_0 rows in buf)
        return;
    }
    const int64_t sp = (in / 32 + 1) / 2;
    if ((int64_t)qu.size() < N * in) qu.resize(N * in);
    if ((int64_t)s16.size() < N * sp * 16) s16.resize(N * sp * 16);
    detail::q8_0_rows_acts(buf.data(), row_bytes, N, in, qu.data(), s16.data());
    rows_vnni = true;
}

void GActs::prepare_rows_q4_0() {
    rows_q4 = false;
    if (type != GType::q8_0 || !detail::q8_0_rows_vnni_supported()) return;
    const int64_t sp = (in / 32 + 1) / 2;
    if ((int64_t)q4x.size() < N * sp * 64) q4x.resize(N * sp * 64);
    if ((int64_t)q4c.size() < N * sp * 16) q4c.resize(N * sp * 16);
    if ((int64_t)q4s.size() < N * sp * 16) q4s.resize(N * sp * 16);
    detail::q4_0_rows_acts(buf.data(), row_bytes, N, in, q4x.data(), q4c.data(), q4s.data());
    rows_q4 = true;
}

// Output rows are taken 16 at a time (their bytes stay in L1/L2) and every group of 4
// activation rows passes over them: a weight row is unpacked once per 4 activation rows, and
// with N <= 4 (decode) read from memory exactly once.
void ggml_matmul_rows(float* y, int64_t ys, const GActs& acts, const void* w, GType t, int64_t row_stride, int64_t N,
                      int64_t o0, int64_t o1, bool accumulate) {
    if (t == GType::q8_0 && acts.rows_amx && acts.N >= N && detail::q8_0_rows_amx_supported()) {
        // AMX-INT8 tiles: all N rows, tiles of 16 weight rows read in place (the block order)
        detail::q8_0_rows_amx(y, ys, acts.qu.data(), acts.s16.data(), acts.in, w, row_stride, N, o0, o1, accumulate);
        return;
    }
    if (t == GType::q8_0 && acts.rows_tiles && acts.N >= N) {
        // batch invariant, VNNI without AMX, three rows or more: the prefill tiles (block order)
        uint8_t* s = thread_scratch(detail::tile_scratch_bytes(acts.in));  // this thread's tile
        detail::TileActs xa;
        xa.xp = acts.xp.data(), xa.xs = acts.xs.data(), xa.am = acts.am.data(), xa.xo = acts.xo.data(), xa.sb = false;
        detail::prefill_tiles_vnni(y, ys, xa, w, t, row_stride, N, acts.in, o0, o1, accumulate, s);
        return;
    }
    if (t == GType::q8_0 && acts.rows_block && N <= 2) {
        // batch invariant, VNNI without AMX, one or two rows: the block order's row kernel (its
        // gather takes 15 row strides as int32 offsets; rows longer than that take the scalar twin)
        if (row_stride <= INT32_MAX / 16)
            detail::q8_0_row_block_vnni(y, ys, acts.buf.data(), acts.row_bytes, (int)N, acts.in, w, row_stride, o0, o1,
                                        accumulate);
        else
            detail::q8_0_rows_block_ref(y, ys, acts.buf.data(), acts.row_bytes, N, acts.in, w, row_stride, o0, o1,
                                        accumulate);
        return;
    }
    // groups of 8 rows (the single-row dots' bits); with several groups, tiles of 8 output rows
    // (in L1) that every group passes over: each weight read from memory once per call
    constexpr int64_t kRows = 8;
    const int64_t tile = N <= kRows ? o1 - o0 : 8;
    if (t == GType::q8_0 && !acts.rows_amx && acts.rows_vnni && acts.N >= N && detail::q8_0_rows_vnni_supported()) {
        for (int64_t t0 = o0; t0 < o1; t0 += tile) {
            const int64_t t1 = std::min(o1, t0 + tile);
            for (int64_t n0 = 0; n0 < N; n0 += kRows)
                detail::q8_0_rows_vnni(y, ys, acts.qu.data(), acts.s16.data(), acts.in, w, row_stride, n0,
                                       (int)std::min(kRows, N - n0), t0, t1, accumulate);
        }
        return;
    }
    // Q4_0, one row included (nibbles as vpdpbusd's unsigned operand: 2.x the 256-bit row dots'
    // speed on one row; the same bits)
    if (t == GType::q4_0 && acts.rows_q4 && acts.N >= N && detail::q8_0_rows_vnni_supported()) {
        for (int64_t t0 = o0; t0 < o1; t0 += tile) {
            const int64_t t1 = std::min(o1, t0 + tile);
            for (int64_t n0 = 0; n0 < N; n0 += kRows)
                detail::q4_0_rows_vnni(y, ys, acts.q4x.data(), acts.q4c.data(), acts.q4s.data(), acts.in, w, row_stride,
                                       n0, (int)std::min(kRows, N - n0), t0, t1, accumulate);
        }
        return;
    }
    const RowDots dots = row_dots(t);
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    constexpr int64_t kTile = 16, kGroup = 4;
    float r[kGroup];
    int nw = 1;
    const RowDotsW dots_w = N == 1 ? row_dots_w(t, &nw) : nullptr;
    if (dots_w) {  // one activation row: nw weight rows side by side, then one at a time
        float rw[8];
        MOE_ASSERT(nw <= 8);
        int64_t o = o0;
        for (; o + nw <= o1; o += nw) {
            dots_w(acts.in, wb + o * row_stride, row_stride, acts.row(0), rw);
            for (int k = 0; k < nw; ++k) y[o + k] = accumulate ? y[o + k] + rw[k] : rw[k];
        }
        for (; o < o1; ++o) {
            dots(acts.in, wb + o * row_stride, acts.row(0), acts.row_bytes, 1, r);
            y[o] = accumulate ? y[o] + r[0] : r[0];
        }
        return;
    }
    for (int64_t ob = o0; ob < o1; ob += kTile) {
        const int64_t oe = std::min(o1, ob + kTile);
        for (int64_t n0 = 0; n0 < N; n0 += kGroup) {
            const int nr = (int)std::min(kGroup, N - n0);
            for (int64_t o = ob; o < oe; ++o) {
                dots(acts.in, wb + o * row_stride, acts.row(n0), acts.row_bytes, nr, r);
                for (int j = 0; j < nr; ++j) {
                    float& d = y[(n0 + j) * ys + o];
                    d = accumulate ? d + r[j] : r[j];
                }
            }
        }
    }
}

void GActs::prepare_tiles(int32_t c) {
    MOE_ASSERT(type == GType::q8_0 || type == GType::q8_k);
    const int64_t nsb = in / 32, G = (N + 3) / 4;
    if ((int64_t)xp.size() < G * nsb * 128) xp.resize(G * nsb * 128);
    if ((int64_t)xs.size() < G * nsb * 4) xs.resize(G * nsb * 4), am.resize(G * nsb * 4);
    if (c != 0 && (int64_t)xo.size() < G * nsb * 4) xo.resize(G * nsb * 4);
    const GActs* a = this;
    parallel_for(0, G, 4, [&](int64_t g0, int64_t g1) {
        detail::pack_tile_acts(a->buf.data(), a->row_bytes, a->type, a->N, a->in, c, g0, g1, xp.data(), xs.data(),
                               am.data(), c != 0 ? xo.data() : nullptr);
    });
}

// AVX-512 VNNI prefill tiles (ggml_quants_x86.cc): whole tiles of 32 output rows per thread
static void ggml_matmul_tiles(float* y, const void* w, GType t, int64_t row_stride, int64_t N, int64_t OUT, int64_t IN,
                              bool accumulate, GActs& acts) {
    // q8_0 (u = q + 128) and q4_0 (u = nibble = q + 8): the offset is c ws with one c for all rows
    const int32_t c = t == GType::q8_0 ? 128 : t == GType::q4_0 ? 8 : 0;
    acts.prepare_tiles(c);
    detail::TileActs xa;
    xa.xp = acts.xp.data(), xa.xs = acts.xs.data(), xa.am = acts.am.data();
    xa.xo = c != 0 ? acts.xo.data() : nullptr, xa.sb = acts.type == GType::q8_k;
    if (t == GType::q6_k) {  // the offset of 32 per 16-value group, in integers
        const int64_t G = (N + 3) / 4, nG = IN / 16;
        if ((int64_t)acts.xo.size() < G * nG * 4) acts.xo.resize(G * nG * 4);
        const GActs* a = &acts;
        int32_t* xo16 = acts.xo.data();
        parallel_for(0, G, 4, [&](int64_t g0, int64_t g1) {
            detail::pack_tile_q6_offsets(a->buf.data(), a->row_bytes, N, IN, g0, g1, xo16);
        });
        xa.xo16 = xo16;
    }
    const int64_t tiles = (OUT + 31) / 32, bytes = detail::tile_scratch_bytes(IN);
    parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
        uint8_t* s = thread_scratch(bytes);  // this thread's tile
        detail::prefill_tiles_vnni(y, OUT, xa, w, t, row_stride, N, IN, t0 * 32, std::min(OUT, t1 * 32), accumulate, s);
    });
}

// AMX-INT8 prefill tiles (amx_q8.cc): the activation groups packed once, whole tiles of 32 output
// rows per thread
static void ggml_matmul_amx(float* y, const void* w, GType t, int64_t row_stride, int64_t N, int64_t OUT, int64_t IN,
                            bool accumulate, GActs& acts) {
    const int64_t K = t == GType::q6_k ? 16 : 32, G = amx::groups(N);
    if ((int64_t)acts.xp.size() < amx::acts_bytes(N, IN, K)) acts.xp.resize(amx::acts_bytes(N, IN, K));
    if ((int64_t)acts.xs.size() < amx::acts_floats(N, IN, K))
        acts.xs.resize(amx::acts_floats(N, IN, K)), acts.am.resize(amx::acts_floats(N, IN, K));
    const bool kq = t == GType::q4_k || t == GType::q5_k;
    amx::Acts xa;
    xa.xp = reinterpret_cast<const int8_t*>(acts.xp.data()), xa.xs = acts.xs.data(), xa.am = kq ? acts.am.data() : nullptr;
    int8_t* xp = reinterpret_cast<int8_t*>(acts.xp.data());
    float *xs = acts.xs.data(), *am = kq ? acts.am.data() : nullptr;
    parallel_for(0, G, 2, [&](int64_t g0, int64_t g1) {
        amx::pack_acts_ggml(acts.buf.data(), acts.row_bytes, t, N, IN, g0, g1, xp, xs, am);
    });
    const int64_t tiles = (OUT + 31) / 32, bytes = amx::scratch_bytes(IN);
    parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
        uint8_t* s = thread_scratch(bytes);  // this thread's tile
        amx::prefill_ggml(y, OUT, xa, w, t, row_stride, N, IN, t0 * 32, std::min(OUT, t1 * 32), accumulate, s);
    });
}

static bool amx_tiles_active(GType t) { return amx::int8_active() && amx::ggml_supported(t); }
static bool vnni_tiles_active(GType t) {
    const CpuFeatures& f = cpu_features();
    return active_isa() >= Isa::avx512 && f.avx512_vnni && f.avx512dq && f.f16c && detail::tiles_supported(t);
}
bool ggml_matmul_tiles_active(GType t) { return amx_tiles_active(t) || vnni_tiles_active(t); }
bool q8_0_block_order_active() {
    return detail::q8_0_rows_vnni_supported() && (detail::q8_0_rows_amx_supported() || vnni_tiles_active(GType::q8_0));
}
// AVX2 hosts (Zen 3, MOE_ISA=avx2): the K-quants' prefill on tiles unpacked per call
// (detail::prefill_tiles_avx2; Q4_K as stored too, MOE_REPACK=0), the VNNI tiles' bits; Q8_0 and
// Q4_0 as stored take the dequant + fp32 GEMM (repacked, their tiles: ggml_matmul_rows_tiled). VNNI
// hosts take their own tiles first (ggml_matmul).
static bool avx2_kquant_tiles_active(GType t) {
    return (t == GType::q4_k || t == GType::q5_k || t == GType::q6_k) && avx2_tiles_active();
}
bool ggml_prefill_on_int8(GType t) {
    // measured on Zen 3 only (AVX2): the VNNI row dots of AVX-512 hosts (q6_k without AMX) stay
    return ggml_matmul_tiles_active(t) || vnni_row_dots_active() || avx2_kquant_tiles_active(t);
}

static void ggml_matmul_tiles_avx2(float* y, const void* w, GType t, int64_t row_stride, int64_t N, int64_t OUT,
                                   int64_t IN, bool accumulate, const GActs& acts) {
    const GActs* a = &acts;
    const int64_t tiles = (OUT + 31) / 32, bytes = detail::tile_scratch_bytes(IN);
    parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
        uint8_t* s = thread_scratch(bytes);  // this thread's tile
        detail::prefill_tiles_avx2(y, OUT, a->buf.data(), a->row_bytes, w, t, row_stride, N, IN, t0 * 32,
                                   std::min(OUT, t1 * 32), accumulate, s);
    });
}

void ggml_matmul(float* y, const float* x, const void* w, GType t, int64_t row_stride, int64_t N, int64_t OUT,
                 int64_t IN, bool accumulate, GActs& acts) {
    if (N <= 0 || OUT <= 0) return;
    acts.build(gtype_act(t), x, N, IN);
    if (N > kGgmlGemvMaxN && amx_tiles_active(t)) return ggml_matmul_amx(y, w, t, row_stride, N, OUT, IN, accumulate, acts);
    if (t == GType::q8_0 && N <= kGgmlGemvMaxN) acts.prepare_rows_vnni();
    if (t == GType::q4_0 && N <= kGgmlGemvMaxN) acts.prepare_rows_q4_0();
    if (N > kGgmlGemvMaxN && vnni_tiles_active(t))
        return ggml_matmul_tiles(y, w, t, row_stride, N, OUT, IN, accumulate, acts);
    if (N > kGgmlGemvMaxN && avx2_kquant_tiles_active(t))
        return ggml_matmul_tiles_avx2(y, w, t, row_stride, N, OUT, IN, accumulate, acts);
    const GActs* a = &acts;  // the caller's object, for the workers
    const double bytes = (double)OUT * (double)row_stride;
    const int64_t grain = N <= kGgmlGemvMaxN ? (bytes * N < kGemvParallelBytes ? OUT : 32) : 16;
    parallel_for(0, OUT, grain, [&](int64_t o0, int64_t o1) {
        ggml_matmul_rows(y, OUT, *a, w, t, row_stride, N, o0, o1, accumulate);
    });
}


// ---------------------------------------------------------------- Q8_0 repacked into tiles

bool q8_0_tiled_active() {
    return detail::q8_0_rows_vnni_supported() && vnni_tiles_active(GType::q8_0) && !detail::q8_0_rows_amx_supported();
}

static bool g_repack = true;
void set_repack(bool on) { g_repack = on; }
bool repack_enabled() { return g_repack; }

bool tiled_kernels_active() { return detail::q8_0_rows_vnni_supported() && vnni_tiles_active(GType::q8_0); }

bool avx2_tiles_active() { return !tiled_kernels_active() && active_isa() >= Isa::avx2 && cpu_features().f16c; }

int64_t q8_0_tiled_bytes(int64_t out, int64_t in) {
    return (out + kTiledRows - 1) / kTiledRows * kTiledRows * gtype_row_bytes(GType::q8_0, in);
}

void q8_0_repack_tiled_ref(const void* w, int64_t row_stride, int64_t out, int64_t in, uint8_t* dst) {
    MOE_ASSERT(in % kQK == 0);
    const int64_t nsb = in / kQK, tiles = (out + kTiledRows - 1) / kTiledRows;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    for (int64_t t = 0; t < tiles; ++t)
        for (int64_t b = 0; b < nsb; ++b) {
            uint8_t* tb = dst + (t * nsb + b) * kTiledBlockBytes;
            uint16_t* sc = reinterpret_cast<uint16_t*>(tb + 1024);
            for (int r = 0; r < kTiledRows; ++r) {
                const int64_t o = t * kTiledRows + r;
                const BlockQ8_0* blk = o < out ? reinterpret_cast<const BlockQ8_0*>(wb + o * row_stride) + b : nullptr;
                sc[r] = blk ? blk->d : 0;
                for (int i = 0; i < kQK; ++i) tb[(i / 4) * 128 + 4 * r + i % 4] = blk ? (uint8_t)(blk->qs[i] + 128) : 0;
            }
        }
}

void q8_0_repack_tiled(const void* w, int64_t row_stride, int64_t out, int64_t in, uint8_t* dst) {
    MOE_ASSERT(in % kQK == 0);
    // (the SIMD form needs AVX2 + F16C alone: AVX2 hosts repack Q8_0 too)
    if (!tiled_kernels_active() && !avx2_tiles_active()) return q8_0_repack_tiled_ref(w, row_stride, out, in, dst);
    const int64_t tiles = (out + kTiledRows - 1) / kTiledRows, bytes = detail::tile_scratch_bytes(in);
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    parallel_for(0, tiles, 4, [&](int64_t t0, int64_t t1) {
        detail::q8_0_repack_tiles_vnni(wb, row_stride, out, in, t0, t1, dst, thread_scratch(bytes));
    });
}

// block b of row r: its 32 values u (q + 128) at u[(i / 4) * 128 + i % 4], its fp16 scale
static const uint8_t* tiled_block(const uint8_t* tiled, int64_t nsb, int64_t r, int64_t b, uint16_t* d) {
    const uint8_t* tb = tiled + ((r / kTiledRows) * nsb + b) * kTiledBlockBytes;
    *d = reinterpret_cast<const uint16_t*>(tb + 1024)[r % kTiledRows];
    return tb + 4 * (r % kTiledRows);
}

void q8_0_tiled_dequantize_row(const uint8_t* tiled, int64_t in, int64_t r, int64_t k0, int64_t kc, float* dst) {
    MOE_ASSERT(k0 % kQK == 0 && kc % kQK == 0 && k0 + kc <= in);
    const int64_t nsb = in / kQK;
    for (int64_t b = k0 / kQK; b < (k0 + kc) / kQK; ++b, dst += kQK) {
        uint16_t d;
        const uint8_t* u = tiled_block(tiled, nsb, r, b, &d);
        const float s = fp16_to_fp32(d);
        for (int i = 0; i < kQK; ++i) dst[i] = s * (float)((int)u[(i / 4) * 128 + i % 4] - 128);
    }
}

// The scalar twins' loop over outputs: y[n * ys + o] = out(n, o, acc) from acc = y (accumulate) or 0
template <class Out>
static void tiled_ref_rows(float* y, int64_t ys, int64_t N, int64_t o0, int64_t o1, bool accumulate, const Out& out) {
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = o0; o < o1; ++o) y[n * ys + o] = out(n, o, accumulate ? y[n * ys + o] : 0.f);
}

void q8_0_tiled_rows_ref(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                         const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate) {
    const int64_t nsb = in / kQK;
    tiled_ref_rows(y, ys, N, o0, o1, accumulate, [&](int64_t n, int64_t o, float acc) {
        const BlockQ8_0* xr = reinterpret_cast<const BlockQ8_0*>(acts + n * act_bytes);
        for (int64_t b = 0; b < nsb; ++b) {
            uint16_t d;
            const uint8_t* u = tiled_block(tiled, nsb, o, b, &d);
            int32_t isum = 0;
            for (int i = 0; i < kQK; ++i) isum += ((int32_t)u[(i / 4) * 128 + i % 4] - 128) * (int32_t)xr[b].qs[i];
            acc = std::fma((float)isum, fp16_to_fp32(d) * fp16_to_fp32(xr[b].d), acc);
        }
        return acc;
    });
}

void GActs::prepare_tiled(int32_t c) {
    MOE_ASSERT(type == GType::q8_k || (type == GType::q8_0 && (c == 128 || c == 8)));
    if (type == GType::q8_0 && c == 8 && !rows_tiles8 && avx2_tiles_active()) {
        // the AVX2 Q4_0 tiles read only xo8, -8 * each block's sum, in the same layout (per group of
        // 4 rows and block, the 4 rows' values; rows past N 0)
        const int64_t nsb = in / 32, n = (N + 3) / 4 * nsb * 4;
        if ((int64_t)xo8.size() < n) xo8.resize(n);
        for (int64_t r = 0; r < (N + 3) / 4 * 4; ++r)
            for (int64_t b = 0; b < nsb; ++b) {
                int32_t sx = 0;
                if (r < N)
                    for (int i = 0; i < 32; ++i) sx += reinterpret_cast<const BlockQ8_0*>(row(r))[b].qs[i];
                xo8[((r / 4) * nsb + b) * 4 + r % 4] = -8 * sx;
            }
        rows_tiles8 = true;
        return;
    }
    if (!tiled_kernels_active()) return;
    if (!rows_tiles) {
        prepare_tiles(type == GType::q8_0 ? 128 : 0);
        rows_tiles = true, rows_tiles8 = false;
    }
    if (type == GType::q8_0 && c == 8 && !rows_tiles8) {  // -8 sum = (-128 sum) / 16, exactly
        const int64_t n = (N + 3) / 4 * (in / 32) * 4;
        if ((int64_t)xo8.size() < n) xo8.resize(n);
        for (int64_t i = 0; i < n; ++i) xo8[i] = xo[i] / 16;
        rows_tiles8 = true;
    }
}

void ggml_matmul_rows_tiled(float* y, int64_t ys, const GActs& acts, GType t, const uint8_t* tiled, int64_t N,
                            int64_t o0, int64_t o1, bool accumulate) {
    MOE_ASSERT((t == GType::q8_0 || t == GType::q4_0 || t == GType::q4_k) && acts.type == gtype_act(t) && acts.N >= N);
    if (acts.rows_tiles && tiled_kernels_active() && (t != GType::q4_0 || acts.rows_tiles8)) {
        detail::TileActs xa;
        xa.xp = acts.xp.data(), xa.xs = acts.xs.data(), xa.am = acts.am.data();
        if (t == GType::q8_0) {
            xa.xo = acts.xo.data();
            detail::tiled_rows_vnni(detail::TiledKind::q8_0, y, ys, xa, tiled, N, acts.in, o0, o1, accumulate);
        } else if (t == GType::q4_0) {
            xa.xo = acts.xo8.data();
            detail::tiled_rows_vnni(detail::TiledKind::q4_0, y, ys, xa, tiled, N, acts.in, o0, o1, accumulate);
        } else {
            xa.sb = true;
            detail::tiled_rows_vnni(detail::TiledKind::q4_k, y, ys, xa, tiled, N, acts.in, o0, o1, accumulate);
        }
        return;
    }
    if (t == GType::q4_k && avx2_tiles_active()) {  // (AVX2 hosts: ggml_quants.h)
        // more than 16 rows: each tile unpacked to bytes once, then every row over it (from DRAM,
        // build/bench/decode_rows --isa avx2 --mats 64: 16 rows 262-266 us against the direct
        // kernel's 255-258, 32 rows 470-477 against 501-510; 1.1-1.2x at 512)
        if (N > 16)
            detail::q4_k_tiled_prefill_avx2(y, ys, acts.buf.data(), acts.row_bytes, N, acts.in, tiled, o0, o1,
                                            accumulate, thread_scratch(detail::tile_scratch_bytes(acts.in)));
        else
            detail::q4_k_tiled_rows_avx2(y, ys, acts.buf.data(), acts.row_bytes, N, acts.in, tiled, o0, o1, accumulate);
        return;
    }
    if (t == GType::q8_0 && avx2_tiles_active()) {
        detail::q8_0_tiled_rows_avx2(y, ys, acts.buf.data(), acts.row_bytes, N, acts.in, tiled, o0, o1, accumulate);
        return;
    }
    if (t == GType::q4_0 && acts.rows_tiles8 && avx2_tiles_active()) {
        detail::q4_0_tiled_rows_avx2(y, ys, acts.buf.data(), acts.row_bytes, acts.xo8.data(), N, acts.in, tiled, o0,
                                     o1, accumulate);
        return;
    }
    if (t == GType::q8_0) q8_0_tiled_rows_ref(y, ys, acts.buf.data(), acts.row_bytes, N, acts.in, tiled, o0, o1, accumulate);
    else if (t == GType::q4_0) q4_0_tiled_rows_ref(y, ys, acts.buf.data(), acts.row_bytes, N, acts.in, tiled, o0, o1, accumulate);
    else q4_k_tiled_rows_ref(y, ys, acts.buf.data(), acts.row_bytes, N, acts.in, tiled, o0, o1, accumulate);
}

void ggml_matmul_tiled(float* y, const float* x, GType t, const uint8_t* tiled, int64_t N, int64_t OUT, int64_t IN,
                       bool accumulate, GActs& acts) {
    if (N <= 0 || OUT <= 0) return;
    acts.build(gtype_act(t), x, N, IN);
    acts.prepare_tiled(t == GType::q4_0 ? 8 : 128);
    const GActs* a = &acts;
    const double bytes = (double)OUT * (double)gtype_row_bytes(t, IN);
    const int64_t tiles = (OUT + kTiledRows - 1) / kTiledRows;
    const int64_t grain = bytes * (double)((N + 3) / 4) < kGemvParallelBytes ? tiles : 1;
    parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
        ggml_matmul_rows_tiled(y, OUT, *a, t, tiled, N, t0 * kTiledRows, std::min(OUT, t1 * kTiledRows), accumulate);
    });
}

// ---------------------------------------------------------------- Q4_0 repacked into tiles

void q4_0_repack_tiled(const void* w, int64_t row_stride, int64_t out, int64_t in, uint8_t* dst) {
    MOE_ASSERT(in % kQK == 0);
    const int64_t nsb = in / kQK, tiles = (out + kTiledRows - 1) / kTiledRows;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    parallel_for(0, tiles, 4, [&](int64_t t0, int64_t t1) {  // a byte shuffle: scalar, once at load
        for (int64_t t = t0; t < t1; ++t)
            for (int64_t b = 0; b < nsb; ++b) {
                uint8_t* tb = dst + (t * nsb + b) * kTiledBlockBytesQ4_0;
                uint16_t* d = reinterpret_cast<uint16_t*>(tb + 512);
                for (int r = 0; r < kTiledRows; ++r) {
                    const int64_t o = t * kTiledRows + r;
                    const BlockQ4_0* blk = o < out ? reinterpret_cast<const BlockQ4_0*>(wb + o * row_stride) + b : nullptr;
                    for (int k = 0; k < 4; ++k) {
                        if (blk) std::memcpy(tb + k * 128 + 4 * r, blk->qs + 4 * k, 4);
                        else std::memset(tb + k * 128 + 4 * r, 0, 4);
                    }
                    d[r] = blk ? blk->d : 0;
                }
            }
    });
}

// value i (0..31) of block b of row r as its nibble q (w = d (q - 8)), and d
static int q4_0_tiled_q(const uint8_t* tiled, int64_t nsb, int64_t r, int64_t b, int i, float* d) {
    const uint8_t* tb = tiled + ((r / kTiledRows) * nsb + b) * kTiledBlockBytesQ4_0;
    *d = fp16_to_fp32(reinterpret_cast<const uint16_t*>(tb + 512)[r % kTiledRows]);
    const int v = i % 16;
    const uint8_t byte = tb[(v / 4) * 128 + 4 * (r % kTiledRows) + v % 4];
    return i < 16 ? byte & 0xF : byte >> 4;
}

void q4_0_tiled_dequantize_row(const uint8_t* tiled, int64_t in, int64_t r, int64_t k0, int64_t kc, float* dst) {
    MOE_ASSERT(k0 % kQK == 0 && kc % kQK == 0 && k0 + kc <= in);
    const int64_t nsb = in / kQK;
    for (int64_t b = k0 / kQK; b < (k0 + kc) / kQK; ++b, dst += kQK)
        for (int i = 0; i < kQK; ++i) {  // dequantize_row_q4_0's (q - 8) * d
            float d;
            const int q = q4_0_tiled_q(tiled, nsb, r, b, i, &d);
            dst[i] = (float)(q - 8) * d;
        }
}

void q4_0_tiled_rows_ref(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                         const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate) {
    // the VNNI tiles' order for Q4_0 (tile_kernel<false, true>): per block the exact sum of
    // (q - 8) x, then acc = fma((float)isum, d * xd, acc)
    const int64_t nsb = in / kQK;
    tiled_ref_rows(y, ys, N, o0, o1, accumulate, [&](int64_t n, int64_t o, float acc) {
        const BlockQ8_0* xr = reinterpret_cast<const BlockQ8_0*>(acts + n * act_bytes);
        for (int64_t b = 0; b < nsb; ++b) {
            float d = 0.f;
            int32_t isum = 0;
            for (int i = 0; i < kQK; ++i) isum += (q4_0_tiled_q(tiled, nsb, o, b, i, &d) - 8) * (int32_t)xr[b].qs[i];
            acc = std::fma((float)isum, d * fp16_to_fp32(xr[b].d), acc);
        }
        return acc;
    });
}

// ---------------------------------------------------------------- Q4_K repacked into tiles

int64_t q4_k_tiled_row_bytes(int64_t in) { return in / kQK_K * (kTiledSuperBytesQ4K / kTiledRows); }
int64_t q4_k_tiled_bytes(int64_t out, int64_t in) {
    return (out + kTiledRows - 1) / kTiledRows * kTiledRows * q4_k_tiled_row_bytes(in);
}

void q4_k_repack_tiled(const void* w, int64_t row_stride, int64_t out, int64_t in, uint8_t* dst) {
    MOE_ASSERT(in % kQK_K == 0);
    const int64_t nsuper = in / kQK_K, tiles = (out + kTiledRows - 1) / kTiledRows;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    // a byte shuffle (each row's 4-byte groups to their places) and the scales decoded: scalar,
    // once at load, over threads
    parallel_for(0, tiles, 4, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
            for (int64_t s = 0; s < nsuper; ++s) {
                uint8_t* sb = dst + (t * nsuper + s) * kTiledSuperBytesQ4K;
                uint16_t* d = reinterpret_cast<uint16_t*>(sb + 4096);
                for (int r = 0; r < kTiledRows; ++r) {
                    const int64_t o = t * kTiledRows + r;
                    if (o >= out) {
                        for (int c = 0; c < 4; ++c)
                            for (int k = 0; k < 8; ++k) std::memset(sb + c * 1024 + k * 128 + 4 * r, 0, 4);
                        d[r] = d[32 + r] = 0;
                        for (int j = 0; j < 8; ++j) sb[4224 + 32 * j + r] = sb[4480 + 32 * j + r] = 0;
                        continue;
                    }
                    const BlockQ4_K& blk = reinterpret_cast<const BlockQ4_K*>(wb + o * row_stride)[s];
                    for (int c = 0; c < 4; ++c)
                        for (int k = 0; k < 8; ++k) std::memcpy(sb + c * 1024 + k * 128 + 4 * r, blk.qs + 32 * c + 4 * k, 4);
                    d[r] = blk.d, d[32 + r] = blk.dmin;
                    for (int j = 0; j < 8; ++j) scale_min_k4(j, blk.scales, &sb[4224 + 32 * j + r], &sb[4480 + 32 * j + r]);
                }
            }
    });
}

// value i (0..255) of super-block s of row r: its nibble and the scale / min bytes of its sub-block
struct Q4kAt {
    const uint8_t* sb;
    int r;
    int nib(int i) const {
        const int c = i / 64, l = i % 64, h = l / 32, v = l % 32;
        const uint8_t b = sb[c * 1024 + (v / 4) * 128 + 4 * r + v % 4];
        return h ? b >> 4 : b & 0xF;
    }
    float d() const { return fp16_to_fp32(reinterpret_cast<const uint16_t*>(sb + 4096)[r]); }
    float dmin() const { return fp16_to_fp32(reinterpret_cast<const uint16_t*>(sb + 4160)[r]); }
    int sc(int j) const { return sb[4224 + 32 * j + r]; }
    int mn(int j) const { return sb[4480 + 32 * j + r]; }
};
static Q4kAt q4k_at(const uint8_t* tiled, int64_t nsuper, int64_t r, int64_t s) {
    return {tiled + ((r / kTiledRows) * nsuper + s) * kTiledSuperBytesQ4K, (int)(r % kTiledRows)};
}

void q4_k_tiled_dequantize_row(const uint8_t* tiled, int64_t in, int64_t r, int64_t k0, int64_t kc, float* dst) {
    MOE_ASSERT(k0 % kQK_K == 0 && kc % kQK_K == 0 && k0 + kc <= in);
    const int64_t nsuper = in / kQK_K;
    for (int64_t s = k0 / kQK_K; s < (k0 + kc) / kQK_K; ++s, dst += kQK_K) {
        const Q4kAt a = q4k_at(tiled, nsuper, r, s);
        for (int i = 0; i < kQK_K; ++i) {  // dequantize_row_q4_K's d1 * q - m1
            const float d1 = a.d() * (float)a.sc(i / 32), m1 = a.dmin() * (float)a.mn(i / 32);
            dst[i] = d1 * (float)a.nib(i) - m1;
        }
    }
}

void q4_k_tiled_rows_ref(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                         const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate) {
    // the VNNI tiles' order (tile_kernel<true, false>): per sub-block acc -= wm * (xd * sum x),
    // t += isum * ws; per super-block acc += t * xd
    const int64_t nsuper = in / kQK_K;
    tiled_ref_rows(y, ys, N, o0, o1, accumulate, [&](int64_t n, int64_t o, float acc) {
        const BlockQ8_K* xr = reinterpret_cast<const BlockQ8_K*>(acts + n * act_bytes);
        for (int64_t s = 0; s < nsuper; ++s) {
            const Q4kAt a = q4k_at(tiled, nsuper, o, s);
            float t = 0.f;
            for (int j = 0; j < 8; ++j) {
                int32_t isum = 0;
                for (int i = 0; i < 32; ++i) isum += a.nib(32 * j + i) * (int32_t)xr[s].qs[32 * j + i];
                const float ws = a.d() * (float)a.sc(j), wm = a.dmin() * (float)a.mn(j);
                const float am = xr[s].d * (float)(xr[s].bsums[2 * j] + xr[s].bsums[2 * j + 1]);
                acc = std::fma(-wm, am, acc);
                t = std::fma((float)isum, ws, t);
            }
            acc = std::fma(t, xr[s].d, acc);
        }
        return acc;
    });
}


void kquant_tiles_ref(GType t, float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                      const void* w, int64_t row_stride, int64_t o0, int64_t o1, bool accumulate) {
    MOE_ASSERT((t == GType::q4_k || t == GType::q5_k || t == GType::q6_k) && in % kQK_K == 0);
    const int64_t nsuper = in / kQK_K;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    tiled_ref_rows(y, ys, N, o0, o1, accumulate, [&](int64_t n, int64_t o, float acc) {
        const BlockQ8_K* xr = reinterpret_cast<const BlockQ8_K*>(acts + n * act_bytes);
        const uint8_t* row = wb + o * row_stride;
        for (int64_t s = 0; s < nsuper; ++s) {
            float tt = 0.f;
            if (t == GType::q6_k) {  // tile_kernel_q6: per 16 values isum = sum (u - 32) x, tt += isum * d sc
                const BlockQ6_K& b = reinterpret_cast<const BlockQ6_K*>(row)[s];
                for (int q = 0; q < 16; ++q) {
                    int32_t isum = -32 * (int32_t)xr[s].bsums[q];
                    for (int i = 16 * q; i < 16 * q + 16; ++i) {
                        const int h = i / 128, r = i % 128, k = r / 32, l = r % 32;  // quarter k of half h
                        const uint8_t* ql = b.ql + 64 * h;
                        const int lo = (k & 1) ? ql[l + 32] : ql[l];
                        const int u = ((k < 2) ? (lo & 0xF) : (lo >> 4)) | (((b.qh[32 * h + l] >> (2 * k)) & 3) << 4);
                        isum += u * (int32_t)xr[s].qs[i];
                    }
                    tt = std::fma((float)isum, fp16_to_fp32(b.d) * (float)b.scales[q], tt);
                }
            } else {  // tile_kernel<true, false>: per 32 values acc -= wm * (xd sum x), tt += isum * ws
                const bool q5 = t == GType::q5_k;
                const uint8_t* blk = row + s * gtype_block_bytes(t);
                uint16_t d16, dmin16;
                std::memcpy(&d16, blk, 2), std::memcpy(&dmin16, blk + 2, 2);
                const uint8_t* scales = blk + 4;
                const uint8_t* qh = q5 ? reinterpret_cast<const BlockQ5_K*>(blk)->qh : nullptr;
                const uint8_t* qs = q5 ? reinterpret_cast<const BlockQ5_K*>(blk)->qs : reinterpret_cast<const BlockQ4_K*>(blk)->qs;
                for (int j = 0; j < 8; ++j) {
                    uint8_t sc, m;
                    scale_min_k4(j, scales, &sc, &m);
                    int32_t isum = 0;
                    for (int l = 0; l < 32; ++l) {
                        int u = (j & 1) ? (qs[32 * (j / 2) + l] >> 4) : (qs[32 * (j / 2) + l] & 0xF);
                        if (q5) u += ((qh[l] >> j) & 1) << 4;
                        isum += u * (int32_t)xr[s].qs[32 * j + l];
                    }
                    const float ws = fp16_to_fp32(d16) * (float)sc, wm = fp16_to_fp32(dmin16) * (float)m;
                    const float am = xr[s].d * (float)(xr[s].bsums[2 * j] + xr[s].bsums[2 * j + 1]);
                    acc = std::fma(-wm, am, acc);
                    tt = std::fma((float)isum, ws, tt);
                }
            }
            acc = std::fma(tt, xr[s].d, acc);
        }
        return acc;
    });
}

}  // namespace moe::kernels
