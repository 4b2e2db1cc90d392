// The engine part of moe's public API (include/moe/moe.h): a facade over the internals. The option
// structs are shared with the internals (defined once, in the public header), so the calls below
// pass them straight through.
#include <moe/moe.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <cstring>

#include <nlohmann/json.hpp>

#include "api/loaded_model.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "dist/comm.h"
#include "infer/bench.h"
#include "infer/generate.h"
#include "infer/stop_strings.h"
#include "io/checkpoint.h"
#include "io/hf_export.h"
#include "io/gguf.h"
#include "io/gguf_model.h"
#include "io/hf_model.h"
#include "io/hf_tokenizer.h"
#include "io/tensor_file.h"
#include "kernels/cpu.h"
#include "kernels/gemm.h"
#include "kernels/qmatmul.h"
#include "kernels/sgemm.h"
#include "model/config.h"
#include "model/params.h"
#include "train/data.h"
#include "train/dp_sync.h"
#include "train/expert_parallel.h"
#include "train/trainer.h"

namespace moe {

using ojson = nlohmann::ordered_json;  // keys in the order written

// ------------------------------------------------------------------ environment

// MOE_FUSED_EXPERT_ADAMW=0: train() runs without the fused expert AdamW whatever TrainOptions say
static bool g_env_fused_adamw = true;

void apply_environment() {
    // The only place the MOE_* switches are read: the kernels and the trainer take explicit
    // settings, and a bad value fails here, at start-up, before any work.
    auto env = [](const char* name) {
        const char* v = std::getenv(name);
        return std::string(v ? v : "");
    };
    if (const std::string v = env("MOE_ISA"); !v.empty()) kernels::set_isa_cap(kernels::parse_isa(v, "MOE_ISA"));
    if (const std::string v = env("MOE_GEMM"); !v.empty())
        kernels::set_gemm_backend(kernels::parse_gemm_backend(v, "MOE_GEMM"));
    if (const std::string v = env("MOE_SGEMM"); !v.empty())
        kernels::set_sgemm_kernel(kernels::parse_sgemm_kernel(v, "MOE_SGEMM"));
    const std::string prof = env("MOE_PROFILE");
    set_profiling(!prof.empty() && prof != "0");
    const std::string fuse = env("MOE_FUSED_EXPERT_ADAMW");
    if (!fuse.empty() && fuse != "0" && fuse != "1")
        fail("MOE_FUSED_EXPERT_ADAMW must be \"0\" or \"1\", got \"", fuse, "\"");
    g_env_fused_adamw = fuse != "0";
    const std::string repack = env("MOE_REPACK");
    if (!repack.empty() && repack != "0" && repack != "1") fail("MOE_REPACK must be \"0\" or \"1\", got \"", repack, "\"");
    kernels::set_repack(repack != "0");
}

void set_threads(int t) {
    if (t < 0 || t > 4096) fail("--threads must be in [0, 4096] (0 = all cores), got ", t);
    set_num_threads(t);
}

int threads() { return num_threads(); }

int world_rank() { return dist::launcher_rank(); }
int world_size() { return dist::launcher_size(); }

void print_profile(std::FILE* out) { profile_report(out); }

// ------------------------------------------------------------------ expert-parallel inference

static void resolve_vocab(Config& cfg);  // (bench, below)

static int g_expert_parallel = 1;

void set_expert_parallel(int P) {
    if (P < 1) fail("--expert-parallel must be >= 1, got ", P);
    const int W = dist::launcher_size();
    if (P > 1 && W == 1)
        fail("--expert-parallel ", P, " needs ", P, " processes, one per share of the experts: start it with mpirun -np ",
             P);
    if (P != W)
        fail("--expert-parallel ", P, " must equal the number of ranks (", W,
             ") for inference: every rank holds one share of the experts");
    g_expert_parallel = P;
    if (P > 1) dist::world();  // starts MPI (a build without it fails here, on every rank)
}

int expert_parallel() { return g_expert_parallel; }

bool expert_parallel_follower() { return g_expert_parallel > 1 && dist::world().rank() != 0; }

// the experts this rank's model holds (all of them without expert parallelism)
static ExpertRange my_experts(const ModelConfig& m) {
    if (g_expert_parallel == 1) return {};
    return expert_range_of(m, g_expert_parallel, dist::world().rank());
}

// the same for the model at `path` (its config read from its metadata first)
static ExpertRange my_experts(const std::string& path, int64_t n_ctx) {
    if (g_expert_parallel == 1) return {};
    return my_experts(load_model_config(path, n_ctx).model);
}

// rank 0 of an expert-parallel run: the runner that sends the routed rows to the other ranks
static std::unique_ptr<EpLeader> attach_leader(Model& m) {
    if (g_expert_parallel == 1) return nullptr;
    MOE_ASSERT(dist::world().rank() == 0);  // the other ranks follow (follow_expert_parallel)
    return std::make_unique<EpLeader>(dist::world(), m);
}

// random weights of a config, made straight in type t (no fp32 copy of a typed matrix), holding this
// rank's experts: what LoadedModel::random, bench and the expert-parallel followers all build, so
// that every rank of a run draws the same model
static std::unique_ptr<Model> random_model(const ModelConfig& mc, kernels::WType t, uint64_t seed) {
    auto m = std::make_unique<Model>(mc, t, my_experts(mc));
    m->init(seed);
    return m;
}

static Config random_config(const std::string& config, int64_t n_ctx) {
    Config c = load_config(config);
    if (n_ctx > 0) c.model.n_ctx = n_ctx;
    return c;
}

// Q8_0 / Q4_0 / Q4_K / int8 weights repacked for this host's kernels (Model::repack_for_inference:
// AVX-512 VNNI hosts without AMX, and AVX2-only hosts, unless MOE_REPACK=0); the bytes,
// and the seconds it took
static double repack_weights(Model& m, double* seconds = nullptr) {
    const double t0 = now_seconds();
    const double bytes = m.repack_for_inference();
    if (seconds) *seconds = now_seconds() - t0;
    return bytes;
}

void follow_expert_parallel(const std::string& model_path, const std::string& config, uint64_t seed,
                            const std::string& dtype, int64_t n_ctx) {
    MOE_ASSERT(expert_parallel_follower());
    std::unique_ptr<Model> m;
    Checkpoint ck;
    if (!config.empty()) {  // as LoadedModel::random and bench's random model
        Config c = random_config(config, n_ctx);
        resolve_vocab(c);
        m = random_model(c.model, kernels::parse_wtype(dtype.empty() ? "fp32" : dtype, "--dtype"), seed);
    } else {
        ck = load_model(model_path, dtype, n_ctx, my_experts(model_path, n_ctx));
    }
    // rank 0 ends the job: mpirun hands SIGTERM / SIGINT to every rank, and this one waits for
    // rank 0's stop (a server finishing its requests) instead of dying under it
    std::signal(SIGTERM, SIG_IGN);
    std::signal(SIGINT, SIG_IGN);
    repack_weights(m ? *m : *ck.model);
    ep_follow(dist::world(), m ? *m : *ck.model);
}

// ------------------------------------------------------------------ models

LoadedModel::LoadedModel(const std::string& path, const std::string& dtype, const char* what, int64_t n_ctx)
    : impl_(std::make_unique<Impl>()) {
    if (!dtype.empty()) kernels::parse_wtype(dtype, what);  // a bad value fails before the load
    impl_->dir = path;
    impl_->ck = load_model(path, dtype, n_ctx, my_experts(path, n_ctx));
    impl_->repacked_bytes = repack_weights(*impl_->ck.model, &impl_->repack_seconds);
    impl_->dtype = kernels::wtype_name(impl_->ck.model->weight_type());
    impl_->ep = attach_leader(*impl_->ck.model);
}
LoadedModel::LoadedModel() = default;
LoadedModel LoadedModel::random(const std::string& config, const std::string& dtype, uint64_t seed, int64_t n_ctx) {
    const kernels::WType t = kernels::parse_wtype(dtype.empty() ? "fp32" : dtype, "--dtype");
    if (n_ctx < 0) fail("--ctx-size must be >= 0, got ", n_ctx);
    Checkpoint ck;
    ck.config = random_config(config, n_ctx);
    ck.tokenizer = Tokenizer::byte_level();
    if (ck.config.model.vocab_size < ck.tokenizer.vocab_size())
        fail(config, ": vocab_size ", ck.config.model.vocab_size, " is smaller than the byte-level tokenizer's ",
             ck.tokenizer.vocab_size());
    ck.model = random_model(ck.config.model, t, seed);
    double seconds = 0;
    const double bytes = repack_weights(*ck.model, &seconds);
    ck.weight_type = kernels::wtype_name(t);
    LoadedModel m;
    m.impl_ = std::make_unique<Impl>();
    m.impl_->repacked_bytes = bytes, m.impl_->repack_seconds = seconds;
    m.impl_->dir = config;
    m.impl_->dtype = ck.weight_type;
    m.impl_->ck = std::move(ck);
    m.impl_->ep = attach_leader(*m.impl_->ck.model);
    return m;
}
LoadedModel::~LoadedModel() = default;
LoadedModel::LoadedModel(LoadedModel&&) noexcept = default;
LoadedModel& LoadedModel::operator=(LoadedModel&&) noexcept = default;

const std::string& LoadedModel::dir() const { return impl_->dir; }
const std::string& LoadedModel::stored_weight_type() const { return impl_->ck.weight_type; }
std::string LoadedModel::repack_note() const {
    if (impl_->repacked_bytes <= 0) return "";
    char b[160];
    std::snprintf(b, sizeof b, "weights repacked into this CPU's tiles: %.1f MB in %.2f s (MOE_REPACK=0 keeps them as stored)",
                  impl_->repacked_bytes / 1e6, impl_->repack_seconds);
    return b;
}
int64_t LoadedModel::context_length() const { return impl_->ck.config.model.n_ctx; }

// "f32" | "f16" | "bf16" (and the spellings fp32, fp16) as the KV cache's element type
static DType parse_cache_type(const std::string& s, const char* what) {
    if (s == "f32" || s == "fp32") return DType::f32;
    if (s == "f16" || s == "fp16") return DType::f16;
    if (s == "bf16") return DType::bf16;
    fail(what, " must be f32, f16 or bf16, got '", s, "'");
}

void LoadedModel::set_cache_type(const std::string& type, const char* what) {
    impl_->ck.model->set_cache_type(parse_cache_type(type, what));
}

void LoadedModel::check_cache_type(const std::string& type, const char* what) { parse_cache_type(type, what); }

std::string LoadedModel::cache_type() const { return dtype_name(impl_->ck.model->cache_type()); }

void LoadedModel::set_experts_per_token(int64_t K) {
    if (K == 0) return;
    // model and config change together
    impl_->ck.model->set_experts_per_token(K);
    impl_->ck.config.model.n_expert_used = K;
}

const std::string& LoadedModel::weight_type() const { return impl_->dtype; }

std::vector<int32_t> LoadedModel::tokenize(const std::string& text, bool add_special) const {
    if (impl_->ck.tokenizer_missing) fail("'", impl_->dir, "' has no tokenizer.json: text needs one (ids work without)");
    return impl_->ck.tokenizer.encode(text, "text", add_special);
}

int64_t LoadedModel::vocab_size() const { return impl_->ck.config.model.vocab_size; }

std::vector<float> LoadedModel::logits(const std::vector<int32_t>& ids) {
    Model& m = *impl_->ck.model;
    const int64_t N = (int64_t)ids.size(), V = m.config().vocab_size;
    if (N == 0) fail("logits: give at least one token id");
    if (N > m.config().n_ctx) fail("logits: ", N, " tokens exceed the model's context (n_ctx = ", m.config().n_ctx, ")");
    auto cache = m.make_cache(1);
    std::vector<int32_t> seq(N, 0), pos(N);
    for (int64_t i = 0; i < N; ++i) pos[i] = (int32_t)i;
    m.forward_cached(ids.data(), seq.data(), pos.data(), N, cache);  // checks the ids
    return std::vector<float>(m.logits(), m.logits() + N * V);
}

std::vector<int32_t> LoadedModel::encode_prompt(const std::string& text) const {
    if (impl_->ck.tokenizer_missing) fail("'", impl_->dir, "' has no tokenizer.json: a text prompt needs one");
    std::vector<int32_t> ids = impl_->ck.tokenizer.encode(text, "prompt");
    const int64_t n_ctx = context_length();
    if ((int64_t)ids.size() > n_ctx)
        fail("prompt has ", ids.size(), " tokens but the model's context is ", n_ctx, " tokens");
    return ids;
}

std::vector<int32_t> tokenize(const std::string& path, const std::string& text, bool add_special) {
    namespace fs = std::filesystem;
    if (detect_model_format(path) == ModelFormat::hugging_face) {  // the tokenizer files only
        const fs::path d(path);
        std::error_code ec;
        if (!fs::exists(d / "tokenizer.json", ec)) fail("'", path, "' has no tokenizer.json");
        auto opt = [&](const char* f) { return fs::exists(d / f, ec) ? (d / f).string() : std::string(); };
        const Tokenizer tok = Tokenizer::from_hf_files((d / "tokenizer.json").string(), opt("tokenizer_config.json"),
                                                       opt("generation_config.json"));
        return tok.encode(text, "--text", add_special);
    }
    if (detect_model_format(path) == ModelFormat::gguf) {  // the tokenizer keys only
        const auto src = GgufSource::open(path);
        auto hf = gguf_tokenizer(src->header());
        if (!hf) fail("'", path, "' has no tokenizer (no tokenizer.ggml.model)");
        return Tokenizer::from_hf(hf).encode(text, "--text", add_special);
    }
    return LoadedModel(path).tokenize(text, add_special);
}

void write_file(const std::string& path, std::string_view data) { write_file_atomic(path, std::string(data)); }

std::string read_text(const std::string& path, const char* what) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) fail(what, " '", path, "' is a directory, not a file");
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(what, " '", path, "' cannot be read: ", std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) fail(what, " '", path, "' cannot be read");
    return ss.str();
}

// ------------------------------------------------------------------ generation

GenerateResult generate_text(LoadedModel& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                             const std::vector<std::string>& stop,
                             const std::function<void(std::string_view)>& on_text, const std::atomic<bool>* cancel) {
    Checkpoint& ck = model.impl().ck;
    StopStrings cut(stop);
    GenerateResult r;
    auto release = [&](const std::string& s) {
        if (s.empty()) return;
        r.text += s;
        if (on_text) on_text(s);
    };
    // a Hugging Face tokenizer streams through its decoder (a character split over tokens comes out
    // whole, SentencePiece spaces as decode() makes them); its end-of-sequence ids stop the reply
    std::unique_ptr<HfDecodeStream> stream;
    if (ck.tokenizer.hf()) stream = std::make_unique<HfDecodeStream>(ck.tokenizer.hf(), true);
    const std::vector<int32_t> eos = ck.tokenizer.eos_ids();
    generate(*ck.model, prompt, opt, [&](int32_t id) {
        if (cancel && cancel->load(std::memory_order_relaxed)) return false;
        ++r.tokens;
        if (std::find(eos.begin(), eos.end(), id) != eos.end()) {
            r.stopped = true;
            return false;
        }
        release(cut.feed(stream ? stream->step(id) : ck.tokenizer.decode_one(id)));
        return !cut.stopped();
    });
    if (stream) release(cut.feed(stream->finish()));
    release(cut.finish());
    r.stopped = r.stopped || cut.stopped();
    return r;
}

// ------------------------------------------------------------------ training

std::string default_config_path() {
    const std::string p = "configs/default.json";
    return std::filesystem::exists(p) ? p : resolve_path(p);
}

// The config of a fine-tuning run (--init PATH): the model and router sections of the model at PATH,
// the train section and the training-only router fields of the config file.
static Config init_config(const std::string& config_path, const std::string& init_path) {
    nlohmann::json user = nlohmann::json::object();  // no --config: the train section's defaults
    if (!config_path.empty()) try {
        user = nlohmann::json::parse(read_text(config_path, "config file"));
    } catch (const nlohmann::json::exception& e) {
        fail("config file '", config_path, "' is not valid JSON: ", e.what());
    }
    if (!user.is_object()) fail("config file '", config_path, "' must hold a JSON object");
    if (user.contains("model"))
        fail(config_path, ": section 'model' cannot be used with --init: the architecture comes from '", init_path,
             "' (keep 'train' and the router's training fields)");
    nlohmann::json j = config_to_json(load_model_config(init_path));
    j.erase("train");
    static const char* kTrainingOnly[] = {"balance_loss", "z_loss", "bias_balance", "bias_rate",
                                          "capacity_factor", "eval_capacity_factor", "overflow"};
    if (user.contains("router")) {
        if (!user["router"].is_object()) fail(config_path, ": section 'router' must be an object");
        if (!j.contains("router")) fail(config_path, ": section 'router' needs MoE layers, and '", init_path, "' has none");
        for (auto it = user["router"].begin(); it != user["router"].end(); ++it) {
            if (std::find_if(std::begin(kTrainingOnly), std::end(kTrainingOnly),
                             [&](const char* k) { return it.key() == k; }) == std::end(kTrainingOnly))
                fail(config_path, ": field 'router.", it.key(), "' cannot be used with --init (it changes the model of '",
                     init_path, "'); the training fields are balance_loss, z_loss, bias_balance, bias_rate, "
                     "capacity_factor, eval_capacity_factor, overflow");
            j["router"][it.key()] = it.value();
        }
    }
    for (auto it = user.begin(); it != user.end(); ++it)
        if (it.key() != "router") j[it.key()] = it.value();
    return config_from_json(j, config_path.empty() ? init_path : config_path);
}

TrainResult train(const std::string& config_path, const TrainOptions& opt) {
    // under mpirun: every rank takes its share of each step's micro-batches (train/dp_sync.h)
    dist::Comm& world = dist::world();
    std::unique_ptr<GradientSync> dp;
    if (opt.expert_parallel != 1) {
        // expert parallel (train/expert_parallel.h): the same error on every rank when P does not
        // divide the ranks (or, once the model is known, the experts)
        dp = std::make_unique<ExpertParallelSync>(world, opt.expert_parallel);
    } else if (world.size() > 1) {
        dp = std::make_unique<DataParallelSync>(world);
    }
    Config cfg;
    if (!opt.init_path.empty()) {
        if (!opt.resume_dir.empty())
            fail("--init and --resume cannot be combined: --init starts a fine-tuning run, --resume continues one");
        cfg = init_config(config_path, opt.init_path);
    } else if (!opt.config_from_checkpoint) {
        cfg = load_config(config_path);
    }
    // the end-of-run sample: generation is infer/'s, which train/ does not include
    const SampleFn sample = [](Model& model, const Tokenizer& tok, int32_t first, int64_t tokens, uint64_t seed) {
        SampleOptions so;
        so.max_tokens = tokens;
        so.temperature = 0.8;
        so.seed = seed;
        return tok.decode(generate(model, {first}, so));
    };
    TrainOptions o = opt;
    o.fused_expert_adamw = opt.fused_expert_adamw && g_env_fused_adamw;
    if (world.rank() != 0) o.summary = false;
    return train(std::move(cfg), o, sample, dp.get());
}

// ------------------------------------------------------------------ shared helpers

// A config may leave vocab_size to the tokenizer; `moe params` / `moe bench` then read it from the
// data file.
static void resolve_vocab(Config& cfg) {
    if (cfg.model.vocab_size > 0) return;
    if (cfg.train.data.empty())
        fail(cfg.path, ": 'model.vocab_size' is not set and there is no 'train.data' to take it from");
    if (cfg.train.tokenizer == "byte") {
        cfg.model.vocab_size = 256;
        return;
    }
    const std::string p = resolve_path(cfg.train.data);
    cfg.model.vocab_size = Tokenizer::char_level(read_text_file(p), p).vocab_size();
}

// v as printf("%.{decimals}f") wrote it before the JSON went through nlohmann: the same number
// (nlohmann writes the shortest text that reads back as the same double, so "1.500000" is now
// "1.5"); with 0 decimals an integer. Not finite: nlohmann writes null.
static ojson fixed(double v, int decimals) {
    if (!std::isfinite(v)) return v;
    char buf[512];  // %.6f of the largest double is 317 characters
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    if (decimals == 0 && std::fabs(v) < 9e18) return (int64_t)std::strtoll(buf, nullptr, 10);
    return std::strtod(buf, nullptr);
}

static std::string dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

// ------------------------------------------------------------------ bench

BenchReport bench(const std::string& config_path, const std::string& checkpoint_dir, const std::string& dtype,
                  const BenchOptions& opt) {
    if (config_path.empty() == checkpoint_dir.empty())
        fail("bench: give exactly one of --config FILE or --model PATH");
    BenchReport r;
    r.dtype = dtype;
    std::unique_ptr<Model> own;
    Model* model = nullptr;
    Checkpoint ck;
    if (!config_path.empty()) {
        Config cfg = load_config(config_path);
        resolve_vocab(cfg);
        if (r.dtype.empty()) r.dtype = "fp32";
        own = random_model(cfg.model, kernels::parse_wtype(r.dtype, "bench --dtype"), 1);
        model = own.get();
        r.model = config_path;
    } else {
        if (!r.dtype.empty()) kernels::parse_wtype(r.dtype, "bench --dtype");
        ck = load_model(checkpoint_dir, r.dtype, 0, my_experts(checkpoint_dir, 0));
        model = ck.model.get();
        r.model = checkpoint_dir;
        r.dtype = kernels::wtype_name(model->weight_type());
    }
    repack_weights(*model);
    model->set_cache_type(parse_cache_type(opt.cache_type, "bench --cache-type"));
    r.cache_type = dtype_name(model->cache_type());
    std::unique_ptr<EpLeader> ep = attach_leader(*model);
    r.result = run_bench(*model, opt);
    r.result.expert_parallel = g_expert_parallel;
    if (ep) {
        for (const EpRankStats& s : ep->stop()) {  // the other ranks end here
            r.result.expert_bytes_rank.push_back(s.expert_bytes);
            r.result.peak_rss_mb_rank.push_back(s.peak_rss_mb);
        }
    } else {
        r.result.expert_bytes_rank = {model->expert_bytes_held()};
        r.result.peak_rss_mb_rank = {ep_peak_rss_mb()};
    }
    const ParamCount pc = count_params(model->config());
    r.mode = opt.mode;
    r.threads = num_threads();
    r.batch = opt.batch;
    r.total_params = pc.total;
    r.active_params = pc.active;
    return r;
}

std::string to_json(const BenchReport& r) {
    const BenchResult& b = r.result;
    double expert_total = 0;  // the ranks' shards are disjoint
    for (double x : b.expert_bytes_rank) expert_total += x;
    ojson rss = ojson::array();
    for (double x : b.peak_rss_mb_rank) rss.push_back(fixed(x, 1));
    return dump(ojson{{"model", r.model},
                      {"mode", r.mode},
                      {"dtype", r.dtype},
                      {"cache_type", r.cache_type},
                      {"threads", r.threads},
                      {"batch", r.batch},
                      {"total_params", r.total_params},
                      {"active_params", r.active_params},
                      {"tokens", b.tokens},
                      {"seconds", fixed(b.seconds, 6)},
                      {"tokens_per_sec", fixed(b.tokens_per_sec, 3)},
                      {"weight_bytes_per_token", fixed(b.weight_bytes_per_token, 0)},
                      {"weight_gbytes_per_sec", fixed(b.gbytes_per_sec, 3)},
                      {"read_probe_gbytes_per_sec", fixed(b.probe_gbytes_per_sec, 3)},
                      {"gflops", fixed(b.gflops, 3)},
                      {"parallel_regions_per_step", fixed(b.parallel_regions_per_step, 2)},
                      {"peak_rss_mb", fixed(b.peak_rss_mb, 1)},
                      {"weights_mb", fixed(b.weights_mb, 1)},
                      {"kv_mb", fixed(b.kv_mb, 1)},
                      {"expert_parallel", b.expert_parallel},
                      {"expert_bytes_total", fixed(expert_total, 0)},
                      {"expert_bytes_rank", b.expert_bytes_rank},
                      {"peak_rss_mb_rank", rss}});
}

// ------------------------------------------------------------------ quantize

void export_gguf(const std::string& model_path, const std::string& type, const std::string& out_path) {
    GgufExportOptions opt;
    opt.type = parse_gguf_type(type, "GGUF export type");
    moe::export_gguf(model_path, out_path, opt);
}

QuantizeResult quantize(const std::string& checkpoint_dir, const std::string& dtype, const std::string& out_dir) {
    namespace fs = std::filesystem;
    if (dtype != "bf16" && dtype != "int8") fail("quantize --dtype must be bf16 or int8, got \"", dtype, "\"");
    if (fs::weakly_canonical(out_dir) == fs::weakly_canonical(checkpoint_dir))
        fail("quantize --out '", out_dir, "' is the input checkpoint: write to another directory");
    Checkpoint ck = load_checkpoint(checkpoint_dir, "fp32");
    if (ck.weight_type != "fp32")
        fail("checkpoint '", checkpoint_dir, "' is already ", ck.weight_type, ": quantize an fp32 checkpoint");
    save_checkpoint_quantized(out_dir, ck.config, ck.tokenizer, *ck.model, dtype, ck.state);
    QuantizeResult r;
    r.file = checkpoint_file(out_dir);
    r.dtype = dtype;
    r.bytes = (int64_t)fs::file_size(r.file);
    r.input_bytes = 0;  // one file, or a sharded set's files
    if (is_sharded_checkpoint(checkpoint_dir)) {
        for (const auto& e : fs::directory_iterator(checkpoint_dir))
            if (e.is_regular_file() && e.path().extension() == ".bin") r.input_bytes += (int64_t)e.file_size();
    } else {
        r.input_bytes = (int64_t)fs::file_size(checkpoint_file(checkpoint_dir));
    }
    r.fp32_weight_bytes = count_weight_bytes(ck.config.model, kernels::WType::f32).total;
    return r;
}

// ------------------------------------------------------------------ export

ExportResult export_model(const std::string& model_path, const std::string& out_dir, const ExportOptions& opt) {
    ExportResult r;
    r.format = opt.format;
    if (opt.format == "hf") {  // another format: another branch here with its own writer in io/
        if (!opt.type.empty())
            fail("export --type '", opt.type, "' is for --format gguf; --format hf keeps the model's dtypes");
        HfExportOptions ho;
        ho.max_shard_bytes = parse_byte_size(opt.max_shard_size, "export --max-shard-size");
        ho.force = opt.force;
        if (opt.progress) ho.progress = [&](const std::string& s) { opt.progress(s); };
        const ModelFormat fmt = detect_model_format(model_path);
        check_export_dir(out_dir, model_path, opt.force);  // before the load: a quick refusal
        Checkpoint ck = load_model(model_path);            // as stored: bf16 matrices stay bf16
        HfExportResult h = export_hf(ck, model_path, fmt, out_dir, ho);
        r.family = h.family;
        r.dtype = h.dtype;
        r.files = std::move(h.files);
        r.warnings = std::move(h.warnings);
        r.tensors = h.tensors;
        r.tensor_bytes = (int64_t)h.tensor_bytes;
        return r;
    }
    if (opt.format == "gguf") {  // one file; --out names it
        namespace fs = std::filesystem;
        std::error_code ec;
        if (fs::is_directory(out_dir, ec)) fail("export --out '", out_dir, "' is a directory: --format gguf writes one file (e.g. model.gguf)");
        if (fs::exists(out_dir, ec) && !opt.force) fail("export --out '", out_dir, "' exists (--force overwrites it)");
        GgufExportOptions go;
        go.type = parse_gguf_type(opt.type.empty() ? "f16" : opt.type, "export --type");
        export_gguf(model_path, out_dir, go);
        r.family = "gguf";
        r.dtype = opt.type.empty() ? "f16" : opt.type;
        r.files = {out_dir};
        r.tensors = (int64_t)GgufSource::open(out_dir)->header().tensors.size();
        r.tensor_bytes = (int64_t)fs::file_size(out_dir, ec);
        if (opt.progress) opt.progress("wrote " + out_dir);
        return r;
    }
    if (opt.format == "moe") {  // one checkpoint.bin: a sharded set gathered (optimizer state kept)
        namespace fs = std::filesystem;
        if (!opt.type.empty()) fail("export --type '", opt.type, "' is for --format gguf");
        check_export_dir(out_dir, model_path, opt.force);
        Checkpoint ck = load_model(model_path, "fp32");
        const bool moments = !ck.adam_m.empty();
        save_checkpoint(out_dir, ck.config, ck.tokenizer, *ck.model, moments ? ck.adam_m.data() : nullptr,
                        moments ? ck.adam_v.data() : nullptr, ck.state);
        r.family = "moe";
        r.dtype = "float32";
        r.files = {checkpoint_file(out_dir), (fs::path(out_dir) / "config.json").string()};
        r.tensors = (int64_t)ck.model->table().params().size() + (moments ? 2 : 0);
        r.tensor_bytes = (int64_t)fs::file_size(checkpoint_file(out_dir));
        if (opt.progress) opt.progress("wrote " + checkpoint_file(out_dir));
        return r;
    }
    fail("export --format must be hf, gguf or moe, got \"", opt.format, "\"");
}

// ------------------------------------------------------------------ params

ParamReport param_report(const std::string& config_path) {
    Config cfg = load_config(config_path);
    resolve_vocab(cfg);
    const ParamCount pc = count_params(cfg.model);
    ParamReport r;
    r.config = config_path;
    r.total = pc.total;
    r.active = pc.active;
    r.seq_len = cfg.train.block_size > 0 ? cfg.train.block_size : cfg.model.n_ctx;
    const FlopCount fc = count_flops(cfg.model, r.seq_len);
    r.forward_flops_per_token = fc.forward;
    r.training_flops_per_token = fc.training;
    for (kernels::WType t : {kernels::WType::f32, kernels::WType::bf16, kernels::WType::q8}) {
        const WeightBytes wb = count_weight_bytes(cfg.model, t);
        r.weights.push_back({kernels::wtype_name(t), wb.total, wb.active});
    }
    // the GGUF block types a file can hold (bf16 / f32 are the rows above)
    for (kernels::GType t : {kernels::GType::f16, kernels::GType::q8_0, kernels::GType::q6_k, kernels::GType::q5_k,
                             kernels::GType::q4_k, kernels::GType::q4_0}) {
        const WeightBytes wb = count_weight_bytes(cfg.model, t);
        r.weights.push_back({kernels::gtype_name(t), wb.total, wb.active});
    }
    return r;
}

std::string to_json(const ParamReport& r) {
    ojson j = {{"total", r.total},
               {"active", r.active},
               {"seq_len", r.seq_len},
               {"forward_flops_per_token", fixed(r.forward_flops_per_token, 0)},
               {"training_flops_per_token", fixed(r.training_flops_per_token, 0)}};
    for (const ParamReport::Weights& w : r.weights) {
        j[w.dtype + "_bytes_total"] = (int64_t)w.bytes_total;  // truncated, as before
        j[w.dtype + "_bytes_per_token"] = (int64_t)w.bytes_per_token;
    }
    return dump(j);
}

}  // namespace moe
