from __future__ import annotations

import os
from pathlib import Path

import pytest

from otel_gpu.sources.cgroup import (
    CgroupReader,
    ContainerRef,
    SlurmStep,
    container_from_cgroup_lines,
    parse_cgroup_path,
    parse_slurm_path,
    slurm_step_from_cgroup_lines,
)

CID = "3f2a9c1be0d74e55a0c6b1f2d3e4a5b6c7d8e9f00112233445566778899aabbc"
CID2 = "9be1a7c3d5f70123456789abcdef0123456789abcdef0123456789abcdef0123"
UID = "6d1c2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
UID_ = UID.replace("-", "_")
STATIC_UID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

PATHS: list[tuple[str, str, ContainerRef | None]] = [
    ("docker cgroupfs", f"/docker/{CID}", ContainerRef(CID, "docker")),
    ("docker systemd", f"/system.slice/docker-{CID}.scope", ContainerRef(CID, "docker")),
    ("docker.slice", f"/docker.slice/docker-{CID}.scope", ContainerRef(CID, "docker")),
    (
        "docker systemd nested init.scope",
        f"/system.slice/docker-{CID}.scope/init.scope",
        ContainerRef(CID, "docker"),
    ),
    ("docker in docker", f"/docker/{CID}/docker/{CID2}", ContainerRef(CID2, "docker")),
    ("docker old debian", f"/{CID}", ContainerRef(CID, None)),
    (
        "containerd systemd burstable",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope",
        ContainerRef(CID, "containerd", UID, "burstable"),
    ),
    (
        "containerd systemd besteffort",
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope",
        ContainerRef(CID, "containerd", UID, "besteffort"),
    ),
    (
        "containerd systemd guaranteed",
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        ContainerRef(CID, "containerd", UID, "guaranteed"),
    ),
    (
        "containerd cgroupfs besteffort",
        f"/kubepods/besteffort/pod{UID}/{CID}",
        ContainerRef(CID, None, UID, "besteffort"),
    ),
    (
        "containerd cgroupfs burstable",
        f"/kubepods/burstable/pod{UID}/{CID}",
        ContainerRef(CID, None, UID, "burstable"),
    ),
    (
        "containerd cgroupfs guaranteed",
        f"/kubepods/pod{UID}/{CID}",
        ContainerRef(CID, None, UID, "guaranteed"),
    ),
    (
        "containerd without systemd scope",
        f"/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}",
        ContainerRef(CID, "containerd", UID, "burstable"),
    ),
    (
        "cri-o systemd besteffort",
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-{CID}.scope",
        ContainerRef(CID, "cri-o", UID, "besteffort"),
    ),
    (
        "cri-o systemd guaranteed",
        f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope",
        ContainerRef(CID, "cri-o", UID, "guaranteed"),
    ),
    (
        "cri-o cgroupfs",
        f"/kubepods/besteffort/pod{UID}/crio-{CID}",
        ContainerRef(CID, "cri-o", UID, "besteffort"),
    ),
    (
        "cri-o conmon is not the container",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"crio-conmon-{CID}.scope",
        None,
    ),
    (
        "cri-dockerd under kubepods",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"docker-{CID}.scope",
        ContainerRef(CID, "docker", UID, "burstable"),
    ),
    (
        "kind node (kubelet in a container)",
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        ContainerRef(CID, "containerd", UID, "besteffort"),
    ),
    (
        "static pod uid",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/"
        f"cri-containerd-{CID}.scope",
        ContainerRef(CID, "containerd", STATIC_UID, "burstable"),
    ),
    ("podman rootful", f"/machine.slice/libpod-{CID}.scope", ContainerRef(CID, "podman")),
    (
        "podman rootful nested container cgroup",
        f"/machine.slice/libpod-{CID}.scope/container",
        ContainerRef(CID, "podman"),
    ),
    (
        "podman rootless",
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
        ContainerRef(CID, "podman"),
    ),
    (
        "podman rootless v1 name=systemd",
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/podman-4242.scope/{CID}",
        ContainerRef(CID, "podman"),
    ),
    ("podman conmon", f"/machine.slice/libpod-conmon-{CID}.scope", None),
    ("user session", "/user.slice/user-1000.slice/session-3.scope", None),
    ("user manager", "/user.slice/user-1000.slice/user@1000.service/init.scope", None),
    ("docker daemon", "/system.slice/docker.service", None),
    ("containerd daemon", "/system.slice/containerd.service", None),
    ("root", "/", None),
    ("empty", "", None),
    ("slurm job", "/slurm/uid_1000/job_4242/step_0", None),
    ("short hex is not an id", "/process_api/f81c7eb20a184fed516174921dde5b4f", None),
    ("uppercase hex is not an id", f"/docker/{CID.upper()}", None),
    ("cgroup namespace relative", f"/../../docker-{CID}.scope", ContainerRef(CID, "docker")),
    ("kubelet pod slice only", f"/kubepods.slice/kubepods-pod{UID_}.slice", None),
]


@pytest.mark.parametrize(
    ("path", "expected"), [(p, e) for _, p, e in PATHS], ids=[n for n, *_ in PATHS]
)
def test_parse_cgroup_path(path: str, expected: ContainerRef | None) -> None:
    assert parse_cgroup_path(path) == expected


V1_DOCKER = [
    "12:pids:/docker/" + CID,
    "11:memory:/docker/" + CID,
    "10:cpu,cpuacct:/docker/" + CID,
    "1:name=systemd:/docker/" + CID,
]

LINES: list[tuple[str, list[str], ContainerRef | None]] = [
    ("v1 docker", V1_DOCKER, ContainerRef(CID, "docker")),
    ("v1 with trailing newlines", [line + "\n" for line in V1_DOCKER], ContainerRef(CID, "docker")),
    ("v2 docker systemd", [f"0::/system.slice/docker-{CID}.scope"], ContainerRef(CID, "docker")),
    ("hybrid, v2 line is root", [*V1_DOCKER, "0::/"], ContainerRef(CID, "docker")),
    (
        "hybrid, v2 line wins",
        [f"4:memory:/docker/{CID2}", f"0::/system.slice/docker-{CID}.scope"],
        ContainerRef(CID, "docker"),
    ),
    (
        "v1 kubepods colon form keeps its colons",
        [f"5:memory:/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}"],
        ContainerRef(CID, "containerd", UID, "burstable"),
    ),
    (
        "host process",
        ["0::/user.slice/user-1000.slice/session-3.scope"],
        None,
    ),
    (
        "this sandbox's v1 layout",
        ["9:name=systemd:/", "4:memory:/process_api/f81c7eb20a184fed516174921dde5b4f", "0::/"],
        None,
    ),
    ("garbage", ["not a cgroup line", ""], None),
]


@pytest.mark.parametrize(
    ("lines", "expected"), [(v, e) for _, v, e in LINES], ids=[n for n, *_ in LINES]
)
def test_container_from_cgroup_lines(lines: list[str], expected: ContainerRef | None) -> None:
    assert container_from_cgroup_lines(lines) == expected


def _write(base: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_v2_container(tmp_path: Path) -> None:
    cg = f"system.slice/docker-{CID}.scope"
    _write(tmp_path, {"cgroup.controllers": "cpu io memory pids\n"})
    _write(
        tmp_path / cg,
        {
            "cpu.stat": "usage_usec 5000000\nuser_usec 3500000\nsystem_usec 1500000\n"
            "nr_periods 200\nnr_throttled 60\nthrottled_usec 2500000\n",
            "cpu.max": "800000 100000\n",
            "memory.current": "40000000000\n",
            "memory.max": "68719476736\n",
            "memory.events": "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n",
            "io.stat": "8:0 rbytes=1000 wbytes=2000 rios=1 wios=2 dbytes=0 dios=0\n"
            "259:0 rbytes=30 wbytes=40 rios=3 wios=4 dbytes=0 dios=0\n",
        },
    )
    reader = CgroupReader(str(tmp_path))
    res = reader.read([f"0::/{cg}"])
    assert res is not None
    assert res.cgroup_version == 2
    assert res.cpu_user_s == pytest.approx(3.5)
    assert res.cpu_system_s == pytest.approx(1.5)
    assert res.cpu_limit == pytest.approx(8.0)
    assert (res.cpu_periods, res.cpu_throttled_periods) == (200, 60)
    assert res.cpu_throttled_s == pytest.approx(2.5)
    assert res.memory_usage_bytes == 40_000_000_000
    assert res.memory_limit_bytes == 68_719_476_736
    assert res.oom_kills == 1
    assert (res.disk_read_bytes, res.disk_write_bytes) == (1030, 2040)
    assert reader.take_errors() == ()


def test_v2_no_limits_and_missing_files(tmp_path: Path) -> None:
    _write(tmp_path, {"cgroup.controllers": "cpu memory\n"})
    _write(
        tmp_path / "c", {"cpu.max": "max 100000\n", "memory.max": "max\n", "memory.current": "7\n"}
    )
    reader = CgroupReader(str(tmp_path))
    res = reader.read_path("/c")
    assert res is not None
    assert res.cpu_limit is None
    assert res.memory_limit_bytes is None
    assert res.memory_usage_bytes == 7
    assert res.cpu_user_s is None and res.oom_kills is None and res.disk_read_bytes is None
    assert reader.take_errors() == ()


def test_v2_malformed_files_become_none_and_errors(tmp_path: Path) -> None:
    _write(tmp_path, {"cgroup.controllers": "cpu memory io\n"})
    _write(
        tmp_path / "c",
        {
            "cpu.max": "lots\n",
            "memory.max": "\x00\x01garbage",
            "memory.current": "",
            "cpu.stat": "user_usec many\nsystem_usec 10\n",
            "io.stat": "8:0 rbytes=x wbytes=1\n",
        },
    )
    reader = CgroupReader(str(tmp_path))
    res = reader.read_path("/c")
    assert res is not None
    assert res.cpu_limit is None and res.memory_limit_bytes is None
    assert res.memory_usage_bytes is None
    assert res.cpu_user_s is None
    assert res.cpu_system_s == pytest.approx(1e-5)
    assert res.disk_read_bytes is None
    calls = {e.call for e in reader.take_errors()}
    assert calls == {"cpu.max", "memory.max", "memory.current", "cpu.stat", "io.stat"}
    assert reader.take_errors() == ()


def test_gone_cgroup_is_none(tmp_path: Path) -> None:
    _write(tmp_path, {"cgroup.controllers": "cpu memory\n"})
    assert CgroupReader(str(tmp_path)).read_path(f"/system.slice/docker-{CID}.scope") is None
    assert CgroupReader(str(tmp_path)).read(["4:memory:/x"]) is None  # no v2 line at all


def _v1_tree(root: Path, cg: str, joint: bool) -> None:
    cpu = "cpu,cpuacct" if joint else "cpu"
    acct = "cpu,cpuacct" if joint else "cpuacct"
    _write(
        root / cpu / cg,
        {
            "cpu.cfs_quota_us": "200000\n",
            "cpu.cfs_period_us": "100000\n",
            "cpu.stat": "nr_periods 50\nnr_throttled 5\nthrottled_time 3000000000\n",
        },
    )
    _write(
        root / acct / cg,
        {"cpuacct.usage_user": "7000000000\n", "cpuacct.usage_sys": "500000000\n"},
    )
    _write(
        root / "memory" / cg,
        {
            "memory.usage_in_bytes": "123456789\n",
            "memory.limit_in_bytes": "9223372036854771712\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        },
    )
    _write(
        root / "blkio" / cg,
        {
            "blkio.throttle.io_service_bytes": "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n"
            "8:0 Async 12288\n8:0 Total 12288\n8:16 Read 1\n8:16 Write 2\nTotal 12291\n"
        },
    )


@pytest.mark.parametrize("joint", [False, True], ids=["separate mounts", "cpu,cpuacct mount"])
def test_v1_container(tmp_path: Path, joint: bool) -> None:
    cg = f"docker/{CID}"
    _v1_tree(tmp_path, cg, joint)
    lines = [
        f"12:memory:/{cg}",
        f"11:cpu,cpuacct:/{cg}",
        f"10:blkio:/{cg}",
        f"1:name=systemd:/{cg}",
        "0::/",
    ]
    reader = CgroupReader(str(tmp_path))
    res = reader.read(lines)
    assert res is not None
    assert res.cgroup_version == 1
    assert res.cpu_user_s == pytest.approx(7.0)
    assert res.cpu_system_s == pytest.approx(0.5)
    assert res.cpu_limit == pytest.approx(2.0)
    assert (res.cpu_periods, res.cpu_throttled_periods) == (50, 5)
    assert res.cpu_throttled_s == pytest.approx(3.0)
    assert res.memory_usage_bytes == 123456789
    assert res.memory_limit_bytes is None  # the "unlimited" page-counter maximum
    assert res.oom_kills == 3
    assert (res.disk_read_bytes, res.disk_write_bytes) == (4097, 8194)
    assert reader.take_errors() == ()


def test_v1_limits_and_no_quota(tmp_path: Path) -> None:
    _write(tmp_path / "cpu" / "c", {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"})
    _write(tmp_path / "memory" / "c", {"memory.limit_in_bytes": "34359738368\n"})
    res = CgroupReader(str(tmp_path)).read_path("/c")
    assert res is not None
    assert res.cpu_limit is None
    assert res.memory_limit_bytes == 34359738368
    assert res.cpu_user_s is None and res.disk_read_bytes is None


def test_v1_gone_and_unreadable(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    reader = CgroupReader(str(tmp_path))
    assert reader.read([f"4:memory:/docker/{CID}"]) is None
    (tmp_path / "memory" / "c").mkdir()
    (tmp_path / "memory" / "c" / "memory.usage_in_bytes").mkdir()  # reading it fails with EISDIR
    res = reader.read(["4:memory:/c"])
    assert res is not None and res.memory_usage_bytes is None
    assert [(e.source, e.call, e.error_type) for e in reader.take_errors()] == [
        ("cgroup", "memory.usage_in_bytes", "IsADirectoryError")
    ]


def test_the_test_process_own_cgroup() -> None:
    """The real /sys/fs/cgroup through the real /proc/self/cgroup."""
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    reader = CgroupReader()
    res = reader.read(lines)
    if res is None:
        pytest.skip("this process's cgroup is not visible under /sys/fs/cgroup")
    assert res.cgroup_version == (2 if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else 1)
    mem_file = "memory.current" if res.cgroup_version == 2 else "memory.usage_in_bytes"
    if res.memory_usage_bytes is not None or _own_file_exists(lines, mem_file):
        assert res.memory_usage_bytes is not None and res.memory_usage_bytes > 0
    if res.cpu_user_s is not None:
        assert res.cpu_user_s >= 0
    if res.memory_limit_bytes is not None:
        assert res.memory_limit_bytes > 0
    if res.cpu_limit is not None:
        assert res.cpu_limit > 0
    assert reader.take_errors() == ()


def _own_file_exists(lines: list[str], name: str) -> bool:
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if name.startswith("memory") and (hierarchy == "0" or "memory" in controllers.split(",")):
            for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/memory"):
                if os.path.exists(os.path.join(base, path.lstrip("/"), name)):
                    return True
    return False


# -- Slurm --------------------------------------------------------------------------------------

SLURM_PATHS = {
    # cgroup/v2 plugin: slurmstepd.scope, the step's processes under user/task_<n>
    "/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0": ("4242", "0"),
    "/system.slice/slurmstepd.scope/job_4242/step_batch/user/task_0": ("4242", "batch"),
    "/system.slice/slurmstepd.scope/job_4242/step_extern/user/task_special": ("4242", "extern"),
    "/system.slice/slurmstepd.scope/job_4242/step_interactive": ("4242", "interactive"),
    "/system.slice/node07_slurmstepd.scope/job_9/step_2/user/task_3": ("9", "2"),  # multi-slurmd
    # cgroup/v1 plugins: /slurm/uid_<uid>/job_<id>/step_<step>[/task_<n>]
    "/slurm/uid_1000/job_77/step_3/task_1": ("77", "3"),
    "/slurm/uid_1000/job_77/step_0": ("77", "0"),
    "/slurm_node07/uid_0/job_5/step_extern": ("5", "extern"),
}
NOT_SLURM = [
    "/system.slice/slurmstepd.scope/job_4242",  # slurmstepd itself: no step
    "/system.slice/slurmstepd.scope/system",
    "/slurm/uid_1000/job_77",
    "/user.slice/user-1000.slice/session-3.scope",
    "/job_1/step_0",  # no slurm parent
    "/system.slice/slurmd.service",
    "/system.slice/slurmstepd.scope/job_x/step_0",
    "/system.slice/slurmstepd.scope/job_1/step_weird",
]


@pytest.mark.parametrize(("path", "step"), SLURM_PATHS.items())
def test_slurm_steps_from_the_paths_slurm_writes(path: str, step: tuple[str, str]) -> None:
    assert parse_slurm_path(path) == SlurmStep(*step)
    assert parse_cgroup_path(path) is None  # a job step is no container


@pytest.mark.parametrize("path", NOT_SLURM)
def test_paths_of_no_slurm_step(path: str) -> None:
    assert parse_slurm_path(path) is None


def test_slurm_step_from_hybrid_lines() -> None:
    lines = ["12:memory:/slurm/uid_1000/job_77/step_3/task_1",
             "5:devices:/slurm/uid_1000/job_77/step_3", "0::/"]
    assert slurm_step_from_cgroup_lines(lines) == SlurmStep("77", "3")
    assert slurm_step_from_cgroup_lines(["0::/init.scope", "garbage"]) is None


# Documentation/accounting/psi.rst: one line per stall kind, total in microseconds.
_PSI = ("some avg10=12.50 avg60=8.00 avg300=3.10 total=4500000\n"
        "full avg10=1.00 avg60=0.50 avg300=0.20 total=250000\n")


def test_v2_pressure_stall_times(tmp_path: Path) -> None:
    _write(tmp_path, {"cgroup.controllers": "cpu io memory\n"})
    _write(tmp_path / "c", {"io.pressure": _PSI, "memory.pressure": _PSI.replace("4500000", "7")})
    reader = CgroupReader(str(tmp_path))
    res = reader.read_path("/c")
    assert res is not None
    assert (res.io_pressure_some_s, res.io_pressure_full_s) == (pytest.approx(4.5),
                                                                pytest.approx(0.25))
    assert res.memory_pressure_some_s == pytest.approx(7e-6)
    assert reader.take_errors() == ()
    _write(tmp_path / "nopsi", {"memory.current": "1\n"})  # PSI off: no pressure files
    res = reader.read_path("/nopsi")
    assert res is not None and res.io_pressure_some_s is None and res.memory_pressure_full_s is None


@pytest.mark.parametrize("text", [
    "some avg10=0.00 avg60=0.00 avg300=0.00\n",  # no total
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=-4\n",
    "some total=12\nhalf avg10=0.00 total=3\n",
    "\x00\x01garbage",
])
def test_v2_malformed_pressure_is_none_and_counted(tmp_path: Path, text: str) -> None:
    _write(tmp_path, {"cgroup.controllers": "cpu io memory\n"})
    _write(tmp_path / "c", {"io.pressure": text})
    reader = CgroupReader(str(tmp_path))
    res = reader.read_path("/c")
    assert res is not None and res.io_pressure_some_s is None and res.io_pressure_full_s is None
    assert [(e.call, e.error_type) for e in reader.take_errors()] == [
        ("io.pressure", "Malformed")]
