#include "kernels/batch_invariant.h"

#include <atomic>

#include "kernels/qmatmul.h"

namespace moe::kernels {

static std::atomic<bool> g_invariant{false};

void set_batch_invariant(bool on) { g_invariant.store(on, std::memory_order_relaxed); }
bool batch_invariant() { return g_invariant.load(std::memory_order_relaxed); }
bool gemv_path(int64_t N) { return N <= kGemvMaxN || batch_invariant(); }

}  // namespace moe::kernels
