"""Shared by the bench drivers: run `moe train` on a config and read its speed from the JSONL log."""

import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def moe_config(src, dst, steps):
    """A copy of the config that logs every step and evaluates only once, at the end (logging
    and evaluation do not change the training), with the data path made absolute."""
    with open(src) as f:
        cfg = json.load(f)
    tc = cfg.setdefault("train", {})
    tc["log_interval"] = 1
    tc["eval_interval"] = max(1, steps)
    tc["eval_batches"] = 1
    tc["ckpt_interval"] = 0
    data = tc.get("data", "")
    if data and not os.path.isabs(data):
        for base in (os.getcwd(), os.path.dirname(os.path.abspath(src)), ROOT):
            if os.path.exists(os.path.join(base, data)):
                tc["data"] = os.path.join(base, data)
                break
    with open(dst, "w") as f:
        json.dump(cfg, f, indent=2)
    return cfg


def run_moe(moe, cfg_path, cfg, steps, skip, threads, tmp, precision="fp32"):
    log = os.path.join(tmp, "moe.jsonl")
    cmd = [moe, "train", "--config", cfg_path, "--steps", str(steps), "--out", os.path.join(tmp, "ckpt"),
           "--log", log, "--no-sample", "--precision", precision]
    if threads:
        cmd += ["--threads", str(threads)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}")
    vocab = int(re.search(r"vocab (\d+)", p.stdout).group(1))
    n_threads = int(re.search(r"(\d+) threads", p.stdout).group(1))
    # what ran the GEMMs, from the banner's "..., fp32 GEMMs (packed AVX-512 12x32 (calibrated: ...))"
    g = re.search(r"(?:fp32|bf16) GEMMs \((.*?)\)(?:, experts|, resuming|, fine-tuning|$)", p.stdout, re.M)
    tc = cfg["train"]
    B = tc.get("batch_size", 16)
    T = tc.get("block_size", 0) or cfg["model"]["n_ctx"]
    per_step = B * T * tc.get("grad_accum", 1)
    # one entry per step: tokens_per_sec of that step alone
    tokens = seconds = 0.0
    losses, prev, step_tps = [], 0, []
    with open(log) as f:
        for line in f:
            e = json.loads(line)
            if "tokens_per_sec" not in e:
                continue
            losses.append(e["loss"])
            n = (e["step"] - prev) * per_step
            prev = e["step"]
            if e["step"] > skip and e["tokens_per_sec"] > 0:
                tokens += n
                seconds += n / e["tokens_per_sec"]
                step_tps.append(e["tokens_per_sec"])
    if seconds <= 0:
        sys.exit(f"bench: no timed steps in {log} (--steps must exceed --skip)")
    timed = int(round(tokens / per_step))
    return {"threads": n_threads, "tokens_per_sec": tokens / seconds, "sec_per_step": seconds / timed,
            "median_step_tokens_per_sec": statistics.median(step_tps), "first_loss": losses[0], "last_loss": losses[-1], "vocab": vocab,
            "gemm": g.group(1) if g else "?"}
