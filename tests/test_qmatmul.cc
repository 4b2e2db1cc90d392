// Inference matmul on fp32 / bf16 / int8 weights: the fast kernels (streaming GEMV for small N,
// dequantize + GEMM for large N) against the reference twin, and the quantization error of each
// type against fp32.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

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
    for (WType t : {WType::f32, WType::bf16, WType::q8})
        for (int64_t in : {32, 64, 70, 13})
            for (int64_t N : {1, 3, 4, 5, 8, 9, 40}) {
                const int64_t out = 37;
                auto w = randv(out * in, 1 + in), x = randv(N * in, 2 + N);
                QStore st;
                st.build(t, w.data(), out, in);
                std::vector<float> a(N * out, 0.5f), b(N * out, 0.5f);
                for (bool acc : {false, true}) {
                    qmatmul_ref(a.data(), x.data(), st.view(), N, acc);
                    qmatmul(b.data(), x.data(), st.view(), N, acc);
                    for (int64_t i = 0; i < N * out; ++i)
                        ASSERT_NEAR(a[i], b[i], 2e-5 * (1 + std::fabs(a[i])))
                            << wtype_name(t) << " in=" << in << " N=" << N << " acc=" << acc << " i=" << i;
                }
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
