"""Scenario files: a simulated GPU server described in YAML or JSON, loaded and validated into
the model of :mod:`otel_gpu.simulate.spec`.

A scenario names its GPUs (models from the hardware catalog), their MIG layouts and the processes
on them, the containers and pods that own those processes, the users, and optional host figures.
Every mistake is reported as a :class:`ScenarioError` naming the file, the key (a dotted path such
as ``gpus[2].mig.instances[1].profile``) and what is wrong.

Values over time
----------------
A value written as a list is a sequence over collection cycles: cycle k uses element k and the
last element repeats. In the loaded model a sequence is a :class:`PerCycle` (a tuple subclass);
:func:`at_cycle` picks the element for a cycle and returns every other value unchanged.

Only fields that can change between cycles take sequences (utilization, memory, power,
temperatures, clocks, counters, GPM values, per-process and per-container figures, host figures).
For those, the rule is:

- a field whose value is a scalar (number, bool): any list is a sequence;
- a field whose value is itself a list (``clocks_event_reasons``, a list of reason names): a list
  whose elements are all lists is a sequence, one list of names per cycle; a list of names is the
  same set of names at every cycle, and ``[]`` means no reason;
- a field whose value is a mapping (``clocks_mhz``, ``ecc_errors``, ``remapped_rows``, ``gpm``,
  ``resources``): each member may be a sequence, the mapping itself may not.

Structural fields (models, UUIDs, pids, placements, device lists, labels, fault cycle lists) are
fixed; a list given where a scalar is expected there is a type error. Ratios are 0..1.

MIG layouts
-----------
``mig.instances`` is the layout at cycle 0 (generation 0); each ``mig.reconfigure`` entry applies
a new layout (generation 1, 2, ...) from its cycle on. A reconfiguration needs the GPU drained of
clients, so the processes of the previous layout are gone from that cycle; a ``reconfigure``
entry may list the ``processes`` that run on its layout. Each process's ``mig_instance`` indexes
the instances of the layout it belongs to. An instance without ``start`` takes the first allowed
free placement, as ``nvidia-smi mig -cgi`` does.

Identifiers
-----------
UUIDs not given are derived with uuid5 from the scenario name and the position: ``GPU-<uuid>``
for GPU i and ``MIG-<uuid>`` for instance j of layout generation g of GPU i, so two loads of one
scenario give the same ids and a reconfigured layout gets new ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid as uuidlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from otel_gpu.simulate.hardware import MODELS, GpuModel, find_model, gpu_instance_id
from otel_gpu.simulate.spec import (
    DRIVER_FAULTABLE_CALLS,
    FAULTABLE_CALLS,
    NVML_ERROR_NAMES,
    ClockValues,
    ContainerSpec,
    DriverSpec,
    EccCounts,
    Fault,
    FilesystemSpec,
    GpmValues,
    GpuSpec,
    HostSpec,
    KubeletSpec,
    MigInstanceSpec,
    MigLayout,
    MigSpec,
    PerCycle,
    PodSpec,
    ProcessSpec,
    RemappedRows,
    Resources,
    Scenario,
    Varying,
    XidEvent,
    at_cycle,
    device_refs,
)
from otel_gpu.sources.libnvml import CLOCK_EVENT_REASONS

__all__ = [
    "BUILTIN_DIR",
    "PerCycle",
    "Scenario",
    "ScenarioError",
    "at_cycle",
    "builtin_names",
    "derive_gpu_uuid",
    "derive_mig_uuid",
    "load_scenario",
]

BUILTIN_DIR = Path(__file__).with_name("scenarios")
DEFAULT_DRIVER_VERSION = "550.54.15"
# Linux's PID_MAX_LIMIT on 64-bit kernels (include/linux/threads.h: 4 * 1024 * 1024).
MAX_PID = 4 * 1024 * 1024
# uid_t is 32 bits and (uid_t) -1 means "no uid" (setresuid(2)), so the largest is 2**32 - 2.
MAX_UID = 2**32 - 2
# Every other integer (counters, bytes, cycles) fits the driver's 64-bit signed range.
MAX_INTEGER = 2**63 - 1
# NVML's error counters are unsigned long long; a cgroup file is text and may hold any number.
# Both may be given past int64, so that what the agent does with such a value can be tested.
MAX_UINT64 = 2**64 - 1
MAX_FILE_INTEGER = 2**128

_UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "https://github.com/otel-gpu/simulate")


class ScenarioError(Exception):
    """A scenario that cannot be loaded: ``str()`` is ``"<file>: <key>: <message>"``."""

    def __init__(self, path: str, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}: {message}")
        self.path = path
        self.key = key
        self.message = message


# --- loading -----------------------------------------------------------------------------------


def builtin_names() -> list[str]:
    """The names of the built-in scenarios."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_scenario(spec: str) -> Scenario:
    """Load a built-in scenario by name, or a scenario file (YAML or JSON) by path."""
    path = Path(spec)
    if not path.is_file():
        builtin = BUILTIN_DIR / f"{spec}.yaml"
        if "/" not in spec and builtin.is_file():
            path = builtin
        else:
            known = ", ".join(builtin_names())
            raise ScenarioError(
                spec, "(file)", f"no such scenario file or built-in scenario (built-ins: {known})"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), "(file)", f"cannot read: {exc}") from exc
    document = _parse(text, str(path))
    return _Loader(str(path)).scenario(document, default_name=path.stem)


def _parse(text: str, path: str) -> Any:
    try:
        return _parse_text(text, path)
    except RecursionError:
        # Both parsers recurse once per level of brackets or indentation.
        raise ScenarioError(path, "(file)", "nested too deeply to be a scenario") from None


def _parse_text(text: str, path: str) -> Any:
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScenarioError(path, "(file)", f"JSON syntax error: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(path, "(file)", f"YAML syntax error{where}: {problem}") from exc


def derive_gpu_uuid(scenario_name: str, index: int) -> str:
    return f"GPU-{uuidlib.uuid5(_UUID_NAMESPACE, f'{scenario_name}/gpu{index}')}"


def derive_mig_uuid(scenario_name: str, gpu_index: int, generation: int, position: int) -> str:
    name = f"{scenario_name}/gpu{gpu_index}/layout{generation}/mig{position}"
    return f"MIG-{uuidlib.uuid5(_UUID_NAMESPACE, name)}"


def _derive_serial(gpu_uuid: str) -> str:
    return str(1_320_000_000_000 + uuidlib.UUID(gpu_uuid[4:]).int % 10**10)


def _keys(model: type, *, without: Iterable[str] = ()) -> frozenset[str]:
    """The keys a file may give for ``model``: its dataclass fields, less those the loader
    derives (an index, a resolved id)."""
    names = {f.name for f in dataclasses.fields(model)}
    missing = set(without) - names
    if missing:
        raise TypeError(f"{model.__name__} has no field {sorted(missing)}")
    return frozenset(names - set(without))


_TOP_KEYS = _keys(Scenario, without=("path",))
_GPU_KEYS = _keys(GpuSpec, without=("index",))
_PROCESS_KEYS = _keys(ProcessSpec)
_INSTANCE_KEYS = _keys(MigInstanceSpec, without=("index", "gpu_instance_id"))
_LAYOUT_KEYS = _keys(MigLayout, without=("generation",))
_GPM_KEYS = _keys(GpmValues)
_RESOURCE_KEYS = _keys(Resources)
_CLOCK_KEYS = _keys(ClockValues)
_ECC_KEYS = _keys(EccCounts)
_REMAPPED_KEYS = _keys(RemappedRows)
_XID_KEYS = _keys(XidEvent)
_FAULT_KEYS = _keys(Fault)
_DRIVER_KEYS = _keys(DriverSpec)
_CONTAINER_KEYS = _keys(ContainerSpec, without=("device_uuids",))
_POD_CONTAINER_KEYS = _CONTAINER_KEYS - {"labels"}
_POD_KEYS = _keys(PodSpec)
_HOST_KEYS = _keys(HostSpec)
_FILESYSTEM_KEYS = _keys(FilesystemSpec)
_KUBELET_KEYS = _keys(KubeletSpec)
_MIG_KEYS = frozenset({"instances", "reconfigure"})  # MigSpec holds the resulting layouts
_HEX = frozenset("0123456789abcdef")


class _Loader:
    """Turns a parsed document into a Scenario, raising ScenarioError at the first mistake."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = ""

    def error(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.path, key, message)

    # -- primitive checks --

    def mapping(
        self, value: Any, key: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_kind(value)}")
        allowed = set(allowed)
        for name in value:
            if not isinstance(name, str) or name not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(_join(key, str(name)), f"unknown key (known keys: {known})")
        for name in required:
            if name not in value:
                raise self.error(_join(key, name), "missing required key")
        return value

    def list_of(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {_kind(value)}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {_kind(value)}")
        return value

    def integer(
        self, value: Any, key: str, minimum: int | None = 0, maximum: int = MAX_INTEGER
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {value}")
        return value

    def number(
        self, value: Any, key: str, minimum: float | None = 0.0, maximum: float | None = None
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value}")
        if abs(value) > MAX_INTEGER:
            raise self.error(key, f"must be at most {MAX_INTEGER}, got {value:g}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum:g}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum:g}, got {value}")
        return value

    def ratio(self, value: Any, key: str) -> float:
        return self.number(value, key, 0.0, 1.0)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_kind(value)}")
        return value

    def varying(self, value: Any, key: str, check: Callable[[Any, str], Any]) -> Varying:
        if isinstance(value, list):
            if not value:
                raise self.error(key, "an empty sequence; give at least one value")
            return PerCycle(check(item, f"{key}[{k}]") for k, item in enumerate(value))
        return check(value, key)

    def optional(
        self, raw: dict[str, Any], key: str, name: str, check: Callable[[Any, str], Any]
    ) -> Varying:
        """The varying value of ``raw[name]`` checked by ``check``, or None when absent."""
        if name not in raw:
            return None
        return self.varying(raw[name], _join(key, name), check)

    # -- the document --

    def scenario(self, document: Any, default_name: str) -> Scenario:
        if document is None:
            raise self.error("(file)", "the file is empty")
        raw = self.mapping(document, "(file)", _TOP_KEYS, required=("gpus",))
        self.name = self.string(raw["name"], "name") if "name" in raw else default_name
        description = (
            self.string(raw["description"], "description") if "description" in raw else None
        )
        driver = raw.get("driver_version", DEFAULT_DRIVER_VERSION)
        if not isinstance(driver, str) or not driver:
            raise self.error("driver_version", f"expected a string (quote it), got {_kind(driver)}")
        users = self.users(raw.get("users", {}))
        gpus = tuple(
            self.gpu(item, f"gpus[{i}]", i)
            for i, item in enumerate(self.list_of(raw["gpus"], "gpus"))
        )
        self.check_unique_uuids(gpus)
        self.check_processes_consistent(gpus)
        refs = device_refs(gpus)
        containers = tuple(
            self.container(item, f"containers[{i}]", refs)
            for i, item in enumerate(self.list_of(raw.get("containers", []), "containers"))
        )
        pods = tuple(
            self.pod(item, f"pods[{i}]", refs)
            for i, item in enumerate(self.list_of(raw.get("pods", []), "pods"))
        )
        self.check_unique_containers(containers, pods)
        host = self.host(raw["host"]) if "host" in raw else None
        kubelet = self.kubelet(raw["kubelet"]) if "kubelet" in raw else KubeletSpec()
        driver_spec = self.driver(raw["driver"]) if "driver" in raw else DriverSpec()
        return Scenario(
            name=self.name,
            path=self.path,
            driver_version=driver,
            description=description,
            users=users,
            containers=containers,
            pods=pods,
            gpus=gpus,
            host=host,
            kubelet=kubelet,
            driver=driver_spec,
        )

    def driver(self, value: Any) -> DriverSpec:
        raw = self.mapping(value, "driver", _DRIVER_KEYS)
        init_fails = 0
        if "init_fails_cycles" in raw:
            init_fails = self.integer(raw["init_fails_cycles"], "driver.init_fails_cycles")
        faults: tuple[Fault, ...] = ()
        if "faults" in raw:
            faults = self.faults(raw["faults"], "driver.faults", DRIVER_FAULTABLE_CALLS)
        return DriverSpec(init_fails_cycles=init_fails, faults=faults)

    def kubelet(self, value: Any) -> KubeletSpec:
        raw = self.mapping(value, "kubelet", _KUBELET_KEYS)
        return KubeletSpec(
            **{name: self.boolean(flag, f"kubelet.{name}") for name, flag in raw.items()}
        )

    def users(self, value: Any) -> dict[int, str]:
        if not isinstance(value, dict):
            raise self.error("users", f"expected a mapping of uid to user name, got {_kind(value)}")
        users: dict[int, str] = {}
        for raw_uid, name in value.items():
            key = f"users.{raw_uid}"
            if isinstance(raw_uid, str) and raw_uid.isdigit():
                uid = int(raw_uid)
            elif isinstance(raw_uid, int) and not isinstance(raw_uid, bool) and raw_uid >= 0:
                uid = raw_uid
            else:
                raise self.error(key, "a uid must be a non-negative integer")
            if uid > MAX_UID:
                raise self.error(key, f"a uid must be at most {MAX_UID}")
            users[uid] = self.string(name, key)
        return users

    # -- GPUs --

    def gpu(self, value: Any, key: str, index: int) -> GpuSpec:
        raw = self.mapping(value, key, _GPU_KEYS, required=("model",))
        model_name = self.string(raw["model"], f"{key}.model")
        model = find_model(model_name)
        if model is None:
            known = ", ".join(MODELS)
            raise self.error(f"{key}.model", f"unknown model '{model_name}' (known: {known})")
        gpu_uuid = (
            self.uuid_string(raw["uuid"], f"{key}.uuid", "GPU-")
            if "uuid" in raw
            else derive_gpu_uuid(self.name, index)
        )
        serial = (
            self.string(raw["serial"], f"{key}.serial")
            if "serial" in raw
            else _derive_serial(gpu_uuid)
        )
        total = model.memory_total_bytes
        if "gpm" in raw:
            self.check_gpm_allowed(model, f"{key}.gpm")
        mig = self.mig(raw["mig"], f"{key}.mig", model, index) if "mig" in raw else None
        initial = mig.layouts[0] if mig else None
        processes = self.processes(raw.get("processes", []), f"{key}.processes", initial)
        if mig:
            first = mig.layouts[0]
            mig = MigSpec((MigLayout(0, 0, first.instances, processes), *mig.layouts[1:]))
        power_limit = (
            self.number(raw["power_limit_watts"], f"{key}.power_limit_watts", minimum=1.0)
            if "power_limit_watts" in raw
            else None
        )
        return GpuSpec(
            index=index,
            model=model,
            uuid=gpu_uuid,
            serial=serial,
            utilization=self.optional(raw, key, "utilization", self.ratio),
            memory_utilization=self.optional(raw, key, "memory_utilization", self.ratio),
            memory_used_bytes=self.optional(
                raw, key, "memory_used_bytes", self.bytes_within(total)
            ),
            power_watts=self.optional(raw, key, "power_watts", self.number),
            power_limit_watts=power_limit,
            temperature_celsius=self.optional(raw, key, "temperature_celsius", self.number),
            memory_temperature_celsius=self.optional(
                raw, key, "memory_temperature_celsius", self.number
            ),
            clocks_mhz=self.clocks(raw.get("clocks_mhz", {}), f"{key}.clocks_mhz"),
            clocks_event_reasons=(
                self.reasons(raw["clocks_event_reasons"], f"{key}.clocks_event_reasons")
                if "clocks_event_reasons" in raw
                else None
            ),
            encoder_utilization=self.optional(raw, key, "encoder_utilization", self.ratio),
            decoder_utilization=self.optional(raw, key, "decoder_utilization", self.ratio),
            ecc_errors=self.ecc(raw.get("ecc_errors", {}), f"{key}.ecc_errors"),
            remapped_rows=self.remapped(raw.get("remapped_rows", {}), f"{key}.remapped_rows"),
            pcie_tx_bytes_per_s=self.optional(raw, key, "pcie_tx_bytes_per_s", self.number),
            pcie_rx_bytes_per_s=self.optional(raw, key, "pcie_rx_bytes_per_s", self.number),
            mig_pending=self.optional(raw, key, "mig_pending", self.boolean) or False,
            xid_events=self.xid_events(raw.get("xid_events", []), f"{key}.xid_events", mig),
            faults=self.faults(raw.get("faults", []), f"{key}.faults"),
            mig=mig,
            gpm=self.gpm(raw["gpm"], f"{key}.gpm") if "gpm" in raw else None,
            processes=processes,
        )

    def uuid_string(self, value: Any, key: str, prefix: str) -> str:
        text = self.string(value, key)
        try:
            if not text.startswith(prefix):
                raise ValueError
            uuidlib.UUID(text[len(prefix) :])
        except ValueError:
            raise self.error(key, f"expected '{prefix}' followed by a UUID, got '{text}'") from None
        return text

    def bytes_within(self, total: int) -> Callable[[Any, str], int]:
        def check(value: Any, key: str) -> int:
            count = self.integer(value, key)
            if count > total:
                raise self.error(key, f"{count} bytes is more than the device's {total}")
            return count

        return check

    def clocks(self, value: Any, key: str) -> ClockValues:
        raw = self.mapping(value, key, _CLOCK_KEYS)
        return ClockValues(**{name: self.optional(raw, key, name, self.mhz) for name in raw})

    def mhz(self, value: Any, key: str) -> int:
        return self.integer(value, key, minimum=1)

    def reasons(self, value: Any, key: str) -> Varying:
        items = self.list_of(value, key)
        if items and all(isinstance(item, list) for item in items):
            return PerCycle(self.reason_names(item, f"{key}[{k}]") for k, item in enumerate(items))
        return self.reason_names(items, key)

    def reason_names(self, items: list[Any], key: str) -> tuple[str, ...]:
        for k, item in enumerate(items):
            if not isinstance(item, str):
                raise self.error(
                    f"{key}[{k}]", f"expected a clock event reason name, got {_kind(item)}"
                )
            if item not in CLOCK_EVENT_REASONS:
                known = ", ".join(CLOCK_EVENT_REASONS)
                raise self.error(f"{key}[{k}]", f"unknown clock event reason {item!r} ({known})")
        return tuple(items)

    def ecc(self, value: Any, key: str) -> EccCounts:
        raw = self.mapping(value, key, _ECC_KEYS)
        return EccCounts(
            **{name: self.varying(raw[name], _join(key, name),
                                  lambda v, k: self.integer(v, k, maximum=MAX_UINT64))
               for name in raw}
        )

    def remapped(self, value: Any, key: str) -> RemappedRows:
        raw = self.mapping(value, key, _REMAPPED_KEYS)
        checks = {
            "corrected": self.integer,
            "uncorrected": self.integer,
            "pending": self.boolean,
            "failed": self.boolean,
        }
        return RemappedRows(
            **{name: self.varying(raw[name], _join(key, name), checks[name]) for name in raw}
        )

    def check_gpm_allowed(self, model: GpuModel, key: str) -> None:
        if not model.gpm_supported:
            raise self.error(
                key, f"GPM needs a Hopper or later GPU; {model.key} is {model.architecture_name}"
            )

    def gpm(self, value: Any, key: str) -> GpmValues:
        raw = self.mapping(value, key, _GPM_KEYS)
        return GpmValues(**{name: self.optional(raw, key, name, self.ratio) for name in raw})

    def xid_events(self, value: Any, key: str, mig: MigSpec | None) -> tuple[XidEvent, ...]:
        events = []
        for i, item in enumerate(self.list_of(value, key)):
            item_key = f"{key}[{i}]"
            raw = self.mapping(item, item_key, _XID_KEYS, ("cycle", "code"))
            cycle = self.integer(raw["cycle"], f"{item_key}.cycle")
            code = self.integer(raw["code"], f"{item_key}.code")
            instance = None
            if "mig_instance" in raw:
                instance_key = f"{item_key}.mig_instance"
                instance = self.integer(raw["mig_instance"], instance_key)
                if mig is None:
                    raise self.error(instance_key, "the GPU has no MIG layout")
                count = len(mig.layout_at(cycle).instances)
                if instance >= count:
                    raise self.error(
                        instance_key, f"out of range: the layout at cycle {cycle} has {count}"
                    )
            events.append(XidEvent(cycle, code, instance))
        return tuple(events)

    def faults(
        self, value: Any, key: str, calls: frozenset[str] = FAULTABLE_CALLS
    ) -> tuple[Fault, ...]:
        faults = []
        for i, item in enumerate(self.list_of(value, key)):
            item_key = f"{key}[{i}]"
            raw = self.mapping(item, item_key, _FAULT_KEYS, ("call", "error"))
            call = self.string(raw["call"], f"{item_key}.call")
            if call != "*" and call not in calls:
                kind = "a device" if calls is FAULTABLE_CALLS else "a driver-wide"
                raise self.error(
                    f"{item_key}.call", f"'{call}' is not {kind} call of the simulated driver"
                )
            error = self.string(raw["error"], f"{item_key}.error").removeprefix("NVML_ERROR_")
            if error not in NVML_ERROR_NAMES:
                raise self.error(f"{item_key}.error", f"unknown NVML error '{raw['error']}'")
            cycles = None
            if "cycles" in raw:
                cycles = self.cycle_list(raw["cycles"], f"{item_key}.cycles")
            faults.append(Fault(call, error, cycles))
        # A lost GPU answers nothing else, so its faults come first.
        return tuple(sorted(faults, key=lambda f: f.error != "GPU_IS_LOST"))

    def cycle_list(self, value: Any, key: str) -> tuple[int, ...]:
        if not isinstance(value, list):
            return (self.integer(value, key),)
        if not value:
            raise self.error(key, "an empty list; leave the key out for every cycle")
        return tuple(self.integer(c, f"{key}[{k}]") for k, c in enumerate(value))

    # -- MIG --

    def mig(self, value: Any, key: str, model: GpuModel, gpu_index: int) -> MigSpec:
        raw = self.mapping(value, key, _MIG_KEYS, required=("instances",))
        layouts = [
            MigLayout(
                0, 0, self.instances(raw["instances"], f"{key}.instances", model, gpu_index, 0), ()
            )
        ]
        previous_cycle = 0
        for g, item in enumerate(self.list_of(raw.get("reconfigure", []), f"{key}.reconfigure"), 1):
            item_key = f"{key}.reconfigure[{g - 1}]"
            entry = self.mapping(item, item_key, _LAYOUT_KEYS, ("cycle", "instances"))
            cycle = self.integer(entry["cycle"], f"{item_key}.cycle", minimum=1)
            if cycle <= previous_cycle:
                raise self.error(
                    f"{item_key}.cycle",
                    f"must come after the previous layout's cycle {previous_cycle}",
                )
            previous_cycle = cycle
            instances = self.instances(
                entry["instances"], f"{item_key}.instances", model, gpu_index, g
            )
            layout = MigLayout(g, cycle, instances, ())
            processes = self.processes(entry.get("processes", []), f"{item_key}.processes", layout)
            layouts.append(MigLayout(g, cycle, instances, processes))
        return MigSpec(tuple(layouts))

    def instances(
        self, value: Any, key: str, model: GpuModel, gpu_index: int, generation: int
    ) -> tuple[MigInstanceSpec, ...]:
        placed: list[MigInstanceSpec] = []
        compute = 0
        for j, item in enumerate(self.list_of(value, key)):
            item_key = f"{key}[{j}]"
            raw = self.mapping(item, item_key, _INSTANCE_KEYS, required=("profile",))
            name = self.string(raw["profile"], f"{item_key}.profile")
            profile = model.profile(name)
            if profile is None:
                offered = ", ".join(p.name for p in model.mig_profiles)
                raise self.error(
                    f"{item_key}.profile",
                    f"{model.key} offers no MIG profile '{name}' (it offers: {offered})",
                )
            if sum(p.profile.name == name for p in placed) >= profile.max_instances:
                raise self.error(
                    f"{item_key}.profile",
                    f"more than {profile.max_instances} instance(s) of {name} on {model.key}",
                )
            compute += profile.compute_slices
            if compute > model.compute_slices:
                raise self.error(
                    f"{item_key}.profile",
                    f"the layout needs {compute} compute slices; {model.key} has "
                    f"{model.compute_slices}",
                )
            if "start" in raw:
                start = self.integer(raw["start"], f"{item_key}.start")
                if start not in profile.starts:
                    allowed = ", ".join(map(str, profile.starts))
                    raise self.error(
                        f"{item_key}.start", f"{name} may start at {allowed}, not {start}"
                    )
                clash = _overlapping(placed, start, profile.memory_slices)
                if clash is not None:
                    raise self.error(
                        f"{item_key}.start",
                        f"placement {start}:{profile.memory_slices} overlaps "
                        f"instances[{clash.index}] ({clash.profile.name} at "
                        f"{clash.start}:{clash.size})",
                    )
            else:
                free = [
                    s
                    for s in profile.starts
                    if _overlapping(placed, s, profile.memory_slices) is None
                ]
                if not free:
                    raise self.error(f"{item_key}.profile", f"no free placement left for {name}")
                start = free[0]
            uuid = (
                self.uuid_string(raw["uuid"], f"{item_key}.uuid", "MIG-")
                if "uuid" in raw
                else derive_mig_uuid(self.name, gpu_index, generation, j)
            )
            if "gpm" in raw:
                self.check_gpm_allowed(model, f"{item_key}.gpm")
            placed.append(
                MigInstanceSpec(
                    index=j,
                    profile=profile,
                    start=start,
                    uuid=uuid,
                    gpu_instance_id=gpu_instance_id(profile, start),
                    memory_used_bytes=self.optional(
                        raw, item_key, "memory_used_bytes", self.bytes_within(profile.memory_bytes)
                    ),
                    gpm=self.gpm(raw["gpm"], f"{item_key}.gpm") if "gpm" in raw else None,
                )
            )
        return tuple(placed)

    # -- processes --

    def processes(self, value: Any, key: str, layout: MigLayout | None) -> tuple[ProcessSpec, ...]:
        processes = []
        seen: set[int] = set()
        for i, item in enumerate(self.list_of(value, key)):
            process = self.process(item, f"{key}[{i}]", layout)
            if process.pid in seen:
                raise self.error(f"{key}[{i}].pid", f"pid {process.pid} is listed twice")
            seen.add(process.pid)
            processes.append(process)
        return tuple(processes)

    def process(self, value: Any, key: str, layout: MigLayout | None) -> ProcessSpec:
        raw = self.mapping(value, key, _PROCESS_KEYS, required=("pid",))
        mig_instance = None
        if layout is not None:
            if "mig_instance" not in raw:
                raise self.error(f"{key}.mig_instance", "required on a MIG-enabled GPU")
            mig_instance = self.integer(raw["mig_instance"], f"{key}.mig_instance")
            if mig_instance >= len(layout.instances):
                raise self.error(
                    f"{key}.mig_instance",
                    f"out of range: the layout has {len(layout.instances)} instance(s)",
                )
        elif "mig_instance" in raw:
            raise self.error(f"{key}.mig_instance", "the GPU has no MIG layout")
        cmdline: tuple[str, ...] = ()
        if "cmdline" in raw:
            cmdline = tuple(
                self.string(arg, f"{key}.cmdline[{k}]")
                for k, arg in enumerate(self.list_of(raw["cmdline"], f"{key}.cmdline"))
            )
        comm = self.string(raw["comm"], f"{key}.comm") if "comm" in raw else "python3"
        return ProcessSpec(
            pid=self.integer(raw["pid"], f"{key}.pid", minimum=1, maximum=MAX_PID),
            uid=self.integer(raw["uid"], f"{key}.uid", maximum=MAX_UID) if "uid" in raw else 0,
            comm=comm,
            cgroup=self.string(raw["cgroup"], f"{key}.cgroup") if "cgroup" in raw else "0::/",
            cmdline=cmdline or (comm,),
            used_memory_bytes=self.optional(raw, key, "used_memory_bytes", self.integer) or 0,
            sm_utilization=self.optional(raw, key, "sm_utilization", self.ratio),
            memory_utilization=self.optional(raw, key, "memory_utilization", self.ratio),
            mig_instance=mig_instance,
            running=True
            if "running" not in raw
            else self.optional(raw, key, "running", self.boolean),
        )

    def check_unique_uuids(self, gpus: tuple[GpuSpec, ...]) -> None:
        seen: dict[str, str] = {}
        for gpu in gpus:
            owned = [(f"gpus[{gpu.index}].uuid", gpu.uuid)]
            for layout in gpu.mig.layouts if gpu.mig else ():
                prefix = f"gpus[{gpu.index}].mig" + (
                    "" if layout.generation == 0 else f".reconfigure[{layout.generation - 1}]"
                )
                owned += [(f"{prefix}.instances[{i.index}].uuid", i.uuid) for i in layout.instances]
            for key, value in owned:
                if value in seen:
                    raise self.error(key, f"UUID {value} is also used by {seen[value]}")
                seen[value] = key

    def check_processes_consistent(self, gpus: tuple[GpuSpec, ...]) -> None:
        first: dict[int, tuple[str, ProcessSpec]] = {}
        for gpu in gpus:
            layouts = gpu.mig.layouts if gpu.mig else ()
            prefix = f"gpus[{gpu.index}]"
            groups = [(f"{prefix}.processes", gpu.processes)] + [
                (f"{prefix}.mig.reconfigure[{lay.generation - 1}].processes", lay.processes)
                for lay in layouts[1:]
            ]
            for key, processes in groups:
                for i, p in enumerate(processes):
                    if p.pid not in first:
                        first[p.pid] = (f"{key}[{i}]", p)
                        continue
                    where, q = first[p.pid]
                    if (p.uid, p.comm, p.cgroup) != (q.uid, q.comm, q.cgroup):
                        raise self.error(
                            f"{key}[{i}]",
                            f"pid {p.pid} is also at {where} with another uid, comm or cgroup",
                        )

    # -- containers, pods, host --

    def container_id(self, value: Any, key: str) -> str:
        text = self.string(value, key)
        if len(text) != 64 or not set(text) <= _HEX:
            raise self.error(key, "expected a container id of 64 lowercase hex digits")
        return text

    def devices(self, value: Any, key: str, refs: dict[str, str]) -> tuple[tuple[str, ...], ...]:
        written, resolved = [], []
        for k, item in enumerate(self.list_of(value, key)):
            ref = self.string(item, f"{key}[{k}]")
            if ref not in refs:
                raise self.error(
                    f"{key}[{k}]", f"'{ref}' names no GPU or MIG device of this scenario"
                )
            written.append(ref)
            resolved.append(refs[ref])
        return tuple(written), tuple(resolved)

    def resources(self, value: Any, key: str) -> Resources:
        raw = self.mapping(value, key, _RESOURCE_KEYS)
        checks: dict[str, Callable[[Any, str], Any]] = {
            "cpu_limit": lambda v, k: self.number(v, k, minimum=0.001),
            "cpu_utilization": self.ratio,
            "cpu_throttled_ratio": self.ratio,
            "memory_limit_bytes": lambda v, k: self.integer(v, k, maximum=MAX_FILE_INTEGER),
            "memory_used_bytes": lambda v, k: self.integer(v, k, maximum=MAX_FILE_INTEGER),
            "oom_kills": self.integer,
            "disk_read_bytes_per_s": self.integer,
            "disk_write_bytes_per_s": self.integer,
        }
        return Resources(**{name: self.optional(raw, key, name, checks[name]) for name in raw})

    def container(self, value: Any, key: str, refs: dict[str, str]) -> ContainerSpec:
        raw = self.mapping(value, key, _CONTAINER_KEYS, required=("id", "name"))
        labels_raw = raw.get("labels", {})
        if not isinstance(labels_raw, dict):
            raise self.error(f"{key}.labels", f"expected a mapping, got {_kind(labels_raw)}")
        labels = {
            str(name): self.string(text, f"{key}.labels.{name}")
            for name, text in labels_raw.items()
        }
        written, resolved = self.devices(raw.get("devices", []), f"{key}.devices", refs)
        return ContainerSpec(
            id=self.container_id(raw["id"], f"{key}.id"),
            name=self.string(raw["name"], f"{key}.name"),
            image=self.string(raw["image"], f"{key}.image") if "image" in raw else None,
            labels=labels,
            devices=written,
            device_uuids=resolved,
            resources=self.resources(raw.get("resources", {}), f"{key}.resources"),
        )

    def pod(self, value: Any, key: str, refs: dict[str, str]) -> PodSpec:
        raw = self.mapping(value, key, _POD_KEYS, ("namespace", "name", "uid"))
        uid = self.string(raw["uid"], f"{key}.uid")
        try:
            uuidlib.UUID(uid)
        except ValueError:
            raise self.error(f"{key}.uid", f"expected a pod UID (a UUID), got '{uid}'") from None
        containers = []
        for i, item in enumerate(self.list_of(raw.get("containers", []), f"{key}.containers")):
            item_key = f"{key}.containers[{i}]"
            self.mapping(item, item_key, _POD_CONTAINER_KEYS, ("name", "id"))
            containers.append(self.container(item, item_key, refs))
        return PodSpec(
            namespace=self.string(raw["namespace"], f"{key}.namespace"),
            name=self.string(raw["name"], f"{key}.name"),
            uid=uid,
            containers=tuple(containers),
        )

    def check_unique_containers(
        self, containers: tuple[ContainerSpec, ...], pods: tuple[PodSpec, ...]
    ) -> None:
        seen: dict[str, str] = {}
        owned = [(f"containers[{i}].id", c.id) for i, c in enumerate(containers)]
        for p, pod in enumerate(pods):
            owned += [(f"pods[{p}].containers[{i}].id", c.id) for i, c in enumerate(pod.containers)]
        for key, value in owned:
            if value in seen:
                raise self.error(key, f"container id is also used by {seen[value]}")
            seen[value] = key

    def host(self, value: Any) -> HostSpec:
        raw = self.mapping(value, "host", _HOST_KEYS)
        filesystems = []
        for i, item in enumerate(self.list_of(raw.get("filesystems", []), "host.filesystems")):
            key = f"host.filesystems[{i}]"
            fs = self.mapping(item, key, _FILESYSTEM_KEYS, required=sorted(_FILESYSTEM_KEYS))
            mountpoint = self.string(fs["mountpoint"], f"{key}.mountpoint")
            if not mountpoint.startswith("/"):
                raise self.error(f"{key}.mountpoint", "expected an absolute path")
            size = self.varying(fs["size_bytes"], f"{key}.size_bytes", self.integer)
            used = self.varying(fs["used_bytes"], f"{key}.used_bytes", self.integer)
            largest = max(size) if isinstance(size, PerCycle) else size
            for k, amount in enumerate(used if isinstance(used, PerCycle) else [used]):
                if amount > largest:
                    suffix = f"[{k}]" if isinstance(used, PerCycle) else ""
                    raise self.error(
                        f"{key}.used_bytes{suffix}", f"{amount} is more than size_bytes"
                    )
            filesystems.append(FilesystemSpec(mountpoint, size, used))
        return HostSpec(
            memory_used_ratio=self.optional(raw, "host", "memory_used_ratio", self.ratio),
            cpu_utilization=self.optional(raw, "host", "cpu_utilization", self.ratio),
            filesystems=tuple(filesystems),
        )


def _overlapping(placed: list[MigInstanceSpec], start: int, size: int) -> MigInstanceSpec | None:
    for other in placed:
        if start < other.start + other.size and other.start < start + size:
            return other
    return None


def _join(key: str, name: str) -> str:
    return name if key == "(file)" else f"{key}.{name}"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
