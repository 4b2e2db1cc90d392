#!/usr/bin/env python3
"""Scale-out projection of moe's data-parallel and expert-parallel training step (issue #23).

A model of one training step on W nodes, from a config's shapes (`moe params --json` and the config's
"model" section), a measured per-node training rate and a stated network (latency alpha per message,
injection bandwidth per node, full bisection). No overlap of communication with compute is assumed
for the "moe today" rows, perfect overlap for the "overlap" column. It prints a table per network.

  bench/ep_projection.py --config configs/bench-moe.json [--moe build/moe] [--nodes 8,16,32,64]
      [--gbps 25,100,400] [--alpha-us 5] [--node-gflops 286] [--tokens-per-node 2048] [--act-bytes 4]

Per node and step (T tokens, K experts per token, C model width, L MoE layers, P expert-parallel degree):
  compute   = T * training_flops_per_token / node_flops
  DP        : all-reduce of every gradient (fp32) over W: 2 (W-1)/W * 4 N_total / B + 2 (W-1) alpha
  EP (P = E): 4 all-to-alls per MoE layer (dispatch and combine, forward and backward), each sending
              T K C act_bytes (P-1)/P bytes: (P-1) alpha + bytes / B; replicated gradients all-reduced
              over W, expert gradients over the W/P ranks holding the same experts (N_exp / P each)
  EP as built today: the same plus an all-gather of the expert gradients to every rank (moe keeps every
              expert and its AdamW state on every rank: src/train/expert_parallel.h)
Memory per node (fp32 weights, gradient, AdamW m and v: 16 bytes a parameter): DP 16 N_total; EP
sharded 16 (N_rep + N_exp / P); as built 16 N_total.
"""
import argparse
import json
import os
import subprocess
import sys


def params(moe, config):
    out = subprocess.run([moe, "params", "--config", config, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--moe", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "moe"))
    ap.add_argument("--nodes", default="8,16,32,64")
    ap.add_argument("--gbps", default="25,100,400")
    ap.add_argument("--alpha-us", type=float, default=5.0, help="latency per message (us)")
    ap.add_argument("--node-gflops", type=float, default=286.0,
                    help="sustained training GFLOP/s of one node (default: bench-moe fp32 on the 2-core Xeon, docs/performance.md)")
    ap.add_argument("--tokens-per-node", type=int, default=0, help="tokens per node and step (default: the config's batch_size * block_size)")
    ap.add_argument("--act-bytes", type=int, default=4, help="bytes per activation in the all-to-all (4 fp32, 2 bf16)")
    a = ap.parse_args()

    with open(a.config) as f:
        cfg = json.load(f)
    m, tr = cfg["model"], cfg.get("train", {})
    p = params(a.moe, a.config)
    L, C = m["n_layer"], m["n_embd"]
    ffn = m.get("ffn", "moe")
    n_moe = sum(1 for x in ffn if x == "moe") if isinstance(ffn, list) else (L if ffn == "moe" else 0)
    E, K, F = m.get("n_expert", 1), m.get("n_expert_used", 1), m.get("n_ff_exp", m.get("n_ff", 4 * C))
    mats = 3 if m.get("activation", "swiglu") == "swiglu" else 2
    n_total = p["total"]
    n_exp = n_moe * E * mats * C * F
    n_rep = n_total - n_exp
    T = a.tokens_per_node or tr.get("batch_size", 8) * tr.get("block_size", m.get("n_ctx", 128))
    flops = p["training_flops_per_token"]
    alpha = a.alpha_us * 1e-6
    P = E
    print(f"config {a.config}: N_total {n_total / 1e9:.3f} B (replicated {n_rep / 1e9:.3f} B, experts {n_exp / 1e9:.3f} B), "
          f"{n_moe} MoE layers, E {E}, K {K}, C {C}; T = {T} tokens per node and step; "
          f"{flops / 1e9:.2f} GFLOP per token (training); node {a.node_gflops:.0f} GFLOP/s; alpha {a.alpha_us} us; "
          f"all-to-all activations {a.act_bytes} bytes")
    compute = T * flops / (a.node_gflops * 1e9)
    print(f"compute per step {compute * 1e3:.1f} ms; memory per node: DP / EP as built {16 * n_total / 2**30:.1f} GiB, "
          f"EP sharded (P = {P}) {16 * (n_rep + n_exp / P) / 2**30:.1f} GiB")

    def allreduce(nbytes, w, bw):
        return 0.0 if w <= 1 else 2 * (w - 1) / w * nbytes / bw + 2 * (w - 1) * alpha

    for g in [float(x) for x in a.gbps.split(",")]:
        bw = g * 1e9 / 8
        print(f"\n{g:g} Gb/s per node")
        print("| nodes | scheme | comm ms | step ms | efficiency | with overlap | tokens/s (all nodes) |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for w in [int(x) for x in a.nodes.split(",")]:
            rows = []
            rows.append(("DP", allreduce(4 * n_total, w, bw)))
            if w % P == 0 and n_moe:
                a2a_bytes = T * K * C * a.act_bytes * (P - 1) / P
                a2a = 4 * n_moe * ((P - 1) * alpha + a2a_bytes / bw)
                ep = a2a + allreduce(4 * n_rep, w, bw) + allreduce(4 * n_exp / P, w // P, bw)
                gather = (w - 1) / w * 4 * n_exp / bw + (w - 1) * alpha
                rows.append((f"EP {P} x DP {w // P}, experts sharded", ep))
                rows.append((f"EP {P} x DP {w // P}, as built (all-gather)", ep + gather))
            for name, comm in rows:
                step = compute + comm
                print(f"| {w} | {name} | {comm * 1e3:.1f} | {step * 1e3:.1f} | {compute / step:.2f} | "
                      f"{compute / max(compute, comm):.2f} | {w * T / step:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
