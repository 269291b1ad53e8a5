"""The same conda or pip environment in several containers: found by its package listing through
``/proc/<pid>/root``, on its cadence (a hand-moved clock), bounded, links never followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clock import Clock

from otel_gpu.sources.environments import EnvironmentScanner, EnvTarget

CONDA = ["numpy-1.26.4-py311h64a7726_0", "python-3.11.9-hb806964_0", "pytorch-2.3.0-py3.11_0"]


def _container(proc: Path, pid: int, conda: list[str] | None = None,
               pip: list[str] | None = None, payload: int = 0) -> Path:
    root = proc / f"rootfs-{pid}"
    root.mkdir()
    if conda is not None:
        meta = root / "opt" / "conda" / "conda-meta"
        meta.mkdir(parents=True)
        for name in conda:
            (meta / f"{name}.json").write_text("{}")
        (meta / "history").write_text("")  # not a package record
        lib = root / "opt" / "conda" / "lib"
        lib.mkdir()
        with open(lib / "libtorch.so", "wb") as f:
            f.truncate(payload)
    if pip is not None:
        site = root / "usr" / "local" / "lib" / "python3.10" / "dist-packages"
        site.mkdir(parents=True)
        for name in pip:
            (site / f"{name}.dist-info").mkdir()
        (site / "torch").mkdir()
    (proc / str(pid)).mkdir()
    os.symlink(root, proc / str(pid) / "root")
    return root


def _target(pid: int, image: str | None) -> EnvTarget:
    return EnvTarget({"container.id": f"{pid:064x}", "container.name": f"c{pid}"}, pid, image)


def test_the_same_listing_in_two_images_is_two_copies(tmp_path: Path) -> None:
    for pid in (100, 101, 102):
        _container(tmp_path, pid, conda=CONDA, pip=["torch-2.3.0"], payload=5 << 20)
    _container(tmp_path, 103, conda=CONDA[:2], payload=1 << 20)  # another environment
    scanner = EnvironmentScanner(str(tmp_path))
    found = scanner.read([_target(100, "sha256:a"), _target(101, "sha256:a"),
                          _target(102, "sha256:b"), _target(103, "sha256:c")])
    conda = [e for e in found if e.kind == "conda"]
    assert len(conda) == 1
    env = conda[0]
    assert (env.path, env.packages, env.copies) == ("/opt/conda", 3, 2)
    assert [c["container.name"] for c in env.containers] == ["c100", "c101", "c102"]
    assert env.size_bytes is not None and env.size_bytes >= 5 << 20 and env.size_complete
    pip = [e for e in found if e.kind == "pip"]
    assert [(e.path, e.copies) for e in pip] == [("/usr/local/lib/python3.10/dist-packages", 2)]
    assert "numpy" not in repr(found)  # package names are hashed, never kept
    assert scanner.take_errors() == ()


def test_scans_run_on_their_cadence_and_gone_containers_leave_at_once(tmp_path: Path) -> None:
    clock = Clock()
    for pid in (100, 101, 102):
        _container(tmp_path, pid, conda=CONDA)
    scanner = EnvironmentScanner(str(tmp_path), interval_s=1800, clock=clock)
    targets = [_target(100, None), _target(101, None)]
    assert len(scanner.read(targets)[0].containers) == 2
    for _ in range(179):  # 10 s cycles up to just before the next scan
        clock.now += 10
        found = scanner.read([*targets, _target(102, None)])
    assert scanner.scans == 1 and len(found[0].containers) == 2  # 102 waits for the next scan
    assert scanner.read(targets[:1]) == ()  # 101 went: nothing shared any more
    clock.now += 10
    found = scanner.read([*targets, _target(102, None)])
    assert scanner.scans == 2 and len(found[0].containers) == 3


def test_a_symbolic_link_in_the_container_tree_is_not_followed(tmp_path: Path) -> None:
    host = tmp_path / "host-secrets"
    (host / "conda-meta").mkdir(parents=True)
    (host / "conda-meta" / "x-1-0.json").write_text("{}")
    for pid in (100, 101):
        root = _container(tmp_path, pid)
        (root / "opt").mkdir()
        os.symlink(str(host), root / "opt" / "conda")
    for pid in (102, 103):  # the link further down: a real conda-meta, a link inside the prefix
        root = _container(tmp_path, pid, conda=CONDA)
        os.symlink(str(host), root / "opt" / "conda" / "lib" / "host")
        with open(host / "big", "wb") as f:
            f.truncate(1 << 30)
    scanner = EnvironmentScanner(str(tmp_path))
    assert scanner.read([_target(100, "a"), _target(101, "b")]) == ()
    scanner = EnvironmentScanner(str(tmp_path))
    found = scanner.read([_target(102, "a"), _target(103, "b")])
    assert len(found) == 1 and found[0].size_bytes is not None
    assert found[0].size_bytes < 1 << 20  # the host's 1 GiB file was not counted
    assert scanner.take_errors() == ()


def test_work_is_bounded(tmp_path: Path) -> None:
    for pid in (100, 101, 102):
        root = _container(tmp_path, pid, conda=CONDA)
        for i in range(50):
            (root / "opt" / "conda" / f"f{i}").write_text("x")
    scanner = EnvironmentScanner(str(tmp_path), max_entries=20, max_containers=2)
    found = scanner.read([_target(p, str(p)) for p in (100, 101, 102)])
    assert len(found) == 1 and len(found[0].containers) == 2  # two containers a scan
    assert found[0].size_complete is False and found[0].size_bytes is not None


def test_an_unreadable_tree_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _container(tmp_path, 100, conda=CONDA)
    _container(tmp_path, 101, conda=CONDA)
    real = os.open

    def open_(path, flags, mode=0o777, *, dir_fd=None):  # as the kernel answers a reader
        # without CAP_DAC_READ_SEARCH, in container 100's tree only
        if path == "conda-meta" and dir_fd is not None and \
                "rootfs-100" in os.readlink(f"/proc/self/fd/{dir_fd}"):
            raise PermissionError(13, "Permission denied", path)
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)
    scanner = EnvironmentScanner(str(tmp_path))
    assert scanner.read([_target(100, "a"), _target(101, "b")]) == ()
    assert [e.error_type for e in scanner.take_errors()] == ["PermissionError"]
