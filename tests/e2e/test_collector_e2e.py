"""End to end through a real collector and a real Prometheus.

otel-gpu agent (simulated servers) and a training script -> node collector (node.yaml) ->
gateway collector (gateway-prometheus.yaml) -> Prometheus remote write; traces -> the gateway's
file exporter. Then PromQL over Prometheus's HTTP API, the dashboards' queries included.

Needs the otelcol-gpu binary (OTEL_GPU_COLLECTOR or a cached collector_config/build.sh build) and
Prometheus with promtool; outside CI a missing one skips these tests, in CI it fails them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from collector_stack import (
    CONFIG_DIR,
    Collector,
    Prometheus,
    Stack,
    require_collector,
    require_prometheus,
    wait_until,
)

from otel_gpu.session.tracker import EPOCH_SPAN, STEP_SPAN
from otel_gpu.simulate import Scenario, at_cycle, load_scenario
from otel_gpu.sources._text import passwd_name

ROOT = Path(__file__).resolve().parents[2]
CYCLES = 4
LAST = CYCLES - 1  # the cycle whose values Prometheus holds last
DGX_HOST = "dgx-a100-01"
TROUBLED_HOST = "h100-07"
TROUBLED_SCENARIO = ROOT / "tests" / "scenarios" / "troubled-h100.yaml"
TRAINING_SERVICE = "resnet-e2e"
TRAINING_STEPS = 20
AGENT = 'job="otel-gpu-agent"'

TRAINING_SCRIPT = f"""
import time
import otel_gpu

otel_gpu.start(export_interval_s=0.5)
for _ in otel_gpu.track(range({TRAINING_STEPS}), batch_size=8):
    time.sleep(0.05)
time.sleep(1.0)
otel_gpu.stop()
"""


@dataclass
class E2E:
    stack: Stack
    prometheus: Prometheus
    traces_file: Path
    dgx: Scenario

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.prometheus.query(promql)

    def by_id(self, promql: str) -> dict[str, dict[str, Any]]:
        """Result series keyed by hw_id (one series per id expected)."""
        series: dict[str, dict[str, Any]] = {}
        for item in self.query(promql):
            hw_id = item["metric"]["hw_id"]
            assert hw_id not in series, f"two series for {hw_id} in {promql}"
            series[hw_id] = item
        return series


def _run(stack: Stack, name: str, argv: list[str], env: dict[str, str]) -> None:
    process = stack.start(name, argv, env)
    try:
        code = process.popen.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} did not finish\n{stack.logs()}")
    assert code == 0, f"{name} exited {code}\n{stack.logs()}"


def _agent(stack: Stack, name: str, scenario: str, host: str, node: Collector) -> None:
    _run(stack, name, [sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate", scenario,
                       "--interval", "1", "--cycles", str(CYCLES)],
         {"OTEL_EXPORTER_OTLP_ENDPOINT": node.grpc_endpoint,
          "OTEL_RESOURCE_ATTRIBUTES": f"host.name={host}"})


def _spans(traces_file: Path) -> list[tuple[str, str]]:
    """(service.name, span name) of every span in the file exporter's JSON lines."""
    found = []
    if not traces_file.exists():
        return found
    for line in traces_file.read_text().splitlines():
        if not line.strip():
            continue
        for resource_spans in json.loads(line).get("resourceSpans", []):
            attributes = {a["key"]: a["value"].get("stringValue")
                          for a in resource_spans.get("resource", {}).get("attributes", [])}
            for scope_spans in resource_spans.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    found.append((attributes.get("service.name", ""), span["name"]))
    return found


def _value(item: dict[str, Any]) -> float:
    return float(item["value"][1])


def _delivered(e2e: E2E) -> bool:
    """True once the last cycle of both agents and the training script are in Prometheus."""
    power = e2e.by_id(f'hw_power_watts{{{AGENT}, host_name="{DGX_HOST}"}}')
    expected = {gpu.uuid: float(at_cycle(gpu.power_watts, LAST)) for gpu in e2e.dgx.gpus}
    if {k: _value(v) for k, v in power.items()} != expected:
        return False
    if not e2e.query(f'hw_power_watts{{{AGENT}, host_name="{TROUBLED_HOST}"}}'):
        return False
    steps = e2e.query(f'otel_gpu_training_steps_total{{job="{TRAINING_SERVICE}"}}')
    if not steps or sum(_value(s) for s in steps) != TRAINING_STEPS:
        return False
    return any(name == STEP_SPAN for _, name in _spans(e2e.traces_file))


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    collector = require_collector()
    prometheus_binary, _ = require_prometheus()
    stack = Stack(tmp_path_factory.mktemp("collector-e2e"))
    try:
        prometheus = Prometheus(stack, prometheus_binary)
        traces_file = stack.workdir / "traces" / "traces.jsonl"
        gateway = Collector(stack, collector, "gateway", ["gateway-prometheus.yaml"], {
            "PROMETHEUS_REMOTE_WRITE_URL": prometheus.remote_write_url,
            "OTELCOL_TRACES_FILE": str(traces_file),
            "OTELCOL_LOGS_FILE": str(stack.workdir / "logs" / "logs.jsonl"),
        })
        node = Collector(stack, collector, "node", ["node.yaml"], {
            "OTELCOL_GATEWAY_ENDPOINT": f"127.0.0.1:{gateway.grpc_port}",
            "OTELCOL_GATEWAY_INSECURE": "true",
        })
        _agent(stack, "agent-dgx-a100", "dgx-a100", DGX_HOST, node)
        _agent(stack, "agent-troubled-h100", str(TROUBLED_SCENARIO), TROUBLED_HOST, node)
        script = stack.workdir / "train.py"
        script.write_text(TRAINING_SCRIPT)
        _run(stack, "training", [sys.executable, str(script)], {
            "OTEL_EXPORTER_OTLP_ENDPOINT": node.grpc_endpoint,
            "OTEL_SERVICE_NAME": TRAINING_SERVICE,
            "OTEL_RESOURCE_ATTRIBUTES": f"host.name={DGX_HOST}",
        })
        e2e = E2E(stack, prometheus, traces_file, load_scenario("dgx-a100"))
        assert wait_until(lambda: _delivered(e2e), timeout_s=90, interval_s=1), \
            f"the data did not reach Prometheus and the traces file\n{stack.logs()}"
        yield e2e
    finally:
        stack.close()


# -- what Prometheus holds -------------------------------------------------------------------


def test_every_gpu_has_its_scenario_values(e2e: E2E) -> None:
    host = f'{AGENT}, host_name="{DGX_HOST}"'
    power = e2e.by_id(f"hw_power_watts{{{host}}}")
    limit = e2e.by_id(f'hw_gpu_memory_limit_bytes{{{host}, hw_parent=""}}')
    temperature = e2e.by_id(f'hw_temperature_celsius{{{host}, hw_sensor_location="gpu"}}')
    utilization = e2e.by_id(f'hw_gpu_utilization_ratio{{{host}, hw_gpu_task="general"}}')
    assert set(power) == set(limit) == {gpu.uuid for gpu in e2e.dgx.gpus}
    for gpu in e2e.dgx.gpus:
        labels = power[gpu.uuid]["metric"]
        assert labels["hw_name"] == gpu.hw_name
        assert labels["hw_vendor"] == "nvidia"
        assert _value(power[gpu.uuid]) == at_cycle(gpu.power_watts, LAST)
        assert _value(limit[gpu.uuid]) == gpu.model.memory_total_bytes
        temperatures = [_value(t) for t in temperature.values()
                        if t["metric"]["hw_parent"] == gpu.uuid]
        assert temperatures == [at_cycle(gpu.temperature_celsius, LAST)]
        if gpu.mig is None and gpu.utilization is not None:
            assert _value(utilization[gpu.uuid]) == pytest.approx(at_cycle(gpu.utilization, LAST))
        else:
            assert gpu.uuid not in utilization


def test_every_mig_device_has_its_layout_and_memory(e2e: E2E) -> None:
    host = f'{AGENT}, host_name="{DGX_HOST}"'
    memory = e2e.by_id(f'hw_gpu_memory_usage_bytes{{{host}, hw_parent!=""}}')
    layout = e2e.by_id(f"nvidia_gpu_mig_instance_ratio{{{host}}}")
    expected_ids = set()
    for gpu in e2e.dgx.gpus:
        if gpu.mig is None:
            continue
        for instance in gpu.mig.layouts[0].instances:
            expected_ids.add(instance.uuid)
            labels = memory[instance.uuid]["metric"]
            assert labels["hw_parent"] == gpu.uuid
            assert labels["nvidia_gpu_mig_profile"] == instance.profile.name
            used = sum(at_cycle(p.used_memory_bytes, LAST) for p in gpu.processes_at(LAST)
                       if p.mig_instance == instance.index)
            if instance.memory_used_bytes is not None:
                used = at_cycle(instance.memory_used_bytes, LAST)
            assert _value(memory[instance.uuid]) == used, labels["hw_name"]
            place = layout[instance.uuid]["metric"]
            assert place["nvidia_gpu_mig_placement_start"] == str(instance.start)
            assert place["nvidia_gpu_mig_placement_size"] == str(instance.profile.memory_slices)
    assert set(memory) == set(layout) == expected_ids


def _container_id(cgroup: str) -> str:
    match = re.search(r"[0-9a-f]{64}", cgroup)
    return match.group(0) if match else ""


def test_per_user_and_container_series_match_the_scenario(e2e: E2E) -> None:
    scenario = e2e.dgx
    pods = {c.id: (pod.namespace, pod.name) for pod in scenario.pods for c in pod.containers}
    names = {c.id: c.name for c in scenario.containers}
    expected_memory: dict[tuple[str, str, str], float] = defaultdict(float)
    expected_processes: dict[tuple[str, str, str], int] = defaultdict(int)
    for gpu in scenario.gpus:
        instances = gpu.mig.layouts[0].instances if gpu.mig else ()
        for process in gpu.processes_at(LAST):
            device = gpu.uuid if process.mig_instance is None \
                else instances[process.mig_instance].uuid
            owner = scenario.users.get(process.uid, str(process.uid))
            key = (device, owner, _container_id(process.cgroup))
            expected_memory[key] += at_cycle(process.used_memory_bytes, LAST)
            expected_processes[key] += 1

    host = f'{AGENT}, host_name="{DGX_HOST}"'
    memory = e2e.query(f"otel_gpu_workload_gpu_memory_usage_bytes{{{host}}}")
    processes = e2e.query(f"otel_gpu_workload_gpu_processes{{{host}}}")

    def key(item: dict[str, Any]) -> tuple[str, str, str]:
        labels = item["metric"]
        return labels["hw_id"], labels["process_owner"], labels.get("container_id", "")

    assert {key(m): _value(m) for m in memory} == dict(expected_memory)
    assert {key(p): _value(p) for p in processes} == dict(expected_processes)
    for item in memory:
        labels = item["metric"]
        container = labels.get("container_id", "")
        if container in pods:
            assert (labels["k8s_namespace_name"], labels["k8s_pod_name"]) == pods[container]
        elif container:
            assert labels["container_name"] == names[container]


def test_device_assignments_cover_every_container_and_pod(e2e: E2E) -> None:
    scenario = e2e.dgx
    containers = [*scenario.containers, *(c for pod in scenario.pods for c in pod.containers)]
    expected = {(uuid, c.id) for c in containers for uuid in c.device_uuids}
    found = e2e.query(f'otel_gpu_device_assignment_ratio{{{AGENT}, host_name="{DGX_HOST}"}}')
    assert {(f["metric"]["hw_id"], f["metric"]["container_id"]) for f in found} == expected
    assert all(_value(f) == 1 for f in found)


def test_health_signals_of_a_troubled_node(e2e: E2E) -> None:
    scenario = load_scenario(str(TROUBLED_SCENARIO))
    hot, lost, remapping = (gpu.uuid for gpu in scenario.gpus[:3])
    host = f'{AGENT}, host_name="{TROUBLED_HOST}"'
    failed = e2e.by_id(f'hw_status{{{host}, hw_state="failed", hw_parent=""}}')
    assert {k for k, v in failed.items() if _value(v) == 1} == {lost}
    xid = e2e.query(f"nvidia_gpu_xid_errors_total{{{host}}}")
    assert [(x["metric"]["hw_id"], x["metric"]["nvidia_gpu_xid"], _value(x)) for x in xid] == \
        [(lost, "79", 1.0)]
    ecc = e2e.by_id(f'hw_errors_total{{{host}, error_type="uncorrected"}} > 0')
    assert set(ecc) == {hot}
    throttled = e2e.query(f'nvidia_gpu_clocks_event_active_ratio{{{host}}} == 1')
    assert {(t["metric"]["hw_id"], t["metric"]["nvidia_gpu_clocks_event_reason"])
            for t in throttled} == {(hot, "hw_thermal_slowdown"), (hot, "sw_thermal_slowdown")}
    assert set(e2e.by_id(f"nvidia_gpu_memory_remap_pending_ratio{{{host}}} == 1")) == {remapping}


def test_resource_attributes_are_usable_in_promql(e2e: E2E) -> None:
    jobs = {s["metric"]["job"] for s in e2e.query("count by (job) (system_memory_usage_bytes)")}
    assert {"otel-gpu-agent", TRAINING_SERVICE} <= jobs
    hosts = {s["metric"]["host_name"]
             for s in e2e.query(f"count by (host_name) (hw_power_watts{{{AGENT}}})")}
    assert hosts == {DGX_HOST, TROUBLED_HOST}
    assert e2e.query(f'target_info{{job="{TRAINING_SERVICE}"}}')


def test_training_metrics_and_spans_arrive(e2e: E2E) -> None:
    steps = e2e.query(f'otel_gpu_training_steps_total{{job="{TRAINING_SERVICE}"}}')
    assert sum(_value(s) for s in steps) == TRAINING_STEPS
    assert e2e.query(f'otel_gpu_training_step_duration_seconds_count{{job="{TRAINING_SERVICE}"}}')
    # The node Collector puts the script's user on its points: the tenants' dashboard filters
    # training runs by it.
    owners = {s["metric"].get("process_owner") for s in steps}
    assert owners == {passwd_name(os.getuid()) or str(os.getuid())}
    spans = _spans(e2e.traces_file)
    assert (TRAINING_SERVICE, STEP_SPAN) in spans
    assert (TRAINING_SERVICE, EPOCH_SPAN) in spans


# -- dashboards and rules against this Prometheus --------------------------------------------

DASHBOARDS = sorted((CONFIG_DIR / "dashboards").glob("*.json"))
# Grafana variables as a user who picked "All" sees them.
VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$host": ".*", "$user": ".*",
             "$namespace": ".*"}


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for nested in [panel, *panel.get("panels", [])]:
            for target in nested.get("targets", []):
                yield nested["title"], target["expr"]


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    # $1 is label_replace's capture group, which Grafana leaves alone (no variable is named 1).
    assert "$" not in re.sub(r"\$\d", "", expr), f"unknown variable in {expr}"
    return expr


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_dashboard_panel_returns_data(e2e: E2E, path: Path) -> None:
    queries = list(panel_queries(json.loads(path.read_text())))
    assert queries
    empty = [f"{title}: {expr}" for title, expr in queries if not e2e.query(expand(expr))]
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_dashboard_variables_find_values(e2e: E2E) -> None:
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            values = {s["metric"].get(match[2]) for s in e2e.query(match[1])} - {None}
            assert values, f"{path.name}: variable {variable['name']} finds no values"


def test_rule_files_parse() -> None:
    rules = sorted((CONFIG_DIR / "rules").glob("*.y*ml")) if (CONFIG_DIR / "rules").is_dir() else []
    if not rules:
        return
    _, promtool = require_prometheus()
    result = subprocess.run([promtool, "check", "rules", *map(str, rules)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- every config validates ------------------------------------------------------------------

DUMMY_ENV = {
    "OTELCOL_GATEWAY_ENDPOINT": "gateway.example:4317",
    "K8S_NODE_NAME": "node-1",
    "K8S_CLUSTER_NAME": "cluster-1",
    "PROMETHEUS_REMOTE_WRITE_URL": "http://prometheus.example:9090/api/v1/write",
    "MIMIR_OTLP_ENDPOINT": "https://mimir.example/otlp",
    "MIMIR_BASIC_AUTH": "dXNlcjpwYXNz",
    "TEMPO_OTLP_ENDPOINT": "https://tempo.example:4318",
    "TEMPO_BASIC_AUTH": "dXNlcjpwYXNz",
    "LOKI_OTLP_ENDPOINT": "https://loki.example/otlp",
    "LOKI_BASIC_AUTH": "dXNlcjpwYXNz",
    "DD_AGENT_OTLP_HTTP_ENDPOINT": "http://localhost:14318",
}
CONFIGS = [["node.yaml"], ["node.yaml", "node-k8s.yaml"], ["gateway-prometheus.yaml"],
           ["gateway-mimir-tempo.yaml"], ["gateway-datadog.yaml"]]


def test_every_config_is_listed() -> None:
    listed = {name for configs in CONFIGS for name in configs}
    on_disk = {p.name for p in CONFIG_DIR.glob("*.yaml")} - {"builder-config.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("configs", CONFIGS, ids=["+".join(c) for c in CONFIGS])
def test_config_validates(configs: list[str]) -> None:
    collector = require_collector()
    result = subprocess.run(
        [collector, "validate", *(f"--config={CONFIG_DIR / c}" for c in configs)],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, **DUMMY_ENV})
    assert result.returncode == 0, result.stdout + result.stderr


def test_usage_reads_the_accounting_counters_through_the_collector(e2e: E2E) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "otel_gpu.cli", "usage", "--url", e2e.prometheus.url,
         "--since", "1h", "--format", "json", "--match", f'{AGENT}, host_name="{DGX_HOST}"'],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    scenario = e2e.dgx
    users = {scenario.users.get(p.uid, str(p.uid))
             for gpu in scenario.gpus for p in gpu.processes_at(LAST)}
    rows = {row["tenant"]: row for row in report["rows"]}
    assert set(rows) == users
    assert all(row["gpu_hours"] > 0 and row["kwh"] > 0 for row in rows.values())
    for field in ("gpu_hours", "gpu_hours_busy", "slice_hours", "kwh"):
        assert report["total"][field] == pytest.approx(sum(r[field] for r in rows.values()))
