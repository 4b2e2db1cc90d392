#!/usr/bin/python3
"""Trains the PyTorch reference model (tests/ref/model.py) on a moe config and reports its speed.

    torch_train.py CONFIG [--threads T] [--steps N] [--skip W] [--vocab V] [--data FILE] [--compile]

Same model, batch (train.batch_size x train.block_size x train.grad_accum), AdamW hyper-parameters,
clipping and schedule as `moe train`; batches are random windows of the config's text, tokenized
like moe's char / byte tokenizer (random ids for a bpe config: speed only). Prints one JSON line: tokens_per_sec over the steps after the
first W (warm-up), the thread count, the first and last loss. Used by bench/train_vs_torch.
--compile runs the model's forward through torch.compile (TorchInductor's CPU code; the backward
is compiled with it); the warm-up steps then include the compilation, so give --skip a few steps.
"""

import argparse
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))

try:
    import torch
except ImportError:
    sys.exit(f"torch_train: torch is not importable from {sys.executable}; make the pinned PyPI "
             "torch with bench/torch_venv.sh and run this with the python it prints (or Debian's "
             "python3-torch: /usr/bin/python3)")

from model import MoeTransformer, lr_at, make_optimizer, train_step  # noqa: E402


def tokenize(path, kind):
    """Token ids as moe's tokenizer makes them: 'char' = index in the sorted set of code points,
    'byte' = the UTF-8 bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    if kind == "byte":
        return torch.tensor(list(raw), dtype=torch.int64), 256
    text = raw.decode("utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64), len(chars)


def blas_library():
    """The BLAS torch's matmuls run on: PyPI's torch has MKL and oneDNN linked in (named from
    torch.__config__); Debian's calls libblas.so.3, which is the slow netlib reference unless an
    optimized one, e.g. libopenblas0, is installed."""
    if torch.backends.mkl.is_available():
        cfg = torch.__config__.show()
        mkl = "MKL" + (f" {m.group(1)}" if (m := re.search(r"Math Kernel Library Version (\S+)", cfg)) else "")
        dnn = f", oneDNN {m.group(1)}" if (m := re.search(r"MKL-DNN (v[\d.]+)", cfg)) else ""
        return f"{mkl}{dnn} (linked into torch)"
    torch.ones(64, 64) @ torch.ones(64, 64)
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            name = os.path.basename(path).lower()
            if path.startswith("/") and ("blas" in name or "mkl_rt" in name or "blis" in name):
                libs.add(os.path.realpath(path))
    if not libs:
        return "unknown"
    for lib in sorted(libs):
        if "openblas" in lib or "mkl" in lib or "blis" in lib:
            return lib
    return " ".join(sorted(libs)) + " (netlib reference?)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the timing")
    ap.add_argument("--vocab", type=int, default=0, help="vocab size (default: from the data)")
    ap.add_argument("--data", default=None, help="text file (default: the config's train.data)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: torch.autocast(cpu, bfloat16) around the step (fp32 master weights, as moe)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    args = ap.parse_args()
    if not 0 <= args.skip < args.steps:
        ap.error("--skip must be in [0, --steps)")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.config) as f:
        cfg = json.load(f)
    tc = cfg.get("train", {})
    m = cfg["model"]
    B = tc.get("batch_size", 16)
    T = tc.get("block_size", 0) or m["n_ctx"]
    accum = tc.get("grad_accum", 1)

    data_path = args.data or tc.get("data", "")
    if data_path and not os.path.isabs(data_path) and not os.path.exists(data_path):
        data_path = os.path.join(ROOT, data_path)
    if tc.get("tokenizer", "char") == "bpe":
        # speed only: the reference has no BPE trainer, and which ids a batch holds does not change
        # the work; random ids over the config's vocabulary (moe's default size when it has none)
        vocab = args.vocab or m.get("vocab_size", 0) or 2048
        ids = torch.randint(0, vocab, (1 << 20,), generator=torch.Generator().manual_seed(0))
    elif data_path and os.path.exists(data_path):
        ids, vocab = tokenize(data_path, tc.get("tokenizer", "char"))
        ids = ids[: int(len(ids) * (1 - tc.get("val_fraction", 0.1)))]
    else:
        vocab = args.vocab or m.get("vocab_size", 0) or 256
        ids = torch.randint(0, vocab, (1 << 20,))
    cfg = json.loads(json.dumps(cfg))
    cfg["model"]["vocab_size"] = args.vocab or m.get("vocab_size", 0) or vocab

    model = MoeTransformer(cfg)
    with torch.no_grad():  # moe's init: N(0, 0.02), N(0, 0.02/sqrt(2L)) into the residual, norms 1
        L = cfg["model"]["n_layer"]
        for name, p in model.named_tensors():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                proj = "attn_output" in name or "ffn_down" in name  # as Model::init (shared expert too)
                p.normal_(0.0, 0.02 / (2 * L) ** 0.5 if proj else 0.02)
    lr = tc.get("lr", 1e-3)
    hp = {"lr": lr, "min_lr": tc.get("min_lr", lr * 0.1), "warmup_steps": tc.get("warmup_steps", 100),
          "steps": tc.get("steps", args.steps), "weight_decay": tc.get("weight_decay", 0.1),
          "beta1": tc.get("beta1", 0.9), "beta2": tc.get("beta2", 0.95), "eps": tc.get("adam_eps", 1e-8),
          "grad_clip": tc.get("grad_clip", 1.0)}
    hp["steps"] = args.steps
    opt = make_optimizer(model, hp)
    if args.compile:
        # the module keeps its methods (set_mode, aux_losses, ...); only forward is compiled
        model.forward = torch.compile(model.forward)

    def batch():
        starts = torch.randint(0, len(ids) - T - 1, (B,))
        w = torch.stack([ids[s:s + T + 1] for s in starts.tolist()])
        return w[:, :T], w[:, 1:]

    losses, t_begin = [], None
    for step in range(args.steps):
        if step == args.skip:
            t_begin = time.perf_counter()
        if accum == 1:
            x, y = batch()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                loss, _ = train_step(model, opt, x, y, step, hp)
        else:  # micro-batches: gradients averaged as moe does (backward(1 / accum))
            opt.zero_grad(set_to_none=False)
            loss = 0.0
            for _ in range(accum):
                x, y = batch()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    _, l = model(x, y)
                (l / accum).backward()
                loss += l.item() / accum
            params = [p for _, p in model.named_tensors()]
            if hp["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(params, hp["grad_clip"])
            for g in opt.param_groups:
                g["lr"] = lr_at(step, hp["steps"], hp["warmup_steps"], hp["lr"], hp["min_lr"])
            opt.step()
        losses.append(loss)
    elapsed = time.perf_counter() - t_begin
    timed = args.steps - args.skip
    print(json.dumps({"threads": torch.get_num_threads(), "steps": args.steps, "timed_steps": timed,
                      "tokens_per_sec": timed * B * T * accum / elapsed, "sec_per_step": elapsed / timed,
                      "first_loss": losses[0], "last_loss": losses[-1], "vocab": cfg["model"]["vocab_size"],
                      "precision": args.precision, "compiled": args.compile, "torch": torch.__version__, "blas": blas_library()}))


if __name__ == "__main__":
    main()
