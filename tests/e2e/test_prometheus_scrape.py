"""``--exporter prometheus``: a real Prometheus scrapes the agent; the endpoint passes promtool,
and the shipped dashboards and alert rules find the same names and labels as on the Collector
path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from collector_stack import (
    CONFIG_DIR,
    Stack,
    free_port,
    http_get,
    require_prometheus,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "scenarios"
HOSTS = {"dgx-a100-01": "dgx-a100", "h100-07": str(SCENARIOS / "troubled-h100.yaml"),
         "nvlink-03": str(SCENARIOS / "nvlink-degrading.yaml")}
JOB = "otel-gpu-agent"
# Exported by a training session (otel_gpu.start()), never by the agent.
TRAINING = re.compile(r"otel_gpu_training_")
# promtool's lint on a semantic-conventions name that the Collector path exports the same way.
KNOWN_LINT = {'system_cpu_logical_count non-histogram and non-summary metrics should not have '
              '"_count" suffix'}
VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$host": ".*", "$user": ".*",
             "$namespace": ".*"}


class Scraped:
    def __init__(self, stack: Stack, url: str, ports: dict[str, int]) -> None:
        self.stack, self.url, self.ports = stack, url, ports

    def query(self, promql: str) -> list[dict[str, Any]]:
        import urllib.parse

        status, body = http_get(f"{self.url}/api/v1/query?" +
                                urllib.parse.urlencode({"query": promql}), timeout=30)
        document = json.loads(body or b"{}")
        assert status == 200 and document.get("status") == "success", (promql, body[:500])
        return document["data"]["result"]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    prometheus, _ = require_prometheus()
    stack = Stack(tmp_path_factory.mktemp("prometheus-scrape"))
    try:
        ports = {}
        for host, scenario in HOSTS.items():
            ports[host] = free_port()
            stack.start(f"agent-{host}", [
                sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate", scenario,
                "--exporter", "prometheus", "--interval", "1"], {
                "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
                "OTEL_EXPORTER_PROMETHEUS_PORT": str(ports[host]),
                "OTEL_RESOURCE_ATTRIBUTES": f"host.name={host}", "PYTHONPATH": str(ROOT)})
        port = free_port()
        targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports.values())
        config = stack.workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          f"scrape_configs:\n  - job_name: {JOB}\n"
                          f"    static_configs:\n      - targets: [{targets}]\n")
        stack.start("prometheus", [prometheus, f"--config.file={config}",
                                   f"--storage.tsdb.path={stack.workdir / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"])
        result = Scraped(stack, f"http://127.0.0.1:{port}", ports)
        assert wait_until(lambda: http_get(f"{result.url}/-/ready")[0] == 200, timeout_s=60)

        def ready() -> bool:
            up = result.query(f'up{{job="{JOB}"}} == 1')
            energy = result.query("count_over_time(hw_energy_joules_total[1m]) >= 3")
            return len(up) == len(HOSTS) and bool(energy)

        assert wait_until(ready, timeout_s=90, interval_s=1), stack.logs()
        yield result
    finally:
        stack.close()


def test_the_endpoint_passes_promtool(scraped: Scraped) -> None:
    _, promtool = require_prometheus()
    for host, port in scraped.ports.items():
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200, host
        checked = subprocess.run([promtool, "check", "metrics"], input=body,
                                 capture_output=True, check=False)
        findings = set((checked.stdout + checked.stderr).decode().strip().splitlines())
        # 0: clean; 3: lint findings only (1 would be an error such as a second HELP line).
        assert checked.returncode in (0, 3) and findings <= KNOWN_LINT, findings
        helps = [line.split()[2] for line in body.decode().splitlines()
                 if line.startswith("# HELP")]
        assert len(helps) == len(set(helps)), "a family appears twice"


def test_names_and_labels_are_those_of_the_collector_path(scraped: Scraped) -> None:
    ratio = scraped.query('hw_gpu_utilization_ratio{host_name="dgx-a100-01"}')
    assert ratio and all(s["metric"]["job"] == JOB for s in ratio)
    assert scraped.query('otel_gpu_workload_gpu_memory_usage_bytes{host_name="dgx-a100-01"}')
    assert scraped.query('hw_errors_total{host_name="h100-07"}')
    assert not scraped.query('{__name__="hw_gpu_utilization"}')
    info = scraped.query('target_info{host_name="dgx-a100-01"}')
    assert info and info[0]["metric"]["service_name"] == "otel-gpu-agent"


def _expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    return expr


def _dashboard_queries() -> Iterator[tuple[str, str, str]]:
    for path in sorted((CONFIG_DIR / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for nested in [panel, *panel.get("panels", [])]:
                for target in nested.get("targets", []):
                    yield path.stem, nested["title"], target["expr"]


def test_every_agent_dashboard_panel_returns_data(scraped: Scraped) -> None:
    queries = [(d, t, e) for d, t, e in _dashboard_queries() if not TRAINING.search(e)]
    assert queries
    empty = [f"{d}/{t}: {e}" for d, t, e in queries if not scraped.query(_expand(e))]
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_every_metric_the_alert_rules_read_is_scraped(scraped: Scraped) -> None:
    rules = yaml.safe_load((CONFIG_DIR / "rules" / "otel-gpu-alerts.yaml").read_text())
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names.update(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[)", rule["expr"]))
    names -= {"rate", "increase", "max", "sum", "min", "avg", "count", "by", "on", "without"}
    assert names
    missing = [n for n in sorted(names) if not TRAINING.search(n)
               and not scraped.query(f'count({{__name__="{n}"}})')]
    assert not missing, missing
