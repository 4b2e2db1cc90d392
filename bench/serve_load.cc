// The continuous-batching engine under load, without HTTP: S concurrent streams of greedy requests
// on a model of random weights from a config (default configs/bench-infer-moe.json), batch
// invariance on and off. Prints aggregate generated tokens/s (the whole run, and decode only: after
// every stream has its first token), p50/p99 time to first token, the engine's time per step and
// its overhead (step time outside the forward), and the two tokens/s per CPU-second of the process
// (on a shared host the measure least disturbed by other processes; use --threads 1 for it).
//   build/bench/serve_load [--config FILE | --model PATH (its weights as stored: --dtype as-stored)] [--dtype fp32|bf16|int8] [--streams 1,4,16] [--tokens 64]
//                     [--prompt 32] [--invariant on|off|both] [--threads T] [--cache-type f32|f16|bf16]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <memory>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include <moe/moe.h>

#include "core/profile.h"
#include "infer/engine.h"
#include "api/loaded_model.h"
#include "io/tokenizer.h"
#include "kernels/cpu.h"
#include "kernels/qmatmul.h"
#include "model/config.h"

using Clock = std::chrono::steady_clock;

// CPU seconds of this process (user + system): on a shared host, tokens per CPU-second is the
// measure that other processes' load disturbs least (with --threads 1)
static double cpu_seconds() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec + (double)u.ru_stime.tv_sec +
           1e-6 * (double)u.ru_stime.tv_usec;
}

int main(int argc, char** argv) {
    std::string config = std::string(MOE_SOURCE_DIR) + "/configs/bench-infer-moe.json", dtype = "int8", streams = "1,4,16",
                invariant = "both", model_path, cache_type = "f32";
    int64_t tokens = 64, prompt = 32;
    int threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i], v = argv[i + 1];
        if (k == "--config") config = v;
        else if (k == "--dtype") dtype = v;
        else if (k == "--streams") streams = v;
        else if (k == "--tokens") tokens = std::stoll(v);
        else if (k == "--prompt") prompt = std::stoll(v);
        else if (k == "--invariant") invariant = v;
        else if (k == "--threads") threads = std::stoi(v);
        else if (k == "--model") model_path = v;
        else if (k == "--cache-type") cache_type = v;
    }
    try {
        moe::apply_environment();
        moe::set_threads(threads);
        // --model: a model file or directory (GGUF, Hugging Face, moe checkpoint) with its tokenizer;
        // else random weights of --config in --dtype with the byte-level tokenizer
        std::unique_ptr<moe::LoadedModel> loaded;
        std::unique_ptr<moe::Model> random;
        moe::Tokenizer tok = moe::Tokenizer::byte_level();
        moe::Model* mp = nullptr;
        if (!model_path.empty()) {
            loaded = std::make_unique<moe::LoadedModel>(model_path, dtype == "as-stored" ? "" : dtype);
            mp = loaded->impl().ck.model.get();
            tok = loaded->impl().ck.tokenizer;
            config = model_path;
            dtype = loaded->weight_type();
        } else {
            const moe::Config cfg = moe::load_config(config);
            random = std::make_unique<moe::Model>(cfg.model, moe::kernels::parse_wtype(dtype, "--dtype"));
            random->init(1);
            random->repack_for_inference();  // as the inference tools load (api.cc; MOE_REPACK=0: not)
            mp = random.get();
        }
        moe::Model& model = *mp;
        moe::LoadedModel::check_cache_type(cache_type, "--cache-type");
        model.set_cache_type(cache_type == "f16" ? moe::DType::f16 : cache_type == "bf16" ? moe::DType::bf16 : moe::DType::f32);
        const int64_t vocab = model.config().vocab_size;
        std::vector<int64_t> ss;
        std::stringstream in(streams);
        for (std::string x; std::getline(in, x, ',');) ss.push_back(std::stoll(x));
        std::printf("%s\n", moe::kernels::host_description().c_str());
        std::printf("%s, %s, %d threads, %lld prompt + %lld generated tokens per stream, KV cache %s\n", config.c_str(),
                    dtype.c_str(), moe::threads(), (long long)prompt, (long long)tokens, moe::dtype_name(model.cache_type()));
        std::printf("weights repacked into tiles: %s (MOE_REPACK=0: rows as stored)\n", model.repacked() ? "yes" : "no");
        // gen tok/s: generated tokens over the whole run (prompts included); decode tok/s: after the
        // last stream's first token (every stream decoding); overhead: step time outside the forward
        // cpu tok/s, cpu decode: the same two per CPU-second of the process (all its threads)
    std::printf("%-10s %8s %10s %11s %10s %10s %9s %9s %10s %10s\n", "invariant", "streams", "gen tok/s", "decode tok/s",
                    "ttft p50", "ttft p99", "ms/step", "overhead", "cpu tok/s", "cpu decode");
        for (bool inv : {true, false}) {
            if ((inv && invariant == "off") || (!inv && invariant == "on")) continue;
            for (int64_t S : ss) {
                moe::profile_reset();
                moe::EngineOptions o;
                o.slots = S;
                o.batch_invariant = inv;
                moe::Engine e(model, tok, o);
                std::vector<moe::EngineHandle> hs;
                const auto t0 = Clock::now();
                const double c0 = cpu_seconds();
                for (int64_t i = 0; i < S; ++i) {
                    moe::EngineRequest q;
                    for (int64_t j = 0; j < prompt; ++j) q.prompt.push_back((int32_t)((i * 31 + j * 7) % vocab));
                    q.opt.temperature = 0;
                    q.opt.max_tokens = tokens;
                    hs.push_back(e.submit(q));
                }
                // one client thread per stream, each noting the CPU seconds of the process when its
                // first token arrives: the last of them starts the decode-only CPU count
                std::vector<int64_t> gens(S, 0);
                std::vector<double> cpu_first(S, 0.0);
                std::vector<std::thread> clients;
                // MOE_PROFILE=1: the table covers the decode steps (from every stream's first token on)
                const bool prof = moe::profile_enabled();
                moe::set_profiling(false);
                std::atomic<int64_t> started{0};
                for (int64_t i = 0; i < S; ++i)
                    clients.emplace_back([&, i] {
                        moe::EngineEvent ev;
                        while (hs[i].next(ev, 600000) && ev.kind != moe::EngineEvent::Kind::done)
                            if (ev.kind == moe::EngineEvent::Kind::token && gens[i]++ == 0) {
                                cpu_first[i] = cpu_seconds();
                                if (++started == S) moe::set_profiling(prof);
                            }
                    });
                for (auto& c : clients) c.join();
                int64_t gen = 0;
                for (int64_t g : gens) gen += g;
                const double cpu_last_first = *std::max_element(cpu_first.begin(), cpu_first.end());
                const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
                const double c1 = cpu_seconds(), cpu = c1 - c0;
                const double cpu_decode = c1 > cpu_last_first ? (double)(gen - S) / (c1 - cpu_last_first) : 0.0;
                moe::EngineStats st = e.stats();
                std::sort(st.ttft.begin(), st.ttft.end());
                auto pct = [&](double p) { return st.ttft.empty() ? 0.0 : st.ttft[(size_t)(p * (st.ttft.size() - 1))]; };
                const double last_first = st.ttft.empty() ? 0.0 : st.ttft.back();
                const double decode = secs > last_first ? (double)(gen - S) / (secs - last_first) : 0.0;
                std::printf("%-10s %8lld %10.1f %11.1f %9.3fs %9.3fs %9.2f %8.1f%% %10.1f %10.1f\n", inv ? "on" : "off",
                            (long long)S, gen / secs, decode, pct(0.5), pct(0.99),
                            1e3 * st.step_seconds / std::max<int64_t>(1, st.steps),
                            100.0 * (st.step_seconds - st.forward_seconds) / std::max(1e-12, st.step_seconds),
                            gen / std::max(1e-9, cpu), cpu_decode);
                moe::print_profile(stdout);  // MOE_PROFILE=1: where the decode steps' time went
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "serve_load: %s\n", e.what());
        return 1;
    }
}
