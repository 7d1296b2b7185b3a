"""A fake `hosttune daemon` for the compare harness's process test: reads the config the B arm wrote, serves an
OpenAI-shaped gateway (the fake worker) on gateway.port and GET /v1/controller (bearer token from the state dir)
on api.port, and records its start, its knobs and its SIGTERM in STATE_DIR/fake-daemon.log."""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.support.gateway_fakes import FakeWorker


def main(config_path: str) -> None:
    config = yaml.safe_load(Path(config_path).read_text())
    state = Path(config["state_dir"])
    state.mkdir(parents=True, exist_ok=True)
    token = "fake-token"
    (state / "api.token").write_text(token + "\n")
    policy = yaml.safe_load(Path(config["policy"]).read_text())
    log = state / "fake-daemon.log"
    with log.open("a") as f:
        f.write(json.dumps({"event": "start", "worker": policy["worker"], "gateway": config["gateway"]}) + "\n")
    worker = FakeWorker(port=config["gateway"]["port"]).start()
    knobs = {k: v for k, v in policy["worker"].items() if k in ("parallel", "ubatch")} or {"parallel": 4}

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {token}" or self.path != "/v1/controller":
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"enabled": True, "decisions": [{"id": 1, "lever": "slow", "outcome": "kept"}],
                               "status": {"converged": True, "knobs": {**knobs, "parallel": 2}, "limit": 3,
                                          "phase": "hold", "trial": None, "slow_lever": "converged"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    api = ThreadingHTTPServer(("127.0.0.1", config["api"]["port"]), Api)
    stopped = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    stopped.wait()
    api.shutdown()
    worker.close()
    with log.open("a") as f:
        f.write(json.dumps({"event": "sigterm"}) + "\n")


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--config") + 1])
