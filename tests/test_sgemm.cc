// The packed AVX2 sgemm and the AVX512_BF16 GEMM (src/kernels/sgemm.cc) against their reference
// twin gemm_ref, computed in double (on bf16-rounded operands for the bf16 kernel): every
// transpose combination, sizes around the register tiles (6 x 16; 12 x 32 and its 4- and 8-row
// cuts) and the cache blocks (120 / 240 rows, 256 k, 512 columns), odd k, alpha / beta, padded
// leading dimensions; and the promise that the result does not depend on the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/bf16.h"
#include "kernels/cpu.h"
#include "kernels/gemm.h"
#include "kernels/sgemm.h"

using namespace moe;
using namespace moe::kernels;

namespace {

struct Case {
    bool ta, tb;
    int64_t M, N, K;
    float alpha, beta;
};

using GemmFn = void (*)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                       float, float*, int64_t);

// Random operands in [-1, 1) for op(A) (M, K), op(B) (K, N) and C (M, N) as stored, leading
// dimensions padded (A and B by 3, C by 2).
struct Operands {
    int64_t lda, ldb, ldc;
    std::vector<float> A, B, C0;
    Operands(bool ta, bool tb, int64_t M, int64_t N, int64_t K, std::mt19937& rng)
        : lda((ta ? M : K) + 3), ldb((tb ? K : N) + 3), ldc(N + 2), A((ta ? K : M) * lda), B((tb ? N : K) * ldb),
          C0(M * ldc) {
        std::uniform_real_distribution<float> u(-1.f, 1.f);
        for (float& v : A) v = u(rng);
        for (float& v : B) v = u(rng);
        for (float& v : C0) v = u(rng);
    }
};

// Runs `fn` (sgemm_packed by default) on random data (leading dimensions padded by 3) and compares
// it to gemm_ref in double; returns the largest error relative to sum_k |a||b| (the scale of the
// rounding). bf16: the reference multiplies the operands rounded to bf16, as the kernel must.
double max_rel_error(const Case& c, std::mt19937& rng, GemmFn fn = sgemm_packed, bool bf16 = false) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const int64_t ar = c.ta ? c.K : c.M, ac = c.ta ? c.M : c.K, lda = ac + 3;
    const int64_t br = c.tb ? c.N : c.K, bc = c.tb ? c.K : c.N, ldb = bc + 3;
    const int64_t ldc = c.N + 3;
    std::vector<float> A(ar * lda), B(br * ldb), C(c.M * ldc);
    for (float& v : A) v = u(rng);
    for (float& v : B) v = u(rng);
    for (float& v : C) v = c.beta == 0.f ? std::numeric_limits<float>::quiet_NaN() : u(rng);  // beta 0: C not read
    std::vector<double> Ad(A.begin(), A.end()), Bd(B.begin(), B.end()), Cd(C.begin(), C.end());
    if (bf16) {
        for (double& v : Ad) v = bf16_round((float)v);
        for (double& v : Bd) v = bf16_round((float)v);
    }
    std::vector<double> Aabs(Ad.size()), Babs(Bd.size()), scale(c.M * ldc, 0.0);
    for (size_t i = 0; i < Ad.size(); ++i) Aabs[i] = std::fabs(Ad[i]);
    for (size_t i = 0; i < Bd.size(); ++i) Babs[i] = std::fabs(Bd[i]);
    if (c.beta == 0.f)
        for (double& v : Cd) v = 0;
    gemm_ref<double>(c.ta, c.tb, c.M, c.N, c.K, c.alpha, Ad.data(), lda, Bd.data(), ldb, c.beta, Cd.data(), ldc);
    gemm_ref<double>(c.ta, c.tb, c.M, c.N, c.K, 1.0, Aabs.data(), lda, Babs.data(), ldb, 0.0, scale.data(), ldc);
    fn(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, C.data(), ldc);
    double worst = 0;
    for (int64_t m = 0; m < c.M; ++m)
        for (int64_t n = 0; n < c.N; ++n) {
            const double got = C[m * ldc + n], want = Cd[m * ldc + n];
            const double s = std::fabs(c.alpha) * scale[m * ldc + n] + 1.0;  // + |beta C| <= 1
            if (!std::isfinite(got)) return std::numeric_limits<double>::infinity();
            worst = std::max(worst, std::fabs(got - want) / s);
        }
    return worst;
}

// fp32 summation of K products: at most about (K + 2) units of rounding (2^-24) of the scale;
// an indexing or packing bug gives errors of order 1
double tolerance(int64_t K) { return (double)(K + 2) * 6e-8; }

// Every transpose combination over the given sizes (alpha 1, beta 0); returns the number of cases.
int sweep_shapes(GemmFn fn, bool bf16, std::mt19937& rng, std::initializer_list<int64_t> Ms,
                 std::initializer_list<int64_t> Ns, std::initializer_list<int64_t> Ks) {
    int cases = 0;
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (int64_t M : Ms)
                for (int64_t N : Ns)
                    for (int64_t K : Ks) {
                        const Case c{ta, tb, M, N, K, 1.f, 0.f};
                        EXPECT_LT(max_rel_error(c, rng, fn, bf16), tolerance(K))
                            << "ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K;
                        ++cases;
                    }
    return cases;
}

// gemm<float> at `precision` must give exactly the bits of `fn`: it dispatches there.
void expect_gemm_runs(GemmFn fn, Precision precision, bool tb, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const int64_t M = 37, N = 45, K = 129, ldb = tb ? K : N;
    std::vector<float> A(M * K), B(K * N), C1(M * N), C2(M * N);
    for (float& v : A) v = u(rng);
    for (float& v : B) v = u(rng);
    set_gemm_precision(precision);
    gemm<float>(false, tb, M, N, K, 1.f, A.data(), K, B.data(), ldb, 0.f, C1.data(), N);
    set_gemm_precision(Precision::fp32);
    fn(false, tb, M, N, K, 1.f, A.data(), K, B.data(), ldb, 0.f, C2.data(), N);
    EXPECT_EQ(C1, C2);
}

// Runs `fn` on 1, 2 and 3 threads over cases large enough to be split (by columns, then -- few
// columns, many rows -- by rows) and expects identical bits.
void expect_same_bits_for_any_thread_count(GemmFn fn, uint32_t seed) {
    for (const Case& c : {Case{false, true, 200, 300, 200, 1.f, 0.f}, Case{true, false, 900, 20, 301, 1.f, 1.f}}) {
        std::mt19937 rng(seed);
        std::uniform_real_distribution<float> u(-1.f, 1.f);
        const int64_t lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
        std::vector<float> A(c.M * c.K), B(c.K * c.N), C0(c.M * c.N);
        for (float& v : A) v = u(rng);
        for (float& v : B) v = u(rng);
        for (float& v : C0) v = u(rng);
        std::vector<std::vector<float>> out;
        const int before = num_threads();
        for (int t : {1, 2, 3}) {
            set_num_threads(t);
            std::vector<float> C = C0;
            const int64_t forks = parallel_regions();
            fn(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, C.data(), c.N);
            if (t > 1) {
                EXPECT_GT(parallel_regions(), forks) << "the case should be split over threads";
            }
            out.push_back(C);
        }
        set_num_threads(before);
        EXPECT_EQ(out[0], out[1]) << "M " << c.M << " N " << c.N;
        EXPECT_EQ(out[0], out[2]) << "M " << c.M << " N " << c.N;
    }
}

}  // namespace

TEST(Sgemm, MatchesReferenceOnEdgesAndBlocks) {
    if (!sgemm_packed_available()) GTEST_SKIP() << "no AVX2+FMA on this CPU";
    std::mt19937 rng(7);
    EXPECT_EQ(sweep_shapes(sgemm_packed, false, rng, {1, 5, 6, 7, 73}, {1, 15, 16, 17, 40}, {1, 8, 9, 257}), 400);
}

TEST(Sgemm, AlphaBetaAndLargeBlocks) {
    if (!sgemm_packed_available()) GTEST_SKIP() << "no AVX2+FMA on this CPU";
    std::mt19937 rng(8);
    // beta 1 (accumulate, as backward does), a general beta, alpha != 1; the second shape crosses
    // the 1024-column and 256-k blocks and several 72-row blocks
    for (const Case& c : {Case{false, true, 150, 100, 600, 1.f, 1.f}, Case{true, false, 150, 1030, 300, 0.5f, -0.7f},
                          Case{true, true, 13, 33, 520, -2.f, 1.f}, Case{false, false, 145, 1041, 257, 1.f, 0.f}})
        EXPECT_LT(max_rel_error(c, rng), tolerance(c.K)) << "ta " << c.ta << " tb " << c.tb << " M " << c.M << " N " << c.N
                                               << " K " << c.K << " alpha " << c.alpha << " beta " << c.beta;
}

TEST(Sgemm, ResultDoesNotDependOnThreadCount) {
    if (!sgemm_packed_available()) GTEST_SKIP() << "no AVX2+FMA on this CPU";
    expect_same_bits_for_any_thread_count(sgemm_packed, 9);
}

TEST(Sgemm, GemmUsesThePackedKernelWhereAvailable) {
    if (gemm_backend() != GemmBackend::packed) GTEST_SKIP() << "oneDNN is the fp32 backend here";
    expect_gemm_runs(sgemm_packed, Precision::fp32, false, 10);
}

// ---- the bf16 kernel (vdpbf16ps) ----

TEST(SgemmBf16, MatchesBf16ReferenceOnEdgesAndBlocks) {
    if (!sgemm_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    std::mt19937 rng(17);
    // M: last row tiles of 1, 7, 11, 12 and 8 rows (the 4-, 8- and 12-row micro-kernels)
    EXPECT_EQ(sweep_shapes(sgemm_bf16, true, rng, {1, 7, 11, 12, 13, 20, 50}, {1, 17, 31, 32, 33, 70},
                           {1, 2, 3, 31, 32, 33, 258}),
              1176);
}

TEST(SgemmBf16, AlphaBetaAndLargeBlocks) {
    if (!sgemm_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    std::mt19937 rng(18);
    // crosses the 512-column, 256-k and 240-row blocks; odd K in a later k block; beta 1, general
    // beta, alpha != 1
    for (const Case& c : {Case{false, true, 250, 100, 601, 1.f, 1.f}, Case{true, false, 150, 1030, 300, 0.5f, -0.7f},
                          Case{true, true, 13, 33, 519, -2.f, 1.f}, Case{false, false, 485, 545, 257, 1.f, 0.f}})
        EXPECT_LT(max_rel_error(c, rng, sgemm_bf16, true), tolerance(c.K))
            << "ta " << c.ta << " tb " << c.tb << " M " << c.M << " N " << c.N << " K " << c.K;
}

TEST(SgemmBf16, RoundsLikeTheScalarConversion) {
    // operands that are not bf16 values: 1 + 2^-8 rounds to 1 (tie, even), 1 + 3 * 2^-9 to 1 + 2^-7
    // (just above a tie, up); a kernel that truncated or used the fp32 values would differ
    if (!sgemm_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    const float a[2] = {1.f + 1.f / 256, 1.f + 3.f / 512}, b[2] = {1.f, 1.f};
    float c = 0.f;
    sgemm_bf16(false, false, 1, 1, 2, 1.f, a, 2, b, 1, 0.f, &c, 1);
    EXPECT_EQ(c, bf16_round(a[0]) + bf16_round(a[1]));
    EXPECT_EQ(c, 1.f + (1.f + 1.f / 128));
}

TEST(SgemmBf16, NanAndInfReachTheOutput) {
    // training stops on a non-finite loss or gradient norm: the bf16 GEMM must not hide a NaN or an
    // Inf in an operand (the rounding keeps NaN a NaN and Inf an Inf)
    if (!sgemm_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    const int64_t M = 13, N = 33, K = 40;
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        std::vector<float> A(M * K, 0.5f), B(K * N, 0.25f), C(M * N, 0.f);
        A[5 * K + 17] = bad;  // row 5 of A
        sgemm_bf16(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N);
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
                const float c = C[m * N + n];
                if (m != 5) ASSERT_EQ(c, 0.5f * 0.25f * K) << "m " << m << " n " << n;
                else if (std::isnan(bad)) ASSERT_TRUE(std::isnan(c)) << "n " << n;
                else ASSERT_TRUE(std::isinf(c) && c > 0) << "n " << n << " c " << c;
            }
    }
}

namespace {

float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
uint32_t to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// Bit patterns the packing's rounding must treat as f32_to_bf16 does: ties (to even), just above
// and below them, the largest float (rounds to inf), denormals (the hardware conversion flushes
// them; 0x007fffff rounds up to the smallest normal), signalling and quiet NaNs, infinities, zeros;
// then random patterns over all exponents.
std::vector<float> rounding_cases(std::mt19937& rng, size_t n) {
    std::vector<uint32_t> u = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f807fffu, 0xbf808000u, 0x7f7fffffu,
                               0xff7fffffu, 0x007fffffu, 0x807fffffu, 0x007f8000u, 0x007f7fffu, 0x00000001u,
                               0x80000001u, 0x00008000u, 0x00018000u, 0x7f800001u, 0xff800001u, 0x7fc00000u,
                               0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u, 0x00800000u};
    while (u.size() < n) {
        uint32_t v = rng();
        if (u.size() % 4 == 0) v &= 0x807fffffu;  // a quarter denormal (or zero)
        u.push_back(v);
    }
    std::vector<float> f(n);
    for (size_t i = 0; i < n; ++i) f[i] = from_bits(u[i]);
    return f;
}

}  // namespace

TEST(SgemmBf16, PackedBRoundsEveryBitPatternLikeTheScalarConversion) {
    // the packing rounds with vcvtne2ps2bf16 and takes the integer recipe for vectors holding a
    // denormal: each packed bf16 must equal f32_to_bf16 of its float, both layouts of B
    if (!sgemm_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    std::mt19937 rng(41);
    const int64_t K = 64, N = 32;  // one 32-column panel, 32 k pairs: word [p][n] = (k = 2p, 2p + 1)
    for (int rep = 0; rep < 64; ++rep) {
        const std::vector<float> v = rounding_cases(rng, K * N);
        for (bool tb : {false, true}) {
            // op(B)[k][n] = v[k * N + n], stored as is (tb false) or transposed
            std::vector<float> B(K * N);
            for (int64_t k = 0; k < K; ++k)
                for (int64_t n = 0; n < N; ++n) (tb ? B[n * K + k] : B[k * N + n]) = v[k * N + n];
            std::vector<uint32_t> packed(sgemm_packed_b_words(SgemmForm::bf16_native, K, N));
            sgemm_pack_b(SgemmForm::bf16_native, tb, K, N, B.data(), tb ? K : N, packed.data());
            for (int64_t p = 0; p < K / 2; ++p)
                for (int64_t n = 0; n < N; ++n) {
                    const uint32_t want = f32_to_bf16(v[2 * p * N + n]) | (uint32_t)f32_to_bf16(v[(2 * p + 1) * N + n]) << 16;
                    ASSERT_EQ(packed[p * N + n], want) << "tb " << tb << " k " << 2 * p << " n " << n << " bits "
                                                       << std::hex << to_bits(v[2 * p * N + n]) << " "
                                                       << to_bits(v[(2 * p + 1) * N + n]);
                }
        }
    }
}

TEST(SgemmBf16, PackedARoundsLikeTheScalarConversion) {
    // op(A) times the identity gives each rounded element of A back (its products with zeros add
    // nothing): finite patterns, both layouts of A. A result that is a bf16 denormal may come out
    // as zero (vdpbf16ps may flush it); everything else, 0x007fffff's round-up to the smallest
    // normal included, must be exact.
    if (!sgemm_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    std::mt19937 rng(42);
    const int64_t M = 30, K = 64;
    std::vector<float> v = rounding_cases(rng, M * K);
    for (float& x : v)
        if (!std::isfinite(x) || std::fabs(x) > 1e30f) x = 0.5f;  // inf * 0 would be NaN
    std::vector<float> I(K * K, 0.f);
    for (int64_t k = 0; k < K; ++k) I[k * K + k] = 1.f;
    for (bool ta : {false, true}) {
        std::vector<float> A(M * K), C(M * K);
        for (int64_t m = 0; m < M; ++m)
            for (int64_t k = 0; k < K; ++k) (ta ? A[k * M + m] : A[m * K + k]) = v[m * K + k];
        sgemm_bf16(ta, false, M, K, K, 1.f, A.data(), ta ? M : K, I.data(), K, 0.f, C.data(), K);
        for (int64_t i = 0; i < M * K; ++i) {
            const float want = bf16_round(v[i]);
            const bool denormal = want != 0.f && std::fabs(want) < std::numeric_limits<float>::min();
            if (denormal && C[i] == 0.f) continue;
            ASSERT_EQ(C[i], want) << "ta " << ta << " i " << i << " bits " << std::hex << to_bits(v[i]);
        }
    }
}

TEST(SgemmBf16, ResultDoesNotDependOnThreadCount) {
    if (!sgemm_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    expect_same_bits_for_any_thread_count(sgemm_bf16, 19);
}

TEST(SgemmBf16, GemmInBf16ModeUsesTheNativeKernelWhereAvailable) {
    // below Isa::amx (on AMX hosts the tiles run it: tests/test_amx_gemm.cc)
    const Isa prev = set_isa_cap(Isa::avx512);
    if (sgemm_bf16_available()) expect_gemm_runs(sgemm_bf16, Precision::bf16, true, 20);
    set_isa_cap(prev);
    if (!sgemm_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
}

namespace {

// op(B) packed once (sgemm_pack_b) and multiplied by sgemm_packed_b gives exactly the bits of the
// GEMM that packs B itself (`fn`), over shapes across the k block (256), the column block (512)
// and the register tiles, both transposes, alpha / beta, at 1 and 2 threads. Returns the cases run.
int expect_prepacked_same_bits(GemmFn fn, SgemmForm form, uint32_t seed) {
    std::mt19937 rng(seed);
    int cases = 0;
    const int before = num_threads();
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        for (bool ta : {false, true})
            for (bool tb : {false, true})
                for (int64_t M : {1, 13, 250})
                    for (int64_t N : {1, 33, 530})
                        for (int64_t K : {1, 3, 256, 301, 600}) {
                            const float alpha = cases % 3 == 0 ? 0.5f : 1.f, beta = cases % 2 ? 1.f : 0.f;
                            const Operands o(ta, tb, M, N, K, rng);
                            const int64_t lda = o.lda, ldb = o.ldb, ldc = o.ldc;
                            const std::vector<float>&A = o.A, &B = o.B;
                            std::vector<float> want = o.C0, got = o.C0;
                            std::vector<uint32_t> packed(sgemm_packed_b_words(form, K, N) + 1, 0xdeadbeefu);
                            sgemm_pack_b(form, tb, K, N, B.data(), ldb, packed.data());
                            EXPECT_EQ(packed.back(), 0xdeadbeefu) << "wrote past sgemm_packed_b_words";
                            fn(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, want.data(), ldc);
                            sgemm_packed_b(form, ta, M, N, K, alpha, A.data(), lda, packed.data(), beta, got.data(), ldc);
                            EXPECT_EQ(got, want) << "threads " << threads << " ta " << ta << " tb " << tb << " M " << M
                                                 << " N " << N << " K " << K;
                            ++cases;
                        }
    }
    set_num_threads(before);
    return cases;
}

}  // namespace

TEST(Sgemm, PrepackedBGivesTheSameBits) {
    if (!sgemm_packed_available()) GTEST_SKIP() << "no AVX2+FMA on this CPU";
    EXPECT_EQ(expect_prepacked_same_bits(sgemm_packed, SgemmForm::fp32, 31), 360);
}

TEST(SgemmBf16, PrepackedBGivesTheSameBits) {
    if (!sgemm_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    EXPECT_EQ(expect_prepacked_same_bits(sgemm_bf16, SgemmForm::bf16_native, 32), 360);
}

// bf16 without bf16 instructions: sgemm_bf16_emulated rounds both operands inside the fp32 packing.
// Its twin is the fp32 GEMM on copies of A and B rounded first (bf16_round_n): the same bits, on
// every transpose, ragged shapes across the register tiles and the k / row / column blocks, alpha
// (applied after the rounding) and beta, padded leading dimensions.
namespace {
void sgemm_on_rounded_copies(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                             const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    const int64_t ar = ta ? K : M, br = tb ? N : K;
    std::vector<float> a(A, A + ar * lda), b(B, B + br * ldb);
    bf16_round_n(a.data(), a.data(), (int64_t)a.size());
    bf16_round_n(b.data(), b.data(), (int64_t)b.size());
    sgemm_packed(ta, tb, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, C, ldc);
}
}  // namespace

TEST(SgemmBf16Emulated, SameBitsAsTheFp32GemmOnRoundedCopies) {
    if (!sgemm_packed_available()) GTEST_SKIP() << "no AVX2+FMA on this CPU";
    std::mt19937 rng(61);
    int cases = 0, differ_from_fp32 = 0;
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (int64_t M : {1, 7, 125, 250})
                for (int64_t N : {1, 17, 33, 530})
                    for (int64_t K : {1, 5, 256, 301}) {
                        const float alpha = cases % 3 == 0 ? 0.3f : 1.f, beta = cases % 2 ? 0.7f : 0.f;
                        const Operands o(ta, tb, M, N, K, rng);
                        const int64_t lda = o.lda, ldb = o.ldb, ldc = o.ldc;
                        const std::vector<float>&A = o.A, &B = o.B;
                        std::vector<float> want = o.C0, got = o.C0, fp32 = o.C0;
                        sgemm_on_rounded_copies(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, want.data(), ldc);
                        sgemm_bf16_emulated(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(), ldc);
                        sgemm_packed(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, fp32.data(), ldc);
                        ASSERT_EQ(got, want) << "ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K;
                        differ_from_fp32 += got != fp32;
                        ++cases;
                    }
    EXPECT_EQ(cases, 256);
    EXPECT_GT(differ_from_fp32, cases / 2) << "the emulated bf16 GEMM gave the fp32 bits: nothing was rounded";
}

TEST(SgemmBf16Emulated, PrepackedBAndThreadCountsGiveTheSameBits) {
    if (!sgemm_packed_available()) GTEST_SKIP() << "no AVX2+FMA on this CPU";
    EXPECT_EQ(expect_prepacked_same_bits(sgemm_bf16_emulated, SgemmForm::bf16_emulated, 62), 360);
    expect_same_bits_for_any_thread_count(sgemm_bf16_emulated, 63);
}

TEST(SgemmBf16Emulated, GemmInBf16ModeRunsItWithoutBf16Instructions) {
    // MOE_ISA=avx2 takes the native bf16 kernel and the AMX tiles away on any host
    const Isa prev = set_isa_cap(Isa::avx2);
    if (sgemm_packed_available()) {
        expect_gemm_runs(sgemm_on_rounded_copies, Precision::bf16, true, 64);
        expect_gemm_runs(sgemm_on_rounded_copies, Precision::bf16, false, 65);
        set_gemm_precision(Precision::bf16);
        EXPECT_NE(std::string(gemm_engine_name()).find("no bf16 instructions"), std::string::npos) << gemm_engine_name();
        set_gemm_precision(Precision::fp32);
    }
    set_isa_cap(prev);
    if (!sgemm_packed_available()) GTEST_SKIP() << "no AVX2+FMA on this CPU";
}

// gemm_pack_b / gemm_f32_b at each precision: packed where the GEMM packs B (fp32 on the packed
// kernel, bf16 emulated on it, native bf16), and the same bits as gemm<float> on B as stored.
TEST(Sgemm, GemmWithPackedBMatchesGemm) {
    std::mt19937 rng(33);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const int64_t M = 70, N = 130, K = 300;
    std::vector<float> A(M * K), B(N * K);
    for (float& v : A) v = u(rng);
    for (float& v : B) v = u(rng);
    for (Precision p : {Precision::fp32, Precision::bf16}) {
        set_gemm_precision(p);
        // bf16: natively, or emulated on the packed fp32 kernels (rounded in their packing)
        const bool packs = gemm_backend() == GemmBackend::packed || (p == Precision::bf16 && sgemm_bf16_available());
        EXPECT_EQ(gemm_packed_b_floats(K, N) > 0, packs) << precision_name(p);
        std::vector<float> scratch(std::max<int64_t>(1, gemm_packed_b_floats(K, N)));
        const PackedB pb = gemm_pack_b(true, K, N, B.data(), K, scratch.data());
        EXPECT_EQ(pb.packed != nullptr, packs) << precision_name(p);
        std::vector<float> want(M * N), got(M * N);
        gemm<float>(false, true, M, N, K, 1.f, A.data(), K, B.data(), K, 0.f, want.data(), N);
        gemm_f32_b(false, M, N, K, 1.f, A.data(), K, pb, 0.f, got.data(), N);
        EXPECT_EQ(got, want) << precision_name(p);
    }
    set_gemm_precision(Precision::fp32);
}

// ---- the AVX-512 fp32 kernel (12 x 32): the same bits as the AVX2 one ----

namespace {

// Forces one fp32 kernel for its lifetime.
class SgemmKernelScope {
public:
    explicit SgemmKernelScope(SgemmKernel k) { set_sgemm_kernel(k); }
    ~SgemmKernelScope() { set_sgemm_kernel(SgemmKernel::automatic); }
};

bool avx512_kernel_runs() {
    const SgemmKernelScope s(SgemmKernel::avx512);
    return sgemm_kernel() == SgemmKernel::avx512;
}

// C from the AVX2 kernel (1 thread) and from the AVX-512 one (`threads` threads), both from the
// same C0: expects the same bits.
void expect_kernels_agree(const Case& c, std::mt19937& rng, int threads) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const int64_t lda = (c.ta ? c.M : c.K) + 3, ldb = (c.tb ? c.K : c.N) + 1, ldc = c.N + 2;
    std::vector<float> A((c.ta ? c.K : c.M) * lda), B((c.tb ? c.N : c.K) * ldb), C0(c.M * ldc);
    for (float& v : A) v = u(rng);
    for (float& v : B) v = u(rng);
    for (float& v : C0) v = u(rng);
    std::vector<float> want = C0, got = C0;
    const int before = num_threads();
    {
        const SgemmKernelScope s(SgemmKernel::avx2);
        set_num_threads(1);
        sgemm_packed(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, want.data(), ldc);
    }
    {
        const SgemmKernelScope s(SgemmKernel::avx512);
        set_num_threads(threads);
        sgemm_packed(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, got.data(), ldc);
    }
    set_num_threads(before);
    // bit patterns, so that -0 / +0 differences count too
    std::vector<uint32_t> wb(want.size()), gb(got.size());
    std::memcpy(wb.data(), want.data(), 4 * want.size());
    std::memcpy(gb.data(), got.data(), 4 * got.size());
    EXPECT_EQ(gb, wb) << "threads " << threads << " ta " << c.ta << " tb " << c.tb << " M " << c.M << " N " << c.N
                      << " K " << c.K << " alpha " << c.alpha << " beta " << c.beta;
}

void sgemm_avx512(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    const SgemmKernelScope s(SgemmKernel::avx512);
    sgemm_packed(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// the rows of a row-major (N, K) matrix, as a weight loader hands them to sgemm_packed_wrows
void load_rows(const void* ctx, int64_t row, int64_t k0, int64_t kc, float* dst) {
    const auto* w = static_cast<const std::pair<const float*, int64_t>*>(ctx);
    std::memcpy(dst, w->first + row * w->second + k0, sizeof(float) * kc);
}

}  // namespace

TEST(SgemmAvx512, MatchesReferenceOnEdgesAndBlocks) {
    if (!avx512_kernel_runs()) GTEST_SKIP() << "no AVX-512F on this CPU (or MOE_ISA below avx512)";
    std::mt19937 rng(51);
    // last row tiles of 1, 4, 8, 11, 12 rows (the 4-, 8- and 12-row micro-kernels), column panels
    // of 1 to 32 columns
    EXPECT_EQ(sweep_shapes(sgemm_avx512, false, rng, {1, 4, 11, 12, 13, 20, 121}, {1, 16, 31, 32, 33, 70},
                           {1, 7, 9, 257}),
              672);
}

TEST(SgemmAvx512, SameBitsAsTheAvx2KernelOnRaggedShapes) {
    if (!avx512_kernel_runs()) GTEST_SKIP() << "no AVX-512F on this CPU (or MOE_ISA below avx512)";
    std::mt19937 rng(52);
    int cases = 0;
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (int64_t M : {1, 5, 6, 7, 12, 13, 25, 121})
                for (int64_t N : {1, 15, 16, 17, 33, 70})
                    for (int64_t K : {1, 8, 9, 255, 256, 257, 520}) {
                        const float alpha = cases % 3 == 0 ? 0.5f : cases % 3 == 1 ? 1.f : -1.25f;
                        const float beta = cases % 4 == 0 ? 0.f : cases % 4 == 1 ? 1.f : cases % 4 == 2 ? -0.7f : 0.f;
                        expect_kernels_agree(Case{ta, tb, M, N, K, alpha, beta}, rng, 1);
                        ++cases;
                    }
    EXPECT_EQ(cases, 1344);
}

TEST(SgemmAvx512, SameBitsAsTheAvx2KernelOnOneToThreeThreads) {
    if (!avx512_kernel_runs()) GTEST_SKIP() << "no AVX-512F on this CPU (or MOE_ISA below avx512)";
    std::mt19937 rng(53);
    // split by columns, then by rows (few columns, many rows); across the 512-column and 120-row blocks
    for (int threads : {1, 2, 3})
        for (const Case& c : {Case{false, true, 200, 1100, 300, 1.f, 0.f}, Case{true, false, 900, 20, 301, 1.f, 1.f},
                              Case{true, true, 250, 530, 129, 0.5f, -0.7f}})
            expect_kernels_agree(c, rng, threads);
    expect_same_bits_for_any_thread_count(sgemm_avx512, 54);
}

TEST(SgemmAvx512, PrepackedBAndWeightRowsGiveTheSameBits) {
    if (!avx512_kernel_runs()) GTEST_SKIP() << "no AVX-512F on this CPU (or MOE_ISA below avx512)";
    {
        const SgemmKernelScope s(SgemmKernel::avx512);
        EXPECT_EQ(expect_prepacked_same_bits(sgemm_packed, SgemmForm::fp32, 55), 360);
    }
    // sgemm_packed_wrows (weights read through a loader) on either kernel: the bits of sgemm_packed
    std::mt19937 rng(56);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (int64_t N : {7, 32, 77}) {
        const int64_t M = 29, K = 300;
        std::vector<float> A(M * K), W(N * K), want(M * N), got2(M * N), got5(M * N);
        for (float& v : A) v = u(rng);
        for (float& v : W) v = u(rng);
        const std::pair<const float*, int64_t> ctx{W.data(), K};
        {
            const SgemmKernelScope s(SgemmKernel::avx2);
            sgemm_packed(false, true, M, N, K, 1.f, A.data(), K, W.data(), K, 0.f, want.data(), N);
            sgemm_packed_wrows(M, N, K, A.data(), K, load_rows, &ctx, 0.f, got2.data(), N);
        }
        {
            const SgemmKernelScope s(SgemmKernel::avx512);
            sgemm_packed_wrows(M, N, K, A.data(), K, load_rows, &ctx, 0.f, got5.data(), N);
        }
        EXPECT_EQ(got2, want) << "N " << N;
        EXPECT_EQ(got5, want) << "N " << N;
    }
}

TEST(SgemmAvx512, KernelChoice) {
    EXPECT_THROW(parse_sgemm_kernel("avx1024", "MOE_SGEMM"), moe::error);
    EXPECT_EQ(parse_sgemm_kernel("auto", "MOE_SGEMM"), SgemmKernel::automatic);
    EXPECT_EQ(parse_sgemm_kernel("avx512", "MOE_SGEMM"), SgemmKernel::avx512);
    // whatever was asked for, the choice is one of the two kernels, and AVX2 under MOE_ISA=avx2
    const SgemmKernel k = sgemm_kernel();
    EXPECT_TRUE(k == SgemmKernel::avx2 || k == SgemmKernel::avx512);
    EXPECT_EQ(sgemm_kernel_description().rfind("packed AVX", 0), 0u) << sgemm_kernel_description();
    const Isa prev = set_isa_cap(Isa::avx2);
    {
        const SgemmKernelScope s(SgemmKernel::avx512);
        EXPECT_EQ(sgemm_kernel(), SgemmKernel::avx2);
        EXPECT_EQ(sgemm_kernel_description(), "packed AVX2 6x16");
    }
    set_isa_cap(prev);
    if (avx512_kernel_runs()) {
        const std::string d = sgemm_kernel_description();  // automatic: calibrated here
        EXPECT_NE(d.find("(calibrated: "), std::string::npos) << d;
        const SgemmKernelScope s(SgemmKernel::avx2);
        EXPECT_EQ(sgemm_kernel_description(), "packed AVX2 6x16 (MOE_SGEMM)");
    }
}
