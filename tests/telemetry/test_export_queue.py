"""Collection runs on its own clock: a down, slow or hung backend costs neither cycles nor
unbounded memory, and failed or dropped exports are counted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from otlp_receiver import OtlpReceiver, points
from runner import ROOT

from otel_gpu.telemetry.export_queue import (
    ABANDONED,
    EXPORT,
    EXPORT_FAILED,
    QUEUE_FULL,
    SHUTDOWN_TIMEOUT,
    QueuedExporter,
)
from otel_gpu.telemetry.failures import FailureTally


@pytest.fixture
def hung_peer() -> Iterator[str]:
    """A TCP peer that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def _batch():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_counter("c").add(1)
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def test_a_hung_backend_never_blocks_export_and_the_queue_stays_bounded(hung_peer: str) -> None:
    tally = FailureTally()
    queued = QueuedExporter(OTLPMetricExporter(endpoint=hung_peer, insecure=True, timeout=30),
                            tally, max_batches=4, shutdown_s=1.0)
    batch = _batch()
    for _ in range(20):
        queued.export(batch)  # returns at once: the worker waits on the peer, not the caller
    assert queued.pending <= 5  # four queued and one in flight
    assert tally.counts()[(EXPORT, QUEUE_FULL)] >= 15
    started = time.monotonic()
    queued.shutdown()
    # Shutdown is bounded by shutdown_s even though the exporter's own timeout is 30 s.
    assert time.monotonic() - started < 15
    assert tally.counts()[(EXPORT, SHUTDOWN_TIMEOUT)] >= 1


def test_failed_exports_are_counted_and_the_next_batch_is_tried() -> None:
    tally = FailureTally()
    down = socket.create_server(("127.0.0.1", 0))
    port = down.getsockname()[1]
    down.close()  # nothing listens: every export fails
    queued = QueuedExporter(OTLPMetricExporter(endpoint=f"http://127.0.0.1:{port}",
                                               insecure=True, timeout=0.5), tally,
                            max_attempts=2, retry_wait_s=0.0)
    queued.export(_batch())
    queued.export(_batch())
    assert queued.force_flush(60_000)
    counts = tally.counts()
    assert counts[(EXPORT, EXPORT_FAILED)] == 4  # two attempts per batch
    assert counts[(EXPORT, ABANDONED)] == 2
    queued.shutdown()


def _agent(endpoint: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    return subprocess.Popen([sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate",
                             "dgx-a100", "--interval", "1", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _sampled_cycles(receiver: OtlpReceiver) -> list[int]:
    """The collection times of the cycles that reached the receiver (one per cycle)."""
    return sorted({p["time_unix_nano"] for p in points(receiver.metric_requests)
                   if p["name"] == "system.cpu.logical.count"})


def test_a_hung_backend_costs_the_agent_no_cycles(hung_peer: str) -> None:
    agent = _agent(hung_peer, "--cycles", "6")
    # Before, each cycle waited the exporter's timeout (here 1 s per cycle plus retries); the
    # agent now samples on its clock and its shutdown is bounded.
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err


def test_backend_down_then_back_loses_no_sampling_and_recovers() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    endpoint = f"http://127.0.0.1:{port}"
    agent = _agent(endpoint)
    try:
        down_s = 12.0
        time.sleep(down_s)  # the backend is down: nothing listens on the port
        with OtlpReceiver(grpc_port=port) as receiver:
            back = time.time_ns()
            assert receiver.wait_for(lambda: any(t > back for t in _sampled_cycles(receiver)),
                                     timeout_s=20), "no cycle after the backend's return"
            time.sleep(3)
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=60)
            assert agent.returncode == 0, err
            cycles = _sampled_cycles(receiver)
            errors = {(p["attributes"]["otel_gpu.source"], p["attributes"]["error.type"]):
                      p["value"] for p in points(receiver.metric_requests[-1:])
                      if p["name"] == "otel_gpu.collection.errors"}
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    # One cycle per interval while the backend was down (before, one every ~7 s): each was
    # delivered on its return, or dropped from the bounded queue and counted.
    delivered = [t for t in cycles if t < back]
    dropped = errors.get((EXPORT, ABANDONED), 0) + errors.get((EXPORT, QUEUE_FULL), 0)
    assert delivered and len(delivered) + dropped >= 0.6 * down_s, (len(delivered), dropped)
    assert errors.get((EXPORT, EXPORT_FAILED), 0) >= 1
