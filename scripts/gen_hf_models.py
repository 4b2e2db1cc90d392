#!/usr/bin/env python3
"""Builds the tiny Hugging Face reference models of tests/data/hf/ (issue #20).

Run with the oracle venv that has torch + transformers (pinned in scripts/requirements-torch.txt):
    $(scripts/oracle_venv.sh --torch) scripts/gen_hf_models.py [OUT_DIR]

For every family moe reads (mixtral, qwen2_moe, qwen3_moe, olmoe, llama, mistral, qwen2, qwen3) a
small random model, float32 and seeded, saved with transformers' own `save_pretrained` (config.json,
generation_config.json, model.safetensors or shards + index), plus

  reference.safetensors   written by the Python `safetensors` package:
      prompt  I64 (64)      the fixed prompt
      tokens  I64 (96)      prompt + the greedy 32-token continuation
      logits  F32 (96, V)   transformers' fp32 logits of one forward over `tokens`
  reference.json          the same ids, the continuation, per-row argmax and a checksum (for eyes)

Extra copies of the Mixtral weights test the file layer only (no reference of their own): a sharded
save (max_shard_size small: >= 2 shards + model.safetensors.index.json) and a save in transformers
5's own fused layout (`save_original_format=False`: `mlp.experts.gate_up_proj` (E, 2F, C)). One MoE
model is saved in bfloat16 for the bf16 path; its `tokens` and `logits` come from fp32 arithmetic over
the bf16 weights (what an engine that widens bf16 to fp32 computes), `logits_bf16` (96, V) from
transformers' bf16 arithmetic over the same tokens.

The greedy continuation does not stop at an end-of-sequence token (generation runs with no eos), so
it always has 32 tokens. Routing is made decisive by a large initializer_range; norm weights and
biases (initialised to 1 and 0) are perturbed so that a loader which drops them is caught.
"""
import json
import os
import shutil
import sys
import zlib

import torch
import transformers
from safetensors.torch import save_file

V, C, L, H, HKV = 256, 64, 2, 4, 2
PROMPT_LEN, NEW_TOKENS = 64, 32

COMMON = dict(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=HKV,
              initializer_range=0.2, bos_token_id=1, eos_token_id=2, max_position_embeddings=256)
MOE = dict(num_experts_per_tok=2)


def models():
    t = transformers
    # name, config class, model class, config kwargs, save options
    return [
        ("mixtral", t.MixtralConfig, t.MixtralForCausalLM,
         dict(intermediate_size=32, num_local_experts=4, **MOE), {}),
        ("qwen2_moe", t.Qwen2MoeConfig, t.Qwen2MoeForCausalLM,
         dict(intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4,
              decoder_sparse_step=2, norm_topk_prob=False, **MOE), {}),
        ("qwen2_moe_norm", t.Qwen2MoeConfig, t.Qwen2MoeForCausalLM,
         dict(intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4,
              mlp_only_layers=[0], norm_topk_prob=True, **MOE), {}),
        ("qwen3_moe", t.Qwen3MoeConfig, t.Qwen3MoeForCausalLM,
         dict(intermediate_size=96, moe_intermediate_size=32, num_experts=4, head_dim=24, norm_topk_prob=True, **MOE),
         {}),
        ("olmoe", t.OlmoeConfig, t.OlmoeForCausalLM,
         dict(intermediate_size=32, num_experts=4, **MOE), {}),
        ("llama", t.LlamaConfig, t.LlamaForCausalLM, dict(intermediate_size=96, tie_word_embeddings=False), {}),
        ("llama_tied", t.LlamaConfig, t.LlamaForCausalLM, dict(intermediate_size=96, tie_word_embeddings=True), {}),
        ("mistral", t.MistralConfig, t.MistralForCausalLM, dict(intermediate_size=96, sliding_window=None), {}),
        ("qwen2", t.Qwen2Config, t.Qwen2ForCausalLM, dict(intermediate_size=96), {}),
        ("qwen3", t.Qwen3Config, t.Qwen3ForCausalLM, dict(intermediate_size=96, head_dim=16, tie_word_embeddings=True),
         {}),
        ("mixtral_bf16", t.MixtralConfig, t.MixtralForCausalLM,
         dict(intermediate_size=32, num_local_experts=4, **MOE), dict(dtype=torch.bfloat16)),
    ]


def perturb(model, seed):
    """Norm weights start at 1 and biases at 0: move them so a loader that skips one is seen."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def prompt_ids(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (1, PROMPT_LEN), generator=g)


def reference(model, prompt):
    gen = transformers.GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None,
                                        pad_token_id=0, bos_token_id=1)
    # generate() fills fields left unset from model.generation_config (eos, repetition_penalty, ...):
    # swap it out so that nothing but plain greedy decoding runs.
    saved, model.generation_config = model.generation_config, gen
    try:
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt))
            assert out.shape[1] == PROMPT_LEN + NEW_TOKENS, out.shape
            logits = model(out).logits[0].float()
    finally:
        model.generation_config = saved
    return out[0], logits


def save_reference(d, name, prompt, tokens, logits, extra=None):
    tensors = {"prompt": prompt.contiguous(), "tokens": tokens.contiguous(), "logits": logits.contiguous()}
    tensors.update(extra or {})
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata={"model": name})
    argmax = logits.argmax(-1).tolist()
    # Greedy decoding with a KV cache and one forward over the whole sequence must agree.
    cont = tokens[PROMPT_LEN:].tolist()
    agree = argmax[PROMPT_LEN - 1:-1] == cont
    ref = {
        "model": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "prompt": prompt.tolist(),
        "greedy": cont,
        "argmax": argmax,
        "argmax_matches_greedy": agree,
        "logits_shape": list(logits.shape),
        "logits_crc32": zlib.crc32(logits.numpy().tobytes()),
        "logits_abs_sum": float(logits.abs().double().sum()),
        "eos_stop": False,
    }
    with open(os.path.join(d, "reference.json"), "w") as f:  # one field a line, lists kept on theirs
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in ref.items()) + "\n}\n")
    return agree


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "hf")
    out_root = os.path.abspath(out_root)
    os.makedirs(out_root, exist_ok=True)
    torch.set_num_threads(1)
    for i, (name, cfg_cls, model_cls, kw, opts) in enumerate(models()):
        seed = 20 + i
        torch.manual_seed(seed)
        cfg = cfg_cls(**COMMON, **kw)
        model = model_cls(cfg).eval()
        perturb(model, seed)
        d = os.path.join(out_root, name)
        shutil.rmtree(d, ignore_errors=True)
        prompt = prompt_ids(seed)[0]
        if name == "mixtral":
            # generation_config.json with every field HfConfig reads (sampling + an eos list)
            model.generation_config = transformers.GenerationConfig(
                bos_token_id=1, eos_token_id=[2, 5], pad_token_id=0, do_sample=True, temperature=0.7, top_p=0.9,
                top_k=40, repetition_penalty=1.1)
        if opts.get("dtype") == torch.bfloat16:
            model = model.to(torch.bfloat16)
            model.save_pretrained(d)
            wide = model_cls.from_pretrained(d, dtype=torch.float32).eval()
            tokens, logits = reference(wide, prompt[None])
            with torch.no_grad():
                logits_bf16 = model(tokens[None]).logits[0].float()
            agree = save_reference(d, name, prompt, tokens, logits, {"logits_bf16": logits_bf16})
        else:
            model.save_pretrained(d)
            tokens, logits = reference(model, prompt[None])
            agree = save_reference(d, name, prompt, tokens, logits)
        print(f"{name}: {sorted(os.listdir(d))} argmax==greedy: {agree}")
        if name == "mixtral":
            ds = os.path.join(out_root, "mixtral_sharded")
            shutil.rmtree(ds, ignore_errors=True)
            model.save_pretrained(ds, max_shard_size="200KB")
            print(f"mixtral_sharded: {sorted(os.listdir(ds))}")
            df = os.path.join(out_root, "mixtral_fused")
            shutil.rmtree(df, ignore_errors=True)
            model.save_pretrained(df, save_original_format=False)
            print(f"mixtral_fused: {sorted(os.listdir(df))}")
    # One file written by the Python safetensors package with every dtype moe reads, for the reader's
    # value checks: tensor `t_<dtype>` = arange(6) reshaped (2, 3) in that type (bool: odd entries).
    sd = os.path.join(out_root, "..", "safetensors")
    os.makedirs(sd, exist_ok=True)
    base = torch.arange(6).reshape(2, 3)
    dt = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}
    tensors = {f"t_{k}": base.to(v) for k, v in dt.items()}
    tensors["t_BOOL"] = (base % 2 == 1)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["scalar"] = torch.tensor(2.5)
    # one metadata key: the reference writer emits a map's keys in random order
    save_file(tensors, os.path.join(sd, "dtypes.safetensors"), metadata={"source": "python safetensors"})
    print("dtypes.safetensors written")


if __name__ == "__main__":
    main()
