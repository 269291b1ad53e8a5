"""The window the rules read, their verdict type, and the helpers they share.

A rule is a pure function over the window (the recent Snapshots, each with the training signals
of its cycle) that yields one ``Finding`` per subject of the newest sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from otel_gpu.snapshot import (
    Attributes,
    ContainerUsage,
    Filesystem,
    Gpu,
    MigDevice,
    Snapshot,
    TrainingSignals,
    device_activity,
    device_identity,
    each_device,
)

ContainerKey = tuple[Any, ...]


@dataclass(frozen=True)
class Sample:
    """One entry of the window: a Snapshot and the training signals of its cycle, with the
    lookups the rules make, built once when the sample is made (so that a rule's cost grows
    with the subjects of a cycle, never with subjects times the window)."""

    snapshot: Snapshot
    training: tuple[TrainingSignals, ...] = ()
    containers: Mapping[ContainerKey, ContainerUsage] = field(
        init=False, repr=False, compare=False
    )
    gpus: Mapping[str, Gpu] = field(init=False, repr=False, compare=False)
    holders: Mapping[str, tuple[Attributes, ...]] = field(init=False, repr=False, compare=False)
    given: Mapping[str, tuple[Attributes, ...]] = field(init=False, repr=False, compare=False)
    container_devices: Mapping[str, frozenset[str]] = field(
        init=False, repr=False, compare=False
    )
    runs: Mapping[ContainerKey, TrainingSignals] = field(init=False, repr=False, compare=False)
    filesystems: Mapping[str, Filesystem] = field(init=False, repr=False, compare=False)
    # What a rule derived at this sample and reads back at the next one (``latched``).
    memo: dict[Any, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        snap = self.snapshot
        holders: dict[str, list[Attributes]] = {}
        used: dict[str, set[str]] = {}
        for w in snap.workloads:
            holders.setdefault(w.device_uuid, []).append(dict(w.attributes))
            cid = w.attributes.get("container.id")
            if cid is not None:
                used.setdefault(cid, set()).add(w.device_uuid)
        given: dict[str, list[Attributes]] = {}
        for a in snap.assignments:
            given.setdefault(a.device_uuid, []).append(dict(a.attributes))
        runs: dict[ContainerKey, TrainingSignals] = {}
        for signal in self.training:
            runs.setdefault(run_key(signal), signal)
        indexes = {
            "containers": index_containers(snap),
            "gpus": {g.uuid: g for g in snap.gpus},
            "holders": {uuid: tuple(found) for uuid, found in holders.items()},
            "given": {uuid: tuple(found) for uuid, found in given.items()},
            "container_devices": {cid: frozenset(found) for cid, found in used.items()},
            "runs": runs,
            "filesystems": {} if snap.host is None else {
                fs.mountpoint: fs for fs in reversed(snap.host.filesystems)
            },
            "memo": {},
        }
        for name, value in indexes.items():
            object.__setattr__(self, name, value)


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


Verdict = tuple[str | None, str | None]  # (raised, held)


def condition(
    key: tuple[Any, ...],
    attributes: Attributes,
    verdict: Verdict,
    message: str,
    remedy: str,
    for_s: float = 0.0,
) -> Finding:
    """A finding that fires once ``verdict`` has been raised for ``for_s``."""
    raised, held = verdict
    return Finding(key, dict(attributes), raised, held, message, remedy, for_s=for_s)


def event(
    key: tuple[Any, ...],
    attributes: Attributes,
    severity: str,
    message: str,
    remedy: str,
    hold_s: float,
) -> Finding:
    """A finding that fires at once and stays active for ``hold_s``."""
    return Finding(key, dict(attributes), severity, None, message, remedy, hold_s=hold_s)


def level(
    value: float, higher_is_worse: bool, levels: Sequence[tuple[str, float, float]]
) -> Verdict:
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


def latched(window: Sequence[Sample], key: Any, raised: bool, held: bool) -> bool:
    """A raise and clear band for a part of a finding (a variant of its message) that the engine
    does not track: on when ``raised``, or when ``held`` and it was on at the previous sample.
    Each sample remembers the answer for the next."""
    previous = len(window) > 1 and window[-2].memo.get(key, False)
    on = raised or (held and previous)
    window[-1].memo[key] = on
    return on


def flag(on: bool, severity: str) -> Verdict:
    return (severity, severity) if on else (None, None)


# -- devices and who holds them -------------------------------------------------------------------

Device = Gpu | MigDevice


def workload_devices(snap: Snapshot) -> Iterator[tuple[Device, Attributes]]:
    """Every device a workload can run on: whole GPUs with MIG off, and MIG devices."""
    for gpu, mig in each_device(snap.gpus, live_only=True):
        if (mig is not None) == gpu.mig_enabled:
            yield mig or gpu, device_identity(gpu, mig)


def duty_cycle(device: Device) -> float | None:
    """The share of time a kernel ran: NVML utilization, else the engine activity GPM or DCGM
    measured (on MIG devices, where NVML has no utilization)."""
    if isinstance(device, Gpu) and device.utilization_general is not None:
        return device.utilization_general
    return device_activity(device, "graphics_engine_utilization")[0]


def sm_activity(device: Device) -> float | None:
    """The share of SMs busy, from GPM or else DCGM."""
    return device_activity(device, "sm_utilization")[0]


def single_holder(sample: Sample, uuid: str) -> Attributes:
    """The workload attributes of the one user/container on a device, if it has just one."""
    holders = sample.holders.get(uuid, ())
    if len(holders) == 1:
        return dict(holders[0])
    if not holders:
        given = sample.given.get(uuid, ())
        if len(given) == 1:
            return dict(given[0])
    return {}


def container_key(attrs: Mapping[str, Any]) -> ContainerKey:
    if "container.id" in attrs:
        return ("container", attrs["container.id"])
    return ("container", *sorted(attrs.items()))


def index_containers(snap: Snapshot) -> dict[ContainerKey, ContainerUsage]:
    """The containers of a Snapshot by key; a Sample builds this once."""
    return {container_key(c.attributes): c for c in snap.containers}


def run_key(signal: TrainingSignals) -> tuple[Any, ...]:
    """A training run's identity: its attributes."""
    return tuple(sorted(signal.attributes.items()))


# -- history --------------------------------------------------------------------------------------


def span_start(window: Sequence[Sample], span_s: float) -> Sample:
    """The oldest sample of the window within ``span_s`` of the newest, never the newest itself
    when there is an older one."""
    newest = window[-1].snapshot.timestamp
    chosen = window[-2] if len(window) > 1 else window[-1]
    for sample in window[:-1]:
        if newest - sample.snapshot.timestamp <= span_s:
            return sample
    return chosen


def counter_increase(
    window: Sequence[Sample], read: Callable[[Sample], int | None], first_from_zero: bool
) -> int:
    """How much a counter grew between the newest sample and the latest earlier one that has
    it (the previous sample, unless the subject was missing from it)."""
    now = read(window[-1])
    if now is None:
        return 0
    for i in range(len(window) - 2, -1, -1):
        before = read(window[i])
        if before is not None:
            return max(now - before, 0)
    return now if first_from_zero else 0


# -- words ----------------------------------------------------------------------------------------


def device_label(attrs: Mapping[str, Any]) -> str:
    name = attrs.get("hw.name", "?")
    profile = attrs.get("nvidia.gpu.mig.profile")
    if profile:
        return f"MIG device {name} ({profile})"
    model = attrs.get("hw.model")
    return f"GPU {name} ({model})" if model else f"GPU {name}"


def who(attrs: Mapping[str, Any]) -> str:
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


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def pct(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"


def minutes(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
