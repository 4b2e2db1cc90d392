#pragma once
// Data-parallel training over a communicator (mpirun -np W moe train, docs/distributed.md): the
// GradientSync whose accumulate/finish fold every rank's micro-batch gradients in global
// micro-batch order, so W ranks produce the bits of one process with W times the accumulation.
//
// Round j (every rank's j-th micro-batch, global micro-batches j·W .. j·W + W - 1): a
// reduce-scatter (dist::reduce_scatter_fold) in which the owner of each shard of the gradient adds
// the W pieces to its running sum in rank order, which is micro-batch order. finish(): every
// shard to every rank (allgather). Per step and rank that moves (M/W + 1)·(W-1)/W gradient sizes
// and keeps one shard (n/W floats) of running sum.
#include <vector>

#include "dist/comm.h"
#include "train/grad_sync.h"

namespace moe {

class DataParallelSync final : public GradientSync {
public:
    explicit DataParallelSync(dist::Comm& comm) : comm_(comm) {}
    bool identity() const override { return comm_.size() == 1; }
    int rank() const override { return comm_.rank(); }
    int size() const override { return comm_.size(); }
    void accumulate(const float* g, int64_t n, int64_t round) override;
    void finish(float* grads, int64_t n) override;
    void sync(float*, int64_t, int64_t) override {}  // finish() already summed over the ranks
    void gather(const double* mine, int64_t k, double* all) override;

private:
    dist::Comm& comm_;
    std::vector<float> shard_, scratch_;  // running sum of my shard; the reduce-scatter's receive buffer
};

}  // namespace moe
