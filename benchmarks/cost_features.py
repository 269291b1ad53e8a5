"""What ``bench_cost.py`` measures on and off in the simulated dgx-a100 cycle: the readers of
external storage (network and FUSE mounts, NFS bytes), container pressure and the Slurm account,
each fed by its scenario keys. A reader added later adds its entry to ``FEATURES``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCENARIO = "dgx-a100"


@dataclass(frozen=True)
class Feature:
    """What a reader needs to be exercised on the dgx-a100: ``feed`` adds its scenario keys to
    the built-in's document (in place); ``on`` and ``off`` are the settings of each side."""

    feed: Callable[[dict[str, Any]], None]
    on: Mapping[str, str] = field(default_factory=dict)
    off: Mapping[str, str] = field(default_factory=dict)


def _every_container(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from doc.get("containers", [])
    for pod in doc.get("pods", []):
        yield from pod.get("containers", [])


def _feed_mounts(doc: dict[str, Any]) -> None:
    tib = 1 << 40
    doc.setdefault("host", {})["mounts"] = [
        {"mountpoint": "/datasets", "device": "nas:/export/datasets", "type": "nfs4",
         "size_bytes": 200 * tib, "used_bytes": 120 * tib, "read_bytes_per_s": 400_000_000},
        {"mountpoint": "/home", "device": "nas:/export/home", "type": "nfs4",
         "size_bytes": 20 * tib, "used_bytes": 9 * tib, "write_bytes_per_s": 5_000_000},
        {"mountpoint": "/mnt/share", "device": "//files/team", "type": "cifs",
         "size_bytes": 50 * tib, "used_bytes": 10 * tib},
        {"mountpoint": "/home/alice/remote", "device": "alice@login:/data", "type": "fuse.sshfs",
         "size_bytes": 2 * tib, "used_bytes": tib},
    ]


def _feed_pressure(doc: dict[str, Any]) -> None:
    for container in _every_container(doc):
        container.setdefault("resources", {}).update(
            io_pressure_some=0.2, io_pressure_full=0.05, memory_pressure_some=0.02,
            memory_pressure_full=0.01)


def _feed_slurm(doc: dict[str, Any]) -> None:
    """The GPU processes in no container run in Slurm job steps, with their account."""
    job = 4242
    for gpu in doc["gpus"]:
        for process in gpu.get("processes", []):
            if "docker-" in process.get("cgroup", "") or "kubepods" in process.get("cgroup", ""):
                continue
            process["cgroup"] = f"0::/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0"
            process["environ"] = {"SLURM_JOB_ID": str(job), "SLURM_JOB_ACCOUNT": "vision-lab"}
            job += 1


# External storage, container pressure and the Slurm account. A reader added later adds its
# entry here; the variants below take them all.
FEATURES: dict[str, Feature] = {
    "network and FUSE mounts, NFS bytes": Feature(
        _feed_mounts, off={"OTEL_GPU_FILESYSTEM_INCLUDE": "none"}),
    "container pressure": Feature(_feed_pressure),
    "Slurm account": Feature(_feed_slurm),
}


@contextlib.contextmanager
def settings(environ: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in environ}
    os.environ.update(environ)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def featured_scenario(directory: str) -> str:
    """The built-in scenario with every feature's keys, written to ``directory``."""
    from otel_gpu.simulate.scenario import BUILTIN_DIR

    doc = yaml.safe_load((BUILTIN_DIR / f"{SCENARIO}.yaml").read_text(encoding="utf-8"))
    for feature in FEATURES.values():
        feature.feed(doc)
    path = Path(directory) / f"{SCENARIO}-features.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)
