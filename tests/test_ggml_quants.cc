// ggml block formats (kernels/ggml_quants.h): bytes and values against gguf-py's own quantizer and
// dequantizer (tests/data/quant, written by scripts/gen_quant_refs.py), the activation quantizers'
// SIMD twins, every dot kernel on every ISA path of the host against its scalar twin, and
// qmatmul on the ggml weight types against the double reference, over threads and shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <vector>

#include "core/parallel.h"
#include "moe/error.h"
#include "kernels/batch_invariant.h"
#include "kernels/cpu.h"
#include "kernels/gemm.h"
#include "kernels/ggml_quants.h"
#include "kernels/ggml_quants_simd.h"
#include "kernels/ggml_rows_vnni.h"
#include "kernels/qmatmul.h"
#include "model/model.h"

using namespace moe::kernels;

namespace {

std::vector<float> randv(int64_t n, uint64_t seed, float scale = 1.f) {
    std::mt19937_64 r(seed);
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(r);
    return v;
}

uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

struct RefFile {
    GType type{};
    int64_t rows = 0, n = 0;
    bool has_input = false;
    std::vector<float> input, deq;
    std::vector<uint8_t> q;
};

RefFile read_ref(const std::string& name) {
    const std::string path = std::string(MOE_TEST_DIR) + "/data/quant/" + name + ".bin";
    std::ifstream f(path, std::ios::binary);
    EXPECT_TRUE(f.good()) << path;
    char magic[4];
    uint32_t h[5];
    f.read(magic, 4);
    f.read(reinterpret_cast<char*>(h), sizeof h);
    EXPECT_EQ(std::string(magic, 4), "MOEQ");
    EXPECT_EQ(h[0], 1u);
    RefFile r;
    r.type = (GType)h[1], r.rows = h[2], r.n = h[3], r.has_input = h[4] != 0;
    const int64_t rb = gtype_row_bytes(r.type, r.n);
    if (r.has_input) {
        r.input.resize(r.rows * r.n);
        f.read(reinterpret_cast<char*>(r.input.data()), r.input.size() * 4);
    }
    r.q.resize(r.rows * rb);
    f.read(reinterpret_cast<char*>(r.q.data()), r.q.size());
    r.deq.resize(r.rows * r.n);
    f.read(reinterpret_cast<char*>(r.deq.data()), r.deq.size() * 4);
    EXPECT_TRUE(f.good()) << path << " is short";
    return r;
}

const GType kWeightTypes[] = {GType::q8_0, GType::q4_0, GType::q4_k, GType::q5_k, GType::q6_k, GType::f16, GType::bf16};

}  // namespace

// moe's quantizers write gguf-py's bytes (q8_0, q4_0, f16, bf16: the types gguf-py quantizes), and
// moe's dequantizers give gguf-py's floats bit for bit (every type; for the K-quants on random
// blocks, since gguf-py has no quantizer for them).
TEST(GgmlQuants, BytesAndValuesEqualGgufPy) {
    for (const char* name : {"q8_0", "q4_0", "f16", "bf16", "q4_k", "q5_k", "q6_k"}) {
        const RefFile r = read_ref(name);
        EXPECT_STREQ(gtype_name(r.type), name);
        const int64_t rb = gtype_row_bytes(r.type, r.n);
        std::vector<uint8_t> q(rb);
        std::vector<float> y(r.n);
        for (int64_t row = 0; row < r.rows; ++row) {
            const uint8_t* want_q = r.q.data() + row * rb;
            if (r.has_input) {
                quantize_row(r.type, r.input.data() + row * r.n, q.data(), r.n);
                for (int64_t i = 0; i < rb; ++i)
                    ASSERT_EQ(q[i], want_q[i]) << name << " row " << row << " byte " << i;
            }
            dequantize_row(r.type, want_q, y.data(), r.n);
            for (int64_t i = 0; i < r.n; ++i)
                ASSERT_EQ(bits(y[i]), bits(r.deq[row * r.n + i]))
                    << name << " row " << row << " value " << i << ": " << y[i] << " vs " << r.deq[row * r.n + i];
        }
    }
}

TEST(GgmlQuants, HalfConversionRoundTripsEveryHalf) {
    for (uint32_t h = 0; h < 65536; ++h) {
        const float f = fp16_to_fp32((uint16_t)h);
        if (std::isnan(f)) {
            EXPECT_EQ(fp32_to_fp16(f) & 0x7e00u, 0x7e00u);
            continue;
        }
        ASSERT_EQ(fp32_to_fp16(f), h) << h;
        // the midpoint to the next half rounds to the even one of the two
        if ((h & 0x7fffu) < 0x7bffu) {
            const double mid = 0.5 * ((double)f + (double)fp16_to_fp32((uint16_t)(h + 1)));
            const uint16_t r = fp32_to_fp16((float)mid);
            if ((float)mid == mid) ASSERT_EQ(r, (h & 1u) ? h + 1 : h) << h;
        }
    }
}

// The SIMD activation quantizers are bit-identical to the scalar ones (scales, values, sums).
TEST(GgmlQuants, ActivationQuantizerTwinsAreExact) {
    if (active_isa() < Isa::avx2 || !cpu_features().f16c) GTEST_SKIP() << "no AVX2 + F16C";
    const int64_t n = 1024;
    for (uint64_t seed = 1; seed <= 6; ++seed) {
        auto x = randv(n, seed, seed == 3 ? 1e-5f : 1.f);
        if (seed == 2) x[7] = 127.f, x[8] = -127.f, x[9] = 0.5f, x[10] = 2.5f;  // ties
        if (seed == 4) std::fill(x.begin(), x.begin() + 256, 0.f);              // a zero block
        if (seed == 5)
            for (int64_t i = 0; i < n; ++i) x[i] = (float)((i % 64) - 32) * 0.25f;  // many exact halves
        if (seed == 6) x[300] = 1e7f, x[301] = -3e-41f, x[700] = 1e-38f;         // fp16 overflow, denormals
        for (GType act : {GType::q8_0, GType::q8_k})
            for (Isa cap : {Isa::avx2, Isa::avx512}) {  // the AVX2 twin, and the AVX-512 one where the host has it
                const Isa prev = set_isa_cap(cap);
                const int64_t rb = gtype_row_bytes(act, n);
                std::vector<uint8_t> a(rb), b(rb);
                quantize_row(act, x.data(), a.data(), n);
                quantize_act_row(act, x.data(), b.data(), n);
                set_isa_cap(prev);
                ASSERT_EQ(a, b) << gtype_name(act) << " seed " << seed << " isa cap " << (int)cap;
            }
    }
}

// Round trip of the reference quantizers on normal rows: the error ranks the types as their bits do.
TEST(GgmlQuants, QuantizationErrorPerType) {
    const int64_t n = 4096;
    const auto x = randv(n, 9);
    std::map<int, double> e2;  // by type (ggml ids go past 16: bf16 is 30)
    double x2 = 0;
    for (float v : x) x2 += (double)v * v;
    for (GType t : kWeightTypes) {
        std::vector<uint8_t> q(gtype_row_bytes(t, n));
        std::vector<float> y(n);
        quantize_row(t, x.data(), q.data(), n);
        dequantize_row(t, q.data(), y.data(), n);
        for (int64_t i = 0; i < n; ++i) e2[(int)t] += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
    }
    auto rel = [&](GType t) { return std::sqrt(e2[(int)t] / x2); };
    EXPECT_LT(rel(GType::q8_0), 0.01);
    EXPECT_LT(rel(GType::q6_k), 0.03);
    EXPECT_LT(rel(GType::q5_k), 0.05);
    EXPECT_LT(rel(GType::q4_k), 0.10);
    EXPECT_LT(rel(GType::q4_0), 0.15);
    EXPECT_LT(rel(GType::f16), 0.001);
    EXPECT_LT(rel(GType::bf16), 0.005);
    EXPECT_LT(rel(GType::q8_0), rel(GType::q6_k));
    EXPECT_LT(rel(GType::q6_k), rel(GType::q5_k));
    EXPECT_LT(rel(GType::q5_k), rel(GType::q4_k));
    EXPECT_LT(rel(GType::q4_k), rel(GType::q4_0));
}

// Every dot kernel of every ISA path the host has against the scalar twin (exact integer sums, then
// double), 1..4 activation rows per call, several lengths.
TEST(GgmlQuants, DotKernelsMatchReferenceOnEveryIsa) {
    for (Isa cap : {Isa::avx512, Isa::avx2, Isa::ref}) {
        const Isa prev = set_isa_cap(cap);
        for (GType t : kWeightTypes) {
            const int64_t blk = gtype_block(t) == 1 ? 32 : gtype_block(t);
            for (int64_t in : {blk, 3 * blk, 5 * blk, t == GType::f16 || t == GType::bf16 ? (int64_t)37 : blk}) {
                const GType at = gtype_act(t);
                const int64_t wb = gtype_row_bytes(t, in), ab = gtype_row_bytes(at, in);
                auto w = randv(in, 100 + in);
                w[1] = 3.f;  // a larger value in one block
                std::vector<uint8_t> wq(wb), aq(4 * ab);
                quantize_row(t, w.data(), wq.data(), in);
                std::vector<float> wd(in), ad(in);
                dequantize_row(t, wq.data(), wd.data(), in);
                for (int j = 0; j < 4; ++j) {
                    auto x = randv(in, 200 + 7 * j + in, j == 2 ? 100.f : 1.f);
                    quantize_act_row(at, x.data(), aq.data() + j * ab, in);
                }
                for (int nr = 1; nr <= 4; ++nr) {
                    float got[4];
                    row_dots(t)(in, wq.data(), aq.data(), ab, nr, got);
                    for (int j = 0; j < nr; ++j) {
                        const double want = vec_dot_ref(t, in, wq.data(), aq.data() + j * ab);
                        dequantize_row(at, aq.data() + j * ab, ad.data(), in);
                        double mag = 0;  // sum |w_i a_i|: the scale of the fp32 rounding
                        for (int64_t i = 0; i < in; ++i) mag += std::fabs((double)wd[i] * ad[i]);
                        ASSERT_NEAR(got[j], want, 1e-5 * mag + 1e-30)
                            << gtype_name(t) << " in=" << in << " nr=" << nr << " j=" << j << " isa=" << isa_name(cap);
                        ASSERT_NEAR(want, [&] {
                            double s = 0;  // the reference twin is the dot of the dequantized rows
                            for (int64_t i = 0; i < in; ++i) s += (double)wd[i] * ad[i];
                            return s;
                        }(), 1e-6 * mag + 1e-30) << gtype_name(t);
                    }
                }
            }
        }
        set_isa_cap(prev);
    }
    // the named single-row entries are the same kernels
    const int64_t in = 512;
    auto w = randv(in, 5), x = randv(in, 6);
    for (auto [t, fn] : {std::pair{GType::q8_0, &vec_dot_q8_0_q8_0}, std::pair{GType::q4_0, &vec_dot_q4_0_q8_0},
                         std::pair{GType::q4_k, &vec_dot_q4_k_q8_k}, std::pair{GType::q5_k, &vec_dot_q5_k_q8_k},
                         std::pair{GType::q6_k, &vec_dot_q6_k_q8_k}, std::pair{GType::f16, &vec_dot_f16_f32},
                         std::pair{GType::bf16, &vec_dot_bf16_f32}}) {
        std::vector<uint8_t> wq(gtype_row_bytes(t, in)), aq(gtype_row_bytes(gtype_act(t), in));
        quantize_row(t, w.data(), wq.data(), in);
        quantize_act_row(gtype_act(t), x.data(), aq.data(), in);
        float r;
        row_dots(t)(in, wq.data(), aq.data(), 0, 1, &r);
        EXPECT_EQ(fn(in, wq.data(), aq.data()), r) << gtype_name(t);
    }
}

// qmatmul on each ggml weight type (QStore from fp32, a QMatrix view of ggml rows) against the
// double reference of dequantized W times x rounded as the kernels round it: decode (N <= 8) and
// prefill (N > 8) shapes, OUT not a multiple of the 16-row tile, 1-3 threads, every ISA path.
TEST(GgmlQuants, QMatmulMatchesReference) {
    const WType types[] = {WType::q8_0, WType::q4_0, WType::q4_k, WType::q5_k, WType::q6_k, WType::f16};
    for (Isa cap : {Isa::avx512, Isa::avx2, Isa::ref}) {
        const Isa prev = set_isa_cap(cap);
        for (WType t : types)
            for (int threads : {1, 2, 3}) {
                moe::set_num_threads(threads);
                const int64_t in = gtype_block(ggml_type(t)) == 256 ? 512 : 96, out = 37;
                auto w = randv(out * in, 7 + (int)t);
                QStore st;
                st.build(t, w.data(), out, in);
                const QMatrix m = st.view();
                ASSERT_EQ(m.type, t);
                ASSERT_DOUBLE_EQ(m.bytes(), (double)out * gtype_row_bytes(ggml_type(t), in));
                for (int64_t N : {1, 2, 3, 5, 8, 9, 21}) {
                    auto x = randv(N * in, 50 + N);
                    std::vector<float> a(N * out, 0.25f), b(N * out, 0.25f);
                    for (bool acc : {false, true}) {
                        qmatmul_ref(a.data(), x.data(), m, N, acc);
                        qmatmul(b.data(), x.data(), m, N, acc);
                        for (int64_t i = 0; i < N * out; ++i)
                            ASSERT_NEAR(a[i], b[i], 5e-5 * (1 + std::fabs(a[i])) * std::sqrt(in / 64.0))
                                << wtype_name(t) << " N=" << N << " threads=" << threads << " isa=" << isa_name(cap)
                                << " acc=" << acc << " i=" << i;
                    }
                }
                // a view of the rows (as of a mapped GGUF tensor) and an expert's slice of it
                QMatrix v;
                v.type = t, v.out = out, v.in = in, v.raw = st.raw.data(), v.row_bytes = m.row_bytes;
                const QMatrix sl = v.rows(5, 20);
                auto x = randv(3 * in, 99);
                std::vector<float> a(3 * 20), b(3 * 20);
                qmatmul_ref(a.data(), x.data(), sl, 3, false);
                qmatmul(b.data(), x.data(), sl, 3, false);
                for (int i = 0; i < 60; ++i) ASSERT_NEAR(a[i], b[i], 5e-5 * (1 + std::fabs(a[i])) * std::sqrt(in / 64.0));
            }
        set_isa_cap(prev);
    }
    moe::set_num_threads(0);
}

// Prefill (N > 8 rows) where the CPU has neither int8 tiles nor VNNI (MOE_ISA=avx2 gives that on
// any host): qmatmul runs the K-quants as stored on the AVX2 tiles (kquant_tiles_ref's bits) and
// Q8_0 and Q4_0 on the dequant + fp32 GEMM, bit for bit, and each row's result does not depend on
// how many rows the call has (a prompt prefilled in other chunks gives the same rows).
TEST(GgmlQuants, PrefillOnAvx2HostsTakesTheTilesOrTheDequantGemm) {
    const Isa prev = set_isa_cap(Isa::avx2);
    if (gemm_backend() != GemmBackend::packed || !cpu_features().f16c) {
        set_isa_cap(prev);
        GTEST_SKIP() << "no AVX2 + FMA + F16C on this CPU: the packed GEMM and the tiles are not there";
    }
    for (WType t : {WType::q8_0, WType::q4_0, WType::q4_k, WType::q5_k, WType::q6_k}) {
        const bool tiles = t == WType::q4_k || t == WType::q5_k || t == WType::q6_k;
        ASSERT_EQ(ggml_prefill_on_int8(ggml_type(t)), tiles) << wtype_name(t);
        const int64_t in = gtype_block(ggml_type(t)) == 256 ? 512 : 96, out = 45;
        auto w = randv(out * in, 17 + (int)t);
        QStore st;
        st.build(t, w.data(), out, in);
        const QMatrix m = st.view();
        auto x = randv(21 * in, 71);
        for (int threads : {1, 2}) {
            moe::set_num_threads(threads);
            std::vector<float> got(21 * out), want(21 * out), part(9 * out);
            qmatmul(got.data(), x.data(), m, 21, false);
            if (tiles) {
                GActs a;
                a.build(GType::q8_k, x.data(), 21, in);
                kquant_tiles_ref(ggml_type(t), want.data(), out, a.buf.data(), a.row_bytes, 21, in, m.raw, m.row_bytes, 0,
                                 out, false);
            } else {
                qmatmul_ggml_dequant_gemm(want.data(), x.data(), m, 21, false);
            }
            EXPECT_EQ(got, want) << wtype_name(t) << " threads " << threads;
            qmatmul(part.data(), x.data() + 12 * in, m, 9, false);  // rows 12..20 alone
            EXPECT_TRUE(std::equal(part.begin(), part.end(), got.begin() + 12 * out)) << wtype_name(t);
        }
    }
    moe::set_num_threads(0);
    set_isa_cap(prev);
}

// The Q8_0 and Q4_0 decode kernels of AVX-512 VNNI hosts (ggml_rows_vnni.h, up to 8 activation
// rows per pass, tiles of output rows; Q4_0 for one row too): every output the bits of the
// single-row dot on AVX-512 VNNI and on AVX2, whatever the number of rows in the call, the output
// range and accumulate; odd and even block counts; 1-3 threads through ggml_matmul.
TEST(GgmlQuants, Q8_0VnniRowsEqualSingleRowDotsBitForBit) {
    const Isa prev_cap = set_isa_cap(Isa::avx512);  // AMX hosts: the VNNI kernel, not the AMX rows
    struct Restore {
        Isa cap;
        ~Restore() { set_isa_cap(cap); }
    } restore{prev_cap};
    if (!detail::q8_0_rows_vnni_supported()) GTEST_SKIP() << "no AVX-512 VNNI on this host";
    const int64_t out = 37;
    for (GType wt : {GType::q8_0, GType::q4_0})
    for (int64_t in : {32, 64, 96, 1056}) {
        const int64_t wb = gtype_row_bytes(wt, in), ab = gtype_row_bytes(GType::q8_0, in);
        auto w = randv(out * in, 300 + in);
        w[5] = 40.f;  // a larger value in one block
        std::vector<uint8_t> wq(out * wb);
        for (int64_t o = 0; o < out; ++o) quantize_row(wt, w.data() + o * in, wq.data() + o * wb, in);
        for (int64_t N : {1, 3, 8, 9, 16, 17}) {
            auto x = randv(N * in, 400 + N + in, N == 9 ? 100.f : 1.f);
            GActs acts;
            acts.build(GType::q8_0, x.data(), N, in);
            if (wt == GType::q8_0) {
                acts.prepare_rows_vnni();
                ASSERT_TRUE(acts.rows_vnni);
            } else {
                acts.prepare_rows_q4_0();
                ASSERT_TRUE(acts.rows_q4);
            }
            std::vector<float> want(N * out), want2(N * out);  // single-row dots: AVX-512 VNNI, AVX2
            for (Isa cap : {Isa::avx512, Isa::avx2}) {
                const Isa prev = set_isa_cap(cap);
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t o = 0; o < out; ++o)
                        row_dots(wt)(in, wq.data() + o * wb, acts.row(n), ab, 1,
                                              &(cap == Isa::avx512 ? want : want2)[n * out + o]);
                set_isa_cap(prev);
            }
            for (bool acc : {false, true}) {
                std::vector<float> y(N * out, 0.5f);
                ggml_matmul_rows(y.data(), out, acts, wq.data(), wt, wb, N, 0, 13, acc);
                ggml_matmul_rows(y.data(), out, acts, wq.data(), wt, wb, N, 13, out, acc);
                for (int64_t i = 0; i < N * out; ++i) {
                    const float e = acc ? 0.5f + want[i] : want[i];
                    ASSERT_EQ(bits(y[i]), bits(e)) << gtype_name(wt) << " in=" << in << " N=" << N << " i=" << i << " acc=" << acc;
                    ASSERT_EQ(bits(want[i]), bits(want2[i])) << "in=" << in << " N=" << N << " i=" << i;
                }
            }
            // a row alone: the same bits as among the others
            GActs one;
            one.build(GType::q8_0, x.data() + (N - 1) * in, 1, in);
            one.prepare_rows_vnni();
            one.prepare_rows_q4_0();
            std::vector<float> y1(out);
            ggml_matmul_rows(y1.data(), out, one, wq.data(), wt, wb, 1, 0, out, false);
            for (int64_t o = 0; o < out; ++o) ASSERT_EQ(bits(y1[o]), bits(want[(N - 1) * out + o])) << "o=" << o;
            // the whole product through ggml_matmul (decode N: these kernels), rows shared by threads
            if (N <= kGgmlGemvMaxN)
                for (int threads : {1, 2, 3}) {
                    moe::set_num_threads(threads);
                    std::vector<float> y(N * out);
                    GActs ga;
                    ggml_matmul(y.data(), x.data(), wq.data(), wt, wb, N, out, in, false, ga);
                    for (int64_t i = 0; i < N * out; ++i)
                        ASSERT_EQ(bits(y[i]), bits(want[i])) << gtype_name(wt) << " threads=" << threads << " i=" << i;
                }
            moe::set_num_threads(0);
        }
    }
}

// Rows in a call for the AMX decode-row tests: one group of 16 and less (every narrow form and
// ragged widths), a ragged second group, three groups
std::vector<int64_t> amx_row_counts() {
    std::vector<int64_t> ns;
    for (int64_t n = 1; n <= 17; ++n) ns.push_back(n);
    ns.push_back(33);
    return ns;
}

// The AMX-INT8 decode rows (ggml_rows_vnni.h, "block order"): every output the bits of the scalar
// twin q8_0_rows_block_ref, for 1..17 and 33 rows in a call (one group of 16, a ragged group, three
// groups), output ranges cut at rows that are not multiples of the 16-row tile, accumulate on and
// off, and a row alone gives its bits among the others.
// On AVX-512 VNNI hosts without AMX the same holds for the VNNI prefill tiles (2 rows or more) and
// the one-row block kernel (q8_0_row_block_vnni) that batch invariance takes there.
TEST(GgmlQuants, Q8_0BlockOrderRowsEqualTwinBitForBit) {
    if (!q8_0_block_order_active()) GTEST_SKIP() << "no AMX-INT8 or AVX-512 VNNI on this host (or MOE_ISA below them)";
    {  // batch invariance off, one row: the VNNI single-row kernel (faster for one row)
        GActs one;
        std::vector<float> x1(64, 0.5f);
        one.build(GType::q8_0, x1.data(), 1, 64);
        one.prepare_rows_vnni();
        EXPECT_TRUE(one.rows_vnni && !one.rows_amx);
    }
    const BatchInvariantScope invariant(true);  // the AMX rows for every N, one row included
    const int64_t out = 37;
    for (int64_t in : {32, 64, 96, 1056, 2048}) {
        const int64_t wb = gtype_row_bytes(GType::q8_0, in);
        auto w = randv(out * in, 500 + in);
        w[5] = 40.f;  // a larger value in one block
        std::vector<uint8_t> wq(out * wb);
        for (int64_t o = 0; o < out; ++o) quantize_row(GType::q8_0, w.data() + o * in, wq.data() + o * wb, in);
        for (int64_t N : amx_row_counts()) {
            auto x = randv(N * in, 600 + N + in, N == 9 ? 100.f : 1.f);
            GActs acts;
            acts.build(GType::q8_0, x.data(), N, in);
            acts.prepare_rows_vnni();
            ASSERT_TRUE(acts.rows_amx || (N <= 2 ? acts.rows_block : acts.rows_tiles));
            for (bool acc : {false, true}) {
                std::vector<float> y(N * out), want(N * out);
                for (int64_t i = 0; i < N * out; ++i) y[i] = want[i] = 0.5f + 0.01f * (float)(i % 7);
                detail::q8_0_rows_block_ref(want.data(), out, acts.buf.data(), acts.row_bytes, N, in, wq.data(), wb, 0,
                                            out, acc);
                ggml_matmul_rows(y.data(), out, acts, wq.data(), GType::q8_0, wb, N, 0, 13, acc);
                ggml_matmul_rows(y.data(), out, acts, wq.data(), GType::q8_0, wb, N, 13, 35, acc);
                ggml_matmul_rows(y.data(), out, acts, wq.data(), GType::q8_0, wb, N, 35, out, acc);
                for (int64_t i = 0; i < N * out; ++i)
                    ASSERT_EQ(bits(y[i]), bits(want[i])) << "in=" << in << " N=" << N << " i=" << i << " acc=" << acc;
            }
            // a row alone: the same bits as among the others
            const int64_t n = N / 2;
            GActs one;
            one.build(GType::q8_0, x.data() + n * in, 1, in);
            one.prepare_rows_vnni();
            std::vector<float> y1(out), want(N * out);
            ggml_matmul_rows(y1.data(), out, one, wq.data(), GType::q8_0, wb, 1, 0, out, false);
            detail::q8_0_rows_block_ref(want.data(), out, acts.buf.data(), acts.row_bytes, N, in, wq.data(), wb, 0, out,
                                        false);
            for (int64_t o = 0; o < out; ++o) ASSERT_EQ(bits(y1[o]), bits(want[n * out + o])) << "o=" << o;
        }
    }
}

// Batch invariance of Q8_0 decode on AMX hosts end to end: qmatmul over a Q8_0 matrix while batch
// invariant (the engine's setting), 1-3 threads, N = 1..16 and 40: every row has the bits of that
// row computed alone on one thread, and of the block-order twin.
TEST(GgmlQuants, Q8_0BlockOrderDecodeIsBatchInvariantOverThreads) {
    if (!q8_0_block_order_active()) GTEST_SKIP() << "no AMX-INT8 or AVX-512 VNNI on this host (or MOE_ISA below them)";
    const BatchInvariantScope invariant(true);
    const int64_t in = 256, out = 77;
    auto w = randv(out * in, 71);
    QStore st;
    st.build(WType::q8_0, w.data(), out, in);
    const QMatrix m = st.view();
    const int64_t NMax = 40;
    auto x = randv(NMax * in, 72);
    std::vector<float> alone(NMax * out);
    moe::set_num_threads(1);
    for (int64_t n = 0; n < NMax; ++n) qmatmul(alone.data() + n * out, x.data() + n * in, m, 1, false);
    GActs ga;  // the twin from the same quantized activations
    ga.build(GType::q8_0, x.data(), NMax, in);
    std::vector<float> twin(NMax * out);
    detail::q8_0_rows_block_ref(twin.data(), out, ga.buf.data(), ga.row_bytes, NMax, in, m.raw, m.row_bytes, 0, out,
                                false);
    for (int64_t i = 0; i < NMax * out; ++i) ASSERT_EQ(bits(alone[i]), bits(twin[i])) << "i=" << i;
    for (int threads : {1, 2, 3}) {
        moe::set_num_threads(threads);
        for (int64_t N : {2, 3, 4, 7, 8, 9, 15, 16, 40}) {
            std::vector<float> y(N * out);
            qmatmul(y.data(), x.data(), m, N, false);
            for (int64_t i = 0; i < N * out; ++i)
                ASSERT_EQ(bits(y[i]), bits(alone[i])) << "N=" << N << " threads=" << threads << " i=" << i;
        }
    }
    moe::set_num_threads(0);
}

// Q8_0 repacked into tiles (ggml_quants.h's q8_0_repack_tiled): the SIMD repack writes the scalar
// twin's bytes, a tiled row dequantizes to the row it came from, and every product on it (1..17
// and 33 rows, widths that leave a partial tile, output ranges cutting tiles, accumulate on and off)
// has the bits of the block-order twin on the rows before repacking. Runs on every host: without
// AVX-512 VNNI the products take the scalar twin q8_0_tiled_rows_ref (compared the same way).
TEST(GgmlQuants, Q8_0TiledRowsEqualBlockOrderTwinBitForBit) {
    const int64_t out = 77;  // tiles of 32, 32, 13 rows
    for (int64_t in : {32, 64, 96, 1056, 2048}) {
        const int64_t wb = gtype_row_bytes(GType::q8_0, in);
        auto w = randv(out * in, 900 + in);
        w[7] = -50.f;
        std::vector<uint8_t> wq(out * wb);
        for (int64_t o = 0; o < out; ++o) quantize_row(GType::q8_0, w.data() + o * in, wq.data() + o * wb, in);
        ASSERT_EQ(q8_0_tiled_bytes(out, in), 96 * wb);
        std::vector<uint8_t> tiled(q8_0_tiled_bytes(out, in), 0xAB), twin(q8_0_tiled_bytes(out, in), 0xCD);
        q8_0_repack_tiled(wq.data(), wb, out, in, tiled.data());
        q8_0_repack_tiled_ref(wq.data(), wb, out, in, twin.data());
        ASSERT_EQ(tiled, twin) << "in=" << in;
        std::vector<float> r1(in), r2(in);
        for (int64_t o : {int64_t(0), int64_t(31), int64_t(45), out - 1}) {
            dequantize_row(GType::q8_0, wq.data() + o * wb, r1.data(), in);
            q8_0_tiled_dequantize_row(tiled.data(), in, o, 0, in, r2.data());
            for (int64_t i = 0; i < in; ++i) ASSERT_EQ(bits(r1[i]), bits(r2[i])) << "o=" << o << " i=" << i;
        }
        for (int64_t N : amx_row_counts()) {
            auto x = randv(N * in, 1000 + N + in, N == 9 ? 100.f : 1.f);
            GActs acts;
            acts.build(GType::q8_0, x.data(), N, in);
            acts.prepare_tiled();
            if (q8_0_tiled_active()) ASSERT_TRUE(acts.rows_tiles);  // the SIMD kernel (also on AMX hosts' VNNI)
            for (bool acc : {false, true}) {
                std::vector<float> y(N * out), want(N * out), ref(N * out);
                for (int64_t i = 0; i < N * out; ++i) y[i] = want[i] = ref[i] = 0.5f + 0.01f * (float)(i % 7);
                detail::q8_0_rows_block_ref(want.data(), out, acts.buf.data(), acts.row_bytes, N, in, wq.data(), wb, 0,
                                            out, acc);
                q8_0_tiled_rows_ref(ref.data(), out, acts.buf.data(), acts.row_bytes, N, in, tiled.data(), 0, out, acc);
                for (auto [o0, o1] : {std::pair<int64_t, int64_t>{0, 13}, {13, 35}, {35, 64}, {64, out}})
                    ggml_matmul_rows_tiled(y.data(), out, acts, GType::q8_0, tiled.data(), N, o0, o1, acc);
                for (int64_t i = 0; i < N * out; ++i) {
                    ASSERT_EQ(bits(ref[i]), bits(want[i])) << "twin in=" << in << " N=" << N << " i=" << i;
                    ASSERT_EQ(bits(y[i]), bits(want[i])) << "in=" << in << " N=" << N << " i=" << i << " acc=" << acc;
                }
            }
        }
    }
}

// qmatmul on a repacked Q8_0 matrix (QStore::build_tiled), batch invariant or not, 1-3 threads, N =
// 1..16 and 40 (decode rows, and the prefill path past kGemvMaxN), and with the ISA capped at AVX2
// (the scalar twin): every element the bits of the block-order twin on the stored rows, so a row's
// result depends on nothing else in its batch.
TEST(GgmlQuants, Q8_0TiledQmatmulIsBatchInvariantOverThreads) {
    const int64_t in = 256, out = 77;
    auto w = randv(out * in, 81);
    QStore rows, tiled;
    rows.build(WType::q8_0, w.data(), out, in);
    tiled.build_tiled(rows.view());
    const QMatrix m = tiled.view();
    ASSERT_TRUE(m.tiled && m.out == out && m.in == in);
    EXPECT_EQ(m.rows(32, 45).out, 45);
    const int64_t NMax = 40;
    auto x = randv(NMax * in, 82);
    GActs ga;
    ga.build(GType::q8_0, x.data(), NMax, in);
    std::vector<float> twin(NMax * out);
    detail::q8_0_rows_block_ref(twin.data(), out, ga.buf.data(), ga.row_bytes, NMax, in, rows.view().raw, rows.view().row_bytes,
                                0, out, false);
    for (bool inv : {true, false}) {
        const BatchInvariantScope invariant(inv);
        for (int threads : {1, 2, 3}) {
            moe::set_num_threads(threads);
            for (int64_t N : {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 40}) {
                std::vector<float> y(N * out);
                qmatmul(y.data(), x.data(), m, N, false);
                for (int64_t i = 0; i < N * out; ++i)
                    ASSERT_EQ(bits(y[i]), bits(twin[i])) << "N=" << N << " threads=" << threads << " inv=" << inv << " i=" << i;
            }
        }
    }
    moe::set_num_threads(0);
    {  // the ISA capped below the tile kernel after the repack: the scalar twin, the same bits
        const Isa prev = set_isa_cap(Isa::avx2);
        std::vector<float> y(9 * out);
        qmatmul(y.data(), x.data(), m, 9, false);
        set_isa_cap(prev);
        for (int64_t i = 0; i < 9 * out; ++i) ASSERT_EQ(bits(y[i]), bits(twin[i])) << "avx2 cap, i=" << i;
    }
    // an expert's slice (rows 32..63) multiplies as that part of the whole
    std::vector<float> y(3 * 32);
    qmatmul(y.data(), x.data(), m.rows(32, 32), 3, false);
    for (int64_t n = 0; n < 3; ++n)
        for (int64_t o = 0; o < 32; ++o) ASSERT_EQ(bits(y[n * 32 + o]), bits(twin[n * out + 32 + o]));
}

// The same AMX decode rows for moe's own int8 (QStore int8: per row and block of 32 an fp32 scale):
// qmatmul while batch invariant, N = 1..17 and 33 rows, 1-3 threads, output widths that are not
// multiples of the 16-row tile, accumulate on and off: every element the bits of the block-order
// twin q8_rows_block_ref over the same quantized activations, and so of the row computed alone.
// Without invariance one row keeps the VNNI single-row kernel; widths not a multiple of 32 too.
// On AVX-512 VNNI hosts without AMX the same for the VNNI tiles and the one-row block kernel.
TEST(GgmlQuants, Int8BlockOrderRowsEqualTwinBitForBit) {
    if (!q8_rows_amx_active(64) && !q8_rows_block_active(64))
        GTEST_SKIP() << "no AMX-INT8 or AVX-512 VNNI on this host (or MOE_ISA below them)";
    EXPECT_FALSE(q8_rows_amx_active(48));
    EXPECT_FALSE(q8_rows_block_active(48));
    {
        QActs one;
        std::vector<float> x1(64, 0.5f);
        one.build(x1.data(), 1, 64);
        EXPECT_FALSE(one.rows_amx);
    }
    const BatchInvariantScope invariant(true);
    for (int64_t in : {32, 96, 1024}) {
        for (int64_t out : {37, 80}) {
            auto w = randv(out * in, 900 + in + out);
            w[7] = 30.f;
            QStore st;
            st.build(WType::q8, w.data(), out, in);
            const QMatrix m = st.view();
            for (int64_t N : amx_row_counts()) {
                auto x = randv(N * in, 950 + N + in, N == 9 ? 100.f : 1.f);
                QActs qa;
                qa.build(x.data(), N, in);
                for (bool acc : {false, true}) {
                    std::vector<float> want(N * out);
                    for (int64_t i = 0; i < N * out; ++i) want[i] = 0.5f + 0.01f * (float)(i % 7);
                    std::vector<float> y = want;
                    detail::q8_rows_block_ref(want.data(), out, qa.q.data(), qa.scales.data(), N, in, m.q, m.scales, 0,
                                              out, acc);
                    for (int threads : {1, 2, 3}) {
                        moe::set_num_threads(threads);
                        std::vector<float> yt = y;
                        qmatmul(yt.data(), x.data(), m, N, acc);
                        for (int64_t i = 0; i < N * out; ++i)
                            ASSERT_EQ(bits(yt[i]), bits(want[i]))
                                << "in=" << in << " out=" << out << " N=" << N << " acc=" << acc << " threads=" << threads
                                << " i=" << i;
                    }
                }
            }
        }
    }
    moe::set_num_threads(0);
}

// Rows whose length is not a multiple of the type's block are a user error, named.
TEST(GgmlQuants, RaggedRowsAreAnError) {
    QStore st;
    std::vector<float> w(128 * 2);
    EXPECT_THROW(st.build(WType::q4_k, w.data(), 2, 128), moe::error);
    EXPECT_NO_THROW(st.build(WType::q8_0, w.data(), 2, 128));
    EXPECT_EQ(parse_wtype("q4_k", "t"), WType::q4_k);
    EXPECT_THROW(parse_wtype("q4_K_M", "t"), moe::error);
}

// A model made in the ggml types from fp32 weights (Model::set_weight_type: QStore::build with
// ggml's reference quantizers): the logits of a prefill (tile / row-dot prefill path) track fp32,
// coarser types further off, and decode (N = 1, the streaming row dots) gives the prefill's last row.
TEST(GgmlQuants, ModelLogitsTrackFp32) {
    moe::ModelConfig cfg;
    cfg.vocab_size = 37, cfg.n_layer = 2, cfg.n_embd = 256, cfg.n_head = 4, cfg.n_head_kv = 2, cfg.n_ctx = 24;
    cfg.n_expert = 4, cfg.n_expert_used = 2, cfg.n_ff_exp = 256, cfg.n_ff = 256, cfg.layer_moe = {true, false};
    moe::Model m(cfg);
    m.init(3);
    for (const auto& p : m.table().params())  // sharper weights, so the logits carry signal
        if (p.shape.size() >= 2)
            for (int64_t i = 0; i < p.numel; ++i) m.params()[p.offset + i] *= 3.f;
    const int64_t V = cfg.vocab_size, T = 20;
    std::vector<int32_t> seq(T), sid(T, 0), pos(T);
    for (int64_t i = 0; i < T; ++i) seq[i] = (int32_t)((i * 7 + 3) % V), pos[i] = (int32_t)i;
    auto logits = [&](WType t) {
        m.set_weight_type(t);
        auto cache = m.make_cache(1);
        m.forward_cached(seq.data(), sid.data(), pos.data(), T, cache);
        std::vector<float> all(m.logits(), m.logits() + T * V);
        auto c2 = m.make_cache(1);  // decode: prefill T - 1 rows, then one row
        m.forward_cached(seq.data(), sid.data(), pos.data(), T - 1, c2, true);
        m.forward_cached(&seq[T - 1], &sid[0], &pos[T - 1], 1, c2, true);
        for (int64_t j = 0; j < V; ++j)
            EXPECT_NEAR(m.logits()[j], all[(T - 1) * V + j], 2e-3 * (1 + std::fabs(all[(T - 1) * V + j])))
                << wtype_name(t) << " decode vs prefill, logit " << j;
        return all;
    };
    const auto f = logits(WType::f32);
    double prev = 0;
    double int8_rms = 0;
    for (auto [t, max_rms] : {std::pair{WType::q8, 1.0}, std::pair{WType::f16, 0.002}, std::pair{WType::q8_0, 0.04},
                              std::pair{WType::q6_k, 0.08}, std::pair{WType::q5_k, 0.15}, std::pair{WType::q4_k, 0.3},
                              std::pair{WType::q4_0, 0.4}}) {
        const auto q = logits(t);
        double num = 0, den = 0;
        int agree = 0;
        for (int64_t r = 0; r < T; ++r) {
            const float* a = f.data() + r * V;
            const float* b = q.data() + r * V;
            for (int64_t j = 0; j < V; ++j) num += (a[j] - b[j]) * (a[j] - b[j]), den += a[j] * a[j];
            agree += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
        }
        const double rms = std::sqrt(num / den);
        std::printf("%s: logits relative RMS error %.4f, top-1 agreement %d/%lld\n", wtype_name(t), rms, agree, (long long)T);
        EXPECT_LT(rms, max_rms) << wtype_name(t);
        EXPECT_GT(rms, 1e-6) << wtype_name(t) << ": identical to fp32, the type was not applied";
        if (t == WType::q8) {  // moe's own int8 (fp32 scales): the yardstick for q8_0 (fp16 scales)
            int8_rms = rms;
            continue;
        }
        if (t == WType::q8_0) EXPECT_LT(rms, 1.5 * int8_rms) << "q8_0 much coarser than moe's int8";
        EXPECT_GE(agree, t == WType::q4_0 || t == WType::q4_k ? T / 2 : T * 8 / 10) << wtype_name(t);
        EXPECT_GT(rms, prev) << wtype_name(t) << " should be coarser than the type before";
        prev = rms;
    }
    m.set_weight_type(WType::f32);
}

// Q4_K repacked (q4_k_repack_tiled: nibbles in the tiles' order, the 6-bit scales decoded): rows
// dequantize to dequantize_row's bits; the scalar twin q4_k_tiled_rows_ref is within rounding of the
// double reference everywhere; and on AVX-512 VNNI hosts every product on the tiles (1..17 and 33
// rows, ranges cutting tiles, accumulate on and off, qmatmul over 1-3 threads, invariant or not) has
// the bits of the VNNI tiles on the rows as stored (ggml_matmul's prefill, the AMX tiles' bits),
// and so has the twin.
// The AVX2 kernels on Q4_K's, Q4_0's and Q8_0's tiles (hosts without the VNNI tiles, e.g. Zen 3; here
// with the ISA capped at AVX2): the scalar twins' bits for 1..17 activation rows (one row takes the
// whole tile, more go in pairs over half tiles; Q4_K's prefill unpacks each tile first), ranges
// cutting tiles and halves, accumulate on and off, a Q8_0 block of -128s; then qmatmul on a repacked
// QStore (decode rows and the prefill, 1..3 threads) against the twin.
TEST(GgmlQuants, TiledRowsAvx2EqualTheirTwinsBitForBit) {
    if (!cpu_features().avx2 || !cpu_features().fma || !cpu_features().f16c) GTEST_SKIP() << "no AVX2 here";
    struct Restore {  // the cap and the thread count back whatever assertion returns early
        Isa prev = set_isa_cap(Isa::avx2);
        ~Restore() { set_isa_cap(prev), moe::set_num_threads(0); }
    } restore;
    ASSERT_TRUE(avx2_tiles_active());
    const int64_t out = 77;
    for (GType t : {GType::q4_k, GType::q4_0, GType::q8_0}) {
        SCOPED_TRACE(gtype_name(t));
        const GType at = gtype_act(t);  // q8_k / q8_0 activation rows
        auto twin_rows = [&](float* y, const GActs& a, int64_t N, int64_t in, const uint8_t* tiled, bool acc) {
            if (t == GType::q4_k) q4_k_tiled_rows_ref(y, out, a.buf.data(), a.row_bytes, N, in, tiled, 0, out, acc);
            else if (t == GType::q4_0) q4_0_tiled_rows_ref(y, out, a.buf.data(), a.row_bytes, N, in, tiled, 0, out, acc);
            else q8_0_tiled_rows_ref(y, out, a.buf.data(), a.row_bytes, N, in, tiled, 0, out, acc);
        };
        for (int64_t in : {256, 768}) {
            const int64_t wb = gtype_row_bytes(t, in);
            auto w = randv(out * in, 1700 + in);
            w[5] = -30.f;
            std::vector<uint8_t> wq(out * wb);
            for (int64_t o = 0; o < out; ++o) quantize_row(t, w.data() + o * in, wq.data() + o * wb, in);
            if (t == GType::q8_0)  // a file's Q8_0 block may hold -128 (moe's and ggml's quantizers write -127..127)
                std::memset(reinterpret_cast<BlockQ8_0*>(wq.data() + 3 * wb)[1].qs, 0x80, 32);
            std::vector<uint8_t> tiled(t == GType::q4_k ? q4_k_tiled_bytes(out, in) : (out + 31) / 32 * 32 * wb, 0xAB);
            if (t == GType::q4_k) q4_k_repack_tiled(wq.data(), wb, out, in, tiled.data());
            else if (t == GType::q4_0) q4_0_repack_tiled(wq.data(), wb, out, in, tiled.data());
            else q8_0_repack_tiled(wq.data(), wb, out, in, tiled.data());
            if (t == GType::q8_0) {  // the AVX2 repack writes the scalar twin's bytes
                std::vector<uint8_t> twin(tiled.size(), 0xAB);
                q8_0_repack_tiled_ref(wq.data(), wb, out, in, twin.data());
                ASSERT_EQ(tiled, twin);
            }
            for (int64_t N : {1, 2, 3, 4, 5, 8, 17}) {
                auto x = randv(N * in, 1800 + N + in, N == 3 ? 50.f : 1.f);
                GActs acts;
                acts.build(at, x.data(), N, in);
                acts.prepare_tiled(t == GType::q4_0 ? 8 : 128);  // as qmatmul does (Q4_0: xo8, the block sums)
                ASSERT_EQ(acts.rows_tiles8, t == GType::q4_0);
                for (bool acc : {false, true}) {
                    std::vector<float> y(N * out), twin(N * out);
                    for (int64_t i = 0; i < N * out; ++i) y[i] = twin[i] = 0.25f + 0.01f * (float)(i % 5);
                    twin_rows(twin.data(), acts, N, in, tiled.data(), acc);
                    for (auto [o0, o1] : {std::pair<int64_t, int64_t>{0, 5}, {5, 20}, {20, 40}, {40, 64}, {64, 70}, {70, out}})
                        ggml_matmul_rows_tiled(y.data(), out, acts, t, tiled.data(), N, o0, o1, acc);
                    for (int64_t i = 0; i < N * out; ++i)
                        ASSERT_EQ(bits(y[i]), bits(twin[i])) << "in=" << in << " N=" << N << " i=" << i << " acc=" << acc;
                }
            }
        }
        const int64_t in = 512;
        auto w = randv(out * in, 1900);
        QStore st, tl;
        st.build(t == GType::q4_k ? WType::q4_k : t == GType::q4_0 ? WType::q4_0 : WType::q8_0, w.data(), out, in);
        ASSERT_TRUE(repack_for_host(st.view()) || !repack_enabled());
        tl.build_tiled(st.view());
        const QMatrix m = tl.view();
        auto x = randv(24 * in, 1901);
        for (int threads : {1, 2, 3}) {
            moe::set_num_threads(threads);
            for (int64_t N : {1, 4, 24}) {
                std::vector<float> y(N * out), twin(N * out);
                GActs gn;
                gn.build(at, x.data(), N, in);
                twin_rows(twin.data(), gn, N, in, m.raw, false);
                qmatmul(y.data(), x.data(), m, N, false);
                for (int64_t i = 0; i < N * out; ++i)
                    ASSERT_EQ(bits(y[i]), bits(twin[i])) << "threads=" << threads << " N=" << N << " i=" << i;
            }
        }
    }
}

// The K-quants' prefill tiles on the rows as stored (Q4_K, Q5_K and Q6_K unpacked per call, on AVX2
// hosts and on AVX-512 VNNI hosts) against kquant_tiles_ref, bit for bit: through the
// kernel on output ranges that cut tiles, accumulate on and off, and through qmatmul at 1-3 threads.
// The AVX2 tiles run on any AVX2 host (capped there); the VNNI tiles where the host has them. The
// blocks are random bytes (every u, scales and minimums), one row with every u at its maximum, and
// one activation row of -128s: the int16 sums' bounds.
TEST(GgmlQuants, KQuantPrefillTilesEqualTheirTwinBitForBit) {
    if (!cpu_features().avx2 || !cpu_features().fma || !cpu_features().f16c) GTEST_SKIP() << "no AVX2 here";
    struct Restore {
        Isa prev = set_isa_cap(Isa::avx2);
        ~Restore() { set_isa_cap(prev), moe::set_num_threads(0); }
    } restore;
    const Isa host = std::min(restore.prev, Isa::avx512);  // (AMX hosts: their VNNI tiles)
    auto blocks = [](GType t, int64_t out, int64_t in, uint64_t seed) {
        const int64_t wb = gtype_row_bytes(t, in), bb = gtype_block_bytes(t);
        std::vector<uint8_t> q(out * wb);
        std::mt19937_64 r(seed);
        std::uniform_real_distribution<float> scale(0.002f, 0.02f);
        for (auto& b : q) b = (uint8_t)r();
        for (int64_t o = 0; o < out; ++o)
            for (int64_t s = 0; s < in / 256; ++s) {
                uint8_t* blk = q.data() + o * wb + s * bb;
                if (o == 3) std::memset(t == GType::q6_k ? blk : blk + 16, 0xFF, t == GType::q6_k ? 192 : bb - 16);
                const uint16_t d = fp32_to_fp16(scale(r)), dmin = fp32_to_fp16(scale(r));
                if (t == GType::q6_k) {
                    std::memcpy(blk + 208, &d, 2);
                } else {
                    std::memcpy(blk, &d, 2), std::memcpy(blk + 2, &dmin, 2);
                }
            }
        return q;
    };
    const int64_t out = 77;
    for (GType t : {GType::q5_k, GType::q6_k, GType::q4_k}) {
        SCOPED_TRACE(gtype_name(t));
        for (int64_t in : {256, 768}) {
            const int64_t wb = gtype_row_bytes(t, in);
            const std::vector<uint8_t> wq = blocks(t, out, in, 2100 + in + (int)t);
            for (int64_t N : {1, 2, 3, 9, 17}) {
                auto x = randv(N * in, 2200 + N + in, N == 3 ? 50.f : 1.f);
                GActs acts;
                acts.build(GType::q8_k, x.data(), N, in);
                // the last row: every value -128 (moe's quantizer writes -127..127, a file's or another
                // quantizer's rows may hold -128)
                for (int64_t s = 0; s < in / 256; ++s) {
                    BlockQ8_K& blk = reinterpret_cast<BlockQ8_K*>(acts.buf.data() + (N - 1) * acts.row_bytes)[s];
                    std::memset(blk.qs, 0x80, 256);
                    for (auto& bs : blk.bsums) bs = -16 * 128;
                }
                for (bool acc : {false, true}) {
                    std::vector<float> y(N * out), twin(N * out);
                    for (int64_t i = 0; i < N * out; ++i) y[i] = twin[i] = 0.25f + 0.01f * (float)(i % 5);
                    kquant_tiles_ref(t, twin.data(), out, acts.buf.data(), acts.row_bytes, N, in, wq.data(), wb, 0, out, acc);
                    std::vector<uint8_t> scratch(detail::tile_scratch_bytes(in) + 64);
                    uint8_t* s = scratch.data() + (64 - reinterpret_cast<uintptr_t>(scratch.data()) % 64) % 64;
                    for (auto [o0, o1] : {std::pair<int64_t, int64_t>{0, 5}, {5, 40}, {40, 64}, {64, 70}, {70, out}})
                        detail::prefill_tiles_avx2(y.data(), out, acts.buf.data(), acts.row_bytes, wq.data(), t, wb, N,
                                                   in, o0, o1, acc, s);
                    for (int64_t i = 0; i < N * out; ++i)
                        ASSERT_EQ(bits(y[i]), bits(twin[i])) << "in=" << in << " N=" << N << " i=" << i << " acc=" << acc;
                }
            }
            // qmatmul's prefill (N > 8): the AVX2 tiles, then the VNNI tiles where the host has them
            auto x = randv(24 * in, 2300 + in);
            GActs gn;
            gn.build(GType::q8_k, x.data(), 24, in);
            std::vector<float> twin(24 * out);
            kquant_tiles_ref(t, twin.data(), out, gn.buf.data(), gn.row_bytes, 24, in, wq.data(), wb, 0, out, false);
            QMatrix m;
            m.type = t == GType::q5_k ? WType::q5_k : t == GType::q6_k ? WType::q6_k : WType::q4_k;
            m.out = out, m.in = in, m.raw = wq.data(), m.row_bytes = wb;
            for (Isa cap : {Isa::avx2, host}) {
                set_isa_cap(cap);
                if (!ggml_prefill_on_int8(t)) continue;
                for (int threads : {1, 2, 3}) {
                    moe::set_num_threads(threads);
                    std::vector<float> y(24 * out);
                    qmatmul(y.data(), x.data(), m, 24, false);
                    for (int64_t i = 0; i < 24 * out; ++i)
                        ASSERT_EQ(bits(y[i]), bits(twin[i])) << "isa=" << (int)cap << " threads=" << threads << " i=" << i;
                }
            }
            set_isa_cap(Isa::avx2);
        }
    }
}

TEST(GgmlQuants, Q4_KTiledRowsEqualTheVnniTilesBitForBit) {
    const int64_t out = 77;
    for (int64_t in : {256, 512, 1280}) {
        const int64_t wb = gtype_row_bytes(GType::q4_k, in);
        auto w = randv(out * in, 1400 + in);
        w[3] = 30.f;
        std::vector<uint8_t> wq(out * wb);
        for (int64_t o = 0; o < out; ++o) quantize_row(GType::q4_k, w.data() + o * in, wq.data() + o * wb, in);
        std::vector<uint8_t> tiled(q4_k_tiled_bytes(out, in), 0xAB);
        q4_k_repack_tiled(wq.data(), wb, out, in, tiled.data());
        std::vector<float> r1(in), r2(in);
        for (int64_t o : {int64_t(0), int64_t(31), int64_t(45), out - 1}) {
            dequantize_row(GType::q4_k, wq.data() + o * wb, r1.data(), in);
            q4_k_tiled_dequantize_row(tiled.data(), in, o, 0, in, r2.data());
            for (int64_t i = 0; i < in; ++i) ASSERT_EQ(bits(r1[i]), bits(r2[i])) << "o=" << o << " i=" << i;
        }
        QMatrix rows;
        rows.type = WType::q4_k, rows.out = out, rows.in = in, rows.raw = wq.data(), rows.row_bytes = wb;
        for (int64_t N : amx_row_counts()) {
            auto x = randv(N * in, 1500 + N + in, N == 9 ? 50.f : 1.f);
            GActs acts;
            acts.build(GType::q8_k, x.data(), N, in);
            std::vector<float> ref(N * out), dref(N * out);
            q4_k_tiled_rows_ref(ref.data(), out, acts.buf.data(), acts.row_bytes, N, in, tiled.data(), 0, out, false);
            qmatmul_ref(dref.data(), x.data(), rows, N, false);
            for (int64_t i = 0; i < N * out; ++i) ASSERT_NEAR(ref[i], dref[i], 1e-3f * (1.f + std::fabs(dref[i]))) << "i=" << i;
            if (!tiled_kernels_active()) continue;
            acts.prepare_tiled();
            ASSERT_TRUE(acts.rows_tiles);
            for (bool acc : {false, true}) {
                std::vector<float> y(N * out), want(N * out), twin(N * out);
                for (int64_t i = 0; i < N * out; ++i) y[i] = want[i] = twin[i] = 0.5f + 0.01f * (float)(i % 7);
                detail::TileActs xa;  // the VNNI tiles on the rows as stored
                xa.xp = acts.xp.data(), xa.xs = acts.xs.data(), xa.am = acts.am.data(), xa.sb = true;
                detail::prefill_tiles_vnni(want.data(), out, xa, wq.data(), GType::q4_k, wb, N, in, 0, out, acc,
                                           thread_scratch(detail::tile_scratch_bytes(in)));
                q4_k_tiled_rows_ref(twin.data(), out, acts.buf.data(), acts.row_bytes, N, in, tiled.data(), 0, out, acc);
                for (auto [o0, o1] : {std::pair<int64_t, int64_t>{0, 13}, {13, 35}, {35, 64}, {64, out}})
                    ggml_matmul_rows_tiled(y.data(), out, acts, GType::q4_k, tiled.data(), N, o0, o1, acc);
                for (int64_t i = 0; i < N * out; ++i) {
                    ASSERT_EQ(bits(twin[i]), bits(want[i])) << "twin in=" << in << " N=" << N << " i=" << i;
                    ASSERT_EQ(bits(y[i]), bits(want[i])) << "in=" << in << " N=" << N << " i=" << i << " acc=" << acc;
                }
            }
        }
    }
    if (!tiled_kernels_active()) GTEST_SKIP() << "no AVX-512 VNNI tiles here: the scalar twin alone was checked";
    // qmatmul on a repacked QStore: threads, invariance, N past kGemvMaxN, an expert's slice
    const int64_t in = 512;
    auto w = randv(out * in, 1600);
    QStore st, tl;
    st.build(WType::q4_k, w.data(), out, in);
    tl.build_tiled(st.view());
    const QMatrix m = tl.view();
    ASSERT_TRUE(m.tiled && m.row_bytes == q4_k_tiled_row_bytes(in));
    const int64_t NMax = 40;
    auto x = randv(NMax * in, 1601);
    GActs ga;
    ga.build(GType::q8_k, x.data(), NMax, in);
    std::vector<float> twin(NMax * out);
    q4_k_tiled_rows_ref(twin.data(), out, ga.buf.data(), ga.row_bytes, NMax, in, m.raw, 0, out, false);
    for (bool inv : {true, false}) {
        const BatchInvariantScope scope(inv);
        for (int threads : {1, 2, 3}) {
            moe::set_num_threads(threads);
            for (int64_t N : {1, 2, 3, 5, 8, 9, 16, 40}) {
                std::vector<float> y(N * out);
                qmatmul(y.data(), x.data(), m, N, false);
                for (int64_t i = 0; i < N * out; ++i)
                    ASSERT_EQ(bits(y[i]), bits(twin[i])) << "N=" << N << " threads=" << threads << " inv=" << inv << " i=" << i;
            }
        }
    }
    moe::set_num_threads(0);
    std::vector<float> y(3 * 32);
    qmatmul(y.data(), x.data(), m.rows(32, 32), 3, false);
    for (int64_t n = 0; n < 3; ++n)
        for (int64_t o = 0; o < 32; ++o) ASSERT_EQ(bits(y[n * 32 + o]), bits(twin[n * out + 32 + o]));
}

// Q4_0 repacked (q4_0_repack_tiled: the block's 16 bytes in the tiles' order, the low nibbles groups
// 0-3 and the high ones 4-7): rows dequantize to dequantize_row's bits, and on AVX-512 VNNI hosts
// every product (1..17 and 33 rows, ranges cutting tiles, accumulate on and off; qmatmul over 1-3
// threads, invariant or not, beside a Q8_0 matrix reading the same x) has the bits of the VNNI
// tiles on the rows as stored, as has the scalar twin (within rounding of the double reference on
// every host).
TEST(GgmlQuants, Q4_0TiledRowsEqualTheVnniTilesBitForBit) {
    const int64_t out = 77;
    for (int64_t in : {32, 96, 1056}) {
        const int64_t wb = gtype_row_bytes(GType::q4_0, in);
        auto w = randv(out * in, 1700 + in);
        std::vector<uint8_t> wq(out * wb);
        for (int64_t o = 0; o < out; ++o) quantize_row(GType::q4_0, w.data() + o * in, wq.data() + o * wb, in);
        std::vector<uint8_t> tiled((out + 31) / 32 * 32 * wb, 0xAB);
        q4_0_repack_tiled(wq.data(), wb, out, in, tiled.data());
        std::vector<float> r1(in), r2(in);
        for (int64_t o : {int64_t(0), int64_t(31), int64_t(45), out - 1}) {
            dequantize_row(GType::q4_0, wq.data() + o * wb, r1.data(), in);
            q4_0_tiled_dequantize_row(tiled.data(), in, o, 0, in, r2.data());
            for (int64_t i = 0; i < in; ++i) ASSERT_EQ(bits(r1[i]), bits(r2[i])) << "o=" << o << " i=" << i;
        }
        QMatrix rows;
        rows.type = WType::q4_0, rows.out = out, rows.in = in, rows.raw = wq.data(), rows.row_bytes = wb;
        for (int64_t N : amx_row_counts()) {
            auto x = randv(N * in, 1800 + N + in, N == 9 ? 50.f : 1.f);
            GActs acts;
            acts.build(GType::q8_0, x.data(), N, in);
            std::vector<float> ref(N * out), dref(N * out);
            q4_0_tiled_rows_ref(ref.data(), out, acts.buf.data(), acts.row_bytes, N, in, tiled.data(), 0, out, false);
            qmatmul_ref(dref.data(), x.data(), rows, N, false);
            for (int64_t i = 0; i < N * out; ++i) ASSERT_NEAR(ref[i], dref[i], 1e-3f * (1.f + std::fabs(dref[i]))) << "i=" << i;
            if (!tiled_kernels_active()) continue;
            acts.prepare_tiled(8);
            ASSERT_TRUE(acts.rows_tiles && acts.rows_tiles8);
            for (bool acc : {false, true}) {
                std::vector<float> y(N * out), want(N * out), twin(N * out);
                for (int64_t i = 0; i < N * out; ++i) y[i] = want[i] = twin[i] = 0.5f + 0.01f * (float)(i % 7);
                detail::TileActs xa;  // the VNNI tiles on the rows as stored (offset 8)
                xa.xp = acts.xp.data(), xa.xs = acts.xs.data(), xa.am = acts.am.data(), xa.xo = acts.xo8.data();
                detail::prefill_tiles_vnni(want.data(), out, xa, wq.data(), GType::q4_0, wb, N, in, 0, out, acc,
                                           thread_scratch(detail::tile_scratch_bytes(in)));
                q4_0_tiled_rows_ref(twin.data(), out, acts.buf.data(), acts.row_bytes, N, in, tiled.data(), 0, out, acc);
                for (auto [o0, o1] : {std::pair<int64_t, int64_t>{0, 13}, {13, 35}, {35, 64}, {64, out}})
                    ggml_matmul_rows_tiled(y.data(), out, acts, GType::q4_0, tiled.data(), N, o0, o1, acc);
                for (int64_t i = 0; i < N * out; ++i) {
                    ASSERT_EQ(bits(twin[i]), bits(want[i])) << "twin in=" << in << " N=" << N << " i=" << i;
                    ASSERT_EQ(bits(y[i]), bits(want[i])) << "in=" << in << " N=" << N << " i=" << i << " acc=" << acc;
                }
            }
        }
    }
    if (!tiled_kernels_active()) GTEST_SKIP() << "no AVX-512 VNNI tiles here: the scalar twin alone was checked";
    const int64_t in = 256;
    auto w = randv(out * in, 1900), w8 = randv(out * in, 1901);
    QStore st, tl, st8, tl8;
    st.build(WType::q4_0, w.data(), out, in);
    tl.build_tiled(st.view());
    st8.build(WType::q8_0, w8.data(), out, in);
    tl8.build_tiled(st8.view());
    const QMatrix m = tl.view(), m8 = tl8.view();
    ASSERT_TRUE(m.tiled && m8.tiled);
    const int64_t NMax = 40;
    auto x = randv(NMax * in, 1902);
    GActs ga;
    ga.build(GType::q8_0, x.data(), NMax, in);
    std::vector<float> twin(NMax * out), twin8(NMax * out);
    q4_0_tiled_rows_ref(twin.data(), out, ga.buf.data(), ga.row_bytes, NMax, in, m.raw, 0, out, false);
    q8_0_tiled_rows_ref(twin8.data(), out, ga.buf.data(), ga.row_bytes, NMax, in, m8.raw, 0, out, false);
    for (bool inv : {true, false}) {
        const BatchInvariantScope scope(inv);
        for (int threads : {1, 2, 3}) {
            moe::set_num_threads(threads);
            for (int64_t N : {1, 2, 3, 5, 8, 9, 16, 40}) {
                std::vector<float> y(N * out), y8(N * out);
                if (N <= kGemvMaxN || inv) qmatmul_same_x(x.data(), N, {{y.data(), m}, {y8.data(), m8}});
                else qmatmul(y.data(), x.data(), m, N, false), qmatmul(y8.data(), x.data(), m8, N, false);
                for (int64_t i = 0; i < N * out; ++i) {
                    ASSERT_EQ(bits(y[i]), bits(twin[i])) << "N=" << N << " threads=" << threads << " inv=" << inv << " i=" << i;
                    ASSERT_EQ(bits(y8[i]), bits(twin8[i])) << "q8_0 N=" << N << " i=" << i;
                }
            }
        }
    }
    moe::set_num_threads(0);
}

// moe's int8 repacked the same way (q8_repack_tiled, fp32 scales in the tiles): the SIMD repack writes
// the twin's bytes, rows dequantize as before, and qmatmul on it (batch invariant or not, 1-3
// threads, N = 1..17 and 33, the ISA capped at AVX2: the scalar twin) gives every element the bits of
// the block-order twin q8_rows_block_ref on the rows as stored; an expert's slice too.
TEST(GgmlQuants, Int8TiledQmatmulEqualsBlockOrderTwinBitForBit) {
    const int64_t out = 77;
    for (int64_t in : {32, 96, 1056}) {
        auto w = randv(out * in, 1200 + in);
        QStore rows, tiled;
        rows.build(WType::q8, w.data(), out, in);
        const QMatrix r = rows.view();
        tiled.build_tiled(r);
        const QMatrix m = tiled.view();
        ASSERT_TRUE(m.tiled && m.out == out && m.in == in && !m.q && m.raw);
        std::vector<uint8_t> a(q8_tiled_bytes(out, in), 0xAB), b(q8_tiled_bytes(out, in), 0xCD);
        q8_repack_tiled(r.q, r.scales, out, in, a.data());
        q8_repack_tiled_ref(r.q, r.scales, out, in, b.data());
        ASSERT_EQ(a, b) << "in=" << in;
        std::vector<float> d1(in), d2(in);
        for (int64_t o : {int64_t(0), int64_t(33), out - 1}) {
            dequantize_row(d1.data(), r, o);
            dequantize_row(d2.data(), m, o);
            for (int64_t i = 0; i < in; ++i) ASSERT_EQ(bits(d1[i]), bits(d2[i])) << "o=" << o << " i=" << i;
        }
        const int64_t NMax = 33;
        auto x = randv(NMax * in, 1300 + in);
        for (int64_t N : amx_row_counts()) {
            QActs qa;
            qa.build(x.data(), N, in);
            std::vector<float> twin(N * out);
            detail::q8_rows_block_ref(twin.data(), out, qa.q.data(), qa.scales.data(), N, in, r.q, r.scales, 0, out, false);
            for (bool inv : {true, false})
                for (int threads : {1, 2, 3}) {
                    if (!inv && threads != 2) continue;
                    const BatchInvariantScope scope(inv);
                    moe::set_num_threads(threads);
                    std::vector<float> y(N * out);
                    qmatmul(y.data(), x.data(), m, N, false);
                    for (int64_t i = 0; i < N * out; ++i)
                        ASSERT_EQ(bits(y[i]), bits(twin[i])) << "in=" << in << " N=" << N << " inv=" << inv << " i=" << i;
                }
            moe::set_num_threads(0);
            if (cpu_features().avx2 && cpu_features().f16c) {  // AVX2 hosts' tiles (q8_tiled_rows_avx2)
                const Isa prev = set_isa_cap(Isa::avx2);
                EXPECT_TRUE(repacks_type(WType::q8) || !repack_enabled());
                for (int threads : {1, 2, 3})
                    for (bool inv : {true, false}) {
                        const BatchInvariantScope scope(inv);
                        moe::set_num_threads(threads);
                        std::vector<float> y(N * out);
                        qmatmul(y.data(), x.data(), m, N, false);
                        for (int64_t i = 0; i < N * out; ++i)
                            ASSERT_EQ(bits(y[i]), bits(twin[i])) << "avx2 cap, N=" << N << " threads=" << threads << " i=" << i;
                    }
                moe::set_num_threads(0);
                set_isa_cap(prev);
            }
            if (N == 5) {
                std::vector<float> ys(N * 32);  // rows 32..63 alone
                qmatmul(ys.data(), x.data(), m.rows(32, 32), N, false);
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t o = 0; o < 32; ++o) ASSERT_EQ(bits(ys[n * 32 + o]), bits(twin[n * out + 32 + o]));
            }
        }
    }
}

// The small model of the repack tests: 2 layers (MoE, then dense), C 256, 4 experts, top-2.
moe::ModelConfig small_model_config(int64_t n_ff_exp, int64_t n_ff) {
    moe::ModelConfig cfg;
    cfg.vocab_size = 37, cfg.n_layer = 2, cfg.n_embd = 256, cfg.n_head = 4, cfg.n_head_kv = 2, cfg.n_ctx = 24;
    cfg.n_expert = 4, cfg.n_expert_used = 2, cfg.n_ff_exp = n_ff_exp, cfg.n_ff = n_ff, cfg.layer_moe = {true, false};
    return cfg;
}

// The logits of an 11-token prompt, then of one decode step after it (tokens (5 i + k) mod V).
std::vector<float> prompt_and_step_logits(moe::Model& m, int k, int64_t T = 12) {
    const int64_t V = m.config().vocab_size;
    std::vector<int32_t> seq(T), sid(T, 0), pos(T);
    for (int64_t i = 0; i < T; ++i) seq[i] = (int32_t)((i * 5 + k) % V), pos[i] = (int32_t)i;
    auto cache = m.make_cache(1);
    m.forward_cached(seq.data(), sid.data(), pos.data(), T - 1, cache);
    std::vector<float> all(m.logits(), m.logits() + (T - 1) * V);
    m.forward_cached(&seq[T - 1], &sid[0], &pos[T - 1], 1, cache);
    all.insert(all.end(), m.logits(), m.logits() + V);
    return all;
}

// Model::repack_for_inference (the inference tools' load on AVX-512 VNNI hosts without AMX): the
// Q8_0 or int8 matrices (attention, experts, a 37-row head: a partial tile) repacked into tiles give,
// while batch invariant, the logits of the rows as stored bit for bit (both the block order there),
// for a prefill and a decode step. (Without invariance the products on the tiles keep the block
// order, the kernel tests above, but the fp32 router's GEMM does not.) Elsewhere it repacks nothing.
TEST(GgmlQuants, RepackedModelGivesTheSameLogitsBitForBit) {
  for (WType type : {WType::q8_0, WType::q8}) {
    SCOPED_TRACE(wtype_name(type));
    moe::Model m(small_model_config(96, 128));
    m.init(5);
    m.set_weight_type(type);
    auto logits = [&] { return prompt_and_step_logits(m, 1); };
    std::vector<float> before;
    {
        const BatchInvariantScope inv(true);
        before = logits();
    }
    const double bytes = m.repack_for_inference();
    if (!q8_0_tiled_active()) {
        EXPECT_EQ(bytes, 0.0);
        GTEST_SKIP() << "no repacking of these types on this host (AMX-INT8 reads Q8_0 in place; AVX2 hosts repack Q4_K and Q4_0 alone)";
    }
    if (type == WType::q8) ASSERT_TRUE(q8_rows_block_active(m.config().n_embd));  // int8's block order before it
    EXPECT_GT(bytes, 0.0);
    {
        const BatchInvariantScope scope(true);
        const auto after = logits();
        ASSERT_EQ(after.size(), before.size());
        for (size_t i = 0; i < after.size(); ++i) ASSERT_EQ(bits(after[i]), bits(before[i])) << "i=" << i;
    }
    EXPECT_EQ(m.repack_for_inference(), 0.0);  // already repacked
  }
}

// A Q4_K model on an AVX2 host (the ISA capped here): repack_for_inference repacks its matrices for
// the AVX2 tile kernel (expert stacks cut per expert included), and the logits of a prompt and a
// decode step stay those of the rows as stored up to the summation order (the row dots' lanes
// against the tiles' order: relative 1e-4 of the largest logit).
TEST(GgmlQuants, Q4_KModelRepackedOnAvx2KeepsItsLogits) {
    if (!cpu_features().avx2 || !cpu_features().fma || !cpu_features().f16c) GTEST_SKIP() << "no AVX2 here";
    struct Restore {
        Isa prev = set_isa_cap(Isa::avx2);
        ~Restore() { set_isa_cap(prev); }
    } restore;
    moe::Model m(small_model_config(256, 256));  // Q4_K: rows of whole 256-value super-blocks
    m.init(7);
    m.set_weight_type(WType::q4_k);
    auto logits = [&] { return prompt_and_step_logits(m, 2); };
    const std::vector<float> before = logits();
    ASSERT_TRUE(avx2_tiles_active());
    const double bytes = m.repack_for_inference();
    if (!repack_enabled()) GTEST_SKIP() << "MOE_REPACK=0";
    EXPECT_GT(bytes, 0.0);
    const std::vector<float> after = logits();
    ASSERT_EQ(after.size(), before.size());
    float scale = 0;
    for (float v : before) scale = std::max(scale, std::fabs(v));
    int64_t differ = 0;
    for (size_t i = 0; i < after.size(); ++i) {
        ASSERT_NEAR(after[i], before[i], 1e-4f * scale) << "i=" << i;
        differ += bits(after[i]) != bits(before[i]);
    }
    EXPECT_GT(differ, 0) << "the tiles' order should move some last bits: were the tiles read at all?";
}

// Repacked Q8_0, Q4_0, Q4_K and int8 models give the same logits, bit for bit, on an AVX-512 VNNI
// host and on an AVX2-only host (here the ISA capped): the AVX2 tile kernels have the VNNI tiles'
// bits, so a model served on Zen 3 answers as on Zen 4: a 23-token prompt (Q4_K's AVX2 prefill
// unpacks its tiles from 17 rows) and a decode step, batch invariant or not.
TEST(GgmlQuants, RepackedModelLogitsAreTheSameOnAvx2AndVnniHosts) {
    struct Restore {
        Isa prev = set_isa_cap(Isa::avx512);  // (AMX hosts: their VNNI side)
        ~Restore() { set_isa_cap(prev); }
    } restore;
    if (!q8_0_tiled_active() || !cpu_features().f16c) GTEST_SKIP() << "no AVX-512 VNNI tiles on this host";
    if (!repack_enabled()) GTEST_SKIP() << "MOE_REPACK=0";
    for (WType t : {WType::q8_0, WType::q4_0, WType::q4_k, WType::q8}) {
        SCOPED_TRACE(wtype_name(t));
        moe::Model m(small_model_config(256, 256));
        m.init(9);
        m.set_weight_type(t);
        ASSERT_GT(m.repack_for_inference(), 0.0);
        for (bool inv : {false, true}) {
            const BatchInvariantScope scope(inv);
            set_isa_cap(Isa::avx512);
            const std::vector<float> vnni = prompt_and_step_logits(m, 3, 24);
            set_isa_cap(Isa::avx2);
            ASSERT_TRUE(avx2_tiles_active());
            const std::vector<float> avx2 = prompt_and_step_logits(m, 3, 24);
            ASSERT_EQ(vnni.size(), avx2.size());
            for (size_t i = 0; i < vnni.size(); ++i) ASSERT_EQ(bits(vnni[i]), bits(avx2[i])) << "inv=" << inv << " i=" << i;
        }
    }
}

// The several-weight-rows decode dots (row_dots_w: one activation row against 2 or 4 weight rows
// side by side) give every output the bits of the single-row dot, on each ISA; ggml_matmul at N = 1
// (which takes them, with a tail of single rows) too.
TEST(GgmlQuants, SeveralWeightRowsEqualSingleRowDotsBitForBit) {
    const Isa prev = set_isa_cap(Isa::avx512);
    struct Restore {
        Isa cap;
        ~Restore() { set_isa_cap(cap); }
    } restore{prev};
    int tested = 0;
    for (Isa cap : {Isa::avx512, Isa::avx2})
        for (GType wt : {GType::q4_k, GType::q5_k, GType::q6_k, GType::q8_0, GType::f16, GType::bf16}) {
            set_isa_cap(cap);
            int rows = 0;
            const RowDotsW dw = row_dots_w(wt, &rows);
            if (!dw) continue;
            ++tested;
            // f16 / bf16: a tail of 8 values past the last 32 (their scalar steps)
            const bool half = wt == GType::f16 || wt == GType::bf16;
            const int64_t in = half ? 776 : 768, out = 4 * rows + 3, wb = gtype_row_bytes(wt, in);
            auto w = randv(out * in, 900 + (int)wt);
            std::vector<uint8_t> wq(out * wb);
            for (int64_t o = 0; o < out; ++o) quantize_row(wt, w.data() + o * in, wq.data() + o * wb, in);
            auto x = randv(in, 901);
            GActs acts;
            acts.build(gtype_act(wt), x.data(), 1, in);
            std::vector<float> want(out), got(out), y(out, 0.5f);
            for (int64_t o = 0; o < out; ++o) row_dots(wt)(in, wq.data() + o * wb, acts.row(0), acts.row_bytes, 1, &want[o]);
            for (int64_t o = 0; o + rows <= out; o += rows) dw(in, wq.data() + o * wb, wb, acts.row(0), &got[o]);
            for (int64_t o = 0; o < out / rows * rows; ++o)
                ASSERT_EQ(bits(got[o]), bits(want[o])) << gtype_name(wt) << " isa=" << isa_name(cap) << " o=" << o;
            for (int threads : {1, 2}) {
                moe::set_num_threads(threads);
                GActs ga;
                ggml_matmul(y.data(), x.data(), wq.data(), wt, wb, 1, out, in, false, ga);
                for (int64_t o = 0; o < out; ++o)
                    ASSERT_EQ(bits(y[o]), bits(want[o])) << gtype_name(wt) << " ggml_matmul o=" << o << " threads=" << threads;
            }
            moe::set_num_threads(0);
        }
    if (tested == 0) GTEST_SKIP() << "no several-rows kernel on this host (no AVX2)";
}
