#!/usr/bin/env bash
# moe vs llama.cpp on the same GGUF file, same thread count: decode and 512-token prefill tokens/s.
#
#   bench/vs_llamacpp.sh [LLAMA_BENCH] [--threads "1 2"] [--types "f32 f16 bf16 q8_0 q4_0 q4_k q6_k"]
#                        [--rounds R] [--dir DIR] [--gen N]
#
# LLAMA_BENCH: llama.cpp's llama-bench (the argument, else $LLAMA_BENCH). Build it outside this
# repository, CPU only, e.g. from the llama.cpp sources vendored in PyPI's llama-cpp-python sdist:
#   cmake -S llama.cpp -B /work/llamacpp-build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
#         -DLLAMA_BUILD_TOOLS=ON && cmake --build /work/llamacpp-build --target llama-bench -j2
# Files: random weights of configs/bench-infer-moe.json's shape (8 layers, C 1024, 8 experts of width
# 1024, top-2, vocab 8192) as a Mixtral (scripts/gen_random_hf_model.py --shape bench-infer-moe, numpy
# from scripts/oracle_venv.sh), written by `moe export --format gguf --type T` (architecture `llama`,
# no tokenizer: tokenizer.ggml.model "none"), kept in DIR (default /tmp/moe_vs_llamacpp) for reruns.
# Per thread count and type, R rounds (default 2) alternate:
#   llama-bench -m FILE -t T -p 512 -n N -o json      (N = --gen, default 64; avg_ts of its 5 repetitions)
#   moe bench --model FILE --mode decode  --threads T --json   (64 steps after 16 context tokens, >= 1 s)
#   moe bench --model FILE --mode prefill --threads T --json   (512 tokens, best of 3)
# and the table gives the best round of each (the host is shared: best of R is the least disturbed).
# LLAMA_BENCH_ARGS: extra llama-bench options, e.g. "--repack 0": on an AMX host a GGML_NATIVE build
# with GCC 12 (llama-cpp-python 0.3.36's sources) died with SIGILL on its first AMX tile load
# (tileloadd in tinygemm_kernel_amx, Q8_0 prefill) in s17 -- the symptom moe's amx_gemm.cc met when
# GCC 12 dropped the stores to a local tile config, cause in llama.cpp not confirmed -- and
# --repack 0 keeps llama.cpp on its AVX-512 VNNI kernels.
# Ratio = moe / llama.cpp (> 1: moe faster). The host and its ISA are printed first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
llama="${LLAMA_BENCH:-}"
threads="1 2"
types="f32 f16 bf16 q8_0 q4_0 q4_k q6_k"
rounds=2
dir=/tmp/moe_vs_llamacpp
gen=64
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --types) types="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --gen) gen="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "vs_llamacpp: unknown option $1" >&2; exit 2 ;;
    *) llama="$1"; shift ;;
  esac
done
moe="$root/build/moe"
stream="$root/build/bench/stream"
[ -n "$llama" ] || { echo "vs_llamacpp: give llama-bench's path (argument or LLAMA_BENCH)" >&2; exit 2; }
[ -x "$llama" ] || { echo "vs_llamacpp: $llama is not an executable" >&2; exit 2; }
for exe in "$moe" "$stream"; do
  [ -x "$exe" ] || { echo "vs_llamacpp: $exe not found: build first (scripts/build.sh)" >&2; exit 2; }
done
mkdir -p "$dir"

python3 - "$stream" <<'EOF'
import json, subprocess, sys
h = json.loads(subprocess.run([sys.argv[1], "--threads", "1", "--json"], check=True, stdout=subprocess.PIPE, text=True).stdout)
print(f"host: {h.get('host', '?')}")
EOF

hf="$dir/hf"
if [ ! -f "$hf/model.safetensors" ]; then
  py="$("$root/scripts/oracle_venv.sh")"
  "$py" "$root/scripts/gen_random_hf_model.py" --shape bench-infer-moe --layers 8 --out "$hf"
fi
for t in $types; do
  f="$dir/bench-infer-moe-$t.gguf"
  [ -f "$f" ] || "$moe" export --model "$hf" --format gguf --type "$t" --out "$f" >/dev/null
done

res="$dir/results.jsonl"
: > "$res"
for th in $threads; do
  for t in $types; do
    f="$dir/bench-infer-moe-$t.gguf"
    for r in $(seq 1 "$rounds"); do
      lb="$("$llama" -m "$f" -t "$th" -p 512 -n "$gen" ${LLAMA_BENCH_ARGS:-} -o json 2>/dev/null)" || {
        echo "vs_llamacpp: llama-bench failed on $f:" >&2; "$llama" -m "$f" -t "$th" -p 512 -n "$gen" ${LLAMA_BENCH_ARGS:-} -r 1 >&2 || true; exit 1; }
      md="$("$moe" bench --model "$f" --mode decode --threads "$th" --json | tail -1)"
      mp="$("$moe" bench --model "$f" --mode prefill --prompt 512 --threads "$th" --json | tail -1)"
      python3 - "$t" "$th" "$lb" "$md" "$mp" >>"$res" <<'EOF'
import json, sys
t, th, lb, md, mp = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
pp = [x["avg_ts"] for x in lb if x["n_prompt"] > 0 and x["n_gen"] == 0]
tg = [x["avg_ts"] for x in lb if x["n_gen"] > 0 and x["n_prompt"] == 0]
print(json.dumps({"type": t, "threads": th, "llama_pp": pp[0], "llama_tg": tg[0], "moe_pp": mp["tokens_per_sec"],
                  "moe_tg": md["tokens_per_sec"], "moe_dtype": md.get("dtype", "?")}))
EOF
      tail -1 "$res" | python3 -c 'import json, sys
r = json.loads(sys.stdin.read())
print("  %-5s t=%d: decode moe %.1f / llama.cpp %.1f, prefill moe %.1f / llama.cpp %.1f"
      % (r["type"], r["threads"], r["moe_tg"], r["llama_tg"], r["moe_pp"], r["llama_pp"]))' >&2
    done
  done
done

python3 - "$res" "$gen" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
best = {}
for r in rows:
    k = (r["threads"], r["type"])
    b = best.setdefault(k, dict(r))
    for f in ("llama_pp", "llama_tg", "moe_pp", "moe_tg"):
        b[f] = max(b[f], r[f])
print(f"| threads | GGUF type | decode tok/s moe | llama.cpp (tg{sys.argv[2]}) | moe / llama.cpp | prefill 512 tok/s moe | llama.cpp (pp512) | moe / llama.cpp |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
worst = 1e9
for (th, t), b in best.items():
    rd, rp = b["moe_tg"] / b["llama_tg"], b["moe_pp"] / b["llama_pp"]
    worst = min(worst, rd, rp)
    print(f"| {th} | {t} | {b['moe_tg']:.1f} | {b['llama_tg']:.1f} | {rd:.2f} | {b['moe_pp']:.1f} | {b['llama_pp']:.1f} | {rp:.2f} |")
print(f"min_ratio={worst:.3f}")
EOF
