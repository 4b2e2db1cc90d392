#!/usr/bin/env python3
"""The HTTP path of `moe serve` under load: for each level S, S concurrent streaming completions
(greedy, a prompt of --prompt random token ids each, --tokens generated, ignore_eos), against a
running server. Prints per level the aggregate generated tokens/s (completion tokens of all streams
over the level's wall time), p50/p99 time to first token (request sent -> first token chunk) and the
wall time. Python's standard library only.

  build/moe serve --config configs/bench-infer-moe.json --dtype int8 --init-seed 1 \\
      --parallel 64 --ctx-size 128 --port 8080 &
  python3 bench/serve_http_load.py --url http://127.0.0.1:8080 --streams 1,4,16,64 --tokens 32
"""
import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse
import urllib.request


def stream_one(url, body, out):
    """One streaming completion: out gets (seconds to the first token, completion tokens) or an error."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            out.append(RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}"))
            return
        ttft, tokens = None, 0
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and ttft is None:
                ttft = time.perf_counter() - t0
        out.append((ttft if ttft is not None else float("nan"), tokens))
    except Exception as e:  # noqa: BLE001 - reported with the level
        out.append(e)
    finally:
        conn.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--streams", default="1,4,16,64", help="concurrent streams per level, comma-separated")
    ap.add_argument("--tokens", type=int, default=32, help="tokens generated per stream")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per stream")
    a = ap.parse_args()
    with urllib.request.urlopen(a.url + "/v1/models", timeout=30) as r:
        m = json.loads(r.read())["data"][0]
    vocab = m["meta"]["n_vocab"]
    rng = random.Random()
    print(f"{a.url}: model {m['id']} ({m['meta']['dtype']}, parallel {m['meta']['parallel']}), "
          f"{a.prompt} prompt + {a.tokens} generated tokens per stream")
    warm = []  # one request first: page faults of the weights and buffers stay out of the table
    stream_one(a.url, {"prompt": [1, 2, 3], "max_tokens": 2, "stream": True}, warm)
    print(f"{'streams':>8} {'gen tok/s':>10} {'ttft p50':>9} {'ttft p99':>9} {'wall':>8}")
    for S in [int(x) for x in a.streams.split(",")]:
        out, threads = [], []
        for i in range(S):
            # random ids: no prompt shares a prefix with one the server has cached (prefix reuse)
            body = {"prompt": [rng.randrange(3, vocab) for j in range(a.prompt)], "max_tokens": a.tokens,
                    "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            threads.append(threading.Thread(target=stream_one, args=(a.url, body, out)))
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        errors = [x for x in out if isinstance(x, Exception)]
        if errors:
            raise SystemExit(f"{len(errors)} of {S} streams failed: {errors[0]}")
        ttft = [x[0] for x in out]
        gen = sum(x[1] for x in out)
        print(f"{S:>8} {gen / wall:>10.1f} {pct(ttft, .5):>8.3f}s {pct(ttft, .99):>8.3f}s {wall:>7.1f}s", flush=True)


if __name__ == "__main__":
    main()
