// moe: command line entry point. Parses arguments and calls the library; moe::error is caught here
// and printed as one line naming the file/field/value, with exit status 1.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "core/error.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "infer/bench.h"
#include "kernels/qmatmul.h"
#include "infer/generate.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "model/params.h"
#include "train/data.h"
#include "train/trainer.h"
#include "viz/plot.h"
#include "viz/routing_map.h"

using namespace moe;

static const char* kDefaultConfig = "configs/default.json";

static std::string with_commas(int64_t v) {
    std::string s = std::to_string(v < 0 ? -v : v);
    for (int i = (int)s.size() - 3; i > 0; i -= 3) s.insert(i, ",");
    return v < 0 ? "-" + s : s;
}

// A config may leave vocab_size to the tokenizer; `moe params` then reads it from the data file.
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

// --experts-per-token K (0 = keep the checkpoint's K): model and config change together.
static void set_experts_per_token(Checkpoint& ck, int64_t K) {
    if (K == 0) return;
    ck.model->set_experts_per_token(K);
    ck.config.model.n_expert_used = K;
}

int main(int argc, char** argv) {
    CLI::App app{"moe: Mixture-of-Experts Transformer engine (train, inspect, generate)"};
    app.require_subcommand(0, 1);

    // train
    auto* train_cmd = app.add_subcommand("train", "train a model (no arguments: the default MoE on Tiny Shakespeare)");
    std::string config_path = kDefaultConfig;
    TrainOptions topt;
    train_cmd->add_option("--config", config_path,
                          "model/training config (JSON); with --resume and no --config: the checkpoint's");
    train_cmd->add_option("--data", topt.data_override, "training text file (overrides train.data)");
    train_cmd->add_option("--steps", topt.steps, "total optimizer steps (also when resuming)");
    train_cmd->add_option("--out", topt.out_dir, "checkpoint directory (with --resume: the resumed directory)")
        ->capture_default_str();
    train_cmd->add_option("--resume", topt.resume_dir, "resume from this checkpoint directory");
    train_cmd->add_option("--seed", topt.seed,
                          "random seed (overrides train.seed; a resumed run keeps the checkpoint's)");
    train_cmd->add_option("--threads", topt.threads, "threads (default: all cores)");
    train_cmd->add_option("--precision", topt.precision,
                          "GEMM precision fp32|bf16 (overrides train.precision; fp32 master weights either way)");
    train_cmd->add_option("--log", topt.log_path, "write a JSONL log here");
    bool no_summary = false;
    train_cmd->add_flag("--no-sample", no_summary, "skip the sample and expert table at the end");

    // generate
    auto* gen_cmd = app.add_subcommand("generate", "generate text from a checkpoint");
    std::string ckpt_dir, prompt;
    SampleOptions sopt;
    int64_t max_tokens = 200;
    int64_t gen_seed = 0;
    int gen_threads = 0;
    gen_cmd->add_option("--checkpoint", ckpt_dir, "checkpoint directory")->required();
    gen_cmd->add_option("--prompt", prompt, "prompt text")->required();
    gen_cmd->add_option("--max-tokens", max_tokens, "tokens to generate")->capture_default_str();
    gen_cmd->add_option("--temperature", sopt.temperature, "sampling temperature (0 = greedy)")->capture_default_str();
    gen_cmd->add_option("--seed", gen_seed, "sampling seed")->capture_default_str();
    gen_cmd->add_option("--top-k", sopt.top_k, "sample among the k most likely tokens (0 = all)")->capture_default_str();
    gen_cmd->add_option("--top-p", sopt.top_p, "nucleus sampling: smallest set with this probability (1 = all)")
        ->capture_default_str();
    gen_cmd->add_option("--repetition-penalty", sopt.repetition_penalty,
                        "divide positive (multiply negative) logits of tokens already present (1 = off)")
        ->capture_default_str();
    std::vector<std::string> stops;
    gen_cmd->add_option("--stop", stops, "stop when the output contains this text (repeatable; not printed)");
    gen_cmd->add_option("--threads", gen_threads, "threads (default: all cores)");
    std::string gen_dtype;
    gen_cmd->add_option("--dtype", gen_dtype,
                        "weight type of the matmuls: fp32 | bf16 | int8 (router stays fp32; default: the checkpoint's)");
    int64_t gen_k = 0;
    gen_cmd->add_option("--experts-per-token", gen_k, "route each token to K experts (default: the model's)");

    // bench
    auto* bench_cmd = app.add_subcommand("bench", "inference speed: decode or prefill tokens/s (random weights from a config)");
    std::string bench_config, bench_ckpt, bench_dtype;
    BenchOptions bopt;
    int bench_threads = 0;
    bool bench_json = false;
    bench_cmd->add_option("--config", bench_config, "model config (random weights)");
    bench_cmd->add_option("--checkpoint", bench_ckpt, "checkpoint directory (its weights)");
    bench_cmd->add_option("--mode", bopt.mode, "decode | prefill")->capture_default_str();
    bench_cmd->add_option("--dtype", bench_dtype,
                          "weight type of the matmuls: fp32 | bf16 | int8 (router stays fp32; default fp32, or the checkpoint's)");
    bench_cmd->add_option("--threads", bench_threads, "threads (default: all cores)");
    bench_cmd->add_option("--batch", bopt.batch, "decode: sequences decoding together")->capture_default_str();
    bench_cmd->add_option("--tokens", bopt.tokens, "decode: steps per timed run")->capture_default_str();
    bench_cmd->add_option("--prompt", bopt.prompt, "prefill: prompt tokens (at most n_ctx)")->capture_default_str();
    bench_cmd->add_option("--seconds", bopt.min_seconds, "decode: time at least this long")->capture_default_str();
    bench_cmd->add_flag("--json", bench_json, "print one JSON object");

    // quantize
    auto* quant_cmd = app.add_subcommand("quantize", "write an inference checkpoint with bf16 or int8 matmul weights");
    std::string quant_ckpt, quant_out, quant_dtype;
    quant_cmd->add_option("--checkpoint", quant_ckpt, "checkpoint directory to convert")->required();
    quant_cmd->add_option("--dtype", quant_dtype, "bf16 | int8 (Q8_0: blocks of 32, one fp32 scale each)")->required();
    quant_cmd->add_option("--out", quant_out, "output checkpoint directory")->required();

    // params
    auto* params_cmd = app.add_subcommand("params", "count total and active parameters of a config");
    std::string params_config;
    bool params_json = false;
    params_cmd->add_option("--config", params_config, "config (JSON)")->required();
    params_cmd->add_flag("--json", params_json, "print {\"total\": ..., \"active\": ...}");

    // routing (picture: the experts each token of a text went to, per layer)
    auto* routing_cmd = app.add_subcommand("routing", "draw which experts each token of a text is routed to (PNG)");
    std::string routing_ckpt, routing_text, routing_out;
    int routing_threads = 0;
    bool routing_weights = false;
    routing_cmd->add_option("--checkpoint", routing_ckpt, "checkpoint directory")->required();
    routing_cmd->add_option("--text", routing_text, "text to route (at most n_ctx tokens)")->required();
    routing_cmd->add_option("--out", routing_out, "PNG file to write")->required();
    routing_cmd->add_option("--threads", routing_threads, "threads (default: all cores)");
    int64_t routing_k = 0;
    routing_cmd->add_option("--experts-per-token", routing_k, "route each token to K experts (default: the model's)");
    routing_cmd->add_flag("--weights", routing_weights, "fade each slot's colour by its combine weight");

    // plot (pictures of a training log)
    auto* plot_cmd = app.add_subcommand("plot", "draw loss curves and expert load over time from a --log JSONL");
    std::vector<std::string> plot_logs;
    std::string plot_out;
    plot_cmd->add_option("--log", plot_logs, "JSONL log written by moe train --log (several: compare.png of the runs)")
        ->required();
    plot_cmd->add_option("--out", plot_out, "directory for loss.png and load_layer{l}.png")->required();

    // Usage errors get the same one-line form and exit status as every other error.
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::string msg = e.what();
        for (char& c : msg)
            if (c == '\n') c = ' ';
        std::fprintf(stderr, "moe: error: %s (see --help)\n", msg.c_str());
        return 1;
    }
    // A write past a file-size limit (ulimit -f) must fail like a full disk (EFBIG, reported and
    // the previous checkpoint kept), not kill the process with SIGXFSZ.
    std::signal(SIGXFSZ, SIG_IGN);

    auto check_threads = [](int t) {
        if (t < 0 || t > 4096) fail("--threads must be in [0, 4096] (0 = all cores), got ", t);
    };
    try {
        if (app.got_subcommand(gen_cmd)) {
            sopt.max_tokens = max_tokens;
            check_sample_options(sopt, "--");
            if (gen_seed < 0) fail("--seed must be >= 0, got ", gen_seed);
            sopt.seed = (uint64_t)gen_seed;
            for (const auto& st : stops)
                if (st.empty()) fail("--stop: an empty stop string would stop at once");
            check_threads(gen_threads);
            set_num_threads(gen_threads);
            Checkpoint ck = load_checkpoint(ckpt_dir);
            set_experts_per_token(ck, gen_k);
            ck.model->set_weight_type(kernels::parse_wtype(gen_dtype.empty() ? ck.weight_type : gen_dtype, "generate --dtype"));
            if (prompt.empty()) fail("--prompt is empty: give at least one character");
            std::vector<int32_t> ids = ck.tokenizer.encode(prompt, "prompt");
            if ((int64_t)ids.size() > ck.config.model.n_ctx)
                fail("prompt has ", ids.size(), " tokens but the model's context is ", ck.config.model.n_ctx, " tokens");
            std::printf("%s", prompt.c_str());
            // text is printed as it comes, held back while it could still be the start of a stop string
            std::string pending;
            bool stopped = false;
            generate(*ck.model, ids, sopt, [&](int32_t id) {
                pending += ck.tokenizer.decode_one(id);
                for (const auto& st : stops) {
                    const size_t at = pending.find(st);
                    if (at != std::string::npos) {
                        pending.resize(at);
                        stopped = true;
                    }
                }
                size_t hold = 0;
                if (!stopped)
                    for (const auto& st : stops)
                        for (size_t k = std::min(st.size() - 1, pending.size()); k > hold; --k)
                            if (pending.compare(pending.size() - k, k, st, 0, k) == 0) {
                                hold = k;
                                break;
                            }
                std::fwrite(pending.data(), 1, pending.size() - hold, stdout);
                pending.erase(0, pending.size() - hold);
                std::fflush(stdout);
                return !stopped;
            });
            std::printf("%s\n", pending.c_str());
            return 0;
        }
        if (app.got_subcommand(routing_cmd)) {
            check_threads(routing_threads);
            set_num_threads(routing_threads);
            Checkpoint ck = load_checkpoint(routing_ckpt);
            set_experts_per_token(ck, routing_k);
            viz::RoutingMapOptions ro;
            ro.title = "routing: " + routing_ckpt;
            ro.shade_by_weight = routing_weights;
            viz::write_routing_map(ck, routing_text, routing_out, ro);
            std::printf("wrote %s\n", routing_out.c_str());
            return 0;
        }
        if (app.got_subcommand(plot_cmd)) {
            if (plot_logs.size() > 1) {
                for (const std::string& w : viz::plot_compare(plot_logs, plot_out)) std::printf("wrote %s\n", w.c_str());
                return 0;
            }
            viz::PlotResult pr = viz::plot_train_log(plot_logs.front(), plot_out);
            for (const std::string& n : pr.notes) std::printf("note: %s\n", n.c_str());
            for (const std::string& w : pr.written) std::printf("wrote %s\n", w.c_str());
            return 0;
        }
        if (app.got_subcommand(bench_cmd)) {
            check_threads(bench_threads);
            set_num_threads(bench_threads);
            if (bench_config.empty() == bench_ckpt.empty()) fail("bench: give exactly one of --config FILE or --checkpoint DIR");

            std::unique_ptr<Model> own;
            Model* model = nullptr;
            Checkpoint ck;
            std::string what;
            if (!bench_config.empty()) {
                Config cfg = load_config(bench_config);
                if (cfg.model.vocab_size <= 0) resolve_vocab(cfg);
                own = std::make_unique<Model>(cfg.model);
                own->init(1);
                model = own.get();
                what = bench_config;
            } else {
                ck = load_checkpoint(bench_ckpt);
                model = ck.model.get();
                what = bench_ckpt;
                if (bench_dtype.empty()) bench_dtype = ck.weight_type;
            }
            if (bench_dtype.empty()) bench_dtype = "fp32";
            const kernels::WType wt = kernels::parse_wtype(bench_dtype, "bench --dtype");
            model->set_weight_type(wt);
            BenchResult r = run_bench(*model, bopt);
            ParamCount pc = count_params(model->config());
            if (bench_json) {
                std::printf("{\"model\": \"%s\", \"mode\": \"%s\", \"dtype\": \"%s\", \"threads\": %d, \"batch\": %lld, "
                            "\"total_params\": %lld, \"active_params\": %lld, \"tokens\": %lld, \"seconds\": %.6f, "
                            "\"tokens_per_sec\": %.3f, \"weight_bytes_per_token\": %.0f, \"weight_gbytes_per_sec\": %.3f, "
                            "\"gflops\": %.3f, \"parallel_regions_per_step\": %.2f}\n",
                            what.c_str(), bopt.mode.c_str(), bench_dtype.c_str(), num_threads(), (long long)bopt.batch,
                            (long long)pc.total, (long long)pc.active, (long long)r.tokens, r.seconds, r.tokens_per_sec,
                            r.weight_bytes_per_token, r.gbytes_per_sec, r.gflops, r.parallel_regions_per_step);
            } else {
                std::printf("%s: %s params total, %s active | %s, %s weights, %d threads\n", what.c_str(),
                            with_commas(pc.total).c_str(), with_commas(pc.active).c_str(), bopt.mode.c_str(),
                            bench_dtype.c_str(), num_threads());
                if (bopt.mode == "decode")
                    std::printf("decode: %.1f tokens/s (batch %lld), %.1f MB of weights per token, %.2f GB/s of weights, "
                                "%.1f thread forks per step\n",
                                r.tokens_per_sec, (long long)bopt.batch, r.weight_bytes_per_token / 1e6, r.gbytes_per_sec,
                                r.parallel_regions_per_step);
                else
                    std::printf("prefill: %.1f tokens/s over %lld tokens, %.1f GFLOP/s\n", r.tokens_per_sec,
                                (long long)r.tokens, r.gflops);
            }
            profile_report(stdout);  // MOE_PROFILE=1: where the time went
            return 0;
        }
        if (app.got_subcommand(quant_cmd)) {
            if (quant_dtype != "bf16" && quant_dtype != "int8")
                fail("quantize --dtype must be bf16 or int8, got \"", quant_dtype, "\"");
            if (std::filesystem::weakly_canonical(quant_out) == std::filesystem::weakly_canonical(quant_ckpt))
                fail("quantize --out '", quant_out, "' is the input checkpoint: write to another directory");
            Checkpoint ck = load_checkpoint(quant_ckpt);
            if (ck.weight_type != "fp32")
                fail("checkpoint '", quant_ckpt, "' is already ", ck.weight_type, ": quantize an fp32 checkpoint");
            save_checkpoint_quantized(quant_out, ck.config, ck.tokenizer, *ck.model, quant_dtype, ck.state);
            const auto in_size = std::filesystem::file_size(checkpoint_file(quant_ckpt));
            const auto out_size = std::filesystem::file_size(checkpoint_file(quant_out));
            std::printf("wrote %s: %s weights, %.2f MB (from %.2f MB with optimizer state; weights alone %.2f MB fp32)\n",
                        checkpoint_file(quant_out).c_str(), quant_dtype.c_str(), out_size / 1e6, in_size / 1e6,
                        count_weight_bytes(ck.config.model, kernels::WType::f32).total / 1e6);
            return 0;
        }
        if (app.got_subcommand(params_cmd)) {
            Config cfg = load_config(params_config);
            resolve_vocab(cfg);
            ParamCount pc = count_params(cfg.model);
            const int64_t T = cfg.train.block_size > 0 ? cfg.train.block_size : cfg.model.n_ctx;
            FlopCount fc = count_flops(cfg.model, T);
            const kernels::WType types[3] = {kernels::WType::f32, kernels::WType::bf16, kernels::WType::q8};
            const char* tn[3];
            WeightBytes wb[3];
            for (int t = 0; t < 3; ++t) tn[t] = kernels::wtype_name(types[t]), wb[t] = count_weight_bytes(cfg.model, types[t]);
            if (params_json) {
                std::string bytes;
                for (int t = 0; t < 3; ++t)
                    bytes += str(", \"", tn[t], "_bytes_total\": ", (long long)wb[t].total, ", \"", tn[t],
                                 "_bytes_per_token\": ", (long long)wb[t].active);
                std::printf("{\"total\": %lld, \"active\": %lld, \"seq_len\": %lld, \"forward_flops_per_token\": %.0f, "
                            "\"training_flops_per_token\": %.0f%s}\n",
                            (long long)pc.total, (long long)pc.active, (long long)T, fc.forward, fc.training, bytes.c_str());
            } else {
                std::printf("config: %s\n", params_config.c_str());
                std::printf("total parameters:  %s\n", with_commas(pc.total).c_str());
                std::printf("active per token:  %s (%.1f%%)\n", with_commas(pc.active).c_str(),
                            100.0 * (double)pc.active / (double)pc.total);
                std::printf("FLOPs per token:   %s forward, %s training (sequence of %lld tokens)\n",
                            with_commas((int64_t)fc.forward).c_str(), with_commas((int64_t)fc.training).c_str(),
                            (long long)T);
                std::printf("weights (routers, norms, embeddings fp32): stored / read per decoded token\n");
                for (int t = 0; t < 3; ++t)
                    std::printf("  %-5s %12.3f GB / %10.3f GB\n", tn[t], wb[t].total / 1e9, wb[t].active / 1e9);
            }
            return 0;
        }
        // train (also the default with no subcommand)
        if (train_cmd->count("--steps") && topt.steps < 0) fail("--steps must be >= 0, got ", topt.steps);
        if (train_cmd->count("--seed") && topt.seed < 0) fail("--seed must be >= 0, got ", topt.seed);
        check_threads(topt.threads);
        // a resumed run keeps writing where it was resumed from unless told otherwise (it would
        // otherwise save into runs/default, where another run's checkpoint may live)
        if (!topt.resume_dir.empty() && !train_cmd->count("--out")) topt.out_dir = topt.resume_dir;
        Config cfg;
        if (!topt.resume_dir.empty() && !train_cmd->count("--config")) {
            topt.config_from_checkpoint = true;  // resume exactly the run that wrote the checkpoint
        } else {
            std::string path = config_path;
            if (path == kDefaultConfig && !std::filesystem::exists(path)) path = resolve_path(path);
            cfg = load_config(path);
        }
        topt.summary = !no_summary;
        train(cfg, topt);
        return 0;
    } catch (const moe::error& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "moe: error: %s\n", e.what());
        return 1;
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "moe: error: out of memory\n");
        return 1;
    } catch (const std::exception& e) {  // e.g. std::filesystem::filesystem_error (it names the path)
        std::fflush(stdout);
        std::fprintf(stderr, "moe: error: %s\n", e.what());
        return 1;
    }
}
