#!/usr/bin/python3
"""Writes a parity dump of the PyTorch reference (tests/ref/model.py) for one moe config.

    make_parity.py CONFIG --out FILE [--seed S] [--batch B] [--ctx T] [--steps N] ...

The dump is one moe tensor file (tests/ref/tensor_file.py) holding
  meta:    config (the JSON as read), hparams, seed, batch, ctx, router margins, torch version
  tensors: every weight under the engine's name; tokens, targets (i32, (B, T));
           logits (f32, (B*T, V)) and loss (f32, (1)) at step 0; grad.<name> for every weight
           (unclipped, step 0); expert_load.blk.<l> (i32, (E)) tokens per expert at step 0;
           loss_trajectory, grad_norm_trajectory (f32, (steps)) of `steps` AdamW steps on the
           same batch (clip_grad_norm, warm-up + cosine schedule).

Routing must not hinge on rounding: when the K-th and (K+1)-th router logits of some token are
within --min-margin of each other (at any step of the trajectory), the seed is advanced.
tests/torch_parity.cc reads the dump and checks the C++ engine against it.
"""

import argparse
import json
import os
import sys

try:
    import numpy as np
    import torch
except ImportError:
    sys.exit(f"make_parity: torch or numpy is not importable from {sys.executable}; install "
             "Debian's python3-torch and python3-numpy (scripts/setup.sh) and run this with /usr/bin/python3")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tensor_file  # noqa: E402
from model import MoeFFN, MoeTransformer, make_optimizer, train_step  # noqa: E402


def init_weights(model, gen, router_std):
    """Random weights large enough that attention, routing and the FFNs are far from trivial:
    N(0, 0.2) matrices, N(0, 0.1) projections into the residual stream, N(0, 0.3) embedding and
    head, N(0, router_std) router, 1 + N(0, 0.1) norm weights."""
    with torch.no_grad():
        for name, p in model.named_tensors():
            if p.dim() == 1:
                std, mean = 0.1, 1.0
            elif name in ("tok_embd", "output"):
                std, mean = 0.3, 0.0
            elif name.endswith("ffn_gate_inp"):
                std, mean = router_std, 0.0
            elif name.endswith(("attn_output", "ffn_down", "ffn_down_exps")):
                std, mean = 0.1, 0.0
            else:
                std, mean = 0.2, 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * std + mean)


def router_margin(model, K):
    """Smallest gap between the K-th and the (K+1)-th largest router logit over all tokens and
    MoE layers of the last forward (inf for a dense model or K = E)."""
    margin = float("inf")
    for logits in model.router_logits().values():
        if logits.shape[1] <= K:
            continue
        s = torch.sort(logits, dim=-1, descending=True).values
        margin = min(margin, float((s[:, K - 1] - s[:, K]).min()))
    return margin


def attempt(cfg, seed, B, T, hp, router_std):
    """Builds the model and batch from `seed`, runs step 0 and the trajectory. Returns
    (tensors, info); info["margin"] is the smallest router margin seen."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MoeTransformer(cfg)
    m = model.m
    init_weights(model, gen, router_std)
    V, K = m["vocab_size"], max(1, m["n_expert_used"])
    data = torch.randint(0, V, (B, T + 1), generator=gen, dtype=torch.int64)
    tokens, targets = data[:, :T].contiguous(), data[:, 1:].contiguous()

    tensors = [(name, p.detach().numpy().copy()) for name, p in model.named_tensors()]
    tensors += [("tokens", tokens.numpy().astype(np.int32)), ("targets", targets.numpy().astype(np.int32))]

    # step 0: logits, loss and the unclipped gradients
    logits, loss = model(tokens, targets)
    loss.backward()
    margin = router_margin(model, K)
    loads = {}
    for l, f in enumerate(model.ffn):
        if isinstance(f, MoeFFN):
            chosen = torch.sort(-f.last_logits, dim=-1, stable=True).indices[:, :K]
            loads[l] = torch.bincount(chosen.reshape(-1), minlength=m["n_expert"])
    tensors += [("logits", logits.detach().numpy().copy()),
                ("loss", np.array([loss.item()], dtype=np.float32))]
    tensors += [("grad." + name, p.grad.numpy().copy()) for name, p in model.named_tensors()]
    tensors += [(f"expert_load.blk.{l}", c.numpy().astype(np.int32)) for l, c in loads.items()]

    # the trajectory, from the same weights, on the same batch
    opt = make_optimizer(model, hp)
    losses, norms = [], []
    for step in range(hp["steps"]):
        lv, gn = train_step(model, opt, tokens, targets, step, hp)
        margin = min(margin, router_margin(model, K))
        losses.append(lv)
        norms.append(gn if gn is not None else 0.0)
    assert losses[0] == loss.item(), "the trajectory must start from the step-0 loss"
    tensors += [("loss_trajectory", np.array(losses, dtype=np.float32)),
                ("grad_norm_trajectory", np.array(norms, dtype=np.float32))]
    return tensors, {"margin": margin, "loss": loss.item(), "losses": losses}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="moe JSON config (needs model.vocab_size)")
    ap.add_argument("--out", required=True, help="tensor file to write")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=None, help="B (default: train.batch_size, else 2)")
    ap.add_argument("--ctx", type=int, default=None, help="T (default: train.block_size, else n_ctx)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--min-lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--router-std", type=float, default=0.5)
    ap.add_argument("--min-margin", type=float, default=1e-3)
    ap.add_argument("--max-tries", type=int, default=100)
    args = ap.parse_args()

    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    with open(args.config) as f:
        cfg = json.load(f)
    train = cfg.get("train", {})
    B = args.batch or train.get("batch_size", 2)
    T = args.ctx or train.get("block_size", 0) or cfg["model"]["n_ctx"]
    assert 1 <= T <= cfg["model"]["n_ctx"], f"T = {T} exceeds n_ctx"
    hp = {"lr": args.lr, "min_lr": args.min_lr, "warmup_steps": args.warmup, "steps": args.steps,
          "weight_decay": args.weight_decay, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
          "grad_clip": args.grad_clip}

    for seed in range(args.seed, args.seed + args.max_tries):
        tensors, info = attempt(cfg, seed, B, T, hp, args.router_std)
        if info["margin"] > args.min_margin:
            break
        print(f"make_parity: seed {seed}: router margin {info['margin']:.2e} <= {args.min_margin}; "
              "trying the next seed", file=sys.stderr)
    else:
        sys.exit(f"make_parity: no seed in [{args.seed}, {args.seed + args.max_tries}) routes "
                 f"with a margin above {args.min_margin}")

    meta = {"config": cfg, "hparams": hp, "seed": seed, "seed_requested": args.seed,
            "batch": B, "ctx": T, "router_margin": info["margin"] if np.isfinite(info["margin"]) else None,
            "torch_version": torch.__version__, "source": "tests/ref/make_parity.py"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tensor_file.write(args.out, tensors, meta)
    print(f"make_parity: {args.config} seed {seed} B={B} T={T}: loss {info['loss']:.6f} -> "
          f"{info['losses'][-1]:.6f} after {hp['steps']} steps, router margin {info['margin']:.3g}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
