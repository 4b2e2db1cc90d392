#include "io/checkpoint.h"

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

void save_checkpoint(const std::string& dir, const Config& config, const Tokenizer& tok,
                     Model& model, const float* adam_m, const float* adam_v, const TrainState& st) {
    ensure_writable_dir(dir);
    TensorFileWriter w;
    w.meta["format"] = "moe-checkpoint";
    w.meta["version"] = 1;
    w.meta["config"] = config_to_json(config);
    w.meta["tokenizer"] = tok.to_json();
    w.meta["state"] = {{"step", st.step}, {"tokens_seen", st.tokens_seen}, {"val_loss", st.val_loss}};
    for (const auto& p : model.table().params())
        w.add(p.name, "f32", p.shape, model.params() + p.offset);
    if (adam_m && adam_v) {
        w.add("optim.adam_m", "f32", {model.n_params()}, adam_m);
        w.add("optim.adam_v", "f32", {model.n_params()}, adam_v);
    }
    w.write(checkpoint_file(dir));
    write_file_atomic((fs::path(dir) / "config.json").string(), config_to_json(config).dump(2) + "\n");
}

Checkpoint load_checkpoint(const std::string& dir) {
    const std::string path = checkpoint_file(dir);
    std::error_code ec;  // (the non-throwing forms: a name too long is an error line, not an abort)
    if (!fs::exists(dir, ec))
        fail("checkpoint directory '", dir, "' does not exist", ec ? ": " + ec.message() : "");
    if (!fs::exists(path, ec)) fail("checkpoint '", dir, "' has no checkpoint.bin (expected '", path, "')");
    TensorFile tf = TensorFile::read(path);
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
    } catch (const nlohmann::json::exception& e) {
        fail("'", path, "' has incomplete metadata: ", e.what());
    }
    if (ck.config.model.vocab_size < ck.tokenizer.vocab_size())
        fail("'", path, "': vocab_size ", ck.config.model.vocab_size, " is smaller than the tokenizer's ",
             ck.tokenizer.vocab_size());
    ck.model = std::make_unique<Model>(ck.config.model);
    Model& m = *ck.model;
    for (const auto& p : m.table().params()) {
        const TensorRecord* t = tf.find(p.name);
        if (!t) fail("'", path, "' has no tensor '", p.name, "' that its config requires");
        if (t->dtype != "f32" || t->shape != p.shape) {
            std::string got, want;
            for (auto x : t->shape) got += std::to_string(x) + ",";
            for (auto x : p.shape) want += std::to_string(x) + ",";
            fail("'", path, "': tensor '", p.name, "' is ", t->dtype, " [", got, "] but the config needs f32 [", want, "]");
        }
        std::memcpy(m.params() + p.offset, t->f32(), p.numel * sizeof(float));
    }
    const TensorRecord* am = tf.find("optim.adam_m");
    const TensorRecord* av = tf.find("optim.adam_v");
    if (am && av) {
        if (am->numel() != m.n_params() || av->numel() != m.n_params())
            fail("'", path, "': optimizer state has ", am->numel(), " values, the model has ", m.n_params());
        ck.adam_m.assign(am->f32(), am->f32() + am->numel());
        ck.adam_v.assign(av->f32(), av->f32() + av->numel());
    }
    return ck;
}

}  // namespace moe
