"""The thresholds and durations the insight rules use.

Every value is checked once, by ``Thresholds`` itself, whether it comes from code or from a
file (``thresholds_file``); which rules exist is the engine's to check (``check_rules``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, get_args, get_origin, get_type_hints

from otel_gpu.config import ConfigError

_INT64_MAX = 2**63 - 1  # what an OTLP int attribute or a Prometheus sample can carry


class ThresholdsError(ConfigError):
    """Thresholds that cannot be used; names the key (and the file, when read from one)."""


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
    # input_bound naming storage: the wait comes with storage being read while the CPUs are
    # below their limit (input_bound_cpu_of_limit_clear to raise, input_bound_cpu_of_limit to
    # hold: the CPU-bound band mirrored). Storage is read when the container's tasks stall on
    # I/O (PSI io "some") a fifth of the time, or it or an NFS mount reads 100 MB/s; ours, as
    # no tool publishes such a rule (systemd-oomd acts on memory pressure only).
    storage_io_pressure: float = 0.20
    storage_io_pressure_clear: float = 0.10
    storage_read_bytes_per_s: float = 100e6
    storage_read_bytes_per_s_clear: float = 50e6
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
    # large_egress: a container sending over 100 MB/s (800 Mbit/s: most of a 1 GbE uplink, a
    # tenth of 10 GbE) for 10 min, about 60 GB. A training job's own traffic (metrics, logs) is
    # far below; data it reads arrives, it is not sent; checkpoints written to a mounted
    # volume are the host's traffic, not the container's. A burst (one upload) is shorter.
    egress_bytes_per_s: float = 100e6
    egress_bytes_per_s_clear: float = 50e6
    egress_for_s: float = 600.0
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
    # nvlink_errors: DCGM's NVLink health watch (DcgmHealthWatch.cpp: more than 100 CRC errors
    # per second on a link, DCGM_LIMIT_MAX_NVLINK_CRC_ERROR; any replay or recovery error),
    # as rates over rate_span_s. Recalled from DCGM's source, not checked here; the clear
    # band (half the threshold) is ours.
    nvlink_crc_errors_per_s: float = 100.0
    nvlink_crc_errors_per_s_clear: float = 50.0
    # mig_reconfigured: a MIG layout change, for information.
    mig_reconfigured_hold_s: float = 600.0
    # An active insight whose subject is not seen (a failed read, a container gone) clears
    # after this long.
    missing_grace_s: float = 60.0
    disabled_rules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        types = _field_types()
        for item in fields(self):
            value = _checked(item.name, types[item.name], getattr(self, item.name))
            object.__setattr__(self, item.name, value)
        for clear, fire, fires_above in _hysteresis_pairs():
            low, high = (clear, fire) if fires_above else (fire, clear)
            if getattr(self, low) > getattr(self, high):
                side, other = ("above", "below") if fires_above else ("below", "above")
                raise ThresholdsError(
                    f"{clear}: {getattr(self, clear)!r} is {side} {fire} "
                    f"({getattr(self, fire)!r}): the insight fires {side} {fire} and clears "
                    f"{other} {clear}, so {clear} must be at or {other} it (set both)"
                )


@cache
def _hysteresis_pairs() -> tuple[tuple[str, str, bool], ...]:
    """(clear field, fire field, whether the rule fires above it) for every clear threshold:
    ``x_clear`` or ``x_clear_unit`` clears ``x`` or ``x_unit``; the defaults give the side."""
    defaults = {item.name: item.default for item in fields(Thresholds)}
    pairs = []
    for name, default in defaults.items():
        fire = name.replace("_clear", "", 1)
        if fire != name and fire in defaults:
            pairs.append((name, fire, default < defaults[fire]))
    return tuple(pairs)


@cache
def _field_types() -> dict[str, Any]:
    return get_type_hints(Thresholds)


def _checked(key: str, expected: Any, value: Any) -> Any:
    """``value`` as the field's type (an int as a float, a list as a tuple), or ThresholdsError."""

    def wrong(what: str, where: str = key, got: Any = value) -> ThresholdsError:
        return ThresholdsError(f"{where}: {what}, got {got!r}")

    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("expected a number")
        if isinstance(value, int) and abs(value) > _INT64_MAX:
            raise wrong("expected a finite number >= 0")
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise wrong("expected a finite number >= 0")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64_MAX:
            raise wrong(f"expected a whole number from 0 to {_INT64_MAX}")
        return value
    if get_origin(expected) is tuple:
        (item_type, _) = get_args(expected)
        if not isinstance(value, (list, tuple)):
            raise wrong("expected a list")
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if item_type is int and (isinstance(item, bool) or not isinstance(item, int)
                                     or not 0 <= item <= _INT64_MAX):
                raise wrong(f"expected a whole number from 0 to {_INT64_MAX}", where, item)
            if item_type is str and not isinstance(item, str):
                raise wrong("expected a string", where, item)
        return tuple(value)
    raise AssertionError(f"unhandled threshold type {expected!r}")


def threshold_names() -> frozenset[str]:
    return frozenset(_field_types())
