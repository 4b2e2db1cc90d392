#include "io/hf_config.h"

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "io/tensor_source.h"

namespace moe {

using nlohmann::json;

namespace {

// The defaults of transformers 5.23's config classes (models/<family>/configuration_<family>.py)
// for the fields moe reads; a config.json without a field gets what transformers would give it.
struct FamilyDefaults {
    HfFamily family;
    const char* name;
    int64_t vocab, hidden, inter, layers, heads;
    int64_t kv_heads;  // 0: = heads
    int64_t head_dim;  // 0: hidden / heads
    int64_t max_pos;
    double eps, theta;
    std::optional<int64_t> bos, eos, pad;
    int64_t experts, experts_per_tok, moe_inter, shared_inter;
    std::optional<int64_t> sliding_window;  // class default (used only when sliding is switched on)
    double aux_coef;
};

const FamilyDefaults kFamilies[] = {
    {HfFamily::mixtral, "mixtral", 32000, 4096, 14336, 32, 32, 8, 0, 4096 * 32, 1e-5, 1e6, 1, 2, {}, 8, 2, 0, 0, {}, 0.001},
    {HfFamily::qwen2_moe, "qwen2_moe", 151936, 2048, 5632, 24, 16, 16, 0, 32768, 1e-6, 1e4, {}, {}, {}, 60, 4, 1408, 5632, 4096, 0.001},
    {HfFamily::qwen3_moe, "qwen3_moe", 151936, 2048, 6144, 24, 32, 4, 0, 32768, 1e-6, 1e4, {}, {}, {}, 128, 8, 768, 0, 4096, 0.001},
    {HfFamily::olmoe, "olmoe", 50304, 2048, 2048, 16, 16, 0, 0, 4096, 1e-5, 1e4, {}, 50279, 1, 64, 8, 0, 0, {}, 0.01},
    {HfFamily::llama, "llama", 32000, 4096, 11008, 32, 32, 0, 0, 2048, 1e-6, 1e4, 1, 2, {}, 0, 0, 0, 0, {}, 0},
    {HfFamily::mistral, "mistral", 32000, 4096, 14336, 32, 32, 8, 0, 4096 * 32, 1e-6, 1e4, 1, 2, {}, 0, 0, 0, 0, 4096, 0},
    {HfFamily::qwen2, "qwen2", 151936, 4096, 22016, 32, 32, 32, 0, 32768, 1e-6, 1e4, {}, {}, {}, 0, 0, 0, 0, 4096, 0},
    {HfFamily::qwen3, "qwen3", 151936, 4096, 22016, 32, 32, 32, 128, 32768, 1e-6, 1e4, {}, {}, {}, 0, 0, 0, 0, 4096, 0},
};

std::string supported_families() {
    std::string r;
    for (const auto& f : kFamilies) {
        if (!r.empty()) r += ", ";
        r += f.name;
    }
    return r;
}

// Bounds on what a config may declare: beyond them it is damaged, not a model (and sizes computed
// from the fields, like H * D, could overflow).
constexpr int64_t kMaxDim = int64_t(1) << 31;
constexpr int64_t kMaxLayers = 1 << 16;

// Typed access to one JSON object with messages naming the file and the field.
struct Fields {
    const json& j;
    const std::string& where;

    const json* get(const char* key) const {
        auto it = j.find(key);
        return it == j.end() || it->is_null() ? nullptr : &*it;
    }
    bool has(const char* key) const { return j.contains(key); }
    [[noreturn]] void bad(const char* key, const json& v, const char* want) const {
        fail("'", where, "': field '", key, "' = ", v.dump(), " is not ", want);
    }
    std::optional<int64_t> opt_int(const char* key) const {
        const json* v = get(key);
        if (!v) return std::nullopt;
        if (!v->is_number_integer()) bad(key, *v, "an integer");
        return v->get<int64_t>();
    }
    int64_t int_or(const char* key, int64_t dflt) const { return opt_int(key).value_or(dflt); }
    // a dimension: positive, and small enough that a product of two stays far inside int64
    int64_t dim(const char* key, int64_t dflt, int64_t max = kMaxDim) const {
        const int64_t v = int_or(key, dflt);
        if (v <= 0) fail("'", where, "': field '", key, "' = ", v, " must be positive");
        if (v > max) fail("'", where, "': field '", key, "' = ", v, " is absurdly large (more than ", max, ")");
        return v;
    }
    std::optional<double> opt_num(const char* key) const {
        const json* v = get(key);
        if (!v) return std::nullopt;
        if (!v->is_number()) bad(key, *v, "a number");
        return v->get<double>();
    }
    double num_or(const char* key, double dflt) const { return opt_num(key).value_or(dflt); }
    std::optional<bool> opt_bool(const char* key) const {
        const json* v = get(key);
        if (!v) return std::nullopt;
        if (!v->is_boolean()) bad(key, *v, "true or false");
        return v->get<bool>();
    }
    bool bool_or(const char* key, bool dflt) const { return opt_bool(key).value_or(dflt); }
    std::optional<std::string> opt_str(const char* key) const {
        const json* v = get(key);
        if (!v) return std::nullopt;
        if (!v->is_string()) bad(key, *v, "a string");
        return v->get<std::string>();
    }
    // null, one integer or a list of integers (eos_token_id)
    std::vector<int64_t> ids(const char* key, std::optional<int64_t> dflt) const {
        std::vector<int64_t> r;
        if (!has(key)) {
            if (dflt) r.push_back(*dflt);
            return r;
        }
        const json* v = get(key);
        if (!v) return r;
        if (v->is_number_integer()) return {v->get<int64_t>()};
        if (!v->is_array()) bad(key, *v, "an integer or a list of integers");
        for (const json& e : *v) {
            if (!e.is_number_integer()) bad(key, *v, "an integer or a list of integers");
            r.push_back(e.get<int64_t>());
        }
        return r;
    }
    std::optional<int64_t> id(const char* key, std::optional<int64_t> dflt) const {
        return has(key) ? opt_int(key) : dflt;
    }
};

void parse_rope(HfConfig& c, const Fields& f, const FamilyDefaults& d) {
    // transformers 5: rope_parameters = rope_scaling (4.x's name) or rope_parameters; rope_theta from
    // inside it, else the top-level field (4.x), else the class default; rope_type, else 4.x's "type".
    const json* p = f.get("rope_scaling");
    const char* pname = "rope_scaling";
    if (!p || (p->is_object() && p->empty())) {
        p = f.get("rope_parameters");
        pname = "rope_parameters";
    }
    static const json kEmpty = json::object();
    if (!p) p = &kEmpty;
    if (!p->is_object()) f.bad(pname, *p, "an object");
    if (p->contains("full_attention") || p->contains("sliding_attention"))
        fail("'", f.where, "': field '", pname, "' holds RoPE parameters per layer type, which moe does not support");
    const Fields r{*p, f.where};
    const std::string field = std::string(pname) + ".";
    auto sub = [&](const char* key) { return field + key; };
    if (auto t = r.opt_num("rope_theta")) c.rope_theta = *t;
    else c.rope_theta = f.num_or("rope_theta", d.theta);
    if (!(c.rope_theta > 0)) fail("'", f.where, "': rope_theta = ", c.rope_theta, " must be positive");
    if (auto t = r.opt_str("rope_type")) c.rope_type = *t;
    else if (auto t2 = r.opt_str("type")) c.rope_type = *t2;
    else c.rope_type = "default";
    const double prf = r.opt_num("partial_rotary_factor").value_or(f.num_or("partial_rotary_factor", 1.0));
    if (prf != 1.0)
        fail("'", f.where, "': partial_rotary_factor = ", prf, " (RoPE on part of each head) is not supported");
    auto need = [&](const char* key) {
        auto v = r.opt_num(key);
        if (!v) fail("'", f.where, "': ", sub(key), " is missing (rope type '", c.rope_type, "' needs it)");
        if (!(*v > 0)) fail("'", f.where, "': ", sub(key), " = ", *v, " must be positive");
        return *v;
    };
    if (c.rope_type == "default") return;
    if (c.rope_type == "linear") {
        c.rope_factor = need("factor");
        return;
    }
    if (c.rope_type == "llama3") {
        c.rope_factor = need("factor");
        c.rope_low_freq_factor = need("low_freq_factor");
        c.rope_high_freq_factor = need("high_freq_factor");
        c.rope_original_max_position_embeddings =
            r.opt_int("original_max_position_embeddings")
                .value_or(f.int_or("original_max_position_embeddings", c.max_position_embeddings));
        return;
    }
    fail("'", f.where, "': RoPE scaling '", c.rope_type, "' (", pname,
         ") is not supported: moe reads 'default' (and parses 'linear', 'llama3'); 'dynamic', 'yarn', 'longrope' and "
         "others are not implemented");
}

// Sliding-window attention changes which keys a query sees; moe has none. A window at least as long
// as max_position_embeddings never cuts anything and is accepted.
void check_sliding(const HfConfig& c, const Fields& f, const FamilyDefaults& d) {
    std::vector<std::string> types;
    if (const json* lt = f.get("layer_types")) {
        if (!lt->is_array()) f.bad("layer_types", *lt, "a list");
        for (const json& t : *lt) {
            if (!t.is_string()) f.bad("layer_types", *lt, "a list of strings");
            const std::string s = t.get<std::string>();
            if (s != "full_attention" && s != "sliding_attention")
                fail("'", f.where, "': layer_types has '", s, "', which moe does not support (only full_attention)");
            types.push_back(s);
        }
    }
    const bool qwen = c.family == HfFamily::qwen2 || c.family == HfFamily::qwen3 || c.family == HfFamily::qwen2_moe ||
                      c.family == HfFamily::qwen3_moe;
    const std::optional<int64_t> window = f.has("sliding_window") ? f.opt_int("sliding_window") : d.sliding_window;
    bool use = true;
    if (qwen) use = f.bool_or("use_sliding_window", false);
    if (!use || !window || *window == 0) return;  // qwen2_moe stores 0 when it is off
    if (*window >= c.max_position_embeddings) return;
    std::vector<int64_t> sliding;
    const int64_t mwl = f.int_or("max_window_layers", 28);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        bool s;
        if (!types.empty()) s = (size_t)l < types.size() && types[l] == "sliding_attention";
        else if (c.family == HfFamily::qwen2 || c.family == HfFamily::qwen3) s = l >= mwl;
        else if (c.family == HfFamily::qwen2_moe) s = (l + 1) % 2 == 1 && l < mwl;
        else s = true;  // qwen3_moe, mistral, mixtral: every layer
        if (s) sliding.push_back(l);
    }
    if (sliding.empty()) return;
    std::string ls;
    for (int64_t l : sliding) {
        if (!ls.empty()) ls += ',';
        ls += std::to_string(l);
    }
    fail("'", f.where, "': sliding_window = ", *window, (qwen ? " with use_sliding_window true" : ""),
         " (shorter than max_position_embeddings = ", c.max_position_embeddings, ") is active in layers [", ls,
         "]: sliding-window attention is not supported");
}

}  // namespace

const char* hf_family_name(HfFamily f) {
    for (const auto& d : kFamilies)
        if (d.family == f) return d.name;
    return "?";
}

HfConfig parse_hf_config(const json& j, const std::string& where) {
    if (!j.is_object()) fail("'", where, "' is a JSON ", j.type_name(), ", not a config object");
    const Fields f{j, where};
    HfConfig c;
    const auto mt = f.opt_str("model_type");
    if (!mt) fail("'", where, "' has no model_type (moe reads ", supported_families(), ")");
    const FamilyDefaults* d = nullptr;
    for (const auto& fam : kFamilies)
        if (*mt == fam.name) d = &fam;
    if (!d) fail("'", where, "': model_type '", *mt, "' is not supported (moe reads ", supported_families(), ")");
    c.model_type = *mt;
    c.family = d->family;
    const HfFamily fam = c.family;
    const bool qwen_moe = fam == HfFamily::qwen2_moe || fam == HfFamily::qwen3_moe;

    if (auto s = f.opt_str("dtype")) c.dtype = *s;
    else if (auto s2 = f.opt_str("torch_dtype")) c.dtype = *s2;

    c.vocab_size = f.dim("vocab_size", d->vocab);
    c.hidden_size = f.dim("hidden_size", d->hidden);
    c.num_hidden_layers = f.dim("num_hidden_layers", d->layers, kMaxLayers);
    c.num_attention_heads = f.dim("num_attention_heads", d->heads);
    // a missing field takes the class default, an explicit null means "= heads" (__post_init__)
    c.num_key_value_heads = f.has("num_key_value_heads") ? f.int_or("num_key_value_heads", c.num_attention_heads)
                                                          : (d->kv_heads ? d->kv_heads : c.num_attention_heads);
    if (c.num_key_value_heads <= 0 || c.num_key_value_heads > c.num_attention_heads ||
        c.num_attention_heads % c.num_key_value_heads != 0)
        fail("'", where, "': num_key_value_heads = ", c.num_key_value_heads,
             " must be positive and divide num_attention_heads = ", c.num_attention_heads);
    if (auto hd = f.opt_int("head_dim")) c.head_dim = *hd;
    else if (!f.has("head_dim") && d->head_dim) c.head_dim = d->head_dim;
    else {
        if (c.hidden_size % c.num_attention_heads != 0)
            fail("'", where, "': hidden_size = ", c.hidden_size, " is not a multiple of num_attention_heads = ",
                 c.num_attention_heads, " and no head_dim is given");
        c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    if (c.head_dim <= 0 || c.head_dim > kMaxDim)
        fail("'", where, "': head_dim = ", c.head_dim, " must be positive and at most ", kMaxDim);
    if (fam == HfFamily::olmoe && c.head_dim * c.num_attention_heads != c.hidden_size)
        fail("'", where, "': head_dim = ", c.head_dim, " x num_attention_heads = ", c.num_attention_heads,
             " must equal hidden_size = ", c.hidden_size, " for olmoe (its q_norm has hidden_size weights)");
    c.intermediate_size = f.dim("intermediate_size", d->inter);
    c.max_position_embeddings = f.dim("max_position_embeddings", d->max_pos);
    c.rms_norm_eps = f.num_or("rms_norm_eps", d->eps);
    if (!(c.rms_norm_eps > 0)) fail("'", where, "': rms_norm_eps = ", c.rms_norm_eps, " must be positive");
    c.tie_word_embeddings = f.bool_or("tie_word_embeddings", false);  // false in all eight classes

    const auto act = f.opt_str("hidden_act").value_or("silu");
    if (act != "silu" && act != "swish")  // transformers' ACT2FN maps both to SiLU
        fail("'", where, "': hidden_act '", act, "' is not supported (moe's gated FFN uses silu)");
    if (f.bool_or("mlp_bias", false)) fail("'", where, "': mlp_bias = true (biases in the FFN) is not supported");
    for (const char* k : {"attn_logit_softcapping", "final_logit_softcapping"})
        if (f.get(k)) fail("'", where, "': field '", k, "' = ", f.get(k)->dump(), " (logit soft-capping) is not supported");
    if (fam == HfFamily::olmoe && f.get("clip_qkv"))
        fail("'", where, "': clip_qkv = ", f.get("clip_qkv")->dump(), " (clamping q, k, v) is not supported");

    parse_rope(c, f, *d);

    switch (fam) {
        case HfFamily::qwen2: c.qkv_bias = true; break;  // Qwen2Attention: bias=True on q, k, v
        case HfFamily::qwen2_moe: c.qkv_bias = f.bool_or("qkv_bias", true); break;
        case HfFamily::llama: case HfFamily::qwen3: case HfFamily::qwen3_moe: case HfFamily::olmoe:
            c.qkv_bias = c.o_bias = f.bool_or("attention_bias", false);
            break;
        case HfFamily::mistral: case HfFamily::mixtral: break;  // no bias anywhere
    }
    if (fam == HfFamily::qwen3 || fam == HfFamily::qwen3_moe) c.qk_norm = HfQkNorm::per_head;
    if (fam == HfFamily::olmoe) c.qk_norm = HfQkNorm::full;

    c.layer_moe.assign(c.num_hidden_layers, false);
    if (fam == HfFamily::mixtral || fam == HfFamily::olmoe || qwen_moe) {
        // mixtral's own name is num_local_experts, olmoe's and qwen*_moe's num_experts; each class maps
        // the other name onto it (qwen3_moe even saves num_local_experts), so both are read.
        const auto a = f.opt_int("num_experts"), b = f.opt_int("num_local_experts");
        if (a && b && *a != *b)
            fail("'", where, "': num_experts = ", *a, " and num_local_experts = ", *b, " disagree");
        c.num_experts = a ? *a : b ? *b : d->experts;
        const bool may_be_dense = fam == HfFamily::qwen2_moe || fam == HfFamily::qwen3_moe;
        if (c.num_experts < 0 || (c.num_experts == 0 && !may_be_dense) || c.num_experts > kMaxDim)
            fail("'", where, "': num_experts = ", c.num_experts, " must be positive and at most ", kMaxDim);
        c.num_experts_per_tok = f.int_or("num_experts_per_tok", d->experts_per_tok);
        if (c.num_experts > 0 && (c.num_experts_per_tok <= 0 || c.num_experts_per_tok > c.num_experts))
            fail("'", where, "': num_experts_per_tok = ", c.num_experts_per_tok, " must be in 1..num_experts = ",
                 c.num_experts);
        c.norm_topk_prob = fam == HfFamily::mixtral ? true : f.bool_or("norm_topk_prob", false);
        c.router_aux_loss_coef = f.num_or("router_aux_loss_coef", d->aux_coef);
        c.expert_intermediate_size = qwen_moe ? f.dim("moe_intermediate_size", d->moe_inter) : c.intermediate_size;
        if (fam == HfFamily::qwen2_moe) {
            c.shared_expert_intermediate_size = f.int_or("shared_expert_intermediate_size", d->shared_inter);
            if (c.shared_expert_intermediate_size < 0 || c.shared_expert_intermediate_size > kMaxDim)
                fail("'", where, "': shared_expert_intermediate_size = ", c.shared_expert_intermediate_size,
                     " must be in 0..", kMaxDim);
            c.shared_expert_gate = c.shared_expert_intermediate_size > 0;
        }
        if (qwen_moe) {
            c.decoder_sparse_step = f.int_or("decoder_sparse_step", 1);
            if (c.decoder_sparse_step <= 0)
                fail("'", where, "': decoder_sparse_step = ", c.decoder_sparse_step, " must be positive");
            if (const json* m = f.get("mlp_only_layers")) {
                if (!m->is_array()) f.bad("mlp_only_layers", *m, "a list of layer indices");
                for (const json& e : *m) {
                    if (!e.is_number_integer()) f.bad("mlp_only_layers", *m, "a list of layer indices");
                    c.mlp_only_layers.push_back(e.get<int64_t>());
                }
            }
        }
        for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
            bool moe = c.num_experts > 0;
            if (qwen_moe) {  // Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer's rule
                for (int64_t m : c.mlp_only_layers) moe = moe && m != l;
                moe = moe && (l + 1) % c.decoder_sparse_step == 0;
            }
            c.layer_moe[l] = moe;
        }
    }
    check_sliding(c, f, *d);

    if (auto b = f.id("bos_token_id", d->bos)) c.bos_token_id = b;
    if (auto p = f.id("pad_token_id", d->pad)) c.pad_token_id = p;
    c.eos_token_ids = f.ids("eos_token_id", d->eos);
    return c;
}

void parse_hf_generation_config(HfConfig& c, const json& j, const std::string& where) {
    if (!j.is_object()) fail("'", where, "' is a JSON ", j.type_name(), ", not a generation config object");
    const Fields f{j, where};
    HfGenerationConfig& g = c.generation;
    g = HfGenerationConfig{};
    g.present = true;
    g.eos_token_ids = f.ids("eos_token_id", std::nullopt);
    g.bos_token_id = f.opt_int("bos_token_id");
    g.pad_token_id = f.opt_int("pad_token_id");
    g.do_sample = f.opt_bool("do_sample");
    g.temperature = f.opt_num("temperature");
    g.top_p = f.opt_num("top_p");
    g.top_k = f.opt_int("top_k");
    g.repetition_penalty = f.opt_num("repetition_penalty");
    g.max_new_tokens = f.opt_int("max_new_tokens");
}

static json parse_text(std::string_view text, const std::string& where) {
    try {
        return json::parse(text);
    } catch (const json::exception& e) {
        fail("'", where, "' is not valid JSON: ", e.what());
    }
}

HfConfig parse_hf_config_text(std::string_view text, const std::string& where) {
    return parse_hf_config(parse_text(text, where), where);
}

static std::string read_text(const std::string& path) {
    auto m = MappedFile::open(path);
    return std::string(reinterpret_cast<const char*>(m->data()), m->size());
}

HfConfig read_hf_config(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const bool dir = fs::is_directory(path, ec);
    const std::string cfg = dir ? (fs::path(path) / "config.json").string() : path;
    if (dir && !fs::exists(cfg, ec)) fail("'", path, "' has no config.json");
    HfConfig c = parse_hf_config_text(read_text(cfg), cfg);
    const std::string gen = (fs::path(cfg).parent_path() / "generation_config.json").string();
    if (fs::exists(gen, ec)) parse_hf_generation_config(c, parse_text(read_text(gen), gen), gen);
    return c;
}

}  // namespace moe
