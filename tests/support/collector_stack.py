"""A real OpenTelemetry Collector (our otelcol-gpu build) and a real Prometheus, run for tests.

Every process is started on free loopback ports with its own temporary files, registered in an
ExitStack and terminated (then killed, if it lingers) when the stack closes, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "collector_config"


def require(condition: bool, reason: str) -> None:
    """Skip a test whose tools are missing; in CI (``CI`` set), fail it instead."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def find_collector() -> str | None:
    """``OTEL_GPU_COLLECTOR``, else the cached build of the current manifest, else None."""
    given = os.environ.get("OTEL_GPU_COLLECTOR")
    if given:
        return given if os.access(given, os.X_OK) else None
    result = subprocess.run(["bash", str(CONFIG_DIR / "build.sh"), "--cached"],
                            capture_output=True, text=True, check=False)
    path = result.stdout.strip()
    return path if result.returncode == 0 and path else None


def require_collector() -> str:
    path = find_collector()
    require(path is not None,
            "no otelcol-gpu binary: set OTEL_GPU_COLLECTOR or run collector_config/build.sh "
            f"(OTEL_GPU_COLLECTOR={os.environ.get('OTEL_GPU_COLLECTOR', '')!r})")
    assert path is not None
    return path


def require_prometheus() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    require(prometheus is not None and promtool is not None,
            "prometheus and promtool not found on PATH (Debian: apt-get install prometheus)")
    assert prometheus is not None and promtool is not None
    return prometheus, promtool


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text[-lines:])


@dataclass
class Stack:
    """Processes started for one test module, stopped in reverse order on close."""

    workdir: Path
    exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    processes: list[Process] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Process:
        log = self.workdir / f"{name}.log"
        handle = log.open("wb")
        self.exits.callback(handle.close)
        popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=self.workdir,
                                 env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
        process = Process(name, popen, log)
        self.exits.callback(_stop, popen)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def close(self) -> None:
        self.exits.close()


def _stop(popen: subprocess.Popen) -> None:
    if popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(timeout=15)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=15)


class Prometheus:
    """A Prometheus server that accepts remote write, with its storage in a temporary directory."""

    def __init__(self, stack: Stack, binary: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = stack.workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 15s\n")
        shown = subprocess.run([binary, "--help"], capture_output=True, text=True, check=False)
        help_text = shown.stdout + shown.stderr
        # Prometheus 2.33+ has the flag; 2.25-2.32 had the feature flag.
        receiver = ("--web.enable-remote-write-receiver"
                    if "--web.enable-remote-write-receiver" in help_text
                    else "--enable-feature=remote-write-receiver")
        self.process = stack.start("prometheus", [
            binary, f"--config.file={config}", f"--storage.tsdb.path={stack.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}", receiver, "--log.level=warn",
        ])
        ready = wait_until(lambda: http_get(f"{self.url}/-/ready")[0] == 200, timeout_s=60)
        assert ready, f"Prometheus did not become ready\n{stack.logs()}"

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector; raises on a PromQL error."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        status, body = http_get(url, timeout=30)
        document = json.loads(body or b"{}")
        if status != 200 or document.get("status") != "success":
            raise AssertionError(f"query failed ({status}): {promql}\n{body[:2000]!r}")
        result = document["data"]["result"]
        return result if isinstance(result, list) else [result]


class Collector:
    """otelcol-gpu with one of our configs, its ports and files taken from the environment."""

    def __init__(self, stack: Stack, binary: str, name: str, configs: list[str],
                 env: Mapping[str, str]) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        health_port = free_port()
        self.env = {
            "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.grpc_port}",
            "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{self.http_port}",
            "OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{health_port}",
            "OTELCOL_METRICS_HOST": "127.0.0.1",
            "OTELCOL_METRICS_PORT": str(free_port()),
            **env,
        }
        argv = [binary, *(f"--config={CONFIG_DIR / c}" for c in configs)]
        self.process = stack.start(name, argv, self.env)
        ready = wait_until(lambda: http_get(f"http://127.0.0.1:{health_port}/")[0] == 200,
                           timeout_s=60)
        assert ready, f"collector {name} did not become healthy\n{stack.logs()}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"
