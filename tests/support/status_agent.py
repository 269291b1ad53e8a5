"""The agent on the simulated dgx-a100 with its status socket, driven cycle by cycle, and
processes of other uids that ask it."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_gpu import cli
from otel_gpu.cli import agent, status, status_render  # noqa: F401  (loaded before a fork)
from otel_gpu.cli.status_server import StatusServer, ask_agent
from otel_gpu.simulate import load_scenario

SCENARIO = load_scenario("dgx-a100")
CONTAINERS = {c.name: c for c in SCENARIO.containers}


def shared_place() -> Iterator[Path]:
    """A directory every uid can reach (the socket and a stand-in /proc for peer pids)."""
    path = Path(tempfile.mkdtemp(prefix="otel-gpu-status-"))
    path.chmod(0o755)
    (path / "proc").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Agent:
    """``run_agent`` on dgx-a100 in a thread; ``at(cycle, check)`` runs ``check`` between that
    cycle and the next, on the agent's own thread, so the agent waits for it."""

    def __init__(self, place: Path, cycles: int, monkeypatch: pytest.MonkeyPatch,
                 **server_options: Any) -> None:
        self.socket = str(place / "run" / "status.sock")
        self.proc = place / "proc"
        self.cycles = cycles
        self.done = 0
        self.checks: dict[int, Callable[[], None]] = {}
        self.failure: BaseException | None = None
        self.stop = threading.Event()
        self.server: StatusServer | None = None
        self.stderr = ""  # of the last status_as
        options = {**server_options, "proc_root": str(self.proc)}
        outer = self

        class Server(StatusServer):  # peer pids are looked up in the stand-in /proc
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **{**kwargs, **options})
                outer.server = self

        monkeypatch.setattr(agent, "StatusServer", Server)
        monkeypatch.setenv("OTEL_GPU_STATUS_SOCKET", self.socket)
        monkeypatch.delenv("OTEL_GPU_OPERATOR_GROUP", raising=False)

    def wait(self, seconds: float) -> None:
        self.done += 1
        check = self.checks.get(self.done)
        if check is not None:
            try:
                check()
            except BaseException as err:  # reported on the test's thread
                self.failure = err
                self.stop.set()

    def run(self) -> None:
        args = argparse.Namespace(simulate="dgx-a100", exporter=["none"], interval=10.0,
                                  thresholds=None, cycles=self.cycles)
        thread = threading.Thread(target=agent.run_agent, args=(args, self.stop, self.wait))
        thread.start()
        thread.join(timeout=600)
        assert not thread.is_alive()
        if self.failure is not None:
            raise self.failure

    def in_container(self, pid: int, name: str) -> None:
        """Put the peer ``pid`` in a simulated container's cgroup, as /proc would show it."""
        (self.proc / str(pid)).mkdir()
        (self.proc / str(pid) / "cgroup").write_text(
            f"0::/system.slice/docker-{CONTAINERS[name].id}.scope\n")

    def status_as(self, uid: int, *args: str) -> dict[str, Any]:
        """``otel-gpu status --format json`` run by a process of ``uid``, through the socket."""

        def run_status() -> str:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(["status", "--format", "json", *args])
            assert code == 0 and "no agent answered" not in err.getvalue(), err.getvalue()
            return json.dumps({"doc": json.loads(out.getvalue()), "stderr": err.getvalue()})

        result = json.loads(as_uid(uid, run_status))
        self.stderr = result["stderr"]
        return result["doc"]

    def ask_as(self, uid: int, request: dict[str, Any], container: str | None = None
               ) -> dict[str, Any]:
        """The raw reply to a process of ``uid``, in ``container`` when one is named."""
        placed = None if container is None else (lambda pid: self.in_container(pid, container))
        return json.loads(as_uid(uid, lambda: json.dumps(ask_agent(self.socket, request)),
                                 placed))


def as_uid(uid: int, work: Callable[[], str],
           placed: Callable[[int], None] | None = None) -> str:
    """What ``work`` returns in a forked child that runs as ``uid`` (no exec: the interpreter
    may live where other uids cannot reach); ``placed(pid)`` runs before the child goes on."""
    out_r, out_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(out_r)
            os.close(go_w)
            os.read(go_r, 1)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            data = work().encode()
            code = 0
        except BaseException:
            data = traceback.format_exc().encode()
        while data:
            data = data[os.write(out_w, data):]
        os._exit(code)
    os.close(out_w)
    os.close(go_r)
    if placed is not None:
        placed(pid)
    os.write(go_w, b"x")
    os.close(go_w)
    chunks = []
    while chunk := os.read(out_r, 1 << 16):
        chunks.append(chunk)
    os.close(out_r)
    _, exit_status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(exit_status) == 0, text
    return text


