"""read_bytes: whole small files, bounded, through the descriptor."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_gpu.sources._files import read_bytes


def test_a_small_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    path.write_bytes(b"1 (python) S 0\n")
    assert read_bytes(str(path), 1 << 16) == b"1 (python) S 0\n"


def test_an_empty_file_reads_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert read_bytes(str(path), 1 << 16) == b""


def test_a_large_file_is_cut_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert read_bytes(str(path), 1 << 16) == data[: 1 << 16]
    assert read_bytes(str(path), 1 << 20) == data  # more than one chunk, read to the end


def test_a_proc_file_of_several_pages_is_read_whole() -> None:
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        pytest.skip("no /proc on this system")
    ours = read_bytes(str(smaps), 1 << 22)
    # The mappings may change between two reads; their records always end with VmFlags.
    assert len(ours) > 4096
    assert ours.endswith(b"\n")
    assert ours.rsplit(b"\n", 2)[-2].startswith(b"VmFlags:")


def test_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "gone"), 1 << 16)


def test_a_directory_raises_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        read_bytes(str(tmp_path), 1 << 16)
