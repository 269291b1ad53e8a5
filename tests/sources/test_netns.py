# ruff: noqa: E501  (the fixture keeps /proc/net/dev lines as wide as the kernel writes them)
"""Per-container network counters through ``/proc/<pid>/net/dev``, over a temp /proc tree laid
out as the kernel shows it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otel_gpu.snapshot import ContainerNetwork
from otel_gpu.sources.netns import NetnsReader, parse_net_dev

# proc_net(5): two header lines, then one line per interface.
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     789    0    0    0     0          0         0   123456     789    0    0    0     0       0          0
  eth0: 9000000    6000    0    0    0     0          0         0 750000000  500000    0    0    0     0       0          0
net1: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0
"""


def _proc(tmp_path: Path, pid: int, ns: str, net_dev: str | None) -> None:
    base = tmp_path / str(pid)
    (base / "ns").mkdir(parents=True, exist_ok=True)
    os.symlink(ns, base / "ns" / "net")
    if net_dev is not None:
        (base / "net").mkdir()
        (base / "net" / "dev").write_text(net_dev)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    _proc(tmp_path, 1, "net:[4026531992]", NET_DEV)
    return tmp_path


def test_a_container_namespace_sums_its_interfaces_but_lo(proc: Path) -> None:
    _proc(proc, 4242, "net:[4026532571]", NET_DEV)
    reader = NetnsReader(str(proc))
    assert reader.read(4242) == ContainerNetwork(
        rx_bytes=9001000, tx_bytes=750002000, rx_packets=6010, tx_packets=500020)
    assert reader.take_errors() == ()


def test_a_container_on_the_host_network_is_skipped(proc: Path) -> None:
    _proc(proc, 4242, "net:[4026531992]", NET_DEV)
    reader = NetnsReader(str(proc))
    assert reader.read(4242) is None
    assert reader.take_errors() == ()


def test_an_exited_process_gives_nothing_and_no_error(proc: Path) -> None:
    reader = NetnsReader(str(proc))
    assert reader.read(999) is None
    assert reader.take_errors() == ()


@pytest.mark.parametrize("text", [
    NET_DEV.replace("9000000", "-9"),
    NET_DEV.replace("net1:", "net1"),
    NET_DEV.replace("2000 20 0 0 0 0 0 0\n", "2000\n"),
    "garbage",  # header lines only
])
def test_a_malformed_net_dev_is_recorded(proc: Path, text: str) -> None:
    _proc(proc, 4242, "net:[4026532571]", text)
    reader = NetnsReader(str(proc))
    result = reader.read(4242)
    errors = [(e.call, e.error_type) for e in reader.take_errors()]
    if text == "garbage":  # no interface lines at all: nothing was sent or received
        assert result == ContainerNetwork(0, 0, 0, 0) and errors == []
    else:
        assert result is None and errors == [("net/dev", "Malformed")]


def test_without_the_host_namespace_nothing_is_reported(tmp_path: Path) -> None:
    _proc(tmp_path, 4242, "net:[4026532571]", NET_DEV)
    reader = NetnsReader(str(tmp_path))
    assert reader.read(4242) is None
    assert [(e.call, e.error_type) for e in reader.take_errors()] == [
        ("ns/net", "FileNotFoundError")]


def test_parse_ignores_loopback_only() -> None:
    only_lo = "\n".join(NET_DEV.splitlines()[:3]) + "\n"
    assert parse_net_dev(only_lo) == ContainerNetwork(0, 0, 0, 0)
