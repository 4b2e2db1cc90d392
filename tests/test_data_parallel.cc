// Data-parallel training (docs/distributed.md) on the real binary: `mpirun -np W moe train` logs
// the bit-identical losses (and evaluations, routing telemetry, gradient norms) of one process with
// W times the gradient accumulation and saves the same checkpoint bytes, for dropless routing,
// capacity with drop and with reroute, the balancing loss, z-loss and noisy gating on. Also: only
// rank 0 prints, and an error every rank meets is printed once. Skipped in a build without MPI.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <thread>

#include "cli_util.h"

using namespace moe_test;

namespace {

class DataParallel : public CliTest {
protected:
    void SetUp() override {
#ifndef MOE_MPIRUN
        GTEST_SKIP() << "built without MPI (MOE_MPI=OFF)";
#endif
        CliTest::SetUp();
    }

    std::string mpirun(int np) const {
#ifdef MOE_MPIRUN
        return std::string(MOE_MPIRUN) + " -np " + std::to_string(np) +
               " --oversubscribe --bind-to none --timeout 120 env ";  // env: the OMP_WAIT_POLICY=passive moe() puts before the binary
#else
        return "";
#endif
    }
    static std::string mpi_env() {
        return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 "
               "OMPI_MCA_btl_vader_single_copy_mechanism=none OMP_NUM_THREADS=1 "
               "LSAN_OPTIONS=detect_leaks=0 ";  // Open MPI's own leaks (tests/dist.cmake); ASan stays on
    }

    // `moe train` on np ranks (np 0: no mpirun) into out/, logging to out.jsonl
    RunResult train(int np, const std::string& cfg, const std::string& out, const std::string& extra) {
        const std::string args = "train --config " + cfg + " --threads 1 --no-sample --out " + out + " --log " +
                                 out + ".jsonl " + extra;
        if (np == 0) return moe(args);
        return moe(args, mpi_env() + mpirun(np));
    }

    // the log without its timing fields, one dumped object per line (doubles round-trip: equal text, equal bits)
    std::vector<std::string> log_lines(const std::string& out) const {
        std::vector<std::string> v;
        std::istringstream in(read_file(path(out + ".jsonl")));
        std::string line;
        while (std::getline(in, line)) {
            json j = json::parse(line);
            j.erase("tokens_per_sec");
            j.erase("peak_rss_mb");
            v.push_back(j.dump());
        }
        return v;
    }

    // out/'s checkpoint as one file: an expert-parallel run's sharded set gathered with `moe export
    // --format moe` (out_gathered/checkpoint.bin), else out/checkpoint.bin
    std::string checkpoint_bytes(const std::string& out) {
        if (!fs::exists(path(out + "/manifest.json"))) return read_file(path(out + "/checkpoint.bin"));
        EXPECT_FALSE(fs::exists(path(out + "/checkpoint.bin"))) << "a sharded set and a single file side by side";
        RunResult e = moe("export --checkpoint " + out + " --format moe --force --out " + out + "_gathered");
        EXPECT_EQ(e.code(), 0) << e.describe();
        return read_file(path(out + "_gathered/checkpoint.bin"));
    }

    void killed_rank_body(const std::string& extra);

    json router_config(const std::string& mode) const {
        json c = tiny_config();
        c["train"]["steps"] = 20;
        c["train"]["eval_interval"] = 10;
        c["model"]["n_layer"] = 2;
        json r = {{"noisy_gating", true}, {"balance_loss", 0.01}, {"z_loss", 0.001}};
        if (mode == "drop" || mode == "reroute") {
            r["capacity_factor"] = 1.0;
            r["overflow"] = mode;
        }
        if (mode == "bias") r["bias_balance"] = true;
        c["router"] = r;
        return c;
    }

    // np ranks with --grad-accum g (and --expert-parallel ep when ep > 1) against one process with np·g
    void expect_same_run(const std::string& mode, int np, int g, int ep = 1) {
        SCOPED_TRACE(mode + ", np " + std::to_string(np) + ", grad-accum " + std::to_string(g) + ", ep " +
                     std::to_string(ep));
        const std::string cfg = write_config(mode + ".json", router_config(mode));
        const std::string tag = mode + std::to_string(np) + std::to_string(g) + "ep" + std::to_string(ep);
        RunResult a = train(np, cfg, "dp" + tag,
                            "--grad-accum " + std::to_string(g) +
                                (ep > 1 ? " --expert-parallel " + std::to_string(ep) : std::string()));
        ASSERT_EQ(a.code(), 0) << a.describe();
        RunResult b = train(0, cfg, "one" + tag, "--grad-accum " + std::to_string(np * g));
        ASSERT_EQ(b.code(), 0) << b.describe();
        const auto la = log_lines("dp" + tag), lb = log_lines("one" + tag);
        ASSERT_EQ(la.size(), 20u + 2u) << "20 steps and 2 evaluations";
        ASSERT_EQ(la.size(), lb.size());
        for (size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], lb[i]) << "log line " << i;
        EXPECT_EQ(fs::exists(path("dp" + tag + "/manifest.json")), ep > 1) << "expert parallel: a sharded set";
        EXPECT_TRUE(checkpoint_bytes("dp" + tag) == read_file(path("one" + tag + "/checkpoint.bin")))
            << "checkpoints differ";
        // rank 0 alone prints (expert parallel: one more line, the memory per rank)
        EXPECT_EQ(std::count(a.out.begin(), a.out.end(), '\n'),
                  std::count(b.out.begin(), b.out.end(), '\n') + (ep > 1 ? 1 : 0))
            << a.out;
        EXPECT_NE(a.out.find(" over " + std::to_string(np) + " ranks"), std::string::npos) << a.out;
    }
};

TEST_F(DataParallel, DroplessTwoRanksMatchOneProcess) { expect_same_run("dropless", 2, 1); }
TEST_F(DataParallel, DroplessThreeRanksMatchOneProcess) { expect_same_run("dropless", 3, 1); }
TEST_F(DataParallel, DropTwoRanksMatchOneProcess) { expect_same_run("drop", 2, 1); }
TEST_F(DataParallel, DropThreeRanksMatchOneProcess) { expect_same_run("drop", 3, 1); }
TEST_F(DataParallel, RerouteTwoRanksMatchOneProcess) { expect_same_run("reroute", 2, 1); }
TEST_F(DataParallel, RerouteThreeRanksMatchOneProcess) { expect_same_run("reroute", 3, 1); }
// each rank accumulating two micro-batches: the fold interleaves the ranks (0, 1, 0, 1)
TEST_F(DataParallel, TwoRanksTimesTwoMicroBatchesMatchFour) { expect_same_run("reroute", 2, 2); }
// aux-loss-free balancing: the bias nudge sees every rank's loads
TEST_F(DataParallel, BiasBalancingSeesEveryRanksLoads) { expect_same_run("bias", 2, 1); }

// Expert parallel (train/expert_parallel.h): the experts of each MoE layer (E = 4) split over
// groups of P ranks, rows exchanged by MPI_Alltoallv; the same bits as one process with
// --grad-accum W (routing, capacity and balancing per rank-local micro-batch, expert gradients
// folded over the expert-data-parallel group in micro-batch order).
TEST_F(DataParallel, ExpertParallelDroplessTwoRanks) { expect_same_run("dropless", 2, 1, 2); }
TEST_F(DataParallel, ExpertParallelDropTwoRanks) { expect_same_run("drop", 2, 1, 2); }
TEST_F(DataParallel, ExpertParallelRerouteTwoRanks) { expect_same_run("reroute", 2, 1, 2); }
TEST_F(DataParallel, ExpertParallelDroplessFourRanksPTwo) { expect_same_run("dropless", 4, 1, 2); }
TEST_F(DataParallel, ExpertParallelDropFourRanksPTwo) { expect_same_run("drop", 4, 1, 2); }
TEST_F(DataParallel, ExpertParallelRerouteFourRanksPTwo) { expect_same_run("reroute", 4, 1, 2); }
TEST_F(DataParallel, ExpertParallelDroplessFourRanksPFour) { expect_same_run("dropless", 4, 1, 4); }
TEST_F(DataParallel, ExpertParallelDropFourRanksPFour) { expect_same_run("drop", 4, 1, 4); }
TEST_F(DataParallel, ExpertParallelRerouteFourRanksPFour) { expect_same_run("reroute", 4, 1, 4); }
// two micro-batches per rank (the expert fold interleaves rounds) and bias balancing
TEST_F(DataParallel, ExpertParallelTwoRanksTimesTwoMicroBatches) { expect_same_run("reroute", 2, 2, 2); }
TEST_F(DataParallel, ExpertParallelBiasBalancing) { expect_same_run("bias", 2, 1, 2); }

// P not dividing E (4) or W: one error, printed once (by rank 0), non-zero exit
TEST_F(DataParallel, ExpertParallelDivisibilityErrorsArePrintedOnce) {
    const std::string cfg = write_config("ep.json", router_config("dropless"));
    auto errors = [](const std::string& err) {
        size_t n = 0;
        for (size_t p = err.find("moe: error:"); p != std::string::npos; p = err.find("moe: error:", p + 1)) ++n;
        return n;
    };
    RunResult e = train(3, cfg, "e3", "--expert-parallel 3");  // 3 divides W = 3, not E = 4
    EXPECT_NE(e.code(), 0) << e.describe();
    EXPECT_EQ(errors(e.err), 1u) << e.describe();
    EXPECT_NE(e.err.find("--expert-parallel 3 must divide the number of experts (model.n_expert = 4)"),
              std::string::npos) << e.describe();
    RunResult w = train(2, cfg, "w4", "--expert-parallel 4");  // 4 divides E, not W = 2
    EXPECT_NE(w.code(), 0) << w.describe();
    EXPECT_EQ(errors(w.err), 1u) << w.describe();
    EXPECT_NE(w.err.find("--expert-parallel 4 must divide the number of ranks (2)"), std::string::npos)
        << w.describe();
}

// An expert-parallel checkpoint is a sharded set (each rank of a group its experts, rank 0 the rest,
// a manifest): a 2-rank EP run (2 micro-batches each, global 4) resumes on 4 ranks with P = 4
// (resharding 2 -> 4) and on one process (gathering) to the losses and bytes of the uninterrupted
// one-process run.
TEST_F(DataParallel, ExpertParallelRunResumesOnFourRanksAndOneProcess) {
    json c = router_config("reroute");
    c["train"]["min_lr"] = c["train"]["lr"];  // constant after warm-up: --steps does not shape the schedule
    const std::string cfg = write_config("epresume.json", c);
    RunResult a = train(2, cfg, "part", "--grad-accum 2 --expert-parallel 2 --steps 4");
    ASSERT_EQ(a.code(), 0) << a.describe();
    RunResult ref = train(0, cfg, "whole", "--grad-accum 4 --steps 10");
    ASSERT_EQ(ref.code(), 0) << ref.describe();
    auto steps_after = [](const std::vector<std::string>& lines, int64_t from) {
        std::vector<std::string> v;
        for (const auto& l : lines) {
            json j = json::parse(l);
            j.erase("train_routing");  // sums since the last evaluation of this process
            if (j["step"].get<int64_t>() > from) v.push_back(j.dump());
        }
        return v;
    };
    const auto want = steps_after(log_lines("whole"), 4);
    for (int np : {4, 0}) {
        SCOPED_TRACE("resumed on " + std::to_string(np) + " ranks");
        const std::string out = "res" + std::to_string(np);
        fs::copy(path("part"), path(out), fs::copy_options::recursive);
        RunResult b = np ? moe("train --resume " + out + " --threads 1 --no-sample --steps 10 --expert-parallel 4 --log " +
                                   out + ".jsonl",
                               mpi_env() + mpirun(np))
                         : moe("train --resume " + out + " --threads 1 --no-sample --steps 10 --log " + out + ".jsonl");
        ASSERT_EQ(b.code(), 0) << b.describe();
        const auto got = steps_after(log_lines(out), 4);
        ASSERT_EQ(got.size(), 7u) << "steps 5..10 and the evaluation at 10";
        EXPECT_EQ(got, want);
        EXPECT_TRUE(checkpoint_bytes(out) == read_file(path("whole/checkpoint.bin")));
    }
}

// kill -9 of one rank mid-run: the job ends (non-zero, mpirun names the rank and the signal), the
// last checkpoint (saved every step; with --expert-parallel a sharded set) loads, and resuming it on
// one process logs the losses of an uninterrupted one-process run with the same global batch.
TEST_F(DataParallel, KilledRankEndsTheJobAndTheRunResumes) { killed_rank_body(""); }
TEST_F(DataParallel, KilledExpertParallelRankEndsTheJobAndTheRunResumes) { killed_rank_body(" --expert-parallel 2"); }

void DataParallel::killed_rank_body(const std::string& extra) {
    json c = tiny_config();
    c["train"]["steps"] = 100000;  // far more than it gets to
    c["train"]["min_lr"] = c["train"]["lr"];  // constant after warm-up: the total does not shape the schedule
    c["train"]["ckpt_interval"] = 1;
    c["train"]["eval_interval"] = 1000000;
    const std::string cfg = write_config("long.json", c);
    const std::string cmd = "cd " + q(dir) + " && exec env " + mpi_env() + mpirun(2) + q(MOE_BINARY) +
                            " train --config long.json --threads 1 --no-sample --out run --log run.jsonl" + extra + " >" +
                            q(path("run.out")) + " 2>" + q(path("run.err"));
    const pid_t launcher = ::fork();
    ASSERT_GE(launcher, 0);
    if (launcher == 0) {
        ::execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
        ::_exit(127);
    }
    auto lines = [&] {
        const std::string t = read_file(path("run.jsonl"));
        return std::count(t.begin(), t.end(), '\n');
    };
    const auto t0 = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    while (lines() < 10 && elapsed() < 60) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const pid_t victim = rank_pid(launcher, 1);
    int status = 0;
    if (victim <= 0 || lines() < 10) {
        ::kill(launcher, SIGKILL);
        ::waitpid(launcher, &status, 0);
        FAIL() << "no rank 1 running after " << elapsed() << " s\n" << read_file(path("run.err"));
    }
    ASSERT_EQ(::kill(victim, SIGKILL), 0);
    const auto t_kill = std::chrono::steady_clock::now();
    pid_t done = 0;
    while ((done = ::waitpid(launcher, &status, WNOHANG)) == 0 &&
           std::chrono::steady_clock::now() - t_kill < std::chrono::seconds(30))
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (done == 0) {
        ::kill(launcher, SIGKILL);
        ::waitpid(launcher, &status, 0);
        FAIL() << "the job went on for 30 s after rank 1 was killed";
    }
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_NE(WEXITSTATUS(status), 0);
    const std::string err = read_file(path("run.err"));
    EXPECT_NE(err.find("rank 1"), std::string::npos) << err;
    EXPECT_NE(err.find("signal 9"), std::string::npos) << err;

    if (!extra.empty()) EXPECT_TRUE(fs::exists(path("run/manifest.json"))) << "a sharded set";
    // resume the last checkpoint on one process, a few steps past what the job logged
    const int64_t logged = lines(), total = logged + 5;
    RunResult r = moe("train --resume run --threads 1 --no-sample --log resumed.jsonl --steps " + std::to_string(total));
    ASSERT_EQ(r.code(), 0) << r.describe();
    RunResult ref = train(0, cfg, "ref", "--grad-accum 2 --steps " + std::to_string(total));
    ASSERT_EQ(ref.code(), 0) << ref.describe();
    std::map<std::string, std::string> want;  // (kind, step) -> line
    auto key = [](const std::string& line) {
        const json j = json::parse(line);
        return std::string(j.contains("val_loss") ? "val" : "loss") + std::to_string(j["step"].get<int64_t>());
    };
    for (const auto& l : log_lines("ref")) want[key(l)] = l;
    const auto got = log_lines("resumed");
    ASSERT_GE(got.size(), 5u);
    EXPECT_EQ(key(got.back()), "val" + std::to_string(total));
    // (train_routing sums the routing since the last evaluation in this process: not comparable)
    auto no_train_routing = [](const std::string& l) {
        json j = json::parse(l);
        j.erase("train_routing");
        return j.dump();
    };
    for (const auto& l : got) EXPECT_EQ(no_train_routing(l), no_train_routing(want[key(l)]));
}

// The checkpoint records the global batch: a one-process run with --grad-accum 2 resumes on 2 ranks
// (1 micro-batch each) to the losses and bytes of the uninterrupted one-process run; on 3 ranks,
// which cannot share 2 micro-batches, it is one clear error.
TEST_F(DataParallel, OneProcessCheckpointResumesOnTwoRanks) {
    json c = router_config("reroute");
    c["train"]["min_lr"] = c["train"]["lr"];  // constant after warm-up: --steps does not shape the schedule
    const std::string cfg = write_config("resume.json", c);
    RunResult a = train(0, cfg, "part", "--grad-accum 2 --steps 4");
    ASSERT_EQ(a.code(), 0) << a.describe();
    RunResult bad = moe("train --resume part --threads 1 --no-sample --steps 10", mpi_env() + mpirun(3));
    EXPECT_NE(bad.code(), 0);
    EXPECT_NE(bad.err.find("cannot share evenly"), std::string::npos) << bad.describe();
    EXPECT_EQ(bad.err.find("rank 1:"), std::string::npos) << "printed once\n" << bad.describe();
    RunResult b = moe("train --resume part --threads 1 --no-sample --steps 10 --log part.jsonl", mpi_env() + mpirun(2));
    ASSERT_EQ(b.code(), 0) << b.describe();
    EXPECT_NE(b.out.find("resuming at step 4"), std::string::npos) << b.out;
    RunResult ref = train(0, cfg, "whole", "--grad-accum 2 --steps 10");
    ASSERT_EQ(ref.code(), 0) << ref.describe();
    auto steps_after = [](const std::vector<std::string>& lines, int64_t from) {
        std::vector<std::string> v;
        for (const auto& l : lines) {
            json j = json::parse(l);
            j.erase("train_routing");  // sums since the last evaluation of this process
            if (j["step"].get<int64_t>() > from) v.push_back(j.dump());
        }
        return v;
    };
    const auto got = steps_after(log_lines("part"), 4), want = steps_after(log_lines("whole"), 4);
    ASSERT_EQ(got.size(), 7u) << "steps 5..10 and the evaluation at 10";
    EXPECT_EQ(got, want);
    EXPECT_TRUE(read_file(path("part/checkpoint.bin")) == read_file(path("whole/checkpoint.bin")));
}

// The other way round: a one-process checkpoint resumes expert-parallel (P = 2: each rank reads its
// experts from the single file) to the uninterrupted run's losses, and its sharded set gathers to
// the uninterrupted run's bytes.
TEST_F(DataParallel, OneProcessCheckpointResumesExpertParallel) {
    json c = router_config("reroute");
    c["train"]["min_lr"] = c["train"]["lr"];
    const std::string cfg = write_config("resume.json", c);
    RunResult a = train(0, cfg, "part", "--grad-accum 2 --steps 4");
    ASSERT_EQ(a.code(), 0) << a.describe();
    RunResult b = moe("train --resume part --threads 1 --no-sample --steps 10 --expert-parallel 2 --log part.jsonl",
                      mpi_env() + mpirun(2));
    ASSERT_EQ(b.code(), 0) << b.describe();
    EXPECT_TRUE(fs::exists(path("part/manifest.json")));
    EXPECT_FALSE(fs::exists(path("part/checkpoint.bin"))) << "the single file is superseded";
    RunResult ref = train(0, cfg, "whole", "--grad-accum 2 --steps 10");
    ASSERT_EQ(ref.code(), 0) << ref.describe();
    auto steps_after = [](const std::vector<std::string>& lines, int64_t from) {
        std::vector<std::string> v;
        for (const auto& l : lines) {
            json j = json::parse(l);
            j.erase("train_routing");
            if (j["step"].get<int64_t>() > from) v.push_back(j.dump());
        }
        return v;
    };
    const auto got = steps_after(log_lines("part"), 4), want = steps_after(log_lines("whole"), 4);
    ASSERT_EQ(got.size(), 7u);
    EXPECT_EQ(got, want);
    EXPECT_TRUE(checkpoint_bytes("part") == read_file(path("whole/checkpoint.bin")));
    // every --model reader gathers the set: generate gives the single file's tokens, export hf works
    const std::string gen = " --prompt \"the quick\" --max-tokens 8 --temperature 0 --threads 1";
    RunResult g1 = moe("generate --model part" + gen), g2 = moe("generate --model whole" + gen);
    ASSERT_EQ(g1.code(), 0) << g1.describe();
    ASSERT_EQ(g2.code(), 0) << g2.describe();
    EXPECT_EQ(g1.out, g2.out);
    RunResult h = moe("export --checkpoint part --format hf --out part_hf");
    EXPECT_EQ(h.code(), 0) << h.describe();
    EXPECT_TRUE(fs::exists(path("part_hf/config.json")));
}

// A save that fails between its shard files and its manifest (fault injection, rank 0) ends the job
// with the error; the previous set stays the checkpoint, loads, and resuming it gives the losses
// and bytes of the uninterrupted run; the next commit removes the failed save's orphan files.
TEST_F(DataParallel, FailedShardedSaveLeavesThePreviousSet) {
    json c = router_config("reroute");
    c["train"]["min_lr"] = c["train"]["lr"];
    c["train"]["ckpt_interval"] = 2;
    const std::string cfg = write_config("fault.json", c);
    RunResult a = moe("train --config fault.json --threads 1 --no-sample --out run --steps 6 --expert-parallel 2",
                      mpi_env() + mpirun(2) + "MOE_FAULT_SAVE_BEFORE_MANIFEST=4 ");
    EXPECT_NE(a.code(), 0) << a.describe();
    EXPECT_NE(a.err.find("after its shard files, before its manifest"), std::string::npos) << a.describe();
    const json m = json::parse(read_file(path("run/manifest.json")));
    EXPECT_EQ(m["step"], 2);
    EXPECT_EQ(m["world_size"], 2);
    EXPECT_EQ(m["expert_parallel"], 2);
    ASSERT_EQ(m["files"].size(), 3u) << m.dump();
    int orphans = 0;
    for (const auto& e : fs::directory_iterator(path("run")))
        if (e.path().filename().string().find(".s00000004-") != std::string::npos) ++orphans;
    EXPECT_EQ(orphans, 3) << "step 4's shard files were written, its manifest not";
    // the good set gathers, and resumes to the uninterrupted losses and bytes
    RunResult b = moe("train --resume run --threads 1 --no-sample --steps 6 --expert-parallel 2 --log run.jsonl",
                      mpi_env() + mpirun(2));
    ASSERT_EQ(b.code(), 0) << b.describe();
    EXPECT_NE(b.out.find("resuming at step 2"), std::string::npos) << b.out;
    for (const auto& e : fs::directory_iterator(path("run")))
        EXPECT_EQ(e.path().filename().string().find(".s00000004-"), std::string::npos) << "orphan left: " << e.path();
    RunResult ref = train(0, cfg, "whole", "--grad-accum 2 --steps 6");
    ASSERT_EQ(ref.code(), 0) << ref.describe();
    std::vector<std::string> got, want;
    for (const auto& l : log_lines("run")) {
        json j = json::parse(l);
        j.erase("train_routing");
        got.push_back(j.dump());
    }
    for (const auto& l : log_lines("whole")) {
        json j = json::parse(l);
        j.erase("train_routing");
        if (j["step"].get<int64_t>() > 2) want.push_back(j.dump());
    }
    EXPECT_EQ(got, want);
    EXPECT_TRUE(checkpoint_bytes("run") == read_file(path("whole/checkpoint.bin")));
}

TEST_F(DataParallel, ConfigErrorIsPrintedOnce) {
    json c = tiny_config();
    c["model"]["n_head"] = 3;  // 16 not divisible by 3
    const std::string cfg = write_config("bad.json", c);
    RunResult r = train(2, cfg, "bad", "");
    EXPECT_NE(r.code(), 0) << r.describe();
    size_t n = 0;
    for (size_t p = r.err.find("moe: error:"); p != std::string::npos; p = r.err.find("moe: error:", p + 1)) ++n;
    EXPECT_EQ(n, 1u) << r.describe();
    EXPECT_NE(r.err.find("n_head"), std::string::npos) << r.describe();
}

}  // namespace
