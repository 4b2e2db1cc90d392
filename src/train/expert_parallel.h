#pragma once
// Expert-parallel training (mpirun -np W moe train --expert-parallel P, docs/distributed.md).
//
// The W ranks form W/P expert-parallel groups of P consecutive ranks ({0..P-1}, {P..2P-1}, ...).
// Rank q of a group holds experts [q·E/P, (q+1)·E/P) of every MoE layer (El = E/P of them): it
// runs them for the rows of all P ranks of its group. The ranks holding the same experts (equal
// q, one per group) form its expert-data-parallel group, of D = W/P ranks.
//
// One MoE layer's forward on a rank (ExpertParallel, the layers::ExpertRunner seam): routing,
// capacity, reroute, the balancing statistics, gather and combine are the rank's own (its
// micro-batch), as on one process. The routed rows, grouped by expert, are contiguous per
// destination rank (El experts each); an all-to-all-v sends them there, with their per-expert
// counts and the source's small-expert decision (ops::small_experts over all E, so the owner runs
// the GEMMs one process would); the owner runs its El experts once per source rank (rows of
// source s only, source after source), and a second all-to-all-v brings the outputs back to their
// rows. Backward mirrors it: dye out, dxe back. Each source's expert weight gradients land in a
// buffer of their own (one piece per source, zeroed per micro-batch), so that
//
// the step's gradient is formed in one process's order: the replicated tensors (attention,
// router, embeddings, norms, dense and shared FFNs) are folded over all W ranks in rank order
// (which is micro-batch order, as data parallelism does); an expert's gradient is folded over its
// expert-data-parallel group, piece by piece in (group, source) order, which is again micro-batch
// order (round j's micro-batch j·W + g·P + s is group g's source s).
//
// Sharded (the trainer's way): each rank's Model holds only its experts (Model(cfg, ExpertRange))
// and the trainer's AdamW only their moments; the expert gradient is all-gathered over the
// expert-data-parallel group only (its D replicas of the same experts) and each rank updates its
// own experts; nothing of the experts crosses the expert-parallel group but rows. Evaluations run
// through the runner too (every rank evaluates), and checkpoints are sharded (io/checkpoint.h).
// Unsharded (a model holding every expert; the thread-fake tests): every rank gathers the whole
// gradient and runs the same AdamW on every parameter. Either way parameters and checkpoints are
// those of one process with --grad-accum W·G, bit for bit.
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "dist/comm.h"
#include "layers/ffn.h"
#include "model/model.h"
#include "train/grad_sync.h"

namespace moe {

// The runner of one expert-parallel group (comm: its P ranks). Owns the received rows of every
// MoE layer (for the backward) and the per-source gradients of its experts. Its buffers grow to
// the largest rows received and are reused: once warm, a step allocates nothing here.
class ExpertParallel final : public layers::ExpertRunner {
public:
    // model: the fp32 model whose expert stacks (every layer's gate/up/down) this rank serves
    // experts [rank·E/P, (rank+1)·E/P) of. E must be a multiple of comm.size() (moe::error). The
    // model holds either every expert or exactly that range (Model(cfg, ExpertRange), the trainer's
    // choice: then the rank holds, updates and saves only its experts).
    ExpertParallel(dist::Comm& comm, Model& model);

    void forward(layers::FfnCacheT<float>& c, const layers::MoeWeights<float>& w, const ModelConfig& m,
                 int64_t layer) override;
    void backward(const layers::FfnScratchT<float>& s, const layers::FfnCacheT<float>& c,
                  const layers::MoeWeights<float>& w, const ModelConfig& m, int64_t layer) override;

    int64_t first_expert() const { return first_; }
    int64_t n_local() const { return El_; }
    // The local experts' slices of the model's parameter table: (offset, floats), in the order of
    // the local gradient layout (parameter order; per MoE layer gate, up, down).
    const std::vector<std::pair<int64_t, int64_t>>& local_ranges() const { return local_; }
    int64_t local_size() const { return n_local_floats_; }
    // The local experts' gradients of the last micro-batch, one piece of local_size() per source
    // rank of the group (piece s: the rows rank s sent), pieces back to back. Written by backward.
    const float* grads() const { return grads_.data(); }

    // The exchange itself (tests): rows (R, C) grouped by destination, send_rows[d] of them for
    // rank d, go out; what the ranks sent here lands in recv (sum of recv_rows, C), source after
    // source; recv_rows (P) is filled.
    void exchange(const float* rows, const int64_t* send_rows, int64_t C, std::vector<float>& recv,
                  std::vector<int64_t>& recv_rows);

private:
    struct LayerRows {
        std::vector<int32_t> seg;    // (P, El+1) row offsets of source s's experts in xe
        std::vector<int32_t> small;  // (P) each source's small-expert decision
        std::vector<int64_t> send_rows, recv_rows;  // (P)
        int64_t R = 0;               // rows received
        std::vector<float> xe, hg, hu, act, ye;
    };
    // send_rows / recv_rows of rows of C floats: the all-to-all-v in floats
    void alltoall_rows(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                       const std::vector<int64_t>& recv_rows, int64_t C);
    int64_t local_offset(const float* stack) const;  // local gradient offset of an expert stack

    dist::Comm& comm_;
    Model& model_;
    int64_t P_ = 1, E_ = 0, El_ = 0, first_ = 0;
    bool sharded_ = false;  // the model holds experts [first_, first_ + El_) only
    int64_t wfirst_ = 0;    // index of my first expert in the model's stacks (0 when sharded)
    std::vector<std::pair<int64_t, int64_t>> local_;
    std::vector<std::pair<const float*, int64_t>> stacks_;  // (weight stack, local gradient offset)
    int64_t n_local_floats_ = 0;
    std::vector<LayerRows> layers_;
    std::vector<float> grads_;                 // (P, local_size())
    std::vector<float> dye_, dxe_, dact_, dhg_, dhu_;  // backward scratch, received rows
    std::vector<int64_t> sc_, sd_, rc_, rd_;
    std::vector<int32_t> meta_out_, meta_in_;  // per destination / source: El row counts, small flag
};

// The GradientSync of an expert-parallel run over `world` (W ranks, groups of P): makes the
// groups (collective), and on attach() the ExpertParallel runner it installs in the model.
// It must outlive the trainer (as every GradientSync), and the model keeps pointing at its runner.
// accumulate/finish fold the replicated part over all W ranks and the local experts' pieces over
// the expert-data-parallel group (both in micro-batch order), then gather the whole gradient.
class ExpertParallelSync final : public GradientSync {
public:
    // W % P != 0: moe::error (every rank raises it: printed once)
    ExpertParallelSync(dist::Comm& world, int P);
    ~ExpertParallelSync() override;
    bool identity() const override { return false; }
    int rank() const override { return world_.rank(); }
    int size() const override { return world_.size(); }
    void attach(Model& model) override;
    void accumulate(const float* g, int64_t n, int64_t round) override;
    void finish(float* grads, int64_t n) override;
    void sync(float*, int64_t, int64_t) override {}
    void gather(const double* mine, int64_t k, double* all) override;

    ExpertParallel& runner() { return *runner_; }
    dist::Comm* world_comm() override { return &world_; }
    dist::Comm* expert_group() override { return ep_.get(); }
    int expert_parallel() const override { return P_; }
    dist::Comm& ep_comm() { return *ep_; }
    dist::Comm& edp_comm() { return *edp_; }

private:
    dist::Comm& world_;
    int P_;
    std::unique_ptr<dist::Comm> ep_, edp_;
    std::unique_ptr<ExpertParallel> runner_;
    Model* model_ = nullptr;
    std::vector<std::pair<int64_t, int64_t>> rep_;  // replicated ranges (offset, n)
    int64_t n_rep_ = 0;
    std::vector<float> rep_buf_, rep_shard_, exp_shard_, exp_full_, exp_all_, scratch_, send_scratch_;
};

}  // namespace moe
