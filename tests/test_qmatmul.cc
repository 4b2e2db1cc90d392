// Inference matmul on fp32 / bf16 / int8 weights: the fast kernels (streaming GEMV for small N,
// a GEMM that converts W inside its packing for large N) against the reference twin, and the
// quantization error of each type against fp32.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cmath>
#include <random>
#include <vector>

#include "core/parallel.h"
#include "kernels/batch_invariant.h"
#include "kernels/cpu.h"
#include "kernels/qmatmul.h"

using namespace moe::kernels;

namespace {
std::vector<float> randv(int64_t n, uint64_t seed) {
    std::mt19937_64 r(seed);
    std::normal_distribution<float> d(0.f, 1.f);
    std::vector<float> v(n);
    for (auto& x : v) x = d(r);
    return v;
}
}  // namespace

TEST(QMatmul, FastMatchesReferenceEveryTypeAndShape) {
  for (Isa cap : {Isa::avx512, Isa::ref}) {  // the SIMD kernels, then the scalar fallbacks
    const Isa prev = set_isa_cap(cap);
    for (WType t : {WType::f32, WType::bf16, WType::q8, WType::f16})
        for (int64_t in : {32, 64, 70, 13, 300, 600})  // 300, 600: k slices of the packed GEMM (256), int8 tails
            for (int64_t N : {1, 3, 4, 5, 8, 9, 40}) {
                const int64_t out = 37;
                auto w = randv(out * in, 1 + in), x = randv(N * in, 2 + N);
                QStore st;
                st.build(t, w.data(), out, in);
                std::vector<float> a(N * out, 0.5f), b(N * out, 0.5f);
                for (bool acc : {false, true}) {
                    qmatmul_ref(a.data(), x.data(), st.view(), N, acc);
                    qmatmul(b.data(), x.data(), st.view(), N, acc);
                    for (int64_t i = 0; i < N * out; ++i) {
                        // fp32 sums of `in` products in different orders: the rounding grows as sqrt(in),
                        // relative to the sum of the products' magnitudes where the sum cancels (f16
                        // in=600 N=9: 6.3e-5 on a result of 0.026, products summing to ~380 in magnitude)
                        double mag = 0;
                        for (int64_t k = 0; k < in; ++k) mag += std::fabs((double)w[(i % out) * in + k] * x[(i / out) * in + k]);
                        ASSERT_NEAR(a[i], b[i], 2e-5 * (1 + std::fabs(a[i])) * std::max(1.0, std::sqrt(in / 64.0)) + 2e-7 * mag)
                            << wtype_name(t) << " in=" << in << " N=" << N << " acc=" << acc << " i=" << i
                            << " isa=" << isa_name(cap);
                    }
                }
            }
    set_isa_cap(prev);
  }
}

TEST(QMatmul, QuantizationErrorIsBoundedPerType) {
    const int64_t out = 64, in = 256, N = 4;
    auto w = randv(out * in, 5), x = randv(N * in, 6);
    QStore f, h, q;
    f.build(WType::f32, w.data(), out, in);
    h.build(WType::bf16, w.data(), out, in);
    q.build(WType::q8, w.data(), out, in);
    std::vector<float> yf(N * out), yh(N * out), yq(N * out);
    qmatmul(yf.data(), x.data(), f.view(), N, false);
    qmatmul(yh.data(), x.data(), h.view(), N, false);
    qmatmul(yq.data(), x.data(), q.view(), N, false);
    double ef = 0, eh = 0, eq = 0;
    for (int64_t i = 0; i < N * out; ++i) {
        ef += yf[i] * yf[i];
        eh += (yh[i] - yf[i]) * (yh[i] - yf[i]);
        eq += (yq[i] - yf[i]) * (yq[i] - yf[i]);
    }
    const double rh = std::sqrt(eh / ef), rq = std::sqrt(eq / ef);
    // bf16: 8-bit mantissa, ~2^-9 relative per weight; int8 blocks of 32: ~1/(127*sqrt(3)) of the block max
    EXPECT_LT(rh, 0.005) << "bf16 relative error";
    EXPECT_GT(rh, 1e-5) << "bf16 identical to fp32: the weights were not converted";
    EXPECT_LT(rq, 0.02) << "int8 relative error";
    EXPECT_GT(rq, rh) << "int8 should be coarser than bf16";
    EXPECT_DOUBLE_EQ(q.view().bytes(), (double)out * in + 4.0 * out * (in / 32));
    EXPECT_DOUBLE_EQ(h.view().bytes(), 2.0 * out * in);
}

TEST(QMatmul, Q8RoundTripAndZeroBlocks) {
    std::vector<float> w(64, 0.f);
    for (int i = 32; i < 64; ++i) w[i] = (float)(i - 48) / 16.f;  // second block: [-1, 0.94]
    std::vector<int8_t> q(64);
    std::vector<float> s(2);
    quantize_q8_row(q.data(), s.data(), w.data(), 64);
    EXPECT_EQ(s[0], 0.f);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(q[i], 0);
    EXPECT_FLOAT_EQ(s[1], 1.f / 127.f);
    EXPECT_EQ(q[32], -127);
    for (int i = 32; i < 64; ++i) EXPECT_NEAR(s[1] * q[i], w[i], 0.5f * s[1] + 1e-7f);
}

// The AVX2 quantizer is bit-identical to the scalar twin (scales and values), full blocks and tails,
// including all-zero blocks and values that land on .5 after scaling.
TEST(QMatmul, QuantizeRowAvx2MatchesReference) {
    if (active_isa() < Isa::avx2) GTEST_SKIP() << "no AVX2 on this CPU";
    for (int64_t in : {32, 64, 96, 100, 7, 1024}) {
        auto w = randv(in, 40 + in);
        for (int64_t i = 0; i < std::min<int64_t>(in, 32); ++i) w[i] = 0.f;  // a zero block
        if (in > 40) w[40] = 127.f, w[41] = 0.5f, w[42] = -1.5f, w[43] = 2.5f;  // ties at scale 1
        const int64_t nb = (in + 31) / 32;
        std::vector<int8_t> qa(in), qb(in);
        std::vector<float> sa(nb), sb(nb);
        quantize_q8_row_ref(qa.data(), sa.data(), w.data(), in);
        quantize_q8_row(qb.data(), sb.data(), w.data(), in);
        for (int64_t b = 0; b < nb; ++b) ASSERT_EQ(sa[b], sb[b]) << "in=" << in << " block " << b;
        for (int64_t i = 0; i < in; ++i) ASSERT_EQ(qa[i], qb[i]) << "in=" << in << " i=" << i;
    }
}

// int8 weights multiply int8-quantized activations: the result is the blocked integer sum of the
// header's definition, computed here by hand for one row.
TEST(QMatmul, Int8UsesQuantizedActivations) {
    const int64_t in = 64, out = 3, N = 2;
    auto w = randv(out * in, 71), x = randv(N * in, 72);
    QStore st;
    st.build(WType::q8, w.data(), out, in);
    const QMatrix m = st.view();
    QActs qa;
    qa.build(x.data(), N, in);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < out; ++o) {
            double want = 0;
            for (int64_t b = 0; b < 2; ++b) {
                int64_t isum = 0;
                for (int64_t i = 32 * b; i < 32 * b + 32; ++i) isum += (int64_t)m.q[o * in + i] * qa.q[n * in + i];
                want += (double)(m.scales[o * 2 + b] * qa.scales[n * 2 + b]) * (double)isum;
            }
            for (int64_t rows : {N, (int64_t)12}) {  // decode path and prefill path
                std::vector<float> xx(rows * in), y(rows * out);
                for (int64_t r = 0; r < rows; ++r) std::copy(x.begin() + (r % N) * in, x.begin() + (r % N + 1) * in, xx.begin() + r * in);
                qmatmul(y.data(), xx.data(), m, rows, false);
                EXPECT_NEAR(y[n * out + o], want, 1e-5 * (1 + std::fabs(want))) << "rows=" << rows;
            }
        }
}

// Matrices above kGemvParallelBytes are shared out over threads: every type, every thread count
// gives the reference's answer (int8 activations are quantized on the calling thread).
TEST(QMatmul, ThreadedGemvMatchesReference) {
    const int64_t out = 2080, in = 544;  // int8: 1.2 MB, above the single-thread threshold
    auto w = randv(out * in, 81);
    for (WType t : {WType::f32, WType::bf16, WType::q8, WType::f16})
        for (int threads : {1, 2, 3})
            for (int64_t N : {1, 2, 5}) {
                moe::set_num_threads(threads);
                auto x = randv(N * in, 82 + N);
                QStore st;
                st.build(t, w.data(), out, in);
                ASSERT_GE(st.view().bytes(), kGemvParallelBytes);
                std::vector<float> a(N * out), b(N * out);
                qmatmul_ref(a.data(), x.data(), st.view(), N, false);
                qmatmul(b.data(), x.data(), st.view(), N, false);
                for (int64_t i = 0; i < N * out; ++i) {
                    // fp32 sums of 544 products in another order differ by a few ulps of the sum of
                    // their magnitudes (oneDNN's order under MOE_ISA=ref, for instance); a wrong
                    // or missing product is off by about one product, ~0.8
                    double mag = 0;
                    for (int64_t k = 0; k < in; ++k) mag += std::fabs((double)w[(i % out) * in + k] * x[(i / out) * in + k]);
                    ASSERT_NEAR(a[i], b[i], 2e-5 * (1 + std::fabs(a[i])) + 1e-6 * mag)
                        << wtype_name(t) << " threads=" << threads << " N=" << N << " i=" << i;
                }
            }
    moe::set_num_threads(0);
}

// Batch invariance at the kernel (kernels/batch_invariant.h): with the switch on, a row's result is
// the same bits whatever other rows share the call (how many, which group of the kernel it falls
// in), for every type, on every ISA path, at 1-3 threads.
TEST(QMatmul, InvariantRowEqualsTheRowAlone) {
    const moe::kernels::BatchInvariantScope on;
    const int64_t out = 2080, in = 544;  // above the single-thread threshold: rows shared out
    auto w = randv(out * in, 91);
    for (Isa cap : {Isa::avx512, Isa::avx2, Isa::ref}) {
        const Isa prev = set_isa_cap(cap);
        for (WType t : {WType::f32, WType::bf16, WType::q8, WType::f16}) {
            QStore st;
            st.build(t, w.data(), out, in);
            for (int threads : {1, 3}) {
                moe::set_num_threads(threads);
                for (int64_t N : {5, 13, 40}) {
                    auto x = randv(N * in, 92 + N);
                    std::vector<float> all(N * out), one(out);
                    qmatmul(all.data(), x.data(), st.view(), N, false);
                    for (int64_t n = 0; n < N; ++n) {
                        qmatmul(one.data(), x.data() + n * in, st.view(), 1, false);
                        for (int64_t o = 0; o < out; ++o)
                            ASSERT_EQ(std::bit_cast<uint32_t>(one[o]), std::bit_cast<uint32_t>(all[n * out + o]))
                                << wtype_name(t) << " isa=" << isa_name(cap) << " N=" << N << " n=" << n << " o=" << o;
                    }
                }
            }
        }
        set_isa_cap(prev);
    }
    moe::set_num_threads(0);
}

// The int8 decode kernel's AVX-512 VNNI form gives the AVX2 form's bits (the same exact integer
// sums per lane, the same fp32 operations in the same order), odd block counts and tails included:
// decode rows (N <= kGemvMaxN), and every N while batch invariant except where a VNNI host takes
// the block order then (widths a multiple of 32 without AMX: Int8BlockOrderRowsEqualTwinBitForBit).
TEST(QMatmul, Int8VnniEqualsAvx2BitForBit) {
    {
        const Isa prev = set_isa_cap(Isa::avx512);
        const bool vnni = q8_vnni_active();
        set_isa_cap(prev);
        if (!vnni) GTEST_SKIP() << "no AVX-512 VNNI on this host: " << host_description();
    }
    int compared = 0;
    for (bool invariant : {true, false})
    for (int64_t in : {32, 64, 96, 13, 70, 300, 600, 1024})
        for (int64_t N : {1, 2, 7, 8, 9, 17, 32}) {
            if (!invariant && N > kGemvMaxN) continue;  // more rows take the GEMM without invariance
            const moe::kernels::BatchInvariantScope scope(invariant);  // on: the GEMV kernel for every N
            {
                const Isa prev = set_isa_cap(Isa::avx512);
                const bool block = invariant && q8_rows_block_active(in);
                set_isa_cap(prev);
                if (block) continue;
            }
            ++compared;
            const int64_t out = 19;
            auto w = randv(out * in, 101 + in), x = randv(N * in, 102 + N);
            QStore st;
            st.build(WType::q8, w.data(), out, in);
            std::vector<float> a(N * out, 0.25f), b(N * out, 0.25f);
            for (bool acc : {false, true}) {
                Isa prev = set_isa_cap(Isa::avx2);
                qmatmul(a.data(), x.data(), st.view(), N, acc);
                set_isa_cap(Isa::avx512);
                qmatmul(b.data(), x.data(), st.view(), N, acc);
                set_isa_cap(prev);
                for (int64_t i = 0; i < N * out; ++i)
                    ASSERT_EQ(std::bit_cast<uint32_t>(a[i]), std::bit_cast<uint32_t>(b[i]))
                        << "in=" << in << " N=" << N << " acc=" << acc << " i=" << i << " invariant=" << invariant;
            }
        }
    EXPECT_GT(compared, 40);
}

// f16 weights are used in place (a GGUF F16 tensor's mapping): the GEMV widens each row in registers
// and the prefill GEMM widens it inside its packing, with the arithmetic of the fp32 kernels. The
// widening is exact, so the result is the same bits as the fp32 path on an fp32 copy of the f16
// values (what an F16 file loaded as before): ragged IN (tails of the 32-wide steps, k slices of
// 256), decode and prefill N, OUT not a multiple of any tile, accumulate on / off, every ISA path,
// 1-3 threads; and the batch-invariant mode.
TEST(QMatmul, F16InPlaceEqualsFp32CopyBitForBit) {
    for (Isa cap : {Isa::avx512, Isa::avx2, Isa::ref}) {
        const Isa prev = set_isa_cap(cap);
        for (int threads : {1, 2, 3}) {
            moe::set_num_threads(threads);
            for (int64_t in : {1, 8, 13, 32, 37, 64, 70, 255, 300, 600}) {
                const int64_t out = in == 600 ? 2000 : 37;  // 2000 x 600: above the one-thread threshold
                auto w = randv(out * in, 300 + in);
                QStore h;
                h.build(WType::f16, w.data(), out, in);
                std::vector<float> wc(out * in);  // the fp32 copy of the f16 values
                for (int64_t o = 0; o < out; ++o) dequantize_row(wc.data() + o * in, h.view(), o);
                QStore f;
                f.build(WType::f32, wc.data(), out, in);
                for (int64_t N : {1, 2, 3, 5, 8, 9, 40}) {
                    auto x = randv(N * in, 400 + N);
                    for (bool acc : {false, true}) {
                        std::vector<float> a(N * out, 0.75f), b(N * out, 0.75f);
                        qmatmul(a.data(), x.data(), f.view(), N, acc);
                        qmatmul(b.data(), x.data(), h.view(), N, acc);
                        for (int64_t i = 0; i < N * out; ++i)
                            ASSERT_EQ(std::bit_cast<uint32_t>(a[i]), std::bit_cast<uint32_t>(b[i]))
                                << "in=" << in << " N=" << N << " acc=" << acc << " i=" << i << " threads=" << threads
                                << " isa=" << isa_name(cap) << " " << a[i] << " vs " << b[i];
                    }
                }
                // qmatmul_same_x with an f16 and an fp32 matrix side by side (q, k, v of a decode step)
                auto x = randv(3 * in, 77);
                std::vector<float> a1(3 * out), a2(3 * out), b1(3 * out), b2(3 * out);
                qmatmul_same_x(x.data(), 3, {{a1.data(), h.view()}, {a2.data(), f.view()}});
                qmatmul_same_x(x.data(), 3, {{b1.data(), f.view()}, {b2.data(), h.view()}});
                for (int64_t i = 0; i < 3 * out; ++i) {
                    ASSERT_EQ(std::bit_cast<uint32_t>(a1[i]), std::bit_cast<uint32_t>(b1[i])) << in << " " << i;
                    ASSERT_EQ(std::bit_cast<uint32_t>(a2[i]), std::bit_cast<uint32_t>(b2[i])) << in << " " << i;
                }
            }
        }
        {
            const moe::kernels::BatchInvariantScope on;
            const int64_t out = 70, in = 300;
            auto w = randv(out * in, 501);
            QStore h;
            h.build(WType::f16, w.data(), out, in);
            std::vector<float> wc(out * in);
            for (int64_t o = 0; o < out; ++o) dequantize_row(wc.data() + o * in, h.view(), o);
            QStore f;
            f.build(WType::f32, wc.data(), out, in);
            auto x = randv(40 * in, 502);
            std::vector<float> a(40 * out), b(40 * out);
            qmatmul(a.data(), x.data(), f.view(), 40, false);
            qmatmul(b.data(), x.data(), h.view(), 40, false);
            for (int64_t i = 0; i < 40 * out; ++i)
                ASSERT_EQ(std::bit_cast<uint32_t>(a[i]), std::bit_cast<uint32_t>(b[i])) << "invariant i=" << i;
        }
        set_isa_cap(prev);
    }
    moe::set_num_threads(0);
}
