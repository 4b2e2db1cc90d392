#include "layers/attention.h"

#include <algorithm>
#include <cstring>

#include "core/profile.h"
#include "kernels/gemm.h"
#include "kernels/qmatmul.h"
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
    if (w.attn_q_norm) {
        // qk_norm: q = rmsnorm(xn · W_q^T) * q_norm over all H*D (likewise k), then RoPE
        ops::linear_forward(c.q_raw, c.xn, w.attn_q, N, C, QD);                      // (N, H*D)
        ops::linear_forward(c.k_raw, c.xn, w.attn_k, N, C, KD);                      // (N, Hkv*D)
        ops::rmsnorm_forward(c.q, c.q_rstd, c.q_raw, w.attn_q_norm, N, QD, eps);
        ops::rmsnorm_forward(c.k, c.k_rstd, c.k_raw, w.attn_k_norm, N, KD, eps);
    } else {
        ops::linear_forward(c.q, c.xn, w.attn_q, N, C, QD);               // (N, H*D)
        ops::linear_forward(c.k, c.xn, w.attn_k, N, C, KD);               // (N, Hkv*D)
    }
    ops::linear_forward(c.v, c.xn, w.attn_v, N, C, KD);               // (N, Hkv*D)
    ops::rope_forward(c.q, rope, d.B, d.T, d.H, d.D);
    ops::rope_forward(c.k, rope, d.B, d.T, d.Hkv, d.D);
    ops::attention_forward(c.y, c.att, c.q, c.k, c.v, d.B, d.T, d.H, d.Hkv, d.D);
    // out = inp + y · W_o^T
    if (out != inp) std::memcpy(out, inp, N * C * sizeof(float));
    kernels::gemm<float>(false, true, N, C, QD, 1.f, c.y, QD, w.attn_output, QD, 1.f, out, C);
}

void attention_forward_cached(float* out, AttentionCache& c, const float* inp, const LayerWeights& w,
                              const float* rope_full, const Dims& d, double eps, KvCache& cache,
                              int64_t layer, const int32_t* seq, const int32_t* pos, const QLayer& q) {
    const int64_t N = d.N, C = d.C, QD = d.H * d.D, KD = d.Hkv * d.D, half = d.D / 2;
    MOE_PROFILE_SCOPE("attention fwd (cached)");
    ops::rmsnorm_forward(c.xn, c.rstd, inp, w.attn_norm, N, C, eps);  // (N, C)
    // projections; with qk_norm they land in q_raw / k_raw and are normed into q / k below
    float* qp = w.attn_q_norm ? c.q_raw : c.q;  // (N, H*D)
    float* kp = w.attn_q_norm ? c.k_raw : c.k;  // (N, Hkv*D)
    if (N <= kernels::kGemvMaxN) {
        // decode: q, k and v read the same rows of xn; one parallel region over their rows
        kernels::qmatmul_same_x(c.xn, N, {{qp, q.attn_q}, {kp, q.attn_k}, {c.v, q.attn_v}});
    } else {
        kernels::qmatmul(qp, c.xn, q.attn_q, N, false);
        kernels::qmatmul(kp, c.xn, q.attn_k, N, false);
        kernels::qmatmul(c.v, c.xn, q.attn_v, N, false);  // (N, Hkv*D)
    }
    if (w.attn_q_norm) {
        ops::rmsnorm_forward(c.q, c.q_rstd, c.q_raw, w.attn_q_norm, N, QD, eps);
        ops::rmsnorm_forward(c.k, c.k_rstd, c.k_raw, w.attn_k_norm, N, KD, eps);
    }
    for (int64_t n = 0; n < N; ++n) {
        // rotate at the row's own position (a table of one position), then store k, v
        const float* cs = rope_full + (int64_t)pos[n] * half * 2;
        ops::rope_forward(c.q + n * QD, cs, 1, 1, d.H, d.D);
        ops::rope_forward(c.k + n * KD, cs, 1, 1, d.Hkv, d.D);
        std::memcpy(cache.k_at(layer, seq[n], pos[n]), c.k + n * KD, KD * sizeof(float));
        std::memcpy(cache.v_at(layer, seq[n], pos[n]), c.v + n * KD, KD * sizeof(float));
    }
    ops::attention_cached_forward(c.y, c.att, c.q, cache.k_at(layer, 0, 0), cache.v_at(layer, 0, 0), seq, pos,
                                  N, cache.n_ctx, d.H, d.Hkv, d.D);
    if (out != inp) std::memcpy(out, inp, N * C * sizeof(float));
    kernels::qmatmul(out, c.y, q.attn_output, N, true);  // out += y · W_o^T   (N, C)
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
    const float* dq = s.dq;
    const float* dk = s.dk;
    if (w.attn_q_norm) {
        // q = rmsnorm(q_raw) * q_norm  (and k)
        std::memset(s.dq_raw, 0, N * QD * sizeof(float));
        std::memset(s.dk_raw, 0, N * KD * sizeof(float));
        ops::rmsnorm_backward(s.dq_raw, g.attn_q_norm, s.dq, c.q_raw, w.attn_q_norm, c.q_rstd, N, QD);
        ops::rmsnorm_backward(s.dk_raw, g.attn_k_norm, s.dk, c.k_raw, w.attn_k_norm, c.k_rstd, N, KD);
        dq = s.dq_raw;
        dk = s.dk_raw;
    }
    ops::linear_backward(s.dxn, g.attn_q, dq, c.xn, w.attn_q, N, C, QD);
    ops::linear_backward(s.dxn, g.attn_k, dk, c.xn, w.attn_k, N, C, KD);
    ops::linear_backward(s.dxn, g.attn_v, s.dv, c.xn, w.attn_v, N, C, KD);
    ops::rmsnorm_backward(dresid, g.attn_norm, s.dxn, inp, w.attn_norm, c.rstd, N, C);
}

}  // namespace moe::layers
