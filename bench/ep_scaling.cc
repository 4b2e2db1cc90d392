// Expert-parallel costs on this machine (docs/distributed.md):
//  1. all-to-all: every rank sends n bytes to every other rank (Comm::alltoallv, MPI_Alltoallv
//     underneath); median time per size, fitted as t = alpha + m * beta with m the bytes a rank
//     sends (n * (W - 1)), by least squares on the relative error;
//  2. a training step with --expert-parallel W (one micro-batch per rank, so the global batch is W
//     micro-batches; np 1 is one process with one), split into the expert all-to-alls (the
//     runner's alltoallv on the expert-parallel group), the gradient reduction (every other
//     collective: the fixed-order folds, the gathers of the gradient and of the per-micro-batch
//     records) and the rest (compute, waiting included). Times are rank 0's, median over steps.
//
//   mpirun -np W build/bench/ep_scaling [--reps R] [--steps S] [--config C] [--batch B]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "dist/comm.h"
#include "kernels/cpu.h"
#include "model/config.h"
#include "train/expert_parallel.h"
#include "train/trainer.h"

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Buckets {
    double a2a = 0, reduce = 0;
};

// A communicator that times its collectives into a2a (alltoallv of the expert-parallel group: the
// first split ExpertParallelSync makes) or reduce (everything else).
class TimingComm final : public moe::dist::Comm {
public:
    TimingComm(moe::dist::Comm& inner, Buckets& b, bool ep, int* splits, std::unique_ptr<moe::dist::Comm> own = nullptr)
        : inner_(inner), b_(b), ep_(ep), splits_(splits), own_(std::move(own)) {}
    int rank() const override { return inner_.rank(); }
    int size() const override { return inner_.size(); }
    void barrier() override { inner_.barrier(); }
    void broadcast(void* d, int64_t n, int root) override {
        const auto t0 = Clock::now();
        inner_.broadcast(d, n, root);
        b_.reduce += since(t0);
    }
    void allgatherv(const void* in, int64_t bytes, void* out, const int64_t* counts) override {
        const auto t0 = Clock::now();
        inner_.allgatherv(in, bytes, out, counts);
        b_.reduce += since(t0);
    }
    void alltoallv(const void* s, const int64_t* sc, const int64_t* sd, void* r, const int64_t* rc,
                   const int64_t* rd) override {
        const auto t0 = Clock::now();
        inner_.alltoallv(s, sc, sd, r, rc, rd);
        (ep_ ? b_.a2a : b_.reduce) += since(t0);
    }
    using Comm::alltoallv;
    std::unique_ptr<Comm> split(int color, int key) override {
        auto sub = inner_.split(color, key);
        if (!sub) return nullptr;
        const bool ep = (*splits_)++ == 0;
        moe::dist::Comm& ref = *sub;
        return std::make_unique<TimingComm>(ref, b_, ep, splits_, std::move(sub));
    }

private:
    moe::dist::Comm& inner_;
    Buckets& b_;
    bool ep_;
    int* splits_;
    std::unique_ptr<moe::dist::Comm> own_;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    int reps = 15, steps = 6;
    int64_t batch = 4;
    std::string config = std::string(MOE_SOURCE_DIR) + "/configs/bench-moe.json";
    for (int i = 1; i + 1 < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--reps") reps = std::max(1, std::atoi(argv[++i]));
        else if (a == "--steps") steps = std::max(1, std::atoi(argv[++i]));
        else if (a == "--batch") batch = std::max(1, std::atoi(argv[++i]));
        else if (a == "--config") config = argv[++i];
    }
    moe::dist::Comm& world = moe::dist::world();
    const int W = world.size();
    const bool lead = world.rank() == 0;
    if (lead) std::printf("host: %s\nranks: %d\n\n", moe::kernels::host_description().c_str(), W);

    // ---- 1. all-to-all latency and bandwidth
    if (W > 1) {
        if (lead)
            std::printf("all-to-all (Comm::alltoallv), every rank n bytes to every other rank, median of %d\n"
                        "%12s %14s %12s %12s %12s\n",
                        reps, "n bytes", "sent/rank KB", "us", "GB/s", "fit us");
        std::vector<double> ms, ts;
        std::vector<int64_t> ns;
        for (int64_t n = 8; n <= (int64_t(4) << 20); n *= 4) {
            std::vector<char> s((size_t)(n * W), 1), r((size_t)(n * W));
            std::vector<int64_t> c(W, n), d(W);
            for (int q = 0; q < W; ++q) d[q] = q * n;
            c[world.rank()] = 0;  // nothing to myself: only what crosses between processes
            std::vector<int64_t> rc(W, n);
            rc[world.rank()] = 0;
            std::vector<double> t;
            for (int k = 0; k < reps + 2; ++k) {
                world.barrier();
                const auto t0 = Clock::now();
                world.alltoallv(s.data(), c.data(), d.data(), r.data(), rc.data(), d.data());
                if (k >= 2) t.push_back(since(t0));
            }
            ns.push_back(n);
            ms.push_back((double)n * (W - 1));
            ts.push_back(median(t));
        }
        // weighted least squares (weights 1/t^2: relative error) for t = alpha + m * beta
        double s00 = 0, s01 = 0, s11 = 0, y0 = 0, y1 = 0;
        for (size_t i = 0; i < ts.size(); ++i) {
            const double w = 1.0 / (ts[i] * ts[i]);
            s00 += w, s01 += w * ms[i], s11 += w * ms[i] * ms[i], y0 += w * ts[i], y1 += w * ts[i] * ms[i];
        }
        const double det = s00 * s11 - s01 * s01;
        const double alpha = (y0 * s11 - y1 * s01) / det, beta = (s00 * y1 - s01 * y0) / det;
        if (lead) {
            for (size_t i = 0; i < ts.size(); ++i)
                std::printf("%12lld %14.1f %12.1f %12.3f %12.1f\n", (long long)ns[i], ms[i] / 1024, ts[i] * 1e6,
                            ms[i] / ts[i] / 1e9, (alpha + beta * ms[i]) * 1e6);
            std::printf("fit: alpha = %.1f us, beta = %.3f ns/byte (%.2f GB/s per rank)\n\n", alpha * 1e6, beta * 1e9,
                        1.0 / beta / 1e9);
        }
    }

    // ---- 2. a training step with --expert-parallel W
    moe::Config cfg = moe::load_config(config);
    cfg.train.batch_size = batch;
    cfg.train.steps = 1000000;
    cfg.train.grad_accum = 1;
    moe::TrainOptions opt;
    opt.out_dir = "/tmp/moe_ep_scaling_" + std::to_string(::getpid());
    opt.summary = false;
    opt.threads = 1;
    Buckets b;
    int splits = 0;
    TimingComm timed(world, b, false, &splits);
    std::unique_ptr<moe::ExpertParallelSync> sync;
    if (W > 1) sync = std::make_unique<moe::ExpertParallelSync>(timed, W);
    moe::Trainer t(cfg, opt, sync.get());
    std::vector<double> st, sa, sr;
    for (int k = 0; k < steps + 2; ++k) {
        world.barrier();
        b = {};
        const auto t0 = Clock::now();
        t.step();
        const double dt = since(t0);
        if (k < 2) continue;  // warm-up: first-touch of the buffers
        st.push_back(dt), sa.push_back(b.a2a), sr.push_back(b.reduce);
    }
    if (lead) {
        const double T = median(st), A = median(sa), R = median(sr);
        std::printf("\ntraining step (%s, batch %lld x %lld per rank, --expert-parallel %d, 1 thread per rank), "
                    "median of %d steps:\n",
                    config.c_str(), (long long)batch, (long long)cfg.train.block_size, W, steps);
        std::printf("  step %.1f ms | all-to-all %.1f ms (%.0f%%) | gradient reduction %.1f ms (%.0f%%) | "
                    "compute and waits %.1f ms (%.0f%%) | %.0f tokens/s\n",
                    T * 1e3, A * 1e3, 100 * A / T, R * 1e3, 100 * R / T, (T - A - R) * 1e3, 100 * (T - A - R) / T,
                    (double)(batch * cfg.train.block_size * W) / T);
    }
    std::error_code ec;
    if (lead) std::filesystem::remove_all(opt.out_dir, ec);  // nothing is saved; the trainer made it
    return 0;
}
