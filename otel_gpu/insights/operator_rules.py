"""Rules for the people who run the server: failing hardware, heat, power, a full host."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.insights.window import (
    Finding,
    Sample,
    condition,
    counter_increase,
    device_label,
    event,
    flag,
    level,
    minutes,
    pct,
    span_start,
)
from otel_gpu.snapshot import CRITICAL, INFO, WARNING, NvLink, format_gib, gpu_identity

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
            count = counter_increase(
                window, lambda s, u=gpu.uuid, c=code: _xid_count(s, u, c), first_from_zero=True
            )
            if not count:
                continue
            ident = gpu_identity(gpu)
            yield event(
                (gpu.uuid, code),
                {**ident, "nvidia.gpu.xid": code},
                severity,
                f"{device_label(ident)} reported Xid {code}"
                + (f" {count} times." if count > 1 else "."),
                _XID_REMEDIES.get(code, "Drain the node and reset the GPU."),
                t.xid_hold_s,
            )


def _xid_count(sample: Sample, uuid: str, code: int) -> int | None:
    gpu = sample.gpus.get(uuid)
    return gpu.xid_errors.get(code, 0) if gpu is not None else None


def ecc_uncorrectable(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    for gpu in window[-1].snapshot.gpus:
        if gpu.lost or gpu.ecc_uncorrected is None:
            continue
        new = counter_increase(
            window, lambda s, u=gpu.uuid: _gpu_value(s, u, "ecc_uncorrected"), True
        )
        if not new:
            continue
        ident = gpu_identity(gpu)
        yield event(
            (gpu.uuid,),
            ident,
            CRITICAL,
            f"{device_label(ident)} counted {new} new uncorrectable ECC error"
            f"{'s' if new > 1 else ''} ({gpu.ecc_uncorrected} in total).",
            "Drain the node and reset the GPU; check row remapping, and replace the GPU "
            "if uncorrectable errors recur.",
            t.ecc_hold_s,
        )


def _gpu_value(sample: Sample, uuid: str, attr: str) -> Any:
    gpu = sample.gpus.get(uuid)
    return getattr(gpu, attr) if gpu is not None else None


def row_remap(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    for gpu in window[-1].snapshot.gpus:
        if gpu.lost or (gpu.remap_failed is None and gpu.remap_pending is None):
            continue
        ident = gpu_identity(gpu)
        if gpu.remap_failed:
            severity: str | None = CRITICAL
            message = f"{device_label(ident)} failed to remap a memory row."
            remedy = "Drain the node and replace the GPU (a row-remap failure is NVIDIA's RMA " \
                "criterion)."
        elif gpu.remap_pending:
            severity = WARNING
            message = f"{device_label(ident)} has a memory row remap pending."
            remedy = "Drain the node and reset the GPU to apply the pending row remap."
        else:
            severity, message, remedy = None, "", ""
        yield condition(
            (gpu.uuid,), ident, flag(severity is not None, severity or WARNING), message, remedy
        )


def _clock_event_rule(
    reason: str, rule_for_s: Callable[[Thresholds], float], what: str, remedy: str
) -> Callable[[Sequence[Sample], Thresholds], Iterator[Finding]]:
    def rule(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
        for gpu in window[-1].snapshot.gpus:
            if gpu.lost or reason not in gpu.clocks_event_reasons:
                continue
            ident = gpu_identity(gpu)
            for_s = rule_for_s(t)
            yield condition(
                (gpu.uuid,),
                ident,
                flag(gpu.clocks_event_reasons[reason], WARNING),
                f"{device_label(ident)} has been slowed by {what} for "
                f"{minutes(for_s)} or more.",
                remedy,
                for_s,
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
        yield condition(
            (gpu.uuid,),
            ident,
            (
                WARNING if temp > t.temperature_celsius else None,
                WARNING if temp >= t.temperature_clear_celsius else None,
            ),
            f"{device_label(ident)} is at {temp:.0f} °C; it has run above "
            f"{t.temperature_celsius:g} °C for {minutes(t.temperature_for_s)} or more.",
            "Check the cooling and the inlet temperature; the GPU will slow itself "
            "down to protect itself.",
            t.temperature_for_s,
        )


def gpu_lost(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    for gpu in window[-1].snapshot.gpus:
        # A GPU that answers again clears the insight in that cycle, not after the grace period.
        ident = gpu_identity(gpu)
        yield condition(
            (gpu.uuid,),
            ident,
            flag(gpu.lost, CRITICAL),
            f"{device_label(ident)} is lost: the driver no longer reaches it.",
            "Drain the node and reboot it; look for Xid 79 in the kernel log, check "
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
    yield condition(
        ("host",),
        {},
        level(ratio, True, ((WARNING, t.host_memory_used, t.host_memory_used_clear),)),
        f"The host's memory is {pct(ratio)} used ({format_gib(host.memory_total_bytes)} in "
        f"all) for {minutes(t.host_memory_for_s)} or more.",
        "Find the largest users (container memory metrics), set memory limits on "
        "containers, or move work to another node.",
        t.host_memory_for_s,
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
        raised, held = level(
            free,
            False,
            (
                (WARNING, t.filesystem_free, t.filesystem_free_clear),
                (CRITICAL, t.filesystem_critical_free, t.filesystem_critical_free_clear),
            ),
        )
        if eta is not None and eta <= t.filesystem_fill_horizon_s:
            raised = CRITICAL
        if eta is not None and eta <= t.filesystem_fill_horizon_clear_s:
            held = CRITICAL
        soon = f"; at the current rate it is full in {minutes(round(eta / 60) * 60)}" \
            if eta is not None and eta <= t.filesystem_fill_horizon_clear_s else ""
        yield condition(
            (fs.mountpoint,),
            {"system.filesystem.mountpoint": fs.mountpoint, "system.device": fs.device},
            (raised, held),
            f"Filesystem {fs.mountpoint} has {pct(free)} free "
            f"({format_gib(fs.free_bytes)} of {format_gib(size)}){soon}.",
            "Free space (old checkpoints, caches, container images and logs) or grow "
            "the filesystem.",
            t.filesystem_for_s,
        )


def _time_to_full(window: Sequence[Sample], mountpoint: str, min_span_s: float) -> float | None:
    """Seconds until free space reaches 0 by a least-squares line through the window."""
    points = []
    for sample in window:
        fs = sample.filesystems.get(mountpoint)
        if fs is not None:
            points.append((sample.snapshot.timestamp, float(fs.free_bytes)))
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
        changes = counter_increase(
            window, lambda s, u=gpu.uuid: _gpu_value(s, u, "mig_reconfigurations"), False
        )
        if not changes:
            continue
        ident = gpu_identity(gpu)
        layout = ", ".join(m.profile or "?" for m in gpu.mig_devices) or "no MIG devices"
        yield event(
            (gpu.uuid,),
            ident,
            INFO,
            f"The MIG layout of {device_label(ident)} changed; it now has {layout}.",
            "Nothing to fix; check that the jobs and device requests that used the old "
            "MIG devices were moved to the new ones.",
            t.mig_reconfigured_hold_s,
        )


def _link(sample: Sample, uuid: str, link: int) -> NvLink | None:
    gpu = sample.gpus.get(uuid)
    if gpu is None:
        return None
    return next((n for n in gpu.nvlinks if n.link == link), None)


def _crc(link: NvLink | None) -> int | None:
    if link is None or (link.crc_flit_errors is None and link.crc_data_errors is None):
        return None
    return (link.crc_flit_errors or 0) + (link.crc_data_errors or 0)


def _retrains(link: NvLink | None) -> int | None:
    if link is None or (link.replay_errors is None and link.recovery_errors is None):
        return None
    return (link.replay_errors or 0) + (link.recovery_errors or 0)


def nvlink_errors(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    newest = window[-1]
    start = span_start(window, t.rate_span_s)
    seconds = newest.snapshot.timestamp - start.snapshot.timestamp
    if seconds <= 0:
        return
    for gpu in newest.snapshot.gpus:
        if gpu.lost:
            continue
        for link in gpu.nvlinks:
            before = _link(start, gpu.uuid, link.link)
            crc_now, crc_before = _crc(link), _crc(before)
            rate = max(crc_now - crc_before, 0) / seconds \
                if crc_now is not None and crc_before is not None else 0.0
            retrains_now, retrains_before = _retrains(link), _retrains(before)
            retrains = max(retrains_now - retrains_before, 0) \
                if retrains_now is not None and retrains_before is not None else 0
            raised = WARNING if rate >= t.nvlink_crc_errors_per_s or retrains else None
            held = WARNING if rate >= t.nvlink_crc_errors_per_s_clear or retrains else None
            ident = {**gpu_identity(gpu), "nvidia.gpu.nvlink.link": link.link}
            yield condition(
                (gpu.uuid, link.link),
                ident,
                (raised, held),
                f"NVLink {link.link} of {device_label(ident)} counts {rate:.0f} CRC errors per "
                f"second and {retrains} replay or recovery error{'s' if retrains != 1 else ''} "
                f"over the last {minutes(seconds)}.",
                "Drain the GPUs on this link when convenient, reset them and check the link "
                "(nvidia-smi nvlink -e); reseat or replace the board or NVSwitch if the errors "
                "return.",
            )
