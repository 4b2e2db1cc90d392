// `moe serve` as the real binary on a free loopback port, driven by curl (needs no Python): the
// error cases (401, 400 shapes, 413, unknown model, too long a prompt), concurrent greedy requests
// each equal to the same request served alone, and SIGTERM ending the server with status 0.
// The PyPI openai client drives it in tests/serve/test_openai_client.py (serve.openai_client).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "cli_util.h"

using namespace moe_test;

namespace {

const std::string kData = std::string(MOE_TEST_DIR) + "/data/";

class Serve : public CliTest {
protected:
    pid_t pid = -1;
    std::string url;

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
        for (int i = 0; i < 600 && url.empty(); ++i) {  // 60 s
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            const std::string s = read_file(out);
            const size_t at = s.find("ready at ");
            if (at != std::string::npos) url = s.substr(at + 9, s.find(' ', at + 9) - at - 9);
        }
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

}  // namespace
