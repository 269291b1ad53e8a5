"""The training sessions of this user on this node, as ``otel-gpu status --watch`` shows them.

Whichever process of a session collects (its collector process, or the training process itself)
writes a small JSON file at every collection: the training process's pid, its service name, the
steps counted and the data-wait ratio of the latest step. One file per training process, in a
directory of the user's own (``$XDG_RUNTIME_DIR/otel-gpu/sessions``, else
``/tmp/otel-gpu-<uid>/sessions``, mode 0700), written whole through a rename; the session
removes it when it stops. A reader keeps the files of processes still running.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otel_gpu.config import runtime_dir
from otel_gpu.sources._text import clean_value


def sessions_dir(environ: Mapping[str, str] | None = None) -> Path:
    runtime = runtime_dir(environ)
    if runtime is not None:
        return Path(runtime) / "otel-gpu" / "sessions"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"otel-gpu-{uid}" / "sessions"


@dataclass(frozen=True)
class SessionState:
    pid: int
    service: str | None
    steps: int
    data_wait_ratio: float | None
    updated: float  # Unix time of the collection that wrote it


class SessionBeacon:
    """Writes one training process's state; never raises (a status view is a nicety)."""

    def __init__(self, pid: int, service: str | None, directory: Path | None = None) -> None:
        self._pid = pid
        self._service = service
        self._dir = sessions_dir() if directory is None else directory
        self._path = self._dir / f"{pid}.json"
        self.failures = 0

    def write(self, steps: int, data_wait_ratio: float | None) -> None:
        document = {"pid": self._pid, "service": self._service, "steps": steps,
                    "data_wait_ratio": data_wait_ratio, "updated": time.time()}
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            partial = self._path.with_suffix(".tmp")
            with open(partial, "w", encoding="utf-8") as f:
                json.dump(document, f)
            os.replace(partial, self._path)
        except OSError:
            self.failures += 1

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self._path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _state(document: Any) -> SessionState | None:
    if not isinstance(document, dict):
        return None
    pid, steps, ratio = document.get("pid"), document.get("steps"), document.get("data_wait_ratio")
    updated, service = document.get("updated"), document.get("service")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or \
            not isinstance(steps, int) or not isinstance(updated, (int, float)):
        return None
    if ratio is not None and (not isinstance(ratio, (int, float)) or not math.isfinite(ratio)):
        return None
    if not math.isfinite(updated):
        return None
    # Any process of the user writes these files: the service name is outside text.
    return SessionState(pid, clean_value(service) if isinstance(service, str) else None, steps,
                        None if ratio is None else float(ratio), float(updated))


def read_sessions(directory: Path | None = None) -> list[SessionState]:
    """The sessions whose training process still runs, by pid; unreadable files are skipped."""
    found = []
    folder = sessions_dir() if directory is None else directory
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError:
        return []
    for path in paths[:256]:
        try:
            with open(path, encoding="utf-8") as f:
                state = _state(json.loads(f.read(1 << 16)))
        except (OSError, ValueError, RecursionError):
            continue
        if state is not None and _alive(state.pid):
            found.append(state)
    return sorted(found, key=lambda s: s.pid)
