from __future__ import annotations

import gzip
import urllib.error
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from otlp_receiver import OtlpReceiver, points


def _export_once(exporter: MetricExporter) -> None:
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "otel-gpu-test", "host.name": "node1"}),
    )
    meter = provider.get_meter("otel_gpu.test")
    meter.create_counter("system.disk.io", unit="By").add(
        4096, {"system.device": "sda", "disk.io.direction": "read"}
    )
    meter.create_observable_gauge(
        "system.cpu.utilization",
        callbacks=[lambda _options: [Observation(0.25, {"cpu.mode": "user"})]],
        unit="1",
    )
    meter.create_histogram("otel_gpu.training.step.duration", unit="s").record(0.5)
    provider.shutdown()


def _check(receiver: OtlpReceiver) -> None:
    assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 1, timeout_s=10)
    by_name = {p["name"]: p for p in points(receiver.metric_requests)}
    assert set(by_name) == {
        "system.disk.io",
        "system.cpu.utilization",
        "otel_gpu.training.step.duration",
    }

    disk = by_name["system.disk.io"]
    assert (disk["kind"], disk["unit"], disk["value"]) == ("sum", "By", 4096)
    assert disk["attributes"] == {"system.device": "sda", "disk.io.direction": "read"}
    assert disk["monotonic"] is True and disk["temporality"] == "cumulative"
    assert disk["resource"]["service.name"] == "otel-gpu-test"
    assert disk["resource"]["host.name"] == "node1"
    assert disk["scope"] == "otel_gpu.test"

    cpu = by_name["system.cpu.utilization"]
    assert (cpu["kind"], cpu["unit"], cpu["value"]) == ("gauge", "1", 0.25)
    assert cpu["attributes"] == {"cpu.mode": "user"}
    assert cpu["temporality"] is None

    step = by_name["otel_gpu.training.step.duration"]
    assert (step["kind"], step["unit"], step["value"], step["count"]) == ("histogram", "s", 0.5, 1)
    assert sum(step["bucket_counts"]) == 1


def test_grpc_metrics_arrive_decoded() -> None:
    with OtlpReceiver() as receiver:
        _export_once(GrpcMetricExporter(endpoint=receiver.grpc_endpoint, insecure=True))
        _check(receiver)
        assert [(s, t) for s, t, _ in receiver.headers] == [("metrics", "grpc")]


def test_http_metrics_arrive_decoded() -> None:
    with OtlpReceiver() as receiver:
        _export_once(HttpMetricExporter(endpoint=f"{receiver.http_endpoint}/v1/metrics"))
        _check(receiver)
        assert [(s, t) for s, t, _ in receiver.headers] == [("metrics", "http")]


def test_http_gzip_and_headers() -> None:
    with OtlpReceiver() as receiver:
        _export_once(
            HttpMetricExporter(
                endpoint=f"{receiver.http_endpoint}/v1/metrics",
                compression=Compression.Gzip,
                headers={"X-Tenant": "lab"},
            )
        )
        _check(receiver)
        _, _, headers = receiver.headers[0]
        assert headers["content-encoding"] == "gzip"
        assert headers["x-tenant"] == "lab"


def test_grpc_traces_arrive() -> None:
    with OtlpReceiver() as receiver:
        provider = TracerProvider()
        provider.add_span_processor(
            SimpleSpanProcessor(GrpcSpanExporter(endpoint=receiver.grpc_endpoint, insecure=True))
        )
        with provider.get_tracer("t").start_as_current_span("step"):
            pass
        provider.shutdown()
        assert receiver.wait_for(lambda: bool(receiver.trace_requests), timeout_s=10)
        spans = receiver.trace_requests[0].resource_spans[0].scope_spans[0].spans
        assert [s.name for s in spans] == ["step"]


def _post(url: str, body: bytes, content_type: str, encoding: str | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    if encoding:
        request.add_header("Content-Encoding", encoding)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(
    ("path", "body", "content_type", "encoding", "status"),
    [
        ("/v1/logs", gzip.compress(b""), "application/x-protobuf", "gzip", 200),
        ("/v1/nothing", b"", "application/x-protobuf", None, 404),
        ("/v1/metrics", b"{}", "application/json", None, 415),
        ("/v1/metrics", b"not gzip", "application/x-protobuf", "gzip", 400),
        ("/v1/metrics", b"\xff\xff\xff", "application/x-protobuf", None, 400),
    ],
    ids=["gzip-logs", "unknown-path", "json", "bad-gzip", "bad-protobuf"],
)
def test_http_status_codes(
    path: str, body: bytes, content_type: str, encoding: str | None, status: int
) -> None:
    with OtlpReceiver() as receiver:
        assert _post(receiver.http_endpoint + path, body, content_type, encoding) == status
        assert len(receiver.log_requests) == (1 if status == 200 else 0)
        assert receiver.metric_requests == []


def test_wait_for_times_out_without_requests() -> None:
    with OtlpReceiver() as receiver:
        assert receiver.wait_for(lambda: bool(receiver.metric_requests), timeout_s=0.1) is False
