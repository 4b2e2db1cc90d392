#include "infer/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace moe {

void check_sample_options(const SampleOptions& o, const char* prefix) {
    const std::string p = prefix;
    if (o.max_tokens < 1) fail(p, "max-tokens must be >= 1, got ", o.max_tokens);
    if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
        fail(p, "temperature must be a finite number >= 0, got ", o.temperature);
    if (o.top_k < 0) fail(p, "top-k must be >= 0 (0 = off), got ", o.top_k);
    if (!(o.top_p > 0 && o.top_p <= 1)) fail(p, "top-p must be in (0, 1], got ", o.top_p);
    if (!(o.repetition_penalty > 0) || !std::isfinite(o.repetition_penalty))
        fail(p, "repetition-penalty must be a finite number > 0, got ", o.repetition_penalty);
}

int32_t sample_token(const float* logits, int64_t V, const SampleOptions& opt, const std::vector<int32_t>& context,
                     double u01, std::vector<double>& z) {
    z.assign(logits, logits + V);
    if (opt.repetition_penalty != 1.0) {
        // as Hugging Face's RepetitionPenaltyLogitsProcessor: once per distinct earlier token
        thread_local std::vector<uint8_t> seen;
        seen.assign(V, 0);
        for (int32_t t : context) {
            if (t < 0 || t >= V || seen[t]) continue;
            seen[t] = 1;
            z[t] = z[t] > 0 ? z[t] / opt.repetition_penalty : z[t] * opt.repetition_penalty;
        }
    }
    int64_t best = 0;
    for (int64_t j = 1; j < V; ++j)
        if (z[j] > z[best]) best = j;
    if (opt.temperature <= 0) return (int32_t)best;
    // probabilities over the kept tokens; z becomes exp((z - max) / temperature)
    const double mx = z[best];
    for (int64_t j = 0; j < V; ++j) z[j] = std::exp((z[j] - mx) / opt.temperature);
    // top-k / top-p: find the kept set by sorting a copy of the weights (descending)
    if ((opt.top_k > 0 && opt.top_k < V) || opt.top_p < 1.0) {
        std::vector<double> sorted(z);
        std::sort(sorted.begin(), sorted.end(), std::greater<double>());
        int64_t keep = opt.top_k > 0 ? std::min<int64_t>(opt.top_k, V) : V;
        if (opt.top_p < 1.0) {
            const double total = std::accumulate(sorted.begin(), sorted.begin() + keep, 0.0);
            double acc = 0;
            int64_t n = 0;
            while (n < keep) {
                acc += sorted[n++];
                if (acc >= opt.top_p * total) break;
            }
            keep = n;
        }
        const double threshold = sorted[keep - 1];
        // ties at the threshold are all kept (deterministic, order-free)
        for (int64_t j = 0; j < V; ++j)
            if (z[j] < threshold) z[j] = 0;
    }
    double sum = 0;
    for (int64_t j = 0; j < V; ++j) sum += z[j];
    double r = u01 * sum, acc = 0;
    for (int64_t j = 0; j < V; ++j) {
        acc += z[j];
        if (r < acc && z[j] > 0) return (int32_t)j;
    }
    return (int32_t)best;
}

std::vector<std::vector<int32_t>> generate_batch(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 const SampleOptions& opt, const TokenCallback& on_token) {
    check_sample_options(opt);
    const ModelConfig& cfg = model.config();
    const int64_t S = (int64_t)prompts.size(), V = cfg.vocab_size, n_ctx = cfg.n_ctx;
    if (S == 0) return {};
    for (int64_t s = 0; s < S; ++s) {
        if (prompts[s].empty()) fail("prompt ", s, " is empty: give at least one token");
        if ((int64_t)prompts[s].size() > n_ctx)
            fail("prompt ", s, " has ", prompts[s].size(), " tokens but the model's context is ", n_ctx, " tokens");
        for (int32_t t : prompts[s])
            if (t < 0 || t >= V) fail("prompt ", s, ": token id ", t, " is outside the vocabulary [0, ", V, ")");
    }
    layers::KvCache cache = model.make_cache(S);
    std::vector<std::vector<int32_t>> seqs(prompts), out(S);
    std::vector<Rng> rng;
    for (int64_t s = 0; s < S; ++s) rng.emplace_back(opt.seed, 0x6E6E + (uint64_t)s);
    std::vector<bool> live(S, true);
    std::vector<double> scratch;
    std::vector<int32_t> tk, sid, pos;
    std::vector<int64_t> last_row(S);

    // fill sequence s's cache from its last `keep` tokens (prefill, or a refill once the context is full)
    auto prefill = [&](const std::vector<int64_t>& which, int64_t keep_cap) {
        tk.clear(), sid.clear(), pos.clear();
        for (int64_t s : which) {
            const int64_t n = std::min<int64_t>((int64_t)seqs[s].size(), keep_cap);
            cache.reset(s);
            for (int64_t i = 0; i < n; ++i) {
                tk.push_back(seqs[s][seqs[s].size() - n + i]);
                sid.push_back((int32_t)s);
                pos.push_back((int32_t)i);
            }
            last_row[s] = (int64_t)tk.size() - 1;
        }
        model.forward_cached(tk.data(), sid.data(), pos.data(), (int64_t)tk.size(), cache, true);
    };
    std::vector<int64_t> all(S);
    std::iota(all.begin(), all.end(), 0);
    prefill(all, n_ctx);

    std::vector<int64_t> full;
    for (int64_t step = 0; step < opt.max_tokens; ++step) {
        // sample one token for every live sequence from its last row's logits
        bool any = false;
        for (int64_t s = 0; s < S; ++s) {
            if (!live[s]) continue;
            const int32_t id = sample_token(model.logits() + last_row[s] * V, V, opt, seqs[s], rng[s].uniform(), scratch);
            seqs[s].push_back(id);
            out[s].push_back(id);
            if (on_token && !on_token(s, id)) live[s] = false;
            if (live[s]) any = true;
        }
        if (!any || step + 1 == opt.max_tokens) break;
        // the next decode step: one row per live sequence; full caches are refilled first
        full.clear();
        for (int64_t s = 0; s < S; ++s)
            if (live[s] && cache.len[s] >= n_ctx) full.push_back(s);
        if (!full.empty()) {
            // refill from the last n_ctx/2 tokens (the new one excluded: it is decoded below)
            for (int64_t s : full) seqs[s].pop_back();
            prefill(full, std::max<int64_t>(1, n_ctx / 2));
            for (int64_t s : full) seqs[s].push_back(out[s].back());
        }
        tk.clear(), sid.clear(), pos.clear();
        for (int64_t s = 0; s < S; ++s) {
            if (!live[s]) continue;
            tk.push_back(seqs[s].back());
            sid.push_back((int32_t)s);
            pos.push_back((int32_t)cache.len[s]);
            last_row[s] = (int64_t)tk.size() - 1;
        }
        model.forward_cached(tk.data(), sid.data(), pos.data(), (int64_t)tk.size(), cache, true);
    }
    return out;
}

std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<bool(int32_t)>& on_token) {
    TokenCallback cb;
    if (on_token) cb = [&](int64_t, int32_t id) { return on_token(id); };
    return generate_batch(model, {prompt}, opt, cb).front();
}

}  // namespace moe
