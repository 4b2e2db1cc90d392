#pragma once
// moe's OpenAI-compatible HTTP server (docs/serving.md): `moe serve`. Standard library only.
#include <cstdint>
#include <functional>
#include <string>

namespace moe {

struct ServeOptions {
    std::string model;             // Hugging Face directory or moe checkpoint
    std::string config;            // instead of model: random weights of this config (benchmarks)
    uint64_t init_seed = 1;        //   their seed
    std::string host = "127.0.0.1";
    int port = 8080;               // 0: any free port (the ready line names it)
    int64_t parallel = 4;          // sequences decoding at once
    int64_t ctx_size = 0;          // context of each sequence (0: the model's, at most 4096)
    int64_t kv_size = 0;           // KV pool in positions shared by all sequences (0: parallel × context)
    int threads = 0;               // 0 = all cores
    std::string api_key;           // non-empty: every endpoint but /health needs "Authorization: Bearer KEY"
    std::string dtype;             // fp32 | bf16 | int8 | "" (as stored)
    std::string cache_type = "f32";  // the KV cache's elements: f32 | f16 | bf16
    std::string chat_template;     // Jinja file overriding the model's template
    int64_t batch_tokens = 256;    // rows per engine step (decode rows + prompt chunks)
    int64_t max_queue = 256;       // requests waiting for a slot before 429 (with Retry-After)
    int64_t http_threads = 0;      // connections served at once (0: parallel + max_queue + 16)
    double timeout = 30;           // seconds a read or write of a connection may block (slow clients)
    int64_t max_body_bytes = 8 << 20;  // larger request bodies get 413
    double shutdown_grace = 10;    // SIGTERM: seconds in-flight requests get to finish, then cancelled
    // Called once the model is loaded and requests are served, with the base URL ("http://host:port").
    std::function<void(const std::string& url)> on_ready;
    // Called once the port is bound (before the load; /health answers 503 meanwhile).
    std::function<void(const std::string& url)> on_listening;
    // Called after the load with a line worth telling the operator (LoadedModel::repack_note), if any.
    std::function<void(const std::string& line)> on_note;
};

// Binds, loads the model and serves until SIGTERM or SIGINT; then stops accepting, lets in-flight
// requests finish for up to shutdown_grace seconds (cancelling the rest) and returns 0. moe::error
// for a port that cannot be bound or a model that does not load.
int serve(const ServeOptions& opt);

}  // namespace moe
