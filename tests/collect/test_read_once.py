"""Attribution's reads in steady state: a process's ``stat`` once per cycle and nothing else of
it, a container's cgroup files once per cycle however many GPU processes it holds."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from otel_gpu.collect.build import build_collector
from otel_gpu.sources import cgroup, procfs

CONTAINERS = 4
PER_CONTAINER = 5


def _scenario() -> dict[str, Any]:
    containers, processes = [], []
    for c in range(CONTAINERS):
        cid = f"{c + 1:064x}"
        containers.append({"id": cid, "name": f"job-{c}", "image": "pytorch:24.05",
                           "devices": ["gpu0"],
                           "resources": {"cpu_limit": 2, "memory_limit_bytes": 1 << 33,
                                         "memory_used_bytes": 1 << 30}})
        for k in range(PER_CONTAINER):
            processes.append({"pid": 1000 + c * PER_CONTAINER + k, "uid": 1000 + c,
                              "comm": "python", "cgroup": f"0::/system.slice/docker-{cid}.scope",
                              "used_memory_bytes": 1 << 28})
    return {"name": "read-once", "users": {1000 + c: f"user{c}" for c in range(CONTAINERS)},
            "containers": containers,
            "gpus": [{"model": "A100-SXM4-80GB", "processes": processes}]}


@pytest.fixture
def reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "read-once.json"
    path.write_text(json.dumps(_scenario()))
    collector = build_collector(str(path))
    collector.start()
    seen: list[tuple[str, str]] = []

    def spy(module: Any, name: str) -> None:
        real = module.read_bytes

        def read(file: str, limit: int) -> bytes:
            seen.append((name, file))
            return real(file, limit)

        monkeypatch.setattr(module, "read_bytes", read)

    spy(procfs, "procfs")
    spy(cgroup, "cgroup")
    try:
        yield collector, seen
    finally:
        collector.close()


def test_steady_state_reads_each_file_once_per_cycle(reads) -> None:
    collector, seen = reads
    first = collector.collect()
    assert sum(w.processes for w in first.workloads) == CONTAINERS * PER_CONTAINER
    cold = Counter(os.path.basename(f) for source, f in seen if source == "procfs")
    n = CONTAINERS * PER_CONTAINER
    assert cold == {"stat": n, "status": n, "cgroup": n, "maps": n}  # maps: is DALI loaded

    seen.clear()
    second = collector.collect()
    proc = Counter(os.path.basename(f) for source, f in seen if source == "procfs")
    assert proc == {"stat": n}  # uid, cgroup and DALI kept by start time
    files = [f for source, f in seen if source == "cgroup"]
    assert len(files) == len(set(files))  # no cgroup file read twice in a cycle
    by_container = Counter(os.path.dirname(f) for f in files)
    assert len(by_container) == CONTAINERS
    assert len(second.containers) == CONTAINERS
    assert [w.attributes for w in second.workloads] == [w.attributes for w in first.workloads]
