// The MPI communicator (built with MOE_MPI): MPI_COMM_WORLD and its splits. Only byte-moving
// collectives are used (alltoallv, allgatherv, bcast, barrier); sums are formed by comm.cc in a
// fixed order, never by MPI_Allreduce. MPI-3.1 (Debian's Open MPI 4.1) has int counts: a message
// over 2^31 - 1 bytes is refused with a moe::error (allreduce_sum sends pieces far below that).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <climits>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "dist/comm.h"

namespace moe::dist {

namespace {

void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail(what, " failed: ", std::string(msg, len));
}

int to_int(int64_t v, const char* what) {
    if (v < 0 || v > INT_MAX)
        fail(what, ": a message of ", v, " bytes does not fit MPI-3.1's int count (at most ", INT_MAX, ")");
    return (int)v;
}

class MpiComm final : public Comm {
public:
    MpiComm(MPI_Comm c, bool owned) : c_(c), owned_(owned) {
        MPI_Comm_rank(c_, &rank_);
        MPI_Comm_size(c_, &size_);
    }
    ~MpiComm() override {
        int fin = 0;
        MPI_Finalized(&fin);
        if (owned_ && !fin) MPI_Comm_free(&c_);
    }
    int rank() const override { return rank_; }
    int size() const override { return size_; }

    void barrier() override { check(MPI_Barrier(c_), "MPI_Barrier"); }

    void broadcast(void* data, int64_t bytes, int root) override {
        for (int64_t off = 0; off < bytes; off += INT_MAX)
            check(MPI_Bcast((char*)data + off, (int)std::min<int64_t>(INT_MAX, bytes - off), MPI_BYTE, root, c_),
                  "MPI_Bcast");
    }

    // MPI_Ibcast polled: busy (with sched_yield) for the first 10 ms, the gaps between the
    // collectives of a running job; then a sleep between polls growing to 1 ms (an idle rank costs
    // ~nothing; the first command after idleness waits up to 1 ms more)
    void broadcast_idle(void* data, int64_t bytes, int root) override {
        if (bytes > INT_MAX) return broadcast(data, bytes, root);
        MPI_Request req = MPI_REQUEST_NULL;
        check(MPI_Ibcast(data, (int)bytes, MPI_BYTE, root, c_, &req), "MPI_Ibcast");
        const auto t0 = std::chrono::steady_clock::now();
        int64_t nap_us = 0;
        for (;;) {
            int done = 0;
            check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
            if (done) return;
            if (nap_us == 0 && std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(10)) {
                std::this_thread::yield();
                continue;
            }
            nap_us = std::min<int64_t>(1000, nap_us + 50);
            std::this_thread::sleep_for(std::chrono::microseconds(nap_us));
        }
    }

    void allgatherv(const void* in, int64_t bytes, void* out, const int64_t* counts) override {
        std::vector<int> rc(size_), rd(size_);
        int64_t off = 0;
        for (int q = 0; q < size_; ++q) {
            rc[q] = to_int(counts[q], "MPI_Allgatherv");
            rd[q] = to_int(off, "MPI_Allgatherv");
            off += counts[q];
        }
        check(MPI_Allgatherv(in, to_int(bytes, "MPI_Allgatherv"), MPI_BYTE, out, rc.data(), rd.data(), MPI_BYTE, c_),
              "MPI_Allgatherv");
    }

    void alltoallv(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                   const int64_t* recv_counts, const int64_t* recv_displs) override {
        std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
        for (int q = 0; q < size_; ++q) {
            sc[q] = to_int(send_counts[q], "MPI_Alltoallv");
            sd[q] = to_int(send_displs[q], "MPI_Alltoallv");
            rc[q] = to_int(recv_counts[q], "MPI_Alltoallv");
            rd[q] = to_int(recv_displs[q], "MPI_Alltoallv");
        }
        check(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE, c_),
              "MPI_Alltoallv");
    }
    using Comm::alltoallv;

    std::unique_ptr<Comm> split(int color, int key) override {
        MPI_Comm out = MPI_COMM_NULL;
        check(MPI_Comm_split(c_, color < 0 ? MPI_UNDEFINED : color, key, &out), "MPI_Comm_split");
        if (out == MPI_COMM_NULL) return nullptr;
        MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN);
        return std::make_unique<MpiComm>(out, true);
    }

private:
    MPI_Comm c_;
    bool owned_;
    int rank_ = 0, size_ = 1;
};

void finalize_at_exit() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

}  // namespace

std::unique_ptr<Comm> make_mpi_world() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        // SERIALIZED: one thread at a time calls MPI (OpenMP workers never do), not always the one
        // that called world(): `moe serve --expert-parallel` runs its engine, and so the experts'
        // exchanges, on a thread of its own
        check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
        if (provided < MPI_THREAD_SERIALIZED)
            fail("the MPI library provides thread level ", provided, ", below MPI_THREAD_SERIALIZED");
        std::atexit(finalize_at_exit);
    }
    // errors come back as codes and become moe::error (a lost peer usually ends the job in mpirun first)
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return std::make_unique<MpiComm>(MPI_COMM_WORLD, false);
}

}  // namespace moe::dist
