"""The scenario format's building blocks: the error a bad file raises, the key sets (from
``spec.py``'s dataclass fields), the limits, and the typed checks every section uses."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

from otel_gpu.simulate.spec import (
    ClaimSpec,
    ClockValues,
    ContainerSpec,
    DcgmFault,
    DcgmSpec,
    DcgmValues,
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
    MountSpec,
    NvLinkSpec,
    PerCycle,
    PodSpec,
    ProcessSpec,
    RemappedRows,
    Resources,
    Scenario,
    Varying,
    XidEvent,
)

MAX_PID = 4 * 1024 * 1024
# uid_t is 32 bits and (uid_t) -1 means "no uid" (setresuid(2)), so the largest is 2**32 - 2.
MAX_UID = 2**32 - 2
# Every other integer (counters, bytes, cycles) fits the driver's 64-bit signed range.
MAX_INTEGER = 2**63 - 1
# NVML's error counters are unsigned long long; a cgroup file is text and may hold any number.
# Both may be given past int64, so that what the agent does with such a value can be tested.
MAX_UINT64 = 2**64 - 1
MAX_FILE_INTEGER = 2**128


class ScenarioError(Exception):
    """A scenario that cannot be loaded: ``str()`` is ``"<file>: <key>: <message>"``."""

    def __init__(self, path: str, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}: {message}")
        self.path = path
        self.key = key
        self.message = message


# --- loading -----------------------------------------------------------------------------------


def _keys(model: type, *, without: Iterable[str] = ()) -> frozenset[str]:
    """The keys a file may give for ``model``: its dataclass fields, less those the loader
    derives (an index, a resolved id)."""
    names = {f.name for f in dataclasses.fields(model)}
    missing = set(without) - names
    if missing:
        raise TypeError(f"{model.__name__} has no field {sorted(missing)}")
    return frozenset(names - set(without))


TOP_KEYS = _keys(Scenario, without=("path",))
GPU_KEYS = _keys(GpuSpec, without=("index",))
PROCESS_KEYS = _keys(ProcessSpec)
INSTANCE_KEYS = _keys(MigInstanceSpec, without=("index", "gpu_instance_id"))
LAYOUT_KEYS = _keys(MigLayout, without=("generation",))
GPM_KEYS = _keys(GpmValues)
RESOURCE_KEYS = _keys(Resources)
CLOCK_KEYS = _keys(ClockValues)
ECC_KEYS = _keys(EccCounts)
REMAPPED_KEYS = _keys(RemappedRows)
XID_KEYS = _keys(XidEvent)
FAULT_KEYS = _keys(Fault)
DRIVER_KEYS = _keys(DriverSpec)
CONTAINER_KEYS = _keys(ContainerSpec, without=("device_uuids", "claims"))
POD_CONTAINER_KEYS = (CONTAINER_KEYS - {"labels", "user", "pid", "uid"}) | {"claims"}  # Docker only
CLAIM_KEYS = _keys(ClaimSpec, without=("device_uuids",))
POD_KEYS = _keys(PodSpec)
HOST_KEYS = _keys(HostSpec)
FILESYSTEM_KEYS = _keys(FilesystemSpec)
MOUNT_KEYS = _keys(MountSpec)
KUBELET_KEYS = _keys(KubeletSpec)
DCGM_VALUE_KEYS = _keys(DcgmValues)
DCGM_KEYS = _keys(DcgmSpec)
DCGM_FAULT_KEYS = _keys(DcgmFault)
NVLINK_KEYS = _keys(NvLinkSpec)
MIG_KEYS = frozenset({"instances", "reconfigure"})  # MigSpec holds the resulting layouts
HEX_DIGITS = frozenset("0123456789abcdef")


class Checks:
    """The typed checks of a scenario's values; each raises ScenarioError naming the file and
    the key."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = ""

    def error(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.path, key, message)

    def mapping(
        self, value: Any, key: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {kind_of(value)}")
        allowed = set(allowed)
        for name in value:
            if not isinstance(name, str) or name not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(join_key(key, str(name)), f"unknown key (known keys: {known})")
        for name in required:
            if name not in value:
                raise self.error(join_key(key, name), "missing required key")
        return value

    def list_of(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {kind_of(value)}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {kind_of(value)}")
        return value

    def integer(
        self, value: Any, key: str, minimum: int | None = 0, maximum: int = MAX_INTEGER
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {kind_of(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {value}")
        return value

    def number(
        self, value: Any, key: str, minimum: float | None = 0.0, maximum: float | None = None
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number, got {kind_of(value)}")
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
            raise self.error(key, f"expected true or false, got {kind_of(value)}")
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
        return self.varying(raw[name], join_key(key, name), check)


def join_key(key: str, name: str) -> str:
    return name if key == "(file)" else f"{key}.{name}"


def kind_of(value: Any) -> str:
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
