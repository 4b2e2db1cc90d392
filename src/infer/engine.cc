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
    bool prompt_done = false;  // choice 0 has computed the prompt: the other choices share its pages
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
    int64_t order = 0;            // arrival (the older, the higher its priority for pages)
    int64_t table = -1;           // its page table while running
    std::vector<int32_t> tokens;  // prompt, then the sampled tokens
    int64_t n_prompt = 0, n_cached = 0, generated = 0;  // n_cached: positions in its pages
    bool admitted = false;        // started once (a preempted sequence waits again)
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
    if (opt_.kv_positions < 0) fail("--kv-size must be >= 0 positions, got ", opt_.kv_positions);
    if (opt_.kv_positions > 0 && opt_.kv_positions < n_ctx_)
        fail("--kv-size ", opt_.kv_positions, " is smaller than the context (", n_ctx_,
             " positions): the pool must hold at least one full sequence");
    cache_ = model_.make_cache(2 * opt_.slots, opt_.kv_positions > 0 ? opt_.kv_positions : opt_.slots * n_ctx_);
    cache_.commit();  // the pool's memory backed now, not by the first steps that reach each page
    tables_.assign(cache_.S, {});
    page_mark_.assign(cache_.n_pages, 0);
    eos_ = tok_.eos_ids();
    publish_stats();
    // the steps run on the engine's thread with its own pool of workers: the constructing thread's
    // pool (a model load's parallel work) would otherwise sit idle beside it and make libgomp stop
    // spinning (core/parallel.h)
    release_thread_pool();
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
    if (req.return_routing &&
        std::none_of(model_.config().layer_moe.begin(), model_.config().layer_moe.end(), [](auto m) { return (bool)m; }))
        fail("return_routing needs a Mixture-of-Experts model: every layer of this model is dense");
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

// Computed positions of table t that match the start of `tokens`.
int64_t Engine::common_prefix(int64_t t, const std::vector<int32_t>& tokens) const {
    const int32_t* a = tables_[t].seq ? tables_[t].seq->tokens.data() : tables_[t].tokens.data();
    const int64_t m = std::min<int64_t>(cache_.len[t], (int64_t)tokens.size());
    int64_t l = 0;
    while (l < m && a[l] == tokens[l]) ++l;
    return l;
}

// The least recently released free table that holds pages (not `keep`) gives them back.
bool Engine::evict_one(int64_t keep) {
    int64_t v = -1;
    for (int64_t t = 0; t < (int64_t)tables_.size(); ++t)
        if (t != keep && !tables_[t].seq && cache_.pages_held(t) > 0 &&
            (v < 0 || tables_[t].last_use < tables_[v].last_use))
            v = t;
    if (v < 0) return false;
    cache_.reset(v);
    tables_[v].tokens.clear();
    return true;
}

bool Engine::obtain(int64_t t, int64_t from, int64_t to) {
    while (!cache_.prepare(t, from, to))
        if (!evict_one(t)) return false;
    return true;
}

void Engine::release(Seq& s) {
    if (s.table < 0) return;
    Table& tb = tables_[s.table];
    tb.seq = nullptr;
    tb.last_use = tick_;
    if (opt_.prefix_reuse) {
        tb.tokens.assign(s.tokens.begin(), s.tokens.begin() + cache_.len[s.table]);
    } else {
        cache_.reset(s.table);
        tb.tokens.clear();
    }
    s.table = -1;
}

// s gives its pages back (kept as a prefix until the pool needs them) and waits again, in
// arrival order; when it starts again it recomputes its tokens but the last, bit for bit the
// same KV (batch invariance), so its output does not change.
void Engine::preempt(Seq& s) {
    release(s);
    s.n_cached = 0;
    auto it = std::find_if(running_.begin(), running_.end(), [&](const std::unique_ptr<Seq>& p) { return p.get() == &s; });
    MOE_ASSERT(it != running_.end());
    std::unique_ptr<Seq> own = std::move(*it);
    running_.erase(it);
    auto at = std::find_if(waiting_.begin(), waiting_.end(), [&](const std::unique_ptr<Seq>& p) { return p->order > s.order; });
    waiting_.insert(at, std::move(own));
    std::lock_guard<std::mutex> lk(mu_);
    stats_.preemptions += 1;
}

// Queued requests become waiting choices. Waiting choices start in arrival order while fewer than
// `slots` run and the pool has pages for their whole prompt: each on a free page table, sharing
// the pages of the longest computed prefix of its tokens in any table. The other choices of a
// request wait until its first choice has computed the prompt, then share it.
void Engine::admit() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        while (!queue_.empty()) {
            std::shared_ptr<EngineRequestState> r = std::move(queue_.front());
            queue_.pop_front();
            waiting_requests_ += 1;  // counted until count_waiting below recounts
            for (int64_t i = 0; i < r->req.n; ++i) {
                auto s = std::make_unique<Seq>(r, i);
                s->order = next_order_++;
                s->tokens = r->req.prompt;
                s->n_prompt = (int64_t)s->tokens.size();
                if (tok_.hf()) s->dec = std::make_unique<HfDecodeStream>(tok_.hf(), true);
                waiting_.push_back(std::move(s));
            }
        }
    }
    for (size_t w = 0; w < waiting_.size();) {
        if ((int64_t)running_.size() >= opt_.slots) break;
        Seq& s = *waiting_[w];
        if (opt_.prefix_reuse && s.choice > 0 && !s.r->prompt_done) {
            ++w;  // its first choice computes the prompt first
            continue;
        }
        const int64_t T = (int64_t)s.tokens.size();
        int64_t src = -1, lcp = 0;
        for (int64_t t = 0; opt_.prefix_reuse && t < (int64_t)tables_.size(); ++t) {
            const int64_t l = common_prefix(t, s.tokens);
            if (l > lcp) src = t, lcp = l;
        }
        const int64_t reuse = std::min(lcp, T - 1);  // the last token is computed: its logits start the reply
        // the table: the free one holding the prefix, else an empty one, else the least recently used
        // (2 × slots tables, fewer than slots running: there is always a free one)
        int64_t dst = src >= 0 && !tables_[src].seq ? src : -1;
        const bool in_place = dst >= 0;
        for (int64_t t = 0; !in_place && t < (int64_t)tables_.size(); ++t) {
            if (tables_[t].seq) continue;
            if (cache_.pages_held(t) == 0) {
                dst = t;
                break;
            }
            if (dst < 0 || tables_[t].last_use < tables_[dst].last_use) dst = t;
        }
        MOE_ASSERT(dst >= 0 && !tables_[dst].seq);
        if (src >= 0 && src != dst) cache_.share(dst, src, reuse);
        else cache_.truncate(dst, reuse);
        // pages kept by free tables are given back only when that can be enough
        int64_t kept = 0;
        for (int64_t t = 0; t < (int64_t)tables_.size(); ++t)
            if (t != dst && !tables_[t].seq) kept += cache_.pages_held(t);
        if (cache_.pages_to_write(dst, reuse, T) > cache_.free_pages() + kept || !obtain(dst, reuse, T)) {
            // not enough pages for the prompt: it waits (and those behind it) for running ones to end
            cache_.truncate(dst, src == dst ? reuse : 0);
            if (src == dst) tables_[dst].tokens.assign(s.tokens.begin(), s.tokens.begin() + reuse);
            else tables_[dst].tokens.clear();
            break;
        }
        tables_[dst].seq = &s;
        tables_[dst].tokens.clear();
        s.table = dst;
        s.n_cached = reuse;
        if (!s.admitted) {
            s.admitted = true;
            s.r->cached += s.choice == 0 ? reuse : 0;
            std::lock_guard<std::mutex> lk(mu_);
            stats_.reused_prompt_tokens += reuse;
            stats_.prompt_tokens += s.n_prompt - reuse;
        }
        auto at = std::find_if(running_.begin(), running_.end(), [&](const std::unique_ptr<Seq>& p) { return p->order > s.order; });
        running_.insert(at, std::move(waiting_[w]));
        waiting_.erase(waiting_.begin() + (std::ptrdiff_t)w);
    }
    count_waiting();
}

// Requests with a choice in waiting_ (a request's choices are adjacent there).
void Engine::count_waiting() {
    int64_t n = 0;
    for (size_t i = 0; i < waiting_.size(); ++i) n += i == 0 || waiting_[i]->r != waiting_[i - 1]->r;
    std::lock_guard<std::mutex> lk(mu_);
    waiting_requests_ = n;
}

void Engine::finish(Seq& s, const char* reason, int32_t eos, std::vector<std::vector<ExpertChoice>> route) {
    if (s.done) return;
    s.done = true;
    if (std::strcmp(reason, "cancelled") == 0) s.r->cancelled = true;
    EngineEvent ev;
    ev.kind = EngineEvent::Kind::finish;
    ev.choice = s.choice;
    ev.token = eos;
    ev.route = std::move(route);
    ev.finish_reason = reason;
    ev.completion_tokens = s.generated;
    if (!s.stop.stopped()) {
        std::string rest = s.dec ? s.dec->finish() : std::string();
        ev.text = s.stop.feed(rest);
        if (!s.stop.stopped()) ev.text += s.stop.finish();
    }
    s.r->push(std::move(ev));
    s.r->completion += s.generated;
    release(s);
    if (s.choice == 0) s.r->prompt_done = true;  // (the other choices no longer wait for it)
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

void Engine::sample(Seq& s, int64_t row, int64_t capture) {
    const EngineRequest& q = s.r->req;
    const float* lg = model_.logits() + row * V_;
    EngineEvent ev;
    ev.kind = EngineEvent::Kind::token;
    ev.choice = s.choice;
    if (capture >= 0) {  // the route of `row`: the model copied it out as capture row `capture`
        const ModelConfig& cfg = model_.config();
        const int64_t L = cfg.n_layer, K = cfg.n_expert_used;
        const int32_t* ex = model_.captured_experts().data() + capture * L * K;
        const float* wt = model_.captured_weights().data() + capture * L * K;
        ev.route.resize(L);
        for (int64_t l = 0; l < L; ++l) {
            if (!cfg.layer_moe[l]) continue;
            ev.route[l].resize(K);
            for (int64_t k = 0; k < K; ++k) ev.route[l][k] = {ex[l * K + k], wt[l * K + k]};
        }
    }
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
        finish(s, "stop", id, std::move(ev.route));  // the end-of-sequence token itself is not text
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

void Engine::publish_stats() {
    // distinct pages of running sequences (shared pages count once)
    std::fill(page_mark_.begin(), page_mark_.end(), 0);
    int64_t used = 0;
    for (int64_t t = 0; t < (int64_t)tables_.size(); ++t) {
        if (!tables_[t].seq) continue;
        for (int64_t i = 0; i < cache_.max_pages; ++i) {
            const int32_t p = cache_.page_id(t, i);
            if (p >= 0 && !page_mark_[p]) page_mark_[p] = 1, ++used;
        }
    }
    const int64_t held = cache_.n_pages - cache_.free_pages();
    std::lock_guard<std::mutex> lk(mu_);
    stats_.running = (int64_t)running_.size();
    stats_.waiting = (int64_t)waiting_.size();
    stats_.kv_page = cache_.page;
    stats_.kv_total = cache_.n_pages * cache_.page;
    stats_.kv_bytes = (int64_t)cache_.bytes();
    stats_.kv_used = used * cache_.page;
    stats_.kv_cached = (held - used) * cache_.page;
}

void Engine::step() {
    ++tick_;
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
    if (running_.empty()) return publish_stats();
    const Clock::time_point t0 = Clock::now();
    // the plan: every decode row, then chunks of pending tokens (prompts, or what a preempted
    // sequence recomputes) in arrival order while the budget lasts
    struct Part {
        Seq* s;
        int64_t from, n;
    };
    std::vector<Part> plan;
    int64_t budget = opt_.batch_tokens;
    auto decoding = [](const Seq& s) { return s.generated > 0 && (int64_t)s.tokens.size() - s.n_cached == 1; };
    for (auto& s : running_)
        if (decoding(*s)) plan.push_back({s.get(), s->n_cached, 1}), --budget;
    for (auto& s : running_) {
        if (decoding(*s) || budget <= 0) continue;
        const int64_t n = std::min((int64_t)s->tokens.size() - s->n_cached, budget);
        plan.push_back({s.get(), s->n_cached, n});
        budget -= n;
    }
    // writable pages for the plan, oldest sequence first; when the pool runs out, the youngest
    // running sequence is preempted (possibly the one asking)
    std::stable_sort(plan.begin(), plan.end(), [](const Part& a, const Part& b) { return a.s->order < b.s->order; });
    for (const Part& p : plan) {
        if (p.s->table < 0) continue;  // preempted meanwhile
        while (!obtain(p.s->table, p.from, p.from + p.n)) {
            Seq* victim = running_.back().get();  // arrival order: the youngest
            preempt(*victim);
            if (victim == p.s) break;
        }
    }
    std::vector<int32_t> tk, sid, pos;
    std::vector<std::pair<Seq*, int64_t>> to_sample;  // (sequence, its last row)
    for (const Part& p : plan) {
        if (p.s->table < 0) continue;
        for (int64_t i = 0; i < p.n; ++i) {
            tk.push_back(p.s->tokens[p.from + i]);
            sid.push_back((int32_t)p.s->table);
            pos.push_back((int32_t)(p.from + i));
        }
        if (p.from + p.n == (int64_t)p.s->tokens.size()) to_sample.push_back({p.s, (int64_t)tk.size() - 1});
    }
    // return_routing: only the rows of the sequences that asked are copied out of the model
    capture_rows_.clear();
    for (auto& [s, row] : to_sample)
        if (s->r->req.return_routing) capture_rows_.push_back((int32_t)row);
    model_.set_route_capture(capture_rows_.data(), (int64_t)capture_rows_.size());
    const Clock::time_point f0 = Clock::now();
    if (!tk.empty()) {
        const kernels::BatchInvariantScope invariant(opt_.batch_invariant);
        model_.forward_cached(tk.data(), sid.data(), pos.data(), (int64_t)tk.size(), cache_, true);
    }
    const double forward = std::chrono::duration<double>(Clock::now() - f0).count();
    for (auto& s : running_) {
        s->n_cached = cache_.len[s->table];
        if (s->choice == 0 && s->n_cached >= s->n_prompt) s->r->prompt_done = true;
    }
    int64_t captured = 0;
    for (auto& [s, row] : to_sample) sample(*s, row, s->r->req.return_routing ? captured++ : -1);
    running_.erase(std::remove_if(running_.begin(), running_.end(), gone), running_.end());
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    publish_stats();
    std::lock_guard<std::mutex> lk(mu_);
    stats_.steps += 1;
    stats_.step_seconds += dt;
    stats_.forward_seconds += forward;
    stats_.generated_tokens += (int64_t)to_sample.size();
    const auto& load = model_.cached_expert_load();
    if (stats_.expert_tokens.size() != load.size()) stats_.expert_tokens.assign(load.size(), {});
    for (size_t l = 0; l < load.size(); ++l) {
        if (stats_.expert_tokens[l].size() != load[l].size()) stats_.expert_tokens[l].assign(load[l].size(), 0);
        for (size_t e = 0; e < load[l].size(); ++e) stats_.expert_tokens[l][e] += load[l][e];
    }
}

}  // namespace moe
