// `moe serve`: OpenAI-compatible HTTP over the continuous-batching engine (infer/engine.h), with
// cpp-httplib (blocking, a thread pool: each open SSE stream holds a pool thread) and nlohmann
// JSON. Every request is checked field by field here; whatever a client sends ends in a response
// (400/401/404/413/429/500/503 with OpenAI's error object), never in an assert. docs/serving.md.
#include <moe/server.h>
#include <moe/moe.h>

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/loaded_model.h"
#include "core/error.h"
#include "infer/engine.h"
#include "server/chat_page.h"
#include "server/request.h"

namespace moe {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

using srv::dump;
using srv::HttpError;

void set_error(httplib::Response& res, int status, const std::string& msg, const std::string& type,
               const std::string& code) {
    res.status = status;
    json e = {{"error", {{"message", msg}, {"type", type}, {"code", code.empty() ? json(nullptr) : json(code)}}}};
    res.set_content(dump(e), "application/json");
}

// ------------------------------------------------------------------ the client's connection

// cpp-httplib 0.11 gives a handler no access to its connection. The socket is found by its two
// ends among this process's descriptors (the handler runs on the thread that owns the connection,
// so the descriptor stays this connection's until the handler returns); -1 if none matches.
int connection_fd(const httplib::Request& req) {
    auto ends = [](int fd, bool peer, std::string& host, int& port) {
        sockaddr_storage a{};
        socklen_t n = sizeof a;
        if ((peer ? getpeername(fd, (sockaddr*)&a, &n) : getsockname(fd, (sockaddr*)&a, &n)) != 0) return false;
        char h[NI_MAXHOST], p[NI_MAXSERV];
        if (getnameinfo((sockaddr*)&a, n, h, sizeof h, p, sizeof p, NI_NUMERICHOST | NI_NUMERICSERV) != 0) return false;
        host = h, port = std::atoi(p);
        return true;
    };
    DIR* d = opendir("/proc/self/fd");
    if (!d) return -1;
    int found = -1;
    while (dirent* e = readdir(d)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        const int fd = std::atoi(e->d_name);
        struct stat st {};
        if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
        std::string host;
        int port = -1;
        if (!ends(fd, true, host, port) || port != req.remote_port || host != req.remote_addr) continue;
        if (!ends(fd, false, host, port) || port != req.local_port) continue;
        found = fd;
        break;
    }
    closedir(d);
    return found;
}

// The client closed its end (EOF or an error on the socket); data it sent ahead stays unread.
bool peer_closed(int fd) {
    if (fd < 0) return false;
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP)) return true;
    if (!(p.revents & POLLIN)) return false;
    char c;
    const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

// ------------------------------------------------------------------ the server

struct Server {
    ServeOptions opt;
    std::string model_id;
    std::unique_ptr<LoadedModel> model;
    std::unique_ptr<Engine> engine;
    std::atomic<bool> ready{false}, accepting{true};
    std::atomic<int64_t> http_requests{0}, http_errors{0};
    std::atomic<uint64_t> next_id{1};
    int64_t created = 0;
    Clock::time_point t_start = Clock::now();

    std::string new_id(const char* prefix) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s-%llx%06llx", prefix, (unsigned long long)created,
                      (unsigned long long)next_id.fetch_add(1));
        return buf;
    }

    const Tokenizer& tok() { return model->impl().ck.tokenizer; }

    std::string token_text(int32_t id) {
        try {
            return tok().decode_one(id);
        } catch (const moe::error&) {  // an id of a padded vocabulary beyond the tokenizer's
            return "";
        }
    }

    json usage_json(const EngineEvent& done) {
        return {{"prompt_tokens", done.prompt_tokens},
                {"completion_tokens", done.total_completion_tokens},
                {"total_tokens", done.prompt_tokens + done.total_completion_tokens},
                {"prompt_tokens_details", {{"cached_tokens", done.cached_prompt_tokens}}}};
    }

    static json bytes_of(const std::string& s) {
        json b = json::array();
        for (unsigned char c : s) b.push_back((int)c);
        return b;
    }

    // chat: {"token", "logprob", "bytes", "top_logprobs": [...]}
    json chat_logprob(const EngineEvent& ev) {
        const std::string t = token_text(ev.token);
        json top = json::array();
        for (const TokenLogprob& x : ev.top) {
            const std::string s = token_text(x.id);
            top.push_back({{"token", s}, {"logprob", x.logprob}, {"bytes", bytes_of(s)}});
        }
        return {{"token", t}, {"logprob", ev.logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", top}};
    }

    // return_routing: one token's route, {"token", "text", "experts": (L, K), "weights": (L, K)};
    // a dense layer of a mixed model has empty lists
    json routing_entry(int32_t token, const std::vector<std::vector<ExpertChoice>>& route) {
        json ex = json::array(), wt = json::array();
        for (const auto& layer : route) {
            json e = json::array(), w = json::array();
            for (const ExpertChoice& c : layer) e.push_back(c.expert), w.push_back(c.weight);
            ex.push_back(std::move(e));
            wt.push_back(std::move(w));
        }
        return {{"token", token}, {"text", token_text(token)}, {"experts", ex}, {"weights", wt}};
    }

    // completions: parallel lists
    struct CompletionLogprobs {
        json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
        void add(Server& s, const EngineEvent& ev, int64_t offset) {
            tokens.push_back(s.token_text(ev.token));
            token_logprobs.push_back(ev.logprob);
            json t = json::object();
            for (const TokenLogprob& x : ev.top) t[s.token_text(x.id)] = x.logprob;
            top.push_back(t);
            offsets.push_back(offset);
        }
        json to_json() const {
            return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
        }
    };

    srv::RequestParser parser() { return {*model, tok(), model_id, opt.model, engine->context_length()}; }

    void completion(const httplib::Request& req, httplib::Response& res, bool chat) {
        const json body = srv::parse_body(req.body);
        srv::CompletionRequest r = parser().completion(body, chat);
        EngineRequest& q = r.q;
        const bool stream = r.stream, include_usage = r.include_usage, want_lp = r.want_logprobs;
        const std::string& echo_text = r.echo_text;
        const int64_t n = q.n;
        const bool routing = q.return_routing;
        if (!accepting.load()) throw HttpError{503, "the server is shutting down", "unavailable_error", "unavailable"};
        EngineHandle h = engine->submit(std::move(q));
        const std::string id = new_id(chat ? "chatcmpl" : "cmpl");
        const int64_t now = (int64_t)std::time(nullptr);
        const char* object = chat ? "chat.completion" : "text_completion";
        if (!stream) {
            std::vector<std::string> text(n, echo_text);
            std::vector<std::string> finish(n, "length");
            std::vector<json> chat_lp(n, json::array());
            std::vector<CompletionLogprobs> comp_lp(n);
            std::vector<json> routes(n, json::array());
            EngineEvent ev, done;
            // a client that leaves is noticed within 100 ms and its request cancelled
            const int fd = connection_fd(req);
            auto last_check = Clock::now();
            bool left = false;
            for (;;) {
                const bool got = h.next(ev, 100);
                if (!left && Clock::now() - last_check >= std::chrono::milliseconds(100)) {
                    last_check = Clock::now();
                    if (peer_closed(fd)) {
                        left = true;
                        h.cancel();
                    }
                }
                if (!got) continue;
                if (ev.kind == EngineEvent::Kind::token) {
                    if (want_lp) {
                        if (chat) chat_lp[ev.choice].push_back(chat_logprob(ev));
                        else comp_lp[ev.choice].add(*this, ev, (int64_t)text[ev.choice].size());
                    }
                    text[ev.choice] += ev.text;
                    if (routing) routes[ev.choice].push_back(routing_entry(ev.token, ev.route));
                } else if (ev.kind == EngineEvent::Kind::finish) {
                    text[ev.choice] += ev.text;
                    finish[ev.choice] = ev.finish_reason;
                    if (routing && !ev.route.empty()) routes[ev.choice].push_back(routing_entry(ev.token, ev.route));
                } else {
                    done = ev;
                    break;
                }
            }
            json choices = json::array();
            for (int64_t i = 0; i < n; ++i) {
                json c = {{"index", i}};
                if (chat) {
                    c["message"] = {{"role", "assistant"}, {"content", text[i]}};
                    c["logprobs"] = want_lp ? json{{"content", chat_lp[i]}} : json(nullptr);
                } else {
                    c["text"] = text[i];
                    c["logprobs"] = want_lp ? comp_lp[i].to_json() : json(nullptr);
                }
                c["finish_reason"] = finish[i];
                if (routing) c["moe_routing"] = routes[i];
                choices.push_back(c);
            }
            json out = {{"id", id}, {"object", object}, {"created", now}, {"model", model_id},
                        {"system_fingerprint", "moe"}, {"choices", choices}, {"usage", usage_json(done)}};
            res.set_content(dump(out), "application/json");
            return;
        }
        // streaming: one SSE event per token and choice, a finish chunk per choice, usage, [DONE]
        const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
        auto state = std::make_shared<std::vector<int64_t>>(n, 0);  // text offset per choice (completions)
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider(
            "text/event-stream",
            [this, h, id, now, chat, n, echo_text, want_lp, include_usage, chunk_object, state, routing](
                size_t, httplib::DataSink& sink) mutable -> bool {
                auto send = [&](const json& j) {
                    const std::string s = "data: " + dump(j) + "\n\n";
                    return sink.write(s.data(), s.size());
                };
                auto chunk = [&](json choice) {
                    json c = {{"id", id}, {"object", chunk_object}, {"created", now}, {"model", model_id},
                              {"system_fingerprint", "moe"}, {"choices", json::array({choice})}};
                    if (include_usage) c["usage"] = nullptr;
                    return c;
                };
                auto fail_out = [&] {
                    h.cancel();
                    return false;
                };
                // the first chunk of each choice: the role (chat) or the echoed prompt
                for (int64_t i = 0; i < n; ++i) {
                    json c = {{"index", i}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
                    if (chat) c["delta"] = {{"role", "assistant"}, {"content", ""}};
                    else c["text"] = echo_text;
                    if ((chat || !echo_text.empty()) && !send(chunk(c))) return fail_out();
                    (*state)[i] = (int64_t)echo_text.size();
                }
                EngineEvent ev;
                auto last_write = Clock::now();
                for (;;) {
                    if (!h.next(ev, 500)) {
                        // a comment now and then: a client that left is noticed while its request waits
                        if (Clock::now() - last_write > std::chrono::seconds(2)) {
                            if (!sink.write(": ping\n\n", 8)) return fail_out();
                            last_write = Clock::now();
                        }
                        continue;
                    }
                    last_write = Clock::now();
                    if (ev.kind == EngineEvent::Kind::token) {
                        json c = {{"index", ev.choice}, {"finish_reason", nullptr}};
                        if (chat) {
                            c["delta"] = {{"content", ev.text}};
                            c["logprobs"] = want_lp ? json{{"content", json::array({chat_logprob(ev)})}} : json(nullptr);
                        } else {
                            c["text"] = ev.text;
                            if (want_lp) {
                                CompletionLogprobs lp;
                                lp.add(*this, ev, (*state)[ev.choice]);
                                c["logprobs"] = lp.to_json();
                            } else c["logprobs"] = nullptr;
                            (*state)[ev.choice] += (int64_t)ev.text.size();
                        }
                        if (routing) c["moe_routing"] = json::array({routing_entry(ev.token, ev.route)});
                        if (!send(chunk(c))) return fail_out();
                    } else if (ev.kind == EngineEvent::Kind::finish) {
                        json c = {{"index", ev.choice}, {"logprobs", nullptr}, {"finish_reason", ev.finish_reason}};
                        if (chat) c["delta"] = ev.text.empty() ? json::object() : json{{"content", ev.text}};
                        else c["text"] = ev.text;
                        if (routing && !ev.route.empty())
                            c["moe_routing"] = json::array({routing_entry(ev.token, ev.route)});
                        if (!send(chunk(c))) return fail_out();
                    } else {
                        if (include_usage) {
                            json u = {{"id", id}, {"object", chunk_object}, {"created", now}, {"model", model_id},
                                      {"system_fingerprint", "moe"}, {"choices", json::array()}, {"usage", usage_json(ev)}};
                            if (!send(u)) return false;
                        }
                        const std::string d = "data: [DONE]\n\n";
                        sink.write(d.data(), d.size());
                        sink.done();
                        return true;
                    }
                }
            },
            [h](bool) mutable { h.cancel(); });  // a no-op once done; a client that left cancels
    }

    std::string metrics() {
        const EngineStats s = engine ? engine->stats() : EngineStats{};
        std::ostringstream o;
        // 15 significant digits: counters and byte counts print exactly up to 10^15 (the stream's
        // default 6 printed 1234567 tokens as 1.23457e+06), and 0.1 still prints as 0.1
        o.precision(15);
        auto gauge = [&](const char* name, const char* help, double v, const char* type = "gauge") {
            o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n" << name << " " << v << "\n";
        };
        gauge("moe_requests_running", "sequences decoding now", (double)s.running);
        gauge("moe_requests_waiting", "sequences waiting for a slot", (double)s.waiting);
        gauge("moe_requests_total", "requests finished", (double)s.requests_done, "counter");
        gauge("moe_requests_cancelled_total", "requests cancelled (the client left, or shutdown)", (double)s.requests_cancelled,
              "counter");
        gauge("moe_prompt_tokens_total", "prompt tokens computed (reused prefixes excluded)", (double)s.prompt_tokens, "counter");
        gauge("moe_prompt_tokens_reused_total", "prompt tokens shared from cached pages", (double)s.reused_prompt_tokens, "counter");
        gauge("moe_generated_tokens_total", "tokens generated", (double)s.generated_tokens, "counter");
        gauge("moe_engine_steps_total", "engine steps (one forward each)", (double)s.steps, "counter");
        gauge("moe_engine_busy_seconds_total", "time spent in engine steps", s.step_seconds, "counter");
        gauge("moe_tokens_per_second", "generated tokens per second of engine time",
              s.step_seconds > 0 ? (double)s.generated_tokens / s.step_seconds : 0.0);
        gauge("moe_kv_cache_used_cells", "KV-pool positions in pages held by running sequences", (double)s.kv_used);
        gauge("moe_kv_cache_cached_cells", "KV-pool positions kept from finished sequences for prefix reuse",
              (double)s.kv_cached);
        gauge("moe_kv_cache_total_cells", "KV-pool positions (--kv-size in whole pages)", (double)s.kv_total);
        gauge("moe_kv_cache_bytes", "bytes of the KV pool's keys and values in its element type (--cache-type)",
              (double)s.kv_bytes);
        gauge("moe_kv_cache_usage_ratio", "used / total KV-pool positions",
              s.kv_total ? (double)s.kv_used / (double)s.kv_total : 0.0);
        gauge("moe_preemptions_total", "running sequences preempted for want of KV pages", (double)s.preemptions,
              "counter");
        gauge("moe_http_requests_total", "HTTP requests received", (double)http_requests.load(), "counter");
        auto histogram = [&](const char* name, const char* help, const std::vector<double>& v) {
            static const double kBuckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
            o << "# HELP " << name << " " << help << " (the last 10000 requests)\n# TYPE " << name << " histogram\n";
            double sum = 0;
            for (double x : v) sum += x;
            for (double b : kBuckets) {
                int64_t c = 0;
                for (double x : v) c += x <= b;
                o << name << "_bucket{le=\"" << b << "\"} " << c << "\n";
            }
            o << name << "_bucket{le=\"+Inf\"} " << v.size() << "\n" << name << "_sum " << sum << "\n"
              << name << "_count " << v.size() << "\n";
        };
        histogram("moe_time_to_first_token_seconds", "time from submission to the first token", s.ttft);
        histogram("moe_request_latency_seconds", "time from submission to the last token", s.latency);
        o << "# HELP moe_expert_tokens_total tokens routed to each expert of each MoE layer\n"
             "# TYPE moe_expert_tokens_total counter\n";
        for (size_t l = 0; l < s.expert_tokens.size(); ++l)
            for (size_t e = 0; e < s.expert_tokens[l].size(); ++e)
                o << "moe_expert_tokens_total{layer=\"" << l << "\",expert=\"" << e << "\"} " << s.expert_tokens[l][e] << "\n";
        return o.str();
    }
};

// Runs a handler: HttpError / moe::error / JSON errors become OpenAI error objects.
template <class F>
void guarded(Server& s, httplib::Response& res, F&& f) {
    s.http_requests.fetch_add(1);
    try {
        f();
    } catch (const HttpError& e) {
        set_error(res, e.status, e.message, e.type, e.code);
    } catch (const EngineBusy& e) {
        const bool closing = !s.accepting.load();
        set_error(res, closing ? 503 : 429, e.what(), closing ? "unavailable_error" : "rate_limit_error",
                  closing ? "unavailable" : "queue_full");
        res.set_header("Retry-After", "1");
    } catch (const moe::error& e) {
        set_error(res, 400, e.what(), "invalid_request_error", "invalid_value");
    } catch (const json::exception& e) {
        set_error(res, 400, std::string("bad JSON value: ") + e.what(), "invalid_request_error", "invalid_type");
    } catch (const std::bad_alloc&) {
        set_error(res, 500, "out of memory", "server_error", "internal_error");
    } catch (const std::exception& e) {
        set_error(res, 500, e.what(), "server_error", "internal_error");
    }
    if (res.status >= 400) s.http_errors.fetch_add(1);
}

}  // namespace

int serve(const ServeOptions& opt) {
    if (opt.port < 0 || opt.port > 65535) fail("--port must be in [0, 65535], got ", opt.port);
    if (opt.parallel < 1 || opt.parallel > 256) fail("--parallel must be in [1, 256], got ", opt.parallel);
    if (opt.ctx_size < 0) fail("--ctx-size must be >= 0, got ", opt.ctx_size);
    if (opt.kv_size < 0) fail("--kv-size must be >= 0, got ", opt.kv_size);
    LoadedModel::check_cache_type(opt.cache_type, "serve --cache-type");
    if (opt.max_queue < 1 || opt.max_queue > 65536) fail("--max-queue must be in [1, 65536], got ", opt.max_queue);
    if (opt.http_threads < 0 || opt.http_threads > 65536) fail("--http-threads must be in [0, 65536], got ", opt.http_threads);
    if (!(opt.timeout > 0 && opt.timeout <= 86400)) fail("--timeout must be in (0, 86400] seconds, got ", opt.timeout);
    if (opt.model.empty() == opt.config.empty()) fail("give one of --model PATH and --config FILE (random weights)");
    if (!opt.dtype.empty() && opt.dtype != "fp32" && opt.dtype != "bf16" && opt.dtype != "int8")
        fail("--dtype must be fp32, bf16 or int8, got '", opt.dtype, "'");
    set_threads(opt.threads);
    // SIGTERM / SIGINT are taken by sigwait below: block them in every thread started from here on
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    signal(SIGPIPE, SIG_IGN);  // a client that left: a failed write, not a dead server

    Server s;
    s.opt = opt;
    s.created = (int64_t)std::time(nullptr);
    const std::string& src = opt.model.empty() ? opt.config : opt.model;
    std::string base = opt.model.empty() ? std::filesystem::path(src).stem().string()
                                          : std::filesystem::path(src).lexically_normal().filename().string();
    if (base.empty() || base == ".") base = std::filesystem::path(src).lexically_normal().parent_path().filename().string();
    s.model_id = base.empty() ? src : base;

    httplib::Server http;
    // Each connection holds a pool thread while it is read, while its request runs or waits (a
    // stream: until its last chunk), and while kept alive: room for every running and waiting
    // request, and some for slow clients, /health and /metrics. A read or write that blocks longer
    // than --timeout ends its connection (a stream's request is then cancelled).
    const size_t pool = (size_t)(opt.http_threads > 0 ? opt.http_threads : opt.parallel + opt.max_queue + 16);
    http.new_task_queue = [pool] { return new httplib::ThreadPool(pool); };
    http.set_payload_max_length((size_t)opt.max_body_bytes);
    const auto io_timeout = std::chrono::microseconds((int64_t)(opt.timeout * 1e6));
    http.set_read_timeout(io_timeout);
    http.set_write_timeout(io_timeout);
    http.set_keep_alive_timeout(5);
    http.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
        // the chat page is static (no data, no secret): it asks for the key itself
        if (req.path == "/" && req.method == "GET") return httplib::Server::HandlerResponse::Unhandled;
        if (!opt.api_key.empty() && req.path != "/health") {
            const std::string want = "Bearer " + opt.api_key;
            if (req.get_header_value("Authorization") != want) {
                set_error(res, 401, "a valid API key is needed: 'Authorization: Bearer KEY'", "authentication_error",
                          "invalid_api_key");
                s.http_errors.fetch_add(1);
                return httplib::Server::HandlerResponse::Handled;
            }
        }
        if (req.path != "/health" && req.path != "/metrics" && !s.ready.load()) {
            set_error(res, 503, "the model is loading", "unavailable_error", "loading");
            res.set_header("Retry-After", "1");
            return httplib::Server::HandlerResponse::Handled;
        }
        return httplib::Server::HandlerResponse::Unhandled;
    });
    // statuses set by httplib itself (404 no route, 413 body too large, 400 bad request line):
    // OpenAI's error object when the handler left no body
    http.set_error_handler([&](const httplib::Request&, httplib::Response& res) {
        if (!res.body.empty()) return;
        const int st = res.status;
        const std::string msg = st == 404 ? "no such endpoint"
                                : st == 413 ? "the request body is larger than " + std::to_string(opt.max_body_bytes) + " bytes"
                                : st == 405 ? "method not allowed"
                                            : "bad request";
        set_error(res, st, msg, st == 404 ? "not_found_error" : "invalid_request_error",
                  st == 413 ? "payload_too_large" : st == 404 ? "not_found" : "bad_request");
    });
    http.set_exception_handler([&](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        set_error(res, 500, "internal error", "server_error", "internal_error");
    });

    http.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
        if (!s.ready.load()) {
            set_error(res, 503, "the model is loading", "unavailable_error", "loading");
            return;
        }
        res.set_content(s.accepting.load() ? R"({"status":"ok"})" : R"({"status":"shutting down"})", "application/json");
        if (!s.accepting.load()) res.status = 503;
    });
    http.Get("/", [&](const httplib::Request&, httplib::Response& res) {
        s.http_requests.fetch_add(1);
        res.set_header("Cache-Control", "no-cache");
        res.set_content(server::kChatPage, sizeof(server::kChatPage) - 1, "text/html; charset=utf-8");
    });
    auto models = [&](const httplib::Request&, httplib::Response& res) {
        guarded(s, res, [&] {
            const ModelConfig& cfg = s.model->impl().ck.model->config();
            const bool moe = cfg.any_moe();
            json m = {{"id", s.model_id}, {"object", "model"}, {"created", s.created}, {"owned_by", "moe"},
                      {"meta", {{"n_ctx", s.engine->context_length()}, {"n_vocab", s.model->vocab_size()},
                                {"dtype", s.model->weight_type()}, {"parallel", opt.parallel},
                                {"n_layer", cfg.n_layer}, {"n_expert", moe ? cfg.n_expert : 0},
                                {"n_expert_used", moe ? cfg.n_expert_used : 0}}}};
            res.set_content(dump({{"object", "list"}, {"data", json::array({m})}}), "application/json");
        });
    };
    http.Get("/v1/models", models);
    http.Get("/models", models);
    http.Post("/v1/completions", [&](const httplib::Request& req, httplib::Response& res) {
        guarded(s, res, [&] { s.completion(req, res, false); });
    });
    http.Post("/v1/chat/completions", [&](const httplib::Request& req, httplib::Response& res) {
        guarded(s, res, [&] { s.completion(req, res, true); });
    });
    http.Post("/tokenize", [&](const httplib::Request& req, httplib::Response& res) {
        guarded(s, res, [&] {
            const std::vector<int32_t> ids = s.parser().tokenize(srv::parse_body(req.body));
            res.set_content(dump({{"tokens", ids}}), "application/json");
        });
    });
    http.Post("/detokenize", [&](const httplib::Request& req, httplib::Response& res) {
        guarded(s, res, [&] {
            const std::vector<int32_t> ids = s.parser().detokenize_ids(srv::parse_body(req.body));
            res.set_content(dump({{"content", s.tok().decode(ids)}}), "application/json");
        });
    });
    http.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
        res.set_content(s.metrics(), "text/plain; version=0.0.4");
    });

    // cpp-httplib 0.11 listens with a backlog of 5: a burst of clients overflows it (resets). The
    // listening socket is kept here (httplib's default options) and listens again with more.
    int listen_fd = -1;
    http.set_socket_options([&listen_fd](int sock) {
        httplib::default_socket_options(sock);
        listen_fd = sock;
    });
    int port = opt.port;
    if (port == 0) {
        port = http.bind_to_any_port(opt.host);
        if (port < 0) fail("cannot bind ", opt.host, " to a free port");
    } else if (!http.bind_to_port(opt.host, port)) {
        fail("cannot bind ", opt.host, ":", port, " (in use, or not an address of this machine)");
    }
    if (listen_fd >= 0) ::listen(listen_fd, SOMAXCONN);
    const std::string url = "http://" + opt.host + ":" + std::to_string(port);
    std::thread listener([&] { http.listen_after_bind(); });
    if (opt.on_listening) opt.on_listening(url);

    // the load: /health answers 503 meanwhile
    int rc = 0;
    try {
        s.model = opt.model.empty()
                      ? std::make_unique<LoadedModel>(LoadedModel::random(opt.config, opt.dtype, opt.init_seed, opt.ctx_size))
                      : std::make_unique<LoadedModel>(opt.model, opt.dtype, "serve --dtype", opt.ctx_size);
        if (!opt.chat_template.empty()) s.model->set_chat_template(read_text(opt.chat_template, "--chat-template"));
        s.model->has_chat_template();  // parsed now, before request threads read it
        s.model->set_cache_type(opt.cache_type, "serve --cache-type");
        if (const std::string note = s.model->repack_note(); !note.empty() && opt.on_note) opt.on_note(note);
        LoadedModel::Impl& m = s.model->impl();
        EngineOptions eo;
        eo.slots = opt.parallel;
        eo.kv_positions = opt.kv_size;
        eo.batch_tokens = opt.batch_tokens;
        eo.max_queue = opt.max_queue;
        s.engine = std::make_unique<Engine>(*m.ck.model, m.ck.tokenizer, eo);
    } catch (...) {
        http.stop();
        listener.join();
        throw;
    }
    s.ready.store(true);
    if (opt.on_ready) opt.on_ready(url);

    int sig = 0;
    sigwait(&sigs, &sig);
    // stop accepting (new requests get 503), let what runs finish within the grace period, then close
    s.accepting.store(false);
    s.engine->stop(opt.shutdown_grace);
    http.stop();
    listener.join();
    s.engine.reset();
    return rc;
}

}  // namespace moe
