// The bf16 training path: the rounding kernel and its SIMD twin, the GEMM in bf16 mode against a
// double-precision reference on bf16-rounded inputs, and a 200-step training run whose loss curve
// must stay inside a band around the fp32 curve (the band is documented in docs/performance.md).
#include <cmath>
#include <cstdlib>
#include <random>

#include "cli_util.h"
#include "core/error.h"
#include "kernels/amx_gemm.h"
#include "kernels/bf16.h"
#include "kernels/cpu.h"
#include "kernels/gemm.h"
#include "kernels/sgemm.h"

using namespace moe::kernels;
using namespace moe_test;

static float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

TEST(Bf16, RoundsToNearestEven) {
    EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
    EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);  // tie, even below
    EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);  // tie, even above
    EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);  // just above the tie
    EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
    EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
    EXPECT_EQ(f32_to_bf16(from_bits(0x7f7fffffu)), 0x7f80);  // FLT_MAX rounds up to inf
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7f800001u)))));  // NaN with low payload only
    EXPECT_EQ(bf16_round(1.0f + 1.0f / 256), 1.0f);  // below bf16's 8-bit mantissa
}

TEST(Bf16, Avx2RoundingIsBitIdenticalToReference) {
    if (!cpu_features().avx2) GTEST_SKIP() << "no AVX2 on this CPU";
    std::mt19937 r(3);
    std::vector<float> x(10007);
    for (auto& v : x) v = from_bits(r());  // every bit pattern class, NaNs and denormals included
    x[0] = INFINITY, x[1] = -INFINITY, x[2] = NAN, x[3] = 0.f, x[4] = -0.f, x[5] = from_bits(0x3f808000u);
    std::vector<float> a(x.size()), b(x.size());
    bf16_round_ref(a.data(), x.data(), (int64_t)x.size());
    bf16_round_avx2(b.data(), x.data(), (int64_t)x.size());
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(bits(a[i]), bits(b[i])) << "i=" << i << " x=" << bits(x[i]);
}

TEST(Bf16, GemmInBf16ModeIsABf16Gemm) {
    const int64_t M = 37, N = 29, K = 70;
    std::mt19937 r(5);
    std::normal_distribution<float> d(0.f, 1.f);
    for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
            std::vector<float> A(M * K), B(K * N), C16(M * N, 0.f), C32(M * N, 0.f);
            for (auto& v : A) v = d(r);
            for (auto& v : B) v = d(r);
            const int64_t lda = ta ? M : K, ldb = tb ? K : N;
            set_gemm_precision(Precision::bf16);
            gemm<float>(ta, tb, M, N, K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C16.data(), N);
            set_gemm_precision(Precision::fp32);
            gemm<float>(ta, tb, M, N, K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C32.data(), N);
            // reference: double GEMM of the bf16-rounded operands
            std::vector<double> Ad(A.size()), Bd(B.size()), Cd(M * N, 0.0);
            for (size_t i = 0; i < A.size(); ++i) Ad[i] = bf16_round(A[i]);
            for (size_t i = 0; i < B.size(); ++i) Bd[i] = bf16_round(B[i]);
            gemm_ref<double>(ta, tb, M, N, K, 1.0, Ad.data(), lda, Bd.data(), ldb, 0.0, Cd.data(), N);
            double max_vs_ref = 0, max_vs_fp32 = 0;
            for (int64_t i = 0; i < M * N; ++i) {
                max_vs_ref = std::max(max_vs_ref, std::fabs(C16[i] - Cd[i]));
                max_vs_fp32 = std::max(max_vs_fp32, (double)std::fabs(C16[i] - C32[i]));
            }
            // fp32 accumulation of K=70 products of magnitude ~1: ~1e-5
            EXPECT_LT(max_vs_ref, 1e-4) << "ta=" << ta << " tb=" << tb;
            // bf16 operands: 2^-9 relative per operand, sqrt(K) growth: below 0.2, but not exact
            EXPECT_LT(max_vs_fp32, 0.2) << "ta=" << ta << " tb=" << tb;
            EXPECT_GT(max_vs_fp32, 1e-4) << "bf16 mode gave the fp32 result: the precision switch did nothing";
        }
}

TEST(Bf16, ParsePrecisionRejectsUnknownNames) {
    EXPECT_EQ(parse_precision("bf16", "x"), Precision::bf16);
    EXPECT_EQ(parse_precision("fp32", "x"), Precision::fp32);
    EXPECT_THROW(parse_precision("fp16", "x"), moe::error);
}

namespace {
class Bf16Train : public CliTest {};
}  // namespace

// 200 steps of a small MoE in fp32 and in bf16 (--threads 1): the mean loss over every 20-step
// window of the bf16 run stays within kBand nats of the fp32 run's, and both learn.
TEST_F(Bf16Train, LossCurveStaysInBandOfFp32Over200Steps) {
    constexpr double kBand = 0.05;
    json cfg = tiny_config();
    cfg["model"]["n_layer"] = 2;
    cfg["model"]["n_embd"] = 32;
    cfg["model"]["n_head"] = 4;
    cfg["model"]["n_ctx"] = 32;
    cfg["train"]["block_size"] = 32;
    cfg["train"]["batch_size"] = 8;
    cfg["train"]["steps"] = 200;
    cfg["train"]["lr"] = 3e-3;
    cfg["train"]["warmup_steps"] = 20;
    cfg["train"]["eval_interval"] = 200;
    write_config("small.json", cfg);
    std::vector<std::vector<double>> curves;
    for (const char* p : {"fp32", "bf16"}) {
        const std::string log = std::string("log_") + p + ".jsonl";
        RunResult r = moe(std::string("train --config small.json --threads 1 --no-sample --out ck_") + p +
                          " --precision " + p + " --log " + log);
        ASSERT_EQ(r.code(), 0) << r.describe();
        EXPECT_NE(r.out.find(std::string(p) + " GEMMs"), std::string::npos) << r.out;
        // the banner says which bf16 GEMM this CPU runs (under MOE_ISA the CLI caps the ISA and this
        // process does not: then the banner is not this process's to predict)
        if (std::string(p) == "bf16" && std::getenv("MOE_ISA") == nullptr) {
            const char* engine = moe::kernels::amx_bf16_available()     ? "AMX bf16 tiles"
                                 : moe::kernels::sgemm_bf16_available() ? "native vdpbf16ps"
                                                                        : "emulated";
            EXPECT_NE(r.out.find(engine), std::string::npos) << r.out;
        }
        Log l = parse_log(read_file(path(log)));
        ASSERT_EQ(l.loss.size(), 200u);
        std::vector<double> c;
        for (const auto& [step, s] : l.loss) c.push_back(std::stod(s));
        curves.push_back(c);
    }
    double worst = 0;
    for (int w = 0; w < 10; ++w) {
        double a = 0, b = 0;
        for (int i = w * 20; i < (w + 1) * 20; ++i) a += curves[0][i], b += curves[1][i];
        worst = std::max(worst, std::fabs(a - b) / 20);
        EXPECT_LT(std::fabs(a - b) / 20, kBand) << "window " << w;
    }
    std::printf("worst 20-step window gap bf16 vs fp32: %.4f nats (band %.2f)\n", worst, kBand);
    EXPECT_LT(curves[0].back(), curves[0].front() - 1.0);  // fp32 learned
    EXPECT_LT(curves[1].back(), curves[1].front() - 1.0);  // bf16 learned
    EXPECT_NE(curves[0], curves[1]);                       // and the bf16 run really was different
}
