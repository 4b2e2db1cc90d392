// The fast attention (per-head GEMMs) against its reference twin (plain loops over the causal
// triangle), forward and backward, in float. The finite-difference checks of both live in
// test_grad_ops.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "core/rng.h"
#include "ops/attention.h"

using namespace moe;

namespace {

std::vector<float> randn(size_t n, Rng& rng, double sd = 1.0) {
    std::vector<float> v(n);
    for (auto& x : v) x = (float)(rng.normal() * sd);
    return v;
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
    double md = 0, mb = 1e-6;
    for (size_t i = 0; i < a.size(); ++i) {
        md = std::max(md, (double)std::fabs(a[i] - b[i]));
        mb = std::max(mb, (double)std::fabs(b[i]));
    }
    return md / mb;
}

void compare(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, int threads) {
    set_num_threads(threads);
    Rng rng(B * 1000 + T * 10 + H, Hkv * 7 + D);
    const int64_t N = B * T;
    auto q = randn(N * H * D, rng), k = randn(N * Hkv * D, rng), v = randn(N * Hkv * D, rng);
    auto g = randn(N * H * D, rng);
    std::vector<float> out(N * H * D), att(B * H * T * T), out_r(N * H * D), att_r(B * H * T * T);
    ops::attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D);
    ops::attention_forward_ref(out_r.data(), att_r.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D);
    EXPECT_LT(max_rel(out, out_r), 1e-5) << "forward out";
    EXPECT_LT(max_rel(att, att_r), 1e-5) << "forward att";
    // backward accumulates: start from the same non-zero values
    auto dq0 = randn(N * H * D, rng), dk0 = randn(N * Hkv * D, rng), dv0 = randn(N * Hkv * D, rng);
    auto dq = dq0, dk = dk0, dv = dv0, dq_r = dq0, dk_r = dk0, dv_r = dv0;
    std::vector<float> datt(B * H * T * T), datt_r(B * H * T * T);
    ops::attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), g.data(), q.data(), k.data(),
                            v.data(), att.data(), B, T, H, Hkv, D);
    ops::attention_backward_ref(dq_r.data(), dk_r.data(), dv_r.data(), datt_r.data(), g.data(), q.data(),
                                k.data(), v.data(), att_r.data(), B, T, H, Hkv, D);
    EXPECT_LT(max_rel(dq, dq_r), 1e-5) << "dq";
    EXPECT_LT(max_rel(dk, dk_r), 1e-5) << "dk";
    EXPECT_LT(max_rel(dv, dv_r), 1e-5) << "dv";
    set_num_threads(0);
}

}  // namespace

TEST(Attention, FastMatchesReferenceGqa) { compare(2, 37, 4, 2, 16, 2); }
TEST(Attention, FastMatchesReferenceMha) { compare(3, 16, 2, 2, 8, 1); }
TEST(Attention, FastMatchesReferenceMqaLong) { compare(1, 128, 4, 1, 32, 2); }
TEST(Attention, FastMatchesReferenceSingleToken) { compare(4, 1, 2, 1, 4, 2); }
