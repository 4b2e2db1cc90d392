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

    void start(const std::string& extra) {
        const std::string d = path("tiny");
        fs::create_directories(d);
        for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
            fs::copy_file(kData + "hf/qwen3_moe/" + f, d + "/" + f);
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

}  // namespace
