"""Values OTLP cannot carry are dropped point by point and counted; everything else goes out."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st
from otlp_receiver import OtlpReceiver, points
from runner import ROOT

from otel_gpu.telemetry.failures import (
    INT64_MAX,
    INT64_MIN,
    NOT_FINITE,
    OUT_OF_RANGE,
    FailureTally,
    ValueCheck,
    value_problem,
)
from otel_gpu.telemetry.series import SeriesLedger

SCENARIO = str(ROOT / "tests" / "scenarios" / "huge-values.yaml")


@given(st.integers())
def test_ints_are_carried_exactly_within_int64(value: int) -> None:
    expected = None if INT64_MIN <= value <= INT64_MAX else OUT_OF_RANGE
    assert value_problem(value) == expected


@given(st.floats())
def test_floats_are_carried_when_finite(value: float) -> None:
    assert value_problem(value) == (None if math.isfinite(value) else NOT_FINITE)


def test_only_the_bad_point_is_dropped_and_each_is_counted() -> None:
    tally = FailureTally()
    given_points = [(1, {"a": "1"}), (2**64 - 1, {"a": "2"}), (float("nan"), {"a": "3"}),
                    (True, {"a": "4"}), (INT64_MAX, {"a": "5"})]
    ledger, check = SeriesLedger(), ValueCheck("m", "nvml", tally)
    kept = ledger.observe("m", False, given_points, 1, check=check)
    assert kept == [(1, {"a": "1"}), (True, {"a": "4"}), (INT64_MAX, {"a": "5"})]
    ledger.observe("m", False, given_points, 2, check=check)
    assert tally.counts() == {("nvml", OUT_OF_RANGE): 2, ("nvml", NOT_FINITE): 2}


def test_huge_counters_are_dropped_alone_and_counted_through_a_real_otlp_peer() -> None:
    with OtlpReceiver() as receiver:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint}
        agent = subprocess.run(
            [sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate", SCENARIO,
             "--interval", "0.5", "--cycles", "2"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert agent.returncode == 0, agent.stderr
        assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 2, timeout_s=10)
        received = points(receiver.metric_requests[-1:])
    names = {p["name"] for p in received}
    # Everything else is exported: GPU, workload, container and host series.
    for name in ("hw.gpu.memory.usage", "hw.power", "otel_gpu.workload.gpu.memory.usage",
                 "container.cpu.time", "otel_gpu.container.memory.limit", "system.memory.usage"):
        assert name in names, name
    ecc = {p["attributes"]["error.type"]: p["value"] for p in received if p["name"] == "hw.errors"}
    assert ecc == {"uncorrected": 0}
    assert not [p for p in received if p["name"] == "container.memory.usage"]
    errors = {(p["attributes"]["otel_gpu.source"], p["attributes"]["error.type"]): p["value"]
              for p in received if p["name"] == "otel_gpu.collection.errors"}
    assert errors[("nvml", OUT_OF_RANGE)] >= 2
    # The cgroup reader refuses a number past int64 itself (Malformed); had it passed one on,
    # the instruments would count it as value_out_of_range. Either way it is counted.
    assert sum(v for (source, _), v in errors.items() if source == "cgroup") >= 2
    assert "hw.errors" in agent.stderr and "value_out_of_range" in agent.stderr
