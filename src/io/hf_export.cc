#include "io/hf_export.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "io/tensor_file.h"
#include "kernels/bf16.h"
#include "kernels/ggml_quants.h"
#include "kernels/qmatmul.h"
#include "model/params.h"

namespace moe {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// ------------------------------------------------------------------ config

HfConfig hf_config_from_moe(const ModelConfig& m, const std::string& where, std::vector<std::string>& notes) {
    const RouterConfig& r = m.router;
    const bool moe = m.any_moe();
    bool all_moe = true;
    for (bool b : m.layer_moe) all_moe &= b;
    const char* bias = m.attn_bias_qkv ? (m.attn_bias_o ? "qkvo" : "qkv") : "none";
    if (m.activation != ops::Activation::swiglu)
        fail(where, ": field 'model.activation' is \"relu\": the Hugging Face families moe exports (llama, qwen2, "
                    "qwen3, mixtral, qwen2_moe, qwen3_moe, olmoe) all use SiLU-gated (SwiGLU) MLPs");
    HfFamily fam;
    if (!moe) {
        if (m.qk_norm && !m.qk_norm_head)
            fail(where, ": field 'model.qk_norm' is \"full\" (RMSNorm over the whole q / k projection) in a dense "
                        "model: only olmoe has it, and olmoe's layers are all MoE");
        if (m.qk_norm) fam = HfFamily::qwen3;
        else if (m.attn_bias_qkv && !m.attn_bias_o) fam = HfFamily::qwen2;
        else fam = HfFamily::llama;
    } else {
        if (m.qk_norm && !m.qk_norm_head) fam = HfFamily::olmoe;
        else if (m.qk_norm) fam = HfFamily::qwen3_moe;
        else if (m.n_ff_shexp > 0) fam = HfFamily::qwen2_moe;
        else fam = HfFamily::mixtral;
        const char* name = hf_family_name(fam);
        if (m.n_ff_shexp > 0 && fam != HfFamily::qwen2_moe)
            fail(where, ": field 'model.n_ff_shexp' is ", m.n_ff_shexp, " with 'model.qk_norm' \"",
                 m.qk_norm_head ? "head" : "full", "\": ", name,
                 " has no shared expert (qwen2_moe, the family with one, has no qk_norm)");
        if (fam == HfFamily::qwen2_moe && !m.shexp_gate)
            fail(where, ": field 'model.shexp_gate' is false: qwen2_moe's shared expert always has its sigmoid gate");
        if (fam == HfFamily::mixtral) {
            const std::string why = " (mixtral, the family of an MoE model without qk_norm or a shared expert";
            if (!all_moe)
                fail(where, ": field 'model.ffn' has dense layers", why,
                     ", has MoE in every layer; qwen2_moe / qwen3_moe, which allow dense layers, need a shared "
                     "expert / qk_norm \"head\")");
            if (!r.norm_topk)
                fail(where, ": field 'router.norm_topk' is false", why,
                     ", always renormalises the top-K weights; qwen2_moe / qwen3_moe / olmoe, which need not, need "
                     "a shared expert / qk_norm)");
            if (m.attn_bias_qkv)
                fail(where, ": field 'model.attn_bias' is \"", bias, "\"", why, ", has no attention biases)");
        }
        if (fam == HfFamily::olmoe) {
            if (!all_moe) fail(where, ": field 'model.ffn' has dense layers: olmoe has MoE in every layer");
            if (m.head_dim() * m.n_head != m.n_embd)
                fail(where, ": field 'model.head_dim' is ", m.head_dim(), " with ", m.n_head, " heads and n_embd ",
                     m.n_embd, ": olmoe needs n_head * head_dim = n_embd");
        }
        // routing: what forward_cached computes must be plain top-K over the router logits
        if (r.noisy_gating && r.noise_at_eval)
            fail(where, ": field 'router.noise_at_eval' is true: moe adds router noise at inference, which no "
                        "Hugging Face family does");
        if (r.eval_capacity_factor > 0)
            fail(where, ": field 'router.eval_capacity_factor' is ", r.eval_capacity_factor,
                 ": moe limits each expert's tokens at inference (overflow ",
                 r.overflow == OverflowPolicy::drop ? "dropped" : "rerouted",
                 "), which no Hugging Face family does");
        if (r.routed_scale != 1.0)
            fail(where, ": field 'router.routed_scale' is ", r.routed_scale,
                 ": the Hugging Face families moe exports do not scale the routed experts' sum");
        if (r.noisy_gating)
            notes.push_back("router.noisy_gating: the noise weights (ffn_gate_inp_noise) are dropped; moe uses them "
                            "only in training, inference routes on the plain router logits as transformers does");
        if (r.capacity_factor > 0)
            notes.push_back(str("router.capacity_factor ", r.capacity_factor,
                                " applies in training only (inference has no capacity limit): not exported"));
    }
    const char* name = hf_family_name(fam);
    // attention biases per family: llama / qwen3* / olmoe attention_bias = q, k, v and o; qwen2 /
    // qwen2_moe q, k, v only; mixtral none (checked above)
    const bool qkvo_family = fam == HfFamily::llama || fam == HfFamily::qwen3 || fam == HfFamily::qwen3_moe ||
                             fam == HfFamily::olmoe;
    if (qkvo_family && m.attn_bias_qkv != m.attn_bias_o)
        fail(where, ": field 'model.attn_bias' is \"", bias, "\": ", name,
             "'s attention_bias puts biases on all of q, k, v and o (\"qkvo\"); only llama-like models without "
             "qk_norm export q/k/v-only biases (as qwen2 / qwen2_moe)");
    if (fam == HfFamily::qwen2_moe && m.attn_bias_o)
        fail(where, ": field 'model.attn_bias' is \"qkvo\": qwen2_moe (a shared expert) has biases on q, k, v only");

    HfConfig h;
    h.family = fam;
    h.model_type = name;
    h.dtype = "float32";
    h.vocab_size = m.vocab_size;
    h.hidden_size = m.n_embd;
    h.num_hidden_layers = m.n_layer;
    h.num_attention_heads = m.n_head;
    h.num_key_value_heads = m.n_head_kv;
    h.head_dim = m.head_dim();
    h.max_position_embeddings = m.n_ctx;
    h.rms_norm_eps = m.norm_eps;
    h.tie_word_embeddings = m.tie_embeddings;
    h.rope_type = "default";
    h.rope_theta = m.rope_theta;
    h.qkv_bias = m.attn_bias_qkv;
    h.o_bias = m.attn_bias_o;
    h.qk_norm = !m.qk_norm ? HfQkNorm::none : m.qk_norm_head ? HfQkNorm::per_head : HfQkNorm::full;
    h.layer_moe = m.layer_moe;
    if (moe) {
        h.num_experts = m.n_expert;
        h.num_experts_per_tok = m.n_expert_used;
        h.norm_topk_prob = r.norm_topk;
        h.expert_intermediate_size = m.n_ff_exp;
        h.shared_expert_intermediate_size = m.n_ff_shexp;
        h.shared_expert_gate = m.n_ff_shexp > 0;
        h.decoder_sparse_step = 1;
        for (int64_t l = 0; l < m.n_layer; ++l)
            if (!m.layer_moe[l]) h.mlp_only_layers.push_back(l);
        // the dense layers' width; mixtral and olmoe (MoE everywhere) name the experts' width so
        h.intermediate_size = m.n_ff > 0 && !all_moe ? m.n_ff : m.n_ff_exp;
        if (r.bias_balance)
            notes.push_back("router.bias_balance: the balancing bias (ffn_gate_bias) is all zero and is dropped");
    } else {
        h.intermediate_size = m.n_ff;
    }
    return h;
}

static const char* hf_architecture(HfFamily f) {
    switch (f) {
        case HfFamily::mixtral: return "MixtralForCausalLM";
        case HfFamily::qwen2_moe: return "Qwen2MoeForCausalLM";
        case HfFamily::qwen3_moe: return "Qwen3MoeForCausalLM";
        case HfFamily::olmoe: return "OlmoeForCausalLM";
        case HfFamily::llama: return "LlamaForCausalLM";
        case HfFamily::mistral: return "MistralForCausalLM";
        case HfFamily::qwen2: return "Qwen2ForCausalLM";
        case HfFamily::qwen3: return "Qwen3ForCausalLM";
    }
    return "?";
}

ojson hf_config_to_json(const HfConfig& c) {
    MOE_ASSERT(c.rope_type == "default");  // moe computes (and so exports) plain RoPE only
    ojson j;
    j["architectures"] = {hf_architecture(c.family)};
    j["model_type"] = hf_family_name(c.family);
    j["dtype"] = c.dtype.empty() ? "float32" : c.dtype;
    j["vocab_size"] = c.vocab_size;
    j["hidden_size"] = c.hidden_size;
    j["intermediate_size"] = c.intermediate_size;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["head_dim"] = c.head_dim;
    j["hidden_act"] = "silu";
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["rms_norm_eps"] = c.rms_norm_eps;
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", c.rope_theta}};
    j["rope_theta"] = c.rope_theta;  // transformers 4 reads this one
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["bos_token_id"] = c.bos_token_id ? ojson(*c.bos_token_id) : ojson(nullptr);
    j["eos_token_id"] = c.eos_token_ids.empty()       ? ojson(nullptr)
                        : c.eos_token_ids.size() == 1 ? ojson(c.eos_token_ids[0])
                                                      : ojson(c.eos_token_ids);
    j["pad_token_id"] = c.pad_token_id ? ojson(*c.pad_token_id) : ojson(nullptr);
    j["attention_dropout"] = 0.0;
    j["use_cache"] = true;
    switch (c.family) {
        case HfFamily::llama:
            MOE_ASSERT(c.qkv_bias == c.o_bias && c.qk_norm == HfQkNorm::none);
            j["attention_bias"] = c.o_bias;
            j["mlp_bias"] = false;
            break;
        case HfFamily::mistral:
            MOE_ASSERT(!c.qkv_bias && !c.o_bias && c.qk_norm == HfQkNorm::none);
            j["sliding_window"] = nullptr;
            break;
        case HfFamily::qwen2:
            MOE_ASSERT(c.qkv_bias && !c.o_bias && c.qk_norm == HfQkNorm::none);
            j["use_sliding_window"] = false;
            j["sliding_window"] = nullptr;
            break;
        case HfFamily::qwen3:
            MOE_ASSERT(c.qkv_bias == c.o_bias && c.qk_norm == HfQkNorm::per_head);
            j["attention_bias"] = c.o_bias;
            j["use_sliding_window"] = false;
            j["sliding_window"] = nullptr;
            break;
        case HfFamily::mixtral:
            MOE_ASSERT(!c.qkv_bias && !c.o_bias && c.qk_norm == HfQkNorm::none && c.norm_topk_prob);
            MOE_ASSERT(c.intermediate_size == c.expert_intermediate_size);
            j["num_local_experts"] = c.num_experts;
            j["num_experts_per_tok"] = c.num_experts_per_tok;
            j["sliding_window"] = nullptr;
            j["router_jitter_noise"] = 0.0;
            j["output_router_logits"] = false;
            break;
        case HfFamily::qwen2_moe:
        case HfFamily::qwen3_moe:
            j["num_experts"] = c.num_experts;
            j["num_experts_per_tok"] = c.num_experts_per_tok;
            j["moe_intermediate_size"] = c.expert_intermediate_size;
            if (c.family == HfFamily::qwen2_moe) {
                MOE_ASSERT(!c.o_bias && c.qk_norm == HfQkNorm::none && c.shared_expert_intermediate_size > 0);
                j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
                j["qkv_bias"] = c.qkv_bias;
            } else {
                MOE_ASSERT(c.qkv_bias == c.o_bias && c.qk_norm == HfQkNorm::per_head &&
                           c.shared_expert_intermediate_size == 0);
                j["attention_bias"] = c.o_bias;
            }
            j["norm_topk_prob"] = c.norm_topk_prob;
            j["decoder_sparse_step"] = c.decoder_sparse_step;
            j["mlp_only_layers"] = c.mlp_only_layers;
            j["use_sliding_window"] = false;
            j["sliding_window"] = nullptr;
            j["output_router_logits"] = false;
            break;
        case HfFamily::olmoe:
            MOE_ASSERT(c.qkv_bias == c.o_bias && c.qk_norm == HfQkNorm::full);
            MOE_ASSERT(c.intermediate_size == c.expert_intermediate_size);
            j["num_experts"] = c.num_experts;
            j["num_experts_per_tok"] = c.num_experts_per_tok;
            j["norm_topk_prob"] = c.norm_topk_prob;
            j["attention_bias"] = c.o_bias;
            j["clip_qkv"] = nullptr;
            j["output_router_logits"] = false;
            break;
    }
    return j;
}

uint64_t parse_byte_size(const std::string& s, const std::string& what) {
    size_t i = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    const std::string num = s.substr(0, i), unit = s.substr(i);
    static const std::map<std::string, uint64_t> units = {
        {"", 1},           {"B", 1},          {"KB", 1000},           {"MB", 1000000},
        {"GB", 1000000000}, {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30}};
    const auto it = units.find(unit);
    if (num.empty() || num.size() > 12 || it == units.end())
        fail(what, " must be a size such as 5GB, 500MB, 200KB, 2GiB or a number of bytes, got \"", s, "\"");
    const uint64_t v = std::stoull(num) * it->second;
    if (v == 0) fail(what, " must be > 0, got \"", s, "\"");
    return v;
}

// ------------------------------------------------------------------ tensors

namespace {

// One moe tensor in the dtype it is written in, viewed (when already in that type) or converted.
class TensorBytes {
public:
    TensorBytes(Model& m, std::vector<std::string>& warnings) : m_(m), warnings_(warnings) {}

    const unsigned char* get(const ParamInfo& p, DType dt) {
        if (const float* f = m_.param_f32(p)) {
            if (dt == DType::f32) return reinterpret_cast<const unsigned char*>(f);
            return from_f32(p, f, dt);
        }
        kernels::QMatrix q = m_.param_typed(p);
        MOE_ASSERT(q.out * q.in == p.numel);
        if (q.parts && q.type == kernels::WType::bf16) {
            // experts viewed where a Hugging Face file holds them (one tensor each): made contiguous
            std::vector<uint16_t> all((size_t)p.numel);
            for (int64_t r0 = 0; r0 < q.out; r0 += q.part_rows) {
                const kernels::QMatrix part = q.rows(r0, q.part_rows);
                std::copy(part.bf16, part.bf16 + part.out * part.in, all.data() + r0 * q.in);
            }
            owned_.emplace_back(reinterpret_cast<const unsigned char*>(all.data()),
                                reinterpret_cast<const unsigned char*>(all.data() + all.size()));
            q.parts = nullptr;
            q.bf16 = reinterpret_cast<const uint16_t*>(owned_.back().data());
        }
        if (q.type == kernels::WType::bf16) {
            if (dt == DType::bf16) return reinterpret_cast<const unsigned char*>(q.bf16);
            std::vector<float>& w = scratch(p.numel);
            kernels::bf16_to_f32_n(w.data(), q.bf16, p.numel);
            return dt == DType::f32 ? keep(w) : from_f32(p, w.data(), dt);
        }
        MOE_ASSERT(q.type == kernels::WType::q8);
        std::vector<float>& w = scratch(p.numel);
        for (int64_t r = 0; r < q.out; ++r) kernels::dequantize_row(w.data() + r * q.in, q, r);
        return dt == DType::f32 ? keep(w) : from_f32(p, w.data(), dt);
    }

private:
    std::vector<float>& scratch(int64_t n) {
        tmp_.assign((size_t)n, 0.f);
        return tmp_;
    }
    const unsigned char* keep(std::vector<float>& w) {
        owned_.emplace_back(reinterpret_cast<const unsigned char*>(w.data()),
                            reinterpret_cast<const unsigned char*>(w.data() + w.size()));
        return owned_.back().data();
    }
    const unsigned char* from_f32(const ParamInfo& p, const float* f, DType dt) {
        std::vector<uint16_t> h((size_t)p.numel);
        int64_t inexact = 0;
        for (int64_t i = 0; i < p.numel; ++i) {
            if (dt == DType::bf16) {
                h[i] = kernels::f32_to_bf16(f[i]);
                inexact += kernels::bf16_to_f32(h[i]) != f[i] && !std::isnan(f[i]);
            } else {
                MOE_ASSERT(dt == DType::f16);
                h[i] = kernels::fp32_to_fp16(f[i]);  // round to nearest even
                inexact += kernels::fp16_to_fp32(h[i]) != f[i] && !std::isnan(f[i]);
            }
        }
        if (inexact)
            warnings_.push_back(str(p.name, ": ", inexact, " of ", p.numel, " values rounded to ", dtype_name(dt)));
        owned_.emplace_back(reinterpret_cast<const unsigned char*>(h.data()),
                            reinterpret_cast<const unsigned char*>(h.data() + h.size()));
        return owned_.back().data();
    }
    Model& m_;
    std::vector<std::string>& warnings_;
    std::vector<float> tmp_;
    std::deque<std::vector<unsigned char>> owned_;  // converted tensors, alive until the write is done
};

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("cannot read '", path, "': ", std::strerror(errno));
    std::stringstream ss;
    ss << in.rdbuf();
    if (in.bad()) fail("cannot read '", path, "'");
    return ss.str();
}

// Files a Hugging Face model directory may have beside the weights and config: copied from a
// Hugging Face source, replaced or removed by --force.
const char* const kTokenizerFiles[] = {"tokenizer.json",       "tokenizer_config.json", "special_tokens_map.json",
                                       "added_tokens.json",    "chat_template.jinja",   "chat_template.json",
                                       "tokenizer.model",      "vocab.json",            "merges.txt"};

bool is_weight_file(const std::string& name) {
    const auto ends = [&](const std::string& s) {
        return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    return ends(".safetensors") || name == "model.safetensors.index.json";
}

}  // namespace

void check_export_dir(const std::string& out, const std::string& source, bool force) {
    std::error_code ec;
    if (fs::exists(out, ec) && fs::exists(source, ec) && fs::equivalent(out, source, ec))
        fail("export --out '", out, "' is the model being exported: write to another directory");
    if (fs::is_directory(out, ec) && !force) {
        size_t n = 0;
        std::string first;
        for (const auto& e : fs::directory_iterator(out, ec)) {
            if (!n) first = e.path().filename().string();
            ++n;
        }
        if (ec) fail("cannot list output directory '", out, "': ", ec.message());
        if (n)
            fail("export --out '", out, "' is not empty (", n, n == 1 ? " entry: '" : " entries, e.g. '", first,
                 "'): give a new or empty directory, or --force to replace the model files in it");
    }
    if (fs::exists(out, ec) && !fs::is_directory(out, ec))
        fail("export --out '", out, "' exists and is not a directory");
}

// ------------------------------------------------------------------ export

HfExportResult export_hf(Checkpoint& ck, const std::string& source, ModelFormat format, const std::string& out,
                         const HfExportOptions& opt) {
    Model& model = *ck.model;
    const ModelConfig& mc = model.config();
    const bool from_hf = format == ModelFormat::hugging_face;
    HfExportResult res;
    std::vector<std::string>& warn = res.warnings;
    HfConfig hf;
    std::map<std::string, DType> src_dtype;  // moe tensor -> dtype of its Hugging Face source tensor
    if (from_hf) {
        hf = read_hf_config(source);
        const SafetensorsSource src = SafetensorsSource::open(source);
        const auto src_map = hf_tensor_map(hf, hf_detect_expert_layout(hf, src));
        const std::vector<std::string> unused = hf_check_source(src_map, src);
        for (const auto& t : src_map) src_dtype[t.moe_name] = src.get(t.hf_names[0]).dtype;
        if (!unused.empty()) {
            std::string names;
            for (size_t i = 0; i < unused.size() && i < 4; ++i) names += (i ? ", " : "") + unused[i];
            warn.push_back(str(unused.size(), " tensor(s) of '", source, "' that the model does not use are not written: ",
                               names, unused.size() > 4 ? ", ..." : ""));
        }
    } else {
        hf = hf_config_from_moe(mc, "checkpoint '" + source + "'", warn);
        if (mc.router.bias_balance) {  // a non-zero selection bias changes which experts are chosen
            for (const auto& p : model.table().params()) {
                if (p.name.find(".ffn_gate_bias") == std::string::npos) continue;
                const float* b = model.param_f32(p);
                for (int64_t i = 0; i < p.numel; ++i)
                    if (b[i] != 0)
                        fail("checkpoint '", source, "': field 'router.bias_balance' is true and ", p.name, "[", i,
                             "] = ", b[i], ": the balancing bias changes which experts inference picks, which no "
                             "Hugging Face family does");
            }
        }
        if (ck.weight_type == "int8")
            warn.push_back("the int8 (Q8_0) matrices are written dequantized to F32: transformers multiplies them in "
                           "fp32, moe's int8 path also rounds the activations to int8, so logits differ slightly");
        hf.dtype = ck.weight_type == "bf16" ? "bfloat16" : "float32";
        if (const int32_t b = ck.tokenizer.bos_id(); b >= 0) hf.bos_token_id = b;
        for (int32_t e : ck.tokenizer.eos_ids()) hf.eos_token_ids.push_back(e);
    }
    res.family = hf.model_type;
    res.dtype = hf.dtype.empty() ? "float32" : hf.dtype;
    check_export_dir(out, source, opt.force);
    ensure_writable_dir(out);

    // the tensors, in the names and per-expert layout of save_pretrained
    const auto map = hf_tensor_map(hf, HfExpertLayout::per_expert);
    TensorBytes bytes(model, warn);
    std::vector<TensorView> views;
    std::set<std::string> written;
    for (const HfTensorMap& t : map) {
        const ParamInfo* p = model.table().find(t.moe_name);
        MOE_ASSERT(p && p->shape == t.shape);  // hf_config_from_moe / the loader agree with the table
        DType dt = DType::f32;
        if (from_hf) {
            const auto it = src_dtype.find(t.moe_name);
            MOE_ASSERT(it != src_dtype.end());
            dt = it->second;
        } else if (ck.weight_type == "bf16" && typed_at_inference(*p)) {
            dt = DType::bf16;
        }
        const unsigned char* data = bytes.get(*p, dt);
        const size_t es = dtype_size(dt), per = (size_t)p->numel * es / t.hf_names.size();
        for (size_t i = 0; i < t.hf_names.size(); ++i) {  // stack_experts: expert i's slice
            TensorView v;
            v.name = t.hf_names[i];
            v.dtype = dt;
            v.shape = t.hf_shape;
            v.data = data + i * per;
            v.nbytes = per;
            views.push_back(std::move(v));
        }
        written.insert(t.moe_name);
    }
    for (const auto& p : model.table().params()) {
        if (written.count(p.name)) continue;
        // what the map leaves out: the noise weights and the balancing bias (checked above)
        const bool dropped = p.name.find("ffn_gate_inp_noise") != std::string::npos ||
                             p.name.find("ffn_gate_bias") != std::string::npos;
        MOE_ASSERT(dropped);
    }
    for (const auto& v : views) res.tensor_bytes += v.nbytes;
    res.tensors = (int64_t)views.size();
    const auto on_file = [&](const std::string& path, uint64_t nb, uint64_t done, uint64_t total) {
        if (!opt.progress) return;
        if (nb == 0) return opt.progress("wrote " + path);  // the index
        char buf[128];
        std::snprintf(buf, sizeof buf, " (%.1f MB; %.0f%% of %.1f MB)", nb / 1e6,
                      100.0 * (double)done / (double)std::max<uint64_t>(total, 1), total / 1e6);
        opt.progress("wrote " + path + buf);
    };
    for (const auto& f : write_safetensors_sharded(out, views, opt.max_shard_bytes, {{"format", "pt"}}, on_file))
        res.files.push_back(f);

    auto put = [&](const std::string& name, const std::string& data) {
        const std::string p = (fs::path(out) / name).string();
        write_file_atomic(p, data);
        res.files.push_back(p);
        if (opt.progress) opt.progress("wrote " + p);
    };
    if (from_hf) {
        std::error_code ec;
        for (const char* f : kTokenizerFiles)
            if (fs::is_regular_file(fs::path(source) / f, ec)) put(f, slurp((fs::path(source) / f).string()));
        if (ck.tokenizer_missing) warn.push_back("'" + source + "' has no tokenizer.json: the export has none either");
        const fs::path gen = fs::path(source) / "generation_config.json";
        if (fs::is_regular_file(gen, ec)) put("generation_config.json", slurp(gen.string()));
        put("config.json", slurp((fs::path(source) / "config.json").string()));
    } else {
        put("tokenizer.json", ck.tokenizer.to_hf_tokenizer_json().dump() + "\n");
        ojson tc;
        if (ck.tokenizer.hf() && !ck.tokenizer.hf()->tokenizer_config().is_null()) {
            tc = ck.tokenizer.hf()->tokenizer_config();
        } else {
            tc["tokenizer_class"] = "PreTrainedTokenizerFast";
            tc["model_max_length"] = mc.n_ctx;
            tc["clean_up_tokenization_spaces"] = false;
        }
        put("tokenizer_config.json", tc.dump(2) + "\n");
        ojson gen = ojson::object();
        if (hf.bos_token_id) gen["bos_token_id"] = *hf.bos_token_id;
        if (!hf.eos_token_ids.empty())
            gen["eos_token_id"] = hf.eos_token_ids.size() == 1 ? ojson(hf.eos_token_ids[0]) : ojson(hf.eos_token_ids);
        put("generation_config.json", gen.dump(2) + "\n");
        const ojson cj = hf_config_to_json(hf);
        // what the loader makes of the file is the model being exported (a bug otherwise)
        const HfConfig back = parse_hf_config(nlohmann::json::parse(cj.dump()), "exported config.json");
        const Config again = hf_to_moe_config(back, mc.n_ctx, "exported config.json");
        const ParamTable ta(again.model), tb(mc);
        for (const auto& p : ta.params()) {
            const ParamInfo* q = tb.find(p.name);
            MOE_ASSERT(q && q->shape == p.shape);
        }
        MOE_ASSERT(again.model.rope_theta == mc.rope_theta && again.model.norm_eps == mc.norm_eps &&
                   again.model.tie_embeddings == mc.tie_embeddings && again.model.qk_norm_head == mc.qk_norm_head &&
                   again.model.layer_moe == mc.layer_moe &&
                   (!mc.any_moe() || (again.model.router.norm_topk == mc.router.norm_topk &&
                                      again.model.n_expert_used == mc.n_expert_used)));
        put("config.json", cj.dump(2) + "\n");
    }

    if (opt.force) {  // leftovers of a model written there before: stale shards, an old index, tokenizer files
        std::set<std::string> mine;
        for (const auto& f : res.files) mine.insert(fs::path(f).filename().string());
        std::error_code ec;
        std::vector<fs::path> stale;
        for (const auto& e : fs::directory_iterator(out, ec)) {
            const std::string n = e.path().filename().string();
            if (mine.count(n) || !e.is_regular_file(ec)) continue;
            bool tok = false;
            for (const char* f : kTokenizerFiles) tok |= n == f;
            if (tok || is_weight_file(n) || n == "generation_config.json") stale.push_back(e.path());
        }
        for (const auto& p : stale) {
            if (!fs::remove(p, ec) && ec) fail("cannot remove stale file '", p.string(), "': ", ec.message());
            if (opt.progress) opt.progress("removed stale " + p.string());
        }
    }
    return res;
}

}  // namespace moe
