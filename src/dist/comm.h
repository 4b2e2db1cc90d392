#pragma once
// Communicators: the collectives a multi-process run needs (data-parallel gradient sums today,
// expert-parallel dispatch with alltoallv and sub-groups next), behind one interface with three
// implementations: SelfComm (one process), the thread fake (dist/fake_comm.h: W threads of one
// process, so unit tests run without mpirun) and MPI (dist/mpi_comm.cc, built with MOE_MPI).
//
// Every collective is called by every rank of the communicator, in the same order (MPI's rule).
// Sizes are bytes unless the name says elements; a count of 0 is allowed everywhere.
//
// Sums are bit-reproducible by construction, not by trusting the library's reduction: element i
// of allreduce_sum is the left fold over ranks in rank order,
//     x[i] = ((x_0[i] + x_1[i]) + x_2[i]) + ... + x_{W-1}[i],
// formed by the owner of i's shard (a reduce-scatter over alltoallv), then sent to every rank
// (allgatherv). Every rank gets the same bits, whatever the implementation, message sizes or
// MPI's choice of algorithm (MPI-3.1 only recommends reproducible MPI_Allreduce).
#include <cstdint>
#include <memory>
#include <vector>

namespace moe::dist {

class Comm {
public:
    virtual ~Comm() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;

    // --- primitives (what an implementation provides)
    virtual void barrier() = 0;
    // root's `bytes` at data to every rank's data
    virtual void broadcast(void* data, int64_t bytes, int root) = 0;
    // The same for a rank that may wait long for it (an expert-parallel inference rank between a
    // server's requests): after a while of waiting it sleeps between polls instead of spinning a
    // core. Every rank of the broadcast calls broadcast_idle (MPI does not match a nonblocking
    // collective with a blocking one). By default broadcast.
    virtual void broadcast_idle(void* data, int64_t bytes, int root) { broadcast(data, bytes, root); }
    // every rank's `bytes` at in, concatenated in rank order at out; counts (size()): each rank's bytes
    virtual void allgatherv(const void* in, int64_t bytes, void* out, const int64_t* counts) = 0;
    // send_counts[q] bytes at send + send_displs[q] go to rank q; the recv_counts[q] bytes from rank q
    // land at recv + recv_displs[q] (recv_counts[q] must equal rank q's send_counts[rank()])
    virtual void alltoallv(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                           const int64_t* recv_counts, const int64_t* recv_displs) = 0;
    // The ranks with the same color form a new communicator, ranked by (key, old rank); color < 0:
    // this rank joins none (returns null). MPI_Comm_split.
    virtual std::unique_ptr<Comm> split(int color, int key) = 0;

    // --- built on them (comm.cc), the same code for every implementation
    // equal sizes: every rank's `bytes` at in, concatenated in rank order at out (size() * bytes)
    void allgather(const void* in, int64_t bytes, void* out);
    // in place, the fixed-order sum above
    void allreduce_sum(float* x, int64_t n);
    void allreduce_sum(double* x, int64_t n);
    // alltoallv in elements of float (counts and displacements in floats)
    void alltoallv(const float* send, const int64_t* send_counts, const int64_t* send_displs, float* recv,
                   const int64_t* recv_counts, const int64_t* recv_displs);
    // counts[q] = what rank q passes as `mine` (one int64 allgather)
    std::vector<int64_t> allgather_count(int64_t mine);
};

// The shards of a reduce-scatter: rank r owns elements [shard_begin(n, W, r), shard_begin(n, W, r + 1)),
// contiguous, balanced to within 16 elements, in rank order.
int64_t shard_begin(int64_t n, int W, int r);

// The reduce half of allreduce_sum, with a running accumulator: every rank passes x (n); rank r's
// shard (shard_begin(n, W, r) .. r + 1) becomes
//     first: x_0 + x_1 + ... + x_{W-1}          not first: ((shard + x_0) + x_1) + ... + x_{W-1}
// (left folds in rank order). Gradient accumulation over ranks uses it round by round. scratch:
// the receive buffer (about n elements), kept by the caller so that repeated calls do not allocate.
void reduce_scatter_fold(Comm& c, const float* x, int64_t n, float* shard, bool first,
                         std::vector<float>* scratch = nullptr);
void reduce_scatter_fold(Comm& c, const double* x, int64_t n, double* shard, bool first,
                         std::vector<double>* scratch = nullptr);
// The same with `pieces` terms per rank: x holds pieces arrays of n, one after another, and rank
// r's shard becomes the left fold over (rank q, piece p) in that order, q * pieces + p:
//     first: x_{0,0} + x_{0,1} + ... + x_{W-1,pieces-1}     not first: ((shard + x_{0,0}) + ...)
// Expert parallelism folds the expert gradients of the micro-batches an expert-data-parallel rank
// served (one piece per source rank of its expert-parallel group) in global micro-batch order with
// it. send_scratch: the by-destination packing of x (pieces * n), kept by the caller.
void reduce_scatter_fold_pieces(Comm& c, const float* x, int64_t pieces, int64_t n, float* shard, bool first,
                                std::vector<float>* scratch = nullptr, std::vector<float>* send_scratch = nullptr);
// The gather half: every rank's shard (as above) into x (n) on every rank.
void allgather_shards(Comm& c, const void* shard, int64_t n, int64_t elem_bytes, void* x);

// One process: rank 0 of 1; every collective is a copy.
class SelfComm final : public Comm {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void barrier() override {}
    void broadcast(void*, int64_t, int) override {}
    void allgatherv(const void* in, int64_t bytes, void* out, const int64_t* counts) override;
    void alltoallv(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                   const int64_t* recv_counts, const int64_t* recv_displs) override;
    using Comm::alltoallv;
    std::unique_ptr<Comm> split(int color, int key) override;
};

// The process's world: MPI_COMM_WORLD when this process was started by mpirun (Open MPI's
// OMPI_COMM_WORLD_SIZE or PMI's PMI_SIZE in the environment; MPI is initialised by the first call
// and finalised at exit), else a SelfComm. Under mpirun in a build without MPI (MOE_MPI=OFF) with
// more than one rank: a moe::error.
Comm& world();
// Without initialising anything: world()'s rank and size if it exists, else what the launcher's
// environment says (0 and 1 outside mpirun). For deciding who prints an error.
int launcher_rank();
int launcher_size();
// true when this build can run over MPI (MOE_MPI)
bool have_mpi();

}  // namespace moe::dist
