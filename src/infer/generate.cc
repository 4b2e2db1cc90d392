#include "infer/generate.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace moe {

int32_t sample_token(const float* logits, int64_t V, double temperature, double u01) {
    int32_t best = 0;
    for (int64_t j = 1; j < V; ++j)
        if (logits[j] > logits[best]) best = (int32_t)j;
    if (temperature <= 0) return best;
    double sum = 0;
    std::vector<double> p(V);
    for (int64_t j = 0; j < V; ++j) {
        p[j] = std::exp(((double)logits[j] - (double)logits[best]) / temperature);
        sum += p[j];
    }
    double r = u01 * sum, acc = 0;
    for (int64_t j = 0; j < V; ++j) {
        acc += p[j];
        if (r < acc) return (int32_t)j;
    }
    return best;
}

std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
    const ModelConfig& cfg = model.config();
    MOE_ASSERT(!prompt.empty() && (int64_t)prompt.size() <= cfg.n_ctx);
    std::vector<int32_t> seq = prompt, out;
    Rng rng(opt.seed, 0x6E6E);
    for (int64_t i = 0; i < opt.max_tokens; ++i) {
        const int64_t T = std::min<int64_t>((int64_t)seq.size(), cfg.n_ctx);
        const int32_t* window = seq.data() + seq.size() - T;
        model.forward(window, nullptr, 1, T);
        const float* last = model.logits() + (T - 1) * cfg.vocab_size;
        int32_t id = sample_token(last, cfg.vocab_size, opt.temperature, rng.uniform());
        seq.push_back(id);
        out.push_back(id);
        if (on_token) on_token(id);
    }
    return out;
}

}  // namespace moe
