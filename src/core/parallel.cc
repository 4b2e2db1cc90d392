#include "core/parallel.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace moe {

static int g_threads = 0;
static std::atomic<int64_t> g_regions{0};

int64_t parallel_regions() { return g_regions.load(std::memory_order_relaxed); }

static thread_local int t_serial = 0;  // SerialScope depth on this thread

SerialScope::SerialScope(bool active) : active_(active) {
    if (!active_) return;
    if (t_serial++ == 0) omp_set_num_threads(1);  // oneDNN's GEMMs read this thread's nthreads ICV
}

SerialScope::~SerialScope() {
    if (!active_) return;
    if (--t_serial == 0) omp_set_num_threads(num_threads());
}

void set_num_threads(int n) {
    if (n <= 0) n = omp_get_num_procs();
    g_threads = n;
    omp_set_num_threads(n);
}

void release_thread_pool() {
    if (!omp_in_parallel()) omp_pause_resource_all(omp_pause_soft);
}

int num_threads() {
    if (g_threads == 0) set_num_threads(0);
    return g_threads;
}

void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  function_ref<void(int64_t, int64_t)> fn) {
    parallel_for(begin, end, grain, -1, fn);
}

void parallel_for(int64_t begin, int64_t end, int64_t grain, int64_t item_bytes,
                  function_ref<void(int64_t, int64_t)> fn) {
    const int64_t n = end - begin;
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t nt = std::min<int64_t>(num_threads(), (n + grain - 1) / grain);
    if (nt <= 1 || t_serial > 0 || omp_in_parallel()) {
        fn(begin, end);
        return;
    }
    const int64_t chunk = (n + nt - 1) / nt;
    if (item_bytes >= 0 && item_bytes < kForkMinBytes / n) {  // n * item_bytes < kForkMinBytes
        for (int64_t b = begin; b < end; b += chunk) fn(b, std::min(end, b + chunk));
        return;
    }
    g_regions.fetch_add(1, std::memory_order_relaxed);
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int64_t t = 0; t < nt; ++t) {
        const int64_t b = begin + t * chunk;
        const int64_t e = std::min(end, b + chunk);
        if (b < e) fn(b, e);
    }
}

void parallel_zero(void* p, size_t bytes) {
    constexpr int64_t kChunk = 256 << 10;
    char* c = static_cast<char*>(p);
    const int64_t n = (int64_t)bytes;
    parallel_for(0, (n + kChunk - 1) / kChunk, 1, kChunk, [&](int64_t c0, int64_t c1) {
        std::memset(c + c0 * kChunk, 0, (size_t)(std::min(n, c1 * kChunk) - c0 * kChunk));
    });
}

void parallel_tasks(int64_t n, function_ref<void(int64_t)> fn) {
    if (n <= 0) return;
    const int64_t nt = std::min<int64_t>(num_threads(), n);
    if (nt <= 1 || t_serial > 0 || omp_in_parallel()) {
        for (int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    g_regions.fetch_add(1, std::memory_order_relaxed);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace moe
