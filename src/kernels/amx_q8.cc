// AMX-INT8 prefill tiles (see amx_q8.h for the layout and why it is hand-written).
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's own _mm512_cvtepi32_ps (bug 105593)
#endif
#include "kernels/amx_q8.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "kernels/avx2_inline.h"
#include "kernels/cpu.h"
#include "kernels/ggml_quants_simd.h"
#include "kernels/q6_k_bits.h"
#include "kernels/amx_target.h"

namespace moe::kernels::amx {

bool int8_active() {
    const CpuFeatures& f = cpu_features();
    return active_isa() >= Isa::amx && f.amx_int8 && f.amx_permitted && f.avx512_vnni && f.avx512dq && f.f16c;
}

bool ggml_supported(GType t) {
    return t == GType::q8_0 || t == GType::q4_0 || t == GType::q4_k || t == GType::q5_k || t == GType::q6_k;
}

namespace {


constexpr int kRows = 32;               // weight rows per unpacked tile (two B tiles of 16)
constexpr int64_t kSubBytes = 1024;     // one 32-value block of the unpacked tile
inline void compiler_fence() { asm volatile("" ::: "memory"); }  // the tile asm has no memory inputs

// The tile configuration (ldtilecfg's 64 bytes): C tiles 0, 1 (16 rows x 16 int32), A tiles 4, 5
// (16 rows x K bytes), B tiles 6, 7 (K / 4 rows x 64 bytes).
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};
TileConfig make_config(int K) {
    TileConfig c;
    for (int t : {0, 1}) c.rows[t] = 16, c.colsb[t] = 64;
    for (int t : {4, 5}) c.rows[t] = 16, c.colsb[t] = (uint16_t)K;
    for (int t : {6, 7}) c.rows[t] = (uint8_t)(K / 4), c.colsb[t] = 64;
    return c;
}


// stores 8 rows' 32-value chunk (rows r0..r0+7) into the tile's chunk at dst
KA inline void store_chunk(__m256i (&v)[8], uint8_t* dst, int r0) {
    transpose_dwords8(v);
    for (int k = 0; k < 8; ++k) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k * 4 * kRows + 4 * r0), v[k]);
}

// moe int8 rows [r, r + nr) of (., in): per block b the 32 signed bytes (a tail zero-padded) and
// ws[b * 32 + r] = the row's block scale
KA void unpack_q8(const int8_t* w, const float* scales, int64_t in, int nr, uint8_t* wq, float* ws) {
    const int64_t nb = (in + 31) / 32;
    for (int r0 = 0; r0 < kRows; r0 += 8)
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t len = std::min<int64_t>(32, in - b * 32);
            const __mmask32 k = len == 32 ? 0xffffffffu : (__mmask32)((1u << len) - 1);
            __m256i v[8];
            for (int i = 0; i < 8; ++i) {
                const int r = r0 + i;
                v[i] = r < nr ? _mm256_maskz_loadu_epi8(k, w + r * in + b * 32) : _mm256_setzero_si256();
                ws[b * kRows + r] = r < nr ? scales[r * nb + b] : 0.f;
            }
            store_chunk(v, wq + b * kSubBytes, r0);
        }
}

// q8_0 / q4_0 tiles from the VNNI unpacking (u = q + c) made signed: u - c, so TDPBSSD's sums are
// the integer dots themselves (the VNNI tiles' -c * sum x start folded in)
KA void make_signed(uint8_t* wq, int64_t nsb, int c) {
    const __m512i cv = _mm512_set1_epi8((char)c);
    for (int64_t i = 0; i < nsb * kSubBytes; i += 64) {
        __m512i* p = reinterpret_cast<__m512i*>(wq + i);
        _mm512_store_si512(p, _mm512_sub_epi8(_mm512_load_si512(p), cv));
    }
}

// q6_k rows: the values q - 32 (signed) in 32-value chunks (two 16-value groups each: group G's 4-byte
// words at wq + G * 512, 128 bytes per word index as in the 32-value layout), ws[G * 32 + r] = d * sc_G
KA void unpack_q6_k(const uint8_t* w, int64_t row_stride, int nr, int64_t nsuper, uint8_t* wq, float* ws) {
    const __m256i c32 = _mm256_set1_epi8(32);
    for (int r0 = 0; r0 < kRows; r0 += 8)
        for (int64_t s = 0; s < nsuper; ++s)
            for (int h = 0; h < 2; ++h) {
                __m256i q[8][4];
                for (int i = 0; i < 8; ++i) {
                    const int r = r0 + i;
                    if (r >= nr) {
                        for (int k = 0; k < 4; ++k) q[i][k] = _mm256_setzero_si256();
                        for (int g = 0; g < 8; ++g) ws[(s * 16 + 8 * h + g) * kRows + r] = 0.f;
                        continue;
                    }
                    const BlockQ6_K& blk = reinterpret_cast<const BlockQ6_K*>(w + r * row_stride)[s];
                    detail::q6_k_half_values(blk, h, q[i]);
                    const float d = _cvtsh_ss(blk.d);
                    for (int g = 0; g < 8; ++g) ws[(s * 16 + 8 * h + g) * kRows + r] = d * (float)blk.scales[8 * h + g];
                }
                for (int k = 0; k < 4; ++k) {  // chunk 4 h + k: values 128 h + 32 k .. + 32 of the super-block
                    __m256i v[8];
                    for (int i = 0; i < 8; ++i) v[i] = _mm256_sub_epi8(q[i][k], c32);
                    store_chunk(v, wq + (s * 8 + 4 * h + k) * kSubBytes, r0);
                }
            }
}

enum class Mode { q,    // acc += cvt(C) * (ws * xs) per block (signed weights: int8, q8_0, q4_0)
                  kq,   // K-quants: t += cvt(C) * ws per sub-block, acc -= wm * am, acc += t * xs per 8
                  q6 }; // q6_k: t += cvt(C) * ws per 16-value group, acc += t * xs per 16 groups

// C tile c += A tile a x B tile b: signed x signed, or signed activations x unsigned weights (kq)
#define MOE_AMX_DP(c, a, b)                                    \
    do {                                                       \
        if constexpr (M == Mode::kq) _tile_dpbsud(c, a, b);    \
        else _tile_dpbssd(c, a, b);                            \
    } while (0)
#define MOE_REP16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)

// One group of 16 activation rows (xp, xs, am at the group's block 0) x half h of the tile
// (weight rows 16 h .. 16 h + 15): the accumulators start from y (accumulate) or zero, then the
// blocks in order, two C tiles alternating: the tile unit multiplies block b + 2 while the vector
// units scale block b. Per block, the stored C tile (16 activation rows x 16 weight rows, int32)
// is scaled into the accumulators with the VNNI tiles' operations on the same operands in the same
// order: q: acc += cvt(C) * (ws * xs); kq: t += cvt(C) * ws, and at a super-block's end (8 blocks)
// acc -= wm * am for each block, then acc += t * xs; q6: the same per 16 groups, without the mins.
// a0..a15 (named, so they stay in registers) are acc for q, t for kq / q6, whose accumulators live
// in accm (1 KB). cb: 2 KB, the C tiles as stored.
template <Mode M>
KA void tile_half(float* y, int64_t ys, int nr_act, __mmask16 kout, const int8_t* xp, const float* xs, const float* am,
                  const uint8_t* wq, const float* ws, const float* wm, int64_t nb, int h, bool accumulate, int32_t* cb,
                  __m512* accm) {
    constexpr int K = M == Mode::q6 ? 16 : 32;
    constexpr int64_t kA = 16 * K, kB = K == 32 ? kSubBytes : kSubBytes / 2;  // bytes per block
    constexpr int kSuper = M == Mode::kq ? 8 : 16;                               // blocks per scale of x
#define MOE_INIT(m)                                                                                           \
    __m512 a##m = accumulate && m < nr_act ? _mm512_maskz_loadu_ps(kout, y + m * ys) : _mm512_setzero_ps(); \
    if constexpr (M != Mode::q) accm[m] = a##m, a##m = _mm512_setzero_ps();
    MOE_REP16(MOE_INIT)
#undef MOE_INIT
    const uint8_t* wb = wq + 64 * h;
    auto post = [&](const int32_t* c, int64_t b) KA_LAMBDA {
        const __m512 s = _mm512_load_ps(ws + b * kRows + 16 * h);
#define MOE_STEP(m)                                                                                               \
    if constexpr (M == Mode::q)                                                                                   \
        a##m = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * m)),                                 \
                               _mm512_mul_ps(s, _mm512_set1_ps(xs[b * 16 + m])), a##m);                           \
    else                                                                                                          \
        a##m = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * m)), s, a##m);
        MOE_REP16(MOE_STEP)
#undef MOE_STEP
        if constexpr (M != Mode::q) {
            if (b % kSuper == kSuper - 1) {
#define MOE_FLUSH(m)                                                                                                \
    {                                                                                                               \
        __m512 acc = accm[m];                                                                                       \
        if constexpr (M == Mode::kq)                                                                                \
            for (int64_t bb = b - 7; bb <= b; ++bb)                                                                 \
                acc = _mm512_fnmadd_ps(_mm512_load_ps(wm + bb * kRows + 16 * h), _mm512_set1_ps(am[bb * 16 + m]), acc); \
        accm[m] = _mm512_fmadd_ps(a##m, _mm512_set1_ps(xs[b * 16 + m]), acc);                                      \
        a##m = _mm512_setzero_ps();                                                                                 \
    }
                MOE_REP16(MOE_FLUSH)
#undef MOE_FLUSH
            }
        }
    };
    compiler_fence();
    _tile_loadd(4, xp, K);
    _tile_loadd(6, wb, 128);
    _tile_zero(0);
    MOE_AMX_DP(0, 4, 6);
    if (nb >= 2) {
        _tile_loadd(5, xp + kA, K);
        _tile_loadd(7, wb + kB, 128);
        _tile_zero(1);
        MOE_AMX_DP(1, 5, 7);
    }
    for (int64_t b = 0; b < nb; b += 2) {
        _tile_stored(0, cb, 64);
        if (b + 2 < nb) {
            _tile_loadd(4, xp + (b + 2) * kA, K);
            _tile_loadd(6, wb + (b + 2) * kB, 128);
            _tile_zero(0);
            MOE_AMX_DP(0, 4, 6);
        }
        post(cb, b);
        if (b + 1 < nb) {
            _tile_stored(1, cb + 256, 64);
            if (b + 3 < nb) {
                _tile_loadd(5, xp + (b + 3) * kA, K);
                _tile_loadd(7, wb + (b + 3) * kB, 128);
                _tile_zero(1);
                MOE_AMX_DP(1, 5, 7);
            }
            post(cb + 256, b + 1);
        }
    }
#define MOE_STORE(m) \
    if (m < nr_act) _mm512_mask_storeu_ps(y + m * ys, kout, M == Mode::q ? a##m : accm[m]);
    MOE_REP16(MOE_STORE)
#undef MOE_STORE
}
#undef MOE_AMX_DP
#undef MOE_REP16

// The tile's 32 rows (nr of them real) against every activation group
template <Mode M>
KA void tile_all_groups(float* y, int64_t ys, const Acts& xa, int64_t N, int64_t nb, int nr, const uint8_t* wq,
                        const float* ws, const float* wm, bool accumulate, int32_t* cb, __m512* accm) {
    constexpr int K = M == Mode::q6 ? 16 : 32;
    for (int h = 0; h < 2 && 16 * h < nr; ++h) {
        const int nh = std::min(16, nr - 16 * h);
        const __mmask16 kout = (__mmask16)(nh == 16 ? 0xffff : (1u << nh) - 1);
        for (int64_t g = 0; 16 * g < N; ++g) {
            const int nr_act = (int)std::min<int64_t>(16, N - 16 * g);
            tile_half<M>(y + 16 * g * ys + 16 * h, ys, nr_act, kout, xa.xp + g * nb * 16 * K, xa.xs + g * nb * 16,
                         xa.am ? xa.am + g * nb * 16 : nullptr, wq, ws, wm, nb, h, accumulate, cb, accm);
        }
    }
}

struct Scratch {
    uint8_t* wq;
    float *ws, *wm;
    int32_t* cb;
    __m512* accm;
};
Scratch carve(uint8_t* s, int64_t in) {
    const int64_t nb = (in + 31) / 32;  // 32-value chunks (q6_k: as many 16-value groups x 2)
    Scratch r;
    r.wq = s;
    r.ws = reinterpret_cast<float*>(s + nb * kSubBytes);
    r.wm = r.ws + 2 * nb * kRows;
    r.cb = reinterpret_cast<int32_t*>(r.wm + 2 * nb * kRows);
    r.accm = reinterpret_cast<__m512*>(r.cb + 512);
    return r;
}

// ldtilecfg for this thread until the object goes
struct TileScope {
    KA explicit TileScope(int K) {
        const TileConfig c = make_config(K);
        compiler_fence();
        _tile_loadconfig(&c);
        compiler_fence();
    }
    KA ~TileScope() { _tile_release(); }
};

}  // namespace

int64_t scratch_bytes(int64_t in) {
    const int64_t nb = (in + 31) / 32;
    return nb * kSubBytes + 4 * nb * kRows * (int64_t)sizeof(float) + 2048 + 1024;
}

KA void pack_acts_q8(const int8_t* q, const float* scales, int64_t N, int64_t in, int64_t g0, int64_t g1, int8_t* xp,
                     float* xs) {
    const int64_t nb = (in + 31) / 32;
    for (int64_t g = g0; g < g1; ++g)
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t len = std::min<int64_t>(32, in - b * 32);
            const __mmask32 k = len == 32 ? 0xffffffffu : (__mmask32)((1u << len) - 1);
            int8_t* dst = xp + (g * nb + b) * 512;
            for (int m = 0; m < 16; ++m) {
                const int64_t n = 16 * g + m;
                const __m256i v = n < N ? _mm256_maskz_loadu_epi8(k, q + n * in + b * 32) : _mm256_setzero_si256();
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32 * m), v);
                xs[(g * nb + b) * 16 + m] = n < N ? scales[n * nb + b] : 0.f;
            }
        }
}

KA void pack_acts_ggml(const uint8_t* rows, int64_t row_bytes, GType w, int64_t N, int64_t in, int64_t g0, int64_t g1,
                       int8_t* xp, float* xs, float* am) {
    const bool q8k = gtype_act(w) == GType::q8_k;
    const int K = w == GType::q6_k ? 16 : 32;
    const int64_t nb = in / K;
    for (int64_t g = g0; g < g1; ++g)
        for (int64_t b = 0; b < nb; ++b) {
            int8_t* dst = xp + (g * nb + b) * 16 * K;
            const int64_t o = (g * nb + b) * 16;
            for (int m = 0; m < 16; ++m) {
                const int64_t n = 16 * g + m;
                float sc = 0.f;
                int32_t sum = 0;
                if (n >= N) {
                    std::memset(dst + K * m, 0, K);
                } else if (q8k) {
                    const BlockQ8_K& blk = reinterpret_cast<const BlockQ8_K*>(rows + n * row_bytes)[b * K / 256];
                    const int64_t i0 = b * K % 256;
                    std::memcpy(dst + K * m, blk.qs + i0, K);
                    sc = blk.d;
                    if (K == 32) sum = blk.bsums[i0 / 16] + blk.bsums[i0 / 16 + 1];
                } else {
                    const BlockQ8_0& blk = reinterpret_cast<const BlockQ8_0*>(rows + n * row_bytes)[b];
                    std::memcpy(dst + K * m, blk.qs, K);
                    sc = _cvtsh_ss(blk.d);
                }
                xs[o + m] = sc;
                if (am) am[o + m] = sc * (float)sum;  // as the VNNI tiles' am (same operands)
            }
        }
}

KA void prefill_q8(float* y, int64_t ys, const Acts& xa, const int8_t* wq, const float* ws, int64_t N, int64_t in,
                   int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch) {
    const int64_t nb = (in + 31) / 32;
    const Scratch s = carve(scratch, in);
    const TileScope scope(32);
    for (int64_t r0 = o0; r0 < o1; r0 += kRows) {
        const int nr = (int)std::min<int64_t>(kRows, o1 - r0);
        unpack_q8(wq + r0 * in, ws + r0 * nb, in, nr, s.wq, s.ws);
        tile_all_groups<Mode::q>(y + r0, ys, xa, N, nb, nr, s.wq, s.ws, nullptr, accumulate, s.cb, s.accm);
    }
}

KA void prefill_ggml(float* y, int64_t ys, const Acts& xa, const void* w, GType t, int64_t row_stride, int64_t N,
                     int64_t in, int64_t o0, int64_t o1, bool accumulate, uint8_t* scratch) {
    MOE_ASSERT(ggml_supported(t));
    const Scratch s = carve(scratch, in);
    const TileScope scope(t == GType::q6_k ? 16 : 32);
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const int64_t nsb = in / 32;
    for (int64_t r0 = o0; r0 < o1; r0 += kRows) {
        const int nr = (int)std::min<int64_t>(kRows, o1 - r0);
        const uint8_t* rows = wb + r0 * row_stride;
        if (t == GType::q6_k) {
            unpack_q6_k(rows, row_stride, nr, in / 256, s.wq, s.ws);
            tile_all_groups<Mode::q6>(y + r0, ys, xa, N, 2 * nsb, nr, s.wq, s.ws, nullptr, accumulate, s.cb, s.accm);
            continue;
        }
        detail::unpack_tile_vnni(t, rows, row_stride, nr, nsb, s.wq, s.ws, s.wm);
        if (t == GType::q8_0 || t == GType::q4_0) {
            make_signed(s.wq, nsb, t == GType::q8_0 ? 128 : 8);
            tile_all_groups<Mode::q>(y + r0, ys, xa, N, nsb, nr, s.wq, s.ws, nullptr, accumulate, s.cb, s.accm);
        } else {
            tile_all_groups<Mode::kq>(y + r0, ys, xa, N, nsb, nr, s.wq, s.ws, s.wm, accumulate, s.cb, s.accm);
        }
    }
}

}  // namespace moe::kernels::amx
