#pragma once
// ggml's block quantization formats as moe kernels: the byte layouts are ggml's (ggml-common.h), so
// a GGUF tensor is used in place from its memory mapping. Why hand-written: no Debian library
// multiplies ggml blocks in place (oneDNN and OpenBLAS know fp32/bf16/s8 matrices, not 4-6 bit
// super-blocks with packed scales); the formats were learnt from llama.cpp's ggml-quants.c and
// gguf-py's quants.py, the code is moe's.
//
//   type  values/block  bytes/block  layout (little-endian)                           value
//   q8_0        32          34       d fp16, qs int8[32]                                 d * q
//   q4_0        32          18       d fp16, qs u8[16] (j: low nibble, j+16: high)       d * (q - 8)
//   q4_k       256         144       d, dmin fp16, scales u8[12] (8 x 6-bit sc, m),      d*sc_j * q - dmin*m_j
//                                    qs u8[128] (64-value chunks: low nibbles = first 32)
//   q5_k       256         176       as q4_k + qh u8[32] (bit 2c/2c+1: 5th bit, chunk c) d*sc_j * q - dmin*m_j
//   q6_k       256         210       ql u8[128], qh u8[64], scales int8[16], d fp16      d * sc_j * (q - 32)
//   q8_k       256         292       d fp32, qs int8[256], bsums int16[16]              d * q (activations only)
//   f16, bf16    1         2         IEEE half / the top 16 bits of an fp32
//
// The dot products follow ggml: weights of q8_0 / q4_0 meet activations quantized to q8_0, the
// K-quants meet q8_k (256 values, fp32 scale, per-16 sums); f16 / bf16 rows meet fp32 activations
// (ggml rounds them to f16 / bf16 first; moe keeps fp32, which is more exact). Each dot is an exact
// integer sum per block (sub-block scales are integers in the K-quants) times the float block
// scales: vec_dot_<w>_<a> is the SIMD kernel picked at start-up (active_isa(): AVX-512 + VNNI
// where present, AVX2, else scalar), vec_dot_ref its scalar twin in double.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe::kernels {

// ggml's type ids (GGUF's tensor types)
enum class GType : uint32_t { f32 = 0, f16 = 1, q4_0 = 2, q8_0 = 8, q4_k = 12, q5_k = 13, q6_k = 14, q8_k = 15, bf16 = 30 };

inline constexpr int64_t kQK = 32, kQK_K = 256;

struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct BlockQ6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
struct BlockQ8_K { float d; int8_t qs[256]; int16_t bsums[16]; };
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);

const char* gtype_name(GType t);
int64_t gtype_block(GType t);                 // values per block
int64_t gtype_block_bytes(GType t);           // bytes per block
int64_t gtype_row_bytes(GType t, int64_t n);  // n a multiple of the block
GType gtype_act(GType w);                     // the activation type its dot products use

// IEEE half <-> float, exact (round to nearest even; denormals kept; NaN stays quiet NaN)
uint16_t fp32_to_fp16(float f);
float fp16_to_fp32(uint16_t h);

// Rows of n values (a multiple of the block). quantize_row_* follows ggml's reference quantizers
// (quantize_row_*_ref, no importance matrix: what gguf-py and llama-quantize without imatrix write).
void quantize_row_q8_0(const float* x, void* y, int64_t n);
void quantize_row_q4_0(const float* x, void* y, int64_t n);
void quantize_row_q4_k(const float* x, void* y, int64_t n);
void quantize_row_q5_k(const float* x, void* y, int64_t n);
void quantize_row_q6_k(const float* x, void* y, int64_t n);
void quantize_row_q8_k(const float* x, void* y, int64_t n);
void quantize_row_f16(const float* x, void* y, int64_t n);
void quantize_row_bf16(const float* x, void* y, int64_t n);
void dequantize_row_q8_0(const void* x, float* y, int64_t n);
void dequantize_row_q4_0(const void* x, float* y, int64_t n);
void dequantize_row_q4_k(const void* x, float* y, int64_t n);
void dequantize_row_q5_k(const void* x, float* y, int64_t n);
void dequantize_row_q6_k(const void* x, float* y, int64_t n);
void dequantize_row_q8_k(const void* x, float* y, int64_t n);
void dequantize_row_f16(const void* x, float* y, int64_t n);
void dequantize_row_bf16(const void* x, float* y, int64_t n);
void quantize_row(GType t, const float* x, void* y, int64_t n);
void dequantize_row(GType t, const void* x, float* y, int64_t n);
// Activations: quantize_row(gtype_act(w), ...) with a SIMD twin where it pays (q8_0, q8_k:
// bit-identical to the scalar quantizer). f32 "activations" are copied.
void quantize_act_row(GType act, const float* x, void* y, int64_t n);

// Dot products of one weight row (n values of type w) with activation rows of gtype_act(w):
//   out[j] = w · a_j,  a_j = a + j * a_stride bytes, j < nr <= 4
// (one pass over the weight row for all nr rows: decode reads each weight once, the prefill
// tiles reuse the unpacked weights). Picked by active_isa(); f32 activations for f16 / bf16.
using RowDots = void (*)(int64_t n, const void* w, const void* a, int64_t a_stride, int nr, float* out);
RowDots row_dots(GType w);
RowDots row_dots_ref(GType w);  // the scalar twin (per block the exact integer sum, then double)
// One activation row against *rows weight rows at once (w_stride bytes apart; out[r]), each output
// the bits of row_dots(w) with nr = 1: independent chains side by side for decode. nullptr where
// the type or ISA has none.
using RowDotsW = void (*)(int64_t n, const void* w, int64_t w_stride, const void* a, float* out);
RowDotsW row_dots_w(GType w, int* rows);
// The single-row dots, ggml's vec_dot_<w>_<a>
float vec_dot_q8_0_q8_0(int64_t n, const void* w, const void* a);
float vec_dot_q4_0_q8_0(int64_t n, const void* w, const void* a);
float vec_dot_q4_k_q8_k(int64_t n, const void* w, const void* a);
float vec_dot_q5_k_q8_k(int64_t n, const void* w, const void* a);
float vec_dot_q6_k_q8_k(int64_t n, const void* w, const void* a);
float vec_dot_f16_f32(int64_t n, const void* w, const void* a);
float vec_dot_bf16_f32(int64_t n, const void* w, const void* a);
double vec_dot_ref(GType w, int64_t n, const void* wrow, const void* arow);

// Activation rows of a product, quantized once per call (capacity kept between calls: the caller
// owns one, e.g. thread_local; kernels do not allocate).
struct GActs {
    GType type = GType::f32;
    int64_t N = 0, in = 0, row_bytes = 0;
    std::vector<uint8_t> buf;  // (N, row_bytes)
    // prefill tiles (ggml_quants_simd.h's TileActs): the rows packed in groups of 4, per (group,
    // 32 values, row) the scale, scale * sum, and for c != 0 -c * sum (the weights' offset in integers)
    std::vector<uint8_t> xp;
    std::vector<float> xs, am;
    std::vector<int32_t> xo;
    // decode rows of Q8_0 and Q4_0 weights on AVX-512 VNNI hosts (ggml_rows_vnni.h): the q8_0 rows as
    // q + 128 (qu) and their scales spread per pair of blocks (s16); rows_vnni once filled
    // (on AMX-INT8 hosts the AMX decode rows' layout instead, and rows_amx: ggml_rows_vnni.h)
    std::vector<uint8_t> qu;
    std::vector<float> s16;
    bool rows_vnni = false, rows_amx = false;
    // batch invariant on AVX-512 VNNI hosts without AMX: the block order of the AMX rows, from the
    // prefill tiles for three rows or more (xp, xs, am, xo filled: rows_tiles) and from
    // q8_0_row_block_vnni for one or two (the q8_0 rows in buf as they are: rows_block)
    bool rows_block = false, rows_tiles = false;
    // the same rows for Q4_0 weights (ggml_rows_vnni.h, q4_0_rows_acts): x in the nibbles' order,
    // the offsets -8 * sum, the scales; rows_q4 once filled
    std::vector<int8_t> q4x;
    std::vector<int32_t> q4c;
    std::vector<float> q4s;
    bool rows_q4 = false;
    void build(GType act, const float* x, int64_t N, int64_t in);
    void prepare_tiles(int32_t c = 0);  // fills xp, xs, am, xo (q8_0 / q8_k activations; AVX-512 hosts)
    // fills qu, s16 (q8_0 activations) where the host has the kernel; amx_ok: only Q8_0 weights read
    // them (the AMX rows layout is Q8_0-only, the VNNI one serves Q4_0 too)
    void prepare_rows_vnni(bool amx_ok = true);
    void prepare_rows_q4_0();  // fills q4x, q4c, q4s (q8_0 activations) where the host has the kernel
    // the tiled weights' activations where tiled_kernels_active(), else nothing (the scalar twins
    // read buf): q8_0 rows packed with c = 128 (rows_tiles: xo for Q8_0 weights) and, for c = 8, xo8
    // = xo / 16 (Q4_0 weights' offset 8: rows_tiles8); q8_k rows packed with c = 0. Where
    // avx2_tiles_active(), c = 8 fills xo8 alone (rows_tiles8), which the AVX2 Q4_0 tiles read.
    std::vector<int32_t> xo8;
    bool rows_tiles8 = false;
    void prepare_tiled(int32_t c = 128);
    const uint8_t* row(int64_t n) const { return buf.data() + n * row_bytes; }
};

// y (N, OUT) [+]= x (N, IN) · W^T for W (OUT, IN) of ggml type t, row r at w + r * row_stride bytes.
// x's rows are quantized once into acts (gtype_act(t)); output rows are shared out over threads.
// N <= kGgmlGemvMaxN: each weight row is streamed once against all N rows (decode). Larger N: the
// blocked path: with AMX-INT8 (active_isa() >= amx; q8_0, q4_0, q4_k, q5_k, q6_k) the tile products
// of kernels/amx_q8.h; on AVX-512 VNNI hosts (q8_0, q4_0, q4_k, q5_k) tiles of 32 weight rows unpacked once
// into vpdpbusd's layout and multiplied with 4 activation rows at a time; otherwise the row dots
// over tiles of 16 weight rows that stay in L1 while groups of 4 activation rows pass over them.
inline constexpr int64_t kGgmlGemvMaxN = 8;
// The calling thread's scratch of at least `bytes` bytes, 64-byte aligned: one buffer per thread,
// grown on first need and kept (no allocation once warm). For the tile kernels' unpacked weight rows;
// a caller may not hold it across another call that takes it.
uint8_t* thread_scratch(int64_t bytes);
void ggml_matmul(float* y, const float* x, const void* w, GType t, int64_t row_stride, int64_t N, int64_t OUT,
                 int64_t IN, bool accumulate, GActs& acts);
// Whether batch-invariant Q8_0 products take the block order here (detail::q8_0_rows_block_ref's
// bits for every N): the AMX-INT8 rows, or on AVX-512 VNNI hosts the prefill tiles and the
// block-order row kernel (one or two rows). False on AVX2-only hosts: there Q8_0 rows as stored take
// the row dots' lane order (the same for every N too), and Q8_0 repacked at load (the default) the
// block order of the AVX2 tiles (q8_0_tiled_rows_avx2) for every N.
bool q8_0_block_order_active();
// Whether ggml_matmul's blocked path (N > kGgmlGemvMaxN) multiplies type t on integer tiles here
// (AMX-INT8, or AVX-512 VNNI), rather than on the row dots.
bool ggml_matmul_tiles_active(GType t);
// Whether a prefill of type t is best left to ggml_matmul's integer dots here: tiles, or at least
// VNNI row dots. False on AVX2-only hosts (no AMX, no VNNI), where vpmaddubsw row dots are slower
// than the fp32 GEMM on dequantized weights (qmatmul then runs that: qmatmul_ggml_dequant_gemm).
bool ggml_prefill_on_int8(GType t);
// Output rows [o0, o1) of the same product on the calling thread, x already in acts.
void ggml_matmul_rows(float* y, int64_t y_stride, const GActs& acts, const void* w, GType t, int64_t row_stride,
                      int64_t N, int64_t o0, int64_t o1, bool accumulate);

// ---- Q8_0 weights repacked once for the AVX-512 VNNI tiles ("tiled"), on hosts with VNNI and without
// AMX-INT8 (q8_0_tiled_active()). The idea is llama.cpp's CPU "repack" buffers; the layout is the
// one the VNNI tiles unpack 32 weight rows into for every call (ggml_quants_x86.cc), made once at
// load so that a product reads it in place: tile t (rows [32 t, 32 t + 32), rows past OUT zero) at
// t * 32 * row_bytes (row_bytes = gtype_row_bytes(q8_0, IN): the same size as the rows, so a slice
// of whole tiles starts where its first row would), and in it per 32-value block b, at
// b * kTiledBlockBytes, 1024 bytes of u = q + 128 (the 4 values 4k..4k+3 of row r at k * 128 + 4 r)
// then the 32 rows' fp16 scales. Every product on it (any N, any range of output rows) has the
// block order's bits (ggml_rows_vnni.h: fma((float)isum_b, wd_b * xd_b, acc), blocks ascending),
// those of q8_0_rows_block_ref on the rows before repacking: the same result batch invariant or
// not, on one thread or many, and on an AMX host's in-place rows.
inline constexpr int64_t kTiledRows = 32, kTiledBlockBytes = 1024 + 64;
// moe's int8 repacked the same way (kernels/qmatmul.h's q8_repack_tiled): the scales fp32
inline constexpr int64_t kTiledBlockBytesI8 = 1024 + 128;
// Q4_K repacked (q4_k_repack_tiled): per tile of 32 rows and 256-value super-block s, at
// s * kTiledSuperBytesQ4K: 4096 bytes of nibbles (chunk c of 64 values, 4-value group k, row r: the
// row's 4 bytes qs[32 c + 4 k .. + 3] at c * 1024 + k * 128 + 4 r: low nibbles sub-block 2 c, high
// 2 c + 1), the 32 rows' d then dmin (fp16), then the 6-bit scales sc and mins m decoded to a byte
// each (sub-block j's 32 rows at 4224 + 32 j, and 4480 + 32 j). 148 bytes a row and super-block
// (Q4_K's 144 + the decoded scales); tile t at t * 32 * q4_k_tiled_row_bytes(in). Products have the
// bits of the VNNI tiles on the rows as stored (ggml_matmul's prefill; the AMX tiles' too), on
// AVX-512 VNNI hosts and, through an AVX2 kernel on the same layout, on AVX2 hosts.
inline constexpr int64_t kTiledSuperBytesQ4K = 4096 + 64 + 64 + 256 + 256;
// Q4_0 repacked (q4_0_repack_tiled): per tile of 32 rows and 32-value block, at b * kTiledBlockBytesQ4_0:
// 512 bytes (4-value group k < 4 of row r: the row's bytes qs[4 k .. 4 k + 3] at k * 128 + 4 r, so
// the low nibbles are groups 0-3 and the high ones 4-7), then the 32 rows' fp16 d: the bytes of the
// rows (row_bytes as before). Products have the VNNI tiles' bits on the rows as stored.
inline constexpr int64_t kTiledBlockBytesQ4_0 = 512 + 64;
void q4_0_repack_tiled(const void* w, int64_t row_stride, int64_t out, int64_t in, uint8_t* dst);  // over threads
void q4_0_tiled_dequantize_row(const uint8_t* tiled, int64_t in, int64_t r, int64_t k0, int64_t kc, float* dst);
void q4_0_tiled_rows_ref(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                         const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate);
int64_t q4_k_tiled_row_bytes(int64_t in);  // in / 256 * 148
int64_t q4_k_tiled_bytes(int64_t out, int64_t in);
void q4_k_repack_tiled(const void* w, int64_t row_stride, int64_t out, int64_t in, uint8_t* dst);  // over threads
void q4_k_tiled_dequantize_row(const uint8_t* tiled, int64_t in, int64_t r, int64_t k0, int64_t kc, float* dst);
// scalar twin of the products (acts: N q8_k rows, act_bytes apart)
void q4_k_tiled_rows_ref(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                         const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate);
// The prefill tiles' arithmetic on K-quant rows as stored (t: q4_k, q5_k or q6_k; acts: N q8_k rows,
// act_bytes apart; w: rows row_stride apart): the scalar twin of the VNNI prefill tiles and of the
// AVX2 hosts' Q5_K / Q6_K tiles (detail::prefill_tiles_vnni, prefill_tiles_avx2). Per 32 values
// (Q6_K: 16) the exact integer sum, then the tiles' fp32 steps in their order.
void kquant_tiles_ref(GType t, float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                      const void* w, int64_t row_stride, int64_t o0, int64_t o1, bool accumulate);
bool q8_0_tiled_active();
// Whether the inference tools repack at load (Model::repack_for_inference): on by default;
// MOE_REPACK=0, read by moe::apply_environment, turns it off (llama.cpp's --no-repack)
void set_repack(bool on);
bool repack_enabled();
// whether the SIMD forms of the repack and the products run here (AVX-512 VNNI; AMX hosts too, which
// do not repack at load); else their scalar twins do
bool tiled_kernels_active();
// Hosts with AVX2 but without those tiles (AMD Zen 3, or MOE_ISA=avx2): Q8_0's, Q4_K's, Q4_0's and
// int8's tiles have AVX2 kernels (detail::q8_0_tiled_rows_avx2, q4_k_tiled_rows_avx2,
// q4_0_tiled_rows_avx2, q8_tiled_rows_avx2: vpmaddubsw, the VNNI kernels' bits), so those types are repacked there
// (kernels::repack_for_host); the K-quants' prefill unpacks tiles per call (prefill_tiles_avx2)
bool avx2_tiles_active();
int64_t q8_0_tiled_bytes(int64_t out, int64_t in);  // ceil(out / 32) * 32 * row_bytes
// dst (q8_0_tiled_bytes) from out rows of Q8_0 (row_stride apart, in a multiple of 32); the SIMD
// form where q8_0_tiled_active(), over threads. The _ref twin is scalar and writes the same bytes.
void q8_0_repack_tiled(const void* w, int64_t row_stride, int64_t out, int64_t in, uint8_t* dst);
void q8_0_repack_tiled_ref(const void* w, int64_t row_stride, int64_t out, int64_t in, uint8_t* dst);
// values [k0, k0 + kc) of row r of a tiled matrix in fp32 (its Q8_0 blocks' d * q; k0, kc multiples of 32)
void q8_0_tiled_dequantize_row(const uint8_t* tiled, int64_t in, int64_t r, int64_t k0, int64_t kc, float* dst);
// The scalar twin of the products (acts: N q8_0 rows, act_bytes apart): y[n * ys + o] (+)= for
// o in [o0, o1), the bits of q8_0_rows_block_ref on the rows before repacking.
void q8_0_tiled_rows_ref(float* y, int64_t ys, const uint8_t* acts, int64_t act_bytes, int64_t N, int64_t in,
                         const uint8_t* tiled, int64_t o0, int64_t o1, bool accumulate);
// ggml_matmul_rows for tiled weights of type t (q8_0, q4_0 or q4_k; acts: its activation rows with
// prepare_tiled() done), on the calling thread; any o0, o1 (a tile cut by the range is computed
// whole and stored in part).
void ggml_matmul_rows_tiled(float* y, int64_t ys, const GActs& acts, GType t, const uint8_t* tiled, int64_t N,
                            int64_t o0, int64_t o1, bool accumulate);
// ggml_matmul for tiled weights (any N; threads take whole tiles)
void ggml_matmul_tiled(float* y, const float* x, GType t, const uint8_t* tiled, int64_t N, int64_t OUT, int64_t IN,
                       bool accumulate, GActs& acts);

}  // namespace moe::kernels
