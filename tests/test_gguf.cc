// GGUF (issue #21): files written by gguf-py the way llama.cpp's convert_hf_to_gguf.py writes them
// (scripts/gen_gguf_refs.py, tests/data/gguf/) and by moe's own writer, loaded by moe: the logits of
// the tiny Hugging Face models of tests/data/hf against transformers' fp32 reference, tokenizer ids
// against the tokenizer.json ids on tests/data/tokenizers/lines.jsonl, and one moe::error for every
// kind of broken file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_model.h"
#include "io/gguf_writer.h"
#include "io/hf_model.h"
#include "io/hf_tokenizer.h"
#include "io/safetensors.h"
#include "kernels/bf16.h"
#include "kernels/ggml_quants.h"
#include "kernels/qmatmul.h"
#include "model/params.h"

using namespace moe;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kHf = std::string(MOE_TEST_DIR) + "/data/hf/";
const std::string kGguf = std::string(MOE_TEST_DIR) + "/data/gguf/";
const std::string kTok = std::string(MOE_TEST_DIR) + "/data/tokenizers/";

std::string tmp_dir() {
    static const std::string d = [] {
        const std::string p = (fs::temp_directory_path() / ("moe_gguf_test_" + std::to_string(::getpid()))).string();
        fs::create_directories(p);
        return p;
    }();
    return d;
}

// A copy of the GGUF file src at out, with metadata key set to v (added or replaced), tensors as they are.
void copy_gguf_setting(const std::string& src, const std::string& key, const GgufValue& v, const std::string& out) {
    const auto in = GgufSource::open(src);
    GgufWriter w;
    for (const auto& [k, val] : in->header().kv) w.set(k, val);
    w.set(key, v);
    for (const auto& t : in->header().tensors) {
        const void* d = in->data(t);
        const uint64_t nb = t.nbytes;
        w.add_tensor(t.name, t.type, t.shape, [d, nb](unsigned char* o) { std::memcpy(o, d, nb); });
    }
    w.write(out);
}

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::vector<int64_t> squeeze_ne(std::vector<int64_t> ne) {  // trailing 1s of ne do not matter to ggml
    while (ne.size() > 1 && ne.back() == 1) ne.pop_back();
    return ne;
}

struct Reference {
    std::vector<int32_t> tokens;
    std::vector<float> logits;
};

Reference read_reference(const std::string& name) {
    const SafetensorsSource src = SafetensorsSource::open(kHf + name + "/reference.safetensors");
    Reference r;
    const TensorView& t = src.get("tokens");
    for (int64_t i = 0; i < t.numel(); ++i) r.tokens.push_back((int32_t) static_cast<const int64_t*>(t.data)[i]);
    const TensorView& l = src.get("logits");
    r.logits.assign(l.f32(), l.f32() + l.numel());
    return r;
}

double max_rel_row_error(const float* a, const float* b, int64_t rows, int64_t V) {
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

// one plain fp32 forward over the reference tokens: the error against transformers' logits
std::vector<float> forward(Checkpoint& ck, const std::vector<int32_t>& tokens) {
    Model& m = *ck.model;
    const int64_t T = (int64_t)tokens.size(), V = m.config().vocab_size;
    if (!m.typed()) {
        m.forward(tokens.data(), nullptr, 1, T);
        return std::vector<float>(m.logits(), m.logits() + T * V);
    }
    auto cache = m.make_cache(1);
    std::vector<int32_t> seq(T, 0), pos(T);
    for (int64_t i = 0; i < T; ++i) pos[i] = (int32_t)i;
    m.forward_cached(tokens.data(), seq.data(), pos.data(), T, cache);
    return std::vector<float>(m.logits(), m.logits() + T * V);
}

// The logits moe computes from the Hugging Face model with its matrices rounded to `type` (f16 or
// bf16; 1-D tensors stay fp32), which is what a GGUF file of that type holds.
std::vector<float> rounded_forward(const std::string& name, const std::string& type, const std::vector<int32_t>& tokens) {
    Checkpoint ck = load_model(kHf + name, "fp32");
    for (const auto& p : ck.model->table().params()) {
        if (!p.trainable || p.shape.size() < 2) continue;
        float* w = ck.model->param_f32(p);
        for (int64_t i = 0; i < p.numel; ++i)
            w[i] = type == "f16" ? f16_to_f32(f32_to_f16(w[i])) : kernels::bf16_round(w[i]);
    }
    return forward(ck, tokens);
}

// Bounds against transformers' fp32 logits: 1e-4 for F32 files; 1e-2 for F16 ones (measured: at most
// 5.9e-3 on these models). BF16 has no bound against the fp32 reference: the rounding flips expert
// choices of these random tiny models (mixtral: 0.55). Every F16 / BF16 file is held instead to 1e-4
// of moe's logits of the same model with its matrices rounded the same way (rounded_forward).
double bound(const std::string& type) { return type == "f32" ? 1e-4 : type == "f16" ? 1e-2 : 1e9; }

// ---- models written by gguf-py --------------------------------------------------------------------

struct PyModel {
    const char* name;
    const char* type;
};

class GgufPyModels : public ::testing::TestWithParam<PyModel> {};

TEST_P(GgufPyModels, LogitsMatchTransformers) {
    const PyModel pm = GetParam();
    const Reference ref = read_reference(pm.name);
    const std::string path = kGguf + pm.name + "." + pm.type + ".gguf";
    ASSERT_EQ(detect_model_format(path), ModelFormat::gguf);
    for (const char* dtype : {"fp32", ""}) {
        Checkpoint ck = load_model(path, dtype);
        const int64_t V = ck.model->config().vocab_size, T = (int64_t)ref.tokens.size();
        ASSERT_EQ((int64_t)ref.logits.size(), T * V);
        const std::vector<float> got = forward(ck, ref.tokens);
        const double err = max_rel_row_error(got.data(), ref.logits.data(), T, V);
        const double b = dtype[0] ? bound(pm.type) : bound(pm.type) * 2;  // as stored: bf16 arithmetic too
        std::printf("%-10s %-4s gguf-py, %s: max relative row error %.2e (bound %.0e)\n", pm.name, pm.type,
                    dtype[0] ? "fp32" : "as stored", err, b);
        EXPECT_LE(err, b) << pm.name << " " << pm.type << " " << dtype;
        EXPECT_TRUE(ck.tokenizer_missing);
    }
    if (std::string(pm.type) != "f32") {
        Checkpoint g = load_model(path, "fp32");
        const std::vector<float> want = rounded_forward(pm.name, pm.type, ref.tokens), got = forward(g, ref.tokens);
        const int64_t V = g.model->config().vocab_size, T = (int64_t)ref.tokens.size();
        const double err = max_rel_row_error(got.data(), want.data(), T, V);
        std::printf("%-10s %-4s gguf-py vs moe on the HF weights rounded to %s: %.2e\n", pm.name, pm.type, pm.type, err);
        EXPECT_LE(err, 1e-4) << pm.name;
    }
    // the same weights from the Hugging Face directory give the same logits exactly (F32 files)
    if (std::string(pm.type) == "f32") {
        Checkpoint a = load_model(path, "fp32"), b = load_model(kHf + pm.name, "fp32");
        EXPECT_EQ(forward(a, ref.tokens), forward(b, ref.tokens)) << pm.name;
    }
}

INSTANTIATE_TEST_SUITE_P(Files, GgufPyModels,
                         ::testing::Values(PyModel{"mixtral", "f32"}, PyModel{"llama", "f32"}, PyModel{"qwen2_moe", "f16"},
                                           PyModel{"qwen3_moe", "bf16"}, PyModel{"olmoe", "f32"}, PyModel{"qwen2", "f16"},
                                           PyModel{"qwen3", "f32"}),
                         [](const auto& info) { return std::string(info.param.name) + "_" + info.param.type; });

TEST(GgufModel, Bf16MatricesAreUsedInPlace) {
    Checkpoint ck = load_model(kGguf + "qwen3_moe.bf16.gguf");
    ASSERT_TRUE(ck.model->typed());
    EXPECT_EQ(ck.weight_type, "bf16");
    int views = 0;
    for (const auto& p : ck.model->table().params()) views += ck.model->param_is_view(p);
    EXPECT_GT(views, 0);
}

// F16 files: the matrices are used in place (views of the mapping, type f16), no fp32 copy; the
// logits, prefill (T tokens at once) and decode (one token per step) through the KV cache, are the
// bits of the same file loaded as fp32 (the widening is exact and the f16 kernels have the fp32
// kernels' arithmetic: QMatmul.F16InPlaceEqualsFp32CopyBitForBit).
TEST(GgufModel, F16MatricesAreUsedInPlaceWithTheFp32Bits) {
    for (const char* name : {"qwen2_moe", "qwen2"}) {
        const std::string path = kGguf + name + ".f16.gguf";
        Checkpoint h = load_model(path), f = load_model(path, "fp32");
        ASSERT_TRUE(h.model->typed());
        EXPECT_EQ(h.weight_type, "f16");
        int views = 0;
        for (const auto& p : h.model->table().params()) {
            views += h.model->param_is_view(p);
            if (h.model->param_is_view(p)) EXPECT_EQ(h.model->param_typed(p).type, moe::kernels::WType::f16) << p.name;
        }
        EXPECT_GT(views, 0) << name;
        const Reference ref = read_reference(name);
        const int64_t T = (int64_t)ref.tokens.size(), V = h.model->config().vocab_size;
        for (Checkpoint* ck : {&h, &f}) ASSERT_EQ(ck->model->config().vocab_size, V);
        auto run = [&](Checkpoint& ck, bool decode) {
            Model& m = *ck.model;
            auto cache = m.make_cache(1);
            std::vector<float> out;
            const int64_t step = decode ? 1 : T;
            for (int64_t t0 = 0; t0 < T; t0 += step) {
                std::vector<int32_t> seq(step, 0), pos(step);
                for (int64_t i = 0; i < step; ++i) pos[i] = (int32_t)(t0 + i);
                m.forward_cached(ref.tokens.data() + t0, seq.data(), pos.data(), step, cache);
                out.insert(out.end(), m.logits(), m.logits() + step * V);
            }
            return out;
        };
        for (bool decode : {false, true}) {
            const std::vector<float> a = run(h, decode), b = run(f, decode);
            ASSERT_EQ(a.size(), b.size());
            int64_t differ = 0;
            double worst = 0;
            for (size_t i = 0; i < a.size(); ++i) {
                differ += std::memcmp(&a[i], &b[i], 4) != 0;
                worst = std::max(worst, (double)std::fabs(a[i] - b[i]));
            }
            EXPECT_EQ(differ, 0) << name << (decode ? " decode" : " prefill") << ": largest difference " << worst;
        }
    }
}

// ---- moe's writer ---------------------------------------------------------------------------------

class GgufExport : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufExport, RoundTripGivesTheSameLogits) {
    const std::string name = GetParam();
    const std::string ref_name = fs::exists(kHf + name + "/reference.safetensors") ? name : "mixtral";
    const Reference ref = read_reference(ref_name);
    Checkpoint hf = load_model(kHf + name, "fp32");
    const std::vector<float> want = forward(hf, ref.tokens);
    const char* keep = std::getenv("MOE_GGUF_EXPORT_DIR");  // for gen_gguf_refs.py --check
    for (const char* type : {"f32", "f16", "bf16"}) {
        const std::string out = (keep ? std::string(keep) : tmp_dir()) + "/" + name + "." + type + ".gguf";
        GgufExportOptions opt;
        opt.type = parse_gguf_type(type, "test");
        export_gguf(hf, out, opt);
        Checkpoint g = load_model(out, "fp32");
        const std::vector<float> got = forward(g, ref.tokens);
        const int64_t V = g.model->config().vocab_size, T = (int64_t)ref.tokens.size();
        if (std::string(type) == "f32") {
            EXPECT_EQ(got, want) << name << ": F32 round trip";
        } else {
            const double err = max_rel_row_error(got.data(), ref.logits.data(), T, V);
            const std::vector<float> rw = rounded_forward(name, type, ref.tokens);
            const double err_r = max_rel_row_error(got.data(), rw.data(), T, V);
            std::printf("%-14s %-4s moe writer: vs transformers fp32 %.2e, vs the rounded weights %.2e\n", name.c_str(),
                        type, err, err_r);
            EXPECT_LE(err, bound(type)) << name << " " << type;
            EXPECT_LE(err_r, 1e-4) << name << " " << type;
        }
        // gguf-py's file of the same model and type holds the same bytes of every tensor
        const std::string py = kGguf + name + "." + type + ".gguf";
        if (fs::exists(py)) {
            const auto a = GgufSource::open(out), b = GgufSource::open(py);
            ASSERT_EQ(a->header().tensors.size(), b->header().tensors.size()) << py;
            for (const auto& t : b->header().tensors) {
                const GgufTensorInfo* u = a->info(t.name);
                ASSERT_TRUE(u) << t.name;
                EXPECT_EQ(u->type, t.type) << t.name;
                EXPECT_EQ(squeeze_ne(u->ne), squeeze_ne(t.ne)) << t.name;
                EXPECT_EQ(0, std::memcmp(a->data(*u), b->data(t), t.nbytes)) << name << " " << t.name;
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Families, GgufExport,
                         ::testing::Values("mixtral", "llama", "llama_tied", "mistral", "qwen2_moe", "qwen2_moe_norm",
                                           "qwen3_moe", "olmoe", "qwen2", "qwen3", "mixtral_bf16"),
                         [](const auto& info) { return info.param; });

// ---- block types (Q8_0, Q4_0, the K-quants) ---------------------------------------------------------

std::string gguf_tensor_name(const std::string& moe_name) {
    if (moe_name == "tok_embd") return "token_embd.weight";
    if (moe_name.size() > 5 && moe_name.compare(moe_name.size() - 5, 5, ".bias") == 0) return moe_name;
    return moe_name + ".weight";
}

bool is_llama_qk(const Checkpoint& ck, const std::string& name) {
    return !ck.model->config().qk_norm && !ck.model->config().attn_bias_qkv && ck.model->config().n_ff_shexp == 0 &&
           (name.find(".attn_q") != std::string::npos || name.find(".attn_k") != std::string::npos);
}

struct QuantStats {
    double rel_rms = 0, top1 = 0;
};
QuantStats compare_logits(const std::vector<float>& got, const std::vector<float>& want, int64_t T, int64_t V) {
    QuantStats st;
    double d2 = 0, w2 = 0;
    int64_t agree = 0;
    for (int64_t t = 0; t < T; ++t) {
        const float* a = got.data() + t * V;
        const float* b = want.data() + t * V;
        for (int64_t j = 0; j < V; ++j) d2 += (double)(a[j] - b[j]) * (a[j] - b[j]), w2 += (double)b[j] * b[j];
        agree += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
    }
    st.rel_rms = std::sqrt(d2 / std::max(w2, 1e-30));
    st.top1 = (double)agree / (double)T;
    return st;
}

// Every matrix of the file is `type` (rows quantized by kernels::quantize_row, the quantizer that
// test_ggml_quants proves equal to gguf-py's), 1-D tensors F32; the loaded model views the mapped
// matrices (llama's Q / K: copied rows, un-permuted) and its logits stay within `bound` (relative
// RMS against the fp32 model's).
void check_block_export(Checkpoint& fp, const std::string& label, GgmlType type, GgmlType expect_written, double bound,
                        const std::vector<int32_t>& tokens) {
    const std::vector<float> want = forward(fp, tokens);
    const std::string out = tmp_dir() + "/" + label + "." + ggml_type_name(type) + ".gguf";
    GgufExportOptions opt;
    opt.type = type;
    export_gguf(fp, out, opt);
    const auto f = GgufSource::open(out);
    const kernels::GType g = (kernels::GType)(uint32_t)expect_written;
    std::vector<unsigned char> row;
    for (const auto& p : fp.model->table().params()) {
        if (!p.trainable || p.name.find("ffn_gate_inp_noise") != std::string::npos) continue;
        const GgufTensorInfo* t = f->info(gguf_tensor_name(p.name));
        ASSERT_TRUE(t) << p.name;
        if (p.shape.size() < 2) {
            EXPECT_EQ(t->type, GgmlType::F32) << p.name;
            continue;
        }
        if (p.name.find("ffn_gate_inp") != std::string::npos) {  // routers stay F32
            EXPECT_EQ(t->type, GgmlType::F32) << p.name;
            continue;
        }
        ASSERT_EQ(t->type, expect_written) << label << " " << p.name;
        if (is_llama_qk(fp, p.name)) continue;  // rows permuted for llama.cpp's RoPE
        const int64_t in = p.shape.back(), rows = p.numel / in, rb = kernels::gtype_row_bytes(g, in);
        ASSERT_EQ(t->row_bytes, rb);
        row.resize((size_t)rb);
        const float* w = fp.model->param_f32(p);
        const auto* bytes = static_cast<const unsigned char*>(f->data(*t));
        for (int64_t r = 0; r < rows; ++r) {
            kernels::quantize_row(g, w + r * in, row.data(), in);
            ASSERT_EQ(0, std::memcmp(row.data(), bytes + r * rb, (size_t)rb)) << label << " " << p.name << " row " << r;
        }
    }
    Checkpoint q = load_model(out);
    ASSERT_TRUE(q.model->typed());
    EXPECT_EQ(kernels::ggml_type(q.model->weight_type()), g);
    int views = 0, typed = 0;
    for (const auto& p : q.model->table().params()) {
        if (!typed_at_inference(p)) continue;
        ++typed;
        views += q.model->param_is_view(p);
        EXPECT_EQ(q.model->param_is_view(p), !is_llama_qk(q, p.name)) << label << " " << p.name;
    }
    const int64_t T = (int64_t)tokens.size(), V = fp.model->config().vocab_size;
    const std::vector<float> got = forward(q, tokens);
    const QuantStats st = compare_logits(got, want, T, V);
    // The same model quantized by moe itself (set_weight_type on the fp32 weights, the embedding
    // rounded through the type as the file holds it): the in-place file model computes the same
    // logits (the same blocks, the same kernels)
    {
        Model& rm = *fp.model;
        std::vector<float> saved;
        for (const auto& p : rm.table().params())
            if (p.name == "tok_embd") {
                float* e = rm.param_f32(p);
                saved.assign(e, e + p.numel);
                const int64_t in = p.shape.back();
                std::vector<unsigned char> b((size_t)kernels::gtype_row_bytes(g, in));
                for (int64_t i = 0; i < p.numel / in; ++i) {
                    kernels::quantize_row(g, e + i * in, b.data(), in);
                    kernels::dequantize_row(g, b.data(), e + i * in, in);
                }
            }
        rm.set_weight_type(q.model->weight_type());
        auto cache = rm.make_cache(1);
        std::vector<int32_t> seq(T, 0), pos(T);
        for (int64_t i = 0; i < T; ++i) pos[i] = (int32_t)i;
        rm.forward_cached(tokens.data(), seq.data(), pos.data(), T, cache);
        const double same = max_rel_row_error(got.data(), rm.logits(), T, V);
        EXPECT_LE(same, 1e-5) << label << " " << ggml_type_name(type) << ": in place vs moe's own quantization";
        rm.set_weight_type(kernels::WType::f32);
        for (const auto& p : rm.table().params())
            if (p.name == "tok_embd") std::copy(saved.begin(), saved.end(), rm.param_f32(p));
    }
    std::printf("%-12s %-5s -> %-5s %d/%d matrices in place; logits vs fp32: relative RMS %.2f%%, top-1 agreement %.0f%%\n",
                label.c_str(), ggml_type_name(type), ggml_type_name(expect_written), views, typed, 100 * st.rel_rms,
                100 * st.top1);
    EXPECT_LE(st.rel_rms, bound) << label << " " << ggml_type_name(type);
    // --dtype fp32 dequantizes every matrix; another block type converts (no views)
    Checkpoint d = load_model(out, "fp32");
    const QuantStats sd = compare_logits(forward(d, tokens), want, T, V);
    EXPECT_LE(sd.rel_rms, bound) << label << " as fp32";
    if (expect_written != GgmlType::Q4_0) {
        Checkpoint c = load_model(out, "q4_0");
        for (const auto& p : c.model->table().params()) {
            if (!typed_at_inference(p)) continue;
            EXPECT_FALSE(c.model->param_is_view(p)) << p.name;
        }
        const QuantStats sc = compare_logits(forward(c, tokens), want, T, V);
        EXPECT_LE(sc.rel_rms, 1.0) << label << " as q4_0";  // converted twice: only a sanity bound
    }
}

// Bounds (relative RMS of the logits against the fp32 model's; these random tiny models amplify
// weight noise, and the file's token embedding is in the type too): Q8_0 12% (measured 8.3%
// mixtral, 5.1% qwen3_moe), Q4_0 85% (68%, 50%); on the widened model Q4_K 30% (18.6%), Q5_K 15%
// (9.4%), Q6_K 10% (6.0%).
class GgufBlockExport : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufBlockExport, WritesLoadsInPlaceAndStaysClose) {
    const std::string name = GetParam();
    const Reference ref = read_reference(name);
    Checkpoint fp = load_model(kHf + name, "fp32");
    check_block_export(fp, name, GgmlType::Q8_0, GgmlType::Q8_0, 0.12, ref.tokens);
    check_block_export(fp, name, GgmlType::Q4_0, GgmlType::Q4_0, 0.85, ref.tokens);
    // rows of 32 / 64 / 96 values: a K-quant's block of 256 fits none, every matrix falls back to Q8_0
    check_block_export(fp, name, GgmlType::Q4_K, GgmlType::Q8_0, 0.12, ref.tokens);
}

INSTANTIATE_TEST_SUITE_P(Families, GgufBlockExport, ::testing::Values("mixtral", "qwen3_moe"),
                         [](const auto& info) { return info.param; });

// The K-quants on a model whose rows are multiples of 256 (the mixtral config widened, random init)
TEST(GgufBlockExport, KQuantsOnRowsOf256) {
    Checkpoint base = load_model(kHf + "mixtral", "fp32");
    Checkpoint ck;
    ck.config = base.config;
    ModelConfig& mc = ck.config.model;
    mc.n_embd = 256, mc.n_ff_exp = 256, mc.n_head = 4, mc.n_head_kv = 2, mc.n_layer = 2;
    mc.layer_moe.assign(2, true);
    ck.model = std::make_unique<Model>(mc);
    ck.model->init(7);
    ck.tokenizer_missing = true;
    const std::vector<int32_t> tokens = {1, 5, 9, 200, 3, 77, 42, 8, 100, 31};
    check_block_export(ck, "wide", GgmlType::Q4_K, GgmlType::Q4_K, 0.30, tokens);
    check_block_export(ck, "wide", GgmlType::Q5_K, GgmlType::Q5_K, 0.15, tokens);
    check_block_export(ck, "wide", GgmlType::Q6_K, GgmlType::Q6_K, 0.10, tokens);
}

// A model without a tokenizer (random weights, a Hugging Face directory without tokenizer.json):
// llama.cpp's loader requires tokenizer.ggml.model (llama-bench refused moe's file without it:
// "key not found in model: tokenizer.ggml.model"), so moe writes "none" (llama.cpp's model without a
// vocabulary: llama.vocab_size dummy tokens) with the other keys its llama loader insists on; moe
// reads "none" and "no_vocab" back as no tokenizer.
TEST(GgufBlockExport, NoTokenizerIsWrittenAsLlamaCppsNone) {
    Checkpoint base = load_model(kHf + "mixtral", "fp32");
    Checkpoint ck;
    ck.config = base.config;
    ck.model = std::make_unique<Model>(ck.config.model);
    ck.model->init(3);
    ck.tokenizer_missing = true;
    const std::string out = tmp_dir() + "/no_tokenizer.gguf";
    GgufExportOptions opt;
    opt.type = GgmlType::Q8_0;
    export_gguf(ck, out, opt);
    {
        const auto src = GgufSource::open(out);
        const GgufHeader& h = src->header();
        EXPECT_EQ(h.get_str("tokenizer.ggml.model"), "none");
        EXPECT_EQ(h.get_int("llama.vocab_size"), ck.config.model.vocab_size);
        for (const char* k : {"general.architecture", "llama.context_length", "llama.embedding_length", "llama.block_count",
                              "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.layer_norm_rms_epsilon",
                              "llama.rope.dimension_count", "llama.expert_count", "llama.expert_used_count"})
            EXPECT_TRUE(h.has(k)) << k;
    }
    const Checkpoint back = load_model(out, "");
    EXPECT_TRUE(back.tokenizer_missing);
    // llama.cpp's other spelling
    const std::string nv = tmp_dir() + "/no_vocab.gguf";
    copy_gguf_setting(out, "tokenizer.ggml.model", GgufValue::make_str("no_vocab"), nv);
    EXPECT_TRUE(load_model(nv, "").tokenizer_missing);
}

// A file mixing block types (as llama.cpp's Q4_K_M puts output and some ffn_down in Q6_K): the
// model takes blk.0.attn_q's type, the other matrices are converted into it without error; a
// --dtype whose block does not fit some rows is one error naming the tensor.
TEST(GgufBlockExport, MixedTypesAreConvertedAndMisfitsAreErrors) {
    gguf_register_ggml_kernels();
    Checkpoint base = load_model(kHf + "mixtral", "fp32");
    Checkpoint ck;
    ck.config = base.config;
    ModelConfig& mc = ck.config.model;
    mc.n_embd = 256, mc.n_ff_exp = 256, mc.n_head = 4, mc.n_head_kv = 2, mc.n_layer = 2;
    mc.layer_moe.assign(2, true);
    ck.model = std::make_unique<Model>(mc);
    ck.model->init(11);
    ck.tokenizer_missing = true;
    const std::string q4k = tmp_dir() + "/mixed_src.gguf", mixed = tmp_dir() + "/mixed.gguf";
    GgufExportOptions opt;
    opt.type = GgmlType::Q4_K;
    export_gguf(ck, q4k, opt);
    // rewrite: output and blk.1.ffn_down_exps as Q6_K, blk.0.ffn_up_exps as F32 (from the fp32 weights)
    const auto in = GgufSource::open(q4k);
    GgufWriter w;
    for (const auto& [k, v] : in->header().kv) w.set(k, v);
    std::vector<std::vector<float>> keep;
    for (const auto& t : in->header().tensors) {
        const bool q6 = t.name == "output.weight" || t.name == "blk.1.ffn_down_exps.weight";
        const bool f32 = t.name == "blk.0.ffn_up_exps.weight";
        if (q6 || f32) {
            keep.emplace_back((size_t)t.numel());
            gguf_rows_to_f32(t, in->data(t), 0, t.rows, keep.back().data(), q4k);
            w.add_tensor_f32(t.name, q6 ? GgmlType::Q6_K : GgmlType::F32, t.shape, keep.back().data());
        } else {
            const void* d = in->data(t);
            const uint64_t nb = t.nbytes;
            w.add_tensor(t.name, t.type, t.shape, [d, nb](unsigned char* o) { std::memcpy(o, d, nb); });
        }
    }
    w.write(mixed);
    Checkpoint a = load_model(q4k), b = load_model(mixed);
    ASSERT_EQ(b.model->weight_type(), kernels::WType::q4_k);
    for (const auto& p : b.model->table().params()) {
        if (!typed_at_inference(p)) continue;
        const std::string gn = p.name + ".weight";
        const bool converted = gn == "output.weight" || gn == "blk.1.ffn_down_exps.weight" || gn == "blk.0.ffn_up_exps.weight" ||
                               is_llama_qk(b, p.name);
        EXPECT_EQ(b.model->param_is_view(p), !converted) << p.name;
    }
    const std::vector<int32_t> tokens = {1, 5, 9, 200, 3, 77, 42, 8};
    const int64_t T = (int64_t)tokens.size(), V = mc.vocab_size;
    const std::vector<float> la = forward(a, tokens), lb = forward(b, tokens);
    // Q6_K / F32 matrices (made from the Q4_K values) re-quantized to Q4_K: close to the all-Q4_K
    // file (measured 0.9% relative RMS)
    const QuantStats st = compare_logits(lb, la, T, V);
    std::printf("mixed Q4_K/Q6_K/F32 file loaded as q4_k vs the all-Q4_K file: relative RMS %.2f%%, top-1 %.0f%%\n",
                100 * st.rel_rms, 100 * st.top1);
    EXPECT_LE(st.rel_rms, 0.3);
    // a named type whose block does not divide the rows
    const std::string m8 = tmp_dir() + "/misfit.gguf";
    opt.type = GgmlType::Q8_0;
    export_gguf(base, m8, opt);
    try {
        load_model(m8, "q4_k");
        ADD_FAILURE() << "expected an error";
    } catch (const moe::error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("--dtype q4_k needs rows that are a multiple of 256"), std::string::npos) << msg;
        EXPECT_NE(msg.find("rows of 64"), std::string::npos) << msg;
    }
}

// ---- tokenizers ---------------------------------------------------------------------------------

const std::vector<std::string>& test_lines() {
    static const std::vector<std::string> lines = [] {
        std::vector<std::string> v;
        std::istringstream in(slurp(kTok + "lines.jsonl"));
        std::string l;
        while (std::getline(in, l)) v.push_back(json::parse(l).get<std::string>());
        return v;
    }();
    return lines;
}

// tokenizer.json of a family (the gpt2 / mistral_ms ones are patches of another family's)
json family_json(const std::string& family) {
    if (fs::exists(kTok + family + "/tokenizer.json")) return json::parse(slurp(kTok + family + "/tokenizer.json"));
    const json patch = json::parse(slurp(kTok + family + "/tokenizer_patch.json"));
    json base = family_json(patch["base"].get<std::string>());
    for (auto it = patch["replace"].begin(); it != patch["replace"].end(); ++it) base[it.key()] = it.value();
    return base;
}

std::shared_ptr<const HfTokenizer> family_tokenizer(const std::string& family) {
    const std::string cfg = kTok + family + "/tokenizer_config.json";
    return HfTokenizer::from_json(family_json(family), fs::exists(cfg) ? json::parse(slurp(cfg)) : json(), family);
}

// Added tokens whose lstrip / rstrip / single_word flags change the ids: GGUF has no place for these
// flags (llama.cpp matches added tokens as they are), so lines containing them are left out of the
// comparisons of files without tokenizer.huggingface.json.
std::vector<std::string> flagged_tokens(const json& tj) {
    std::vector<std::string> out;
    for (const auto& a : tj["added_tokens"])
        if (a.value("lstrip", false) || a.value("rstrip", false) || a.value("single_word", false))
            out.push_back(a["content"].get<std::string>());
    return out;
}

struct TokCompare {
    int compared = 0, skipped = 0, differ = 0;
    std::string first;
};

TokCompare compare_ids(const HfTokenizer& want, const HfTokenizer& got, const std::vector<std::string>& skip,
                       bool add_special) {
    TokCompare c;
    for (const std::string& line : test_lines()) {
        bool s = false;
        for (const std::string& t : skip) s |= line.find(t) != std::string::npos;
        if (s) {
            ++c.skipped;
            continue;
        }
        ++c.compared;
        if (want.encode(line, add_special) != got.encode(line, add_special)) {
            if (!c.differ) c.first = line;
            ++c.differ;
        }
    }
    return c;
}

std::shared_ptr<const HfTokenizer> tokenizer_of(const std::string& path) {
    const auto src = GgufSource::open(path);
    auto t = gguf_tokenizer(src->header());
    if (!t) fail("no tokenizer in ", path);
    return t;
}

class GgufTokenizers : public ::testing::TestWithParam<std::string> {};

// gguf-py's vocab-only files (convert_hf_to_gguf.py's keys) give the tokenizer.json ids
TEST_P(GgufTokenizers, GgufPyFileGivesTheTokenizerJsonIds) {
    const std::string family = GetParam();
    const auto want = family_tokenizer(family);
    const auto got = tokenizer_of(kGguf + "tok_" + family + ".gguf");
    for (bool special : {false, true}) {
        const TokCompare c = compare_ids(*want, *got, flagged_tokens(family_json(family)), special);
        std::printf("%-8s gguf-py file, special %d: %d lines compared, %d skipped (flagged added tokens), %d differ%s%s\n",
                    family.c_str(), (int)special, c.compared, c.skipped, c.differ, c.differ ? ", first: " : "",
                    c.differ ? json(c.first).dump().c_str() : "");
        EXPECT_EQ(c.differ, 0) << family << ": first differing line " << json(c.first).dump();
        EXPECT_GT(c.compared, 5000);
    }
}

// moe's writer: from the tokenizer.* keys alone (what llama.cpp reads), and with
// tokenizer.huggingface.json (every line, flags included)
TEST_P(GgufTokenizers, MoeWriterRoundTrip) {
    const std::string family = GetParam();
    const auto want = family_tokenizer(family);
    for (bool embed : {false, true}) {
        const std::string out = tmp_dir() + "/tok_" + family + (embed ? "_hf" : "") + ".gguf";
        GgufWriter w;
        w.set_str("general.architecture", "llama");
        gguf_write_tokenizer(w, *want, want->vocab_size(), embed);
        w.write(out);
        const auto got = tokenizer_of(out);
        for (bool special : {false, true}) {
            const TokCompare c = compare_ids(*want, *got, embed ? std::vector<std::string>{} : flagged_tokens(family_json(family)), special);
            std::printf("%-8s moe writer%s, special %d: %d lines compared, %d skipped, %d differ\n", family.c_str(),
                        embed ? " + tokenizer.huggingface.json" : "", (int)special, c.compared, c.skipped, c.differ);
            EXPECT_EQ(c.differ, 0) << family << " embed " << embed << ": first differing line " << json(c.first).dump();
        }
        EXPECT_EQ(got->bos_id(), want->bos_id());
        EXPECT_EQ(got->eos_ids().empty() ? -1 : got->eos_ids()[0], want->eos_ids().empty() ? -1 : want->eos_ids()[0]);
        // gguf-py's keys and moe's agree on the vocabulary
        const auto py = GgufSource::open(kGguf + "tok_" + family + ".gguf");
        const auto me = GgufSource::open(out);
        EXPECT_EQ(py->header().get_str_array("tokenizer.ggml.tokens"), me->header().get_str_array("tokenizer.ggml.tokens"));
        EXPECT_EQ(py->header().get_int_array("tokenizer.ggml.token_type"), me->header().get_int_array("tokenizer.ggml.token_type"));
        EXPECT_EQ(py->header().get_str("tokenizer.ggml.model"), me->header().get_str("tokenizer.ggml.model"));
        EXPECT_EQ(py->header().get_str("tokenizer.ggml.pre"), me->header().get_str("tokenizer.ggml.pre"));
    }
}

INSTANTIATE_TEST_SUITE_P(Families, GgufTokenizers, ::testing::Values("mixtral", "llama3", "qwen2", "olmoe", "gpt2"),
                         [](const auto& info) { return info.param; });

TEST(GgufTokenizer, ChatTemplateAndUnknownPreType) {
    const auto tok = family_tokenizer("qwen2");
    GgufWriter w;
    w.set_str("general.architecture", "qwen2");
    gguf_write_tokenizer(w, *tok, tok->vocab_size(), false);
    w.set_str("tokenizer.chat_template", "{{ messages[0]['content'] }}");
    w.write(tmp_dir() + "/ct.gguf");
    const auto got = tokenizer_of(tmp_dir() + "/ct.gguf");
    EXPECT_EQ(got->tokenizer_config()["chat_template"], "{{ messages[0]['content'] }}");
    w.set_str("tokenizer.ggml.pre", "jais");
    w.write(tmp_dir() + "/pre.gguf");
    try {
        tokenizer_of(tmp_dir() + "/pre.gguf");
        ADD_FAILURE();
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.pre 'jais' is not supported"), std::string::npos) << e.what();
    }
}

// ---- broken files -------------------------------------------------------------------------------

// A GGUF image assembled field by field, so that each test can break exactly one thing.
struct Bytes {
    std::string b;
    Bytes& u32(uint32_t v) { b.append((const char*)&v, 4); return *this; }
    Bytes& u64(uint64_t v) { b.append((const char*)&v, 8); return *this; }
    Bytes& u8(uint8_t v) { b.push_back((char)v); return *this; }
    Bytes& str(const std::string& s) { u64(s.size()); b += s; return *this; }
    Bytes& pad(size_t a) { while (b.size() % a) b.push_back(0); return *this; }
};

struct Spec {
    uint32_t magic = 0x46554747, version = 3;
    std::vector<std::pair<std::string, std::string>> kv = {{"general.architecture", "llama"}, {"general.name", "x"}};
    struct T {
        std::string name;
        std::vector<uint64_t> ne;
        uint32_t type;
        uint64_t offset;
    };
    std::vector<T> tensors = {{"a.weight", {8, 2}, 0, 0}, {"b.weight", {4}, 1, 64}};
    uint64_t data_bytes = 96;
    std::string extra_kv;  // raw bytes of one more key-value
    int extra_kv_count = 0;
};

std::string build(const Spec& s) {
    Bytes x;
    x.u32(s.magic).u32(s.version).u64(s.tensors.size()).u64(s.kv.size() + s.extra_kv_count);
    for (const auto& [k, v] : s.kv) x.str(k).u32(8).str(v);
    x.b += s.extra_kv;
    for (const auto& t : s.tensors) {
        x.str(t.name).u32((uint32_t)t.ne.size());
        for (uint64_t e : t.ne) x.u64(e);
        x.u32(t.type).u64(t.offset);
    }
    x.pad(32);
    x.b.append(s.data_bytes, '\x11');
    return x.b;
}

std::string parse_error(const std::string& image) {
    try {
        parse_gguf((const unsigned char*)image.data(), image.size(), "bad.gguf");
    } catch (const moe::error& e) {
        return e.what();
    }
    return "";
}

#define EXPECT_GGUF_ERROR(image, text)                                                    \
    do {                                                                                  \
        const std::string e_ = parse_error(image);                                        \
        EXPECT_NE(e_.find(text), std::string::npos) << "got: '" << e_ << "'";             \
        EXPECT_NE(e_.find("bad.gguf"), std::string::npos) << e_;                          \
        EXPECT_EQ(e_.find('\n'), std::string::npos) << e_;                                \
    } while (0)

TEST(GgufParse, ValidImageParses) {
    const std::string img = build(Spec{});
    const GgufHeader h = parse_gguf((const unsigned char*)img.data(), img.size(), "ok.gguf");
    EXPECT_EQ(h.version, 3u);
    EXPECT_EQ(h.get_str("general.architecture"), "llama");
    ASSERT_EQ(h.tensors.size(), 2u);
    EXPECT_EQ(h.tensors[0].shape, (std::vector<int64_t>{2, 8}));  // ne reversed
    EXPECT_EQ(h.tensors[0].nbytes, 64u);
    EXPECT_EQ(h.tensors[1].nbytes, 8u);
    Spec v2;
    v2.version = 2;
    EXPECT_EQ(parse_error(build(v2)), "");
}

TEST(GgufParse, EveryBrokenFieldIsOneClearError) {
    Spec s;
    s.magic = 0x46554746;
    EXPECT_GGUF_ERROR(build(s), "not a GGUF file: magic");
    s = {};
    s.version = 1;
    EXPECT_GGUF_ERROR(build(s), "GGUF version 1 is not supported");
    s.version = 4;
    EXPECT_GGUF_ERROR(build(s), "unsupported GGUF version 4");
    s.version = 0x03000000;
    EXPECT_GGUF_ERROR(build(s), "big-endian");
    s = {};
    s.tensors[1].offset = 96;
    EXPECT_GGUF_ERROR(build(s), "runs past the end of the data section");
    s = {};
    s.tensors[1].offset = 48;
    EXPECT_GGUF_ERROR(build(s), "not a multiple of the alignment 32");
    s = {};
    s.tensors[1].offset = 32;
    EXPECT_GGUF_ERROR(build(s), "overlap");
    s = {};
    s.tensors[0].ne = {1ull << 32, 1ull << 32, 1ull << 32};
    EXPECT_GGUF_ERROR(build(s), "overflows int64");
    s = {};
    s.tensors[0].ne = {(1ull << 62) + 1};  // F32: the row's bytes overflow
    EXPECT_GGUF_ERROR(build(s), "overflows int64 bytes");
    s = {};
    s.tensors[0].ne = {1ull << 63};
    EXPECT_GGUF_ERROR(build(s), "negative as int64");
    s = {};
    s.tensors[0].type = 4;  // Q4_2, removed from ggml
    EXPECT_GGUF_ERROR(build(s), "unknown ggml type 4");
    s.tensors[0].type = 1000;
    EXPECT_GGUF_ERROR(build(s), "unknown ggml type 1000");
    s = {};
    s.tensors[0].type = 12;  // Q4_K: rows of 8 values
    EXPECT_GGUF_ERROR(build(s), "not a multiple of its block size 256");
    s = {};
    s.tensors[0].ne = {1, 1, 1, 1, 1};
    EXPECT_GGUF_ERROR(build(s), "has 5 dimensions (at most 4)");
    s = {};
    s.tensors[1].name = "a.weight";
    EXPECT_GGUF_ERROR(build(s), "tensor 'a.weight' appears twice");
    s = {};
    s.tensors[1].name = std::string(64, 'n');
    EXPECT_GGUF_ERROR(build(s), "(ggml allows at most 63)");
    s = {};
    s.kv.push_back({"general.name", "y"});
    EXPECT_GGUF_ERROR(build(s), "metadata key 'general.name' appears twice");
    s = {};
    s.extra_kv = Bytes().str("k").u32(8).u64(1ull << 40).b;  // a string past the end
    s.extra_kv_count = 1;
    EXPECT_GGUF_ERROR(build(s), "past the end of the file");
    s.extra_kv = Bytes().str("k").u32(9).u32(4).u64(1ull << 40).b;  // an array past the end
    EXPECT_GGUF_ERROR(build(s), "runs past the end of the file");
    s.extra_kv = Bytes().str("k").u32(9).u32(13).u64(1).b;
    EXPECT_GGUF_ERROR(build(s), "unknown array element type 13");
    s.extra_kv = Bytes().str("k").u32(77).b;
    EXPECT_GGUF_ERROR(build(s), "unknown value type 77");
    s.extra_kv = Bytes().str("k").u32(7).u8(2).b;
    EXPECT_GGUF_ERROR(build(s), "bool value 2");
    {
        Bytes nest;
        nest.str("k");
        nest.u32(9);
        for (int i = 0; i < 10; ++i) nest.u32(9).u64(1);
        nest.u32(0).u64(0);
        s.extra_kv = nest.b;
        EXPECT_GGUF_ERROR(build(s), "nested more than 8 deep");
    }
    s.extra_kv = Bytes().str("general.alignment").u32(4).u32(48).b;
    EXPECT_GGUF_ERROR(build(s), "general.alignment 48 is not a power of two");
    s.extra_kv = Bytes().str("general.alignment").u32(10).u64(64).b;
    EXPECT_GGUF_ERROR(build(s), "general.alignment is u64 (must be u32)");
    s = {};
    std::string img = build(s);
    // a tensor count that cannot fit
    std::string big = img;
    const uint64_t huge = 1ull << 60;
    std::memcpy(&big[8], &huge, 8);
    EXPECT_GGUF_ERROR(big, "tensor count 1152921504606846976 cannot fit");
    std::memcpy(&big[8], img.data() + 8, 8);
    std::memcpy(&big[16], &huge, 8);
    EXPECT_GGUF_ERROR(big, "metadata count 1152921504606846976 cannot fit");
}

// every cut of a valid file is an error (never a crash), and so is a cut of a real model file
TEST(GgufParse, TruncatedFilesAreErrors) {
    const std::string img = build(Spec{});
    const GgufHeader h = parse_gguf((const unsigned char*)img.data(), img.size(), "ok.gguf");
    for (size_t n = 0; n < h.data_start + 72; ++n) {  // 72: the end of the last tensor
        const std::string e = parse_error(img.substr(0, n));
        EXPECT_FALSE(e.empty()) << "cut at " << n;
    }
    const std::string model = slurp(kGguf + "mixtral.f32.gguf");
    for (size_t n : {(size_t)3, (size_t)100, (size_t)1000, model.size() / 2, model.size() - 1})
        EXPECT_NE(parse_error(model.substr(0, n)).find("bad.gguf"), std::string::npos) << n;
}

void write_file(const std::string& path, const std::string& data) {
    std::ofstream f(path, std::ios::binary);
    f << data;
}

std::string load_error(const std::string& path) {
    try {
        load_model(path, "fp32");
    } catch (const moe::error& e) {
        return e.what();
    }
    return "";
}

// a model file missing a required key or tensor, or with an unsupported feature
TEST(GgufModel, MissingAndUnsupportedAreClearErrors) {
    const std::string src = kGguf + "mixtral.f32.gguf";
    const auto in = GgufSource::open(src);
    auto rewrite = [&](const std::string& out, auto&& edit_kv, const std::string& drop_tensor, uint32_t retype = 0) {
        GgufWriter w;
        for (const auto& [k, v] : in->header().kv) w.set(k, v);
        edit_kv(w);
        GgufWriter w2;
        // the key order does not matter; rebuild without a removed key
        for (const auto& t : in->header().tensors) {
            if (t.name == drop_tensor) continue;
            const GgufTensorInfo* tp = &t;
            const void* d = in->data(t);
            GgmlType ty = t.type;
            std::vector<int64_t> shape = t.shape;
            if (retype && t.name == "blk.0.ffn_up_exps.weight") ty = (GgmlType)retype;  // same shape, blocks of 32
            const uint64_t nb = (uint64_t)ggml_row_bytes(ty, shape.back()) * (uint64_t)(t.numel() / shape.back());
            w.add_tensor(t.name, ty, shape, [d, nb, tp](unsigned char* o) { std::memcpy(o, d, std::min<uint64_t>(nb, tp->nbytes)); });
        }
        w.write(out);
    };
    struct Case {
        std::string what, key;
        bool remove;
        GgufValue value;
        std::string drop, expect;
        uint32_t retype = 0;
    };
    const std::vector<Case> cases = {
        {"no arch", "general.architecture", true, {}, "", "required GGUF key 'general.architecture' is missing"},
        {"bad arch", "general.architecture", false, GgufValue::make_str("gpt2"), "", "general.architecture 'gpt2' is not supported"},
        {"no eps", "llama.attention.layer_norm_rms_epsilon", true, {}, "", "'llama.attention.layer_norm_rms_epsilon' is missing"},
        {"no heads", "llama.attention.head_count", true, {}, "", "'llama.attention.head_count' is missing"},
        {"str heads", "llama.attention.head_count", false, GgufValue::make_str("4"), "", "is string (expected an integer)"},
        {"rope scaling", "llama.rope.scaling.type", false, GgufValue::make_str("yarn"), "", "rope.scaling.type 'yarn' is not implemented"},
        {"window", "llama.attention.sliding_window", false, GgufValue::make_u32(16), "", "sliding-window attention is not implemented"},
        {"partial rope", "llama.rope.dimension_count", false, GgufValue::make_u32(8), "", "partial RoPE is not supported"},
        {"gating", "llama.expert_gating_func", false, GgufValue::make_u32(2), "", "expert_gating_func = 2 is not supported"},
        {"missing tensor", "", false, {}, "blk.1.attn_k.weight", "required tensor 'blk.1.attn_k.weight' is missing"},
        {"quantized", "", false, {}, "", "tensor type Q4_1: not yet supported", 3},
    };
    for (const Case& c : cases) {
        const std::string out = tmp_dir() + "/broken.gguf";
        rewrite(out, [&](GgufWriter& w) {
            if (c.key.empty()) return;
            if (c.remove) {
                GgufWriter fresh;
                for (const auto& [k, v] : in->header().kv)
                    if (k != c.key) fresh.set(k, v);
                w = fresh;
            } else {
                w.set(c.key, c.value);
            }
        }, c.drop, c.retype);
        const std::string e = load_error(out);
        EXPECT_NE(e.find(c.expect), std::string::npos) << c.what << ": got '" << e << "'";
        EXPECT_NE(e.find(out), std::string::npos) << c.what << ": " << e;
    }
    // not a GGUF file at all, and an empty one
    write_file(tmp_dir() + "/not.gguf", "hello");
    EXPECT_NE(load_error(tmp_dir() + "/not.gguf").find("not a GGUF file"), std::string::npos);
    write_file(tmp_dir() + "/empty.gguf", "");
    EXPECT_NE(load_error(tmp_dir() + "/empty.gguf").find("not a GGUF file"), std::string::npos);
}

// ---- writer ---------------------------------------------------------------------------------------

TEST(GgufWriter, HalfConversionRoundsToNearestEven) {
    for (uint32_t h = 0; h < 65536; ++h) {
        const float f = f16_to_f32((uint16_t)h);
        if (std::isnan(f)) continue;
        ASSERT_EQ(f32_to_f16(f), h) << h;
        // the midpoint to the next half rounds to the even one
        if ((h & 0x7C00) != 0x7C00 && ((h + 1) & 0x7C00) != 0x7C00 && (h & 0x7FFF) != 0x7FFF) {
            const float g = f16_to_f32((uint16_t)(h + 1));
            if (std::isinf(g) || std::signbit(f) != std::signbit(g)) continue;
            const float mid = (float)(((double)f + (double)g) / 2);
            ASSERT_EQ(f32_to_f16(mid), (h & 1) ? h + 1 : h) << h;
        }
    }
    EXPECT_EQ(f32_to_f16(1e6f), 0x7C00);
    EXPECT_EQ(f32_to_f16(-1e-9f), 0x8000);
}

TEST(GgufWriter, AlignmentAndNoTempFileLeft) {
    GgufWriter w(64);
    w.set_str("general.architecture", "llama");
    const std::vector<float> a(10, 1.5f), b(3, -2.0f);
    w.add_tensor_f32("a", GgmlType::F32, {2, 5}, a.data());
    w.add_tensor_f32("b", GgmlType::F16, {3}, b.data());
    const std::string out = tmp_dir() + "/aligned.gguf";
    w.write(out);
    const auto src = GgufSource::open(out);
    EXPECT_EQ(src->header().alignment, 64u);
    EXPECT_EQ(src->header().data_start % 64, 0u);
    for (const auto& t : src->header().tensors) EXPECT_EQ(t.offset % 64, 0u);
    EXPECT_EQ(src->get("b").dtype, DType::f16);
    EXPECT_EQ(src->get("a").f32()[9], 1.5f);
    for (const auto& e : fs::directory_iterator(tmp_dir())) EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos);
    try {
        // (Q4_1: no quantizer ever; Q4_K has one once a model load has registered the block kernels,
        // so the test does not depend on what ran before it in the same process)
        const std::vector<float> z(32, 0.5f);
        w.add_tensor_f32("q", GgmlType::Q4_1, {1, 32}, z.data());
        ADD_FAILURE();
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("Q4_1 is not supported yet"), std::string::npos) << e.what();
    }
    try {
        w.write("/proc/nonexistent/x.gguf");
        ADD_FAILURE();
    } catch (const moe::error& e) {
        EXPECT_NE(std::string(e.what()).find("/proc/nonexistent/x.gguf"), std::string::npos) << e.what();
    }
}

}  // namespace

namespace {

// the fuzz seeds written by gen_gguf_refs.py --fuzz-corpus: every value type, nested arrays, v2
TEST(GgufParse, FuzzSeedsParseAsWritten) {
    const std::string dir = std::string(MOE_TEST_DIR) + "/../fuzz/corpus/gguf/";
    const auto src = GgufSource::open(dir + "all_types.gguf");
    const GgufHeader& h = src->header();
    EXPECT_EQ(h.get_int("t.u8"), 7);
    EXPECT_EQ(h.get_int("t.i16"), -700);
    EXPECT_EQ(h.get_int("t.u64"), (int64_t)1 << 40);
    EXPECT_EQ(h.get_int("t.i64"), -((int64_t)1 << 40));
    EXPECT_EQ(h.get_float("t.f32"), 1.5);
    EXPECT_EQ(h.get_float("t.f64"), 2.5);
    EXPECT_TRUE(h.get_bool("t.bool", false));
    EXPECT_EQ(h.get_str("t.str"), "h\xC3\xA9llo");
    EXPECT_EQ(h.get("t.nested").items.size(), 2u);
    EXPECT_EQ(h.get("t.nested").items[0].items.size(), 2u);
    EXPECT_EQ(h.get_str_array("t.strs"), (std::vector<std::string>{"a", "b c"}));
    const GgufTensorInfo& q = src->get_info("q.weight");
    EXPECT_EQ(q.type, GgmlType::Q8_0);
    EXPECT_EQ(q.row_bytes, 34);
    EXPECT_EQ(src->get("q.weight").shape, (std::vector<int64_t>{1, 34}));  // raw blocks as (rows, row_bytes)
    EXPECT_EQ(src->get("a.weight").shape, (std::vector<int64_t>{2, 8}));
    EXPECT_EQ(src->get("a.weight").f32()[15], 15.0f);
    EXPECT_EQ(parse_error(slurp(dir + "v2.gguf")), "");
    EXPECT_NE(parse_error(slurp(dir + "cut.gguf")), "");
    EXPECT_NE(parse_error(slurp(dir + "bad_magic.gguf")).find("not a GGUF file"), std::string::npos);
    Checkpoint ck = load_model(dir + "model.gguf");
    EXPECT_EQ(ck.config.model.n_expert, 2);
    EXPECT_EQ(tokenizer_of(dir + "tok_gpt2.gguf")->encode("ab", false), (std::vector<int32_t>{2}));
    EXPECT_EQ(tokenizer_of(dir + "tok_llama.gguf")->encode("a", true).front(), 1);  // add_bos_token by default
    // fuzz_gguf's reproducers: each one clear error (a (0, C) token_embd reached ParamTable's assert)
    EXPECT_NE(load_error(dir + "regress_vocab0.gguf").find("no vocabulary rows"), std::string::npos)
        << load_error(dir + "regress_vocab0.gguf");
}

// Metadata claiming far more layers than the file holds (a dense model: no per-layer router check of
// the header sees it first) is refused by its tensors before the model is allocated.
// fuzz_gguf found such a header building the whole model first (its weights bound by a linear name
// search: minutes for 10^4 layers).
TEST(GgufModel, MetadataClaimingMoreLayersThanTheFileIsAnErrorUpFront) {
    const std::string out = tmp_dir() + "/many_layers.gguf";
    copy_gguf_setting(kGguf + "qwen3.f32.gguf", "qwen3.block_count", GgufValue::make_u32(60000), out);
    const std::string e = load_error(out);
    EXPECT_NE(e.find("required tensor 'blk.2."), std::string::npos) << e;
    EXPECT_NE(e.find(out), std::string::npos) << e;
}

}  // namespace
