"""The simulated driver as the ``pynvml`` module itself, for code that imports it (nvitop).

:func:`install` puts a module named ``pynvml`` into ``sys.modules`` whose NVML functions answer
from a :class:`~otel_gpu.simulate.fake_nvml.FakeNvml`; everything else (constants, structures,
``NVMLError`` classes, helpers such as ``nvmlStructToFriendlyObject``) is the real module's. A
real NVML function the stand-in does not serve raises FUNCTION_NOT_FOUND, as on a driver without
that symbol.

Some callers (nvitop's ``libnvml``) bypass the Python functions and call the C symbols through
``_nvmlGetFunctionPointer``; the installed module answers that lookup with Python callables that
take the C arguments (``ctypes.byref`` outputs, caller-allocated arrays) and return an
``nvmlReturn_t`` code, for the symbols listed in ``C_SYMBOLS``. Any other symbol raises
FUNCTION_NOT_FOUND from the lookup, which is how such callers probe for optional APIs.

Install before the caller first imports ``pynvml`` (``from pynvml import *`` copies the
functions at import time), and undo after it is done::

    with install(FakeNvml(load_scenario("dgx-a100"))) as installed:
        import nvitop            # sees the simulated server
        installed.nvml.begin_cycle(3)
"""

from __future__ import annotations

import ctypes
import sys
import types
from collections.abc import Callable
from typing import Any

import pynvml as _real

from otel_gpu.simulate.fake_nvml import FakeNvml
from otel_gpu.simulate.scenario import load_scenario
from otel_gpu.simulate.spec import Scenario

C_SYMBOLS: tuple[str, ...] = (
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV", "nvmlDeviceGetDriverModel",
    "nvmlDeviceGetDriverModel_v2",
    *(f"nvmlDeviceGet{kind}RunningProcesses{suffix}"
      for kind in ("Compute", "Graphics", "MPSCompute") for suffix in ("", "_v2", "_v3")),
)
_HELPERS = frozenset({"nvmlExceptionClass", "nvmlStructToFriendlyObject",
                      "nvmlFriendlyObjectToStruct"})


def _target(arg: Any) -> Any:
    """What a ``ctypes.byref(x)`` argument points to: ``x``."""
    return getattr(arg, "_obj", arg)


def _fields(struct: Any) -> set[str]:
    return {name for name, *_ in getattr(struct, "_fields_", ())}


class _Symbols:
    """The C symbols of one stand-in, as callables with the C calling convention."""

    def __init__(self, nvml: FakeNvml) -> None:
        self.nvml = nvml
        table: dict[str, Callable[..., None]] = {
            "nvmlDeviceGetMemoryInfo": self._memory,
            "nvmlDeviceGetMemoryInfo_v2": self._memory,
            "nvmlDeviceGetFieldValues": self._field_values,
            "nvmlDeviceGetTemperature": self._temperature,
            "nvmlDeviceGetTemperatureV": self._temperature_v,
            "nvmlDeviceGetDriverModel": self._driver_model,
            "nvmlDeviceGetDriverModel_v2": self._driver_model,
        }
        for kind in ("Compute", "Graphics", "MPSCompute"):
            method = getattr(nvml, f"nvmlDeviceGet{kind}RunningProcesses")
            for suffix in ("", "_v2", "_v3"):
                table[f"nvmlDeviceGet{kind}RunningProcesses{suffix}"] = self._processes(method)
        assert set(table) == set(C_SYMBOLS)
        self.table = table

    def lookup(self, name: str) -> Callable[..., int]:
        if self.nvml._init_count == 0:
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)
        impl = self.table.get(name)
        if impl is None:
            raise _real.NVMLError(_real.NVML_ERROR_FUNCTION_NOT_FOUND)

        def symbol(*args: Any) -> int:
            try:
                impl(*args)
            except _real.NVMLError as err:
                return int(err.value)
            return _real.NVML_SUCCESS

        symbol.__name__ = name
        return symbol

    def _processes(self, method: Callable[[Any], list[Any]]) -> Callable[..., None]:
        def call(handle: Any, count_ref: Any, infos: Any) -> None:
            processes = method(handle)
            count = _target(count_ref)
            if infos is None or count.value < len(processes):
                wanted = count.value
                count.value = len(processes)
                if processes and (infos is None or wanted < len(processes)):
                    raise _real.NVMLError(_real.NVML_ERROR_INSUFFICIENT_SIZE)
                return
            for entry, process in zip(infos, processes, strict=False):
                names = _fields(entry)
                entry.pid = process.pid
                entry.usedGpuMemory = process.usedGpuMemory
                if "gpuInstanceId" in names:
                    entry.gpuInstanceId = process.gpuInstanceId
                    entry.computeInstanceId = process.computeInstanceId
            count.value = len(processes)

        return call

    def _memory(self, handle: Any, memory_ref: Any) -> None:
        memory = _target(memory_ref)
        version = getattr(memory, "version", None) if "version" in _fields(memory) else None
        info = self.nvml.nvmlDeviceGetMemoryInfo(handle, version or None)
        for name in _fields(memory) - {"version"}:
            setattr(memory, name, getattr(info, name, 0))

    def _field_values(self, handle: Any, count: Any, values_ref: Any) -> None:
        values = _target(values_ref)
        n = int(getattr(count, "value", count))
        if n <= 0:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        requested = [(values[i].fieldId, values[i].scopeId) for i in range(n)]
        answers = self.nvml.nvmlDeviceGetFieldValues(handle, requested)
        for i in range(n):
            ctypes.memmove(ctypes.addressof(values[i]), ctypes.addressof(answers[i]),
                           ctypes.sizeof(answers[i]))

    def _temperature(self, handle: Any, sensor: Any, temp_ref: Any) -> None:
        value = self.nvml.nvmlDeviceGetTemperature(handle, int(getattr(sensor, "value", sensor)))
        _target(temp_ref).value = value

    def _temperature_v(self, handle: Any, temp_ref: Any) -> None:
        temp = _target(temp_ref)
        temp.temperature = self.nvml.nvmlDeviceGetTemperature(handle, int(temp.sensorType))

    def _driver_model(self, handle: Any, *outputs: Any) -> None:
        self.nvml.nvmlDeviceGetDriverModel(handle)


def build_module(nvml: FakeNvml) -> types.ModuleType:
    """A ``pynvml`` module whose NVML functions and C symbols answer from ``nvml``."""
    module = types.ModuleType("pynvml", f"pynvml served by the simulation {nvml.scenario.name}")
    for name, value in vars(_real).items():
        if not (name.startswith("__") and name.endswith("__")):
            setattr(module, name, value)
    for name, value in vars(_real).items():
        if name.startswith("nvml") and isinstance(value, types.FunctionType) \
                and name not in _HELPERS:
            setattr(module, name, getattr(nvml, name))  # served, or FUNCTION_NOT_FOUND
    for name in dir(type(nvml)):
        if name.startswith("nvml") and name not in _HELPERS and callable(getattr(nvml, name)) \
                and not isinstance(getattr(type(nvml), name), type):
            setattr(module, name, getattr(nvml, name))
    module._nvmlGetFunctionPointer = _Symbols(nvml).lookup  # type: ignore[attr-defined]
    module.__file__ = __file__
    return module


class InstalledNvml:
    """The stand-in in ``sys.modules["pynvml"]``; ``undo()`` (or leaving the ``with`` block)
    puts back whatever was there before."""

    def __init__(self, nvml: FakeNvml, module: types.ModuleType) -> None:
        self.nvml = nvml
        self.module = module
        self._previous = sys.modules.get("pynvml")
        self._installed = True
        sys.modules["pynvml"] = module

    def undo(self) -> None:
        if not self._installed:
            return
        self._installed = False
        if sys.modules.get("pynvml") is self.module:
            if self._previous is None:
                del sys.modules["pynvml"]
            else:
                sys.modules["pynvml"] = self._previous

    def __enter__(self) -> InstalledNvml:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def install(nvml: FakeNvml | Scenario | str, interval_s: float = 10.0) -> InstalledNvml:
    """Make ``import pynvml`` give the simulated driver ``nvml`` (a stand-in, a scenario, or a
    built-in scenario's name or file, served with ``interval_s`` between cycles)."""
    if isinstance(nvml, str):
        nvml = load_scenario(nvml)
    if isinstance(nvml, Scenario):
        nvml = FakeNvml(nvml, interval_s=interval_s)
    if not isinstance(nvml, FakeNvml):
        raise TypeError(f"install() takes a FakeNvml, a Scenario or a scenario name, not {nvml!r}")
    return InstalledNvml(nvml, build_module(nvml))
