// The AMX bf16 GEMM (src/kernels/amx_gemm.cc) and its reference twin. Everywhere: the twin's
// packing (layout, bf16 rounding, zero padding) and the twin's arithmetic against gemm_ref in double
// on bf16-rounded operands. Where Isa::amx is active: the SIMD packing bit for bit against the
// twin's, the tile kernel against the twin over ragged shapes (M, N, K off the 16 / 32 tiles, odd K,
// one row) in every transpose combination -- the forward x·W^T (false, true), dX = dY·W (false,
// false), dW = dY^T·X (true, false) and (true, true) -- with alpha / beta, the packed-B path bit for
// bit against the unpacked one, gemm<float> in bf16 dispatching to it, NaN / Inf propagation,
// results that do not depend on the thread count, and a packed op(B) large enough for column
// panels. Elsewhere those tests skip and say the AMX path was not exercised.
//
// Tolerance: the tiles' sums are not bit-reproducible in scalar code (Intel documents pairwise fp32
// additions; the Sapphire Rapids hardware rounds the 32 products of a slice differently), so the
// kernel is held to the same bound as the vdpbf16ps kernel against an exact reference: (K + 2) *
// 6e-8 of sum_k |a_k b_k| (+ |beta C|), about K units of fp32 rounding. A packing or indexing bug
// gives errors of order 1.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "kernels/amx_gemm.h"
#include "kernels/bf16.h"
#include "kernels/cpu.h"
#include "kernels/gemm.h"

using namespace moe;
using namespace moe::kernels;

namespace {

std::string not_exercised() {
    return std::string("Isa::amx is not active here (active isa: ") + isa_name(active_isa()) +
           "): the AMX path was not exercised; only the reference twin was tested";
}

struct Case {
    bool ta, tb;
    int64_t M, N, K;
    float alpha, beta;
};

double tolerance(int64_t K) { return (double)(K + 2) * 6e-8; }

// The operands of a case (leading dimensions padded by 3), C filled with NaN where beta == 0 (not read).
struct Operands {
    int64_t lda, ldb, ldc;
    std::vector<float> A, B, C;
    Operands(const Case& c, std::mt19937& rng) {
        std::uniform_real_distribution<float> u(-1.f, 1.f);
        const int64_t ar = c.ta ? c.K : c.M, ac = c.ta ? c.M : c.K;
        const int64_t br = c.tb ? c.N : c.K, bc = c.tb ? c.K : c.N;
        lda = ac + 3, ldb = bc + 3, ldc = c.N + 3;
        A.resize(ar * lda), B.resize(br * ldb), C.resize(c.M * ldc);
        for (float& v : A) v = u(rng);
        for (float& v : B) v = u(rng);
        for (float& v : C) v = c.beta == 0.f ? std::numeric_limits<float>::quiet_NaN() : u(rng);
    }
};

// C of the twin over its own packing (the reference path, any CPU).
std::vector<float> twin(const Case& c, const Operands& o) {
    std::vector<uint32_t> packed(amx_packed_b_words(c.K, c.N));
    amx_pack_b_ref(c.tb, c.K, c.N, o.B.data(), o.ldb, packed.data());
    std::vector<float> C = o.C;
    amx_gemm_bf16_ref(c.ta, c.M, c.N, c.K, c.alpha, o.A.data(), o.lda, packed.data(), c.beta, C.data(), o.ldc);
    return C;
}

// Largest |got - want| / (|alpha| sum_k |a_k b_k| + 1) over C, want in double on bf16-rounded
// operands (|beta C| <= 1); infinity for a non-finite element.
double rel_error_vs_double(const Case& c, const Operands& o, const std::vector<float>& got) {
    std::vector<double> Ad(o.A.size()), Bd(o.B.size()), Aabs(o.A.size()), Babs(o.B.size());
    for (size_t i = 0; i < Ad.size(); ++i) Ad[i] = bf16_round(o.A[i]), Aabs[i] = std::fabs(Ad[i]);
    for (size_t i = 0; i < Bd.size(); ++i) Bd[i] = bf16_round(o.B[i]), Babs[i] = std::fabs(Bd[i]);
    std::vector<double> want(o.C.begin(), o.C.end()), scale(o.C.size(), 0.0);
    if (c.beta == 0.f)
        for (double& v : want) v = 0;
    gemm_ref<double>(c.ta, c.tb, c.M, c.N, c.K, c.alpha, Ad.data(), o.lda, Bd.data(), o.ldb, c.beta, want.data(), o.ldc);
    gemm_ref<double>(c.ta, c.tb, c.M, c.N, c.K, 1.0, Aabs.data(), o.lda, Babs.data(), o.ldb, 0.0, scale.data(), o.ldc);
    double worst = 0;
    for (int64_t m = 0; m < c.M; ++m)
        for (int64_t n = 0; n < c.N; ++n) {
            const int64_t i = m * o.ldc + n;
            if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
            worst = std::max(worst, std::fabs(got[i] - want[i]) / (std::fabs(c.alpha) * scale[i] + 1.0));
        }
    return worst;
}

// The same measure between two float results (the scale from the bf16-rounded operands).
double rel_error_between(const Case& c, const Operands& o, const std::vector<float>& got, const std::vector<float>& want) {
    std::vector<double> Aabs(o.A.size()), Babs(o.B.size()), scale(o.C.size(), 0.0);
    for (size_t i = 0; i < Aabs.size(); ++i) Aabs[i] = std::fabs(bf16_round(o.A[i]));
    for (size_t i = 0; i < Babs.size(); ++i) Babs[i] = std::fabs(bf16_round(o.B[i]));
    gemm_ref<double>(c.ta, c.tb, c.M, c.N, c.K, 1.0, Aabs.data(), o.lda, Babs.data(), o.ldb, 0.0, scale.data(), o.ldc);
    double worst = 0;
    for (int64_t m = 0; m < c.M; ++m)
        for (int64_t n = 0; n < c.N; ++n) {
            const int64_t i = m * o.ldc + n;
            if (!std::isfinite(got[i]) || !std::isfinite(want[i])) return std::numeric_limits<double>::infinity();
            worst = std::max(worst, std::fabs((double)got[i] - want[i]) / (std::fabs(c.alpha) * scale[i] + 1.0));
        }
    return worst;
}

float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Ties, near-ties, FLT_MAX, denormals (0x007fffff rounds up to the smallest normal), NaNs,
// infinities, zeros, then random patterns (a quarter denormal).
std::vector<float> rounding_cases(std::mt19937& rng, size_t n) {
    std::vector<uint32_t> u = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f807fffu, 0xbf808000u, 0x7f7fffffu,
                               0xff7fffffu, 0x007fffffu, 0x807fffffu, 0x007f8000u, 0x007f7fffu, 0x00000001u,
                               0x80000001u, 0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7f800000u, 0xff800000u,
                               0x00000000u, 0x80000000u, 0x00800000u};
    while (u.size() < n) {
        uint32_t v = rng();
        if (u.size() % 4 == 0) v &= 0x807fffffu;
        u.push_back(v);
    }
    std::vector<float> f(n);
    for (size_t i = 0; i < n; ++i) f[i] = from_bits(u[i]);
    return f;
}

// ragged sizes: one row, a tile and a bit, one short of a 32 x 32 block and a half; K odd, below
// and above a slice, over several slices
const std::initializer_list<int64_t> kMs = {1, 17, 47}, kNs = {1, 15, 33}, kKs = {1, 31, 33, 95};

}  // namespace

// ---- the twin (every CPU) ----

TEST(AmxTwin, PackingIsTheTileLayoutOfRoundedOperands) {
    // word (slice s, pair p, column n of strip j) = (bf16 op(B)[32 s + 2 p][n], ... [+ 1][n]); zero
    // past K and N
    std::mt19937 rng(3);
    for (bool tb : {false, true})
        for (int64_t K : {1, 31, 33, 70})
            for (int64_t N : {1, 17, 40}) {
                const int64_t ldb = (tb ? K : N) + 2;
                const std::vector<float> B = rounding_cases(rng, (tb ? N : K) * ldb);
                std::vector<uint32_t> p(amx_packed_b_words(K, N), 0xdeadbeefu);
                amx_pack_b_ref(tb, K, N, B.data(), ldb, p.data());
                const int64_t S = (K + 31) / 32, strips = (N + 15) / 16;
                ASSERT_EQ((int64_t)p.size(), strips * S * 256);
                for (int64_t j = 0; j < strips; ++j)
                    for (int64_t s = 0; s < S; ++s)
                        for (int64_t q = 0; q < 16; ++q)
                            for (int64_t i = 0; i < 16; ++i)
                                for (int64_t h = 0; h < 2; ++h) {
                                    const int64_t k = 32 * s + 2 * q + h, n = 16 * j + i;
                                    const uint16_t want =
                                        k < K && n < N ? f32_to_bf16(tb ? B[n * ldb + k] : B[k * ldb + n]) : 0;
                                    ASSERT_EQ((uint16_t)(p[(j * S + s) * 256 + q * 16 + i] >> (16 * h)), want)
                                        << "tb " << tb << " K " << K << " N " << N << " k " << k << " n " << n;
                                }
            }
}

TEST(AmxTwin, MatchesTheBf16ReferenceOnRaggedShapes) {
    std::mt19937 rng(5);
    int cases = 0;
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (int64_t M : {1, 17, 33})
                for (int64_t N : {1, 17, 40})
                    for (int64_t K : {1, 2, 33, 95}) {
                        const Case c{ta, tb, M, N, K, 1.f, 0.f};
                        const Operands o(c, rng);
                        EXPECT_LT(rel_error_vs_double(c, o, twin(c, o)), tolerance(K))
                            << "ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K;
                        ++cases;
                    }
    EXPECT_EQ(cases, 144);
    for (const Case& c : {Case{false, true, 20, 30, 70, 0.5f, 1.f}, Case{true, false, 9, 18, 40, -2.f, -0.7f}}) {
        const Operands o(c, rng);
        EXPECT_LT(rel_error_vs_double(c, o, twin(c, o)), tolerance(c.K)) << "alpha " << c.alpha << " beta " << c.beta;
    }
}

TEST(AmxTwin, ReadsBf16DenormalsAsZero) {
    // the tiles' DAZ: 2^-130 (a bf16 denormal) times 2^10 contributes nothing; 2^-126 (normal) does
    const float tiny = std::ldexp(1.f, -130), small = std::ldexp(1.f, -126), big = 1024.f;
    for (float a : {tiny, small}) {
        std::vector<uint32_t> packed(amx_packed_b_words(1, 1));
        amx_pack_b_ref(false, 1, 1, &big, 1, packed.data());
        float c = -1.f;
        amx_gemm_bf16_ref(false, 1, 1, 1, 1.f, &a, 1, packed.data(), 0.f, &c, 1);
        EXPECT_EQ(c, a == tiny ? 0.f : small * big);
    }
}

// ---- the tile kernel (Isa::amx only) ----

TEST(AmxGemm, PackingIsBitIdenticalToTheTwins) {
    if (!amx_bf16_available()) GTEST_SKIP() << not_exercised();
    std::mt19937 rng(7);
    for (bool tb : {false, true})
        for (int64_t K : {1, 2, 31, 32, 33, 64, 95, 130})
            for (int64_t N : {1, 15, 16, 17, 33, 64}) {
                const int64_t ldb = (tb ? K : N) + 1;
                const std::vector<float> B = rounding_cases(rng, (tb ? N : K) * ldb);
                std::vector<uint32_t> want(amx_packed_b_words(K, N)), got(want.size(), 0xdeadbeefu);
                amx_pack_b_ref(tb, K, N, B.data(), ldb, want.data());
                amx_pack_b(tb, K, N, B.data(), ldb, got.data());
                ASSERT_EQ(got, want) << "tb " << tb << " K " << K << " N " << N;
            }
}

TEST(AmxGemm, MatchesTheTwinOnRaggedShapes) {
    if (!amx_bf16_available()) GTEST_SKIP() << not_exercised();
    std::mt19937 rng(11);
    int cases = 0;
    double worst = 0;
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (int64_t M : kMs)
                for (int64_t N : kNs)
                    for (int64_t K : kKs) {
                        const Case c{ta, tb, M, N, K, 1.f, 0.f};
                        const Operands o(c, rng);
                        std::vector<float> C = o.C;
                        amx_gemm_bf16(ta, tb, M, N, K, 1.f, o.A.data(), o.lda, o.B.data(), o.ldb, 0.f, C.data(), o.ldc);
                        const double e = rel_error_between(c, o, C, twin(c, o));
                        worst = std::max(worst, e);
                        EXPECT_LT(e, tolerance(K)) << "ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K;
                        EXPECT_LT(rel_error_vs_double(c, o, C), tolerance(K))
                            << "ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K;
                        ++cases;
                    }
    EXPECT_EQ(cases, 144);
    std::printf("largest kernel-twin difference: %.3g of sum |a b|\n", worst);
}

TEST(AmxGemm, AlphaBetaAndLongK) {
    if (!amx_bf16_available()) GTEST_SKIP() << not_exercised();
    std::mt19937 rng(13);
    for (const Case& c : {Case{false, true, 70, 100, 601, 1.f, 1.f}, Case{true, false, 150, 97, 300, 0.5f, -0.7f},
                          Case{true, true, 13, 33, 519, -2.f, 1.f}, Case{false, false, 85, 45, 257, 1.f, 0.f}}) {
        const Operands o(c, rng);
        std::vector<float> C = o.C;
        amx_gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, c.alpha, o.A.data(), o.lda, o.B.data(), o.ldb, c.beta, C.data(), o.ldc);
        EXPECT_LT(rel_error_between(c, o, C, twin(c, o)), tolerance(c.K))
            << "ta " << c.ta << " tb " << c.tb << " M " << c.M << " N " << c.N << " K " << c.K;
        EXPECT_LT(rel_error_vs_double(c, o, C), tolerance(c.K));
    }
}

TEST(AmxGemm, PackedBIsBitIdenticalToPackingInside) {
    if (!amx_bf16_available()) GTEST_SKIP() << not_exercised();
    std::mt19937 rng(17);
    for (const Case& c : {Case{false, true, 77, 50, 95, 1.f, 0.f}, Case{true, false, 40, 33, 130, 1.f, 1.f}}) {
        const Operands o(c, rng);
        std::vector<uint32_t> packed(amx_packed_b_words(c.K, c.N));
        amx_pack_b(c.tb, c.K, c.N, o.B.data(), o.ldb, packed.data());
        std::vector<float> C1 = o.C, C2 = o.C;
        amx_gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, c.alpha, o.A.data(), o.lda, o.B.data(), o.ldb, c.beta, C1.data(), o.ldc);
        amx_gemm_bf16_packed_b(c.ta, c.M, c.N, c.K, c.alpha, o.A.data(), o.lda, packed.data(), c.beta, C2.data(), o.ldc);
        EXPECT_EQ(std::memcmp(C1.data(), C2.data(), C1.size() * sizeof(float)), 0);
    }
}

TEST(AmxGemm, GemmInBf16DispatchesToTheTiles) {
    if (!amx_bf16_available()) GTEST_SKIP() << not_exercised();
    std::mt19937 rng(19);
    const Case c{false, true, 37, 45, 129, 1.f, 0.f};
    const Operands o(c, rng);
    std::vector<float> C1(o.C.size(), 0.f), C2(o.C.size(), 0.f);
    {
        PrecisionScope bf16(Precision::bf16);
        EXPECT_STREQ(gemm_engine_name(), "AMX bf16 tiles");
        gemm<float>(c.ta, c.tb, c.M, c.N, c.K, 1.f, o.A.data(), o.lda, o.B.data(), o.ldb, 0.f, C1.data(), o.ldc);
        // and through a PackedB
        std::vector<float> scratch(gemm_packed_b_floats(c.K, c.N));
        const PackedB pb = gemm_pack_b(c.tb, c.K, c.N, o.B.data(), o.ldb, scratch.data());
        ASSERT_NE(pb.packed, nullptr);
        std::vector<float> C3(o.C.size(), 0.f);
        gemm_f32_b(c.ta, c.M, c.N, c.K, 1.f, o.A.data(), o.lda, pb, 0.f, C3.data(), o.ldc);
        EXPECT_EQ(C1, C3);
    }
    amx_gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, 1.f, o.A.data(), o.lda, o.B.data(), o.ldb, 0.f, C2.data(), o.ldc);
    EXPECT_EQ(C1, C2);
    // MOE_ISA=avx512 rules the tiles out
    const Isa prev = set_isa_cap(Isa::avx512);
    {
        PrecisionScope bf16(Precision::bf16);
        EXPECT_STRNE(gemm_engine_name(), "AMX bf16 tiles");
    }
    set_isa_cap(prev);
}

TEST(AmxGemm, ResultDoesNotDependOnThreadCount) {
    if (!amx_bf16_available()) GTEST_SKIP() << not_exercised();
    // cases split over threads by row blocks, by column blocks, and with ragged edges
    for (const Case& c : {Case{false, true, 300, 200, 257, 1.f, 0.f}, Case{true, false, 40, 900, 301, 1.f, 1.f},
                          Case{false, false, 513, 70, 95, 0.5f, -1.f}}) {
        std::mt19937 rng(23);
        const Operands o(c, rng);
        std::vector<std::vector<float>> out;
        const int before = num_threads();
        for (int t : {1, 2, 3}) {
            set_num_threads(t);
            std::vector<float> C = o.C;
            const int64_t forks = parallel_regions();
            amx_gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, c.alpha, o.A.data(), o.lda, o.B.data(), o.ldb, c.beta, C.data(),
                          o.ldc);
            if (t > 1) {
                EXPECT_GT(parallel_regions(), forks) << "the case should be split over threads";
            }
            out.push_back(C);
        }
        set_num_threads(before);
        EXPECT_EQ(std::memcmp(out[0].data(), out[1].data(), out[0].size() * 4), 0) << "M " << c.M << " N " << c.N;
        EXPECT_EQ(std::memcmp(out[0].data(), out[2].data(), out[0].size() * 4), 0) << "M " << c.M << " N " << c.N;
    }
}

// A packed op(B) over 1 MiB is swept in column panels where op(A) is transposed (run_packed): three
// panels, the
// last one narrower, ragged M / N / K, against the twin, and at 1, 2, 3 threads bit-identical.
TEST(AmxGemm, ColumnPanelsOfALargePackedB) {
    if (!amx_bf16_available()) GTEST_SKIP() << not_exercised();
    std::mt19937 rng(29);
    for (const Case& c : {Case{true, false, 45, 1000, 1100, 1.f, 1.f}, Case{true, true, 70, 530, 2050, 0.5f, -0.7f}}) {
        ASSERT_GT(amx_packed_b_words(c.K, c.N) * 4, int64_t(1) << 20) << "the case should need panels";
        const Operands o(c, rng);
        std::vector<std::vector<float>> out;
        const int before = num_threads();
        for (int t : {1, 2, 3}) {
            set_num_threads(t);
            std::vector<float> C = o.C;
            amx_gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, c.alpha, o.A.data(), o.lda, o.B.data(), o.ldb, c.beta, C.data(),
                          o.ldc);
            out.push_back(C);
        }
        set_num_threads(before);
        EXPECT_LT(rel_error_between(c, o, out[0], twin(c, o)), tolerance(c.K)) << "M " << c.M << " N " << c.N;
        EXPECT_LT(rel_error_vs_double(c, o, out[0]), tolerance(c.K));
        EXPECT_EQ(std::memcmp(out[0].data(), out[1].data(), out[0].size() * 4), 0) << "M " << c.M << " N " << c.N;
        EXPECT_EQ(std::memcmp(out[0].data(), out[2].data(), out[0].size() * 4), 0) << "M " << c.M << " N " << c.N;
    }
}

TEST(AmxGemm, NanAndInfReachTheOutput) {
    if (!amx_bf16_available()) GTEST_SKIP() << not_exercised();
    const int64_t M = 13, N = 33, K = 40;
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        std::vector<float> A(M * K, 0.5f), B(K * N, 0.25f), C(M * N, 0.f);
        A[5 * K + 17] = bad;  // row 5 of A
        amx_gemm_bf16(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N);
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
                const float c = C[m * N + n];
                if (m != 5) ASSERT_EQ(c, 0.5f * 0.25f * K) << "m " << m << " n " << n;
                else if (std::isnan(bad)) ASSERT_TRUE(std::isnan(c)) << "n " << n;
                else ASSERT_TRUE(std::isinf(c) && c > 0) << "n " << n << " c " << c;
            }
    }
}
