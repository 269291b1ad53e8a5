"""The ``prometheus`` exporter: a pull reader whose scrape looks like the Collector path's data.

Each scrape collects once (no queue of past collections, so every family appears once) and
translates the result the way our Collector configs deliver it to Prometheus (the node config
copies ``host.name`` onto every point; the prometheus and prometheus_remote_write exporters name
with the default ``UnderscoreEscapingWithSuffixes`` strategy):

- name: every character outside ``[a-zA-Z0-9_:]`` becomes ``_``; the unit's Prometheus name is
  appended (``By`` -> ``_bytes``, ``s`` -> ``_seconds``, ...; an annotation such as ``{error}``
  adds nothing); a gauge of unit ``1`` gets ``_ratio``; a monotonic cumulative sum is a counter
  ending in ``_total``; a non-monotonic sum is a gauge;
- labels: the point's attributes with the same escaping, plus ``host_name`` from the resource,
  and the resource's ``k8s.namespace.name`` and ``k8s.pod.name`` where the point has no pod;
- the other resource attributes go to ``target_info``; Prometheus adds ``job`` and ``instance``
  from its scrape configuration (name the job ``otel-gpu-agent`` for the shipped dashboards).

The names of the Collector's translation: opentelemetry-collector-contrib
pkg/translator/prometheus (unit_to_words.go, normalize_name.go) at the version
collector_config/builder-config.yaml pins.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    MetricReader,
    MetricsData,
    Sum,
)

_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes",
    "MiBy": "mebibytes", "GiBy": "gibibytes", "TiBy": "tibibytes", "KBy": "kilobytes",
    "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes", "m": "meters", "V": "volts",
    "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius",
    "Hz": "hertz", "%": "percent",
}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_PROMOTED = ("k8s.namespace.name", "k8s.pod.name")


def unit_suffix(unit: str) -> str:
    """The words a unit adds to a name: ``By`` -> ``bytes``, ``By/s`` -> ``bytes_per_second``;
    annotations (``{error}``) add nothing."""
    unit = re.sub(r"\{[^}]*\}", "", unit or "").strip()
    if not unit or unit == "1":
        return ""
    main, _, per = unit.partition("/")
    words = _UNITS.get(main, main if not _INVALID.search(main) else "")
    if per:
        per_word = {"s": "second", "m": "minute", "h": "hour", "d": "day"}.get(per, per)
        return f"{words}_per_{per_word}" if words else f"per_{per_word}"
    return words


def metric_name(name: str, unit: str, *, gauge: bool, counter: bool) -> str:
    """The Prometheus name of a metric (without ``_total``, which the counter family adds)."""
    base = re.sub(r"_+", "_", _INVALID.sub("_", name)).strip("_")
    suffix = unit_suffix(unit)
    if suffix and not base.endswith(f"_{suffix}"):
        base = f"{base}_{suffix}"
    if gauge and (unit or "").strip() == "1" and not base.endswith("_ratio"):
        base = f"{base}_ratio"
    if counter and base.endswith("_total"):
        base = base[: -len("_total")]
    return base


def label_name(key: str) -> str:
    label = _INVALID_LABEL.sub("_", key)
    return f"key_{label}" if label[:1].isdigit() else label


def label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(label_value(v) for v in value) + "]"
    return str(value)


class PrometheusReader(MetricReader):
    """Registers a collector in a prometheus_client registry; a scrape collects once."""

    def __init__(self, registry: Any = None) -> None:
        super().__init__()
        if registry is None:
            from prometheus_client import REGISTRY as registry
        self._registry = registry
        self._lock = threading.Lock()
        self._latest: MetricsData | None = None
        self._collector = _Collector(self)
        registry.register(self._collector)

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        self._latest = metrics_data

    def scrape(self) -> MetricsData | None:
        with self._lock:
            self._latest = None
            self.collect()
            return self._latest

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with contextlib.suppress(KeyError):  # already unregistered
            self._registry.unregister(self._collector)


class _Collector:
    def __init__(self, reader: PrometheusReader) -> None:
        self._reader = reader

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: names are known only when collected

    def collect(self) -> Iterator[Any]:
        data = self._reader.scrape()
        if data is not None:
            yield from families(data)


def families(data: MetricsData) -> Iterator[Any]:
    """prometheus_client metric families for one collection; one family per name."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    built: dict[str, Any] = {}
    targets: list[dict[str, str]] = []
    for rm in data.resource_metrics:
        resource = dict(rm.resource.attributes)
        extra = {"host_name": label_value(resource["host.name"])} if "host.name" in resource \
            else {}
        info = {label_name(k): label_value(v) for k, v in resource.items()}
        if info and info not in targets:
            targets.append(info)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                point_data = metric.data
                counter = (isinstance(point_data, Sum) and point_data.is_monotonic
                           and point_data.aggregation_temporality
                           == AggregationTemporality.CUMULATIVE)
                gauge = isinstance(point_data, Gauge)
                if isinstance(point_data, Sum) and not counter and point_data.is_monotonic:
                    continue  # a delta counter has no Prometheus form
                name = metric_name(metric.name, metric.unit, gauge=gauge, counter=counter)
                for point in point_data.data_points:
                    labels = _labels(point.attributes, resource, extra)
                    family = built.get(name)
                    if family is None:
                        keys = list(labels)
                        if counter:
                            family = CounterMetricFamily(name, metric.description, labels=keys)
                        elif isinstance(point_data, Histogram):
                            family = HistogramMetricFamily(name, metric.description,
                                                           labels=keys)
                        else:
                            family = GaugeMetricFamily(name, metric.description, labels=keys)
                        built[name] = family
                    _add(family, point_data, point, labels)
    if targets:
        from prometheus_client.samples import Sample

        info_family = GaugeMetricFamily("target_info", "Target metadata")
        info_family.samples.extend(Sample("target_info", target, 1) for target in targets)
        yield info_family
    yield from built.values()


def _labels(attributes: Any, resource: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    labels = {label_name(k): label_value(v) for k, v in (attributes or {}).items()}
    labels.update({k: v for k, v in extra.items() if k not in labels})
    if "k8s_pod_name" not in labels:
        for key in _PROMOTED:
            if key in resource:
                labels.setdefault(label_name(key), label_value(resource[key]))
    return labels


def _add(family: Any, data: Any, point: Any, labels: dict[str, str]) -> None:
    # A family's label names are those of its first point; prometheus_client takes the label
    # names per sample, so points with other attributes keep theirs.
    from prometheus_client.samples import Sample

    if isinstance(data, Histogram):
        cumulative = 0
        for bound, count in zip((*point.explicit_bounds, float("inf")), point.bucket_counts,
                                strict=False):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            family.samples.append(Sample(f"{family.name}_bucket", {**labels, "le": le},
                                         cumulative))
        family.samples.append(Sample(f"{family.name}_count", labels, point.count))
        family.samples.append(Sample(f"{family.name}_sum", labels, point.sum))
        return
    suffix = "_total" if family.type == "counter" else ""
    family.samples.append(Sample(f"{family.name}{suffix}", labels, point.value))
