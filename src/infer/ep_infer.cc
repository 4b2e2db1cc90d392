#include "infer/ep_infer.h"

#include <sys/resource.h>

#include <algorithm>

#include "core/error.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/gemm.h"
#include "model/params.h"
#include "ops/moe_ffn.h"

namespace moe {

namespace {

// the command rank 0 broadcasts per MoE layer: (kHeader + E + 1) int32
enum : int32_t { kLayer = 1, kStop = 2 };
constexpr int64_t kHeader = 4;  // cmd, layer, small-expert decision, serial; then the offsets (E+1)

}  // namespace

double ep_peak_rss_mb() {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;  // KB on Linux
}

// ---------------------------------------------------------------- rank 0

EpLeader::EpLeader(dist::Comm& comm, Model& model) : comm_(comm), model_(model), P_(comm.size()) {
    MOE_ASSERT(comm.rank() == 0);
    const ModelConfig& m = model.config();
    E_ = m.n_expert;
    El_ = E_ / P_;
    const ExpertRange s = model.expert_range();
    MOE_ASSERT(P_ > 1 && E_ % P_ == 0 && s.first == 0 && s.count == El_);
    cmd_.resize((size_t)(kHeader + E_ + 1));
    sc_.assign(P_, 0), sd_.assign(P_, 0), rc_.assign(P_, 0), rd_.assign(P_, 0);
    model.set_cached_expert_runner(this);
}

EpLeader::~EpLeader() { stop(); }

void EpLeader::forward(layers::FfnCacheT<float>&, const layers::MoeWeights<float>&, const ModelConfig&, int64_t) {
    MOE_ASSERT(!"expert-parallel inference runs forward_cached only");
}

void EpLeader::backward(const layers::FfnScratchT<float>&, const layers::FfnCacheT<float>&,
                        const layers::MoeWeights<float>&, const ModelConfig&, int64_t) {
    MOE_ASSERT(!"expert-parallel inference has no backward");
}

void EpLeader::forward_cached(layers::FfnCacheT<float>& c, const layers::QFfn& q, const ModelConfig& m,
                              int64_t layer) {
    MOE_PROFILE_SCOPE("moe experts fwd (expert parallel)");
    MOE_ASSERT(!stopped_ && m.n_expert == E_);
    const int64_t C = m.n_embd, F = m.n_ff_exp, El = El_;
    const int32_t* off = c.route.expert_offsets;  // (E+1) rows grouped by expert, all E experts
    // one process's decision over all E experts, and its thread policy for this call
    const int small = ops::small_experts(ops::ExpertSegments{0, E_, off}, C, F) ? 1 : 0;
    const bool serial = 2.0 * count_flops(m, 1).matmul_params * (double)c.route.N < Model::kSerialFlops;
    cmd_[0] = kLayer, cmd_[1] = (int32_t)layer, cmd_[2] = small, cmd_[3] = serial ? 1 : 0;
    std::copy(off, off + E_ + 1, cmd_.begin() + kHeader);
    {
        MOE_PROFILE_SCOPE("moe expert-parallel exchange");
        comm_.broadcast_idle(cmd_.data(), (int64_t)cmd_.size() * 4, 0);  // (matches the others' call)
        // rank q's rows: experts (counts and displacements in floats: Comm's float alltoallv) [q·El, (q+1)·El), contiguous in the grouped layout
        for (int q = 0; q < P_; ++q) {
            const int64_t r0 = off[q * El], r1 = off[(q + 1) * El];
            sc_[q] = q == 0 ? 0 : (r1 - r0) * C, sd_[q] = r0 * C;
            rc_[q] = 0, rd_[q] = 0;
        }
        comm_.alltoallv(c.xe, sc_.data(), sd_.data(), c.ye, rc_.data(), rd_.data());
    }
    // rank 0's experts [0, El) meanwhile, in place: their rows and buffers are one process's
    if (off[El] > off[0])
        ops::moe_ffn_forward_q(c.ye, c.hg, c.hu, c.act, c.xe, q.gate, q.up, q.down,
                               ops::ExpertSegments{0, El, off, small}, C, F, m.activation);  // (R0, C)
    MOE_PROFILE_SCOPE("moe expert-parallel exchange");
    for (int q = 0; q < P_; ++q) {
        const int64_t r0 = off[q * El], r1 = off[(q + 1) * El];
        sc_[q] = 0, sd_[q] = 0;
        rc_[q] = q == 0 ? 0 : (r1 - r0) * C, rd_[q] = r0 * C;
    }
    comm_.alltoallv(c.xe, sc_.data(), sd_.data(), c.ye, rc_.data(), rd_.data());  // into their rows of c.ye
}

const std::vector<EpRankStats>& EpLeader::stop() {
    if (stopped_) return stats_;
    stopped_ = true;
    model_.set_cached_expert_runner(nullptr);
    std::fill(cmd_.begin(), cmd_.end(), 0);
    cmd_[0] = kStop;
    comm_.broadcast_idle(cmd_.data(), (int64_t)cmd_.size() * 4, 0);  // (matches the others' call)
    const EpRankStats mine{model_.expert_bytes_held(), ep_peak_rss_mb()};
    stats_.resize(P_);
    comm_.allgather(&mine, sizeof(EpRankStats), stats_.data());
    return stats_;
}

// ---------------------------------------------------------------- the other ranks

void ep_follow(dist::Comm& comm, Model& model) {
    const int P = comm.size(), me = comm.rank();
    MOE_ASSERT(me != 0);
    const ModelConfig& m = model.config();
    const int64_t E = m.n_expert, C = m.n_embd, F = m.n_ff_exp;
    const ExpertRange s = model.expert_range();
    MOE_ASSERT(E % P == 0 && s.count == E / P && s.first == me * s.count);
    const int64_t El = s.count, first = s.first;
    std::vector<int32_t> cmd((size_t)(kHeader + E + 1)), seg((size_t)(El + 1));
    std::vector<int64_t> sc(P, 0), sd(P, 0), rc(P, 0), rd(P, 0);
    std::vector<float> xe(1), ye(1), hg(1), hu(1), act(1);  // never empty: .data() is a valid pointer
    const kernels::PrecisionScope precision(model.precision());
    for (;;) {
        comm.broadcast_idle(cmd.data(), (int64_t)cmd.size() * 4, 0);  // (a server may be idle for hours)
        if (cmd[0] == kStop) break;
        MOE_ASSERT(cmd[0] == kLayer);
        const int64_t layer = cmd[1];
        const int small = cmd[2];
        const bool serial = cmd[3] != 0;
        const int32_t* off = cmd.data() + kHeader;
        const int64_t lo = off[first], R = off[first + El] - lo;
        for (int64_t i = 0; i <= El; ++i) seg[i] = off[first + i] - (int32_t)lo;
        const size_t rc_n = (size_t)std::max<int64_t>(1, R * C), rf_n = (size_t)std::max<int64_t>(1, R * F);
        if (xe.size() < rc_n) xe.resize(rc_n), ye.resize(rc_n);
        if (hg.size() < rf_n) hg.resize(rf_n), hu.resize(rf_n), act.resize(rf_n);
        std::fill(sc.begin(), sc.end(), 0);
        std::fill(rc.begin(), rc.end(), 0);
        rc[0] = R * C;
        comm.alltoallv(ye.data(), sc.data(), sd.data(), xe.data(), rc.data(), rd.data());  // my rows from rank 0
        if (R > 0) {
            const layers::QFfn& q = model.cached_expert_views(layer);
            const SerialScope one_thread(serial);
            ops::moe_ffn_forward_q(ye.data(), hg.data(), hu.data(), act.data(), xe.data(), q.gate, q.up, q.down,
                                   ops::ExpertSegments{first, El, seg.data(), small}, C, F, m.activation);
        }
        rc[0] = 0;
        sc[0] = R * C;
        comm.alltoallv(ye.data(), sc.data(), sd.data(), xe.data(), rc.data(), rd.data());  // back to rank 0
    }
    const EpRankStats mine{model.expert_bytes_held(), ep_peak_rss_mb()};
    std::vector<EpRankStats> all(P);
    comm.allgather(&mine, sizeof(EpRankStats), all.data());
}

}  // namespace moe
