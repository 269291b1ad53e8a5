"""One owner per series on a node: the agent announces itself; a training session that finds it
reports only what is its own.

The agent writes ``/run/otel-gpu/agent.json`` (``OTEL_GPU_AGENT_FILE``) when it starts and
rewrites it every cycle: its pid, host name, interval and the time of the last cycle; it removes
the file when it stops. A session decides with ``agent_running()``:

- ``OTEL_GPU_NODE_AGENT=true`` or ``false`` says so outright (for a container that cannot see the
  host's ``/run``, or to turn the check off);
- otherwise an announcement whose last cycle is at most three intervals (and at least 30 s) old
  means an agent runs. A file left behind by a killed agent goes stale and stops counting.

``node_host_name`` is the ``host.name`` rule: ``OTEL_GPU_NODE_NAME``, then ``NODE_NAME`` (the
Kubernetes downward API, as the shipped DaemonSets set it), then the announcing agent's host
name; outside a container the host's own name. Inside a container with none of these, the
host's name when it is neither a pod's (Kubernetes) nor a container id (Docker's default);
else there is no ``host.name``: never a container id.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("otel_gpu")

DEFAULT_AGENT_FILE = "/run/otel-gpu/agent.json"
AGENT_FILE_ENV = "OTEL_GPU_AGENT_FILE"
AGENT_ENV = "OTEL_GPU_NODE_AGENT"
NODE_NAME_ENVS = ("OTEL_GPU_NODE_NAME", "NODE_NAME")
MIN_FRESH_S = 30.0
_CONTAINER_ID = re.compile(r"[0-9a-f]{12}(?:[0-9a-f]{52})?")


def agent_file(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(AGENT_FILE_ENV) or DEFAULT_AGENT_FILE)


@dataclass(frozen=True)
class AgentInfo:
    pid: int
    host_name: str | None
    interval_s: float
    updated: float  # epoch seconds of the agent's last cycle


def read_announcement(environ: Mapping[str, str] | None = None,
                      now: float | None = None) -> AgentInfo | None:
    """The running agent's announcement, or None (no file, unreadable, malformed or stale)."""
    try:
        raw: Any = json.loads(agent_file(environ).read_text())
        info = AgentInfo(int(raw["pid"]), raw.get("host_name") or None,
                         float(raw["interval_s"]), float(raw["updated"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = time.time() if now is None else now
    if now - info.updated > max(3 * info.interval_s, MIN_FRESH_S):
        return None
    return info


def agent_running(environ: Mapping[str, str] | None = None, now: float | None = None) -> bool:
    """Whether a node agent reports this node's GPUs, workloads and containers."""
    env = os.environ if environ is None else environ
    said = (env.get(AGENT_ENV) or "").strip().lower()
    if said in ("true", "1", "yes"):
        return True
    if said in ("false", "0", "no"):
        return False
    return read_announcement(env, now) is not None


def in_container(environ: Mapping[str, str] | None = None, root: str = "/") -> bool:
    """Whether this process runs in a container, by the markers runtimes leave: Kubernetes sets
    ``KUBERNETES_SERVICE_HOST`` in every pod, Docker creates ``/.dockerenv``, Podman
    ``/run/.containerenv``. (The sources' fuller detection is not loaded in a training
    process.)"""
    env = os.environ if environ is None else environ
    if env.get("KUBERNETES_SERVICE_HOST"):
        return True
    return any(os.path.exists(os.path.join(root, marker))
               for marker in (".dockerenv", "run/.containerenv"))


def node_host_name(in_container: bool, environ: Mapping[str, str] | None = None) -> str | None:
    """The node's name for ``host.name`` (see the module's rule), or None."""
    env = os.environ if environ is None else environ
    for name in NODE_NAME_ENVS:
        value = (env.get(name) or "").strip()
        if value:
            return value
    announced = read_announcement(env)
    if announced is not None and announced.host_name:
        return announced.host_name
    own = socket.gethostname()
    if not in_container:
        return own
    # A pod's host name is the pod's; a Docker container's, its short id unless set otherwise
    # (--hostname, or the host's with --network host).
    if env.get("KUBERNETES_SERVICE_HOST") or _CONTAINER_ID.fullmatch(own):
        return None
    return own


class Announcement:
    """The agent's file: written at start and every cycle, removed at stop. Failing to write it
    (no ``/run`` access) is logged once and costs nothing else."""

    def __init__(self, host_name: str | None, interval_s: float,
                 environ: Mapping[str, str] | None = None) -> None:
        self.path = agent_file(environ)
        self._host_name = host_name
        self._interval_s = interval_s
        self._warned = False
        self.written = False

    def beat(self, now: float | None = None) -> None:
        body = json.dumps({"pid": os.getpid(), "host_name": self._host_name,
                           "interval_s": self._interval_s,
                           "updated": time.time() if now is None else now})
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(body)
            os.replace(tmp, self.path)
            self.written = True
        except OSError as err:
            if not self._warned:
                log.warning("cannot announce the agent at %s (%s); training sessions on this "
                            "node will not know it runs unless %s=true", self.path, err,
                            AGENT_ENV)
                self._warned = True

    def close(self) -> None:
        if not self.written:
            return
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("pid") == os.getpid():  # never another agent's
                self.path.unlink()
        except (OSError, ValueError):
            pass


class OwnSeries:
    """A session's view of each Snapshot when an agent runs: no GPU, MIG, workload, container,
    assignment, accounting or host series (the agent owns them), only the session's own: its
    insights about a training run and its collection's self-telemetry. The insight rules still
    see everything; this narrows what the instruments report."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def get(self) -> Any:
        from dataclasses import replace

        snapshot = self._source.get()
        return replace(snapshot, gpus=(), host=None, workloads=(), assignments=(), containers=(),
                       accounts=(), insights=tuple(i for i in snapshot.insights
                                      if "otel_gpu.training.run" in i.attributes))
