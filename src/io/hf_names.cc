#include "io/hf_names.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/error.h"

namespace moe {

static std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) {
        if (i) r += ',';
        r += std::to_string(s[i]);
    }
    return r + "]";
}

static HfTensorMap direct(std::string moe, std::string hf, std::vector<int64_t> shape) {
    HfTensorMap m;
    m.moe_name = std::move(moe);
    m.shape = shape;
    m.hf_names = {std::move(hf)};
    m.hf_shape = std::move(shape);
    return m;
}

std::vector<HfTensorMap> hf_global_map(const HfConfig& c) {
    const int64_t V = c.vocab_size, C = c.hidden_size;
    std::vector<HfTensorMap> r;
    r.push_back(direct("tok_embd", "model.embed_tokens.weight", {V, C}));
    r.push_back(direct("output_norm", "model.norm.weight", {C}));
    if (!c.tie_word_embeddings) r.push_back(direct("output", "lm_head.weight", {V, C}));
    return r;
}

std::vector<HfTensorMap> hf_layer_map(const HfConfig& c, int64_t l, HfExpertLayout layout) {
    MOE_ASSERT(l >= 0 && l < c.num_hidden_layers && (int64_t)c.layer_moe.size() == c.num_hidden_layers);
    const int64_t C = c.hidden_size, D = c.head_dim, H = c.num_attention_heads, Hkv = c.num_key_value_heads;
    const std::string b = "blk." + std::to_string(l) + ".";
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<HfTensorMap> r;
    r.push_back(direct(b + "attn_norm", p + "input_layernorm.weight", {C}));
    r.push_back(direct(b + "attn_q", p + "self_attn.q_proj.weight", {H * D, C}));
    r.push_back(direct(b + "attn_k", p + "self_attn.k_proj.weight", {Hkv * D, C}));
    r.push_back(direct(b + "attn_v", p + "self_attn.v_proj.weight", {Hkv * D, C}));
    r.push_back(direct(b + "attn_output", p + "self_attn.o_proj.weight", {C, H * D}));
    if (c.qkv_bias) {
        r.push_back(direct(b + "attn_q.bias", p + "self_attn.q_proj.bias", {H * D}));
        r.push_back(direct(b + "attn_k.bias", p + "self_attn.k_proj.bias", {Hkv * D}));
        r.push_back(direct(b + "attn_v.bias", p + "self_attn.v_proj.bias", {Hkv * D}));
    }
    if (c.o_bias) r.push_back(direct(b + "attn_output.bias", p + "self_attn.o_proj.bias", {C}));
    if (c.qk_norm == HfQkNorm::per_head) {
        r.push_back(direct(b + "attn_q_norm", p + "self_attn.q_norm.weight", {D}));
        r.push_back(direct(b + "attn_k_norm", p + "self_attn.k_norm.weight", {D}));
    } else if (c.qk_norm == HfQkNorm::full) {
        r.push_back(direct(b + "attn_q_norm", p + "self_attn.q_norm.weight", {H * D}));
        r.push_back(direct(b + "attn_k_norm", p + "self_attn.k_norm.weight", {Hkv * D}));
    }
    r.push_back(direct(b + "ffn_norm", p + "post_attention_layernorm.weight", {C}));
    if (!c.layer_moe[l]) {
        const int64_t F = c.intermediate_size;
        r.push_back(direct(b + "ffn_gate", p + "mlp.gate_proj.weight", {F, C}));
        r.push_back(direct(b + "ffn_up", p + "mlp.up_proj.weight", {F, C}));
        r.push_back(direct(b + "ffn_down", p + "mlp.down_proj.weight", {C, F}));
        return r;
    }
    const int64_t E = c.num_experts, F = c.expert_intermediate_size;
    // Mixtral's checkpoints name the block "block_sparse_moe" and the experts w1 (gate), w3 (up),
    // w2 (down); transformers 5 renames the block to "mlp" in memory (conversion_mapping.py).
    const bool mixtral_legacy = c.family == HfFamily::mixtral && layout == HfExpertLayout::per_expert;
    const std::string blk = p + (mixtral_legacy ? "block_sparse_moe." : "mlp.");
    r.push_back(direct(b + "ffn_gate_inp", blk + "gate.weight", {E, C}));
    if (layout == HfExpertLayout::per_expert) {
        auto stack = [&](const char* moe, const char* hf, std::vector<int64_t> one) {
            HfTensorMap m;
            m.moe_name = b + moe;
            m.kind = HfMapKind::stack_experts;
            m.shape = {E};
            m.shape.insert(m.shape.end(), one.begin(), one.end());
            for (int64_t e = 0; e < E; ++e) m.hf_names.push_back(blk + "experts." + std::to_string(e) + "." + hf);
            m.hf_shape = std::move(one);
            r.push_back(std::move(m));
        };
        stack("ffn_gate_exps", mixtral_legacy ? "w1.weight" : "gate_proj.weight", {F, C});
        stack("ffn_up_exps", mixtral_legacy ? "w3.weight" : "up_proj.weight", {F, C});
        stack("ffn_down_exps", mixtral_legacy ? "w2.weight" : "down_proj.weight", {C, F});
    } else {
        for (int64_t half : {0, 1}) {
            HfTensorMap m;
            m.moe_name = b + (half ? "ffn_up_exps" : "ffn_gate_exps");
            m.kind = HfMapKind::split_gate_up;
            m.shape = {E, F, C};
            m.hf_names = {blk + "experts.gate_up_proj"};
            m.hf_shape = {E, 2 * F, C};
            m.half = half;
            r.push_back(std::move(m));
        }
        r.push_back(direct(b + "ffn_down_exps", blk + "experts.down_proj", {E, C, F}));
    }
    if (c.shared_expert_intermediate_size > 0) {
        const int64_t Fs = c.shared_expert_intermediate_size;
        if (c.shared_expert_gate) r.push_back(direct(b + "ffn_gate_inp_shexp", p + "mlp.shared_expert_gate.weight", {1, C}));
        r.push_back(direct(b + "ffn_gate_shexp", p + "mlp.shared_expert.gate_proj.weight", {Fs, C}));
        r.push_back(direct(b + "ffn_up_shexp", p + "mlp.shared_expert.up_proj.weight", {Fs, C}));
        r.push_back(direct(b + "ffn_down_shexp", p + "mlp.shared_expert.down_proj.weight", {C, Fs}));
    }
    return r;
}

std::vector<HfTensorMap> hf_tensor_map(const HfConfig& c, HfExpertLayout layout) {
    std::vector<HfTensorMap> r = hf_global_map(c);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        auto lm = hf_layer_map(c, l, layout);
        r.insert(r.end(), std::make_move_iterator(lm.begin()), std::make_move_iterator(lm.end()));
    }
    return r;
}

HfExpertLayout hf_detect_expert_layout(const HfConfig& c, const TensorSource& src) {
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
        if (c.layer_moe[l])
            return src.find("model.layers." + std::to_string(l) + ".mlp.experts.gate_up_proj") ? HfExpertLayout::fused
                                                                                                : HfExpertLayout::per_expert;
    return HfExpertLayout::per_expert;
}

std::vector<std::string> hf_check_source(const std::vector<HfTensorMap>& map, const TensorSource& src) {
    std::set<std::string> used;
    for (const auto& m : map) {
        const TensorView* first = nullptr;
        for (const auto& n : m.hf_names) {
            const TensorView* t = src.find(n);
            if (!t) fail("'", src.where(), "' has no tensor '", n, "' (moe's ", m.moe_name, ")");
            if (t->shape != m.hf_shape)
                fail("'", src.where(), "': tensor '", n, "' has shape ", t->shape_str(), " but the config implies ",
                     shape_str(m.hf_shape), " (moe's ", m.moe_name, ")");
            if (first && t->dtype != first->dtype)
                fail("'", src.where(), "': tensor '", n, "' is ", t->dtype, " but '", first->name, "' is ", first->dtype,
                     " (both go into moe's ", m.moe_name, ")");
            if (!first) first = t;
            used.insert(n);
        }
    }
    std::vector<std::string> unused;
    for (const auto& t : src.tensors())
        if (!used.count(t.name)) unused.push_back(t.name);
    std::sort(unused.begin(), unused.end());
    return unused;
}

DType hf_assemble(const HfTensorMap& m, const TensorSource& src, void* out, size_t out_bytes, int64_t first_expert,
                  int64_t n_experts) {
    MOE_ASSERT(!m.hf_names.empty());
    const TensorView& t0 = src.get(m.hf_names[0]);
    const DType dt = t0.dtype;
    const size_t es = dtype_size(dt);
    size_t numel = 1;
    for (int64_t s : m.shape) numel *= (size_t)s;
    // the experts taken (all of them unless a range is given): e0 .. e0 + ne of shape[0]
    const size_t E = (size_t)m.shape[0];
    const size_t e0 = n_experts < 0 ? 0 : (size_t)first_expert, ne = n_experts < 0 ? E : (size_t)n_experts;
    MOE_ASSERT(e0 + ne <= E && (n_experts < 0 || m.shape.size() == 3));
    numel = numel / E * ne;
    if (out_bytes != numel * es)
        fail("moe's ", m.moe_name, " ", shape_str(m.shape), " in ", dt, " needs ", numel * es, " bytes, not ", out_bytes);
    auto* o = static_cast<unsigned char*>(out);
    auto check = [&](const TensorView& t) {
        if (t.shape != m.hf_shape)
            fail("'", src.where(), "': tensor '", t.name, "' has shape ", t.shape_str(), ", not ", shape_str(m.hf_shape),
                 " (moe's ", m.moe_name, ")");
        if (t.dtype != dt)
            fail("'", src.where(), "': tensor '", t.name, "' is ", t.dtype, " but '", t0.name, "' is ", dt,
                 " (both go into moe's ", m.moe_name, ")");
    };
    switch (m.kind) {
        case HfMapKind::direct:
            check(t0);
            std::memcpy(o, static_cast<const unsigned char*>(t0.data) + e0 * (out_bytes / ne), out_bytes);
            break;
        case HfMapKind::stack_experts: {
            MOE_ASSERT(m.hf_names.size() == E);
            const size_t per = out_bytes / ne;
            for (size_t e = e0; e < e0 + ne; ++e) {
                const TensorView& t = src.get(m.hf_names[e]);
                check(t);
                std::memcpy(o + (e - e0) * per, t.data, per);
            }
            break;
        }
        case HfMapKind::split_gate_up: {
            check(t0);
            const size_t half = out_bytes / ne;  // one expert's F rows of C
            const auto* in = static_cast<const unsigned char*>(t0.data);
            for (size_t e = e0; e < e0 + ne; ++e)
                std::memcpy(o + (e - e0) * half, in + (2 * e + (size_t)m.half) * half, half);
            break;
        }
    }
    return dt;
}

}  // namespace moe
