"""An OTLP/gRPC peer for benchmarks: accepts metrics, traces and logs and counts them.

Runs as its own process so that receiving costs the measured process nothing. It prints
``port N`` once listening; then each line ``count`` on stdin is answered with one JSON line of
``{"metrics": requests, "metric_bytes": bytes, "traces": ..., "logs": ...}``. It exits when stdin
closes.

    python benchmarks/otlp_sink.py
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"metrics": 0, "metric_bytes": 0, "traces": 0, "logs": 0}

    def add(self, signal: str, request: Any) -> None:
        with self.lock:
            self.values[signal] += 1
            if signal == "metrics":
                self.values["metric_bytes"] += request.ByteSize()

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


def serve(counts: Counts) -> tuple[grpc.Server, int]:
    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            counts.add("metrics", request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            counts.add("traces", request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            counts.add("logs", request)
            return logs_service_pb2.ExportLogsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def main() -> int:
    counts = Counts()
    server, port = serve(counts)
    print(f"port {port}", flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            print(json.dumps(counts.snapshot()), flush=True)
    server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
