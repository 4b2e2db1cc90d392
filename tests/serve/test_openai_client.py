#!/usr/bin/env python3
"""`moe serve` driven by real clients (PyPI's openai, prometheus-client; pinned in
scripts/requirements-oracle.txt): chat and completions, streaming and not, n=2, logprobs, moe.return_routing, the models
list, /metrics parsed by prometheus_client, a client that leaves mid-stream, concurrent greedy
requests equal to the same requests served alone, and SIGTERM ending the server with status 0.
Usage: test_openai_client.py MOE_BINARY TEST_DATA_DIR. Exits 77 (skipped) without the packages.
Everything is bounded in time; the server is killed on any failure."""
import concurrent.futures
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import model_dir, start_server  # noqa: E402

try:
    import openai
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:  # the venv of scripts/oracle_venv.sh is not there
    print(f"skipped: {e}")
    sys.exit(77)

MOE, DATA = sys.argv[1], sys.argv[2]
KEY = "sk-moe-test"


def start(d):
    return start_server([MOE, "serve", "--model", d, "--port", "0", "--parallel", "4", "--api-key", KEY,
                         "--threads", "2"])


def http(url, path, body=None, key=KEY, raw=None, method=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def expect_error(url, status, path, body=None, key=KEY, raw=None, code=None):
    st, text = http(url, path, body, key, raw)
    assert st == status, (path, body if raw is None else raw[:40], st, text)
    e = json.loads(text)["error"]
    assert isinstance(e["message"], str) and e["message"] and isinstance(e["type"], str) and "code" in e, text
    if code:
        assert e["code"] == code, text
    return e


def main():
    tmp = tempfile.mkdtemp(prefix="moe_serve_test_")
    proc = None
    try:
        d = model_dir(tmp, DATA)
        proc, url = start(d)
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, timeout=30, max_retries=0)

        models = client.models.list()
        ids = [m.id for m in models.data]
        assert ids == ["tiny-qwen3-moe"], ids
        model = ids[0]

        msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
        assert r.object == "chat.completion" and len(r.choices) == 1
        c = r.choices[0]
        assert c.message.role == "assistant" and isinstance(c.message.content, str)
        assert c.finish_reason in ("stop", "length"), c.finish_reason
        assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens >= 1
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

        # streaming gives the same text, the role first, usage last
        stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0, stream=True,
                                                stream_options={"include_usage": True})
        text, roles, finish, usage = "", [], None, None
        for ch in stream:
            if ch.usage is not None:
                usage = ch.usage
                assert ch.choices == []
                continue
            delta = ch.choices[0].delta
            if delta.role:
                roles.append(delta.role)
            text += delta.content or ""
            finish = ch.choices[0].finish_reason or finish
        assert roles == ["assistant"], roles
        assert text == c.message.content, (text, c.message.content)
        assert finish == c.finish_reason and usage.completion_tokens == r.usage.completion_tokens

        # completions, streaming and not
        cr = client.completions.create(model=model, prompt="The capital of France is", max_tokens=10, temperature=0)
        assert cr.object == "text_completion" and cr.choices[0].finish_reason in ("stop", "length")
        st = "".join(ch.choices[0].text for ch in client.completions.create(
            model=model, prompt="The capital of France is", max_tokens=10, temperature=0, stream=True) if ch.choices)
        assert st == cr.choices[0].text, (st, cr.choices[0].text)
        echo = client.completions.create(model=model, prompt="abc", max_tokens=3, temperature=0, echo=True)
        assert echo.choices[0].text.startswith("abc")

        # n = 2 with a seed: two choices, the same again for the same seed
        r2 = client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=1.0, seed=7, n=2)
        assert [x.index for x in r2.choices] == [0, 1]
        r2b = client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=1.0, seed=7, n=2)
        assert [x.message.content for x in r2.choices] == [x.message.content for x in r2b.choices]
        assert r2.usage.completion_tokens >= 2 and r2.choices[0].message.content != r2.choices[1].message.content

        # logprobs, both formats
        lr = client.chat.completions.create(model=model, messages=msgs, max_tokens=5, temperature=0, logprobs=True,
                                            top_logprobs=3)
        content = lr.choices[0].logprobs.content
        assert len(content) >= 1 and all(len(t.top_logprobs) == 3 for t in content)
        for t in content:
            assert t.logprob <= 0 and t.top_logprobs[0].logprob == max(x.logprob for x in t.top_logprobs)
            assert t.logprob == t.top_logprobs[0].logprob  # greedy: the chosen token is the best
        cl = client.completions.create(model=model, prompt="hello", max_tokens=4, temperature=0, logprobs=2)
        lp = cl.choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
        assert all(len(t) <= 2 for t in lp.top_logprobs)

        # moe.return_routing (extra_body): per generated token, (L, K) experts and weights; the
        # stream carries the same routes chunk by chunk, completions too; requests that did not ask
        # get no moe_routing field
        rr = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0,
                                            extra_body={"moe": {"return_routing": True}})
        routes = rr.choices[0].model_extra["moe_routing"]
        assert len(routes) == rr.usage.completion_tokens, (len(routes), rr.usage)
        for t in routes:
            assert len(t["experts"]) == 2 and all(len(x) == 2 for x in t["experts"]), t
            assert all(0 <= e < 4 for x in t["experts"] for e in x) and all(x[0] != x[1] for x in t["experts"]), t
            assert all(abs(sum(w) - 1) < 1e-5 and w[0] >= w[1] for w in t["weights"]), t
        assert all(isinstance(t["token"], int) and isinstance(t["text"], str) for t in routes), routes
        streamed = []
        for ch in client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0, stream=True,
                                                 extra_body={"moe": {"return_routing": True}}):
            streamed += (ch.choices[0].model_extra or {}).get("moe_routing") or []
        assert streamed == routes, (streamed, routes)
        cr = client.completions.create(model=model, prompt="hello", max_tokens=4, temperature=0,
                                       extra_body={"moe": {"return_routing": True}})
        assert len(cr.choices[0].model_extra["moe_routing"]) == cr.usage.completion_tokens
        assert "moe_routing" not in (r.choices[0].model_extra or {})
        expect_error(url, 400, "/v1/chat/completions", {"messages": msgs, "moe": True}, code="invalid_type")
        expect_error(url, 400, "/v1/chat/completions", {"messages": msgs, "moe": {"return_routing": "yes"}},
                     code="invalid_type")

        # concurrency: 12 different greedy requests at once, each equal to itself served alone
        prompts = [f"request {i}: " + "x" * (i * 3) for i in range(12)]

        def one(p, stream):
            if stream:
                return "".join(ch.choices[0].text for ch in client.completions.create(
                    model=model, prompt=p, max_tokens=16, temperature=0, stream=True) if ch.choices)
            return client.completions.create(model=model, prompt=p, max_tokens=16, temperature=0).choices[0].text
        alone = [one(p, False) for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(12) as ex:
            together = list(ex.map(lambda ip: one(ip[1], ip[0] % 2 == 0), enumerate(prompts)))
        assert together == alone, [(a, b) for a, b in zip(alone, together) if a != b]

        # a client that leaves mid-stream is cancelled: nothing stays running
        s = client.completions.create(model=model, prompt="go on", max_tokens=200, temperature=1.0, stream=True)
        next(iter(s))
        s.close()

        # errors: OpenAI's error object, and the server keeps serving
        expect_error(url, 401, "/v1/models", key=None, code="invalid_api_key")
        expect_error(url, 401, "/v1/chat/completions", {"messages": msgs}, key="wrong")
        expect_error(url, 400, "/v1/chat/completions", raw=b"{not json", code="invalid_json")
        expect_error(url, 400, "/v1/chat/completions", raw=b"[1, 2]", code="invalid_json")
        expect_error(url, 400, "/v1/chat/completions", {"messages": "hi"}, code="invalid_type")
        expect_error(url, 400, "/v1/chat/completions", {"messages": msgs, "temperature": "hot"}, code="invalid_type")
        expect_error(url, 400, "/v1/chat/completions", {"messages": msgs, "n": 0})
        expect_error(url, 400, "/v1/chat/completions", {"messages": msgs, "n": 1000})
        expect_error(url, 400, "/v1/completions", {"prompt": "a", "max_tokens": 0})
        expect_error(url, 400, "/v1/completions", {"prompt": "a", "max_tokens": -5})
        expect_error(url, 400, "/v1/completions", {"prompt": "a", "top_p": 7})
        expect_error(url, 400, "/v1/completions", {"prompt": "a", "stop": [1, 2]}, code="invalid_type")
        expect_error(url, 400, "/v1/completions", {"model": "gpt-4", "prompt": "a"}, code="model_not_found")
        e = expect_error(url, 400, "/v1/completions", {"prompt": "y" * 300}, code="context_length_exceeded")
        assert "300" in e["message"] and "256" in e["message"], e
        expect_error(url, 400, "/v1/completions", {"max_tokens": 3}, code="missing_field")
        expect_error(url, 413, "/v1/completions", raw=b"x" * (9 << 20), code="payload_too_large")
        expect_error(url, 404, "/v1/nothing", {"a": 1})
        assert http(url, "/health", key=None)[0] == 200

        # tokenize / detokenize
        st, t = http(url, "/tokenize", {"content": "hi"})
        assert st == 200 and json.loads(t)["tokens"] == [104, 105], t
        st, t = http(url, "/detokenize", {"tokens": [104, 105]})
        assert st == 200 and json.loads(t)["content"] == "hi", t

        # /metrics parses; the stream that left is no longer running
        deadline = time.time() + 20
        while True:
            st, text = http(url, "/metrics")
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            running = fams["moe_requests_running"].samples[0].value
            if running == 0 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert running == 0, "the abandoned stream still runs"
        assert fams["moe_generated_tokens"].samples[0].value > 0  # prometheus_client drops _total
        experts = [s for s in fams["moe_expert_tokens"].samples if s.name == "moe_expert_tokens_total"]
        assert {s.labels["layer"] for s in experts} == {"0", "1"} and len(experts) == 8, experts
        assert sum(s.value for s in experts) > 0
        ttft = fams["moe_time_to_first_token_seconds"]
        assert any(s.name.endswith("_count") and s.value > 0 for s in ttft.samples)

        # SIGTERM: exit status 0 within the grace period, an in-flight stream ends
        s = client.completions.create(model=model, prompt="go on", max_tokens=200, temperature=1.0, stream=True)
        next(iter(s))
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        assert rc == 0, rc
        proc = None
        print("ok: openai client, streaming, n=2, logprobs, routing, concurrency, errors, metrics, SIGTERM")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
