#include "model/config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"

namespace moe {

using nlohmann::json;

namespace {

// Reads the fields of one JSON object, remembering which were read; finish() rejects the rest.
class Fields {
public:
    Fields(const json& j, std::string where, std::string section)
        : j_(j), where_(std::move(where)), section_(std::move(section)) {
        if (!j_.is_object()) fail(where_, ": '", section_, "' must be a JSON object");
    }
    bool has(const std::string& k) const { return j_.contains(k); }
    std::string name(const std::string& k) const { return section_.empty() ? k : section_ + "." + k; }

    int64_t integer(const std::string& k, int64_t def, bool required = false) {
        const json* v = get(k, required);
        if (!v) return def;
        if (v->is_number_integer()) return v->get<int64_t>();
        if (v->is_number_float()) {
            double d = v->get<double>();
            if (std::floor(d) == d && std::abs(d) < 9e15) return (int64_t)d;
        }
        fail(where_, ": field '", name(k), "' must be an integer, got ", v->dump());
    }
    double number(const std::string& k, double def, bool required = false) {
        const json* v = get(k, required);
        if (!v) return def;
        if (!v->is_number()) fail(where_, ": field '", name(k), "' must be a number, got ", v->dump());
        return v->get<double>();
    }
    bool boolean(const std::string& k, bool def) {
        const json* v = get(k, false);
        if (!v) return def;
        if (!v->is_boolean()) fail(where_, ": field '", name(k), "' must be true or false, got ", v->dump());
        return v->get<bool>();
    }
    std::string string(const std::string& k, const std::string& def, bool required = false) {
        const json* v = get(k, required);
        if (!v) return def;
        if (!v->is_string()) fail(where_, ": field '", name(k), "' must be a string, got ", v->dump());
        return v->get<std::string>();
    }
    const json* raw(const std::string& k) { return get(k, false); }
    void finish() {
        for (auto it = j_.begin(); it != j_.end(); ++it)
            if (!used_.count(it.key()))
                fail(where_, ": unknown field '", name(it.key()), "'");
    }

private:
    const json* get(const std::string& k, bool required) {
        used_.insert(k);
        if (!j_.contains(k)) {
            if (required) fail(where_, ": missing required field '", name(k), "'");
            return nullptr;
        }
        return &j_.at(k);
    }
    const json& j_;
    std::string where_, section_;
    std::set<std::string> used_;
};

void check(bool ok, const std::string& where, const std::string& msg) {
    if (!ok) fail(where, ": ", msg);
}

}  // namespace

void validate(const ModelConfig& m, const std::string& where) {
    auto pos = [&](const char* f, int64_t v) {
        check(v >= 1, where, str("field 'model.", f, "' must be >= 1, got ", v));
    };
    pos("n_layer", m.n_layer);
    pos("n_embd", m.n_embd);
    pos("n_head", m.n_head);
    pos("n_head_kv", m.n_head_kv);
    pos("n_ctx", m.n_ctx);
    check(m.vocab_size >= 0, where, str("field 'model.vocab_size' must be >= 1, got ", m.vocab_size));
    // Sizes far beyond any machine would overflow the size arithmetic: reject them here, with the
    // field, rather than crash later. Token ids and MoE row offsets are int32.
    auto at_most = [&](const char* f, int64_t v, int64_t max) {
        check(v <= max, where, str("field 'model.", f, "' = ", v, " is too large (at most ", max, ")"));
    };
    const int64_t kMaxDim = 2147483647;
    at_most("vocab_size", m.vocab_size, kMaxDim);
    at_most("n_layer", m.n_layer, 65536);
    at_most("n_embd", m.n_embd, kMaxDim);
    at_most("n_head", m.n_head, kMaxDim);
    at_most("n_head_kv", m.n_head_kv, kMaxDim);
    at_most("n_ctx", m.n_ctx, kMaxDim);
    at_most("n_ff", m.n_ff, kMaxDim);
    at_most("n_expert", m.n_expert, 65536);
    at_most("n_ff_exp", m.n_ff_exp, kMaxDim);
    at_most("n_ff_shexp", m.n_ff_shexp, kMaxDim);
    {
        const double V = (double)m.vocab_size, C = (double)m.n_embd, L = (double)m.n_layer;
        const double E = (double)m.n_expert, H = (double)m.n_head, Hkv = (double)m.n_head_kv;
        const double D = C / H;
        const double n = 2 * V * C + L * (C * (H + 2 * Hkv) * D + H * D * C + E * C +
                                          3 * E * C * (double)m.n_ff_exp + 3 * C * (double)m.n_ff +
                                          3 * C * (double)m.n_ff_shexp);
        check(n <= 0x1p42, where, str("the model would have about ", n, " parameters, more than this engine ",
                                     "can address (2^42): check the sizes"));
    }
    check(m.n_head_dim > 0 || m.n_embd % m.n_head == 0, where,
          str("n_embd (", m.n_embd, ") is not divisible by n_head (", m.n_head, ")"));
    check(m.n_head_dim >= 0 && m.n_head_dim <= kMaxDim, where,
          str("field 'model.head_dim' must be in [0, ", kMaxDim, "], got ", m.n_head_dim));
    check(m.head_dim() % 2 == 0, where,
          str("head dim ", m.n_head_dim > 0 ? "" : "n_embd/n_head = ", m.head_dim(), " must be even for RoPE"));
    check(m.n_head % m.n_head_kv == 0, where,
          str("n_head (", m.n_head, ") is not divisible by n_head_kv (", m.n_head_kv, ")"));
    check(m.rope_theta > 0 && std::isfinite(m.rope_theta), where,
          str("field 'model.rope_theta' must be > 0, got ", m.rope_theta));
    check(m.norm_eps > 0 && std::isfinite(m.norm_eps), where,
          str("field 'model.norm_eps' must be > 0, got ", m.norm_eps));
    check((int64_t)m.layer_moe.size() == m.n_layer, where, "internal: layer_moe size");
    bool any_dense = false;
    for (bool b : m.layer_moe) any_dense |= !b;
    if (m.any_moe()) {
        pos("n_expert", m.n_expert);
        pos("n_expert_used", m.n_expert_used);
        pos("n_ff_exp", m.n_ff_exp);
        check(m.n_expert_used <= m.n_expert, where,
              str("n_expert_used (K = ", m.n_expert_used, ") must not exceed n_expert (E = ", m.n_expert, ")"));
    }
    if (any_dense) pos("n_ff", m.n_ff);
    check(m.n_ff_shexp >= 0, where, str("field 'model.n_ff_shexp' must be >= 0, got ", m.n_ff_shexp));
    check(m.n_ff_shexp == 0 || m.any_moe(), where,
          str("field 'model.n_ff_shexp' = ", m.n_ff_shexp,
              " sets a shared expert, but the model has no MoE layer (\"ffn\" is \"dense\" everywhere)"));
    check(!m.shexp_gate || m.n_ff_shexp > 0, where,
          "field 'model.shexp_gate' is true, but there is no shared expert to gate (model.n_ff_shexp is 0)");
}

void validate_router(const RouterConfig& r, const std::string& where) {
    auto nonneg = [&](const char* k, double v) {
        check(std::isfinite(v) && v >= 0, where, str("field 'router.", k, "' must be a finite number >= 0, got ", v));
    };
    nonneg("capacity_factor", r.capacity_factor);
    nonneg("eval_capacity_factor", r.eval_capacity_factor);
    nonneg("balance_loss", r.balance_loss);
    nonneg("z_loss", r.z_loss);
    nonneg("bias_rate", r.bias_rate);
    check(std::isfinite(r.routed_scale) && r.routed_scale > 0, where,
          str("field 'router.routed_scale' must be a finite number > 0, got ", r.routed_scale));
}

Config config_from_json(const json& j, const std::string& where) {
    Config c;
    c.path = where;
    Fields top(j, where, "");
    {
        const json* mj = top.raw("model");
        if (!mj) fail(where, ": missing required section 'model'");
        Fields f(*mj, where, "model");
        ModelConfig& m = c.model;
        m.vocab_size = f.integer("vocab_size", 0);
        m.n_layer = f.integer("n_layer", 0, true);
        m.n_embd = f.integer("n_embd", 0, true);
        m.n_head = f.integer("n_head", 0, true);
        m.n_head_kv = f.integer("n_head_kv", m.n_head);
        m.n_ctx = f.integer("n_ctx", 0, true);
        m.rope_theta = f.number("rope_theta", 10000.0);
        m.norm_eps = f.number("norm_eps", 1e-5);
        m.tie_embeddings = f.boolean("tie_embeddings", true);
        // "qk_norm": false | true (= "full": over the whole projection, OLMoE) | "head" (each
        // head's D, Qwen3)
        if (const json* qk = f.raw("qk_norm"); qk && qk->is_string()) {
            const std::string v = qk->get<std::string>();
            if (v != "full" && v != "head")
                fail(where, ": field 'model.qk_norm' must be true, false, \"full\" or \"head\", got \"", v, "\"");
            m.qk_norm = true;
            m.qk_norm_head = v == "head";
        } else {
            m.qk_norm = f.boolean("qk_norm", false);
        }
        m.n_head_dim = f.integer("head_dim", 0);
        const std::string bias = f.string("attn_bias", "none");
        if (bias != "none" && bias != "qkv" && bias != "qkvo")
            fail(where, ": field 'model.attn_bias' must be \"none\", \"qkv\" or \"qkvo\", got \"", bias, "\"");
        m.attn_bias_qkv = bias != "none";
        m.attn_bias_o = bias == "qkvo";
        std::string act = f.string("activation", "swiglu");
        if (act == "swiglu") m.activation = ops::Activation::swiglu;
        else if (act == "relu") m.activation = ops::Activation::relu;
        else fail(where, ": field 'model.activation' must be \"swiglu\" or \"relu\", got \"", act, "\"");
        m.n_ff = f.integer("n_ff", 0);
        m.n_expert = f.integer("n_expert", 0);
        m.n_expert_used = f.integer("n_expert_used", 0);
        m.n_ff_exp = f.integer("n_ff_exp", 0);
        m.n_ff_shexp = f.integer("n_ff_shexp", 0);
        m.shexp_gate = f.boolean("shexp_gate", false);
        // "ffn": "moe" | "dense" | ["moe", "dense", ...] (one per layer). Default: moe when
        // n_expert > 0. This is the one switch between the dense and the MoE Transformer.
        const json* ffn = f.raw("ffn");
        if (m.n_layer < 1) fail(where, ": field 'model.n_layer' must be >= 1, got ", m.n_layer);
        auto kind = [&](const json& v, const std::string& field) {
            if (v.is_string() && v.get<std::string>() == "moe") return true;
            if (v.is_string() && v.get<std::string>() == "dense") return false;
            fail(where, ": field '", field, "' must be \"moe\" or \"dense\", got ", v.dump());
        };
        if (!ffn) {
            m.layer_moe.assign(m.n_layer, m.n_expert > 0);
        } else if (ffn->is_array()) {
            if ((int64_t)ffn->size() != m.n_layer)
                fail(where, ": field 'model.ffn' has ", ffn->size(), " entries but n_layer is ", m.n_layer);
            for (size_t i = 0; i < ffn->size(); ++i) m.layer_moe.push_back(kind((*ffn)[i], str("model.ffn[", i, "]")));
        } else {
            m.layer_moe.assign(m.n_layer, kind(*ffn, "model.ffn"));
        }
        f.finish();
        validate(m, where);
    }
    if (const json* rj = top.raw("router")) {
        Fields f(*rj, where, "router");
        RouterConfig& r = c.model.router;
        r.noisy_gating = f.boolean("noisy_gating", false);
        r.noise_at_eval = f.boolean("noise_at_eval", false);
        r.capacity_factor = f.number("capacity_factor", 0);
        r.eval_capacity_factor = f.number("eval_capacity_factor", 0);
        const std::string pol = f.string("overflow", r.capacity_factor > 0 || r.eval_capacity_factor > 0 ? "reroute" : "none");
        if (pol == "reroute") r.overflow = OverflowPolicy::reroute;
        else if (pol == "drop") r.overflow = OverflowPolicy::drop;
        else if (pol == "none") r.overflow = OverflowPolicy::none;
        else fail(where, ": field 'router.overflow' must be \"reroute\", \"drop\" or \"none\", got \"", pol, "\"");
        r.balance_loss = f.number("balance_loss", 0);
        r.z_loss = f.number("z_loss", 0);
        r.bias_balance = f.boolean("bias_balance", false);
        r.bias_rate = f.number("bias_rate", r.bias_rate);
        r.routed_scale = f.number("routed_scale", 1.0);
        r.norm_topk = f.boolean("norm_topk", true);
        const std::string on = f.string("topk_on", "logits");
        if (on == "logits") r.topk_on_probs = false;
        else if (on == "probs") r.topk_on_probs = true;
        else fail(where, ": field 'router.topk_on' must be \"logits\" or \"probs\", got \"", on, "\"");
        f.finish();
        validate_router(r, where);
        if (!c.model.any_moe()) fail(where, ": a 'router' section needs MoE layers (model.ffn / n_expert)");
    }
    if (const json* tj = top.raw("train")) {
        Fields f(*tj, where, "train");
        TrainConfig& t = c.train;
        t.data = f.string("data", "");
        t.tokenizer = f.string("tokenizer", "char");
        if (t.tokenizer != "char" && t.tokenizer != "byte" && t.tokenizer != "bpe")
            fail(where, ": field 'train.tokenizer' must be \"char\", \"byte\" or \"bpe\", got \"", t.tokenizer, "\"");
        if (t.tokenizer == "bpe") {  // the model's vocabulary is the one BPE learns: 256 bytes + merges
            if (c.model.vocab_size == 0) c.model.vocab_size = kDefaultBpeVocab;
            check(c.model.vocab_size >= 257, where,
                  str("field 'model.vocab_size' must be >= 257 (256 bytes + merges) with train.tokenizer \"bpe\", got ",
                      c.model.vocab_size));
        }
        t.val_fraction = f.number("val_fraction", t.val_fraction);
        t.batch_size = f.integer("batch_size", t.batch_size);
        t.block_size = f.integer("block_size", 0);
        t.grad_accum = f.integer("grad_accum", t.grad_accum);
        t.steps = f.integer("steps", t.steps);
        t.lr = f.number("lr", t.lr);
        t.min_lr = f.number("min_lr", t.lr * 0.1);
        t.warmup_steps = f.integer("warmup_steps", t.warmup_steps);
        t.weight_decay = f.number("weight_decay", t.weight_decay);
        t.beta1 = f.number("beta1", t.beta1);
        t.beta2 = f.number("beta2", t.beta2);
        t.adam_eps = f.number("adam_eps", t.adam_eps);
        t.grad_clip = f.number("grad_clip", t.grad_clip);
        t.eval_interval = f.integer("eval_interval", t.eval_interval);
        t.eval_batches = f.integer("eval_batches", t.eval_batches);
        t.log_interval = f.integer("log_interval", t.log_interval);
        t.ckpt_interval = f.integer("ckpt_interval", t.ckpt_interval);
        int64_t seed = f.integer("seed", (int64_t)t.seed);
        check(seed >= 0, where, str("field 'train.seed' must be >= 0, got ", seed));
        t.seed = (uint64_t)seed;
        t.precision = f.string("precision", t.precision);
        if (t.precision != "fp32" && t.precision != "bf16")
            fail(where, ": field 'train.precision' must be \"fp32\" or \"bf16\", got \"", t.precision, "\"");
        f.finish();
        auto fin = [&](const char* k, double v) {
            check(std::isfinite(v), where, str("field 'train.", k, "' must be finite, got ", v));
        };
        fin("lr", t.lr); fin("min_lr", t.min_lr); fin("weight_decay", t.weight_decay);
        fin("grad_clip", t.grad_clip); fin("val_fraction", t.val_fraction);
        check(t.val_fraction > 0 && t.val_fraction < 1, where,
              str("field 'train.val_fraction' must be in (0, 1), got ", t.val_fraction));
        check(t.batch_size >= 1, where, str("field 'train.batch_size' must be >= 1, got ", t.batch_size));
        check(t.block_size >= 0 && t.block_size <= c.model.n_ctx, where,
              str("field 'train.block_size' must be in [1, n_ctx = ", c.model.n_ctx, "], got ", t.block_size));
        check(t.grad_accum >= 1, where, str("field 'train.grad_accum' must be >= 1, got ", t.grad_accum));
        check(t.steps >= 0, where, str("field 'train.steps' must be >= 0, got ", t.steps));
        check(t.lr > 0, where, str("field 'train.lr' must be > 0, got ", t.lr));
        check(t.min_lr >= 0 && t.min_lr <= t.lr, where, str("field 'train.min_lr' must be in [0, lr], got ", t.min_lr));
        check(t.warmup_steps >= 0, where, str("field 'train.warmup_steps' must be >= 0, got ", t.warmup_steps));
        check(t.weight_decay >= 0, where, str("field 'train.weight_decay' must be >= 0, got ", t.weight_decay));
        check(t.beta1 >= 0 && t.beta1 < 1, where, str("field 'train.beta1' must be in [0, 1), got ", t.beta1));
        check(t.beta2 >= 0 && t.beta2 < 1, where, str("field 'train.beta2' must be in [0, 1), got ", t.beta2));
        check(t.adam_eps > 0, where, str("field 'train.adam_eps' must be > 0, got ", t.adam_eps));
        check(t.grad_clip >= 0, where, str("field 'train.grad_clip' must be >= 0, got ", t.grad_clip));
        check(t.eval_interval >= 1, where, str("field 'train.eval_interval' must be >= 1, got ", t.eval_interval));
        check(t.eval_batches >= 1, where, str("field 'train.eval_batches' must be >= 1, got ", t.eval_batches));
        check(t.log_interval >= 1, where, str("field 'train.log_interval' must be >= 1, got ", t.log_interval));
        check(t.ckpt_interval >= 0, where, str("field 'train.ckpt_interval' must be >= 0, got ", t.ckpt_interval));
        {
            // one micro-batch's activations must stay addressable (MoE rows B*T*K are int32)
            const ModelConfig& m = c.model;
            const double N = (double)t.batch_size * (double)(t.block_size ? t.block_size : m.n_ctx);
            const double rows = N * (double)std::max<int64_t>(1, m.n_expert_used);
            const double per_token = (double)m.vocab_size + (double)m.n_layer *
                (8.0 * (double)m.n_embd + (double)m.n_head * (double)m.n_ctx +
                 3.0 * (double)m.n_expert_used * (double)m.n_ff_exp + 3.0 * (double)m.n_ff +
                 3.0 * (double)m.n_ff_shexp);
            check(rows <= 2147483647.0 && N * per_token <= 0x1p44, where,
                  str("field 'train.batch_size' = ", t.batch_size, " with block_size ", t.block_size,
                      " needs more activation memory than this engine can address"));
        }
    }
    top.finish();
    if (c.train.block_size == 0) c.train.block_size = c.model.n_ctx;
    return c;
}

Config load_config(const std::string& path) {
    std::ifstream in(path);
    if (!in) fail("config file '", path, "' cannot be opened: ", std::strerror(errno));
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) fail("config file '", path, "' is a directory");
    std::stringstream ss;
    ss << in.rdbuf();
    json j;
    try {
        j = json::parse(ss.str());
    } catch (const json::exception& e) {  // parse_error, and out_of_range for 1e999
        fail("config file '", path, "' is not valid JSON: ", e.what());
    }
    return config_from_json(j, path);
}

json config_to_json(const Config& c) {
    const ModelConfig& m = c.model;
    json mj = {
        {"vocab_size", m.vocab_size}, {"n_layer", m.n_layer}, {"n_embd", m.n_embd},
        {"n_head", m.n_head}, {"n_head_kv", m.n_head_kv}, {"n_ctx", m.n_ctx},
        {"rope_theta", m.rope_theta}, {"norm_eps", m.norm_eps},
        {"tie_embeddings", m.tie_embeddings}, {"qk_norm", m.qk_norm},
        {"activation", m.activation == ops::Activation::swiglu ? "swiglu" : "relu"},
    };
    // fields added after the first checkpoints are written only when set, so a config without
    // them keeps its bytes (and its checkpoints theirs)
    if (m.qk_norm_head) mj["qk_norm"] = "head";
    if (m.n_head_dim > 0) mj["head_dim"] = m.n_head_dim;
    if (m.attn_bias_qkv) mj["attn_bias"] = m.attn_bias_o ? "qkvo" : "qkv";
    bool any_dense = false;
    for (bool b : m.layer_moe) any_dense |= !b;
    if (any_dense) mj["n_ff"] = m.n_ff;
    if (m.any_moe()) {
        mj["n_expert"] = m.n_expert;
        mj["n_expert_used"] = m.n_expert_used;
        mj["n_ff_exp"] = m.n_ff_exp;
        if (m.n_ff_shexp > 0) {
            mj["n_ff_shexp"] = m.n_ff_shexp;
            mj["shexp_gate"] = m.shexp_gate;
        }
    }
    json ffn = json::array();
    for (bool b : m.layer_moe) ffn.push_back(b ? "moe" : "dense");
    mj["ffn"] = ffn;
    const TrainConfig& t = c.train;
    json tj = {
        {"data", t.data}, {"tokenizer", t.tokenizer}, {"val_fraction", t.val_fraction},
        {"batch_size", t.batch_size}, {"block_size", t.block_size}, {"grad_accum", t.grad_accum},
        {"steps", t.steps}, {"lr", t.lr}, {"min_lr", t.min_lr}, {"warmup_steps", t.warmup_steps},
        {"weight_decay", t.weight_decay}, {"beta1", t.beta1}, {"beta2", t.beta2},
        {"adam_eps", t.adam_eps}, {"grad_clip", t.grad_clip}, {"eval_interval", t.eval_interval},
        {"eval_batches", t.eval_batches}, {"log_interval", t.log_interval},
        {"ckpt_interval", t.ckpt_interval}, {"seed", t.seed}, {"precision", t.precision},
    };
    json out = {{"model", mj}, {"train", tj}};
    if (m.any_moe()) {
        const RouterConfig& r = m.router;
        const char* pol = r.overflow == OverflowPolicy::reroute ? "reroute"
                          : r.overflow == OverflowPolicy::drop  ? "drop" : "none";
        out["router"] = {{"noisy_gating", r.noisy_gating}, {"noise_at_eval", r.noise_at_eval},
                         {"capacity_factor", r.capacity_factor},
                         {"eval_capacity_factor", r.eval_capacity_factor}, {"overflow", pol},
                         {"balance_loss", r.balance_loss}, {"z_loss", r.z_loss},
                         {"bias_balance", r.bias_balance}, {"bias_rate", r.bias_rate},
                         {"topk_on", r.topk_on_probs ? "probs" : "logits"},
                         {"routed_scale", r.routed_scale}};
        if (!r.norm_topk) out["router"]["norm_topk"] = false;
    }
    return out;
}

}  // namespace moe
