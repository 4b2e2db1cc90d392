"""What the serve tests share: the tiny test model as a Hugging Face directory, and starting
`moe serve ... --port 0` up to its ready line."""
import json
import os
import shutil
import subprocess
import threading
import time

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def model_dir(tmp, data):
    """tests/data's tiny qwen3_moe model with the byte-level tokenizer and TEMPLATE, in tmp."""
    d = os.path.join(tmp, "tiny-qwen3-moe")
    os.makedirs(d)
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(os.path.join(data, "hf/qwen3_moe", f), d)
    shutil.copy(os.path.join(data, "tokenizers/moe_export/byte.tokenizer.json"), os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": TEMPLATE}, f)
    return d


def start_server(args, timeout=60):
    """Runs args (a `moe serve` command line with --port 0); returns (process, base URL) once the
    server prints "ready at URL", or kills it and exits with its output after `timeout` seconds."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, OMP_WAIT_POLICY="passive"))
    deadline = time.time() + timeout
    url, lines = None, []

    def read():
        nonlocal url
        for line in p.stdout:
            lines.append(line)
            if "ready at " in line:
                url = line.split("ready at ")[1].split()[0]
    threading.Thread(target=read, daemon=True).start()
    while url is None:
        if time.time() > deadline or p.poll() is not None:
            p.kill()
            p.wait()
            raise SystemExit("server did not get ready:\n" + "".join(lines))
        time.sleep(0.05)
    return p, url
