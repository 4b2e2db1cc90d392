// moe: command line entry point. main() declares the subcommands (one add_* function each) and
// dispatches to one cmd_* function each, which calls the public API (include/moe/) and prints.
// moe::error is caught once, in main, and printed as one line naming the file/field/value, with
// exit status 1.
#include <CLI/CLI.hpp>

#include <moe/moe.h>
#include <moe/server.h>
#include <moe/viz.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

namespace {

const char* kDefaultConfig = "configs/default.json";

std::string with_commas(int64_t v) {
    std::string s = std::to_string(v < 0 ? -v : v);
    for (int i = (int)s.size() - 3; i > 0; i -= 3) s.insert(i, ",");
    return v < 0 ? "-" + s : s;
}

// ------------------------------------------------------------------ train

struct TrainArgs {
    CLI::App* cmd = nullptr;
    std::string config = kDefaultConfig;
    moe::TrainOptions opt;
    bool no_sample = false;
};

CLI::App* add_train(CLI::App& app, TrainArgs& a) {
    a.cmd = app.add_subcommand("train", "train a model (no arguments: the default MoE on Tiny Shakespeare)");
    a.cmd->add_option("--config", a.config,
                      "model/training config (JSON); with --resume and no --config: the checkpoint's");
    a.cmd->add_option("--data", a.opt.data_override, "training text file (overrides train.data)");
    a.cmd->add_option("--steps", a.opt.steps, "total optimizer steps (also when resuming)");
    a.cmd->add_option("--grad-accum", a.opt.grad_accum,
                      "micro-batches per optimizer step (overrides train.grad_accum; under mpirun: per rank)");
    a.cmd->add_option("--expert-parallel", a.opt.expert_parallel,
                      "under mpirun: split each MoE layer's experts over groups of P ranks (P divides the ranks "
                      "and model.n_expert; default 1: data parallel only)");
    a.cmd->add_option("--out", a.opt.out_dir, "checkpoint directory (with --resume: the resumed directory)")
        ->capture_default_str();
    a.cmd->add_option("--resume", a.opt.resume_dir, "resume from this checkpoint directory");
    a.cmd->add_option("--init", a.opt.init_path,
                      "fine-tune this model (Hugging Face directory or moe checkpoint): its weights, architecture and "
                      "tokenizer; --config then gives only 'train' (and the router's training fields)");
    a.cmd->add_option("--seed", a.opt.seed, "random seed (overrides train.seed; a resumed run keeps the checkpoint's)");
    a.cmd->add_option("--threads", a.opt.threads, "threads (default: all cores)");
    a.cmd->add_option("--precision", a.opt.precision,
                      "GEMM precision fp32|bf16 (overrides train.precision; fp32 master weights either way)");
    a.cmd->add_option("--log", a.opt.log_path, "write a JSONL log here");
    a.cmd->add_flag("--no-sample", a.no_sample, "skip the sample and expert table at the end");
    return a.cmd;
}

int cmd_train(TrainArgs& a) {
    moe::TrainOptions& o = a.opt;
    if (a.cmd->count("--steps") && o.steps < 0) throw moe::error("--steps must be >= 0, got " + std::to_string(o.steps));
    if (a.cmd->count("--grad-accum") && o.grad_accum < 1)
        throw moe::error("--grad-accum must be >= 1, got " + std::to_string(o.grad_accum));
    if (a.cmd->count("--seed") && o.seed < 0) throw moe::error("--seed must be >= 0, got " + std::to_string(o.seed));
    moe::set_threads(o.threads);  // checks the value (train sets it again)
    // a resumed run keeps writing where it was resumed from unless told otherwise (it would
    // otherwise save into runs/default, where another run's checkpoint may live)
    if (!o.resume_dir.empty() && !a.cmd->count("--out")) o.out_dir = o.resume_dir;
    // resuming without --config: exactly the run that wrote the checkpoint
    o.config_from_checkpoint = !o.resume_dir.empty() && !a.cmd->count("--config");
    std::string config = a.config;
    if (!o.init_path.empty() && !a.cmd->count("--config")) config.clear();  // the train section's defaults
    else if (!o.config_from_checkpoint && config == kDefaultConfig) config = moe::default_config_path();
    o.summary = !a.no_sample;
    moe::train(config, o);
    return 0;
}

// ------------------------------------------------------------------ generate

struct GenerateArgs {
    std::string checkpoint, prompt, dtype, cache_type = "f32";
    moe::SampleOptions sample;
    int64_t seed = 0;
    std::vector<std::string> stop;
    int threads = 0;
    int64_t experts = 0;
    int expert_parallel = 1;
};

// --cache-type of generate / bench / chat / serve
void add_cache_type(CLI::App* c, std::string& type) {
    c->add_option("--cache-type", type, "element type of the KV cache: f32 | f16 | bf16 (f16 / bf16 halve its memory; llama.cpp's --cache-type-k/-v, one type for both)")->capture_default_str();
}

// --expert-parallel of generate / bench / serve
void add_expert_parallel(CLI::App* c, int& p) {
    c->add_option("--expert-parallel", p, "under mpirun -np P: each rank holds 1/P of every MoE layer's experts (P = the ranks; docs/distributed.md)")->capture_default_str();
}

CLI::App* add_generate(CLI::App& app, GenerateArgs& a) {
    CLI::App* c = app.add_subcommand("generate", "generate text from a model");
    c->add_option("--model,--checkpoint", a.checkpoint,
                  "moe checkpoint directory or Hugging Face model directory")->required();
    c->add_option("--prompt", a.prompt, "prompt text")->required();
    c->add_option("--max-tokens", a.sample.max_tokens, "tokens to generate")->capture_default_str();
    c->add_option("--temperature", a.sample.temperature, "sampling temperature (0 = greedy)")->capture_default_str();
    c->add_option("--seed", a.seed, "sampling seed")->capture_default_str();
    c->add_option("--top-k", a.sample.top_k, "sample among the k most likely tokens (0 = all)")->capture_default_str();
    c->add_option("--top-p", a.sample.top_p, "nucleus sampling: smallest set with this probability (1 = all)")
        ->capture_default_str();
    c->add_option("--repetition-penalty", a.sample.repetition_penalty,
                  "divide positive (multiply negative) logits of tokens already present (1 = off)")
        ->capture_default_str();
    c->add_option("--stop", a.stop, "stop when the output contains this text (repeatable; not printed)");
    c->add_option("--threads", a.threads, "threads (default: all cores)");
    c->add_option("--dtype", a.dtype,
                  "weight type of the matmuls: fp32 | bf16 | int8 (router stays fp32; default: the checkpoint's)");
    c->add_option("--experts-per-token", a.experts, "route each token to K experts (default: the model's)");
    add_cache_type(c, a.cache_type);
    add_expert_parallel(c, a.expert_parallel);
    return c;
}

int cmd_generate(GenerateArgs& a) {
    moe::check_sample_options(a.sample, "--");
    if (a.seed < 0) throw moe::error("--seed must be >= 0, got " + std::to_string(a.seed));
    a.sample.seed = (uint64_t)a.seed;
    moe::check_stop_strings(a.stop, "--");
    moe::LoadedModel::check_cache_type(a.cache_type, "generate --cache-type");  // before a long load
    moe::set_threads(a.threads);
    moe::set_expert_parallel(a.expert_parallel);
    if (moe::expert_parallel_follower()) {  // rank 0 prints; this rank runs its experts for it
        moe::follow_expert_parallel(a.checkpoint, "", 0, a.dtype);
        return 0;
    }
    moe::LoadedModel model(a.checkpoint, a.dtype, "generate --dtype");
    if (const std::string note = model.repack_note(); !note.empty()) std::fprintf(stderr, "moe: %s\n", note.c_str());
    model.set_experts_per_token(a.experts);
    model.set_cache_type(a.cache_type, "generate --cache-type");
    if (a.prompt.empty()) throw moe::error("--prompt is empty: give at least one character");
    const std::vector<int32_t> ids = model.encode_prompt(a.prompt);
    std::printf("%s", a.prompt.c_str());
    // the text as it comes (held back while it could still be the start of a stop string)
    moe::generate_text(model, ids, a.sample, a.stop, [](std::string_view s) {
        std::fwrite(s.data(), 1, s.size(), stdout);
        std::fflush(stdout);
    });
    std::printf("\n");
    return 0;
}

// ------------------------------------------------------------------ bench

struct BenchArgs {
    std::string config, checkpoint, dtype;
    moe::BenchOptions opt;
    int threads = 0;
    bool json = false;
    int expert_parallel = 1;
};

CLI::App* add_bench(CLI::App& app, BenchArgs& a) {
    CLI::App* c =
        app.add_subcommand("bench", "inference speed: decode or prefill tokens/s (random weights from a config)");
    c->add_option("--config", a.config, "model config (random weights)");
    c->add_option("--model,--checkpoint", a.checkpoint, "moe checkpoint or Hugging Face model directory (its weights)");
    c->add_option("--mode", a.opt.mode, "decode | prefill")->capture_default_str();
    c->add_option("--dtype", a.dtype,
                  "weight type of the matmuls: fp32 | bf16 | int8 (router stays fp32; default fp32, or the checkpoint's)");
    c->add_option("--threads", a.threads, "threads (default: all cores)");
    c->add_option("--batch", a.opt.batch, "decode: sequences decoding together")->capture_default_str();
    c->add_option("--tokens", a.opt.tokens, "decode: steps per timed run")->capture_default_str();
    c->add_option("--prompt", a.opt.prompt, "prefill: prompt tokens (at most n_ctx)")->capture_default_str();
    c->add_option("--seconds", a.opt.min_seconds, "decode: time at least this long")->capture_default_str();
    c->add_flag("--read-probe", a.opt.read_probe,
                "decode: after each run of --tokens steps read as many bytes as they read of weights from a 512 MB "
                "buffer (build/bench/stream's read loop) and report that read bandwidth beside the decode's");
    add_cache_type(c, a.opt.cache_type);
    c->add_flag("--json", a.json, "print one JSON object");
    add_expert_parallel(c, a.expert_parallel);
    return c;
}

void print_bench(const moe::BenchReport& r) {
    const moe::BenchResult& b = r.result;
    std::printf("%s: %s params total, %s active | %s, %s weights, %d threads\n", r.model.c_str(),
                with_commas(r.total_params).c_str(), with_commas(r.active_params).c_str(), r.mode.c_str(),
                r.dtype.c_str(), r.threads);
    if (r.mode == "decode")
        std::printf("decode: %.1f tokens/s (batch %lld), %.1f MB of weights per token, %.2f GB/s of weights, "
                    "%.1f thread forks per step\n",
                    b.tokens_per_sec, (long long)r.batch, b.weight_bytes_per_token / 1e6, b.gbytes_per_sec,
                    b.parallel_regions_per_step);
    if (r.mode == "decode" && b.probe_gbytes_per_sec > 0)
        std::printf("read probe between the runs: %.2f GB/s read-only; the weights were read at %.2f of it\n",
                    b.probe_gbytes_per_sec, b.gbytes_per_sec / b.probe_gbytes_per_sec);
    if (r.mode != "decode")
        std::printf("prefill: %.1f tokens/s over %lld tokens, %.1f GFLOP/s\n", b.tokens_per_sec, (long long)b.tokens,
                    b.gflops);
    std::printf("memory: peak RSS %.0f MB, weights %.0f MB, KV cache %.0f MB (%s)\n", b.peak_rss_mb, b.weights_mb,
                b.kv_mb, r.cache_type.c_str());
    if (b.expert_parallel > 1) {
        double total = 0;
        for (double x : b.expert_bytes_rank) total += x;
        std::printf("expert parallel %d: expert weights %.1f MB in all;", b.expert_parallel, total / 1048576.0);
        for (size_t q = 0; q < b.expert_bytes_rank.size(); ++q)
            std::printf(" rank %zu holds %.1f MB (peak RSS %.0f MB)%s", q, b.expert_bytes_rank[q] / 1048576.0,
                        b.peak_rss_mb_rank[q], q + 1 < b.expert_bytes_rank.size() ? "," : "\n");
    }
}

int cmd_bench(const BenchArgs& a) {
    moe::set_threads(a.threads);
    moe::set_expert_parallel(a.expert_parallel);
    if (moe::expert_parallel_follower()) {  // rank 0 prints; this rank runs its experts for it
        if (a.config.empty() == a.checkpoint.empty()) return 0;  // rank 0 reports it
        moe::follow_expert_parallel(a.checkpoint, a.config, 1, a.dtype);
        return 0;
    }
    const moe::BenchReport r = moe::bench(a.config, a.checkpoint, a.dtype, a.opt);
    if (a.json) std::printf("%s\n", moe::to_json(r).c_str());
    else print_bench(r);
    moe::print_profile(stdout);  // MOE_PROFILE=1: where the time went
    return 0;
}

// ------------------------------------------------------------------ quantize

struct QuantizeArgs {
    std::string checkpoint, dtype, out;
};

CLI::App* add_quantize(CLI::App& app, QuantizeArgs& a) {
    CLI::App* c = app.add_subcommand("quantize", "write an inference checkpoint with bf16 or int8 matmul weights");
    c->add_option("--checkpoint", a.checkpoint, "checkpoint directory to convert")->required();
    c->add_option("--dtype", a.dtype, "bf16 | int8 (Q8_0: blocks of 32, one fp32 scale each)")->required();
    c->add_option("--out", a.out, "output checkpoint directory")->required();
    return c;
}

int cmd_quantize(const QuantizeArgs& a) {
    const moe::QuantizeResult r = moe::quantize(a.checkpoint, a.dtype, a.out);
    std::printf("wrote %s: %s weights, %.2f MB (from %.2f MB with optimizer state; weights alone %.2f MB fp32)\n",
                r.file.c_str(), r.dtype.c_str(), r.bytes / 1e6, r.input_bytes / 1e6, r.fp32_weight_bytes / 1e6);
    return 0;
}

// ------------------------------------------------------------------ export

struct ExportArgs {
    std::string model, out;
    moe::ExportOptions opt;
};

CLI::App* add_export(CLI::App& app, ExportArgs& a) {
    CLI::App* c = app.add_subcommand("export", "write a model in another format (hf: a directory transformers loads; gguf: one file llama.cpp reads)");
    c->add_option("--model,--checkpoint", a.model, "moe checkpoint or Hugging Face model directory")->required();
    c->add_option("--format", a.opt.format,
                  "hf (Hugging Face safetensors directory) | gguf (one file) | moe (one checkpoint.bin: gathers a "
                  "sharded expert-parallel checkpoint, optimizer state kept)")->required();
    c->add_option("--out", a.out, "output directory (new or empty)")->required();
    c->add_option("--max-shard-size", a.opt.max_shard_size, "hf: a new safetensors shard above this size (5GB, 500MB, 2GiB)")
        ->capture_default_str();
    c->add_option("--type", a.opt.type, "gguf: the matrices' type f32 | f16 | bf16 | q8_0 | q4_0 | q4_k | q5_k | q6_k (default f16; not for --format hf)");
    c->add_flag("--force", a.opt.force, "write into a non-empty --out, replacing the model files there");
    return c;
}

int cmd_export(ExportArgs& a) {
    a.opt.progress = [](std::string_view s) {
        std::printf("%.*s\n", (int)s.size(), s.data());
        std::fflush(stdout);
    };
    const moe::ExportResult r = moe::export_model(a.model, a.out, a.opt);
    for (const std::string& w : r.warnings) std::fprintf(stderr, "moe: warning: %s\n", w.c_str());
    std::printf("exported %s to %s: %s, %s, %lld tensors, %.2f MB\n", a.model.c_str(), a.out.c_str(), r.family.c_str(),
                r.dtype.c_str(), (long long)r.tensors, r.tensor_bytes / 1e6);
    return 0;
}

// ------------------------------------------------------------------ params

struct ParamsArgs {
    std::string config;
    bool json = false;
};

CLI::App* add_params(CLI::App& app, ParamsArgs& a) {
    CLI::App* c = app.add_subcommand("params", "count total and active parameters of a config");
    c->add_option("--config", a.config, "config (JSON)")->required();
    c->add_flag("--json", a.json, "print {\"total\": ..., \"active\": ...}");
    return c;
}

int cmd_params(const ParamsArgs& a) {
    const moe::ParamReport r = moe::param_report(a.config);
    if (a.json) {
        std::printf("%s\n", moe::to_json(r).c_str());
        return 0;
    }
    std::printf("config: %s\n", r.config.c_str());
    std::printf("total parameters:  %s\n", with_commas(r.total).c_str());
    std::printf("active per token:  %s (%.1f%%)\n", with_commas(r.active).c_str(),
                100.0 * (double)r.active / (double)r.total);
    std::printf("FLOPs per token:   %s forward, %s training (sequence of %lld tokens)\n",
                with_commas((int64_t)r.forward_flops_per_token).c_str(),
                with_commas((int64_t)r.training_flops_per_token).c_str(), (long long)r.seq_len);
    std::printf("weights (routers, norms, embeddings fp32): stored / read per decoded token\n");
    for (const moe::ParamReport::Weights& w : r.weights)
        std::printf("  %-5s %12.3f GB / %10.3f GB\n", w.dtype.c_str(), w.bytes_total / 1e9, w.bytes_per_token / 1e9);
    return 0;
}

// ------------------------------------------------------------------ routing

// the picture of the experts each token of a text went to, per layer
struct RoutingArgs {
    std::string checkpoint, text, out;
    int threads = 0;
    int64_t experts = 0;
    bool weights = false;
};

CLI::App* add_routing(CLI::App& app, RoutingArgs& a) {
    CLI::App* c = app.add_subcommand("routing", "draw which experts each token of a text is routed to (PNG)");
    c->add_option("--model,--checkpoint", a.checkpoint, "moe checkpoint or Hugging Face model directory")->required();
    c->add_option("--text", a.text, "text to route (at most n_ctx tokens)")->required();
    c->add_option("--out", a.out, "PNG file to write")->required();
    c->add_option("--threads", a.threads, "threads (default: all cores)");
    c->add_option("--experts-per-token", a.experts, "route each token to K experts (default: the model's)");
    c->add_flag("--weights", a.weights, "fade each slot's colour by its combine weight");
    return c;
}

int cmd_routing(const RoutingArgs& a) {
    moe::set_threads(a.threads);
    moe::LoadedModel model(a.checkpoint, "fp32");  // the picture's forward runs on fp32 weights
    model.set_experts_per_token(a.experts);
    moe::viz::RoutingMapOptions ro;
    ro.title = "routing: " + a.checkpoint;
    ro.shade_by_weight = a.weights;
    moe::viz::write_routing_map(model, a.text, a.out, ro);
    std::printf("wrote %s\n", a.out.c_str());
    return 0;
}

// ------------------------------------------------------------------ logits, tokenize

struct LogitsArgs {
    std::string model, tokens, out, dtype;
    int threads = 0;
    int expert_parallel = 1;
};

CLI::App* add_logits(CLI::App& app, LogitsArgs& a) {
    CLI::App* c = app.add_subcommand("logits", "logits of one forward over token ids, as raw float32 (tokens, vocab)");
    c->add_option("--model", a.model, "moe checkpoint or Hugging Face model directory")->required();
    c->add_option("--tokens", a.tokens, "comma-separated token ids (no BOS is added)")->required();
    c->add_option("--out", a.out, "file to write: little-endian float32, row-major (tokens, vocab)")->required();
    c->add_option("--dtype", a.dtype, "weight type of the matmuls: fp32 | bf16 | int8 (default: as stored)");
    c->add_option("--threads", a.threads, "threads (default: all cores)");
    add_expert_parallel(c, a.expert_parallel);
    return c;
}

std::vector<int32_t> parse_ids(const std::string& s, const char* what) {
    std::vector<int32_t> ids;
    size_t i = 0;
    while (i <= s.size()) {
        const size_t j = std::min(s.find(',', i), s.size());
        const std::string item = s.substr(i, j - i);
        char* end = nullptr;
        errno = 0;
        const long long v = std::strtoll(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || errno == ERANGE || v < 0 || v > INT32_MAX)
            throw moe::error(std::string(what) + ": '" + item + "' is not a token id (a comma-separated list of integers >= 0)");
        ids.push_back((int32_t)v);
        i = j + 1;
    }
    return ids;
}

int cmd_logits(const LogitsArgs& a) {
    moe::set_threads(a.threads);
    const std::vector<int32_t> ids = parse_ids(a.tokens, "--tokens");
    moe::set_expert_parallel(a.expert_parallel);
    if (moe::expert_parallel_follower()) {  // rank 0 writes the file; this rank runs its experts for it
        moe::follow_expert_parallel(a.model, "", 0, a.dtype);
        return 0;
    }
    moe::LoadedModel model(a.model, a.dtype, "logits --dtype");
    const std::vector<float> l = model.logits(ids);
    moe::write_file(a.out, std::string_view(reinterpret_cast<const char*>(l.data()), l.size() * sizeof(float)));
    std::printf("wrote %s: %zu x %lld float32 logits\n", a.out.c_str(), ids.size(), (long long)model.vocab_size());
    return 0;
}

struct TokenizeArgs {
    std::string model, text;
    bool no_special = false;
};

CLI::App* add_tokenize(CLI::App& app, TokenizeArgs& a) {
    CLI::App* c = app.add_subcommand("tokenize", "print the token ids of a text as a JSON array");
    c->add_option("--model", a.model, "moe checkpoint or Hugging Face model directory")->required();
    c->add_option("--text", a.text, "text to encode")->required();
    c->add_flag("--no-special", a.no_special, "no BOS / EOS from the post-processor (add_special_tokens=False)");
    return c;
}

int cmd_tokenize(const TokenizeArgs& a) {
    const std::vector<int32_t> ids = moe::tokenize(a.model, a.text, !a.no_special);
    std::string out = "[";
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
    std::printf("%s]\n", out.c_str());
    return 0;
}

// ------------------------------------------------------------------ plot

// pictures of a training log
struct PlotArgs {
    std::vector<std::string> logs;
    std::string out;
};

CLI::App* add_plot(CLI::App& app, PlotArgs& a) {
    CLI::App* c = app.add_subcommand("plot", "draw loss curves and expert load over time from a --log JSONL");
    c->add_option("--log", a.logs, "JSONL log written by moe train --log (several: compare.png of the runs)")
        ->required();
    c->add_option("--out", a.out, "directory for loss.png and load_layer{l}.png")->required();
    return c;
}

int cmd_plot(const PlotArgs& a) {
    if (a.logs.size() > 1) {
        for (const std::string& w : moe::viz::plot_compare(a.logs, a.out)) std::printf("wrote %s\n", w.c_str());
        return 0;
    }
    const moe::viz::PlotResult pr = moe::viz::plot_train_log(a.logs.front(), a.out);
    for (const std::string& n : pr.notes) std::printf("note: %s\n", n.c_str());
    for (const std::string& w : pr.written) std::printf("wrote %s\n", w.c_str());
    return 0;
}

// ------------------------------------------------------------------ chat

struct ChatArgs {
    std::string model, system, chat_template, dtype, cache_type = "f32";
    moe::SampleOptions sample;
    int64_t seed = 0, ctx_size = 0, experts = 0;
    std::vector<std::string> stop;
    int threads = 0;
    bool verbose_prompt = false;
};

CLI::App* add_chat(CLI::App& app, ChatArgs& a) {
    CLI::App* c = app.add_subcommand("chat", "chat with a model in the terminal (its chat template, streamed replies)");
    c->add_option("--model,--checkpoint", a.model, "Hugging Face model directory or moe checkpoint")->required();
    c->add_option("--system", a.system, "system message at the start of the conversation");
    c->add_option("--chat-template", a.chat_template, "Jinja chat template file (default: the model's own)");
    a.sample.max_tokens = 512;
    a.sample.temperature = 0.8;
    c->add_option("--max-tokens", a.sample.max_tokens, "longest reply, in tokens")->capture_default_str();
    c->add_option("--temperature", a.sample.temperature, "sampling temperature (0 = greedy)")->capture_default_str();
    c->add_option("--top-k", a.sample.top_k, "sample among the k most likely tokens (0 = all)")->capture_default_str();
    c->add_option("--top-p", a.sample.top_p, "nucleus sampling (1 = all)")->capture_default_str();
    c->add_option("--repetition-penalty", a.sample.repetition_penalty, "repetition penalty (1 = off)")
        ->capture_default_str();
    c->add_option("--seed", a.seed, "sampling seed (reply i uses seed + i)")->capture_default_str();
    c->add_option("--stop", a.stop, "also end a reply at this text (repeatable)");
    c->add_option("--ctx-size", a.ctx_size, "context in tokens (default: the model's, at most 4096 for Hugging Face)");
    c->add_option("--threads", a.threads, "threads (default: all cores)");
    c->add_option("--dtype", a.dtype, "weight type of the matmuls: fp32 | bf16 | int8 (default: as stored)");
    c->add_option("--experts-per-token", a.experts, "route each token to K experts (default: the model's)");
    add_cache_type(c, a.cache_type);
    c->add_flag("--verbose-prompt", a.verbose_prompt, "print each rendered prompt to stderr");
    return c;
}

// Set by SIGINT while a reply streams: the reply ends, the chat goes on. At the prompt, Ctrl-C
// keeps its default meaning (leave).
std::atomic<bool> g_chat_cancel{false};
extern "C" void chat_on_sigint(int) { g_chat_cancel.store(true); }

int cmd_chat(ChatArgs& a) {
    moe::check_sample_options(a.sample, "--");
    if (a.seed < 0) throw moe::error("--seed must be >= 0, got " + std::to_string(a.seed));
    if (a.ctx_size < 0) throw moe::error("--ctx-size must be >= 0, got " + std::to_string(a.ctx_size));
    a.sample.seed = (uint64_t)a.seed;
    moe::check_stop_strings(a.stop, "--");
    moe::LoadedModel::check_cache_type(a.cache_type, "chat --cache-type");  // before a long load
    moe::set_threads(a.threads);
    moe::LoadedModel model(a.model, a.dtype, "chat --dtype", a.ctx_size);
    if (const std::string note = model.repack_note(); !note.empty()) std::fprintf(stderr, "moe: %s\n", note.c_str());
    model.set_experts_per_token(a.experts);
    model.set_cache_type(a.cache_type, "chat --cache-type");
    if (!a.chat_template.empty()) model.set_chat_template(moe::read_text(a.chat_template, "--chat-template"));
    model.tokenize("", false);  // a model without a tokenizer fails here, before the first message
    moe::ChatSession chat(model, a.sample, a.system, a.stop);
    std::printf("moe chat: %s (%s, context %lld tokens, %s)\n", a.model.c_str(), model.weight_type().c_str(),
                (long long)model.context_length(),
                model.has_chat_template() ? "its chat template" : "no chat template: plain 'role: content' lines");
    std::printf("/reset clears the history, /exit or Ctrl-D leaves, Ctrl-C stops a reply; end a line with \\ to go on\n");
    std::string line;
    for (;;) {
        std::printf("> ");
        std::fflush(stdout);
        std::string msg;
        bool eof = true;
        while (std::getline(std::cin, line)) {
            eof = false;
            if (!line.empty() && line.back() == '\\') {  // continued on the next line
                msg += line.substr(0, line.size() - 1) + "\n";
                eof = true;
                continue;
            }
            msg += line;
            break;
        }
        if (eof && msg.empty()) break;
        if (msg == "/exit" || msg == "/quit") break;
        if (msg == "/reset") {
            chat.reset();
            std::printf("(history cleared)\n");
            continue;
        }
        if (msg == "/help" || (!msg.empty() && msg[0] == '/')) {
            std::printf("commands: /reset (clear the history), /exit (leave); anything else is a message\n");
            continue;
        }
        if (msg.find_first_not_of(" \t\r\n") == std::string::npos) continue;
        g_chat_cancel.store(false);
        struct sigaction sa = {}, old = {};
        sa.sa_handler = chat_on_sigint;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &old);
        try {
            const moe::ChatSession::Reply r = chat.reply(
                msg,
                [](std::string_view s) {
                    std::fwrite(s.data(), 1, s.size(), stdout);
                    std::fflush(stdout);
                },
                &g_chat_cancel);
            if (a.verbose_prompt)
                std::fprintf(stderr, "--- prompt (%lld tokens) ---\n%s\n--- end of prompt ---\n",
                             (long long)r.prompt_tokens, chat.last_prompt().c_str());
            std::printf("%s\n", r.cancelled ? " (stopped)" : "");
            if (r.dropped) std::printf("(%lld earliest messages left out to fit the context)\n", (long long)r.dropped);
        } catch (const moe::error& e) {  // one bad turn (too long, a template that raises) is not the end
            std::fflush(stdout);
            std::fprintf(stderr, "moe: error: %s\n", e.what());
        }
        sigaction(SIGINT, &old, nullptr);
    }
    std::printf("\n");
    return 0;
}

// ------------------------------------------------------------------ serve

struct ServeArgs {
    moe::ServeOptions opt;
    int expert_parallel = 1;
};

CLI::App* add_serve(CLI::App& app, ServeArgs& a) {
    CLI::App* c = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching (docs/serving.md)");
    CLI::Option* model = c->add_option("--model,--checkpoint", a.opt.model, "Hugging Face model directory or moe checkpoint");
    CLI::Option* config = c->add_option("--config", a.opt.config, "instead of --model: random weights of this config (benchmarks)");
    model->excludes(config);
    c->add_option("--init-seed", a.opt.init_seed, "seed of the random weights of --config")->capture_default_str();
    c->add_option("--host", a.opt.host, "address to bind")->capture_default_str();
    c->add_option("--port", a.opt.port, "port (0: any free one)")->capture_default_str();
    c->add_option("--parallel", a.opt.parallel, "sequences decoding at once")->capture_default_str();
    c->add_option("--ctx-size", a.opt.ctx_size, "context of each sequence (default: the model's, at most 4096 for Hugging Face)");
    c->add_option("--kv-size", a.opt.kv_size,
                  "KV-cache pool in positions, shared by all sequences, at least --ctx-size (default: parallel x context)");
    c->add_option("--threads", a.opt.threads, "threads (default: all cores)");
    c->add_option("--api-key", a.opt.api_key, "require 'Authorization: Bearer KEY' (all but /health)");
    c->add_option("--dtype", a.opt.dtype, "weight type of the matmuls: fp32 | bf16 | int8 (default: as stored)");
    add_cache_type(c, a.opt.cache_type);
    c->add_option("--chat-template", a.opt.chat_template, "Jinja chat template file (default: the model's own)");
    c->add_option("--batch-tokens", a.opt.batch_tokens, "rows per engine step: decode rows, then prompt chunks")
        ->capture_default_str();
    c->add_option("--max-queue", a.opt.max_queue, "requests waiting for a slot before 429 (Retry-After)")->capture_default_str();
    c->add_option("--timeout", a.opt.timeout, "seconds a read or write of a client's connection may block")->capture_default_str();
    c->add_option("--http-threads", a.opt.http_threads, "connections served at once (default: parallel + max-queue + 16)");
    add_expert_parallel(c, a.expert_parallel);
    return c;
}

int cmd_serve(ServeArgs& a) {
    moe::set_expert_parallel(a.expert_parallel);
    if (moe::expert_parallel_follower()) {  // rank 0 serves HTTP; this rank runs its experts for it
        moe::set_threads(a.opt.threads);
        moe::follow_expert_parallel(a.opt.model, a.opt.config, a.opt.init_seed, a.opt.dtype, a.opt.ctx_size);
        return 0;
    }
    a.opt.on_listening = [](const std::string& url) {
        std::printf("moe serve: listening on %s, loading the model\n", url.c_str());
        std::fflush(stdout);
    };
    a.opt.on_note = [](const std::string& line) {
        std::printf("moe serve: %s\n", line.c_str());
        std::fflush(stdout);
    };
    a.opt.on_ready = [](const std::string& url) {
        std::printf("moe serve: ready at %s (OpenAI API under %s/v1)\n", url.c_str(), url.c_str());
        std::fflush(stdout);
    };
    return moe::serve(a.opt);
}

// The one error line and exit status 1. Under mpirun, an error every rank meets (a bad config) is
// printed once: rank 0 prints it and exits at once, which makes mpirun end the other ranks; another
// rank waits a moment first and prints its error (with its rank) only if it is still running then,
// i.e. when rank 0 did not fail. Exits without MPI_Finalize, so mpirun ends the job.
int report_error(const std::string& msg) {
    std::fflush(stdout);
    if (moe::world_size() <= 1) {
        std::fprintf(stderr, "moe: error: %s\n", msg.c_str());
        return 1;
    }
    const int r = moe::world_rank();
    if (r == 0) {
        std::fprintf(stderr, "moe: error: %s\n", msg.c_str());
    } else {
        std::this_thread::sleep_for(std::chrono::seconds(5));
        std::fprintf(stderr, "moe: error: rank %d: %s\n", r, msg.c_str());
    }
    std::fflush(stderr);
    std::_Exit(1);
}

// libgomp's threads wait for the next parallel region by spinning GOMP_SPINCOUNT times before
// they sleep: 300,000 spins when OMP_WAIT_POLICY is unset (about 3.5 ms on the s19 Xeon, a whole
// scheduler time slice), none when it is PASSIVE. When another process holds a core, a spinning
// waiter burns the time its descheduled partner needs: makemoe at 2 threads fell from 5.3-5.7k
// tok/s (PASSIVE) to 1.5-3.5k, with 12-45 CPU s a run instead of 6.5. On a quiet host the spin is
// what makes 2 threads pay (11.4k tok/s against 8.4k PASSIVE and 5.9k on 1 thread): a step forks
// about 100 regions nearly back to back, and a sleeping worker takes tens of microseconds to wake.
// 3,000 spins (about 35 us here) keep 94-96% of the quiet-host speed and most of the loaded-host
// one (docs/performance.md, #24 s19). libgomp reads the variables once, before main (libc resets
// a variable set earlier, in .preinit_array, before libgomp's constructor reads it), so
// `moe train` sets GOMP_SPINCOUNT and runs itself again, once, when the user set neither variable.
// Waiting changes no result; OMP_WAIT_POLICY (PASSIVE on a shared host, ACTIVE on a dedicated
// one) or GOMP_SPINCOUNT keeps the user's choice.
void exec_with_bounded_spin(int argc, char** argv) {
    if (argc < 2 || std::string_view(argv[1]) != "train") return;
    if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
    if (::setenv("GOMP_SPINCOUNT", "3000", 1) != 0) return;
    ::execv("/proc/self/exe", argv);  // returns only if it failed: train with libgomp's default
    ::unsetenv("GOMP_SPINCOUNT");
}

}  // namespace

int main(int argc, char** argv) {
    exec_with_bounded_spin(argc, argv);
    CLI::App app{"moe: Mixture-of-Experts Transformer engine (train, inspect, generate)"};
    app.require_subcommand(0, 1);
    TrainArgs train;
    GenerateArgs generate;
    BenchArgs bench;
    QuantizeArgs quantize;
    ParamsArgs params;
    RoutingArgs routing;
    PlotArgs plot;
    LogitsArgs logits;
    TokenizeArgs tokenize;
    ChatArgs chat;
    ExportArgs export_args;
    add_train(app, train);
    CLI::App* generate_cmd = add_generate(app, generate);
    CLI::App* bench_cmd = add_bench(app, bench);
    CLI::App* quantize_cmd = add_quantize(app, quantize);
    CLI::App* params_cmd = add_params(app, params);
    CLI::App* routing_cmd = add_routing(app, routing);
    CLI::App* plot_cmd = add_plot(app, plot);
    CLI::App* logits_cmd = add_logits(app, logits);
    CLI::App* tokenize_cmd = add_tokenize(app, tokenize);
    CLI::App* chat_cmd = add_chat(app, chat);
    CLI::App* export_cmd = add_export(app, export_args);
    ServeArgs serve;
    CLI::App* serve_cmd = add_serve(app, serve);

    // Usage errors get the same one-line form and exit status as every other error.
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::string msg = e.what();
        for (char& c : msg)
            if (c == '\n') c = ' ';
        return report_error(msg + " (see --help)");
    }
    // A write past a file-size limit (ulimit -f) must fail like a full disk (EFBIG, reported and
    // the previous checkpoint kept), not kill the process with SIGXFSZ.
    std::signal(SIGXFSZ, SIG_IGN);

    try {
        moe::apply_environment();
        if (app.got_subcommand(generate_cmd)) return cmd_generate(generate);
        if (app.got_subcommand(bench_cmd)) return cmd_bench(bench);
        if (app.got_subcommand(quantize_cmd)) return cmd_quantize(quantize);
        if (app.got_subcommand(params_cmd)) return cmd_params(params);
        if (app.got_subcommand(routing_cmd)) return cmd_routing(routing);
        if (app.got_subcommand(plot_cmd)) return cmd_plot(plot);
        if (app.got_subcommand(logits_cmd)) return cmd_logits(logits);
        if (app.got_subcommand(tokenize_cmd)) return cmd_tokenize(tokenize);
        if (app.got_subcommand(chat_cmd)) return cmd_chat(chat);
        if (app.got_subcommand(export_cmd)) return cmd_export(export_args);
        if (app.got_subcommand(serve_cmd)) return cmd_serve(serve);
        return cmd_train(train);  // also the default with no subcommand
    } catch (const moe::error& e) {
        return report_error(e.what());
    } catch (const std::bad_alloc&) {
        return report_error("out of memory");
    } catch (const std::exception& e) {  // e.g. std::filesystem::filesystem_error (it names the path)
        return report_error(e.what());
    }
}
