#pragma once
// Continuous batching (docs/serving.md): one engine thread runs the model for every request. Each
// step builds one forward_cached batch from the decode row of every running sequence plus chunks
// of waiting prompts, up to a token budget; requests join and leave at any step. Requests are
// submitted from any thread and read back through their handle (a queue of events: text pieces
// with their tokens and logprobs, then each choice's finish, then the usage).
//
// KV cache: one paged pool (layers/kv_cache.h) of kv_positions positions shared by all sequences;
// a sequence takes pages as it grows, up to n_ctx. A new sequence shares (reference counts) the
// pages of the longest computed prefix of its prompt held by any running sequence or kept from a
// finished one: that prefix is not computed again (a chat that resends its history prefills only
// the new turn; the n choices of a request compute their prompt once). A shared page is copied
// before a sequence writes into it. When the pool runs out, pages kept from finished sequences go
// first (least recently used), then the youngest running sequence is preempted: it gives its
// pages back and waits, and later recomputes what it had (its output does not change). A waiting
// sequence starts once the pages for its whole prompt are free.
//
// Batch invariance: the engine runs every forward under kernels::BatchInvariantScope, so each row
// of a batch is computed with arithmetic that does not depend on the other rows; a request with
// temperature 0, or with a seed, gives the same tokens and logprobs alone or among any others, in
// any order of arrival, and whatever pages, prefix reuse or preemption it gets.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <moe/moe.h>  // SampleOptions

#include "io/tokenizer.h"
#include "layers/kv_cache.h"
#include "model/model.h"

namespace moe {

struct EngineOptions {
    int64_t slots = 4;             // sequences decoding at once (--parallel)
    int64_t kv_positions = 0;      // KV pool in positions (--kv-size; >= n_ctx); 0: slots × n_ctx
    int64_t batch_tokens = 256;    // rows per forward: decode rows first, then prompt chunks
    int64_t max_queue = 256;       // requests waiting for a slot before submit refuses (EngineBusy)
    bool batch_invariant = true;   // kernels::BatchInvariantScope around every forward
    bool prefix_reuse = true;      // share the pages of cached prefixes (off: every prompt computed in full)
};

struct EngineRequest {
    std::vector<int32_t> prompt;   // 1..n_ctx-1 token ids
    SampleOptions opt;             // max_tokens, temperature, top_k, top_p, repetition_penalty, seed
    double min_p = 0;              // drop tokens with p < min_p * p_max (0 = off)
    double presence_penalty = 0;   // OpenAI's: logit -= presence * [count > 0] + frequency * count
    double frequency_penalty = 0;  //   (counts over the generated tokens)
    std::vector<std::string> stop; // stop strings (the text is cut before the first)
    int64_t n = 1;                 // choices, each its own sequence with random stream (seed, i)
    int64_t top_logprobs = -1;     // -1: no logprobs; 0..20: the chosen token's logprob and this many best
    bool ignore_eos = false;       // an end-of-sequence token is text like any other (benchmarks)
    bool return_routing = false;   // each token's event carries its route (MoE models only)
};

// One routing slot: the expert that served it (-1: a slot dropped by a capacity limit) and its
// combine weight.
struct ExpertChoice {
    int32_t expert = -1;
    float weight = 0;
};

struct TokenLogprob {
    int32_t id = 0;
    float logprob = 0;
};

struct EngineEvent {
    enum class Kind { token, finish, done };
    Kind kind = Kind::token;
    int64_t choice = 0;
    // token: the sampled id and the text it releases (stop strings held back; may be empty).
    // finish: the text still held back, released at the end (may be empty).
    int32_t token = -1;
    std::string text;
    float logprob = 0;                // log-softmax of the raw logits (before temperature and penalties)
    std::vector<TokenLogprob> top;    // the top_logprobs most likely, best first
    // return_routing: the route of the row the token was sampled from (the experts that computed
    // it), (L) layers of K slots each, best first; empty for a dense layer. On a finish event for
    // an end-of-sequence token (which has no token event), that token's id and route.
    std::vector<std::vector<ExpertChoice>> route;
    // finish
    std::string finish_reason;        // "stop" | "length" | "cancelled"
    int64_t completion_tokens = 0;    // of this choice
    // done (last event of a request)
    int64_t prompt_tokens = 0, total_completion_tokens = 0, cached_prompt_tokens = 0;
};

struct EngineRequestState;  // shared by the handle and the engine

// What submit returns: the request's events, in order, from any one thread.
class EngineHandle {
public:
    explicit EngineHandle(std::shared_ptr<EngineRequestState> s) : s_(std::move(s)) {}
    // Waits up to timeout_ms for the next event; false on timeout (nothing taken).
    bool next(EngineEvent& ev, int64_t timeout_ms);
    // Cancels the request: its choices finish with "cancelled" at the next step.
    void cancel();
    bool finished() const;  // the done event has been queued

private:
    std::shared_ptr<EngineRequestState> s_;
};

// Submit refuses with this when the queue is full or the engine stops (HTTP 429 / 503).
struct EngineBusy : moe::error {
    using moe::error::error;
};

struct EngineStats {
    int64_t running = 0, waiting = 0;         // sequences
    // prompt tokens computed and taken from the cache (shared pages), counted per choice
    int64_t requests_done = 0, prompt_tokens = 0, generated_tokens = 0, reused_prompt_tokens = 0;
    int64_t requests_cancelled = 0;           // finished requests with a choice cancelled (client left, stop)
    int64_t requests_waiting = 0;             // requests with a choice waiting for a slot (queued ones included)
    int64_t steps = 0, preemptions = 0;
    // KV pool in positions (whole pages): held by running sequences, kept from finished ones for
    // prefix reuse (given back when the pool needs them), all; free = total - used - cached
    int64_t kv_used = 0, kv_cached = 0, kv_total = 0, kv_page = 0;
    int64_t kv_bytes = 0;  // the pool's K and V in its element type (--cache-type), touched or not
    double step_seconds = 0;                  // total time of the steps (batch building, forward, sampling)
    double forward_seconds = 0;               // of which in the model's forward: the rest is the engine's overhead
    std::vector<std::vector<int64_t>> expert_tokens;  // (L, E) tokens routed, summed over steps
    // seconds: time to first token and end to end, per finished request
    std::vector<double> ttft, latency;        // the last 10000 of each
};

class Engine {
public:
    // The model and tokenizer must outlive the engine; only the engine thread runs the model.
    Engine(Model& model, const Tokenizer& tok, const EngineOptions& opt);
    ~Engine();  // stop(0)
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // Checks the request (moe::error naming the field: a prompt too long for the context names
    // both lengths) and queues it. EngineBusy when the queue is full or the engine is stopping.
    EngineHandle submit(EngineRequest req);
    // Stops accepting, lets running requests finish for up to grace_seconds, cancels the rest and
    // joins the engine thread. Idempotent.
    void stop(double grace_seconds);
    EngineStats stats() const;
    int64_t context_length() const { return n_ctx_; }
    const EngineOptions& options() const { return opt_; }

private:
    struct Seq;
    // A page table of the pool: a running sequence's, or free, keeping the pages of the last
    // sequence that used it (its first cache_.len[t] tokens) for prefix reuse.
    struct Table {
        Seq* seq = nullptr;           // running sequence, or null
        std::vector<int32_t> tokens;  // free: the tokens whose KV it holds
        int64_t last_use = 0;         // step it was last released (least recently used goes first)
    };
    void loop();
    void step();
    void admit();
    void count_waiting();
    // eos and route: the end-of-sequence token that ended it and its route (return_routing)
    void finish(Seq& s, const char* reason, int32_t eos = -1, std::vector<std::vector<ExpertChoice>> route = {});
    void sample(Seq& s, int64_t row, int64_t capture);
    int64_t common_prefix(int64_t t, const std::vector<int32_t>& tokens) const;
    bool evict_one(int64_t keep);                      // a free table's pages back to the pool
    bool obtain(int64_t t, int64_t from, int64_t to);  // writable pages, evicting kept ones as needed
    void release(Seq& s);                              // s leaves its table (kept for reuse)
    void preempt(Seq& s);                              // running -> waiting, pages released
    void publish_stats();                              // under mu_

    Model& model_;
    const Tokenizer& tok_;
    EngineOptions opt_;
    int64_t n_ctx_ = 0, V_ = 0;
    layers::KvCache cache_;    // 2 × slots page tables: running sequences and kept prefixes
    std::vector<Table> tables_;
    int64_t tick_ = 0, next_order_ = 0;
    std::vector<char> page_mark_;
    std::vector<int32_t> eos_;

    mutable std::mutex mu_;  // guards queue_, stopping_, stats_
    std::condition_variable cv_;
    std::deque<std::shared_ptr<EngineRequestState>> queue_;
    int64_t waiting_requests_ = 0;  // requests of waiting_ (engine thread writes, under mu_)
    bool accepting_ = true, stopping_ = false;
    std::chrono::steady_clock::time_point deadline_;
    EngineStats stats_;

    std::vector<std::unique_ptr<Seq>> running_;  // engine thread only; both in arrival order
    std::vector<std::unique_ptr<Seq>> waiting_;  // choices without a page table (new or preempted)
    std::vector<double> scratch_, lp_;
    std::vector<float> logit_buf_;
    std::vector<int32_t> capture_rows_;  // rows whose route the model copies out this step
    std::thread thread_;
};

}  // namespace moe
