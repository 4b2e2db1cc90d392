#include "model/params.h"

#include "core/error.h"

namespace moe {

ExpertRange expert_range_of(const ModelConfig& m, int P, int q) {
    if (P < 1) fail("--expert-parallel must be >= 1, got ", P);
    if (P == 1) return {};
    if (!m.any_moe() || m.n_expert < 1)
        fail("--expert-parallel ", P, " needs an MoE model, and this one has no MoE layer");
    if (m.n_expert % P != 0)
        fail("--expert-parallel ", P, " must divide the number of experts (model.n_expert = ", m.n_expert,
             "): every rank holds the same number of experts");
    MOE_ASSERT(q >= 0 && q < P);
    const int64_t El = m.n_expert / P;
    return {q * El, El};
}

void ParamTable::add(std::string name, std::vector<int64_t> shape, bool decay, bool expert,
                     bool trainable) {
    ParamInfo p;
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.numel = 1;
    for (int64_t s : p.shape) p.numel *= s;
    p.offset = total_;
    p.decay = decay;
    p.expert = expert;
    p.trainable = trainable;
    // keep every tensor 64-byte aligned in the flat buffer
    total_ += (p.numel + 15) / 16 * 16;
    MOE_ASSERT(!index_.count(p.name));
    index_.emplace(p.name, params_.size());
    params_.push_back(std::move(p));
}

ParamTable::ParamTable(const ModelConfig& m, ExpertRange experts) {
    MOE_ASSERT(m.vocab_size > 0);
    MOE_ASSERT(experts.all() || (experts.first >= 0 && experts.count >= 1 && experts.first + experts.count <= m.n_expert));
    const int64_t El = experts.all() ? m.n_expert : experts.count;  // experts in the stacks
    const int64_t V = m.vocab_size, C = m.n_embd, D = m.head_dim();
    const int64_t H = m.n_head, Hkv = m.n_head_kv, E = m.n_expert;
    const bool glu = m.activation == ops::Activation::swiglu;
    add("tok_embd", {V, C}, true);
    for (int64_t l = 0; l < m.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        add(b + "attn_norm", {C}, false);
        add(b + "attn_q", {H * D, C}, true);
        add(b + "attn_k", {Hkv * D, C}, true);
        add(b + "attn_v", {Hkv * D, C}, true);
        add(b + "attn_output", {C, H * D}, true);
        if (m.attn_bias_qkv) {
            add(b + "attn_q.bias", {H * D}, false);
            add(b + "attn_k.bias", {Hkv * D}, false);
            add(b + "attn_v.bias", {Hkv * D}, false);
        }
        if (m.attn_bias_o) add(b + "attn_output.bias", {C}, false);
        if (m.qk_norm) {
            add(b + "attn_q_norm", {m.qk_norm_head ? D : H * D}, false);
            add(b + "attn_k_norm", {m.qk_norm_head ? D : Hkv * D}, false);
        }
        add(b + "ffn_norm", {C}, false);
        if (m.layer_moe[l]) {
            const int64_t F = m.n_ff_exp;
            add(b + "ffn_gate_inp", {E, C}, true);
            if (m.router.noisy_gating) add(b + "ffn_gate_inp_noise", {E, C}, true);
            if (m.router.bias_balance) add(b + "ffn_gate_bias", {E}, false, false, false);
            if (glu) add(b + "ffn_gate_exps", {El, F, C}, true, true);
            add(b + "ffn_up_exps", {El, F, C}, true, true);
            add(b + "ffn_down_exps", {El, C, F}, true, true);
            if (m.n_ff_shexp > 0) {  // shared expert: a dense FFN every token goes through
                const int64_t Fs = m.n_ff_shexp;
                if (m.shexp_gate) add(b + "ffn_gate_inp_shexp", {1, C}, true);
                if (glu) add(b + "ffn_gate_shexp", {Fs, C}, true);
                add(b + "ffn_up_shexp", {Fs, C}, true);
                add(b + "ffn_down_shexp", {C, Fs}, true);
            }
        } else {
            const int64_t F = m.n_ff;
            if (glu) add(b + "ffn_gate", {F, C}, true);
            add(b + "ffn_up", {F, C}, true);
            add(b + "ffn_down", {C, F}, true);
        }
    }
    add("output_norm", {C}, false);
    if (!m.tie_embeddings) add("output", {V, C}, true);
}

const ParamInfo* ParamTable::find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &params_[it->second];
}

Weights bind_weights(const ParamTable& t, const ModelConfig& m, float* base) {
    return bind_weights(t, m, [&](const ParamInfo& p) { return base + p.offset; });
}

Weights bind_weights(const ParamTable& t, const ModelConfig& m, const std::function<float*(const ParamInfo&)>& data) {
    Weights w;
    w.layers.resize(m.n_layer);
    auto at = [&](const std::string& name) -> float* {
        const ParamInfo* p = t.find(name);
        return p ? data(*p) : nullptr;
    };
    w.tok_embd = at("tok_embd");
    for (int64_t l = 0; l < m.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        LayerWeights& L = w.layers[l];
        L.attn_norm = at(b + "attn_norm");
        if (m.qk_norm) {
            L.attn_q_norm = at(b + "attn_q_norm");
            L.attn_k_norm = at(b + "attn_k_norm");
        }
        L.attn_q_b = at(b + "attn_q.bias");
        L.attn_k_b = at(b + "attn_k.bias");
        L.attn_v_b = at(b + "attn_v.bias");
        L.attn_output_b = at(b + "attn_output.bias");
        L.attn_q = at(b + "attn_q");
        L.attn_k = at(b + "attn_k");
        L.attn_v = at(b + "attn_v");
        L.attn_output = at(b + "attn_output");
        L.ffn_norm = at(b + "ffn_norm");
        L.ffn_gate = at(b + "ffn_gate");
        L.ffn_up = at(b + "ffn_up");
        L.ffn_down = at(b + "ffn_down");
        L.ffn_gate_inp = at(b + "ffn_gate_inp");
        L.ffn_gate_inp_noise = at(b + "ffn_gate_inp_noise");
        L.ffn_gate_bias = at(b + "ffn_gate_bias");
        L.ffn_gate_exps = at(b + "ffn_gate_exps");
        L.ffn_up_exps = at(b + "ffn_up_exps");
        L.ffn_down_exps = at(b + "ffn_down_exps");
        L.ffn_gate_inp_shexp = at(b + "ffn_gate_inp_shexp");
        L.ffn_gate_shexp = at(b + "ffn_gate_shexp");
        L.ffn_up_shexp = at(b + "ffn_up_shexp");
        L.ffn_down_shexp = at(b + "ffn_down_shexp");
    }
    w.output_norm = at("output_norm");
    w.output = m.tie_embeddings ? w.tok_embd : at("output");
    return w;
}

ParamCount count_params(const ModelConfig& m) {
    ParamCount c;
    ParamTable t(m);
    for (const auto& p : t.params()) {
        if (!p.trainable) continue;
        c.total += p.numel;
        c.active += p.expert ? p.numel / m.n_expert * m.n_expert_used : p.numel;
    }
    return c;
}

FlopCount count_flops(const ModelConfig& m, int64_t T) {
    FlopCount f;
    ParamTable t(m);
    for (const auto& p : t.params()) {
        if (!p.trainable) continue;
        if (p.name.find("norm") != std::string::npos || p.shape.size() == 1) continue;  // elementwise
        if (p.name == "tok_embd" && !m.tie_embeddings) continue;  // a lookup; tied: it is the head too
        f.matmul_params += p.expert ? (double)p.numel / m.n_expert * m.n_expert_used : (double)p.numel;
    }
    const double head_dim = (double)m.head_dim();
    const double attn = 4.0 * m.n_head * head_dim * (double)(T + 1) / 2.0 * m.n_layer;
    f.forward = 2.0 * f.matmul_params + attn;
    f.training = 3.0 * f.forward;
    return f;
}

bool typed_at_inference(const ParamInfo& p) {
    return p.trainable && p.shape.size() >= 2 && p.name != "tok_embd" && p.name.find("ffn_gate_inp") == std::string::npos;
}

namespace {

// typed(rows, in): bytes of a (rows, in) matmul weight in the inference type
WeightBytes count_weight_bytes_with(const ModelConfig& m, const std::function<double(int64_t, int64_t)>& typed) {
    WeightBytes b;
    ParamTable t(m);
    for (const auto& p : t.params()) {
        if (!p.trainable) continue;
        const int64_t in = p.shape.back(), rows = p.numel / in;
        if (typed_at_inference(p)) {
            const double share = p.expert ? (double)m.n_expert_used / (double)m.n_expert : 1.0;
            b.total += typed(rows, in);
            b.active += share * typed(rows, in);
        } else if (p.name == "tok_embd") {
            b.total += 4.0 * p.numel;  // fp32 table, one row per token
            b.active += 4.0 * in;
            if (m.tie_embeddings) {  // the head's copy in the type
                b.total += typed(rows, in);
                b.active += typed(rows, in);
            }
        } else {  // norms, routers: fp32, read by every token
            b.total += 4.0 * p.numel;
            b.active += 4.0 * p.numel;
        }
    }
    return b;
}

}  // namespace

WeightBytes count_weight_bytes(const ModelConfig& m, kernels::WType wt) {
    return count_weight_bytes_with(m, [&](int64_t rows, int64_t in) {
        kernels::QMatrix q;
        q.type = wt, q.out = rows, q.in = in;
        return (double)q.bytes();
    });
}

WeightBytes count_weight_bytes(const ModelConfig& m, kernels::GType gt) {
    const int64_t block = kernels::gtype_block(gt), block_bytes = kernels::gtype_block_bytes(gt);
    return count_weight_bytes_with(m, [&](int64_t rows, int64_t in) {
        return (double)rows * (double)((in + block - 1) / block) * (double)block_bytes;
    });
}

}  // namespace moe
