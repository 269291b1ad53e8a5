"""``otel-gpu usage``: GPU-hours, slice-hours and energy per tenant over a period, read from a
Prometheus-compatible query API (Prometheus, Mimir) with ``increase()`` over the accounting
counters the agent exports."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from otel_gpu.config import QueryApi

GPU_TIME = "otel_gpu_workload_gpu_time_seconds_total"
SLICE_TIME = "otel_gpu_workload_mig_slice_time_seconds_total"
ENERGY = "otel_gpu_workload_energy_joules_total"
DEFAULT_MATCH = 'job="otel-gpu-agent"'

_POD = ("k8s_namespace_name", "k8s_pod_name")
# What --by groups on: the Prometheus labels of the workload attributes. A tenant is named by
# the first of its label sets that is present, the labels of one set joined by "/" (a pod's
# container without a runtime name: namespace/pod/container).
GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "user": (("process_owner",),),
    "container": (("container_name",), (*_POD, "k8s_container_name")),
    "pod": (_POD,),
    "namespace": (("k8s_namespace_name",),),
}
NONE = "(none)"  # a workload without the attribute (e.g. not in a pod, for --by pod)
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_MATCHER = r'\s*\w+\s*(=~|!=|!~|=)\s*"[^"\\]*"\s*'
_MATCHERS = re.compile(rf"^{_MATCHER}(,{_MATCHER})*$")


class UsageError(Exception):
    """The query API could not be read or answered with an error."""


@dataclass
class Row:
    tenant: str
    gpu_hours_busy: float = 0.0
    gpu_hours_idle: float = 0.0
    gpu_hours_unknown: float = 0.0
    slice_hours: float = 0.0
    kwh: float = 0.0

    @property
    def gpu_hours(self) -> float:
        return self.gpu_hours_busy + self.gpu_hours_idle + self.gpu_hours_unknown

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gpu_hours": self.gpu_hours}


def check_duration(text: str) -> str:
    """A PromQL duration (``7d``, ``12h``, ``1w2d``); raises ValueError otherwise."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration like 7d, 12h or 30m")
    return text


def check_time(text: str) -> float:
    """Unix seconds or an ISO 8601 time (UTC when it has no zone); raises ValueError."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time (unix seconds or ISO 8601)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def check_match(text: str) -> str:
    """Label matchers as inside PromQL braces (``job="otel-gpu-agent", host_name=~"dgx.*"``)."""
    if text and not _MATCHERS.match(text):
        raise ValueError(f"{text!r} is not a list of label matchers like job=\"otel-gpu-agent\"")
    return text


class QueryClient:
    """Instant queries against ``/api/v1/query``."""

    def __init__(self, api: QueryApi, timeout_s: float = 30.0) -> None:
        self.api = api
        self.timeout_s = timeout_s

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        # Here, not at the top: the agent's command line is built with this module, and
        # urllib.request (with email and http.cookiejar) adds 1.5 MB to every agent.
        import urllib.error
        import urllib.parse
        import urllib.request

        params = {"query": promql}
        if at is not None:
            params["time"] = repr(at)
        request = urllib.request.Request(
            f"{self.api.url}/api/v1/query",
            data=urllib.parse.urlencode(params).encode(),
            headers={**self.api.headers, "Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            raise UsageError(f"{self.api.url} answered {err.code}: {_error_text(err.read())}")\
                from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise UsageError(f"cannot reach {self.api.url}: {reason}") from None
        try:
            document = json.loads(body)
            if document.get("status") != "success":
                raise UsageError(f"{self.api.url}: {_error_text(body)}")
            result = document["data"]["result"]
            if document["data"].get("resultType") != "vector" or not isinstance(result, list):
                raise UsageError(f"{self.api.url}: expected a vector for {promql}")
            return result
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UsageError(f"{self.api.url} did not answer as a Prometheus query API") from None


def _error_text(body: bytes) -> str:
    try:
        document = json.loads(body)
        return f"{document.get('errorType', 'error')}: {document.get('error', '')}"[:500]
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip() or "no body"


def _tenant(labels: dict[str, str], names: tuple[tuple[str, ...], ...]) -> str:
    for group in names:
        values = [labels.get(label, "") for label in group]
        if any(values):
            return "/".join(v or NONE for v in values)
    return NONE


def collect_usage(client: QueryClient, *, since: str, by: str, match: str = DEFAULT_MATCH,
                  at: float | None = None) -> list[Row]:
    """One row per tenant, most GPU-hours first; raises UsageError."""
    group = GROUPS[by]
    keys = ", ".join(dict.fromkeys(label for labels in group for label in labels))
    selector = "{" + match + "}"

    def increase(metric: str, extra: str = "") -> str:
        return f"sum by ({keys}{extra}) (increase({metric}{selector}[{since}]))"

    rows: dict[str, Row] = {}

    def row(labels: dict[str, str]) -> Row:
        tenant = _tenant(labels, group)
        return rows.setdefault(tenant, Row(tenant))

    for sample in client.query(increase(GPU_TIME, ", otel_gpu_state"), at):
        labels, hours = sample["metric"], _value(sample) / 3600
        state = labels.get("otel_gpu_state", "unknown")
        field = {"busy": "gpu_hours_busy", "idle": "gpu_hours_idle"}.get(state,
                                                                         "gpu_hours_unknown")
        target = row(labels)
        setattr(target, field, getattr(target, field) + hours)
    for sample in client.query(increase(SLICE_TIME), at):
        row(sample["metric"]).slice_hours += _value(sample) / 3600
    for sample in client.query(increase(ENERGY), at):
        row(sample["metric"]).kwh += _value(sample) / 3.6e6
    return sorted(rows.values(), key=lambda r: (-r.gpu_hours, -r.kwh, r.tenant))


def _value(sample: dict[str, Any]) -> float:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise UsageError(f"a sample without a number: {str(sample)[:200]}") from None
    return value if value == value and value not in (float("inf"), float("-inf")) else 0.0


def total(rows: Iterable[Row]) -> Row:
    summed = Row("total")
    for r in rows:
        summed.gpu_hours_busy += r.gpu_hours_busy
        summed.gpu_hours_idle += r.gpu_hours_idle
        summed.gpu_hours_unknown += r.gpu_hours_unknown
        summed.slice_hours += r.slice_hours
        summed.kwh += r.kwh
    return summed


COLUMNS = (
    ("GPU-h busy", "gpu_hours_busy"),
    ("GPU-h idle", "gpu_hours_idle"),
    ("GPU-h unknown", "gpu_hours_unknown"),
    ("GPU-h", "gpu_hours"),
    ("slice-h", "slice_hours"),
    ("kWh", "kwh"),
)


def print_usage(rows: list[Row], *, by: str, since: str, at: float | None, fmt: str,
                out: TextIO = sys.stdout) -> None:
    summed = total(rows)
    if fmt == "json":
        document = {"by": by, "since": since, "until": at,
                    "rows": [r.to_dict() for r in rows], "total": summed.to_dict()}
        out.write(json.dumps(document, indent=2) + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([by, *(attr for _, attr in COLUMNS)])
        for r in [*rows, summed]:
            writer.writerow([r.tenant, *(f"{getattr(r, attr):.6f}" for _, attr in COLUMNS)])
        return
    table = [[by, *(title for title, _ in COLUMNS)]]
    for r in [*rows, summed]:
        table.append([r.tenant, *(f"{getattr(r, attr):.3f}" for _, attr in COLUMNS)])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    buffer = io.StringIO()
    for n, line in enumerate(table):
        if n == len(table) - 1:
            buffer.write("  ".join("-" * w for w in widths) + "\n")
        cells = [line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:],
                                                                          strict=True))]
        buffer.write("  ".join(cells).rstrip() + "\n")
    if not rows:
        buffer.write(f"no accounting data in the last {since}\n")
    out.write(buffer.getvalue())


def run_usage(args: Any) -> int:
    """The ``usage`` command; a bad setting raises ConfigError (exit 2), an unreadable query API
    exits 1 with one line on stderr."""
    from otel_gpu.config import query_api

    client = QueryClient(query_api(args.url), timeout_s=args.timeout)
    try:
        rows = collect_usage(client, since=args.since, by=args.by, match=args.match,
                             at=args.until)
    except UsageError as err:
        print(f"otel-gpu: usage: {err}", file=sys.stderr)
        return 1
    print_usage(rows, by=args.by, since=args.since, at=args.until, fmt=args.format)
    return 0
