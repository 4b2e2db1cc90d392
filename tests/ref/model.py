"""PyTorch reference of moe's Transformer (src/model, src/layers, src/ops), for parity tests.

Written for readability, not speed: every operation follows the semantics of the C++ engine,

  * RMSNorm: x / sqrt(mean(x^2) + eps) * weight (eps inside the square root)
  * RoPE, NEOX / Hugging Face style: the pairs are (i, i + D/2), angle t * theta^(-2i/D); the
    cos/sin table is computed in double and rounded to float32, as src/ops/rope.h
  * causal attention with grouped-query heads: query head h reads kv head h // (H / Hkv)
  * FFN: SwiGLU down(silu(gate x) * up x) or ReLU down(relu(up x))
  * router: logits = x . W_r^T; top-K on the logits (ties to the lower index); the combine
    weights are a softmax over the K chosen logits; output = sum_k w_k expert_k(x)
  * loss: mean cross-entropy over all B*T tokens

Parameters carry the engine's names (src/model/params.cc), with '.' replaced by '_' only inside
torch's module tree; `named_tensors()` gives them back under the engine's names.
"""

import math

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
    for k in ("n_ff", "n_expert", "n_expert_used", "n_ff_exp"):
        m.setdefault(k, 0)
    ffn = m.get("ffn", "moe" if m["n_expert"] > 0 else "dense")
    if isinstance(ffn, str):
        ffn = [ffn] * m["n_layer"]
    assert len(ffn) == m["n_layer"] and all(f in ("moe", "dense") for f in ffn), ffn
    m["ffn"] = list(ffn)
    assert m["activation"] in ("swiglu", "relu"), m["activation"]
    assert m.get("vocab_size", 0) > 0, "the reference needs an explicit model.vocab_size"
    return m


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
        D = C // H
        self.H, self.Hkv, self.D, self.eps = H, Hkv, D, m["norm_eps"]
        self.attn_norm = nn.Parameter(torch.ones(C))
        self.attn_q = nn.Parameter(torch.empty(H * D, C))
        self.attn_k = nn.Parameter(torch.empty(Hkv * D, C))
        self.attn_v = nn.Parameter(torch.empty(Hkv * D, C))
        self.attn_output = nn.Parameter(torch.empty(C, H * D))

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        H, Hkv, D = self.H, self.Hkv, self.D
        h = rms_norm(x, self.attn_norm, self.eps)
        q = (h @ self.attn_q.t()).view(B, T, H, D)
        k = (h @ self.attn_k.t()).view(B, T, Hkv, D)
        v = (h @ self.attn_v.t()).view(B, T, Hkv, D)
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
        return x + y @ self.attn_output.t()


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
    def __init__(self, m):
        super().__init__()
        C, E, Fe = m["n_embd"], m["n_expert"], m["n_ff_exp"]
        self.E, self.K = E, m["n_expert_used"]
        self.eps, self.activation = m["norm_eps"], m["activation"]
        self.ffn_norm = nn.Parameter(torch.ones(C))
        self.ffn_gate_inp = nn.Parameter(torch.empty(E, C))
        if self.activation == "swiglu":
            self.ffn_gate_exps = nn.Parameter(torch.empty(E, Fe, C))
        else:
            self.ffn_gate_exps = None
        self.ffn_up_exps = nn.Parameter(torch.empty(E, Fe, C))
        self.ffn_down_exps = nn.Parameter(torch.empty(E, C, Fe))
        self.last_logits = None  # (N, E) router logits of the last forward, for tie checks

    def forward(self, x):
        B, T, C = x.shape
        h = rms_norm(x, self.ffn_norm, self.eps).reshape(B * T, C)
        logits = h @ self.ffn_gate_inp.t()                       # (N, E)
        self.last_logits = logits.detach()
        # selection is not differentiable; the router learns through the combine weights
        chosen = top_k_lower_index(logits.detach(), self.K)      # (N, K), best first
        weights = torch.softmax(logits.gather(1, chosen), dim=-1)  # (N, K)
        out = torch.zeros_like(h)
        for e in range(self.E):
            tok, slot = torch.nonzero(chosen == e, as_tuple=True)
            if tok.numel() == 0:
                continue
            gate = self.ffn_gate_exps[e] if self.ffn_gate_exps is not None else None
            ye = ffn(h[tok], gate, self.ffn_up_exps[e], self.ffn_down_exps[e], self.activation)
            out = out.index_add(0, tok, weights[tok, slot, None] * ye)
        return x + out.view(B, T, C)


def top_k_lower_index(scores, K):
    """Indices of the K largest scores per row, best first, ties to the lower index (as
    ops::router_topk): a stable sort on the negated scores."""
    return torch.sort(-scores, dim=-1, stable=True).indices[:, :K]


class MoeTransformer(nn.Module):
    """The engine's decoder-only Transformer, built from a moe JSON config (dict)."""

    def __init__(self, cfg):
        super().__init__()
        m = model_section(cfg)
        self.m = m
        V, C = m["vocab_size"], m["n_embd"]
        self.tok_embd = nn.Parameter(torch.empty(V, C))
        self.attn = nn.ModuleList(Attention(m) for _ in range(m["n_layer"]))
        self.ffn = nn.ModuleList(MoeFFN(m) if kind == "moe" else DenseFFN(m) for kind in m["ffn"])
        self.output_norm = nn.Parameter(torch.ones(C))
        self.output = None if m["tie_embeddings"] else nn.Parameter(torch.empty(V, C))

    def named_tensors(self):
        """(engine name, parameter) in the engine's order (src/model/params.cc)."""
        out = [("tok_embd", self.tok_embd)]
        for l, (a, f) in enumerate(zip(self.attn, self.ffn)):
            b = f"blk.{l}."
            out += [(b + "attn_norm", a.attn_norm), (b + "attn_q", a.attn_q), (b + "attn_k", a.attn_k),
                    (b + "attn_v", a.attn_v), (b + "attn_output", a.attn_output), (b + "ffn_norm", f.ffn_norm)]
            if isinstance(f, MoeFFN):
                out.append((b + "ffn_gate_inp", f.ffn_gate_inp))
                if f.ffn_gate_exps is not None:
                    out.append((b + "ffn_gate_exps", f.ffn_gate_exps))
                out += [(b + "ffn_up_exps", f.ffn_up_exps), (b + "ffn_down_exps", f.ffn_down_exps)]
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
        cos, sin = rope_table(T, m["n_embd"] // m["n_head"], m["rope_theta"])
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

    def router_logits(self):
        """Router logits (N, E) of each MoE layer in the last forward, by layer index."""
        return {l: f.last_logits for l, f in enumerate(self.ffn) if isinstance(f, MoeFFN)}


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
    params = [p for _, p in model.named_tensors()]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": hp["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])


def train_step(model, opt, tokens, targets, step, hp):
    """One optimizer step at 0-based `step`; returns (loss before the update, grad norm)."""
    opt.zero_grad(set_to_none=False)
    _, loss = model(tokens, targets)
    loss.backward()
    params = [p for _, p in model.named_tensors()]
    gnorm = torch.nn.utils.clip_grad_norm_(params, hp["grad_clip"]) if hp["grad_clip"] > 0 else None
    lr = lr_at(step, hp["steps"], hp["warmup_steps"], hp["lr"], hp["min_lr"])
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    return loss.item(), (None if gnorm is None else float(gnorm))
