#pragma once
// Inference matmul with weights stored as fp32, bf16 or int8 (Q8_0-style: blocks of 32 values
// along the input dimension, one fp32 scale per block, value = scale * q, q in [-127, 127]):
//   y (N, OUT) [+]= x (N, IN) · W^T,   W (OUT, IN) in its storage type, x and y fp32.
// Decode (small N) is memory-bound: the hand-written kernel streams each weight row once,
// converting it in registers, and dots it with all N rows of x (no library reads bf16/int8
// weights this way on AVX2). Large N (prefill) calls the packed GEMM, which converts W to fp32
// slice by slice inside its packing (with the oneDNN backend: dequantized into scratch first);
// int8 with AMX-INT8 (active_isa() >= amx) takes the integer tiles of kernels/amx_q8.h instead.
//
// int8 weights multiply int8 activations (as llama.cpp's Q8_0 x Q8_0): each row of x is quantized
// the same way (blocks of 32, scale = max|x| / 127), and
//   y[n, o] = sum over blocks b of  (sw[o, b] * sx[n, b]) * sum_{i in b} qw[o, i] * qx[n, i],
// the inner sums exact in integers. This is the definition for every path: the decode kernel
// (integer dot products, 8-bit multiplies), the prefill (x rounded to its int8 grid, then a GEMM
// with W dequantized) and the reference twin; they differ by fp32 rounding only. It needs a third of
// the instructions per weight of converting each int8 weight to fp32; on the AVX2 hosts measured so
// far both kernels stream at the same rate (a core's memory parallelism, not arithmetic, limits them).
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/memory.h"
#include "kernels/ggml_quants.h"

namespace moe::kernels {

// f32, bf16, q8: moe's own (q8: int8 values and fp32 scales in separate arrays). The rest are
// ggml's block formats (kernels/ggml_quants.h), rows of ggml bytes used in place (a GGUF tensor's
// mapping) or quantized from fp32 with ggml's reference quantizers; bf16 rows are already ggml's.
enum class WType { f32, bf16, q8, q8_0, q4_0, q4_k, q5_k, q6_k, f16 };
const char* wtype_name(WType t);
// "fp32" | "bf16" | "int8" | "q8_0" | "q4_0" | "q4_k" | "q5_k" | "q6_k" | "f16"
WType parse_wtype(const std::string& s, const char* where);
inline bool is_ggml(WType t) { return t >= WType::q8_0; }
// ggml types multiplied by ggml_matmul's block dot products (activations quantized as ggml does).
// f16 is a ggml row format but multiplies as fp32 / bf16 do: the streaming GEMV widening each row in
// registers (decode) and the packed fp32 GEMM widening it inside its packing (prefill), with the
// arithmetic of those kernels on an fp32 copy, so an F16 file used in place gives the bits it gave
// when it was loaded as fp32.
inline bool ggml_rows(WType t) { return is_ggml(t) && t != WType::f16; }
GType ggml_type(WType t);  // is_ggml(t) only
inline constexpr int64_t kQ8Block = 32;
// Decode work below this many bytes of weights stays on one thread (see qmatmul).
inline constexpr double kGemvParallelBytes = 1 << 20;
// At most this many rows of x take the streaming GEMV path (decode); more take dequantize + GEMM.
inline constexpr int64_t kGemvMaxN = 8;

// A view of one weight matrix (OUT, IN) in its storage type.
struct QMatrix {
    WType type = WType::f32;
    int64_t out = 0, in = 0;
    const float* f32 = nullptr;      // (OUT, IN)
    const uint16_t* bf16 = nullptr;  // (OUT, IN)
    const int8_t* q = nullptr;       // (OUT, IN)
    const float* scales = nullptr;   // (OUT, ceil(IN / 32))
    const uint8_t* raw = nullptr;    // ggml types: row r at raw + r * row_bytes
    int64_t row_bytes = 0;
    // A stack whose pieces live apart (a Hugging Face file's experts, one tensor each, used in
    // place): rows [i * part_rows, (i + 1) * part_rows) are parts[i]; the pointers above are null
    // and every use goes through rows() (or dequantize_row), which must stay inside one part.
    const QMatrix* parts = nullptr;
    int64_t part_rows = 0;
    // q8_0, q4_k and q8: raw holds the rows repacked into tiles of 32 (q8_0 / q4_k:
    // kernels/ggml_quants.h's q8_0_repack_tiled, row_bytes as before / q4_k_repack_tiled, row_bytes
    // q4_k_tiled_row_bytes(in); q8: q8_repack_tiled below, row_bytes q8_tiled_row_bytes(in), q and
    // scales null), so rows() cuts at multiples of 32; every product on it takes the tiles' order
    bool tiled = false;
    int64_t blocks() const { return (in + kQ8Block - 1) / kQ8Block; }
    double bytes() const;  // storage of the weights (+ scales)
    // rows [r0, r0 + n) as a matrix of its own (an expert's slice of a stacked tensor; with parts,
    // inside one part)
    QMatrix rows(int64_t r0, int64_t n) const;
};

// Owned storage of one matrix in a given type, made from fp32 weights.
struct QStore {
    WType type = WType::f32;
    int64_t out = 0, in = 0;
    std::vector<uint16_t, LargeAllocator<uint16_t>> bf16;
    std::vector<int8_t, LargeAllocator<int8_t>> q;
    std::vector<float, LargeAllocator<float>> scales;
    std::vector<uint8_t, LargeAllocator<uint8_t>> raw;  // ggml types: (OUT, row bytes); tiled: q8_0_repack_tiled's
    bool tiled = false;
    const float* f32 = nullptr;  // fp32: a view of the source (not copied)
    void build(WType t, const float* w, int64_t out, int64_t in);
    // Storage for (out, in) in type t (bf16 or int8) to fill by rows: set_rows(r0, n, w) converts
    // rows [r0, r0 + n) from fp32 (n * in values), with the arithmetic of build, so a matrix made
    // in slices has the bits of one built whole, without its fp32 copy ever existing in full.
    // ggml types need IN a multiple of their block (32, or 256 for the K-quants): else moe::error.
    void allocate(WType t, int64_t out, int64_t in);
    void set_rows(int64_t r0, int64_t n, const float* w);
    // Q8_0, Q4_0, Q4_K or int8 rows m (a view or this store's own; can_repack(m)) repacked into tiles (q8_0_repack_tiled,
    // q4_k_repack_tiled, q8_repack_tiled): the store then holds the tiled copy in raw and view() gives it (tiled).
    // m.in a multiple of 32, no parts.
    void build_tiled(const QMatrix& m);
    QMatrix view() const;
};

// Q8_0 quantization of one row: scale = max|w| / 127 per block, q = round(w / scale) (round to
// nearest even). quantize_q8_row dispatches to an AVX2 twin of quantize_q8_row_ref (bit-identical).
void quantize_q8_row(int8_t* q, float* scales, const float* w, int64_t in);
void quantize_q8_row_ref(int8_t* q, float* scales, const float* w, int64_t in);

// N rows of activations quantized for the int8 path (capacity kept between calls).
struct QActs {
    int64_t N = 0, in = 0;
    std::vector<int8_t> q;      // (N, IN)
    std::vector<float> scales;  // (N, ceil(IN / 32))
    // For the AVX-512 VNNI kernel (vpdpbusd multiplies unsigned by signed bytes): q + 128 as
    // unsigned, and each pair of block scales spread over 16 lanes (8 copies of each), the layout
    // of a 64-byte step's accumulator. Filled by build_vnni(), after build().
    std::vector<uint8_t> qu;    // (N, IN)
    std::vector<float> scales16;  // (N, floor(IN / 64), 16)
    // For the AMX-INT8 decode rows (ggml_rows_vnni.h, q8_rows_amx): the rows' B tiles and scales in
    // groups of 16. Filled by build_amx(), after build(), where q8_rows_amx_active(in).
    std::vector<uint8_t> amx_qu;
    std::vector<float> amx_s16;
    bool rows_amx = false;
    // Batch invariant on AVX-512 VNNI hosts without AMX (q8_rows_block_active(in)): the same block
    // order as the AMX rows, from the VNNI tiles for three rows or more (the rows packed for them
    // here, ggml_quants_simd.h's TileActs) and from q8_row_block_vnni (q, scales as they are) for
    // one or two.
    // Filled by build_block(), after build().
    std::vector<uint8_t> tile_xp;
    std::vector<float> tile_xs, tile_am;
    std::vector<int32_t> tile_xo;
    bool rows_block = false;
    // tile_* filled for any N (build_tiles(), after build()): the repacked int8 weights' activations
    bool rows_tiles = false;
    void build(const float* x, int64_t N, int64_t in);
    void build_tiles();
    void build_vnni();
    void build_amx();
    void build_block();
    int64_t blocks() const { return (in + kQ8Block - 1) / kQ8Block; }
};
// Whether the int8 decode kernel runs its AVX-512 VNNI form on this host (same bits as AVX2's).
bool q8_vnni_active();
// Whether int8 decode rows of width `in` take the AMX-INT8 tiles here (active_isa() >= amx, in a
// multiple of 32): for N >= 2, and for every N while batch invariant (so one arithmetic serves every
// row count), as the Q8_0 rows do.
bool q8_rows_amx_active(int64_t in);
// Whether, without AMX, batch-invariant int8 products of width `in` take the block order on AVX-512
// VNNI here (QActs::build_block; in a multiple of 32).
bool q8_rows_block_active(int64_t in);
void dequantize_row(float* dst, const QMatrix& w, int64_t row);
// Whether QStore::build_tiled takes m: Q8_0, Q4_0, Q4_K or int8 (widths a multiple of 32), not
// yet repacked, in one piece (no parts). The host's side is q8_0_tiled_active().
bool can_repack(const QMatrix& m);
// Whether the inference tools repack matrices of type t on this host: MOE_REPACK not 0 and a tile
// kernel for t here (Q8_0, Q4_0, Q4_K, int8 where q8_0_tiled_active(); Q8_0, Q4_K, Q4_0 and int8 where
// avx2_tiles_active()); repack_for_host(m): that for m's type, and can_repack(m)
bool repacks_type(WType t);
bool repack_for_host(const QMatrix& m);

// moe's int8 repacked for the AVX-512 VNNI tiles, as Q8_0 is (kernels/ggml_quants.h): tile t of 32
// rows (rows past OUT zero) at t * 32 * q8_tiled_row_bytes(in), per 32-value block b at
// b * kTiledBlockBytesI8 the 1024 bytes of q + 128 in vpdpbusd's order then the 32 rows' fp32
// scales: the bytes of q and scales. Products on it have q8_rows_block_ref's bits (the block
// order) for every N. Where q8_0_tiled_active() (AVX-512 VNNI without AMX-INT8), widths a multiple of 32.
int64_t q8_tiled_row_bytes(int64_t in);  // in / 32 * 36
int64_t q8_tiled_bytes(int64_t out, int64_t in);
// dst (q8_tiled_bytes) from q (out, in), scales (out, in / 32); SIMD over threads where the host has
// the tiles, the _ref twin scalar (the same bytes)
void q8_repack_tiled(const int8_t* q, const float* scales, int64_t out, int64_t in, uint8_t* dst);
void q8_repack_tiled_ref(const int8_t* q, const float* scales, int64_t out, int64_t in, uint8_t* dst);
// the scalar twin of the products (q, qs: the activation rows as QActs has them)
void q8_tiled_rows_ref(float* y, int64_t ys, const int8_t* q, const float* qs, int64_t N, int64_t in,
                       const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate);

// The reference twin: a double sum over dequantized weights; int8 and the ggml block types with x
// rounded as their kernels round it (int8 / q8_0 / q8_k blocks), f16 / bf16 with x as is.
void qmatmul_ref(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate);
void qmatmul(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate);
// ggml types, the prefill where the CPU has no VNNI or AMX (qmatmul runs it there, and
// the benches compare it with the tiles elsewhere): x rounded to its activation grid, then the
// packed fp32 GEMM dequantizing W inside its packing
void qmatmul_ggml_dequant_gemm(float* y, const float* x, const QMatrix& w, int64_t N, bool accumulate);
// Several decode-sized products (N <= kGemvMaxN, any N while batch invariant) that read the same x (N, IN): y_i [+]= x · W_i^T,
// under one parallel region over all their output rows (q, k, v of a decode step; up and gate of
// an FFN); x is quantized once when any W_i is int8. qmatmul's decode path is this with one matrix.
struct QOut {
    float* y;   // (N, W.out)
    QMatrix w;  // (OUT, IN), the same IN for all
};
void qmatmul_same_x(const float* x, int64_t N, std::initializer_list<QOut> outs, bool accumulate = false);

}  // namespace moe::kernels
