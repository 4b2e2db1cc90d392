"""PyTorch reference of moe's Transformer (src/model, src/layers, src/ops), for parity tests.

Written for readability, not speed: every operation follows the semantics of the C++ engine,

  * RMSNorm: x / sqrt(mean(x^2) + eps) * weight (eps inside the square root)
  * RoPE, NEOX / Hugging Face style: the pairs are (i, i + D/2), angle t * theta^(-2i/D); the
    cos/sin table is computed in double and rounded to float32, as src/ops/rope.h
  * causal attention with grouped-query heads: query head h reads kv head h // (H / Hkv)
  * FFN: SwiGLU down(silu(gate x) * up x) or ReLU down(relu(up x))
  * router: logits = x . W_r^T; top-K on the logits (ties to the lower index); the combine
    weights are a softmax over the K chosen logits; output = routed_scale * sum_k w_k expert_k(x)
    (routed_scale 1 unless the router section sets it)
  * router options (the config's "router" section, src/model/config.h RouterConfig; see
    MoeFFN.forward for the exact order): noisy top-K gating H = logits + eps * softplus(x . W_n^T)
    with eps from a bit-exact port of moe::Rng keyed by (seed, step, layer, micro); expert capacity
    with drop / reroute, assigned rank by rank; selection on probabilities; the aux-loss-free
    selection bias; the Switch load-balancing loss and the router z-loss
  * loss: mean cross-entropy over all B*T tokens (plus the auxiliary router losses, see
    MoeTransformer.aux_losses)

Parameters carry the engine's names (src/model/params.cc), with '.' replaced by '_' only inside
torch's module tree; `named_tensors()` gives them back under the engine's names.
"""

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn


def model_section(cfg):
    """The 'model' section of a moe JSON config, with the engine's defaults filled in."""
    m = dict(cfg.get("model", cfg))
    m.setdefault("n_head_kv", m["n_head"])
    m.setdefault("rope_theta", 10000.0)
    m.setdefault("norm_eps", 1e-5)
    m.setdefault("tie_embeddings", True)
    m.setdefault("activation", "swiglu")
    for k in ("n_ff", "n_expert", "n_expert_used", "n_ff_exp", "n_ff_shexp"):
        m.setdefault(k, 0)
    m.setdefault("shexp_gate", False)
    ffn = m.get("ffn", "moe" if m["n_expert"] > 0 else "dense")
    if isinstance(ffn, str):
        ffn = [ffn] * m["n_layer"]
    assert len(ffn) == m["n_layer"] and all(f in ("moe", "dense") for f in ffn), ffn
    m["ffn"] = list(ffn)
    assert m["activation"] in ("swiglu", "relu"), m["activation"]
    assert m.get("vocab_size", 0) > 0, "the reference needs an explicit model.vocab_size"
    return m


def router_section(cfg):
    """The 'router' section of a moe JSON config with the engine's defaults (src/model/config.cc)."""
    r = dict(cfg.get("router", {}))
    r.setdefault("noisy_gating", False)
    r.setdefault("noise_at_eval", False)
    r.setdefault("capacity_factor", 0.0)
    r.setdefault("eval_capacity_factor", 0.0)
    r.setdefault("overflow", "reroute" if r["capacity_factor"] > 0 or r["eval_capacity_factor"] > 0 else "none")
    r.setdefault("balance_loss", 0.0)
    r.setdefault("z_loss", 0.0)
    r.setdefault("bias_balance", False)
    r.setdefault("bias_rate", 1e-3)
    r.setdefault("topk_on", "logits")
    r.setdefault("norm_topk", True)
    r.setdefault("routed_scale", 1.0)
    assert r["overflow"] in ("none", "drop", "reroute"), r["overflow"]
    assert r["topk_on"] in ("logits", "probs"), r["topk_on"]
    return r


# ---------------------------------------------------------------------------------------------
# The router noise: a port of moe::Rng (src/core/rng.h) and of noisy_gating_stream /
# noisy_gating_draw_eps (src/ops/noisy_gating.h), bit for bit. Python ints are unbounded, so every
# uint64 operation is masked to 64 bits; the normals are computed in double with the C library's
# log / cos / sqrt (Python's math module calls them) and rounded to float32 as the engine does.

U64 = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & U64
    return x ^ (x >> 31)


class Rng:
    """moe::Rng: counter-based, state = splitmix64(seed ^ splitmix64(stream + 0x1234567))."""

    def __init__(self, seed, stream=0):
        self.state = splitmix64((seed & U64) ^ splitmix64(((stream & U64) + 0x1234567) & U64))

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & U64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
        return z ^ (z >> 31)

    def uniform(self):
        """[0, 1) with 53 random bits."""
        return (self.next_u64() >> 11) * (1.0 / 9007199254740992.0)

    def normal(self):
        """Box-Muller, one value per call (two uniforms)."""
        u1 = self.uniform()
        u2 = self.uniform()
        if u1 < 1e-300:
            u1 = 1e-300
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(6.283185307179586 * u2)


def noisy_gating_stream(step, layer, micro, n):
    """The RNG stream of row n of the gating noise of `layer` at (step, micro); step -1 = eval."""
    s = splitmix64(0x6E6F697379676174 ^ (step & U64))  # "noisygat"
    s = splitmix64(s ^ (layer & U64))
    s = splitmix64(s ^ (micro & U64))
    return splitmix64(s ^ (n & U64))


def noisy_gating_eps(N, E, seed, step, layer, micro=0):
    """eps (N, E) float32: row n holds E normals of Rng(seed, noisy_gating_stream(step, layer,
    micro, n)), in order."""
    rows = []
    for n in range(N):
        rng = Rng(seed, noisy_gating_stream(step, layer, micro, n))
        rows.append([rng.normal() for _ in range(E)])
    return torch.tensor(rows, dtype=torch.float64).float()


def rng_selfcheck():
    """Compares the port with values printed by the C++ engine (moe::Rng, noisy_gating_draw_eps);
    raises AssertionError on any difference."""
    r = Rng(1337, 42)
    assert [r.next_u64() for _ in range(3)] == [12802725001190918459, 11703565304095668318,
                                                3070295102975556496]
    r = Rng(7, 0)
    assert [r.normal() for _ in range(3)] == [0.66668853073396606, 0.23456241134222219, 0.77195097080135788]
    assert noisy_gating_stream(3, 1, 2, 5) == 16907125204487610803
    assert noisy_gating_stream(-1, 0, 0, 0) == 1324304115952156797
    want = torch.tensor([[0.678089917, -0.164884999, -0.635972798, -1.03468192],
                         [-1.02358818, -1.28549671, -1.36112368, -0.480405718],
                         [-0.554052413, 2.1922307, 0.271186173, 0.0753654167]], dtype=torch.float32)
    assert torch.equal(noisy_gating_eps(3, 4, 1, 0, 1, 0), want)
    want = torch.tensor([[-0.0789920464, 0.407203943, 0.894595444, 0.366885453],
                         [1.65687144, -1.04902315, 0.0124324299, 0.968429267],
                         [-1.17877233, 0.131556705, 0.316633642, 0.669077754]], dtype=torch.float32)
    assert torch.equal(noisy_gating_eps(3, 4, 12345678901234, 7, 0, 3), want)


# ---------------------------------------------------------------------------------------------
# Expert capacity (src/ops/router_capacity.h): which expert serves each (token, slot)


def expert_capacity(capacity_factor, N, E, K):
    """ceil(capacity_factor * N * K / E), at least 1; 0 (no limit) for capacity_factor <= 0. The
    factor is taken as the decimal number it prints as, in exact rational arithmetic, so that
    1.1 * 10 is 11, not 12."""
    if not capacity_factor > 0:
        return 0
    return max(1, math.ceil(Fraction(repr(float(capacity_factor))) * N * K / E))


def assign_experts(sel, K, cap, overflow):
    """The engine's assignment rule, in plain Python on the detached selection scores sel (N, E).
    Returns (experts, rerouted, dropped): experts (N, K) int64, -1 for a dropped slot.

    pref(n) is the experts by descending score (ties to the lower index); orig = its first K.
    Without a capacity the result is orig. With one, the slots are placed rank by rank (every
    token's first choice, in token order, then every second choice, ...): a slot whose expert is
    full is dropped ('drop'), or ('reroute') given to the token's most preferred expert that has
    room and is neither already serving the token nor one of its own choices still to be placed."""
    N, E = sel.shape
    pref = top_k_lower_index(sel, E).tolist()
    orig = [p[:K] for p in pref]
    out = [list(o) for o in orig]
    rerouted = dropped = 0
    if cap > 0 and overflow != "none":
        fill = [0] * E
        for k in range(K):
            for n in range(N):
                e0 = orig[n][k]
                if fill[e0] < cap:
                    fill[e0] += 1
                    continue
                choice = -1
                if overflow == "reroute":
                    excluded = set(out[n][:k]) | set(orig[n][k + 1:])
                    for e in pref[n]:
                        if fill[e] < cap and e not in excluded:
                            choice = e
                            break
                out[n][k] = choice
                if choice >= 0:
                    fill[choice] += 1
                    rerouted += 1
                else:
                    dropped += 1
    return torch.tensor(out, dtype=torch.int64).reshape(N, K), rerouted, dropped


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_table(T, D, theta):
    """cos, sin (T, D/2) in float32, computed in double like ops::rope_table."""
    i = torch.arange(D // 2, dtype=torch.float64)
    inv = theta ** (-2.0 * i / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):
    """x (B, T, nh, D): rotates the pairs (i, i + D/2) by the angle of position t."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


class Attention(nn.Module):
    def __init__(self, m):
        super().__init__()
        C, H, Hkv = m["n_embd"], m["n_head"], m["n_head_kv"]
        D = m.get("head_dim", 0) or C // H
        self.H, self.Hkv, self.D, self.eps = H, Hkv, D, m["norm_eps"]
        self.attn_norm = nn.Parameter(torch.ones(C))
        self.attn_q = nn.Parameter(torch.empty(H * D, C))
        self.attn_k = nn.Parameter(torch.empty(Hkv * D, C))
        self.attn_v = nn.Parameter(torch.empty(Hkv * D, C))
        self.attn_output = nn.Parameter(torch.empty(C, H * D))
        qk = m.get("qk_norm", False)
        self.qk_norm = qk in (True, "full", "head")
        self.qk_head = qk == "head"
        if self.qk_norm:  # OLMoE: RMSNorm over the whole q (H*D) and k (Hkv*D) projections;
            # "head" (Qwen3): over each head's D with one (D) weight
            self.attn_q_norm = nn.Parameter(torch.ones(D if self.qk_head else H * D))
            self.attn_k_norm = nn.Parameter(torch.ones(D if self.qk_head else Hkv * D))
        bias = m.get("attn_bias", "none")
        self.bias_qkv, self.bias_o = bias in ("qkv", "qkvo"), bias == "qkvo"
        if self.bias_qkv:  # Qwen2: biases on q, k, v; Llama's attention_bias: on the output too
            self.attn_q_bias = nn.Parameter(torch.zeros(H * D))
            self.attn_k_bias = nn.Parameter(torch.zeros(Hkv * D))
            self.attn_v_bias = nn.Parameter(torch.zeros(Hkv * D))
        if self.bias_o:
            self.attn_output_bias = nn.Parameter(torch.zeros(C))

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        H, Hkv, D = self.H, self.Hkv, self.D
        h = rms_norm(x, self.attn_norm, self.eps)
        q, k, v = h @ self.attn_q.t(), h @ self.attn_k.t(), h @ self.attn_v.t()
        if self.bias_qkv:
            q, k, v = q + self.attn_q_bias, k + self.attn_k_bias, v + self.attn_v_bias
        if self.qk_norm and not self.qk_head:
            q, k = rms_norm(q, self.attn_q_norm, self.eps), rms_norm(k, self.attn_k_norm, self.eps)
        q, k = q.view(B, T, H, D), k.view(B, T, Hkv, D)
        if self.qk_head:
            q, k = rms_norm(q, self.attn_q_norm, self.eps), rms_norm(k, self.attn_k_norm, self.eps)
        v = v.view(B, T, Hkv, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # (B, heads, T, D); each kv head serves H / Hkv consecutive query heads
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v                  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        out = x + y @ self.attn_output.t()
        return out + self.attn_output_bias if self.bias_o else out


def ffn(x, gate, up, down, activation):
    """One FFN (a dense layer or one expert): x (n, C); gate, up (F, C); down (C, F)."""
    if activation == "swiglu":
        a = F.silu(x @ gate.t()) * (x @ up.t())
    else:
        a = torch.relu(x @ up.t())
    return a @ down.t()


class DenseFFN(nn.Module):
    def __init__(self, m):
        super().__init__()
        C, Fd = m["n_embd"], m["n_ff"]
        self.eps, self.activation = m["norm_eps"], m["activation"]
        self.ffn_norm = nn.Parameter(torch.ones(C))
        if self.activation == "swiglu":
            self.ffn_gate = nn.Parameter(torch.empty(Fd, C))
        else:
            self.ffn_gate = None
        self.ffn_up = nn.Parameter(torch.empty(Fd, C))
        self.ffn_down = nn.Parameter(torch.empty(C, Fd))

    def forward(self, x):
        h = rms_norm(x, self.ffn_norm, self.eps)
        return x + ffn(h, self.ffn_gate, self.ffn_up, self.ffn_down, self.activation)


class MoeFFN(nn.Module):
    def __init__(self, m, router, layer):
        super().__init__()
        C, E, Fe = m["n_embd"], m["n_expert"], m["n_ff_exp"]
        self.E, self.K, self.layer, self.r = E, m["n_expert_used"], layer, router
        self.eps, self.activation = m["norm_eps"], m["activation"]
        self.ffn_norm = nn.Parameter(torch.ones(C))
        self.ffn_gate_inp = nn.Parameter(torch.empty(E, C))
        # noisy gating: W_noise; aux-loss-free balancing: the selection bias, state without gradient
        self.ffn_gate_inp_noise = nn.Parameter(torch.empty(E, C)) if router["noisy_gating"] else None
        self.ffn_gate_bias = torch.zeros(E) if router["bias_balance"] else None
        if self.activation == "swiglu":
            self.ffn_gate_exps = nn.Parameter(torch.empty(E, Fe, C))
        else:
            self.ffn_gate_exps = None
        self.ffn_up_exps = nn.Parameter(torch.empty(E, Fe, C))
        self.ffn_down_exps = nn.Parameter(torch.empty(E, C, Fe))
        # shared expert: a dense FFN beside the routed ones, optionally gated per token
        Fs = m["n_ff_shexp"]
        self.shexp = Fs > 0
        self.ffn_gate_inp_shexp = nn.Parameter(torch.empty(1, C)) if self.shexp and m["shexp_gate"] else None
        self.ffn_gate_shexp = nn.Parameter(torch.empty(Fs, C)) if self.shexp and self.activation == "swiglu" else None
        self.ffn_up_shexp = nn.Parameter(torch.empty(Fs, C)) if self.shexp else None
        self.ffn_down_shexp = nn.Parameter(torch.empty(C, Fs)) if self.shexp else None
        # the mode of the next forwards (MoeTransformer.set_mode): training or not, the noise key
        self.train_mode, self.seed, self.step, self.micro = False, 0, 0, 0
        self.step_load = torch.zeros(E, dtype=torch.int64)  # training loads since the bias update
        # record of the last forward, for the dump and the tie checks
        self.last_logits = None  # (N, E) router logits
        self.last_sel = None     # (N, E) selection scores (noise, probabilities, bias applied)
        self.last_sel_nobias = None  # (N, E) the same before the bias
        self.last_eps = None     # (N, E) the noise draw, None without noise
        self.last_cap = 0        # the capacity in force (0 = none)
        self.last_load = None    # (E) slots per expert after capacity
        self.last_rerouted = self.last_dropped = 0
        self.balance_loss = self.z_loss = torch.zeros(())

    def forward(self, x):
        B, T, C = x.shape
        N, E, K, r = B * T, self.E, self.K, self.r
        h = rms_norm(x, self.ffn_norm, self.eps).reshape(N, C)
        logits = h @ self.ffn_gate_inp.t()                       # (N, E)
        self.last_logits = logits.detach()

        # noisy top-K gating: H = logits + eps * softplus(h . W_noise^T), training only unless
        # noise_at_eval; at evaluation the noise key's step is -1
        scores = logits
        self.last_eps = None
        if r["noisy_gating"] and (self.train_mode or r["noise_at_eval"]):
            eps = noisy_gating_eps(N, E, self.seed, self.step if self.train_mode else -1, self.layer, self.micro)
            scores = logits + eps * F.softplus(h @ self.ffn_gate_inp_noise.t())
            self.last_eps = eps

        # selection is not differentiable: on the scores or their softmax, plus the balancing bias
        sel = scores.detach()
        if r["topk_on"] == "probs":
            sel = torch.softmax(sel, dim=-1)
        self.last_sel_nobias = sel
        if self.ffn_gate_bias is not None:
            sel = sel + self.ffn_gate_bias
        self.last_sel = sel
        cap = expert_capacity(r["capacity_factor"] if self.train_mode else r["eval_capacity_factor"], N, E, K)
        chosen, self.last_rerouted, self.last_dropped = assign_experts(sel, K, cap, r["overflow"])
        self.last_cap = cap if r["overflow"] != "none" else 0
        served = chosen >= 0                                      # (N, K)
        load = torch.bincount(chosen[served], minlength=E)        # (E)
        self.last_load = load
        if self.train_mode and self.ffn_gate_bias is not None:
            self.step_load += load

        # combine weights: softmax over the scores (no bias) of the experts that serve the token;
        # a dropped slot has weight 0, a token with every slot dropped gets nothing
        s = scores.gather(1, chosen.clamp(min=0))
        s = s.masked_fill(~served, float("-inf"))
        s = torch.where(served.any(dim=1, keepdim=True), s, torch.zeros_like(s))
        weights = torch.softmax(s, dim=-1) * served               # (N, K)
        if not r["norm_topk"]:
            # Hugging Face norm_topk_prob = false: the full softmax's probabilities of the chosen
            weights = torch.softmax(scores, dim=-1).gather(1, chosen.clamp(min=0)) * served

        # auxiliary losses on the clean logits: Switch (f from the final loads over N*K) and z
        self.balance_loss = self.z_loss = torch.zeros(())
        if r["balance_loss"] > 0:
            f = load.to(torch.float32) / (N * K)
            P = torch.softmax(logits, dim=-1).mean(dim=0)
            self.balance_loss = r["balance_loss"] * E * (f * P).sum()
        if r["z_loss"] > 0:
            self.z_loss = r["z_loss"] * torch.logsumexp(logits, dim=-1).pow(2).mean()

        out = torch.zeros_like(h)
        for e in range(E):
            tok, slot = torch.nonzero(chosen == e, as_tuple=True)
            if tok.numel() == 0:
                continue
            gate = self.ffn_gate_exps[e] if self.ffn_gate_exps is not None else None
            ye = ffn(h[tok], gate, self.ffn_up_exps[e], self.ffn_down_exps[e], self.activation)
            w = r["routed_scale"] * weights[tok, slot, None]       # combine = routed_scale * sum_k w_k ye_k
            out = out.index_add(0, tok, (w * ye).to(out.dtype))   # .to: bf16 under autocast
        if self.shexp:
            sh = ffn(h, self.ffn_gate_shexp, self.ffn_up_shexp, self.ffn_down_shexp, self.activation)
            if self.ffn_gate_inp_shexp is not None:
                sh = torch.sigmoid(h @ self.ffn_gate_inp_shexp.t()) * sh  # (N, 1) * (N, C)
            out = out + sh.to(out.dtype)
        return x + out.view(B, T, C)

    def update_balance_bias(self):
        """Aux-loss-free balancing, after an optimizer step: b_i += rate * sign(mean load - load_i)
        with the loads summed since the last update; in double, rounded to float32."""
        if self.ffn_gate_bias is None:
            return
        load = self.step_load
        sign = torch.sign(load.sum() - self.E * load).to(torch.float64)
        self.ffn_gate_bias = (self.ffn_gate_bias.to(torch.float64) + self.r["bias_rate"] * sign).float()
        self.step_load = torch.zeros_like(load)


def top_k_lower_index(scores, K):
    """Indices of the K largest scores per row, best first, ties to the lower index (as
    ops::router_topk): a stable sort on the negated scores."""
    return torch.sort(-scores, dim=-1, stable=True).indices[:, :K]


class MoeTransformer(nn.Module):
    """The engine's decoder-only Transformer, built from a moe JSON config (dict)."""

    def __init__(self, cfg):
        super().__init__()
        m = model_section(cfg)
        self.m, self.router = m, router_section(cfg)
        V, C = m["vocab_size"], m["n_embd"]
        self.tok_embd = nn.Parameter(torch.empty(V, C))
        self.attn = nn.ModuleList(Attention(m) for _ in range(m["n_layer"]))
        self.ffn = nn.ModuleList(MoeFFN(m, self.router, l) if kind == "moe" else DenseFFN(m)
                                 for l, kind in enumerate(m["ffn"]))
        self.output_norm = nn.Parameter(torch.ones(C))
        self.output = None if m["tie_embeddings"] else nn.Parameter(torch.empty(V, C))

    def named_tensors(self):
        """(engine name, tensor) in the engine's order (src/model/params.cc): the parameters and
        the balancing bias (state, requires_grad False; not for the optimizer)."""
        out = [("tok_embd", self.tok_embd)]
        for l, (a, f) in enumerate(zip(self.attn, self.ffn)):
            b = f"blk.{l}."
            out += [(b + "attn_norm", a.attn_norm), (b + "attn_q", a.attn_q), (b + "attn_k", a.attn_k),
                    (b + "attn_v", a.attn_v), (b + "attn_output", a.attn_output)]
            if a.bias_qkv:
                out += [(b + "attn_q.bias", a.attn_q_bias), (b + "attn_k.bias", a.attn_k_bias),
                        (b + "attn_v.bias", a.attn_v_bias)]
            if a.bias_o:
                out.append((b + "attn_output.bias", a.attn_output_bias))
            if a.qk_norm:
                out += [(b + "attn_q_norm", a.attn_q_norm), (b + "attn_k_norm", a.attn_k_norm)]
            out.append((b + "ffn_norm", f.ffn_norm))
            if isinstance(f, MoeFFN):
                out.append((b + "ffn_gate_inp", f.ffn_gate_inp))
                if f.ffn_gate_inp_noise is not None:
                    out.append((b + "ffn_gate_inp_noise", f.ffn_gate_inp_noise))
                if f.ffn_gate_bias is not None:
                    out.append((b + "ffn_gate_bias", f.ffn_gate_bias))
                if f.ffn_gate_exps is not None:
                    out.append((b + "ffn_gate_exps", f.ffn_gate_exps))
                out += [(b + "ffn_up_exps", f.ffn_up_exps), (b + "ffn_down_exps", f.ffn_down_exps)]
                if f.shexp:
                    if f.ffn_gate_inp_shexp is not None:
                        out.append((b + "ffn_gate_inp_shexp", f.ffn_gate_inp_shexp))
                    if f.ffn_gate_shexp is not None:
                        out.append((b + "ffn_gate_shexp", f.ffn_gate_shexp))
                    out += [(b + "ffn_up_shexp", f.ffn_up_shexp), (b + "ffn_down_shexp", f.ffn_down_shexp)]
            else:
                if f.ffn_gate is not None:
                    out.append((b + "ffn_gate", f.ffn_gate))
                out += [(b + "ffn_up", f.ffn_up), (b + "ffn_down", f.ffn_down)]
        out.append(("output_norm", self.output_norm))
        if self.output is not None:
            out.append(("output", self.output))
        return out

    def forward(self, tokens, targets=None):
        """tokens (B, T) -> logits (B*T, V), and the mean cross-entropy when targets are given."""
        B, T = tokens.shape
        m = self.m
        cos, sin = rope_table(T, m.get("head_dim", 0) or m["n_embd"] // m["n_head"], m["rope_theta"])
        x = self.tok_embd[tokens]                                # (B, T, C)
        for attn, ffn_block in zip(self.attn, self.ffn):
            x = attn(x, cos, sin)
            x = ffn_block(x)
        x = rms_norm(x, self.output_norm, m["norm_eps"])
        head = self.tok_embd if self.output is None else self.output
        logits = x.reshape(B * T, -1) @ head.t()                 # (N, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits, targets.reshape(-1).long())

    def parameters_list(self):
        """The trainable tensors (what the optimizer and the gradient clipping see)."""
        return [p for _, p in self.named_tensors() if p.requires_grad]

    def moe_layers(self):
        """{layer index: MoeFFN}"""
        return {l: f for l, f in enumerate(self.ffn) if isinstance(f, MoeFFN)}

    def set_mode(self, train, seed=0, step=0, micro=0):
        """As Model::set_mode: training (router noise keyed by (seed, step, layer, micro), the
        training capacity factor, loads counted for the balancing bias) or evaluation."""
        for f in self.moe_layers().values():
            f.train_mode, f.seed, f.step, f.micro = train, seed, step, micro

    def aux_losses(self):
        """(Switch loss, z-loss) of the last forward, summed over the MoE layers (coefficients
        applied); tensors with autograd history."""
        bal = sum((f.balance_loss for f in self.moe_layers().values()), torch.zeros(()))
        z = sum((f.z_loss for f in self.moe_layers().values()), torch.zeros(()))
        return bal, z

    def update_balance_bias(self):
        """Aux-loss-free balancing after an optimizer step (Model::update_balance_bias)."""
        for f in self.moe_layers().values():
            f.update_balance_bias()

    def router_logits(self):
        """Router logits (N, E) of each MoE layer in the last forward, by layer index."""
        return {l: f.last_logits for l, f in self.moe_layers().items()}


# ---------------------------------------------------------------------------------------------
# Training: AdamW with (decay, no decay) groups, global-norm clipping, warm-up + cosine schedule


def lr_at(step, total, warmup, lr, min_lr):
    """Learning rate at 0-based `step` (src/train/optim.cc lr_at)."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model, hp):
    """torch.optim.AdamW; weight decay on matrices, none on 1-D tensors (the norms)."""
    params = model.parameters_list()
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": hp["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])


def train_step(model, opt, tokens, targets, step, hp, seed=0):
    """One optimizer step at 0-based `step`, as src/train/trainer.cc with one micro-batch: a
    training forward (router noise keyed by (seed, step, layer, 0)), loss = LM + Switch + z,
    backward, clipping, AdamW, then the balancing-bias update. Returns (loss before the update,
    grad norm)."""
    opt.zero_grad(set_to_none=False)
    model.set_mode(True, seed, step, 0)
    _, lm = model(tokens, targets)
    bal, z = model.aux_losses()
    loss = lm + bal + z
    loss.backward()
    params = model.parameters_list()
    gnorm = torch.nn.utils.clip_grad_norm_(params, hp["grad_clip"]) if hp["grad_clip"] > 0 else None
    lr = lr_at(step, hp["steps"], hp["warmup_steps"], hp["lr"], hp["min_lr"])
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    model.update_balance_bias()
    return loss.item(), (None if gnorm is None else float(gnorm))


if __name__ == "__main__":
    rng_selfcheck()
    print("model.py: the moe::Rng / noisy_gating_eps port matches the engine's values")
