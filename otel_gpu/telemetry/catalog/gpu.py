"""GPUs and MIG devices, and the MIG layout of each GPU."""

from __future__ import annotations

from collections.abc import Iterator

from otel_gpu.snapshot import (
    Attributes,
    Gpu,
    MigDevice,
    Snapshot,
    device_activity,
    device_identity,
    each_device,
    gpu_identity,
    mig_identity,
)
from otel_gpu.telemetry.catalog.metric import (
    COUNTER,
    GAUGE,
    GPU_IDENTITY,
    MIG_IDENTITY,
    UPDOWNCOUNTER,
    WORKLOAD_ATTRIBUTES,
    Observe,
    Point,
    Section,
)

GPUS = Section("Physical GPU and MIG device")
MIG_LAYOUT = Section("MIG layout")

HW_GPU = (*GPU_IDENTITY, "hw.type")
HW_STATES = ("ok", "degraded", "failed")


def gpu_state(gpu: Gpu) -> str:
    if gpu.lost:
        return "failed"
    if gpu.remap_failed or gpu.remap_pending:
        return "degraded"
    return "ok"


def _live(snap: Snapshot) -> Iterator[Gpu]:
    return (g for g in snap.gpus if not g.lost)


def all_devices(snap: Snapshot) -> Iterator[tuple[Gpu | MigDevice, Attributes]]:
    """Every live GPU and each of its MIG devices, with its identity."""
    for gpu, mig in each_device(snap.gpus, live_only=True):
        yield mig or gpu, device_identity(gpu, mig)


def _gpu_field(attr: str, extra: Attributes | None = None) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for gpu in _live(snap):
            value = getattr(gpu, attr)
            if value is not None:
                yield value, {**gpu_identity(gpu), **(extra or {})}

    observe.__name__ = f"observe_{attr}"
    return observe


@GPUS.observed_by(
    name="hw.gpu.utilization",
    instrument=GAUGE,
    unit="1",
    description="Fraction of time the GPU ran a task (general: any kernel); absent with MIG on.",
    attributes=(*GPU_IDENTITY, "hw.gpu.task"),
    semconv=True,
)
def _gpu_utilization(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        if gpu.mig_enabled:
            continue
        for task, value in (
            ("general", gpu.utilization_general),
            ("encoder", gpu.utilization_encoder),
            ("decoder", gpu.utilization_decoder),
        ):
            if value is not None:
                yield value, {**gpu_identity(gpu), "hw.gpu.task": task}


@GPUS.observed_by(
    name="hw.gpu.memory.usage",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="GPU or MIG device memory used.",
    attributes=MIG_IDENTITY,
    semconv=True,
)
def _memory_usage(snap: Snapshot) -> Iterator[Point]:
    for dev, ident in all_devices(snap):
        if dev.memory_used_bytes is not None:
            yield dev.memory_used_bytes, ident


@GPUS.observed_by(
    name="hw.gpu.memory.limit",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="GPU or MIG device memory size.",
    attributes=MIG_IDENTITY,
    semconv=True,
)
def _memory_limit(snap: Snapshot) -> Iterator[Point]:
    for dev, ident in all_devices(snap):
        if dev.memory_total_bytes is not None:
            yield dev.memory_total_bytes, ident


@GPUS.observed_by(
    name="hw.gpu.memory.utilization",
    instrument=GAUGE,
    unit="1",
    description="Fraction of GPU or MIG device memory used.",
    attributes=MIG_IDENTITY,
    semconv=True,
)
def _memory_utilization(snap: Snapshot) -> Iterator[Point]:
    for dev, ident in all_devices(snap):
        if dev.memory_used_bytes is not None and dev.memory_total_bytes:
            yield dev.memory_used_bytes / dev.memory_total_bytes, ident


@GPUS.observed_by(
    name="hw.gpu.io",
    instrument=COUNTER,
    unit="By",
    description="PCIe bytes moved by the GPU: the driver's byte counters where it has them, "
    "else NVML's 20 ms throughput rate integrated between cycles.",
    attributes=(*GPU_IDENTITY, "network.io.direction"),
    semconv=True,
)
def _gpu_io(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for direction, value in (("transmit", gpu.pcie_tx_bytes), ("receive", gpu.pcie_rx_bytes)):
            if value is not None:
                yield value, {**gpu_identity(gpu), "network.io.direction": direction}


GPUS.add(
    name="hw.power",
    instrument=GAUGE,
    unit="W",
    description="Power drawn by the GPU.",
    attributes=HW_GPU,
    observe=_gpu_field("power_watts", {"hw.type": "gpu"}),
    semconv=True,
)
GPUS.add(
    name="hw.energy",
    instrument=COUNTER,
    unit="J",
    description="Energy used by the GPU since the series' start time (the driver counts it "
                "since it loaded; the agent's first reading is the baseline).",
    attributes=HW_GPU,
    observe=_gpu_field("energy_joules", {"hw.type": "gpu"}),
    semconv=True,
)


@GPUS.observed_by(
    name="hw.temperature",
    instrument=GAUGE,
    unit="Cel",
    description="GPU die and memory temperature.",
    attributes=("hw.id", "hw.name", "hw.parent", "hw.sensor_location"),
    semconv=True,
)
def _temperature(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for location, value in (
            ("gpu", gpu.temperature_gpu_celsius),
            ("memory", gpu.temperature_memory_celsius),
        ):
            if value is not None:
                yield (
                    value,
                    {
                        "hw.id": f"{gpu.uuid}:{location}",
                        "hw.name": f"{gpu.name}:{location}",
                        "hw.parent": gpu.uuid,
                        "hw.sensor_location": location,
                    },
                )


@GPUS.observed_by(
    name="hw.fan.speed_ratio",
    instrument=GAUGE,
    unit="1",
    description="Intended fan speed as a fraction of its maximum (may exceed 1); absent "
    "without a fan.",
    attributes=("hw.id", "hw.name", "hw.parent"),
    semconv=True,
)
def _fan(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        if gpu.fan_speed_ratio is not None:
            yield (
                gpu.fan_speed_ratio,
                {"hw.id": f"{gpu.uuid}:fan", "hw.name": f"{gpu.name}:fan", "hw.parent": gpu.uuid},
            )


@GPUS.observed_by(
    name="hw.errors",
    instrument=COUNTER,
    unit="{error}",
    description="ECC memory errors since the series' start time (the driver counts them "
                "over the GPU's life; the agent's first reading is the baseline).",
    attributes=(*HW_GPU, "error.type"),
    semconv=True,
)
def _ecc(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for kind, value in (("corrected", gpu.ecc_corrected), ("uncorrected", gpu.ecc_uncorrected)):
            if value is not None:
                yield value, {**gpu_identity(gpu), "hw.type": "gpu", "error.type": kind}


@GPUS.observed_by(
    name="hw.status",
    instrument=UPDOWNCOUNTER,
    unit="1",
    description="1 for the current state of the GPU or MIG device, 0 for the others.",
    attributes=(*MIG_IDENTITY, "hw.type", "hw.state"),
    semconv=True,
)
def _status(snap: Snapshot) -> Iterator[Point]:
    for gpu, mig in each_device(snap.gpus):
        # A MIG device is reported ok: its parent carries the state of the hardware.
        current = gpu_state(gpu) if mig is None else "ok"
        ident = {**device_identity(gpu, mig), "hw.type": "gpu"}
        for state in HW_STATES:
            yield int(state == current), {**ident, "hw.state": state}


GPUS.add(
    name="nvidia.gpu.power.limit",
    instrument=GAUGE,
    unit="W",
    description="Enforced power limit.",
    attributes=GPU_IDENTITY,
    observe=_gpu_field("power_limit_watts"),
)


@GPUS.observed_by(
    name="nvidia.gpu.clock.frequency",
    instrument=GAUGE,
    unit="Hz",
    description="Current clock frequency.",
    attributes=(*GPU_IDENTITY, "nvidia.gpu.clock.type"),
)
def _clocks(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for kind, hz in gpu.clocks_hz.items():
            yield hz, {**gpu_identity(gpu), "nvidia.gpu.clock.type": kind}


@GPUS.observed_by(
    name="nvidia.gpu.clocks_event.active",
    instrument=GAUGE,
    unit="1",
    description="1 while a reason holds the clocks down (throttling, idle), 0 otherwise; per "
    "supported reason.",
    attributes=(*GPU_IDENTITY, "nvidia.gpu.clocks_event.reason"),
)
def _clock_events(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for reason, active in gpu.clocks_event_reasons.items():
            yield int(active), {**gpu_identity(gpu), "nvidia.gpu.clocks_event.reason": reason}


@GPUS.observed_by(
    name="nvidia.gpu.xid.errors",
    instrument=COUNTER,
    unit="{error}",
    description="Xid errors seen since the agent started.",
    attributes=(*GPU_IDENTITY, "nvidia.gpu.xid"),
)
def _xid(snap: Snapshot) -> Iterator[Point]:
    for gpu in snap.gpus:
        for code, count in gpu.xid_errors.items():
            yield count, {**gpu_identity(gpu), "nvidia.gpu.xid": code}


@GPUS.observed_by(
    name="nvidia.gpu.memory.remapped_rows",
    instrument=UPDOWNCOUNTER,
    unit="{row}",
    description="Memory rows remapped; absent while MIG instances are active.",
    attributes=(*GPU_IDENTITY, "error.type"),
)
def _remapped_rows(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for kind, value in (
            ("corrected", gpu.remapped_rows_corrected),
            ("uncorrected", gpu.remapped_rows_uncorrected),
        ):
            if value is not None:
                yield value, {**gpu_identity(gpu), "error.type": kind}


def _remap_flag(attr: str) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for gpu in _live(snap):
            value = getattr(gpu, attr)
            if value is not None:
                yield int(value), gpu_identity(gpu)

    return observe


GPUS.add(
    name="nvidia.gpu.memory.remap.pending",
    instrument=GAUGE,
    unit="1",
    description="1 when a row remap waits for a GPU reset.",
    attributes=GPU_IDENTITY,
    observe=_remap_flag("remap_pending"),
)
GPUS.add(
    name="nvidia.gpu.memory.remap.failed",
    instrument=GAUGE,
    unit="1",
    description="1 when a row remap has failed.",
    attributes=GPU_IDENTITY,
    observe=_remap_flag("remap_failed"),
)


def _mig_holders(snap: Snapshot) -> dict[str, Attributes]:
    """MIG device UUID -> the attributes of its one holder: the one workload on it, else the
    one container or pod it was given to. A slice with more (or none) gets no holder."""
    mig_uuids = {m.uuid for g in snap.gpus for m in g.mig_devices}
    on: dict[str, list[Attributes]] = {}
    for workload in snap.workloads:
        if workload.device_uuid in mig_uuids:
            on.setdefault(workload.device_uuid, []).append(workload.attributes)
    given: dict[str, list[Attributes]] = {}
    for assignment in snap.assignments:
        if assignment.device_uuid in mig_uuids:
            given.setdefault(assignment.device_uuid, []).append(assignment.attributes)
    holders: dict[str, Attributes] = {}
    for uuid in mig_uuids:
        found = on.get(uuid) or given.get(uuid) or []
        if len(found) == 1:
            holders[uuid] = dict(found[0])
    return holders


def _activity(gpm_field: str) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        holders: dict[str, Attributes] | None = None
        for dev, ident in all_devices(snap):
            value, _source = device_activity(dev, gpm_field)
            if value is None:
                continue
            if isinstance(dev, MigDevice):
                if holders is None:
                    holders = _mig_holders(snap)
                ident = {**ident, **holders.get(dev.uuid, {})}
            yield value, ident

    return observe


_ACTIVITY_SOURCE = (
    " From GPM (Hopper and later) where the driver has it, else from DCGM's profiling field {}"
    " (the host engine or dcgm-exporter); one source per device, never both. A MIG device's"
    " points carry its holder's attributes when one workload (or one container or pod) holds it."
)
for _name, _field, _description, _dcgm in (
    ("nvidia.gpu.sm.utilization", "sm_utilization",
     "Fraction of SMs busy (at least one warp resident).", "DCGM_FI_PROF_SM_ACTIVE"),
    ("nvidia.gpu.sm.occupancy", "sm_occupancy",
     "Active warps over the theoretical maximum.", "DCGM_FI_PROF_SM_OCCUPANCY"),
    ("nvidia.gpu.tensor.utilization", "tensor_utilization",
     "Fraction of time SMs ran tensor operations.", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"),
    ("nvidia.gpu.dram.utilization", "dram_utilization",
     "DRAM bandwidth used over the maximum.", "DCGM_FI_PROF_DRAM_ACTIVE"),
    ("nvidia.gpu.graphics_engine.utilization", "graphics_engine_utilization",
     "Fraction of time any graphics or compute engine was active.",
     "DCGM_FI_PROF_GR_ENGINE_ACTIVE"),
):
    GPUS.add(name=_name, instrument=GAUGE, unit="1",
             description=_description + _ACTIVITY_SOURCE.format(_dcgm),
             attributes=(*MIG_IDENTITY, *WORKLOAD_ATTRIBUTES), observe=_activity(_field))


# -- link health ----------------------------------------------------------------------------------

LINKS = Section("Links: NVLink and PCIe")
NVLINK_ERRORS = (("crc_flit", "crc_flit_errors"), ("crc_data", "crc_data_errors"),
                 ("replay", "replay_errors"), ("recovery", "recovery_errors"))


@LINKS.observed_by(
    name="nvidia.gpu.nvlink.io",
    instrument=COUNTER,
    unit="By",
    description="Data bytes moved over one active NVLink of the GPU since the driver loaded "
    "(NVML's NVLink throughput counters).",
    attributes=(*GPU_IDENTITY, "nvidia.gpu.nvlink.link", "network.io.direction"),
)
def _nvlink_io(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for link in gpu.nvlinks:
            for direction, value in (("transmit", link.tx_bytes), ("receive", link.rx_bytes)):
                if value is not None:
                    yield value, {**gpu_identity(gpu), "nvidia.gpu.nvlink.link": link.link,
                                  "network.io.direction": direction}


@LINKS.observed_by(
    name="nvidia.gpu.nvlink.errors",
    instrument=COUNTER,
    unit="{error}",
    description="Errors on one active NVLink since the driver loaded, by kind: crc_flit and "
    "crc_data (CRC errors), replay (retransmissions), recovery (link retraining).",
    attributes=(*GPU_IDENTITY, "nvidia.gpu.nvlink.link", "error.type"),
)
def _nvlink_errors(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for link in gpu.nvlinks:
            for kind, attr in NVLINK_ERRORS:
                value = getattr(link, attr)
                if value is not None:
                    yield value, {**gpu_identity(gpu), "nvidia.gpu.nvlink.link": link.link,
                                  "error.type": kind}


LINKS.add(
    name="nvidia.gpu.pcie.replays",
    instrument=COUNTER,
    unit="{replay}",
    description="PCIe replays (link-level retransmissions) of the GPU since the driver loaded.",
    attributes=GPU_IDENTITY,
    observe=_gpu_field("pcie_replays"),
)


# -- MIG layout -----------------------------------------------------------------------------------


@MIG_LAYOUT.observed_by(
    name="nvidia.gpu.mig.mode",
    instrument=GAUGE,
    unit="1",
    description="1 when MIG mode is enabled (current or pending).",
    attributes=(*GPU_IDENTITY, "nvidia.gpu.mig.mode.type"),
)
def _mig_mode(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for kind, value in (("current", gpu.mig_mode_current), ("pending", gpu.mig_mode_pending)):
            if value is not None:
                yield int(value), {**gpu_identity(gpu), "nvidia.gpu.mig.mode.type": kind}


@MIG_LAYOUT.observed_by(
    name="nvidia.gpu.mig.instance",
    instrument=GAUGE,
    unit="1",
    description="1 per MIG device, with its place on the GPU.",
    attributes=(
        *MIG_IDENTITY,
        "nvidia.gpu.mig.gpu_instance.id",
        "nvidia.gpu.mig.compute_instance.id",
        "nvidia.gpu.mig.placement.start",
        "nvidia.gpu.mig.placement.size",
    ),
)
def _mig_instances(snap: Snapshot) -> Iterator[Point]:
    for _gpu, mig in each_device(snap.gpus, live_only=True):
        if mig is None:
            continue
        attrs = mig_identity(mig)
        for key, value in (
            ("nvidia.gpu.mig.gpu_instance.id", mig.gpu_instance_id),
            ("nvidia.gpu.mig.compute_instance.id", mig.compute_instance_id),
            ("nvidia.gpu.mig.placement.start", mig.placement_start),
            ("nvidia.gpu.mig.placement.size", mig.placement_size),
        ):
            if value is not None:
                attrs[key] = value
        yield 1, attrs


@MIG_LAYOUT.observed_by(
    name="nvidia.gpu.mig.slices",
    instrument=UPDOWNCOUNTER,
    unit="{slice}",
    description="Compute slices of a MIG-enabled GPU, used by instances or free.",
    attributes=(*GPU_IDENTITY, "nvidia.gpu.mig.slice.state"),
)
def _mig_slices(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        if not gpu.mig_enabled or gpu.mig_compute_slices_total is None:
            continue
        per_instance = {m.gpu_instance_id: m.compute_slices or 0 for m in gpu.mig_devices}
        used = sum(per_instance.values())
        ident = gpu_identity(gpu)
        yield used, {**ident, "nvidia.gpu.mig.slice.state": "used"}
        yield (
            max(gpu.mig_compute_slices_total - used, 0),
            {**ident, "nvidia.gpu.mig.slice.state": "free"},
        )


MIG_LAYOUT.add(
    name="nvidia.gpu.mig.reconfigurations",
    instrument=COUNTER,
    unit="{event}",
    description="MIG layout changes seen since the agent started.",
    attributes=GPU_IDENTITY,
    observe=_gpu_field("mig_reconfigurations"),
)
