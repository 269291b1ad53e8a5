"""End to end: `otel-gpu agent --simulate` exports over OTLP to a real receiver that decodes it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from otlp_receiver import OtlpReceiver, points
from runner import ROOT

from otel_gpu.simulate import load_scenario


def _agent(endpoint_env: dict[str, str], *args: str) -> subprocess.Popen:
    import os

    env = {**os.environ, **endpoint_env, "OTEL_SERVICE_NAME": "gpu-node-7",
           "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test,k8s.node.name=node-7"}
    return subprocess.Popen([sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate",
                             "dgx-a100", "--interval", "0.5", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_dgx_points(received: list[dict]) -> None:
    scenario = load_scenario("dgx-a100")
    resources = {tuple(sorted(p["resource"].items())) for p in received}
    assert len(resources) == 1
    resource = dict(next(iter(resources)))
    assert resource["service.name"] == "gpu-node-7"
    assert resource["k8s.node.name"] == "node-7"
    assert resource["deployment.environment.name"] == "test"

    memory = [p for p in received if p["name"] == "hw.gpu.memory.usage"]
    gpu_ids = {p["attributes"]["hw.id"] for p in memory if "hw.parent" not in p["attributes"]}
    assert len(gpu_ids) == len(scenario.gpus)
    mig_points = [p for p in memory if "hw.parent" in p["attributes"]]
    assert mig_points, "MIG devices must report memory"
    assert all(p["attributes"]["hw.parent"] in gpu_ids for p in mig_points)
    assert all(p["unit"] == "By" and p["kind"] == "sum" for p in memory)

    power = [p for p in received if p["name"] == "hw.power"]
    assert power and all(p["unit"] == "W" and p["attributes"]["hw.type"] == "gpu" for p in power)
    utilization = [p for p in received if p["name"] == "hw.gpu.utilization"]
    assert utilization and all(0.0 <= p["value"] <= 1.0 for p in utilization)
    mig_parents = {p["attributes"]["hw.parent"] for p in mig_points}
    assert not {p["attributes"]["hw.id"] for p in utilization} & mig_parents
    assert any(p["name"] == "system.memory.usage" for p in received)
    assert not any("process.pid" in p["attributes"] for p in received)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_agent_exports_the_scenario_over_otlp(protocol: str) -> None:
    with OtlpReceiver() as receiver:
        endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
        agent = _agent({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}, "--cycles", "2")
        _, err = agent.communicate(timeout=120)
        assert agent.returncode == 0, err
        assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 2, timeout_s=10)
        requests = receiver.metric_requests
    received = points(requests[-1:])
    _check_dgx_points(received)
    # The second export is cumulative: energy and errors may only grow.
    first = {(p["name"], tuple(sorted(p["attributes"].items()))): p["value"]
             for p in points(requests[:1]) if p["name"] == "hw.energy"}
    later = {(p["name"], tuple(sorted(p["attributes"].items()))): p["value"]
             for p in received if p["name"] == "hw.energy"}
    assert first and all(later[k] >= v for k, v in first.items())


def test_sigterm_flushes_the_last_cycle_and_exits_zero() -> None:
    with OtlpReceiver() as receiver:
        agent = _agent({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint}, "--interval",
                       "30")
        assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 1, timeout_s=60)
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
        # One export at start, one more for the state at shutdown, and nothing lost in between.
        assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 2, timeout_s=10)
        _check_dgx_points(points(receiver.metric_requests[-1:]))


def test_unreachable_backend_does_not_crash_or_hang_the_agent() -> None:
    agent = _agent({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                    "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}, "--cycles", "2")
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
