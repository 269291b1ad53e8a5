"""Accounting: device-seconds, slice-seconds and energy per workload, against hand-computed
figures, through the agent's own pipeline on a simulated server with known holdings."""

from __future__ import annotations

import pytest
from runner import ROOT, points_named, snapshot_json

from otel_gpu.collect.accounting import Accountant
from otel_gpu.snapshot import Gpu, MigDevice, Snapshot, Workload

SCENARIO = str(ROOT / "tests" / "scenarios" / "accounting.yaml")
HOUR = 3600.0


def _by(doc: dict, name: str) -> dict[tuple, float]:
    """Points of one metric keyed by (hw.name, user, state)."""
    found = {}
    for point in points_named(doc, name):
        attrs = point["attributes"]
        key = (attrs["hw.name"], attrs.get("process.owner"), attrs.get("otel_gpu.state"))
        assert key not in found, key
        found[key] = point["value"]
    return found


@pytest.fixture(scope="module")
def hour() -> dict:
    # 61 cycles 60 s apart: 60 credited intervals, one simulated hour.
    return snapshot_json("--simulate", SCENARIO, "--cycles", "61", "--interval", "60")


def test_a_1g_slice_held_an_hour_is_a_seventh_of_a_gpu_hour(hour: dict) -> None:
    time = _by(hour, "otel_gpu.workload.gpu.time")
    assert time[("gpu0/mig0", "alice", "unknown")] == pytest.approx(HOUR / 7, rel=0.01)
    assert time[("gpu0/mig0", "alice", "busy")] == 0
    assert time[("gpu0/mig1", "bob", "unknown")] == pytest.approx(3 * HOUR / 7, rel=0.01)


def test_shared_gpu_split_by_sm_samples_and_idle_gpu_counted_idle(hour: dict) -> None:
    time = _by(hour, "otel_gpu.workload.gpu.time")
    assert time[("gpu1", "alice", "busy")] == pytest.approx(0.75 * HOUR, rel=0.01)
    assert time[("gpu1", "carol", "busy")] == pytest.approx(0.25 * HOUR, rel=0.01)
    assert time[("gpu1", "alice", "idle")] == 0
    assert time[("gpu2", "dave", "idle")] == pytest.approx(HOUR, rel=0.01)
    assert time[("gpu2", "dave", "busy")] == 0


def test_slice_seconds_only_on_mig(hour: dict) -> None:
    slices = _by(hour, "otel_gpu.workload.mig.slice.time")
    assert slices == {
        ("gpu0/mig0", "alice", None): pytest.approx(HOUR, rel=0.01),
        ("gpu0/mig1", "bob", None): pytest.approx(3 * HOUR, rel=0.01),
    }


def test_energy_apportioned_by_slice_share_and_sm_share(hour: dict) -> None:
    energy = _by(hour, "otel_gpu.workload.energy")
    assert energy == {
        ("gpu0/mig0", "alice", None): pytest.approx(280 * HOUR / 7, rel=0.01),
        ("gpu0/mig1", "bob", None): pytest.approx(280 * HOUR * 3 / 7, rel=0.01),
        ("gpu1", "alice", None): pytest.approx(400 * HOUR * 0.75, rel=0.01),
        ("gpu1", "carol", None): pytest.approx(400 * HOUR * 0.25, rel=0.01),
        ("gpu2", "dave", None): pytest.approx(60 * HOUR, rel=0.01),
    }


def test_points_carry_container_and_pod(hour: dict) -> None:
    points = points_named(hour, "otel_gpu.workload.energy")
    bob = next(p["attributes"] for p in points if p["attributes"].get("process.owner") == "bob")
    assert bob["k8s.pod.name"] == "bob-job-0"
    assert bob["k8s.namespace.name"] == "research"
    assert bob["hw.parent"]
    alice = [p["attributes"] for p in points if p["attributes"].get("process.owner") == "alice"]
    assert {a["container.name"] for a in alice} == {"alice-train"}
    for point in points_named(hour, "otel_gpu.workload.gpu.time"):
        assert point["kind"] == "sum"


# -- the Accountant over hand-built Snapshots ------------------------------------------------------


def _gpu(energy: float | None, *, power: float | None = 100.0, util: float | None = 0.5,
         uuid: str = "GPU-a") -> Gpu:
    return Gpu(index=0, uuid=uuid, name="gpu0", model="A100-SXM4-80GB", energy_joules=energy,
               power_watts=power, utilization_general=util)


def _work(user: str, *, sm: float | None = None, memory: int | None = None,
          device: str = "GPU-a") -> Workload:
    return Workload(device, False, {"process.owner": user}, 1, memory, sm)


def _run(*cycles: tuple[float, tuple[Gpu, ...], tuple[Workload, ...]],
         accountant: Accountant | None = None) -> dict[str, tuple[float, ...]]:
    accountant = accountant or Accountant()
    snap = None
    for n, (at, gpus, workloads) in enumerate(cycles):
        snap = accountant.update(Snapshot(n, at, True, gpus=gpus, workloads=workloads))
    assert snap is not None
    return {str(a.attributes["process.owner"]): (a.busy_s, a.idle_s, a.unknown_s,
                                                 a.energy_joules) for a in snap.accounts}


def test_energy_counter_that_went_back_falls_back_to_power() -> None:
    held = (_work("ann"),)
    accounts = _run((0, (_gpu(5000.0),), held), (10, (_gpu(6000.0),), held),
                    (20, (_gpu(10.0, power=300.0),), held))
    # 1000 J from the counter, then mean power (100 W, 300 W) for 10 s after the reset.
    assert accounts["ann"] == (20.0, 0.0, 0.0, pytest.approx(1000.0 + 2000.0))


def test_interval_past_the_gap_is_not_credited() -> None:
    held = (_work("ann"),)
    accounts = _run((0, (_gpu(0.0),), held), (10, (_gpu(1000.0),), held),
                    (1000, (_gpu(99000.0),), held), accountant=Accountant(max_gap_s=60))
    assert accounts["ann"] == (10.0, 0.0, 0.0, 1000.0)


def test_shares_by_memory_without_sm_samples_else_equal() -> None:
    by_memory = _run((0, (_gpu(0.0),), ()),
                     (10, (_gpu(400.0),), (_work("ann", memory=3), _work("ben", memory=1))))
    assert by_memory["ann"] == (7.5, 0.0, 0.0, 300.0)
    assert by_memory["ben"] == (2.5, 0.0, 0.0, 100.0)
    equal = _run((0, (_gpu(0.0, util=None),), ()),
                 (10, (_gpu(400.0, util=None),), (_work("ann"), _work("ben"))))
    assert equal["ann"] == (0.0, 0.0, 5.0, 200.0)


def test_busy_threshold_and_no_energy_reading() -> None:
    held = (_work("ann", sm=0.04),)
    accounts = _run((0, (_gpu(None, power=None),), held), (10, (_gpu(None, power=None),), held))
    assert accounts["ann"] == (0.0, 10.0, 0.0, 0.0)


def test_lost_gpu_and_failed_cycle_credit_nothing_and_keep_totals() -> None:
    accountant = Accountant()
    held = (_work("ann"),)
    _run((0, (_gpu(0.0),), held), (10, (_gpu(100.0),), held), accountant=accountant)
    failed = accountant.update(Snapshot(-1, 15, False))
    assert [a.busy_s for a in failed.accounts] == [10.0]
    lost = Gpu(index=0, uuid="GPU-a", name="gpu0", lost=True)
    after = accountant.update(Snapshot(3, 20, True, gpus=(lost,), workloads=held))
    assert [(a.busy_s, a.energy_joules) for a in after.accounts] == [(10.0, 100.0)]


def test_workload_unseen_past_retention_is_forgotten() -> None:
    accountant = Accountant(retention_s=100)
    held = (_work("ann"),)
    _run((0, (_gpu(0.0),), held), (10, (_gpu(100.0),), held), accountant=accountant)
    kept = accountant.update(Snapshot(2, 100, True, gpus=(_gpu(200.0),)))
    assert len(kept.accounts) == 1
    gone = accountant.update(Snapshot(3, 111, True, gpus=(_gpu(300.0),)))
    assert gone.accounts == ()


def test_mig_slices_from_profile_when_nvml_gives_none() -> None:
    mig = MigDevice(index=0, uuid="MIG-b", name="gpu0/mig0", parent_uuid="GPU-a",
                    model="A100-SXM4-40GB", profile="2g.10gb", gpu_instance_id=None,
                    compute_instance_id=None, placement_start=None, placement_size=None,
                    compute_slices=None, memory_used_bytes=None, memory_total_bytes=None)
    gpu = Gpu(index=0, uuid="GPU-a", name="gpu0", mig_mode_current=True, mig_devices=(mig,),
              energy_joules=0.0)
    held = (Workload("MIG-b", True, {"process.owner": "ann"}, 1, None),)
    accountant = Accountant()
    accountant.update(Snapshot(0, 0, True, gpus=(gpu,), workloads=held))
    later = Gpu(index=0, uuid="GPU-a", name="gpu0", mig_mode_current=True, mig_devices=(mig,),
                energy_joules=700.0)
    snap = accountant.update(Snapshot(1, 70, True, gpus=(later,), workloads=held))
    (account,) = snap.accounts
    assert (account.unknown_s, account.slice_s, account.energy_joules) == (20.0, 140.0, 200.0)
