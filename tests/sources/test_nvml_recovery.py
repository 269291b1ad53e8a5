"""The NVML source recovers from every transient fault: from the first complete read on, a
faulted run reports what an unfaulted run reports, and nothing is invented in between."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_gpu.collect.collector import Collector, LocalSources
from otel_gpu.simulate import SimulatedServer, load_scenario
from otel_gpu.snapshot import Gpu, Snapshot
from otel_gpu.sources.nvml import INIT_RETRY_FIRST_S, INIT_RETRY_MAX_S, NvmlSource

INTERVAL_S = 10.0
CYCLES = 6
ALWAYS = None  # a fault in every cycle

WHOLE_GPU = {"model": "H100-SXM5-80GB", "utilization": 0.5, "memory_used_bytes": 2**30,
             "power_watts": 300, "temperature_celsius": 50, "pcie_tx_bytes_per_s": 4096,
             "pcie_rx_bytes_per_s": 8192,
             "gpm": {"sm_utilization": 0.4, "sm_occupancy": 0.3, "tensor_utilization": 0.2,
                     "dram_utilization": 0.1, "graphics_engine_utilization": 0.5},
             "xid_events": [{"cycle": 3, "code": 79}, {"cycle": 4, "code": 13}]}
MIG_GPU = {"model": "A100-SXM4-40GB",
           "mig": {"instances": [{"profile": "3g.20gb", "start": 0},
                                 {"profile": "1g.5gb", "start": 4}]}}


def scenario(tmp_path: Path, gpu0: dict[str, Any], driver: dict[str, Any] | None = None) -> Any:
    document: dict[str, Any] = {"name": "recovery", "gpus": [gpu0, dict(WHOLE_GPU)]}
    if driver is not None:
        document["driver"] = driver
    path = tmp_path / f"scenario-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_scenario(str(path))


def run(loaded: Any, cycles: int = CYCLES, nvml: Any = None) -> list[Snapshot]:
    server = SimulatedServer(loaded, interval_s=INTERVAL_S)
    source = NvmlSource(nvml or server.nvml, gpm_warmup_s=0.0)
    collector = Collector(LocalSources(source, None, simulation=server))
    collector.start()
    try:
        return [collector.collect() for _ in range(cycles)]
    finally:
        collector.close()


def faulted(gpu: dict[str, Any], call: str, cycles: list[int] | None,
            error: str = "UNKNOWN") -> dict[str, Any]:
    fault: dict[str, Any] = {"call": call, "error": error}
    if cycles is not None:
        fault["cycles"] = cycles
    return {**gpu, "faults": [fault]}


def gpu_of(snapshot: Snapshot, index: int) -> Gpu | None:
    return next((g for g in snapshot.gpus if g.index == index), None)


def comparable(gpu: Gpu | None) -> Any:
    """What a run must agree on: identity, MIG devices, GPM, Xid counts, reconfigurations."""
    if gpu is None:
        return None
    return (gpu.uuid, gpu.model, gpu.lost,
            tuple((m.uuid, m.profile, m.compute_slices) for m in gpu.mig_devices),
            gpu.mig_compute_slices_total, gpu.gpm, dict(gpu.xid_errors),
            gpu.mig_reconfigurations)


def insight_ids(snapshot: Snapshot) -> set[str]:
    return {i.rule for i in snapshot.insights}


def errors_of(snapshot: Snapshot, call: str) -> list[str]:
    return [e.error_type for e in snapshot.errors if e.call == call]


# -- static facts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "call", "cycle"),
    [
        # Static facts are first asked in cycle 0; MIG layouts are read every cycle.
        (WHOLE_GPU, "nvmlDeviceGetUUID", 0),
        (WHOLE_GPU, "nvmlDeviceGetName", 0),
        (WHOLE_GPU, "nvmlGpmQueryDeviceSupport", 0),
        (WHOLE_GPU, "nvmlDeviceGetSupportedClocksEventReasons", 0),
        (WHOLE_GPU, "nvmlDeviceRegisterEvents", 0),
        (MIG_GPU, "nvmlDeviceGetMaxMigDeviceCount", 0),
        (MIG_GPU, "nvmlDeviceGetUUID", 0),
        (MIG_GPU, "nvmlDeviceGetMigDeviceHandleByIndex", 2),
        (MIG_GPU, "nvmlDeviceGetMigMode", 2),
        (MIG_GPU, "nvmlDeviceGetAttributes", 2),
    ],
)
def test_a_one_cycle_fault_is_forgotten_from_the_next_read_on(
    tmp_path: Path, gpu: dict[str, Any], call: str, cycle: int
) -> None:
    clean = run(scenario(tmp_path, dict(gpu)))
    bad = run(scenario(tmp_path, faulted(gpu, call, [cycle])))
    assert "UNKNOWN" in errors_of(bad[cycle], call)
    for k in range(CYCLES):
        seen = gpu_of(bad[k], 0)
        if k != cycle:
            assert comparable(seen) == comparable(gpu_of(clean[k], 0)), f"cycle {k}"
        elif seen is not None:
            # The faulted cycle: no stand-in identity, no reconfiguration, no zeros.
            assert seen.uuid == gpu_of(clean[k], 0).uuid  # type: ignore[union-attr]
            assert seen.model == gpu_of(clean[k], 0).model  # type: ignore[union-attr]
            assert seen.mig_reconfigurations == 0
            expected = clean[k].gpus[0].mig_compute_slices_total
            assert seen.mig_compute_slices_total in (None, expected)
        # The other GPU is never touched.
        assert comparable(gpu_of(bad[k], 1)) == comparable(gpu_of(clean[k], 1))
        assert "mig_reconfigured" not in insight_ids(bad[k])
    assert bad[-1].gpus[0].mig_reconfigurations == 0


def test_a_failed_uuid_read_leaves_the_gpu_out_rather_than_invent_an_id(tmp_path: Path) -> None:
    clean = run(scenario(tmp_path, dict(WHOLE_GPU)))
    bad = run(scenario(tmp_path, faulted(WHOLE_GPU, "nvmlDeviceGetUUID", [0, 1])))
    assert gpu_of(bad[0], 0) is None and gpu_of(bad[1], 0) is None
    assert gpu_of(bad[2], 0).uuid == gpu_of(clean[2], 0).uuid  # type: ignore[union-attr]
    assert all(gpu_of(s, 0) is None or gpu_of(s, 0).uuid.startswith("GPU-")  # type: ignore[union-attr]
               for s in bad)


@pytest.mark.parametrize("call", ["nvmlDeviceGetUUID", "nvmlDeviceGetName"])
def test_an_identity_that_never_answers_is_never_invented(tmp_path: Path, call: str) -> None:
    bad = run(scenario(tmp_path, faulted(WHOLE_GPU, call, ALWAYS)))
    clean = run(scenario(tmp_path, dict(WHOLE_GPU)))
    for k, snapshot in enumerate(bad):
        assert gpu_of(snapshot, 0) is None
        assert errors_of(snapshot, call) == ["UNKNOWN"]  # asked again every cycle
        assert comparable(gpu_of(snapshot, 1)) == comparable(gpu_of(clean[k], 1))


def test_gpm_support_that_never_answers_gives_no_gpm_and_the_rest(tmp_path: Path) -> None:
    bad = run(scenario(tmp_path, faulted(WHOLE_GPU, "nvmlGpmQueryDeviceSupport", ALWAYS)))
    for snapshot in bad:
        gpu = gpu_of(snapshot, 0)
        assert gpu is not None and gpu.gpm is None and gpu.power_watts == 300


def test_xid_events_are_counted_after_a_failed_gpu_count_in_the_first_cycle(
    tmp_path: Path,
) -> None:
    clean = run(scenario(tmp_path, dict(WHOLE_GPU)))
    driver = {"faults": [{"call": "nvmlDeviceGetCount", "error": "UNKNOWN", "cycles": [0]}]}
    bad = run(scenario(tmp_path, dict(WHOLE_GPU), driver))
    assert bad[0].gpus == ()
    for k in range(1, CYCLES):
        assert comparable(gpu_of(bad[k], 0)) == comparable(gpu_of(clean[k], 0))
    assert gpu_of(bad[-1], 0).xid_errors == {79: 1, 13: 1}  # type: ignore[union-attr]


def test_a_failed_event_set_is_created_again(tmp_path: Path) -> None:
    driver = {"faults": [{"call": "nvmlEventSetCreate", "error": "UNKNOWN", "cycles": [0, 1]}]}
    bad = run(scenario(tmp_path, dict(WHOLE_GPU), driver))
    assert gpu_of(bad[-1], 0).xid_errors == {79: 1, 13: 1}  # type: ignore[union-attr]


def test_an_event_wait_answering_gpu_is_lost_costs_one_error_per_cycle(tmp_path: Path) -> None:
    driver = {"faults": [{"call": "nvmlEventSetWait_v2", "error": "GPU_IS_LOST"}]}
    bad = run(scenario(tmp_path, dict(WHOLE_GPU), driver))
    for snapshot in bad:
        assert errors_of(snapshot, "nvmlEventSetWait_v2") == ["GPU_IS_LOST"]
        assert len(snapshot.gpus) == 2


# -- MIG ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call", ["nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetAttributes"]
)
def test_a_partial_mig_read_is_no_reconfiguration_and_no_zero(tmp_path: Path, call: str) -> None:
    bad = run(scenario(tmp_path, faulted(MIG_GPU, call, [2])))
    clean = run(scenario(tmp_path, dict(MIG_GPU)))
    faulty = gpu_of(bad[2], 0)
    if faulty is not None:  # a failed GPU UUID read leaves the whole GPU out of the cycle
        assert faulty.mig_compute_slices_total is None  # absent, not "all free"
        assert faulty.mig_enabled
    for k in (0, 1, 3, 4, 5):
        assert comparable(gpu_of(bad[k], 0)) == comparable(gpu_of(clean[k], 0))
    assert [gpu_of(s, 0).mig_reconfigurations for s in bad if gpu_of(s, 0)] == [0] * len(
        [s for s in bad if gpu_of(s, 0)]
    )
    assert not any("mig_reconfigured" in insight_ids(s) for s in bad)


def test_a_failed_mig_mode_read_keeps_the_gpu_a_mig_gpu(tmp_path: Path) -> None:
    bad = run(scenario(tmp_path, faulted(MIG_GPU, "nvmlDeviceGetMigMode", [2])))
    clean = run(scenario(tmp_path, dict(MIG_GPU)))
    gpu = gpu_of(bad[2], 0)
    assert gpu is not None and gpu.mig_enabled
    assert comparable(gpu) == comparable(gpu_of(clean[2], 0))
    assert errors_of(bad[2], "nvmlDeviceGetUtilizationRates") == []


def test_a_real_reconfiguration_is_still_counted(tmp_path: Path) -> None:
    gpu = {**MIG_GPU, "mig": {**MIG_GPU["mig"], "reconfigure": [
        {"cycle": 3, "instances": [{"profile": "7g.40gb", "start": 0}]}]}}
    snapshots = run(scenario(tmp_path, faulted(gpu, "nvmlDeviceGetMigDeviceHandleByIndex", [2])))
    assert [gpu_of(s, 0).mig_reconfigurations for s in snapshots] == [0, 0, 0, 1, 1, 1]
    assert "mig_reconfigured" in insight_ids(snapshots[3])


# -- nvmlInit -------------------------------------------------------------------------------------


def test_nvml_init_is_retried_until_the_driver_is_ready(tmp_path: Path) -> None:
    clean = run(scenario(tmp_path, dict(WHOLE_GPU)))
    bad = run(scenario(tmp_path, dict(WHOLE_GPU), {"init_fails_cycles": 3}))
    retried = [k for k, s in enumerate(bad) if errors_of(s, "nvmlInit")]
    assert retried == [0, 1, 2]  # then 20 s after the third failure: cycle 4
    assert [len(s.gpus) for s in bad] == [0, 0, 0, 0, 2, 2]
    assert not bad[3].driver_available and bad[4].driver_available
    assert bad[-1].error_counts[("nvml", "DRIVER_NOT_LOADED")] == 3
    for k in (4, 5):
        for index in (0, 1):
            now, then = gpu_of(bad[k], index), gpu_of(clean[k], index)
            assert (now.uuid, now.model) == (then.uuid, then.model)  # type: ignore[union-attr]
    assert gpu_of(bad[5], 0).xid_errors == {13: 1}  # type: ignore[union-attr]  # from cycle 4


def test_nvml_init_back_off_doubles_up_to_its_ceiling(tmp_path: Path) -> None:
    snapshots = run(scenario(tmp_path, dict(WHOLE_GPU), {"init_fails_cycles": 10_000}), 100)
    retried = [k for k, s in enumerate(snapshots) if errors_of(s, "nvmlInit")]
    assert retried == [0, 1, 2, 4, 8, 16, 32, 62, 92]
    waits = [(b - a) * INTERVAL_S for a, b in itertools.pairwise(retried)]
    assert max(waits) == INIT_RETRY_MAX_S and min(waits) >= INIT_RETRY_FIRST_S
    assert all(s.gpus == () for s in snapshots)


# -- PCIe -----------------------------------------------------------------------------------------


def test_sampled_pcie_bytes_are_integrated_across_a_failed_read(tmp_path: Path) -> None:
    clean = run(scenario(tmp_path, dict(WHOLE_GPU)))
    bad = run(scenario(tmp_path, faulted(WHOLE_GPU, "nvmlDeviceGetPcieThroughput", [2])))
    assert gpu_of(bad[2], 0).pcie_tx_bytes is None  # type: ignore[union-attr]
    for k in (3, 4, 5):
        now, then = gpu_of(bad[k], 0), gpu_of(clean[k], 0)
        assert now.pcie_tx_bytes == then.pcie_tx_bytes > 0  # type: ignore[union-attr]
        assert now.pcie_rx_bytes == then.pcie_rx_bytes > 0  # type: ignore[union-attr]


class CountingPcie:
    """The simulated driver with the driver's own PCIe byte counters (field values): the bytes
    its throughput has moved since cycle 0."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nvml, name)

    def __dir__(self) -> list[str]:  # the error names are read from the module's constants
        return dir(self._nvml)

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list) -> Any:
        values = self._nvml.nvmlDeviceGetFieldValues(handle, field_ids)
        nvml = self._nvml
        counters = {nvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: 4096,
                    nvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: 8192}
        for value in values:
            if value.fieldId in counters:
                value.valueType = nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                value.value.ullVal = int(counters[value.fieldId] * INTERVAL_S * nvml.cycle)
                value.nvmlReturn = nvml.NVML_SUCCESS
        return values


def test_a_failed_counter_read_keeps_the_driver_counters(tmp_path: Path) -> None:
    loaded = scenario(tmp_path, faulted(WHOLE_GPU, "nvmlDeviceGetFieldValues", [2]))
    server = SimulatedServer(loaded, interval_s=INTERVAL_S)
    source = NvmlSource(CountingPcie(server.nvml), gpm_warmup_s=0.0)
    collector = Collector(LocalSources(source, None, simulation=server))
    collector.start()
    snapshots = [collector.collect() for _ in range(CYCLES)]
    collector.close()
    tx = [gpu_of(s, 0).pcie_tx_bytes for s in snapshots]  # type: ignore[union-attr]
    assert tx == [0, 40960, None, 122880, 163840, 204800]
    assert set(errors_of(snapshots[2], "nvmlDeviceGetFieldValues")) == {"UNKNOWN"}
    assert errors_of(snapshots[3], "nvmlDeviceGetPcieThroughput") == []


def test_the_start_message_says_the_driver_is_retried(tmp_path: Path) -> None:
    server = SimulatedServer(scenario(tmp_path, dict(WHOLE_GPU), {"init_fails_cycles": 1}))
    source = NvmlSource(server.nvml, gpm_warmup_s=0.0)
    assert not source.start()
    assert source.retrying
    assert source.unavailable_reason is not None
    assert "DRIVER_NOT_LOADED" in source.unavailable_reason
    assert "retries nvmlInit" in source.unavailable_reason


def test_a_host_without_the_driver_library_is_not_retried() -> None:
    class NoLibrary:
        class NVMLError(Exception):
            value = 12

        NVML_ERROR_LIBRARY_NOT_FOUND = 12

        def nvmlInit(self) -> None:
            raise self.NVMLError()

    source = NvmlSource(NoLibrary())
    assert not source.start()
    assert not source.retrying
    assert source.read(0.0).errors == []


@pytest.mark.parametrize(
    "call", ["nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigMode",
             "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetAttributes"]
)
def test_a_mig_read_that_always_fails_is_absent_never_zero_or_a_change(
    tmp_path: Path, call: str
) -> None:
    bad = run(scenario(tmp_path, faulted(MIG_GPU, call, ALWAYS)))
    clean = run(scenario(tmp_path, dict(MIG_GPU)))
    for k, snapshot in enumerate(bad):
        gpu = gpu_of(snapshot, 0)
        assert gpu is not None and gpu.uuid == gpu_of(clean[k], 0).uuid  # type: ignore[union-attr]
        assert gpu.mig_compute_slices_total is None
        assert gpu.mig_reconfigurations == 0
        assert gpu.utilization_general is None  # a MIG GPU is never read as a whole GPU
        assert "mig_reconfigured" not in insight_ids(snapshot)
        assert comparable(gpu_of(snapshot, 1)) == comparable(gpu_of(clean[k], 1))


def test_event_registration_that_always_fails_is_asked_again_each_cycle(tmp_path: Path) -> None:
    bad = run(scenario(tmp_path, faulted(WHOLE_GPU, "nvmlDeviceRegisterEvents", ALWAYS)))
    for snapshot in bad:
        assert errors_of(snapshot, "nvmlDeviceRegisterEvents") == ["UNKNOWN"]
    assert gpu_of(bad[-1], 0).xid_errors == {}  # type: ignore[union-attr]
    assert gpu_of(bad[-1], 1).xid_errors == {79: 1, 13: 1}  # type: ignore[union-attr]



class ResetAfterLoss:
    """The driver as it is around a GPU reset: GPU 0 answers GPU_IS_LOST while ``lost``, and
    answers again afterwards (the simulator, like a real loss without a reset, never recovers)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self.lost = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nvml, name)

    def __dir__(self) -> list[str]:  # the error names are read from the module's constants
        return dir(self._nvml)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if self.lost and index == 0:
            raise self._nvml.NVMLError(self._nvml.NVML_ERROR_GPU_IS_LOST)
        return self._nvml.nvmlDeviceGetHandleByIndex(index)


def test_gpu_lost_clears_on_the_first_cycle_the_gpu_answers_again(tmp_path: Path) -> None:
    clean = run(scenario(tmp_path, dict(WHOLE_GPU)))
    server = SimulatedServer(scenario(tmp_path, dict(WHOLE_GPU)), interval_s=INTERVAL_S)
    driver = ResetAfterLoss(server.nvml)
    collector = Collector(LocalSources(NvmlSource(driver, gpm_warmup_s=0.0), None,
                                       simulation=server))
    collector.start()
    bad = []
    try:
        for k in range(CYCLES):
            driver.lost = k in (1, 2)
            bad.append(collector.collect())
    finally:
        collector.close()
    assert [gpu_of(s, 0).lost for s in bad] == [False, True, True, False, False, False]  # type: ignore[union-attr]
    assert ["gpu_lost" in insight_ids(s) for s in bad] == [False, True, True, False, False, False]
    for k in (1, 2):  # the identity read before the loss is kept, never a stand-in
        assert gpu_of(bad[k], 0).uuid == gpu_of(clean[k], 0).uuid  # type: ignore[union-attr]
        assert gpu_of(bad[k], 0).uuid.startswith("GPU-")  # type: ignore[union-attr]
    for k in (3, 4, 5):
        assert comparable(gpu_of(bad[k], 0)) == comparable(gpu_of(clean[k], 0))
