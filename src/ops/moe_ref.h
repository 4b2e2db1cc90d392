#pragma once
// moe_ref: the slow per-token reference twin of the whole MoE layer (without its rmsnorm and
// residual). It is the oracle the fast pipeline of layers/ffn.cc is tested against
// (router linear -> router_topk -> router_weights -> dispatch -> gather -> grouped expert FFN ->
// combine), and it is itself checked by central finite differences in double
// (tests/test_moe_ref.cc).
//
// It is deliberately written independently of the fast ops: plain loops, one token at a time, no
// grouping by expert, no GEMM, no shared helpers (only the Activation enum). Slow on purpose.
//
// For token n with input x = x[n] (C):
//   logits[e]  = sum_c w_router[e, c] * x[c]                         (E)
//   chosen     = the first min(K, E) experts sorted by (-logits[e], e); slots past E are -1
//   w[k]       = exp(logits[chosen[k]]) / sum_j exp(logits[chosen[j]])   (softmax over chosen)
//   for each slot k with expert e = chosen[k]:
//     hg[f] = sum_c w_gate[e, f, c] x[c]      hu[f] = sum_c w_up[e, f, c] x[c]
//     a[f]  = silu(hg[f]) * hu[f]   (swiglu)  |  max(hu[f], 0)   (relu)
//     y[c]  = sum_f w_down[e, c, f] a[f]
//   out[n] = sum_k w[k] * y_k
// Derivation of the backward: docs/derivations/moe_layer.md.
//
// Router options (RouterOptions, optional; issue #3 "routing that does not collapse"). With them
// the router part becomes, for token n:
//   scores[e] = logits[e] + eps[n, e] * softplus(sum_c w_noise[e, c] x[c])   (noisy gating; else logits)
//   sel[e]    = scores[e] + sel_bias[e]                   (aux-loss-free bias; selection only)
//   chosen    = moe_ref_route(sel)   or, with a capacity, moe_ref_assign over the whole batch's sel
//   w[k]      = softmax over chosen of scores            (never the bias)
// Derivation: docs/derivations/routing.md.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/activation.h"
#include "ops/router_capacity.h"  // only the OverflowPolicy enum and the RouteStats struct

namespace moe::ops::ref {

namespace detail {

template <class T>
T sig(T z) {
    return T(1) / (T(1) + std::exp(-z));
}

// logits (E) = w_router (E, C) . x (C)
template <class T>
void token_logits(T* logits, const T* x, const T* w_router, int64_t C, int64_t E) {
    for (int64_t e = 0; e < E; ++e) {
        T s = 0;
        for (int64_t c = 0; c < C; ++c) s += w_router[e * C + c] * x[c];
        logits[e] = s;
    }
}

template <class T>
T softplus(T z) {
    // log(1 + e^z) = max(z, 0) + log(1 + e^-|z|)
    return std::max(z, T(0)) + std::log1p(std::exp(-std::fabs(z)));
}

// softmax over the chosen slots' logits; dropped slots (-1) get 0
template <class T>
void token_weights(T* w, const T* logits, const int32_t* chosen, int64_t K) {
    T mx = 0;
    bool any = false;
    for (int64_t k = 0; k < K; ++k)
        if (chosen[k] >= 0 && (!any || logits[chosen[k]] > mx)) mx = logits[chosen[k]], any = true;
    T sum = 0;
    for (int64_t k = 0; k < K; ++k) {
        w[k] = chosen[k] >= 0 ? std::exp(logits[chosen[k]] - mx) : T(0);
        sum += w[k];
    }
    for (int64_t k = 0; k < K; ++k)
        if (sum > T(0)) w[k] /= sum;
}

// One expert on one token: hg, hu, a (F), y (C).
template <class T>
void token_expert(T* hg, T* hu, T* a, T* y, const T* x, const T* wg, const T* wu, const T* wd,
                  int64_t C, int64_t F, Activation act) {
    for (int64_t f = 0; f < F; ++f) {
        T su = 0, sg = 0;
        for (int64_t c = 0; c < C; ++c) {
            su += wu[f * C + c] * x[c];
            if (act == Activation::swiglu) sg += wg[f * C + c] * x[c];
        }
        hu[f] = su;
        hg[f] = sg;
        a[f] = act == Activation::swiglu ? sg * sig(sg) * su : (su > T(0) ? su : T(0));
    }
    for (int64_t c = 0; c < C; ++c) {
        T s = 0;
        for (int64_t f = 0; f < F; ++f) s += wd[c * F + f] * a[f];
        y[c] = s;
    }
}

}  // namespace detail

// chosen (K) <- experts sorted by (-logit, index), the first min(K, E); the rest -1.
template <class T>
void moe_ref_route(int32_t* chosen, const T* logits, int64_t E, int64_t K) {
    std::vector<int32_t> idx(E);
    for (int64_t e = 0; e < E; ++e) idx[e] = (int32_t)e;
    std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
        if (logits[a] != logits[b]) return logits[a] > logits[b];
        return a < b;
    });
    for (int64_t k = 0; k < K; ++k) chosen[k] = k < E ? idx[k] : -1;
}

// Router options of moe_ref_forward / moe_ref_backward (see the top of this file). Every member is
// optional; a default-constructed RouterOptions is the plain router.
template <class T>
struct RouterOptions {
    const T* w_noise = nullptr;       // (E, C) noisy gating (with eps)
    const T* eps = nullptr;           // (N, E) the noise draws
    const float* sel_bias = nullptr;  // (E) aux-loss-free selection bias
    int64_t capacity = 0;             // per expert per batch; <= 0: no limit
    OverflowPolicy policy = OverflowPolicy::none;
};

// The capacity rule of ops/router_capacity.h, written out independently: each token's full
// preference list by moe_ref_route (a sort), then rank by rank, token by token, walk the list.
// topk_expert (N, K) out; sel (N, E) the selection scores; stats (may be null) out.
template <class T>
void moe_ref_assign(int32_t* topk_expert, RouteStats* stats, const T* sel, int64_t N, int64_t E,
                    int64_t K, int64_t capacity, OverflowPolicy policy) {
    std::vector<int32_t> pref(N * E), orig(N * K);
    for (int64_t n = 0; n < N; ++n) {
        moe_ref_route(pref.data() + n * E, sel + n * E, E, E);
        for (int64_t k = 0; k < K; ++k) orig[n * K + k] = k < E ? pref[n * E + k] : -1;
    }
    RouteStats st;
    const bool limited = policy != OverflowPolicy::none && capacity > 0;
    std::vector<int64_t> fill(E, 0);
    for (int64_t i = 0; i < N * K; ++i) topk_expert[i] = -1;
    for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) {
            const int32_t e0 = orig[n * K + k];
            if (e0 < 0) continue;
            if (!limited || fill[e0] < capacity) {
                topk_expert[n * K + k] = e0;
                fill[e0]++;
                continue;
            }
            if (policy == OverflowPolicy::drop) {
                st.dropped++;
                continue;
            }
            int32_t pick = -1;
            for (int64_t i = 0; i < E && pick < 0; ++i) {
                const int32_t e = pref[n * E + i];
                if (fill[e] >= capacity) continue;
                bool used = false;
                for (int64_t j = 0; j < k; ++j) used = used || topk_expert[n * K + j] == e;
                for (int64_t j = k + 1; j < K; ++j) used = used || orig[n * K + j] == e;
                if (!used) pick = e;
            }
            topk_expert[n * K + k] = pick;
            if (pick >= 0) {
                fill[pick]++;
                st.rerouted++;
            } else {
                st.dropped++;
            }
        }
    if (stats) *stats = st;
}

// out (N, C) = MoE(x (N, C)). Weights: w_router (E, C), w_gate / w_up (E, F, C) (w_gate unused
// for relu), w_down (E, C, F).
// routing (N, K): when non-null, these experts are used instead of the top-K of the logits (to
// hold the routing fixed under finite differences). topk_expert, topk_weight (N, K): optional
// outputs of the routing and its combine weights. opt: optional router options (RouterOptions).
template <class T>
void moe_ref_forward(T* out, int32_t* topk_expert, T* topk_weight, const T* x, const T* w_router,
                     const T* w_gate, const T* w_up, const T* w_down, int64_t N, int64_t C,
                     int64_t E, int64_t K, int64_t F, Activation act,
                     const int32_t* routing = nullptr, const RouterOptions<T>* opt = nullptr) {
    std::vector<T> logits(E), sel(E), w(K), hg(F), hu(F), a(F), y(C);
    std::vector<int32_t> chosen(K);
    // the router scores of token n (logits, or the noisy scores) and its selection scores
    auto token_scores = [&](int64_t n) {
        detail::token_logits(logits.data(), x + n * C, w_router, C, E);
        if (opt && opt->w_noise) {
            detail::token_logits(sel.data(), x + n * C, opt->w_noise, C, E);  // noise logits
            for (int64_t e = 0; e < E; ++e) logits[e] += opt->eps[n * E + e] * detail::softplus(sel[e]);
        }
        for (int64_t e = 0; e < E; ++e) sel[e] = logits[e] + (opt && opt->sel_bias ? (T)opt->sel_bias[e] : T(0));
    };
    // a capacity couples the tokens: assign the whole batch first
    std::vector<int32_t> assigned;
    if (!routing && opt && opt->policy != OverflowPolicy::none && opt->capacity > 0) {
        std::vector<T> sel_all(N * E);
        for (int64_t n = 0; n < N; ++n) {
            token_scores(n);
            for (int64_t e = 0; e < E; ++e) sel_all[n * E + e] = sel[e];
        }
        assigned.resize(N * K);
        moe_ref_assign(assigned.data(), (RouteStats*)nullptr, sel_all.data(), N, E, K, opt->capacity,
                       opt->policy);
        routing = assigned.data();
    }
    for (int64_t n = 0; n < N; ++n) {
        const T* xn = x + n * C;
        token_scores(n);
        if (routing)
            for (int64_t k = 0; k < K; ++k) chosen[k] = routing[n * K + k];
        else
            moe_ref_route(chosen.data(), sel.data(), E, K);
        detail::token_weights(w.data(), logits.data(), chosen.data(), K);
        T* o = out + n * C;
        for (int64_t c = 0; c < C; ++c) o[c] = 0;
        for (int64_t k = 0; k < K; ++k) {
            if (topk_expert) topk_expert[n * K + k] = chosen[k];
            if (topk_weight) topk_weight[n * K + k] = w[k];
            const int32_t e = chosen[k];
            if (e < 0) continue;
            detail::token_expert(hg.data(), hu.data(), a.data(), y.data(), xn,
                                 w_gate ? w_gate + e * F * C : nullptr, w_up + e * F * C,
                                 w_down + e * C * F, C, F, act);
            for (int64_t c = 0; c < C; ++c) o[c] += w[k] * y[c];
        }
    }
}

// Accumulates dx (N, C), dw_router (E, C), dw_gate / dw_up (E, F, C), dw_down (E, C, F) for the
// upstream gradient dout (N, C), with the routing topk_expert (N, K) of the forward (top-K
// selection is not differentiable). Recomputes every intermediate per token. Any gradient pointer
// may be null (not wanted). opt: the router options of the forward (only w_noise and eps matter
// here: the selection bias and the capacity act through topk_expert); dw_noise (E, C) accumulates
// the gradient of opt->w_noise.
template <class T>
void moe_ref_backward(T* dx, T* dw_router, T* dw_gate, T* dw_up, T* dw_down, const T* dout,
                      const T* x, const T* w_router, const T* w_gate, const T* w_up,
                      const T* w_down, const int32_t* topk_expert, int64_t N, int64_t C, int64_t E,
                      int64_t K, int64_t F, Activation act, const RouterOptions<T>* opt = nullptr,
                      T* dw_noise = nullptr) {
    std::vector<T> logits(E), nl(E), w(K), dwk(K), hg(F), hu(F), a(F), y(C), dy(C), da(F), dhg(F), dhu(F);
    const bool noisy = opt && opt->w_noise;
    for (int64_t n = 0; n < N; ++n) {
        const T* xn = x + n * C;
        const T* g = dout + n * C;
        const int32_t* chosen = topk_expert + n * K;
        detail::token_logits(logits.data(), xn, w_router, C, E);
        if (noisy) {
            detail::token_logits(nl.data(), xn, opt->w_noise, C, E);
            for (int64_t e = 0; e < E; ++e) logits[e] += opt->eps[n * E + e] * detail::softplus(nl[e]);
        }
        detail::token_weights(w.data(), logits.data(), chosen, K);
        for (int64_t k = 0; k < K; ++k) {
            dwk[k] = 0;
            const int32_t e = chosen[k];
            if (e < 0) continue;
            const T* wg = w_gate ? w_gate + e * F * C : nullptr;
            const T* wu = w_up + e * F * C;
            const T* wd = w_down + e * C * F;
            detail::token_expert(hg.data(), hu.data(), a.data(), y.data(), xn, wg, wu, wd, C, F, act);
            // out += w[k] * y  =>  dw[k] = g . y ; dy = w[k] * g
            for (int64_t c = 0; c < C; ++c) {
                dwk[k] += g[c] * y[c];
                dy[c] = w[k] * g[c];
            }
            // y = wd . a  =>  da = wd^T dy ; dwd += dy a^T
            for (int64_t f = 0; f < F; ++f) da[f] = 0;
            for (int64_t c = 0; c < C; ++c)
                for (int64_t f = 0; f < F; ++f) {
                    da[f] += wd[c * F + f] * dy[c];
                    if (dw_down) dw_down[e * C * F + c * F + f] += dy[c] * a[f];
                }
            for (int64_t f = 0; f < F; ++f) {
                if (act == Activation::swiglu) {
                    const T s = detail::sig(hg[f]);
                    // a = hg s(hg) hu  =>  da/dhg = hu (s + hg s (1 - s)), da/dhu = hg s(hg)
                    dhg[f] = da[f] * hu[f] * (s + hg[f] * s * (T(1) - s));
                    dhu[f] = da[f] * hg[f] * s;
                } else {
                    dhg[f] = 0;
                    dhu[f] = hu[f] > T(0) ? da[f] : T(0);
                }
            }
            // hu = wu . x, hg = wg . x
            for (int64_t f = 0; f < F; ++f)
                for (int64_t c = 0; c < C; ++c) {
                    if (dx) dx[n * C + c] += dhu[f] * wu[f * C + c];
                    if (dw_up) dw_up[e * F * C + f * C + c] += dhu[f] * xn[c];
                    if (act == Activation::swiglu) {
                        if (dx) dx[n * C + c] += dhg[f] * wg[f * C + c];
                        if (dw_gate) dw_gate[e * F * C + f * C + c] += dhg[f] * xn[c];
                    }
                }
        }
        // w = softmax over the chosen logits  =>  dlogit[chosen[k]] = w[k] (dw[k] - sum_j w[j] dw[j])
        T wdot = 0;
        for (int64_t k = 0; k < K; ++k)
            if (chosen[k] >= 0) wdot += w[k] * dwk[k];
        for (int64_t k = 0; k < K; ++k) {
            const int32_t e = chosen[k];
            if (e < 0) continue;
            const T dl = w[k] * (dwk[k] - wdot);
            // logits[e] = w_router[e] . x
            for (int64_t c = 0; c < C; ++c) {
                if (dx) dx[n * C + c] += dl * w_router[e * C + c];
                if (dw_router) dw_router[e * C + c] += dl * xn[c];
            }
            if (noisy) {
                // score[e] = logits[e] + eps[n, e] softplus(nl[e]), softplus' = sigmoid;
                // nl[e] = w_noise[e] . x
                const T dnl = dl * opt->eps[n * E + e] * detail::sig(nl[e]);
                for (int64_t c = 0; c < C; ++c) {
                    if (dx) dx[n * C + c] += dnl * opt->w_noise[e * C + c];
                    if (dw_noise) dw_noise[e * C + c] += dnl * xn[c];
                }
            }
        }
    }
}

}  // namespace moe::ops::ref
