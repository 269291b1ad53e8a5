"""An application's MeterProvider that exports as the environment says is mirrored by the
collector process; any other keeps the GPU instruments on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as GrpcLogExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpExporter,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    InMemoryMetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from otlp_receiver import OtlpReceiver, points
from runner import ROOT

from otel_gpu.config import ConfigError
from otel_gpu.session.mirror import mirror_of

ENDPOINT = "http://127.0.0.1:4999"


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("OTEL_EXPORTER_OTLP", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER",
                            "OTEL_GPU_EXPORT")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)


def _provider(exporter: object, *, interval_ms: float = 2_000, **kwargs: object) -> MeterProvider:
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
    return MeterProvider(metric_readers=[reader], shutdown_on_exit=False, **kwargs)


@pytest.mark.parametrize("protocol,exporter", [("grpc", GrpcExporter),
                                               ("http/protobuf", HttpExporter)])
def test_a_provider_built_from_the_environment_is_mirrored_with_its_resource_and_interval(
        otlp_env: None, monkeypatch: pytest.MonkeyPatch, protocol: str, exporter: type) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    resource = Resource({"service.name": "trainer", "team": "vision"})
    provider = _provider(exporter(), interval_ms=2_500, resource=resource)
    try:
        mirror = mirror_of(provider)
        assert mirror is not None
        assert mirror.resource is provider._sdk_config.resource
        assert mirror.resource.attributes["team"] == "vision"
        assert mirror.interval_ms == 2_500
    finally:
        provider.shutdown()


def _not_mirrored() -> dict[str, object]:
    return {
        "an endpoint in code": lambda: _provider(GrpcExporter(endpoint="http://elsewhere:4317")),
        "headers in code": lambda: _provider(GrpcExporter(headers={"api-key": "k"})),
        "a timeout in code": lambda: _provider(GrpcExporter(timeout=3)),
        "a temporality in code": lambda: _provider(GrpcExporter(
            preferred_temporality={Counter: AggregationTemporality.DELTA})),
        "the console exporter": lambda: _provider(ConsoleMetricExporter()),
        "an in-memory reader": lambda: MeterProvider(metric_readers=[InMemoryMetricReader()]),
        "two readers": lambda: MeterProvider(metric_readers=[
            PeriodicExportingMetricReader(GrpcExporter()), InMemoryMetricReader()]),
        "views": lambda: _provider(GrpcExporter(), views=[View(instrument_name="x*")]),
    }


@pytest.mark.parametrize("case", sorted(_not_mirrored()))
def test_a_provider_that_differs_from_the_environment_keeps_the_instruments(
        otlp_env: None, case: str) -> None:
    provider = _not_mirrored()[case]()
    try:
        assert mirror_of(provider) is None
    finally:
        provider.shutdown()


def test_the_environment_naming_another_exporter_or_the_setting_keeps_them(
        otlp_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = _provider(GrpcExporter())
    try:
        assert mirror_of(provider) is not None
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp,console")
        assert mirror_of(provider) is None
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_GPU_EXPORT_FROM", "application")
        assert mirror_of(provider) is None
        monkeypatch.setenv("OTEL_GPU_EXPORT_FROM", "sometimes")
        with pytest.raises(ConfigError, match="OTEL_GPU_EXPORT_FROM"):
            mirror_of(provider)
        monkeypatch.delenv("OTEL_GPU_EXPORT_FROM")
    finally:
        provider.shutdown()
    assert mirror_of(provider) is None  # shut down


def _logger_provider(resource: Resource, *exporters: object) -> LoggerProvider:
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    return provider


@pytest.mark.parametrize("case,mirrored", [
    ("the environment's", True), ("an endpoint in code", False), ("the console", False),
    ("another resource", False), ("two processors", False), ("none named, one added", False)])
def test_a_logger_provider_is_allowed_when_it_is_the_environments(
        otlp_env: None, monkeypatch: pytest.MonkeyPatch, case: str, mirrored: bool) -> None:
    from opentelemetry._logs import _internal as logs_api

    resource = Resource({"service.name": "trainer"})
    meters = _provider(GrpcExporter(), resource=resource)
    if case == "none named, one added":
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    exporters = {
        "the environment's": [GrpcLogExporter()],
        "an endpoint in code": [GrpcLogExporter(endpoint="http://elsewhere:4317")],
        "the console": [ConsoleLogRecordExporter()],
        "another resource": [GrpcLogExporter()],
        "two processors": [GrpcLogExporter(), GrpcLogExporter()],
        "none named, one added": [GrpcLogExporter()],
    }[case]
    logs = _logger_provider(Resource({"service.name": "other"}) if case == "another resource"
                            else resource, *exporters)
    monkeypatch.setattr(logs_api, "_LOGGER_PROVIDER", logs)
    try:
        assert (mirror_of(meters) is not None) is mirrored
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")  # and none named, none added
        monkeypatch.setattr(logs_api, "_LOGGER_PROVIDER", _logger_provider(resource))
        assert mirror_of(meters) is not None
    finally:
        meters.shutdown()
        logs.shutdown()


def test_next_to_the_contrib_system_metrics_its_names_are_left_to_it(otlp_env: None) -> None:
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    meters = _provider(GrpcExporter())
    instrumentor = SystemMetricsInstrumentor(config={"system.cpu.time": ["user"],
                                                     "system.memory.usage": ["used"],
                                                     "process.cpu.time": ["user"]})
    try:
        assert mirror_of(meters).stand_down == frozenset()
        instrumentor.instrument(meter_provider=meters)
        assert mirror_of(meters).stand_down == {"system.cpu.time", "system.memory.usage"}
    finally:
        instrumentor.uninstrument()
        meters.shutdown()


SCRIPT = """
import json, sys
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
import otel_gpu

reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=60_000)
provider = MeterProvider(metric_readers=[reader],
                         resource=Resource({"service.name": "trainer", "team": "vision"}))
session = otel_gpu.start(meter_provider=provider)
own = provider.get_meter("app").create_counter("app.batches")
for _ in otel_gpu.track(range(40), batch_size=2):
    own.add(1)
otel_gpu.stop()
provider.shutdown()
print(json.dumps({"mode": session.mode.name,
                  "grpc": "grpc" in sys.modules}))
"""


@pytest.mark.parametrize("setting", ["", "application"])
def test_a_mirrored_session_delivers_what_the_providers_would(setting: str) -> None:
    with OtlpReceiver() as receiver:
        env = {**os.environ, "OTEL_GPU_SIMULATE": "h200", "OTEL_GPU_SUMMARY": "false",
               "OTEL_LOGS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "none",
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
               "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_GPU_EXPORT_FROM": setting}
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], env=env,
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        received = points(receiver.metric_requests)
    out = json.loads(result.stdout)
    assert out["mode"] == ("SOURCES_CHILD" if setting else "EXPORT_CHILD")
    by_name: dict[str, list[dict]] = {}
    for point in received:
        by_name.setdefault(point["name"], []).append(point)
    # The same data under the same resource either way: the device, the steps, the app's own.
    for name in ("hw.gpu.memory.usage", "otel_gpu.training.steps", "app.batches"):
        assert name in by_name, sorted(by_name)
        assert {p["resource"]["team"] for p in by_name[name]} == {"vision"}
        assert {p["resource"]["service.name"] for p in by_name[name]} == {"trainer"}
    assert max(p["value"] for p in by_name["otel_gpu.training.steps"]) == 40
    assert max(p["value"] for p in by_name["app.batches"]) == 40
