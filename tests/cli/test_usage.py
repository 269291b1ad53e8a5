"""``otel-gpu usage`` against a real Prometheus holding an hour of the accounting counters, and
the same hour with the agent restarted half-way: the agent's own pipeline on a simulated server
with known holdings, one cycle a minute, written as OpenMetrics and backfilled with
``promtool tsdb create-blocks-from openmetrics``."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from collector_stack import Prometheus, Stack, require_prometheus
from runner import ROOT, run_cli

from otel_gpu.collect.build import build_collector
from otel_gpu.config import ConfigError, query_api
from otel_gpu.telemetry.catalog import BY_NAME

SCENARIO = str(ROOT / "tests" / "scenarios" / "accounting.yaml")
INTERVAL = 60
CYCLES = 61  # 60 credited intervals: one hour
# The names the Collector's Prometheus exporters give the accounting counters.
PROMETHEUS_NAMES = {
    "otel_gpu.workload.gpu.time": "otel_gpu_workload_gpu_time_seconds",
    "otel_gpu.workload.mig.slice.time": "otel_gpu_workload_mig_slice_time_seconds",
    "otel_gpu.workload.energy": "otel_gpu_workload_energy_joules",
}
# Hand-computed from the scenario (see its header): GPU-hours busy, idle, unknown; slice-hours;
# kWh (joules / 3.6e6).
EXPECTED_BY_USER = {
    "alice": (0.75, 0.0, 1 / 7, 1.0, (280 * 3600 / 7 + 400 * 3600 * 0.75) / 3.6e6),
    "bob": (0.0, 0.0, 3 / 7, 3.0, 280 * 3600 * 3 / 7 / 3.6e6),
    "carol": (0.25, 0.0, 0.0, 0.0, 400 * 3600 * 0.25 / 3.6e6),
    "dave": (0.0, 1.0, 0.0, 0.0, 60 * 3600 / 3.6e6),
}
FIELDS = ("gpu_hours_busy", "gpu_hours_idle", "gpu_hours_unknown", "slice_hours", "kwh")


def _samples(end: int, host: str, runs: tuple[int, ...]) -> dict[str, dict[str, list[str]]]:
    """Every cycle's accounting points, as the agent would export them, stamped a minute apart
    and ending at ``end``: one agent run per entry of ``runs`` (its cycles), each a fresh
    agent, as after a restart."""
    series: dict[str, dict[str, list[str]]] = {name: {} for name in PROMETHEUS_NAMES.values()}
    stamp = end - (sum(runs) - 1) * INTERVAL
    for cycles in runs:
        collector = build_collector(SCENARIO, interval_s=INTERVAL)
        collector.start()
        try:
            for _ in range(cycles):
                snapshot = collector.collect()
                for name, family in PROMETHEUS_NAMES.items():
                    observe = BY_NAME[name].observe
                    assert observe is not None
                    for value, attrs in observe(snapshot):
                        labels = {"job": "otel-gpu-agent", "host_name": host,
                                  **{k.replace(".", "_"): str(v) for k, v in attrs.items()}}
                        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                        series[family].setdefault(text, []).append(f"{value!r} {stamp}")
                stamp += INTERVAL
        finally:
            collector.close()
    return series


def _openmetrics(end: int) -> str:
    """One uninterrupted hour on host acct-01; on acct-02, the same hour with the agent
    restarted half-way."""
    lines = []
    one = _samples(end, "acct-01", (CYCLES,))
    two = _samples(end, "acct-02", (31, 31))
    for family in PROMETHEUS_NAMES.values():
        lines.append(f"# TYPE {family} counter")
        for by_labels in (one[family], two[family]):
            for labels, samples in by_labels.items():
                lines += [f"{family}_total{{{labels}}} {sample}" for sample in samples]
    return "\n".join([*lines, "# EOF"]) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, int]]:
    binary, promtool = require_prometheus()
    stack = Stack(tmp_path_factory.mktemp("usage"))
    end = int(time.time()) - 2 * 3600
    source = stack.workdir / "accounting.om"
    source.write_text(_openmetrics(end))
    made = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source),
                           str(stack.workdir / "tsdb")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    try:
        yield Prometheus(stack, binary), end
    finally:
        stack.close()


def _usage(prometheus: tuple[Prometheus, int], *args: str,
           host: str = "acct-01") -> subprocess.CompletedProcess:
    server, end = prometheus
    return run_cli("usage", "--url", server.url, "--until", str(end),
                   "--match", f'job="otel-gpu-agent", host_name="{host}"', *args)


def _json(prometheus: tuple[Prometheus, int], *args: str, host: str = "acct-01") -> dict[str, Any]:
    result = _usage(prometheus, "--format", "json", *args, host=host)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_usage_by_user_reproduces_the_hand_computed_figures(prometheus) -> None:
    report = _json(prometheus, "--since", "7d", "--by", "user")
    rows = {row["tenant"]: row for row in report["rows"]}
    assert set(rows) == set(EXPECTED_BY_USER)
    for user, expected in EXPECTED_BY_USER.items():
        found = tuple(rows[user][f] for f in FIELDS)
        assert found == pytest.approx(expected, rel=0.01, abs=1e-9), user
    # Sorted by GPU-hours, and the totals are the sums of the rows.
    assert [row["tenant"] for row in report["rows"]] == ["dave", "alice", "bob", "carol"]
    for field in (*FIELDS, "gpu_hours"):
        assert report["total"][field] == pytest.approx(sum(r[field] for r in report["rows"]))
    assert report["total"]["gpu_hours"] == pytest.approx(1 + 1 + 4 / 7, rel=0.01)
    # gpu0's three free slices (of 7) are charged to no one.
    watts = 280 * 4 / 7 + 400 + 60
    assert report["total"]["kwh"] == pytest.approx(watts * 3600 / 3.6e6, rel=0.01)


def test_usage_by_pod_namespace_and_container(prometheus) -> None:
    pods = {r["tenant"]: r for r in _json(prometheus, "--by", "pod")["rows"]}
    assert set(pods) == {"research/bob-job-0", "(none)"}
    assert pods["research/bob-job-0"]["slice_hours"] == pytest.approx(3.0, rel=0.01)
    spaces = {r["tenant"]: r for r in _json(prometheus, "--by", "namespace")["rows"]}
    assert spaces["research"]["gpu_hours_unknown"] == pytest.approx(3 / 7, rel=0.01)
    containers = {r["tenant"]: r for r in _json(prometheus, "--by", "container")["rows"]}
    assert set(containers) == {"alice-train", "research/bob-job-0/trainer", "(none)"}
    assert containers["(none)"]["gpu_hours"] == pytest.approx(1.25, rel=0.01)  # carol, dave


def test_csv_and_table_carry_the_same_totals(prometheus) -> None:
    result = _usage(prometheus, "--format", "csv")
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["user"] for row in table] == ["dave", "alice", "bob", "carol", "total"]
    assert float(table[-1]["kwh"]) == pytest.approx(sum(float(r["kwh"]) for r in table[:-1]))
    shown = _usage(prometheus)
    assert shown.returncode == 0, shown.stderr
    last = shown.stdout.strip().splitlines()[-1].split()
    assert last[0] == "total" and float(last[4]) == pytest.approx(1 + 1 + 4 / 7, abs=0.001)


def test_a_restart_is_a_counter_reset_not_a_double_count(prometheus) -> None:
    # Two runs of 31 cycles: 30 credited minutes each; the minute between the first run's last
    # cycle and the second's first is credited to no one (the documented loss of a restart).
    report = _json(prometheus, "--by", "user", host="acct-02")
    rows = {row["tenant"]: row for row in report["rows"]}
    for user, expected in EXPECTED_BY_USER.items():
        found = tuple(rows[user][f] for f in FIELDS)
        assert found == pytest.approx(expected, rel=0.02, abs=1e-9), user
    whole = _json(prometheus, "--by", "user")["total"]["gpu_hours"]
    assert whole * 0.98 <= report["total"]["gpu_hours"] <= whole * 1.02


def test_a_period_before_the_data_is_empty(prometheus) -> None:
    server, end = prometheus
    result = run_cli("usage", "--url", server.url, "--until", str(end - 2 * 3600),
                     "--since", "30m")
    assert result.returncode == 0, result.stderr
    assert "no accounting data in the last 30m" in result.stdout


# -- settings and failures ------------------------------------------------------------------------


def test_query_api_settings() -> None:
    api = query_api(environ={"OTEL_GPU_PROM_URL": "https://mimir.example/prometheus/",
                             "OTEL_GPU_PROM_USERNAME": "ops", "OTEL_GPU_PROM_PASSWORD": "pw",
                             "OTEL_GPU_PROM_TENANT": "gpu"})
    assert api.url == "https://mimir.example/prometheus"
    assert api.headers == {"Authorization": "Basic b3BzOnB3", "X-Scope-OrgID": "gpu"}
    bearer = query_api("http://p:9090", environ={"OTEL_GPU_PROM_BEARER_TOKEN": "t"})
    assert bearer.headers == {"Authorization": "Bearer t"}
    for env in ({}, {"OTEL_GPU_PROM_URL": "prometheus:9090"},
                {"OTEL_GPU_PROM_URL": "http://p", "OTEL_GPU_PROM_PASSWORD": "x"}):
        with pytest.raises(ConfigError, match="OTEL_GPU_PROM_"):
            query_api(environ=env)


class _Answer(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []
    status, body = 200, b""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answer() -> Iterator[tuple[str, type[_Answer]]]:
    handler = type("Handler", (_Answer,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "body", "message"), [
    (401, b'{"status":"error","errorType":"unauthorized","error":"no token"}',
     "answered 401: unauthorized: no token"),
    (200, b"<html>a login page</html>", "did not answer as a Prometheus query API"),
    (200, b'{"status":"success","data":{"resultType":"matrix","result":[]}}',
     "expected a vector"),
])
def test_bad_answers_exit_1_with_one_line(answer, status: int, body: bytes,
                                          message: str) -> None:
    url, handler = answer
    handler.status, handler.body = status, body
    result = run_cli("usage", "--url", url, env={"OTEL_GPU_PROM_BEARER_TOKEN": "s3cret",
                                                 "OTEL_GPU_PROM_TENANT": "team-a"})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "s3cret" not in result.stderr
    assert handler.seen[0]["authorization"] == "Bearer s3cret"
    assert handler.seen[0]["x-scope-orgid"] == "team-a"


def test_unreachable_and_bad_options(tmp_path: Path) -> None:
    result = run_cli("usage", "--url", "http://127.0.0.1:1", "--timeout", "2")
    assert result.returncode == 1 and "cannot reach http://127.0.0.1:1" in result.stderr
    for args, named in ((["--since", "7 days"], "--since"), (["--until", "yesterday"], "--until"),
                        (["--match", 'job="x"} or vector(1)'], "--match"),
                        (["--by", "team"], "--by")):
        bad = run_cli("usage", "--url", "http://127.0.0.1:1", *args)
        assert bad.returncode == 2 and named in bad.stderr, bad.stderr
    unset = run_cli("usage", env={"OTEL_GPU_PROM_URL": ""})
    assert unset.returncode == 2 and "OTEL_GPU_PROM_URL" in unset.stderr
