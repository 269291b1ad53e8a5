"""The simulated driver installed as the ``pynvml`` module, and its wall-clock samples."""

from __future__ import annotations

import ctypes
import importlib
import sys

import pynvml
import pytest

from otel_gpu.simulate import SimulatedServer, at_cycle, load_scenario
from otel_gpu.simulate.fake_nvml import FakeNvml
from otel_gpu.simulate.nvml_module import C_SYMBOLS, install
from otel_gpu.sources.nvml import NvmlSource

REAL = pynvml


def test_install_puts_the_stand_in_in_sys_modules_and_undo_restores() -> None:
    with install("dgx-a100") as installed:
        module = importlib.import_module("pynvml")
        assert module is installed.module and module is not REAL
        module.nvmlInit()
        assert module.nvmlDeviceGetCount() == 8
        assert module.NVMLError is REAL.NVMLError
        assert module.c_nvmlMemory_t is REAL.c_nvmlMemory_t
        assert module.nvmlStructToFriendlyObject is REAL.nvmlStructToFriendlyObject
        with pytest.raises(REAL.NVMLError_FunctionNotFound):
            module.nvmlDeviceGetVgpuMetadata(module.nvmlDeviceGetHandleByIndex(0))
    assert sys.modules["pynvml"] is REAL


def test_undo_leaves_a_later_installation_alone() -> None:
    first = install("h200")
    second = install("dgx-a100")
    first.undo()  # not the one in place: nothing to restore
    assert sys.modules["pynvml"] is second.module
    second.undo()
    assert sys.modules["pynvml"] is first.module  # what was there before the second
    first.undo()
    sys.modules["pynvml"] = REAL
    with pytest.raises(TypeError):
        install(42)  # type: ignore[arg-type]


def test_the_production_source_reads_the_installed_module() -> None:
    with install("dgx-a100"):
        source = NvmlSource(gpm_warmup_s=0.0)  # imports pynvml on start()
        assert source.start()
        reading = source.read(0.0)
        source.close()
    assert len(reading.gpus) == 8 and reading.driver_version == "550.54.15"
    assert reading.errors == []


def test_c_symbols_follow_the_c_calling_convention() -> None:
    with install("dgx-a100") as installed:
        module = installed.module
        with pytest.raises(REAL.NVMLError_Uninitialized):
            module._nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo_v2")
        module.nvmlInit()
        handle = module.nvmlDeviceGetHandleByIndex(2)
        lookup = module._nvmlGetFunctionPointer
        with pytest.raises(REAL.NVMLError_FunctionNotFound):
            lookup("nvmlDeviceGetRunningProcessDetailList")

        count = ctypes.c_uint(0)
        fn = lookup("nvmlDeviceGetComputeRunningProcesses_v3")
        assert fn(handle, ctypes.byref(count), None) == REAL.NVML_ERROR_INSUFFICIENT_SIZE
        assert count.value == 1
        infos = (REAL.c_nvmlProcessInfo_v3_t * 3)()
        count.value = 3
        assert fn(handle, ctypes.byref(count), infos) == REAL.NVML_SUCCESS
        expected = installed.nvml.nvmlDeviceGetComputeRunningProcesses(handle)[0]
        assert count.value == 1 and infos[0].pid == expected.pid
        assert infos[0].usedGpuMemory == expected.usedGpuMemory

        empty = ctypes.c_uint(0)
        graphics = lookup("nvmlDeviceGetGraphicsRunningProcesses_v3")
        assert graphics(handle, ctypes.byref(empty), None) == REAL.NVML_SUCCESS
        assert empty.value == 0

        memory = REAL.c_nvmlMemory_v2_t()
        memory.version = REAL.nvmlMemory_v2
        assert lookup("nvmlDeviceGetMemoryInfo_v2")(handle, ctypes.byref(memory)) == 0
        direct = installed.nvml.nvmlDeviceGetMemoryInfo(handle)
        assert (memory.total, memory.used, memory.free) == (direct.total, direct.used,
                                                            direct.free)

        values = (REAL.c_nvmlFieldValue_t * 2)()
        values[0].fieldId = REAL.NVML_FI_DEV_MEMORY_TEMP
        values[1].fieldId = REAL.NVML_FI_DEV_NVLINK_LINK_COUNT
        fields = lookup("nvmlDeviceGetFieldValues")
        assert fields(handle, ctypes.c_int32(2), ctypes.byref(values)) == 0
        assert values[1].nvmlReturn == REAL.NVML_ERROR_NOT_SUPPORTED
        assert fields(handle, ctypes.c_int32(0), ctypes.byref(values)) == \
            REAL.NVML_ERROR_INVALID_ARGUMENT

        temp = ctypes.c_uint(0)
        assert lookup("nvmlDeviceGetTemperature")(
            handle, ctypes.c_uint(REAL.NVML_TEMPERATURE_GPU), ctypes.byref(temp)) == 0
        assert temp.value == installed.nvml.nvmlDeviceGetTemperature(
            handle, REAL.NVML_TEMPERATURE_GPU)
        model = ctypes.c_uint()
        assert lookup("nvmlDeviceGetDriverModel_v2")(handle, ctypes.byref(model),
                                                     ctypes.byref(model)) == \
            REAL.NVML_ERROR_NOT_SUPPORTED
        bad = lookup("nvmlDeviceGetMemoryInfo")(object(), ctypes.byref(REAL.c_nvmlMemory_t()))
        assert bad == REAL.NVML_ERROR_INVALID_ARGUMENT
    assert len(set(C_SYMBOLS)) == len(C_SYMBOLS)


def test_identity_and_configuration_calls_answer_like_the_real_binding() -> None:
    nvml = FakeNvml(load_scenario("dgx-a100"))
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(3)
    pci = nvml.nvmlDeviceGetPciInfo(handle)
    assert isinstance(pci, REAL.nvmlPciInfo_t)
    assert nvml.nvmlDeviceGetHandleByPciBusId(pci.busId) is handle
    model = nvml.scenario.gpus[3].model
    assert nvml.nvmlDeviceGetMaxClockInfo(handle, REAL.NVML_CLOCK_SM) == model.max_clocks.sm
    limit = nvml.nvmlDeviceGetPowerManagementLimit(handle)
    assert limit == nvml.nvmlDeviceGetEnforcedPowerLimit(handle)
    assert nvml.nvmlDeviceGetGraphicsRunningProcesses(handle) == []
    assert nvml.nvmlDeviceGetPersistenceMode(handle) == REAL.NVML_FEATURE_ENABLED
    assert nvml.nvmlDeviceGetPerformanceState(handle) == REAL.NVML_PSTATE_0
    assert nvml.nvmlDeviceGetComputeMode(handle) == REAL.NVML_COMPUTEMODE_DEFAULT
    assert nvml.nvmlDeviceGetCudaComputeCapability(handle) == (8, 0)
    assert nvml.nvmlSystemGetCudaDriverVersion() == 12040
    bar1 = nvml.nvmlDeviceGetBAR1MemoryInfo(handle)
    assert bar1.bar1Total >= model.memory_total_bytes and bar1.bar1Used + bar1.bar1Free == \
        bar1.bar1Total
    with pytest.raises(REAL.NVMLError_NotSupported):
        nvml.nvmlDeviceGetCurrentDriverModel(handle)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(nvml.nvmlDeviceGetHandleByIndex(0), 0)
    with pytest.raises(REAL.NVMLError_NotSupported):
        nvml.nvmlDeviceGetPciInfo(mig)  # a physical-GPU query
    hopper = FakeNvml(load_scenario("h200"))
    hopper.nvmlInit()
    assert hopper.nvmlDeviceGetCudaComputeCapability(hopper.nvmlDeviceGetHandleByIndex(0)) == \
        (9, 0)


def test_samples_answer_a_caller_that_asks_by_wall_clock() -> None:
    nvml = FakeNvml(load_scenario("dgx-a100"))
    nvml.nvmlInit()
    now = [1_800_000_000.0]
    nvml.wall_clock = lambda: now[0]
    handle = nvml.nvmlDeviceGetHandleByIndex(2)
    process = nvml.scenario.gpus[2].processes[0]
    expected_sm = round(at_cycle(process.sm_utilization, 0) * 100)
    assert expected_sm > 0
    for _ in range(3):  # a monitor asking every 5 s for the last second, cycle never advancing
        now[0] += 5.0
        last_second = int(now[0] * 1e6) - 1_000_000
        (sample,) = nvml.nvmlDeviceGetProcessUtilization(handle, last_second)
        assert sample.smUtil == expected_sm and sample.timeStamp > last_second
        assert sample.timeStamp <= int(now[0] * 1e6)
        (info,) = nvml.nvmlDeviceGetProcessesUtilizationInfo(handle, last_second)
        assert (info.pid, info.smUtil, info.timeStamp) == (sample.pid, sample.smUtil,
                                                           sample.timeStamp)
    with pytest.raises(REAL.NVMLError_NotFound):  # nothing newer than now
        nvml.nvmlDeviceGetProcessUtilization(handle, int(now[0] * 1e6))


def test_the_adapter_gets_each_cycles_sample_under_simulated_time() -> None:
    server = SimulatedServer(load_scenario("dgx-a100"))
    server.nvml.wall_clock = lambda: 1_800_000_000.0  # cycles far faster than the sampling
    source = NvmlSource(server.nvml, gpm_warmup_s=0.0)
    assert source.start()
    process = server.scenario.gpus[2].processes[0]
    for cycle in range(4):
        server.begin_cycle(cycle)
        gpu2 = source.read(server.clock(cycle)).gpus[2]
        (seen,) = gpu2.processes
        assert seen.sm_utilization == pytest.approx(
            round(at_cycle(process.sm_utilization, cycle) * 100) / 100)
    source.close()
