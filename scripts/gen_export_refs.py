#!/usr/bin/env python3
"""transformers' view of `moe export --format hf` (issue #20 item 6): the references of tests/data/export/.

Run with the oracle venv that has torch + transformers (pinned in scripts/requirements-torch.txt),
after building moe:
    $(scripts/oracle_venv.sh --torch) scripts/gen_export_refs.py [--moe build/moe] [--check]

For every tiny moe checkpoint tests/data/export/<name>/checkpoint.bin (written by the C++ test
HfExport.RegenerateModels with MOE_REGEN_EXPORT_MODELS=1) it runs
`moe export --checkpoint <dir> --format hf --out <tmp>`, loads the export with
`AutoModelForCausalLM.from_pretrained(<tmp>, dtype=torch.float32)` (fp32 arithmetic over the stored
values: what moe computes, also for BF16 matrices) and `AutoTokenizer.from_pretrained(<tmp>)`, and
writes <dir>/reference.safetensors (Python safetensors):

    tokens    I64 (48)      seeded random ids < V
    logits    F32 (48, V)   transformers' logits of one forward over `tokens`
    text_ids  I64 (n)       transformers' tokenizer ids of TEXT (add_special_tokens default)
    __metadata__            text, model_type (of the export's config.json), transformers, torch

Every tensor must load (no missing, unexpected or mismatched keys). It also loads each export with the default dtype (config.json's) to see that it loads as written.

--check writes nothing: it compares transformers' logits and ids over fresh exports with the
committed references and with moe's own (`moe logits` on the export), and exits 1 when any logits
differ by 1e-4 or more (largest |difference| of a row over the row's largest |logit|) or any id does.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "tests", "data", "export")
TEXT = "the quick brown fox jumps over the lazy dog.\nhow vexingly quick daft zebras jump!"
T = 48


def rel_err(a, b):
    """largest |a - b| of a row over the row's largest |b|"""
    return float(((a - b).abs().amax(-1) / b.abs().amax(-1)).max())


def moe_logits(moe, model_dir, tokens, tmp):
    out = os.path.join(tmp, "moe_logits.bin")
    ids = ",".join(str(int(t)) for t in tokens)
    subprocess.run([moe, "logits", "--model", model_dir, "--tokens", ids, "--out", out, "--threads", "1"],
                   check=True, stdout=subprocess.DEVNULL)
    with open(out, "rb") as f:
        data = f.read()
    return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(len(tokens), -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe", default=os.path.join(ROOT, "build", "moe"))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = sorted(n for n in os.listdir(DATA) if os.path.exists(os.path.join(DATA, n, "checkpoint.bin")))
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            src = os.path.join(DATA, name)
            out = os.path.join(tmp, name)
            r = subprocess.run([args.moe, "export", "--checkpoint", src, "--format", "hf", "--out", out],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{name}: moe export failed: {r.stderr}")
            cfg = json.load(open(os.path.join(out, "config.json")))
            model, info = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                                           output_loading_info=True)
            model.eval()
            if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
                sys.exit(f"{name}: transformers did not load the export as written: {info}")
            default = transformers.AutoModelForCausalLM.from_pretrained(out)
            tok = transformers.AutoTokenizer.from_pretrained(out)
            V = cfg["vocab_size"]
            g = torch.Generator().manual_seed(1000 + i)
            tokens = torch.randint(0, V, (T,), generator=g)
            with torch.no_grad():
                logits = model(tokens[None]).logits[0].float()
            text_ids = torch.tensor(tok(TEXT)["input_ids"], dtype=torch.int64)
            ours = moe_logits(args.moe, out, tokens, tmp)
            err_moe = rel_err(ours, logits)
            line = (f"{name}: {cfg['model_type']} ({type(model).__name__}, default dtype {default.dtype}), "
                    f"moe vs transformers {err_moe:.2e}")
            ok = err_moe < 1e-4
            if args.check:
                ref_path = os.path.join(src, "reference.safetensors")
                with safe_open(ref_path, "pt") as f:
                    ref_tokens, ref_logits, ref_ids = f.get_tensor("tokens"), f.get_tensor("logits"), f.get_tensor("text_ids")
                    meta = f.metadata()
                same_ids = torch.equal(ref_tokens, tokens) and torch.equal(ref_ids, text_ids)
                err_ref = rel_err(logits, ref_logits)
                line += f", vs committed {err_ref:.2e}, ids {'equal' if same_ids else 'DIFFER'}"
                ok = ok and same_ids and err_ref < 1e-4 and meta.get("model_type") == cfg["model_type"]
            else:
                save_file({"tokens": tokens.contiguous(), "logits": logits.contiguous(), "text_ids": text_ids},
                          os.path.join(src, "reference.safetensors"),
                          metadata={"text": TEXT, "model_type": cfg["model_type"],
                                    "transformers": transformers.__version__, "torch": torch.__version__})
            print(line + ("" if ok else "  <-- FAIL"))
            bad += not ok
    if bad:
        sys.exit(f"{bad} model(s) differ")


if __name__ == "__main__":
    main()
