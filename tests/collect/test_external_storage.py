"""External storage, pressure and the Slurm account through the production readers over a
simulated server: its /proc/self/mounts and mountstats, a statvfs that blocks, cgroup PSI files
and process environments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from runner import ROOT, points_named, snapshot_json

from otel_gpu.collect.build import build_collector
from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.snapshot import Snapshot

SCENARIO = ROOT / "tests" / "scenarios" / "external-storage.yaml"
REMOTE_TYPES = ("nfs4", "cifs", "fuse.sshfs")


def _collect(scenario: Path, cycles: int, interval_s: float = 10.0,
             thresholds: Thresholds | None = None) -> list[Snapshot]:
    collector = build_collector(str(scenario), interval_s, thresholds=thresholds)
    collector.start()
    try:
        return [collector.collect() for _ in range(cycles)]
    finally:
        collector.close()


def _remote(snap: Snapshot) -> dict[str, Any]:
    assert snap.host is not None
    return {fs.mountpoint: fs for fs in snap.host.filesystems if fs.type in REMOTE_TYPES}


@pytest.fixture(scope="module")
def snapshots() -> list[Snapshot]:
    return _collect(SCENARIO, 6)


def test_network_and_fuse_mounts_get_usage(snapshots: list[Snapshot]) -> None:
    remote = _remote(snapshots[0])
    # The export mounted twice is one filesystem, at its first mount point.
    assert set(remote) == {"/datasets", "/mnt/share", "/home/alice/remote"}
    datasets = remote["/datasets"]
    assert (datasets.device, datasets.type) == ("nas:/export/datasets", "nfs4")
    assert datasets.used_bytes == 40_000_000_000_000
    assert datasets.size_bytes == pytest.approx(100_000_000_000_000, rel=1e-9)


def test_an_unresponsive_mount_is_skipped_counted_and_back_when_it_answers(
    snapshots: list[Snapshot],
) -> None:
    unresponsive = [sum(1 for e in s.errors if e.error_type == "Unresponsive")
                    for s in snapshots]
    present = ["/mnt/share" in _remote(s) for s in snapshots]
    assert present[:3] == [True, False, False]  # the server is gone at cycles 1 and 2
    assert unresponsive[:3] == [0, 1, 1]
    # From cycle 3 it answers: back once its stuck call has returned, within a cycle or two.
    assert present[-1] and unresponsive[-1] == 0
    assert all("/datasets" in _remote(s) for s in snapshots)  # the others are never held up


def test_nfs_bytes_per_mount(snapshots: list[Snapshot]) -> None:
    nfs = [s.host.nfs for s in snapshots if s.host is not None]
    assert [(m.mountpoint, m.device) for m in nfs[0]] == [("/datasets", "nas:/export/datasets")]
    # 200 MB/s and 10 MB/s for 10 s a cycle
    assert nfs[3][0].read_bytes - nfs[1][0].read_bytes == 4_000_000_000
    assert nfs[3][0].write_bytes - nfs[1][0].write_bytes == 200_000_000


def test_metrics_for_storage_pressure_and_the_slurm_account() -> None:
    doc = snapshot_json("--simulate", str(SCENARIO), "--cycles", "3", "--interval", "10")
    nfs = {p["attributes"]["disk.io.direction"]: p["value"]
           for p in points_named(doc, "otel_gpu.nfs.io")}
    assert nfs == {"read": 4_000_000_000, "write": 200_000_000}  # counted from the first read
    used = {p["attributes"]["system.filesystem.mountpoint"]: p["attributes"]
            for p in points_named(doc, "system.filesystem.usage")
            if p["attributes"]["system.filesystem.state"] == "used"}
    assert used["/home/alice/remote"]["system.filesystem.type"] == "fuse.sshfs"
    assert used["/datasets"]["system.device"] == "nas:/export/datasets"
    for name, some, full in (("otel_gpu.container.io.pressure.stall.time", 6.0, 2.0),
                             ("otel_gpu.container.memory.pressure.stall.time", 1.0, 0.2)):
        points = {p["attributes"]["otel_gpu.pressure.stall_type"]: p["value"]
                  for p in points_named(doc, name)}
        # two cycles of 10 s at 30 % / 10 % (io), 5 % / 1 % (memory) of the time
        assert points == {"some": pytest.approx(some), "full": pytest.approx(full)}
        assert {p["attributes"]["container.name"] for p in points_named(doc, name)} == {
            "alice-train"}
    jobs = {p["attributes"]["otel_gpu.slurm.job.id"]: p["attributes"]
            for p in points_named(doc, "otel_gpu.workload.gpu.processes")
            if "otel_gpu.slurm.job.id" in p["attributes"]}
    assert jobs["4242"]["otel_gpu.slurm.account.name"] == "vision-lab"
    assert "otel_gpu.slurm.account.name" not in jobs["4243"]  # no SLURM_JOB_ACCOUNT there
    assert "/home/bob" not in str(doc)  # nothing else of the environment leaves


def test_exclude_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_GPU_FILESYSTEM_EXCLUDE", "fuse.*,/mnt/*")
    (snap,) = _collect(SCENARIO, 1)
    assert set(_remote(snap)) == {"/datasets"}
    monkeypatch.setenv("OTEL_GPU_FILESYSTEM_INCLUDE", "none")
    monkeypatch.delenv("OTEL_GPU_FILESYSTEM_EXCLUDE")
    (snap,) = _collect(SCENARIO, 1)
    assert _remote(snap) == {} and snap.host is not None and snap.host.nfs == ()


def test_a_filling_nfs_mount_is_predicted_full(tmp_path: Path) -> None:
    # 85 % full and 10 GB more every 5 min: under 20 % free and full within 4 h, as a local disk
    used = [850_000_000_000 + 10_000_000_000 * k for k in range(12)]
    path = tmp_path / "nfs-filling.yaml"
    path.write_text(
        "name: nfs-filling\nhost:\n  mounts:\n    - mountpoint: /scratch\n"
        "      device: \"nas:/export/scratch\"\n      type: nfs4\n"
        f"      size_bytes: 1000000000000\n      used_bytes: {used}\n"
        "gpus:\n  - model: A100-SXM4-80GB\n")
    snapshots = _collect(path, 10, 300, Thresholds(disabled_rules=("host_memory_pressure",)))
    full = [(s.cycle, i.severity) for s in snapshots for i in s.insights
            if i.rule == "filesystem_full"
            and i.attributes.get("system.filesystem.mountpoint") == "/scratch"]
    assert full and full[0] == (8, "critical")
