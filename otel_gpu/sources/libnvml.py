"""The failsafe NVML wrapper: what the adapter knows about the NVML library itself.

One call path for every NVML function: an ``NVMLError`` becomes a recorded ``SourceError`` and an
absent value, ``GPU_IS_LOST`` raises :class:`GpuLost` so the caller can mark that GPU failed and
go on with the others, and an error the caller anticipated comes back as :data:`EXPECTED`.
NOT_SUPPORTED is a capability, not a failure: the device lacks that field (fan speed on an SXM
board), so the value is absent, nothing is recorded, and that call (with those arguments) is not
made on that device again until ``CAPABILITY_RECHECK_S`` (10 minutes) of the source's clock have
passed, when it is tried once more.

The tables here (error names, clock-event reason bits, GPM metric ids) are the one home of those
facts; the simulator reads them from here too.
"""

from __future__ import annotations

import ctypes
from typing import Any

from otel_gpu.snapshot import SourceError

SOURCE = "nvml"

# Clock domains, as ``nvmlDeviceGetClockInfo`` and ``nvmlDeviceGetMaxClockInfo`` name them
# (nvmlClockType_t, nvml.h): our name -> the pynvml constant.
CLOCK_DOMAINS = {
    "graphics": "NVML_CLOCK_GRAPHICS",
    "sm": "NVML_CLOCK_SM",
    "memory": "NVML_CLOCK_MEM",
    "video": "NVML_CLOCK_VIDEO",
}

# nvmlClocksEventReason* bits (nvml.h); names are the catalog's attribute values.
CLOCK_EVENT_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
}

# GPM metric constant (nvml.h, NVML_GPM_METRIC_*) -> GpmMetrics field.
GPM_FIELDS: dict[str, str] = {
    "NVML_GPM_METRIC_SM_UTIL": "sm_utilization",
    "NVML_GPM_METRIC_SM_OCCUPANCY": "sm_occupancy",
    "NVML_GPM_METRIC_ANY_TENSOR_UTIL": "tensor_utilization",
    "NVML_GPM_METRIC_DRAM_BW_UTIL": "dram_utilization",
    "NVML_GPM_METRIC_GRAPHICS_UTIL": "graphics_engine_utilization",
}

_ERROR_PREFIX = "NVML_ERROR_"
CAPABILITY_RECHECK_S = 600.0  # how long a NOT_SUPPORTED answer stands before the call is retried

# Answers that will not change by asking again: the device or driver lacks the feature. Any other
# error (UNKNOWN, TIMEOUT, a driver still loading) may be transient, and the call is worth
# repeating.
PERMANENT_ERRORS = frozenset({"NOT_SUPPORTED", "FUNCTION_NOT_FOUND"})


class GpuLost(Exception):
    """An NVML call answered GPU_IS_LOST: the GPU fell off the bus."""


ABSENT: Any = object()  # the call failed; the failure is recorded
EXPECTED: Any = object()  # an error the caller anticipated (NOT_FOUND for an empty MIG slot)


def error_names(nvml: Any) -> dict[int, str]:
    """Error code -> name without the ``NVML_ERROR_`` prefix, from the module's constants."""
    return {
        getattr(nvml, n): n.removeprefix(_ERROR_PREFIX)
        for n in dir(nvml)
        if n.startswith(_ERROR_PREFIX) and isinstance(getattr(nvml, n, None), int)
    }


def error_codes(nvml: Any) -> dict[str, int]:
    """Error name (without the prefix) -> code: the inverse of :func:`error_names`."""
    return {name: code for code, name in error_names(nvml).items()}


def error_name(names: dict[int, str], err: BaseException) -> str:
    """The name of an ``NVMLError``'s code, ``UNKNOWN`` for a code the table lacks."""
    return names.get(getattr(err, "value", -1), "UNKNOWN")


def gpm_metric_ids(nvml: Any) -> dict[int, str]:
    """GPM metric id -> GpmMetrics field, for the ids the module defines."""
    return {
        getattr(nvml, const): attr
        for const, attr in GPM_FIELDS.items()
        if isinstance(getattr(nvml, const, None), int)
    }


_CapabilityKey = tuple[str, str, tuple[int, ...]]


class Capabilities:
    """The calls each device answered NOT_SUPPORTED to, and until when that answer stands."""

    def __init__(self) -> None:
        self.now = 0.0  # the source's clock at the current cycle
        self._until: dict[_CapabilityKey, float] = {}

    @staticmethod
    def key(device: str, fn: str, args: tuple[Any, ...]) -> _CapabilityKey:
        # Integer arguments (clock domain, sensor, counter) select a field; handles do not.
        ints = tuple(a for a in args if isinstance(a, int) and not isinstance(a, bool))
        return device, fn, ints

    def lacks(self, key: _CapabilityKey) -> bool:
        until = self._until.get(key)
        return until is not None and self.now < until

    def unsupported(self, key: _CapabilityKey) -> None:
        self._until[key] = self.now + CAPABILITY_RECHECK_S

    def supported(self, key: _CapabilityKey) -> None:
        self._until.pop(key, None)


class Caller:
    """Calls NVML functions for one device, recording failures instead of raising them."""

    def __init__(
        self,
        nvml: Any,
        errors: list[SourceError],
        names: dict[int, str],
        device: str | None,
        capabilities: Capabilities | None = None,
    ) -> None:
        self._nvml = nvml
        self.errors = errors
        self._names = names
        self.device = device
        self._capabilities = capabilities if device is not None else None
        self.last_error: str | None = None  # the name of the most recent failure

    def __call__(self, fn: str, *args: Any, expected: tuple[str, ...] = ()) -> Any:
        capabilities = self._capabilities
        key = None
        if capabilities is not None:
            key = capabilities.key(self.device or "", fn, args)
            if capabilities.lacks(key):
                self.last_error = "NOT_SUPPORTED"
                return ABSENT
        try:
            result = getattr(self._nvml, fn)(*args)
        except self._nvml.NVMLError as err:
            name = error_name(self._names, err)
            if name in expected:
                return EXPECTED
            self.last_error = name
            if name == "NOT_SUPPORTED" and capabilities is not None and key is not None:
                capabilities.unsupported(key)
                return ABSENT
            self.errors.append(SourceError(SOURCE, fn, name, self.device))
            if name == "GPU_IS_LOST":
                raise GpuLost from err
            return ABSENT
        except AttributeError:
            self.last_error = "FUNCTION_NOT_FOUND"
            self.errors.append(SourceError(SOURCE, fn, "FUNCTION_NOT_FOUND", self.device))
            return ABSENT
        except Exception as err:  # a binding bug must not stop the cycle
            self.last_error = type(err).__name__
            self.errors.append(SourceError(SOURCE, fn, type(err).__name__, self.device))
            return ABSENT
        if capabilities is not None and key is not None:
            capabilities.supported(key)
        return result

    def record(self, call: str, code: int) -> str:
        """Record a failure NVML reported in a result rather than raised (field values); returns
        its name."""
        name = self._names.get(code, "UNKNOWN")
        self.errors.append(SourceError(SOURCE, call, name, self.device))
        return name

    def settled(self, value: Any) -> bool:
        """Whether ``value``, just returned, is an answer that asking again would not change: a
        value, an anticipated error, or a permanent one."""
        return value is not ABSENT or self.last_error in PERMANENT_ERRORS

    def for_device(self, device: str | None) -> Caller:
        return Caller(self._nvml, self.errors, self._names, device, self._capabilities)


def present(value: Any) -> bool:
    return value is not ABSENT and value is not EXPECTED and value is not None


def text(value: Any) -> str | None:
    if not present(value):
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def handle_key(handle: Any) -> int:
    """A device handle's identity: the address it points to (pynvml), else the object."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or id(handle)
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


def field_number(nvml: Any, value: Any) -> float:
    """The number in an ``nvmlFieldValue_t``, read through the member its ``valueType`` names."""
    kind = getattr(value, "valueType", None)
    member = {
        getattr(nvml, "NVML_VALUE_TYPE_DOUBLE", 0): "dVal",
        getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG", 2): "ulVal",
        getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", 3): "ullVal",
        getattr(nvml, "NVML_VALUE_TYPE_SIGNED_LONG_LONG", 4): "sllVal",
    }.get(kind, "uiVal")
    return float(getattr(value.value, member))
