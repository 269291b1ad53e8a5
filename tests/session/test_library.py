"""otel_gpu.start() in a training script: providers, ranks, forks, auto-instrumentation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from otlp_receiver import OtlpReceiver, points
from runner import ROOT

from otel_gpu.collect.build import build_collector
from otel_gpu.collect.collector import LocalSources
from otel_gpu.session.modes import Mode
from otel_gpu.session.scope import rank_devices, scope_snapshot
from otel_gpu.sources.identity import visible_devices


def _run_script(code: str, env: dict[str, str], timeout: float = 120) -> None:
    full_env = {**os.environ, **env}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                            cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr


def _gpu_names(received: list[dict]) -> set[str]:
    return {p["attributes"]["hw.name"] for p in received if p["name"] == "hw.gpu.memory.usage"}


def test_start_exports_gpu_host_and_training_over_otlp() -> None:
    with OtlpReceiver() as receiver:
        _run_script("""
            import otel_gpu
            with otel_gpu.start():
                for _ in otel_gpu.track(range(20), batch_size=4):
                    pass
        """, {"OTEL_GPU_SIMULATE": "h200", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_METRIC_EXPORT_INTERVAL": "60000", "OTEL_SERVICE_NAME": "resnet-train"})
        assert receiver.wait_for(lambda: receiver.metric_requests, timeout_s=10)
        assert receiver.wait_for(lambda: receiver.trace_requests, timeout_s=10)
        time.sleep(0.3)  # anything sent twice would arrive by now
        # stop() exported once at exit, long before the 60 s interval, from the collector
        # process: the GPU and host metrics, and the training steps the training process
        # wrote into its step buffer. The training process itself had no metrics to send.
        requests = list(receiver.metric_requests)
        traces = list(receiver.trace_requests)
    assert len(requests) == 1
    names = {p["name"] for p in points(requests)}
    assert {"otel_gpu.training.steps", "hw.gpu.memory.usage", "system.memory.usage"} <= names
    # The step histogram's exemplars link to the step spans the training process exported.
    step_traces = {(span.trace_id, span.span_id) for request in traces
                   for rs in request.resource_spans for ss in rs.scope_spans
                   for span in ss.spans if span.name == "otel_gpu.training.step"}
    exemplars = {(e.trace_id, e.span_id) for request in requests
                 for rm in request.resource_metrics for sm in rm.scope_metrics
                 for metric in sm.metrics if metric.name == "otel_gpu.training.step.duration"
                 for point in metric.histogram.data_points for e in point.exemplars}
    assert step_traces and exemplars and exemplars <= step_traces
    received = points(requests)
    steps = [p for p in received if p["name"] == "otel_gpu.training.steps"]
    assert sum(p["value"] for p in steps) == 20
    samples = [p for p in received if p["name"] == "otel_gpu.training.samples"]
    assert sum(p["value"] for p in samples) == 80
    # Both processes report as the training process: one resource, its pid included.
    resources = {tuple(sorted(p["resource"].items())) for p in received}
    assert len(resources) == 1
    assert received[0]["resource"]["service.name"] == "resnet-train"
    assert "process.pid" in received[0]["resource"]
    assert _gpu_names(received) == {"gpu0"}


def test_the_collector_process_feeds_training_signals_to_the_rules(tmp_path: Path) -> None:
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text("data_wait_for_s: 0\ndata_wait_min_steps: 5\n")
    with OtlpReceiver() as receiver:
        _run_script("""
            import time
            import otel_gpu

            def slow(n):
                for i in range(n):
                    time.sleep(0.004)
                    yield i

            with otel_gpu.start(attributes={"otel_gpu.training.run": "r9"}):
                end = time.monotonic() + 2.0
                while time.monotonic() < end:
                    for _ in otel_gpu.track(slow(10)):
                        time.sleep(0.001)
        """, {"OTEL_GPU_SIMULATE": "h200", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_METRIC_EXPORT_INTERVAL": "250", "OTEL_TRACES_EXPORTER": "none",
              "OTEL_GPU_THRESHOLDS": str(thresholds)})
        assert receiver.wait_for(lambda: receiver.log_requests, timeout_s=10)
        received = points(receiver.metric_requests)
        logs = list(receiver.log_requests)
    active = [p for p in received if p["name"] == "otel_gpu.insight.active"
              and p["attributes"].get("otel_gpu.insight.rule") == "input_bound"]
    assert active and active[-1]["attributes"]["otel_gpu.training.run"] == "r9"
    assert active[-1]["attributes"]["otel_gpu.insight.severity"] == "warning"
    bodies = [str(record.body) for request in logs for rl in request.resource_logs
              for sl in rl.scope_logs for record in sl.log_records]
    assert any("input-bound" in body for body in bodies), bodies


def test_the_training_process_loads_no_grpc_protobuf_or_sources() -> None:
    # The export child does the collection and the OTLP encoding; the training process relays.
    with OtlpReceiver() as receiver:
        _run_script("""
            import sys
            import otel_gpu
            session = otel_gpu.start(simulate="h200")
            for _ in otel_gpu.track(range(5)):
                pass
            loaded = [name for name in sys.modules
                      if name.split(".")[0] == "grpc" or name.startswith("google.protobuf")
                      or name == "otel_gpu.sources" or name.startswith("otel_gpu.sources.")
                      or name.startswith("otel_gpu.collect")]
            assert session.mode.name == "EXPORT_CHILD", session.mode
            assert not loaded, loaded
            otel_gpu.stop()
        """, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint})
        assert receiver.wait_for(lambda: receiver.metric_requests, timeout_s=10)
        names = {p["name"] for p in points(receiver.metric_requests)}
    assert {"otel_gpu.training.steps", "hw.gpu.memory.usage"} <= names


def test_a_forked_worker_adds_nothing_to_what_the_two_processes_export() -> None:
    with OtlpReceiver() as receiver:
        _run_script("""
            import os, time
            import otel_gpu
            from otel_gpu.session.protocol import Kind
            session = otel_gpu.start()
            list(otel_gpu.track(range(7)))
            pid = os.fork()
            if pid == 0:
                again = otel_gpu.start()
                list(otel_gpu.track(range(50)))
                time.sleep(0.5)
                relayed = session.child.send(Kind.SPANS, [])
                os._exit(0 if again is not session and again.child is None
                         and not relayed else 3)
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
            otel_gpu.stop()
        """, {"OTEL_GPU_SIMULATE": "h200", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_METRIC_EXPORT_INTERVAL": "60000", "OTEL_TRACES_EXPORTER": "none",
              "OTEL_LOGS_EXPORTER": "none"})
        assert receiver.wait_for(lambda: receiver.metric_requests, timeout_s=10)
        time.sleep(0.5)
        requests = list(receiver.metric_requests)
    assert len(requests) == 1  # the collector process's last export; the fork's nothing
    steps = [p for p in points(requests) if p["name"] == "otel_gpu.training.steps"]
    assert sum(p["value"] for p in steps) == 7


def test_each_rank_reports_its_own_device_and_one_reports_the_host() -> None:
    with OtlpReceiver() as receiver:
        for rank in ("0", "1"):
            _run_script("""
                import otel_gpu
                otel_gpu.start()
                otel_gpu.stop()
            """, {"OTEL_GPU_SIMULATE": "dgx-a100", "LOCAL_RANK": rank, "WORLD_SIZE": "2",
                  "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                  "OTEL_RESOURCE_ATTRIBUTES": f"test.rank={rank}"})
        assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 2, timeout_s=10)
        received = points(receiver.metric_requests)
    by_rank: dict[str, list[dict]] = {}
    for p in received:
        by_rank.setdefault(p["resource"]["test.rank"], []).append(p)
    assert _gpu_names(by_rank["0"]) == {"gpu0", "gpu0/mig0", "gpu0/mig1", "gpu0/mig2",
                                        "gpu0/mig3"}
    assert _gpu_names(by_rank["1"]) == {"gpu1", "gpu1/mig0", "gpu1/mig1", "gpu1/mig2"}
    assert any(p["name"] == "system.memory.usage" for p in by_rank["0"])
    assert not any(p["name"].startswith("system.") for p in by_rank["1"])


def test_visible_devices_and_ranks() -> None:
    assert visible_devices({}) is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_devices({"NVIDIA_VISIBLE_DEVICES": "all"}) is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "MIG-abc"}) == ["MIG-abc"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert rank_devices({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "4,5"}) == (["5"], False)
    assert rank_devices({"LOCAL_RANK": "0"}) == (["0"], True)
    assert rank_devices({"LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "4"}) == ([], False)


def test_scope_keeps_a_mig_device_given_by_uuid() -> None:
    collector = build_collector("dgx-a100", 10.0)
    collector.start()
    collector.collect()
    snapshot = collector.collect()
    mig = snapshot.gpus[0].mig_devices[1]
    scoped = scope_snapshot(snapshot, [mig.uuid], report_host=False)
    assert [g.uuid for g in scoped.gpus] == [snapshot.gpus[0].uuid]
    assert [m.uuid for m in scoped.gpus[0].mig_devices] == [mig.uuid]
    assert scoped.host is None
    # The accounts of the other devices' workloads stay out too.
    assert len(snapshot.accounts) > len(scoped.accounts) > 0
    assert {a.attributes["hw.id"] for a in scoped.accounts} == {mig.uuid}
    assert scope_snapshot(snapshot, None, True) is snapshot


class _PidFileExporter(MetricExporter):
    """Writes the exporting process's pid to a file on every export."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: object) -> MetricExportResult:
        with self.path.open("a") as out:
            out.write(f"{os.getpid()}\n")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_no_collector_and_exports_nothing(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    child_report = tmp_path / "child"
    code = f"""
        import os, time
        from pathlib import Path
        import otel_gpu
        from otel_gpu.session.api import start
        from test_library import _PidFileExporter
        session = start(simulate="h200", export_interval_s=0.05,
                        metric_exporters=[_PidFileExporter(Path({str(pids)!r}))])
        time.sleep(0.3)
        pid = os.fork()
        if pid == 0:
            again = otel_gpu.start()
            steps = list(otel_gpu.track(range(5)))
            time.sleep(0.5)
            Path({str(child_report)!r}).write_text(
                f"{{again.collector is None}} {{again is not session}} {{len(steps)}}")
            os._exit(0)
        os.waitpid(pid, 0)
        otel_gpu.stop()
        print(os.getpid())
    """
    path = [str(ROOT / "tests" / "session"), str(ROOT / "tests" / "support")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    parent = result.stdout.strip()
    exported_by = set(pids.read_text().split())
    assert exported_by == {parent}
    assert child_report.read_text() == "True True 5"


class _BlockingExporter(MetricExporter):
    """A backend that hangs until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.calls = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: object) -> MetricExportResult:
        self.calls += 1
        self.release.wait(30)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self.release.set()


def test_a_hung_backend_does_not_block_the_training_loop() -> None:
    from otel_gpu.session.api import start, stop

    exporter = _BlockingExporter()
    session = start(simulate="h200", export_interval_s=0.01, metric_exporters=[exporter])
    try:
        while exporter.calls == 0:
            threading.Event().wait(0.01)
        # The export thread is stuck inside the backend now; the loop must still run through.
        done = list(session.track(range(200)))
        assert len(done) == 200 and exporter.calls == 1
    finally:
        exporter.release.set()
        stop()


def test_start_is_idempotent_and_uses_the_global_sdk_provider() -> None:
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider

    code = """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import otel_gpu
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        metrics.set_meter_provider(provider)
        first = otel_gpu.start(simulate="h200")
        assert otel_gpu.start() is first
        assert first.meter_provider is provider
        names = {m.name for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics}
        assert "hw.gpu.memory.usage" in names, names
        otel_gpu.stop()  # its final flush is the last collection with GPU points
        reader.get_metrics_data()
        after = reader.get_metrics_data()
        left = {m.name for rm in after.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics} if after else set()
        assert "hw.gpu.memory.usage" not in left, left
    """
    _run_script(code, {})
    assert metrics and MeterProvider and InMemoryMetricReader  # imported names stay in use


@pytest.mark.skipif(shutil.which("opentelemetry-instrument",
                                 path=os.path.dirname(sys.executable)) is None,
                    reason="opentelemetry-instrumentation is a test dependency")
def test_opentelemetry_instrument_picks_up_the_instrumentor() -> None:
    command = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")
    with OtlpReceiver() as receiver:
        env = {**os.environ, "OTEL_GPU_SIMULATE": "dgx-a100",
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
               "OTEL_METRIC_EXPORT_INTERVAL": "300", "OTEL_TRACES_EXPORTER": "none",
               "OTEL_LOGS_EXPORTER": "none", "OTEL_SERVICE_NAME": "auto"}
        result = subprocess.run([command, sys.executable, "-c",
                                 "import time; time.sleep(1.5)"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert receiver.wait_for(lambda: receiver.metric_requests, timeout_s=10)
        received = points(receiver.metric_requests)
    assert len(_gpu_names(received)) > 8
    assert {p["resource"]["service.name"] for p in received} == {"auto"}


def test_the_sources_run_in_a_child_process_and_stop_with_the_session() -> None:
    from otel_gpu.session.api import start, stop

    session = start(simulate="dgx-a100", export_interval_s=100.0, metric_exporters=[])
    try:
        assert session.mode is Mode.SOURCES_CHILD
        child = session.collector.sources.child.process
        assert child.pid != os.getpid() and child.poll() is None
        snapshot = session.collector.collect()
        assert len(snapshot.gpus) == 8 and snapshot.workloads
        assert snapshot.durations_s["nvml"] >= 0 and "insights" in snapshot.durations_s
    finally:
        stop()
    assert child.poll() is not None


def test_a_dead_sources_process_is_a_counted_error_then_restarts() -> None:
    from otel_gpu.session.api import start, stop

    session = start(simulate="h200", export_interval_s=100.0, metric_exporters=[])
    try:
        child = session.collector.sources.child
        first = child.process
        first.kill()
        first.wait()
        def remote_failures(snap: object) -> int:
            return sum(n for (source, _), n in snap.error_counts.items() if source == "collector")

        snapshot = session.collector.collect()
        assert snapshot.gpus == ()
        assert remote_failures(snapshot) == 1
        assert [e.call for e in snapshot.errors if e.source == "collector"] == ["remote"]
        # Within its back-off (1 s after the first failure) the child is not started again.
        assert remote_failures(session.collector.collect()) == 2
        assert child.restarts == 0 and child.failures == 1
        failed_cycles = 2
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.2)
            snapshot = session.collector.collect()
            if snapshot.gpus:
                break
            failed_cycles += 1
        assert len(snapshot.gpus) == 1 and child.restarts == 1
        assert child.process.pid != first.pid
        # Counted once per failed cycle, and kept after the restart.
        assert remote_failures(snapshot) == failed_cycles
    finally:
        stop()


def test_the_application_provider_gets_gpu_metrics_again_after_the_sources_child_restarts(
        ) -> None:
    from otel_gpu.session.api import start, stop

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    def gpu_points() -> int:
        data = reader.get_metrics_data()
        return sum(len(m.data.data_points) for rm in (data.resource_metrics if data else ())
                   for sm in rm.scope_metrics for m in sm.metrics
                   if m.name == "hw.gpu.memory.usage")

    session = start(simulate="h200", meter_provider=provider, export_interval_s=100.0)
    try:
        assert session.mode is Mode.SOURCES_CHILD
        assert gpu_points() == 1
        child = session.collector.sources.child
        child.process.kill()
        child.process.wait()
        time.sleep(1.1)  # the cached Snapshot ages out
        assert gpu_points() == 0
        deadline = time.monotonic() + 20
        while gpu_points() == 0 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert child.restarts == 1
        assert gpu_points() == 1
    finally:
        stop()
        provider.shutdown()


def test_in_process_collection_on_request_and_bad_scenarios_still_exit_clearly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_gpu.session.api import start, stop
    from otel_gpu.simulate import ScenarioError

    monkeypatch.setenv("OTEL_GPU_COLLECT_IN_PROCESS", "true")
    session = start(simulate="h200", export_interval_s=100.0, metric_exporters=[])
    try:
        assert session.mode is Mode.IN_PROCESS
        assert isinstance(session.collector.sources, LocalSources)
        assert len(session.collector.collect().gpus) == 1
    finally:
        stop()
    monkeypatch.delenv("OTEL_GPU_COLLECT_IN_PROCESS")
    with pytest.raises(ScenarioError):
        start(simulate="/nonexistent/scenario.yaml", metric_exporters=[])
    stop()


def test_a_child_that_cannot_start_leaves_collection_in_the_process(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import otel_gpu.session.child
    from otel_gpu.session.api import start, stop

    monkeypatch.setattr(otel_gpu.session.child.sys, "executable", "/bin/false")
    session = start(simulate="h200", export_interval_s=100.0, metric_exporters=[])
    try:
        assert session.mode is Mode.IN_PROCESS
        assert isinstance(session.collector.sources, LocalSources)
        assert len(session.collector.collect().gpus) == 1
        assert any("collecting in the training process" in r.getMessage() for r in caplog.records)
    finally:
        stop()


def _quiet_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    for signal in ("METRICS", "TRACES", "LOGS"):
        monkeypatch.setenv(f"OTEL_{signal}_EXPORTER", "none")


def test_a_collector_process_that_dies_is_restarted(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from otel_gpu.session.api import start, stop

    _quiet_exporters(monkeypatch)
    session = start(simulate="h200", export_interval_s=0.1)
    try:
        child = session.child
        assert session.mode is Mode.EXPORT_CHILD
        assert child is not None and session.collector is None and session.active
        first = child.process
        first.kill()
        first.wait()
        deadline = time.monotonic() + 20
        while child.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.restarts == 1 and child.failures == 1
        second = child.process
        assert second.pid != first.pid and second.poll() is None
        assert any("collector process is gone" in r.getMessage() for r in caplog.records)
    finally:
        stop()
    assert second.wait(timeout=10) == 0


def test_steps_drained_for_a_dead_collector_process_reach_its_successor() -> None:
    with OtlpReceiver() as receiver:
        _run_script("""
            import time
            import otel_gpu
            session = otel_gpu.start(export_interval_s=0.2)
            list(otel_gpu.track(range(10)))
            time.sleep(0.5)
            first = session.child.process
            first.kill()
            first.wait()
            list(otel_gpu.track(range(25)))  # drained by the send that finds the child gone
            deadline = time.monotonic() + 20
            while session.child.restarts == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert session.child.restarts == 1
            otel_gpu.stop()
        """, {"OTEL_GPU_SIMULATE": "h200", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"})
        assert receiver.wait_for(lambda: receiver.metric_requests, timeout_s=10)
        time.sleep(0.3)
        requests = list(receiver.metric_requests)
    steps = [p["value"] for p in points(requests) if p["name"] == "otel_gpu.training.steps"]
    # The first process exported the first 10; its successor continues the count with the 25.
    assert 10 in steps and steps[-1] == 35
    assert steps == sorted(steps)


def test_a_collector_process_that_cannot_start_leaves_export_in_the_process(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import otel_gpu.session.child
    from otel_gpu.session.api import start, stop

    _quiet_exporters(monkeypatch)
    monkeypatch.setattr(otel_gpu.session.child.sys, "executable", "/bin/false")
    session = start(simulate="h200", export_interval_s=100.0)
    try:
        assert session.child is None and session.mode is Mode.IN_PROCESS
        assert len(session.collector.collect().gpus) == 1
        assert any("exporting from the training process" in r.getMessage()
                   for r in caplog.records)
    finally:
        stop()


def test_a_bad_thresholds_file_is_a_clear_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_gpu.insights.thresholds import ThresholdsError
    from otel_gpu.session.api import session, start

    bad = tmp_path / "thresholds.yaml"
    bad.write_text("data_wait_for_s: soon\n")
    _quiet_exporters(monkeypatch)
    monkeypatch.setenv("OTEL_GPU_THRESHOLDS", str(bad))
    with pytest.raises(ThresholdsError, match="data_wait_for_s"):
        start(simulate="h200")
    assert session() is None
