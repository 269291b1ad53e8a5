"""A real OTLP receiver for end-to-end tests: gRPC and HTTP/protobuf on loopback.

Both transports decode into the ``Export*ServiceRequest`` messages of opentelemetry-proto and
keep them in arrival order. ``points`` flattens metric requests into plain dicts for assertions.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

ExportMetricsServiceRequest = metrics_service_pb2.ExportMetricsServiceRequest
ExportTraceServiceRequest = trace_service_pb2.ExportTraceServiceRequest
ExportLogsServiceRequest = logs_service_pb2.ExportLogsServiceRequest

_HTTP_PATHS: dict[str, tuple[str, type[Message], type[Message]]] = {
    "/v1/metrics": (
        "metrics",
        ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "/v1/traces": (
        "traces",
        ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "/v1/logs": (
        "logs",
        ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}

_TEMPORALITY = {
    metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
    metrics_pb2.AGGREGATION_TEMPORALITY_DELTA: "delta",
}


class OtlpReceiver:
    """Receives OTLP metrics, traces and logs over gRPC and HTTP until the context exits.

    ``headers`` records, per request and in arrival order, ``(signal, transport, headers)`` with
    lower-cased header names (gRPC metadata or HTTP headers).
    """

    def __init__(self, grpc_port: int = 0) -> None:
        self._grpc_port = grpc_port  # 0: any free port; a fixed one lets a test restart a peer
        self._cond = threading.Condition()
        self._metrics: list[ExportMetricsServiceRequest] = []
        self._traces: list[ExportTraceServiceRequest] = []
        self._logs: list[ExportLogsServiceRequest] = []
        self._headers: list[tuple[str, str, dict[str, str]]] = []
        self._grpc_server: grpc.Server | None = None
        self._http_server: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_endpoint = ""
        self.http_endpoint = ""

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), server)
        grpc_port = server.add_insecure_port(f"127.0.0.1:{self._grpc_port}")
        server.start()
        self._grpc_server = server
        self.grpc_endpoint = f"http://127.0.0.1:{grpc_port}"

        http_server = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self))
        http_server.daemon_threads = True
        self._http_server = http_server
        self._http_thread = threading.Thread(
            target=http_server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-http-receiver",
            daemon=True,
        )
        self._http_thread.start()
        self.http_endpoint = f"http://127.0.0.1:{http_server.server_address[1]}"

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait(5)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(5)
            self._http_thread = None

    @property
    def metric_requests(self) -> list[ExportMetricsServiceRequest]:
        with self._cond:
            return list(self._metrics)

    @property
    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        with self._cond:
            return list(self._traces)

    @property
    def log_requests(self) -> list[ExportLogsServiceRequest]:
        with self._cond:
            return list(self._logs)

    @property
    def headers(self) -> list[tuple[str, str, dict[str, str]]]:
        with self._cond:
            return list(self._headers)

    def clear(self) -> None:
        with self._cond:
            self._metrics.clear()
            self._traces.clear()
            self._logs.clear()
            self._headers.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` is true; it is re-checked whenever a request arrives."""
        with self._cond:
            return bool(self._cond.wait_for(predicate, timeout=timeout_s))

    def _record(
        self, signal: str, transport: str, request: Message, headers: dict[str, str]
    ) -> None:
        with self._cond:
            {"metrics": self._metrics, "traces": self._traces, "logs": self._logs}[signal].append(
                request  # type: ignore[arg-type]
            )
            self._headers.append((signal, transport, headers))
            self._cond.notify_all()


def _grpc_headers(context: grpc.ServicerContext) -> dict[str, str]:
    return {
        key.lower(): value if isinstance(value, str) else value.decode("latin-1")
        for key, value in context.invocation_metadata()
    }


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver._record("metrics", "grpc", request, _grpc_headers(context))
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._record("traces", "grpc", request, _grpc_headers(context))
        return trace_service_pb2.ExportTraceServiceResponse()


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        self._receiver._record("logs", "grpc", request, _grpc_headers(context))
        return logs_service_pb2.ExportLogsServiceResponse()


def _http_handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            route = _HTTP_PATHS.get(self.path.split("?", 1)[0])
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if route is None:
                self._reply(404, b"")
                return
            content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip()
            if content_type != "application/x-protobuf":
                self._reply(415, b"")
                return
            signal, request_type, response_type = route
            try:
                request = request_type.FromString(
                    _decompress(body, self.headers.get("Content-Encoding"))
                )
            except (OSError, EOFError, zlib.error, DecodeError):
                self._reply(400, b"")
                return
            headers = {key.lower(): value for key, value in self.headers.items()}
            receiver._record(signal, "http", request, headers)
            self._reply(200, response_type().SerializeToString())

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _decompress(body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def any_value(value: AnyValue) -> Any:
    """The Python value of an OTLP ``AnyValue``."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(key_values: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in key_values}


def points(requests: Iterable[ExportMetricsServiceRequest]) -> list[dict[str, Any]]:
    """Every data point as a dict, in arrival order.

    Keys: ``name``, ``unit``, ``kind`` (gauge/sum/histogram/exponential_histogram/summary),
    ``value``, ``attributes``, ``resource``, ``scope``, ``temporality``
    (cumulative/delta, None for gauges), ``monotonic`` (sums only, else None),
    ``time_unix_nano``. For a number point ``value`` is its int or double; for histograms and
    summaries it is the sum of the observations, with ``count`` added (and ``bucket_counts`` and
    ``explicit_bounds`` for explicit-bucket histograms).
    """
    out: list[dict[str, Any]] = []
    for request in requests:
        for resource_metrics in request.resource_metrics:
            resource = attributes(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope.name
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is None:
                        continue
                    data = getattr(metric, kind)
                    temporality = _TEMPORALITY.get(getattr(data, "aggregation_temporality", 0))
                    monotonic = data.is_monotonic if kind == "sum" else None
                    for point in data.data_points:
                        row: dict[str, Any] = {
                            "name": metric.name,
                            "unit": metric.unit,
                            "kind": kind,
                            "attributes": attributes(point.attributes),
                            "resource": resource,
                            "scope": scope,
                            "temporality": temporality,
                            "monotonic": monotonic,
                            "time_unix_nano": point.time_unix_nano,
                        }
                        if kind in ("gauge", "sum"):
                            field = point.WhichOneof("value")
                            row["value"] = getattr(point, field) if field else None
                        else:
                            row["value"] = point.sum
                            row["count"] = point.count
                            if kind == "histogram":
                                row["bucket_counts"] = list(point.bucket_counts)
                                row["explicit_bounds"] = list(point.explicit_bounds)
                        out.append(row)
    return out
