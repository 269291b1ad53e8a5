"""A stand-in for DCGM's Python bindings (``dcgm_structs``, ``dcgm_fields``, ``dcgm_agent``,
``pydcgm``) that answers from a simulated server, as :mod:`otel_gpu.simulate.fake_nvml` does for
``pynvml``: the production DCGM adapter (:mod:`otel_gpu.sources.dcgm`) runs against it.

:class:`FakeDcgm` carries the four modules as attributes. It serves what the adapter calls:

- ``pydcgm.DcgmHandle(ipAddress=... | unixSocketPath=..., opMode=...)``: a connection to the
  host engine; raises ``DCGMError(DCGM_ST_CONNECTION_NOT_VALID)`` when the scenario's host engine
  is not running (``dcgm.hostengine: false``) or a ``connect`` fault fires;
  ``handle.GetSystem().discovery`` lists GPU ids and their UUIDs;
- ``dcgm_agent.dcgmGetGpuInstanceHierarchy``: the MIG GPU instances and compute instances of
  the layout in place, with their GPU UUID and NVML instance ids;
- ``pydcgm.DcgmGroup`` / ``DcgmFieldGroup`` / ``group.samples.WatchFields`` /
  ``group.samples.GetLatest_v2``: the scenario's ``dcgm`` values at the current cycle, per GPU
  entity and per GPU-instance entity; a value the scenario does not give is blank (DCGM's
  ``DCGM_FP64_BLANK``), compute instances are always blank;
- ``dcgm_agent.dcgmHostengineVersionInfo``, ``dcgmModuleGetStatuses``,
  ``dcgmProfGetSupportedMetricGroups`` for ``otel-gpu doctor``.

Faults (``dcgm.faults``) raise ``DCGMError`` with the named status from ``WatchFields`` or
``GetLatest_v2`` at the listed cycles; ``CONNECTION_NOT_VALID`` also drops the connection, as a
host engine that went away does.

Constants follow DCGM's bindings by name. FACT (dcgm_fields.py, dcgm_structs.py; written from
DCGM's documentation and headers, not checked against an installed DCGM here): entity groups
DCGM_FE_GPU 1, DCGM_FE_GPU_I 4, DCGM_FE_GPU_CI 5; profiling field ids 1001-1012 as listed in
``otel_gpu.sources.dcgm`` (those checked against DCGM's dcgm_fields.py); status codes below.
The adapter looks every constant up by name, so a number that differs from a real install here
cannot hide a bug in it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from otel_gpu.simulate.fake_nvml import FakeNvml
from otel_gpu.simulate.spec import DcgmSpec, DcgmValues, GpuSpec, at_cycle
from otel_gpu.sources.dcgm import PROFILING_FIELDS

DCGM_FP64_BLANK = 140737488355328.0  # dcgmvalue.py: values at or above it are blank
_MAX_INSTANCES_PER_GPU = 8

# dcgm_structs.py status codes (DCGM_ST_*).
STATUS: dict[str, int] = {
    "OK": 0,
    "BADPARAM": -1,
    "GENERIC_ERROR": -3,
    "NOT_SUPPORTED": -6,
    "TIMEOUT": -11,
    "NO_DATA": -14,
    "NOT_WATCHED": -16,
    "NO_PERMISSION": -17,
    "CONNECTION_NOT_VALID": -21,
    "IN_USE": -26,
    "PROFILING_NOT_SUPPORTED": -40,
}

# dcgm_fields.py profiling field ids.
FIELDS: dict[str, int] = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": 1001,
    "DCGM_FI_PROF_SM_ACTIVE": 1002,
    "DCGM_FI_PROF_SM_OCCUPANCY": 1003,
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 1004,
    "DCGM_FI_PROF_DRAM_ACTIVE": 1005,
    "DCGM_FI_PROF_PCIE_TX_BYTES": 1009,
    "DCGM_FI_PROF_PCIE_RX_BYTES": 1010,
    "DCGM_FI_PROF_NVLINK_TX_BYTES": 1011,
    "DCGM_FI_PROF_NVLINK_RX_BYTES": 1012,
}
# field name -> DcgmValues attribute: the adapter's own table
VALUE_OF = PROFILING_FIELDS
FE_GPU, FE_GPU_I, FE_GPU_CI = 1, 4, 5
MODULE_ID_PROFILING, MODULE_STATUS_LOADED, MODULE_STATUS_FAILED = 8, 3, 4


class DCGMError(Exception):
    """As dcgm_structs.DCGMError: ``value`` is the DCGM_ST_* status."""

    def __init__(self, value: int) -> None:
        super().__init__(f"DCGM error {value}")
        self.value = value


def _fail(name: str) -> DCGMError:
    return DCGMError(STATUS[name])


class FakeDcgm:
    """DCGM's four binding modules, answering from the scenario served by ``nvml``."""

    def __init__(self, nvml: FakeNvml, spec: DcgmSpec) -> None:
        self.nvml = nvml
        self.spec = spec
        self.connected: _Handle | None = None
        self.dcgm_structs = SimpleNamespace(
            DCGMError=DCGMError,
            DCGM_OPERATION_MODE_AUTO=1,
            DCGM_GROUP_EMPTY=1,
            DCGM_MODULE_ID_PROFILING=MODULE_ID_PROFILING,
            DCGM_MODULE_STATUS_LOADED=MODULE_STATUS_LOADED,
            **{f"DCGM_ST_{name}": code for name, code in STATUS.items()},
        )
        self.dcgm_fields = SimpleNamespace(
            DCGM_FE_GPU=FE_GPU, DCGM_FE_GPU_I=FE_GPU_I, DCGM_FE_GPU_CI=FE_GPU_CI, **FIELDS
        )
        self.dcgm_agent = SimpleNamespace(
            dcgmGetGpuInstanceHierarchy=self._hierarchy,
            dcgmHostengineVersionInfo=self._version,
            dcgmModuleGetStatuses=self._module_statuses,
            dcgmProfGetSupportedMetricGroups=self._metric_groups,
            dcgmUpdateAllFields=lambda raw, wait: self._check(raw.owner, "update"),
        )
        self.pydcgm = SimpleNamespace(
            DcgmHandle=self._connect, DcgmGroup=self._group, DcgmFieldGroup=_FieldGroup
        )

    # -- state --

    @property
    def cycle(self) -> int:
        return self.nvml.cycle

    def _fault(self, call: str) -> str | None:
        for fault in self.spec.faults:
            if fault.call == call and fault.active(self.cycle):
                return fault.error
        return None

    def _check(self, handle: _Handle, call: str) -> None:
        if self.connected is not handle:
            raise _fail("CONNECTION_NOT_VALID")
        error = self._fault(call)
        if error is not None:
            if error == "CONNECTION_NOT_VALID":
                self.connected = None
            raise _fail(error)

    def values_of(self, gpu: GpuSpec, position: int | None) -> DcgmValues | None:
        """The DCGM values of a GPU (``position`` None) or of instance ``position`` of its
        layout in place."""
        if position is None:
            return gpu.dcgm
        layout = gpu.mig.layout_at(self.cycle) if gpu.mig else None
        if layout is None or position >= len(layout.instances):
            return None
        return layout.instances[position].dcgm

    def entities(self) -> dict[tuple[int, int], tuple[GpuSpec, int | None]]:
        """(entity group, entity id) -> (GPU, instance position or None)."""
        found: dict[tuple[int, int], tuple[GpuSpec, int | None]] = {}
        for gpu in self.nvml.scenario.gpus:
            found[(FE_GPU, gpu.index)] = (gpu, None)
            layout = gpu.mig.layout_at(self.cycle) if gpu.mig else None
            for instance in layout.instances if layout else ():
                found[(FE_GPU_I, gpu.index * _MAX_INSTANCES_PER_GPU + instance.index)] = (
                    gpu, instance.index)
        return found

    # -- pydcgm --

    def _connect(self, ipAddress: str | None = None, opMode: int = 1,
                 unixSocketPath: str | None = None, **_: Any) -> _Handle:
        if ipAddress is None and unixSocketPath is None:
            raise _fail("BADPARAM")  # would start an embedded host engine; never wanted here
        if not self.spec.hostengine or self._fault("connect") is not None:
            raise _fail(self._fault("connect") or "CONNECTION_NOT_VALID")
        self.connected = _Handle(self)
        return self.connected

    def _group(self, handle: _Handle, groupName: str = "", groupType: int = 1,
               **_: Any) -> _Group:
        self._check(handle, "group")
        return _Group(self, handle)

    # -- dcgm_agent --

    def _hierarchy(self, raw: Any) -> Any:
        handle = raw.owner
        self._check(handle, "hierarchy")
        entries = []
        for gpu in self.nvml.scenario.gpus:
            layout = gpu.mig.layout_at(self.cycle) if gpu.mig else None
            for instance in layout.instances if layout else ():
                entity_id = gpu.index * _MAX_INSTANCES_PER_GPU + instance.index
                for group, ci in ((FE_GPU_I, 0xFFFFFFFF), (FE_GPU_CI, 0)):
                    entries.append(SimpleNamespace(
                        entity=SimpleNamespace(entityGroupId=group, entityId=entity_id),
                        parent=SimpleNamespace(
                            entityGroupId=FE_GPU if group == FE_GPU_I else FE_GPU_I,
                            entityId=gpu.index if group == FE_GPU_I else entity_id),
                        info=SimpleNamespace(
                            gpuUuid=gpu.uuid, nvmlGpuIndex=gpu.index,
                            nvmlInstanceId=instance.gpu_instance_id, nvmlComputeInstanceId=ci,
                            nvmlMigProfileId=instance.profile.profile_id,
                            nvmlProfileSlices=instance.profile.compute_slices),
                    ))
        return SimpleNamespace(count=len(entries), entityList=entries)

    def _version(self, raw: Any) -> Any:
        self._check(raw.owner, "version")
        return SimpleNamespace(
            rawBuildInfoString=f"version:{self.spec.version};arch:x86_64;buildtype:Release")

    def _module_statuses(self, raw: Any) -> Any:
        self._check(raw.owner, "modules")
        status = MODULE_STATUS_LOADED if self.spec.profiling_module else MODULE_STATUS_FAILED
        statuses = [SimpleNamespace(id=MODULE_ID_PROFILING, status=status)]
        return SimpleNamespace(numStatuses=len(statuses), statuses=statuses)

    def _metric_groups(self, raw: Any, group_id: int) -> Any:
        self._check(raw.owner, "metric groups")
        if not self.spec.profiling_module:
            raise _fail("PROFILING_NOT_SUPPORTED")
        ids = list(FIELDS.values())
        groups = [SimpleNamespace(majorId=0, minorId=0, numFieldIds=len(ids), fieldIds=ids)]
        return SimpleNamespace(numMetricGroupInfo=len(groups), metricGroupInfo=groups)


class _RawHandle:
    """What ``DcgmHandle.handle`` holds: the C handle the dcgm_agent functions take."""

    def __init__(self, owner: _Handle) -> None:
        self.owner = owner


class _Handle:
    def __init__(self, dcgm: FakeDcgm) -> None:
        self._dcgm = dcgm
        self.handle = _RawHandle(self)

    def GetSystem(self) -> Any:
        return SimpleNamespace(discovery=_Discovery(self._dcgm, self))

    def Shutdown(self) -> None:
        if self._dcgm.connected is self:
            self._dcgm.connected = None


class _Discovery:
    def __init__(self, dcgm: FakeDcgm, handle: _Handle) -> None:
        self._dcgm = dcgm
        self._handle = handle

    def GetAllSupportedGpuIds(self) -> list[int]:
        self._dcgm._check(self._handle, "discovery")
        return [gpu.index for gpu in self._dcgm.nvml.scenario.gpus]

    def GetGpuAttributes(self, gpu_id: int) -> Any:
        self._dcgm._check(self._handle, "discovery")
        gpu = self._dcgm.nvml.scenario.gpus[gpu_id]
        return SimpleNamespace(identifiers=SimpleNamespace(
            uuid=gpu.uuid, deviceName=gpu.model.nvml_name, serial=gpu.serial))


class _FieldGroup:
    def __init__(self, handle: _Handle, name: str = "", fieldIds: list[int] | None = None,
                 **_: Any) -> None:
        self.name = name
        self.fieldIds = list(fieldIds or [])


class _Group:
    def __init__(self, dcgm: FakeDcgm, handle: _Handle) -> None:
        self._dcgm = dcgm
        self._handle = handle
        self.entities: list[tuple[int, int]] = []
        self.watched: set[int] = set()
        self.samples = SimpleNamespace(WatchFields=self._watch, GetLatest_v2=self._latest)

    def AddEntity(self, entity_group: int, entity_id: int) -> None:
        self._dcgm._check(self._handle, "group")
        if (entity_group, entity_id) not in self.entities:
            self.entities.append((entity_group, entity_id))

    def Delete(self) -> None:
        self._dcgm._check(self._handle, "group")
        self.entities.clear()
        self.watched.clear()

    def GetId(self) -> Any:
        return SimpleNamespace(value=id(self) & 0xFFFF)

    def _watch(self, field_group: _FieldGroup, update_us: int, max_age_s: float,
               max_samples: int) -> None:
        self._dcgm._check(self._handle, "WatchFields")
        if not self._dcgm.spec.profiling_module:
            raise _fail("NOT_SUPPORTED")
        self.watched.update(field_group.fieldIds)

    def _latest(self, field_group: _FieldGroup) -> Any:
        dcgm = self._dcgm
        dcgm._check(self._handle, "GetLatest_v2")
        known = dcgm.entities()
        ids = {code: name for name, code in FIELDS.items()}
        stamp = round(dcgm.nvml.clock() * 1_000_000)
        values: dict[int, dict[int, dict[int, Any]]] = {}
        for group, entity_id in self.entities:
            found = known.get((group, entity_id))
            spec = dcgm.values_of(*found) if found is not None else None
            row = values.setdefault(group, {}).setdefault(entity_id, {})
            for field_id in field_group.fieldIds:
                value = None
                if spec is not None and field_id in self.watched and field_id in ids:
                    value = at_cycle(getattr(spec, VALUE_OF[ids[field_id]]), dcgm.cycle)
                blank = value is None
                row[field_id] = SimpleNamespace(values=[SimpleNamespace(
                    value=DCGM_FP64_BLANK if blank else float(value), isBlank=blank, ts=stamp)])
        return SimpleNamespace(values=values)
