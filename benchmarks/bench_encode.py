"""Where the OTLP encoding of one dgx-a100 collection goes.

One collection of the simulated dgx-a100 through the agent's pipeline (``build_pipeline``, the
catalog on the agent's MeterProvider, an ``InMemoryMetricReader``), then the OTLP exporter's own
``encode_metrics`` of that ``MetricsData``, timed with ``time.thread_time()`` (median of
``--repeat``), next to variants of the same data that tell its parts apart:

- ``attributes only``: the exporter's ``_encode_attributes`` for every point's attributes;
- ``no attributes``: the same points with empty attribute sets (what points, metrics and the
  request cost without attributes);
- ``no hw.model/hw.vendor``: without the two device-identity attributes that repeat on every GPU
  and MIG point (the contract puts them there; this says what they cost, it changes nothing);
- ``serialize``: ``SerializeToString()`` of the encoded request;
- ``always_on exemplars``: the data of a provider whose observable instruments keep the SDK's
  default reservoirs under ``OTEL_METRICS_EXEMPLAR_FILTER=always_on`` (each point then carries one
  exemplar; the agent's views give observable points none).

    .venv/bin/python benchmarks/bench_encode.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

from otel_gpu.telemetry.instruments import register_catalog
from otel_gpu.telemetry.pipeline import build_pipeline
from otel_gpu.telemetry.providers import build_resource, get_meter


def _map_points(data: MetricsData, change: Callable[[Any], Any]) -> MetricsData:
    return replace(data, resource_metrics=[
        replace(rm, scope_metrics=[
            replace(sm, metrics=[
                replace(m, data=replace(m.data, data_points=list(map(change, m.data.data_points))))
                for m in sm.metrics
            ])
            for sm in rm.scope_metrics
        ])
        for rm in data.resource_metrics
    ])


def _points(data: MetricsData) -> list[Any]:
    return [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            for p in m.data.data_points]


def _median_ms(call: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.thread_time()
        call()
        times.append(time.thread_time() - started)
    return statistics.median(times) * 1e3


def _always_on_data() -> MetricsData:
    os.environ["OTEL_METRICS_EXEMPLAR_FILTER"] = "always_on"
    try:
        pipeline = build_pipeline(simulate="dgx-a100", exporters=("none",), interval_s=1.0)
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], resource=build_resource())
        register_catalog(get_meter(provider), pipeline.cache)
        for _ in range(3):
            pipeline.cache.refresh()
            data = reader.get_metrics_data()
        provider.shutdown()
        pipeline.shutdown()
    finally:
        del os.environ["OTEL_METRICS_EXEMPLAR_FILTER"]
    assert data is not None
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)

    pipeline = build_pipeline(simulate="dgx-a100", exporters=("none",), interval_s=1.0,
                              in_memory=True)
    assert pipeline.memory_reader is not None
    for _ in range(3):  # warm caches; the third collection's data is the one encoded
        pipeline.collect_and_export()
        data = pipeline.memory_reader.get_metrics_data()
    pipeline.shutdown()
    assert data is not None
    points = _points(data)
    pairs = sum(len(p.attributes or {}) for p in points)
    bare = _map_points(data, lambda p: replace(p, attributes={}))
    identity = ("hw.model", "hw.vendor")
    compact = _map_points(data, lambda p: replace(p, attributes={
        k: v for k, v in (p.attributes or {}).items() if k not in identity}))
    dropped = pairs - sum(len(p.attributes or {}) for p in _points(compact))
    request = encode_metrics(data)
    exemplar_data = _always_on_data()
    exemplars = sum(len(p.exemplars) for p in _points(exemplar_data))

    rows = [
        ("encode_metrics", _median_ms(lambda: encode_metrics(data), args.repeat)),
        ("attributes only", _median_ms(
            lambda: [_encode_attributes(p.attributes) for p in points], args.repeat)),
        ("no attributes", _median_ms(lambda: encode_metrics(bare), args.repeat)),
        (f"no hw.model/hw.vendor (-{dropped} pairs)",
         _median_ms(lambda: encode_metrics(compact), args.repeat)),
        ("serialize", _median_ms(request.SerializeToString, args.repeat)),
        (f"always_on exemplars ({exemplars})",
         _median_ms(lambda: encode_metrics(exemplar_data), args.repeat)),
    ]
    print(f"{datetime.date.today()}, Python {sys.version.split()[0]}, opentelemetry-sdk "
          f"{metadata.version('opentelemetry-sdk')}, protobuf {metadata.version('protobuf')}; "
          f"dgx-a100: {len(points)} points, {pairs} attribute pairs, "
          f"{sum(len(p.exemplars) for p in points)} exemplars, {request.ByteSize()} bytes; "
          f"median of {args.repeat}, CPU ms")
    for name, ms in rows:
        print(f"{name:>40} {ms:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
