// A training step allocates nothing once warm: every buffer of the forward, backward and AdamW is
// planned up front (Model::ensure_activations, the optimizer state, thread-local scratch that keeps
// its capacity). This binary replaces the global operator new to count heap allocations made
// while one step runs, after two warm-up steps, for a dense, an MoE (with capacity + reroute and
// noisy gating) and a bf16 configuration, at 1 and at all threads. (oneDNN's own packing scratch
// inside a multithreaded sgemm is counted apart and not held against us.)
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <execinfo.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/parallel.h"
#include "kernels/gemm.h"
#include "model/model.h"
#include "train/optim.h"

static std::atomic<bool> g_counting{false};
static std::atomic<long> g_allocs{0};
static void* g_first_trace[32];  // call stack of the first counted allocation (for the failure message)
static int g_first_depth = 0;

static std::atomic<long> g_library_allocs{0};

// oneDNN's multithreaded sgemm allocates its own packing scratch on each call; that is the
// library's business (counted apart). Everything else in the step must not allocate.
static bool from_onednn(void* const* trace, int depth) {
    for (int i = 1; i < depth; ++i) {
        Dl_info info;
        if (dladdr(trace[i], &info) && info.dli_fname && std::strstr(info.dli_fname, "libdnnl")) return true;
    }
    return false;
}

void* operator new(std::size_t n) {
    if (g_counting.load(std::memory_order_relaxed)) {
        void* trace[32];
        const int depth = backtrace(trace, 32);
        if (from_onednn(trace, depth)) {
            g_library_allocs.fetch_add(1, std::memory_order_relaxed);
        } else if (g_allocs.fetch_add(1, std::memory_order_relaxed) == 0) {
            std::memcpy(g_first_trace, trace, sizeof(trace));
            g_first_depth = depth;
        }
    }
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

using namespace moe;

namespace {

ModelConfig config(bool moe) {
    ModelConfig m;
    m.vocab_size = 50, m.n_layer = 2, m.n_embd = 32, m.n_head = 4, m.n_head_kv = 2, m.n_ctx = 16;
    if (moe) {
        m.n_expert = 4, m.n_expert_used = 2, m.n_ff_exp = 32;
        m.layer_moe = {true, true};
        m.router.noisy_gating = true;
        m.router.capacity_factor = 1.0;
        m.router.overflow = ops::OverflowPolicy::reroute;
        m.router.balance_loss = 0.01;
    } else {
        m.n_ff = 64;
        m.layer_moe = {false, false};
    }
    return m;
}

long allocations_in_one_step(const ModelConfig& cfg, int threads,
                             kernels::Precision precision = kernels::Precision::fp32) {
    void* warm[2];
    backtrace(warm, 2);  // loads libgcc's unwinder now, not inside the counted step
    set_num_threads(threads);
    Model model(cfg);
    model.init(1);
    model.set_precision(precision);
    AdamW adam(model.n_params());
    const int64_t B = 3, T = 16;
    std::vector<int32_t> x(B * T), y(B * T);
    for (int64_t i = 0; i < B * T; ++i) x[i] = (int32_t)(i * 7 % 50), y[i] = (int32_t)(i * 11 % 50);
    AdamWParams hp;
    long counted = -1;
    for (int step = 0; step < 3; ++step) {
        if (step == 2) g_allocs = 0, g_counting = true;
        model.zero_grad();
        model.set_mode(true, 1, step, 0);
        model.forward(x.data(), y.data(), B, T);
        model.backward(1.f);
        const double norm = grad_norm(model.grads(), model.n_params());
        adam.step(model.params(), model.grads(), model.table(), hp, step + 1, clip_coefficient(norm, 1.0));
        model.update_balance_bias();
        if (step == 2) g_counting = false, counted = g_allocs.load();
    }
    if (counted > 0) {
        std::fprintf(stderr, "first allocation inside the step:\n");
        backtrace_symbols_fd(g_first_trace, g_first_depth, STDERR_FILENO);
    }
    set_num_threads(0);
    return counted;
}

}  // namespace

TEST(Alloc, DenseStepAllocatesNothing) {
    for (int t : {1, 0}) EXPECT_EQ(allocations_in_one_step(config(false), t), 0) << "threads " << t;
}

TEST(Alloc, MoeStepAllocatesNothing) {
    for (int t : {1, 0}) EXPECT_EQ(allocations_in_one_step(config(true), t), 0) << "threads " << t;
}

TEST(Alloc, Bf16StepAllocatesNothing) {
    for (int t : {1, 0})
        EXPECT_EQ(allocations_in_one_step(config(true), t, kernels::Precision::bf16), 0) << "threads " << t;
}
