"""The simulated driver answers with real pynvml's names, shapes, units and errors."""

from __future__ import annotations

import textwrap
from itertools import pairwise
from pathlib import Path

import pynvml
import pytest

from otel_gpu.simulate import SimulatedServer, load_scenario
from otel_gpu.simulate.fake_nvml import FakeNvml

FIXTURES = Path(__file__).resolve().parents[1] / "scenarios"
NO_ID = 0xFFFFFFFF


def server(spec: str, interval_s: float = 10.0) -> SimulatedServer:
    if not spec.endswith(".yaml") and (FIXTURES / f"{spec}.yaml").exists():
        spec = str(FIXTURES / f"{spec}.yaml")
    srv = SimulatedServer(load_scenario(spec), interval_s=interval_s)
    srv.nvml.nvmlInit()
    srv.begin_cycle(0)
    return srv


def inline(tmp_path: Path, text: str) -> SimulatedServer:
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(text))
    return server(str(path))


def raises(code: int, fn, *args):
    with pytest.raises(pynvml.NVMLError) as caught:
        fn(*args)
    assert caught.value.value == code
    assert isinstance(caught.value, pynvml.nvmlExceptionClass(code))
    return caught.value


# --- the module surface -----------------------------------------------------------------------


def test_constants_and_errors_are_the_real_ones() -> None:
    nvml = server("h200").nvml
    assert nvml.NVMLError is pynvml.NVMLError
    assert nvml.NVMLError_NotSupported is pynvml.NVMLError_NotSupported
    assert nvml.NVML_ERROR_GPU_IS_LOST == pynvml.NVML_ERROR_GPU_IS_LOST
    assert nvml.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU
    assert nvml.nvmlEventTypeXidCriticalError == pynvml.nvmlEventTypeXidCriticalError
    assert nvml.nvmlClocksEventReasonSwPowerCap == 0x4
    names = {n for n in dir(nvml) if n.startswith("NVML_ERROR_")}
    assert names == {n for n in dir(pynvml) if n.startswith("NVML_ERROR_")}


def test_calls_before_init_raise_uninitialized() -> None:
    nvml = FakeNvml(load_scenario("h200"))
    err = raises(pynvml.NVML_ERROR_UNINITIALIZED, nvml.nvmlDeviceGetCount)
    assert isinstance(err, pynvml.NVMLError_Uninitialized)
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetCount() == 1
    nvml.nvmlShutdown()
    raises(pynvml.NVML_ERROR_UNINITIALIZED, nvml.nvmlDeviceGetHandleByIndex, 0)


def test_function_not_served_is_function_not_found() -> None:
    nvml = server("h200").nvml
    raises(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, nvml.nvmlDeviceGetBoardPartNumber, None)
    with pytest.raises(AttributeError):
        nvml.not_an_nvml_name  # noqa: B018


# --- identity ---------------------------------------------------------------------------------


def test_handles_and_identity() -> None:
    srv = server("dgx-a100")
    nvml, scenario = srv.nvml, srv.scenario
    assert nvml.nvmlSystemGetDriverVersion() == "550.54.15"
    assert nvml.nvmlDeviceGetCount() == 8
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
    assert len({id(h) for h in handles}) == 8
    assert nvml.nvmlDeviceGetHandleByIndex(3) is handles[3]
    assert [nvml.nvmlDeviceGetUUID(h) for h in handles] == [g.uuid for g in scenario.gpus]
    assert nvml.nvmlDeviceGetName(handles[0]) == "NVIDIA A100-SXM4-40GB"
    assert nvml.nvmlDeviceGetArchitecture(handles[0]) == pynvml.NVML_DEVICE_ARCH_AMPERE
    serial = nvml.nvmlDeviceGetSerial(handles[0])
    assert isinstance(serial, str) and serial.isdigit()
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceGetHandleByIndex, 8)
    assert nvml.nvmlDeviceGetHandleByUUID(scenario.gpus[5].uuid) is handles[5]
    names = {
        "dgx-h100-mig": ("NVIDIA H100 80GB HBM3", pynvml.NVML_DEVICE_ARCH_HOPPER),
        "h200": ("NVIDIA H200", pynvml.NVML_DEVICE_ARCH_HOPPER),
    }
    for spec, (name, arch) in names.items():
        other = server(spec).nvml
        handle = other.nvmlDeviceGetHandleByIndex(0)
        assert (other.nvmlDeviceGetName(handle), other.nvmlDeviceGetArchitecture(handle)) == (
            name,
            arch,
        )


def test_handles_of_another_server_are_rejected() -> None:
    a, b = server("h200").nvml, server("h200").nvml
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, a.nvmlDeviceGetUUID, b.nvmlDeviceGetHandleByIndex(0))


# --- telemetry of a whole GPU -----------------------------------------------------------------


def test_utilization_memory_power_temperature() -> None:
    srv = server("dgx-a100")
    nvml = srv.nvml
    gpu2 = nvml.nvmlDeviceGetHandleByIndex(2)
    rates = nvml.nvmlDeviceGetUtilizationRates(gpu2)
    assert (rates.gpu, rates.memory) == (93, 41)
    memory = nvml.nvmlDeviceGetMemoryInfo(gpu2)
    assert memory.total == 40960 * 1024 * 1024
    assert memory.used == 36507222016  # the processes' memory when the scenario gives none
    assert memory.free == memory.total - memory.used
    assert nvml.nvmlDeviceGetMemoryInfo(gpu2, pynvml.nvmlMemory_v2).reserved == 0
    assert nvml.nvmlDeviceGetPowerUsage(gpu2) == 352_000
    assert nvml.nvmlDeviceGetEnforcedPowerLimit(gpu2) == 400_000
    assert nvml.nvmlDeviceGetTemperature(gpu2, pynvml.NVML_TEMPERATURE_GPU) == 66
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceGetTemperature, gpu2, 7)
    srv.begin_cycle(1)
    assert nvml.nvmlDeviceGetPowerUsage(gpu2) == 367_000
    assert nvml.nvmlDeviceGetUtilizationRates(gpu2).gpu == 95
    assert nvml.nvmlDeviceGetEncoderUtilization(gpu2) == [0, 167000]
    assert nvml.nvmlDeviceGetDecoderUtilization(gpu2)[0] == 0


def test_energy_grows_with_power_times_interval() -> None:
    srv = server("dgx-a100", interval_s=15.0)
    nvml = srv.nvml
    gpu2 = nvml.nvmlDeviceGetHandleByIndex(2)
    readings = []
    for cycle in range(4):
        srv.begin_cycle(cycle)
        readings.append(nvml.nvmlDeviceGetTotalEnergyConsumption(gpu2))
    powers_w = [367, 344, 371]  # cycles 1..3 of the scenario
    deltas = [b - a for a, b in pairwise(readings)]
    assert deltas == [round(p * 15.0 * 1000) for p in powers_w]
    assert readings[0] > 0


def test_field_values_memory_temperature() -> None:
    nvml = server("dgx-a100").nvml
    values = nvml.nvmlDeviceGetFieldValues(
        nvml.nvmlDeviceGetHandleByIndex(2), [pynvml.NVML_FI_DEV_MEMORY_TEMP]
    )
    assert len(values) == 1
    value = values[0]
    assert value.fieldId == pynvml.NVML_FI_DEV_MEMORY_TEMP
    assert value.nvmlReturn == pynvml.NVML_SUCCESS
    assert value.valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    assert value.value.uiVal == 74 and value.value.ullVal == 74

    bare = server("lost-gpu").nvml
    values = bare.nvmlDeviceGetFieldValues(
        bare.nvmlDeviceGetHandleByIndex(0), [pynvml.NVML_FI_DEV_MEMORY_TEMP]
    )
    assert values[0].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED


def test_clocks_and_event_reasons(tmp_path: Path) -> None:
    srv = inline(
        tmp_path,
        """
        gpus:
          - model: A100-SXM4-40GB
            utilization: 0.9
            clocks_mhz: {sm: [1410, 1275]}
            clocks_event_reasons: [[], [sw_power_cap, hw_power_brake_slowdown]]
          - model: A100-SXM4-40GB
        """,
    )
    nvml = srv.nvml
    busy, idle = nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetClockInfo(busy, pynvml.NVML_CLOCK_SM) == 1410
    assert nvml.nvmlDeviceGetClockInfo(busy, pynvml.NVML_CLOCK_MEM) == 1215
    assert nvml.nvmlDeviceGetClockInfo(idle, pynvml.NVML_CLOCK_GRAPHICS) == 210
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(busy) == 0
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(idle) == pynvml.nvmlClocksEventReasonGpuIdle
    srv.begin_cycle(1)
    assert nvml.nvmlDeviceGetClockInfo(busy, pynvml.NVML_CLOCK_SM) == 1275
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(busy) == (
        pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
    )
    supported = nvml.nvmlDeviceGetSupportedClocksEventReasons(busy)
    assert supported & pynvml.nvmlClocksEventReasonHwThermalSlowdown
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceGetClockInfo, busy, 9)


def test_health_counters(tmp_path: Path) -> None:
    srv = inline(
        tmp_path,
        """
        gpus:
          - model: H100-SXM5-80GB
            ecc_errors: {corrected: [3, 4], uncorrected: 1}
            remapped_rows: {corrected: 2, uncorrected: 1, pending: [false, true], failed: false}
            pcie_tx_bytes_per_s: 10240000
            pcie_rx_bytes_per_s: [2048, 4096]
        """,
    )
    nvml = srv.nvml
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    corrected = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
    uncorrected = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    assert nvml.nvmlDeviceGetTotalEccErrors(h, corrected, pynvml.NVML_AGGREGATE_ECC) == 3
    assert nvml.nvmlDeviceGetTotalEccErrors(h, uncorrected, pynvml.NVML_AGGREGATE_ECC) == 1
    assert nvml.nvmlDeviceGetRemappedRows(h) == (2, 1, 0, 0)
    assert nvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_TX_BYTES) == 10000
    assert nvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_RX_BYTES) == 2
    srv.begin_cycle(1)
    assert nvml.nvmlDeviceGetTotalEccErrors(h, corrected, pynvml.NVML_AGGREGATE_ECC) == 4
    assert nvml.nvmlDeviceGetRemappedRows(h) == (2, 1, 1, 0)
    assert nvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_RX_BYTES) == 4
    err = raises(pynvml.NVML_ERROR_NOT_SUPPORTED, nvml.nvmlDeviceGetFanSpeed, h)
    assert isinstance(err, pynvml.NVMLError_NotSupported)


# --- processes --------------------------------------------------------------------------------


def test_processes_on_a_whole_gpu() -> None:
    srv = server("dgx-a100")
    nvml = srv.nvml
    nvml.wall_clock = lambda: 1_800_000_000.0  # samples are stamped by the wall clock
    gpu4 = nvml.nvmlDeviceGetHandleByIndex(4)
    (proc,) = nvml.nvmlDeviceGetComputeRunningProcesses(gpu4)
    assert (proc.pid, proc.usedGpuMemory) == (5120, 11811160064)
    assert (proc.gpuInstanceId, proc.computeInstanceId) == (NO_ID, NO_ID)
    (sample,) = nvml.nvmlDeviceGetProcessUtilization(gpu4, 0)
    assert (sample.pid, sample.smUtil, sample.memUtil) == (5120, 33, 11)
    assert sample.timeStamp == 1_800_000_000_000_000 - 1_800_000_000_000_000 % 167_000
    raises(
        pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetProcessUtilization, gpu4, sample.timeStamp
    )
    srv.begin_cycle(1)
    (later,) = nvml.nvmlDeviceGetProcessUtilization(gpu4, sample.timeStamp)
    assert later.smUtil == 20 and later.timeStamp > sample.timeStamp
    idle = nvml.nvmlDeviceGetHandleByIndex(7)
    assert nvml.nvmlDeviceGetComputeRunningProcesses(idle) == []
    raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetProcessUtilization, idle, 0)


def test_process_running_flag(tmp_path: Path) -> None:
    srv = inline(
        tmp_path,
        """
        gpus:
          - model: A100-SXM4-80GB
            processes: [{pid: 11, running: [false, true, false]}, {pid: 12}]
        """,
    )
    nvml = srv.nvml
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    pids = []
    for cycle in range(3):
        srv.begin_cycle(cycle)
        pids.append(sorted(p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(h)))
    assert pids == [[12], [11, 12], [12]]


# --- MIG --------------------------------------------------------------------------------------


def test_mig_enabled_gpu_does_not_report_utilization() -> None:
    nvml = server("dgx-a100").nvml
    gpu0 = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetMigMode(gpu0) == [1, 1]
    for fn, args in [
        (nvml.nvmlDeviceGetUtilizationRates, ()),
        (nvml.nvmlDeviceGetEncoderUtilization, ()),
        (nvml.nvmlDeviceGetDecoderUtilization, ()),
        (nvml.nvmlDeviceGetProcessUtilization, (0,)),
        (nvml.nvmlDeviceGetRemappedRows, ()),
    ]:
        err = raises(pynvml.NVML_ERROR_NOT_SUPPORTED, fn, gpu0, *args)
        assert isinstance(err, pynvml.NVMLError_NotSupported)
    assert nvml.nvmlDeviceGetPowerUsage(gpu0) == 168_000  # physical readings still work
    whole = nvml.nvmlDeviceGetHandleByIndex(2)
    assert nvml.nvmlDeviceGetMigMode(whole) == [0, 0]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(whole) == 0


def test_mig_devices() -> None:
    srv = server("dgx-a100")
    nvml, spec = srv.nvml, srv.scenario.gpus[0]
    gpu0 = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(gpu0) == 7
    migs = [nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu0, j) for j in range(4)]
    raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetMigDeviceHandleByIndex, gpu0, 4)
    assert len({id(m) for m in migs}) == 4 and all(m is not gpu0 for m in migs)
    assert nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu0, 1) is migs[1]
    layout = spec.mig.layouts[0]
    assert [nvml.nvmlDeviceGetUUID(m) for m in migs] == [i.uuid for i in layout.instances]
    assert nvml.nvmlDeviceGetName(migs[0]) == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
    assert nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migs[2]) is gpu0
    assert bool(nvml.nvmlDeviceIsMigDeviceHandle(migs[2]))
    assert not bool(nvml.nvmlDeviceIsMigDeviceHandle(gpu0))

    gi_ids = [nvml.nvmlDeviceGetGpuInstanceId(m) for m in migs]
    assert gi_ids == [2, 3, 9, 10]  # by placement: 3g at 4, 2g at 0, 1g at 2 and 3; not 0, 1, 2, 3
    assert {nvml.nvmlDeviceGetComputeInstanceId(m) for m in migs} == {0}
    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, nvml.nvmlDeviceGetGpuInstanceId, gpu0)

    info = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceGetGpuInstanceById(gpu0, gi_ids[0]))
    assert (info.id, info.profileId) == (gi_ids[0], 9)
    assert (info.placement.start, info.placement.size) == (4, 4)
    assert info.device is gpu0
    raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetGpuInstanceById, gpu0, 14)

    attrs = nvml.nvmlDeviceGetAttributes(migs[1])
    assert (attrs.gpuInstanceSliceCount, attrs.computeInstanceSliceCount) == (2, 2)
    assert (attrs.multiprocessorCount, attrs.memorySizeMB) == (28, 9984)

    memory = nvml.nvmlDeviceGetMemoryInfo(migs[0])
    assert memory.total == 20096 * 1024 * 1024 and memory.used == 15032385536
    assert nvml.nvmlDeviceGetMemoryInfo(migs[3]).used == 0
    parent = nvml.nvmlDeviceGetMemoryInfo(gpu0)
    assert parent.used == 15032385536 + 6979321856 + 2147483648

    everything = nvml.nvmlDeviceGetComputeRunningProcesses(gpu0)
    assert sorted(p.pid for p in everything) == [5301, 6001, 7101]
    (on_mig0,) = nvml.nvmlDeviceGetComputeRunningProcesses(migs[0])
    assert (on_mig0.pid, on_mig0.gpuInstanceId, on_mig0.computeInstanceId) == (6001, gi_ids[0], 0)
    assert nvml.nvmlDeviceGetComputeRunningProcesses(migs[3]) == []

    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, nvml.nvmlDeviceGetPowerUsage, migs[0])


def test_reconfiguration_changes_handles_and_uuids() -> None:
    srv = server("mig-reconfigure")
    nvml = srv.nvml
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    srv.begin_cycle(1)
    old = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    old_uuid = nvml.nvmlDeviceGetUUID(old)
    old_gi = nvml.nvmlDeviceGetGpuInstanceById(gpu, nvml.nvmlDeviceGetGpuInstanceId(old))
    assert nvml.nvmlDeviceGetMemoryInfo(old).used == 5368709120
    assert [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(gpu)] == [400, 401]

    srv.begin_cycle(2)
    new = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    assert new is not old
    assert nvml.nvmlDeviceGetUUID(new) != old_uuid
    assert nvml.nvmlDeviceGetName(new) == "NVIDIA A100-SXM4-40GB MIG 7g.40gb"
    raises(pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlDeviceGetMigDeviceHandleByIndex, gpu, 1)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlDeviceGetUUID, old)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlGpuInstanceGetInfo, old_gi)
    gi = nvml.nvmlDeviceGetGpuInstanceId(new)
    assert gi == 0
    info = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceGetGpuInstanceById(gpu, gi))
    assert (info.profileId, info.placement.start, info.placement.size) == (0, 0, 8)
    (proc,) = nvml.nvmlDeviceGetComputeRunningProcesses(new)
    assert (proc.pid, proc.gpuInstanceId) == (501, 0)
    srv.begin_cycle(3)
    assert nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0) is new


def test_mig_pending_mode(tmp_path: Path) -> None:
    srv = inline(tmp_path, "gpus: [{model: H100-SXM5-80GB, mig_pending: [false, true]}]\n")
    nvml = srv.nvml
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 0]
    srv.begin_cycle(1)
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 1]


# --- faults -----------------------------------------------------------------------------------


def test_injected_error_at_listed_cycles_only() -> None:
    srv = server("power-not-supported")
    nvml = srv.nvml
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    for cycle in (0, 1):
        srv.begin_cycle(cycle)
        err = raises(pynvml.NVML_ERROR_NOT_SUPPORTED, nvml.nvmlDeviceGetPowerUsage, h)
        assert isinstance(err, pynvml.NVMLError_NotSupported)
        assert nvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) > 0
    srv.begin_cycle(2)
    assert nvml.nvmlDeviceGetPowerUsage(h) == 320_000


def test_lost_gpu_stays_lost() -> None:
    srv = server("lost-gpu")
    nvml = srv.nvml
    srv.begin_cycle(1)
    lost = nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetPowerUsage(lost) == 270_000
    for cycle in (2, 3, 10):
        srv.begin_cycle(cycle)
        for fn, args in [
            (nvml.nvmlDeviceGetHandleByIndex, (1,)),
            (nvml.nvmlDeviceGetUUID, (lost,)),
            (nvml.nvmlDeviceGetPowerUsage, (lost,)),
            (nvml.nvmlDeviceGetComputeRunningProcesses, (lost,)),
        ]:
            err = raises(pynvml.NVML_ERROR_GPU_IS_LOST, fn, *args)
            assert isinstance(err, pynvml.NVMLError_GpuIsLost)
        healthy = nvml.nvmlDeviceGetHandleByIndex(0)
        assert nvml.nvmlDeviceGetPowerUsage(healthy) == 250_000
        assert nvml.nvmlDeviceGetCount() == 2


def test_fault_on_a_mig_device_and_wildcard(tmp_path: Path) -> None:
    srv = inline(
        tmp_path,
        """
        gpus:
          - model: A100-SXM4-40GB
            mig: {instances: [{profile: 7g.40gb}]}
            faults:
              - {call: nvmlDeviceGetMemoryInfo, error: NO_PERMISSION}
              - {call: "*", error: UNKNOWN, cycles: 3}
        """,
    )
    nvml = srv.nvml
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    err = raises(pynvml.NVML_ERROR_NO_PERMISSION, nvml.nvmlDeviceGetMemoryInfo, mig)
    assert isinstance(err, pynvml.NVMLError_NoPermission)
    raises(pynvml.NVML_ERROR_NO_PERMISSION, nvml.nvmlDeviceGetMemoryInfo, gpu)
    srv.begin_cycle(3)
    raises(pynvml.NVML_ERROR_UNKNOWN, nvml.nvmlDeviceGetHandleByIndex, 0)
    raises(pynvml.NVML_ERROR_UNKNOWN, nvml.nvmlDeviceGetUUID, mig)
    srv.begin_cycle(4)
    assert nvml.nvmlDeviceGetUUID(mig).startswith("MIG-")


# --- Xid events -------------------------------------------------------------------------------


def test_xid_event_delivered_once_then_timeout() -> None:
    srv = server("xid-79")
    nvml = srv.nvml
    event_set = nvml.nvmlEventSetCreate()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
    for h in handles:
        nvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, event_set)
    err = raises(pynvml.NVML_ERROR_TIMEOUT, nvml.nvmlEventSetWait_v2, event_set, 0)
    assert isinstance(err, pynvml.NVMLError_Timeout)
    srv.begin_cycle(1)
    data = nvml.nvmlEventSetWait_v2(event_set, 1000)
    assert data.device is handles[0]
    assert (data.eventType, data.eventData) == (pynvml.nvmlEventTypeXidCriticalError, 79)
    assert (data.gpuInstanceId, data.computeInstanceId) == (NO_ID, NO_ID)
    raises(pynvml.NVML_ERROR_TIMEOUT, nvml.nvmlEventSetWait_v2, event_set, 1000)
    srv.begin_cycle(2)
    raises(pynvml.NVML_ERROR_TIMEOUT, nvml.nvmlEventSetWait_v2, event_set, 1000)
    nvml.nvmlEventSetFree(event_set)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlEventSetWait_v2, event_set, 0)


def test_events_before_registration_are_not_recorded() -> None:
    srv = server("xid-79")
    nvml = srv.nvml
    srv.begin_cycle(2)
    event_set = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(
        nvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeXidCriticalError, event_set
    )
    raises(pynvml.NVML_ERROR_TIMEOUT, nvml.nvmlEventSetWait_v2, event_set, 0)


def test_events_cannot_be_registered_on_a_mig_device() -> None:
    nvml = server("dgx-a100").nvml
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(nvml.nvmlDeviceGetHandleByIndex(0), 0)
    raises(
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        nvml.nvmlDeviceRegisterEvents,
        mig,
        pynvml.nvmlEventTypeXidCriticalError,
        nvml.nvmlEventSetCreate(),
    )


# --- GPM --------------------------------------------------------------------------------------


def gpm_request(nvml: FakeNvml, first, second):
    request = nvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.sample1, request.sample2 = first, second
    ids = [
        pynvml.NVML_GPM_METRIC_SM_UTIL,
        pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
        pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL,
        pynvml.NVML_GPM_METRIC_FP64_UTIL,
    ]
    request.numMetrics = len(ids)
    for i, metric_id in enumerate(ids):
        request.metrics[i].metricId = metric_id
    return request


def test_gpm_not_on_ampere() -> None:
    nvml = server("dgx-a100").nvml
    h = nvml.nvmlDeviceGetHandleByIndex(2)
    assert nvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 0
    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, nvml.nvmlGpmSampleGet, h, nvml.nvmlGpmSampleAlloc())


def test_gpm_metrics_on_a_whole_gpu() -> None:
    srv = server("h200")
    nvml = srv.nvml
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 1
    first = nvml.nvmlGpmSampleGet(h, nvml.nvmlGpmSampleAlloc())
    srv.begin_cycle(1)
    second = nvml.nvmlGpmSampleAlloc()
    assert nvml.nvmlGpmSampleGet(h, second) is second
    result = nvml.nvmlGpmMetricsGet(gpm_request(nvml, first, second))
    values = [(m.nvmlReturn, round(m.value, 6)) for m in result.metrics[:6]]
    ok = pynvml.NVML_SUCCESS
    assert values[:5] == [(ok, 78.0), (ok, 41.0), (ok, 56.0), (ok, 53.0), (ok, 91.0)]
    assert values[5][0] == pynvml.NVML_ERROR_NOT_SUPPORTED
    nvml.nvmlGpmSampleFree(first)
    raises(
        pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlGpmMetricsGet, gpm_request(nvml, first, second)
    )


def test_gpm_metrics_per_mig_instance() -> None:
    srv = server("dgx-h100-mig")
    nvml = srv.nvml
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    mig0 = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    gi = nvml.nvmlDeviceGetGpuInstanceId(mig0)
    by_gi = [nvml.nvmlGpmMigSampleGet(gpu, gi, nvml.nvmlGpmSampleAlloc()) for _ in range(2)]
    by_handle = [nvml.nvmlGpmSampleGet(mig0, nvml.nvmlGpmSampleAlloc()) for _ in range(2)]
    for first, second in (by_gi, by_handle):
        result = nvml.nvmlGpmMetricsGet(gpm_request(nvml, first, second))
        assert round(result.metrics[0].value, 6) == 72.0  # sm_utilization at cycle 0
        assert round(result.metrics[4].value, 6) == 88.0
    raises(
        pynvml.NVML_ERROR_NOT_FOUND, nvml.nvmlGpmMigSampleGet, gpu, 99, nvml.nvmlGpmSampleAlloc()
    )
    mixed = gpm_request(nvml, by_gi[0], nvml.nvmlGpmSampleGet(gpu, nvml.nvmlGpmSampleAlloc()))
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, nvml.nvmlGpmMetricsGet, mixed)
    # an instance with no GPM values in the scenario reports each metric as not supported
    mig2 = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 2)
    pair = [nvml.nvmlGpmSampleGet(mig2, nvml.nvmlGpmSampleAlloc()) for _ in range(2)]
    result = nvml.nvmlGpmMetricsGet(gpm_request(nvml, *pair))
    assert {m.nvmlReturn for m in result.metrics[:5]} == {pynvml.NVML_ERROR_NOT_SUPPORTED}


# --- the server -------------------------------------------------------------------------------


def test_simulated_clock() -> None:
    srv = SimulatedServer(load_scenario("h200"), interval_s=10.0)
    assert srv.clock(6) - srv.clock(0) == 60.0
    assert srv.clock(0) > 1_600_000_000
    srv.begin_cycle(6)
    assert srv.nvml.clock() == srv.clock(6)
    assert SimulatedServer("h200").scenario.name == "h200"


def test_pcie_traffic_comes_from_the_drivers_byte_counters_where_it_has_them() -> None:
    import pynvml

    from otel_gpu.collect.build import build_collector

    collector = build_collector("h200", 10.0, attribution=False)
    fake = collector.sources.nvml._nvml
    counters = {pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: 5_000_000,
                pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: 7_000_000}
    original = fake.nvmlDeviceGetFieldValues
    sampled: list[object] = []

    def field_values(handle: object, field_ids: list) -> object:
        values = original(handle, field_ids)
        for value in values:
            if value.fieldId in counters:
                value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                value.value.ullVal = counters[value.fieldId]
                value.nvmlReturn = pynvml.NVML_SUCCESS
        return values

    def throughput(*args: object) -> int:
        sampled.append(args)
        return 0

    fake.nvmlDeviceGetFieldValues = field_values
    fake.nvmlDeviceGetPcieThroughput = throughput
    collector.start()
    try:
        first = collector.collect().gpus[0]
        counters[pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES] += 1024
        second = collector.collect().gpus[0]
    finally:
        collector.close()
    assert (first.pcie_tx_bytes, first.pcie_rx_bytes) == (5_000_000, 7_000_000)
    assert second.pcie_tx_bytes == 5_001_024
    assert sampled == []  # the 20 ms sampling call is never made


def test_without_byte_counters_the_sampled_rate_is_integrated() -> None:
    from otel_gpu.collect.build import build_collector

    collector = build_collector("h200", 10.0, attribution=False)
    collector.start()
    try:
        collector.collect()
        gpu = collector.collect().gpus[0]
    finally:
        collector.close()
    assert gpu.pcie_tx_bytes is not None and gpu.pcie_tx_bytes > 0
