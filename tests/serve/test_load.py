#!/usr/bin/env python3
"""Load on `moe serve` through PyPI's openai client (issue #22): 64 concurrent clients x 4 requests
each, mixed streaming / non-streaming and chat / completions, greedy, on loopback with the tiny test
model. Every request must succeed and equal the same request served alone; prints p50/p99 time to
first token (streams: to the first content chunk; non-streaming: to the whole reply) and the
wall time. Usage: test_load.py MOE_BINARY TEST_DATA_DIR. Exits 77 (skipped) without the packages.
Bounded: each request 60 s, the whole load 150 s; the server is killed on any failure."""
import concurrent.futures
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import model_dir, start_server  # noqa: E402

try:
    import openai
except ImportError as e:  # the venv of scripts/oracle_venv.sh is not there
    print(f"skipped: {e}")
    sys.exit(77)

MOE, DATA = sys.argv[1], sys.argv[2]
CLIENTS, PER_CLIENT, DISTINCT = 64, 4, 16


def start(d):
    return start_server([MOE, "serve", "--model", d, "--port", "0", "--parallel", "16", "--threads", "2"])


def spec(i):
    """The i-th distinct request: (streaming, chat) from i, its own prompt and length."""
    return {"stream": i % 2 == 0, "chat": (i // 2) % 2 == 0, "text": f"load {i}: " + "z" * (i * 2),
            "max_tokens": 32 + i % 5}


def run(client, model, s):
    """-> (text, finish_reason, seconds to the first token)"""
    t0 = time.perf_counter()
    kw = dict(model=model, max_tokens=s["max_tokens"], temperature=0)
    if s["chat"]:
        msgs = [{"role": "user", "content": s["text"]}]
        if not s["stream"]:
            r = client.chat.completions.create(messages=msgs, **kw)
            return r.choices[0].message.content, r.choices[0].finish_reason, time.perf_counter() - t0
        chunks = client.chat.completions.create(messages=msgs, stream=True, **kw)
        pieces = ((c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks if c.choices)
    else:
        if not s["stream"]:
            r = client.completions.create(prompt=s["text"], **kw)
            return r.choices[0].text, r.choices[0].finish_reason, time.perf_counter() - t0
        chunks = client.completions.create(prompt=s["text"], stream=True, **kw)
        pieces = ((c.choices[0].text, c.choices[0].finish_reason) for c in chunks if c.choices)
    text, finish, ttft = "", None, None
    for piece, fr in pieces:
        if piece and ttft is None:
            ttft = time.perf_counter() - t0
        text += piece or ""
        finish = fr or finish
    return text, finish, ttft if ttft is not None else time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def main():
    tmp = tempfile.mkdtemp(prefix="moe_serve_load_")
    proc = None
    try:
        proc, url = start(model_dir(tmp, DATA))
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=60, max_retries=0)
        model = client.models.list().data[0].id
        alone = [run(client, model, spec(i))[:2] for i in range(DISTINCT)]

        start_together = threading.Barrier(CLIENTS, timeout=60)

        def one_client(c):
            start_together.wait()
            out = []
            for j in range(PER_CLIENT):
                i = (c * PER_CLIENT + j) * 7 % DISTINCT
                text, finish, ttft = run(client, model, spec(i))
                out.append((i, text, finish, ttft))
            return out
        t0 = time.perf_counter()
        failed, results = [], []
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as ex:
            futs = [ex.submit(one_client, c) for c in range(CLIENTS)]
            for f in concurrent.futures.as_completed(futs, timeout=150):
                try:
                    results += f.result()
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    failed.append(repr(e))
        wall = time.perf_counter() - t0
        assert not failed, f"{len(failed)} clients failed: {failed[:3]}"
        assert len(results) == CLIENTS * PER_CLIENT, len(results)
        wrong = [(i, text, alone[i][0]) for i, text, finish, _ in results if (text, finish) != alone[i]]
        assert not wrong, f"{len(wrong)} replies differ from the same request alone, e.g. {wrong[:3]}"
        stream_ttft = [t for i, _, _, t in results if spec(i)["stream"]]
        whole = [t for i, _, _, t in results if not spec(i)["stream"]]
        print(f"{CLIENTS} clients x {PER_CLIENT} requests ({len(results)}, half streaming, half chat) in {wall:.1f} s, "
              f"0 failed, all equal to alone; time to first token: streams p50 {pct(stream_ttft, .5):.3f} s "
              f"p99 {pct(stream_ttft, .99):.3f} s; non-streaming replies p50 {pct(whole, .5):.3f} s "
              f"p99 {pct(whole, .99):.3f} s")
        # everything has left: nothing runs, nothing waits
        with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        running = [ln for ln in text.splitlines() if ln.startswith(("moe_requests_running ", "moe_requests_waiting "))]
        assert running == ["moe_requests_running 0", "moe_requests_waiting 0"], running
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        proc = None
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
