from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otel_gpu.sources import procfs
from otel_gpu.sources.procfs import ProcessInfo, ProcfsReader

CID = "3f2a9c1be0d74e55a0c6b1f2d3e4a5b6c7d8e9f00112233445566778899aabbc"


def _stat(pid: int, comm: str, start: int) -> str:
    # pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime
    # stime cutime cstime priority nice num_threads itrealvalue starttime vsize rss ...
    rest = ["S", "1", pid, pid, "0", "-1", "4194560", "10", "0", "0", "0", "5", "3", "0", "0"]
    rest += ["20", "0", "4", "0", start, "123456", "789"]
    return f"{pid} ({comm}) " + " ".join(str(x) for x in rest) + "\n"


def _status(uid: int, euid: int | None = None) -> str:
    euid = uid if euid is None else euid
    ids = f"{uid}\t{euid}\t{euid}\t{euid}"
    return f"Name:\tpython\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t{ids}\nGid:\t0\t0\t0\t0\n"


def _proc(
    root: Path,
    pid: int,
    comm: str = "python",
    start: int = 1000,
    uid: int = 1000,
    cgroup: str = f"0::/system.slice/docker-{CID}.scope\n",
) -> Path:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(_stat(pid, comm, start))
    (d / "status").write_text(_status(uid))
    (d / "cgroup").write_text(cgroup)
    return d


def test_reads_uid_comm_start_and_cgroup(tmp_path: Path) -> None:
    _proc(tmp_path, 4242, uid=1001, start=98765)
    (tmp_path / "4242" / "status").write_text(_status(1001, euid=0))  # setuid: real uid counts
    info = ProcfsReader(str(tmp_path)).read(4242)
    assert info == ProcessInfo(
        pid=4242,
        start_time_ticks=98765,
        comm="python",
        uid=1001,
        cgroup_lines=(f"0::/system.slice/docker-{CID}.scope",),
        complete=True,
    )


@pytest.mark.parametrize(
    "comm",
    ["my prog", "a) (b", "x)", "((", ") 1 2 3 4", "python3.11", ""],
    ids=["space", "parens", "close paren", "open parens", "fake fields", "dots", "empty"],
)
def test_comm_with_spaces_and_parentheses(tmp_path: Path, comm: str) -> None:
    _proc(tmp_path, 7, comm=comm, start=424242)
    info = ProcfsReader(str(tmp_path)).read(7)
    assert info is not None
    assert info.comm == comm
    assert info.start_time_ticks == 424242


def test_control_characters_in_comm_are_replaced(tmp_path: Path) -> None:
    _proc(tmp_path, 7, comm="evil\x1b[31m\nx")
    info = ProcfsReader(str(tmp_path)).read(7)
    assert info is not None and info.comm == "evil?[31m?x"


def test_missing_process_is_none_without_error(tmp_path: Path) -> None:
    reader = ProcfsReader(str(tmp_path))
    assert reader.read(99999) is None
    assert reader.take_errors() == ()


def test_exit_between_files_is_none(tmp_path: Path) -> None:
    d = _proc(tmp_path, 5)
    (d / "cgroup").unlink()  # stat and status were there, cgroup is gone: the process exited
    reader = ProcfsReader(str(tmp_path))
    assert reader.read(5) is None
    assert reader.take_errors() == ()


def test_permission_error_gives_partial_info_and_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _proc(tmp_path, 5, uid=1000)
    real_read = procfs.read_bytes

    def fake_read(path: str, limit: int) -> bytes:
        if str(path).endswith("/5/cgroup"):
            raise PermissionError(13, "Permission denied", path)
        return real_read(path, limit)

    monkeypatch.setattr(procfs, "read_bytes", fake_read)
    reader = ProcfsReader(str(tmp_path))
    info = reader.read(5)
    assert info is not None
    assert (info.uid, info.comm, info.cgroup_lines, info.complete) == (1000, "python", (), False)
    assert [(e.source, e.call, e.error_type) for e in reader.take_errors()] == [
        ("procfs", "cgroup", "PermissionError")
    ]
    assert 5 not in reader.cached_pids  # partial reads are retried next time


def test_malformed_files(tmp_path: Path) -> None:
    d = _proc(tmp_path, 6)
    (d / "stat").write_text("6 (short) S 1 2\n")
    (d / "status").write_text("Name:\tx\nUid:\tnobody\n")
    reader = ProcfsReader(str(tmp_path))
    info = reader.read(6)
    assert info is not None
    assert (info.start_time_ticks, info.comm, info.uid) == (None, "short", None)
    assert {(e.call, e.error_type) for e in reader.take_errors()} == {
        ("stat", "Malformed"),
        ("status", "Malformed"),
    }
    assert 6 not in reader.cached_pids


def test_cache_by_pid_and_start_time(tmp_path: Path) -> None:
    d = _proc(tmp_path, 10, uid=1000, start=500)
    reader = ProcfsReader(str(tmp_path))
    first = reader.read(10)
    assert first is not None and first.uid == 1000
    (d / "status").write_text(_status(2000))
    assert reader.read(10) is first  # same process: status is not read again
    (d / "stat").write_text(_stat(10, "python", 500).replace("(python)", "(torchrun)"))
    renamed = reader.read(10)
    assert renamed is not None and renamed.comm == "torchrun" and renamed.uid == 1000  # exec
    (d / "stat").write_text(_stat(10, "python", 501))  # pid reused by a new process
    reused = reader.read(10)
    assert reused is not None and reused.uid == 2000 and reused.start_time_ticks == 501


def test_read_many_evicts_pids_not_seen(tmp_path: Path) -> None:
    for pid in (1, 2, 3):
        _proc(tmp_path, pid, uid=1000 + pid)
    reader = ProcfsReader(str(tmp_path))
    assert set(reader.read_many([1, 2, 3])) == {1, 2, 3}
    assert reader.cached_pids == {1, 2, 3}
    found = reader.read_many([2, 3, 4])  # 4 does not exist
    assert {pid: info.uid for pid, info in found.items()} == {2: 1002, 3: 1003}
    assert reader.cached_pids == {2, 3}
    os.remove(tmp_path / "3" / "stat")
    assert set(reader.read_many([2, 3])) == {2}
    assert reader.cached_pids == {2}


def test_never_reads_cmdline_or_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _proc(tmp_path, 8)
    opened: list[str] = []
    real_read = procfs.read_bytes

    def spy(path: str, limit: int) -> bytes:
        opened.append(os.path.basename(str(path)))
        return real_read(path, limit)

    monkeypatch.setattr(procfs, "read_bytes", spy)
    ProcfsReader(str(tmp_path)).read_many([8])
    assert sorted(opened) == ["cgroup", "maps", "stat", "status"]


def _environ(*entries: str) -> bytes:
    return b"".join(e.encode() + b"\0" for e in entries)


@pytest.mark.parametrize(("environ", "account"), [
    (_environ("PATH=/bin", "SLURM_JOB_ID=4242", "SLURM_JOB_ACCOUNT=vision-lab", "HOME=/h"),
     "vision-lab"),
    (_environ("SLURM_JOB_ACCOUNT=first"), "first"),
    (_environ("MY_SLURM_JOB_ACCOUNT=not-this", "PATH=/bin"), None),
    (_environ("SLURM_JOB_ACCOUNT=\x1b[31mred\nline"), "[31mredline"),  # control characters dropped
    (b"", None),
])
def test_slurm_account_is_the_one_variable_read(tmp_path: Path, environ: bytes,
                                                account: str | None) -> None:
    (_proc(tmp_path, 12) / "environ").write_bytes(environ)
    reader = ProcfsReader(str(tmp_path))
    info = reader.read(12)
    assert info is not None
    assert reader.slurm_account(info) == account
    assert reader.take_errors() == ()


def test_slurm_account_is_read_once_per_process(tmp_path: Path) -> None:
    d = _proc(tmp_path, 13, start=700)
    (d / "environ").write_bytes(_environ("SLURM_JOB_ACCOUNT=a1"))
    reader = ProcfsReader(str(tmp_path))
    info = reader.read_many([13])[13]
    assert reader.slurm_account(info) == "a1"
    (d / "environ").write_bytes(_environ("SLURM_JOB_ACCOUNT=a2"))
    assert reader.slurm_account(info) == "a1"  # the same process: not read again
    (d / "stat").write_text(_stat(13, "python", 701))  # the pid reused
    assert reader.slurm_account(reader.read_many([13])[13]) == "a2"
    reader.read_many([])
    assert reader.slurm_account(ProcessInfo(13, None, None, None, ())) is None  # no start time
    assert reader._accounts == {}  # forgotten with the process


def test_unreadable_environ_is_recorded_without_its_content(tmp_path: Path) -> None:
    (_proc(tmp_path, 14) / "environ").mkdir()  # read() fails as a refused environ would
    reader = ProcfsReader(str(tmp_path))
    info = reader.read(14)
    assert info is not None and reader.slurm_account(info) is None
    assert [(e.call, e.error_type) for e in reader.take_errors()] == [
        ("environ", "IsADirectoryError")]


_MAPS = (
    "55d0c2a00000-55d0c2b00000 r-xp 00000000 08:01 131090     /usr/bin/python3.10\n"
    "7f3a10000000-7f3a10200000 r-xp 00000000 08:01 262211     "
    "/usr/lib/x86_64-linux-gnu/libc.so.6\n"
)
_DALI_LINE = ("7f3a20000000-7f3a28000000 r-xp 00000000 08:01 393300     "
              "/usr/local/lib/python3.10/dist-packages/nvidia/dali/libdali.so\n")


@pytest.mark.parametrize(("maps", "dali"), [(_MAPS, False), (_MAPS + _DALI_LINE, True),
                                            ("", False)])
def test_dali_from_maps(tmp_path: Path, maps: str, dali: bool) -> None:
    (_proc(tmp_path, 9) / "maps").write_text(maps)
    reader = ProcfsReader(str(tmp_path))
    info = reader.read(9)
    assert info is not None and info.dali is dali and info.complete
    assert reader.take_errors() == ()


def test_dali_is_read_once_per_process(tmp_path: Path) -> None:
    d = _proc(tmp_path, 10)
    (d / "maps").write_text(_MAPS + _DALI_LINE)
    reader = ProcfsReader(str(tmp_path))
    assert reader.read(10).dali is True  # type: ignore[union-attr]
    (d / "maps").write_text(_MAPS)
    assert reader.read(10).dali is True  # type: ignore[union-attr]
    (d / "stat").write_text(_stat(10, "python", 2000))  # the pid reused by a new process
    assert reader.read(10).dali is False  # type: ignore[union-attr]


def test_unreadable_maps_is_unknown_and_recorded(tmp_path: Path) -> None:
    (_proc(tmp_path, 11) / "maps").mkdir()  # read() fails as a refused maps would
    reader = ProcfsReader(str(tmp_path))
    info = reader.read(11)
    assert info is not None and info.dali is None and info.complete
    assert [(e.call, e.error_type) for e in reader.take_errors()] == [
        ("maps", "IsADirectoryError")]


def test_real_proc_self_and_child() -> None:
    reader = ProcfsReader()
    me = reader.read(os.getpid())
    assert me is not None and me.complete
    assert me.uid == os.getuid()
    assert me.dali is ("nvidia.dali" in sys.modules)
    assert me.start_time_ticks is not None and me.start_time_ticks > 0
    with open("/proc/self/cgroup") as f:
        assert me.cgroup_lines == tuple(f.read().splitlines())

    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        info = reader.read(child.pid)
        assert info is not None and info.start_time_ticks is not None
        assert info.start_time_ticks >= me.start_time_ticks
    finally:
        child.communicate(b"")
    assert reader.read(child.pid) is None  # reaped
    assert reader.take_errors() == ()
