#include "layers/attention.h"

#include <algorithm>
#include <cstring>

#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/gemm.h"
#include "kernels/batch_invariant.h"
#include "kernels/qmatmul.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace moe::layers {

// The training passes run in groups of whole sequences (about kGroupRows rows each) as tasks, one
// parallel region for the whole block instead of one per op: every op here is row- or
// sequence-local (RMSNorm, the projections, RoPE, attention within a sequence), so a group's rows
// go through all of them while they are in cache, and each value is computed exactly as by the
// ops over all rows (the same bits: tests/test_determinism.cc). With too few groups to share out (one
// long sequence) the ops run one after another, each over all threads.
static constexpr int64_t kGroupRows = 128;

static int64_t seqs_per_group(const Dims& d) { return std::max<int64_t>(1, kGroupRows / std::max<int64_t>(1, d.T)); }

// fn(b0, nb) for the groups of sequences [b0, b0 + nb), as tasks
static void for_sequence_groups(const Dims& d, function_ref<void(int64_t, int64_t)> fn) {
    const int64_t spg = seqs_per_group(d), groups = (d.B + spg - 1) / spg;
    parallel_tasks(groups, [&](int64_t g) { fn(g * spg, std::min(spg, d.B - g * spg)); });
}

bool attention_grouped(const Dims& d) {
    const int64_t groups = (d.B + seqs_per_group(d) - 1) / seqs_per_group(d);
    return groups >= 2 * (int64_t)num_threads();
}

// The q / k RMSNorm: over the whole projection (N rows of heads * D) or over each head's D (N * heads
// rows of D, one weight of D shared by the heads).
static void qk_norm_forward(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t heads,
                            const Dims& d, double eps) {
    if (d.qk_norm_head) ops::rmsnorm_forward(y, rstd, x, w, N * heads, d.D, eps);
    else ops::rmsnorm_forward(y, rstd, x, w, N, heads * d.D, eps);
}

static void qk_norm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                             int64_t N, int64_t heads, const Dims& d) {
    if (d.qk_norm_head) ops::rmsnorm_backward(dx, dw, dy, x, w, rstd, N * heads, d.D);
    else ops::rmsnorm_backward(dx, dw, dy, x, w, rstd, N, heads * d.D);
}

// Projection biases and per-head q/k norms run op by op (the grouped paths do not have them).
static bool has_extras(const LayerWeights& w, const Dims& d) {
    return w.attn_q_b || w.attn_output_b || (w.attn_q_norm && d.qk_norm_head);
}

static void attention_forward_ops(float* out, AttentionCache& c, const float* inp, const LayerWeights& w,
                                  const float* rope, const Dims& d, double eps) {
    const int64_t N = d.N, C = d.C, QD = d.H * d.D, KD = d.Hkv * d.D;
    ops::rmsnorm_forward(c.xn, c.rstd, inp, w.attn_norm, N, C, eps);  // (N, C)
    if (w.attn_q_norm) {
        // qk_norm: q = rmsnorm(xn · W_q^T) * q_norm over all H*D (likewise k), then RoPE
        ops::linear_forward(c.q_raw, c.xn, w.attn_q, N, C, QD);                      // (N, H*D)
        ops::linear_forward(c.k_raw, c.xn, w.attn_k, N, C, KD);                      // (N, Hkv*D)
        if (w.attn_q_b) {
            ops::bias_forward(c.q_raw, w.attn_q_b, N, QD);
            ops::bias_forward(c.k_raw, w.attn_k_b, N, KD);
        }
        qk_norm_forward(c.q, c.q_rstd, c.q_raw, w.attn_q_norm, N, d.H, d, eps);
        qk_norm_forward(c.k, c.k_rstd, c.k_raw, w.attn_k_norm, N, d.Hkv, d, eps);
    } else {
        ops::linear_forward(c.q, c.xn, w.attn_q, N, C, QD);               // (N, H*D)
        ops::linear_forward(c.k, c.xn, w.attn_k, N, C, KD);               // (N, Hkv*D)
        if (w.attn_q_b) {
            ops::bias_forward(c.q, w.attn_q_b, N, QD);
            ops::bias_forward(c.k, w.attn_k_b, N, KD);
        }
    }
    ops::linear_forward(c.v, c.xn, w.attn_v, N, C, KD);               // (N, Hkv*D)
    if (w.attn_v_b) ops::bias_forward(c.v, w.attn_v_b, N, KD);
    ops::rope_forward(c.q, rope, d.B, d.T, d.H, d.D);
    ops::rope_forward(c.k, rope, d.B, d.T, d.Hkv, d.D);
    ops::attention_forward(c.y, c.att, c.q, c.k, c.v, d.B, d.T, d.H, d.Hkv, d.D);
    // out = inp + y · W_o^T (+ b_o)
    if (out != inp) std::memcpy(out, inp, N * C * sizeof(float));
    kernels::gemm<float>(false, true, N, C, QD, 1.f, c.y, QD, w.attn_output, QD, 1.f, out, C);
    if (w.attn_output_b) ops::bias_forward(out, w.attn_output_b, N, C);
}

// Rows [b0 * T, (b0 + nb) * T) of attention_forward_ops, with the projections' weights packed:
// pw[0..3] = W_q, W_k, W_v, W_o as op(B) = W^T.
static void attention_forward_rows(float* out, AttentionCache& c, const float* inp, const LayerWeights& w,
                                   const float* rope, const Dims& d, double eps, const kernels::PackedB* pw,
                                   int64_t b0, int64_t nb) {
    const int64_t C = d.C, QD = d.H * d.D, KD = d.Hkv * d.D, T = d.T;
    const int64_t r0 = b0 * T, n = nb * T;  // rows
    float* xn = c.xn + r0 * C;
    float* q = c.q + r0 * QD;
    float* k = c.k + r0 * KD;
    float* v = c.v + r0 * KD;
    ops::rmsnorm_forward(xn, c.rstd + r0, inp + r0 * C, w.attn_norm, n, C, eps);  // (n, C)
    if (w.attn_q_norm) {
        kernels::gemm_f32_b(false, n, QD, C, 1.f, xn, C, pw[0], 0.f, c.q_raw + r0 * QD, QD);  // (n, H*D)
        kernels::gemm_f32_b(false, n, KD, C, 1.f, xn, C, pw[1], 0.f, c.k_raw + r0 * KD, KD);  // (n, Hkv*D)
        ops::rmsnorm_forward(q, c.q_rstd + r0, c.q_raw + r0 * QD, w.attn_q_norm, n, QD, eps);
        ops::rmsnorm_forward(k, c.k_rstd + r0, c.k_raw + r0 * KD, w.attn_k_norm, n, KD, eps);
    } else {
        kernels::gemm_f32_b(false, n, QD, C, 1.f, xn, C, pw[0], 0.f, q, QD);  // (n, H*D)
        kernels::gemm_f32_b(false, n, KD, C, 1.f, xn, C, pw[1], 0.f, k, KD);  // (n, Hkv*D)
    }
    kernels::gemm_f32_b(false, n, KD, C, 1.f, xn, C, pw[2], 0.f, v, KD);  // (n, Hkv*D)
    ops::rope_forward(q, rope, nb, T, d.H, d.D);
    ops::rope_forward(k, rope, nb, T, d.Hkv, d.D);
    ops::attention_forward(c.y + r0 * QD, c.att + b0 * d.H * T * T, q, k, v, nb, T, d.H, d.Hkv, d.D);
    // out = inp + y · W_o^T
    if (out != inp) std::memcpy(out + r0 * C, inp + r0 * C, n * C * sizeof(float));
    kernels::gemm_f32_b(false, n, C, QD, 1.f, c.y + r0 * QD, QD, pw[3], 1.f, out + r0 * C, C);  // (n, C)
}

void attention_forward(float* out, AttentionCache& c, const float* inp, const LayerWeights& w,
                       const float* rope, const Dims& d, double eps) {
    MOE_PROFILE_SCOPE("attention fwd");
    if (!attention_grouped(d) || has_extras(w, d)) return attention_forward_ops(out, c, inp, w, rope, d, eps);
    const int64_t C = d.C, QD = d.H * d.D, KD = d.Hkv * d.D;
    thread_local kernels::PackedWeights packed;
    const kernels::PackJob jobs[4] = {{w.attn_q, true, C, QD, C},
                                      {w.attn_k, true, C, KD, C},
                                      {w.attn_v, true, C, KD, C},
                                      {w.attn_output, true, QD, C, QD}};
    packed.pack(jobs, 4);
    const kernels::PackedB* pw = packed.data();
    for_sequence_groups(d, [&](int64_t b0, int64_t nb) { attention_forward_rows(out, c, inp, w, rope, d, eps, pw, b0, nb); });
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
    { MOE_PROFILE_SCOPE("attention fwd (cached): qkv");
    if (kernels::gemv_path(N)) {
        // decode: q, k and v read the same rows of xn; one parallel region over their rows
        kernels::qmatmul_same_x(c.xn, N, {{qp, q.attn_q}, {kp, q.attn_k}, {c.v, q.attn_v}});
    } else {
        kernels::qmatmul(qp, c.xn, q.attn_q, N, false);
        kernels::qmatmul(kp, c.xn, q.attn_k, N, false);
        kernels::qmatmul(c.v, c.xn, q.attn_v, N, false);  // (N, Hkv*D)
    }
    }
    if (w.attn_q_b) {
        ops::bias_forward(qp, w.attn_q_b, N, QD);
        ops::bias_forward(kp, w.attn_k_b, N, KD);
        ops::bias_forward(c.v, w.attn_v_b, N, KD);
    }
    if (w.attn_q_norm) {
        qk_norm_forward(c.q, c.q_rstd, c.q_raw, w.attn_q_norm, N, d.H, d, eps);
        qk_norm_forward(c.k, c.k_rstd, c.k_raw, w.attn_k_norm, N, d.Hkv, d, eps);
    }
    for (int64_t n = 0; n < N; ++n) {
        // rotate at the row's own position (a table of one position), then store k, v
        const float* cs = rope_full + (int64_t)pos[n] * half * 2;
        ops::rope_forward(c.q + n * QD, cs, 1, 1, d.H, d.D);
        ops::rope_forward(c.k + n * KD, cs, 1, 1, d.Hkv, d.D);
        cache.store(layer, seq[n], pos[n], c.k + n * KD, c.v + n * KD);
    }
    { MOE_PROFILE_SCOPE("attention fwd (cached): core");
    ops::attention_cached_forward(c.y, c.att, c.q, cache.k_layer(layer), cache.v_layer(layer), cache.type(), cache.tables(),
                                  cache.max_pages, cache.page, seq, pos, N, cache.n_ctx, d.H, d.Hkv, d.D);
    }
    if (out != inp) std::memcpy(out, inp, N * C * sizeof(float));
    { MOE_PROFILE_SCOPE("attention fwd (cached): out");
    kernels::qmatmul(out, c.y, q.attn_output, N, true); }  // out += y · W_o^T   (N, C)
    if (w.attn_output_b) ops::bias_forward(out, w.attn_output_b, N, C);
}

static void attention_backward_ops(float* dresid, LayerWeights& g, AttentionScratch& s, const AttentionCache& c,
                                   const float* inp, const LayerWeights& w, const float* rope, const Dims& d) {
    const int64_t N = d.N, C = d.C, QD = d.H * d.D, KD = d.Hkv * d.D;
    parallel_zero(s.dy, N * QD * sizeof(float));
    parallel_zero(s.dq, N * QD * sizeof(float));
    parallel_zero(s.dk, N * KD * sizeof(float));
    parallel_zero(s.dv, N * KD * sizeof(float));
    parallel_zero(s.dxn, N * C * sizeof(float));
    // out = inp + y · W_o^T (+ b_o)
    ops::linear_backward(s.dy, g.attn_output, dresid, c.y, w.attn_output, N, QD, C);
    if (g.attn_output_b) ops::bias_backward(g.attn_output_b, dresid, N, C);
    ops::attention_backward(s.dq, s.dk, s.dv, s.datt, s.dy, c.q, c.k, c.v, c.att, d.B, d.T, d.H, d.Hkv, d.D);
    ops::rope_backward(s.dq, rope, d.B, d.T, d.H, d.D);
    ops::rope_backward(s.dk, rope, d.B, d.T, d.Hkv, d.D);
    const float* dq = s.dq;
    const float* dk = s.dk;
    if (w.attn_q_norm) {
        // q = rmsnorm(q_raw) * q_norm  (and k)
        parallel_zero(s.dq_raw, N * QD * sizeof(float));
        parallel_zero(s.dk_raw, N * KD * sizeof(float));
        qk_norm_backward(s.dq_raw, g.attn_q_norm, s.dq, c.q_raw, w.attn_q_norm, c.q_rstd, N, d.H, d);
        qk_norm_backward(s.dk_raw, g.attn_k_norm, s.dk, c.k_raw, w.attn_k_norm, c.k_rstd, N, d.Hkv, d);
        dq = s.dq_raw;
        dk = s.dk_raw;
    }
    if (g.attn_q_b) {
        ops::bias_backward(g.attn_q_b, dq, N, QD);
        ops::bias_backward(g.attn_k_b, dk, N, KD);
        ops::bias_backward(g.attn_v_b, s.dv, N, KD);
    }
    ops::linear_backward(s.dxn, g.attn_q, dq, c.xn, w.attn_q, N, C, QD);
    ops::linear_backward(s.dxn, g.attn_k, dk, c.xn, w.attn_k, N, C, KD);
    ops::linear_backward(s.dxn, g.attn_v, s.dv, c.xn, w.attn_v, N, C, KD);
    ops::rmsnorm_backward(dresid, g.attn_norm, s.dxn, inp, w.attn_norm, c.rstd, N, C);
}

// Rows [b0 * T, (b0 + nb) * T) of attention_backward_ops up to dxn (the row-local part), with the
// projections' weights packed: pw[0..3] = W_o, W_q, W_k, W_v as op(B) = W.
static void attention_backward_rows(AttentionScratch& s, const AttentionCache& c, const float* dresid,
                                    const float* rope, const Dims& d, const kernels::PackedB* pw, int64_t b0,
                                    int64_t nb) {
    const int64_t C = d.C, QD = d.H * d.D, KD = d.Hkv * d.D, T = d.T;
    const int64_t r0 = b0 * T, n = nb * T;  // rows
    float* dy = s.dy + r0 * QD;
    float* dq = s.dq + r0 * QD;
    float* dk = s.dk + r0 * KD;
    float* dv = s.dv + r0 * KD;
    float* dxn = s.dxn + r0 * C;
    // dq, dk, dv are accumulated by the attention backward; dy and dxn are written by their first
    // GEMM (beta 0), so they need no zeroing
    std::memset(dq, 0, n * QD * sizeof(float));
    std::memset(dk, 0, n * KD * sizeof(float));
    std::memset(dv, 0, n * KD * sizeof(float));
    // out = inp + y · W_o^T  =>  dy = dout · W_o
    kernels::gemm_f32_b(false, n, QD, C, 1.f, dresid + r0 * C, C, pw[0], 0.f, dy, QD);  // (n, H*D)
    ops::attention_backward(dq, dk, dv, s.datt + b0 * d.H * T * T, dy, c.q + r0 * QD, c.k + r0 * KD, c.v + r0 * KD,
                            c.att + b0 * d.H * T * T, nb, T, d.H, d.Hkv, d.D);
    ops::rope_backward(dq, rope, nb, T, d.H, d.D);
    ops::rope_backward(dk, rope, nb, T, d.Hkv, d.D);
    // q = xn · W_q^T (k, v likewise)  =>  dxn = dq · W_q + dk · W_k + dv · W_v
    kernels::gemm_f32_b(false, n, C, QD, 1.f, dq, QD, pw[1], 0.f, dxn, C);  // (n, C)
    kernels::gemm_f32_b(false, n, C, KD, 1.f, dk, KD, pw[2], 1.f, dxn, C);
    kernels::gemm_f32_b(false, n, C, KD, 1.f, dv, KD, pw[3], 1.f, dxn, C);
}

void attention_backward(float* dresid, LayerWeights& g, AttentionScratch& s, const AttentionCache& c,
                        const float* inp, const LayerWeights& w, const float* rope, const Dims& d) {
    MOE_PROFILE_SCOPE("attention bwd");
    // qk_norm's norm weights sum their gradients over all rows: that configuration keeps the ops
    if (w.attn_q_norm || has_extras(w, d) || !attention_grouped(d))
        return attention_backward_ops(dresid, g, s, c, inp, w, rope, d);
    const int64_t N = d.N, C = d.C, QD = d.H * d.D, KD = d.Hkv * d.D;
    thread_local kernels::PackedWeights packed;
    const kernels::PackJob jobs[4] = {{w.attn_output, false, C, QD, QD},
                                      {w.attn_q, false, QD, C, C},
                                      {w.attn_k, false, KD, C, C},
                                      {w.attn_v, false, KD, C, C}};
    packed.pack(jobs, 4);
    const kernels::PackedB* pw = packed.data();
    for_sequence_groups(d, [&](int64_t b0, int64_t nb) { attention_backward_rows(s, c, dresid, rope, d, pw, b0, nb); });
    // the weight gradients sum over all rows: one task per matrix
    parallel_tasks(4, [&](int64_t i) {
        switch (i) {
            case 0:  // dW_o += dout^T · y   (C, H*D)
                kernels::gemm<float>(true, false, C, QD, N, 1.f, dresid, C, c.y, QD, 1.f, g.attn_output, QD);
                break;
            case 1:  // dW_q += dq^T · xn    (H*D, C)
                kernels::gemm<float>(true, false, QD, C, N, 1.f, s.dq, QD, c.xn, C, 1.f, g.attn_q, C);
                break;
            case 2:
                kernels::gemm<float>(true, false, KD, C, N, 1.f, s.dk, KD, c.xn, C, 1.f, g.attn_k, C);
                break;
            default:
                kernels::gemm<float>(true, false, KD, C, N, 1.f, s.dv, KD, c.xn, C, 1.f, g.attn_v, C);
        }
    });
    ops::rmsnorm_backward(dresid, g.attn_norm, s.dxn, inp, w.attn_norm, c.rstd, N, C);
}

}  // namespace moe::layers
