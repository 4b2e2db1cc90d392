#!/usr/bin/env python3
"""Writes a Hugging Face model directory of random bf16 weights with a real model's shapes, for the
load-time and decode-bandwidth benchmarks (no hub download; numpy only, any python3 with numpy).

    scripts/gen_random_hf_model.py --shape olmoe-1b-7b --layers 3 --out /tmp/olmoe_cut

Shapes (config.json as the real model's, cut to --layers decoder layers so it fits the machine):
  olmoe-1b-7b     OLMoE-1B-7B-0924: C 2048, 16 heads, E 64, K 8, F 1024, vocab 50304 (805 MB per layer)
  qwen3-30b-a3b   Qwen3-30B-A3B: C 2048, 32 heads / 4 kv, head_dim 128, E 128, K 8, F 768, vocab 151936
                  (1.2 GB per layer)
  mixtral-8x7b    Mixtral-8x7B: C 4096, 32 heads / 8 kv, E 8, K 2, F 14336 (2.8 GB per layer), vocab 32000
  bench-infer-moe configs/bench-infer-moe.json as a Mixtral: C 1024, 16 heads, E 8, K 2, F 1024, vocab 8192
                  (8 layers: --layers 8; 60 MB per layer), for bench/vs_llamacpp.sh

Weights are N(0, 0.02) (norms 1), written in the per-expert layout save_pretrained writes, as
safetensors the Python package would (header padded to 8 bytes, tensors in header order), sharded at
--shard-gb. No tokenizer: the benchmarks feed token ids.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

SHAPES = {
    "olmoe-1b-7b": dict(model_type="olmoe", arch="OlmoeForCausalLM", hidden_size=2048, num_attention_heads=16,
                        num_key_value_heads=16, num_experts=64, num_experts_per_tok=8, intermediate_size=1024,
                        vocab_size=50304, rope_theta=10000.0, rms_norm_eps=1e-5, norm_topk_prob=False,
                        max_position_embeddings=4096, tie_word_embeddings=False, qk_norm="full"),
    "qwen3-30b-a3b": dict(model_type="qwen3_moe", arch="Qwen3MoeForCausalLM", hidden_size=2048, num_attention_heads=32,
                          num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
                          moe_intermediate_size=768, intermediate_size=6144, vocab_size=151936, rope_theta=1e6,
                          rms_norm_eps=1e-6, norm_topk_prob=True, max_position_embeddings=40960,
                          tie_word_embeddings=False, qk_norm="head"),
    "mixtral-8x7b": dict(model_type="mixtral", arch="MixtralForCausalLM", hidden_size=4096, num_attention_heads=32,
                         num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, intermediate_size=14336,
                         vocab_size=32000, rope_theta=1e6, rms_norm_eps=1e-5, max_position_embeddings=32768,
                         tie_word_embeddings=False, qk_norm=None),
    "bench-infer-moe": dict(model_type="mixtral", arch="MixtralForCausalLM", hidden_size=1024, num_attention_heads=16,
                            num_key_value_heads=16, num_local_experts=8, num_experts_per_tok=2, intermediate_size=1024,
                            vocab_size=8192, rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=512,
                            tie_word_embeddings=False, qk_norm=None),
}


def bf16(rng, shape, std=0.02):
    x = (rng.standard_normal(shape, dtype=np.float32) * std).view(np.uint32)
    return ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def tensors(s, layers, rng):
    C, V = s["hidden_size"], s["vocab_size"]
    H, Hkv = s["num_attention_heads"], s["num_key_value_heads"]
    D = s.get("head_dim", C // H)
    E = s.get("num_experts", s.get("num_local_experts"))
    F = s.get("moe_intermediate_size", s["intermediate_size"])
    ones = lambda n: np.full((n,), 0x3F80, np.uint16)  # bf16 1.0
    yield "model.embed_tokens.weight", lambda: bf16(rng, (V, C))
    for l in range(layers):
        p = f"model.layers.{l}."
        yield p + "input_layernorm.weight", lambda: ones(C)
        for n, rows in (("q", H * D), ("k", Hkv * D), ("v", Hkv * D)):
            yield p + f"self_attn.{n}_proj.weight", (lambda r=rows: bf16(rng, (r, C)))
        yield p + "self_attn.o_proj.weight", lambda: bf16(rng, (C, H * D))
        if s["qk_norm"] == "head":
            yield p + "self_attn.q_norm.weight", lambda: ones(D)
            yield p + "self_attn.k_norm.weight", lambda: ones(D)
        elif s["qk_norm"] == "full":
            yield p + "self_attn.q_norm.weight", lambda: ones(H * D)
            yield p + "self_attn.k_norm.weight", lambda: ones(Hkv * D)
        yield p + "post_attention_layernorm.weight", lambda: ones(C)
        if s["model_type"] == "mixtral":
            b, names = p + "block_sparse_moe.", ("w1", "w3", "w2")
        else:
            b, names = p + "mlp.", ("gate_proj", "up_proj", "down_proj")
        yield b + "gate.weight", lambda: bf16(rng, (E, C))
        for e in range(E):
            yield b + f"experts.{e}.{names[0]}.weight", lambda: bf16(rng, (F, C))
            yield b + f"experts.{e}.{names[1]}.weight", lambda: bf16(rng, (F, C))
            yield b + f"experts.{e}.{names[2]}.weight", lambda: bf16(rng, (C, F))
    yield "model.norm.weight", lambda: ones(C)
    yield "lm_head.weight", lambda: bf16(rng, (V, C))


def write_shard(path, items):
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, arr in items:
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
        off += arr.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, arr in items:
            f.write(arr.tobytes())
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="olmoe-1b-7b")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shard-gb", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    s = dict(SHAPES[a.shape])
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    limit = int(a.shard_gb * 1e9)
    shards, cur, size, weight_map, total = [], [], 0, {}, 0
    for name, make in tensors(s, a.layers, rng):
        arr = make()
        if cur and size + arr.nbytes > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, arr))
        size += arr.nbytes
        total += arr.nbytes
        if name.endswith("experts.0.w1.weight") or name.endswith("experts.0.gate_proj.weight"):
            print(f"\r{a.out}: {total / 1e9:.2f} GB", end="", file=sys.stderr, flush=True)
        if size >= limit:
            shards.append(cur)
            cur, size = [], 0
    if cur:
        shards.append(cur)
    n = len(shards)
    for i, items in enumerate(shards):
        fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        write_shard(os.path.join(a.out, fname), items)
        for name, _ in items:
            weight_map[name] = fname
    if n > 1:
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    cfg = {k: v for k, v in s.items() if k not in ("arch", "qk_norm")}
    cfg.update(architectures=[s["arch"]], num_hidden_layers=a.layers, hidden_act="silu", torch_dtype="bfloat16",
               bos_token_id=1, eos_token_id=2, initializer_range=0.02)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print(f"\r{a.out}: {a.shape} cut to {a.layers} layers, {total / 1e9:.2f} GB of bf16 in {n} file(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
