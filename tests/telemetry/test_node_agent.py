"""One owner per series on a node: the agent announces itself, a session that finds it reports
only its own series, and host.name is the node's name, never a container id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from runner import ROOT

from otel_gpu.collect.build import build_collector
from otel_gpu.telemetry.node_agent import (
    AGENT_ENV,
    AGENT_FILE_ENV,
    Announcement,
    agent_running,
    node_host_name,
    read_announcement,
)
from otel_gpu.telemetry.pipeline import assemble_pipeline

WORKLOAD_MEMORY = "otel_gpu.workload.gpu.memory.usage"


def test_the_setting_says_so_outright(tmp_path: Path) -> None:
    env = {AGENT_FILE_ENV: str(tmp_path / "none.json")}
    assert not agent_running(env)
    assert agent_running({**env, AGENT_ENV: "true"})
    Announcement("node-1", 10.0, env).beat()
    assert agent_running(env)
    assert not agent_running({**env, AGENT_ENV: "false"})


def test_a_stale_or_broken_announcement_means_no_agent(tmp_path: Path) -> None:
    env = {AGENT_FILE_ENV: str(tmp_path / "agent.json")}
    Announcement("node-1", 10.0, env).beat(now=1000.0)
    assert agent_running(env, now=1020.0)
    assert not agent_running(env, now=1000.0 + 31.0)  # three intervals, at least 30 s
    (tmp_path / "agent.json").write_text("{not json")
    assert read_announcement(env) is None and not agent_running(env)


def test_an_unwritable_place_is_logged_not_fatal(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    announcement = Announcement("n", 1.0, {AGENT_FILE_ENV: str(blocker / "agent.json")})
    announcement.beat()
    announcement.beat()
    announcement.close()
    assert not announcement.written
    assert sum("cannot announce" in r.message for r in caplog.records) == 1


def test_host_name_is_the_nodes_never_the_containers(tmp_path: Path, monkeypatch) -> None:
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "3f4e5d6c7b8a")  # a container id
    env = {AGENT_FILE_ENV: str(tmp_path / "agent.json")}
    assert node_host_name(in_container=True, environ=env) is None
    assert node_host_name(in_container=True, environ={**env, "NODE_NAME": "gpu-7"}) == "gpu-7"
    assert node_host_name(in_container=True, environ={
        **env, "NODE_NAME": "gpu-7", "OTEL_GPU_NODE_NAME": "set"}) == "set"
    Announcement("node-from-agent", 10.0, env).beat()
    assert node_host_name(in_container=True, environ=env) == "node-from-agent"
    assert node_host_name(in_container=False, environ={AGENT_FILE_ENV: str(tmp_path / "x")})


def test_a_container_id_or_a_pod_name_is_never_the_host_name(tmp_path: Path,
                                                            monkeypatch) -> None:
    import socket

    env = {AGENT_FILE_ENV: str(tmp_path / "none.json")}
    monkeypatch.setattr(socket, "gethostname", lambda: "3f4e5d6c7b8a")
    assert node_host_name(in_container=True, environ=env) is None
    monkeypatch.setattr(socket, "gethostname", lambda: "trainer-0")
    assert node_host_name(in_container=True, environ={**env, "KUBERNETES_SERVICE_HOST": "x"}) \
        is None
    assert node_host_name(in_container=True, environ=env) == "trainer-0"  # --hostname


def test_the_agent_announces_itself_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    env = {**os.environ, AGENT_FILE_ENV: str(path), "NODE_NAME": "node-9"}
    agent = subprocess.Popen([sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate",
                              "dgx-a100", "--exporter", "none", "--interval", "1", "--cycles",
                              "4"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not path.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        announced = json.loads(path.read_text())
        assert announced["pid"] == agent.pid and announced["host_name"] == "node-9"
        assert agent_running({AGENT_FILE_ENV: str(path)})
    finally:
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert not path.exists()


def _workload_memory(own_only: bool) -> tuple[float, set[str]]:
    pipeline = assemble_pipeline(build_collector("dgx-a100", 10.0), cache_max_age_s=15.0,
                                 in_memory=True, own_only=own_only)
    try:
        pipeline.collect_and_export()
        assert pipeline.memory_reader is not None
        data = pipeline.memory_reader.get_metrics_data()
    finally:
        pipeline.shutdown()
    names, total = set(), 0.0
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                names.add(metric.name)
                if metric.name == WORKLOAD_MEMORY:
                    total += sum(p.value for p in metric.data.data_points)
    return total, names


def test_with_an_agent_a_session_adds_nothing_the_agent_reports() -> None:
    agent_total, agent_names = _workload_memory(own_only=False)
    session_total, session_names = _workload_memory(own_only=True)
    assert agent_total > 0
    # A dashboard that sums over both sees the agent's figure alone.
    assert agent_total + session_total == agent_total
    assert not {n for n in session_names if n.startswith(("hw.", "nvidia.", "system.",
                                                          "container.", "otel_gpu.workload",
                                                          "otel_gpu.device", "otel_gpu.container"))}
    assert "otel_gpu.collection.duration" in session_names
    assert {n for n in agent_names if n.startswith("hw.")}


def test_a_sessions_own_insights_stay_and_device_ones_go() -> None:
    from otel_gpu.snapshot import Insight, Snapshot
    from otel_gpu.telemetry.node_agent import OwnSeries

    def insight(attributes: dict) -> Insight:
        return Insight(rule="r", severity="warning", message="m", remedy="x",
                       attributes=attributes, since=0.0)

    own = insight({"otel_gpu.training.run": "run-1"})
    device = insight({"hw.id": "GPU-1"})

    class Source:
        def get(self) -> Snapshot:
            return Snapshot(cycle=0, timestamp=0.0, driver_available=True,
                            insights=(own, device))

    assert OwnSeries(Source()).get().insights == (own,)
