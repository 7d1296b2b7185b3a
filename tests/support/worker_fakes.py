"""A small real HTTP server that behaves like an inference worker on demand (loads slowly, crashes, aborts with an
out-of-memory message, ignores SIGTERM, turns unhealthy), for supervisor tests that need no llama-server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

FAKE_SERVER = r'''
import argparse, json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.bench.llama_local import free_port

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--load-seconds", type=float, default=0.0)
p.add_argument("--crash-after", type=float, default=None)
p.add_argument("--fail-at-start", default=None)
p.add_argument("--ignore-term", action="store_true")
p.add_argument("--starts-file", default=None)
p.add_argument("--chatty", type=int, default=0)
a = p.parse_args()
if a.starts_file:
    with open(a.starts_file, "a") as f:
        f.write(f"{os.getpid()} {time.time()}\n")
if a.fail_at_start:
    print(f"error: failed to load model from {a.fail_at_start}", file=sys.stderr, flush=True)
    sys.exit(1)
if a.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
for i in range(a.chatty):
    print(f"log line {i} " + "x" * 100, file=sys.stderr)
sys.stderr.flush()
t0 = time.monotonic()
state = {"healthy": True}

class H(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/health":
            if time.monotonic() - t0 < a.load_seconds:
                return self.reply(503, {"error": {"message": "Loading model"}})
            return self.reply(200 if state["healthy"] else 500, {"status": "ok" if state["healthy"] else "bad"})
        if self.path == "/pid":
            return self.reply(200, {"pid": os.getpid()})
        if self.path == "/oom":
            print("CUDA error: out of memory", file=sys.stderr, flush=True)
            os.abort()
        if self.path == "/sick":
            state["healthy"] = False
            return self.reply(200, {})
        return self.reply(404, {})

srv = ThreadingHTTPServer(("127.0.0.1", a.port), H)
if a.crash_after is not None:
    def crash():
        time.sleep(a.crash_after)
        print("fatal: simulated crash", file=sys.stderr, flush=True)
        os._exit(3)
    threading.Thread(target=crash, daemon=True).start()
print(f"listening on {a.port}", flush=True)
srv.serve_forever()
'''


def worker_python() -> str:
    """An interpreter the unprivileged worker user can run: this venv's may live under /root (pyenv), which no
    other user can enter. The system python3 serves for workers that need only the standard library."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK) and (Path(candidate).resolve().stat().st_mode & 0o001):
            return candidate
    return sys.executable


def write_fake_server(directory: Path) -> list[str]:
    """Write the fake server script into directory; return the argv prefix that runs it."""
    script = directory / "fake_worker.py"
    script.write_text(FAKE_SERVER)
    return [sys.executable, str(script)]
