#include "infer/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "core/rng.h"
#include "infer/generate.h"
#include "infer/stop_strings.h"
#include "kernels/batch_invariant.h"

namespace moe {

using Clock = std::chrono::steady_clock;

struct EngineRequestState {
    EngineRequest req;
    std::atomic<bool> cancel{false};
    std::mutex mu;
    std::condition_variable cv;
    std::deque<EngineEvent> events;
    bool done = false;
    // engine thread only
    int64_t open = 0, completion = 0, cached = 0;
    bool first = false, cancelled = false;
    Clock::time_point t_submit;

    void push(EngineEvent ev) {
        {
            std::lock_guard<std::mutex> lk(mu);
            if (ev.kind == EngineEvent::Kind::done) done = true;
            events.push_back(std::move(ev));
        }
        cv.notify_all();
    }
};

bool EngineHandle::next(EngineEvent& ev, int64_t timeout_ms) {
    std::unique_lock<std::mutex> lk(s_->mu);
    if (!s_->cv.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return !s_->events.empty(); })) return false;
    ev = std::move(s_->events.front());
    s_->events.pop_front();
    return true;
}

void EngineHandle::cancel() { s_->cancel.store(true); }

bool EngineHandle::finished() const {
    std::lock_guard<std::mutex> lk(s_->mu);
    return s_->done;
}

struct Engine::Seq {
    std::shared_ptr<EngineRequestState> r;
    int64_t choice = 0;
    int64_t slot = -1;
    std::vector<int32_t> tokens;  // prompt, then the sampled tokens
    int64_t n_prompt = 0, n_cached = 0, generated = 0;
    Rng rng;
    std::unique_ptr<HfDecodeStream> dec;
    StopStrings stop;
    std::unordered_map<int32_t, int32_t> counts;  // generated token -> times (presence / frequency penalty)
    bool done = false;
    Seq(std::shared_ptr<EngineRequestState> req, int64_t i)
        : r(std::move(req)), choice(i), rng(r->req.opt.seed, 0x6E6E + (uint64_t)i), stop(r->req.stop) {}
};

Engine::Engine(Model& model, const Tokenizer& tok, const EngineOptions& opt)
    : model_(model), tok_(tok), opt_(opt) {
    if (opt_.slots < 1 || opt_.slots > 1024) fail("--parallel must be in [1, 1024], got ", opt_.slots);
    if (opt_.batch_tokens < 1) fail("batch tokens must be >= 1, got ", opt_.batch_tokens);
    n_ctx_ = model_.config().n_ctx;
    V_ = model_.config().vocab_size;
    cache_ = model_.make_cache(opt_.slots);
    slot_tokens_.assign(opt_.slots, {});
    slot_busy_.assign(opt_.slots, false);
    eos_ = tok_.eos_ids();
    stats_.kv_total = opt_.slots * n_ctx_;
    thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() { stop(0); }

EngineHandle Engine::submit(EngineRequest req) {
    const int64_t P = (int64_t)req.prompt.size();
    if (P == 0) fail("the prompt is empty: give at least one token");
    if (P >= n_ctx_)
        fail("the prompt has ", P, " tokens, but the context holds ", n_ctx_,
             " (the prompt and at least one generated token must fit)");
    for (int32_t t : req.prompt)
        if (t < 0 || t >= V_) fail("token id ", t, " of the prompt is outside the vocabulary [0, ", V_, ")");
    check_sample_options(req.opt);
    check_stop_strings(req.stop);
    if (req.n < 1 || req.n > 128) fail("n must be in [1, 128], got ", req.n);
    if (req.top_logprobs < -1 || req.top_logprobs > 20) fail("top_logprobs must be in [0, 20], got ", req.top_logprobs);
    if (!(req.min_p >= 0 && req.min_p <= 1)) fail("min_p must be in [0, 1], got ", req.min_p);
    if (!(req.presence_penalty >= -2 && req.presence_penalty <= 2))
        fail("presence_penalty must be in [-2, 2], got ", req.presence_penalty);
    if (!(req.frequency_penalty >= -2 && req.frequency_penalty <= 2))
        fail("frequency_penalty must be in [-2, 2], got ", req.frequency_penalty);
    auto st = std::make_shared<EngineRequestState>();
    st->req = std::move(req);
    st->open = st->req.n;
    st->t_submit = Clock::now();
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (!accepting_) throw EngineBusy("the server is shutting down");
        // waiting = submitted, not yet queued in the engine + admitted choices without a slot
        if ((int64_t)queue_.size() + waiting_requests_ >= opt_.max_queue)
            throw EngineBusy("the queue is full (" + std::to_string(opt_.max_queue) + " requests waiting)");
        queue_.push_back(st);
    }
    cv_.notify_all();
    return EngineHandle(st);
}

void Engine::stop(double grace_seconds) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        accepting_ = false;
        if (!stopping_) {
            stopping_ = true;
            deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(std::max(0.0, grace_seconds)));
        }
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

EngineStats Engine::stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    EngineStats s = stats_;
    s.waiting += (int64_t)queue_.size();
    s.requests_waiting = waiting_requests_ + (int64_t)queue_.size();
    return s;
}

void Engine::loop() {
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(mu_);
            cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || !running_.empty() || !waiting_.empty(); });
            if (stopping_) {
                if (Clock::now() >= deadline_) {
                    for (auto& r : queue_) r->cancel.store(true);
                    for (auto& s : running_) s->r->cancel.store(true);
                    for (auto& s : waiting_) s->r->cancel.store(true);
                }
                if (queue_.empty() && running_.empty() && waiting_.empty()) break;
            }
        }
        try {
            step();
        } catch (const std::exception& e) {
            // not reachable from a checked request; end what runs rather than the process
            std::fprintf(stderr, "moe: engine error: %s\n", e.what());
            for (auto& s : running_) finish(*s, "error");
            for (auto& s : waiting_) finish(*s, "error");
            running_.clear(), waiting_.clear();
        }
    }
}

// Queued requests become waiting choices; free slots go to waiting choices in arrival order, each
// to the free slot holding the longest prefix of its prompt.
void Engine::admit() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        while (!queue_.empty()) {
            std::shared_ptr<EngineRequestState> r = std::move(queue_.front());
            queue_.pop_front();
            waiting_requests_ += 1;  // counted until count_waiting below recounts
            for (int64_t i = 0; i < r->req.n; ++i) {
                auto s = std::make_unique<Seq>(r, i);
                s->tokens = r->req.prompt;
                s->n_prompt = (int64_t)s->tokens.size();
                if (tok_.hf()) s->dec = std::make_unique<HfDecodeStream>(tok_.hf(), true);
                waiting_.push_back(std::move(s));
            }
        }
    }
    size_t w = 0;
    for (; w < waiting_.size(); ++w) {
        Seq& s = *waiting_[w];
        int64_t best = -1, best_lcp = -1;
        for (int64_t k = 0; k < opt_.slots; ++k) {
            if (slot_busy_[k]) continue;
            int64_t l = 0;
            if (opt_.prefix_reuse) {
                const std::vector<int32_t>& t = slot_tokens_[k];
                const int64_t m = std::min<int64_t>((int64_t)t.size(), s.n_prompt);
                while (l < m && t[l] == s.tokens[l]) ++l;
            }
            if (l > best_lcp) best = k, best_lcp = l;
        }
        if (best < 0) break;
        const int64_t reuse = std::min(best_lcp, s.n_prompt - 1);  // the last prompt token gives the logits
        s.slot = best;
        s.n_cached = reuse;
        slot_busy_[best] = true;
        cache_.len[best] = reuse;
        slot_tokens_[best].resize(reuse);
        s.r->cached += s.choice == 0 ? reuse : 0;
        {
            std::lock_guard<std::mutex> lk(mu_);
            stats_.reused_prompt_tokens += reuse;
            stats_.prompt_tokens += s.n_prompt - reuse;
        }
        running_.push_back(std::move(waiting_[w]));
    }
    waiting_.erase(waiting_.begin(), waiting_.begin() + (std::ptrdiff_t)w);
    count_waiting();
}

// Requests with a choice in waiting_ (a request's choices are adjacent there).
void Engine::count_waiting() {
    int64_t n = 0;
    for (size_t i = 0; i < waiting_.size(); ++i) n += i == 0 || waiting_[i]->r != waiting_[i - 1]->r;
    std::lock_guard<std::mutex> lk(mu_);
    waiting_requests_ = n;
}

void Engine::finish(Seq& s, const char* reason) {
    if (s.done) return;
    s.done = true;
    if (std::strcmp(reason, "cancelled") == 0) s.r->cancelled = true;
    EngineEvent ev;
    ev.kind = EngineEvent::Kind::finish;
    ev.choice = s.choice;
    ev.finish_reason = reason;
    ev.completion_tokens = s.generated;
    if (!s.stop.stopped()) {
        std::string rest = s.dec ? s.dec->finish() : std::string();
        ev.text = s.stop.feed(rest);
        if (!s.stop.stopped()) ev.text += s.stop.finish();
    }
    s.r->push(std::move(ev));
    s.r->completion += s.generated;
    if (s.slot >= 0) {
        slot_tokens_[s.slot].assign(s.tokens.begin(), s.tokens.begin() + cache_.len[s.slot]);
        slot_busy_[s.slot] = false;
        s.slot = -1;
    }
    if (--s.r->open == 0) {
        EngineEvent done;
        done.kind = EngineEvent::Kind::done;
        done.prompt_tokens = (int64_t)s.r->req.prompt.size();
        done.total_completion_tokens = s.r->completion;
        done.cached_prompt_tokens = s.r->cached;
        const double lat = std::chrono::duration<double>(Clock::now() - s.r->t_submit).count();
        {
            std::lock_guard<std::mutex> lk(mu_);
            stats_.requests_done += 1;
            stats_.requests_cancelled += s.r->cancelled ? 1 : 0;
            if (stats_.latency.size() >= 10000) stats_.latency.erase(stats_.latency.begin());
            stats_.latency.push_back(lat);
        }
        s.r->push(std::move(done));
    }
}

void Engine::sample(Seq& s, int64_t row) {
    const EngineRequest& q = s.r->req;
    const float* lg = model_.logits() + row * V_;
    EngineEvent ev;
    ev.kind = EngineEvent::Kind::token;
    ev.choice = s.choice;
    double lse = 0;
    if (q.top_logprobs >= 0) {
        float mx = lg[0];
        for (int64_t j = 1; j < V_; ++j) mx = std::max(mx, lg[j]);
        double sum = 0;
        for (int64_t j = 0; j < V_; ++j) sum += std::exp((double)lg[j] - mx);
        lse = mx + std::log(sum);
        if (q.top_logprobs > 0) {
            // the k best, best first (ties: the lower id)
            using P = std::pair<float, int32_t>;
            auto worse = [](const P& a, const P& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
            std::priority_queue<P, std::vector<P>, decltype(worse)> heap(worse);
            for (int64_t j = 0; j < V_; ++j) {
                heap.push({lg[j], (int32_t)j});
                if ((int64_t)heap.size() > q.top_logprobs) heap.pop();
            }
            ev.top.resize(heap.size());
            for (int64_t i = (int64_t)heap.size() - 1; i >= 0; --i) {
                ev.top[i] = {heap.top().second, (float)(heap.top().first - lse)};
                heap.pop();
            }
        }
    }
    const float* z = lg;
    if (q.presence_penalty != 0 || q.frequency_penalty != 0 || (q.min_p > 0 && q.opt.temperature > 0)) {
        logit_buf_.assign(lg, lg + V_);
        for (const auto& [id, c] : s.counts)
            logit_buf_[id] -= (float)(q.presence_penalty + q.frequency_penalty * c);
        if (q.min_p > 0 && q.opt.temperature > 0) {
            // p_j < min_p * p_max  <=>  z_j < z_max + T ln(min_p)
            const float mx = *std::max_element(logit_buf_.begin(), logit_buf_.end());
            const float cut = mx + (float)(q.opt.temperature * std::log(q.min_p));
            for (float& v : logit_buf_)
                if (v < cut) v = -std::numeric_limits<float>::infinity();
        }
        z = logit_buf_.data();
    }
    const int32_t id = sample_token(z, V_, q.opt, s.tokens, s.rng.uniform(), scratch_);
    ev.token = id;
    ev.logprob = q.top_logprobs >= 0 ? (float)(lg[id] - lse) : 0.f;
    s.tokens.push_back(id);
    s.generated += 1;
    s.counts[id] += 1;
    if (!s.r->first) {
        s.r->first = true;
        const double t = std::chrono::duration<double>(Clock::now() - s.r->t_submit).count();
        std::lock_guard<std::mutex> lk(mu_);
        if (stats_.ttft.size() >= 10000) stats_.ttft.erase(stats_.ttft.begin());
        stats_.ttft.push_back(t);
    }
    if (!q.ignore_eos && std::find(eos_.begin(), eos_.end(), id) != eos_.end()) {
        finish(s, "stop");  // the end-of-sequence token itself is not text
        return;
    }
    // a model's vocabulary may be larger than its tokenizer's (padded embeddings): such an id is no text
    std::string piece;
    try {
        piece = s.dec ? s.dec->step(id) : tok_.decode_one(id);
    } catch (const moe::error&) {
    }
    ev.text = s.stop.feed(piece);
    s.r->push(std::move(ev));
    if (s.stop.stopped()) finish(s, "stop");
    else if (s.generated >= q.opt.max_tokens || (int64_t)s.tokens.size() >= n_ctx_) finish(s, "length");
}

void Engine::step() {
    admit();
    // cancelled requests leave now, with the text they have
    for (auto& s : running_)
        if (s->r->cancel.load()) finish(*s, "cancelled");
    for (auto& s : waiting_)
        if (s->r->cancel.load()) finish(*s, "cancelled");
    auto gone = [](const std::unique_ptr<Seq>& s) { return s->done; };
    running_.erase(std::remove_if(running_.begin(), running_.end(), gone), running_.end());
    waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), gone), waiting_.end());
    count_waiting();
    if (running_.empty()) {
        std::lock_guard<std::mutex> lk(mu_);
        stats_.running = 0, stats_.waiting = (int64_t)waiting_.size(), stats_.kv_used = 0;
        return;
    }
    const Clock::time_point t0 = Clock::now();
    // the batch: every decode row, then prompt chunks in arrival order while the budget lasts
    std::vector<int32_t> tk, sid, pos;
    std::vector<std::pair<Seq*, int64_t>> to_sample;  // (sequence, its last row)
    int64_t budget = opt_.batch_tokens;
    for (auto& s : running_) {
        if (s->generated == 0) continue;
        tk.push_back(s->tokens.back());
        sid.push_back((int32_t)s->slot);
        pos.push_back((int32_t)s->n_cached);
        to_sample.push_back({s.get(), (int64_t)tk.size() - 1});
        --budget;
    }
    for (auto& s : running_) {
        if (s->generated > 0 || budget <= 0) continue;
        const int64_t n = std::min(s->n_prompt - s->n_cached, budget);
        for (int64_t i = 0; i < n; ++i) {
            tk.push_back(s->tokens[s->n_cached + i]);
            sid.push_back((int32_t)s->slot);
            pos.push_back((int32_t)(s->n_cached + i));
        }
        budget -= n;
        if (s->n_cached + n == s->n_prompt) to_sample.push_back({s.get(), (int64_t)tk.size() - 1});
    }
    {
        const kernels::BatchInvariantScope invariant(opt_.batch_invariant);
        model_.forward_cached(tk.data(), sid.data(), pos.data(), (int64_t)tk.size(), cache_, true);
    }
    for (auto& s : running_) s->n_cached = cache_.len[s->slot];
    for (auto& [s, row] : to_sample) sample(*s, row);
    running_.erase(std::remove_if(running_.begin(), running_.end(), gone), running_.end());
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    std::lock_guard<std::mutex> lk(mu_);
    stats_.steps += 1;
    stats_.step_seconds += dt;
    stats_.generated_tokens += (int64_t)to_sample.size();
    stats_.running = (int64_t)running_.size();
    stats_.waiting = (int64_t)waiting_.size();
    stats_.kv_used = 0;
    for (int64_t k = 0; k < opt_.slots; ++k)
        if (slot_busy_[k]) stats_.kv_used += cache_.len[k];
    const auto& load = model_.cached_expert_load();
    if (stats_.expert_tokens.size() != load.size()) stats_.expert_tokens.assign(load.size(), {});
    for (size_t l = 0; l < load.size(); ++l) {
        if (stats_.expert_tokens[l].size() != load[l].size()) stats_.expert_tokens[l].assign(load[l].size(), 0);
        for (size_t e = 0; e < load[l].size(); ++e) stats_.expert_tokens[l][e] += load[l][e];
    }
}

}  // namespace moe
