// Determinism of `moe train`, checked on the real binary through its JSONL log (log_interval 1):
//  - the same seed and --threads give bit-identical losses, val losses and checkpoints;
//  - with the packed GEMM, 1, 2 and 3 threads give bit-identical runs too;
//  - a different seed gives different losses;
//  - a run stopped at step k and resumed to N (--steps is the total) logs exactly the losses of an
//    uninterrupted N-step run, both for a clean stop (--steps k) and for a SIGKILL mid-run.
// Losses are compared as printed: nlohmann::json prints doubles with round-trip precision, so
// equal text means equal bits.
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <thread>

#include "cli_util.h"
#include "core/parallel.h"
#include "kernels/gemm.h"
#include "layers/attention.h"
#include "kernels/sgemm.h"

using namespace moe_test;

namespace {

class Determinism : public CliTest {
protected:
    // trains with `args` (after the common ones), logging to `log`; returns the parsed log
    Log run(const std::string& args, const std::string& log) {
        RunResult r = moe("train " + args + " --no-sample --log " + q(path(log)));
        EXPECT_EQ(r.code(), 0) << r.describe();
        Log l = parse_log(read_file(path(log)));
        EXPECT_TRUE(l.problems.empty()) << l.problems.front();
        return l;
    }
};

void expect_same_losses(const Log& a, const Log& b) {
    ASSERT_EQ(a.loss.size(), b.loss.size());
    for (const auto& [step, loss] : a.loss) {
        ASSERT_TRUE(b.loss.count(step)) << "step " << step;
        EXPECT_EQ(loss, b.loss.at(step)) << "step " << step;
    }
    EXPECT_EQ(a.val_loss, b.val_loss);
}

TEST_F(Determinism, SameSeedAndThreadsGiveBitIdenticalRuns) {
    for (int threads : {1, 2}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        const std::string common = "--config tiny.json --steps 8 --seed 3 --threads " + std::to_string(threads);
        const std::string t = std::to_string(threads);
        Log a = run(common + " --out a" + t, "a" + t + ".jsonl");
        Log b = run(common + " --out b" + t, "b" + t + ".jsonl");
        ASSERT_EQ(a.loss.size(), 8u);
        EXPECT_FALSE(a.val_loss.empty());
        expect_same_losses(a, b);
        // the weights and AdamW moments too: the checkpoints are the same bytes
        EXPECT_EQ(read_file(path("a" + t + "/checkpoint.bin")), read_file(path("b" + t + "/checkpoint.bin")));
    }
}

// With moe's packed GEMM (AVX2 hosts) every reduction of a step has a fixed split (GEMM tiles,
// 16K-element AdamW blocks, 64K-element grad-norm chunks, expert tasks): the thread count does
// not change a single bit. oneDNN's GEMMs (the fallback elsewhere) may split by thread count.
TEST_F(Determinism, ThreadCountDoesNotChangeTraining) {
    if (moe::kernels::gemm_backend() != moe::kernels::GemmBackend::packed)
        GTEST_SKIP() << "oneDNN GEMMs here: results depend on the thread count (docs/performance.md)";
    // big enough that the threads have work to split: a dense FFN GEMM of 67 MFLOP (split over
    // threads by columns) and MoE experts of 17 MFLOP (run as tasks)
    json dense = tiny_config();
    dense["model"] = {{"n_layer", 1}, {"n_embd", 128}, {"n_head", 4}, {"n_ctx", 32}, {"ffn", "dense"}, {"n_ff", 2048}};
    dense["train"]["batch_size"] = 4;
    dense["train"]["block_size"] = 32;
    json moe_cfg = dense;
    moe_cfg["model"] = {{"n_layer", 1}, {"n_embd", 128}, {"n_head", 4}, {"n_ctx", 32}, {"ffn", "moe"},
                        {"n_expert", 4}, {"n_expert_used", 2}, {"n_ff_exp", 1024}};
    write_config("mid-dense.json", dense);
    write_config("mid-moe.json", moe_cfg);
    // 32 sequences of 16: attention runs in 4 groups of 8 sequences as tasks at 1 and 2 threads and
    // op by op at 3 (layers::attention_grouped); with qk_norm the backward stays op by op
    json att = moe_cfg;
    att["model"] = {{"n_layer", 1}, {"n_embd", 64}, {"n_head", 4}, {"n_ctx", 16}, {"ffn", "moe"},
                    {"n_expert", 4}, {"n_expert_used", 2}, {"n_ff_exp", 128}};
    att["train"]["batch_size"] = 32;
    att["train"]["block_size"] = 16;
    json att_qk = att;
    att_qk["model"]["qk_norm"] = true;
    write_config("mid-att.json", att);
    write_config("mid-att-qk.json", att_qk);
    // bf16 too where its GEMM is the native kernel (tiled like the fp32 one)
    std::vector<std::pair<std::string, std::string>> runs = {
        {"mid-dense", "fp32"}, {"mid-moe", "fp32"}, {"mid-att", "fp32"}, {"mid-att-qk", "fp32"}};
    if (moe::kernels::sgemm_bf16_available()) runs.push_back({"mid-moe", "bf16"});
    for (const auto& [cfg, precision] : runs) {
        SCOPED_TRACE(cfg + " " + precision);
        const std::string common = "--config " + cfg + ".json --steps 4 --seed 5 --precision " + precision;
        const std::string out = cfg + "-" + precision + "-";
        Log a = run(common + " --threads 1 --out " + out + "1", out + "1.jsonl");
        Log b = run(common + " --threads 2 --out " + out + "2", out + "2.jsonl");
        Log c = run(common + " --threads 3 --out " + out + "3", out + "3.jsonl");
        ASSERT_EQ(a.loss.size(), 4u);
        expect_same_losses(a, b);
        expect_same_losses(a, c);
        const std::string ckpt1 = read_file(path(out + "1/checkpoint.bin"));
        EXPECT_TRUE(ckpt1 == read_file(path(out + "2/checkpoint.bin"))) << "checkpoints of 1 and 2 threads differ";
        EXPECT_TRUE(ckpt1 == read_file(path(out + "3/checkpoint.bin"))) << "checkpoints of 1 and 3 threads differ";
    }
}

// With no clipping and no accumulation the routed experts' AdamW runs inside the backward, on each
// expert matrix's gradient as soon as it is computed (train/trainer.cc). It must train exactly as
// the separate optimizer pass: same losses, same checkpoint bytes (parameters and AdamW moments);
// the logged gradient norm adds the experts' part in another order (last bits only). Covered:
// SwiGLU and ReLU experts, and 16 experts top-1 on 32 tokens, where experts left without tokens
// in a step are updated by the separate pass (gradient zero) next to the fused ones.
TEST_F(Determinism, FusedExpertAdamWTrainsAsTheSeparatePass) {
    json swiglu = tiny_config();
    swiglu["train"]["grad_clip"] = 0;
    json relu = swiglu;
    relu["model"]["activation"] = "relu";
    json sparse = swiglu;
    sparse["model"]["n_expert"] = 16;
    sparse["model"]["n_expert_used"] = 1;
    write_config("fused-swiglu.json", swiglu);
    write_config("fused-relu.json", relu);
    write_config("fused-sparse.json", sparse);
    std::vector<std::pair<std::string, std::string>> runs = {
        {"fused-swiglu", "fp32"}, {"fused-relu", "fp32"}, {"fused-sparse", "fp32"}};
    if (moe::kernels::sgemm_bf16_available()) runs.push_back({"fused-relu", "bf16"});  // the native bf16 GEMM
    for (const auto& [config, precision] : runs) {
        const std::string cfg = config + "-" + precision;
        SCOPED_TRACE(cfg);
        const std::string args = "train --config " + config + ".json --steps 6 --seed 4 --threads 2 --no-sample --precision " + precision;
        RunResult a = moe(args + " --out " + cfg + "-a --log " + cfg + "-a.jsonl");
        RunResult b = moe(args + " --out " + cfg + "-b --log " + cfg + "-b.jsonl", "MOE_FUSED_EXPERT_ADAMW=0 ");
        ASSERT_EQ(a.code(), 0) << a.describe();
        ASSERT_EQ(b.code(), 0) << b.describe();
        EXPECT_NE(a.out.find("experts' AdamW in the backward"), std::string::npos) << a.out;
        EXPECT_EQ(b.out.find("experts' AdamW in the backward"), std::string::npos) << b.out;
        const Log la = parse_log(read_file(path(cfg + "-a.jsonl"))), lb = parse_log(read_file(path(cfg + "-b.jsonl")));
        ASSERT_EQ(la.loss.size(), 6u);
        expect_same_losses(la, lb);
        EXPECT_TRUE(read_file(path(cfg + "-a/checkpoint.bin")) == read_file(path(cfg + "-b/checkpoint.bin")))
            << "the fused and the separate AdamW give different checkpoints";
        for (const auto& [step, e] : la.steps) {
            const double ga = e.at("grad_norm").get<double>(), gb = lb.steps.at(step).at("grad_norm").get<double>();
            EXPECT_NEAR(ga, gb, 1e-12 * gb) << "step " << step;
        }
    }
}

TEST_F(Determinism, BadFusedExpertAdamWSwitchIsAnError) {
    RunResult r = moe("train --config tiny.json --steps 1 --no-sample --out bad", "MOE_FUSED_EXPERT_ADAMW=yes ");
    EXPECT_NE(r.code(), 0);
    EXPECT_NE(r.err.find("MOE_FUSED_EXPERT_ADAMW must be \"0\" or \"1\", got \"yes\""), std::string::npos) << r.describe();
}

// The configuration above runs both attention paths.
TEST(AttentionGroups, GroupedAtOneAndTwoThreadsNotAtThree) {
    moe::layers::Dims d;
    d.B = 32, d.T = 16, d.N = 512, d.C = 64, d.H = 4, d.Hkv = 4, d.D = 16;
    const int before = moe::num_threads();
    for (int t : {1, 2, 3}) {
        moe::set_num_threads(t);
        EXPECT_EQ(moe::layers::attention_grouped(d), t < 3) << t << " threads";
    }
    moe::set_num_threads(before);
}

TEST_F(Determinism, DifferentSeedGivesDifferentLosses) {
    Log a = run("--config tiny.json --steps 4 --seed 3 --threads 1 --out a", "a.jsonl");
    Log b = run("--config tiny.json --steps 4 --seed 4 --threads 1 --out b", "b.jsonl");
    ASSERT_EQ(a.loss.size(), 4u);
    ASSERT_EQ(b.loss.size(), 4u);
    int differ = 0;
    for (const auto& [step, loss] : a.loss) differ += loss != b.loss.at(step);
    EXPECT_EQ(differ, 4) << "every step should see other batches and other initial weights";
}

// A clean stop: `--steps k`, then `--resume` with `--steps N` (the total, not N more). The
// learning-rate schedule here does not depend on the total (warm-up, then constant: min_lr = lr),
// since a k-step run anneals to its own end by design; the interrupted-run test below keeps the
// cosine. The resumed run must log exactly steps k+1..N with the uninterrupted run's losses,
// the same final val loss and the same final checkpoint bytes. It is resumed twice: without
// --config (everything from the checkpoint) and with it; neither passes --seed, so the seed of the
// first run (given by --seed) must come from the checkpoint.
TEST_F(Determinism, StopAtKAndResumeToNMatchesUninterruptedRun) {
    json j = tiny_config();
    j["train"]["min_lr"] = j["train"]["lr"];
    j["train"]["eval_interval"] = 4;
    write_config("const.json", j);
    const int N = 10, k = 4;
    const std::string common = "--config const.json --seed 11 --threads 2";
    Log full = run(common + " --steps " + std::to_string(N) + " --out full", "full.jsonl");
    Log first = run(common + " --steps " + std::to_string(k) + " --out part", "part.jsonl");
    fs::copy(path("part"), path("part2"));
    Log resumed = run("--resume part --out part --threads 2 --steps " + std::to_string(N), "resumed.jsonl");
    Log resumed2 = run("--config const.json --resume part2 --out part2 --threads 2 --steps " + std::to_string(N),
                       "resumed2.jsonl");

    ASSERT_EQ(full.loss.size(), (size_t)N);
    ASSERT_EQ(first.loss.size(), (size_t)k);
    for (const Log* r : {&resumed, &resumed2}) {
        ASSERT_EQ(r->loss.size(), (size_t)(N - k)) << "--steps is the total step count when resuming";
        EXPECT_EQ(r->loss.begin()->first, k + 1);
        EXPECT_EQ(r->loss.rbegin()->first, N);
        for (const auto& [step, loss] : r->loss) EXPECT_EQ(loss, full.loss.at(step)) << "step " << step;
        ASSERT_TRUE(r->val_loss.count(N));
        EXPECT_EQ(r->val_loss.at(N), full.val_loss.at(N));
        EXPECT_EQ(r->val_loss.at(8), full.val_loss.at(8));
    }
    for (const auto& [step, loss] : first.loss) EXPECT_EQ(loss, full.loss.at(step)) << "step " << step;
    EXPECT_EQ(first.val_loss.at(4), full.val_loss.at(4));
    const std::string want = read_file(path("full/checkpoint.bin"));
    EXPECT_EQ(read_file(path("part/checkpoint.bin")), want);
    EXPECT_EQ(read_file(path("part2/checkpoint.bin")), want);

    // resuming a checkpoint that is already at the total trains nothing and still exits 0
    RunResult again = moe("train --resume part --out part --threads 2 --no-sample --steps " + std::to_string(N));
    EXPECT_EQ(again.code(), 0) << again.describe();
    EXPECT_NE(again.out.find("nothing to train"), std::string::npos) << again.out;
}

// A real interruption: a run with the default cosine schedule and a checkpoint every step is
// killed (SIGKILL) mid-run, then resumed with the same --steps. Every step logged by either part
// has the uninterrupted run's loss, and the end state is the same.
//
// To interrupt it mid-run without racing a fast process, its log is a FIFO with a one-page buffer
// that the test holds open and never reads while it runs: the trainer blocks on its log once the
// page is full, long before its last step, and is killed there.
TEST_F(Determinism, KilledRunResumesWithIdenticalLosses) {
    json j = tiny_config();
    j["train"]["ckpt_interval"] = 1;
    j["train"]["eval_interval"] = 10;
    write_config("ck1.json", j);

    const std::string fifo = path("killed.jsonl");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    int fd = ::open(fifo.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);  // both ends: the trainer's open never blocks
    ASSERT_GE(fd, 0);
    ::fcntl(fd, F_SETPIPE_SZ, 4096);
    const int pipe_size = ::fcntl(fd, F_GETPIPE_SZ);
    ASSERT_GT(pipe_size, 0);
    // log lines are > 60 bytes, so the trainer blocks before its last step
    const int N = pipe_size / 60 + 20;

    Log full = run("--config ck1.json --threads 1 --out full --steps " + std::to_string(N), "full.jsonl");
    ASSERT_EQ(full.loss.size(), (size_t)N);

    const std::string steps = std::to_string(N);
    const std::string out = path("killed.out");
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (::chdir(dir.c_str()) != 0) ::_exit(126);
        ::setenv("OMP_WAIT_POLICY", "passive", 1);
        int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(o, 1);
        ::dup2(o, 2);
        ::execl(MOE_BINARY, MOE_BINARY, "train", "--config", "ck1.json", "--threads", "1", "--out", "part",
                "--no-sample", "--steps", steps.c_str(), "--log", fifo.c_str(), (char*)nullptr);
        ::_exit(127);
    }
    // wait until a quarter of the buffer is logged (the trainer is past its first few steps)
    int status = 0;
    bool exited = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
        int avail = 0;
        ::ioctl(fd, FIONREAD, &avail);
        if (avail >= pipe_size / 4) break;
        if (::waitpid(pid, &status, WNOHANG) == pid) {
            exited = true;
            break;
        }
        if (std::chrono::steady_clock::now() > deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!exited) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
    }
    std::string killed_log;
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) killed_log.append(buf, (size_t)n);
    ::close(fd);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the run was not interrupted mid-run:\n" << read_file(out);

    Log killed = parse_log(killed_log);
    EXPECT_TRUE(killed.problems.empty()) << killed.problems.front();
    ASSERT_GE(killed.loss.size(), 2u);
    ASSERT_LT(killed.loss.size(), (size_t)N);
    for (const auto& [step, loss] : killed.loss) EXPECT_EQ(loss, full.loss.at(step)) << "killed run, step " << step;

    Log resumed = run("--resume part --out part --threads 1 --steps " + steps, "resumed.jsonl");
    ASSERT_FALSE(resumed.loss.empty());
    const int64_t k = resumed.loss.begin()->first - 1;  // the step of the last checkpoint it wrote
    EXPECT_GE(k, 1);
    EXPECT_LE(k, (int64_t)killed.loss.size());  // no step is skipped
    EXPECT_EQ(resumed.loss.size(), (size_t)(N - k));
    for (const auto& [step, loss] : resumed.loss) EXPECT_EQ(loss, full.loss.at(step)) << "resumed run, step " << step;
    ASSERT_TRUE(resumed.val_loss.count(N));
    EXPECT_EQ(resumed.val_loss.at(N), full.val_loss.at(N));
    EXPECT_EQ(read_file(path("part/checkpoint.bin")), read_file(path("full/checkpoint.bin")));
}

}  // namespace
