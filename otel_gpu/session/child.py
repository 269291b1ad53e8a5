"""Child processes of a session inside a training process.

Reading /proc, cgroup files, sockets and the driver means a system call at every step, and a
thread gives up the interpreter's lock at each one. Next to a CPU-bound training loop the lock
comes back only when the loop's thread is made to switch (every 5 ms in CPython), so a
collection of a few milliseconds stretches over seconds and keeps the loop switching all that
while. A child process does that work instead, given one of two tasks:

- ``sources``: answer each ``collect`` request with the sources' Snapshot (``SourceProcess``),
  when the application's own providers need the GPU metrics in the training process;
- ``export``: collect, run the insight rules and export on the interval, with the training
  process's signals and relayed exports arriving through the pipe (``otel_gpu.export_process``).

The child is a fresh interpreter (``python -m otel_gpu.session.child``), not a fork or a
``multiprocessing`` spawn: those would copy the training process or import its main module.
It starts with the OpenTelemetry SDK and auto-instrumentation off, so that it never starts a
session of its own, and it exits when the pipe closes.
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


def child_environment() -> dict[str, str]:
    """The child's environment: ours, with the SDK and auto-instrumentation off while it starts,
    so that an ``opentelemetry-instrument`` wrapper around the training script does not start a
    session in the child too."""
    env = {**os.environ, "OTEL_SDK_DISABLED": "true", "OTEL_GPU_CHILD": "1",
           "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "*"}
    env.pop("OTEL_GPU_SIMULATE", None)
    return env


class ChildProcess:
    """``python -m otel_gpu.session.child`` on one end of a socket pair, given its task by
    ``request``; returns once the child said it is ready (its message, if any, in ``message``)."""

    def __init__(self, request: tuple[str, Any], *, ready_timeout_s: float = READY_TIMEOUT_S
                 ) -> None:
        parent, child = socket.socketpair()
        command = [sys.executable, "-m", "otel_gpu.session.child", "--fd", str(child.fileno())]
        try:
            self.process = subprocess.Popen(command, pass_fds=(child.fileno(),),
                                            env=child_environment(), stdin=subprocess.DEVNULL)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        try:
            self.conn.send(request)
            kind, payload = self.receive(ready_timeout_s)
        except BaseException:
            self.close(wait_s=1.0)
            raise
        if kind != "ready":
            self.close(wait_s=1.0)
            raise RemoteError(payload)
        self.message: str | None = payload

    def receive(self, timeout_s: float) -> tuple[str, Any]:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"the collector process did not answer in {timeout_s:g} s")
        return self.conn.recv()

    def close(self, wait_s: float = 10.0) -> None:
        """Ask the child to finish, give it ``wait_s`` to do so, then kill it."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("close", None))
        self.conn.close()
        try:
            self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class SourceProcess:
    """The Collector's sources in a child process; ``read()`` is one request and one answer."""

    def __init__(self, simulate: str | None, interval_s: float, *, attribution: bool,
                 timeout_s: float = 30.0) -> None:
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._seq = 0
        self._child = ChildProcess(("sources", {"simulate": simulate, "interval_s": interval_s,
                                                "attribution": attribution}))
        self._process = self._child.process

    def start(self) -> str | None:
        return self._child.message

    def read(self) -> Snapshot:
        with self._lock:
            self._seq += 1
            self._child.conn.send(("collect", self._seq))
            while True:
                kind, payload = self._child.receive(self._timeout_s)
                if kind == "snapshot" and payload[0] == self._seq:
                    return payload[1]
                if kind == "failed":
                    raise RemoteError(payload)

    def close(self) -> None:
        self._child.close()


def _serve_sources(conn: Connection, simulate: str | None, interval_s: float,
                   attribution: bool) -> None:
    from otel_gpu.collect.build import build_collector

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
    parser = argparse.ArgumentParser(prog="python -m otel_gpu.session.child")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    conn = Connection(args.fd)
    try:
        try:
            task, params = conn.recv()
        except EOFError:
            return 0
        if task == "sources":
            _serve_sources(conn, params["simulate"], params["interval_s"],
                           params["attribution"])
        elif task == "export":
            from otel_gpu.session.export_child import serve_export

            serve_export(conn, params)
        else:
            conn.send(("error", f"unknown task {task!r}"))
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
