#include "dist/comm.h"

#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace moe::dist {

int64_t shard_begin(int64_t n, int W, int r) {
    MOE_ASSERT(W >= 1 && r >= 0 && r <= W && n >= 0);
    if (r == W) return n;
    // 16-element blocks dealt out evenly: whole cache lines per owner
    const int64_t blocks = (n + 15) / 16;
    const int64_t b = blocks / W * r + std::min<int64_t>(r, blocks % W);
    return std::min(n, b * 16);
}

void Comm::allgather(const void* in, int64_t bytes, void* out) {
    std::vector<int64_t> counts(size(), bytes);
    allgatherv(in, bytes, out, counts.data());
}

std::vector<int64_t> Comm::allgather_count(int64_t mine) {
    std::vector<int64_t> all(size());
    allgather(&mine, sizeof mine, all.data());
    return all;
}

void Comm::alltoallv(const float* send, const int64_t* send_counts, const int64_t* send_displs, float* recv,
                     const int64_t* recv_counts, const int64_t* recv_displs) {
    const int W = size();
    std::vector<int64_t> sc(W), sd(W), rc(W), rd(W);
    for (int q = 0; q < W; ++q) {
        sc[q] = send_counts[q] * 4, sd[q] = send_displs[q] * 4;
        rc[q] = recv_counts[q] * 4, rd[q] = recv_displs[q] * 4;
    }
    alltoallv((const void*)send, sc.data(), sd.data(), (void*)recv, rc.data(), rd.data());
}

namespace {

template <class F>
void fold(Comm& c, const F* x, int64_t pieces, int64_t n, F* shard, bool first, std::vector<F>* scratch,
          std::vector<F>* send_scratch) {
    const int W = c.size(), r = c.rank();
    const int64_t lo = shard_begin(n, W, r), len = shard_begin(n, W, r + 1) - lo;
    if (W == 1 && pieces == 1) {
        if (first && len) std::memcpy(shard, x, len * sizeof(F));
        else
            for (int64_t i = 0; i < len; ++i) shard[i] += x[i];
        return;
    }
    // the pieces of rank q's shard, piece after piece, go to rank q: in place for one piece, else
    // packed by destination
    const F* send = x;
    std::vector<F> own_send;
    if (pieces > 1) {
        std::vector<F>& buf = send_scratch ? *send_scratch : own_send;
        buf.resize((size_t)(pieces * n));
        F* o = buf.data();
        for (int q = 0; q < W; ++q) {
            const int64_t qlo = shard_begin(n, W, q), qlen = shard_begin(n, W, q + 1) - qlo;
            for (int64_t p = 0; p < pieces; ++p, o += qlen)
                if (qlen) std::memcpy(o, x + p * n + qlo, qlen * sizeof(F));
        }
        send = buf.data();
    }
    // rank q's pieces of my shard land at recv + q * pieces * len
    std::vector<F> own;
    std::vector<F>& recv = scratch ? *scratch : own;
    recv.resize((size_t)(len * W * pieces));
    std::vector<int64_t> sc(W), sd(W), rc(W), rd(W);
    for (int q = 0; q < W; ++q) {
        const int64_t qlo = shard_begin(n, W, q), qhi = shard_begin(n, W, q + 1);
        sc[q] = pieces * (qhi - qlo) * (int64_t)sizeof(F), sd[q] = pieces * qlo * (int64_t)sizeof(F);
        rc[q] = pieces * len * (int64_t)sizeof(F), rd[q] = q * pieces * len * (int64_t)sizeof(F);
    }
    c.alltoallv((const void*)send, sc.data(), sd.data(), (void*)recv.data(), rc.data(), rd.data());
    int64_t k0 = 0;
    if (first) {
        if (len) std::memcpy(shard, recv.data(), len * sizeof(F));
        k0 = 1;
    }
    // (rank, piece) order: rank q's piece p is term q * pieces + p of the fold
    for (int64_t k = k0; k < (int64_t)W * pieces; ++k) {
        const F* p = recv.data() + k * len;
        for (int64_t i = 0; i < len; ++i) shard[i] += p[i];
    }
}

template <class F>
void allreduce(Comm& c, F* x, int64_t n) {
    const int W = c.size();
    if (W == 1 || n == 0) return;
    // in pieces of at most 16 M elements: bounded scratch, and every message far below 2^31 bytes
    const int64_t piece = int64_t(1) << 24;
    for (int64_t off = 0; off < n; off += piece) {
        const int64_t m = std::min(piece, n - off);
        const int64_t lo = shard_begin(m, W, c.rank()), len = shard_begin(m, W, c.rank() + 1) - lo;
        std::vector<F> shard((size_t)len);
        fold(c, x + off, 1, m, shard.data(), true, (std::vector<F>*)nullptr, (std::vector<F>*)nullptr);
        allgather_shards(c, shard.data(), m, sizeof(F), x + off);
    }
}

}  // namespace

void reduce_scatter_fold(Comm& c, const float* x, int64_t n, float* shard, bool first, std::vector<float>* scratch) {
    fold(c, x, 1, n, shard, first, scratch, (std::vector<float>*)nullptr);
}
void reduce_scatter_fold(Comm& c, const double* x, int64_t n, double* shard, bool first, std::vector<double>* scratch) {
    fold(c, x, 1, n, shard, first, scratch, (std::vector<double>*)nullptr);
}
void reduce_scatter_fold_pieces(Comm& c, const float* x, int64_t pieces, int64_t n, float* shard, bool first,
                                std::vector<float>* scratch, std::vector<float>* send_scratch) {
    MOE_ASSERT(pieces >= 1);
    fold(c, x, pieces, n, shard, first, scratch, send_scratch);
}

void allgather_shards(Comm& c, const void* shard, int64_t n, int64_t elem_bytes, void* x) {
    const int W = c.size();
    std::vector<int64_t> counts(W);
    for (int q = 0; q < W; ++q) counts[q] = (shard_begin(n, W, q + 1) - shard_begin(n, W, q)) * elem_bytes;
    c.allgatherv(shard, counts[c.rank()], x, counts.data());
}

void Comm::allreduce_sum(float* x, int64_t n) { allreduce(*this, x, n); }
void Comm::allreduce_sum(double* x, int64_t n) { allreduce(*this, x, n); }

void SelfComm::allgatherv(const void* in, int64_t bytes, void* out, const int64_t* counts) {
    MOE_ASSERT(counts[0] == bytes);
    if (bytes) std::memmove(out, in, bytes);
}

void SelfComm::alltoallv(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                         const int64_t* recv_counts, const int64_t* recv_displs) {
    MOE_ASSERT(send_counts[0] == recv_counts[0]);
    if (send_counts[0])
        std::memmove((char*)recv + recv_displs[0], (const char*)send + send_displs[0], send_counts[0]);
}

std::unique_ptr<Comm> SelfComm::split(int color, int) {
    if (color < 0) return nullptr;
    return std::make_unique<SelfComm>();
}

// ---------------------------------------------------------------- the process's world

#if MOE_WITH_MPI
std::unique_ptr<Comm> make_mpi_world();  // mpi_comm.cc
bool mpi_world_started();
#endif

namespace {

int env_int(const char* a, const char* b, int dflt) {
    for (const char* name : {a, b})
        if (const char* v = std::getenv(name); v && *v) return std::atoi(v);
    return dflt;
}

Comm* g_world = nullptr;

}  // namespace

bool have_mpi() { return MOE_WITH_MPI != 0; }

int launcher_rank() { return g_world ? g_world->rank() : env_int("OMPI_COMM_WORLD_RANK", "PMI_RANK", 0); }
int launcher_size() { return g_world ? g_world->size() : env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", 1); }

Comm& world() {
    static std::unique_ptr<Comm> w = []() -> std::unique_ptr<Comm> {
        const int n = env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", 0);
        if (n == 0) return std::make_unique<SelfComm>();  // not started by mpirun
#if MOE_WITH_MPI
        return make_mpi_world();
#else
        if (n > 1)
            fail("this process is one of ", n, " started by mpirun, but moe was built without MPI "
                 "(configure with -DMOE_MPI=ON after scripts/setup.sh installs libopenmpi-dev)");
        return std::make_unique<SelfComm>();
#endif
    }();
    g_world = w.get();
    return *w;
}

}  // namespace moe::dist
