// Fast kernels against their reference twins (run-time dispatched SIMD paths).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <random>
#include <utility>
#include <vector>

#include "core/parallel.h"
#include "kernels/adamw.h"
#include "kernels/cpu.h"
#include "kernels/dot.h"
#include "kernels/read_probe.h"

using namespace moe::kernels;

static std::vector<float> randv(int64_t n, uint64_t seed, float scale) {
    std::mt19937_64 r(seed);
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(r);
    return v;
}

static void expect_adamw_bit_identical(void (*fn)(float*, float*, float*, const float*, int64_t, const AdamWScalars&)) {
    for (int64_t n : {1, 7, 8, 9, 15, 16, 17, 1000, 4099}) {
        auto x = randv(n, 1, 1.f), m = randv(n, 2, 0.01f), g = randv(n, 4, 0.1f);
        auto v = randv(n, 3, 0.001f);
        for (auto& e : v) e = std::fabs(e);
        auto x2 = x, m2 = m, v2 = v;
        AdamWScalars s{0.9997f, 0.9f, 0.95f, 1.3e-3f, 0.31f, 1e-8f, 0.731f};
        for (int step = 0; step < 3; ++step) {
            adamw_ref(x.data(), m.data(), v.data(), g.data(), n, s);
            fn(x2.data(), m2.data(), v2.data(), g.data(), n, s);
        }
        for (int64_t i = 0; i < n; ++i) {
            ASSERT_EQ(x[i], x2[i]) << "n=" << n << " i=" << i;
            ASSERT_EQ(m[i], m2[i]) << "n=" << n << " i=" << i;
            ASSERT_EQ(v[i], v2[i]) << "n=" << n << " i=" << i;
        }
    }
}

TEST(Kernels, AdamWAvx2IsBitIdenticalToReference) {
    if (!cpu_features().avx2) GTEST_SKIP() << "no AVX2 on this CPU";
    expect_adamw_bit_identical(adamw_avx2);
}

TEST(Kernels, AdamWAvx512IsBitIdenticalToReference) {
    // fails if the compiler fuses a multiply and an add into an FMA (one rounding fewer)
    if (active_isa() < Isa::avx512) GTEST_SKIP() << "no AVX-512 on this CPU";
    expect_adamw_bit_identical(adamw_avx512);
}

TEST(Kernels, AdamWReferenceMatchesTheFormulaInDouble) {
    const int64_t n = 257;
    auto x = randv(n, 5, 1.f), m = randv(n, 6, 0.01f), g = randv(n, 8, 0.1f);
    auto v = randv(n, 7, 0.001f);
    for (auto& e : v) e = std::fabs(e);
    auto x0 = x, m0 = m, v0 = v;
    AdamWScalars s{0.999f, 0.9f, 0.95f, 1e-3f, 0.5f, 1e-8f, 0.5f};
    adamw(x.data(), m.data(), v.data(), g.data(), n, s);
    for (int64_t i = 0; i < n; ++i) {
        const double gi = (double)g[i] * s.grad_scale;
        const double mi = s.beta1 * (double)m0[i] + (1 - (double)s.beta1) * gi;
        const double vi = s.beta2 * (double)v0[i] + (1 - (double)s.beta2) * gi * gi;
        const double xi = x0[i] * (double)s.decay - s.step_size * mi / (std::sqrt(vi) / s.bc2_sqrt + s.eps);
        EXPECT_NEAR(m[i], mi, 1e-6 * (std::fabs(s.beta1 * m0[i]) + std::fabs((1 - s.beta1) * gi)));  // cancellation-aware
        EXPECT_NEAR(v[i], vi, 1e-6 * (vi + 1e-12));
        EXPECT_NEAR(x[i], xi, 1e-6 * std::fabs(x0[i]) + 1e-5 * s.step_size);
    }
}

TEST(Kernels, SumOfSquaresAvx2MatchesReference) {
    if (!cpu_features().avx2) GTEST_SKIP() << "no AVX2 on this CPU";
    for (int64_t n : {0, 1, 15, 16, 17, 100003}) {
        auto g = randv(n, 9, 0.3f);
        const double a = sumsq_ref(g.data(), n), b = sumsq_avx2(g.data(), n);
        EXPECT_NEAR(a, b, 1e-12 * (a + 1e-30)) << "n=" << n;
    }
}

// The read loop of build/bench/stream and `moe bench --read-probe` against its scalar twin: small
// integers, so every partial sum is exact in either order and the two agree exactly (the lanes and
// the tail both read).
TEST(Kernels, ReadSumEqualsItsTwin) {
    for (int64_t n : {0, 1, 31, 32, 33, 100003}) {
        std::vector<float> x(n);
        for (int64_t i = 0; i < n; ++i) x[i] = (float)((i * 7) % 13 - 6);
        double want = 0;
        for (float v : x) want += v;
        EXPECT_EQ(read_sum_ref(x.data(), n), want) << "n=" << n;
        EXPECT_EQ(read_sum(x.data(), n), want) << "n=" << n << " isa " << (int)active_isa();
    }
}

TEST(Kernels, IsaCapSelectsTheReference) {
    Isa prev = set_isa_cap(Isa::ref);
    EXPECT_EQ(active_isa(), Isa::ref);
    set_isa_cap(prev);
    EXPECT_LE((int)active_isa(), (int)prev);
}

#include "kernels/exp.h"

TEST(Kernels, ExpShiftSumAvx2MatchesReference) {
    if (!cpu_features().avx2) GTEST_SKIP() << "no AVX2 on this CPU";
    std::mt19937_64 r(11);
    std::uniform_real_distribution<float> d(-90.f, 0.f);
    for (int64_t n : {1, 5, 8, 13, 32, 129, 1000}) {
        std::vector<float> x(n);
        for (auto& v : x) v = d(r);
        x[0] = 0.f;  // the row maximum
        const float shift = 0.75f;
        for (auto& v : x) v += shift;
        auto a = x, b = x;
        const float sa = exp_shift_sum_ref(a.data(), n, shift), sb = exp_shift_sum_avx2(b.data(), n, shift);
        for (int64_t i = 0; i < n; ++i) {
            if (a[i] < 1.2e-38f) {  // below the clamp: both tiny
                EXPECT_LT(b[i], 1.5e-38f);
                continue;
            }
            EXPECT_NEAR(a[i], b[i], 3e-7f * a[i]) << "n=" << n << " i=" << i << " x=" << x[i];
        }
        EXPECT_NEAR(sa, sb, 1e-6f * sa) << "n=" << n;
    }
}

#include "ops/activation.h"

TEST(Kernels, SwigluAvx2MatchesReference) {
    if (!cpu_features().avx2) GTEST_SKIP() << "no AVX2 on this CPU";
    for (int64_t n : {1, 7, 8, 29, 1000}) {
        auto g = randv(n, 21, 3.f), u = randv(n, 22, 1.f), d = randv(n, 23, 1.f);
        g[0] = -90.f;  // sigmoid underflow side
        std::vector<float> a(n), b(n);
        moe::ops::swiglu_forward_ref(a.data(), g.data(), u.data(), n);
        swiglu_forward_avx2(b.data(), g.data(), u.data(), n);
        for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(a[i], b[i], 1e-6f * (1 + std::fabs(a[i]))) << "fwd n=" << n << " i=" << i;
        std::vector<float> dg1(n, 0.5f), du1(n, -0.25f), dg2 = dg1, du2 = du1;
        moe::ops::swiglu_backward_ref(dg1.data(), du1.data(), d.data(), g.data(), u.data(), n);
        swiglu_backward_avx2(dg2.data(), du2.data(), d.data(), g.data(), u.data(), n);
        for (int64_t i = 0; i < n; ++i) {
            ASSERT_NEAR(dg1[i], dg2[i], 1e-6f * (1 + std::fabs(dg1[i]))) << "dgate n=" << n << " i=" << i;
            ASSERT_NEAR(du1[i], du2[i], 1e-6f * (1 + std::fabs(du1[i]))) << "dup n=" << n << " i=" << i;
        }
    }
}

TEST(Kernels, DotBlockedMatchesTheSumInDoubleAndItsOwnOrder) {
    // against the exact sum (double), and against the order it documents, written out as scalar
    // code: 16 running sums over the whole 16-blocks, folded 8, 4, 2, 1, then the tail
    for (int64_t n : {0, 1, 15, 16, 17, 31, 32, 33, 128, 1000}) {
        const auto a = randv(n, 10 + n, 1.f), b = randv(n, 20 + n, 1.f);
        double exact = 0, mag = 0;
        for (int64_t i = 0; i < n; ++i) exact += (double)a[i] * b[i], mag += std::fabs((double)a[i] * b[i]);
        const float got = dot_blocked(a.data(), b.data(), n);
        EXPECT_LE(std::fabs(got - exact), 1e-6 * mag + 1e-30) << "n " << n;
        float acc[16] = {};
        int64_t i = 0;
        for (; i + 16 <= n; i += 16)
            for (int j = 0; j < 16; ++j) {
                volatile float p = a[i + j] * b[i + j];  // no contraction into an FMA
                acc[j] = acc[j] + p;
            }
        for (int w = 8; w >= 1; w /= 2)
            for (int j = 0; j < w; ++j) acc[j] = acc[j] + acc[j + w];
        float s = acc[0];
        for (; i < n; ++i) {
            volatile float p = a[i] * b[i];
            s = s + p;
        }
        EXPECT_EQ(got, s) << "n " << n;
    }
}

#include <cstring>
#include <limits>

#include "kernels/attn_rows.h"
#include "kernels/bf16.h"
#include "kernels/ggml_quants.h"

using moe::DType;
using moe::dtype_name;

// Cached attention's per-row loops: the AVX2 and AVX-512 forms give the reference twins' bits
// (strided rows, every D tail, key counts around the 4-key step), and the scores are the dots
// (against double) times the scale.
TEST(Kernels, AttnRowsSimdEqualsReferenceBitForBit) {
    const Isa best = active_isa();
    for (int64_t D : {1, 8, 15, 16, 17, 40, 64, 80, 128, 130}) {
        for (int64_t n : {0, 1, 3, 4, 5, 16, 37}) {
            const int64_t ks = D + 7;  // rows strided as in the KV cache (kv heads x head dim)
            const auto q = randv(D, 100 + D, 1.f), k = randv(n * ks + 1, 200 + n, 1.f), v = randv(n * ks + 1, 300 + n, 1.f);
            auto p = randv(n + 1, 400 + n, 1.f);
            for (auto& x : p) x = std::fabs(x);
            const auto o0 = randv(D, 500 + D, 1.f);
            std::vector<float> s_ref(n + 1, -1.f), o_ref = o0;
            attn_scores_ref(s_ref.data(), q.data(), k.data(), ks, n, D, 0.125f);
            attn_accumulate_ref(o_ref.data(), p.data(), 0.37f, v.data(), ks, n, D);
            for (int64_t u = 0; u < n; ++u) {
                double exact = 0, mag = 0;
                for (int64_t d = 0; d < D; ++d)
                    exact += (double)q[d] * k[u * ks + d], mag += std::fabs((double)q[d] * k[u * ks + d]);
                ASSERT_LE(std::fabs(s_ref[u] - 0.125 * exact), 1e-6 * mag + 1e-30) << "D " << D << " u " << u;
            }
            for (Isa cap : {Isa::avx2, Isa::avx512}) {
                if ((int)cap > (int)best) continue;
                const Isa prev = set_isa_cap(cap);
                std::vector<float> s(n + 1, -1.f), o = o0;
                attn_scores(s.data(), q.data(), k.data(), ks, n, D, 0.125f);
                attn_accumulate(o.data(), p.data(), 0.37f, v.data(), ks, n, D);
                set_isa_cap(prev);
                for (int64_t u = 0; u <= n; ++u) ASSERT_EQ(s[u], s_ref[u]) << isa_name(cap) << " D " << D << " n " << n << " u " << u;
                for (int64_t d = 0; d < D; ++d) ASSERT_EQ(o[d], o_ref[d]) << isa_name(cap) << " D " << D << " n " << n << " d " << d;
            }
        }
    }
}

// The same loops over an f16 / bf16 KV cache (--cache-type): the reference twin on the stored
// elements equals the float reference on the widened values, and every SIMD form equals the twin,
// bit for bit; and the conversions round as fp32_to_fp16 / f32_to_bf16 do (ties, tiny and huge
// values, infinities, the F16C path against the scalar one).
TEST(Kernels, AttnRowsHalfTypesEqualTheFloatFormsOnWidenedValues) {
    const Isa best = active_isa();
    for (DType t : {DType::f16, DType::bf16}) {
        for (int64_t D : {1, 8, 15, 16, 17, 40, 64, 80, 128, 130}) {
            for (int64_t n : {0, 1, 3, 4, 5, 16, 37}) {
                const int64_t ks = D + 7;
                const auto q = randv(D, 100 + D, 1.f), kf = randv(n * ks + 1, 200 + n, 1.f), vf = randv(n * ks + 1, 300 + n, 1.f);
                std::vector<uint16_t> k(kf.size()), v(vf.size());
                kv_store(k.data(), t, kf.data(), (int64_t)kf.size());
                kv_store(v.data(), t, vf.data(), (int64_t)vf.size());
                std::vector<float> kw(kf.size()), vw(vf.size());  // widened
                kv_load(kw.data(), t, k.data(), (int64_t)k.size());
                kv_load(vw.data(), t, v.data(), (int64_t)v.size());
                auto p = randv(n + 1, 400 + n, 1.f);
                for (auto& x : p) x = std::fabs(x);
                const auto o0 = randv(D, 500 + D, 1.f);
                std::vector<float> s_f(n + 1, -1.f), o_f = o0, s_ref(n + 1, -1.f), o_ref = o0;
                attn_scores_ref(s_f.data(), q.data(), kw.data(), ks, n, D, 0.125f);
                attn_accumulate_ref(o_f.data(), p.data(), 0.37f, vw.data(), ks, n, D);
                attn_scores_ref(s_ref.data(), q.data(), k.data(), t, ks, n, D, 0.125f);
                attn_accumulate_ref(o_ref.data(), p.data(), 0.37f, v.data(), t, ks, n, D);
                for (int64_t u = 0; u <= n; ++u) ASSERT_EQ(s_ref[u], s_f[u]) << dtype_name(t) << " D " << D << " u " << u;
                for (int64_t d = 0; d < D; ++d) ASSERT_EQ(o_ref[d], o_f[d]) << dtype_name(t) << " D " << D << " d " << d;
                for (Isa cap : {Isa::ref, Isa::avx2, Isa::avx512}) {
                    if ((int)cap > (int)best) continue;
                    const Isa prev = set_isa_cap(cap);
                    std::vector<float> s(n + 1, -1.f), o = o0;
                    attn_scores(s.data(), q.data(), k.data(), t, ks, n, D, 0.125f);
                    attn_accumulate(o.data(), p.data(), 0.37f, v.data(), t, ks, n, D);
                    set_isa_cap(prev);
                    for (int64_t u = 0; u <= n; ++u)
                        ASSERT_EQ(s[u], s_ref[u]) << dtype_name(t) << " " << isa_name(cap) << " D " << D << " n " << n << " u " << u;
                    for (int64_t d = 0; d < D; ++d)
                        ASSERT_EQ(o[d], o_ref[d]) << dtype_name(t) << " " << isa_name(cap) << " D " << D << " n " << n << " d " << d;
                }
            }
        }
    }
    // conversions: SIMD (8 at a time) and scalar (tails, Isa::ref) against the scalar definitions
    std::vector<float> x = {0.f, -0.f, 1.f, -1.5f, 65504.f, 65520.f, 1e6f, -1e6f, 6e-8f, 3e-8f, 2.98e-8f, 1e-40f,
                            1.00048828125f, 1.00146484375f, 3.14159f, -2.71828f, 1e-5f, 5.9604645e-8f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
    for (int i = 0; i < 300; ++i) x.push_back((float)(std::ldexp(1.0 + i / 301.0, i % 40 - 30) * (i % 3 ? 1 : -1)));
    for (Isa cap : {Isa::ref, Isa::avx2}) {
        if ((int)cap > (int)best) continue;
        const Isa prev = set_isa_cap(cap);
        std::vector<uint16_t> h(x.size()), b(x.size());
        kv_store(h.data(), DType::f16, x.data(), (int64_t)x.size());
        kv_store(b.data(), DType::bf16, x.data(), (int64_t)x.size());
        std::vector<float> hw(x.size());
        kv_load(hw.data(), DType::f16, h.data(), (int64_t)h.size());
        set_isa_cap(prev);
        for (size_t i = 0; i < x.size(); ++i) {
            ASSERT_EQ(h[i], fp32_to_fp16(x[i])) << isa_name(cap) << " f16 of " << x[i];
            ASSERT_EQ(b[i], f32_to_bf16(x[i])) << isa_name(cap) << " bf16 of " << x[i];
            const float w = fp16_to_fp32(h[i]);
            ASSERT_EQ(std::memcmp(&hw[i], &w, 4), 0) << isa_name(cap) << " widened " << x[i];
        }
    }
}

// parallel_for with a size: a loop under kForkMinBytes forks nothing and runs the chunks a forked
// run would hand to the threads, in order, on the calling thread (so a per-chunk result is the same
// either way); a larger one forks.
TEST(Parallel, SmallLoopsRunTheForkedChunksInline) {
    const int before = moe::num_threads();
    moe::set_num_threads(3);
    std::mutex mu;
    auto chunks_of = [&](int64_t item_bytes) {
        std::vector<std::pair<int64_t, int64_t>> c;
        moe::parallel_for(5, 105, 4, item_bytes, [&](int64_t b, int64_t e) {
            std::lock_guard<std::mutex> lock(mu);
            c.emplace_back(b, e);
        });
        std::sort(c.begin(), c.end());
        return c;
    };
    const std::vector<std::pair<int64_t, int64_t>> forked = {{5, 39}, {39, 73}, {73, 105}};
    int64_t forks = moe::parallel_regions();
    EXPECT_EQ(chunks_of(moe::kForkMinBytes / 100 - 1), forked);  // 100 items, just under the limit
    EXPECT_EQ(moe::parallel_regions(), forks);
    EXPECT_EQ(chunks_of(0), forked);
    EXPECT_EQ(moe::parallel_regions(), forks);
    EXPECT_EQ(chunks_of(moe::kForkMinBytes / 100 + 1), forked);
    EXPECT_EQ(moe::parallel_regions(), forks + 1);
    forks = moe::parallel_regions();
    EXPECT_EQ(chunks_of(-1), forked);  // size unknown: forks, as the overload without a size
    EXPECT_EQ(moe::parallel_regions(), forks + 1);
    moe::set_num_threads(before);
}
