#include "train/expert_parallel.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/profile.h"
#include "ops/moe_ffn.h"

namespace moe {

// ---------------------------------------------------------------- the runner

ExpertParallel::ExpertParallel(dist::Comm& comm, Model& model) : comm_(comm), model_(model) {
    const ModelConfig& m = model.config();
    P_ = comm.size();
    E_ = m.n_expert;
    if (!m.any_moe() || E_ < 1) fail("--expert-parallel ", P_, " needs an MoE model, and this one has no MoE layer");
    const ExpertRange mine = expert_range_of(m, (int)P_, comm.rank());  // (P = 1: all)
    El_ = mine.all() ? E_ : mine.count;
    first_ = mine.all() ? 0 : mine.first;
    sharded_ = model.experts_sharded();
    if (sharded_ && (model.expert_range().first != first_ || model.expert_range().count != El_))
        fail("expert-parallel rank ", comm.rank(), " of ", P_, " serves experts [", first_, ", ", first_ + El_,
             ") but its model holds [", model.expert_range().first, ", ",
             model.expert_range().first + model.expert_range().count, ")");
    wfirst_ = sharded_ ? 0 : first_;
    const int64_t rows = sharded_ ? El_ : E_;  // experts in the model's stacks
    float* params = model.params();
    for (const ParamInfo& p : model.table().params()) {
        if (!p.expert) continue;
        MOE_ASSERT(p.shape[0] == rows && p.numel % rows == 0);
        const int64_t per = p.numel / rows;
        stacks_.push_back({params + p.offset, n_local_floats_});
        local_.push_back({p.offset + wfirst_ * per, El_ * per});
        n_local_floats_ += El_ * per;
    }
    grads_.assign((size_t)(P_ * n_local_floats_), 0.f);
    layers_.resize(m.n_layer);
    sc_.resize(P_), sd_.resize(P_), rc_.resize(P_), rd_.resize(P_);
}

int64_t ExpertParallel::local_offset(const float* stack) const {
    for (const auto& [w, off] : stacks_)
        if (w == stack) return off;
    MOE_ASSERT(!"expert stack not in the model's parameter table");
    return 0;
}

void ExpertParallel::alltoall_rows(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                                   const std::vector<int64_t>& recv_rows, int64_t C) {
    int64_t so = 0, ro = 0;
    for (int64_t d = 0; d < P_; ++d) {
        sc_[d] = send_rows[d] * C, sd_[d] = so, so += sc_[d];
        rc_[d] = recv_rows[d] * C, rd_[d] = ro, ro += rc_[d];
    }
    comm_.alltoallv(send, sc_.data(), sd_.data(), recv, rc_.data(), rd_.data());
}

void ExpertParallel::exchange(const float* rows, const int64_t* send_rows, int64_t C, std::vector<float>& recv,
                              std::vector<int64_t>& recv_rows) {
    // the row counts first (one int64 each way), then the rows
    const std::vector<int64_t> sr(send_rows, send_rows + P_);
    recv_rows.resize(P_);
    for (int64_t d = 0; d < P_; ++d) sc_[d] = rc_[d] = 8, sd_[d] = rd_[d] = d * 8;
    comm_.alltoallv(sr.data(), sc_.data(), sd_.data(), recv_rows.data(), rc_.data(), rd_.data());
    int64_t R = 0;
    for (int64_t q = 0; q < P_; ++q) R += recv_rows[q];
    recv.resize((size_t)(R * C));
    alltoall_rows(rows, sr, recv.data(), recv_rows, C);
}

void ExpertParallel::forward(layers::FfnCacheT<float>& c, const layers::MoeWeights<float>& w, const ModelConfig& m,
                             int64_t layer) {
    MOE_PROFILE_SCOPE("moe experts fwd (expert parallel)");
    MOE_ASSERT(layer >= 0 && layer < (int64_t)layers_.size() && m.n_expert == E_);
    const int64_t C = m.n_embd, F = m.n_ff_exp, El = El_;
    const ops::MoeRouteT<float>& r = c.route;
    const int32_t* off = r.expert_offsets;  // (E+1)
    LayerRows& L = layers_[layer];
    // what goes to rank d: the rows of experts [d·El, (d+1)·El), contiguous in the grouped layout;
    // with them El counts and this micro-batch's small-expert decision (over all E experts)
    const int small = ops::small_experts(ops::ExpertSegments{0, E_, off}, C, F) ? 1 : 0;
    std::vector<int32_t>& meta_out = meta_out_;
    std::vector<int32_t>& meta_in = meta_in_;
    meta_out.resize((size_t)(P_ * (El + 1)));
    meta_in.resize((size_t)(P_ * (El + 1)));
    L.send_rows.resize(P_);
    for (int64_t d = 0; d < P_; ++d) {
        for (int64_t i = 0; i < El; ++i) meta_out[d * (El + 1) + i] = off[d * El + i + 1] - off[d * El + i];
        meta_out[d * (El + 1) + El] = small;
        L.send_rows[d] = off[(d + 1) * El] - off[d * El];
    }
    for (int64_t d = 0; d < P_; ++d) {
        sc_[d] = rc_[d] = (El + 1) * 4;
        sd_[d] = rd_[d] = d * (El + 1) * 4;
    }
    comm_.alltoallv(meta_out.data(), sc_.data(), sd_.data(), meta_in.data(), rc_.data(), rd_.data());
    // the received rows, source after source, each source's grouped by local expert
    L.seg.resize((size_t)(P_ * (El + 1)));
    L.small.resize(P_);
    L.recv_rows.resize(P_);
    int64_t R = 0;
    for (int64_t s = 0; s < P_; ++s) {
        const int64_t begin = R;
        L.seg[s * (El + 1)] = (int32_t)R;
        for (int64_t i = 0; i < El; ++i) {
            R += meta_in[s * (El + 1) + i];
            L.seg[s * (El + 1) + i + 1] = (int32_t)R;
        }
        L.small[s] = meta_in[s * (El + 1) + El];
        L.recv_rows[s] = R - begin;
    }
    L.R = R;
    L.xe.resize((size_t)(R * C));
    L.hg.resize((size_t)(R * F));
    L.hu.resize((size_t)(R * F));
    L.act.resize((size_t)(R * F));
    L.ye.resize((size_t)(R * C));
    {
        MOE_PROFILE_SCOPE("moe all-to-all");
        alltoall_rows(c.xe, L.send_rows, L.xe.data(), L.recv_rows, C);
    }
    // the local experts' slices of the stacks
    const float* wg = w.ffn_gate_exps ? w.ffn_gate_exps + wfirst_ * F * C : nullptr;
    const float* wu = w.ffn_up_exps + wfirst_ * F * C;
    const float* wd = w.ffn_down_exps + wfirst_ * C * F;
    for (int64_t s = 0; s < P_; ++s) {
        if (L.recv_rows[s] == 0) continue;
        ops::ExpertSegments seg{first_, El, L.seg.data() + s * (El + 1), L.small[s]};
        ops::moe_ffn_forward(L.ye.data(), L.hg.data(), L.hu.data(), L.act.data(), L.xe.data(), wg, wu, wd, seg, C, F,
                             m.activation);  // (rows of s, C)
    }
    MOE_PROFILE_SCOPE("moe all-to-all");
    alltoall_rows(L.ye.data(), L.recv_rows, c.ye, L.send_rows, C);  // back to their rows of c.ye (R, C)
}

void ExpertParallel::backward(const layers::FfnScratchT<float>& sc, const layers::FfnCacheT<float>& c,
                              const layers::MoeWeights<float>& w, const ModelConfig& m, int64_t layer) {
    MOE_PROFILE_SCOPE("moe experts bwd (expert parallel)");
    const int64_t C = m.n_embd, F = m.n_ff_exp, El = El_;
    LayerRows& L = layers_[layer];
    const int64_t R = L.R;
    dye_.resize((size_t)(R * C));
    dxe_.resize((size_t)(R * C));
    dact_.resize((size_t)(R * F));
    dhg_.resize((size_t)(R * F));
    dhu_.resize((size_t)(R * F));
    {
        MOE_PROFILE_SCOPE("moe all-to-all");
        alltoall_rows(sc.dye, L.send_rows, dye_.data(), L.recv_rows, C);
    }
    const bool glu = w.ffn_gate_exps != nullptr;
    const int64_t og = glu ? local_offset(w.ffn_gate_exps) : 0, ou = local_offset(w.ffn_up_exps),
                  od = local_offset(w.ffn_down_exps);
    const float* wg = glu ? w.ffn_gate_exps + wfirst_ * F * C : nullptr;
    const float* wu = w.ffn_up_exps + wfirst_ * F * C;
    const float* wd = w.ffn_down_exps + wfirst_ * C * F;
    for (int64_t s = 0; s < P_; ++s) {
        // source s's gradients of this layer's local experts, from zero (one process zeroes the
        // gradients before each micro-batch's backward)
        float* g = grads_.data() + s * n_local_floats_;
        if (glu) std::memset(g + og, 0, El * F * C * sizeof(float));
        std::memset(g + ou, 0, El * F * C * sizeof(float));
        std::memset(g + od, 0, El * C * F * sizeof(float));
        if (L.recv_rows[s] == 0) continue;
        ops::ExpertSegments seg{first_, El, L.seg.data() + s * (El + 1), L.small[s]};
        ops::moe_ffn_backward(dxe_.data(), glu ? g + og : nullptr, g + ou, g + od, dact_.data(), dhg_.data(),
                              dhu_.data(), dye_.data(), L.xe.data(), L.hg.data(), L.hu.data(), L.act.data(), wg, wu,
                              wd, seg, C, F, m.activation, nullptr, true);
    }
    MOE_PROFILE_SCOPE("moe all-to-all");
    alltoall_rows(dxe_.data(), L.recv_rows, sc.dxe, L.send_rows, C);  // (R, C) in the source's layout
}

// ---------------------------------------------------------------- the gradient sync

ExpertParallelSync::ExpertParallelSync(dist::Comm& world, int P) : world_(world), P_(P) {
    const int W = world.size();
    if (P < 1) fail("--expert-parallel must be >= 1, got ", P);
    if (W % P != 0)
        fail("--expert-parallel ", P, " must divide the number of ranks (", W,
             "): the ranks form groups of P that share the experts",
             W == 1 ? str(" (start it with mpirun -np ", P, " or a multiple)") : std::string());
    const int r = world.rank();
    ep_ = world.split(r / P, r);   // my expert-parallel group: P consecutive ranks
    edp_ = world.split(r % P, r);  // the ranks holding my experts, one per group, in group order
}

// (the model is the trainer's, and the trainer goes first: the sync outlives it, train/trainer.h)
ExpertParallelSync::~ExpertParallelSync() = default;

void ExpertParallelSync::attach(Model& model) {
    runner_ = std::make_unique<ExpertParallel>(*ep_, model);
    model_ = &model;
    model.set_expert_runner(runner_.get());
    // the replicated part: everything outside the expert stacks (padding included, always zero)
    const int64_t n = model.n_params();
    std::vector<std::pair<int64_t, int64_t>> ex;
    for (const ParamInfo& p : model.table().params())
        if (p.expert) ex.push_back({p.offset, p.numel});
    std::sort(ex.begin(), ex.end());
    rep_.clear();
    int64_t at = 0;
    for (const auto& [o, k] : ex) {
        if (o > at) rep_.push_back({at, o - at});
        at = o + k;
    }
    if (n > at) rep_.push_back({at, n - at});
    n_rep_ = 0;
    for (const auto& [o, k] : rep_) n_rep_ += k;
}

void ExpertParallelSync::accumulate(const float* g, int64_t n, int64_t round) {
    MOE_ASSERT(runner_ && n == model_->n_params());
    // replicated: over all W ranks in rank order (= micro-batch order), as data parallelism
    rep_buf_.resize((size_t)n_rep_);
    int64_t at = 0;
    for (const auto& [o, k] : rep_) {
        std::memcpy(rep_buf_.data() + at, g + o, k * sizeof(float));
        at += k;
    }
    const int W = world_.size(), r = world_.rank();
    rep_shard_.resize((size_t)(dist::shard_begin(n_rep_, W, r + 1) - dist::shard_begin(n_rep_, W, r)));
    dist::reduce_scatter_fold(world_, rep_buf_.data(), n_rep_, rep_shard_.data(), round == 0, &scratch_);
    // experts: over the expert-data-parallel group, each rank's P pieces (its group's sources) in
    // order: (group g, source s) is micro-batch round·W + g·P + s
    const int64_t nl = runner_->local_size();
    const int D = edp_->size(), e = edp_->rank();
    exp_shard_.resize((size_t)(dist::shard_begin(nl, D, e + 1) - dist::shard_begin(nl, D, e)));
    dist::reduce_scatter_fold_pieces(*edp_, runner_->grads(), P_, nl, exp_shard_.data(), round == 0, &scratch_,
                                     &send_scratch_);
}

void ExpertParallelSync::finish(float* grads, int64_t n) {
    MOE_ASSERT(runner_ && n == model_->n_params());
    rep_buf_.resize((size_t)n_rep_);
    dist::allgather_shards(world_, rep_shard_.data(), n_rep_, sizeof(float), rep_buf_.data());
    int64_t at = 0;
    for (const auto& [o, k] : rep_) {
        std::memcpy(grads + o, rep_buf_.data() + at, k * sizeof(float));
        at += k;
    }
    // my experts' whole gradient (expert-data-parallel group), then every expert's (my group)
    const int64_t nl = runner_->local_size();
    exp_full_.resize((size_t)nl);
    dist::allgather_shards(*edp_, exp_shard_.data(), nl, sizeof(float), exp_full_.data());
    if (model_->experts_sharded()) {  // the model holds my experts only: their gradient is all it needs
        const float* src = exp_full_.data();
        for (const auto& [o, k] : runner_->local_ranges()) {
            std::memcpy(grads + o, src, k * sizeof(float));
            src += k;
        }
        return;
    }
    exp_all_.resize((size_t)(nl * P_));
    ep_->allgather(exp_full_.data(), nl * (int64_t)sizeof(float), exp_all_.data());
    // rank q's local layout: the same stacks, experts [q·El, (q+1)·El)
    const ModelConfig& m = model_->config();
    const int64_t El = m.n_expert / P_;
    for (int q = 0; q < P_; ++q) {
        const float* src = exp_all_.data() + (int64_t)q * nl;
        for (const ParamInfo& p : model_->table().params()) {
            if (!p.expert) continue;
            const int64_t k = El * (p.numel / m.n_expert);
            std::memcpy(grads + p.offset + (int64_t)q * k, src, k * sizeof(float));
            src += k;
        }
    }
}

void ExpertParallelSync::gather(const double* mine, int64_t k, double* all) {
    world_.allgather(mine, k * (int64_t)sizeof(double), all);
}

}  // namespace moe
