"""The DCGM source: per-GPU and per-MIG activity from NVIDIA's Data Center GPU Manager.

NVML gives no activity for a MIG device before Hopper (GPM); DCGM's profiling (DCP) fields do,
per GPU instance. Two routes, tried in this order:

1. the running host engine (``nv-hostengine``), through DCGM's own Python bindings as DCGM
   installs them (``BINDINGS_PATHS``; never a copy of ours), at ``OTEL_GPU_DCGM_ADDRESS``:
   ``host[:port]`` (default ``127.0.0.1``, port 5555) or ``unix:///path/to/socket``;
2. a dcgm-exporter endpoint (``OTEL_GPU_DCGM_EXPORTER_URL``, e.g.
   ``http://localhost:9400/metrics``), whose scrape is parsed with prometheus_client's parser.

Either way values are joined to our devices by GPU UUID and GPU-instance id (and compute-instance
id where DCGM gives one). Without DCGM (no bindings, no host engine, no exporter, or
``OTEL_GPU_DCGM=off``) the source is unavailable: it records nothing and tries again, quietly,
every ``RECONNECT_S``. Once connected, a failure (connection lost, a field not supported,
profiling in use by another client) is a ``SourceError`` of source ``dcgm`` and the cycle goes on.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from otel_gpu.snapshot import DcgmActivity, Gpu, MigDevice, SourceError

SOURCE = "dcgm"
HOSTENGINE, EXPORTER = "hostengine", "exporter"
MALFORMED = "Malformed"

# Where DCGM's packages put their Python bindings: DCGM 3.x (datacenter-gpu-manager) and DCGM 4.x
# (datacenter-gpu-manager-4-core). FACT (DCGM user guide, "Python bindings"; not verified here).
BINDINGS_PATHS = (
    "/usr/local/dcgm/bindings/python3",
    "/usr/share/datacenter-gpu-manager-4/bindings/python3",
)
BINDING_MODULES = ("dcgm_structs", "dcgm_fields", "dcgm_agent", "pydcgm")
DEFAULT_ADDRESS = "127.0.0.1"  # nv-hostengine listens on TCP 5555 of localhost by default
RECONNECT_S = 60.0
EXPORTER_TIMEOUT_S = 2.0
WATCH_INTERVAL_US = 1_000_000  # DCGM samples the fields every second
WATCH_KEEP_AGE_S = 30.0

# DCGM profiling fields -> DcgmActivity attributes. FACT: names and ids from dcgm_fields.py
# (DCGM 2.1 and later): GR_ENGINE_ACTIVE 1001, SM_ACTIVE 1002, SM_OCCUPANCY 1003,
# PIPE_TENSOR_ACTIVE 1004, DRAM_ACTIVE 1005, PCIE_TX_BYTES 1009, PCIE_RX_BYTES 1010,
# NVLINK_TX_BYTES 1011, NVLINK_RX_BYTES 1012 (ratios 0..1; the byte fields in bytes per second).
# The ids match NVIDIA DCGM's testing/python3/dcgm_fields.py ("Profiling Fields"); no DCGM was
# installed here, and the adapter looks every field up by name in the installed dcgm_fields.
PROFILING_FIELDS: dict[str, str] = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "graphics_engine_active",
    "DCGM_FI_PROF_SM_ACTIVE": "sm_active",
    "DCGM_FI_PROF_SM_OCCUPANCY": "sm_occupancy",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "tensor_active",
    "DCGM_FI_PROF_DRAM_ACTIVE": "dram_active",
    "DCGM_FI_PROF_PCIE_TX_BYTES": "pcie_tx_bytes_per_s",
    "DCGM_FI_PROF_PCIE_RX_BYTES": "pcie_rx_bytes_per_s",
    "DCGM_FI_PROF_NVLINK_TX_BYTES": "nvlink_tx_bytes_per_s",
    "DCGM_FI_PROF_NVLINK_RX_BYTES": "nvlink_rx_bytes_per_s",
}
_RATIOS = frozenset(
    {"graphics_engine_active", "sm_active", "sm_occupancy", "tensor_active", "dram_active"}
)

# dcgm-exporter labels (its default counters file and metric labels): gpu (DCGM GPU id), UUID
# (the GPU's UUID, also on MIG series), GPU_I_ID and GPU_I_PROFILE (MIG series only), modelName,
# Hostname. FACT (dcgm-exporter README and pkg/dcgmexporter; not verified here).
LABEL_UUID, LABEL_GPU_INSTANCE, LABEL_COMPUTE_INSTANCE = "UUID", "GPU_I_ID", "GPU_CI_ID"

# (GPU UUID, GPU-instance id or None, compute-instance id or None)
EntityKey = tuple[str, int | None, int | None]


@dataclass
class DcgmBindings:
    """DCGM's binding modules, as ``import dcgm_structs`` etc. give them."""

    dcgm_structs: Any
    dcgm_fields: Any
    dcgm_agent: Any
    pydcgm: Any


def load_bindings(paths: Iterable[str] | None = None) -> DcgmBindings | None:
    """DCGM's own bindings from its install path (``OTEL_GPU_DCGM_BINDINGS`` first when set),
    or None when DCGM is not installed. The path is appended to ``sys.path``, so an installed
    module of the same name is never shadowed."""
    if paths is None:
        configured = os.environ.get("OTEL_GPU_DCGM_BINDINGS")
        paths = ((configured,) if configured else ()) + BINDINGS_PATHS
    for path in paths:
        if not os.path.isfile(os.path.join(path, "pydcgm.py")):
            continue
        if path not in sys.path:
            sys.path.append(path)
        try:
            return DcgmBindings(*(importlib.import_module(n) for n in BINDING_MODULES))
        except Exception:  # a broken install is the same as none
            return None
    return None


@dataclass
class DcgmProbe:
    """What ``otel-gpu doctor`` reports about DCGM."""

    route: str | None  # hostengine, exporter, or None when neither answers
    where: str | None = None  # address or URL
    reason: str | None = None  # why neither route answers
    version: str | None = None
    profiling_loaded: bool | None = None  # None: could not tell
    fields: tuple[str, ...] = ()  # the profiling fields it gives values for
    single_group_only: bool = False  # the GPUs watch one profiling metric group at a time


class DcgmSource:
    """Reads DCGM's profiling fields once per cycle and joins them to the NVML devices.

    ``bindings`` are DCGM's modules (``load_bindings()`` when None; the simulator passes its
    stand-in); ``environ`` gives the ``OTEL_GPU_DCGM*`` settings; ``fetch(url, timeout)``
    returns a scrape's text (urllib when None).
    """

    def __init__(
        self,
        bindings: DcgmBindings | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        fetch: Callable[[str, float], str] | None = None,
        load: Callable[[], DcgmBindings | None] = load_bindings,
    ) -> None:
        env = os.environ if environ is None else environ
        self.enabled = env.get("OTEL_GPU_DCGM", "").strip().lower() not in ("off", "false", "0")
        self.address = env.get("OTEL_GPU_DCGM_ADDRESS") or DEFAULT_ADDRESS
        self.exporter_url = env.get("OTEL_GPU_DCGM_EXPORTER_URL") or None
        # auto: the host engine, else the exporter; hostengine or exporter: that route only.
        self.wanted = (env.get("OTEL_GPU_DCGM_ROUTE") or "auto").strip().lower()
        self._bindings = bindings
        self._load = load
        self._fetch = fetch or _http_get
        self._names: dict[int, str] = {}
        self._handle: Any = None
        self._group: Any = None
        self._field_group: Any = None
        self._field_ids: dict[int, str] = {}
        self._entities: dict[tuple[int, int], EntityKey] = {}
        self._gpu_uuids: dict[int, str] = {}
        self.route: str | None = None
        self.unavailable_reason: str | None = "not started"
        self._next_try = 0.0
        self._seen_fields: set[str] = set()

    @property
    def available(self) -> bool:
        return self.route is not None

    # -- connecting --------------------------------------------------------------------------

    def start(self, now: float = 0.0) -> bool:
        """Connect to the host engine, else check the exporter; False (with
        ``unavailable_reason``) when neither answers. Records no error."""
        self._next_try = now + RECONNECT_S
        if not self.enabled:
            self.unavailable_reason = "turned off (OTEL_GPU_DCGM=off)"
            return False
        reasons = []
        if self.wanted != EXPORTER:
            reason = self._connect()
            if reason is None:
                self.route, self.unavailable_reason = HOSTENGINE, None
                return True
            reasons.append(reason)
        if self.wanted == HOSTENGINE:
            pass
        elif self.exporter_url:
            try:
                self._fetch(self.exporter_url, EXPORTER_TIMEOUT_S)
                self.route, self.unavailable_reason = EXPORTER, None
                return True
            except Exception as err:
                reasons.append(f"no dcgm-exporter answers at {self.exporter_url} ({_why(err)})")
        else:
            reasons.append("OTEL_GPU_DCGM_EXPORTER_URL is not set")
        self.unavailable_reason = "; ".join(reasons)
        return False

    def _connect(self) -> str | None:
        """None when connected to the host engine, else why not."""
        if self._bindings is None:
            self._bindings = self._load()
            if self._bindings is None:
                return "DCGM's Python bindings are not installed (" + " or ".join(
                    BINDINGS_PATHS) + ")"
        b = self._bindings
        self._names = {
            getattr(b.dcgm_structs, n): n.removeprefix("DCGM_ST_")
            for n in dir(b.dcgm_structs)
            if n.startswith("DCGM_ST_") and isinstance(getattr(b.dcgm_structs, n), int)
        }
        self._field_ids = {
            getattr(b.dcgm_fields, name): attr
            for name, attr in PROFILING_FIELDS.items()
            if hasattr(b.dcgm_fields, name)
        }
        kwargs: dict[str, Any] = {"opMode": b.dcgm_structs.DCGM_OPERATION_MODE_AUTO}
        if self.address.startswith("unix://"):
            kwargs["unixSocketPath"] = self.address.removeprefix("unix://")
        else:
            kwargs["ipAddress"] = self.address
        try:
            self._handle = b.pydcgm.DcgmHandle(**kwargs)
        except Exception as err:
            self._handle = None
            return f"no DCGM host engine answers at {self.address} ({self._error_name(err)})"
        return None

    def close(self) -> None:
        handle, self._handle = self._handle, None
        self._group = self._field_group = None
        self._entities = {}
        self._gpu_uuids = {}
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.Shutdown()
        self.route = None

    def _error_name(self, err: BaseException) -> str:
        b = self._bindings
        if b is not None and isinstance(err, b.dcgm_structs.DCGMError):
            return self._names.get(getattr(err, "value", None), "UNKNOWN")
        return type(err).__name__

    # -- one cycle ---------------------------------------------------------------------------

    def read(self, gpus: Sequence[Gpu], now: float = 0.0) -> tuple[list[Gpu], list[SourceError]]:
        """The GPUs with DCGM's values joined in, and this cycle's failures."""
        errors: list[SourceError] = []
        if self.route is None and (now < self._next_try or not self.start(now)):
            return list(gpus), errors
        if self.route == HOSTENGINE:
            values = self._read_hostengine(errors)
        else:
            values = self._read_exporter(errors)
        if not values:
            return list(gpus), errors
        self._seen_fields.update(
            attr for activity in values.values() for attr in PROFILING_FIELDS.values()
            if getattr(activity, attr) is not None
        )
        return [join(gpu, values) for gpu in gpus], errors

    def _call(self, errors: list[SourceError], call: str, fn: Callable[..., Any],
              *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            name = self._error_name(err)
            errors.append(SourceError(SOURCE, call, name))
            if name == "CONNECTION_NOT_VALID":
                self._lost()
            raise _Failed from err

    def _lost(self) -> None:
        """The host engine went away: drop the connection; try again quietly from the next cycle
        on (then every ``RECONNECT_S``)."""
        self.close()
        self._next_try = float("-inf")
        self.unavailable_reason = f"lost the connection to the DCGM host engine at {self.address}"

    def _read_hostengine(self, errors: list[SourceError]) -> dict[EntityKey, DcgmActivity]:
        b = self._bindings
        assert b is not None
        try:
            entities = self._discover(errors)
            if entities != self._entities or self._group is None:
                self._watch(entities, errors)
            group = self._group
            collection = self._call(errors, "GetLatest_v2", group.samples.GetLatest_v2,
                                    self._field_group)
        except _Failed:
            return {}
        found: dict[EntityKey, DcgmActivity] = {}
        for (group_id, entity_id), key in self._entities.items():
            fields = collection.values.get(group_id, {}).get(entity_id, {})
            values: dict[str, float] = {}
            for field_id, attr in self._field_ids.items():
                series = fields.get(field_id)
                latest = series.values[-1] if series is not None and series.values else None
                if latest is None or getattr(latest, "isBlank", False):
                    continue
                values[attr] = _scaled(attr, float(latest.value))
            if values:
                found[key] = DcgmActivity(source=HOSTENGINE, **values)
        return found

    def _discover(self, errors: list[SourceError]) -> dict[tuple[int, int], EntityKey]:
        """DCGM's GPUs, GPU instances and compute instances, keyed by (entity group, id)."""
        b = self._bindings
        assert b is not None
        fields = b.dcgm_fields
        discovery = self._handle.GetSystem().discovery
        entities: dict[tuple[int, int], EntityKey] = {}
        gpu_ids = self._call(errors, "GetAllSupportedGpuIds", discovery.GetAllSupportedGpuIds)
        for gpu_id in gpu_ids:
            uuid = self._gpu_uuids.get(gpu_id)
            if uuid is None:  # a GPU's UUID does not change while we are connected
                attrs = self._call(errors, "GetGpuAttributes", discovery.GetGpuAttributes, gpu_id)
                uuid = self._gpu_uuids[gpu_id] = _text(attrs.identifiers.uuid)
            entities[(fields.DCGM_FE_GPU, gpu_id)] = (uuid, None, None)
        hierarchy = self._call(errors, "dcgmGetGpuInstanceHierarchy",
                               b.dcgm_agent.dcgmGetGpuInstanceHierarchy, self._handle.handle)
        for i in range(hierarchy.count):
            entry = hierarchy.entityList[i]
            group, info = entry.entity.entityGroupId, entry.info
            uuid = _text(info.gpuUuid)
            if group == fields.DCGM_FE_GPU_I:
                key: EntityKey = (uuid, int(info.nvmlInstanceId), None)
            elif group == fields.DCGM_FE_GPU_CI:
                key = (uuid, int(info.nvmlInstanceId), int(info.nvmlComputeInstanceId))
            else:
                continue
            entities[(group, entry.entity.entityId)] = key
        return entities

    def _watch(self, entities: dict[tuple[int, int], EntityKey], errors: list[SourceError]) -> None:
        """A group of the entities and a watch on the profiling fields; made again when the
        entities change (a MIG reconfiguration)."""
        b = self._bindings
        assert b is not None
        old, self._group = self._group, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.Delete()
        group = self._call(errors, "DcgmGroup", b.pydcgm.DcgmGroup, self._handle,
                           groupName=f"otel-gpu-{os.getpid()}",
                           groupType=b.dcgm_structs.DCGM_GROUP_EMPTY)
        for group_id, entity_id in entities:
            self._call(errors, "AddEntity", group.AddEntity, group_id, entity_id)
        if self._field_group is None:
            self._field_group = self._call(
                errors, "DcgmFieldGroup", b.pydcgm.DcgmFieldGroup, self._handle,
                name=f"otel-gpu-prof-{os.getpid()}", fieldIds=list(self._field_ids),
            )
        self._call(errors, "WatchFields", group.samples.WatchFields, self._field_group,
                   WATCH_INTERVAL_US, WATCH_KEEP_AGE_S, 0)
        self._group, self._entities = group, entities

    def _read_exporter(self, errors: list[SourceError]) -> dict[EntityKey, DcgmActivity]:
        assert self.exporter_url is not None
        try:
            text = self._fetch(self.exporter_url, EXPORTER_TIMEOUT_S)
        except Exception as err:
            errors.append(SourceError(SOURCE, "scrape", _why(err)))
            return {}
        try:
            return parse_exporter_scrape(text)
        except ValueError:
            errors.append(SourceError(SOURCE, "scrape", MALFORMED))
            return {}

    # -- doctor ------------------------------------------------------------------------------

    def probe(self) -> DcgmProbe:
        """Connect if need be and say what DCGM offers; never raises."""
        if self.route is None and not self.start():
            return DcgmProbe(route=None, reason=self.unavailable_reason)
        if self.route == EXPORTER:
            errors: list[SourceError] = []
            values = self._read_exporter(errors)
            fields = _fields_given(values.values())
            return DcgmProbe(route=EXPORTER, where=self.exporter_url, fields=fields,
                             reason=errors[0].error_type if errors else None)
        b = self._bindings
        assert b is not None
        probe = DcgmProbe(route=HOSTENGINE, where=self.address)
        with contextlib.suppress(Exception):
            info = b.dcgm_agent.dcgmHostengineVersionInfo(self._handle.handle)
            probe.version = _build_version(_text(info.rawBuildInfoString))
        with contextlib.suppress(Exception):
            statuses = b.dcgm_agent.dcgmModuleGetStatuses(self._handle.handle)
            wanted = b.dcgm_structs.DCGM_MODULE_ID_PROFILING
            loaded = b.dcgm_structs.DCGM_MODULE_STATUS_LOADED
            for i in range(statuses.numStatuses):
                if statuses.statuses[i].id == wanted:
                    probe.profiling_loaded = statuses.statuses[i].status == loaded
        errors = []
        values = self._read_hostengine(errors)
        if not values and self._handle is not None:
            # A new watch has no sample yet: ask the host engine for one and read again.
            with contextlib.suppress(Exception):
                b.dcgm_agent.dcgmUpdateAllFields(self._handle.handle, 1)
            errors = []
            values = self._read_hostengine(errors)
        probe.fields = _fields_given(values.values())
        if errors:
            probe.reason = f"{errors[0].call}: {errors[0].error_type}"
        with contextlib.suppress(Exception):
            groups = b.dcgm_agent.dcgmProfGetSupportedMetricGroups(
                self._handle.handle, self._group.GetId().value)
            majors = [groups.metricGroupInfo[i].majorId
                      for i in range(groups.numMetricGroupInfo)]
            probe.single_group_only = len(majors) != len(set(majors))
        return probe


class _Failed(Exception):
    """A DCGM call failed; the failure is already recorded."""


def join(gpu: Gpu, values: Mapping[EntityKey, DcgmActivity]) -> Gpu:
    """``gpu`` with the DCGM values of itself and of its MIG devices (by GPU UUID and GPU- and
    compute-instance id: a compute instance's own values, else its GPU instance's)."""
    own = values.get((gpu.uuid, None, None))
    migs: list[MigDevice] = []
    changed = own is not None
    for mig in gpu.mig_devices:
        gi, ci = mig.gpu_instance_id, mig.compute_instance_id
        found = values.get((gpu.uuid, gi, ci)) if ci is not None else None
        if found is None and gi is not None:
            found = values.get((gpu.uuid, gi, None))
        if found is not None:
            changed = True
            mig = replace(mig, dcgm=found)
        migs.append(mig)
    if not changed:
        return gpu
    return replace(gpu, dcgm=own if own is not None else gpu.dcgm, mig_devices=tuple(migs))


def parse_exporter_scrape(text: str) -> dict[EntityKey, DcgmActivity]:
    """DCGM profiling values from a dcgm-exporter scrape (Prometheus text format), keyed by
    GPU UUID and GPU-instance id. Raises ValueError when the text is not in that format; a
    sample without a UUID or with a non-numeric instance id is left out."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[EntityKey, dict[str, float]] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as err:  # the parser raises ValueError and, on some input, others
        raise ValueError(str(err)) from err
    for family in families:
        for sample in family.samples:
            attr = PROFILING_FIELDS.get(sample.name)
            uuid = sample.labels.get(LABEL_UUID)
            if attr is None or not uuid:
                continue
            try:
                gi = _instance_id(sample.labels.get(LABEL_GPU_INSTANCE))
                ci = _instance_id(sample.labels.get(LABEL_COMPUTE_INSTANCE))
            except ValueError:
                continue
            value = float(sample.value)
            if value != value:  # NaN: dcgm-exporter had no value
                continue
            found.setdefault((uuid, gi, ci), {})[attr] = _scaled(attr, value)
    return {key: DcgmActivity(source=EXPORTER, **values) for key, values in found.items()}


def _instance_id(label: str | None) -> int | None:
    return None if label in (None, "") else int(label)


def _scaled(attr: str, value: float) -> float:
    return min(max(value, 0.0), 1.0) if attr in _RATIOS else max(value, 0.0)


def _fields_given(values: Iterable[DcgmActivity]) -> tuple[str, ...]:
    given = {name for activity in values for name, attr in PROFILING_FIELDS.items()
             if getattr(activity, attr) is not None}
    return tuple(name for name in PROFILING_FIELDS if name in given)


def _build_version(raw: str) -> str:
    """``version:3.3.5;arch:x86_64;...`` (DCGM's build info string) -> ``3.3.5``."""
    for part in raw.split(";"):
        key, _, value = part.partition(":")
        if key.strip() == "version" and value.strip():
            return value.strip()
    return raw


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# urllib.request and urllib.error are imported where used: with email, tempfile and
# http.cookiejar they add 1.5 MB to an agent that reads no dcgm-exporter.


def _why(err: BaseException) -> str:
    import urllib.error

    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP{err.code}"
    if isinstance(err, urllib.error.URLError):
        return type(err.reason).__name__ if isinstance(err.reason, BaseException) else "URLError"
    return type(err).__name__


def _http_get(url: str, timeout: float) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read(16 * 1024 * 1024).decode("utf-8", "replace")


