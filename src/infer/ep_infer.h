#pragma once
// Expert-parallel inference: `mpirun -np P moe generate|bench|serve --model PATH --expert-parallel P`
// (docs/distributed.md). Rank r's model holds experts [r·E/P, (r+1)·E/P) of every MoE layer
// (Model(cfg, t, ExpertRange) with expert_range_of: loaded, mapped or converted for that range
// only); attention, routers, shared experts, embeddings and the head are whole on every rank.
//
// Rank 0 is the only one that runs the model: it does the I/O, the sampling, the HTTP server and
// every forward_cached. Each MoE layer of its forwards, after the route and the gather (rows
// grouped by expert, one process's layout), goes through EpLeader (the layers::ExpertRunner seam):
//   1. a broadcast of the layer's command: the layer, the row offsets of all E experts, the
//      small-expert decision one process takes over all E experts, and whether the call runs on one
//      thread (Model::kSerialFlops);
//   2. an alltoallv sends rank q the rows of its experts (one contiguous block of the grouped rows);
//   3. every rank runs its experts on its block (rank 0 on its own, in place) with the segments
//      and decision of one process, so each expert's GEMMs see exactly one process's rows;
//   4. an alltoallv brings the outputs back into their rows of c.ye, and rank 0's combine (slot
//      order, one process's code) follows.
// So logits and tokens are those of one process, bit for bit (same binary and ISA on every rank).
// The other ranks run ep_follow: a loop over rank 0's commands until it sends stop (EpLeader::stop,
// or its destructor). They hold no KV cache and never touch their attention weights.
#include <cstdint>
#include <vector>

#include "dist/comm.h"
#include "layers/ffn.h"
#include "model/model.h"

namespace moe {

// What each rank reports when the run ends: the expert weights it holds and its peak RSS.
struct EpRankStats {
    double expert_bytes = 0;  // Model::expert_bytes_held
    double peak_rss_mb = 0;   // getrusage's ru_maxrss (MB = 2^20 bytes)
};

// Rank 0's runner: installs itself in `model` (set_cached_expert_runner) and removes itself in stop().
class EpLeader final : public layers::ExpertRunner {
public:
    // comm: every rank of the job (P = comm.size() > 1); model: rank 0's, holding expert_range_of(.., P, 0).
    EpLeader(dist::Comm& comm, Model& model);
    ~EpLeader() override;  // stop(), if not yet
    EpLeader(const EpLeader&) = delete;
    EpLeader& operator=(const EpLeader&) = delete;

    void forward(layers::FfnCacheT<float>& c, const layers::MoeWeights<float>& w, const ModelConfig& m,
                 int64_t layer) override;
    void backward(const layers::FfnScratchT<float>& s, const layers::FfnCacheT<float>& c,
                  const layers::MoeWeights<float>& w, const ModelConfig& m, int64_t layer) override;
    void forward_cached(layers::FfnCacheT<float>& c, const layers::QFfn& q, const ModelConfig& m,
                        int64_t layer) override;

    // Ends the other ranks' loops and gathers every rank's stats (rank order); later calls return
    // the same. The model's forwards fail after it (a sharded model without its runner).
    const std::vector<EpRankStats>& stop();
    int size() const { return P_; }

private:
    dist::Comm& comm_;
    Model& model_;
    int P_ = 1;
    int64_t E_ = 0, El_ = 0;
    bool stopped_ = false;
    std::vector<EpRankStats> stats_;
    std::vector<int32_t> cmd_;
    std::vector<int64_t> sc_, sd_, rc_, rd_;
};

// A rank other than 0: runs its experts (model: holding expert_range_of(.., P, rank)) for rank 0's
// commands until rank 0 stops; then reports its stats to rank 0 and returns.
void ep_follow(dist::Comm& comm, Model& model);

// this process's peak RSS in MB (2^20 bytes)
double ep_peak_rss_mb();

}  // namespace moe
