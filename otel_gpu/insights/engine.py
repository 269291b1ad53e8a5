"""Insights: findings a person can act on, drawn from a bounded window of Snapshots.

Each rule is a pure function over the window (the recent Snapshots, each with the training
signals of its cycle) that says, per subject, which severity its condition raises now and which
severity still holds inside the hysteresis band. The ``InsightEngine`` turns those verdicts into
insights: a condition fires once it has held for its duration, and clears only once it falls
below its clear threshold, all in Snapshot time (simulated time under ``--simulate``). Event
rules (an Xid, an OOM kill, a MIG reconfiguration) fire at once and stay active for a hold time.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, get_args, get_origin, get_type_hints

from otel_gpu.config import ConfigError
from otel_gpu.snapshot import (
    CRITICAL,
    INFO,
    SEVERITY_RANK,
    WARNING,
    Attributes,
    ContainerUsage,
    Gpu,
    Insight,
    MigDevice,
    Snapshot,
    TrainingSignals,
    gpu_identity,
    mig_identity,
)

USER_RULES = (
    "input_bound",
    "device_idle",
    "gpu_memory_pressure",
    "container_memory_pressure",
    "cpu_throttled",
    "low_sm_activity",
)
OPERATOR_RULES = (
    "xid_critical",
    "ecc_uncorrectable",
    "row_remap",
    "thermal_throttle",
    "power_brake",
    "high_temperature",
    "gpu_lost",
    "host_memory_pressure",
    "filesystem_full",
    "mig_reconfigured",
)
RULE_IDS = USER_RULES + OPERATOR_RULES


@dataclass(frozen=True)
class Sample:
    """One entry of the window: a Snapshot and the training signals of its cycle."""

    snapshot: Snapshot
    training: tuple[TrainingSignals, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one subject in the newest sample.

    ``raised``: the highest severity whose raise threshold is met now. ``held``: the highest
    severity whose clear threshold has not been crossed; an active insight keeps at most that
    severity, and clears when neither is set. An event (``hold_s`` set) is raised only in the
    sample where it happened.
    """

    key: tuple[Any, ...]
    attributes: Attributes
    raised: str | None
    held: str | None
    message: str
    remedy: str
    for_s: float = 0.0
    hold_s: float | None = None


@dataclass(frozen=True)
class Thresholds:
    """Every threshold and duration the rules use. Durations are seconds of Snapshot time."""

    # input_bound from training signals. TensorFlow's profiler: input >= 20 % of step time is
    # "highly", 5-20 % "moderately" input-bound; PyTorch's profiler plugin flags data loading
    # over 5 % of step time.
    data_wait_warning: float = 0.20
    data_wait_warning_clear: float = 0.15
    data_wait_info: float = 0.05
    data_wait_info_clear: float = 0.03
    data_wait_min_steps: int = 20
    data_wait_for_s: float = 300.0
    # input_bound without training signals: the device mostly idle while the container's CPUs
    # sit at their quota (torch-tb-profiler calls GPU utilization under 50 % low; no tool
    # publishes a combined rule, hence the stricter 30 % and a longer duration).
    input_bound_device_activity: float = 0.30
    input_bound_device_activity_clear: float = 0.40
    input_bound_cpu_of_limit: float = 0.90
    input_bound_cpu_of_limit_clear: float = 0.80
    input_bound_for_s: float = 600.0
    # device_idle: a device given to a container or pod with no process on it, or activity at
    # about 0, for half an hour.
    device_idle_activity: float = 0.01
    device_idle_activity_clear: float = 0.05
    device_idle_for_s: float = 1800.0
    # gpu_memory_pressure: device memory nearly full; the next allocation may fail.
    gpu_memory_used: float = 0.95
    gpu_memory_used_clear: float = 0.90
    gpu_memory_for_s: float = 300.0
    # container_memory_pressure: cgroup memory near its limit, or an OOM kill seen.
    container_memory_used: float = 0.90
    container_memory_used_clear: float = 0.85
    container_memory_for_s: float = 300.0
    oom_kill_hold_s: float = 600.0
    # cpu_throttled: kubernetes-mixin CPUThrottlingHigh, throttled periods over 25 % for 15 min.
    cpu_throttled: float = 0.25
    cpu_throttled_clear: float = 0.15
    cpu_throttled_for_s: float = 900.0
    # Counters (CPU time, CFS periods) become rates over this trailing span, as rate(...[5m]).
    rate_span_s: float = 300.0
    # low_sm_activity: a high duty cycle ("utilization", a kernel ran) over low SM activity
    # from GPM: kernels run but occupy few SMs.
    low_sm_duty_cycle: float = 0.80
    low_sm_duty_cycle_clear: float = 0.70
    low_sm_activity: float = 0.30
    low_sm_activity_clear: float = 0.40
    low_sm_for_s: float = 600.0
    # xid_critical: nvidia_gpu_exporter's rules, active for 10 min after the last Xid.
    xid_critical_codes: tuple[int, ...] = (48, 62, 64, 74, 79, 95, 119, 120)
    xid_warning_codes: tuple[int, ...] = (94,)
    xid_hold_s: float = 600.0
    # ecc_uncorrectable: any uncorrectable ECC error (nvidia_gpu_exporter, critical). NVML's
    # aggregate count is kept across reboots, so a new error is an event, held this long.
    ecc_hold_s: float = 3600.0
    # thermal_throttle and power_brake: nvidia_gpu_exporter, hardware thermal slowdown or power
    # brake slowdown for 5 min.
    thermal_throttle_for_s: float = 300.0
    power_brake_for_s: float = 300.0
    # high_temperature: nvidia_gpu_exporter and Datadog, over 85 C for 10 min.
    temperature_celsius: float = 85.0
    temperature_clear_celsius: float = 80.0
    temperature_for_s: float = 600.0
    # host_memory_pressure: node-mixin NodeMemoryHighUtilization, over 90 % for 15 min.
    host_memory_used: float = 0.90
    host_memory_used_clear: float = 0.85
    host_memory_for_s: float = 900.0
    # filesystem_full: node-mixin NodeFilesystemAlmostOutOfSpace (under 5 % free: warning,
    # under 3 %: critical, 30 min) and NodeFilesystemSpaceFillingUp (under 20 % free and
    # predicted full within 4 h by a linear fit: critical).
    filesystem_free: float = 0.05
    filesystem_free_clear: float = 0.08
    filesystem_critical_free: float = 0.03
    filesystem_critical_free_clear: float = 0.04
    filesystem_fill_horizon_s: float = 4 * 3600.0
    filesystem_fill_horizon_clear_s: float = 6 * 3600.0
    filesystem_fill_max_free: float = 0.20
    filesystem_fill_min_span_s: float = 300.0  # history the fit needs
    filesystem_for_s: float = 1800.0
    # mig_reconfigured: a MIG layout change, for information.
    mig_reconfigured_hold_s: float = 600.0
    # An active insight whose subject is not seen (a failed read, a container gone) clears
    # after this long.
    missing_grace_s: float = 60.0
    disabled_rules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and (math.isnan(value) or value < 0):
                raise ValueError(f"{item.name}: must be a number >= 0, not {value!r}")
        unknown = sorted(set(self.disabled_rules) - set(RULE_IDS))
        if unknown:
            raise ValueError(f"disabled_rules: unknown rule {unknown[0]!r}")
        for clear, fire, fires_above in _HYSTERESIS:
            low, high = (clear, fire) if fires_above else (fire, clear)
            if getattr(self, low) > getattr(self, high):
                side, other = ("above", "below") if fires_above else ("below", "above")
                raise ValueError(
                    f"{clear}: {getattr(self, clear)!r} is {side} {fire} "
                    f"({getattr(self, fire)!r}): the insight fires {side} {fire} and clears "
                    f"{other} {clear}, so {clear} must be at or {other} it (set both)"
                )


def _hysteresis_pairs() -> tuple[tuple[str, str, bool], ...]:
    """(clear field, fire field, whether the rule fires above it) for every clear threshold:
    ``x_clear`` or ``x_clear_unit`` clears ``x`` or ``x_unit``; the defaults give the side."""
    names = {item.name: item.default for item in fields(Thresholds)}
    pairs = []
    for name, default in names.items():
        fire = name.replace("_clear", "", 1)
        if fire != name and fire in names:
            pairs.append((name, fire, default < names[fire]))
    return tuple(pairs)


# -- reading thresholds from a file ---------------------------------------------------------------


class ThresholdsError(ConfigError):
    """A thresholds file that cannot be used; names the file and the key."""


def _field_types() -> dict[str, Any]:
    return get_type_hints(Thresholds)


def _coerce(path: str, key: str, expected: Any, value: Any) -> Any:
    def wrong(what: str) -> ThresholdsError:
        return ThresholdsError(f"{path}: {key}: {what}, got {value!r}")

    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("expected a number")
        value = float(value)
        if math.isnan(value) or value < 0:
            raise wrong("expected a number >= 0")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise wrong("expected a whole number >= 0")
        return value
    if get_origin(expected) is tuple:
        (item_type, _) = get_args(expected)
        if not isinstance(value, list):
            raise wrong("expected a list")
        items = []
        for i, item in enumerate(value):
            if item_type is int and (isinstance(item, bool) or not isinstance(item, int)):
                raise ThresholdsError(f"{path}: {key}[{i}]: expected a whole number, got {item!r}")
            if item_type is str and not isinstance(item, str):
                raise ThresholdsError(f"{path}: {key}[{i}]: expected a string, got {item!r}")
            if key == "disabled_rules" and item not in RULE_IDS:
                raise ThresholdsError(f"{path}: {key}[{i}]: unknown rule {item!r}")
            items.append(item)
        return tuple(items)
    raise AssertionError(f"unhandled threshold type {expected!r}")


def thresholds_from_mapping(raw: Any, path: str = "<thresholds>") -> Thresholds:
    """Thresholds from a mapping of field names to values; unknown keys and wrong types raise."""
    if raw is None:
        return Thresholds()
    if not isinstance(raw, dict):
        raise ThresholdsError(f"{path}: expected a mapping of threshold names to values")
    types = _field_types()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in types:
            raise ThresholdsError(f"{path}: {key}: unknown threshold")
        values[key] = _coerce(path, key, types[key], value)
    try:
        return Thresholds(**values)
    except ValueError as err:
        raise ThresholdsError(f"{path}: {err}") from None


_HYSTERESIS = _hysteresis_pairs()


def load_thresholds(path: str | os.PathLike[str] | None) -> Thresholds:
    """Thresholds from a YAML or JSON file (a mapping of field names); None: the defaults."""
    if path is None:
        return Thresholds()
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ThresholdsError(f"{name}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        why = f"{err.reason} at byte {err.start}"
        raise ThresholdsError(f"{name}: not UTF-8 text ({why})") from None
    import yaml

    try:
        raw = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ThresholdsError(f"{name}: not valid YAML or JSON: {err}") from err
    except RecursionError:
        raise ThresholdsError(f"{name}: nested too deeply to be a thresholds file") from None
    return thresholds_from_mapping(raw, name)


# -- helpers the rules share ----------------------------------------------------------------------


Device = Gpu | MigDevice


def _devices(snap: Snapshot) -> Iterator[tuple[Device, Attributes]]:
    """Every device a workload can run on: whole GPUs with MIG off, and MIG devices."""
    for gpu in snap.gpus:
        if gpu.lost:
            continue
        if gpu.mig_enabled:
            for mig in gpu.mig_devices:
                yield mig, mig_identity(mig)
        else:
            yield gpu, gpu_identity(gpu)


def _duty_cycle(device: Device) -> float | None:
    """The share of time a kernel ran: NVML utilization, or GPM's engine activity on MIG."""
    if isinstance(device, Gpu) and device.utilization_general is not None:
        return device.utilization_general
    if device.gpm is not None:
        return device.gpm.graphics_engine_utilization
    return None


def _device_label(attrs: Mapping[str, Any]) -> str:
    name = attrs.get("hw.name", "?")
    profile = attrs.get("nvidia.gpu.mig.profile")
    if profile:
        return f"MIG device {name} ({profile})"
    model = attrs.get("hw.model")
    return f"GPU {name} ({model})" if model else f"GPU {name}"


def _who(attrs: Mapping[str, Any]) -> str:
    if "k8s.pod.name" in attrs:
        pod = f"pod {attrs.get('k8s.namespace.name', '?')}/{attrs['k8s.pod.name']}"
        if "k8s.container.name" in attrs:
            pod += f" container {attrs['k8s.container.name']}"
        return pod
    if "container.name" in attrs:
        return f"container {attrs['container.name']}"
    if "container.id" in attrs:
        return f"container {str(attrs['container.id'])[:12]}"
    if "process.owner" in attrs:
        return f"user {attrs['process.owner']}"
    return "the workload"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _container_key(attrs: Mapping[str, Any]) -> tuple[Any, ...]:
    if "container.id" in attrs:
        return ("container", attrs["container.id"])
    return ("container", *sorted(attrs.items()))


def _single_holder(snap: Snapshot, uuid: str) -> Attributes:
    """The workload attributes of the one user/container on a device, if it has just one."""
    holders = [w.attributes for w in snap.workloads if w.device_uuid == uuid]
    if len(holders) == 1:
        return dict(holders[0])
    if not holders:
        given = [a.attributes for a in snap.assignments if a.device_uuid == uuid]
        if len(given) == 1:
            return dict(given[0])
    return {}


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"


def _minutes(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


def _level(
    value: float, higher_is_worse: bool, levels: Sequence[tuple[str, float, float]]
) -> tuple[str | None, str | None]:
    """(raised, held) for a value against (severity, raise_at, clear_at) levels, worst last."""
    raised = held = None
    for severity, raise_at, clear_at in levels:
        if higher_is_worse:
            if value >= raise_at:
                raised = severity
            if value > clear_at:
                held = severity
        else:
            if value <= raise_at:
                raised = severity
            if value < clear_at:
                held = severity
    return raised, held


def _flag(on: bool, severity: str) -> tuple[str | None, str | None]:
    return (severity, severity) if on else (None, None)


def _span_start(window: Sequence[Sample], span_s: float) -> Sample:
    """The oldest sample of the window within ``span_s`` of the newest, never the newest itself
    when there is an older one."""
    newest = window[-1].snapshot.timestamp
    chosen = window[-2] if len(window) > 1 else window[-1]
    for sample in window[:-1]:
        if newest - sample.snapshot.timestamp <= span_s:
            return sample
    return chosen


def _containers_by_key(snap: Snapshot) -> dict[tuple[Any, ...], ContainerUsage]:
    return {_container_key(c.attributes): c for c in snap.containers}


def _counter_increase(
    window: Sequence[Sample], read: Callable[[Snapshot], int | None], first_from_zero: bool
) -> int:
    """How much a counter grew between the previous sample and the newest one."""
    now = read(window[-1].snapshot)
    if now is None:
        return 0
    for sample in reversed(window[:-1]):
        before = read(sample.snapshot)
        if before is not None:
            return max(now - before, 0)
    return now if first_from_zero else 0


# -- user rules -----------------------------------------------------------------------------------


def input_bound(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    newest = window[-1]
    signals = [s for s in newest.training if s.data_wait_ratio is not None]
    if signals:
        for signal in signals:
            if signal.steps < t.data_wait_min_steps or not _steps_advanced(window, signal):
                continue
            ratio = signal.data_wait_ratio
            assert ratio is not None
            raised, held = _level(
                ratio,
                True,
                (
                    (INFO, t.data_wait_info, t.data_wait_info_clear),
                    (WARNING, t.data_wait_warning, t.data_wait_warning_clear),
                ),
            )
            degree = "highly" if ratio >= t.data_wait_warning else "moderately"
            yield Finding(
                key=("training", *sorted(signal.attributes.items())),
                attributes=dict(signal.attributes),
                raised=raised,
                held=held,
                message=f"The training loop is {degree} input-bound: {_pct(ratio)} of step time "
                "is spent waiting for the next batch.",
                remedy="Feed the device faster: more DataLoader workers, pin_memory and "
                "prefetching, faster storage or caching, or preprocessing on the GPU.",
                for_s=t.data_wait_for_s,
            )
        return
    yield from _input_bound_from_cpu(window, t)


def _steps_advanced(window: Sequence[Sample], signal: TrainingSignals) -> bool:
    """Whether the run made progress since the previous sample (a stalled run says nothing)."""
    key = dict(signal.attributes)
    for sample in reversed(window[:-1]):
        for earlier in sample.training:
            if dict(earlier.attributes) == key:
                return signal.steps > earlier.steps
    return True


def _cpu_of_limit(window: Sequence[Sample], t: Thresholds, key: tuple[Any, ...]) -> float | None:
    """The container's CPU use over the trailing rate span, as a share of its CPU limit."""
    newest = _containers_by_key(window[-1].snapshot).get(key)
    if newest is None or not newest.resources.cpu_limit:
        return None
    start = _span_start(window, t.rate_span_s)
    before = _containers_by_key(start.snapshot).get(key)
    if before is None or start is window[-1]:
        return None
    elapsed = window[-1].snapshot.timestamp - start.snapshot.timestamp
    used_now = _cpu_seconds(newest)
    used_before = _cpu_seconds(before)
    if elapsed <= 0 or used_now is None or used_before is None:
        return None
    return max(used_now - used_before, 0.0) / elapsed / newest.resources.cpu_limit


def _cpu_seconds(usage: ContainerUsage) -> float | None:
    res = usage.resources
    if res.cpu_user_s is None and res.cpu_system_s is None:
        return None
    return (res.cpu_user_s or 0.0) + (res.cpu_system_s or 0.0)


def _input_bound_from_cpu(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    devices = {dev.uuid: dev for dev, _ in _devices(snap)}
    for usage in snap.containers:
        key = _container_key(usage.attributes)
        cpu = _cpu_of_limit(window, t, key)
        cid = usage.attributes.get("container.id")
        if cpu is None or cid is None:
            continue
        used = {w.device_uuid for w in snap.workloads if w.attributes.get("container.id") == cid}
        activities = [a for a in (_duty_cycle(devices[u]) for u in used if u in devices)
                      if a is not None]
        if not activities:
            continue
        activity = sum(activities) / len(activities)
        raised = WARNING if (
            activity < t.input_bound_device_activity and cpu >= t.input_bound_cpu_of_limit
        ) else None
        held = WARNING if (
            activity < t.input_bound_device_activity_clear
            and cpu > t.input_bound_cpu_of_limit_clear
        ) else None
        limit = usage.resources.cpu_limit
        yield Finding(
            key=key,
            attributes=dict(usage.attributes),
            raised=raised,
            held=held,
            message=f"{_cap(_who(usage.attributes))} looks input-bound: its GPU activity "
            f"is {_pct(activity)} while it uses {_pct(cpu)} of its limit of {limit:g} CPUs.",
            remedy="Give the container more CPUs, or do less on the CPU per batch (more "
            "efficient decoding, preprocessing on the GPU, cached datasets).",
            for_s=t.input_bound_for_s,
        )


def device_idle(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    devices = dict((dev.uuid, (dev, ident)) for dev, ident in _devices(snap))
    for assignment in snap.assignments:
        found = devices.get(assignment.device_uuid)
        if found is None:
            continue
        device, ident = found
        activity = _duty_cycle(device)
        if not device.processes:
            idle = still_idle = True
            what = "no process has run on it"
        elif activity is None:
            idle = still_idle = False
            what = ""
        else:
            idle = activity <= t.device_idle_activity
            still_idle = activity < t.device_idle_activity_clear
            what = f"its activity is {_pct(activity)}"
        attrs: Attributes = {**ident, **assignment.attributes}
        yield Finding(
            key=(assignment.device_uuid, *sorted(assignment.attributes.items())),
            attributes=attrs,
            raised=WARNING if idle else None,
            held=WARNING if still_idle else None,
            message=f"{_device_label(ident)} is given to {_who(assignment.attributes)} but "
            f"{what} for {_minutes(t.device_idle_for_s)} or more.",
            remedy="Release the device (stop the idle notebook or job, or lower its GPU "
            "request) so that someone else can use it.",
            for_s=t.device_idle_for_s,
        )


def gpu_memory_pressure(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    for device, ident in _devices(snap):
        used, total = device.memory_used_bytes, device.memory_total_bytes
        if used is None or not total:
            continue
        ratio = used / total
        raised, held = _level(
            ratio, True, ((WARNING, t.gpu_memory_used, t.gpu_memory_used_clear),)
        )
        yield Finding(
            key=(device.uuid,),
            attributes={**ident, **_single_holder(snap, device.uuid)},
            raised=raised,
            held=held,
            message=f"{_device_label(ident)} memory is {_pct(ratio)} full "
            f"({_gib(used)} of {_gib(total)}); the next allocation may fail.",
            remedy="Lower the batch size or sequence length, use mixed precision, activation "
            "checkpointing or gradient accumulation, or ask for a larger device or MIG profile.",
            for_s=t.gpu_memory_for_s,
        )


def container_memory_pressure(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    for usage in snap.containers:
        res = usage.resources
        key = _container_key(usage.attributes)
        who = _who(usage.attributes)
        if res.memory_usage_bytes is not None and res.memory_limit_bytes:
            ratio = res.memory_usage_bytes / res.memory_limit_bytes
            raised, held = _level(
                ratio,
                True,
                ((WARNING, t.container_memory_used, t.container_memory_used_clear),),
            )
            yield Finding(
                key=key,
                attributes=dict(usage.attributes),
                raised=raised,
                held=held,
                message=f"{_cap(who)} uses {_pct(ratio)} of its memory limit "
                f"({_gib(res.memory_usage_bytes)} of {_gib(res.memory_limit_bytes)}); the "
                "kernel will kill a process when it reaches the limit.",
                remedy="Raise the container's memory limit, or use less host memory (fewer or "
                "lighter DataLoader workers, smaller prefetch buffers, memory-mapped datasets).",
                for_s=t.container_memory_for_s,
            )
        kills = _counter_increase(
            window,
            lambda s, key=key: _oom_kills(s, key),
            first_from_zero=False,
        )
        if kills:
            yield Finding(
                key=(*key, "oom_kill"),
                attributes=dict(usage.attributes),
                raised=CRITICAL,
                held=None,
                message=f"The kernel killed {kills} process{'es' if kills > 1 else ''} of "
                f"{who} for exceeding its memory limit"
                + (f" of {_gib(res.memory_limit_bytes)}." if res.memory_limit_bytes else "."),
                remedy="Raise the container's memory limit or lower the job's host memory use; "
                "check which process died (often a DataLoader worker).",
                hold_s=t.oom_kill_hold_s,
            )


def _oom_kills(snap: Snapshot, key: tuple[Any, ...]) -> int | None:
    usage = _containers_by_key(snap).get(key)
    return usage.resources.oom_kills if usage is not None else None


def cpu_throttled(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    if len(window) < 2:
        return
    snap = window[-1].snapshot
    start = _span_start(window, t.rate_span_s)
    before_all = _containers_by_key(start.snapshot)
    for usage in snap.containers:
        key = _container_key(usage.attributes)
        before = before_all.get(key)
        res = usage.resources
        if before is None or res.cpu_periods is None or res.cpu_throttled_periods is None:
            continue
        if before.resources.cpu_periods is None or before.resources.cpu_throttled_periods is None:
            continue
        periods = res.cpu_periods - before.resources.cpu_periods
        if periods <= 0:
            continue
        share = max(res.cpu_throttled_periods - before.resources.cpu_throttled_periods, 0)
        share /= periods
        raised, held = _level(share, True, ((WARNING, t.cpu_throttled, t.cpu_throttled_clear),))
        limit = f" of {res.cpu_limit:g} CPUs" if res.cpu_limit else ""
        yield Finding(
            key=key,
            attributes=dict(usage.attributes),
            raised=raised,
            held=held,
            message=f"{_cap(_who(usage.attributes))} was throttled by its CPU quota"
            f"{limit} in {_pct(share)} of scheduling periods.",
            remedy="Raise the container's CPU limit, or lower its CPU work (fewer DataLoader "
            "workers than CPUs, fewer threads per worker).",
            for_s=t.cpu_throttled_for_s,
        )


def low_sm_activity(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    for device, ident in _devices(snap):
        duty = _duty_cycle(device)
        sm = device.gpm.sm_utilization if device.gpm is not None else None
        if duty is None or sm is None:
            continue
        raised = WARNING if duty >= t.low_sm_duty_cycle and sm < t.low_sm_activity else None
        held = WARNING if duty > t.low_sm_duty_cycle_clear and sm < t.low_sm_activity_clear \
            else None
        yield Finding(
            key=(device.uuid,),
            attributes={**ident, **_single_holder(snap, device.uuid)},
            raised=raised,
            held=held,
            message=f"{_device_label(ident)} is busy {_pct(duty)} of the time but its SMs are "
            f"only {_pct(sm)} active: its kernels are too small to fill the device.",
            remedy="Use larger batches or fused kernels (torch.compile, CUDA graphs), overlap "
            "work on several streams, or move to a smaller MIG profile.",
            for_s=t.low_sm_for_s,
        )


# -- operator rules -------------------------------------------------------------------------------

_XID_REMEDIES = {
    48: "An uncorrectable double-bit ECC error: drain the node and reset the GPU.",
    62: "An internal microcontroller halt: drain the node and reset the GPU.",
    64: "An ECC page retirement or row remap failed: drain the node, reset the GPU, and "
    "replace it if this recurs.",
    74: "An NVLink error: drain the node, reset the GPUs on the link and check NVLink health.",
    79: "The GPU fell off the bus: drain the node and reboot it; check PCIe, power and "
    "cooling, and replace the GPU if it recurs.",
    94: "A contained memory error: restart the affected application; reset the GPU when "
    "convenient.",
    95: "An uncontained memory error: drain the node and reset the GPU.",
    119: "A GSP RPC timeout: drain the node and reset the GPU (or reboot).",
    120: "A GSP error: drain the node and reset the GPU (or reboot).",
}


def xid_critical(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    severities = {code: WARNING for code in t.xid_warning_codes}
    severities.update({code: CRITICAL for code in t.xid_critical_codes})
    for gpu in snap.gpus:
        for code in gpu.xid_errors:
            severity = severities.get(code)
            if severity is None:
                continue
            count = _counter_increase(
                window, lambda s, u=gpu.uuid, c=code: _xid_count(s, u, c), first_from_zero=True
            )
            if not count:
                continue
            ident = gpu_identity(gpu)
            yield Finding(
                key=(gpu.uuid, code),
                attributes={**ident, "nvidia.gpu.xid": code},
                raised=severity,
                held=None,
                message=f"{_device_label(ident)} reported Xid {code}"
                + (f" {count} times." if count > 1 else "."),
                remedy=_XID_REMEDIES.get(code, "Drain the node and reset the GPU."),
                hold_s=t.xid_hold_s,
            )


def _xid_count(snap: Snapshot, uuid: str, code: int) -> int | None:
    for gpu in snap.gpus:
        if gpu.uuid == uuid:
            return gpu.xid_errors.get(code, 0)
    return None


def ecc_uncorrectable(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    for gpu in window[-1].snapshot.gpus:
        if gpu.lost or gpu.ecc_uncorrected is None:
            continue
        new = _counter_increase(
            window, lambda s, u=gpu.uuid: _gpu_value(s, u, "ecc_uncorrected"), True
        )
        if not new:
            continue
        ident = gpu_identity(gpu)
        yield Finding(
            key=(gpu.uuid,),
            attributes=ident,
            raised=CRITICAL,
            held=None,
            message=f"{_device_label(ident)} counted {new} new uncorrectable ECC error"
            f"{'s' if new > 1 else ''} ({gpu.ecc_uncorrected} in total).",
            remedy="Drain the node and reset the GPU; check row remapping, and replace the GPU "
            "if uncorrectable errors recur.",
            hold_s=t.ecc_hold_s,
        )


def _gpu_value(snap: Snapshot, uuid: str, attr: str) -> Any:
    for gpu in snap.gpus:
        if gpu.uuid == uuid:
            return getattr(gpu, attr)
    return None


def row_remap(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    for gpu in window[-1].snapshot.gpus:
        if gpu.lost or (gpu.remap_failed is None and gpu.remap_pending is None):
            continue
        ident = gpu_identity(gpu)
        if gpu.remap_failed:
            severity: str | None = CRITICAL
            message = f"{_device_label(ident)} failed to remap a memory row."
            remedy = "Drain the node and replace the GPU (a row-remap failure is NVIDIA's RMA " \
                "criterion)."
        elif gpu.remap_pending:
            severity = WARNING
            message = f"{_device_label(ident)} has a memory row remap pending."
            remedy = "Drain the node and reset the GPU to apply the pending row remap."
        else:
            severity, message, remedy = None, "", ""
        raised, held = _flag(severity is not None, severity or WARNING)
        yield Finding((gpu.uuid,), ident, raised, held, message, remedy)


def _clock_event_rule(
    reason: str, rule_for_s: Callable[[Thresholds], float], what: str, remedy: str
) -> Callable[[Sequence[Sample], Thresholds], Iterator[Finding]]:
    def rule(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
        for gpu in window[-1].snapshot.gpus:
            if gpu.lost or reason not in gpu.clocks_event_reasons:
                continue
            ident = gpu_identity(gpu)
            raised, held = _flag(gpu.clocks_event_reasons[reason], WARNING)
            for_s = rule_for_s(t)
            yield Finding(
                key=(gpu.uuid,),
                attributes=ident,
                raised=raised,
                held=held,
                message=f"{_device_label(ident)} has been slowed by {what} for "
                f"{_minutes(for_s)} or more.",
                remedy=remedy,
                for_s=for_s,
            )

    return rule


thermal_throttle = _clock_event_rule(
    "hw_thermal_slowdown",
    lambda t: t.thermal_throttle_for_s,
    "hardware thermal slowdown",
    "Check the cooling: airflow, fans or liquid loop, inlet temperature, dust; move work "
    "off the GPU until it runs cooler.",
)
power_brake = _clock_event_rule(
    "hw_power_brake_slowdown",
    lambda t: t.power_brake_for_s,
    "the hardware power brake",
    "Check the power delivery: power supplies, cabling and the chassis power budget "
    "(a software power limit does not raise this).",
)


def high_temperature(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    for gpu in window[-1].snapshot.gpus:
        if gpu.lost or gpu.temperature_gpu_celsius is None:
            continue
        temp = gpu.temperature_gpu_celsius
        ident = gpu_identity(gpu)
        raised = WARNING if temp > t.temperature_celsius else None
        held = WARNING if temp >= t.temperature_clear_celsius else None
        yield Finding(
            key=(gpu.uuid,),
            attributes=ident,
            raised=raised,
            held=held,
            message=f"{_device_label(ident)} is at {temp:.0f} °C; it has run above "
            f"{t.temperature_celsius:g} °C for {_minutes(t.temperature_for_s)} or more.",
            remedy="Check the cooling and the inlet temperature; the GPU will slow itself "
            "down to protect itself.",
            for_s=t.temperature_for_s,
        )


def gpu_lost(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    for gpu in window[-1].snapshot.gpus:
        if not gpu.lost:
            continue
        ident = gpu_identity(gpu)
        yield Finding(
            key=(gpu.uuid,),
            attributes=ident,
            raised=CRITICAL,
            held=CRITICAL,
            message=f"{_device_label(ident)} is lost: the driver no longer reaches it.",
            remedy="Drain the node and reboot it; look for Xid 79 in the kernel log, check "
            "PCIe, power and cooling, and replace the GPU if it recurs.",
        )


def host_memory_pressure(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    host = window[-1].snapshot.host
    if host is None or not host.memory_total_bytes:
        return
    if host.memory_available_bytes is not None:
        ratio = 1.0 - host.memory_available_bytes / host.memory_total_bytes
    elif host.memory_used_ratio is not None:
        ratio = host.memory_used_ratio
    else:
        return
    raised, held = _level(ratio, True, ((WARNING, t.host_memory_used, t.host_memory_used_clear),))
    yield Finding(
        key=("host",),
        attributes={},
        raised=raised,
        held=held,
        message=f"The host's memory is {_pct(ratio)} used ({_gib(host.memory_total_bytes)} in "
        f"all) for {_minutes(t.host_memory_for_s)} or more.",
        remedy="Find the largest users (container memory metrics), set memory limits on "
        "containers, or move work to another node.",
        for_s=t.host_memory_for_s,
    )


def filesystem_full(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    host = window[-1].snapshot.host
    if host is None:
        return
    for fs in host.filesystems:
        size = fs.size_bytes
        if fs.mode == "ro" or size <= 0:
            continue
        free = fs.free_bytes / size
        # The fill prediction counts only below its free-share cut-off; no fit above it.
        eta = _time_to_full(window, fs.mountpoint, t.filesystem_fill_min_span_s) \
            if free < t.filesystem_fill_max_free else None
        filling = eta is not None
        raised, held = _level(
            free,
            False,
            (
                (WARNING, t.filesystem_free, t.filesystem_free_clear),
                (CRITICAL, t.filesystem_critical_free, t.filesystem_critical_free_clear),
            ),
        )
        if filling and eta is not None and eta <= t.filesystem_fill_horizon_s:
            raised = CRITICAL
        if filling and eta is not None and eta <= t.filesystem_fill_horizon_clear_s:
            held = CRITICAL
        soon = f"; at the current rate it is full in {_minutes(round(eta / 60) * 60)}" \
            if filling and eta is not None and eta <= t.filesystem_fill_horizon_clear_s else ""
        yield Finding(
            key=(fs.mountpoint,),
            attributes={"system.filesystem.mountpoint": fs.mountpoint, "system.device": fs.device},
            raised=raised,
            held=held,
            message=f"Filesystem {fs.mountpoint} has {_pct(free)} free "
            f"({_gib(fs.free_bytes)} of {_gib(size)}){soon}.",
            remedy="Free space (old checkpoints, caches, container images and logs) or grow "
            "the filesystem.",
            for_s=t.filesystem_for_s,
        )


def _time_to_full(window: Sequence[Sample], mountpoint: str, min_span_s: float) -> float | None:
    """Seconds until free space reaches 0 by a least-squares line through the window."""
    points = []
    for sample in window:
        host = sample.snapshot.host
        if host is None:
            continue
        for fs in host.filesystems:
            if fs.mountpoint == mountpoint:
                points.append((sample.snapshot.timestamp, float(fs.free_bytes)))
                break
    if len(points) < 3 or points[-1][0] - points[0][0] < min_span_s:
        return None
    n = len(points)
    mean_t = sum(p[0] for p in points) / n
    mean_f = sum(p[1] for p in points) / n
    var = sum((p[0] - mean_t) ** 2 for p in points)
    if var <= 0:
        return None
    slope = sum((p[0] - mean_t) * (p[1] - mean_f) for p in points) / var
    if slope >= 0:
        return None
    return points[-1][1] / -slope


def mig_reconfigured(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    for gpu in window[-1].snapshot.gpus:
        if gpu.lost:
            continue
        changes = _counter_increase(
            window, lambda s, u=gpu.uuid: _gpu_value(s, u, "mig_reconfigurations"), False
        )
        if not changes:
            continue
        ident = gpu_identity(gpu)
        layout = ", ".join(m.profile or "?" for m in gpu.mig_devices) or "no MIG devices"
        yield Finding(
            key=(gpu.uuid,),
            attributes=ident,
            raised=INFO,
            held=None,
            message=f"The MIG layout of {_device_label(ident)} changed; it now has {layout}.",
            remedy="Nothing to fix; check that the jobs and device requests that used the old "
            "MIG devices were moved to the new ones.",
            hold_s=t.mig_reconfigured_hold_s,
        )


RuleFunction = Callable[[Sequence[Sample], Thresholds], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    id: str
    audience: str  # user or operator
    evaluate: RuleFunction


RULES: tuple[Rule, ...] = (
    Rule("input_bound", "user", input_bound),
    Rule("device_idle", "user", device_idle),
    Rule("gpu_memory_pressure", "user", gpu_memory_pressure),
    Rule("container_memory_pressure", "user", container_memory_pressure),
    Rule("cpu_throttled", "user", cpu_throttled),
    Rule("low_sm_activity", "user", low_sm_activity),
    Rule("xid_critical", "operator", xid_critical),
    Rule("ecc_uncorrectable", "operator", ecc_uncorrectable),
    Rule("row_remap", "operator", row_remap),
    Rule("thermal_throttle", "operator", thermal_throttle),
    Rule("power_brake", "operator", power_brake),
    Rule("high_temperature", "operator", high_temperature),
    Rule("gpu_lost", "operator", gpu_lost),
    Rule("host_memory_pressure", "operator", host_memory_pressure),
    Rule("filesystem_full", "operator", filesystem_full),
    Rule("mig_reconfigured", "operator", mig_reconfigured),
)


# -- the engine -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InsightUpdate:
    """The engine's answer for one Snapshot. A change of severity clears the insight at the old
    severity and fires it at the new one."""

    active: tuple[Insight, ...] = ()
    fired: tuple[Insight, ...] = ()
    cleared: tuple[Insight, ...] = ()


@dataclass
class _State:
    pending_since: float | None = None
    insight: Insight | None = None
    last_seen: float = 0.0
    last_event: float | None = None
    hold_s: float | None = None


def _worse(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if SEVERITY_RANK[a] >= SEVERITY_RANK[b] else b


def _milder(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return None
    return a if SEVERITY_RANK[a] <= SEVERITY_RANK[b] else b


def _sort_key(insight: Insight) -> tuple[Any, ...]:
    attributes = sorted(insight.attributes.items(), key=str)
    return (-SEVERITY_RANK[insight.severity], insight.rule, attributes)


class InsightEngine:
    """Runs the rules over a bounded window of Snapshots and keeps each insight's state."""

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        window: int = 60,
        rules: Sequence[Rule] = RULES,
    ) -> None:
        if window < 2:
            raise ValueError("window must hold at least 2 snapshots")
        self.thresholds = thresholds or Thresholds()
        self.window: deque[Sample] = deque(maxlen=window)
        disabled = set(self.thresholds.disabled_rules)
        self.rules = tuple(r for r in rules if r.id not in disabled)
        self._states: dict[tuple[str, tuple[Any, ...]], _State] = {}

    @property
    def active(self) -> tuple[Insight, ...]:
        found = [s.insight for s in self._states.values() if s.insight is not None]
        return tuple(sorted(found, key=_sort_key))

    def update(
        self, snapshot: Snapshot, training: Iterable[TrainingSignals] = ()
    ) -> InsightUpdate:
        now = snapshot.timestamp
        self.window.append(Sample(snapshot, tuple(training)))
        window = tuple(self.window)
        fired: list[Insight] = []
        cleared: list[Insight] = []
        seen: set[tuple[str, tuple[Any, ...]]] = set()
        for rule in self.rules:
            for finding in rule.evaluate(window, self.thresholds):
                key = (rule.id, finding.key)
                if key in seen:
                    continue
                seen.add(key)
                state = self._states.setdefault(key, _State())
                state.last_seen = now
                self._apply(rule.id, state, finding, now, fired, cleared)
        for key in list(self._states):
            state = self._states[key]
            if state.insight is None:
                if key not in seen:
                    del self._states[key]
                continue
            if state.hold_s is not None:
                assert state.last_event is not None
                if now - state.last_event >= state.hold_s:
                    cleared.append(state.insight)
                    del self._states[key]
            elif key not in seen and now - state.last_seen > self.thresholds.missing_grace_s:
                cleared.append(state.insight)
                del self._states[key]
        return InsightUpdate(
            self.active,
            tuple(sorted(fired, key=_sort_key)),
            tuple(sorted(cleared, key=_sort_key)),
        )

    def _apply(
        self,
        rule: str,
        state: _State,
        finding: Finding,
        now: float,
        fired: list[Insight],
        cleared: list[Insight],
    ) -> None:
        current = state.insight
        if finding.hold_s is not None:
            if finding.raised is None:
                return
            state.last_event, state.hold_s = now, finding.hold_s
            severity = _worse(finding.raised, current.severity if current else None)
            assert severity is not None
        elif current is None:
            if finding.raised is None:
                state.pending_since = None
                return
            if state.pending_since is None:
                state.pending_since = now
            if now - state.pending_since < finding.for_s:
                return
            severity = finding.raised
        else:
            new = _worse(finding.raised, _milder(current.severity, finding.held))
            if new is None:
                cleared.append(current)
                state.insight = None
                state.pending_since = None
                return
            severity = new
        if current is not None and current.severity == severity:
            if finding.raised is not None:  # inside the band, the message that raised it stands
                state.insight = replace(current, message=finding.message, remedy=finding.remedy)
            return
        if current is not None:
            cleared.append(current)
        state.insight = Insight(
            rule=rule,
            severity=severity,
            message=finding.message,
            remedy=finding.remedy,
            attributes=current.attributes if current is not None else dict(finding.attributes),
            since=now,
        )
        fired.append(state.insight)
