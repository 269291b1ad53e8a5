"""The parts of the ``pynvml`` stand-in: the error it raises, the handles and the plain objects
that stand in for ctypes structures, and the wrapper of every device call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pynvml

from otel_gpu.simulate.spec import (
    GpmValues,
)
from otel_gpu.sources.libnvml import CLOCK_DOMAINS, gpm_metric_ids

# Per-link NVLink error counters as field values (NVML_FI_DEV_NVLINK_<kind>_ERROR_COUNT_L<n>):
# field id -> (link, NvLinkSpec attribute), for the ids this pynvml defines.
NVLINK_ERROR_FIELDS: dict[int, tuple[int, str]] = {
    getattr(pynvml, f"NVML_FI_DEV_NVLINK_{kind}_ERROR_COUNT_L{link}"): (link, attr)
    for kind, attr in (("CRC_FLIT", "crc_flit_errors"), ("CRC_DATA", "crc_data_errors"),
                       ("REPLAY", "replay_errors"), ("RECOVERY", "recovery_errors"))
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS)
    if hasattr(pynvml, f"NVML_FI_DEV_NVLINK_{kind}_ERROR_COUNT_L{link}")
}

NO_ID = 0xFFFFFFFF
# nvmlClockType_t value -> clock domain
CLOCK_TYPES = {getattr(pynvml, const): name for name, const in CLOCK_DOMAINS.items()}
SAMPLING_PERIOD_US = 167_000
MIB = 1024 * 1024

# CUDA version each driver branch ships with (CUDA Toolkit Release Notes, "CUDA Toolkit and
# Corresponding Driver Versions"), as nvmlSystemGetCudaDriverVersion encodes it: 1000 * major +
# 10 * minor. A branch not listed reports the newest listed branch below it.
CUDA_BY_DRIVER_BRANCH = {
    525: 12000, 530: 12010, 535: 12020, 545: 12030, 550: 12040, 555: 12050, 560: 12060,
}

# PCI device ids (PCI ID Repository, pci-ids.ucw.cz, vendor 10de), as NVML packs them:
# device id << 16 | vendor id.
PCI_DEVICE_IDS = {
    "A100-SXM4-40GB": 0x20B010DE,
    "A100-SXM4-80GB": 0x20B210DE,
    "H100-SXM5-80GB": 0x233010DE,
    "H200-141GB": 0x233510DE,
}
BAR1_USED_BYTES = 5 * MIB
DRIVER_UPTIME_S = 86_400.0  # energy is counted since the driver loaded, a day before cycle 0

GPM_METRIC_FIELDS = gpm_metric_ids(pynvml)


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


# --- handles and the plain objects that stand in for ctypes structures -------------------------


class GpuHandle:
    __slots__ = ("index", "owner")

    def __init__(self, owner: Any, index: int) -> None:
        self.owner = owner
        self.index = index

    def __repr__(self) -> str:
        return f"<simulated GPU handle gpu{self.index}>"


class MigHandle:
    __slots__ = ("generation", "gpu_index", "owner", "position")

    def __init__(self, owner: Any, gpu_index: int, generation: int, position: int) -> None:
        self.owner = owner
        self.gpu_index = gpu_index
        self.generation = generation
        self.position = position

    def __repr__(self) -> str:
        return (
            f"<simulated MIG handle gpu{self.gpu_index}/mig{self.position}"
            f" layout {self.generation}>"
        )


class GpuInstanceHandle:
    __slots__ = ("generation", "gpu_index", "gpu_instance_id", "owner")

    def __init__(self, owner: Any, gpu_index: int, generation: int, gi_id: int) -> None:
        self.owner = owner
        self.gpu_index = gpu_index
        self.generation = generation
        self.gpu_instance_id = gi_id


class EventSet:
    def __init__(self) -> None:
        self.registered: dict[int, tuple[int, int]] = {}  # gpu index -> (event mask, cycle)
        self.delivered: set[int] = set()
        self.freed = False


class GpmSample:
    def __init__(self) -> None:
        self.freed = False
        self.gpu_index: int | None = None
        self.values: GpmValues | None = None
        self.target: tuple[Any, ...] | None = None  # what was sampled, to pair samples
        self.cycle = 0


class Placement:
    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.size = size


class GpuInstanceInfo:
    def __init__(self, device: GpuHandle, gi_id: int, profile_id: int, placement: Placement):
        self.device = device
        self.id = gi_id
        self.profileId = profile_id
        self.placement = placement


class EventData:
    def __init__(self, device: GpuHandle, event_type: int, data: int, gi: int, ci: int) -> None:
        self.device = device
        self.eventType = event_type
        self.eventData = data
        self.gpuInstanceId = gi
        self.computeInstanceId = ci


class c_nvmlGpmMetric_t:
    """One requested GPM metric, as in pynvml's structure of the same name."""

    def __init__(self) -> None:
        self.metricId = 0
        self.nvmlReturn = pynvml.NVML_SUCCESS
        self.value = 0.0
        self.metricInfo = None


class c_nvmlGpmMetricsGet_t:
    """A GPM metrics request: pynvml's structure, as a plain object that can hold samples."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [c_nvmlGpmMetric_t() for _ in range(pynvml.NVML_GPM_METRIC_MAX)]


# --- the module stand-in -----------------------------------------------------------------------


def device_call(physical: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a method whose first argument is a device handle: check initialisation, the handle,
    faults and (for ``physical`` queries) that it is not a MIG device, then pass the resolved
    GPU and MIG instance (or None) in place of the handle."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        name = method.__name__

        def call(self: Any, handle: Any, *args: Any, **kwargs: Any) -> Any:
            gpu, instance = self._resolve(name, handle)
            if physical and instance is not None:
                raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return method(self, gpu, instance, *args, **kwargs)

        call.__name__ = name
        call.__qualname__ = method.__qualname__
        call.__doc__ = method.__doc__
        return call

    return wrap


