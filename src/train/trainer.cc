#include "train/trainer.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "core/parallel.h"
#include "dist/comm.h"
#include "core/profile.h"
#include "ops/routing_stats.h"
#include "kernels/adamw.h"
#include "kernels/gemm.h"
#include "io/checkpoint.h"
#include "io/hf_model.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "ops/moe_ffn.h"
#include "train/data.h"
#include "train/optim.h"

namespace moe {

namespace {

using Clock = std::chrono::steady_clock;

std::string fmt_duration(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    char b[32];
    int64_t t = (int64_t)(s + 0.5);
    if (t >= 3600) std::snprintf(b, sizeof b, "%ldh%02ldm", (long)(t / 3600), (long)(t / 60 % 60));
    else if (t >= 60) std::snprintf(b, sizeof b, "%ldm%02lds", (long)(t / 60), (long)(t % 60));
    else std::snprintf(b, sizeof b, "%lds", (long)t);
    return b;
}

std::string fmt_rate(double r) {
    char b[32];
    if (r >= 1e6) std::snprintf(b, sizeof b, "%.2fM", r / 1e6);
    else if (r >= 1e3) std::snprintf(b, sizeof b, "%.1fk", r / 1e3);
    else std::snprintf(b, sizeof b, "%.0f", r);
    return b;
}

class JsonlLog {
public:
    explicit JsonlLog(const std::string& path) {
        if (path.empty()) return;
        namespace fs = std::filesystem;
        fs::path p(path);
        if (p.has_parent_path()) {
            std::error_code ec;
            fs::create_directories(p.parent_path(), ec);
        }
        f_ = std::fopen(path.c_str(), "a");
        if (!f_) fail("cannot open log file '", path, "' for writing: ", std::strerror(errno));
    }
    ~JsonlLog() { if (f_) std::fclose(f_); }
    void write(const nlohmann::json& j) {
        if (!f_) return;
        std::fprintf(f_, "%s\n", j.dump().c_str());
        std::fflush(f_);
    }

private:
    FILE* f_ = nullptr;
};

// Validation loss (LM loss) over fixed batches, and the routing telemetry summed over them.
struct EvalResult {
    double val_loss = 0;
    std::vector<Model::LayerRouting> routing;  // (L), summed over the batches
};

// acc += rt (the routing telemetry of one forward)
void accumulate_routing(std::vector<Model::LayerRouting>& acc, const std::vector<Model::LayerRouting>& rt) {
    if (acc.empty()) {
        acc = rt;
        return;
    }
    for (size_t l = 0; l < rt.size(); ++l) {
        auto& a = acc[l];
        const auto& b = rt[l];
        for (size_t e = 0; e < b.load.size(); ++e) a.load[e] += b.load[e];
        a.rerouted += b.rerouted;
        a.dropped += b.dropped;
        a.slots += b.slots;
        a.entropy_sum += b.entropy_sum;
        a.tokens += b.tokens;
    }
}
void accumulate_routing(std::vector<Model::LayerRouting>& acc, const Model& model) {
    accumulate_routing(acc, model.routing());
}

// One micro-batch's losses and routing telemetry as doubles (counts are exact below 2^53), so the
// ranks of a data-parallel run can gather them and add them in micro-batch order:
// lm, balance, z, then per layer: has-load flag, E loads, rerouted, dropped, slots, tokens, entropy_sum.
int64_t micro_record_size(const ModelConfig& mc) { return 3 + mc.n_layer * (6 + mc.n_expert); }

void write_micro_record(double* out, double lm, double bal, double z, const std::vector<Model::LayerRouting>& rt,
                        const ModelConfig& mc) {
    *out++ = lm, *out++ = bal, *out++ = z;
    for (int64_t l = 0; l < mc.n_layer; ++l) {
        const Model::LayerRouting* r = l < (int64_t)rt.size() ? &rt[l] : nullptr;
        const bool has = r && !r->load.empty();
        *out++ = has;
        for (int64_t e = 0; e < mc.n_expert; ++e) *out++ = has ? (double)r->load[e] : 0.0;
        *out++ = r ? (double)r->rerouted : 0.0, *out++ = r ? (double)r->dropped : 0.0;
        *out++ = r ? (double)r->slots : 0.0, *out++ = r ? (double)r->tokens : 0.0;
        *out++ = r ? r->entropy_sum : 0.0;
    }
}

std::vector<Model::LayerRouting> read_micro_routing(const double* in, const ModelConfig& mc) {
    std::vector<Model::LayerRouting> rt(mc.n_layer);
    in += 3;
    for (int64_t l = 0; l < mc.n_layer; ++l) {
        Model::LayerRouting& r = rt[l];
        const bool has = *in++ != 0;
        for (int64_t e = 0; e < mc.n_expert; ++e, ++in)
            if (has) r.load.push_back((int64_t)*in);
        r.rerouted = (int64_t)*in++, r.dropped = (int64_t)*in++, r.slots = (int64_t)*in++, r.tokens = (int64_t)*in++;
        r.entropy_sum = *in++;
    }
    return rt;
}

EvalResult evaluate(Model& model, const TextData& data, int64_t B, int64_t T, int64_t batches,
                    uint64_t seed) {
    std::vector<int32_t> x(B * T), y(B * T);
    EvalResult r;
    double sum = 0;
    model.set_mode(false);
    for (int64_t i = 0; i < batches; ++i) {
        data.val_batch(x.data(), y.data(), B, seed, i);
        sum += model.forward(x.data(), y.data(), B, T);
        accumulate_routing(r.routing, model);
    }
    r.val_loss = sum / (double)batches;
    return r;
}

// The JSONL `routing` array: one object per MoE layer.
nlohmann::json routing_json(const std::vector<Model::LayerRouting>& rt) {
    nlohmann::json arr = nlohmann::json::array();
    for (size_t l = 0; l < rt.size(); ++l) {
        const auto& r = rt[l];
        if (r.load.empty()) continue;
        const int64_t E = (int64_t)r.load.size();
        arr.push_back({{"layer", l},
                       {"load", r.load},
                       {"max_share", ops::load_max_share(r.load.data(), E)},
                       {"cv", ops::load_cv(r.load.data(), E)},
                       {"entropy", r.tokens ? r.entropy_sum / (double)r.tokens : 0.0},
                       {"rerouted", r.slots ? (double)r.rerouted / (double)r.slots : 0.0},
                       {"dropped", r.slots ? (double)r.dropped / (double)r.slots : 0.0},
                       {"dead", ops::dead_experts(r.load.data(), E)}});
    }
    return arr;
}

// A compact routing table for the progress output: balance of the validation batches (no noise,
// eval capacity) and the reroute/drop rates of the training steps since the last evaluation.
void print_routing_table(const nlohmann::json& val, const nlohmann::json& train) {
    if (val.empty()) return;
    std::printf("        layer  max_share     cv  entropy  dead | train: rerouted  dropped  max_share\n");
    for (size_t i = 0; i < val.size(); ++i) {
        const auto& o = val[i];
        std::printf("        %5d  %9.2f  %5.2f  %7.3f  %4d |", o["layer"].get<int>(), o["max_share"].get<double>(),
                    o["cv"].get<double>(), o["entropy"].get<double>(), o["dead"].get<int>());
        if (i < train.size())
            std::printf("        %7.2f%%  %6.2f%%  %9.2f", 100.0 * train[i]["rerouted"].get<double>(),
                        100.0 * train[i]["dropped"].get<double>(), train[i]["max_share"].get<double>());
        std::printf("\n");
    }
}

void print_expert_table(const std::vector<std::vector<int64_t>>& load, const ModelConfig& m) {
    if (!m.any_moe()) {
        std::printf("(dense model: no experts)\n");
        return;
    }
    std::printf("tokens per expert (validation batches of the last evaluation; fair share = %.1f%%):\n",
                100.0 / (double)m.n_expert);
    std::printf("layer");
    for (int64_t e = 0; e < m.n_expert; ++e) std::printf(" %7s", ("e" + std::to_string(e)).c_str());
    std::printf("   max/fair\n");
    for (size_t l = 0; l < load.size(); ++l) {
        if (load[l].empty()) {
            std::printf("%5zu (dense)\n", l);
            continue;
        }
        int64_t tot = 0, mx = 0;
        for (int64_t c : load[l]) { tot += c; mx = std::max(mx, c); }
        std::printf("%5zu", l);
        for (int64_t c : load[l]) std::printf(" %7ld", (long)c);
        std::printf("   %.2f\n", tot ? (double)mx * (double)m.n_expert / (double)tot : 0.0);
    }
}

// Resuming with an explicit config: its model section must describe the checkpoint's model.
void check_same_model(const Config& cfg, const ModelConfig& ck_model, const std::string& ck_path) {
    Config a = cfg, b;
    if (a.model.vocab_size == 0) a.model.vocab_size = ck_model.vocab_size;  // "from the data"
    b.model = ck_model;
    const nlohmann::json ja = config_to_json(a)["model"], jb = config_to_json(b)["model"];
    auto differs = [&](const std::string& k) {
        auto show = [&](const nlohmann::json& j) { return j.contains(k) ? j[k].dump() : std::string("unset"); };
        if (ja.contains(k) && jb.contains(k) && ja[k] == jb[k]) return;
        fail(cfg.path, ": field 'model.", k, "' is ", show(ja), " but checkpoint '", ck_path, "' has ", show(jb),
             " (a resumed run keeps the checkpoint's architecture; omit --config to use its config)");
    };
    for (auto it = jb.begin(); it != jb.end(); ++it) differs(it.key());
    for (auto it = ja.begin(); it != ja.end(); ++it) differs(it.key());
}

// The routed experts' AdamW inside the backward, for training with no clipping and no accumulation
// (each expert matrix's gradient is final when its backward GEMM ends): the backward hands each
// gradient, still in cache, to AdamW (ops::ExpertGradSink), and it is never written to grads().
// That saves writing, zeroing, re-reading and norming the experts' gradients (makeMoE: 34 MB
// each, most of the weights). The update is the same arithmetic, so the checkpoints are the same
// bits; the gradient norm adds the experts' part in another order (last bits only).
class FusedExpertAdamW {
public:
    FusedExpertAdamW(Model& model, AdamW& adam) : model_(model), adam_(adam) {
        for (const auto& p : model.table().params()) {
            if (p.expert) {
                if (p.trainable)
                    for (int64_t e = 0, per = p.numel / p.shape[0]; e < p.shape[0]; ++e)
                        slices_.push_back({p.offset + e * per, per, p.decay});
                continue;
            }
            // the other tensors, merged: they are laid out back to back, each padded to 16 floats
            if (!other_.empty() && p.offset - (other_.back().first + other_.back().second) < 16)
                other_.back().second = p.offset + p.numel - other_.back().first;
            else
                other_.push_back({p.offset, p.numel});
        }
        std::sort(slices_.begin(), slices_.end(), [](const Slice& a, const Slice& b) { return a.offset < b.offset; });
        done_.resize(slices_.size());
        sumsq_.resize(slices_.size());
        skip_.reserve(slices_.size());
        model.zero_grad();  // the experts' gradients stay zero from here on: nothing writes them
    }
    ~FusedExpertAdamW() { model_.set_expert_grad_sink(nullptr); }  // also when a step throws
    FusedExpertAdamW(const FusedExpertAdamW&) = delete;
    FusedExpertAdamW& operator=(const FusedExpertAdamW&) = delete;

    // Before the forward and backward of step t (from 1) at hp: zeroes the other tensors'
    // gradients and has the model's backward hand the experts' gradients here.
    void begin_step(const AdamWParams& hp, int64_t t) {
        hp_ = hp, t_ = t;
        std::fill(done_.begin(), done_.end(), 0);
        float* g = model_.grads();
        parallel_for(0, (int64_t)other_.size(), 1, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) std::memset(g + other_[r].first, 0, other_[r].second * sizeof(float));
        });
        model_.set_expert_grad_sink(&sink_);
    }

    // After the backward: the global gradient norm (the experts' part in slice order), and the
    // ranges AdamW::step must leave alone (the experts updated in the backward).
    double end_step() {
        model_.set_expert_grad_sink(nullptr);
        double ss = 0;
        for (const auto& [off, n] : other_) ss += grad_sumsq(model_.grads() + off, n);
        skip_.clear();
        for (size_t i = 0; i < slices_.size(); ++i)
            if (done_[i]) {
                ss += sumsq_[i];
                skip_.push_back({slices_[i].offset, slices_[i].n});
            }
        return std::sqrt(ss);
    }
    const std::vector<std::pair<int64_t, int64_t>>* updated() const { return &skip_; }

private:
    struct Slice {
        int64_t offset, n;
        bool decay;
    };
    // the sink: expert matrix `dst` (inside grads()) has gradient g (n); on any thread
    struct Update {
        FusedExpertAdamW* self;
        void operator()(float* dst, const float* g, int64_t n) const { self->update(dst, g, n); }
    };
    void update(float* dst, const float* g, int64_t n) {
        const int64_t off = dst - model_.grads();
        const auto it = std::lower_bound(slices_.begin(), slices_.end(), off,
                                         [](const Slice& s, int64_t o) { return s.offset < o; });
        MOE_ASSERT(it != slices_.end() && it->offset == off && it->n == n);
        const size_t i = it - slices_.begin();
        sumsq_[i] = kernels::sumsq(g, n);
        adam_.update(model_.params(), off, g, n, it->decay, hp_, t_);
        done_[i] = 1;
    }

    Model& model_;
    AdamW& adam_;
    std::vector<Slice> slices_;                          // every expert's matrix, by offset
    std::vector<std::pair<int64_t, int64_t>> other_;     // (offset, n) of the other tensors
    std::vector<uint8_t> done_;                          // updated in this step's backward
    std::vector<double> sumsq_;                          // their gradients' sums of squares
    std::vector<std::pair<int64_t, int64_t>> skip_;
    AdamWParams hp_;
    int64_t t_ = 0;
    Update update_fn_{this};
    const ops::ExpertGradSink sink_{update_fn_};
};

// The squared gradient norm in one order, whatever holds the experts: tensor by tensor in table
// order, an expert stack expert by expert (global index), each piece in chunks of 64K floats, the
// chunks' double partial sums added in that order. An expert-parallel rank computes the partials
// of its replicated tensors and its own experts and gathers the other experts' partials from its
// expert-parallel group (a few doubles), so every rank and one process get the same bits.
class GradNorm {
public:
    GradNorm(const Model& model, int P) : P_(P) {
        const int64_t chunk = 1 << 16;
        for (const ParamInfo& p : model.table().params()) {
            if (!p.expert) {
                for (int64_t o = 0; o < p.numel; o += chunk) {
                    order_.push_back((int64_t)chunks_.size());
                    chunks_.push_back({p.offset + o, std::min(chunk, p.numel - o)});
                }
                continue;
            }
            const int64_t El = p.shape[0], per = p.numel / El, c = (per + chunk - 1) / chunk;
            for (int64_t le = 0; le < El; ++le)
                for (int64_t o = 0; o < per; o += chunk) exp_.push_back({p.offset + le * per + o, std::min(chunk, per - o)});
            pieces_.push_back({(int64_t)order_.size(), (int64_t)exp_.size() - El * c, El * c});
            order_.push_back(-1);  // placeholder: this stack's partials, rank by rank
        }
    }
    double sumsq(const float* g, dist::Comm* group) {
        const int64_t nr = (int64_t)chunks_.size(), ne = (int64_t)exp_.size();
        part_.resize((size_t)(nr + ne));
        parallel_tasks(nr + ne, [&](int64_t i) {
            const auto& [o, n] = i < nr ? chunks_[i] : exp_[i - nr];
            part_[i] = kernels::sumsq(g + o, n);
        });
        all_.resize((size_t)(ne * P_));
        if (P_ > 1) group->allgather(part_.data() + nr, ne * (int64_t)sizeof(double), all_.data());
        else std::copy(part_.begin() + nr, part_.end(), all_.begin());
        double ss = 0;
        size_t k = 0;
        for (int64_t i : order_) {
            if (i >= 0) {
                ss += part_[i];
                continue;
            }
            const Piece& pc = pieces_[k++];
            for (int q = 0; q < P_; ++q)
                for (int64_t j = 0; j < pc.n; ++j) ss += all_[q * ne + pc.begin + j];
        }
        return ss;
    }

private:
    struct Piece {
        int64_t at, begin, n;  // position in order_, this stack's first partial in exp_, how many
    };
    int P_;
    std::vector<std::pair<int64_t, int64_t>> chunks_, exp_;  // (offset, n): replicated / my experts' chunks
    std::vector<int64_t> order_;
    std::vector<Piece> pieces_;
    std::vector<double> part_, all_;
};

// The experts [range] of a model that holds them all, as a model holding only those (fine-tuning
// an expert-parallel run from a whole model)
std::unique_ptr<Model> slice_experts(Model& full, ExpertRange range) {
    auto m = std::make_unique<Model>(full.config(), range);
    for (const ParamInfo& p : m->table().params()) {
        const ParamInfo* fp = full.table().find(p.name);
        const int64_t skip = p.expert ? range.first * (p.numel / p.shape[0]) : 0;
        std::memcpy(m->params() + p.offset, full.params() + fp->offset + skip, p.numel * sizeof(float));
    }
    return m;
}

}  // namespace

// peak resident set size of the process so far, MB
static double peak_rss_mb() {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

struct Trainer::Impl {
    Config cfg;
    TrainOptions opt;
    LocalSync local_sync;
    GradientSync* sync = nullptr;
    kernels::Precision precision = kernels::Precision::fp32;
    std::string data_path;
    std::unique_ptr<Model> model;
    Tokenizer tok;
    TrainState st;
    std::unique_ptr<AdamW> adam;
    std::unique_ptr<TextData> data;
    std::unique_ptr<JsonlLog> log;
    std::unique_ptr<FusedExpertAdamW> fused;
    double unigram = 0;
    int64_t B = 0, T = 0, N = 0;
    bool lead = true;                              // rank 0: prints, logs, evaluates, saves
    int P = 1;                                     // expert parallel: experts sharded over P ranks
    ExpertRange range;                             // the experts this rank holds (P > 1)
    std::unique_ptr<GradNorm> norm;
    std::vector<double> micro_mine, micro_all;     // per-micro-batch records (micro_record_size)
    bool tty = false;
    std::vector<int32_t> x, y;
    std::vector<std::vector<int64_t>> last_load;   // expert loads of the last evaluation
    std::vector<Model::LayerRouting> train_rt;     // training routing since the last evaluation

    void setup(Config c, const TrainOptions& o, GradientSync* s);
};

void Trainer::Impl::setup(Config c, const TrainOptions& o, GradientSync* s) {
    cfg = std::move(c);
    opt = o;
    sync = s ? s : &local_sync;
    lead = sync->rank() == 0;
    if (!lead) opt.log_path.clear();
    set_num_threads(opt.threads);
    // Resuming: the architecture, tokenizer, weights, optimizer state and the seed (the data order)
    // come from the checkpoint, so the run continues exactly as it would have without a stop.
    Checkpoint ck;
    // Expert parallel over P ranks: this rank holds experts [q·E/P, (q+1)·E/P) of every MoE layer
    // (q = its place in its group), their gradients and AdamW moments; a resumed run reads only
    // those from the checkpoint, whatever split saved it.
    P = sync->expert_parallel();
    auto expert_range = [&](const ModelConfig& mc) { return expert_range_of(mc, P, sync->rank() % P); };
    if (!opt.resume_dir.empty()) {
        if (P > 1) {
            range = expert_range(checkpoint_config(opt.resume_dir).model);
            ck = load_checkpoint_experts(opt.resume_dir, range);
        } else {
            ck = load_checkpoint(opt.resume_dir, "fp32");
        }
        if (ck.adam_m.empty()) fail("checkpoint '", opt.resume_dir, "' has no optimizer state to resume from");
        if (opt.config_from_checkpoint) {
            cfg.train = ck.config.train;
            cfg.path = checkpoint_file(opt.resume_dir);
        } else {
            check_same_model(cfg, ck.config.model, checkpoint_file(opt.resume_dir));
        }
        cfg.model = ck.config.model;
        cfg.train.seed = ck.config.train.seed;
    }
    if (!opt.init_path.empty()) {  // fine-tuning: the weights and tokenizer of a model, a fresh optimizer
        ck = load_model(opt.init_path, "fp32", cfg.model.n_ctx);
        if (ck.tokenizer_missing)
            fail("--init '", opt.init_path, "' has no tokenizer.json: the training text needs the model's tokenizer");
        check_same_model(cfg, ck.config.model, opt.init_path);
    }
    TrainConfig& tc = cfg.train;
    if (tc.block_size > cfg.model.n_ctx)
        fail(cfg.path, ": field 'train.block_size' is ", tc.block_size, " but the model's n_ctx is ", cfg.model.n_ctx);
    if (!opt.data_override.empty()) tc.data = opt.data_override;
    if (opt.seed >= 0) tc.seed = (uint64_t)opt.seed;
    if (opt.steps >= 0) tc.steps = opt.steps;
    if (opt.grad_accum >= 0) {
        if (opt.grad_accum < 1) fail("--grad-accum must be >= 1, got ", opt.grad_accum);
        tc.grad_accum = opt.grad_accum;
    }
    // Data parallel over W ranks: --grad-accum / train.grad_accum is per rank, the step's global
    // accumulation is W times it (what the checkpoint records). Resuming with the checkpoint's own
    // training section and no --grad-accum keeps its global accumulation, which W must divide.
    if (const int W = sync->size(); W > 1) {
        if (opt.config_from_checkpoint && opt.grad_accum < 0) {
            if (tc.grad_accum % W != 0)
                fail("checkpoint '", checkpoint_file(opt.resume_dir), "' accumulates ", tc.grad_accum,
                     " micro-batches per step, which the ", W, " ranks cannot share evenly (pass --grad-accum G for ",
                     "G per rank, or run on a number of ranks dividing ", tc.grad_accum, ")");
        } else {
            tc.grad_accum *= W;
        }
    }
    if (!opt.precision.empty()) tc.precision = opt.precision;
    precision = kernels::parse_precision(tc.precision.c_str(), "--precision / train.precision");
    if (tc.data.empty()) fail("no training data: set 'train.data' in ", cfg.path, " or pass --data FILE");
    data_path = resolve_path(tc.data);
    const std::string text = read_text_file(data_path);

    // model, tokenizer and optimizer state: fresh or from the checkpoint
    if (!opt.init_path.empty()) {
        tok = ck.tokenizer;
        model = std::move(ck.model);
        if (P > 1) {
            range = expert_range(cfg.model);
            model = slice_experts(*model, range);
        }
        adam = std::make_unique<AdamW>(model->n_params());
    } else if (!opt.resume_dir.empty()) {
        tok = ck.tokenizer;
        st = ck.state;
        model = std::move(ck.model);
        adam = std::make_unique<AdamW>(model->n_params());
        std::copy(ck.adam_m.begin(), ck.adam_m.end(), adam->m());
        std::copy(ck.adam_v.begin(), ck.adam_v.end(), adam->v());
        std::vector<float>().swap(ck.adam_m);
        std::vector<float>().swap(ck.adam_v);
    } else {
        if (tc.tokenizer == "bpe") {
            // merges are learned from the leading (1 - val_fraction) of the file's bytes, so the
            // held-out tail (the last val_fraction of the tokens) does not shape the vocabulary
            const size_t train_bytes = (size_t)((double)text.size() * (1.0 - tc.val_fraction));
            tok = Tokenizer::bpe_train(text.substr(0, train_bytes), cfg.model.vocab_size, data_path, true);
        } else {
            tok = tc.tokenizer == "byte" ? Tokenizer::byte_level() : Tokenizer::char_level(text, data_path);
        }
        if (cfg.model.vocab_size == 0) cfg.model.vocab_size = tok.vocab_size();
        if (cfg.model.vocab_size != tok.vocab_size())
            fail(cfg.path, ": field 'model.vocab_size' is ", cfg.model.vocab_size, " but the ", tc.tokenizer,
                 " tokenizer of '", data_path, "' has ", tok.vocab_size(), " tokens (omit vocab_size to take it from the data)");
        range = expert_range(cfg.model);
        model = P > 1 ? std::make_unique<Model>(cfg.model, range) : std::make_unique<Model>(cfg.model);
        model->init(tc.seed);
        adam = std::make_unique<AdamW>(model->n_params());
    }
    norm = std::make_unique<GradNorm>(*model, P);
    model->set_precision(precision);
    sync->attach(*model);
    if (lead) ensure_writable_dir(opt.out_dir);
    const ModelConfig& mc = cfg.model;
    B = tc.batch_size, T = tc.block_size, N = B * T;
    data = std::make_unique<TextData>(tok.encode(text, data_path), tc.val_fraction, T, data_path);
    log = std::make_unique<JsonlLog>(opt.log_path);

    const ParamCount pc = count_params(mc);
    unigram = data->unigram_entropy(mc.vocab_size);
    micro_mine.resize(micro_record_size(mc) * (tc.grad_accum / sync->size()));
    micro_all.resize(micro_mine.size() * sync->size());
    if (lead) std::printf("moe train: %s | %s model, %lld layers, C=%lld, %s | params %.3fM total, %.3fM active\n",
                cfg.path.c_str(), mc.any_moe() ? "MoE" : "dense", (long long)mc.n_layer, (long long)mc.n_embd,
                mc.any_moe() ? str("E=", mc.n_expert, " K=", mc.n_expert_used, " F=", mc.n_ff_exp,
                                     mc.n_ff_shexp > 0 ? str(" + shared F=", mc.n_ff_shexp, mc.shexp_gate ? " (gated)" : "") : "").c_str()
                             : str("F=", mc.n_ff).c_str(),
                pc.total / 1e6, pc.active / 1e6);
    if (lead) std::printf("data: %s, %lld train / %lld val tokens, vocab %lld (%s); unigram baseline %.4f nats\n",
                data_path.c_str(), (long long)data->n_train(), (long long)data->n_val(), (long long)mc.vocab_size,
                tok.kind() == Tokenizer::Kind::hf ? "the model's tokenizer.json" : tc.tokenizer.c_str(), unigram);
    // The routed experts' AdamW inside the backward (FusedExpertAdamW) where nothing needs the whole
    // gradient first (opt.fused_expert_adamw; off for A/B and the test that compares both). It
    // updates experts inside the backward, before the gradient sync: only where that sync changes nothing
    const bool fuse = tc.grad_clip == 0 && tc.grad_accum == 1 && mc.any_moe() && opt.fused_expert_adamw && sync->identity();
    if (lead)  // the global batch: W ranks x their micro-batches
        std::printf("batch %lld x %lld tokens x %lld accum%s, %lld steps, lr %.2e, %d threads, %s GEMMs (%s)%s%s\n",
                    (long long)B, (long long)T, (long long)tc.grad_accum,
                    sync->size() > 1 ? str(" over ", sync->size(), " ranks").c_str() : "", (long long)tc.steps, tc.lr, num_threads(),
                    tc.precision.c_str(), [&] {
                        const kernels::PrecisionScope p(precision);
                        return kernels::gemm_engine_name();
                    }(), fuse ? ", experts' AdamW in the backward" : "",
                    !opt.resume_dir.empty() ? str(", resuming at step ", st.step).c_str()
                    : !opt.init_path.empty() ? str(", fine-tuning ", opt.init_path).c_str() : "");
    std::fflush(stdout);
    if (lead && P > 1) {  // what expert sharding saves per rank: weights + AdamW moments (and gradients)
        const double mb = 1.0 / 1048576.0, here = (double)model->n_params() * 4 * mb,
                     whole = (double)ParamTable(mc).total() * 4 * mb;
        std::printf("expert parallel: %d ranks per group, experts sharded (rank 0: experts [%lld, %lld) of %lld); "
                    "weights + AdamW moments %.1f MB per rank (%.1f MB unsharded), gradients %.1f MB (%.1f MB)\n",
                    P, (long long)range.first, (long long)(range.first + range.count), (long long)mc.n_expert,
                    3 * here, 3 * whole, here, whole);
    }
    // under mpirun stdout is Open MPI's pseudo-terminal whatever it is forwarded to: plain lines
    tty = ::isatty(STDOUT_FILENO) && sync->size() == 1;
    x.resize(N);
    y.resize(N);
    if (fuse) fused = std::make_unique<FusedExpertAdamW>(*model, *adam);
}

Trainer::Trainer(Config cfg, const TrainOptions& opt, GradientSync* sync) : impl_(std::make_unique<Impl>()) {
    impl_->setup(std::move(cfg), opt, sync);
}
Trainer::~Trainer() = default;

Model& Trainer::model() { return *impl_->model; }
const Config& Trainer::config() const { return impl_->cfg; }
const TrainState& Trainer::state() const { return impl_->st; }
const Tokenizer& Trainer::tokenizer() const { return impl_->tok; }

Trainer::StepStats Trainer::step() {
    Impl& m = *impl_;
    const TrainConfig& tc = m.cfg.train;
    const int64_t step = m.st.step;
    StepStats r;
    AdamWParams hp;
    hp.lr = lr_at(step, tc.steps, tc.warmup_steps, tc.lr, tc.min_lr);
    hp.beta1 = tc.beta1;
    hp.beta2 = tc.beta2;
    hp.eps = tc.adam_eps;
    hp.weight_decay = tc.weight_decay;
    r.lr = hp.lr;
    Model& model = *m.model;
    const ModelConfig& mc = m.cfg.model;
    // Global micro-batches 0..M-1; this rank runs j·W + rank (train/grad_sync.h). Each one's data and
    // router noise are keyed by its global index, so any rank draws what one process would.
    const int64_t M = tc.grad_accum, W = m.sync->size(), rounds = M / W, rec = micro_record_size(mc);
    MOE_ASSERT(M % W == 0);
    const bool accumulate = M > 1;  // per-micro-batch gradients, folded in micro-batch order
    if (m.fused) m.fused->begin_step(hp, step + 1);
    else if (!accumulate) model.zero_grad();
    for (int64_t j = 0; j < rounds; ++j) {
        const int64_t micro = j * W + m.sync->rank();
        m.data->train_batch(m.x.data(), m.y.data(), m.B, tc.seed, step, micro);
        model.set_mode(true, tc.seed, step, micro);
        const double lm = model.forward(m.x.data(), m.y.data(), m.B, m.T);
        write_micro_record(m.micro_mine.data() + j * rec, lm, model.aux_balance_loss(), model.aux_z_loss(),
                           model.routing(), mc);
        if (accumulate) model.zero_grad();
        model.backward(1.f / (float)M);
        if (accumulate) m.sync->accumulate(model.grads(), model.n_params(), j);
    }
    if (accumulate) m.sync->finish(model.grads(), model.n_params());
    // the seam between backward and optimizer (identity on one process; fused implies identity)
    MOE_ASSERT(!m.fused || m.sync->identity());
    m.sync->sync(model.grads(), model.n_params(), step);
    // losses and routing telemetry of every micro-batch, added in micro-batch order
    m.sync->gather(m.micro_mine.data(), (int64_t)m.micro_mine.size(), m.micro_all.data());
    std::vector<std::vector<int64_t>> step_load;
    for (int64_t micro = 0; micro < M; ++micro) {
        const double* p = m.micro_all.data() + ((micro % W) * rounds + micro / W) * rec;
        r.lm_loss += p[0];
        r.balance_loss += p[1];
        r.z_loss += p[2];
        if (!mc.any_moe()) continue;
        const std::vector<Model::LayerRouting> rt = read_micro_routing(p, mc);
        if (m.lead) accumulate_routing(m.train_rt, rt);
        if (W > 1 && mc.router.bias_balance) {  // the loads of all ranks' micro-batches
            if (step_load.empty()) step_load.assign(mc.n_layer, std::vector<int64_t>(mc.n_expert, 0));
            for (int64_t l = 0; l < mc.n_layer; ++l)
                for (size_t e = 0; e < rt[l].load.size(); ++e) step_load[l][e] += rt[l].load[e];
        }
    }
    if (!step_load.empty()) model.set_step_load(std::move(step_load));
    r.lm_loss /= (double)tc.grad_accum;
    r.balance_loss /= (double)tc.grad_accum;
    r.z_loss /= (double)tc.grad_accum;
    r.loss = r.lm_loss + r.balance_loss + r.z_loss;  // what the gradient descends
    if (!std::isfinite(r.loss))
        fail("training diverged: loss is ", r.loss, " at step ", step,
             " (the last good checkpoint in '", m.opt.out_dir, "' is kept; try a lower train.lr than ", tc.lr, ")");
    {
        MOE_PROFILE_SCOPE("clip+adamw");
        r.grad_norm = m.fused ? m.fused->end_step() : std::sqrt(m.norm->sumsq(model.grads(), m.sync->expert_group()));
        if (!std::isfinite(r.grad_norm))
            fail("training diverged: gradient norm is ", r.grad_norm, " at step ", step,
                 " (the last good checkpoint in '", m.opt.out_dir, "' is kept)");
        m.adam->step(model.params(), model.grads(), model.table(), hp, step + 1,
                     clip_coefficient(r.grad_norm, tc.grad_clip), m.fused ? m.fused->updated() : nullptr);
        model.update_balance_bias();  // aux-loss-free balancing (no-op unless configured)
    }
    m.st.step = step + 1;
    m.st.tokens_seen += m.N * tc.grad_accum;
    return r;
}

double Trainer::evaluate() {
    Impl& m = *impl_;
    const TrainConfig& tc = m.cfg.train;
    EvalResult ev = moe::evaluate(*m.model, *m.data, m.B, m.T, tc.eval_batches, tc.seed);
    m.st.val_loss = ev.val_loss;
    m.last_load.clear();
    for (const auto& r : ev.routing) m.last_load.push_back(r.load);
    const nlohmann::json rj = routing_json(ev.routing), tj = routing_json(m.train_rt);
    m.train_rt.clear();
    if (!m.lead) return ev.val_loss;  // (expert parallel: every rank evaluates, rank 0 reports)
    if (m.tty) std::printf("\r\033[K");
    std::printf("step %6lld | val loss %.4f (unigram %.4f)\n", (long long)m.st.step, ev.val_loss, m.unigram);
    print_routing_table(rj, tj);
    std::fflush(stdout);
    nlohmann::json line = {{"step", m.st.step}, {"val_loss", ev.val_loss}};
    if (!rj.empty()) line["routing"] = rj;
    if (!tj.empty()) line["train_routing"] = tj;
    m.log->write(line);
    return ev.val_loss;
}

void Trainer::save() {
    Impl& m = *impl_;
    if (m.P <= 1) {
        save_checkpoint(m.opt.out_dir, m.cfg, m.tok, *m.model, m.adam->m(), m.adam->v(), m.st);
        return;
    }
    // Expert parallel (collective): group 0's P ranks write their expert files, rank 0 the
    // replicated one, then rank 0 commits the manifest once all are written (io/checkpoint.h)
    dist::Comm& w = *m.sync->world_comm();
    int64_t nonce = 0;
    if (m.lead) nonce = (int64_t)std::chrono::system_clock::now().time_since_epoch().count() & 0xffffffffffffll;
    w.broadcast(&nonce, sizeof nonce, 0);
    char tag[48];
    std::snprintf(tag, sizeof tag, "s%08lld-%012llx", (long long)m.st.step, (unsigned long long)nonce);
    std::vector<ShardRecord> files;
    if (m.lead)
        files.push_back(write_checkpoint_shard(m.opt.out_dir, tag, true, m.cfg, m.tok, *m.model, m.adam->m(),
                                               m.adam->v(), m.st));
    int64_t rec[4] = {0, 0, 0, 0};  // first, count, bytes, crc
    if (w.rank() < m.P) {
        const ShardRecord r = write_checkpoint_shard(m.opt.out_dir, tag, false, m.cfg, m.tok, *m.model, m.adam->m(),
                                                     m.adam->v(), m.st);
        rec[0] = r.first, rec[1] = r.count, rec[2] = (int64_t)r.bytes, rec[3] = (int64_t)r.crc32;
    }
    std::vector<int64_t> all((size_t)(4 * w.size()));
    w.allgather(rec, sizeof rec, all.data());
    if (m.lead) {
        for (int q = 0; q < m.P; ++q) {
            ShardRecord r;
            r.kind = "experts";
            r.first = all[4 * q], r.count = all[4 * q + 1], r.bytes = (uint64_t)all[4 * q + 2];
            r.crc32 = (uint32_t)all[4 * q + 3];
            r.file = str("experts-", r.first, "-", r.first + r.count, ".", tag, ".bin");
            files.push_back(r);
        }
        // fault injection for the tests of atomicity (docs/distributed.md): fail between the shard
        // files and the manifest at step N
        if (const char* f = std::getenv("MOE_FAULT_SAVE_BEFORE_MANIFEST"); f && std::atoll(f) == m.st.step)
            fail("MOE_FAULT_SAVE_BEFORE_MANIFEST=", f, ": failing the save of step ", m.st.step,
                 " after its shard files, before its manifest");
        commit_sharded_checkpoint(m.opt.out_dir, m.cfg, files, w.size(), m.P, m.st);
    }
    w.barrier();
}

TrainResult Trainer::run(const SampleFn& sample) {
    Impl& m = *impl_;
    const TrainConfig& tc = m.cfg.train;
    const ModelConfig& mc = m.cfg.model;
    TrainResult res;
    res.unigram_entropy = m.unigram;
    auto t_start = Clock::now();
    auto t_window = t_start;
    int64_t window_tokens = 0;
    double last_loss = 0, window_loss = 0;
    int64_t window_steps = 0;

    const int64_t start_step = m.st.step;
    while (m.st.step < tc.steps) {
        const int64_t step = m.st.step;
        const StepStats s = this->step();
        last_loss = s.loss;
        window_loss += s.loss;
        window_steps++;
        window_tokens += m.N * tc.grad_accum;

        const bool last = m.st.step == tc.steps;
        if (m.st.step % tc.log_interval == 0 || last || step == start_step) {
            auto now = Clock::now();
            double dt = std::chrono::duration<double>(now - t_window).count();
            double tps = dt > 0 ? window_tokens / dt : 0;
            double elapsed = std::chrono::duration<double>(now - t_start).count();
            double eta = elapsed / (double)(m.st.step - start_step) * (double)(tc.steps - m.st.step);
            char line[256];
            std::snprintf(line, sizeof line, "step %6lld/%lld | loss %.4f | lr %.2e | %s tok/s | ETA %s",
                          (long long)m.st.step, (long long)tc.steps, window_loss / window_steps, s.lr,
                          fmt_rate(tps).c_str(), fmt_duration(eta).c_str());
            if (m.lead && m.tty) std::printf("\r\033[K%s", line);
            else if (m.lead) std::printf("%s\n", line);
            std::fflush(stdout);
            nlohmann::json jl = {{"step", m.st.step}, {"loss", s.loss}, {"lr", s.lr},
                                 {"tokens_per_sec", tps}, {"grad_norm", s.grad_norm},
                                 {"peak_rss_mb", peak_rss_mb()}};
            if (mc.router.balance_loss > 0 || mc.router.z_loss > 0) jl["lm_loss"] = s.lm_loss;
            if (mc.router.balance_loss > 0) jl["balance_loss"] = s.balance_loss;
            if (mc.router.z_loss > 0) jl["z_loss"] = s.z_loss;
            m.log->write(jl);
            t_window = now;
            window_tokens = 0;
            window_loss = 0;
            window_steps = 0;
        }
        // only rank 0 evaluates, logs and saves; with sharded experts every rank takes part
        if (!m.lead && m.P <= 1) continue;
        if (m.st.step % tc.eval_interval == 0 || last) evaluate();
        if ((tc.ckpt_interval > 0 && m.st.step % tc.ckpt_interval == 0) || last) save();
    }
    if (start_step >= tc.steps && (m.lead || m.P > 1)) {
        if (m.lead)
            std::printf("checkpoint is already at step %lld of %lld; nothing to train\n", (long long)m.st.step,
                        (long long)tc.steps);
        evaluate();
        save();  // the checkpoint the summary line names exists even when --out is a new directory
    }
    if (!m.lead) {
        res.steps_done = m.st.step - start_step;
        res.final_train_loss = last_loss;
        return res;
    }
    if (m.tty) std::printf("\n");
    res.seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
    res.steps_done = m.st.step - start_step;
    res.final_train_loss = last_loss;
    res.final_val_loss = m.st.val_loss;
    std::printf("done: %lld steps in %s, final val loss %.4f (unigram baseline %.4f), checkpoint %s\n",
                (long long)res.steps_done, fmt_duration(res.seconds).c_str(), m.st.val_loss, m.unigram,
                m.P > 1 ? manifest_file(m.opt.out_dir).c_str() : checkpoint_file(m.opt.out_dir).c_str());

    {
        const double state_mb = (double)m.model->n_params() * 4 * 4 / 1048576.0;  // params, grads, m, v
        std::printf("memory: peak RSS %.0f MB (parameters + gradients + AdamW state %.0f MB, activations %.0f MB, "
                    "planned before the first step; a step allocates nothing)\n",
                    peak_rss_mb(), state_mb, (double)m.model->activation_bytes() / 1048576.0);
    }
    profile_report(stdout);
    if (m.opt.summary) {
        if (sample && m.model->experts_sharded()) {
            std::printf("\n(no sample: this rank holds %lld of %lld experts; moe generate --model %s gathers them)\n",
                        (long long)m.model->expert_range().count, (long long)mc.n_expert, m.opt.out_dir.c_str());
        } else if (sample) {
            const int32_t first = m.data->tokens()[m.data->n_train()];
            const std::string text = sample(*m.model, m.tok, first, m.opt.sample_tokens, tc.seed);
            std::printf("\n--- sample (temperature 0.8) ---\n%s%s\n--------------------------------\n\n",
                        m.tok.decode({first}).c_str(), text.c_str());
        }
        print_expert_table(m.last_load, mc);
        if (mc.any_moe())
            std::printf("picture of the routing: moe routing --checkpoint %s --text \"...\" --out routing.png\n",
                        m.opt.out_dir.c_str());
    }
    std::fflush(stdout);
    return res;
}

TrainResult train(Config cfg, const TrainOptions& opt, const SampleFn& sample, GradientSync* sync) {
    Trainer t(std::move(cfg), opt, sync);
    return t.run(sample);
}

}  // namespace moe
