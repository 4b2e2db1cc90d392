#pragma once
// The thread fake of a communicator: W threads of one process, each a rank, meeting in shared
// memory (each collective: every rank posts its buffers, waits for all, copies what it needs, waits
// again). The same collectives and the same bits as MPI, so unit tests of everything above the
// communicator run without mpirun.
#include <functional>

#include "dist/comm.h"

namespace moe::dist {

// Runs fn(comm) on W threads, comm being rank r of a fake world of W. Returns when every rank has
// returned. If one rank throws, the others' pending and later collectives throw too (instead of
// waiting forever), and the first exception is rethrown here.
void run_fake_world(int W, const std::function<void(Comm&)>& fn);

}  // namespace moe::dist
