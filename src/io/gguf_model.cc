#include "io/gguf_model.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "io/gguf_writer.h"
#include "io/hf_model.h"
#include "kernels/bf16.h"
#include "kernels/qmatmul.h"

namespace moe {

namespace {

using Json = nlohmann::json;

const char* const kArchs[] = {"llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "olmoe"};

bool known_arch(const std::string& a) {
    for (const char* x : kArchs)
        if (a == x) return true;
    return false;
}

// the default of {arch}.expert_weights_norm: what llama.cpp's graph of the architecture does
bool default_norm_topk(const std::string& arch) { return arch == "llama" || arch == "qwen3moe"; }

// a per-layer key that llama.cpp allows as one value or an array with one value per layer
int64_t uniform_int(const GgufHeader& h, const std::string& key, int64_t dflt, bool required) {
    const GgufValue* v = h.find(key);
    if (!v) {
        if (required) h.get(key);  // throws "missing"
        return dflt;
    }
    if (v->type != GgufType::array) return h.get_int(key);
    const std::vector<int64_t> a = h.get_int_array(key);
    if (a.empty()) fail("'", h.where, "': key '", key, "' is an empty array");
    for (int64_t x : a)
        if (x != a[0])
            fail("'", h.where, "': key '", key, "' differs between layers (", a[0], " and ", x,
                 "); moe needs the same value for every layer");
    return a[0];
}

std::string gguf_name(const std::string& moe_name) {
    if (moe_name == "tok_embd") return "token_embd.weight";
    if (moe_name.size() > 5 && moe_name.compare(moe_name.size() - 5, 5, ".bias") == 0) return moe_name;
    return moe_name + ".weight";
}

std::vector<int64_t> squeeze(std::vector<int64_t> s) {
    while (s.size() > 1 && s.front() == 1) s.erase(s.begin());
    return s;
}

std::string shape_str(const std::vector<int64_t>& s) { return TensorView{"", DType::f32, s}.shape_str(); }

// llama.cpp's converter: within each head of D rows, HF row half*D/2 + i goes to row 2i + half.
// permute: hf -> gguf; unpermute: gguf -> hf. rows (n_head * D) of row_bytes bytes each (fp32
// values, or a block type's rows: quantization is per row, so rows move as they are)
void permute_row_bytes(void* dst, const void* src, int64_t n_head, int64_t D, int64_t row_bytes, bool to_gguf) {
    const int64_t half = D / 2;
    auto* d8 = static_cast<unsigned char*>(dst);
    const auto* s8 = static_cast<const unsigned char*>(src);
    for (int64_t h = 0; h < n_head; ++h)
        for (int64_t s = 0; s < 2; ++s)
            for (int64_t i = 0; i < half; ++i) {
                const int64_t hf_row = h * D + s * half + i, gg_row = h * D + 2 * i + s;
                const int64_t d = to_gguf ? gg_row : hf_row, r = to_gguf ? hf_row : gg_row;
                std::memcpy(d8 + d * row_bytes, s8 + r * row_bytes, (size_t)row_bytes);
            }
}
void permute_rows(float* dst, const float* src, int64_t n_head, int64_t D, int64_t cols, bool to_gguf) {
    permute_row_bytes(dst, src, n_head, D, cols * (int64_t)sizeof(float), to_gguf);
}

// the kernels' WType of a ggml row type moe multiplies in place (false for others: F32 and BF16
// have views of their own)
bool block_wtype(GgmlType g, kernels::WType& w) {
    switch (g) {
        case GgmlType::F16: w = kernels::WType::f16; return true;
        case GgmlType::Q8_0: w = kernels::WType::q8_0; return true;
        case GgmlType::Q4_0: w = kernels::WType::q4_0; return true;
        case GgmlType::Q4_K: w = kernels::WType::q4_k; return true;
        case GgmlType::Q5_K: w = kernels::WType::q5_k; return true;
        case GgmlType::Q6_K: w = kernels::WType::q6_k; return true;
        default: return false;
    }
}

// The type a matrix with rows of n values is written in when `t`'s block does not divide n (as
// llama-quantize falls back): the K-quants (256) fall back to Q8_0 when 32 divides n, everything
// else to F16.
GgmlType fitting_type(GgmlType t, int64_t n) {
    const int64_t bs = ggml_type_info(t).block_size;
    if (n % bs == 0) return t;
    if (bs == 256 && n % 32 == 0) return GgmlType::Q8_0;
    return GgmlType::F16;
}

std::mutex g_deq_mu;
GgufDequantizeRow g_deq[64] = {};

}  // namespace

void gguf_register_ggml_kernels() {
    static std::once_flag once;
    std::call_once(once, [] {
        using namespace kernels;
        gguf_register_quantizer(GgmlType::Q8_0, quantize_row_q8_0);
        gguf_register_quantizer(GgmlType::Q4_0, quantize_row_q4_0);
        gguf_register_quantizer(GgmlType::Q4_K, quantize_row_q4_k);
        gguf_register_quantizer(GgmlType::Q5_K, quantize_row_q5_k);
        gguf_register_quantizer(GgmlType::Q6_K, quantize_row_q6_k);
        gguf_register_dequantizer(GgmlType::Q8_0, dequantize_row_q8_0);
        gguf_register_dequantizer(GgmlType::Q4_0, dequantize_row_q4_0);
        gguf_register_dequantizer(GgmlType::Q4_K, dequantize_row_q4_k);
        gguf_register_dequantizer(GgmlType::Q5_K, dequantize_row_q5_k);
        gguf_register_dequantizer(GgmlType::Q6_K, dequantize_row_q6_k);
    });
}

void gguf_register_dequantizer(GgmlType t, GgufDequantizeRow fn) {
    std::lock_guard<std::mutex> l(g_deq_mu);
    MOE_ASSERT((uint32_t)t < 64);
    g_deq[(uint32_t)t] = fn;
}

void gguf_rows_to_f32(const GgufTensorInfo& t, const void* data, int64_t r0, int64_t n, float* out,
                      const std::string& where) {
    const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
    MOE_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= std::max<int64_t>(t.rows, 1));
    const auto* src = static_cast<const unsigned char*>(data) + r0 * t.row_bytes;
    const int64_t cnt = n * ne0;
    switch (t.type) {
        case GgmlType::F32: std::memcpy(out, src, (size_t)cnt * 4); return;
        case GgmlType::F16: {
            uint16_t h;
            for (int64_t i = 0; i < cnt; ++i) {
                std::memcpy(&h, src + 2 * i, 2);
                out[i] = f16_to_f32(h);
            }
            return;
        }
        case GgmlType::BF16: {
            uint16_t h;
            for (int64_t i = 0; i < cnt; ++i) {
                std::memcpy(&h, src + 2 * i, 2);
                out[i] = kernels::bf16_to_f32(h);
            }
            return;
        }
        default: break;
    }
    gguf_register_ggml_kernels();
    GgufDequantizeRow fn = nullptr;
    {
        std::lock_guard<std::mutex> l(g_deq_mu);
        if ((uint32_t)t.type < 64) fn = g_deq[(uint32_t)t.type];
    }
    if (!fn)
        fail("'", where, "': tensor '", t.name, "': tensor type ", ggml_type_name(t.type),
             ": not yet supported (moe loads F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K GGUF tensors)");
    for (int64_t r = 0; r < n; ++r) fn(src + r * t.row_bytes, out + r * ne0, ne0);
}

HfConfig gguf_to_hf_config(const GgufHeader& h) {
    const std::string& w = h.where;
    const std::string arch = h.get_str("general.architecture");
    if (!known_arch(arch))
        fail("'", w, "': general.architecture '", arch,
             "' is not supported (moe reads llama, qwen2, qwen3, qwen2moe, qwen3moe, olmoe)");
    const std::string A = arch + ".";
    HfConfig c;
    c.model_type = arch;
    c.family = arch == "llama" ? HfFamily::llama : arch == "qwen2" ? HfFamily::qwen2 : arch == "qwen3" ? HfFamily::qwen3
               : arch == "qwen2moe" ? HfFamily::qwen2_moe : arch == "qwen3moe" ? HfFamily::qwen3_moe : HfFamily::olmoe;
    const GgufTensorInfo* emb = h.find_tensor("token_embd.weight");
    if (!emb) fail("'", w, "': required tensor 'token_embd.weight' is missing");
    if (emb->shape.size() != 2) fail("'", w, "': token_embd.weight has shape ", shape_str(emb->shape), " (expected (V, C))");
    c.vocab_size = emb->shape[0];
    if (c.vocab_size < 1) fail("'", w, "': token_embd.weight has shape ", shape_str(emb->shape), ": no vocabulary rows");
    if (h.has(A + "vocab_size") && h.get_int(A + "vocab_size") != c.vocab_size)
        fail("'", w, "': ", A, "vocab_size = ", h.get_int(A + "vocab_size"), " but token_embd.weight has ", c.vocab_size, " rows");
    c.hidden_size = h.get_int(A + "embedding_length");
    c.num_hidden_layers = h.get_int(A + "block_count");
    c.num_attention_heads = uniform_int(h, A + "attention.head_count", 0, true);
    c.num_key_value_heads = uniform_int(h, A + "attention.head_count_kv", c.num_attention_heads, false);
    if (c.hidden_size <= 0 || c.num_hidden_layers <= 0 || c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 ||
        c.num_hidden_layers > 100000 || c.num_attention_heads > 100000)
        fail("'", w, "': implausible sizes: ", A, "embedding_length ", c.hidden_size, ", block_count ", c.num_hidden_layers,
             ", attention.head_count ", c.num_attention_heads, ", head_count_kv ", c.num_key_value_heads);
    if (c.hidden_size != emb->shape[1])
        fail("'", w, "': ", A, "embedding_length = ", c.hidden_size, " but token_embd.weight has ", emb->shape[1], " columns");
    c.head_dim = h.get_int(A + "attention.key_length", c.hidden_size / c.num_attention_heads);
    if (h.has(A + "attention.value_length") && h.get_int(A + "attention.value_length") != c.head_dim)
        fail("'", w, "': ", A, "attention.value_length = ", h.get_int(A + "attention.value_length"), " differs from key_length ",
             c.head_dim, " (not supported)");
    if (h.has(A + "rope.dimension_count") && h.get_int(A + "rope.dimension_count") != c.head_dim)
        fail("'", w, "': ", A, "rope.dimension_count = ", h.get_int(A + "rope.dimension_count"),
             ": partial RoPE is not supported (moe rotates the whole head of ", c.head_dim, ")");
    c.max_position_embeddings = h.get_int(A + "context_length");
    c.rope_theta = h.get_float(A + "rope.freq_base", 10000.0);
    c.rms_norm_eps = h.get_float(A + "attention.layer_norm_rms_epsilon");
    const std::string scaling = h.get_str(A + "rope.scaling.type", "none");
    if (scaling != "none")
        fail("'", w, "': ", A, "rope.scaling.type '", scaling, "' is not implemented in moe (only plain RoPE)");
    if (h.has(A + "rope.scaling.factor") && h.get_float(A + "rope.scaling.factor") != 1.0 && h.has(A + "rope.scaling.type"))
        fail("'", w, "': ", A, "rope.scaling.factor ", h.get_float(A + "rope.scaling.factor"), " is not implemented in moe");
    if (h.has(A + "rope.scaling.original_context_length") || h.has(A + "rope.scaling.attn_factor") ||
        h.has(A + "rope.scaling.yarn_log_multiplier"))
        fail("'", w, "': ", A, "rope.scaling.* keys: RoPE scaling is not implemented in moe");
    if (h.find_tensor("rope_freqs.weight"))
        fail("'", w, "': tensor rope_freqs.weight (Llama 3 RoPE frequency factors) is not implemented in moe");
    if (h.has(A + "attention.sliding_window") && h.get_int(A + "attention.sliding_window") > 0 &&
        h.get_int(A + "attention.sliding_window") < c.max_position_embeddings)
        fail("'", w, "': ", A, "attention.sliding_window = ", h.get_int(A + "attention.sliding_window"),
             ": sliding-window attention is not implemented in moe");
    if (h.has(A + "attention.clamp_kqv")) fail("'", w, "': ", A, "attention.clamp_kqv is not implemented in moe");
    if (h.has(A + "expert_gating_func") && h.get_int(A + "expert_gating_func") != 1)
        fail("'", w, "': ", A, "expert_gating_func = ", h.get_int(A + "expert_gating_func"),
             " is not supported (moe routes with softmax, 1)");
    if (h.has(A + "expert_weights_scale") && h.get_float(A + "expert_weights_scale") != 1.0)
        fail("'", w, "': ", A, "expert_weights_scale = ", h.get_float(A + "expert_weights_scale"), " is not supported");

    c.num_experts = h.get_int(A + "expert_count", 0);
    c.num_experts_per_tok = h.get_int(A + "expert_used_count", 0);
    const bool moe_arch = arch == "qwen2moe" || arch == "qwen3moe" || arch == "olmoe";
    if (moe_arch && c.num_experts <= 0) fail("'", w, "': ", A, "expert_count is missing or 0 for a mixture-of-experts architecture");
    c.norm_topk_prob = h.get_bool(A + "expert_weights_norm", default_norm_topk(arch));
    c.layer_moe.assign((size_t)c.num_hidden_layers, false);
    const std::string b0 = "blk.0.";
    int64_t first_moe = -1;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        const bool m = h.find_tensor(b + "ffn_gate_inp.weight") != nullptr;
        if (m && c.num_experts <= 0) fail("'", w, "': tensor ", b, "ffn_gate_inp.weight but no ", A, "expert_count");
        if (!m && c.num_experts > 0 && !h.find_tensor(b + "ffn_up.weight"))
            fail("'", w, "': layer ", l, " has neither a router (", b, "ffn_gate_inp.weight) nor a dense FFN (", b,
                 "ffn_up.weight)", h.find_tensor(b + "ffn_gate.0.weight") ? "; per-expert tensors (ffn_gate.E) of old "
                                                                             "GGUF files are not supported, reconvert"
                                                                           : "");
        c.layer_moe[(size_t)l] = m;
        if (m && first_moe < 0) first_moe = l;
    }
    bool any_dense = false;
    for (bool m : c.layer_moe) any_dense |= !m;
    if (any_dense) c.intermediate_size = uniform_int(h, A + "feed_forward_length", 0, true);
    if (c.num_experts > 0) {
        if (c.num_experts_per_tok <= 0) h.get(A + "expert_used_count");
        c.expert_intermediate_size = h.get_int(A + "expert_feed_forward_length", -1);
        if (c.expert_intermediate_size < 0) c.expert_intermediate_size = uniform_int(h, A + "feed_forward_length", 0, true);
        if (first_moe >= 0) {
            const std::string b = "blk." + std::to_string(first_moe) + ".";
            if (h.find_tensor(b + "ffn_up_shexp.weight")) {
                c.shared_expert_intermediate_size = h.get_int(A + "expert_shared_feed_forward_length", -1);
                if (c.shared_expert_intermediate_size < 0) c.shared_expert_intermediate_size = h.find_tensor(b + "ffn_up_shexp.weight")->shape[0];
                c.shared_expert_gate = h.find_tensor(b + "ffn_gate_inp_shexp.weight") != nullptr;
            }
        }
    }
    c.qkv_bias = h.find_tensor(b0 + "attn_q.bias") != nullptr;
    c.o_bias = h.find_tensor(b0 + "attn_output.bias") != nullptr;
    if (const GgufTensorInfo* qn = h.find_tensor(b0 + "attn_q_norm.weight")) {
        const int64_t n = qn->numel();
        c.qk_norm = n == c.head_dim ? HfQkNorm::per_head : HfQkNorm::full;
    }
    c.tie_word_embeddings = h.find_tensor("output.weight") == nullptr;
    c.rope_type = "default";
    return c;
}

// ---- tokenizer: GGUF keys -> tokenizer.json ---------------------------------------------------

namespace {

enum TokType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

const char* const kRegexQwen2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const kRegexLlama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

Json byte_level(bool prefix, bool regex) {
    return {{"type", "ByteLevel"}, {"add_prefix_space", prefix}, {"trim_offsets", true}, {"use_regex", regex}};
}
Json split_then_bytes(const char* re) {
    return {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"}, {"invert", false}},
              byte_level(false, false)}}};
}

// The SentencePiece merges implied by a vocabulary and scores: every split of a token into two
// tokens, the merged token's score deciding the order (higher first; then lower id, then the
// left part's id), as the SentencePiece → tokenizer.json conversion of transformers builds them.
std::vector<std::pair<std::string, std::string>> spm_merges(const std::vector<std::string>& tokens,
                                                            const std::vector<double>& scores,
                                                            const std::vector<int64_t>& types) {
    std::unordered_map<std::string, int64_t> id;
    for (size_t i = 0; i < tokens.size(); ++i)
        if (types[i] == kNormal || types[i] == kUserDefined) id.emplace(tokens[i], (int64_t)i);
    struct M {
        double score;
        int64_t merged, left, right;
    };
    std::vector<M> ms;
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (types[i] != kNormal) continue;
        const std::string& t = tokens[i];
        for (size_t k = 1; k < t.size(); ++k) {
            if (((unsigned char)t[k] & 0xC0) == 0x80) continue;  // inside a UTF-8 character
            auto l = id.find(t.substr(0, k));
            if (l == id.end()) continue;
            auto r = id.find(t.substr(k));
            if (r == id.end()) continue;
            ms.push_back({scores.empty() ? 0.0 : scores[i], (int64_t)i, l->second, r->second});
        }
    }
    std::stable_sort(ms.begin(), ms.end(), [](const M& a, const M& b) {
        if (a.score != b.score) return a.score > b.score;
        if (a.merged != b.merged) return a.merged < b.merged;
        return a.left < b.left;
    });
    std::vector<std::pair<std::string, std::string>> out;
    out.reserve(ms.size());
    for (const M& m : ms) out.emplace_back(tokens[(size_t)m.left], tokens[(size_t)m.right]);
    return out;
}

}  // namespace

bool gguf_tokenizer_json(const GgufHeader& h, Json& tj, Json& cfg) {
    const std::string& w = h.where;
    const std::string model = h.get_str("tokenizer.ggml.model", "none");
    if (model == "none" || model == "no_vocab" || model.empty()) return false;  // llama.cpp's two spellings
    if (model != "llama" && model != "gpt2")
        fail("'", w, "': tokenizer.ggml.model '", model, "' is not supported (moe reads 'llama' and 'gpt2')");
    const std::vector<std::string> tokens = h.get_str_array("tokenizer.ggml.tokens");
    const int64_t n = (int64_t)tokens.size();
    if (n == 0) fail("'", w, "': tokenizer.ggml.tokens is empty");
    if (n >= ((int64_t)1 << 30)) fail("'", w, "': tokenizer.ggml.tokens has ", n, " entries");
    std::vector<int64_t> types(tokens.size(), kNormal);
    if (h.has("tokenizer.ggml.token_type")) {
        types = h.get_int_array("tokenizer.ggml.token_type");
        if ((int64_t)types.size() != n)
            fail("'", w, "': tokenizer.ggml.token_type has ", types.size(), " entries for ", n, " tokens");
    }
    std::vector<double> scores;
    if (h.has("tokenizer.ggml.scores")) {
        scores = h.get_float_array("tokenizer.ggml.scores");
        if ((int64_t)scores.size() != n) fail("'", w, "': tokenizer.ggml.scores has ", scores.size(), " entries for ", n, " tokens");
    }
    auto id_key = [&](const char* key) -> int64_t {
        const std::string k = std::string("tokenizer.ggml.") + key;
        if (!h.has(k)) return -1;
        const int64_t v = h.get_int(k);
        if (v < 0 || v >= n) {
            if (v == -1 || (h.get(k).type == GgufType::u32 && h.get(k).u == 0xFFFFFFFFu)) return -1;
            fail("'", w, "': ", k, " = ", v, " is outside the ", n, " tokens");
        }
        return v;
    };
    const int64_t bos = id_key("bos_token_id"), eos = id_key("eos_token_id"), unk = id_key("unknown_token_id"),
                  pad = id_key("padding_token_id"), eot = id_key("eot_token_id");
    const bool spm = model == "llama";

    Json vocab = Json::object(), added = Json::array();
    for (int64_t i = 0; i < n; ++i) {
        const int64_t t = types[(size_t)i];
        if (t < 1 || t > 6) fail("'", w, "': tokenizer.ggml.token_type[", i, "] = ", t, " (1 to 6)");
        const std::string& s = tokens[(size_t)i];
        if (t == kUnused) continue;
        // every token is in the model's vocabulary with its id (the loader numbers added tokens
        // that are not from vocab.size() on); control / user-defined / unknown ones are also added
        // tokens, matched in the raw text before pre-tokenization as llama.cpp does
        if (vocab.contains(s))
            fail("'", w, "': token '", s, "' appears twice in tokenizer.ggml.tokens (ids ", vocab[s].get<int64_t>(), " and ", i, ")");
        vocab[s] = i;
        if (t == kControl || t == kUserDefined || t == kUnknown)
            added.push_back({{"id", i}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                             {"normalized", false}, {"special", t != kUserDefined}});
    }
    Json merges = Json::array();
    if (h.has("tokenizer.ggml.merges")) {
        for (const std::string& m : h.get_str_array("tokenizer.ggml.merges")) merges.push_back(m);
    } else if (spm) {
        for (auto& [a, b] : spm_merges(tokens, scores, types)) merges.push_back(Json::array({a, b}));
    } else {
        h.get("tokenizer.ggml.merges");  // required for gpt2: throws "missing"
    }
    Json jm = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
               {"end_of_word_suffix", nullptr}, {"fuse_unk", spm}, {"byte_fallback", spm}, {"ignore_merges", false},
               {"vocab", vocab}, {"merges", merges}};
    if (spm && unk >= 0) jm["unk_token"] = tokens[(size_t)unk];
    tj = Json::object();
    tj["version"] = "1.0";
    tj["truncation"] = nullptr;
    tj["padding"] = nullptr;
    tj["added_tokens"] = added;
    const bool add_space = h.get_bool("tokenizer.ggml.add_space_prefix", spm);
    if (spm) {
        Json norms = Json::array();
        if (add_space) norms.push_back({{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}});
        norms.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}});
        tj["normalizer"] = {{"type", "Sequence"}, {"normalizers", norms}};
        tj["pre_tokenizer"] = nullptr;
        tj["post_processor"] = nullptr;
        Json decs = Json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                 {{"type", "ByteFallback"}},
                                 {{"type", "Fuse"}}});
        if (add_space) decs.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
        tj["decoder"] = {{"type", "Sequence"}, {"decoders", decs}};
    } else {
        const std::string pre = h.get_str("tokenizer.ggml.pre", "default");
        Json normalizer = nullptr, pt;
        if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
            normalizer = {{"type", "NFC"}};
            pt = split_then_bytes(kRegexQwen2);
        } else if (pre == "llama-bpe" || pre == "llama3" || pre == "smaug-bpe") {
            pt = split_then_bytes(kRegexLlama3);
            jm["ignore_merges"] = true;
        } else if (pre == "olmo") {
            normalizer = {{"type", "NFC"}};
            pt = byte_level(add_space, true);
        } else if (pre == "gpt-2" || pre == "gpt2") {
            pt = byte_level(add_space, true);
        } else {
            fail("'", w, "': tokenizer.ggml.pre '", pre,
                 "' is not supported (moe knows qwen2, deepseek-r1-qwen, llama-bpe, smaug-bpe, olmo, gpt-2)");
        }
        tj["normalizer"] = normalizer;
        tj["pre_tokenizer"] = pt;
        tj["post_processor"] = byte_level(true, true);
        tj["post_processor"]["trim_offsets"] = false;
        tj["decoder"] = byte_level(true, true);
    }
    tj["model"] = jm;

    cfg = Json::object();
    if (bos >= 0) cfg["bos_token"] = tokens[(size_t)bos];
    if (eos >= 0) cfg["eos_token"] = tokens[(size_t)eos];
    if (unk >= 0) cfg["unk_token"] = tokens[(size_t)unk];
    if (pad >= 0) cfg["pad_token"] = tokens[(size_t)pad];
    // llama.cpp's defaults without the keys: BOS for SentencePiece vocabularies, none for BPE
    const bool add_bos = h.get_bool("tokenizer.ggml.add_bos_token", spm && bos >= 0);
    const bool add_eos = h.get_bool("tokenizer.ggml.add_eos_token", false);
    if (add_bos && bos < 0) fail("'", w, "': tokenizer.ggml.add_bos_token is true but there is no tokenizer.ggml.bos_token_id");
    if (add_eos && eos < 0) fail("'", w, "': tokenizer.ggml.add_eos_token is true but there is no tokenizer.ggml.eos_token_id");
    cfg["add_bos_token"] = add_bos;
    cfg["add_eos_token"] = add_eos;
    if (h.has("tokenizer.chat_template")) cfg["chat_template"] = h.get_str("tokenizer.chat_template");
    if (eot >= 0 && eot != eos) cfg["moe_extra_eos_ids"] = Json::array({eot});
    return true;
}

std::shared_ptr<const HfTokenizer> gguf_tokenizer(const GgufHeader& h) {
    Json tj, cfg;
    if (h.has("tokenizer.huggingface.json")) {
        try {
            tj = Json::parse(h.get_str("tokenizer.huggingface.json"));
        } catch (const Json::exception& e) {
            fail("'", h.where, "': tokenizer.huggingface.json is not valid JSON: ", e.what());
        }
        Json synth;
        if (!gguf_tokenizer_json(h, synth, cfg)) cfg = Json::object();
    } else if (!gguf_tokenizer_json(h, tj, cfg)) {
        return nullptr;
    }
    Json gen = nullptr;
    if (cfg.contains("moe_extra_eos_ids")) {
        gen = {{"eos_token_id", cfg["moe_extra_eos_ids"]}};
        cfg.erase("moe_extra_eos_ids");
    }
    return HfTokenizer::from_json(tj, cfg, h.where + " (tokenizer.*)", h.where + " (tokenizer.* special tokens)", gen);
}

// ---- the model --------------------------------------------------------------------------------

Config gguf_model_config(const std::string& path, int64_t n_ctx) {
    const std::shared_ptr<GgufSource> src = GgufSource::open(path);
    return hf_to_moe_config(gguf_to_hf_config(src->header()), n_ctx, path);
}

Checkpoint load_gguf_model(const std::string& path, const std::string& weight_type, int64_t n_ctx, ExpertRange experts) {
    const std::shared_ptr<GgufSource> src = GgufSource::open(path);
    const GgufHeader& h = src->header();
    const HfConfig hf = gguf_to_hf_config(h);
    const std::string arch = hf.model_type;
    Checkpoint ck;
    ck.config = hf_to_moe_config(hf, n_ctx, path);
    const int64_t D = ck.config.model.head_dim();
    // stored type of the matrices decides the default, as for Hugging Face models
    const GgufTensorInfo& q0 = src->get_info("blk.0.attn_q.weight");
    const GgmlType stored = q0.type;
    ck.weight_type = stored == GgmlType::BF16 ? "bf16" : stored == GgmlType::F16 ? "f16" : stored == GgmlType::F32 ? "fp32"
                                                                                                                 : ggml_type_name(stored);
    gguf_register_ggml_kernels();
    kernels::WType stored_block = kernels::WType::f32;
    const bool stored_is_block = block_wtype(stored, stored_block);
    kernels::WType want = !weight_type.empty()        ? kernels::parse_wtype(weight_type, "--dtype")
                          : stored == GgmlType::BF16 ? kernels::WType::bf16
                          : stored_is_block          ? stored_block
                                                     : kernels::WType::f32;
    if (kernels::is_ggml(want)) {
        // every typed matrix's rows must be whole blocks of the model's type; a file whose rows
        // do not all fit the type of blk.0.attn_q.weight (its writer fell back to Q8_0 / F16 for
        // some matrices) loads as Q8_0 when 32 divides every row, else as F16
        const int64_t bs = kernels::gtype_block(kernels::ggml_type(want));
        const ParamTable table(ck.config.model);
        const ParamInfo* bad = nullptr;
        bool all32 = true;
        for (const auto& p : table.params()) {
            if (!typed_at_inference(p)) continue;
            if (p.shape.back() % bs != 0 && !bad) bad = &p;
            all32 &= p.shape.back() % 32 == 0;
        }
        if (bad && !weight_type.empty())
            fail("'", path, "': --dtype ", weight_type, " needs rows that are a multiple of ", bs, " values, but tensor '",
                 gguf_name(bad->name), "' has rows of ", bad->shape.back(), " (try --dtype q8_0, f16 or bf16)");
        if (bad) want = all32 ? kernels::WType::q8_0 : kernels::WType::f16;
    }
    // The file is mapped lazily; what moe allocates is the converted model. Refuse up front when
    // that cannot fit in the machine's memory instead of being killed halfway.
    {
        int64_t numel = 0;
        const ParamTable table(ck.config.model);  // named: a range-for over a temporary's member dangles
        for (const auto& p : table.params())  // (a range of experts: those only; checked by Model)
            numel += p.expert && !experts.all() ? p.numel / ck.config.model.n_expert * experts.count : p.numel;
        const double bytes = (double)numel * (want == kernels::WType::f32                                    ? 4.0
                                              : want == kernels::WType::bf16 || want == kernels::WType::f16 ? 2.0
                                                                                                             : 1.2);
        const long pages = ::sysconf(_SC_PHYS_PAGES), psize = ::sysconf(_SC_PAGESIZE);
        if (pages > 0 && psize > 0 && bytes > (double)pages * (double)psize)
            fail("'", path, "': the model needs about ", bytes / (1 << 30), " GiB as ", kernels::wtype_name(want),
                 " but the machine has ", (double)pages * (double)psize / (1 << 30), " GiB of memory");
    }
    const ParamTable full(ck.config.model);  // the file's tensors: every expert
    // Every tensor the metadata implies, with its shape, before the model is allocated: the tensors
    // lie inside the file, so metadata claiming more than the file holds (a damaged or hand-edited
    // header) is an error line here rather than an allocation of what it claims.
    for (const ParamInfo& fp : full.params()) {
        if (!fp.trainable) continue;
        const std::string gname = gguf_name(fp.name);
        const GgufTensorInfo& t = src->get_info(gname);
        if (squeeze(t.shape) != squeeze(fp.shape))
            fail("'", path, "': tensor '", gname, "' has shape ", shape_str(t.shape), " (ne ", shape_str(t.ne),
                 ") but the metadata implies ", shape_str(fp.shape));
    }
    ck.model = std::make_unique<Model>(ck.config.model, want, experts);
    Model& m = *ck.model;
    std::set<std::string> used;
    std::vector<float> rows, tmp;
    for (size_t i = 0; i < m.table().params().size(); ++i) {
        const ParamInfo& p = m.table().params()[i];  // (a range of experts: its rows of fp)
        const ParamInfo& fp = full.params()[i];
        MOE_ASSERT(fp.name == p.name);
        if (!p.trainable) continue;
        const std::string gname = gguf_name(p.name);
        const GgufTensorInfo& t = src->get_info(gname);  // (present, its shape checked above)
        used.insert(gname);
        const void* data = src->data(t);
        bool permute = false;
        int64_t nh = 0;
        if (arch == "llama") {
            const bool q = p.name.find(".attn_q") != std::string::npos && p.name.find("_norm") == std::string::npos;
            const bool k = p.name.find(".attn_k") != std::string::npos && p.name.find("_norm") == std::string::npos;
            if (q || k) {
                permute = true;
                nh = q ? ck.config.model.n_head : ck.config.model.n_head_kv;
            }
        }
        float* dst = m.param_f32(p);
        // a range of experts' rows (never permuted: those are attention's), else every row
        const auto [lr0, out] = m.source_rows(p);
        const int64_t in = p.shape.back();
        MOE_ASSERT(lr0 == 0 || !permute);
        kernels::WType file_block = kernels::WType::f32;
        if (!dst && block_wtype(t.type, file_block) && file_block == want) {
            const auto* bytes = static_cast<const uint8_t*>(data);
            MOE_ASSERT(t.row_bytes == kernels::gtype_row_bytes(kernels::ggml_type(want), in));
            if (!permute) {
                kernels::QMatrix v;  // in place: the mapping holds it (stacked experts: rows follow each other)
                v.type = want, v.in = in, v.out = out, v.raw = bytes + lr0 * t.row_bytes, v.row_bytes = t.row_bytes;
                m.set_param_view(p, v, src);
            } else {  // llama's Q / K: the same blocks, rows moved back to Hugging Face's order
                kernels::QStore& st = m.param_store(p);
                MOE_ASSERT((int64_t)st.raw.size() == out * t.row_bytes);
                permute_row_bytes(st.raw.data(), bytes, nh, D, t.row_bytes, false);
            }
            continue;
        }
        if (!dst && !permute && want == kernels::WType::bf16 && t.type == GgmlType::BF16) {
            kernels::QMatrix v;  // in place: the mapping holds it
            v.type = kernels::WType::bf16, v.in = in, v.out = out, v.bf16 = static_cast<const uint16_t*>(data) + lr0 * in;
            m.set_param_view(p, v, src);
            continue;
        }
        if (dst || permute) {
            // whole tensor at once (fp32 parameters, or a projection to un-permute)
            float* full = dst;
            if (!dst) {
                rows.resize((size_t)p.numel);
                full = rows.data();
            }
            gguf_rows_to_f32(t, data, lr0, lr0 == 0 && out == fp.numel / in ? std::max<int64_t>(t.rows, 1) : out, full,
                             path);
            if (permute) {
                tmp.assign(full, full + p.numel);
                permute_rows(full, tmp.data(), nh, D, p.numel / (nh * D), false);
            }
            if (!dst) m.param_store(p).set_rows(0, out, full);
            continue;
        }
        kernels::QStore& st = m.param_store(p);
        const int64_t step = std::max<int64_t>(1, (1 << 18) / in);
        rows.resize((size_t)(std::min(step, st.out) * in));
        // GGUF rows are of ne[0] = in values: the store's rows are the tensor's rows
        for (int64_t r0 = 0; r0 < st.out; r0 += step) {
            const int64_t nr = std::min(step, st.out - r0);
            gguf_rows_to_f32(t, data, lr0 + r0, nr, rows.data(), path);
            st.set_rows(r0, nr, rows.data());
        }
    }
    if (hf.tie_word_embeddings) used.insert("output.weight");
    ck.tokenizer_missing = true;
    ck.tokenizer = Tokenizer::byte_level();
    if (auto tok = gguf_tokenizer(h)) {
        ck.tokenizer = Tokenizer::from_hf(tok);
        ck.tokenizer_missing = false;
        if (tok->vocab_size() > ck.config.model.vocab_size)
            fail("'", path, "': the tokenizer has ", tok->vocab_size(), " tokens but token_embd.weight only ",
                 ck.config.model.vocab_size, " rows");
    }
    return ck;
}

// ---- tokenizer: tokenizer.json -> GGUF keys ---------------------------------------------------

void gguf_write_tokenizer(GgufWriter& w, const HfTokenizer& tok, int64_t n_vocab, bool embed_hf_json) {
    const Json& tj = tok.tokenizer_json();
    const std::string where = "tokenizer";
    const Json& model = tj.at("model");
    if (!model.is_object() || model.value("type", "") != "BPE")
        fail(where, ": only BPE tokenizers can be written to GGUF (model type '",
             model.is_object() ? model.value("type", "?") : "?", "')");
    const bool spm = model.value("byte_fallback", false);
    std::string pre;
    bool add_space = spm;
    const Json norm = tj.value("normalizer", Json());
    const Json pt = tj.value("pre_tokenizer", Json());
    const bool nfc = norm.is_object() && norm.value("type", "") == "NFC";
    if (spm) {
        bool prepend = false;
        if (norm.is_object() && norm.value("type", "") == "Sequence")
            for (const auto& x : norm.value("normalizers", Json::array()))
                if (x.value("type", "") == "Prepend") prepend = true;
        if (pt.is_object() && pt.value("type", "") == "Metaspace") prepend = pt.value("prepend_scheme", "always") != "never";
        add_space = prepend;
    } else if (pt.is_object() && pt.value("type", "") == "ByteLevel" && pt.value("use_regex", true)) {
        pre = nfc ? "olmo" : "gpt-2";
        add_space = pt.value("add_prefix_space", false);
    } else if (pt.is_object() && pt.value("type", "") == "Sequence" && pt.value("pretokenizers", Json::array()).size() == 2) {
        const Json& s = pt["pretokenizers"][0];
        const std::string re = s.value("pattern", Json::object()).value("Regex", "");
        if (re == kRegexQwen2) pre = "qwen2";
        else if (re == kRegexLlama3) pre = "llama-bpe";
        add_space = false;
    }
    if (!spm && pre.empty())
        fail(where, ": this byte-level BPE tokenizer's pre-tokenizer has no tokenizer.ggml.pre equivalent (moe writes "
                    "qwen2, llama-bpe, olmo and gpt-2 ones)");
    const int64_t V = std::max<int64_t>(n_vocab, tok.vocab_size());
    std::vector<std::string> tokens((size_t)V);
    std::vector<int32_t> types((size_t)V, kNormal);
    std::vector<float> scores((size_t)V, 0.0f);
    std::vector<uint8_t> have((size_t)V, 0);
    for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) {
        const int64_t id = it.value().get<int64_t>();
        if (id < 0 || id >= V) continue;
        tokens[(size_t)id] = it.key();
        have[(size_t)id] = 1;
        scores[(size_t)id] = -(float)id;
        const std::string& s = it.key();
        if (spm && s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>') types[(size_t)id] = kByte, scores[(size_t)id] = 0;
    }
    for (const auto& a : tj.value("added_tokens", Json::array())) {
        const int64_t id = a.at("id").get<int64_t>();
        if (id < 0 || id >= V) continue;
        tokens[(size_t)id] = a.at("content").get<std::string>();
        have[(size_t)id] = 1;
        types[(size_t)id] = a.value("special", false) ? kControl : kUserDefined;
        scores[(size_t)id] = -1000.0f;
    }
    // tokenizer_config.json's extra added tokens
    for (int64_t id = 0; id < tok.vocab_size(); ++id)
        if (!have[(size_t)id] && !tok.token_text((int32_t)id).empty()) {
            tokens[(size_t)id] = tok.token_text((int32_t)id);
            have[(size_t)id] = 1;
            types[(size_t)id] = tok.is_special((int32_t)id) ? kControl : kUserDefined;
            scores[(size_t)id] = -1000.0f;
        }
    int32_t unk = -1;
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
        unk = tok.token_to_id(model["unk_token"].get<std::string>());
        if (unk >= 0) types[(size_t)unk] = kUnknown;
    }
    for (int64_t i = 0; i < V; ++i)
        if (!have[(size_t)i]) tokens[(size_t)i] = "[PAD" + std::to_string(i) + "]", types[(size_t)i] = kUnused, scores[(size_t)i] = -1000.0f;
    std::vector<std::string> merges;
    for (const auto& m : model.value("merges", Json::array())) {
        if (m.is_string()) merges.push_back(m.get<std::string>());
        else merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    }
    w.set_str("tokenizer.ggml.model", spm ? "llama" : "gpt2");
    w.set_str("tokenizer.ggml.pre", spm ? "default" : pre);
    w.set("tokenizer.ggml.tokens", GgufValue::make_str_array(tokens));
    if (spm) w.set("tokenizer.ggml.scores", GgufValue::make_f32_array(scores));
    w.set("tokenizer.ggml.token_type", GgufValue::make_i32_array(types));
    w.set("tokenizer.ggml.merges", GgufValue::make_str_array(merges));
    if (tok.bos_id() >= 0) w.set_u32("tokenizer.ggml.bos_token_id", (uint32_t)tok.bos_id());
    if (!tok.eos_ids().empty()) w.set_u32("tokenizer.ggml.eos_token_id", (uint32_t)tok.eos_ids()[0]);
    if (tok.eos_ids().size() > 1) w.set_u32("tokenizer.ggml.eot_token_id", (uint32_t)tok.eos_ids()[1]);
    if (unk >= 0) w.set_u32("tokenizer.ggml.unknown_token_id", (uint32_t)unk);
    const Json& cfg = tok.tokenizer_config();
    if (cfg.is_object() && cfg.contains("pad_token")) {
        const Json& pv = cfg["pad_token"];
        const std::string ps = pv.is_string() ? pv.get<std::string>() : pv.is_object() ? pv.value("content", "") : "";
        const int32_t pid = ps.empty() ? -1 : tok.token_to_id(ps);
        if (pid >= 0) w.set_u32("tokenizer.ggml.padding_token_id", (uint32_t)pid);
    }
    // what encode(add_special_tokens) puts around a text
    const std::vector<int32_t> with = tok.encode("a", true), without = tok.encode("a", false);
    size_t lead = 0;
    while (lead + without.size() <= with.size() && !std::equal(without.begin(), without.end(), with.begin() + (long)lead)) ++lead;
    const bool found = lead + without.size() <= with.size();
    const size_t trail = found ? with.size() - lead - without.size() : 0;
    const bool add_bos = found && lead == 1 && with[0] == tok.bos_id();
    const bool add_eos = found && trail == 1 && !tok.eos_ids().empty() && with.back() == tok.eos_ids()[0];
    w.set_bool("tokenizer.ggml.add_bos_token", add_bos);
    w.set_bool("tokenizer.ggml.add_eos_token", add_eos);
    w.set_bool("tokenizer.ggml.add_space_prefix", add_space);
    if (cfg.is_object() && cfg.contains("chat_template")) {
        const Json& ct = cfg["chat_template"];
        if (ct.is_string()) w.set_str("tokenizer.chat_template", ct.get<std::string>());
        else if (ct.is_array())
            for (const auto& x : ct)
                if (x.value("name", "") == "default") w.set_str("tokenizer.chat_template", x.value("template", ""));
    }
    if (embed_hf_json) w.set_str("tokenizer.huggingface.json", tj.dump());
}

// ---- export -----------------------------------------------------------------------------------

GgmlType parse_gguf_type(const std::string& s, const char* what) {
    std::string u;
    for (char c : s) u += (char)std::toupper((unsigned char)c);
    if (u == "FP32") u = "F32";
    if (u == "FP16") u = "F16";
    for (uint32_t id = 0; id < 64; ++id)
        if (const GgmlTypeInfo* t = ggml_type_info(id); t && u == t->name) return t->type;
    fail(what, ": unknown GGUF type '", s, "' (f32, f16, bf16, or a ggml type name such as Q8_0)");
}

void export_gguf(const Checkpoint& ck, const std::string& out_path, const GgufExportOptions& opt) {
    const ModelConfig& mc = ck.config.model;
    const Model& cm = *ck.model;
    Model& m = const_cast<Model&>(cm);
    if (m.typed()) fail("cannot export '", out_path, "': the model holds ", kernels::wtype_name(m.weight_type()), " weights; load it as fp32");
    if (mc.activation != ops::Activation::swiglu) fail("cannot export '", out_path, "': GGUF architectures use SwiGLU; this model uses ReLU");
    if (mc.router.bias_balance) fail("cannot export '", out_path, "': aux-loss-free bias balancing has no GGUF equivalent for these architectures");
    if (mc.router.noisy_gating && mc.router.noise_at_eval) fail("cannot export '", out_path, "': router noise at inference has no GGUF equivalent");
    if (mc.router.routed_scale != 1.0) fail("cannot export '", out_path, "': routed_scale ", mc.router.routed_scale, " has no GGUF equivalent here");
    if (mc.router.eval_capacity_factor > 0) fail("cannot export '", out_path, "': an inference capacity factor has no GGUF equivalent");
    const bool moe = mc.any_moe();
    bool all_moe = true;
    for (bool b : mc.layer_moe) all_moe &= b;
    std::string arch;
    if (mc.qk_norm && !mc.qk_norm_head) {
        if (!all_moe || mc.attn_bias_qkv || mc.n_ff_shexp > 0) fail("cannot export '", out_path, "': whole-projection q/k norms exist only in olmoe (all layers MoE, no biases)");
        arch = "olmoe";
    } else if (mc.qk_norm) {
        arch = moe ? "qwen3moe" : "qwen3";
    } else if (mc.n_ff_shexp > 0) {
        arch = "qwen2moe";
    } else if (mc.attn_bias_qkv && !moe) {
        arch = "qwen2";
    } else {
        arch = "llama";
    }
    if (mc.n_ff_shexp > 0 && arch != "qwen2moe") fail("cannot export '", out_path, "': a shared expert with ", arch, " features");
    const std::string A = arch + ".";
    const int64_t D = mc.head_dim();
    GgufWriter w;
    w.set_str("general.architecture", arch);
    if (!opt.name.empty()) w.set_str("general.name", opt.name);
    // llama.cpp's llama_ftype: the K-quants without a mix are its *_S variants
    uint32_t file_type = 0;
    switch (opt.type) {
        case GgmlType::F32: file_type = 0; break;
        case GgmlType::F16: file_type = 1; break;
        case GgmlType::BF16: file_type = 32; break;
        case GgmlType::Q4_0: file_type = 2; break;
        case GgmlType::Q8_0: file_type = 7; break;
        case GgmlType::Q4_K: file_type = 14; break;
        case GgmlType::Q5_K: file_type = 16; break;
        case GgmlType::Q6_K: file_type = 18; break;
        default:
            fail("cannot export '", out_path, "' as ", ggml_type_name(opt.type),
                 ": moe writes F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K");
    }
    gguf_register_ggml_kernels();
    w.set_u32("general.file_type", file_type);
    w.set_u32(A + "vocab_size", (uint32_t)mc.vocab_size);
    w.set_u32(A + "context_length", (uint32_t)mc.n_ctx);
    w.set_u32(A + "embedding_length", (uint32_t)mc.n_embd);
    w.set_u32(A + "block_count", (uint32_t)mc.n_layer);
    w.set_u32(A + "feed_forward_length", (uint32_t)(mc.n_ff > 0 ? mc.n_ff : mc.n_ff_exp));
    w.set_u32(A + "attention.head_count", (uint32_t)mc.n_head);
    w.set_u32(A + "attention.head_count_kv", (uint32_t)mc.n_head_kv);
    w.set_f32(A + "rope.freq_base", (float)mc.rope_theta);
    w.set_u32(A + "rope.dimension_count", (uint32_t)D);
    w.set_f32(A + "attention.layer_norm_rms_epsilon", (float)mc.norm_eps);
    if (D != mc.n_embd / mc.n_head || mc.n_embd % mc.n_head != 0) {
        w.set_u32(A + "attention.key_length", (uint32_t)D);
        w.set_u32(A + "attention.value_length", (uint32_t)D);
    }
    if (moe) {
        w.set_u32(A + "expert_count", (uint32_t)mc.n_expert);
        w.set_u32(A + "expert_used_count", (uint32_t)mc.n_expert_used);
        w.set_u32(A + "expert_feed_forward_length", (uint32_t)mc.n_ff_exp);
        if (mc.n_ff_shexp > 0) w.set_u32(A + "expert_shared_feed_forward_length", (uint32_t)mc.n_ff_shexp);
        if (mc.router.norm_topk != default_norm_topk(arch)) w.set_bool(A + "expert_weights_norm", mc.router.norm_topk);
    }
    if (!ck.tokenizer_missing) {
        std::shared_ptr<const HfTokenizer> tok = ck.tokenizer.hf();
        if (!tok) tok = HfTokenizer::from_json(ck.tokenizer.to_hf_tokenizer_json(), nullptr, "moe tokenizer");
        gguf_write_tokenizer(w, *tok, mc.vocab_size, opt.embed_hf_tokenizer_json);
    } else {
        // llama.cpp requires the key (its loader refuses a file without it); "none" is its model
        // without a vocabulary: vocab_size dummy tokens, ids only
        w.set_str("tokenizer.ggml.model", "none");
    }
    std::map<std::string, int64_t> fallbacks;  // type written instead of opt.type -> matrices
    std::string first_fallback;
    std::vector<std::vector<float>> permuted;  // kept alive until write()
    permuted.reserve(4 * (size_t)mc.n_layer);
    for (const auto& p : m.table().params()) {
        if (!p.trainable) continue;
        if (p.name.find("ffn_gate_inp_noise") != std::string::npos) continue;  // training only
        const float* data = m.param_f32(p);
        MOE_ASSERT(data);
        std::vector<int64_t> shape = p.shape;
        if (arch == "llama" && (p.name.find(".attn_q") != std::string::npos || p.name.find(".attn_k") != std::string::npos)) {
            const int64_t nh = p.name.find(".attn_q") != std::string::npos ? mc.n_head : mc.n_head_kv;
            permuted.emplace_back((size_t)p.numel);
            permute_rows(permuted.back().data(), data, nh, D, p.numel / (nh * D), true);
            data = permuted.back().data();
        }
        GgmlType t = shape.size() >= 2 ? opt.type : GgmlType::F32;
        // routers stay F32 in a block-quantized file, as convert_hf_to_gguf.py and llama-quantize
        // keep ffn_gate_inp (moe keeps routers fp32 at inference too)
        if (ggml_type_info(opt.type).quantized && p.name.find("ffn_gate_inp") != std::string::npos) t = GgmlType::F32;
        const GgmlType fit = fitting_type(t, shape.back());  // a block that does not divide the rows
        if (fit != t) {
            if (fallbacks.empty()) first_fallback = gguf_name(p.name) + " (rows of " + std::to_string(shape.back()) + ")";
            fallbacks[ggml_type_name(fit)]++;
            t = fit;
        }
        w.add_tensor_f32(gguf_name(p.name), t, shape, data);
    }
    if (!fallbacks.empty()) {
        std::string what;
        for (const auto& [name, n] : fallbacks) what += (what.empty() ? "" : ", ") + std::to_string(n) + " as " + name;
        std::fprintf(stderr,
                     "moe: warning: %s: %s's block of %lld values does not divide the rows of some matrices (first: %s); "
                     "written %s\n",
                     out_path.c_str(), ggml_type_name(opt.type), (long long)ggml_type_info(opt.type).block_size,
                     first_fallback.c_str(), what.c_str());
    }
    w.write(out_path);
}

void export_gguf(const std::string& model_path, const std::string& out_path, const GgufExportOptions& opt) {
    const Checkpoint ck = load_model(model_path, "fp32");
    export_gguf(ck, out_path, opt);
}

}  // namespace moe
