#include "infer/bench.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "core/rng.h"
#include "kernels/read_probe.h"
#include "model/params.h"

namespace moe {

static double peak_rss_mb() {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;  // KB on Linux
}

// peak RSS, the stored inference weights and the KV cache of a bench run (MB = 2^20 bytes)
static void memory_of(BenchResult& r, const Model& model, const layers::KvCache& cache) {
    r.peak_rss_mb = peak_rss_mb();
    r.weights_mb = count_weight_bytes(model.config(), model.weight_type()).total / 1048576.0;
    r.kv_mb = (double)cache.bytes() / 1048576.0;
}

// --read-probe: after every timed run of decode steps, a read-only pass (kernels::read_sum,
// build/bench/stream's loop, on the same threads) over as many bytes as those steps read of weights,
// from a buffer far larger than the caches, timed apart: the host's read bandwidth in the same
// moments as the decode (runs of a fraction of a second each, alternating), so a neighbour that takes
// memory bandwidth slows both sides of the ratio alike. (A pass after every step would flush the
// caches the decode keeps warm between steps: the KV cache, the activations, and what of the
// weights the last-level cache holds.)
namespace {
struct ReadProbe {
    static constexpr int64_t kWindow = int64_t(64) << 18;  // floats: 64 MB per parallel pass
    std::vector<float> buf;                                // 512 MB
    int64_t off = 0;
    double seconds = 0, bytes = 0;
    std::atomic<double> sink{0.0};  // the passes' sums: one add per thread's chunk (they only keep the reads alive)

    ReadProbe() {
        const int64_t n = 8 * kWindow;
        buf.resize(n);
        parallel_for(0, n, 1 << 16, [&](int64_t i0, int64_t i1) {  // first touch on the threads that read
            for (int64_t i = i0; i < i1; ++i) buf[i] = 1.f;
        });
    }
    void run(double total_bytes) {
        const double t0 = now_seconds();
        for (double done = 0; done < total_bytes; done += (double)kWindow * 4) {
            if (off + kWindow > (int64_t)buf.size()) off = 0;
            const float* x = buf.data() + off;
            parallel_for(0, kWindow, 1 << 16, [&](int64_t i0, int64_t i1) {
                sink.fetch_add(kernels::read_sum(x + i0, i1 - i0), std::memory_order_relaxed);
            });
            bytes += (double)kWindow * 4;
            off += kWindow;
        }
        seconds += now_seconds() - t0;
    }
};
}  // namespace

BenchResult run_bench(Model& model, const BenchOptions& opt) {
    const ModelConfig& cfg = model.config();
    const int64_t V = cfg.vocab_size;
    BenchResult r;
    Rng rng(opt.seed, 0xBE);
    auto random_tokens = [&](int64_t n, std::vector<int32_t>& t) {
        t.resize(n);
        for (auto& x : t) x = (int32_t)(rng.next_u64() % (uint64_t)V);
    };
    std::vector<int32_t> tk, sid, pos;
    if (opt.mode == "prefill") {
        const int64_t P = std::min(opt.prompt, cfg.n_ctx);
        if (P < 1) fail("bench: prompt length must be >= 1, got ", opt.prompt);
        layers::KvCache cache = model.make_cache(1);
        random_tokens(P, tk);
        sid.assign(P, 0);
        pos.resize(P);
        for (int64_t i = 0; i < P; ++i) pos[i] = (int32_t)i;
        model.forward_cached(tk.data(), sid.data(), pos.data(), P, cache, true);  // warm-up
        double best = 1e30;
        for (int64_t rep = 0; rep < std::max<int64_t>(1, opt.repeats); ++rep) {
            cache.reset(0);
            const double t0 = now_seconds();
            model.forward_cached(tk.data(), sid.data(), pos.data(), P, cache, true);
            best = std::min(best, now_seconds() - t0);
        }
        r.tokens = P;
        r.seconds = best;
        r.tokens_per_sec = (double)P / best;
        r.gflops = count_flops(cfg, P).forward * r.tokens_per_sec / 1e9;
        memory_of(r, model, cache);
        return r;
    }
    if (opt.mode != "decode") fail("bench: --mode must be decode or prefill, got \"", opt.mode, "\"");
    const int64_t S = opt.batch, ctx0 = std::max<int64_t>(1, std::min(opt.context, cfg.n_ctx - 1));
    if (S < 1) fail("bench: --batch must be >= 1, got ", S);
    if (opt.tokens < 1) fail("bench: --tokens must be >= 1, got ", opt.tokens);
    const int64_t steps = std::min(opt.tokens, cfg.n_ctx - ctx0);
    layers::KvCache cache = model.make_cache(S);
    auto prefill = [&] {
        tk.clear(), sid.clear(), pos.clear();
        for (int64_t s = 0; s < S; ++s) {
            cache.reset(s);
            for (int64_t i = 0; i < ctx0; ++i) {
                tk.push_back((int32_t)(rng.next_u64() % (uint64_t)V));
                sid.push_back((int32_t)s);
                pos.push_back((int32_t)i);
            }
        }
        model.forward_cached(tk.data(), sid.data(), pos.data(), (int64_t)tk.size(), cache, true);
    };
    std::unique_ptr<ReadProbe> probe;
    if (opt.read_probe) probe = std::make_unique<ReadProbe>();
    auto decode = [&](int64_t n_steps) {
        for (int64_t step = 0; step < n_steps; ++step) {
            tk.resize(S), sid.resize(S), pos.resize(S);
            for (int64_t s = 0; s < S; ++s) {
                // next token: the argmax of the last logits (a real decode's data dependence)
                const float* l = model.logits() + s * V;
                tk[s] = (int32_t)(std::max_element(l, l + V) - l);
                sid[s] = (int32_t)s;
                pos[s] = (int32_t)cache.len[s];
            }
            model.forward_cached(tk.data(), sid.data(), pos.data(), S, cache, true);
        }
    };
    prefill();
    decode(std::min<int64_t>(steps, 4));  // warm-up
    int64_t done = 0, regions = 0;
    double secs = 0;
    while (secs < opt.min_seconds || done == 0) {
        prefill();
        const int64_t regions0 = parallel_regions();
        const double t0 = now_seconds();
        decode(steps);
        secs += now_seconds() - t0;
        regions += parallel_regions() - regions0;
        done += steps * S;
        if (probe) probe->run((double)steps * model.weight_bytes_per_token());
    }
    if (probe) r.probe_gbytes_per_sec = probe->bytes / probe->seconds / 1e9;
    r.parallel_regions_per_step = (double)regions / (double)(done / S);
    r.tokens = done;
    r.seconds = secs;
    r.tokens_per_sec = (double)done / secs;
    // every decode step reads the active weights once per step (shared by the S sequences only
    // where they pick the same experts): bytes per token at batch 1
    r.weight_bytes_per_token = model.weight_bytes_per_token();
    r.gbytes_per_sec = r.weight_bytes_per_token * (r.tokens_per_sec / (double)S) / 1e9;
    memory_of(r, model, cache);
    return r;
}

}  // namespace moe
