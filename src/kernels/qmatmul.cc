#include "kernels/qmatmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/amx_q8.h"
#include "kernels/avx2_inline.h"
#include "kernels/batch_invariant.h"
#include "kernels/bf16.h"
#include "kernels/cpu.h"
#include "kernels/gemm.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_quants_simd.h"
#include "kernels/ggml_rows_vnni.h"
#include "kernels/sgemm.h"

namespace moe::kernels {

const char* wtype_name(WType t) {
    switch (t) {
        case WType::f32: return "fp32";
        case WType::bf16: return "bf16";
        case WType::q8: return "int8";
        case WType::q8_0: return "q8_0";
        case WType::q4_0: return "q4_0";
        case WType::q4_k: return "q4_k";
        case WType::q5_k: return "q5_k";
        case WType::q6_k: return "q6_k";
        case WType::f16: return "f16";
    }
    return "?";
}

GType ggml_type(WType t) {
    switch (t) {
        case WType::q8_0: return GType::q8_0;
        case WType::q4_0: return GType::q4_0;
        case WType::q4_k: return GType::q4_k;
        case WType::q5_k: return GType::q5_k;
        case WType::q6_k: return GType::q6_k;
        case WType::f16: return GType::f16;
        default: MOE_ASSERT(false && "not a ggml type");
    }
    return GType::f32;
}

WType parse_wtype(const std::string& s, const char* where) {
    if (s == "fp32") return WType::f32;
    if (s == "bf16") return WType::bf16;
    if (s == "int8") return WType::q8;
    for (WType t : {WType::q8_0, WType::q4_0, WType::q4_k, WType::q5_k, WType::q6_k, WType::f16})
        if (s == wtype_name(t)) return t;
    fail(where, ": dtype must be fp32, bf16, int8, q8_0, q4_0, q4_k, q5_k, q6_k or f16, got \"", s, "\"");
}

double QMatrix::bytes() const {
    const double n = (double)out * (double)in;
    switch (type) {
        case WType::f32: return 4 * n;
        case WType::bf16: return 2 * n;
        case WType::q8: return n + 4.0 * (double)out * (double)blocks();
        default: {
            const GType g = ggml_type(type);
            return (double)out * (double)(in / gtype_block(g)) * (double)gtype_block_bytes(g);
        }
    }
    return 0;
}

QMatrix QMatrix::rows(int64_t r0, int64_t n) const {
    if (parts) {
        const int64_t i = r0 / part_rows, off = r0 - i * part_rows;
        MOE_ASSERT(r0 >= 0 && n >= 0 && off + n <= part_rows && r0 + n <= out);
        return parts[i].rows(off, n);
    }
    // a tiled matrix is cut at whole tiles (an expert's rows, a thread's share)
    MOE_ASSERT(!tiled || (r0 % kTiledRows == 0 && (n % kTiledRows == 0 || r0 + n == out)));
    QMatrix m = *this;
    m.out = n;
    if (f32) m.f32 = f32 + r0 * in;
    if (bf16) m.bf16 = bf16 + r0 * in;
    if (q) m.q = q + r0 * in, m.scales = scales + r0 * blocks();
    if (raw) m.raw = raw + r0 * row_bytes;
    return m;
}

void quantize_q8_row_ref(int8_t* q, float* scales, const float* w, int64_t in) {
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

namespace {

// Full blocks of 32 as in quantize_q8_row_ref (same operations in the same order: max|w| is exact,
// w * inv is one rounding, cvtps rounds to nearest even as lrint does), then packed to bytes.
// Decode quantizes every activation row that meets int8 weights, so this runs once per matrix.
__attribute__((target("avx2,fma"))) void quantize_q8_row_avx2(int8_t* q, float* scales, const float* w, int64_t in) {
    const int64_t full = in / kQ8Block;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < full; ++b) {
        const float* x = w + b * kQ8Block;
        __m256 v[4];
        for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(x + 8 * k);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
                                 _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
        const float amax = hmax8(m);
        const float s = amax / 127.f;
        scales[b] = s;
        const __m256 inv = _mm256_set1_ps(s > 0 ? 1.f / s : 0.f);
        __m256i i32[4];
        for (int k = 0; k < 4; ++k)
            i32[k] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[k], inv), lo), hi));
        const __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]), p16b = _mm256_packs_epi32(i32[2], i32[3]);
        const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), order);
        _mm256_storeu_si256((__m256i*)(q + b * kQ8Block), p8);
    }
    if (full * kQ8Block < in)
        quantize_q8_row_ref(q + full * kQ8Block, scales + full, w + full * kQ8Block, in - full * kQ8Block);
}

}  // namespace

void quantize_q8_row(int8_t* q, float* scales, const float* w, int64_t in) {
    if (active_isa() >= Isa::avx2) quantize_q8_row_avx2(q, scales, w, in);
    else quantize_q8_row_ref(q, scales, w, in);
}

void QActs::build(const float* x, int64_t n, int64_t i) {
    N = n, in = i, rows_amx = rows_block = rows_tiles = false;
    const int64_t nb = blocks();
    if ((int64_t)q.size() < N * in) q.resize(N * in);
    if ((int64_t)scales.size() < N * nb) scales.resize(N * nb);
    for (int64_t r = 0; r < N; ++r) quantize_q8_row(q.data() + r * in, scales.data() + r * nb, x + r * in, in);
}

bool q8_vnni_active() {
    const CpuFeatures& f = cpu_features();
    return active_isa() >= Isa::avx512 && f.avx512_vnni && f.avx512bw && f.avx512vl && f.avx512dq;
}

bool q8_rows_amx_active(int64_t in) { return in % kQ8Block == 0 && in > 0 && amx::int8_active(); }

void QActs::build_amx() {
    const int64_t G = (N + 15) / 16, nb = in / kQ8Block;
    if ((int64_t)amx_qu.size() < G * nb * 512) amx_qu.resize(G * nb * 512);
    if ((int64_t)amx_s16.size() < G * nb * 16) amx_s16.resize(G * nb * 16);
    detail::q8_rows_acts_amx(q.data(), scales.data(), N, in, amx_qu.data(), amx_s16.data());
    rows_amx = true;
}

bool q8_rows_block_active(int64_t in) {
    return in % kQ8Block == 0 && in > 0 && in <= INT32_MAX / 16 && !amx::int8_active() && q8_vnni_active() &&
           ggml_matmul_tiles_active(GType::q8_0);
}

void QActs::build_block() {
    if (N >= 3) {  // the tiles from three rows; one or two take the row kernel on q, scales
        build_tiles();
        MOE_ASSERT(rows_tiles);  // q8_rows_block_active() implies the tile kernels
    }
    rows_block = true;
}

void QActs::build_tiles() {
    if (rows_tiles || !tiled_kernels_active()) return;  // (without them the twin reads q, scales)
    const int64_t G = (N + 3) / 4, nb = in / kQ8Block;
    if ((int64_t)tile_xp.size() < G * nb * 128) tile_xp.resize(G * nb * 128);
    if ((int64_t)tile_xs.size() < G * nb * 4) tile_xs.resize(G * nb * 4), tile_am.resize(G * nb * 4), tile_xo.resize(G * nb * 4);
    detail::pack_tile_acts_q8(q.data(), scales.data(), N, in, 0, G, tile_xp.data(), tile_xs.data(), tile_am.data(),
                              tile_xo.data());
    rows_tiles = true;
}

// ---- moe's int8 repacked into tiles (qmatmul.h)

bool can_repack(const QMatrix& m) {
    const bool type = m.type == WType::q8_0 || m.type == WType::q4_0 || m.type == WType::q4_k ||
                      (m.type == WType::q8 && m.in % kQ8Block == 0);
    return type && m.out > 0 && !m.tiled && !m.parts;
}
bool repacks_type(WType t) {
    // the same four types on both kinds of host with tile kernels
    const bool type = t == WType::q4_k || t == WType::q4_0 || t == WType::q8_0 || t == WType::q8;
    return repack_enabled() && type && (q8_0_tiled_active() || avx2_tiles_active());
}
bool repack_for_host(const QMatrix& m) { return can_repack(m) && repacks_type(m.type); }
int64_t q8_tiled_row_bytes(int64_t in) { return in / kQ8Block * (kQ8Block + 4); }
int64_t q8_tiled_bytes(int64_t out, int64_t in) {
    return (out + kTiledRows - 1) / kTiledRows * kTiledRows * q8_tiled_row_bytes(in);
}

void q8_repack_tiled_ref(const int8_t* q, const float* scales, int64_t out, int64_t in, uint8_t* dst) {
    MOE_ASSERT(in % kQ8Block == 0);
    const int64_t nsb = in / kQ8Block, tiles = (out + kTiledRows - 1) / kTiledRows;
    for (int64_t t = 0; t < tiles; ++t)
        for (int64_t b = 0; b < nsb; ++b) {
            uint8_t* tb = dst + (t * nsb + b) * kTiledBlockBytesI8;
            float* sc = reinterpret_cast<float*>(tb + 1024);
            for (int r = 0; r < kTiledRows; ++r) {
                const int64_t o = t * kTiledRows + r;
                sc[r] = o < out ? scales[o * nsb + b] : 0.f;
                for (int i = 0; i < kQ8Block; ++i)
                    tb[(i / 4) * 128 + 4 * r + i % 4] = o < out ? (uint8_t)(q[o * in + b * kQ8Block + i] + 128) : 0;
            }
        }
}

void q8_repack_tiled(const int8_t* q, const float* scales, int64_t out, int64_t in, uint8_t* dst) {
    MOE_ASSERT(in % kQ8Block == 0);
    if (!tiled_kernels_active() && !avx2_tiles_active()) return q8_repack_tiled_ref(q, scales, out, in, dst);
    const int64_t tiles = (out + kTiledRows - 1) / kTiledRows, bytes = detail::tile_scratch_bytes(in);
    parallel_for(0, tiles, 4, [&](int64_t t0, int64_t t1) {
        detail::q8_repack_tiles_vnni(q, scales, out, in, t0, t1, dst, thread_scratch(bytes));
    });
}

// the block b of row r of a tiled int8 matrix: its values u (q + 128) at u[(i / 4) * 128 + i % 4]
static const uint8_t* q8_tiled_block(const uint8_t* tiled, int64_t nsb, int64_t r, int64_t b, float* scale) {
    const uint8_t* tb = tiled + ((r / kTiledRows) * nsb + b) * kTiledBlockBytesI8;
    *scale = reinterpret_cast<const float*>(tb + 1024)[r % kTiledRows];
    return tb + 4 * (r % kTiledRows);
}
static int8_t q8_tiled_value(const uint8_t* u, int i) { return (int8_t)((int)u[(i / 4) * 128 + i % 4] - 128); }

void q8_tiled_rows_ref(float* y, int64_t ys, const int8_t* q, const float* qs, int64_t N, int64_t in,
                       const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate) {
    const int64_t nsb = in / kQ8Block;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = o0; o < o1; ++o) {
            float acc = accumulate ? y[n * ys + o] : 0.f;
            for (int64_t b = 0; b < nsb; ++b) {
                float ws;
                const uint8_t* u = q8_tiled_block(tiled, nsb, o, b, &ws);
                int32_t isum = 0;
                for (int i = 0; i < kQ8Block; ++i) isum += (int32_t)q8_tiled_value(u, i) * (int32_t)q[n * in + b * kQ8Block + i];
                acc = std::fma((float)isum, ws * qs[n * nsb + b], acc);
            }
            y[n * ys + o] = acc;
        }
}

// y rows [o0, o1) of a repacked int8 matrix: the VNNI tiles (qa.build_tiles() done) or the twin
static void q8_tiled_rows(float* y, int64_t ys, const QActs& qa, const QMatrix& w, int64_t N, int64_t o0, int64_t o1,
                          bool accumulate) {
    if (qa.rows_tiles && tiled_kernels_active()) {
        detail::TileActs xa;
        xa.xp = qa.tile_xp.data(), xa.xs = qa.tile_xs.data(), xa.am = qa.tile_am.data(), xa.xo = qa.tile_xo.data();
        detail::tiled_rows_vnni(detail::TiledKind::int8, y, ys, xa, w.raw, N, w.in, o0, o1, accumulate);
        return;
    }
    if (avx2_tiles_active()) {  // AVX2 hosts (ggml_quants.h)
        detail::q8_tiled_rows_avx2(y, ys, qa.q.data(), qa.scales.data(), N, w.in, w.raw, o0, o1, accumulate);
        return;
    }
    q8_tiled_rows_ref(y, ys, qa.q.data(), qa.scales.data(), N, w.in, w.raw, o0, o1, accumulate);
}

// int8 rows [o0, o1) of y (N, ys) in the block order on VNNI (QActs::build_block)
static void q8_rows_block(float* y, int64_t ys, const QActs& qa, const QMatrix& w, int64_t N, int64_t o0, int64_t o1,
                          bool accumulate) {
    if (N <= 2) {  // one or two rows: the row kernel (the tiles' unpacking costs more than it serves)
        detail::q8_row_block_vnni(y, ys, qa.q.data(), qa.scales.data(), (int)N, w.in, w.q, w.scales, o0, o1, accumulate);
        return;
    }
    uint8_t* s = thread_scratch(detail::tile_scratch_bytes(w.in));  // this thread's tile
    detail::TileActs xa;
    xa.xp = qa.tile_xp.data(), xa.xs = qa.tile_xs.data(), xa.am = qa.tile_am.data(), xa.xo = qa.tile_xo.data();
    detail::prefill_tiles_q8_vnni(y, ys, xa, w.q, w.scales, N, w.in, o0, o1, accumulate, s);
}

void QActs::build_vnni() {
    const int64_t nb = blocks(), pairs = in / (2 * kQ8Block);
    if ((int64_t)qu.size() < N * in) qu.resize(N * in);
    if ((int64_t)scales16.size() < N * pairs * 16) scales16.resize(N * pairs * 16);
    for (int64_t i = 0; i < N * in; ++i) qu[i] = (uint8_t)((int)q[i] + 128);
    for (int64_t r = 0; r < N; ++r)
        for (int64_t p = 0; p < pairs; ++p)
            for (int l = 0; l < 16; ++l) scales16[(r * pairs + p) * 16 + l] = scales[r * nb + 2 * p + l / 8];
}

// ggml rows need IN a multiple of the block: a user error (a model's width), not a bug
static int64_t ggml_row_bytes_checked(WType t, int64_t in) {
    const GType g = ggml_type(t);
    if (in % gtype_block(g) != 0)
        fail("weight type ", wtype_name(t), " needs rows of a multiple of ", gtype_block(g), " values, got ", in);
    return gtype_row_bytes(g, in);
}

void QStore::build(WType t, const float* w, int64_t o, int64_t i) {
    if (is_ggml(t)) {
        allocate(t, o, i);
        set_rows(0, o, w);
        return;
    }
    type = t, out = o, in = i, f32 = nullptr, tiled = false;
    bf16.clear(), q.clear(), scales.clear(), raw.clear();
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

void QStore::allocate(WType t, int64_t o, int64_t i) {
    MOE_ASSERT(t != WType::f32);  // fp32 weights are views of a model's own buffer
    type = t, out = o, in = i, f32 = nullptr, tiled = false;
    bf16.clear(), q.clear(), scales.clear(), raw.clear();
    if (is_ggml(t)) {
        raw.resize(o * ggml_row_bytes_checked(t, i));
    } else if (t == WType::bf16) {
        bf16.resize(o * i);
    } else {
        q.resize(o * i);
        scales.resize(o * ((i + kQ8Block - 1) / kQ8Block));
    }
}

void QStore::set_rows(int64_t r0, int64_t n, const float* w) {
    MOE_ASSERT(type != WType::f32 && r0 >= 0 && r0 + n <= out);
    const int64_t i = in;
    if (is_ggml(type)) {
        const GType g = ggml_type(type);
        const int64_t rb = gtype_row_bytes(g, i);
        parallel_for(0, n, 16, [&](int64_t a, int64_t b) {
            for (int64_t r = a; r < b; ++r) quantize_row(g, w + r * i, raw.data() + (r0 + r) * rb, i);
        });
    } else if (type == WType::bf16) {
        parallel_for(0, n, 64, [&](int64_t a, int64_t b) {
            f32_to_bf16_n(bf16.data() + (r0 + a) * i, w + a * i, (b - a) * i);
        });
    } else {
        const int64_t nb = (i + kQ8Block - 1) / kQ8Block;
        parallel_for(0, n, 64, [&](int64_t a, int64_t b) {
            for (int64_t r = a; r < b; ++r)
                quantize_q8_row(q.data() + (r0 + r) * i, scales.data() + (r0 + r) * nb, w + r * i, i);
        });
    }
}

void QStore::build_tiled(const QMatrix& m) {
    MOE_ASSERT(can_repack(m));
    std::vector<uint8_t, LargeAllocator<uint8_t>> t;
    if (m.type == WType::q8_0) {  // m's memory may be this store's own: the copy first
        MOE_ASSERT(m.raw);
        t.resize(q8_0_tiled_bytes(m.out, m.in));
        q8_0_repack_tiled(m.raw, m.row_bytes, m.out, m.in, t.data());
    } else if (m.type == WType::q4_0) {
        MOE_ASSERT(m.raw);
        t.resize((m.out + kTiledRows - 1) / kTiledRows * kTiledRows * m.row_bytes);  // the same bytes a row
        q4_0_repack_tiled(m.raw, m.row_bytes, m.out, m.in, t.data());
    } else if (m.type == WType::q4_k) {
        MOE_ASSERT(m.raw);
        t.resize(q4_k_tiled_bytes(m.out, m.in));
        q4_k_repack_tiled(m.raw, m.row_bytes, m.out, m.in, t.data());
    } else {
        MOE_ASSERT(m.q && m.scales);
        t.resize(q8_tiled_bytes(m.out, m.in));
        q8_repack_tiled(m.q, m.scales, m.out, m.in, t.data());
    }
    type = m.type, out = m.out, in = m.in, f32 = nullptr, tiled = true;
    bf16.clear(), q.clear(), scales.clear();
    raw.swap(t);
}

QMatrix QStore::view() const {
    QMatrix m;
    m.type = type, m.out = out, m.in = in;
    m.f32 = f32;
    m.bf16 = bf16.empty() ? nullptr : bf16.data();
    m.q = q.empty() ? nullptr : q.data();
    m.scales = scales.empty() ? nullptr : scales.data();
    m.raw = raw.empty() ? nullptr : raw.data();
    m.row_bytes = is_ggml(type) ? gtype_row_bytes(ggml_type(type), in) : 0;
    if (tiled && type == WType::q8) m.row_bytes = q8_tiled_row_bytes(in);
    if (tiled && type == WType::q4_k) m.row_bytes = q4_k_tiled_row_bytes(in);
    m.tiled = tiled;
    return m;
}

namespace {

// dst (IN) = scale of the block * q: an int8 row back to fp32 (weights, and activations rounded to
// their int8 grid for the prefill GEMM); per block a constant scale, so the loop vectorizes
void dequantize_q8_row(float* dst, const int8_t* q, const float* scales, int64_t in) {
    for (int64_t b = 0; b * kQ8Block < in; ++b) {
        const float sc = scales[b];
        const int64_t i1 = std::min(in, (b + 1) * kQ8Block);
        for (int64_t i = b * kQ8Block; i < i1; ++i) dst[i] = sc * (float)q[i];
    }
}

// sum of a[i] * b[i] over one block (n <= 32 values), exact in int32
inline int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t n) {
    int32_t s = 0;
    for (int64_t i = 0; i < n; ++i) s += (int32_t)a[i] * (int32_t)b[i];
    return s;
}

// block b of row o of w times block b of row n of qa: the integer sum, with its length
inline int32_t q8_block_isum(const QMatrix& w, int64_t o, const QActs& qa, int64_t n, int64_t b) {
    const int64_t i0 = b * kQ8Block, len = std::min(w.in, i0 + kQ8Block) - i0;
    if (w.tiled) {  // (the reference twins only)
        float ws;
        const uint8_t* u = q8_tiled_block(w.raw, w.blocks(), o, b, &ws);
        int32_t s = 0;
        for (int i = 0; i < kQ8Block; ++i) s += (int32_t)q8_tiled_value(u, i) * (int32_t)qa.q[n * w.in + i0 + i];
        return s;
    }
    return dot_i8(w.q + o * w.in + i0, qa.q.data() + n * w.in + i0, len);
}

inline float q8_block_scale(const QMatrix& w, int64_t o, const QActs& qa, int64_t n, int64_t b) {
    if (w.tiled) {
        float ws;
        q8_tiled_block(w.raw, w.blocks(), o, b, &ws);
        return ws * qa.scales[n * qa.blocks() + b];
    }
    return w.scales[o * w.blocks() + b] * qa.scales[n * qa.blocks() + b];
}

}  // namespace

// dequantize_q8_row's AVX2 twin (the same products, so the same bits): 8 int8 at a time,
// sign-extended, converted and scaled
__attribute__((target("avx2,fma"))) static void dequantize_q8_row_avx2(float* dst, const int8_t* q,
                                                                       const float* scales, int64_t in) {
    int64_t i = 0;
    for (; i + kQ8Block <= in; i += kQ8Block) {
        const __m256 sc = _mm256_set1_ps(scales[i / kQ8Block]);
        for (int64_t j = 0; j < kQ8Block; j += 8) {
            const __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + i + j)));
            _mm256_storeu_ps(dst + i + j, _mm256_mul_ps(sc, _mm256_cvtepi32_ps(v)));
        }
    }
    if (i < in) dequantize_q8_row(dst + i, q + i, scales + i / kQ8Block, in - i);
}

// n f16 values to fp32: vcvtph2ps where the CPU has F16C, else fp16_to_fp32 (both exact; they
// differ only on signalling NaNs, which F16C quiets)
__attribute__((target("avx2,f16c"))) static void f16_to_f32_f16c(float* dst, const uint16_t* h, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
    for (; i < n; ++i) dst[i] = fp16_to_fp32(h[i]);
}

static void f16_to_f32_n(float* dst, const uint16_t* h, int64_t n) {
    if (active_isa() >= Isa::avx2 && cpu_features().f16c) f16_to_f32_f16c(dst, h, n);
    else
        for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(h[i]);
}

// dequantize_q8_row, or its AVX2 twin where the CPU runs it (the same bits either way)
static void dequantize_q8_n(float* dst, const int8_t* q, const float* scales, int64_t in) {
    if (active_isa() >= Isa::avx2) dequantize_q8_row_avx2(dst, q, scales, in);
    else dequantize_q8_row(dst, q, scales, in);
}

// Entries [k0, k0 + kc) of row r of w as fp32 (k0 a multiple of kQ8Block, so it starts an int8
// block): the whole row for dequantize_row, a k slice for the packed GEMM's row loader
static void dequantize_row_slice(float* dst, const QMatrix& w, int64_t r, int64_t k0, int64_t kc) {
    const int64_t at = r * w.in + k0;
    switch (w.type) {
        case WType::f32:
            std::copy(w.f32 + at, w.f32 + at + kc, dst);
            break;
        case WType::bf16:
            bf16_to_f32_n(dst, w.bf16 + at, kc);
            break;
        case WType::q8:
            if (w.tiled) {
                for (int64_t b = k0 / kQ8Block; b < (k0 + kc) / kQ8Block; ++b) {
                    float ws;
                    const uint8_t* u = q8_tiled_block(w.raw, w.blocks(), r, b, &ws);
                    for (int i = 0; i < kQ8Block; ++i) dst[(b - k0 / kQ8Block) * kQ8Block + i] = ws * (float)q8_tiled_value(u, i);
                }
                break;
            }
            dequantize_q8_n(dst, w.q + at, w.scales + r * w.blocks() + k0 / kQ8Block, kc);
            break;
        case WType::f16:
            f16_to_f32_n(dst, reinterpret_cast<const uint16_t*>(w.raw + r * w.row_bytes) + k0, kc);
            break;
        default: {  // k0 starts a block (a multiple of 256 or 0)
            if (w.tiled && w.type == WType::q8_0) {
                q8_0_tiled_dequantize_row(w.raw, w.in, r, k0, kc, dst);
                break;
            }
            if (w.tiled && w.type == WType::q4_0) {
                q4_0_tiled_dequantize_row(w.raw, w.in, r, k0, kc, dst);
                break;
            }
            if (w.tiled) {
                q4_k_tiled_dequantize_row(w.raw, w.in, r, k0, kc, dst);
                break;
            }
            const GType g = ggml_type(w.type);
            MOE_ASSERT(k0 % gtype_block(g) == 0 && kc % gtype_block(g) == 0);
            dequantize_row(g, w.raw + r * w.row_bytes + k0 / gtype_block(g) * gtype_block_bytes(g), dst, kc);
            break;
        }
    }
}

// the packed GEMM's row loader: its k slices start at multiples of 256, so at int8 blocks
static_assert(256 % kQ8Block == 0);
static void load_row_slice(const void* ctx, int64_t r, int64_t k0, int64_t kc, float* dst) {
    dequantize_row_slice(dst, *static_cast<const QMatrix*>(ctx), r, k0, kc);
}

void dequantize_row(float* dst, const QMatrix& w, int64_t r) {
    if (w.parts) return dequantize_row(dst, w.rows(r, 1), 0);
    dequantize_row_slice(dst, w, r, 0, w.in);
}

// int8: the blocked integer definition of the header (x quantized like the weights)
namespace {
double q8_dot_ref(const QMatrix& w, int64_t o, const QActs& qa, int64_t n) {
    double acc = 0;
    for (int64_t b = 0; b < w.blocks(); ++b)
        acc += (double)q8_block_scale(w, o, qa, n, b) * (double)q8_block_isum(w, o, qa, n, b);
    return acc;
}
}  // namespace

// ggml types: x rounded to the activation type's grid (q8_0 / q8_k blocks, by the scalar quantizer),
// then double sums over dequantized values
static void qmatmul_ref_ggml(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate) {
    const GType g = ggml_type(w.type), at = gtype_act(g);
    std::vector<float> xr(N * w.in), row(w.in);
    std::vector<uint8_t> qx(gtype_row_bytes(at, w.in));
    for (int64_t n = 0; n < N; ++n) {
        quantize_row(at, x + n * w.in, qx.data(), w.in);
        dequantize_row(at, qx.data(), xr.data() + n * w.in, w.in);
    }
    for (int64_t o = 0; o < w.out; ++o) {
        dequantize_row(row.data(), w, o);
        for (int64_t n = 0; n < N; ++n) {
            double acc = 0;
            for (int64_t i = 0; i < w.in; ++i) acc += (double)xr[n * w.in + i] * row[i];
            y[n * w.out + o] = (float)(accumulate ? y[n * w.out + o] + acc : acc);
        }
    }
}

void qmatmul_ref(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate) {
    if (is_ggml(w.type)) return qmatmul_ref_ggml(y, x, w, N, accumulate);
    QActs qa;
    if (w.type == WType::q8) qa.build(x, N, w.in);
    std::vector<float> row(w.in);
    for (int64_t o = 0; o < w.out; ++o) {
        dequantize_row(row.data(), w, o);
        for (int64_t n = 0; n < N; ++n) {
            double acc = 0;
            if (w.type == WType::q8) acc = q8_dot_ref(w, o, qa, n);
            else
                for (int64_t i = 0; i < w.in; ++i) acc += (double)x[n * w.in + i] * row[i];
            y[n * w.out + o] = (float)(accumulate ? y[n * w.out + o] + acc : acc);
        }
    }
}

namespace {

// row o of f16 weights (ggml rows: row_bytes apart, 2 * IN bytes each)
inline const uint16_t* f16_row(const QMatrix& w, int64_t o) {
    return reinterpret_cast<const uint16_t*>(w.raw + o * w.row_bytes);
}

// weight (o, i) as fp32, one at a time (tails and the reference twin)
inline float weight_at(const QMatrix& w, int64_t o, int64_t i) {
    switch (w.type) {
        case WType::f32: return w.f32[o * w.in + i];
        case WType::bf16: return bf16_to_f32(w.bf16[o * w.in + i]);
        case WType::q8:
            if (w.tiled) {
                float ws;
                const uint8_t* u = q8_tiled_block(w.raw, w.blocks(), o, i / kQ8Block, &ws);
                return ws * (float)q8_tiled_value(u, (int)(i % kQ8Block));
            }
            return w.scales[o * w.blocks() + i / kQ8Block] * (float)w.q[o * w.in + i];
        case WType::f16: return fp16_to_fp32(f16_row(w, o)[i]);  // exact
        default: MOE_ASSERT(false && "ggml types take their own path");
    }
    return 0.f;
}

constexpr int64_t kMaxRows = 2;    // x rows per pass of the fp32 / bf16 GEMV kernel (4 accumulators each)
constexpr int64_t kMaxRowsQ8 = 4;  // int8, AVX2 (2 accumulators each)
constexpr int64_t kMaxRowsVnni = 8;  // int8, AVX-512 VNNI (1 accumulator each)
// Several groups of x rows: output rows in tiles of this many, every group per tile, so a weight
// row comes from memory once and from L1 for the other groups (8 rows of 1024 fp32: 32 KB).
constexpr int64_t kOTile = 8;

// 8 weights of row r at column i, as fp32 (the type is a template argument: no branch per load)
template <WType TY>
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const QMatrix& w, int64_t r, int64_t i) {
    if constexpr (TY == WType::f32) {
        return _mm256_loadu_ps(w.f32 + r * w.in + i);
    } else if constexpr (TY == WType::f16) {  // vcvtph2ps: exact, the values of an fp32 copy
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(f16_row(w, r) + i)));
    } else {
        const __m128i h = _mm_loadu_si128((const __m128i*)(w.bf16 + r * w.in + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
}

// fp32 / bf16 / f16 weights: y[n, o] for o in [o0, o1), n in [n0, n0 + NR): the weight row is read
// once for the NR rows (f16 and bf16 widened to fp32 in registers, exactly). Four independent accumulators per x row (one per 8-lane quarter of a 32-block)
// keep the FMA pipes busy instead of waiting on one dependency chain; type and NR are compile-time
// so the accumulators stay in registers. A tail (IN not a multiple of 32) goes scalar.
template <WType TY, int NR>
__attribute__((target("avx2,fma,f16c"))) void gemv_rows_avx2(float* y, const float* x, const QMatrix& w, int64_t n0,
                                                        int64_t o0, int64_t o1, bool accumulate) {
    const int64_t in = w.in, full = (in / kQ8Block) * kQ8Block;
    for (int64_t o = o0; o < o1; ++o) {
        __m256 acc[NR][4];
        for (int j = 0; j < NR; ++j)
            for (int k = 0; k < 4; ++k) acc[j][k] = _mm256_setzero_ps();
        // the weight stream prefetched 1 KB ahead (into the next row at a row's end; a prefetch past
        // the matrix never faults): one core's hardware prefetcher alone leaves decode at ~0.57 of
        // the read bandwidth on the Xeon host
        const char* wrow = TY == WType::f32    ? reinterpret_cast<const char*>(w.f32 + o * in)
                           : TY == WType::f16 ? reinterpret_cast<const char*>(f16_row(w, o))
                                              : reinterpret_cast<const char*>(w.bf16 + o * in);
        constexpr int64_t kBytes = TY == WType::f32 ? 4 : 2, kAhead = 4096;
        for (int64_t i = 0; i < full; i += kQ8Block) {
            _mm_prefetch(wrow + i * kBytes + kAhead, _MM_HINT_T0);
            if constexpr (kBytes == 4) _mm_prefetch(wrow + i * kBytes + kAhead + 64, _MM_HINT_T0);
            const __m256 w0 = load8<TY>(w, o, i), w1 = load8<TY>(w, o, i + 8), w2 = load8<TY>(w, o, i + 16),
                         w3 = load8<TY>(w, o, i + 24);
            for (int j = 0; j < NR; ++j) {
                const float* xr = x + (n0 + j) * in + i;
                acc[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc[j][0]);
                acc[j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), acc[j][1]);
                acc[j][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), acc[j][2]);
                acc[j][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), acc[j][3]);
            }
        }
        for (int j = 0; j < NR; ++j) {
            float s = hsum8(_mm256_add_ps(_mm256_add_ps(acc[j][0], acc[j][1]), _mm256_add_ps(acc[j][2], acc[j][3])));
            const float* xr = x + (n0 + j) * in;
            for (int64_t i = full; i < in; ++i) s += weight_at(w, o, i) * xr[i];  // tail
            float& dst = y[(n0 + j) * w.out + o];
            dst = accumulate ? dst + s : s;
        }
    }
}

// Tail block of an int8 row (IN not a multiple of 32): the integer definition, scalar.
inline float q8_tail(const QMatrix& w, int64_t o, const QActs& qa, int64_t n) {
    const int64_t b = w.blocks() - 1;
    if ((b + 1) * kQ8Block <= w.in) return 0.f;
    return q8_block_scale(w, o, qa, n, b) * (float)q8_block_isum(w, o, qa, n, b);
}

// int8 weights x int8 activations, NR rows of x per pass. Per block of 32: |w| (unsigned) times
// x with w's sign (signed) in 8-bit multiplies summed in pairs (vpmaddubsw: at most 2 * 127 * 127,
// no saturation since both sides are clamped to [-127, 127]), pairs summed to int32 (vpmaddwd),
// converted and scaled by sw * sx in one FMA. Two accumulators per row (even / odd blocks).
template <int NR>
__attribute__((target("avx2,fma"))) void gemv_q8_avx2(float* y, const QActs& qa, const QMatrix& w, int64_t n0,
                                                      int64_t o0, int64_t o1, bool accumulate) {
    const int64_t in = w.in, nb = w.blocks(), full = in / kQ8Block;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t o = o0; o < o1; ++o) {
        const int8_t* wr = w.q + o * in;
        const float* ws = w.scales + o * nb;
        __m256 acc[NR][2];
        for (int j = 0; j < NR; ++j) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
        for (int64_t b = 0; b < full; ++b) {
            if ((b & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(wr + b * kQ8Block) + 4096, _MM_HINT_T0);
            const __m256i wv = _mm256_loadu_si256((const __m256i*)(wr + b * kQ8Block));
            const __m256i aw = _mm256_sign_epi8(wv, wv);  // |w|
            for (int j = 0; j < NR; ++j) {
                const int64_t n = n0 + j;
                const __m256i xv = _mm256_loadu_si256((const __m256i*)(qa.q.data() + n * in + b * kQ8Block));
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
                const __m256 sc = _mm256_set1_ps(ws[b] * qa.scales[n * nb + b]);
                acc[j][b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[j][b & 1]);
            }
        }
        for (int j = 0; j < NR; ++j) {
            float s = hsum8(_mm256_add_ps(acc[j][0], acc[j][1]));
            s += q8_tail(w, o, qa, n0 + j);
            float& dst = y[(n0 + j) * w.out + o];
            dst = accumulate ? dst + s : s;
        }
    }
}

// gemv_q8_avx2's AVX-512 VNNI form, bit for bit the same result: each 64-byte step holds an even
// block (low 8 lanes) and the odd block after it (high 8 lanes), the accumulators of gemv_q8_avx2's
// even and odd blocks side by side. vpdpbusd multiplies unsigned by signed bytes, so x comes as
// x + 128 (QActs::qu) and the accumulator starts at -128 * (sum of w over the lane's 4 bytes): each
// lane's int32 is the same exact sum of 4 products as vpmaddubsw + vpmaddwd give. The scale
// products sw * sx are the same fp32 multiplies, so the FMAs see the same operands in the same order.
// An odd last block goes to the low half alone (masked), as gemv_q8_avx2 adds it to the even
// accumulator. One vpdpbusd per 64 bytes and row instead of four instructions per 32.
template <int NR>
__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))) void gemv_q8_vnni(
    float* y, const QActs& qa, const QMatrix& w, int64_t n0, int64_t o0, int64_t o1, bool accumulate) {
    const int64_t in = w.in, nb = w.blocks(), full = in / kQ8Block, pairs = full / 2;
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for (int64_t o = o0; o < o1; ++o) {
        const int8_t* wr = w.q + o * in;
        const float* ws = w.scales + o * nb;
        __m512 acc[NR];
        for (int j = 0; j < NR; ++j) acc[j] = _mm512_setzero_ps();
        for (int64_t p = 0; p < pairs; ++p) {
            _mm_prefetch(reinterpret_cast<const char*>(wr + p * 64) + 4096, _MM_HINT_T0);
            const __m512i wv = _mm512_loadu_si512(wr + p * 64);
            const __m512i corr = _mm512_sub_epi32(_mm512_setzero_si512(),
                                                  _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, wv));
            const __m512 wsv = _mm512_permutexvar_ps(
                spread, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i_u*>(ws + 2 * p)))));
            for (int j = 0; j < NR; ++j) {
                const int64_t n = n0 + j;
                const __m512i is = _mm512_dpbusd_epi32(corr, _mm512_loadu_si512(qa.qu.data() + n * in + p * 64), wv);
                const __m512 sc = _mm512_mul_ps(wsv, _mm512_loadu_ps(qa.scales16.data() + (n * pairs + p) * 16));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), sc, acc[j]);
            }
        }
        if (full & 1) {  // the last full block is even: the low half alone
            const int64_t b = full - 1;
            const __m512i wv = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(wr + b * kQ8Block)));
            const __m512i corr = _mm512_sub_epi32(_mm512_setzero_si512(),
                                                  _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, wv));
            for (int j = 0; j < NR; ++j) {
                const int64_t n = n0 + j;
                const __m512i xv =
                    _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(qa.qu.data() + n * in + b * kQ8Block)));
                const __m512i is = _mm512_dpbusd_epi32(corr, xv, wv);
                const __m512 sc = _mm512_set1_ps(ws[b] * qa.scales[n * nb + b]);
                acc[j] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(is), sc, acc[j], 0x00ff);  // high lanes kept
            }
        }
        for (int j = 0; j < NR; ++j) {
            float s = hsum8(_mm256_add_ps(_mm512_castps512_ps256(acc[j]), _mm512_extractf32x8_ps(acc[j], 1)));
            s += q8_tail(w, o, qa, n0 + j);
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

void gemv_rows_avx2_any(float* y, const float* x, const QActs& qa, const QMatrix& w, int64_t n0, int64_t nr,
                        int64_t o0, int64_t o1, bool accumulate) {
    switch (w.type) {
        case WType::f32: gemv_avx2<WType::f32>(y, x, w, n0, nr, o0, o1, accumulate); break;
        case WType::bf16: gemv_avx2<WType::bf16>(y, x, w, n0, nr, o0, o1, accumulate); break;
        case WType::f16: gemv_avx2<WType::f16>(y, x, w, n0, nr, o0, o1, accumulate); break;
        case WType::q8:
            switch (nr) {
                case 4: gemv_q8_avx2<4>(y, qa, w, n0, o0, o1, accumulate); break;
                case 3: gemv_q8_avx2<3>(y, qa, w, n0, o0, o1, accumulate); break;
                case 2: gemv_q8_avx2<2>(y, qa, w, n0, o0, o1, accumulate); break;
                default: gemv_q8_avx2<1>(y, qa, w, n0, o0, o1, accumulate); break;
            }
            break;
        default: MOE_ASSERT(false && "ggml types take their own path");
    }
}

void gemv_rows_ref(float* y, const float* x, const QActs& qa, const QMatrix& w, int64_t n0, int64_t nr,
                   int64_t o0, int64_t o1, bool accumulate) {
    const int64_t in = w.in;
    for (int64_t o = o0; o < o1; ++o)
        for (int64_t j = 0; j < nr; ++j) {
            const int64_t n = n0 + j;
            float s = 0;
            if (w.type == WType::q8) {
                for (int64_t b = 0; b < w.blocks(); ++b)
                    s += q8_block_scale(w, o, qa, n, b) * (float)q8_block_isum(w, o, qa, n, b);
            } else {
                const float* xr = x + n * in;
                for (int64_t i = 0; i < in; ++i) s += weight_at(w, o, i) * xr[i];
            }
            float& dst = y[n * w.out + o];
            dst = accumulate ? dst + s : s;
        }
}

// Output rows [o0, o1) of x rows [nb, ne) of a decode-sized product on the calling thread; qa: x
// quantized (int8 w). Each row's arithmetic is the same whatever nb, ne and its neighbours.
void qmatmul_rows(float* y, const float* x, const QActs& qa, const QMatrix& w, int64_t nb, int64_t ne, int64_t o0,
                  int64_t o1, bool accumulate) {
    MOE_ASSERT(ne - nb <= std::max(kGemvMaxN, kInvariantRowBlock));
    MOE_ASSERT(w.type != WType::q8 || (qa.N >= ne && qa.in == w.in));
    const bool simd = active_isa() >= Isa::avx2 && (w.type != WType::f16 || cpu_features().f16c);
    if (!simd) {
        gemv_rows_ref(y, x, qa, w, nb, ne - nb, o0, o1, accumulate);
        return;
    }
    const bool vnni = w.type == WType::q8 && q8_vnni_active();
    const int64_t group = vnni ? kMaxRowsVnni : w.type == WType::q8 ? kMaxRowsQ8 : kMaxRows;
    // one group: the kernel streams [o0, o1) once; several: tiles of output rows, every group per tile
    const int64_t tile = ne - nb <= group ? o1 - o0 : kOTile;
    for (int64_t t0 = o0; t0 < o1; t0 += tile) {
        const int64_t t1 = std::min(o1, t0 + tile);
        for (int64_t n0 = nb; n0 < ne; n0 += group) {
            const int64_t nr = std::min(group, ne - n0);
            if (!vnni) {
                gemv_rows_avx2_any(y, x, qa, w, n0, nr, t0, t1, accumulate);
                continue;
            }
            switch (nr) {
                case 8: gemv_q8_vnni<8>(y, qa, w, n0, t0, t1, accumulate); break;
                case 7: gemv_q8_vnni<7>(y, qa, w, n0, t0, t1, accumulate); break;
                case 6: gemv_q8_vnni<6>(y, qa, w, n0, t0, t1, accumulate); break;
                case 5: gemv_q8_vnni<5>(y, qa, w, n0, t0, t1, accumulate); break;
                case 4: gemv_q8_vnni<4>(y, qa, w, n0, t0, t1, accumulate); break;
                case 3: gemv_q8_vnni<3>(y, qa, w, n0, t0, t1, accumulate); break;
                case 2: gemv_q8_vnni<2>(y, qa, w, n0, t0, t1, accumulate); break;
                default: gemv_q8_vnni<1>(y, qa, w, n0, t0, t1, accumulate); break;
            }
        }
    }
}

}  // namespace

void qmatmul_same_x(const float* x, int64_t N, std::initializer_list<QOut> outs, bool accumulate) {
    MOE_ASSERT(gemv_path(N));
    int64_t total = 0;
    double bytes = 0;
    bool q8 = false, q8t = false, q8_0 = false, q8_0t = false, q4kt = false, q40t = false, q4_0 = false, act[3] = {false, false, false};  // ggml activations: q8_0, q8_k, f32
    for (const QOut& o : outs) {
        MOE_ASSERT(o.w.in == outs.begin()->w.in);
        total += o.w.out, bytes += o.w.bytes(), q8 = q8 || o.w.type == WType::q8;
        q8t = q8t || (o.w.type == WType::q8 && o.w.tiled);
        q8_0 = q8_0 || (o.w.type == WType::q8_0 && !o.w.tiled);  // the VNNI / AMX rows kernels
        q8_0t = q8_0t || (o.w.type == WType::q8_0 && o.w.tiled);  // the repacked tiles
        q4kt = q4kt || (o.w.type == WType::q4_k && o.w.tiled);
        q40t = q40t || (o.w.type == WType::q4_0 && o.w.tiled);
        q4_0 = q4_0 || (o.w.type == WType::q4_0 && !o.w.tiled);
        if (ggml_rows(o.w.type)) {
            const GType a = gtype_act(ggml_type(o.w.type));
            act[a == GType::q8_0 ? 0 : a == GType::q8_k ? 1 : 2] = true;
        }
    }
    if (N <= 0 || total == 0) return;
    const int64_t in = outs.begin()->w.in;
    thread_local QActs qa;  // int8: x quantized once for all the matrices
    if (q8) {
        qa.build(x, N, in);
        if (q8_rows_amx_active(in) && (N > 1 || batch_invariant())) qa.build_amx();  // the AMX rows for every matrix
        else if (batch_invariant() && q8_rows_block_active(in)) qa.build_block();   // the same order on VNNI
        else if (q8_vnni_active()) qa.build_vnni();
        if (q8t) qa.build_tiles();  // the repacked matrices' activations
    }
    thread_local GActs ga[3];  // the same for the ggml types' activation types
    if (act[0]) ga[0].build(GType::q8_0, x, N, in);
    if (q8_0) ga[0].prepare_rows_vnni();  // the Q8_0 multi-row kernels' layout (VNNI or AMX hosts)
    if (q8_0t) ga[0].prepare_tiled(128);  // (after prepare_rows_vnni, which resets it)
    if (q40t) ga[0].prepare_tiled(8);
    if (q4_0) ga[0].prepare_rows_q4_0();  // Q4_0's (VNNI hosts)
    if (act[1]) ga[1].build(GType::q8_k, x, N, in);
    if (q4kt) ga[1].prepare_tiled();
    if (act[2]) ga[2].build(GType::f32, x, N, in);
    const QActs* qx = &qa;  // this thread's copy (naming `qa` on a worker would mean the worker's)
    const GActs* gx = ga;
    // below kGemvParallelBytes of weights the call runs on this thread alone: a fork/join costs
    // more than the work, and a core busy with another process stalls every barrier
    // batch invariant with more rows: blocks of kInvariantRowBlock rows, the weights read once per
    // block (the ggml types' row dots give each row the same arithmetic whatever N: one pass over all)
    const int64_t block = N <= kGemvMaxN ? N : kInvariantRowBlock;
    const double work = bytes * (double)((N + block - 1) / block);
    parallel_for(0, total, work < kGemvParallelBytes ? total : 32, [&](int64_t r0, int64_t r1) {
        for (int64_t nb = 0; nb < N; nb += block) {
            const int64_t ne = std::min(N, nb + block);
            int64_t off = 0;  // rows [off, off + out) of the concatenation are matrix o's
            for (const QOut& o : outs) {
                const int64_t lo = std::max(r0, off), hi = std::min(r1, off + o.w.out);
                if (lo < hi && o.w.tiled) {  // all N rows, groups of 4 inside
                    if (nb == 0 && o.w.type == WType::q8) q8_tiled_rows(o.y, o.w.out, *qx, o.w, N, lo - off, hi - off, accumulate);
                    else if (nb == 0 && (o.w.type == WType::q8_0 || o.w.type == WType::q4_0))
                        ggml_matmul_rows_tiled(o.y, o.w.out, gx[0], ggml_type(o.w.type), o.w.raw, N, lo - off, hi - off,
                                               accumulate);
                    else if (nb == 0)
                        ggml_matmul_rows_tiled(o.y, o.w.out, gx[1], GType::q4_k, o.w.raw, N, lo - off, hi - off, accumulate);
                } else if (lo < hi && ggml_rows(o.w.type)) {
                    if (nb == 0) {
                        const GType g = ggml_type(o.w.type), a = gtype_act(g);
                        const GActs& acts = gx[a == GType::q8_0 ? 0 : a == GType::q8_k ? 1 : 2];
                        ggml_matmul_rows(o.y, o.w.out, acts, o.w.raw, g, o.w.row_bytes, N, lo - off, hi - off,
                                         accumulate);
                    }
                } else if (lo < hi && o.w.type == WType::q8 && qx->rows_amx) {
                    if (nb == 0)  // all N rows at once (groups of 16 inside)
                        detail::q8_rows_amx(o.y, o.w.out, qx->amx_qu.data(), qx->amx_s16.data(), in, o.w.q, o.w.scales, N,
                                            lo - off, hi - off, accumulate);
                } else if (lo < hi && o.w.type == WType::q8 && qx->rows_block) {
                    if (nb == 0) q8_rows_block(o.y, o.w.out, *qx, o.w, N, lo - off, hi - off, accumulate);
                } else if (lo < hi) {
                    qmatmul_rows(o.y, x, *qx, o.w, nb, ne, lo - off, hi - off, accumulate);
                }
                off += o.w.out;
            }
        }
    });
}

// int8 prefill on AMX: x quantized (the definition above), its groups of 16 rows packed for the A
// tiles, whole tiles of 32 output rows per thread
static void qmatmul_q8_amx(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate) {
    thread_local QActs qa;
    thread_local std::vector<int8_t> xp;
    thread_local std::vector<float> xsc;
    qa.build(x, N, w.in);
    const int64_t in = w.in, G = amx::groups(N);
    if ((int64_t)xp.size() < amx::acts_bytes(N, in, 32)) xp.resize(amx::acts_bytes(N, in, 32));
    if ((int64_t)xsc.size() < amx::acts_floats(N, in, 32)) xsc.resize(amx::acts_floats(N, in, 32));
    amx::Acts xa;
    xa.xp = xp.data(), xa.xs = xsc.data();
    const QActs* qx = &qa;  // this thread's copies, for the workers
    int8_t* xpd = xp.data();
    float* xsd = xsc.data();
    parallel_for(0, G, 2, [&](int64_t g0, int64_t g1) {
        amx::pack_acts_q8(qx->q.data(), qx->scales.data(), N, in, g0, g1, xpd, xsd);
    });
    const int64_t tiles = (w.out + 31) / 32, bytes = amx::scratch_bytes(in);
    parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
        uint8_t* s = thread_scratch(bytes);  // this thread's tile
        amx::prefill_q8(y, w.out, xa, w.q, w.scales, N, in, t0 * 32, std::min(w.out, t1 * 32), accumulate, s);
    });
}

// Decode: N <= kGemvMaxN rows use the streaming kernel. More rows use the packed GEMM, which
// converts W to fp32 slice by slice inside its packing; with the oneDNN backend, W is dequantized
// in blocks of output rows into thread-local scratch first.
void qmatmul(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate) {
    if (N <= 0 || w.out == 0) return;
    if (gemv_path(N)) {  // decode, or any N while batch invariant (kernels/batch_invariant.h)
        qmatmul_same_x(x, N, {{y, w}}, accumulate);
        return;
    }
    if (w.type == WType::f32 && N > kGemvMaxN) {
        gemm<float>(false, true, N, w.out, w.in, 1.f, x, w.in, w.f32, w.in, accumulate ? 1.f : 0.f, y, w.out);
        return;
    }
    if (N <= kGemvMaxN) {
        qmatmul_same_x(x, N, {{y, w}}, accumulate);
        return;
    }
    if (w.tiled && is_ggml(w.type)) {  // repacked Q8_0 / Q4_K: its tiles in place for every N
        thread_local GActs acts;
        ggml_matmul_tiled(y, x, ggml_type(w.type), w.raw, N, w.out, w.in, accumulate, acts);
        return;
    }
    if (w.tiled) {  // repacked int8 (the same tiles): threads take whole tiles
        thread_local QActs qa;
        qa.build(x, N, w.in);
        qa.build_tiles();
        const QActs* qx = &qa;  // this thread's copy, for the workers
        const int64_t tiles = (w.out + kTiledRows - 1) / kTiledRows;
        parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
            q8_tiled_rows(y, w.out, *qx, w, N, t0 * kTiledRows, std::min(w.out, t1 * kTiledRows), accumulate);
        });
        return;
    }
    if (ggml_rows(w.type) && !ggml_prefill_on_int8(ggml_type(w.type)) && gemm_backend() == GemmBackend::packed) {
        // prefill on a CPU without VNNI or AMX (AVX2 hosts such as Zen 3): x rounded to its
        // activation grid, then the packed fp32 GEMM dequantizing W inside its packing. There the
        // AVX2 row dots (vpmaddubsw + vpmaddwd, a scale product per block and row) reach 0.12-0.41
        // of the int8 peak, below the fp32 GEMM (bench/prefill_quant, Zen 3: q8_0 107.7 -> 167.9
        // GOP/s, q4_0 93.5 -> 168.2; docs/inference.md)
        qmatmul_ggml_dequant_gemm(y, x, w, N, accumulate);
        return;
    }
    if (ggml_rows(w.type)) {  // prefill: integer dots over tiles of weight rows (ggml_quants.cc)
        thread_local GActs acts;
        ggml_matmul(y, x, w.raw, ggml_type(w.type), w.row_bytes, N, w.out, w.in, accumulate, acts);
        return;
    }
    if (w.type == WType::q8 && w.q && w.in > 0 && amx::int8_active()) {  // AMX-INT8 tiles (amx_q8.cc)
        qmatmul_q8_amx(y, x, w, N, accumulate);
        return;
    }
    // prefill. int8: x rounded to its int8 grid (the definition above), as fp32 for the GEMM.
    // bf16 / f16: the packed GEMM widening W's rows inside its packing (fp32 FMA; f16 gives the bits
    // of the same GEMM on an fp32 copy of W: the widening is exact and the k order the same)
    thread_local std::vector<float> xs;
    if (w.type == WType::q8) {
        thread_local QActs qa;
        qa.build(x, N, w.in);
        if ((int64_t)xs.size() < N * w.in) xs.resize(N * w.in);
        const int64_t in = w.in, nb = qa.blocks();
        float* xd = xs.data();
        const QActs* qx = &qa;  // this thread's copy, for the workers
        parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
            for (int64_t n = n0; n < n1; ++n) dequantize_q8_n(xd + n * in, qx->q.data() + n * in, qx->scales.data() + n * nb, in);
        });
        x = xd;
    }
    if (gemm_backend() == GemmBackend::packed) {
        // W converted to fp32 slice by slice inside the GEMM's packing: no fp32 copy of W
        sgemm_packed_wrows(N, w.out, w.in, x, w.in, load_row_slice, &w, accumulate ? 1.f : 0.f, y, w.out);
        return;
    }
    // dequantize up to 32 MB of output rows at a time (a whole expert or attention matrix in one
    // go: fewer, larger GEMMs), GEMM each block (y columns o0..o1)
    thread_local std::vector<float> scratch;
    const int64_t blk = std::max<int64_t>(256, std::min<int64_t>(w.out, (int64_t(8) << 20) / std::max<int64_t>(1, w.in)));
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

namespace moe::kernels {

// The other prefill for ggml types, kept for the comparison in bench/prefill_quant: x rounded to
// its activation grid (as the integer kernels see it), then the packed fp32 GEMM with W's rows
// dequantized slice by slice inside its packing.
void qmatmul_ggml_dequant_gemm(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate) {
    MOE_ASSERT(is_ggml(w.type) && gemm_backend() == GemmBackend::packed);
    const GType at = gtype_act(ggml_type(w.type));
    thread_local GActs acts;
    thread_local std::vector<float> xs;
    acts.build(at, x, N, w.in);
    if ((int64_t)xs.size() < N * w.in) xs.resize(N * w.in);
    float* xd = xs.data();
    const GActs* a = &acts;
    parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) dequantize_row(at, a->row(n), xd + n * w.in, w.in);
    });
    sgemm_packed_wrows(N, w.out, w.in, xd, w.in, load_row_slice, &w, accumulate ? 1.f : 0.f, y, w.out);
}

}  // namespace moe::kernels
