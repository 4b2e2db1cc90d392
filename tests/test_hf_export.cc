// `moe export --format hf` (src/io/hf_export.*, issue #20 item 6). No Python at test time:
//  - tiny moe checkpoints (tests/data/export/, made by RegenerateModels below) exported and loaded by
//    transformers 5.23 in scripts/gen_export_refs.py, whose logits and tokenizer ids are committed
//    next to each checkpoint: moe's logits of the original and of the export (loaded back) within
//    1e-4 of transformers', the exported tokenizer giving transformers' ids;
//  - every tiny transformers model of tests/data/hf loaded and exported: the same tensors byte for
//    byte (the very same model.safetensors bytes), config.json and generation_config.json copied;
//  - config.json written for every family reads back to the same HfConfig;
//  - what no family expresses is a moe::error naming the field; bad command lines one error line.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_util.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/hf_export.h"
#include "io/hf_model.h"
#include "io/safetensors.h"
#include "model/config.h"

using namespace moe;
using moe_test::q;
using moe_test::RunResult;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kData = std::string(MOE_TEST_DIR) + "/data/";

// ------------------------------------------------------------------ the committed tiny models

struct Spec {
    std::string name, family;
    json model, router;
    std::string tokenizer;      // "char" | "byte" | "bpe"
    std::string weights = "fp32";
    std::vector<std::string> warnings;  // a word each expected warning has
};

std::string corpus() {
    std::string s;
    const char* lines[] = {"the quick brown fox jumps over the lazy dog.\n",
                           "pack my box with five dozen liquor jugs, said the cook.\n",
                           "how vexingly quick daft zebras jump!\n"};
    for (int i = 0; i < 30; ++i) s += lines[i % 3];
    return s;
}

// C = 32, H = 4, Hkv = 2, L = 2; a variety of what each family can carry
std::vector<Spec> specs() {
    const json base = {{"n_layer", 2}, {"n_embd", 32}, {"n_head", 4}, {"n_head_kv", 2}, {"n_ctx", 64},
                       {"rope_theta", 10000.0}, {"norm_eps", 1e-6}};
    auto with = [&](json extra) {
        json m = base;
        for (auto it = extra.begin(); it != extra.end(); ++it) m[it.key()] = it.value();
        return m;
    };
    const json moe = {{"n_expert", 4}, {"n_expert_used", 2}, {"n_ff_exp", 32}};
    auto moe_with = [&](json extra) {
        json m = with(moe);
        for (auto it = extra.begin(); it != extra.end(); ++it) m[it.key()] = it.value();
        return m;
    };
    return {
        {"mixtral", "mixtral", moe_with({{"tie_embeddings", false}, {"rope_theta", 1e6}, {"norm_eps", 1e-5}}), nullptr,
         "char"},
        {"mixtral_bf16", "mixtral", moe_with({{"tie_embeddings", false}}), nullptr, "byte", "bf16"},
        {"qwen3_moe", "qwen3_moe",
         moe_with({{"qk_norm", "head"}, {"head_dim", 12}, {"ffn", {"dense", "moe"}}, {"n_ff", 48},
                   {"n_ff_exp", 24}, {"tie_embeddings", true}, {"attn_bias", "qkvo"}}),
         {{"norm_topk", false}}, "byte"},
        {"qwen2_moe", "qwen2_moe",
         moe_with({{"n_ff_shexp", 48}, {"shexp_gate", true}, {"attn_bias", "qkv"}, {"tie_embeddings", false}}),
         {{"noisy_gating", true}, {"capacity_factor", 1.25}, {"bias_balance", true}}, "bpe",
         "fp32", {"noisy_gating", "capacity_factor", "bias_balance"}},
        {"olmoe", "olmoe", moe_with({{"qk_norm", "full"}, {"tie_embeddings", false}}), {{"norm_topk", false}}, "byte"},
        {"llama", "llama", with({{"n_ff", 64}, {"tie_embeddings", false}, {"attn_bias", "qkvo"}}), nullptr, "char"},
        {"qwen2", "qwen2", with({{"n_ff", 64}, {"attn_bias", "qkv"}, {"tie_embeddings", true}}), nullptr, "byte"},
        {"qwen3", "qwen3", with({{"n_ff", 64}, {"qk_norm", "head"}, {"tie_embeddings", false}}), nullptr, "bpe"},
    };
}

Config spec_config(const Spec& s) {
    json j = {{"model", s.model}};
    if (!s.router.is_null()) j["router"] = s.router;
    return config_from_json(j, s.name);
}

// deterministic numbers in [-1, 1)
struct SplitMix {
    uint64_t x;
    double next() {
        uint64_t z = (x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        return (double)(z >> 11) / 9007199254740992.0 * 2 - 1;
    }
};

// Writes spec `s` as a moe checkpoint in `dir`: moe's init with the matrices scaled to std 0.2
// (decisive routing, as the transformers models of tests/data/hf) and norms / biases moved off 1 / 0.
void make_model(const Spec& s, const std::string& dir, uint64_t seed) {
    Config cfg = spec_config(s);
    const std::string text = corpus();
    Tokenizer tok = s.tokenizer == "char"   ? Tokenizer::char_level(text, "corpus")
                    : s.tokenizer == "byte" ? Tokenizer::byte_level()
                                            : Tokenizer::bpe_train(text, 300, "corpus");
    cfg.model.vocab_size = tok.vocab_size();
    Model m(cfg.model);
    m.init(seed);
    SplitMix r{seed};
    for (const auto& p : m.table().params()) {
        float* w = m.param_f32(p);
        const bool bias = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0;
        for (int64_t i = 0; i < p.numel; ++i) {
            if (p.name.find("ffn_gate_bias") != std::string::npos) continue;  // the balancing bias stays 0
            if (p.name.find("norm") != std::string::npos) w[i] = (float)(1.0 + 0.2 * r.next());
            else if (bias) w[i] = (float)(0.2 * r.next());
            else w[i] *= 10.f;
        }
    }
    if (s.weights == "fp32") save_checkpoint(dir, cfg, tok, m, nullptr, nullptr, {});
    else save_checkpoint_quantized(dir, cfg, tok, m, s.weights, {});
}

// Rewrites tests/data/export/*/checkpoint.bin; then run scripts/gen_export_refs.py for the references.
TEST(HfExport, RegenerateModels) {
    if (!std::getenv("MOE_REGEN_EXPORT_MODELS")) GTEST_SKIP() << "set MOE_REGEN_EXPORT_MODELS=1 to rewrite tests/data/export";
    uint64_t seed = 100;
    for (const Spec& s : specs()) {
        const std::string d = kData + "export/" + s.name;
        fs::remove_all(d);
        make_model(s, d, seed++);
    }
}

std::vector<float> logits_of(Model& m, const std::vector<int32_t>& ids) {
    const int64_t N = (int64_t)ids.size(), V = m.config().vocab_size;
    auto cache = m.make_cache(1);
    std::vector<int32_t> seq(N, 0), pos(N);
    for (int64_t i = 0; i < N; ++i) pos[i] = (int32_t)i;
    m.forward_cached(ids.data(), seq.data(), pos.data(), N, cache);
    return std::vector<float>(m.logits(), m.logits() + N * V);
}

// largest |a - b| of a row over the row's largest |b|, over all rows
double max_rel_row_error(const std::vector<float>& a, const float* b, int64_t rows, int64_t V) {
    double worst = 0;
    for (int64_t r = 0; r < rows; ++r) {
        double d = 0, m = 0;
        for (int64_t j = 0; j < V; ++j) {
            d = std::max(d, (double)std::fabs(a[r * V + j] - b[r * V + j]));
            m = std::max(m, (double)std::fabs(b[r * V + j]));
        }
        worst = std::max(worst, d / std::max(m, 1e-30));
    }
    return worst;
}

std::vector<int32_t> ids_of(const TensorView& t) {
    EXPECT_EQ(t.dtype, DType::i64);
    std::vector<int32_t> out(t.numel());
    for (int64_t i = 0; i < t.numel(); ++i) out[i] = (int32_t) static_cast<const int64_t*>(t.data)[i];
    return out;
}

class TmpDir {
public:
    TmpDir() {
        char t[] = "/tmp/moe_export_test_XXXXXX";
        EXPECT_NE(::mkdtemp(t), nullptr);
        d_ = t;
    }
    ~TmpDir() {
        std::error_code ec;
        if (!::testing::Test::HasFailure()) fs::remove_all(d_, ec);
        else std::fprintf(stderr, "(test files kept in %s)\n", d_.c_str());
    }
    std::string operator/(const std::string& n) const { return d_ + "/" + n; }

private:
    std::string d_;
};

json read_json(const std::string& p) { return json::parse(moe_test::read_file(p)); }

// The committed models exported: transformers' logits (scripts/gen_export_refs.py, over the export)
// are moe's, of the original and of the export loaded back; transformers' tokenizer ids are moe's.
TEST(HfExport, ExportedModelsGiveTransformersLogits) {
    TmpDir tmp;
    for (const Spec& s : specs()) {
        SCOPED_TRACE(s.name);
        const std::string dir = kData + "export/" + s.name;
        const SafetensorsSource ref = SafetensorsSource::open(dir + "/reference.safetensors");
        const std::vector<int32_t> tokens = ids_of(ref.get("tokens"));
        const TensorView& rl = ref.get("logits");
        ASSERT_EQ(rl.shape.size(), 2u);
        const int64_t T = rl.shape[0], V = rl.shape[1];
        ASSERT_EQ(T, (int64_t)tokens.size());

        Checkpoint ck = load_model(dir);
        EXPECT_EQ(ck.weight_type, s.weights);
        ASSERT_EQ(ck.config.model.vocab_size, V);
        const std::vector<float> orig = logits_of(*ck.model, tokens);
        const std::string out = tmp / s.name;
        const HfExportResult r = export_hf(ck, dir, ModelFormat::moe_checkpoint, out);
        EXPECT_EQ(r.family, s.family);
        EXPECT_EQ(r.dtype, s.weights == "bf16" ? "bfloat16" : "float32");
        ASSERT_EQ(r.warnings.size(), s.warnings.size()) << (r.warnings.empty() ? "" : r.warnings[0]);
        for (size_t i = 0; i < s.warnings.size(); ++i) EXPECT_NE(r.warnings[i].find(s.warnings[i]), std::string::npos);
        EXPECT_EQ(ref.metadata().at("model_type"), s.family) << "the reference was made from another export";
        const json cj = read_json(out + "/config.json");
        EXPECT_EQ(cj["model_type"], s.family);
        EXPECT_EQ(cj["architectures"].size(), 1u);

        Checkpoint back = load_model(out);
        EXPECT_EQ(back.weight_type, s.weights);
        const std::vector<float> again = logits_of(*back.model, tokens);
        EXPECT_LT(max_rel_row_error(orig, rl.f32(), T, V), 1e-4);
        EXPECT_LT(max_rel_row_error(again, rl.f32(), T, V), 1e-4);
        EXPECT_EQ(again, orig) << "the same weights and config: the same arithmetic";

        // the tensors' dtypes: F32, or BF16 matrices with the rest F32 (as moe stores them)
        const SafetensorsSource st = SafetensorsSource::open(out);
        for (const auto& t : st.tensors()) {
            const bool matrix = t.name.find("_proj") != std::string::npos || t.name.find(".w1.") != std::string::npos ||
                                t.name.find(".w2.") != std::string::npos || t.name.find(".w3.") != std::string::npos ||
                                t.name == "lm_head.weight";
            const bool router = t.name.find("gate.weight") != std::string::npos &&
                                t.name.find("gate_proj") == std::string::npos;
            EXPECT_EQ(t.dtype, s.weights == "bf16" && matrix && !router ? DType::bf16 : DType::f32) << t.name;
        }

        // the tokenizer: transformers' ids for the text are moe's, before and after the export
        const std::string text = ref.metadata().at("text");
        const std::vector<int32_t> want = ids_of(ref.get("text_ids"));
        EXPECT_EQ(ck.tokenizer.encode(text, "text"), want);
        EXPECT_EQ(back.tokenizer.encode(text, "text"), want);
        EXPECT_EQ(back.tokenizer.kind(), Tokenizer::Kind::hf);
        EXPECT_EQ(back.tokenizer.decode(want), text);
    }
}

// An int8 checkpoint is written dequantized (F32) with a warning; the export loads and is close.
TEST(HfExport, Int8IsDequantizedWithAWarning) {
    TmpDir tmp;
    Checkpoint ck = load_model(kData + "export/mixtral");
    save_checkpoint_quantized(tmp / "q8", ck.config, ck.tokenizer, *ck.model, "int8", {});
    Checkpoint q8 = load_model(tmp / "q8");
    ASSERT_EQ(q8.weight_type, "int8");
    const HfExportResult r = export_hf(q8, tmp / "q8", ModelFormat::moe_checkpoint, tmp / "out");
    ASSERT_EQ(r.warnings.size(), 1u);
    EXPECT_NE(r.warnings[0].find("int8"), std::string::npos);
    EXPECT_EQ(r.dtype, "float32");
    const SafetensorsSource out = SafetensorsSource::open(tmp / "out");  // alive through the loop
    for (const auto& t : out.tensors()) EXPECT_EQ(t.dtype, DType::f32) << t.name;
    Checkpoint back = load_model(tmp / "out");
    std::vector<int32_t> ids;
    for (int i = 0; i < 32; ++i) ids.push_back((i * 7) % (int)ck.config.model.vocab_size);
    const std::vector<float> a = logits_of(*ck.model, ids), b = logits_of(*back.model, ids);
    EXPECT_LT(max_rel_row_error(b, a.data(), 32, ck.config.model.vocab_size), 0.05);
}

// ------------------------------------------------------------------ Hugging Face -> moe -> Hugging Face

void expect_same_tensors(const std::string& want_dir, const std::string& got_dir) {
    const SafetensorsSource a = SafetensorsSource::open(want_dir), b = SafetensorsSource::open(got_dir);
    ASSERT_EQ(a.tensors().size(), b.tensors().size());
    for (const auto& t : a.tensors()) {
        const TensorView* u = b.find(t.name);
        ASSERT_TRUE(u) << t.name;
        EXPECT_EQ(u->dtype, t.dtype) << t.name;
        EXPECT_EQ(u->shape, t.shape) << t.name;
        ASSERT_EQ(u->nbytes, t.nbytes) << t.name;
        EXPECT_EQ(std::memcmp(u->data, t.data, t.nbytes), 0) << t.name;
    }
}

TEST(HfExport, HuggingFaceModelsComeBackByteForByte) {
    TmpDir tmp;
    const std::vector<std::string> names = {"mixtral", "mixtral_sharded", "mixtral_fused", "mixtral_bf16",
                                            "qwen2_moe",  "qwen2_moe_norm", "qwen3_moe", "olmoe",
                                            "llama",      "llama_tied",     "mistral",   "qwen2", "qwen3"};
    for (const std::string& name : names) {
        // bf16 files loaded as stored (bf16, in place) and widened to fp32 both come back the same
        for (const std::string wt : name == "mixtral_bf16" ? std::vector<std::string>{"", "fp32"}
                                                            : std::vector<std::string>{""}) {
            SCOPED_TRACE(name + " " + wt);
            const std::string src = kData + "hf/" + name, out = tmp / (name + wt);
            Checkpoint ck = load_model(src, wt);
            const HfExportResult r = export_hf(ck, src, ModelFormat::hugging_face, out);
            ASSERT_EQ(r.warnings.size(), 1u);  // the source has no tokenizer: nor has the export
            EXPECT_NE(r.warnings[0].find("no tokenizer.json"), std::string::npos) << r.warnings[0];
            EXPECT_EQ(r.family, read_json(src + "/config.json")["model_type"]);
            // the sharded and fused saves hold mixtral's weights: what comes back is mixtral's file
            const std::string plain = name == "mixtral_sharded" || name == "mixtral_fused" ? kData + "hf/mixtral" : src;
            expect_same_tensors(plain, out);
            EXPECT_EQ(moe_test::read_file(out + "/model.safetensors"), moe_test::read_file(plain + "/model.safetensors"));
            for (const char* f : {"config.json", "generation_config.json"})
                EXPECT_EQ(moe_test::read_file(out + "/" + f), moe_test::read_file(src + "/" + f)) << f;
            EXPECT_FALSE(fs::exists(out + "/tokenizer.json"));  // the source has none
        }
    }
}

// F16 files: loaded widened to fp32, written back as F16 bit for bit (every finite half: normals,
// subnormals, signed zeros, the largest).
TEST(HfExport, F16ComesBackBitForBit) {
    TmpDir tmp;
    const std::string src = kData + "hf/llama";
    const SafetensorsSource a = SafetensorsSource::open(src);
    std::deque<std::vector<uint16_t>> bits;
    std::vector<TensorView> views;
    uint16_t h = 0;
    for (const auto& t : a.tensors()) {
        std::vector<uint16_t>& b = bits.emplace_back((size_t)t.numel());
        for (auto& x : b) {
            do h = (uint16_t)(h * 40503u + 12345u); while ((h & 0x7C00u) == 0x7C00u);  // no inf / NaN
            x = h;
        }
        if (views.empty()) {  // the corners, at the start of the first tensor
            const uint16_t corner[] = {0x0000, 0x8000, 0x0001, 0x83FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00};
            std::copy(std::begin(corner), std::end(corner), b.begin());
        }
        views.push_back({t.name, DType::f16, t.shape, b.data(), b.size() * 2});
    }
    fs::create_directories(tmp / "f16");
    write_safetensors(tmp / "f16/model.safetensors", views, {{"format", "pt"}});
    json cfg = read_json(src + "/config.json");
    cfg["dtype"] = "float16";
    moe_test::write_file(tmp / "f16/config.json", cfg.dump(2));
    Checkpoint ck = load_model(tmp / "f16");
    EXPECT_EQ(ck.weight_type, "f16");
    const HfExportResult r = export_hf(ck, tmp / "f16", ModelFormat::hugging_face, tmp / "out");
    EXPECT_EQ(moe_test::read_file(tmp / "out/model.safetensors"), moe_test::read_file(tmp / "f16/model.safetensors"));
    ASSERT_EQ(r.warnings.size(), 1u);  // no tokenizer.json
}

// Sharded output: shards + index as save_pretrained names them, the same tensors, loadable.
TEST(HfExport, ShardsAboveTheLimit) {
    TmpDir tmp;
    const std::string src = kData + "hf/mixtral";
    Checkpoint ck = load_model(src);
    HfExportOptions o;
    o.max_shard_bytes = parse_byte_size("200KB", "test");
    std::vector<std::string> lines;
    o.progress = [&](const std::string& s) { lines.push_back(s); };
    const HfExportResult r = export_hf(ck, src, ModelFormat::hugging_face, tmp / "out", o);
    EXPECT_TRUE(fs::exists(tmp / "out/model.safetensors.index.json"));
    EXPECT_FALSE(fs::exists(tmp / "out/model.safetensors"));
    int shards = 0;
    for (const auto& f : r.files) shards += f.find("-of-") != std::string::npos;
    EXPECT_GE(shards, 2);
    EXPECT_EQ(lines.size(), r.files.size());
    expect_same_tensors(src, tmp / "out");
    Checkpoint back = load_model(tmp / "out");
    std::vector<int32_t> ids = {3, 17, 200, 9, 4};
    EXPECT_EQ(logits_of(*back.model, ids), logits_of(*ck.model, ids));
    // a tokenizer travels with the model
    fs::create_directories(tmp / "tok");
    for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(src + "/" + f, tmp / ("tok/" + std::string(f)));
    fs::copy_file(kData + "tokenizers/moe_export/byte.tokenizer.json", tmp / "tok/tokenizer.json");
    moe_test::write_file(tmp / "tok/tokenizer_config.json",
                         R"({"chat_template": "{% for m in messages %}{{ m.content }}\n{% endfor %}"})");
    moe_test::write_file(tmp / "tok/chat_template.jinja", "{{ messages[0].content }}");
    Checkpoint tk = load_model(tmp / "tok");
    export_hf(tk, tmp / "tok", ModelFormat::hugging_face, tmp / "tok_out");
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"})
        EXPECT_EQ(moe_test::read_file(tmp / ("tok_out/" + std::string(f))), moe_test::read_file(tmp / ("tok/" + std::string(f))));
    EXPECT_FALSE(fs::exists(tmp / "tok_out/generation_config.json"));
}

// config.json as written for each family reads back to the HfConfig it was written from.
TEST(HfExport, ConfigJsonReadsBack) {
    for (const std::string name : {"mixtral", "mixtral_bf16", "qwen2_moe", "qwen2_moe_norm", "qwen3_moe", "olmoe",
                                   "llama", "llama_tied", "mistral", "qwen2", "qwen3"}) {
        SCOPED_TRACE(name);
        const HfConfig a = read_hf_config(kData + "hf/" + name);
        const HfConfig b = parse_hf_config(json::parse(hf_config_to_json(a).dump()), "written");
        EXPECT_EQ(b.model_type, a.model_type);
        EXPECT_EQ(b.family, a.family);
        EXPECT_EQ(b.dtype, a.dtype);
        EXPECT_EQ(b.vocab_size, a.vocab_size);
        EXPECT_EQ(b.hidden_size, a.hidden_size);
        EXPECT_EQ(b.num_hidden_layers, a.num_hidden_layers);
        EXPECT_EQ(b.num_attention_heads, a.num_attention_heads);
        EXPECT_EQ(b.num_key_value_heads, a.num_key_value_heads);
        EXPECT_EQ(b.head_dim, a.head_dim);
        EXPECT_EQ(b.intermediate_size, a.intermediate_size);
        EXPECT_EQ(b.expert_intermediate_size, a.expert_intermediate_size);
        EXPECT_EQ(b.shared_expert_intermediate_size, a.shared_expert_intermediate_size);
        EXPECT_EQ(b.shared_expert_gate, a.shared_expert_gate);
        EXPECT_EQ(b.max_position_embeddings, a.max_position_embeddings);
        EXPECT_EQ(b.rms_norm_eps, a.rms_norm_eps);
        EXPECT_EQ(b.tie_word_embeddings, a.tie_word_embeddings);
        EXPECT_EQ(b.rope_type, a.rope_type);
        EXPECT_EQ(b.rope_theta, a.rope_theta);
        EXPECT_EQ(b.qkv_bias, a.qkv_bias);
        EXPECT_EQ(b.o_bias, a.o_bias);
        EXPECT_EQ(b.qk_norm, a.qk_norm);
        EXPECT_EQ(b.num_experts, a.num_experts);
        EXPECT_EQ(b.num_experts_per_tok, a.num_experts_per_tok);
        EXPECT_EQ(b.norm_topk_prob, a.norm_topk_prob);
        EXPECT_EQ(b.layer_moe, a.layer_moe);
        EXPECT_EQ(b.bos_token_id, a.bos_token_id);
        EXPECT_EQ(b.pad_token_id, a.pad_token_id);
        EXPECT_EQ(b.eos_token_ids, a.eos_token_ids);
    }
}

// ------------------------------------------------------------------ what no family expresses

void expect_refused(json model, json router, const std::vector<std::string>& needles) {
    json j = {{"model", model}};
    if (!router.is_null()) j["router"] = router;
    const Config c = config_from_json(j, "cfg");
    std::vector<std::string> notes;
    try {
        hf_config_from_moe(c.model, "cfg", notes);
        ADD_FAILURE() << "accepted: " << j.dump();
    } catch (const moe::error& e) {
        const std::string msg = e.what();
        for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    }
}

TEST(HfExport, InexpressibleConfigsAreErrorsNamingTheField) {
    const json base = {{"vocab_size", 64}, {"n_layer", 2}, {"n_embd", 32}, {"n_head", 4}, {"n_ctx", 16}};
    auto m = [&](json extra) {
        json r = base;
        for (auto it = extra.begin(); it != extra.end(); ++it) r[it.key()] = it.value();
        return r;
    };
    const json moe = {{"n_expert", 4}, {"n_expert_used", 2}, {"n_ff_exp", 16}};
    auto e = [&](json extra) {
        json r = m(moe);
        for (auto it = extra.begin(); it != extra.end(); ++it) r[it.key()] = it.value();
        return r;
    };
    expect_refused(m({{"n_ff", 16}, {"activation", "relu"}}), nullptr, {"model.activation", "relu"});
    expect_refused(m({{"n_ff", 16}, {"qk_norm", "full"}}), nullptr, {"model.qk_norm", "full", "olmoe"});
    expect_refused(m({{"n_ff", 16}, {"qk_norm", "head"}, {"attn_bias", "qkv"}}), nullptr, {"model.attn_bias", "qkv", "qwen3"});
    expect_refused(e({{"ffn", {"dense", "moe"}}, {"n_ff", 16}}), nullptr, {"model.ffn", "dense", "mixtral"});
    expect_refused(e({}), {{"norm_topk", false}}, {"router.norm_topk", "false", "mixtral"});
    expect_refused(e({{"attn_bias", "qkv"}}), nullptr, {"model.attn_bias", "qkv", "mixtral"});
    expect_refused(e({{"n_ff_shexp", 16}}), nullptr, {"model.shexp_gate", "false", "qwen2_moe"});
    expect_refused(e({{"n_ff_shexp", 16}, {"shexp_gate", true}, {"attn_bias", "qkvo"}}), nullptr,
                   {"model.attn_bias", "qkvo", "qwen2_moe"});
    expect_refused(e({{"n_ff_shexp", 16}, {"shexp_gate", true}, {"qk_norm", "head"}}), nullptr,
                   {"model.n_ff_shexp", "16", "qwen3_moe"});
    expect_refused(e({{"qk_norm", "full"}, {"ffn", {"dense", "moe"}}, {"n_ff", 16}}), nullptr, {"model.ffn", "olmoe"});
    expect_refused(e({{"qk_norm", "full"}, {"head_dim", 4}}), nullptr, {"model.head_dim", "4", "olmoe"});
    expect_refused(e({{"qk_norm", "head"}, {"attn_bias", "qkv"}}), nullptr, {"model.attn_bias", "qkv", "qwen3_moe"});
    expect_refused(e({}), {{"noisy_gating", true}, {"noise_at_eval", true}}, {"router.noise_at_eval", "true"});
    expect_refused(e({}), {{"eval_capacity_factor", 1.5}}, {"router.eval_capacity_factor", "1.5"});
    expect_refused(e({}), {{"routed_scale", 2.5}}, {"router.routed_scale", "2.5"});

    // accepted, with notes for what only training uses
    const Config c = config_from_json({{"model", e({})}, {"router", {{"noisy_gating", true}, {"capacity_factor", 1.0},
                                                                      {"balance_loss", 0.01}, {"z_loss", 0.001}}}},
                                      "cfg");
    std::vector<std::string> notes;
    const HfConfig h = hf_config_from_moe(c.model, "cfg", notes);
    EXPECT_EQ(h.model_type, "mixtral");
    ASSERT_EQ(notes.size(), 2u);
    EXPECT_NE(notes[0].find("noisy_gating"), std::string::npos);
    EXPECT_NE(notes[1].find("capacity_factor"), std::string::npos);
}

// A non-zero balancing bias changes the routing: refused, naming the tensor and value.
TEST(HfExport, NonZeroBalancingBiasIsRefused) {
    TmpDir tmp;
    Checkpoint ck = load_model(kData + "export/qwen2_moe", "fp32");
    const ParamInfo* p = ck.model->table().find("blk.1.ffn_gate_bias");
    ASSERT_TRUE(p);
    ck.model->param_f32(*p)[2] = 0.25f;
    try {
        export_hf(ck, "ck", ModelFormat::moe_checkpoint, tmp / "out");
        ADD_FAILURE() << "accepted";
    } catch (const moe::error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("router.bias_balance"), std::string::npos) << msg;
        EXPECT_NE(msg.find("blk.1.ffn_gate_bias[2] = 0.25"), std::string::npos) << msg;
    }
    EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(HfExport, ByteSizes) {
    EXPECT_EQ(parse_byte_size("5GB", "s"), 5000000000ull);
    EXPECT_EQ(parse_byte_size("200KB", "s"), 200000ull);
    EXPECT_EQ(parse_byte_size("2GiB", "s"), 2ull << 30);
    EXPECT_EQ(parse_byte_size("1000", "s"), 1000ull);
    for (const char* bad : {"", "GB", "5XB", "0", "-1", "1.5GB", "5 GB"})
        EXPECT_THROW(parse_byte_size(bad, "s"), moe::error) << bad;
}

// ------------------------------------------------------------------ the command line

class CliExport : public moe_test::CliTest {};

TEST_F(CliExport, ExportsAndReExports) {
    train_ok("ck");
    RunResult r = moe("export --checkpoint ck --format hf --out hf");
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_NE(r.out.find("mixtral"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("wrote hf/model.safetensors"), std::string::npos) << r.out;
    EXPECT_TRUE(r.err.empty()) << r.err;
    for (const char* f : {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json"})
        EXPECT_TRUE(fs::exists(path("hf/") + f)) << f;
    // the same logits through `moe logits`, and the same tokens through `moe tokenize`
    RunResult a = moe("logits --model ck --tokens 1,2,3,4,5 --out a.bin --threads 1");
    RunResult b = moe("logits --model hf --tokens 1,2,3,4,5 --out b.bin --threads 1");
    ASSERT_EQ(a.code(), 0) << a.describe();
    ASSERT_EQ(b.code(), 0) << b.describe();
    EXPECT_EQ(moe_test::read_file(path("a.bin")), moe_test::read_file(path("b.bin")));
    RunResult ta = moe("tokenize --model ck --text 'the lazy dog.'");
    RunResult tb = moe("tokenize --model hf --text 'the lazy dog.'");
    EXPECT_EQ(ta.out, tb.out);
    // Hugging Face -> moe -> Hugging Face: the same files
    RunResult h = moe("export --model hf --format hf --out hf2");
    ASSERT_EQ(h.code(), 0) << h.describe();
    for (const char* f : {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json"})
        EXPECT_EQ(moe_test::read_file(path("hf2/") + f), moe_test::read_file(path("hf/") + f)) << f;

    // not empty: refused, then --force replaces the model (stale shards removed)
    expect_clean_error(moe("export --checkpoint ck --format hf --out hf"), {"'hf'", "not empty", "--force"});
    RunResult s = moe("export --checkpoint ck --format hf --out shards --max-shard-size 20KB");
    ASSERT_EQ(s.code(), 0) << s.describe();
    EXPECT_TRUE(fs::exists(path("shards/model.safetensors.index.json")));
    RunResult f = moe("export --checkpoint ck --format hf --out shards --force");
    ASSERT_EQ(f.code(), 0) << f.describe();
    EXPECT_NE(f.out.find("removed stale"), std::string::npos) << f.out;
    for (const auto& e : fs::directory_iterator(path("shards")))
        EXPECT_EQ(e.path().filename().string().find("-of-"), std::string::npos) << e.path();
    EXPECT_FALSE(fs::exists(path("shards/model.safetensors.index.json")));
    EXPECT_EQ(moe_test::read_file(path("shards/model.safetensors")), moe_test::read_file(path("hf/model.safetensors")));
}

TEST_F(CliExport, BadInputIsOneErrorLine) {
    train_ok("ck");
    const std::string ok = "export --checkpoint ck --format hf ";
    expect_clean_error(moe(ok + "--out data.txt/x"), {"data.txt/x"});
    expect_clean_error(moe(ok + "--out data.txt"), {"data.txt", "not a directory"});
    expect_clean_error(moe(ok + "--out /proc/moe_export_test"), {"/proc/moe_export_test"});
    expect_clean_error(moe(ok + "--out ck --force"), {"'ck'", "model being exported"});
    expect_clean_error(moe("export --checkpoint ck --format gguf --type q9_9 --out o.gguf"), {"--type", "q9_9"});
    fs::create_directories(path("adir"));
    expect_clean_error(moe("export --checkpoint ck --format gguf --out adir"), {"adir", "directory"});
    expect_clean_error(moe("export --checkpoint ck --format onnx --out o"), {"--format", "onnx"});
    expect_clean_error(moe(ok + "--out o --type q8_0"), {"--type", "q8_0", "gguf"});
    expect_clean_error(moe(ok + "--out o --max-shard-size 5XB"), {"--max-shard-size", "5XB"});
    expect_clean_error(moe(ok + "--out o --max-shard-size 0"), {"--max-shard-size", "0"});
    expect_clean_error(moe("export --checkpoint nowhere --format hf --out o"), {"nowhere", "does not exist"});
    expect_clean_error(moe("export --checkpoint ck --out o"), {"--format"});
    expect_clean_error(moe("export --format hf --out o"), {"--model"});
    EXPECT_FALSE(fs::exists(path("o")));
    // models no Hugging Face family computes
    json relu = tiny_config();
    relu["model"]["activation"] = "relu";
    write_config("relu.json", relu);
    ASSERT_EQ(moe("train --config relu.json --out relu --threads 1 --no-sample").code(), 0);
    expect_clean_error(moe("export --checkpoint relu --format hf --out o"), {"relu", "model.activation"});
    json cap = tiny_config();
    cap["router"] = {{"eval_capacity_factor", 1.0}};
    write_config("cap.json", cap);
    ASSERT_EQ(moe("train --config cap.json --out cap --threads 1 --no-sample").code(), 0);
    expect_clean_error(moe("export --checkpoint cap --format hf --out o"), {"cap", "router.eval_capacity_factor"});
    EXPECT_FALSE(fs::exists(path("o")));
}

}  // namespace
