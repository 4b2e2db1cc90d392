// The fast attentions against their reference twin (plain loops over the causal triangle), forward
// and backward, in float: the dispatched attention_forward/backward (the fused short-context
// kernels of kernels/attention_small.h where the shape allows) and the per-head GEMM path. The
// finite-difference checks live in test_grad_ops.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "core/rng.h"
#include "kernels/attention_small.h"
#include "kernels/cpu.h"
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

enum class Path { dispatched, gemm, fused };

void compare(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, int threads, Path path = Path::dispatched) {
    set_num_threads(threads);
    Rng rng(B * 1000 + T * 10 + H, Hkv * 7 + D);
    const int64_t N = B * T;
    auto q = randn(N * H * D, rng), k = randn(N * Hkv * D, rng), v = randn(N * Hkv * D, rng);
    auto g = randn(N * H * D, rng);
    std::vector<float> out(N * H * D), att(B * H * T * T), out_r(N * H * D), att_r(B * H * T * T);
    if (path == Path::gemm)
        ops::attention_forward_gemm(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D);
    else if (path == Path::fused)
        ops::attention_forward_fused(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D);
    else
        ops::attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D);
    ops::attention_forward_ref(out_r.data(), att_r.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D);
    EXPECT_LT(max_rel(out, out_r), 1e-5) << "forward out";
    EXPECT_LT(max_rel(att, att_r), 1e-5) << "forward att";
    // backward accumulates: start from the same non-zero values
    auto dq0 = randn(N * H * D, rng), dk0 = randn(N * Hkv * D, rng), dv0 = randn(N * Hkv * D, rng);
    auto dq = dq0, dk = dk0, dv = dv0, dq_r = dq0, dk_r = dk0, dv_r = dv0;
    std::vector<float> datt(B * H * T * T), datt_r(B * H * T * T);
    if (path == Path::gemm)
        ops::attention_backward_gemm(dq.data(), dk.data(), dv.data(), datt.data(), g.data(), q.data(), k.data(),
                                     v.data(), att.data(), B, T, H, Hkv, D);
    else if (path == Path::fused)
        ops::attention_backward_fused(dq.data(), dk.data(), dv.data(), datt.data(), g.data(), q.data(), k.data(),
                                      v.data(), att.data(), B, T, H, Hkv, D);
    else
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

// The dispatched path: fused where preferred (short T, D <= 32), else the per-head GEMMs.
TEST(Attention, FastMatchesReferenceGqa) {
    EXPECT_EQ(kernels::attention_small_preferred(37, 16), kernels::active_isa() >= kernels::Isa::avx2);
    compare(2, 37, 4, 2, 16, 2);
}
TEST(Attention, FastMatchesReferenceMha) { compare(3, 16, 2, 2, 8, 1); }
TEST(Attention, FastMatchesReferenceMqaLong) { compare(1, 128, 4, 1, 32, 2); }
TEST(Attention, FastMatchesReferenceSingleToken) { compare(4, 1, 2, 1, 4, 2); }
TEST(Attention, FastMatchesReferenceLongContext) {
    EXPECT_FALSE(kernels::attention_small_supported(200, 16));
    compare(1, 200, 2, 2, 16, 2);
}
// Each path on its own, wherever it can run.
TEST(Attention, FusedMatchesReferenceEveryWidth) {
    if (!kernels::attention_small_supported(32, 16)) GTEST_SKIP() << "no AVX2 here: the fused kernels do not run";
    // both kernel families where the CPU has them (AVX-512 takes D 16 and 32 up to T 64, AVX2 the
    // rest): every D / 8 they instantiate, T across the 4-row blocks, the 8- and 16-key chunk edges
    // and up to the limit
    for (kernels::Isa isa : {kernels::Isa::avx2, kernels::Isa::avx512}) {
        const kernels::Isa prev = kernels::set_isa_cap(isa);
        if (kernels::active_isa() == isa) {
            for (int64_t D = 8; D <= 64; D += 8)
                for (int64_t T : {1, 2, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 49, 63, 64, 65, 128})
                    compare(2, T, 2, 1, D, 1, Path::fused);
            compare(2, 37, 4, 2, 16, 2, Path::fused);  // GQA, 2 threads
            compare(3, 64, 4, 2, 32, 2, Path::fused);
        }
        kernels::set_isa_cap(prev);
    }
}
TEST(Attention, GemmPathMatchesReference) {
    compare(2, 37, 4, 2, 16, 2, Path::gemm);
    compare(3, 16, 2, 2, 8, 1, Path::gemm);
}
