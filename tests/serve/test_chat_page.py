#!/usr/bin/env python3
"""The chat page of `moe serve` (GET /) in a real browser: Debian's chromium, headless, driven
over the DevTools protocol. The server runs the tiny qwen3_moe test model with --api-key; the page
is opened with ?prompt=...&autosend=1 and read when <body data-state> says the reply ended.
Without the key it shows the server's 401 message. With the key (URL fragment): the model name is
shown, the reply arrived as SSE chunks, one per token, and equals the same greedy request made
through the API, the map has one row per generated token and one cell per layer, each cell's top-1
expert the API's, and the legend one chip per expert; a screenshot renders.
Usage: test_chat_page.py MOE_BINARY TEST_DATA_DIR [--screenshot DIR] [--model DIR
[--chat-template FILE]] [--prompt TEXT] [--max-tokens N] [--temperature T --seed S] [--size WxH]
(another model, a seeded reply, a window size: for the picture in docs/). Exits 77
(skipped) without chromium. Every wait is bounded; the server is killed by pid, chromium by its
process group."""
import base64
import html.parser
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import model_dir, start_server  # noqa: E402

KEY = "sk-page-test"


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def start(moe, d, key, extra=()):
    args = [moe, "serve", "--model", d, "--port", "0", "--parallel", "2", "--threads", "2", *extra]
    if key:
        args += ["--api-key", key]
    return start_server(args, timeout=120)


class Browser:
    """Headless chromium driven over the DevTools protocol (a minimal WebSocket client: the standard
    library has none). Runs in its own process group, killed by close(). Every wait is bounded."""

    def __init__(self, exe, profile, size=(1280, 760)):
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--remote-debugging-port=0",
                "--remote-allow-origins=*", f"--window-size={size[0]},{size[1]}", "--user-data-dir=" + profile,
                "about:blank"]
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        self.lines, ws = [], []

        def read():
            for line in self.p.stderr:
                self.lines.append(line)
                if "DevTools listening on " in line and not ws:
                    ws.append(line.split("DevTools listening on ")[1].strip())
        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + 60
        while not ws:
            if time.time() > deadline or self.p.poll() is not None:
                self.close()
                raise SystemExit("chromium did not start:\n" + "".join(self.lines[-30:]))
            time.sleep(0.05)
        hostport = urllib.parse.urlparse(ws[0]).netloc
        target = None
        while target is None and time.time() < deadline:
            with urllib.request.urlopen(f"http://{hostport}/json/list", timeout=10) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            target = pages[0]["webSocketDebuggerUrl"] if pages else None
            time.sleep(0.05)
        if target is None:
            self.close()
            raise SystemExit("chromium has no page target")
        u = urllib.parse.urlparse(target)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            b = self.sock.recv(1)
            if not b:
                raise SystemExit("DevTools closed the connection")
            head += b
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit("DevTools refused the WebSocket: " + head.decode(errors="replace"))
        self.next_id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)

    def _read(self, n):
        out = b""
        while len(out) < n:
            b = self.sock.recv(n - len(out))
            if not b:
                raise SystemExit("DevTools closed the connection")
            out += b
        return out

    def _recv(self):
        data = b""
        while True:
            h = self._read(2)
            fin, op, n = h[0] & 0x80, h[0] & 0x0F, h[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if op == 8:
                raise SystemExit("DevTools closed the WebSocket")
            if op in (0, 1, 2):
                data += payload
                if fin:
                    return json.loads(data)

    def call(self, method, **params):
        self.next_id += 1
        msg = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        n = len(msg)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
        while True:
            r = self._recv()
            if r.get("id") == self.next_id:
                if "error" in r:
                    raise SystemExit(f"DevTools {method}: {r['error']}")
                return r.get("result", {})

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise SystemExit(f"page script failed: {expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def run(self, url, timeout=120):
        """Opens url and waits (bounded) until <body data-state> is done or error. Returns the
        states seen on the way, each (state, map rows, reply length)."""
        self.call("Page.navigate", url=url)
        seen, deadline = [], time.time() + timeout
        probe = ("JSON.stringify([document.body ? document.body.dataset.state : null, "
                 "document.querySelectorAll('#map tr.token').length, "
                 "(document.querySelector('.msg.assistant .text') || {textContent: ''}).textContent.length])")
        while True:
            v = self.eval(probe)
            st = json.loads(v) if v else [None, 0, 0]
            if not seen or seen[-1] != st:
                seen.append(st)
            if st[0] in ("done", "error"):
                return seen
            if time.time() > deadline:
                raise SystemExit(f"the page did not finish within {timeout} s: {seen[-5:]}")
            time.sleep(0.02)

    def dom(self):
        return self.eval("document.documentElement.outerHTML")

    def screenshot(self, path):
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        with open(path, "wb") as f:
            f.write(png)

    def close(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()


class Dom(html.parser.HTMLParser):
    """What the checks need from the dumped DOM: body's data-state, #model's text, the message
    texts by role, the map's rows of cells (each cell's attributes) and the legend chips."""

    def __init__(self):
        super().__init__()
        self.state, self.model, self.msgs, self.rows, self.legend = None, "", [], [], 0
        self.stack, self.text_target = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "body":
            self.state = a.get("data-state")
        if a.get("id") == "model":
            self.text_target = ("model", None)
        if tag == "div" and "msg" in cls:
            self.msgs.append({"role": [c for c in cls if c != "msg"], "text": ""})
        if tag == "div" and "text" in cls and self.msgs:
            self.text_target = ("msg", self.msgs[-1])
        if tag == "tr" and "token" in cls:
            self.rows.append([])
        if tag == "td" and "cell" in cls and self.rows:
            self.rows[-1].append(a)
        if tag == "span" and "chip" in cls:
            self.legend += 1
        if tag not in ("br", "i", "input", "meta", "img"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()
        if tag in ("div", "span"):
            self.text_target = None

    def handle_data(self, data):
        if self.text_target is None:
            return
        kind, obj = self.text_target
        if kind == "model":
            self.model += data
        else:
            obj["text"] += data


def parse(dom_text):
    d = Dom()
    d.feed(dom_text)
    return d


def api(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", "Bearer " + KEY)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read().decode())


def main():
    moe, data = sys.argv[1], sys.argv[2]
    opts = sys.argv[3:]
    shots = opts[opts.index("--screenshot") + 1] if "--screenshot" in opts else None
    browser = find_chromium()
    if browser is None:
        print("skipped: no chromium (scripts/setup.sh installs it)")
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix="moe_chat_page_test_")
    proc = None
    try:
        d = opts[opts.index("--model") + 1] if "--model" in opts else model_dir(tmp, data)
        def opt(name, default):
            return opts[opts.index(name) + 1] if name in opts else default
        prompt = opt("--prompt", "hello there")
        max_tokens = int(opt("--max-tokens", 24))
        sampling = {"max_tokens": max_tokens, "temperature": float(opt("--temperature", 0))}
        if "--seed" in opts:
            sampling["seed"] = int(opt("--seed", 0))
        width, height = (int(x) for x in opt("--size", "1280x760").split("x"))
        extra = ["--chat-template", opts[opts.index("--chat-template") + 1]] if "--chat-template" in opts else []
        proc, url = start(moe, d, KEY, extra)

        # the page itself needs no key; it is one HTML document with nothing fetched from elsewhere
        with urllib.request.urlopen(url + "/", timeout=30) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html"), r.headers
            page = r.read().decode()
        assert "return_routing" in page and "/v1/chat/completions" in page
        for bad in ("http://", "https://", "//cdn", "<link", "src="):
            assert bad not in page, f"the page refers to something outside it: {bad}"

        br = Browser(browser, os.path.join(tmp, "profile"), (width, height))
        try:
            # without the key (a fresh profile): the server's 401 message on the page
            q = urllib.parse.urlencode({"prompt": prompt, "autosend": "1", **sampling})
            seen = br.run(f"{url}/?{q}")
            dom = parse(br.dom())
            errors = [m["text"] for m in dom.msgs if "error" in m["role"]]
            assert dom.state == "error" and errors and "401" in errors[0] and "API key" in errors[0], (seen, dom.msgs)

            # with the key (URL fragment, then kept in localStorage): a streamed reply and its map
            seen = br.run(f"{url}/?{q}&run=2#key={KEY}")
            dom = parse(br.dom())
            assert dom.state == "done", (seen, dom.msgs)
            name = os.path.basename(os.path.normpath(d))
            assert name in dom.model and ("experts" in dom.model), dom.model
            users = [m for m in dom.msgs if m["role"] == ["user"]]
            replies = [m for m in dom.msgs if "assistant" in m["role"] and "error" not in m["role"]]
            assert [m["text"] for m in users] == [prompt], dom.msgs
            assert len(replies) == 1, dom.msgs

            # the same greedy (or seeded) request through the API: the page shows its text and routes
            ref = api(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], **sampling,
                                                    "moe": {"return_routing": True}})
            want_text = ref["choices"][0]["message"]["content"]
            routes = ref["choices"][0]["moe_routing"]
            models = json.loads(urllib.request.urlopen(urllib.request.Request(
                url + "/v1/models", headers={"Authorization": "Bearer " + KEY}), timeout=30).read())
            meta = models["data"][0]["meta"]
            L, E = meta["n_layer"], meta["n_expert"]
            assert replies[0]["text"] == want_text, (replies[0]["text"], want_text)
            assert want_text.strip(), "the reply is empty"
            # streamed: the reply came in one SSE event per token (and the role, finish, usage ones)
            chunks = int(br.eval("document.querySelector('.msg.assistant').dataset.chunks"))
            assert chunks >= len(routes) + 2, (chunks, len(routes))
            assert len(dom.rows) == len(routes) == ref["usage"]["completion_tokens"], (len(dom.rows), len(routes))
            for t, (row, r) in enumerate(zip(dom.rows, routes)):
                assert len(row) == L, (t, row)
                for l, cell in enumerate(row):
                    assert cell.get("data-layer") == str(l) and cell.get("data-token") == str(t), cell
                    assert cell.get("data-expert") == str(r["experts"][l][0]), (t, l, cell, r)
                    assert "linear-gradient" in (cell.get("style") or ""), cell
            assert dom.legend == E, dom.legend

            # a screenshot renders (kept with --screenshot DIR)
            if shots:
                os.makedirs(shots, exist_ok=True)
            shot = os.path.join(shots or tmp, "serve_chat_page.png")
            br.screenshot(shot)
            with open(shot, "rb") as f:
                head = f.read(8)
            assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(shot) > 10000, shot
        finally:
            br.close()
        growth = [x[1] for x in seen if x[0] == "streaming"]
        print(f"ok: chat page in {os.path.basename(browser)}: {len(dom.rows)} tokens x {L} layers in {chunks} chunks, "
              f"map rows seen while streaming {growth}, reply {want_text[:40]!r}" + (f", screenshot {shot}" if shots else ""))
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
