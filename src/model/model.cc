#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "core/rng.h"
#include "ops/balance_loss.h"
#include "ops/embedding.h"
#include "ops/routing_stats.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/softmax_xent.h"

namespace moe {

void Model::zero_grad() {
    ensure_grads();
    parallel_zero(grads_.data(), grads_.size());
}

void Model::ensure_grads() {
    if (grads_.size() != 0) return;
    grads_.allocate(table_.total() * sizeof(float));
    g_ = bind_weights(table_, cfg_, reinterpret_cast<float*>(grads_.data()));
}

Model::Model(const ModelConfig& cfg) : cfg_(cfg), table_(cfg) {
    params_.allocate(table_.total() * sizeof(float));
    w_ = bind_weights(table_, cfg_, params());
    matmul_params_ = count_flops(cfg_, 1).matmul_params;
}

void Model::set_experts_per_token(int64_t K) {
    if (!cfg_.any_moe()) fail("--experts-per-token: the model has no MoE layers");
    if (K < 1 || K > cfg_.n_expert)
        fail("--experts-per-token must be in [1, n_expert = ", cfg_.n_expert, "], got ", K);
    cfg_.n_expert_used = K;
    matmul_params_ = count_flops(cfg_, 1).matmul_params;  // active weights per token follow K
    cap_B_ = cap_T_ = 0;  // activation buffers are sized by K: lay them out again
}

void Model::init(uint64_t seed) {
    const double std0 = 0.02, std_proj = 0.02 / std::sqrt(2.0 * (double)cfg_.n_layer);
    for (size_t i = 0; i < table_.params().size(); ++i) {
        const ParamInfo& p = table_.params()[i];
        float* x = params() + p.offset;
        if (!p.trainable || p.name.find("_noise") != std::string::npos) {
            // balancing bias starts neutral; W_noise starts at 0 (Shazeer et al.: softplus(0) noise)
            std::fill(x, x + p.numel, 0.f);
            continue;
        }
        if (p.shape.size() == 1) {  // norms
            std::fill(x, x + p.numel, 1.f);
            continue;
        }
        const bool proj = p.name.find("attn_output") != std::string::npos ||
                          p.name.find("ffn_down") != std::string::npos;
        const double sd = proj ? std_proj : std0;
        uint64_t key = 1469598103934665603ull;  // FNV-1a of the name: one stream per tensor, so
        for (char ch : p.name) key = (key ^ (unsigned char)ch) * 1099511628211ull;  // adding a
        Rng rng(seed, key);  // tensor (e.g. W_noise) does not change the others' initial values
        for (int64_t j = 0; j < p.numel; ++j) x[j] = (float)(rng.normal() * sd);
    }
}

void Model::ensure_activations(int64_t B, int64_t T) {
    B_ = B;
    T_ = T;
    // buffers laid out for the capacity serve any smaller (B, T) with tighter strides
    if (B <= cap_B_ && T <= cap_T_) return;
    cap_B_ = std::max(B, cap_B_);
    cap_T_ = std::max(T, cap_T_);
    const int64_t N = cap_B_ * cap_T_, Tc = cap_T_, Bc = cap_B_;
    const int64_t C = cfg_.n_embd, V = cfg_.vocab_size, H = cfg_.n_head, Hkv = cfg_.n_head_kv;
    const int64_t D = cfg_.head_dim(), L = cfg_.n_layer;
    const int64_t E = std::max<int64_t>(cfg_.n_expert, 1), K = std::max<int64_t>(cfg_.n_expert_used, 1);
    const int64_t Fe = cfg_.n_ff_exp, Fd = cfg_.n_ff;
    // rows per layer buffer: MoE R <= N*K rows of width Fe; dense N rows of width Fd
    const int64_t Fs = cfg_.n_ff_shexp;
    const int64_t rowsF = std::max({N * K * Fe, N * Fd, N * Fs});
    const int64_t rowsC = std::max(N * K, N) * C;

    rope_.resize(Tc * D);
    ops::rope_table(rope_.data(), Tc, D, cfg_.rope_theta);

    auto plan_acts = [&](auto&& take_f, auto&& take_i, auto&& take_i64) {
        resid_.assign(L + 1, nullptr);
        resid_mid_.assign(L, nullptr);
        attn_.assign(L, {});
        ffn_.assign(L, {});
        for (int64_t l = 0; l <= L; ++l) resid_[l] = take_f(N * C);
        for (int64_t l = 0; l < L; ++l) {
            resid_mid_[l] = take_f(N * C);
            auto& a = attn_[l];
            a.xn = take_f(N * C);
            a.rstd = take_f(N);
            a.q = take_f(N * H * D);
            a.k = take_f(N * Hkv * D);
            a.v = take_f(N * Hkv * D);
            a.att = take_f(Bc * H * Tc * Tc);
            a.y = take_f(N * H * D);
            if (cfg_.qk_norm) {
                a.q_raw = take_f(N * H * D);
                a.k_raw = take_f(N * Hkv * D);
                a.q_rstd = take_f(N);
                a.k_rstd = take_f(N);
            }
            auto& f = ffn_[l];
            f.xn = take_f(N * C);
            f.rstd = take_f(N);
            const bool moe = cfg_.layer_moe[l];
            if (moe) {
                f.logits = take_f(N * E);
                f.noise_logits = take_f(N * E);
                f.eps = take_f(N * E);
                f.scores = take_f(N * E);
                f.sel = take_f(N * E);
                f.probs = take_f(N * E);
                f.lse = take_f(N);
                f.expert_load = take_i64(E);
                f.route.topk_expert = take_i(N * K);
                f.route.topk_weight = take_f(N * K);
                f.route.expert_offsets = take_i(E + 1);
                f.route.row_token = take_i(N * K);
                f.route.row_slot = take_i(N * K);
                f.route.token_row = take_i(N * K);
                f.route.R_max = N * K;  // one process routes at most its own N*K slots
                f.xe = take_f(N * K * C);
                f.hg = take_f(N * K * Fe);
                f.hu = take_f(N * K * Fe);
                f.act = take_f(N * K * Fe);
                f.ye = take_f(N * K * C);
                if (Fs > 0) {
                    f.sh_hg = take_f(N * Fs);
                    f.sh_hu = take_f(N * Fs);
                    f.sh_act = take_f(N * Fs);
                    f.sh_y = take_f(N * C);
                    if (cfg_.shexp_gate) {
                        f.sh_z = take_f(N);
                        f.sh_s = take_f(N);
                    }
                }
            } else {
                f.hg = take_f(N * Fd);
                f.hu = take_f(N * Fd);
                f.act = take_f(N * Fd);
            }
        }
        xf_ = take_f(N * C);
        xf_rstd_ = take_f(N);
        logits_ = take_f(N * V);
        probs_ = take_f(N * V);
        losses_ = take_f(N);
    };
    ArenaPlan plan;
    plan_acts([&](size_t n) { plan.add<float>(n); return (float*)nullptr; },
              [&](size_t n) { plan.add<int32_t>(n); return (int32_t*)nullptr; },
              [&](size_t n) { plan.add<int64_t>(n); return (int64_t*)nullptr; });
    acts_.allocate(plan.bytes);
    plan_acts([&](size_t n) { return acts_.take<float>(n); },
              [&](size_t n) { return acts_.take<int32_t>(n); },
              [&](size_t n) { return acts_.take<int64_t>(n); });

    auto plan_scratch = [&](auto&& take_f) {
        dresid_ = take_f(N * C);
        dlogits_ = take_f(N * V);
        dxf_ = take_f(N * C);
        attn_s_.dxn = take_f(N * C);
        attn_s_.dq = take_f(N * H * D);
        attn_s_.dk = take_f(N * Hkv * D);
        attn_s_.dv = take_f(N * Hkv * D);
        attn_s_.datt = take_f(Bc * H * Tc * Tc);
        attn_s_.dy = take_f(N * H * D);
        if (cfg_.qk_norm) {
            attn_s_.dq_raw = take_f(N * H * D);
            attn_s_.dk_raw = take_f(N * Hkv * D);
        }
        ffn_s_.dxn = take_f(N * C);
        ffn_s_.dlogits = take_f(N * E);
        ffn_s_.dscores = take_f(N * E);
        ffn_s_.dnoise = take_f(N * E);
        ffn_s_.dweight = take_f(N * K);
        ffn_s_.dxe = take_f(rowsC);
        ffn_s_.dye = take_f(rowsC);
        ffn_s_.dact = take_f(rowsF);
        ffn_s_.dhg = take_f(rowsF);
        ffn_s_.dhu = take_f(rowsF);
        if (cfg_.shexp_gate) {
            ffn_s_.dsh_y = take_f(N * C);
            ffn_s_.dsh_z = take_f(N);
        }
    };
    ArenaPlan splan;
    plan_scratch([&](size_t n) { splan.add<float>(n); return (float*)nullptr; });
    scratch_.allocate(splan.bytes);
    plan_scratch([&](size_t n) { return scratch_.take<float>(n); });
}

float Model::forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T) {
    // B and T come from configs, CLI arguments and texts: errors naming them, not asserts
    if (B < 1 || T < 1) fail("forward: batch ", B, " x ", T, " tokens: both must be >= 1");
    if (T > cfg_.n_ctx) fail("forward: a sequence of ", T, " tokens exceeds the model's context (n_ctx = ", cfg_.n_ctx, ")");
    ensure_activations(B, T);
    tokens_ = tokens;
    targets_ = targets;
    const int64_t N = B * T, C = cfg_.n_embd, V = cfg_.vocab_size;
    layers::Dims d{B, T, N, C, cfg_.n_head, cfg_.n_head_kv, cfg_.head_dim()};
    // rope table was built for cap_T_ rows with stride D/2*2 per position: position t is row t
    {
        MOE_PROFILE_SCOPE("embedding fwd");
        ops::embedding_forward(resid_[0], tokens, w_.tok_embd, N, C);  // (N, C)
    }
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        layers::attention_forward(resid_mid_[l], attn_[l], resid_[l], w_.layers[l], rope_.data(), d,
                                  cfg_.norm_eps);
        layers::RouteContext ctx = mode_;
        ctx.layer = l;
        layers::ffn_forward(resid_[l + 1], ffn_[l], resid_mid_[l], w_.layers[l], cfg_,
                            cfg_.layer_moe[l], N, ctx);
        if (mode_.train && cfg_.layer_moe[l] && cfg_.router.bias_balance) {
            if (step_load_.empty()) step_load_.assign(cfg_.n_layer, std::vector<int64_t>(cfg_.n_expert, 0));
            for (int64_t e = 0; e < cfg_.n_expert; ++e) step_load_[l][e] += ffn_[l].expert_load[e];
        }
    }
    MOE_PROFILE_SCOPE("head+loss fwd");
    ops::rmsnorm_forward(xf_, xf_rstd_, resid_[cfg_.n_layer], w_.output_norm, N, C, cfg_.norm_eps);
    ops::linear_forward(logits_, xf_, w_.output, N, C, V);  // (N, V)
    have_targets_ = targets != nullptr;
    if (!targets) return 0.f;
    ops::softmax_xent_forward(probs_, losses_, logits_, targets, N, V);
    double sum = 0;
    for (int64_t n = 0; n < N; ++n) sum += losses_[n];
    return (float)(sum / (double)N);
}

layers::KvCache Model::make_cache(int64_t slots) const {
    if (slots < 1) fail("KV cache: need at least one sequence slot, got ", slots);
    return layers::KvCache(cfg_.n_layer, slots, cfg_.n_ctx, cfg_.n_head_kv * cfg_.head_dim());
}

void Model::set_weight_type(kernels::WType t) {
    const int64_t C = cfg_.n_embd, QD = cfg_.n_head * cfg_.head_dim(), KD = cfg_.n_head_kv * cfg_.head_dim();
    wtype_ = t;
    qstores_.resize(cfg_.n_layer);
    qviews_.resize(cfg_.n_layer);
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        const LayerWeights& w = w_.layers[l];
        LayerStores& st = qstores_[l];
        st.attn_q.build(t, w.attn_q, QD, C);
        st.attn_k.build(t, w.attn_k, KD, C);
        st.attn_v.build(t, w.attn_v, KD, C);
        st.attn_output.build(t, w.attn_output, C, QD);
        const bool moe = cfg_.layer_moe[l];
        const int64_t E = moe ? cfg_.n_expert : 1, F = moe ? cfg_.n_ff_exp : cfg_.n_ff;
        layers::QLayer& v = qviews_[l];
        v.attn_q = st.attn_q.view(), v.attn_k = st.attn_k.view(), v.attn_v = st.attn_v.view();
        v.attn_output = st.attn_output.view();
        v.ffn = moe ? st.ffn.build(t, w.ffn_gate_exps, w.ffn_up_exps, w.ffn_down_exps, E * F, C, E * C, F)
                    : st.ffn.build(t, w.ffn_gate, w.ffn_up, w.ffn_down, F, C, C, F);
        const int64_t Fs = cfg_.n_ff_shexp;
        if (moe && Fs > 0)
            v.shexp = st.shexp.build(t, w.ffn_gate_shexp, w.ffn_up_shexp, w.ffn_down_shexp, Fs, C, C, Fs);
    }
    q_output_.build(t, w_.output, cfg_.vocab_size, C);
}

layers::QFfn Model::FfnStores::build(kernels::WType t, const float* g, const float* u, const float* d,
                                     int64_t rows, int64_t C, int64_t rows_down, int64_t F) {
    if (g) gate.build(t, g, rows, C);
    up.build(t, u, rows, C);
    down.build(t, d, rows_down, F);
    return {g ? gate.view() : kernels::QMatrix{}, up.view(), down.view()};
}

double Model::weight_bytes_per_token() const {
    return count_weight_bytes(cfg_, wtype_).active;
}

void Model::forward_cached(const int32_t* tokens, const int32_t* seq, const int32_t* pos, int64_t N,
                           layers::KvCache& cache, bool last_only) {
    const int64_t C = cfg_.n_embd, V = cfg_.vocab_size, H = cfg_.n_head, D = cfg_.head_dim();
    if (cache.L != cfg_.n_layer || cache.n_ctx != cfg_.n_ctx || cache.KD != cfg_.n_head_kv * D)
        fail("KV cache of (L ", cache.L, ", n_ctx ", cache.n_ctx, ", KD ", cache.KD, ") does not fit this model (L ",
             cfg_.n_layer, ", n_ctx ", cfg_.n_ctx, ", KD ", cfg_.n_head_kv * D, ")");
    next_pos_.assign(cache.len.begin(), cache.len.end());  // capacity kept: no allocation once warm
    for (int64_t n = 0; n < N; ++n) {
        if (tokens[n] < 0 || tokens[n] >= V) fail("token id ", tokens[n], " at row ", n, " is outside the vocabulary [0, ", V, ")");
        if (seq[n] < 0 || seq[n] >= cache.S) fail("sequence slot ", seq[n], " outside [0, ", cache.S, ")");
        if (pos[n] < 0 || pos[n] >= cfg_.n_ctx)
            fail("position ", pos[n], " of sequence ", seq[n], " is beyond the context (n_ctx = ", cfg_.n_ctx, ")");
        // a row may rewrite the sequence from an earlier position (the rest is dropped), not skip ahead
        if (pos[n] > next_pos_[seq[n]])
            fail("position ", pos[n], " of sequence ", seq[n], " skips ahead of its cache (", next_pos_[seq[n]], " filled)");
        next_pos_[seq[n]] = pos[n] + 1;
    }
    ensure_activations(1, N);
    if ((int64_t)qviews_.size() != cfg_.n_layer) set_weight_type(wtype_);  // fp32 views
    if ((int64_t)rope_full_.size() != cfg_.n_ctx * D) {
        rope_full_.resize(cfg_.n_ctx * D);
        ops::rope_table(rope_full_.data(), cfg_.n_ctx, D, cfg_.rope_theta);
    }
    if ((int64_t)infer_scores_.size() < N * H * cfg_.n_ctx) infer_scores_.resize(N * H * cfg_.n_ctx);
    have_targets_ = false;
    // a call of less than kSerialFlops (about a millisecond of one core) runs on this thread
    // alone: small-model decode and short prefills never fork, so a busy core cannot stall them
    const SerialScope serial(2.0 * matmul_params_ * (double)N < kSerialFlops);
    layers::Dims d{1, N, N, C, cfg_.n_head, cfg_.n_head_kv, D};
    ops::embedding_forward(resid_[0], tokens, w_.tok_embd, N, C);  // (N, C)
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        layers::AttentionCache ac = attn_[l];
        ac.att = infer_scores_.data();
        layers::attention_forward_cached(resid_mid_[l], ac, resid_[l], w_.layers[l], rope_full_.data(), d,
                                         cfg_.norm_eps, cache, l, seq, pos, qviews_[l]);
        layers::RouteContext ctx;  // evaluation routing: no noise, eval capacity
        ctx.layer = l;
        layers::ffn_forward(resid_[l + 1], ffn_[l], resid_mid_[l], w_.layers[l], cfg_, cfg_.layer_moe[l], N, ctx,
                            &qviews_[l]);
    }
    for (int64_t n = 0; n < N; ++n) cache.len[seq[n]] = pos[n] + 1;  // rows come in position order
    MOE_PROFILE_SCOPE("head fwd (cached)");
    const float* xl = resid_[cfg_.n_layer];
    if (!last_only) {
        ops::rmsnorm_forward(xf_, xf_rstd_, xl, w_.output_norm, N, C, cfg_.norm_eps);
        kernels::qmatmul(logits_, xf_, q_output_.view(), N, false);  // (N, V)
        return;
    }
    // only the last row of each sequence: the head is V x C per row, most of a small model's decode
    head_rows_.clear();
    for (int64_t n = 0; n < N; ++n) {
        bool last = true;
        for (int64_t m = n + 1; m < N && last; ++m) last = seq[m] != seq[n];
        if (last) head_rows_.push_back((int32_t)n);
    }
    for (int32_t n : head_rows_) {
        ops::rmsnorm_forward(xf_ + n * C, xf_rstd_ + n, xl + n * C, w_.output_norm, 1, C, cfg_.norm_eps);
        kernels::qmatmul(logits_ + n * V, xf_ + n * C, q_output_.view(), 1, false);
    }
}

void Model::backward(float scale) {
    MOE_ASSERT(have_targets_);
    ensure_grads();
    const int64_t B = B_, T = T_, N = B * T, C = cfg_.n_embd, V = cfg_.vocab_size;
    layers::Dims d{B, T, N, C, cfg_.n_head, cfg_.n_head_kv, cfg_.head_dim()};
    {
        MOE_PROFILE_SCOPE("head+loss bwd");
        parallel_zero(dlogits_, N * V * sizeof(float));
        parallel_zero(dxf_, N * C * sizeof(float));
        parallel_zero(dresid_, N * C * sizeof(float));
        // loss = (1/N) sum_n losses[n]
        ops::softmax_xent_backward(dlogits_, probs_, targets_, scale / (float)N, N, V);
        ops::linear_backward(dxf_, g_.output, dlogits_, xf_, w_.output, N, C, V);
        ops::rmsnorm_backward(dresid_, g_.output_norm, dxf_, resid_[cfg_.n_layer], w_.output_norm,
                              xf_rstd_, N, C);
    }
    for (int64_t l = cfg_.n_layer - 1; l >= 0; --l) {
        layers::ffn_backward(dresid_, g_.layers[l], ffn_s_, ffn_[l], resid_mid_[l], w_.layers[l],
                             cfg_, cfg_.layer_moe[l], N, scale, expert_sink_);
        layers::attention_backward(dresid_, g_.layers[l], attn_s_, attn_[l], resid_[l], w_.layers[l],
                                   rope_.data(), d);
    }
    MOE_PROFILE_SCOPE("embedding bwd");
    ops::embedding_backward(g_.tok_embd, dresid_, tokens_, N, C);
}

double Model::aux_balance_loss() const {
    double s = 0;
    for (int64_t l = 0; l < (int64_t)ffn_.size(); ++l)
        if (cfg_.layer_moe[l]) s += ffn_[l].balance_loss;
    return s;
}

double Model::aux_z_loss() const {
    double s = 0;
    for (int64_t l = 0; l < (int64_t)ffn_.size(); ++l)
        if (cfg_.layer_moe[l]) s += ffn_[l].z_loss;
    return s;
}

void Model::update_balance_bias() {
    if (!cfg_.router.bias_balance || step_load_.empty()) return;
    for (int64_t l = 0; l < cfg_.n_layer; ++l)
        if (cfg_.layer_moe[l]) {
            ops::balance_bias_update(w_.layers[l].ffn_gate_bias, step_load_[l].data(), cfg_.n_expert,
                                     cfg_.router.bias_rate);
            std::fill(step_load_[l].begin(), step_load_[l].end(), 0);
        }
}

std::vector<Model::LayerRouting> Model::routing() const {
    std::vector<LayerRouting> out(cfg_.n_layer);
    const int64_t N = B_ * T_, E = cfg_.n_expert, K = cfg_.n_expert_used;
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        if (!cfg_.layer_moe[l] || ffn_.empty() || !ffn_[l].expert_load) continue;
        const layers::FfnCache& f = ffn_[l];
        LayerRouting& r = out[l];
        r.load.assign(f.expert_load, f.expert_load + E);
        r.rerouted = f.stats.rerouted;
        r.dropped = f.stats.dropped;
        r.slots = N * K;
        r.tokens = N;
        r.entropy_sum = ops::router_entropy(f.probs, N, E) * (double)N;
    }
    return out;
}

std::vector<std::vector<int64_t>> Model::expert_load() const {
    std::vector<std::vector<int64_t>> out(cfg_.n_layer);
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        if (!cfg_.layer_moe[l] || ffn_.empty() || !ffn_[l].route.expert_offsets) continue;
        const int32_t* off = ffn_[l].route.expert_offsets;  // (E+1)
        out[l].resize(cfg_.n_expert);
        for (int64_t e = 0; e < cfg_.n_expert; ++e) out[l][e] = off[e + 1] - off[e];
    }
    return out;
}

}  // namespace moe
