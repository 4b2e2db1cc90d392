#pragma once
// Continuous batching (docs/serving.md): one engine thread runs the model for every request. Each
// step builds one forward_cached batch from the decode row of every running sequence plus chunks
// of waiting prompts, up to a token budget; requests join and leave at any step. Requests are
// submitted from any thread and read back through their handle (a queue of events: text pieces
// with their tokens and logprobs, then each choice's finish, then the usage).
//
// KV cache: the model's per-slot cache, `slots` sequences of n_ctx positions each (one slot per
// running choice). A slot keeps the tokens of its last sequence after it ends, and a new prompt
// goes to the free slot sharing the longest prefix with it: that prefix is not computed again
// (a chat that resends its history prefills only the new turn).
//
// Batch invariance: the engine runs every forward under kernels::BatchInvariantScope, so each row
// of a batch is computed with arithmetic that does not depend on the other rows; a request with
// temperature 0, or with a seed, gives the same tokens and logprobs alone or among any others, in
// any order of arrival, and whatever slot or prefix reuse it gets.
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
    int64_t batch_tokens = 256;    // rows per forward: decode rows first, then prompt chunks
    int64_t max_queue = 256;       // requests waiting for a slot before submit refuses (EngineBusy)
    bool batch_invariant = true;   // kernels::BatchInvariantScope around every forward
    bool prefix_reuse = true;      // reuse a free slot's cached prefix
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
    int64_t requests_done = 0, prompt_tokens = 0, generated_tokens = 0, reused_prompt_tokens = 0;
    int64_t requests_cancelled = 0;           // finished requests with a choice cancelled (client left, stop)
    int64_t requests_waiting = 0;             // requests with a choice waiting for a slot (queued ones included)
    int64_t steps = 0, kv_used = 0, kv_total = 0;  // positions filled in busy slots / all
    double step_seconds = 0;                  // total time in forward + sampling
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
    void loop();
    void step();
    void admit();
    void count_waiting();
    void finish(Seq& s, const char* reason);
    void sample(Seq& s, int64_t row);

    Model& model_;
    const Tokenizer& tok_;
    EngineOptions opt_;
    int64_t n_ctx_ = 0, V_ = 0;
    layers::KvCache cache_;
    std::vector<std::vector<int32_t>> slot_tokens_;  // (slots) tokens whose KV the slot holds
    std::vector<bool> slot_busy_;
    std::vector<int32_t> eos_;

    mutable std::mutex mu_;  // guards queue_, stopping_, stats_
    std::condition_variable cv_;
    std::deque<std::shared_ptr<EngineRequestState>> queue_;
    int64_t waiting_requests_ = 0;  // requests of waiting_ (engine thread writes, under mu_)
    bool accepting_ = true, stopping_ = false;
    std::chrono::steady_clock::time_point deadline_;
    EngineStats stats_;

    std::vector<std::unique_ptr<Seq>> running_;  // engine thread only
    std::vector<std::unique_ptr<Seq>> waiting_;  // admitted choices without a slot
    std::vector<double> scratch_, lp_;
    std::vector<float> logit_buf_;
    std::thread thread_;
};

}  // namespace moe
