#include "io/hf_model.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_model.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "kernels/bf16.h"
#include "kernels/ggml_quants.h"
#include "kernels/qmatmul.h"

namespace moe {

namespace fs = std::filesystem;

Config hf_to_moe_config(const HfConfig& hf, int64_t n_ctx, const std::string& where) {
    if (hf.rope_type != "default")
        fail(where, ": rope_scaling / rope_parameters type '", hf.rope_type,
             "' is not implemented in moe (only plain RoPE, rope_type 'default')");
    if (hf.o_bias && !hf.qkv_bias)
        fail(where, ": an output-projection bias without q/k/v biases is not supported");
    nlohmann::json m = {
        {"vocab_size", hf.vocab_size},
        {"n_layer", hf.num_hidden_layers},
        {"n_embd", hf.hidden_size},
        {"n_head", hf.num_attention_heads},
        {"n_head_kv", hf.num_key_value_heads},
        {"n_ctx", n_ctx > 0 ? n_ctx : std::min<int64_t>(hf.max_position_embeddings, kDefaultHfContext)},
        {"rope_theta", hf.rope_theta},
        {"norm_eps", hf.rms_norm_eps},
        {"tie_embeddings", hf.tie_word_embeddings},
        {"activation", "swiglu"},
    };
    if (hf.head_dim != hf.hidden_size / hf.num_attention_heads || hf.hidden_size % hf.num_attention_heads != 0)
        m["head_dim"] = hf.head_dim;
    if (hf.qk_norm != HfQkNorm::none) m["qk_norm"] = hf.qk_norm == HfQkNorm::per_head ? "head" : "full";
    if (hf.qkv_bias) m["attn_bias"] = hf.o_bias ? "qkvo" : "qkv";
    nlohmann::json ffn = nlohmann::json::array();
    bool any_dense = false;
    for (bool b : hf.layer_moe) {
        ffn.push_back(b ? "moe" : "dense");
        any_dense |= !b;
    }
    m["ffn"] = ffn;
    if (any_dense) m["n_ff"] = hf.intermediate_size;
    nlohmann::json j = {{"model", m}};
    if (hf.is_moe()) {
        j["model"]["n_expert"] = hf.num_experts;
        j["model"]["n_expert_used"] = hf.num_experts_per_tok;
        j["model"]["n_ff_exp"] = hf.expert_intermediate_size;
        if (hf.shared_expert_intermediate_size > 0) {
            j["model"]["n_ff_shexp"] = hf.shared_expert_intermediate_size;
            j["model"]["shexp_gate"] = hf.shared_expert_gate;
        }
        // evaluation routing as in transformers: plain top-K, no capacity, no noise
        j["router"] = {{"norm_topk", hf.norm_topk_prob}};
    }
    Config c = config_from_json(j, where);
    c.path = where;
    return c;
}

namespace {

void to_f32(float* dst, const void* src, DType dt, int64_t n, const std::string& what) {
    switch (dt) {
        case DType::f32: std::memcpy(dst, src, n * sizeof(float)); return;
        case DType::bf16: kernels::bf16_to_f32_n(dst, static_cast<const uint16_t*>(src), n); return;
        case DType::f16: {
            const auto* h = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = kernels::fp16_to_fp32(h[i]);  // exact
            return;
        }
        default: fail(what, " is ", dtype_name(dt), ": moe reads model weights in F32, BF16 or F16");
    }
}

}  // namespace

Checkpoint load_hf_model(const std::string& dir, const std::string& weight_type, int64_t n_ctx, ExpertRange experts) {
    const HfConfig hf = read_hf_config(dir);
    Checkpoint ck;
    ck.config = hf_to_moe_config(hf, n_ctx, (fs::path(dir) / "config.json").string());
    auto src = std::make_shared<SafetensorsSource>(SafetensorsSource::open(dir));
    const auto map = hf_tensor_map(hf, hf_detect_expert_layout(hf, *src));
    hf_check_source(map, *src);
    // the stored type of the matrices decides the default: a BF16 checkpoint runs in bf16
    DType stored = DType::f32;
    for (const auto& t : map)
        if (t.shape.size() >= 2 && t.moe_name != "tok_embd") {
            stored = src->get(t.hf_names[0]).dtype;
            break;
        }
    ck.weight_type = stored == DType::bf16 ? "bf16" : stored == DType::f16 ? "f16" : "fp32";
    const kernels::WType want = !weight_type.empty() ? kernels::parse_wtype(weight_type, "--dtype")
                                : stored == DType::bf16 ? kernels::WType::bf16 : kernels::WType::f32;
    ck.model = std::make_unique<Model>(ck.config.model, want, experts);
    Model& m = *ck.model;
    const ParamTable full(ck.config.model);  // the source's tensors: every expert
    std::vector<unsigned char> buf;  // one assembled tensor in the stored type
    std::vector<float> rows;         // a slice of it in fp32
    for (size_t i = 0; i < m.table().params().size(); ++i) {
        const ParamInfo& p = m.table().params()[i];  // (a range of experts: its rows of fp)
        const ParamInfo& fp = full.params()[i];
        MOE_ASSERT(fp.name == p.name);
        if (!p.trainable) continue;  // moe's own state (the balancing bias): not in HF files
        const auto it = std::find_if(map.begin(), map.end(), [&](const HfTensorMap& t) { return t.moe_name == p.name; });
        if (it == map.end()) fail("'", dir, "': moe's tensor '", p.name, "' has no Hugging Face source in the name map");
        const HfTensorMap& t = *it;
        if (t.shape != fp.shape)
            fail("'", dir, "': ", p.name, " maps to shape ", TensorView{"", DType::f32, t.shape}.shape_str(),
                 " but the config needs ", TensorView{"", DType::f32, fp.shape}.shape_str());
        const TensorView& first = src->get(t.hf_names[0]);
        const DType dt = first.dtype;
        const std::string what = "'" + src->where() + "': tensor '" + first.name + "'";
        float* dst = m.param_f32(p);
        const auto [r0, nr] = m.source_rows(p);  // a range of experts' rows, else every row
        const bool part = p.expert && m.experts_sharded();
        const int64_t e0 = part ? m.expert_range().first : 0, ne = part ? m.expert_range().count : -1;  // (-1: all)
        if (!dst && t.kind == HfMapKind::direct && want == kernels::WType::bf16 && dt == DType::bf16) {
            kernels::QMatrix v;  // in place: the mapping holds it
            v.type = kernels::WType::bf16, v.in = p.shape.back(), v.out = nr, v.bf16 = first.u16() + r0 * v.in;
            m.set_param_view(p, v, src);
            continue;
        }
        if (!dst && t.kind != HfMapKind::direct && want == kernels::WType::bf16 && dt == DType::bf16) {
            // the experts in place too: one view per expert tensor (or per half of a fused gate_up),
            // so loading reads nothing and a decode step touches only the chosen experts' pages
            const int64_t rows_e = t.shape[1], in = t.shape[2];
            const int64_t n_e = part ? ne : t.shape[0];
            std::vector<kernels::QMatrix> parts((size_t)n_e);
            for (int64_t e = e0; e < e0 + n_e; ++e) {
                kernels::QMatrix& v = parts[(size_t)(e - e0)];
                v.type = kernels::WType::bf16, v.out = rows_e, v.in = in;
                v.bf16 = t.kind == HfMapKind::stack_experts
                             ? src->get(t.hf_names[(size_t)e]).u16()
                             : first.u16() + ((e * 2 + t.half) * rows_e) * in;  // (E, 2F, C): gate rows, then up
            }
            m.set_param_expert_views(p, std::move(parts), src);
            continue;
        }
        const void* data = first.data;
        if (t.kind != HfMapKind::direct || part) {  // (a range of experts: those only)
            buf.resize((size_t)p.numel * dtype_size(dt));
            hf_assemble(t, *src, buf.data(), buf.size(), e0, ne);
            data = buf.data();
        }
        if (dst) {
            to_f32(dst, data, dt, p.numel, what);
            continue;
        }
        // typed, converted a slice of rows at a time
        kernels::QStore& st = m.param_store(p);
        const int64_t in = st.in, step = std::max<int64_t>(1, (1 << 18) / in);
        rows.resize(std::min(step, st.out) * in);
        for (int64_t r0 = 0; r0 < st.out; r0 += step) {
            const int64_t n = std::min(step, st.out - r0);
            to_f32(rows.data(), static_cast<const unsigned char*>(data) + (size_t)(r0 * in) * dtype_size(dt), dt, n * in,
                   what);
            st.set_rows(r0, n, rows.data());
        }
    }
    const std::string tok_json = (fs::path(dir) / "tokenizer.json").string();
    std::error_code ec;
    if (fs::exists(tok_json, ec)) {
        const std::string tok_cfg = (fs::path(dir) / "tokenizer_config.json").string();
        const std::string gen_cfg = (fs::path(dir) / "generation_config.json").string();
        ck.tokenizer = Tokenizer::from_hf_files(tok_json, fs::exists(tok_cfg, ec) ? tok_cfg : "",
                                                fs::exists(gen_cfg, ec) ? gen_cfg : "");
        // transformers >= 4.43 saves the template as chat_template.jinja, which wins over the
        // tokenizer_config.json entry (as in transformers' loading)
        const fs::path jinja = fs::path(dir) / "chat_template.jinja";
        if (fs::exists(jinja, ec)) {
            const auto m = MappedFile::open(jinja.string());
            ck.chat_template.assign(reinterpret_cast<const char*>(m->data()), m->size());
        }
    } else {
        ck.tokenizer = Tokenizer::byte_level();  // ids only (logits, bench); text tools need tokenizer.json
        ck.tokenizer_missing = true;
    }
    if (!ck.tokenizer_missing && ck.tokenizer.vocab_size() > ck.config.model.vocab_size)
        fail("'", tok_json, "' has ", ck.tokenizer.vocab_size(), " tokens but config.json's vocab_size is ",
             ck.config.model.vocab_size);
    return ck;
}

ModelFormat detect_model_format(const std::string& path) {
    std::error_code ec;
    if (!fs::exists(path, ec))
        fail("model path '", path, "' does not exist", ec ? " (" + ec.message() + ")" : "",
             ": expected a moe checkpoint directory, a Hugging Face model directory or a GGUF file");
    const fs::path p(path);
    if (fs::is_directory(p, ec)) {
        if (fs::exists(p / "checkpoint.bin", ec) || fs::exists(p / "manifest.json", ec))
            return ModelFormat::moe_checkpoint;  // one file, or a sharded set (io/checkpoint.h)
        if (fs::exists(p / "config.json", ec)) return ModelFormat::hugging_face;
        fail("'", path, "' is neither a moe checkpoint (no checkpoint.bin) nor a Hugging Face model directory (no config.json)");
    }
    if (p.filename() == "checkpoint.bin" || p.filename() == "manifest.json") return ModelFormat::moe_checkpoint;
    if (is_gguf_file(path)) return ModelFormat::gguf;
    fail("'", path, "' is a file but not a GGUF file (no 'GGUF' magic): give a .gguf file or the model's directory (a moe "
                    "checkpoint or a Hugging Face model)");
}

Checkpoint load_model(const std::string& path, const std::string& weight_type, int64_t n_ctx, ExpertRange experts) {
    const fs::path p(path);
    switch (detect_model_format(path)) {
        case ModelFormat::moe_checkpoint:
            return load_checkpoint(
                p.filename() == "checkpoint.bin" || p.filename() == "manifest.json" ? p.parent_path().string() : path,
                weight_type, true, experts);
        case ModelFormat::hugging_face:
            return load_hf_model(path, weight_type, n_ctx, experts);
        case ModelFormat::gguf:
            return load_gguf_model(path, weight_type, n_ctx, experts);
    }
    fail("unreachable");
}

Config load_model_config(const std::string& path, int64_t n_ctx) {
    const fs::path p(path);
    switch (detect_model_format(path)) {
        case ModelFormat::moe_checkpoint:
            return checkpoint_config(
                p.filename() == "checkpoint.bin" || p.filename() == "manifest.json" ? p.parent_path().string() : path);
        case ModelFormat::hugging_face:
            return hf_to_moe_config(read_hf_config(path), n_ctx, (fs::path(path) / "config.json").string());
        case ModelFormat::gguf:
            return gguf_model_config(path, n_ctx);
    }
    fail("unreachable");
}

}  // namespace moe
