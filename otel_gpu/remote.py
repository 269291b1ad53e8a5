"""The sources in a process of their own, for sessions inside a training process.

Reading /proc, cgroup files, sockets and the driver means a system call at every step, and a
thread gives up the interpreter's lock at each one. Next to a CPU-bound training loop the lock
comes back only when the loop's thread is made to switch (every 5 ms in CPython), so a
collection of a few milliseconds stretches over seconds and keeps the loop switching all that
while. In a child process the sources cost the training process one pipe round trip a cycle.

The child is a fresh interpreter (``python -m otel_gpu.remote``), not a fork or a
``multiprocessing`` spawn: those would copy the training process or import its main module.
It runs with the OpenTelemetry SDK and auto-instrumentation off, so it never starts a session of
its own, and it exits when the pipe closes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from otel_gpu.snapshot import Snapshot

READY_TIMEOUT_S = 60.0


class RemoteError(RuntimeError):
    pass


class SourceProcess:
    """The Collector's sources in a child process; ``read()`` is one request and one answer."""

    def __init__(self, simulate: str | None, interval_s: float, *, attribution: bool,
                 timeout_s: float = 30.0) -> None:
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._seq = 0
        parent, child = socket.socketpair()
        command = [sys.executable, "-m", "otel_gpu.remote", "--fd", str(child.fileno()),
                   "--interval", repr(interval_s)]
        if simulate:
            command += ["--simulate", simulate]
        if not attribution:
            command.append("--no-attribution")
        env = {**os.environ, "OTEL_SDK_DISABLED": "true",
               "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "*"}
        env.pop("OTEL_GPU_SIMULATE", None)
        try:
            self._process = subprocess.Popen(command, pass_fds=(child.fileno(),), env=env,
                                             stdin=subprocess.DEVNULL)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        try:
            kind, payload = self._receive(READY_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        if kind != "ready":
            self.close()
            raise RemoteError(payload)
        self._message: str | None = payload

    def start(self) -> str | None:
        return self._message

    def read(self) -> Snapshot:
        with self._lock:
            self._seq += 1
            self._conn.send(("collect", self._seq))
            while True:
                kind, payload = self._receive(self._timeout_s)
                if kind == "snapshot" and payload[0] == self._seq:
                    return payload[1]
                if kind == "failed":
                    raise RemoteError(payload)

    def _receive(self, timeout_s: float) -> tuple[str, Any]:
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"the collector process did not answer in {timeout_s:g} s")
        return self._conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(("close", 0))
        self._conn.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _serve(conn: Connection, simulate: str | None, interval_s: float, attribution: bool) -> None:
    from otel_gpu.pipeline import build_collector

    try:
        collector = build_collector(simulate, interval_s, attribution=attribution)
        message = collector.start()
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", message))
    try:
        while True:
            try:
                request, seq = conn.recv()
            except EOFError:
                break
            if request != "collect":
                break
            try:
                conn.send(("snapshot", (seq, collector.read_sources())))
            except Exception as err:
                conn.send(("failed", type(err).__name__))
    finally:
        collector.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m otel_gpu.remote")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--simulate")
    parser.add_argument("--no-attribution", action="store_true")
    args = parser.parse_args(argv)
    conn = Connection(args.fd)
    try:
        _serve(conn, args.simulate, args.interval, not args.no_attribution)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
