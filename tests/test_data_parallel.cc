// Data-parallel training (docs/distributed.md) on the real binary: `mpirun -np W moe train` logs
// the bit-identical losses (and evaluations, routing telemetry, gradient norms) of one process with
// W times the gradient accumulation and saves the same checkpoint bytes, for dropless routing,
// capacity with drop and with reroute, the balancing loss, z-loss and noisy gating on. Also: only
// rank 0 prints, and an error every rank meets is printed once. Skipped in a build without MPI.
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
               " --oversubscribe --bind-to none env ";  // env: the OMP_WAIT_POLICY=passive moe() puts before the binary
#else
        return "";
#endif
    }
    static std::string mpi_env() {
        return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 "
               "OMPI_MCA_btl_vader_single_copy_mechanism=none OMP_NUM_THREADS=1 ";
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

    // np ranks with --grad-accum g against one process with np·g
    void expect_same_run(const std::string& mode, int np, int g) {
        SCOPED_TRACE(mode + ", np " + std::to_string(np) + ", grad-accum " + std::to_string(g));
        const std::string cfg = write_config(mode + ".json", router_config(mode));
        const std::string tag = mode + std::to_string(np) + std::to_string(g);
        RunResult a = train(np, cfg, "dp" + tag, "--grad-accum " + std::to_string(g));
        ASSERT_EQ(a.code(), 0) << a.describe();
        RunResult b = train(0, cfg, "one" + tag, "--grad-accum " + std::to_string(np * g));
        ASSERT_EQ(b.code(), 0) << b.describe();
        const auto la = log_lines("dp" + tag), lb = log_lines("one" + tag);
        ASSERT_EQ(la.size(), 20u + 2u) << "20 steps and 2 evaluations";
        ASSERT_EQ(la.size(), lb.size());
        for (size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], lb[i]) << "log line " << i;
        EXPECT_TRUE(read_file(path("dp" + tag + "/checkpoint.bin")) == read_file(path("one" + tag + "/checkpoint.bin")))
            << "checkpoints differ";
        // rank 0 alone prints
        EXPECT_EQ(std::count(a.out.begin(), a.out.end(), '\n'), std::count(b.out.begin(), b.out.end(), '\n'))
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
