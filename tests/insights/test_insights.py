"""Insights: each rule fires, holds and clears at the right cycle of simulated time, without
flapping; they reach `snapshot`, the `otel_gpu.insight.active` metric and OTLP log records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from otlp_receiver import OtlpReceiver, any_value, attributes
from runner import ROOT, points_named, run_cli, snapshot_json

from otel_gpu.collect.build import build_collector
from otel_gpu.insights.engine import (
    OPERATOR_RULES,
    RULE_IDS,
    RULES,
    USER_RULES,
    InsightEngine,
    InsightUpdate,
)
from otel_gpu.insights.thresholds import Thresholds, ThresholdsError
from otel_gpu.insights.thresholds_file import load_thresholds
from otel_gpu.snapshot import Gpu, Snapshot, TrainingSignals

SCENARIOS = ROOT / "tests" / "scenarios" / "insights"
HOST_RULES = ("host_memory_pressure", "filesystem_full")
# Under --simulate the host's own memory and filesystems are read unless a scenario overrides
# them; the machine running the tests must not decide a test's outcome.
NO_HOST = Thresholds(disabled_rules=HOST_RULES)


@dataclass(frozen=True)
class Event:
    cycle: int
    state: str  # fired / cleared
    rule: str
    severity: str
    subject: str


def _subject(attrs: dict[str, Any]) -> str:
    for key in ("hw.name", "container.name", "system.filesystem.mountpoint",
                "otel_gpu.environment.path"):
        if key in attrs:
            name = str(attrs[key])
            return f"{name}:xid{attrs['nvidia.gpu.xid']}" if "nvidia.gpu.xid" in attrs else name
    return "host"


def run_timeline(
    scenario: str | Path,
    cycles: int,
    interval_s: float,
    thresholds: Thresholds | None = None,
    training: Callable[[int], TrainingSignals | None] | None = None,
) -> tuple[list[Event], list[Snapshot]]:
    """Collect ``cycles`` cycles in-process; every state change and every Snapshot."""
    collector = build_collector(str(scenario), interval_s, thresholds=thresholds)
    events: list[Event] = []

    def listen(update: InsightUpdate, snapshot: Snapshot) -> None:
        for state, insights in (("cleared", update.cleared), ("fired", update.fired)):
            for i in insights:
                events.append(Event(snapshot.cycle, state, i.rule, i.severity,
                                    _subject(i.attributes)))

    collector.add_insight_listener(listen)
    if training is not None:
        collector.add_training_source(lambda: training(collector.sources.cycles - 1))
    collector.start()
    snapshots = []
    try:
        for _ in range(cycles):
            snapshots.append(collector.collect())
    finally:
        collector.close()
    for snap in snapshots:
        assert not [e for e in snap.errors if e.source == "insights"], snap.errors
    return events, snapshots


def _events(*rows: tuple[int, str, str, str, str]) -> list[Event]:
    return [Event(*row) for row in rows]


# (scenario, cycles, interval, thresholds, expected state changes in order)
TIMELINES = [
    ("input-bound", 25, 60, NO_HOST, _events(
        (11, "fired", "input_bound", "warning", "alice-train"),
        (20, "cleared", "input_bound", "warning", "alice-train"))),
    ("device-idle", 14, 300, NO_HOST, _events(
        (6, "fired", "device_idle", "warning", "gpu0"),
        (10, "cleared", "device_idle", "warning", "gpu0"))),
    ("device-idle-mig-dcgm", 14, 300, NO_HOST, _events(
        (6, "fired", "device_idle", "warning", "gpu0/mig1"),
        (10, "cleared", "device_idle", "warning", "gpu0/mig1"))),
    ("input-bound-mig-dcgm", 25, 60, NO_HOST, _events(
        (11, "fired", "input_bound", "warning", "alice-train"),
        (20, "cleared", "input_bound", "warning", "alice-train"))),
    ("low-sm-activity-mig-dcgm", 30, 60, NO_HOST, _events(
        (10, "fired", "low_sm_activity", "warning", "gpu0/mig0"),
        (20, "cleared", "low_sm_activity", "warning", "gpu0/mig0"))),
    ("gpu-memory", 20, 60, NO_HOST, _events(
        (5, "fired", "gpu_memory_pressure", "warning", "gpu0"),
        (15, "cleared", "gpu_memory_pressure", "warning", "gpu0"))),
    ("container-memory", 20, 60, NO_HOST, _events(
        (3, "fired", "container_memory_pressure", "critical", "alice-train"),
        (5, "fired", "container_memory_pressure", "warning", "alice-train"),
        (13, "cleared", "container_memory_pressure", "critical", "alice-train"),
        (15, "cleared", "container_memory_pressure", "warning", "alice-train"))),
    ("cpu-throttled", 40, 60, NO_HOST, _events(
        (16, "fired", "cpu_throttled", "warning", "alice-train"),
        (33, "cleared", "cpu_throttled", "warning", "alice-train"))),
    ("low-sm-activity", 30, 60, NO_HOST, _events(
        (10, "fired", "low_sm_activity", "warning", "gpu0"),
        (25, "cleared", "low_sm_activity", "warning", "gpu0"))),
    ("large-egress", 30, 60, NO_HOST, _events(
        (11, "fired", "large_egress", "info", "alice-train"),
        (23, "cleared", "large_egress", "info", "alice-train"))),
    ("shm-small", 16, 60, NO_HOST, _events(
        (1, "fired", "shm_small", "warning", "alice-train"),
        (6, "fired", "shm_small", "warning", "bob-train"),
        (13, "cleared", "shm_small", "warning", "bob-train"))),
    ("writable-layer", 25, 300, NO_HOST, _events(
        (7, "fired", "writable_layer_growth", "warning", "alice-train"),
        (22, "cleared", "writable_layer_growth", "warning", "alice-train"))),
    ("duplicated-environments", 8, 600, NO_HOST, _events(
        (0, "fired", "duplicated_environments", "info", "/opt/conda"),
        (5, "cleared", "duplicated_environments", "info", "/opt/conda"))),
    ("xid", 20, 60, NO_HOST, _events(
        (2, "fired", "xid_critical", "critical", "gpu0:xid79"),
        (6, "fired", "xid_critical", "warning", "gpu0:xid94"),
        (12, "cleared", "xid_critical", "critical", "gpu0:xid79"),
        (16, "cleared", "xid_critical", "warning", "gpu0:xid94"))),
    ("ecc", 20, 300, NO_HOST, _events(
        (3, "fired", "ecc_uncorrectable", "critical", "gpu0"),
        (15, "cleared", "ecc_uncorrectable", "critical", "gpu0"))),
    ("row-remap", 10, 60, NO_HOST, _events(
        (2, "fired", "row_remap", "warning", "gpu0"),
        (4, "cleared", "row_remap", "warning", "gpu0"),
        (6, "fired", "row_remap", "critical", "gpu0"))),
    ("thermal-throttle", 25, 60, NO_HOST, _events(
        (7, "fired", "thermal_throttle", "warning", "gpu0"),
        (10, "cleared", "thermal_throttle", "warning", "gpu0"))),
    ("power-brake", 14, 60, NO_HOST, _events(
        (7, "fired", "power_brake", "warning", "gpu0"),
        (10, "cleared", "power_brake", "warning", "gpu0"))),
    ("high-temperature", 40, 60, NO_HOST, _events(
        (12, "fired", "high_temperature", "warning", "gpu0"),
        (20, "cleared", "high_temperature", "warning", "gpu0"))),
    ("gpu-lost", 30, 60, NO_HOST, _events(
        (3, "fired", "gpu_lost", "critical", "gpu1"),
        (3, "fired", "xid_critical", "critical", "gpu1:xid79"),
        (13, "cleared", "xid_critical", "critical", "gpu1:xid79"))),
    ("host-memory", 12, 300, Thresholds(disabled_rules=("filesystem_full",)), _events(
        (4, "fired", "host_memory_pressure", "warning", "host"),
        (9, "cleared", "host_memory_pressure", "warning", "host"))),
    ("nvlink-errors", 25, 60, NO_HOST, _events(
        (7, "fired", "nvlink_errors", "warning", "gpu0"),
        (19, "cleared", "nvlink_errors", "warning", "gpu0"))),
    ("mig-reconfigured", 16, 60, NO_HOST, _events(
        (3, "fired", "mig_reconfigured", "info", "gpu0"),
        (13, "cleared", "mig_reconfigured", "info", "gpu0"))),
]


@pytest.mark.parametrize(("name", "cycles", "interval", "thresholds", "expected"), TIMELINES,
                         ids=[t[0] for t in TIMELINES])
def test_rule_fires_holds_and_clears_at_the_right_cycles(
    name: str, cycles: int, interval: float, thresholds: Thresholds, expected: list[Event]
) -> None:
    events, snapshots = run_timeline(SCENARIOS / f"{name}.yaml", cycles, interval, thresholds)
    assert events == expected
    # Between its firing and its clearing an insight is in every Snapshot, and only then.
    for event in expected:
        if event.state != "fired":
            continue
        end = next((e.cycle for e in expected if e.state == "cleared" and e.rule == event.rule
                    and e.subject == event.subject and e.severity == event.severity
                    and e.cycle >= event.cycle), cycles)
        for snap in snapshots:
            present = any(i.rule == event.rule and i.severity == event.severity
                          and _subject(dict(i.attributes)) == event.subject
                          for i in snap.insights)
            assert present == (event.cycle <= snap.cycle < end), (event, snap.cycle)


def test_filesystem_full_and_filling_up() -> None:
    events, _ = run_timeline(SCENARIOS / "filesystem.yaml", 20, 300,
                             Thresholds(disabled_rules=("host_memory_pressure",)))
    ours = [e for e in events if e.subject in ("/data", "/scratch", "/archive")]
    assert ours == _events(
        (6, "fired", "filesystem_full", "warning", "/data"),
        (8, "fired", "filesystem_full", "critical", "/scratch"),
        (12, "cleared", "filesystem_full", "warning", "/data"),
        (14, "cleared", "filesystem_full", "critical", "/scratch"),
    )


def test_every_rule_has_a_timeline() -> None:
    covered = {e.rule for t in TIMELINES for e in t[4]} | {"filesystem_full"}
    assert covered == set(RULE_IDS)
    assert [r.id for r in RULES] == list(RULE_IDS) == [*USER_RULES, *OPERATOR_RULES]


def test_an_active_insight_carries_message_remedy_and_subject() -> None:
    _, snapshots = run_timeline(SCENARIOS / "container-memory.yaml", 8, 60, NO_HOST)
    active = {i.severity: i for i in snapshots[-1].insights}
    oom = active["critical"]
    assert oom.rule == "container_memory_pressure" and oom.since == snapshots[3].timestamp
    assert "killed 1 process" in oom.message and "32.0 GiB" in oom.message
    assert "memory limit" in oom.remedy
    assert oom.attributes["container.name"] == "alice-train"
    assert oom.attributes["container.id"] == "c1" * 32
    near = active["warning"]
    assert "95 %" in near.message and near.since == snapshots[5].timestamp


# -- hysteresis ----------------------------------------------------------------------------------


def _gpu_snapshot(cycle: int, temperature: float, interval_s: float = 60.0) -> Snapshot:
    gpu = Gpu(index=0, uuid="GPU-0", name="gpu0", model="NVIDIA A100", memory_total_bytes=1,
              temperature_gpu_celsius=temperature)
    return Snapshot(cycle=cycle, timestamp=1000.0 + cycle * interval_s, driver_available=True,
                    gpus=(gpu,))


def _feed(engine: InsightEngine, temperatures: Iterable[float],
          start: int = 0) -> Iterator[tuple[int, InsightUpdate]]:
    for k, temperature in enumerate(temperatures, start):
        yield k, engine.update(_gpu_snapshot(k, temperature))


def test_a_value_oscillating_inside_the_band_never_flaps() -> None:
    engine = InsightEngine(Thresholds())
    fired, cleared = [], []
    temperatures = [90.0] * 11 + [81.0, 84.0, 86.0, 80.0, 85.0, 82.5] * 20 + [79.0]
    for k, update in _feed(engine, temperatures):
        fired += [k for i in update.fired if i.rule == "high_temperature"]
        cleared += [k for i in update.cleared if i.rule == "high_temperature"]
    assert fired == [10]  # 10 min after cycle 0
    assert cleared == [len(temperatures) - 1]  # only once below 80 C


def test_a_value_crossing_the_threshold_back_and_forth_never_fires() -> None:
    engine = InsightEngine(Thresholds())
    temperatures = [86.0, 86.0, 86.0, 84.0] * 30  # above 85 C for 3 min at a time
    assert not any(update.fired for _, update in _feed(engine, temperatures))
    assert not engine.active


def test_severity_follows_the_bands_of_training_data_wait() -> None:
    ratios = [0.25] * 8 + [0.18] * 4 + [0.10] * 4 + [0.04] * 4 + [0.02] * 2

    def signals(cycle: int) -> TrainingSignals:
        ratio = ratios[min(cycle, len(ratios) - 1)]
        return TrainingSignals(ratio, steps=100 * (cycle + 1), attributes={"run": "r1"})

    events, snapshots = run_timeline(SCENARIOS / "input-bound.yaml", len(ratios), 60, NO_HOST,
                                     training=signals)
    assert [(e.cycle, e.state, e.severity) for e in events] == [
        (5, "fired", "warning"),    # 20 % or more for 5 min
        (12, "cleared", "warning"),  # 18 % stays warning (band 15-20 %); 10 % does not
        (12, "fired", "info"),
        (20, "cleared", "info"),    # 4 % stays info (band 3-5 %); 2 % clears
    ]
    assert {e.rule for e in events} == {"input_bound"}
    assert "25 %" in next(i for i in snapshots[6].insights).message
    # With training signals the CPU heuristic stands aside: the container is never named.
    assert all("container.id" not in i.attributes for s in snapshots for i in s.insights)


def test_a_stalled_training_run_says_nothing() -> None:
    def signals(cycle: int) -> TrainingSignals:
        return TrainingSignals(0.9, steps=100, attributes={})

    events, _ = run_timeline(SCENARIOS / "gpu-memory.yaml", 12, 60, NO_HOST, training=signals)
    assert not [e for e in events if e.rule == "input_bound"]


def test_an_unseen_subject_clears_after_the_grace_time() -> None:
    engine = InsightEngine(Thresholds(temperature_for_s=0))
    engine.update(_gpu_snapshot(0, 90.0))
    assert [i.rule for i in engine.active] == ["high_temperature"]
    empty = Snapshot(cycle=1, timestamp=1060.0, driver_available=True)
    assert engine.update(empty).cleared == ()  # one missed read is not a recovery
    later = Snapshot(cycle=2, timestamp=1121.0, driver_available=True)
    assert [i.rule for i in engine.update(later).cleared] == ["high_temperature"]


# -- the healthy built-ins ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dgx-a100", "dgx-h100-mig", "h200"])
def test_no_insight_on_a_built_in_over_ten_minutes(name: str) -> None:
    events, snapshots = run_timeline(name, 60, 10, NO_HOST)
    assert events == [] and snapshots[-1].insights == ()


# What the built-ins stage on purpose, for users to see: a job starved of CPU (bob-job-0:
# 4 CPUs at their quota, 35 % throttled, GPU at 19-41 %), devices handed out and left unused
# (GPU 5, gpu1/mig2), a notebook that holds gpu0/mig2 and computes nothing (DCGM says 0 %),
# and a sweep whose kernels keep gpu6 busy with 12 % of its SMs.
STAGED = {
    "dgx-a100": {("cpu_throttled", "research/bob-job-0"), ("input_bound", "research/bob-job-0"),
                 ("device_idle", "gpu5"), ("device_idle", "gpu1/mig2"),
                 ("device_idle", "gpu0/mig2")},
    "dgx-h100-mig": {("low_sm_activity", "gpu6")},
    "h200": set(),
}


@pytest.mark.parametrize("name", sorted(STAGED))
def test_built_ins_over_two_hours_show_only_what_they_stage(name: str) -> None:
    events, snapshots = run_timeline(name, 120, 60, NO_HOST)
    assert not [e for e in events if e.rule in OPERATOR_RULES]
    assert not [e for e in events if e.state == "cleared"]
    seen = set()
    for insight in snapshots[-1].insights:
        attrs = insight.attributes
        who = attrs.get("hw.name") if insight.rule in ("device_idle", "low_sm_activity") \
            else f"{attrs.get('k8s.namespace.name')}/{attrs.get('k8s.pod.name')}"
        seen.add((insight.rule, who))
    assert seen == STAGED[name]


# -- end to end: the command line ---------------------------------------------------------------


def test_snapshot_json_lists_insights_and_the_metric() -> None:
    doc = snapshot_json("--simulate", str(SCENARIOS / "xid.yaml"), "--cycles", "8",
                        "--interval", "60")
    by_code = {i["attributes"].get("nvidia.gpu.xid"): i for i in doc["insights"]}
    assert set(by_code) == {79, 94}
    xid79 = by_code[79]
    assert set(xid79) == {"rule", "severity", "message", "remedy", "attributes", "since"}
    assert xid79["rule"] == "xid_critical" and xid79["severity"] == "critical"
    assert "Xid 79" in xid79["message"] and "reboot" in xid79["remedy"]
    assert xid79["attributes"]["hw.name"] == "gpu0"
    assert by_code[94]["severity"] == "warning"
    points = points_named(doc, "otel_gpu.insight.active")
    assert all(p["value"] == 1 and p["unit"] == "1" and p["kind"] == "gauge" for p in points)
    expected = {json.dumps({**i["attributes"], "otel_gpu.insight.rule": i["rule"],
                            "otel_gpu.insight.severity": i["severity"]}, sort_keys=True)
                for i in doc["insights"]}
    assert {json.dumps(p["attributes"], sort_keys=True) for p in points} == expected


def test_snapshot_after_the_hold_time_has_no_insight() -> None:
    doc = snapshot_json("--simulate", str(SCENARIOS / "xid.yaml"), "--cycles", "20",
                        "--interval", "60")
    assert not [i for i in doc["insights"] if i["rule"] == "xid_critical"]
    assert not points_named(doc, "otel_gpu.insight.active") or all(
        p["attributes"]["otel_gpu.insight.rule"] != "xid_critical"
        for p in points_named(doc, "otel_gpu.insight.active"))


def test_thresholds_file_changes_when_a_rule_fires(tmp_path: Path) -> None:
    args = ("--simulate", str(SCENARIOS / "high-temperature.yaml"), "--cycles", "5",
            "--interval", "60")
    assert not [i for i in snapshot_json(*args)["insights"] if i["rule"] == "high_temperature"]
    path = tmp_path / "thresholds.yaml"
    path.write_text("temperature_for_s: 120\ntemperature_celsius: 87\n")
    doc = snapshot_json(*args, "--thresholds", str(path))
    (hot,) = [i for i in doc["insights"] if i["rule"] == "high_temperature"]
    assert hot["attributes"]["hw.name"] == "gpu0" and "87 °C" in hot["message"]


def test_table_lists_active_insights() -> None:
    result = run_cli("snapshot", "--simulate", str(SCENARIOS / "gpu-lost.yaml"), "--cycles",
                     "5", "--interval", "60")
    assert result.returncode == 0, result.stderr
    assert "insights (2 active):" in result.stdout
    assert "CRITICAL gpu_lost: GPU gpu1" in result.stdout
    assert "remedy: Drain the node" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


@pytest.mark.parametrize(("text", "name", "key"), [
    ("temperature_celsius: 85\ntemprature_for_s: 60\n", "t.yaml", "temprature_for_s"),
    ("temperature_for_s: soon\n", "t.yaml", "temperature_for_s"),
    ('{"xid_critical_codes": [79, "x"]}', "t.json", "xid_critical_codes[1]"),
    ("disabled_rules: [gpu_on_fire]\n", "t.yaml", "disabled_rules[0]"),
    ("cpu_throttled: -0.1\n", "t.yaml", "cpu_throttled"),
])
def test_bad_thresholds_file_exits_2_naming_the_key(tmp_path: Path, text: str, name: str,
                                                    key: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = run_cli("snapshot", "--simulate", "h200", "--thresholds", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and key in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(ThresholdsError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_thresholds(path)


def test_thresholds_load_from_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("temperature_celsius: 80\nxid_critical_codes: [79]\n"
                                     "data_wait_min_steps: 5\n")
    loaded = load_thresholds(tmp_path / "t.yaml")
    assert loaded.temperature_celsius == 80.0 and loaded.xid_critical_codes == (79,)
    assert loaded.data_wait_min_steps == 5 and loaded.host_memory_used == 0.90
    (tmp_path / "t.json").write_text('{"disabled_rules": ["device_idle"]}')
    assert load_thresholds(tmp_path / "t.json").disabled_rules == ("device_idle",)
    assert load_thresholds(None) == Thresholds()
    with pytest.raises(ThresholdsError, match=r"missing\.yaml"):
        load_thresholds(tmp_path / "missing.yaml")


# -- end to end: log records at a real OTLP receiver ----------------------------------------------


def _log_records(receiver: OtlpReceiver) -> list[dict[str, Any]]:
    records = []
    for request in receiver.log_requests:
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    records.append({
                        "body": any_value(record.body),
                        "attributes": attributes(record.attributes),
                        "severity": record.severity_text,
                        "time": record.time_unix_nano,
                        "resource": attributes(resource_logs.resource.attributes),
                    })
    return records


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_agent_sends_one_log_record_per_state_change(tmp_path: Path, protocol: str) -> None:
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text("xid_hold_s: 2\n")
    with OtlpReceiver() as receiver:
        endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_SERVICE_NAME": "gpu-node-3"}
        agent = subprocess.run(
            [sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate",
             str(SCENARIOS / "xid.yaml"), "--interval", "0.5", "--cycles", "12",
             "--thresholds", str(thresholds)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert agent.returncode == 0, agent.stderr
        assert receiver.wait_for(lambda: len(_log_records(receiver)) >= 4, timeout_s=10)
        time.sleep(0.5)  # anything sent twice would arrive by now
        records = _log_records(receiver)
    xid_records = [r for r in records if r["attributes"].get("otel_gpu.insight.rule")
                   == "xid_critical"]
    assert [(r["attributes"]["nvidia.gpu.xid"], r["attributes"]["otel_gpu.insight.state"])
            for r in sorted(xid_records, key=lambda r: r["time"])] == [
        (79, "fired"), (79, "cleared"), (94, "fired"), (94, "cleared")]
    assert len(records) == len(xid_records)
    fired = next(r for r in xid_records if r["attributes"]["otel_gpu.insight.state"] == "fired"
                 and r["attributes"]["nvidia.gpu.xid"] == 79)
    assert "Xid 79" in fired["body"] and fired["severity"] == "ERROR"
    attrs = fired["attributes"]
    assert attrs["otel_gpu.insight.severity"] == "critical" and attrs["hw.name"] == "gpu0"
    assert "reboot" in attrs["otel_gpu.insight.remedy"]
    assert fired["resource"]["service.name"] == "gpu-node-3"
    cleared = next(r for r in xid_records if r["attributes"]["otel_gpu.insight.state"]
                   == "cleared" and r["attributes"]["nvidia.gpu.xid"] == 79)
    assert cleared["time"] - fired["time"] == 2_000_000_000  # 4 cycles of 0.5 s, simulated


# -- the library ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dali", [False, True])
def test_the_library_feeds_training_signals_to_the_rules(monkeypatch: pytest.MonkeyPatch,
                                                        dali: bool) -> None:
    import types

    from otel_gpu.session.api import start, stop

    monkeypatch.delitem(sys.modules, "nvidia.dali", raising=False)
    if dali:  # what `import nvidia.dali` leaves behind, as far as the session looks
        monkeypatch.setitem(sys.modules, "nvidia.dali", types.ModuleType("nvidia.dali"))
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")

    def slow_batches(n: int) -> Iterator[int]:
        for i in range(n):
            time.sleep(0.001)
            yield i

    session = start(simulate="h200", export_interval_s=100, metric_exporters=[],
                    attributes={"otel_gpu.training.run": "r7"})
    try:
        assert session.collector is not None
        fired_at = None
        for cycle in range(6):
            for _ in session.track(slow_batches(25)):
                pass
            snapshot = session.collector.collect()
            if fired_at is None and snapshot.insights:
                fired_at = cycle
        (insight,) = snapshot.insights
    finally:
        stop()
    assert insight.rule == "input_bound" and insight.severity == "warning"
    assert insight.attributes == {"otel_gpu.training.run": "r7"}
    assert "waiting for the next batch" in insight.message
    assert fired_at is not None and fired_at >= 3  # 5 min of 100 s cycles
    assert ("NVIDIA DALI is loaded" in insight.remedy) is dali
    assert ("NVIDIA DALI can take" in insight.remedy) is not dali


def test_a_rank_reports_the_insights_of_its_devices_and_the_host_rank_the_rest() -> None:
    from otel_gpu.session.scope import scope_snapshot

    _, snapshots = run_timeline("dgx-a100", 120, 60, NO_HOST)
    snapshot = snapshots[-1]
    mig = next(m for m in snapshot.gpus[1].mig_devices if m.name == "gpu1/mig2")
    own = scope_snapshot(snapshot, [mig.uuid], report_host=False)
    assert [(i.rule, i.attributes["hw.name"]) for i in own.insights] == [
        ("device_idle", "gpu1/mig2")]
    host = scope_snapshot(snapshot, ["0"], report_host=True)
    # GPU 0's idle notebook slice (gpu0/mig2, 0 % by DCGM) is this rank's own device.
    assert {i.rule for i in host.insights} == {"cpu_throttled", "input_bound", "device_idle"}
    assert {i.attributes["hw.name"] for i in host.insights if i.rule == "device_idle"} == {
        "gpu0/mig2"}


def test_gpu_lost_clears_on_the_first_cycle_the_gpu_answers() -> None:
    engine = InsightEngine(Thresholds())
    lost = [False, True, True, False, False]
    events = []
    for k, is_lost in enumerate(lost):
        gpu = Gpu(index=0, uuid="GPU-1", name="gpu0", model="M", lost=is_lost)
        update = engine.update(Snapshot(cycle=k, timestamp=10.0 * k, driver_available=True,
                                        gpus=(gpu,)))
        events += [(k, "fired") for i in update.fired if i.rule == "gpu_lost"]
        events += [(k, "cleared") for i in update.cleared if i.rule == "gpu_lost"]
    assert events == [(1, "fired"), (3, "cleared")]  # not 60 s (the grace period) later
    assert not engine.active


# -- input_bound and NVIDIA DALI ------------------------------------------------------------------


def _input_bound_scenario(tmp_path: Path, libraries: list[str] | None) -> Path:
    text = (SCENARIOS / "input-bound.yaml").read_text()
    if libraries is not None:
        text = text.replace("        used_memory_bytes: 21474836480\n",
                            "        used_memory_bytes: 21474836480\n"
                            f"        libraries: {json.dumps(libraries)}\n")
    path = tmp_path / "input-bound-dali.yaml"
    path.write_text(text)
    return path


def test_cpu_bound_without_dali_suggests_it(tmp_path: Path) -> None:
    scenario = _input_bound_scenario(tmp_path, ["libtorch_cuda.so"])
    _, snapshots = run_timeline(scenario, 12, 60, NO_HOST)
    assert [w.dali for w in snapshots[-1].workloads] == [False]
    (insight,) = snapshots[-1].insights
    assert insight.rule == "input_bound"
    assert "Give the container more CPUs" in insight.remedy
    assert "No GPU process here uses NVIDIA DALI" in insight.remedy


def test_cpu_bound_with_dali_points_at_the_pipeline(tmp_path: Path) -> None:
    scenario = _input_bound_scenario(tmp_path, ["libdali.so", "libdali_operators.so"])
    _, snapshots = run_timeline(scenario, 12, 60, NO_HOST)
    assert [w.dali for w in snapshots[-1].workloads] == [True]
    (insight,) = snapshots[-1].insights
    assert insight.rule == "input_bound"
    assert "DALI pipeline" in insight.remedy and "prefetch_queue_depth" in insight.remedy
    assert "more CPUs" not in insight.remedy and "No GPU process" not in insight.remedy


@pytest.mark.parametrize(("dali", "present", "absent"), [
    (False, ["DataLoader workers", "30 % of step time waiting for data, NVIDIA DALI"],
     ["DALI pipeline"]),
    (True, ["NVIDIA DALI is loaded", "num_threads", "storage"], ["DataLoader"]),
    (None, ["DataLoader workers"], ["DALI"]),
])
def test_data_wait_remedy_follows_dali_in_the_training_process(
    dali: bool | None, present: list[str], absent: list[str]
) -> None:
    def signals(cycle: int) -> TrainingSignals:
        return TrainingSignals(0.3, steps=100 * (cycle + 1), attributes={"run": "r1"}, dali=dali)

    _, snapshots = run_timeline(SCENARIOS / "input-bound.yaml", 7, 60, NO_HOST, training=signals)
    (insight,) = snapshots[-1].insights
    assert insight.rule == "input_bound" and "30 %" in insight.message
    for text in present:
        assert text in insight.remedy
    for text in absent:
        assert text not in insight.remedy
