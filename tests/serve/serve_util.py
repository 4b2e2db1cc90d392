"""What the serve tests share: start `moe serve ... --port 0` and wait for its ready line."""
import os
import subprocess
import threading
import time


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
