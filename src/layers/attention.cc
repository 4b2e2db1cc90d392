#include "layers/attention.h"

#include <cstring>

#include "core/profile.h"
#include "kernels/gemm.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace moe::layers {

void attention_forward(float* out, AttentionCache& c, const float* inp, const LayerWeights& w,
                       const float* rope, const Dims& d, double eps) {
    const int64_t N = d.N, C = d.C, QD = d.H * d.D, KD = d.Hkv * d.D;
    MOE_PROFILE_SCOPE("attention fwd");
    ops::rmsnorm_forward(c.xn, c.rstd, inp, w.attn_norm, N, C, eps);  // (N, C)
    ops::linear_forward(c.q, c.xn, w.attn_q, N, C, QD);               // (N, H*D)
    ops::linear_forward(c.k, c.xn, w.attn_k, N, C, KD);               // (N, Hkv*D)
    ops::linear_forward(c.v, c.xn, w.attn_v, N, C, KD);               // (N, Hkv*D)
    ops::rope_forward(c.q, rope, d.B, d.T, d.H, d.D);
    ops::rope_forward(c.k, rope, d.B, d.T, d.Hkv, d.D);
    ops::attention_forward(c.y, c.att, c.q, c.k, c.v, d.B, d.T, d.H, d.Hkv, d.D);
    // out = inp + y · W_o^T
    if (out != inp) std::memcpy(out, inp, N * C * sizeof(float));
    kernels::gemm<float>(false, true, N, C, QD, 1.f, c.y, QD, w.attn_output, QD, 1.f, out, C);
}

void attention_backward(float* dresid, LayerWeights& g, AttentionScratch& s, const AttentionCache& c,
                        const float* inp, const LayerWeights& w, const float* rope, const Dims& d) {
    const int64_t N = d.N, C = d.C, QD = d.H * d.D, KD = d.Hkv * d.D;
    MOE_PROFILE_SCOPE("attention bwd");
    std::memset(s.dy, 0, N * QD * sizeof(float));
    std::memset(s.dq, 0, N * QD * sizeof(float));
    std::memset(s.dk, 0, N * KD * sizeof(float));
    std::memset(s.dv, 0, N * KD * sizeof(float));
    std::memset(s.dxn, 0, N * C * sizeof(float));
    // out = inp + y · W_o^T
    ops::linear_backward(s.dy, g.attn_output, dresid, c.y, w.attn_output, N, QD, C);
    ops::attention_backward(s.dq, s.dk, s.dv, s.datt, s.dy, c.q, c.k, c.v, c.att, d.B, d.T, d.H, d.Hkv, d.D);
    ops::rope_backward(s.dq, rope, d.B, d.T, d.H, d.D);
    ops::rope_backward(s.dk, rope, d.B, d.T, d.Hkv, d.D);
    ops::linear_backward(s.dxn, g.attn_q, s.dq, c.xn, w.attn_q, N, C, QD);
    ops::linear_backward(s.dxn, g.attn_k, s.dk, c.xn, w.attn_k, N, C, KD);
    ops::linear_backward(s.dxn, g.attn_v, s.dv, c.xn, w.attn_v, N, C, KD);
    ops::rmsnorm_backward(dresid, g.attn_norm, s.dxn, inp, w.attn_norm, c.rstd, N, C);
}

}  // namespace moe::layers
