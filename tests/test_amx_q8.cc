// AMX-INT8 prefill tiles (kernels/amx_q8.h) on hosts that have them: q8_0, q4_0, q4_k and q5_k
// give the AVX-512 VNNI tiles' bits exactly (the same exact integer sums per block, the same fp32
// operations in the same order); moe's int8 and q6_k (no VNNI tile path to equal) against the double
// reference twin. Ragged shapes: N not a multiple of the 16-row A tile, OUT not a multiple of the
// 32-row weight tile (and <= 16: one half), int8 IN with a tail block and an odd block count;
// 1-3 threads; y overwritten and accumulated.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/parallel.h"
#include "kernels/amx_q8.h"
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

bool amx_here() {
    const Isa prev = set_isa_cap(Isa::amx);
    const bool on = amx::int8_active();
    set_isa_cap(prev);
    return on;
}

// qmatmul under the ISA cap, y starting at 0.25 (seen when accumulating)
std::vector<float> run(Isa cap, const QMatrix& m, const std::vector<float>& x, int64_t N, bool acc) {
    const Isa prev = set_isa_cap(cap);
    std::vector<float> y(N * m.out, 0.25f);
    qmatmul(y.data(), x.data(), m, N, acc);
    set_isa_cap(prev);
    return y;
}

}  // namespace

TEST(AmxQ8, GgmlTilesEqualVnniTilesBitForBit) {
    if (!amx_here()) GTEST_SKIP() << "no AMX-INT8 here: " << host_description();
    for (WType t : {WType::q8_0, WType::q4_0, WType::q4_k, WType::q5_k, WType::q6_k}) {
        const bool k = gtype_block(ggml_type(t)) == 256;
        for (int64_t in : k ? std::vector<int64_t>{256, 768} : std::vector<int64_t>{32, 320})
            for (int64_t out : {13, 70}) {
                auto w = randv(out * in, 11 + in + out + (int)t);
                QStore st;
                st.build(t, w.data(), out, in);
                for (int64_t N : {9, 16, 35})
                    for (int threads : {1, 2, 3}) {
                        moe::set_num_threads(threads);
                        auto x = randv(N * in, 7 + N);
                        for (bool acc : {false, true}) {
                            const auto a = run(Isa::avx512, st.view(), x, N, acc), b = run(Isa::amx, st.view(), x, N, acc);
                            for (int64_t i = 0; i < N * out; ++i)
                                ASSERT_EQ(std::bit_cast<uint32_t>(a[i]), std::bit_cast<uint32_t>(b[i]))
                                    << wtype_name(t) << " in=" << in << " out=" << out << " N=" << N
                                    << " threads=" << threads << " acc=" << acc << " i=" << i << ": " << a[i]
                                    << " vs " << b[i];
                        }
                    }
            }
    }
    moe::set_num_threads(0);
}

// int8 (whose other prefill is the fp32 GEMM) and q6_k against the double
// reference: fp32 sums over the blocks, the rounding growing as sqrt(in)
TEST(AmxQ8, Int8AndQ6KMatchReference) {
    if (!amx_here()) GTEST_SKIP() << "no AMX-INT8 here: " << host_description();
    for (WType t : {WType::q8, WType::q6_k}) {
        const std::vector<int64_t> ins = t == WType::q8 ? std::vector<int64_t>{13, 32, 70, 96, 600} : std::vector<int64_t>{256, 768};
        for (int64_t in : ins)
            for (int64_t out : {13, 37, 70}) {
                auto w = randv(out * in, 21 + in + out);
                QStore st;
                st.build(t, w.data(), out, in);
                for (int64_t N : {9, 17, 35})
                    for (int threads : {1, 3}) {
                        moe::set_num_threads(threads);
                        auto x = randv(N * in, 5 + N);
                        for (bool acc : {false, true}) {
                            std::vector<float> r(N * out, 0.25f);
                            qmatmul_ref(r.data(), x.data(), st.view(), N, acc);
                            const auto b = run(Isa::amx, st.view(), x, N, acc);
                            for (int64_t i = 0; i < N * out; ++i)
                                ASSERT_NEAR(r[i], b[i], 2e-5 * (1 + std::fabs(r[i])) * std::max(1.0, std::sqrt(in / 64.0)))
                                    << wtype_name(t) << " in=" << in << " out=" << out << " N=" << N
                                    << " threads=" << threads << " acc=" << acc << " i=" << i;
                        }
                    }
            }
    }
    moe::set_num_threads(0);
}

// The AMX path is taken (not silently the VNNI one): for int8 its result differs from the fp32 GEMM
// prefill that MOE_ISA=avx512 runs somewhere in a large enough product (the two round differently),
// and q6_k's from the row dots.
TEST(AmxQ8, AmxPathIsTaken) {
    if (!amx_here()) GTEST_SKIP() << "no AMX-INT8 here: " << host_description();
    for (WType t : {WType::q8, WType::q6_k}) {
        const int64_t in = 1024, out = 64, N = 32;
        auto w = randv(out * in, 3), x = randv(N * in, 4);
        QStore st;
        st.build(t, w.data(), out, in);
        const auto a = run(Isa::avx512, st.view(), x, N, false), b = run(Isa::amx, st.view(), x, N, false);
        int64_t differ = 0;
        for (int64_t i = 0; i < N * out; ++i) differ += a[i] != b[i];
        EXPECT_GT(differ, 0) << wtype_name(t);
    }
}
