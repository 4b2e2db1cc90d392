#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/memory.h"
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

struct TrainingState {
    Arena grads, acts, scratch;
    Weights g;  // views of grads
    int64_t B = 0, T = 0, cap_B = 0, cap_T = 0;
    bool have_targets = false;
    std::vector<float> rope;  // (T, D/2, 2)
    const int32_t* tokens = nullptr;
    const int32_t* targets = nullptr;
    // activations
    std::vector<float*> resid;      // (L+1) x (N, C) residual stream, resid[0] = embeddings
    std::vector<float*> resid_mid;  // (L) x (N, C) after attention
    std::vector<layers::AttentionCache> attn;
    std::vector<layers::FfnCache> ffn;
    float* xf = nullptr;       // (N, C) final normed
    float* xf_rstd = nullptr;  // (N)
    float* logits = nullptr;   // (N, V)
    float* probs = nullptr;    // (N, V)
    float* losses = nullptr;   // (N)
    // backward scratch (shared by all layers)
    float* dresid = nullptr;   // (N, C)
    float* dlogits = nullptr;  // (N, V)
    float* dxf = nullptr;      // (N, C)
    layers::AttentionScratch attn_s;
    layers::FfnScratch ffn_s;
};

struct InferencePlan {
    int64_t cap_N = 0;
    Arena buf;
    float* resid[2] = {nullptr, nullptr};  // (N, C) ping-pong: a layer reads one, writes the other
    layers::AttentionCache attn;           // one layer's buffers, reused by every layer
    layers::FfnCache ffn;
    float* scores = nullptr;   // (N, H, n_ctx) each row's attention scores over its context
    float* xf = nullptr;       // (N, C)
    float* xf_rstd = nullptr;  // (N)
    float* logits = nullptr;   // (N, V)
    std::vector<float> rope_full;     // (n_ctx, D/2, 2)
    std::vector<int32_t> head_rows;   // rows whose logits are computed
    std::vector<int64_t> next_pos;    // (S) next position per sequence while checking a call
};

namespace {

// One layer's attention buffers for N rows; att_elems: the probabilities (training: (B, H, T, T)).
template <class TakeF>
void plan_attention(layers::AttentionCache& a, const ModelConfig& cfg, int64_t N, int64_t att_elems, TakeF&& take_f) {
    const int64_t C = cfg.n_embd, H = cfg.n_head, Hkv = cfg.n_head_kv, D = cfg.head_dim();
    a.xn = take_f(N * C);
    a.rstd = take_f(N);
    a.q = take_f(N * H * D);
    a.k = take_f(N * Hkv * D);
    a.v = take_f(N * Hkv * D);
    a.att = att_elems > 0 ? take_f(att_elems) : nullptr;
    a.y = take_f(N * H * D);
    if (cfg.qk_norm) {
        a.q_raw = take_f(N * H * D);
        a.k_raw = take_f(N * Hkv * D);
        a.q_rstd = take_f(cfg.qk_norm_head ? N * H : N);
        a.k_rstd = take_f(cfg.qk_norm_head ? N * Hkv : N);
    }
}

// One layer's FFN buffers for N rows: an MoE layer's routing record and routed rows (R_max = N*K)
// and shared expert, or a dense layer's (N, Fd) activations. `dense_too` (inference, one set of
// buffers for every layer) sizes hg/hu/act for both.
template <class TakeF, class TakeI, class TakeI64>
void plan_ffn(layers::FfnCache& f, const ModelConfig& cfg, bool moe, bool dense_too, int64_t N, TakeF&& take_f,
              TakeI&& take_i, TakeI64&& take_i64) {
    const int64_t C = cfg.n_embd, E = std::max<int64_t>(cfg.n_expert, 1), K = std::max<int64_t>(cfg.n_expert_used, 1);
    const int64_t Fe = cfg.n_ff_exp, Fd = cfg.n_ff, Fs = cfg.n_ff_shexp;
    f.xn = take_f(N * C);
    f.rstd = take_f(N);
    if (moe) {
        const int64_t rowsF = dense_too ? std::max(N * K * Fe, N * Fd) : N * K * Fe;
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
        f.hg = take_f(rowsF);
        f.hu = take_f(rowsF);
        f.act = take_f(rowsF);
        f.ye = take_f(N * K * C);
        if (Fs > 0) {
            f.sh_hg = take_f(N * Fs);
            f.sh_hu = take_f(N * Fs);
            f.sh_act = take_f(N * Fs);
            f.sh_y = take_f(N * C);
            if (cfg.shexp_gate) {
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

// Runs `plan` twice over an arena: once to size it, once to take the buffers.
template <class Plan>
void lay_out(Arena& arena, Plan&& plan) {
    ArenaPlan sizes;
    plan([&](size_t n) { sizes.add<float>(n); return (float*)nullptr; },
         [&](size_t n) { sizes.add<int32_t>(n); return (int32_t*)nullptr; },
         [&](size_t n) { sizes.add<int64_t>(n); return (int64_t*)nullptr; });
    arena.allocate(sizes.bytes);
    plan([&](size_t n) { return arena.take<float>(n); }, [&](size_t n) { return arena.take<int32_t>(n); },
         [&](size_t n) { return arena.take<int64_t>(n); });
}

// range, checked against the model: moe::error naming the values
ExpertRange checked_range(const ModelConfig& m, ExpertRange r) {
    if (r.all()) return r;
    if (!m.any_moe() || m.n_expert < 1) fail("expert parallelism needs an MoE model, and this one has no MoE layer");
    if (r.first < 0 || r.count < 1 || r.first + r.count > m.n_expert)
        fail("expert range [", r.first, ", ", r.first + r.count, ") is not inside the model's ", m.n_expert, " experts");
    return r;
}

}  // namespace

Model::~Model() = default;

float* Model::params() {
    MOE_ASSERT(!typed_);  // callers hold fp32 models (training, checkpoints of fp32 weights)
    return reinterpret_cast<float*>(params_.data());
}

std::pair<int64_t, int64_t> Model::source_rows(const ParamInfo& p) const {
    const int64_t in = p.shape.back(), rows = p.numel / in;
    if (!p.expert || !experts_sharded()) return {0, rows};
    const int64_t per = rows / experts_.count;  // an expert's rows of the (El * rows_e, IN) stack
    return {experts_.first * per, rows};
}

double Model::expert_bytes_held() const {
    double b = 0;
    const auto& ps = table_.params();
    for (size_t i = 0; i < ps.size(); ++i) {
        if (!ps[i].expert) continue;
        if (views_[i].out != 0) b += views_[i].bytes();
        else if (f32_off_[i] >= 0) b += 4.0 * (double)ps[i].numel;
    }
    return b;
}

const layers::QFfn& Model::cached_expert_views(int64_t l) {
    MOE_ASSERT(l >= 0 && l < cfg_.n_layer && cfg_.layer_moe[l]);
    if ((int64_t)qviews_.size() != cfg_.n_layer) build_views();
    return qviews_[l].ffn;
}

float* Model::param_f32(const ParamInfo& p) {
    const int64_t i = &p - table_.params().data();
    MOE_ASSERT(i >= 0 && i < (int64_t)f32_off_.size());
    return f32_off_[i] < 0 ? nullptr : reinterpret_cast<float*>(params_.data()) + f32_off_[i];
}

kernels::QStore& Model::param_store(const ParamInfo& p) {
    const int64_t i = &p - table_.params().data();
    MOE_ASSERT(typed_ && i >= 0 && i < (int64_t)stores_.size() && f32_off_[i] < 0);
    kernels::QStore& st = stores_[i];
    if (st.out == 0) {
        const int64_t in = p.shape.back();
        st.allocate(wtype_, p.numel / in, in);
        views_[i] = st.view();
        qviews_.clear();  // rebuilt on the next forward_cached
    }
    return st;
}

void Model::set_param_view(const ParamInfo& p, const kernels::QMatrix& m, std::shared_ptr<const void> keep) {
    const int64_t i = &p - table_.params().data();
    MOE_ASSERT(typed_ && i >= 0 && i < (int64_t)views_.size() && f32_off_[i] < 0 && m.type == wtype_);
    stores_[i] = {};
    views_[i] = m;
    if (keep) keep_.push_back(std::move(keep));
    qviews_.clear();
}

void Model::set_param_expert_views(const ParamInfo& p, std::vector<kernels::QMatrix> parts,
                                   std::shared_ptr<const void> keep) {
    const int64_t i = &p - table_.params().data();
    MOE_ASSERT(typed_ && i >= 0 && i < (int64_t)views_.size() && f32_off_[i] < 0 && !parts.empty());
    const int64_t rows = parts[0].out, in = p.shape.back();
    for (const kernels::QMatrix& m : parts) MOE_ASSERT(m.type == wtype_ && m.out == rows && m.in == in && !m.parts);
    MOE_ASSERT(rows * (int64_t)parts.size() * in == p.numel);
    if ((int64_t)parts_.size() != (int64_t)views_.size()) parts_.resize(views_.size());
    parts_[i] = std::move(parts);
    kernels::QMatrix v;
    v.type = wtype_, v.out = rows * (int64_t)parts_[i].size(), v.in = in;
    v.parts = parts_[i].data(), v.part_rows = rows;
    set_param_view(p, v, std::move(keep));
}

bool Model::param_is_view(const ParamInfo& p) const {
    const int64_t i = &p - table_.params().data();
    MOE_ASSERT(i >= 0 && i < (int64_t)views_.size());  // p must come from this model's table
    return typed_ && f32_off_[i] < 0 && stores_[i].out == 0 && views_[i].out != 0;
}

kernels::QMatrix Model::param_typed(const ParamInfo& p) const {
    const int64_t i = &p - table_.params().data();
    MOE_ASSERT(i >= 0 && i < (int64_t)views_.size());  // p must come from this model's table
    return typed_ && f32_off_[i] < 0 ? views_[i] : kernels::QMatrix{};
}

TrainingState& Model::training() {
    if (typed_)
        fail("a model with ", kernels::wtype_name(wtype_),
             " weights is for inference only: training and plain forwards need the fp32 weights "
             "(load the checkpoint with --dtype fp32)");
    if (!tr_) tr_ = std::make_unique<TrainingState>();
    return *tr_;
}

float* Model::grads() {
    TrainingState& t = training();
    if (t.grads.size() == 0) {
        t.grads.allocate(table_.total() * sizeof(float));
        t.g = bind_weights(table_, cfg_, reinterpret_cast<float*>(t.grads.data()));
    }
    return reinterpret_cast<float*>(t.grads.data());
}

void Model::zero_grad() {
    float* g = grads();
    parallel_zero(g, table_.total() * sizeof(float));
}

Model::Model(const ModelConfig& cfg) : Model(cfg, kernels::WType::f32, ExpertRange{}) {}

Model::Model(const ModelConfig& cfg, ExpertRange range) : Model(cfg, kernels::WType::f32, range) {}

Model::Model(const ModelConfig& cfg, kernels::WType t) : Model(cfg, t, ExpertRange{}) {}

Model::Model(const ModelConfig& cfg, kernels::WType t, ExpertRange range)
    : cfg_(cfg), experts_(checked_range(cfg, range)), table_(cfg, experts_), typed_(t != kernels::WType::f32), wtype_(t) {
    const auto& ps = table_.params();
    f32_off_.assign(ps.size(), -1);
    int64_t n = 0;
    for (size_t i = 0; i < ps.size(); ++i) {
        if (typed_ && typed_at_inference(ps[i])) continue;
        f32_off_[i] = typed_ ? n : ps[i].offset;
        n += (ps[i].numel + 15) / 16 * 16;  // 64-byte aligned, as the ParamTable
    }
    params_.allocate((typed_ ? n : table_.total()) * sizeof(float));
    float* base = reinterpret_cast<float*>(params_.data());
    stores_.resize(ps.size());
    views_.resize(ps.size());
    w_ = bind_weights(table_, cfg_, [&](const ParamInfo& p) -> float* {
        const int64_t i = &p - ps.data();
        return f32_off_[i] < 0 ? nullptr : base + f32_off_[i];
    });
    matmul_params_ = count_flops(cfg_, 1).matmul_params;
    cached_load_.resize(cfg_.n_layer);
}

void Model::set_experts_per_token(int64_t K) {
    if (!cfg_.any_moe()) fail("--experts-per-token: the model has no MoE layers");
    if (K < 1 || K > cfg_.n_expert)
        fail("--experts-per-token must be in [1, n_expert = ", cfg_.n_expert, "], got ", K);
    cfg_.n_expert_used = K;
    matmul_params_ = count_flops(cfg_, 1).matmul_params;  // active weights per token follow K
    // activation buffers are sized by K: lay them out again
    if (tr_) tr_->cap_B = tr_->cap_T = 0;
    if (inf_) inf_->cap_N = 0;
}

void Model::init(uint64_t seed) {
    const double std0 = 0.02, std_proj = 0.02 / std::sqrt(2.0 * (double)cfg_.n_layer);
    std::vector<float> slice;  // a typed matrix's rows in fp32, a few MB at a time
    for (size_t i = 0; i < table_.params().size(); ++i) {
        const ParamInfo& p = table_.params()[i];
        float* x = param_f32(p);
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
        // a model holding a range of experts draws the whole stack's stream and keeps its rows
        const int64_t in = p.shape.back(), rows = p.numel / in;
        for (int64_t j = 0, skip = source_rows(p).first * in; j < skip; ++j) rng.normal();
        if (x) {
            for (int64_t j = 0; j < p.numel; ++j) x[j] = (float)(rng.normal() * sd);
            continue;
        }
        // typed: the same stream, converted a slice of rows at a time
        kernels::QStore& st = param_store(p);
        const int64_t step = std::max<int64_t>(1, (1 << 20) / in);
        slice.resize(std::min(rows, step) * in);
        for (int64_t r0 = 0; r0 < rows; r0 += step) {
            const int64_t n = std::min(step, rows - r0);
            for (int64_t j = 0; j < n * in; ++j) slice[j] = (float)(rng.normal() * sd);
            st.set_rows(r0, n, slice.data());
        }
    }
    qviews_.clear();
}

void Model::ensure_activations(int64_t B, int64_t T) {
    TrainingState& t = training();
    t.B = B;
    t.T = T;
    // buffers laid out for the capacity serve any smaller (B, T) with tighter strides
    if (B <= t.cap_B && T <= t.cap_T) return;
    t.cap_B = std::max(B, t.cap_B);
    t.cap_T = std::max(T, t.cap_T);
    const int64_t N = t.cap_B * t.cap_T, Tc = t.cap_T, Bc = t.cap_B;
    const int64_t C = cfg_.n_embd, V = cfg_.vocab_size, H = cfg_.n_head, Hkv = cfg_.n_head_kv;
    const int64_t D = cfg_.head_dim(), L = cfg_.n_layer;
    const int64_t E = std::max<int64_t>(cfg_.n_expert, 1), K = std::max<int64_t>(cfg_.n_expert_used, 1);
    const int64_t Fe = cfg_.n_ff_exp, Fd = cfg_.n_ff;
    // rows per layer buffer: MoE R <= N*K rows of width Fe; dense N rows of width Fd
    const int64_t Fs = cfg_.n_ff_shexp;
    const int64_t rowsF = std::max({N * K * Fe, N * Fd, N * Fs});
    const int64_t rowsC = std::max(N * K, N) * C;

    t.rope.resize(Tc * D);
    ops::rope_table(t.rope.data(), Tc, D, cfg_.rope_theta);

    lay_out(t.acts, [&](auto&& take_f, auto&& take_i, auto&& take_i64) {
        t.resid.assign(L + 1, nullptr);
        t.resid_mid.assign(L, nullptr);
        t.attn.assign(L, {});
        t.ffn.assign(L, {});
        for (int64_t l = 0; l <= L; ++l) t.resid[l] = take_f(N * C);
        for (int64_t l = 0; l < L; ++l) {
            t.resid_mid[l] = take_f(N * C);
            plan_attention(t.attn[l], cfg_, N, Bc * H * Tc * Tc, take_f);
            plan_ffn(t.ffn[l], cfg_, cfg_.layer_moe[l], false, N, take_f, take_i, take_i64);
        }
        t.xf = take_f(N * C);
        t.xf_rstd = take_f(N);
        t.logits = take_f(N * V);
        t.probs = take_f(N * V);
        t.losses = take_f(N);
    });

    lay_out(t.scratch, [&](auto&& take_f, auto&&, auto&&) {
        t.dresid = take_f(N * C);
        t.dlogits = take_f(N * V);
        t.dxf = take_f(N * C);
        auto& as = t.attn_s;
        as.dxn = take_f(N * C);
        as.dq = take_f(N * H * D);
        as.dk = take_f(N * Hkv * D);
        as.dv = take_f(N * Hkv * D);
        as.datt = take_f(Bc * H * Tc * Tc);
        as.dy = take_f(N * H * D);
        if (cfg_.qk_norm) {
            as.dq_raw = take_f(N * H * D);
            as.dk_raw = take_f(N * Hkv * D);
        }
        auto& fs = t.ffn_s;
        fs.dxn = take_f(N * C);
        fs.dlogits = take_f(N * E);
        fs.dscores = take_f(N * E);
        fs.dnoise = take_f(N * E);
        fs.dweight = take_f(N * K);
        fs.dxe = take_f(rowsC);
        fs.dye = take_f(rowsC);
        fs.dact = take_f(rowsF);
        fs.dhg = take_f(rowsF);
        fs.dhu = take_f(rowsF);
        if (cfg_.shexp_gate) {
            fs.dsh_y = take_f(N * C);
            fs.dsh_z = take_f(N);
        }
    });
}

void Model::ensure_inference_plan(int64_t N) {
    if (!inf_) inf_ = std::make_unique<InferencePlan>();
    InferencePlan& p = *inf_;
    const int64_t D = cfg_.head_dim();
    if ((int64_t)p.rope_full.size() != cfg_.n_ctx * D) {
        p.rope_full.resize(cfg_.n_ctx * D);
        ops::rope_table(p.rope_full.data(), cfg_.n_ctx, D, cfg_.rope_theta);
    }
    if (N <= p.cap_N) return;
    p.cap_N = N;
    const int64_t C = cfg_.n_embd, V = cfg_.vocab_size, H = cfg_.n_head;
    lay_out(p.buf, [&](auto&& take_f, auto&& take_i, auto&& take_i64) {
        p.resid[0] = take_f(N * C);
        p.resid[1] = take_f(N * C);
        plan_attention(p.attn, cfg_, N, 0, take_f);
        plan_ffn(p.ffn, cfg_, cfg_.any_moe(), true, N, take_f, take_i, take_i64);
        p.scores = take_f(N * H * cfg_.n_ctx);
        p.xf = take_f(N * C);
        p.xf_rstd = take_f(N);
        p.logits = take_f(N * V);
    });
}

size_t Model::activation_bytes() const {
    size_t n = inf_ ? inf_->buf.size() : 0;
    if (tr_) n += tr_->acts.size() + tr_->scratch.size();
    return n;
}

float Model::forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T) {
    // B and T come from configs, CLI arguments and texts: errors naming them, not asserts
    if (B < 1 || T < 1) fail("forward: batch ", B, " x ", T, " tokens: both must be >= 1");
    if (T > cfg_.n_ctx) fail("forward: a sequence of ", T, " tokens exceeds the model's context (n_ctx = ", cfg_.n_ctx, ")");
    if (experts_sharded() && !expert_runner_)
        fail("forward: this model holds experts [", experts_.first, ", ", experts_.first + experts_.count, ") of ",
             cfg_.n_expert, " only and has no expert runner to reach the others");
    ensure_activations(B, T);
    const kernels::PrecisionScope precision(precision_);
    TrainingState& t = *tr_;
    t.tokens = tokens;
    t.targets = targets;
    const int64_t N = B * T, C = cfg_.n_embd, V = cfg_.vocab_size;
    layers::Dims d{B, T, N, C, cfg_.n_head, cfg_.n_head_kv, cfg_.head_dim(), cfg_.qk_norm_head};
    // rope table was built for cap_T rows with stride D/2*2 per position: position t is row t
    {
        MOE_PROFILE_SCOPE("embedding fwd");
        ops::embedding_forward(t.resid[0], tokens, w_.tok_embd, N, C);  // (N, C)
    }
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        layers::attention_forward(t.resid_mid[l], t.attn[l], t.resid[l], w_.layers[l], t.rope.data(), d,
                                  cfg_.norm_eps);
        layers::RouteContext ctx = mode_;
        ctx.layer = l;
        ctx.experts = mode_.train || experts_sharded() ? expert_runner_ : nullptr;
        layers::ffn_forward(t.resid[l + 1], t.ffn[l], t.resid_mid[l], w_.layers[l], cfg_,
                            cfg_.layer_moe[l], N, ctx);
        if (mode_.train && cfg_.layer_moe[l] && cfg_.router.bias_balance) {
            if (step_load_.empty()) step_load_.assign(cfg_.n_layer, std::vector<int64_t>(cfg_.n_expert, 0));
            for (int64_t e = 0; e < cfg_.n_expert; ++e) step_load_[l][e] += t.ffn[l].expert_load[e];
        }
    }
    MOE_PROFILE_SCOPE("head+loss fwd");
    ops::rmsnorm_forward(t.xf, t.xf_rstd, t.resid[cfg_.n_layer], w_.output_norm, N, C, cfg_.norm_eps);
    ops::linear_forward(t.logits, t.xf, w_.output, N, C, V);  // (N, V)
    logits_ = t.logits;
    t.have_targets = targets != nullptr;
    ran_experts_remote_ = (mode_.train || experts_sharded()) && expert_runner_ != nullptr;
    if (!targets) return 0.f;
    ops::softmax_xent_forward(t.probs, t.losses, t.logits, targets, N, V);
    double sum = 0;
    for (int64_t n = 0; n < N; ++n) sum += t.losses[n];
    return (float)(sum / (double)N);
}

void Model::set_cache_type(DType t) {
    layers::KvCache::check_type(t);
    cache_type_ = t;
}

layers::KvCache Model::make_cache(int64_t slots, int64_t positions) const {
    if (slots < 1) fail("KV cache: need at least one sequence slot, got ", slots);
    return layers::KvCache(cfg_.n_layer, slots, cfg_.n_ctx, cfg_.n_head_kv, cfg_.head_dim(), positions, cache_type_);
}

void Model::set_weight_type(kernels::WType t) {
    if (typed_) {
        if (t != wtype_)
            fail("the model's weights are ", kernels::wtype_name(wtype_), " without an fp32 copy: they cannot become ",
                 kernels::wtype_name(t), " (load it with --dtype ", kernels::wtype_name(t), " instead)");
        return;
    }
    wtype_ = t, repacked_ = false;  // fresh copies: rows as quantized (repack_for_inference again)
    const auto& ps = table_.params();
    for (size_t i = 0; i < ps.size(); ++i) {
        if (!typed_at_inference(ps[i])) continue;
        const int64_t in = ps[i].shape.back();
        stores_[i].build(t, param_f32(ps[i]), ps[i].numel / in, in);
        views_[i] = stores_[i].view();
    }
    qviews_.clear();
}

double Model::repack_for_inference() {
    if (!kernels::repack_enabled() || !(kernels::q8_0_tiled_active() || kernels::avx2_tiles_active())) return 0;
    const auto& ps = table_.params();
    double bytes = 0;
    for (size_t i = 0; i < ps.size(); ++i) {
        kernels::QMatrix& v = views_[i];
        // Q8_0, Q4_0 and Q4_K (a GGUF file may mix types) and moe's int8 (the same tiles, fp32 scales)
        if (!kernels::repack_for_host(v)) continue;
        // an expert stack (E, R, IN) is cut into experts of R rows: whole tiles only
        if (ps[i].shape.size() == 3 && ps[i].shape[1] % kernels::kTiledRows != 0) continue;
        const bool viewed = stores_[i].out == 0;  // memory someone else holds (a mapped file)
        const kernels::QMatrix old = v;
        stores_[i].build_tiled(v);
        v = stores_[i].view();
        if (viewed && old.raw) advise_not_needed(old.raw, (size_t)(old.out * old.row_bytes));  // no longer read
        if (viewed && old.q) {
            advise_not_needed(old.q, (size_t)(old.out * old.in));
            advise_not_needed(old.scales, (size_t)(old.out * old.blocks()) * sizeof(float));
        }
        bytes += v.bytes();
    }
    repacked_ = true;
    qviews_.clear();  // rebuilt (the tied head repacked there) on the next forward_cached
    return bytes;
}

void Model::build_views() {
    const auto& ps = table_.params();
    auto view = [&](const std::string& name) -> kernels::QMatrix {
        const ParamInfo* p = table_.find(name);
        if (!p) return {};
        const int64_t i = p - ps.data();
        if (views_[i].out == 0 && !typed_) {  // fp32 model before any set_weight_type: views
            stores_[i].build(kernels::WType::f32, param_f32(*p), p->numel / p->shape.back(), p->shape.back());
            views_[i] = stores_[i].view();
        }
        if (views_[i].out == 0) fail("the model's tensor '", name, "' has no weights (not loaded)");
        return views_[i];
    };
    qviews_.assign(cfg_.n_layer, {});
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        layers::QLayer& v = qviews_[l];
        v.attn_q = view(b + "attn_q"), v.attn_k = view(b + "attn_k"), v.attn_v = view(b + "attn_v");
        v.attn_output = view(b + "attn_output");
        const bool glu = cfg_.activation == ops::Activation::swiglu;
        if (cfg_.layer_moe[l]) {
            v.ffn = {glu ? view(b + "ffn_gate_exps") : kernels::QMatrix{}, view(b + "ffn_up_exps"),
                     view(b + "ffn_down_exps")};
            // stacked (E, F, C) / (E, C, F) as (E*F, C) / (E*C, F) matrices
            if (cfg_.n_ff_shexp > 0)
                v.shexp = {glu ? view(b + "ffn_gate_shexp") : kernels::QMatrix{}, view(b + "ffn_up_shexp"),
                           view(b + "ffn_down_shexp")};
        } else {
            v.ffn = {glu ? view(b + "ffn_gate") : kernels::QMatrix{}, view(b + "ffn_up"), view(b + "ffn_down")};
        }
    }
    if (cfg_.tie_embeddings) {  // the head reads the fp32 embedding table: a copy in the weight type
        if (wtype_ == kernels::WType::f32) {
            q_output_store_.build(kernels::WType::f32, w_.tok_embd, cfg_.vocab_size, cfg_.n_embd);
        } else if (q_output_store_.type != wtype_ || q_output_store_.out == 0 || !typed_) {
            q_output_store_.build(wtype_, w_.tok_embd, cfg_.vocab_size, cfg_.n_embd);
        }
        if (repacked_ && kernels::repack_for_host(q_output_store_.view())) q_output_store_.build_tiled(q_output_store_.view());
        q_output_ = q_output_store_.view();
    } else {
        q_output_ = view("output");
    }
}

double Model::weight_bytes_per_token() const {
    return count_weight_bytes(cfg_, wtype_).active;
}

void Model::forward_cached(const int32_t* tokens, const int32_t* seq, const int32_t* pos, int64_t N,
                           layers::KvCache& cache, bool last_only) {
    const int64_t C = cfg_.n_embd, V = cfg_.vocab_size, D = cfg_.head_dim();
    if (N < 1) fail("forward_cached: a call needs at least one row, got ", N);
    if (experts_sharded() && !cached_runner_)
        fail("forward_cached: this model holds experts [", experts_.first, ", ", experts_.first + experts_.count,
             ") of ", cfg_.n_expert, " only: its forwards need the expert-parallel runner (mpirun ... "
             "--expert-parallel), or gather the checkpoint (moe export --format moe)");
    if (cache.L != cfg_.n_layer || cache.n_ctx != cfg_.n_ctx || cache.KD != cfg_.n_head_kv * D)
        fail("KV cache of (L ", cache.L, ", n_ctx ", cache.n_ctx, ", KD ", cache.KD, ") does not fit this model (L ",
             cfg_.n_layer, ", n_ctx ", cfg_.n_ctx, ", KD ", cfg_.n_head_kv * D, ")");
    ensure_inference_plan(N);
    InferencePlan& p = *inf_;
    p.next_pos.assign(cache.len.begin(), cache.len.end());  // capacity kept: no allocation once warm
    for (int64_t n = 0; n < N; ++n) {
        if (tokens[n] < 0 || tokens[n] >= V) fail("token id ", tokens[n], " at row ", n, " is outside the vocabulary [0, ", V, ")");
        if (seq[n] < 0 || seq[n] >= cache.S) fail("sequence slot ", seq[n], " outside [0, ", cache.S, ")");
        if (pos[n] < 0 || pos[n] >= cfg_.n_ctx)
            fail("position ", pos[n], " of sequence ", seq[n], " is beyond the context (n_ctx = ", cfg_.n_ctx, ")");
        // a row may rewrite the sequence from an earlier position (the rest is dropped), not skip ahead
        if (pos[n] > p.next_pos[seq[n]])
            fail("position ", pos[n], " of sequence ", seq[n], " skips ahead of its cache (", p.next_pos[seq[n]], " filled)");
        p.next_pos[seq[n]] = pos[n] + 1;
    }
    // every row's page: taken from the pool's free list if absent, copied if shared (copy on write)
    for (int64_t n = 0; n < N; ++n)
        if (!cache.prepare(seq[n], pos[n], pos[n] + 1))
            fail("KV cache: no free page for position ", pos[n], " of sequence ", seq[n], " (the pool of ",
                 cache.n_pages * cache.page, " positions is full)");
    if ((int64_t)qviews_.size() != cfg_.n_layer) build_views();
    const kernels::PrecisionScope precision(precision_);
    // a call of less than kSerialFlops (about a millisecond of one core) runs on this thread
    // alone: small-model decode and short prefills never fork, so a busy core cannot stall them
    const SerialScope serial(2.0 * matmul_params_ * (double)N < kSerialFlops);
    layers::Dims d{1, N, N, C, cfg_.n_head, cfg_.n_head_kv, D, cfg_.qk_norm_head};
    float* x = p.resid[0];    // (N, C) the residual stream entering the layer
    float* mid = p.resid[1];  // (N, C) after attention; the layer's output goes back into x
    const int64_t Kc = cfg_.n_expert_used, Rc = (int64_t)capture_rows_.size(), Lc = cfg_.n_layer;
    for (int32_t r : capture_rows_)
        if (r < 0 || r >= N) fail("route capture row ", r, " is outside the call's ", N, " rows");
    capture_expert_.assign(Rc * Lc * Kc, -1);  // (rows, L, K); no allocation once warm
    capture_weight_.assign(Rc * Lc * Kc, 0.f);
    ops::embedding_forward(x, tokens, w_.tok_embd, N, C);  // (N, C)
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        layers::AttentionCache ac = p.attn;
        ac.att = p.scores;
        layers::attention_forward_cached(mid, ac, x, w_.layers[l], p.rope_full.data(), d, cfg_.norm_eps, cache, l,
                                         seq, pos, qviews_[l]);
        layers::RouteContext ctx;  // evaluation routing: no noise, eval capacity
        ctx.layer = l;
        ctx.experts = cached_runner_;  // expert parallel: the routed rows go to their experts' ranks
        layers::ffn_forward(x, p.ffn, mid, w_.layers[l], cfg_, cfg_.layer_moe[l], N, ctx, &qviews_[l]);
        if (cfg_.layer_moe[l]) {
            cached_load_[l].assign(p.ffn.expert_load, p.ffn.expert_load + cfg_.n_expert);
            const ops::MoeRoute& rt = p.ffn.route;  // (N, K) of this layer
            MOE_ASSERT(Rc == 0 || rt.K == Kc);
            for (int64_t i = 0; i < Rc; ++i) {
                const int64_t src = (int64_t)capture_rows_[i] * Kc, dst = (i * Lc + l) * Kc;
                std::copy(rt.topk_expert + src, rt.topk_expert + src + Kc, capture_expert_.begin() + dst);
                std::copy(rt.topk_weight + src, rt.topk_weight + src + Kc, capture_weight_.begin() + dst);
            }
        }
    }
    for (int64_t n = 0; n < N; ++n) cache.len[seq[n]] = pos[n] + 1;  // rows come in position order
    MOE_PROFILE_SCOPE("head fwd (cached)");
    logits_ = p.logits;
    if (!last_only) {
        ops::rmsnorm_forward(p.xf, p.xf_rstd, x, w_.output_norm, N, C, cfg_.norm_eps);
        kernels::qmatmul(p.logits, p.xf, q_output_, N, false);  // (N, V)
        return;
    }
    // only the last row of each sequence: the head is V x C per row, most of a small model's decode
    p.head_rows.clear();
    for (int64_t n = 0; n < N; ++n) {
        bool last = true;
        for (int64_t m = n + 1; m < N && last; ++m) last = seq[m] != seq[n];
        if (last) p.head_rows.push_back((int32_t)n);
    }
    // one product for all of them (the head's weights read once per step, not once per sequence):
    // row i of the product is head row n_i, normed into xf row i, its logits computed into logits
    // row i and moved to row n_i (n_i >= i: from the last row down, no row overwritten before it
    // moves). The GEMV path gives each row the arithmetic it has alone (batch invariance).
    const int64_t H = (int64_t)p.head_rows.size();
    for (int64_t i = 0; i < H; ++i) {
        const int64_t n = p.head_rows[i];
        ops::rmsnorm_forward(p.xf + i * C, p.xf_rstd + i, x + n * C, w_.output_norm, 1, C, cfg_.norm_eps);
    }
    kernels::qmatmul(p.logits, p.xf, q_output_, H, false);  // (H, V)
    for (int64_t i = H - 1; i >= 0; --i)
        if (p.head_rows[i] != i) std::memmove(p.logits + p.head_rows[i] * V, p.logits + i * V, V * sizeof(float));
}

void Model::backward(float scale) {
    TrainingState& t = training();
    MOE_ASSERT(t.have_targets);
    grads();
    const kernels::PrecisionScope precision(precision_);
    const int64_t B = t.B, T = t.T, N = B * T, C = cfg_.n_embd, V = cfg_.vocab_size;
    layers::Dims d{B, T, N, C, cfg_.n_head, cfg_.n_head_kv, cfg_.head_dim(), cfg_.qk_norm_head};
    {
        MOE_PROFILE_SCOPE("head+loss bwd");
        parallel_zero(t.dlogits, N * V * sizeof(float));
        parallel_zero(t.dxf, N * C * sizeof(float));
        parallel_zero(t.dresid, N * C * sizeof(float));
        // loss = (1/N) sum_n losses[n]
        ops::softmax_xent_backward(t.dlogits, t.probs, t.targets, scale / (float)N, N, V);
        ops::linear_backward(t.dxf, t.g.output, t.dlogits, t.xf, w_.output, N, C, V);
        ops::rmsnorm_backward(t.dresid, t.g.output_norm, t.dxf, t.resid[cfg_.n_layer], w_.output_norm,
                              t.xf_rstd, N, C);
    }
    for (int64_t l = cfg_.n_layer - 1; l >= 0; --l) {
        layers::ffn_backward(t.dresid, t.g.layers[l], t.ffn_s, t.ffn[l], t.resid_mid[l], w_.layers[l],
                             cfg_, cfg_.layer_moe[l], N, scale, expert_sink_,
                             ran_experts_remote_ ? expert_runner_ : nullptr, l);
        layers::attention_backward(t.dresid, t.g.layers[l], t.attn_s, t.attn[l], t.resid[l], w_.layers[l],
                                   t.rope.data(), d);
    }
    MOE_PROFILE_SCOPE("embedding bwd");
    ops::embedding_backward(t.g.tok_embd, t.dresid, t.tokens, N, C);
}

double Model::aux_balance_loss() const {
    double s = 0;
    if (!tr_) return s;
    for (int64_t l = 0; l < (int64_t)tr_->ffn.size(); ++l)
        if (cfg_.layer_moe[l]) s += tr_->ffn[l].balance_loss;
    return s;
}

double Model::aux_z_loss() const {
    double s = 0;
    if (!tr_) return s;
    for (int64_t l = 0; l < (int64_t)tr_->ffn.size(); ++l)
        if (cfg_.layer_moe[l]) s += tr_->ffn[l].z_loss;
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

const layers::FfnCache* Model::ffn_cache(int64_t l) const {
    return (tr_ && l < (int64_t)tr_->ffn.size() && cfg_.layer_moe[l]) ? &tr_->ffn[l] : nullptr;
}

int64_t Model::last_tokens() const { return tr_ ? tr_->B * tr_->T : 0; }

std::vector<Model::LayerRouting> Model::routing() const {
    std::vector<LayerRouting> out(cfg_.n_layer);
    if (!tr_) return out;
    const int64_t N = tr_->B * tr_->T, E = cfg_.n_expert, K = cfg_.n_expert_used;
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        if (!cfg_.layer_moe[l] || tr_->ffn.empty() || !tr_->ffn[l].expert_load) continue;
        const layers::FfnCache& f = tr_->ffn[l];
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
    if (!tr_) return out;
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        if (!cfg_.layer_moe[l] || tr_->ffn.empty() || !tr_->ffn[l].route.expert_offsets) continue;
        const int32_t* off = tr_->ffn[l].route.expert_offsets;  // (E+1)
        out[l].resize(cfg_.n_expert);
        for (int64_t e = 0; e < cfg_.n_expert; ++e) out[l][e] = off[e + 1] - off[e];
    }
    return out;
}

}  // namespace moe
