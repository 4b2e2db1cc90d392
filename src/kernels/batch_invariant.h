#pragma once
// Batch invariance (docs/serving.md): while it is on, every inference matmul row is computed with
// the decode kernel's arithmetic whatever the number of rows N in the call (qmatmul's streaming
// GEMV, rows in blocks of kInvariantRowBlock, each weight row read once per block), the router's
// and shared-expert gate's small products take the same path, and cached attention takes its
// per-row loop (no GEMM over a run of prefill rows). A row's result then depends on its own inputs
// (token, position, the KV cache of its sequence) alone: not on how many rows share the call, which
// other sequences are in it, or how a prompt was cut into chunks. The serving engine turns it on
// around its forwards; everything else keeps the fastest path per call size (off by default).
//
// A process-wide switch (like the GEMM backend and the ISA cap), read by the thread that picks
// the path, so workers of a parallel region inherit the caller's choice.
#include <cstdint>

namespace moe::kernels {

inline constexpr int64_t kInvariantRowBlock = 32;  // x rows per pass over the weights

void set_batch_invariant(bool on);
bool batch_invariant();

// The decode (GEMV) path for a call of N rows: N <= kGemvMaxN, or always while batch invariant.
bool gemv_path(int64_t N);

// Turns batch invariance on (or off) for its lifetime and restores the previous setting.
class BatchInvariantScope {
public:
    explicit BatchInvariantScope(bool on = true) : prev_(batch_invariant()) { set_batch_invariant(on); }
    ~BatchInvariantScope() { set_batch_invariant(prev_); }
    BatchInvariantScope(const BatchInvariantScope&) = delete;
    BatchInvariantScope& operator=(const BatchInvariantScope&) = delete;

private:
    bool prev_;
};

}  // namespace moe::kernels
