"""A real Prometheus (Debian's /usr/bin/prometheus) for tests: started on a loopback port with a config the test
writes, its TSDB under the test's tmp dir, queried over its HTTP API, stopped by PID."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.bench.llama_local import free_port


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool` (the tier check has made sure they exist)."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} not installed (Debian package prometheus: scripts/install-system-deps.sh test)")
    return path


class PrometheusServer:
    """`prometheus --config.file F --storage.tsdb.path D --web.listen-address 127.0.0.1:PORT`."""

    def __init__(self, tmp_path: Path, config: dict[str, Any]) -> None:
        self.config_path = tmp_path / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        check = subprocess.run([binary("promtool"), "check", "config", str(self.config_path)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [binary("prometheus"), f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.client = httpx.Client(base_url=self.url, timeout=10, trust_env=False)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout_s} s:\n{self.output()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a PromQL error)."""
        r = self.client.get("/api/v1/query", params={"query": expr})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {r.status_code} {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        r = self.client.get(f"/api/v1/label/{label}/values", params={"match[]": match})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{label} {match}: {body}"
        values: list[str] = body["data"]
        return values

    def rule_health(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health and last error, from /api/v1/rules."""
        body = self.client.get("/api/v1/rules").json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by PID
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
