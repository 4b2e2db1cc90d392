#include "train/dp_sync.h"

#include "core/error.h"

namespace moe {

void DataParallelSync::accumulate(const float* g, int64_t n, int64_t round) {
    const int W = comm_.size(), r = comm_.rank();
    shard_.resize(dist::shard_begin(n, W, r + 1) - dist::shard_begin(n, W, r));
    dist::reduce_scatter_fold(comm_, g, n, shard_.data(), round == 0, &scratch_);
}

void DataParallelSync::finish(float* grads, int64_t n) {
    MOE_ASSERT((int64_t)shard_.size() == dist::shard_begin(n, comm_.size(), comm_.rank() + 1) -
                                             dist::shard_begin(n, comm_.size(), comm_.rank()));
    dist::allgather_shards(comm_, shard_.data(), n, sizeof(float), grads);
}

void DataParallelSync::gather(const double* mine, int64_t k, double* all) {
    comm_.allgather(mine, k * (int64_t)sizeof(double), all);
}

}  // namespace moe
