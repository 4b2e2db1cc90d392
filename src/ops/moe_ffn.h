#pragma once
// Grouped expert FFN: rows grouped by expert (see moe_dispatch.h), one GEMM per expert and
// projection, over a run of experts described by ExpertSegments. A dense FFN is the special case of
// one expert with every token one row.
//
//   hg = xe · w_gate[e]^T   (rows_e, F)      (SwiGLU only)
//   hu = xe · w_up[e]^T     (rows_e, F)
//   act = silu(hg) * hu  |  relu(hu)
//   ye = act · w_down[e]^T  (rows_e, C)
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "core/parallel.h"
#include "core/profile.h"
#include "kernels/gemm.h"
#include "kernels/batch_invariant.h"
#include "kernels/qmatmul.h"
#include "ops/activation.h"

namespace moe::ops {

// The experts one call of the grouped FFN runs, and where their rows are. Local expert i
// (0 <= i < n_local) is global expert first_expert + i; its rows are [offsets[i], offsets[i+1]) of
// xe / ye (and of every (R, ·) buffer), and the weight stacks passed with the segments hold these
// n_local experts only (local expert 0 first). One process runs all of a layer's experts:
// {0, E, route.expert_offsets}. A rank of an expert-parallel run would own a contiguous range
// {first, n, offsets of the rows it received} with its slice of the stacks. The ops index
// everything by the local i; first_expert only says which experts these are.
struct ExpertSegments {
    int64_t first_expert = 0;          // global index of local expert 0
    int64_t n_local = 0;               // experts in this call
    const int32_t* offsets = nullptr;  // (n_local+1) row offsets into xe / ye, non-decreasing
    // -1: small_experts() decides from these segments; 0 / 1: the caller's decision. An
    // expert-parallel rank runs the rows one source rank sent it with the decision that rank took
    // over all E experts, so each row block is the GEMM one process would run (the same bits).
    int small = -1;
};

// Small experts: the grouped FFN is split into independent tasks handed to threads dynamically
// (parallel_tasks): an expert's rows in blocks of at most kRowBlock rows (forward, and the dx half
// of backward), and one task per expert weight gradient. Each task calls single-threaded GEMMs and
// writes only its own outputs, so these results do not depend on the thread count, and small
// experts keep both cores busy (a threaded GEMM per small expert spends its time in fork/join).
// 256, not 128: makeMoE's experts take about 60-250 rows of a 1024-row layer, and splitting those
// over 128 into two blocks of 65-125 rows cost more than it balanced on an Intel Xeon with the
// AVX-512 kernel: weights packed once and shared through L3 instead of each GEMM packing into its
// L2 block, and more ragged 12-row tiles (bench/expert_ffn, 1 thread, best of 40: 2162-2257 ->
// 1935-2066 us hot, 2372-2456 -> 2039-2179 flushed; docs/performance.md). On Zen 3 / Zen 4 (AVX2
// kernel) 256 and 128 measured the same. How rows are blocked never changes a result: every
// element of a block's GEMM is summed in the same k order whatever rows share its block.
inline constexpr int64_t kRowBlock = 256;

// Small experts (per-expert GEMMs under kSmallExpertFlops, e.g. makeMoE's 128 rows x 512 x 128)
// run as tasks, one per thread at a time; large ones (bench-moe's 512 x 512 x 512, or a shared
// expert) run one expert after another with every GEMM on all threads, which keeps oneDNN's
// blocking whole.
inline constexpr double kSmallExpertFlops = 64e6;

inline bool small_experts(const ExpertSegments& seg, int64_t C, int64_t F) {
    if (seg.small >= 0) return seg.small != 0;
    const int32_t* off = seg.offsets;
    int64_t used = 0;
    for (int64_t e = 0; e < seg.n_local; ++e) used += off[e + 1] > off[e];
    if (used == 0) return true;
    const double rows = (double)(off[seg.n_local] - off[0]) / (double)used;
    return 2.0 * rows * (double)C * (double)F < kSmallExpertFlops;
}

template <class Fn>
void run_tasks(bool as_tasks, int64_t n, const Fn& fn) {
    if (as_tasks) {
        parallel_tasks(n, fn);
    } else {
        for (int64_t i = 0; i < n; ++i) fn(i);
    }
}

// Elementwise work split over threads in chunks of whole 64-element blocks: the SIMD kernels
// (SwiGLU's polynomial exp) leave a scalar tail, and a chunk edge that moved with the thread
// count would move which elements take the tail, so results would depend on the thread count.
inline void parallel_for_elements(int64_t n, function_ref<void(int64_t, int64_t)> fn) {
    constexpr int64_t kBlock = 64;
    parallel_for(0, (n + kBlock - 1) / kBlock, (1 << 14) / kBlock, [&](int64_t b0, int64_t b1) {
        fn(b0 * kBlock, std::min(n, b1 * kBlock));
    });
}

// act (n) = silu(hg) * hu | relu(hu), split over threads when called outside a task
template <class T>
void activation_forward(T* act, const T* hg, const T* hu, int64_t n, Activation activation) {
    parallel_for_elements(n, [&](int64_t j0, int64_t j1) {
        if (activation == Activation::swiglu) swiglu_forward(act + j0, hg + j0, hu + j0, j1 - j0);
        else relu_forward(act + j0, hu + j0, j1 - j0);
    });
}

struct FfnTask {
    int32_t e;      // local expert (index into ExpertSegments and the weight stacks)
    int32_t which;  // backward weight tasks: 0 = w_down, 1 = w_up, 2 = w_gate
    int64_t begin, end;
};

// Row blocks of each expert: [begin, end) rows of the grouped layout; blocks of at most
// kRowBlock rows when `split`, else one block per expert.
inline const std::vector<FfnTask>& ffn_row_tasks(const ExpertSegments& seg, bool split) {
    thread_local std::vector<FfnTask> tasks;  // reused: no allocation once warm
    tasks.clear();
    for (int64_t e = 0; e < seg.n_local; ++e) {
        const int64_t r0 = seg.offsets[e], rows = seg.offsets[e + 1] - r0;
        if (rows == 0) continue;
        const int64_t nb = split ? (rows + kRowBlock - 1) / kRowBlock : 1, per = (rows + nb - 1) / nb;
        for (int64_t b = r0; b < r0 + rows; b += per)
            tasks.push_back({(int32_t)e, 0, b, std::min(r0 + rows, b + per)});
    }
    // largest first, so the dynamic schedule does not end on one thread with a big task left
    // (which thread runs a task does not change its result)
    std::sort(tasks.begin(), tasks.end(), [](const FfnTask& a, const FfnTask& b) {
        return a.end - a.begin != b.end - b.begin ? a.end - a.begin > b.end - b.begin : a.begin < b.begin;
    });
    return tasks;
}

// One weight matrix of every local expert as the B of the row blocks' GEMMs: W (n_local, rows, cols)
// stacked with `stride` floats per expert; op(B) (K, N) is W[e] or W[e]^T.
struct ExpertWeightUse {
    const float* w;
    int64_t stride;
    bool trans_b;
    int64_t K, N, ldb;
};

// The experts whose rows run as two or more row blocks get `uses` packed once here (one task per
// matrix), instead of once inside every block's GEMM: the result's [e * uses + u] is the PackedB
// of local expert e (of E = n_local), use u (B as stored for the other experts, and where the float
// GEMM does not pack).
inline const kernels::PackedB* pack_expert_weights(const std::vector<FfnTask>& tasks, int64_t E,
                                                   std::initializer_list<ExpertWeightUse> uses) {
    thread_local kernels::PackedWeights packed;
    thread_local std::vector<int32_t> blocks;
    thread_local std::vector<kernels::PackJob> jobs;  // reused: no allocation once warm
    const int64_t U = (int64_t)uses.size();
    blocks.assign(E, 0);
    for (const FfnTask& t : tasks) blocks[t.e]++;
    jobs.clear();
    for (int64_t e = 0; e < E; ++e)
        for (const ExpertWeightUse& u : uses)
            jobs.push_back({u.w + e * u.stride, u.trans_b, u.K, u.N, u.ldb, blocks[e] >= 2 && u.N > 0});
    packed.pack(jobs.data(), E * U);
    return packed.data();
}

// A GEMM whose B is an expert's weight matrix: through its PackedB for float, the plain GEMM for
// double (the gradient checks' reference path).
template <class T>
void expert_gemm(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                 const kernels::PackedB* pb, bool trans_b, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
    if constexpr (std::is_same_v<T, float>) {
        if (pb) {
            kernels::gemm_f32_b(trans_a, M, N, K, 1.f, A, lda, *pb, beta, C, ldc);
            return;
        }
    }
    kernels::gemm<T>(trans_a, trans_b, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}

// ye (R, C); hg, hu, act (R, F) saved for backward (ReLU: only act, computed in place);
// xe (R, C); w_gate, w_up (E_local, F, C); w_down (E_local, C, F), E_local = seg.n_local.
// Only the rows of seg's experts are read and written.
template <class T>
void moe_ffn_forward(T* ye, T* hg, T* hu, T* act, const T* xe, const T* w_gate, const T* w_up,
                     const T* w_down, const ExpertSegments& seg, int64_t C, int64_t F, Activation activation) {
    const int64_t E = seg.n_local;
    const bool small = small_experts(seg, C, F);
    const std::vector<FfnTask>& tasks = ffn_row_tasks(seg, small);
    const bool swiglu = activation == Activation::swiglu;
    // packed weights (float, small experts): [e * 3 + {0: up, 1: gate, 2: down}]
    const kernels::PackedB* packed = nullptr;
    if constexpr (std::is_same_v<T, float>) {
        MOE_PROFILE_SCOPE("moe experts: weight packing");
        if (small)
            packed = pack_expert_weights(tasks, E,
                                         {{w_up, F * C, true, C, F, C},
                                          {swiglu ? w_gate : w_up, F * C, true, C, swiglu ? F : 0, C},
                                          {w_down, C * F, true, F, C, F}});
    }
    run_tasks(small, (int64_t)tasks.size(), [&](int64_t i) {
        const FfnTask t = tasks[i];
        const int64_t e = t.e, r0 = t.begin, rows = t.end - t.begin;
        const T* x = xe + r0 * C;                                                                  // [rows, C]
        const kernels::PackedB* pb = packed ? packed + e * 3 : nullptr;
        if (swiglu) {
            expert_gemm<T>(false, rows, F, C, x, C, pb ? pb + 0 : nullptr, true, w_up + e * F * C, C, T(0), hu + r0 * F, F);  // [rows, F]
            expert_gemm<T>(false, rows, F, C, x, C, pb ? pb + 1 : nullptr, true, w_gate + e * F * C, C, T(0), hg + r0 * F, F);
            activation_forward(act + r0 * F, hg + r0 * F, hu + r0 * F, rows * F, activation);
        } else {
            // ReLU in place: hu is not kept (backward needs only act > 0 <=> hu > 0)
            expert_gemm<T>(false, rows, F, C, x, C, pb ? pb + 0 : nullptr, true, w_up + e * F * C, C, T(0), act + r0 * F, F);  // [rows, F]
            activation_forward(act + r0 * F, hg + r0 * F, act + r0 * F, rows * F, activation);
        }
        expert_gemm<T>(false, rows, C, F, act + r0 * F, F, pb ? pb + 2 : nullptr, true, w_down + e * C * F, F, T(0), ye + r0 * C, C);  // [rows, C]
    });
}

// Inference twin of moe_ffn_forward with weights in any storage type: gate, up are (E_local*F, C)
// and down (E_local*C, F) stacks of seg's experts; local expert e is rows [e*F, (e+1)*F) (resp.
// [e*C, (e+1)*C)). Each expert's weights are read once for all its rows (decode reads only the
// chosen experts).
inline void moe_ffn_forward_q(float* ye, float* hg, float* hu, float* act, const float* xe,
                              const kernels::QMatrix& w_gate, const kernels::QMatrix& w_up,
                              const kernels::QMatrix& w_down, const ExpertSegments& seg, int64_t C,
                              int64_t F, Activation activation) {
    const int64_t E = seg.n_local;
    const bool small = small_experts(seg, C, F);
    const std::vector<FfnTask>& tasks = ffn_row_tasks(seg, small);
    if (tasks.size() == 1 && kernels::gemv_path(tasks[0].end - tasks[0].begin)) {
        // decode through one expert (a dense FFN, or K = 1): up and gate read the same rows of x;
        // one parallel region over their output rows instead of one per matrix
        const FfnTask t = tasks[0];
        const int64_t e = t.e, r0 = t.begin, rows = t.end - t.begin;
        const kernels::QMatrix up = w_up.rows(e * F, F), gate = w_gate.rows(e * F, F);
        if (activation == Activation::swiglu)
            kernels::qmatmul_same_x(xe + r0 * C, rows, {{hu + r0 * F, up}, {hg + r0 * F, gate}});  // [rows, F] each
        else
            kernels::qmatmul_same_x(xe + r0 * C, rows, {{hu + r0 * F, up}});
        activation_forward(act + r0 * F, hg + r0 * F, hu + r0 * F, rows * F, activation);
        kernels::qmatmul(ye + r0 * C, act + r0 * F, w_down.rows(e * C, C), rows, false);  // [rows, C]
        return;
    }
    // decode of a small model: the experts' weights touched are too few bytes to share out
    const double touched = (double)tasks.size() * (w_up.bytes() + w_gate.bytes() + w_down.bytes()) / (double)E;
    run_tasks(small && touched >= kernels::kGemvParallelBytes, (int64_t)tasks.size(), [&](int64_t i) {
        const FfnTask t = tasks[i];
        const int64_t e = t.e, r0 = t.begin, rows = t.end - t.begin;
        if (activation == Activation::swiglu && kernels::gemv_path(rows)) {
            // decode rows: up and gate in one call, x quantized once for both (the same kernels)
            kernels::qmatmul_same_x(xe + r0 * C, rows,
                                    {{hu + r0 * F, w_up.rows(e * F, F)}, {hg + r0 * F, w_gate.rows(e * F, F)}});
        } else {
            kernels::qmatmul(hu + r0 * F, xe + r0 * C, w_up.rows(e * F, F), rows, false);  // [rows, F]
            if (activation == Activation::swiglu)
                kernels::qmatmul(hg + r0 * F, xe + r0 * C, w_gate.rows(e * F, F), rows, false);
        }
        activation_forward(act + r0 * F, hg + r0 * F, hu + r0 * F, rows * F, activation);
        kernels::qmatmul(ye + r0 * C, act + r0 * F, w_down.rows(e * C, C), rows, false);  // [rows, C]
    });
}

// Where an expert's finished weight gradient goes instead of being added into dw_gate / dw_up /
// dw_down (training's fused optimizer step for expert weights): fn(dst, grad, n) gets the
// gradient of the n floats at dst (an expert's whole matrix inside dw_*) in a scratch buffer, once
// for each (expert, matrix) that received rows, on whichever thread computed it; dst itself is not
// written. Experts without rows get no call.
struct ExpertGradSink {
    function_ref<void(float* dst, const float* grad, int64_t n)> fn;
};

// Accumulates dxe (R, C), dw_gate, dw_up (E_local, F, C), dw_down (E_local, C, F) (the weight
// gradients go to `sink` instead when one is given; its dst points into these stacks, so a sink
// that maps dst back to a parameter sees the same matrix whatever seg.first_expert is). With
// overwrite_dxe, dxe is written instead of added to (every row of it belongs to one expert's
// block), so the caller need not zero it first. dact, dhg, dhu (R, F) are scratch (overwritten;
// ReLU uses dact alone). hu is read only for SwiGLU (the ReLU forward keeps just act).
template <class T>
void moe_ffn_backward(T* dxe, T* dw_gate, T* dw_up, T* dw_down, T* dact, T* dhg, T* dhu,
                      const T* dye, const T* xe, const T* hg, const T* hu, const T* act,
                      const T* w_gate, const T* w_up, const T* w_down, const ExpertSegments& seg,
                      int64_t C, int64_t F, Activation activation,
                      const ExpertGradSink* sink = nullptr, bool overwrite_dxe = false) {
    const int64_t E = seg.n_local;
    const int32_t* expert_offsets = seg.offsets;  // (E_local+1)
    const bool swiglu = activation == Activation::swiglu;
    T* const dup = swiglu ? dhu : dact;  // gradient of the up projection's output (ReLU: in place in dact)
    // 1) row blocks: activation gradients and dxe
    const bool small = small_experts(seg, C, F);
    const std::vector<FfnTask>& rtasks = ffn_row_tasks(seg, small);
    // packed weights (float, small experts): [e * 3 + {0: down, 1: up, 2: gate}], op(B) = W
    const kernels::PackedB* packed = nullptr;
    if constexpr (std::is_same_v<T, float>) {
        MOE_PROFILE_SCOPE("moe experts: weight packing");
        if (small)
            packed = pack_expert_weights(rtasks, E,
                                         {{w_down, C * F, false, C, F, F},
                                          {w_up, F * C, false, F, C, C},
                                          {swiglu ? w_gate : w_up, F * C, false, F, swiglu ? C : 0, C}});
    }
    {
    MOE_PROFILE_SCOPE("moe experts bwd: dh, dx");
    run_tasks(small, (int64_t)rtasks.size(), [&](int64_t i) {
        const FfnTask t = rtasks[i];
        const int64_t e = t.e, r0 = t.begin, rows = t.end - t.begin;
        const int64_t o = r0 * F, n = rows * F;
        const kernels::PackedB* pb = packed ? packed + e * 3 : nullptr;
        // ye = act · w_down^T
        expert_gemm<T>(false, rows, F, C, dye + r0 * C, C, pb ? pb + 0 : nullptr, false, w_down + e * C * F, F, T(0), dact + o, F);  // [rows, F]
        // elementwise: split over threads when the experts run one after another
        parallel_for_elements(n, [&](int64_t j0, int64_t j1) {
            if (swiglu) {
                for (int64_t j = j0; j < j1; ++j) dhu[o + j] = 0;
                for (int64_t j = j0; j < j1; ++j) dhg[o + j] = 0;
                swiglu_backward(dhg + o + j0, dhu + o + j0, dact + o + j0, hg + o + j0, hu + o + j0, j1 - j0);
            } else {
                // act = relu(hu)  =>  dhu = dact * (act > 0), in place in dact (dhu is dact below)
                relu_backward_inplace(dact + o + j0, act + o + j0, j1 - j0);
            }
        });
        // hu = xe · w_up^T ; hg = xe · w_gate^T
        expert_gemm<T>(false, rows, C, F, dup + o, F, pb ? pb + 1 : nullptr, false, w_up + e * F * C, C,
                       overwrite_dxe ? T(0) : T(1), dxe + r0 * C, C);  // [rows, C]
        if (swiglu)
            expert_gemm<T>(false, rows, C, F, dhg + o, F, pb ? pb + 2 : nullptr, false, w_gate + e * F * C, C, T(1), dxe + r0 * C, C);
    });
    }
    // 2) weight gradients: one whole-matrix GEMM per (expert, matrix) (a GEMM over a column block
    //    of the transposed operand runs at a third of the speed): as tasks for small experts,
    //    one after another with all threads in each GEMM for large ones.
    thread_local std::vector<FfnTask> wtasks_storage;  // reused: no allocation once warm
    std::vector<FfnTask>& wtasks = wtasks_storage;   // the lambda must see this thread's vector
    wtasks.clear();
    for (int64_t e = 0; e < E; ++e) {
        if (expert_offsets[e + 1] == expert_offsets[e]) continue;
        for (int w = 0; w < (swiglu ? 3 : 2); ++w)
            wtasks.push_back({(int32_t)e, w, expert_offsets[e], expert_offsets[e + 1]});
    }
    std::sort(wtasks.begin(), wtasks.end(), [](const FfnTask& a, const FfnTask& b) {  // largest first
        if (a.end - a.begin != b.end - b.begin) return a.end - a.begin > b.end - b.begin;
        return a.e != b.e ? a.e < b.e : a.which < b.which;
    });
    auto weight_task = [&](int64_t i) {
        const FfnTask t = wtasks[i];
        const int64_t e = t.e, r0 = t.begin, rows = t.end - t.begin;  // all rows of expert e
        T* dw = t.which == 0 ? dw_down + e * C * F : (t.which == 1 ? dw_up : dw_gate) + e * F * C;
        // with a sink (float only): the gradient goes to a scratch matrix, then to the sink
        T* out = dw;
        T beta = T(1);
        if constexpr (std::is_same_v<T, float>) {
            if (sink) {
                thread_local std::vector<float> grad;  // this worker's; no allocation once warm
                if ((int64_t)grad.size() < C * F) grad.resize(C * F);
                out = grad.data(), beta = 0.f;
            }
        }
        if (t.which == 0) {
            // dw_down[e] += dye^T · act    [C, F]
            kernels::gemm<T>(true, false, C, F, rows, T(1), dye + r0 * C, C, act + r0 * F, F, beta, out, F);
        } else {
            // dw_up|gate[e] += dh^T · xe   [F, C]
            const T* dh = (t.which == 1 ? dup : dhg) + r0 * F;
            kernels::gemm<T>(true, false, F, C, rows, T(1), dh, F, xe + r0 * C, C, beta, out, C);
        }
        if constexpr (std::is_same_v<T, float>) {
            if (sink) sink->fn(dw, out, C * F);
        }
    };
    MOE_PROFILE_SCOPE("moe experts bwd: dW");
    run_tasks(small, (int64_t)wtasks.size(), weight_task);
}

}  // namespace moe::ops
