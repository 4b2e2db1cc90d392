#include "io/checkpoint.h"
#include "io/json_int.h"

#include "kernels/bf16.h"
#include "kernels/qmatmul.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

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

// the files of sharded sets in dir (replicated.*.bin, experts-*.bin) not named in `keep`
static void remove_shard_files(const std::string& dir, const std::vector<std::string>& keep) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string n = e.path().filename().string();
        const bool shard = (n.rfind("replicated.", 0) == 0 || n.rfind("experts-", 0) == 0) && n.size() > 4 &&
                           n.compare(n.size() - 4, 4, ".bin") == 0;
        if (shard && std::find(keep.begin(), keep.end(), n) == keep.end()) fs::remove(e.path(), ec);
    }
}

static void write_checkpoint(const std::string& dir, const TensorFileWriter& w, const Config& config) {
    w.write(checkpoint_file(dir));
    write_file_atomic((fs::path(dir) / "config.json").string(), config_to_json(config).dump(2) + "\n");
    // a sharded set saved here before is superseded: readers prefer a manifest, so it goes
    std::error_code ec;
    if (fs::exists(manifest_file(dir), ec)) {
        fs::remove(manifest_file(dir), ec);
        remove_shard_files(dir, {});
    }
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

// config, tokenizer and state from a checkpoint's (or a sharded set's replicated file's) metadata
static void read_checkpoint_meta(const TensorFile& tf, const std::string& path, const char* format, Checkpoint& ck) {
    try {
        if (tf.meta.value("format", "") != format)
            fail("'", path, "' is a moe tensor file but not a ", std::string(format) == "moe-checkpoint" ? std::string("checkpoint") : std::string(format) + " file");
        ck.config = config_from_json(tf.meta.at("config"), path + " (config)");
        ck.tokenizer = Tokenizer::from_json(tf.meta.at("tokenizer"), path + " (tokenizer)");
        const auto& s = tf.meta.at("state");
        ck.state.step = json_int(s.at("step"), "'" + path + "': state.step", 0);
        ck.state.tokens_seen = json_int(s.at("tokens_seen"), "'" + path + "': state.tokens_seen", 0);
        ck.state.val_loss = s.at("val_loss").get<double>();
        ck.weight_type = tf.meta.value("weight_type", std::string("fp32"));
        // what save_checkpoint / save_checkpoint_quantized write (the ggml block types live in GGUF
        // files, not here: a damaged header naming one would be read with the wrong layout)
        if (ck.weight_type != "fp32" && ck.weight_type != "bf16" && ck.weight_type != "int8")
            fail("'", path, "': meta weight_type '", ck.weight_type, "' is not one a moe checkpoint stores (fp32, bf16, int8)");
    } catch (const nlohmann::json::exception& e) {
        fail("'", path, "' has incomplete metadata: ", e.what());
    }
    if (ck.config.model.vocab_size < 1)  // (a training config may leave it to the tokenizer; a saved model may not)
        fail("'", path, "': its config has vocab_size ", ck.config.model.vocab_size, " (a saved model has at least one token)");
    if (ck.config.model.vocab_size < ck.tokenizer.vocab_size())
        fail("'", path, "': vocab_size ", ck.config.model.vocab_size, " is smaller than the tokenizer's ",
             ck.tokenizer.vocab_size());
}

// A sharded set (fp32), gathered (or experts `range` of it), in the weight type asked for
static Checkpoint load_sharded(const std::string& dir, const std::string& weight_type, bool verify,
                               ExpertRange range) {
    Checkpoint ck = load_checkpoint_experts(dir, range, verify);
    if (!range.all()) {  // (an inference rank's; a training rank resumes with load_checkpoint_experts)
        std::vector<float>().swap(ck.adam_m);
        std::vector<float>().swap(ck.adam_v);
    }
    const kernels::WType want = weight_type.empty() ? kernels::WType::f32 : kernels::parse_wtype(weight_type, "--dtype");
    if (want == kernels::WType::f32) return ck;
    auto typed = std::make_unique<Model>(ck.config.model, want, range);
    for (const auto& p : typed->table().params()) {
        const float* src = ck.model->params() + p.offset;  // the same table: both hold the same experts
        if (float* d = typed->param_f32(p)) {
            std::memcpy(d, src, p.numel * sizeof(float));
        } else {
            kernels::QStore& st = typed->param_store(p);
            st.set_rows(0, p.numel / p.shape.back(), src);
        }
    }
    ck.model = std::move(typed);
    std::vector<float>().swap(ck.adam_m);
    std::vector<float>().swap(ck.adam_v);
    return ck;
}

Checkpoint load_checkpoint(const std::string& dir, const std::string& weight_type, bool verify, ExpertRange experts) {
    const std::string path = checkpoint_file(dir);
    std::error_code ec;  // (the non-throwing forms: a name too long is an error line, not an abort)
    if (!fs::exists(dir, ec))
        fail("checkpoint directory '", dir, "' does not exist", ec ? ": " + ec.message() : "");
    if (is_sharded_checkpoint(dir)) return load_sharded(dir, weight_type, verify, experts);
    if (!fs::exists(path, ec))
        fail("checkpoint '", dir, "' has no checkpoint.bin (expected '", path, "') and no manifest.json");
    auto file = std::make_shared<TensorFile>(TensorFile::read(path, verify));
    const TensorFile& tf = *file;
    Checkpoint ck;
    read_checkpoint_meta(tf, path, "moe-checkpoint", ck);
    const kernels::WType stored = kernels::parse_wtype(ck.weight_type, "checkpoint weight_type");
    const kernels::WType want = weight_type.empty() ? stored : kernels::parse_wtype(weight_type, "--dtype");
    const ParamTable full(ck.config.model);  // the file's tensors: every expert
    // Every tensor the config requires, in its type and shape, before the model is allocated: the
    // file's tensors lie inside the file, so a config whose sizes the file does not hold (a
    // corrupted or hand-edited header) is an error line here, not an allocation of what it claims.
    std::vector<kernels::QMatrix> stored_views;  // (full.params() order) each matrix as stored
    stored_views.reserve(full.params().size());
    for (const ParamInfo& fp : full.params()) {
        const TensorView* t = tf.find(fp.name);
        if (!t) fail("'", path, "' has no tensor '", fp.name, "' that its config requires");
        const bool typed_in_file = stored != kernels::WType::f32 && typed_at_inference(fp);
        const DType dt = typed_in_file ? (stored == kernels::WType::bf16 ? DType::bf16 : DType::i8) : DType::f32;
        if (t->dtype != dt || t->shape != fp.shape)
            fail("'", path, "': tensor '", fp.name, "' is ", dtype_name(t->dtype), " ", t->shape_str(),
                 " but the config needs ", dtype_name(dt), " ", TensorView{fp.name, dt, fp.shape}.shape_str());
        kernels::QMatrix v;
        v.type = typed_in_file ? stored : kernels::WType::f32;
        v.in = fp.shape.back(), v.out = fp.numel / v.in;
        if (v.type == kernels::WType::f32) v.f32 = t->f32();
        if (v.type == kernels::WType::bf16) v.bf16 = t->u16();
        if (v.type == kernels::WType::q8) {
            const TensorView* sc = tf.find(fp.name + ".scales");
            if (!sc || sc->dtype != DType::f32 || sc->shape != std::vector<int64_t>{v.out, v.blocks()})
                fail("'", path, "': tensor '", fp.name, ".scales' is missing or not f32 [", v.out, ",", v.blocks(), "]");
            v.q = t->i8();
            v.scales = sc->f32();
        }
        stored_views.push_back(v);
    }
    ck.model = std::make_unique<Model>(ck.config.model, want, experts);
    Model& m = *ck.model;
    std::vector<float> row;  // one row in fp32 while converting between typed formats
    for (size_t i = 0; i < m.table().params().size(); ++i) {
        const ParamInfo& p = m.table().params()[i];  // (a range of experts: its rows of fp)
        MOE_ASSERT(full.params()[i].name == p.name);
        kernels::QMatrix v = stored_views[i];  // the matrix as stored
        const auto [r0, nr] = m.source_rows(p);  // a range of experts' rows, else every row
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
    if (am && av && !m.typed() && !m.experts_sharded()) {  // (a range's: load_checkpoint_experts)
        if (am->dtype != DType::f32 || av->dtype != DType::f32)
            fail("'", path, "': optimizer state is ", dtype_name(am->dtype), " / ", dtype_name(av->dtype),
                 ", not f32");
        if (am->numel() != m.n_params() || av->numel() != m.n_params())
            fail("'", path, "': optimizer state has ", am->numel(), " values, the model has ", m.n_params());
        ck.adam_m.assign(am->f32(), am->f32() + am->numel());
        ck.adam_v.assign(av->f32(), av->f32() + av->numel());
    }
    return ck;
}

// ---------------------------------------------------------------- sharded sets

std::string manifest_file(const std::string& dir) { return (fs::path(dir) / "manifest.json").string(); }

bool is_sharded_checkpoint(const std::string& dir) {
    std::error_code ec;
    return fs::exists(manifest_file(dir), ec);
}

// size and the CRC-32 in a tensor file's trailer (u64 size, u32 crc, u32 magic)
static void file_trailer(const std::string& path, uint64_t& bytes, uint32_t& crc) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) fail("cannot read '", path, "': ", std::strerror(errno));
    const int64_t size = (int64_t)f.tellg();
    if (size < 16) fail("'", path, "' is truncated (", size, " bytes)");
    char t[16];
    f.seekg(size - 16);
    f.read(t, 16);
    if (!f) fail("cannot read '", path, "'");
    bytes = (uint64_t)size;
    std::memcpy(&crc, t + 8, 4);
}

static int64_t n_experts_in(const Model& m) {
    return m.experts_sharded() ? m.expert_range().count : m.config().n_expert;
}

ShardRecord write_checkpoint_shard(const std::string& dir, const std::string& tag, bool replicated,
                                   const Config& config, const Tokenizer& tok, Model& model, const float* adam_m,
                                   const float* adam_v, const TrainState& st) {
    ShardRecord r;
    r.kind = replicated ? "replicated" : "experts";
    r.first = replicated ? 0 : (model.experts_sharded() ? model.expert_range().first : 0);
    r.count = replicated ? 0 : n_experts_in(model);
    r.file = replicated ? "replicated." + tag + ".bin"
                        : str("experts-", r.first, "-", r.first + r.count, ".", tag, ".bin");
    TensorFileWriter w = replicated ? checkpoint_writer(config, tok, st) : TensorFileWriter{};
    w.meta["format"] = replicated ? "moe-checkpoint-replicated" : "moe-checkpoint-experts";
    w.meta["version"] = 1;
    w.meta["tag"] = tag;
    if (!replicated) w.meta["experts"] = {r.first, r.count};
    for (const auto& p : model.table().params()) {
        if (p.expert == replicated) continue;
        w.add(p.name, "f32", p.shape, model.params() + p.offset);
        if (adam_m && adam_v) {
            w.add("optim.adam_m/" + p.name, "f32", p.shape, adam_m + p.offset);
            w.add("optim.adam_v/" + p.name, "f32", p.shape, adam_v + p.offset);
        }
    }
    const std::string path = (fs::path(dir) / r.file).string();
    w.write(path);
    file_trailer(path, r.bytes, r.crc32);
    return r;
}

void commit_sharded_checkpoint(const std::string& dir, const Config& config, const std::vector<ShardRecord>& files,
                               int world, int P, const TrainState& st) {
    const int64_t E = config.model.n_expert;
    std::vector<ShardRecord> ex;
    int reps = 0;
    for (const auto& f : files) (f.kind == "replicated" ? (void)++reps : ex.push_back(f));
    std::sort(ex.begin(), ex.end(), [](const ShardRecord& a, const ShardRecord& b) { return a.first < b.first; });
    int64_t at = 0;
    for (const auto& f : ex) {
        MOE_ASSERT(f.first == at && f.count >= 1);
        at += f.count;
    }
    MOE_ASSERT(reps == 1 && at == E);
    nlohmann::json m;
    m["format"] = "moe-sharded-checkpoint";
    m["version"] = 1;
    m["world_size"] = world;
    m["expert_parallel"] = P;
    m["n_expert"] = E;
    m["step"] = st.step;
    m["tokens_seen"] = st.tokens_seen;
    nlohmann::json arr = nlohmann::json::array();
    std::vector<std::string> keep;
    for (const auto& f : files) {
        nlohmann::json j = {{"file", f.file}, {"kind", f.kind}, {"bytes", f.bytes}, {"crc32", f.crc32}};
        if (f.kind == "experts") j["experts"] = {f.first, f.count};
        arr.push_back(j);
        keep.push_back(f.file);
    }
    m["files"] = arr;
    write_file_atomic((fs::path(dir) / "config.json").string(), config_to_json(config).dump(2) + "\n");
    write_file_atomic(manifest_file(dir), m.dump(2) + "\n");  // the commit point
    std::error_code ec;
    fs::remove(checkpoint_file(dir), ec);  // a single-file checkpoint saved here before
    remove_shard_files(dir, keep);
}

namespace {

// Where a checkpoint's tensors are, for copying any expert range out of it
struct CheckpointSource {
    std::string dir;
    bool sharded = false;
    std::shared_ptr<TensorFile> whole;  // checkpoint.bin, or the sharded set's replicated file
    struct Part {
        int64_t first, count;
        std::shared_ptr<TensorFile> file;
    };
    std::vector<Part> experts;  // sharded: by first expert
    bool moments = false;

    const TensorView& tensor(const TensorFile& f, const std::string& name, const std::vector<int64_t>& shape) const {
        const TensorView* t = f.find(name);
        if (!t) fail("'", f.path, "' has no tensor '", name, "' that its config requires");
        if (t->dtype != DType::f32 || t->shape != shape)
            fail("'", f.path, "': tensor '", name, "' is ", dtype_name(t->dtype), " ", t->shape_str(), " but needs f32 ",
                 TensorView{name, DType::f32, shape}.shape_str());
        return *t;
    }
    // The tensors copy(fp, what, ...) reads, checked (copy with no destination), for every parameter
    // before the model is allocated, so that a config claiming more than the files hold is an error
    // line, not an allocation of what it claims.
    void check(const ParamInfo& fp, int what) const { copy(fp, what, 0, fp.expert ? fp.shape[0] : 1, nullptr); }
    // what = 0: the parameter, 1: adam m, 2: adam v. Copies experts [e0, e0 + ne) of stack fp (the whole
    // tensor when fp is not an expert stack) into dst; with dst null, only checks the source tensors.
    void copy(const ParamInfo& fp, int what, int64_t e0, int64_t ne, float* dst) const {
        const int64_t E = fp.expert ? fp.shape[0] : 1, per = fp.numel / E;
        if (!fp.expert) e0 = 0, ne = 1;
        if (!sharded) {
            const float* src;
            if (what == 0) {
                src = tensor(*whole, fp.name, fp.shape).f32();
            } else {
                const TensorView* t = whole->find(what == 1 ? "optim.adam_m" : "optim.adam_v");
                src = t->f32() + fp.offset;  // (size checked in open)
            }
            if (dst) std::memcpy(dst, src + e0 * per, ne * per * sizeof(float));
            return;
        }
        const std::string name = what == 0 ? fp.name : (what == 1 ? "optim.adam_m/" : "optim.adam_v/") + fp.name;
        if (!fp.expert) {
            const float* src = tensor(*whole, name, fp.shape).f32();
            if (dst) std::memcpy(dst, src, fp.numel * sizeof(float));
            return;
        }
        for (const Part& p : experts) {
            const int64_t lo = std::max(e0, p.first), hi = std::min(e0 + ne, p.first + p.count);
            if (lo >= hi) continue;
            std::vector<int64_t> shape = fp.shape;
            shape[0] = p.count;
            const float* src = tensor(*p.file, name, shape).f32();
            if (dst) std::memcpy(dst + (lo - e0) * per, src + (lo - p.first) * per, (hi - lo) * per * sizeof(float));
        }
    }
};

}  // namespace

Checkpoint load_checkpoint_experts(const std::string& dir, ExpertRange range, bool verify) {
    std::error_code ec;
    if (!fs::exists(dir, ec)) fail("checkpoint directory '", dir, "' does not exist", ec ? ": " + ec.message() : "");
    CheckpointSource src;
    src.dir = dir;
    src.sharded = is_sharded_checkpoint(dir);
    Checkpoint ck;
    if (!src.sharded) {
        if (range.all()) return load_checkpoint(dir, "fp32", verify);
        const std::string path = checkpoint_file(dir);
        if (!fs::exists(path, ec))
            fail("checkpoint '", dir, "' has no checkpoint.bin (expected '", path, "') and no manifest.json");
        src.whole = std::make_shared<TensorFile>(TensorFile::read(path, verify));
        read_checkpoint_meta(*src.whole, path, "moe-checkpoint", ck);
        if (ck.weight_type != "fp32")
            fail("checkpoint '", dir, "' stores ", ck.weight_type, " weights: training needs an fp32 checkpoint");
        const TensorView* am = src.whole->find("optim.adam_m");
        const TensorView* av = src.whole->find("optim.adam_v");
        const int64_t n = ParamTable(ck.config.model).total();
        if (am && av && (am->numel() != n || av->numel() != n || am->dtype != DType::f32 || av->dtype != DType::f32))
            fail("'", path, "': optimizer state has ", am->numel(), " values, the model has ", n);
        src.moments = am && av;
    } else {
        const std::string mpath = manifest_file(dir);
        nlohmann::json m;
        try {
            std::ifstream f(mpath);
            m = nlohmann::json::parse(f);
            if (m.value("format", "") != "moe-sharded-checkpoint" || m.value("version", 0) != 1)
                fail("'", mpath, "' is not a moe sharded-checkpoint manifest (version 1)");
            for (const auto& j : m.at("files")) {
                const std::string file = j.at("file").get<std::string>();
                if (file.find('/') != std::string::npos || file.empty() || file[0] == '.')
                    fail("'", mpath, "' names file '", file, "' outside its directory");
                const std::string path = (fs::path(dir) / file).string();
                if (!fs::exists(path, ec))
                    fail("sharded checkpoint '", dir, "': its manifest names '", file, "', which is missing");
                uint64_t bytes = 0;
                uint32_t crc = 0;
                file_trailer(path, bytes, crc);
                const uint64_t m_bytes = (uint64_t)json_int(j.at("bytes"), "'" + mpath + "': bytes", 0);
                const uint32_t m_crc = (uint32_t)json_int(j.at("crc32"), "'" + mpath + "': crc32", 0, UINT32_MAX);
                if (bytes != m_bytes || crc != m_crc)
                    fail("sharded checkpoint '", dir, "': '", file, "' is ", bytes, " bytes with CRC-32 ", crc,
                         ", the manifest says ", m_bytes, " bytes with ", m_crc, " (a file of another save?)");
                auto tf = std::make_shared<TensorFile>(TensorFile::read(path, verify));
                const std::string kind = j.at("kind").get<std::string>();
                if (kind == "replicated") {
                    if (src.whole) fail("'", mpath, "' names two replicated files");
                    src.whole = tf;
                } else if (kind == "experts") {
                    const int64_t first = json_int(j.at("experts").at(0), "'" + mpath + "': experts[0]", 0),
                                  count = json_int(j.at("experts").at(1), "'" + mpath + "': experts[1]", 1);
                    src.experts.push_back({first, count, tf});
                } else {
                    fail("'", mpath, "': file '", file, "' has unknown kind '", kind, "'");
                }
            }
        } catch (const nlohmann::json::exception& e) {
            fail("'", mpath, "' is not a valid manifest: ", e.what());
        }
        if (!src.whole) fail("'", mpath, "' names no replicated file");
        read_checkpoint_meta(*src.whole, src.whole->path, "moe-checkpoint-replicated", ck);
        std::sort(src.experts.begin(), src.experts.end(),
                  [](const CheckpointSource::Part& a, const CheckpointSource::Part& b) { return a.first < b.first; });
        int64_t at = 0;
        for (const auto& p : src.experts) {
            if (p.first != at || p.count < 1)
                fail("'", mpath, "': the expert files do not cover experts [0, ", ck.config.model.n_expert,
                     ") once (a gap or overlap at expert ", at, ")");
            at += p.count;
        }
        if (ck.config.model.any_moe() && at != ck.config.model.n_expert)
            fail("'", mpath, "': the expert files cover ", at, " experts, the model has ", ck.config.model.n_expert);
        src.moments = src.whole->find("optim.adam_m/tok_embd") != nullptr;
    }
    const ModelConfig& mc = ck.config.model;
    if (!range.all() && (!mc.any_moe() || range.first < 0 || range.count < 1 || range.first + range.count > mc.n_expert))
        fail("checkpoint '", dir, "': expert range [", range.first, ", ", range.first + range.count,
             ") is not inside its ", mc.n_expert, " experts");
    const ParamTable full(mc);
    for (const ParamInfo& fp : full.params())
        for (int what = 0; what < (src.moments ? 3 : 1); ++what) src.check(fp, what);
    ck.model = range.all() ? std::make_unique<Model>(mc) : std::make_unique<Model>(mc, range);
    Model& model = *ck.model;
    if (src.moments) {
        ck.adam_m.assign((size_t)model.n_params(), 0.f);
        ck.adam_v.assign((size_t)model.n_params(), 0.f);
    }
    const int64_t e0 = range.all() ? 0 : range.first;
    for (const auto& p : model.table().params()) {
        const ParamInfo* fp = full.find(p.name);
        MOE_ASSERT(fp);
        const int64_t ne = p.expert ? p.shape[0] : 1;
        src.copy(*fp, 0, e0, ne, model.params() + p.offset);
        if (src.moments) {
            src.copy(*fp, 1, e0, ne, ck.adam_m.data() + p.offset);
            src.copy(*fp, 2, e0, ne, ck.adam_v.data() + p.offset);
        }
    }
    return ck;
}

Config checkpoint_config(const std::string& dir) {
    std::string path = checkpoint_file(dir);
    if (is_sharded_checkpoint(dir)) {
        const std::string mpath = manifest_file(dir);
        try {
            std::ifstream f(mpath);
            const nlohmann::json m = nlohmann::json::parse(f);
            for (const auto& j : m.at("files"))
                if (j.at("kind") == "replicated") path = (fs::path(dir) / j.at("file").get<std::string>()).string();
        } catch (const nlohmann::json::exception& e) {
            fail("'", mpath, "' is not a valid manifest: ", e.what());
        }
    }
    std::error_code ec;
    if (!fs::exists(path, ec)) fail("checkpoint '", dir, "' has no checkpoint.bin (expected '", path, "') and no manifest.json");
    const TensorFile tf = TensorFile::read(path, false);
    try {
        return config_from_json(tf.meta.at("config"), path + " (config)");
    } catch (const nlohmann::json::exception& e) {
        fail("'", path, "' has incomplete metadata: ", e.what());
    }
}

}  // namespace moe
