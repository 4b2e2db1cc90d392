#include "io/checkpoint.h"

#include "kernels/bf16.h"
#include "kernels/qmatmul.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/tensor_file.h"

namespace moe {

namespace fs = std::filesystem;

std::string checkpoint_file(const std::string& dir) { return (fs::path(dir) / "checkpoint.bin").string(); }

void ensure_writable_dir(const std::string& dir) {
    std::error_code ec;
    if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
        fail("output path '", dir, "' exists and is not a directory");
    fs::create_directories(dir, ec);
    if (ec) fail("cannot create output directory '", dir, "': ", ec.message());
    if (!fs::is_directory(dir, ec)) fail("output path '", dir, "' is not a directory");
    if (::access(dir.c_str(), W_OK) != 0)
        fail("output directory '", dir, "' is not writable: ", std::strerror(errno));
}

// A writer with the checkpoint metadata; `write_checkpoint` finishes it (tensor file + config.json).
static TensorFileWriter checkpoint_writer(const Config& config, const Tokenizer& tok, const TrainState& st) {
    TensorFileWriter w;
    w.meta["format"] = "moe-checkpoint";
    w.meta["version"] = 1;
    w.meta["config"] = config_to_json(config);
    w.meta["tokenizer"] = tok.to_json();
    w.meta["state"] = {{"step", st.step}, {"tokens_seen", st.tokens_seen}, {"val_loss", st.val_loss}};
    return w;
}

static void write_checkpoint(const std::string& dir, const TensorFileWriter& w, const Config& config) {
    w.write(checkpoint_file(dir));
    write_file_atomic((fs::path(dir) / "config.json").string(), config_to_json(config).dump(2) + "\n");
}

void save_checkpoint(const std::string& dir, const Config& config, const Tokenizer& tok,
                     Model& model, const float* adam_m, const float* adam_v, const TrainState& st) {
    ensure_writable_dir(dir);
    TensorFileWriter w = checkpoint_writer(config, tok, st);
    for (const auto& p : model.table().params())
        w.add(p.name, "f32", p.shape, model.params() + p.offset);
    if (adam_m && adam_v) {
        w.add("optim.adam_m", "f32", {model.n_params()}, adam_m);
        w.add("optim.adam_v", "f32", {model.n_params()}, adam_v);
    }
    write_checkpoint(dir, w, config);
}

void save_checkpoint_quantized(const std::string& dir, const Config& config, const Tokenizer& tok, Model& model,
                               const std::string& weight_type, const TrainState& st) {
    const kernels::WType wt = kernels::parse_wtype(weight_type, "quantize --dtype");
    if (kernels::is_ggml(wt))  // (ggml block types come from GGUF files or are made at load)
        fail("quantize --dtype ", weight_type, ": moe checkpoints store fp32, bf16 or int8; load with --dtype ",
             weight_type, " to quantize at load time");
    ensure_writable_dir(dir);
    TensorFileWriter w = checkpoint_writer(config, tok, st);
    w.meta["weight_type"] = weight_type;
    std::vector<kernels::QStore> stores;  // kept alive until write()
    stores.reserve(model.table().params().size());
    for (const auto& p : model.table().params()) {
        const float* src = model.params() + p.offset;
        if (wt == kernels::WType::f32 || !typed_at_inference(p)) {
            w.add(p.name, "f32", p.shape, src);
            continue;
        }
        const int64_t in = p.shape.back(), rows = p.numel / in;
        stores.emplace_back();
        stores.back().build(wt, src, rows, in);
        const kernels::QStore& q = stores.back();
        if (wt == kernels::WType::bf16) {
            w.add(p.name, "bf16", p.shape, q.bf16.data());
        } else {
            w.add(p.name, "i8", p.shape, q.q.data());
            w.add(p.name + ".scales", "f32", {rows, q.view().blocks()}, q.scales.data());
        }
    }
    write_checkpoint(dir, w, config);
}

Checkpoint load_checkpoint(const std::string& dir, const std::string& weight_type, bool verify, ExpertSplit split) {
    const std::string path = checkpoint_file(dir);
    std::error_code ec;  // (the non-throwing forms: a name too long is an error line, not an abort)
    if (!fs::exists(dir, ec))
        fail("checkpoint directory '", dir, "' does not exist", ec ? ": " + ec.message() : "");
    if (!fs::exists(path, ec)) fail("checkpoint '", dir, "' has no checkpoint.bin (expected '", path, "')");
    auto file = std::make_shared<TensorFile>(TensorFile::read(path, verify));
    const TensorFile& tf = *file;
    Checkpoint ck;
    try {
        if (tf.meta.value("format", "") != "moe-checkpoint")
            fail("'", path, "' is a moe tensor file but not a checkpoint");
        ck.config = config_from_json(tf.meta.at("config"), path + " (config)");
        ck.tokenizer = Tokenizer::from_json(tf.meta.at("tokenizer"), path + " (tokenizer)");
        const auto& s = tf.meta.at("state");
        ck.state.step = s.at("step").get<int64_t>();
        ck.state.tokens_seen = s.at("tokens_seen").get<int64_t>();
        ck.state.val_loss = s.at("val_loss").get<double>();
        ck.weight_type = tf.meta.value("weight_type", std::string("fp32"));
        kernels::parse_wtype(ck.weight_type, (path + " (meta weight_type)").c_str());
    } catch (const nlohmann::json::exception& e) {
        fail("'", path, "' has incomplete metadata: ", e.what());
    }
    if (ck.config.model.vocab_size < ck.tokenizer.vocab_size())
        fail("'", path, "': vocab_size ", ck.config.model.vocab_size, " is smaller than the tokenizer's ",
             ck.tokenizer.vocab_size());
    const kernels::WType stored = kernels::parse_wtype(ck.weight_type, "checkpoint weight_type");
    const kernels::WType want = weight_type.empty() ? stored : kernels::parse_wtype(weight_type, "--dtype");
    ck.model = std::make_unique<Model>(ck.config.model, want, expert_shard_of(ck.config.model, split));
    Model& m = *ck.model;
    std::vector<float> row;  // one row in fp32 while converting between typed formats
    for (const auto& p : m.table().params()) {
        const TensorView* t = tf.find(p.name);
        if (!t) fail("'", path, "' has no tensor '", p.name, "' that its config requires");
        const bool typed_in_file = stored != kernels::WType::f32 && typed_at_inference(p);
        const DType dt = typed_in_file ? (stored == kernels::WType::bf16 ? DType::bf16 : DType::i8) : DType::f32;
        if (t->dtype != dt || t->shape != p.shape)
            fail("'", path, "': tensor '", p.name, "' is ", dtype_name(t->dtype), " ", t->shape_str(),
                 " but the config needs ", dtype_name(dt), " ", TensorView{p.name, dt, p.shape}.shape_str());
        // the matrix as stored
        kernels::QMatrix v;
        v.type = typed_in_file ? stored : kernels::WType::f32;
        v.in = p.shape.back(), v.out = p.numel / v.in;
        if (v.type == kernels::WType::f32) v.f32 = t->f32();
        if (v.type == kernels::WType::bf16) v.bf16 = t->u16();
        if (v.type == kernels::WType::q8) {
            const TensorView* sc = tf.find(p.name + ".scales");
            if (!sc || sc->dtype != DType::f32 || sc->shape != std::vector<int64_t>{v.out, v.blocks()})
                fail("'", path, "': tensor '", p.name, ".scales' is missing or not f32 [", v.out, ",", v.blocks(), "]");
            v.q = t->i8();
            v.scales = sc->f32();
        }
        const auto [r0, nr] = m.local_rows(p);  // a sharded model's experts, else every row
        v = v.rows(r0, nr);
        if (float* dst = m.param_f32(p)) {  // fp32 in the model: converted (a copy: training writes it)
            if (v.type == kernels::WType::f32) {
                std::memcpy(dst, v.f32, v.out * v.in * sizeof(float));
            } else {
                for (int64_t r = 0; r < v.out; ++r) kernels::dequantize_row(dst + r * v.in, v, r);
            }
        } else if (v.type == want) {  // used in place: the mapping is 64-byte aligned per tensor
            m.set_param_view(p, v, file);
        } else {  // another type: converted a row at a time, no fp32 copy of the matrix
            kernels::QStore& st = m.param_store(p);
            row.resize(v.in);
            for (int64_t r = 0; r < v.out; ++r) {
                if (v.type == kernels::WType::f32) {
                    st.set_rows(r, 1, v.f32 + r * v.in);
                } else {
                    kernels::dequantize_row(row.data(), v, r);
                    st.set_rows(r, 1, row.data());
                }
            }
        }
    }
    const TensorView* am = tf.find("optim.adam_m");
    const TensorView* av = tf.find("optim.adam_v");
    if (am && av && !m.typed() && !m.sharded()) {
        if (am->numel() != m.n_params() || av->numel() != m.n_params())
            fail("'", path, "': optimizer state has ", am->numel(), " values, the model has ", m.n_params());
        ck.adam_m.assign(am->f32(), am->f32() + am->numel());
        ck.adam_v.assign(av->f32(), av->f32() + av->numel());
    }
    return ck;
}

}  // namespace moe
