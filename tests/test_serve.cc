// `moe serve` as the real binary on a free loopback port, driven by curl and raw sockets (needs no
// Python): the error cases (401, 400 shapes, 413, unknown model, too long a prompt) and a seeded
// loop of garbage bodies, concurrent greedy requests each equal to the same request served alone,
// slow and stalled clients that do not stall the others, a full queue (429 + Retry-After), a
// non-streaming client that leaves (cancelled), and SIGTERM ending the server with status 0.
// The PyPI openai client drives it in tests/serve/test_openai_client.py (serve.openai_client).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli_util.h"

using namespace moe_test;

namespace {

const std::string kData = std::string(MOE_TEST_DIR) + "/data/";

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A raw loopback connection: what a misbehaving client does, byte by byte.
struct Conn {
    int fd = -1;
    Conn(int port, int rcvbuf = 0) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);  // before connect: the window
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (sockaddr*)&a, sizeof a) != 0) close();
    }
    ~Conn() { close(); }
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;
    void close() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    bool send(const std::string& s) {
        size_t at = 0;
        while (fd >= 0 && at < s.size()) {
            const ssize_t n = ::send(fd, s.data() + at, s.size() - at, MSG_NOSIGNAL);
            if (n <= 0) return false;
            at += (size_t)n;
        }
        return fd >= 0;
    }
    // Reads until the server closes or timeout_s passes.
    std::string read_all(double timeout_s) {
        std::string out;
        const auto t0 = Clock::now();
        char buf[4096];
        while (fd >= 0) {
            const double left = timeout_s - since(t0);
            if (left <= 0) break;
            pollfd p{fd, POLLIN, 0};
            if (poll(&p, 1, (int)(left * 1000) + 1) <= 0) break;
            const ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            out.append(buf, (size_t)n);
        }
        return out;
    }
};

int status_of(const std::string& response) {  // "HTTP/1.1 200 OK..." -> 200, 0 for none
    if (response.compare(0, 5, "HTTP/") != 0) return 0;
    const size_t sp = response.find(' ');
    return sp == std::string::npos ? 0 : std::atoi(response.c_str() + sp + 1);
}

std::string body_of(const std::string& response) {
    const size_t at = response.find("\r\n\r\n");
    return at == std::string::npos ? "" : response.substr(at + 4);
}

std::string post(const std::string& path, const std::string& body, bool close = true) {
    return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
           (close ? "Connection: close\r\n" : "") + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
           body;
}

class Serve : public CliTest {
protected:
    pid_t pid = -1;
    std::string url;
    int port() const { return std::atoi(url.substr(url.rfind(':') + 1).c_str()); }
    // One sample of /metrics ("name value" lines), -1 when absent.
    double metric(const std::string& name) {
        Conn c(port());
        c.send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        const std::string r = c.read_all(10);
        const size_t at = r.find("\n" + name + " ");
        return at == std::string::npos ? -1 : std::atof(r.c_str() + at + name.size() + 2);
    }
    // Waits up to timeout_s for metric(name) to satisfy ok; true if it did.
    template <class F>
    bool wait_metric(const std::string& name, F ok, double timeout_s) {
        const auto t0 = Clock::now();
        while (since(t0) < timeout_s) {
            if (ok(metric(name))) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        return false;
    }

    void start(const std::string& extra, const std::string& family = "qwen3_moe") {
        const std::string d = path("tiny");
        fs::create_directories(d);
        for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
            fs::copy_file(kData + "hf/" + family + "/" + f, d + "/" + f);
        fs::copy_file(kData + "tokenizers/moe_export/byte.tokenizer.json", d + "/tokenizer.json");
        write_file(d + "/tokenizer_config.json",
                   R"({"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"})");
        const std::string out = path("serve.out");
        pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            const std::string cmd = "exec " + q(MOE_BINARY) + " serve --model " + q(d) + " --port 0 --threads 1 " + extra +
                                    " > " + q(out) + " 2>&1";
            setenv("OMP_WAIT_POLICY", "passive", 1);
            execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
            _exit(127);
        }
        url = wait_for_ready_url(out);
        ASSERT_FALSE(url.empty()) << read_file(out);
    }
    void TearDown() override {
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
        CliTest::TearDown();
    }
    // curl: "STATUS\nBODY"
    std::pair<int, std::string> call(const std::string& path, const std::string& body, const std::string& headers = "") {
        static std::atomic<int> counter{0};
        const std::string bf = this->path("body" + std::to_string(counter.fetch_add(1)));
        write_file(bf, body);
        const std::string cmd = "curl -s -m 30 -o " + q(bf + ".out") + " -w '%{http_code}' " + headers +
                                (body.empty() ? "" : " --data-binary @" + q(bf)) + " " + q(url + path);
        std::string code;
        if (FILE* f = popen(cmd.c_str(), "r")) {
            char buf[64];
            while (size_t n = fread(buf, 1, sizeof buf, f)) code.append(buf, n);
            pclose(f);
        }
        int st = 0;
        try {
            st = std::stoi(code);
        } catch (...) {
        }
        return {st, read_file(bf + ".out")};
    }
    void expect_error(int status, const std::string& path, const std::string& body, const std::string& code,
                      const std::string& headers = "-H 'Authorization: Bearer k'") {
        auto [st, out] = call(path, body, headers);
        EXPECT_EQ(st, status) << path << " " << body.substr(0, 80) << "\n" << out;
        json j;
        try {
            j = json::parse(out);
        } catch (...) {
            ADD_FAILURE() << "not JSON: " << out;
            return;
        }
        ASSERT_TRUE(j.contains("error")) << out;
        EXPECT_TRUE(j["error"]["message"].is_string()) << out;
        EXPECT_TRUE(j["error"]["type"].is_string()) << out;
        if (!code.empty()) {
            EXPECT_EQ(j["error"]["code"], code) << out;
        }
    }
};

TEST_F(Serve, ErrorsConcurrencyAndSigterm) {
    start("--parallel 4 --api-key k");
    const std::string auth = "-H 'Authorization: Bearer k'";
    EXPECT_EQ(call("/health", "").first, 200);
    expect_error(401, "/v1/models", "", "invalid_api_key", "");
    expect_error(401, "/v1/completions", R"({"prompt":"a"})", "invalid_api_key", "-H 'Authorization: Bearer nope'");
    expect_error(400, "/v1/completions", "{oops", "invalid_json");
    expect_error(400, "/v1/completions", "42", "invalid_json");
    expect_error(400, "/v1/completions", R"({"prompt":"a","max_tokens":"many"})", "invalid_type");
    expect_error(400, "/v1/completions", R"({"prompt":"a","max_tokens":0})", "invalid_value");
    expect_error(400, "/v1/completions", R"({"prompt":"a","n":99})", "invalid_value");
    expect_error(400, "/v1/completions", R"({"prompt":"a","temperature":-1})", "invalid_value");
    expect_error(400, "/v1/completions", R"({"prompt":{"x":1}})", "invalid_type");
    expect_error(400, "/v1/completions", R"({"prompt":[1,2,99999]})", "invalid_value");
    expect_error(400, "/v1/chat/completions", R"({"messages":[{"content":"no role"}]})", "invalid_type");
    expect_error(400, "/v1/chat/completions", R"({"model":"nope","messages":[{"role":"user","content":"a"}]})",
                 "model_not_found");
    expect_error(400, "/v1/completions", R"({"prompt":")" + std::string(400, 'z') + R"("})", "context_length_exceeded");
    expect_error(413, "/v1/completions", std::string(9 << 20, 'x'), "payload_too_large");
    expect_error(404, "/nowhere", "", "not_found");

    // concurrency: 8 greedy completions at once, each the same as alone
    std::vector<std::string> alone(8), together(8);
    auto body = [](int i) {
        return R"({"prompt":"req )" + std::to_string(i) + std::string(i * 4, 'q') +
               R"(","max_tokens":12,"temperature":0})";
    };
    auto text = [](const std::string& out) {
        try {
            return json::parse(out)["choices"][0]["text"].get<std::string>();
        } catch (...) {
            return std::string("<bad: ") + out + ">";
        }
    };
    for (int i = 0; i < 8; ++i) alone[i] = text(call("/v1/completions", body(i), auth).second);
    std::vector<std::thread> ts;
    for (int i = 0; i < 8; ++i)
        ts.emplace_back([&, i] { together[i] = text(call("/v1/completions", body(i) + " ", auth).second); });
    for (auto& t : ts) t.join();
    EXPECT_EQ(alone, together);
    EXPECT_EQ(call("/health", "").first, 200);  // still serving

    // SIGTERM: exit status 0
    kill(pid, SIGTERM);
    int status = 0;
    pid_t got = 0;
    for (int i = 0; i < 300 && got == 0; ++i) {
        got = waitpid(pid, &status, WNOHANG);
        if (got == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_EQ(got, pid) << "still running 30 s after SIGTERM";
    pid = -1;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// "moe": {"return_routing": true}: per generated token (L, K) experts and weights, the same in the
// stream (chunk by chunk) as in one response, the same among concurrent requests as alone; wrong
// types are 400s. GET / is the chat page, served without the API key.
TEST_F(Serve, ReturnRoutingAndChatPage) {
    start("--parallel 4 --api-key k");
    const std::string auth = "-H 'Authorization: Bearer k'";
    auto [st, page] = call("/", "");
    EXPECT_EQ(st, 200);
    EXPECT_NE(page.find("<!DOCTYPE html>"), std::string::npos);
    EXPECT_NE(page.find("return_routing"), std::string::npos);
    auto [mst, models] = call("/v1/models", "", auth);
    ASSERT_EQ(mst, 200) << models;
    const json meta = json::parse(models)["data"][0]["meta"];
    EXPECT_EQ(meta["n_layer"], 2);
    EXPECT_EQ(meta["n_expert"], 4);
    EXPECT_EQ(meta["n_expert_used"], 2);

    expect_error(400, "/v1/chat/completions", R"({"messages":[{"role":"user","content":"a"}],"moe":true})", "invalid_type");
    expect_error(400, "/v1/chat/completions", R"({"messages":[{"role":"user","content":"a"}],"moe":[1]})", "invalid_type");
    expect_error(400, "/v1/completions", R"({"prompt":"a","moe":{"return_routing":1}})", "invalid_type");
    expect_error(400, "/v1/completions", R"({"prompt":"a","moe":{"return_routing":"yes"}})", "invalid_type");

    auto body = [](int i, bool stream) {
        return R"({"prompt":"route )" + std::string(i * 3, 'r') + R"(","max_tokens":10,"temperature":0,"moe":{"return_routing":true})" +
               (stream ? R"(,"stream":true)" : "") + "}";
    };
    // (routes of choice 0, completion tokens)
    auto routes_of = [](const std::string& out) -> std::pair<json, int64_t> {
        try {
            const json j = json::parse(out);
            return {j["choices"][0]["moe_routing"], j["usage"]["completion_tokens"].get<int64_t>()};
        } catch (...) {
            return {json("<bad: " + out + ">"), -1};
        }
    };
    std::vector<json> alone(6);
    for (int i = 0; i < 6; ++i) {
        auto [r, n] = routes_of(call("/v1/completions", body(i, false), auth).second);
        ASSERT_TRUE(r.is_array()) << r;
        EXPECT_EQ((int64_t)r.size(), n);
        for (const json& t : r) {
            ASSERT_EQ(t["experts"].size(), 2u) << t;
            ASSERT_EQ(t["weights"].size(), 2u) << t;
            for (int l = 0; l < 2; ++l) {
                ASSERT_EQ(t["experts"][l].size(), 2u) << t;
                EXPECT_NE(t["experts"][l][0], t["experts"][l][1]) << t;
                EXPECT_NEAR(t["weights"][l][0].get<double>() + t["weights"][l][1].get<double>(), 1.0, 1e-5) << t;
            }
            EXPECT_TRUE(t["token"].is_number_integer() && t["text"].is_string()) << t;
        }
        alone[i] = r;
    }
    // the stream: each token chunk carries its token's route
    {
        auto [sst, sse] = call("/v1/completions", body(2, true), auth);
        EXPECT_EQ(sst, 200);
        json streamed = json::array();
        size_t at = 0;
        while ((at = sse.find("data: {", at)) != std::string::npos) {
            const size_t end = sse.find("\n\n", at);
            const json c = json::parse(sse.substr(at + 6, end - at - 6));
            for (const json& ch : c["choices"])
                if (ch.contains("moe_routing"))
                    for (const json& t : ch["moe_routing"]) streamed.push_back(t);
            at = end;
        }
        EXPECT_EQ(streamed, alone[2]);
    }
    // concurrent: the same routes, bit for bit (weights printed with all their digits)
    std::vector<json> together(6);
    std::vector<std::thread> ts;
    for (int i = 0; i < 6; ++i)
        ts.emplace_back([&, i] { together[i] = routes_of(call("/v1/completions", body(i, false), auth).second).first; });
    for (auto& t : ts) t.join();
    for (int i = 0; i < 6; ++i) EXPECT_EQ(together[i], alone[i]) << "request " << i;
    // a request that did not ask has no moe_routing
    const std::string plain = call("/v1/completions", R"({"prompt":"x","max_tokens":3})", auth).second;
    EXPECT_EQ(plain.find("moe_routing"), std::string::npos) << plain;
}

// A dense model: return_routing is a 400 naming it; the rest serves as before.
TEST_F(Serve, ReturnRoutingOnADenseModel) {
    start("--parallel 1", "llama");
    expect_error(400, "/v1/chat/completions",
                 R"({"messages":[{"role":"user","content":"a"}],"max_tokens":2,"moe":{"return_routing":true}})", "");
    auto [st, out] = call("/v1/chat/completions", R"({"messages":[{"role":"user","content":"a"}],"max_tokens":2,"moe":{"return_routing":false}})");
    EXPECT_EQ(st, 200) << out;
    auto [mst, models] = call("/v1/models", "");
    EXPECT_EQ(json::parse(models)["data"][0]["meta"]["n_expert"], 0) << models;
}

// Misbehaving clients hold a connection each, never the server: a body trickled byte by byte, a
// body that stops halfway (read timeout), a stream whose client never reads (write timeout: the
// request is cancelled and its slot freed). Meanwhile other requests complete and /health is 200.
TEST_F(Serve, SlowClientsDoNotStallOthers) {
    // (with an f16 KV cache: the long context's pool at half the bytes; a bad type never loads)
    expect_clean_error(moe("serve --config x.json --cache-type q4_0"), {"--cache-type", "q4_0"});
    start("--parallel 2 --ctx-size 32768 --timeout 2 --cache-type f16");
    // 2 x 32768 positions x 2 layers x (2 kv heads x 24) x K and V x 2 bytes
    EXPECT_EQ(metric("moe_kv_cache_total_cells"), 65536);
    EXPECT_EQ(metric("moe_kv_cache_bytes"), 65536.0 * 2 * 48 * 2 * 2);
    const std::string ok_body = R"({"prompt":"abc","max_tokens":4,"temperature":0})";
    // a stream nobody reads: a tiny receive window, chunks of 5 logprobs each, 4000 tokens
    Conn never_reads(port(), 1024);
    ASSERT_TRUE(never_reads.send(post("/v1/completions",
                                      R"({"prompt":"go","max_tokens":30000,"ignore_eos":true,"temperature":1,"seed":3,"logprobs":5,"stream":true})")));
    ASSERT_TRUE(wait_metric("moe_requests_running", [](double v) { return v == 1; }, 20)) << "the stream never ran";
    // a body that stops halfway
    Conn stalled(port());
    const std::string half = post("/v1/completions", ok_body);
    ASSERT_TRUE(stalled.send(half.substr(0, half.find("\r\n\r\n") + 4 + 10)));
    // a body trickled one byte per 100 ms (each wait well under the 2 s timeout: it is served)
    std::string trickled;
    std::thread trickler([&] {
        Conn c(port());
        const std::string r = post("/v1/completions", ok_body);
        const size_t head = r.find("\r\n\r\n") + 4;
        c.send(r.substr(0, head));
        for (size_t i = head; i < r.size(); ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            c.send(r.substr(i, 1));
        }
        trickled = c.read_all(30);
    });
    // other requests go on meanwhile, each within curl's 30 s (a stalled server would take longer)
    const auto t0 = Clock::now();
    for (int i = 0; i < 6; ++i) {
        auto [st, out] = call("/v1/completions", ok_body);
        EXPECT_EQ(st, 200) << out;
        EXPECT_EQ(call("/health", "").first, 200);
    }
    std::printf("6 requests and health checks beside the slow clients: %.2f s\n", since(t0));
    // the half-sent body: the server gives up on it after the 2 s read timeout (closes, maybe a 400)
    const auto t1 = Clock::now();
    const std::string got = stalled.read_all(15);
    EXPECT_LT(since(t1), 14.0) << "the server never gave up on a stalled body";
    EXPECT_TRUE(got.empty() || status_of(got) == 400) << got.substr(0, 200);
    trickler.join();
    EXPECT_EQ(status_of(trickled), 200) << trickled.substr(0, 300);
    // the stream nobody reads: cancelled once a write blocks for 2 s, its slot freed
    EXPECT_TRUE(wait_metric("moe_requests_cancelled_total", [](double v) { return v >= 1; }, 30))
        << "the unread stream was not cancelled";
    EXPECT_TRUE(wait_metric("moe_requests_running", [](double v) { return v == 0; }, 10));
    EXPECT_EQ(call("/health", "").first, 200);
    EXPECT_EQ(call("/v1/completions", ok_body).first, 200);
}

// A non-streaming request whose client leaves is cancelled (not run to its end).
TEST_F(Serve, DisconnectCancelsNonStreaming) {
    start("--parallel 1 --ctx-size 32768");
    Conn c(port());
    ASSERT_TRUE(c.send(post("/v1/completions", R"({"prompt":"go","max_tokens":30000,"ignore_eos":true,"temperature":1,"seed":5})")));
    ASSERT_TRUE(wait_metric("moe_requests_running", [](double v) { return v == 1; }, 20));
    EXPECT_EQ(metric("moe_requests_cancelled_total"), 0);
    c.close();
    EXPECT_TRUE(wait_metric("moe_requests_cancelled_total", [](double v) { return v == 1; }, 10))
        << "the request of a client that left was not cancelled";
    EXPECT_TRUE(wait_metric("moe_requests_running", [](double v) { return v == 0; }, 10));
    // a client that stays gets its whole reply
    auto [st, out] = call("/v1/completions", R"({"prompt":"go","max_tokens":3,"temperature":0})");
    EXPECT_EQ(st, 200) << out;
    EXPECT_EQ(metric("moe_requests_cancelled_total"), 1);
}

// A full queue: 429 with Retry-After, and the server goes on serving the queued requests.
TEST_F(Serve, FullQueueGets429WithRetryAfter) {
    start("--parallel 1 --max-queue 2 --ctx-size 32768");
    Conn running(port());
    ASSERT_TRUE(running.send(post("/v1/completions", R"({"prompt":"go","max_tokens":30000,"ignore_eos":true,"temperature":1,"seed":9})")));
    ASSERT_TRUE(wait_metric("moe_requests_running", [](double v) { return v == 1; }, 20));
    const std::string small = R"({"prompt":"abc","max_tokens":3,"temperature":0})";
    Conn w1(port()), w2(port());
    ASSERT_TRUE(w1.send(post("/v1/completions", small)));
    ASSERT_TRUE(w2.send(post("/v1/completions", small)));
    ASSERT_TRUE(wait_metric("moe_requests_waiting", [](double v) { return v == 2; }, 20));
    // the third waiting request is refused
    Conn over(port());
    ASSERT_TRUE(over.send(post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":3})")));
    const std::string r = over.read_all(20);
    EXPECT_EQ(status_of(r), 429) << r;
    EXPECT_NE(r.find("Retry-After: 1\r\n"), std::string::npos) << r;
    json e = json::parse(body_of(r), nullptr, false);
    EXPECT_TRUE(e.is_object() && e["error"]["code"] == "queue_full") << r;
    // the running request's client leaves: the queued ones are served
    running.close();
    const std::string r1 = w1.read_all(30), r2 = w2.read_all(30);
    EXPECT_EQ(status_of(r1), 200) << r1;
    EXPECT_EQ(status_of(r2), 200) << r2;
    EXPECT_EQ(call("/v1/completions", small).first, 200);
    EXPECT_EQ(call("/health", "").first, 200);
}

// Every field of the wrong type or out of range is a 400 with OpenAI's error object, and a seeded
// loop of garbage (mutated valid bodies, random bytes, truncations) never brings the server down.
TEST_F(Serve, BadBodiesAndFuzz) {
    start("--parallel 2");
    const std::string m = R"("messages":[{"role":"user","content":"hi"}])";
    for (const auto& [path, body, code] : std::vector<std::tuple<std::string, std::string, std::string>>{
             {"/v1/chat/completions", "", "invalid_json"},
             {"/v1/chat/completions", "null", "invalid_json"},
             {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"hi"}],)", "invalid_json"},
             {"/v1/chat/completions", "{}", "missing_field"},
             {"/v1/chat/completions", R"({"messages":[]})", "invalid_type"},
             {"/v1/chat/completions", R"({"messages":[{"role":"user","content":5}]})", "invalid_type"},
             {"/v1/chat/completions", R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"model":7})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"stream":"yes"})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"stream_options":5})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"stream_options":{"include_usage":1}})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"n":1.5})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"n":"2"})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"n":17})", "invalid_value"},
             {"/v1/chat/completions", "{" + m + R"(,"n":-1})", "invalid_value"},
             {"/v1/chat/completions", "{" + m + R"(,"max_tokens":1e300})", "invalid_value"},
             {"/v1/chat/completions", "{" + m + R"(,"max_tokens":2000000000})", "invalid_value"},
             {"/v1/chat/completions", "{" + m + R"(,"max_completion_tokens":0})", "invalid_value"},
             {"/v1/chat/completions", "{" + m + R"(,"max_tokens":[1]})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"seed":"x"})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"top_logprobs":21,"logprobs":true})", "invalid_value"},
             {"/v1/chat/completions", "{" + m + R"(,"logprobs":1})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"presence_penalty":3})", "invalid_value"},
             {"/v1/chat/completions", "{" + m + R"(,"stop":""})", "invalid_value"},
             {"/v1/chat/completions", "{" + m + R"(,"user":5})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"logit_bias":[1]})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"response_format":"json"})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"tools":{}})", "invalid_type"},
             {"/v1/chat/completions", "{" + m + R"(,"store":"no"})", "invalid_type"},
             {"/v1/completions", R"({"prompt":"a","logprobs":6})", "invalid_value"},
             {"/v1/completions", R"({"prompt":"a","echo":"yes"})", "invalid_type"},
             {"/v1/completions", R"({"prompt":"a","suffix":1})", "invalid_type"},
             {"/v1/completions", R"({"prompt":"a","best_of":"3"})", "invalid_type"},
             {"/v1/completions", R"({"prompt":[]})", "invalid_type"},
             {"/v1/completions", R"({"prompt":[-1]})", "invalid_value"},
             {"/v1/completions", R"({"prompt":"a","model":"gpt-3.5-turbo-instruct"})", "model_not_found"},
             {"/tokenize", R"({"content":1})", "invalid_type"},
             {"/detokenize", R"({"tokens":"ab"})", "invalid_type"},
         }) {
        Conn c(port());
        c.send(post(path, body));
        const std::string r = c.read_all(20);
        EXPECT_EQ(status_of(r), 400) << path << " " << body << "\n" << r;
        json e = json::parse(body_of(r), nullptr, false);
        ASSERT_TRUE(e.is_object() && e.contains("error") && e["error"].is_object()) << body << "\n" << r;
        EXPECT_TRUE(e["error"]["message"].is_string() && e["error"]["type"] == "invalid_request_error") << r;
        EXPECT_EQ(e["error"]["code"], code) << body << "\n" << r;
    }
    // seeded garbage: each answer is an HTTP status with OpenAI's error object for >= 400
    std::mt19937 rng(22);
    const std::vector<std::string> seeds = {
        R"({"prompt":"abc","max_tokens":2,"temperature":0,"logprobs":2,"stop":["x"],"n":2})",
        R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream":true,"top_p":0.5,"seed":1})",
        R"({"prompt":[1,2,3],"max_tokens":2,"echo":true,"stream_options":{"include_usage":true}})",
    };
    const std::vector<std::string> paths = {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"};
    const std::vector<std::string> values = {"null", "true", "-1", "0", "1e309", "1.5", "\"\"", "[]", "{}", "[[[[", "\"\\ud800\"",
                                             "99999999999999999999", "-0", "\"\\u0000\"", "[1,\"a\",null]"};
    int by_status[600] = {};
    const auto t0 = Clock::now();
    for (int i = 0; i < 300; ++i) {
        std::string b = seeds[rng() % seeds.size()];
        switch (rng() % 4) {
        case 0:  // flip bytes
            for (int k = 0, n = 1 + (int)(rng() % 4); k < n; ++k) b[rng() % b.size()] = (char)(rng() % 256);
            break;
        case 1:  // truncate
            b.resize(rng() % b.size());
            break;
        case 2: {  // a value replaced by one of another type
            const size_t colon = b.find(':', rng() % b.size());
            if (colon != std::string::npos) {
                size_t end = colon + 1;
                while (end < b.size() && b[end] != ',' && b[end] != '}') ++end;
                b = b.substr(0, colon + 1) + values[rng() % values.size()] + b.substr(end);
            }
            break;
        }
        default:  // random bytes
            b.assign(rng() % 200, ' ');
            for (char& ch : b) ch = (char)(rng() % 256);
        }
        Conn c(port());
        c.send(post(paths[rng() % paths.size()], b));
        const std::string r = c.read_all(30);
        const int st = status_of(r);
        ASSERT_TRUE(st == 200 || st == 400) << b << "\n" << r.substr(0, 300);
        by_status[st] += 1;
        if (st >= 400) {
            json e = json::parse(body_of(r), nullptr, false);
            ASSERT_TRUE(e.is_object() && e.contains("error") && e["error"]["message"].is_string()) << b << "\n" << r;
        }
    }
    std::printf("300 garbage bodies in %.1f s: %d answered 200, %d answered 400\n", since(t0), by_status[200],
                by_status[400]);
    EXPECT_GT(by_status[400], 100);
    EXPECT_EQ(call("/health", "").first, 200);
    EXPECT_EQ(call("/v1/completions", R"({"prompt":"abc","max_tokens":2})").first, 200);
}

}  // namespace
