#pragma once
// Helpers for the tests that run the real `moe` binary (test_cli.cc, test_determinism.cc): a temp
// directory per test, a tiny config and corpus written by the test, running a command with its
// stdout/stderr captured, and reading the JSONL log.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe_test {

namespace fs = std::filesystem;
using nlohmann::json;

inline std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline void write_file(const std::string& path, const std::string& data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << data;
    ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// Single-quotes a word for /bin/sh.
inline std::string q(const std::string& s) {
    std::string r = "'";
    for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return r + "'";
}

struct RunResult {
    int raw = -1;          // status from system()
    std::string out, err;  // captured stdout, stderr
    bool exited() const { return raw != -1 && WIFEXITED(raw); }
    int code() const { return exited() ? WEXITSTATUS(raw) : -1; }
    std::string describe() const {
        std::ostringstream os;
        if (raw == -1) os << "system() failed";
        else if (WIFEXITED(raw)) os << "exit status " << WEXITSTATUS(raw);
        else if (WIFSIGNALED(raw)) os << "killed by signal " << WTERMSIG(raw);
        os << "\n--- stderr ---\n" << err << "--- stdout (tail) ---\n"
           << (out.size() > 2000 ? out.substr(out.size() - 2000) : out);
        return os.str();
    }
};

// A fresh directory per test (removed afterwards unless the test failed), holding a tiny corpus
// (data.txt) and a tiny MoE config (tiny.json: 1 layer, C=16, 2 heads, E=4, K=2, n_ctx 16,
// batch 2, log_interval 1) so that one `moe train` takes a fraction of a second.
class CliTest : public ::testing::Test {
protected:
    std::string dir;

    void SetUp() override {
        char tmpl[] = "/tmp/moe_cli_test_XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir = tmpl;
        write_file(path("data.txt"), corpus());
        write_config("tiny.json", tiny_config());
    }
    void TearDown() override {
        if (HasFailure()) {
            std::fprintf(stderr, "(test files kept in %s)\n", dir.c_str());
            return;
        }
        std::error_code ec;
        fs::remove_all(dir, ec);
    }

    std::string path(const std::string& name) const { return dir + "/" + name; }

    static std::string corpus() {
        // ~2.4k characters from a small alphabet (lowercase, space, '.', ',', '\n')
        std::string s;
        const char* lines[] = {"the quick brown fox jumps over the lazy dog.\n",
                               "pack my box with five dozen liquor jugs, said the cook.\n",
                               "how vexingly quick daft zebras jump.\n"};
        for (int i = 0; i < 18; ++i) s += lines[i % 3];
        return s;
    }

    json tiny_config() const {
        return json{
            {"model",
             {{"n_layer", 1}, {"n_embd", 16}, {"n_head", 2}, {"n_ctx", 16}, {"ffn", "moe"},
              {"n_expert", 4}, {"n_expert_used", 2}, {"n_ff_exp", 32}}},
            {"train",
             {{"data", path("data.txt")}, {"batch_size", 2}, {"block_size", 16}, {"steps", 6},
              {"lr", 1e-2}, {"min_lr", 1e-3}, {"warmup_steps", 2}, {"eval_interval", 3},
              {"eval_batches", 2}, {"log_interval", 1}, {"seed", 1}}}};
    }

    std::string write_config(const std::string& name, const json& j) {
        write_file(path(name), j.dump(2));
        return path(name);
    }

    // Runs `moe ARGS` (ARGS: already quoted shell words) in the test directory.
    // stdin_text, when not empty, is the command's standard input (else /dev/null).
    RunResult moe(const std::string& args, const std::string& prefix = "", const std::string& stdin_text = "") const {
        RunResult r;
        const std::string o = path(".stdout"), e = path(".stderr");
        // passive OpenMP waits: results are the same, but spinning threads make runs 10x slower
        // when the tests share the cores with each other (ctest -j)
        const std::string cmd = "cd " + q(dir) + " && " + prefix + "OMP_WAIT_POLICY=passive " + q(MOE_BINARY) +
                                " " + args + " >" + q(o) +
                                " 2>" + q(e) + " <" + (stdin_text.empty() ? std::string("/dev/null") : q(path(".stdin")));
        if (!stdin_text.empty()) write_file(path(".stdin"), stdin_text);
        r.raw = std::system(cmd.c_str());
        r.out = read_file(o);
        r.err = read_file(e);
        return r;
    }

    // Trains the tiny config into `out` (relative to dir) with --threads 1.
    void train_ok(const std::string& out, const std::string& extra = "") {
        RunResult r = moe("train --config tiny.json --out " + q(out) + " --threads 1 --no-sample " + extra);
        ASSERT_EQ(r.code(), 0) << r.describe();
        ASSERT_TRUE(fs::exists(path(out + "/checkpoint.bin")));
    }
};

// The contract for bad input: exit status exactly 1 (no signal, abort or other code), stderr is
// exactly one line "moe: error: ...", and that line names everything in `needles`.
inline void expect_clean_error(const RunResult& r, const std::vector<std::string>& needles) {
    EXPECT_TRUE(r.exited()) << r.describe();
    EXPECT_EQ(r.code(), 1) << r.describe();
    EXPECT_EQ(r.err.rfind("moe: error: ", 0), 0u) << r.describe();
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.back(), '\n') << r.describe();
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr must be one line\n" << r.describe();
    for (const auto& n : needles)
        EXPECT_NE(r.err.find(n), std::string::npos) << "missing '" << n << "'\n" << r.describe();
}

// One JSONL log: per-step records (step -> the "loss" value exactly as printed, and the parsed
// object) and evaluation records (step -> "val_loss" exactly as printed).
struct Log {
    std::map<int64_t, std::string> loss, val_loss;
    std::map<int64_t, json> steps;
    std::vector<std::string> problems;  // schema violations
};

// The text of a number field as printed (nlohmann prints doubles with round-trip precision, so
// equal text means bit-identical values).
inline std::string raw_field(const std::string& line, const std::string& key) {
    const std::string k = "\"" + key + "\":";
    size_t p = line.find(k);
    if (p == std::string::npos) return "";
    p += k.size();
    size_t e = line.find_first_of(",}", p);
    return line.substr(p, e - p);
}

inline Log parse_log(const std::string& text) {
    Log log;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        json j;
        try {
            j = json::parse(line);
        } catch (const json::exception& e) {
            log.problems.push_back("not JSON: " + line);
            continue;
        }
        if (!j.contains("step") || !j["step"].is_number_integer()) {
            log.problems.push_back("no integer 'step': " + line);
            continue;
        }
        const int64_t step = j["step"].get<int64_t>();
        if (j.contains("val_loss")) {
            if (!j["val_loss"].is_number()) log.problems.push_back("val_loss not a number: " + line);
            log.val_loss[step] = raw_field(line, "val_loss");
            continue;
        }
        for (const char* k : {"loss", "lr", "tokens_per_sec"})
            if (!j.contains(k) || !j[k].is_number())
                log.problems.push_back(std::string("no number '") + k + "': " + line);
        if (log.loss.count(step)) log.problems.push_back("step logged twice: " + line);
        log.loss[step] = raw_field(line, "loss");
        log.steps[step] = j;
    }
    return log;
}

// The pid of rank `rank` among the children of mpirun `launcher` (Open MPI starts local ranks as its
// children, each with OMPI_COMM_WORLD_RANK in its environment); -1 if not found.
inline pid_t rank_pid(pid_t launcher, int rank) {
    for (const auto& e : fs::directory_iterator("/proc")) {
        const std::string name = e.path().filename();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::istringstream st(read_file(e.path() / "stat"));
        std::string pid, comm, state;
        long ppid = 0;
        st >> pid >> comm >> state >> ppid;
        if (ppid != launcher) continue;
        std::string env = read_file(e.path() / "environ");
        std::replace(env.begin(), env.end(), '\0', '\n');
        if (env.find("\nOMPI_COMM_WORLD_RANK=" + std::to_string(rank) + "\n") != std::string::npos ||
            env.rfind("OMPI_COMM_WORLD_RANK=" + std::to_string(rank) + "\n", 0) == 0)
            return (pid_t)std::stol(name);
    }
    return -1;
}

// The URL a `moe serve` prints ("ready at URL ...") into the file `out`, polled for up to 60 s;
// empty if it did not appear by then.
inline std::string wait_for_ready_url(const std::string& out) {
    for (int i = 0; i < 600; ++i) {  // 60 s
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        const std::string s = read_file(out);
        const size_t at = s.find("ready at ");
        if (at != std::string::npos) return s.substr(at + 9, s.find(' ', at + 9) - at - 9);
    }
    return "";
}

}  // namespace moe_test
