"""The series ledger's per-point work: a series' key is computed once when the observe function
hands out the same attribute set each cycle, and the value check is called only for the values
that are not plain finite floats or int64s."""

from __future__ import annotations

import math

from otel_gpu.snapshot import DiskIo, Filesystem, HostSnapshot, NetworkIo, NfsIo, Snapshot
from otel_gpu.telemetry.catalog import CATALOG
from otel_gpu.telemetry.catalog.metric import AttributeSets, SeriesAttributes
from otel_gpu.telemetry.failures import FailureTally, ValueCheck
from otel_gpu.telemetry.series import SeriesLedger


def _host(cycle: int, interface: str = "eth0") -> Snapshot:
    return Snapshot(cycle=cycle, timestamp=float(cycle), driver_available=False, host=HostSnapshot(
        cpu_time_s={"user": 1.0 + cycle, "idle": 2.0 + cycle},
        cpu_utilization={"user": 0.5, "idle": 0.5},
        cpu_logical_count=8,
        memory_total_bytes=100,
        memory_state_bytes={"used": 40, "free": 60},
        memory_available_bytes=60,
        swap_state_bytes={"used": 0, "free": 10},
        disks={"vda": DiskIo(1 + cycle, 2, 3, 4)},
        networks={interface: NetworkIo(5 + cycle, 6, 0, 0)},
        filesystems=(Filesystem("/dev/vda1", "/", "ext4", "rw", 30 + cycle, 60, 10),),
        nfs=(NfsIo("nas:/data", "/data", "nfs4", 7 + cycle, 8),),
    ))


def _host_metrics() -> list:
    return [m for m in CATALOG if m.section == "Host" and m.observe is not None]


def test_host_series_keep_one_attribute_set_that_knows_its_key() -> None:
    for metric in _host_metrics():
        assert metric.observe is not None
        first = list(metric.observe(_host(1)))
        again = list(metric.observe(_host(2)))
        assert first, metric.name
        assert [a for _, a in first] == [a for _, a in again], metric.name
        for (_, a), (_, b) in zip(first, again, strict=True):
            assert a is b, metric.name
            assert isinstance(a, SeriesAttributes)
            assert a.key == frozenset(dict(a).items())


def test_the_ledger_counts_series_alike_whatever_dict_carries_them() -> None:
    ledger = SeriesLedger()
    plain = {"a": "1", "b": "2"}
    carried = SeriesAttributes(plain)
    ledger.observe("g", False, [(1.0, plain)], 1)
    ledger.observe("g", False, [(1.0, carried)], 2)
    ledger.observe("c", True, [(5.0, carried)], 1)
    ledger.observe("c", True, [(7.0, dict(plain))], 2)
    assert ledger.sizes() == {"g": 1, "c": 1}
    assert ledger.stale(2, 0) == {"g": 0, "c": 0}


def test_the_value_check_is_asked_only_about_unusual_values() -> None:
    tally = FailureTally()
    asked: list[object] = []
    check = ValueCheck("m", "nvml", tally)

    def counting(value: object) -> bool:
        asked.append(value)
        return check(value)

    points = [(1.5, {"a": "1"}), (3, {"a": "2"}), (2**63, {"a": "3"}), (math.inf, {"a": "4"}),
              (True, {"a": "5"}), (-(2**63), {"a": "6"})]
    ledger = SeriesLedger()
    kept = ledger.observe("m", False, points, 1, check=counting)
    assert kept == [(1.5, {"a": "1"}), (3, {"a": "2"}), (True, {"a": "5"}),
                    (-(2**63), {"a": "6"})]
    assert asked == [2**63, math.inf, True]
    assert sum(tally.counts().values()) == 2
    assert ledger.sizes() == {"m": 4}  # the dropped points are no series


def test_attribute_sets_stay_bounded_as_names_come_and_go() -> None:
    sets = AttributeSets(limit=8)
    for n in range(100):
        name = f"veth{n}"
        assert (sets.find(name) or sets.add(name, {"if": name}))["if"] == name
        assert len(sets) <= 8
