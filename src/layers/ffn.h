#pragma once
// Feed-forward block, dense or Mixture-of-Experts: x_out = x_in + ffn(rmsnorm(x_in)).
//
// MoE pipeline (docs/conventions.md): router logits -> top-K selection -> combine weights ->
// counting sort by expert -> gather -> grouped expert FFN (one GEMM per expert) -> weighted scatter,
// plus, with model.n_ff_shexp > 0, a shared expert every token goes through (optionally gated).
#include <cstdint>
#include <vector>

#include "layers/hparams.h"
#include "layers/qweights.h"
#include "layers/weights.h"
#include "ops/moe_route.h"
#include "ops/router_capacity.h"

namespace moe::ops {
struct ExpertGradSink;
struct ExpertSegments;
}

namespace moe::layers {

class ExpertRunner;

// What the router needs to know about this forward: training or not (noise, capacity factor) and
// the key of the noise draw (seed, step, layer, micro-batch).
struct RouteContext {
    bool train = false;
    uint64_t seed = 0;
    int64_t step = 0, layer = 0, micro = 0;
    // expert parallelism: where the routed rows' experts run (null: all E here)
    ExpertRunner* experts = nullptr;
};

// Saved values of one FFN forward. T is float for the engine (FfnCache); the MoE part is also
// instantiated in double, where tests/moe_pipeline.h differentiates it by finite differences.
template <class T>
struct FfnCacheT {
    T* xn = nullptr;    // (N, C)
    T* rstd = nullptr;  // (N)
    // MoE routing record (unused for dense)
    T* logits = nullptr;                // (N, E) router logits, fp32
    T* noise_logits = nullptr;          // (N, E) x · W_noise^T (noisy gating)
    T* eps = nullptr;                   // (N, E) the noise draw, N(0, 1)
    T* scores = nullptr;                // (N, E) H = logits + eps * softplus(noise_logits)
    T* sel = nullptr;                   // (N, E) selection scores (probabilities and/or + bias)
    T* probs = nullptr;                 // (N, E) full softmax of the clean logits (Switch loss, entropy)
    T* lse = nullptr;                   // (N) logsumexp of the logits (z-loss)
    int64_t* expert_load = nullptr;     // (E) (token, slot) pairs assigned to each expert
    ops::RouteStats stats;              // rerouted / dropped slots of this forward
    bool noisy = false;                 // noise was applied in this forward
    double balance_loss = 0, z_loss = 0;  // auxiliary losses of this forward (coefficients applied)
    // topk_expert, topk_weight (N, K), rows grouped by expert, R; buffers planned for R_max rows
    ops::MoeRouteT<T> route;
    T* xe = nullptr;    // (R, C) gathered rows (MoE); dense uses xn directly
    T* hg = nullptr;    // (R, F) gate projection (swiglu)
    T* hu = nullptr;    // (R, F) up projection
    T* act = nullptr;   // (R, F) activation
    T* ye = nullptr;    // (R, C) expert outputs
    // shared expert (n_ff_shexp = Fs > 0): a dense FFN of every token's xn, added to the output
    T* sh_hg = nullptr;   // (N, Fs) gate projection (swiglu)
    T* sh_hu = nullptr;   // (N, Fs) up projection
    T* sh_act = nullptr;  // (N, Fs) activation
    T* sh_y = nullptr;    // (N, C) shared expert output
    T* sh_z = nullptr;    // (N) gate logit xn . w (shexp_gate only)
    T* sh_s = nullptr;    // (N) gate sigmoid(z) (shexp_gate only)
};
using FfnCache = FfnCacheT<float>;

template <class T>
struct FfnScratchT {
    T* dxn = nullptr;      // (N, C)
    T* dlogits = nullptr;  // (N, E)
    T* dscores = nullptr;  // (N, E) d H
    T* dnoise = nullptr;   // (N, E) d noise_logits
    T* dweight = nullptr;  // (N, K)
    T* dxe = nullptr;      // (R, C)
    T* dye = nullptr;      // (R, C)
    T* dact = nullptr;     // (R, F)
    T* dhg = nullptr;      // (R, F)
    T* dhu = nullptr;      // (R, F)
    T* dsh_y = nullptr;    // (N, C) shared expert output (shexp_gate only)
    T* dsh_z = nullptr;    // (N) its gate logit (shexp_gate only)
};
using FfnScratch = FfnScratchT<float>;
// dact, dhg, dhu hold max(R * F, N * Fs) values: the shared expert's backward reuses them.

// The routed part of an MoE layer's weights (or of its gradients): LayerWeights' router and expert
// tensors in T (moe_weights views them), or a test's double buffers.
template <class T>
struct MoeWeights {
    T* ffn_gate_inp = nullptr;        // (E, C) router
    T* ffn_gate_inp_noise = nullptr;  // (E, C) noisy gating: W_noise
    float* ffn_gate_bias = nullptr;   // (E) aux-loss-free balancing bias: float state in any T
                                      // (selection only, no gradient)
    T* ffn_gate_exps = nullptr;       // (E, F, C) swiglu only
    T* ffn_up_exps = nullptr;         // (E, F, C)
    T* ffn_down_exps = nullptr;       // (E, C, F)
};

inline MoeWeights<float> moe_weights(const LayerWeights& w) {
    return {w.ffn_gate_inp, w.ffn_gate_inp_noise, w.ffn_gate_bias, w.ffn_gate_exps, w.ffn_up_exps,
            w.ffn_down_exps};
}

// out (N, C) = inp (N, C) + ffn(rmsnorm(inp)). q: inference weight views for the expert / dense
// projections (null: the fp32 parameters through the training GEMMs); only Model::forward_cached
// passes them, so q also marks an inference call (the router's decode GEMV).
void ffn_forward(float* out, FfnCache& c, const float* inp, const LayerWeights& w,
                 const ModelConfig& m, bool moe_layer, int64_t N, const RouteContext& ctx,
                 const QLayer* q = nullptr);

// dresid (N, C): in = d out, out = d inp. Accumulates into g. aux_scale: the upstream gradient of
// the auxiliary losses (the same scale the LM loss got). With `sink`, the routed experts' weight
// gradients go there instead of into g (ops::ExpertGradSink). experts, layer: the ExpertRunner
// the forward used (its layer index), which then owns the routed experts' gradients.
void ffn_backward(float* dresid, LayerWeights& g, FfnScratch& s, const FfnCache& c, const float* inp,
                  const LayerWeights& w, const ModelConfig& m, bool moe_layer, int64_t N,
                  float aux_scale, const ops::ExpertGradSink* sink = nullptr, ExpertRunner* experts = nullptr,
                  int64_t layer = 0);

// ---------------------------------------------------------------- the routed part of an MoE layer
// Expert parallelism's seam (train/expert_parallel.h): when a forward's RouteContext names an
// ExpertRunner, moe_forward hands it the routed rows instead of running the experts here, and
// moe_backward hands it their gradients. Routing, gather, combine and their backward stay local:
// the runner's job is c.ye from c.xe (forward) and s.dxe from s.dye (backward) for rows grouped by
// expert as c.route says (all E experts of layer `layer`), wherever the experts live; it owns the
// experts' weight gradients. float only (the double pipeline of the tests runs every expert).
class ExpertRunner {
public:
    virtual ~ExpertRunner() = default;
    virtual void forward(FfnCacheT<float>& c, const MoeWeights<float>& w, const ModelConfig& m, int64_t layer) = 0;
    virtual void backward(const FfnScratchT<float>& s, const FfnCacheT<float>& c, const MoeWeights<float>& w,
                          const ModelConfig& m, int64_t layer) = 0;
    // Inference (Model::forward_cached, expert-parallel inference): c.ye from c.xe as above, with
    // the inference views q of the experts this process holds (a sharded model's). Runners that
    // only train do not implement it.
    virtual void forward_cached(FfnCacheT<float>& c, const QFfn& q, const ModelConfig& m, int64_t layer);
};

// ffn_forward / ffn_backward compose these between the rmsnorm and the shared expert, and
// tests/moe_pipeline.h composes the same functions in double (T = float | double). They read
// c.xn (N, C), the normed input.
//
//   forward:  moe_route_forward -> moe_gather_forward -> moe_experts_forward -> moe_combine_forward
//   backward: moe_combine_backward -> moe_experts_backward -> moe_gather_backward -> moe_route_backward
//
// An expert-parallel run would exchange the routed rows between the gather and the experts (and
// their gradients between the experts' and the gather's backward), each rank running its own
// ExpertSegments.

// The router step of one MoE layer's forward: logits (N, E), noisy scores, the full softmax,
// selection scores, top-K under the capacity (drop / reroute), the combine weights, the auxiliary
// losses and the grouping of the routed rows by expert. Fills c's routing record (logits ..
// expert_load, stats, noisy, balance_loss, z_loss) and c.route (whose buffers and R_max the
// caller planned), and returns c.route.
// decode: an inference call (Model::forward_cached): the router's small GEMM runs as a
// single-thread GEMV. forced_topk (N, K): when given, these experts serve the tokens (-1 =
// dropped) instead of the router's choice, and selection and capacity are skipped; the tests hold
// the routing fixed with it under finite differences. The engine never passes it.
template <class T>
const ops::MoeRouteT<T>& moe_route_forward(FfnCacheT<T>& c, const MoeWeights<T>& w, const ModelConfig& m,
                                           int64_t N, const RouteContext& ctx, bool decode,
                                           const int32_t* forced_topk = nullptr);

// The grouped expert FFN over the routed rows of seg's experts: c.ye (R, C) from c.xe (R, C),
// saving c.hg, c.hu, c.act (R, F). The weight stacks of w (and q's) hold seg's experts. q:
// inference views (float only; null: the T weights through the training GEMMs).
template <class T>
void moe_experts_forward(FfnCacheT<T>& c, const MoeWeights<T>& w, const ModelConfig& m,
                         const ops::ExpertSegments& seg, const QFfn* q = nullptr);

// out (N, C) = routed_scale * sum_k topk_weight[n, k] * expert_k(xn[n]) (overwritten): the route,
// the gather of c.xe, all E experts, the combine. q: as moe_experts_forward; decode, forced_topk:
// as moe_route_forward.
template <class T>
void moe_forward(T* out, FfnCacheT<T>& c, const MoeWeights<T>& w, const ModelConfig& m, int64_t N,
                 const RouteContext& ctx, bool decode, const QFfn* q = nullptr,
                 const int32_t* forced_topk = nullptr);

// Backward of moe_route_forward: accumulates dxn (N, C) and g.ffn_gate_inp, g.ffn_gate_inp_noise
// (E, C) from s.dweight (N, K), the gradient of the combine weights, plus the auxiliary losses'
// gradients scaled by aux_scale. s.dlogits, s.dscores, s.dnoise are scratch. The routing itself
// (the indices) is not differentiable.
template <class T>
void moe_route_backward(T* dxn, const MoeWeights<T>& g, const FfnScratchT<T>& s, const FfnCacheT<T>& c,
                        const MoeWeights<T>& w, const ModelConfig& m, int64_t N, float aux_scale);

// Backward of moe_experts_forward: s.dxe (R, C) written from s.dye (R, C); accumulates g's expert
// stacks (or hands them to `sink`). s.dact, s.dhg, s.dhu are scratch.
template <class T>
void moe_experts_backward(const MoeWeights<T>& g, const FfnScratchT<T>& s, const FfnCacheT<T>& c,
                          const MoeWeights<T>& w, const ModelConfig& m, const ops::ExpertSegments& seg,
                          const ops::ExpertGradSink* sink = nullptr);

// Backward of moe_forward for dout (N, C): accumulates dxn (N, C) and g's router and expert
// gradients (the experts' to `sink` when given). s.dweight, s.dye, s.dxe and the rest of s are
// scratch.
template <class T>
void moe_backward(T* dxn, const MoeWeights<T>& g, const FfnScratchT<T>& s, const T* dout,
                  const FfnCacheT<T>& c, const MoeWeights<T>& w, const ModelConfig& m, int64_t N,
                  float aux_scale, const ops::ExpertGradSink* sink = nullptr, ExpertRunner* experts = nullptr,
                  int64_t layer = 0);

}  // namespace moe::layers
