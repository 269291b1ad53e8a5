"""A node where GPU containers come and go: Snapshots of production types, cycle by cycle.

Eight GPUs; about ``alive`` containers at a time, each with one GPU process of one of many
users, its cgroup figures (pressure stall times included), its network counters, its writable
layer and /dev/shm, its device assignment and, for one in ten, an active insight.
``churn`` containers end and as many new ones start every cycle, so after ``cycles`` cycles
``alive + churn * cycles`` distinct containers have been seen. Time is simulated: nothing waits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from otel_gpu.snapshot import (
    ContainerNetwork,
    ContainerResources,
    ContainerStorage,
    ContainerUsage,
    DeviceAssignment,
    Gpu,
    HostSnapshot,
    Insight,
    Snapshot,
    Workload,
)

GPUS = tuple(
    Gpu(index=i, uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000", name=f"gpu{i}",
        model="NVIDIA A100-SXM4-80GB", utilization_general=0.5, memory_used_bytes=1 << 30,
        memory_total_bytes=80 << 30, power_watts=300.0, energy_joules=1.0e6,
        ecc_corrected=0, ecc_uncorrected=0)
    for i in range(8)
)


@dataclass
class _Container:
    number: int
    gpu: int
    user: str
    born: int
    cpu_s: float = 0.0

    @property
    def attributes(self) -> dict[str, str]:
        cid = f"{self.number:064x}"
        return {"container.id": cid, "container.name": f"job-{self.number}",
                "container.image.name": "registry.example/train:1",
                "container.runtime.name": "containerd", "k8s.pod.name": f"job-{self.number}-0",
                "k8s.pod.uid": f"pod-{self.number}", "k8s.namespace.name": "research",
                "k8s.container.name": "main"}


@dataclass
class ChurnWorld:
    alive: int = 100
    churn: int = 5
    users: int = 2000
    seed: int = 7
    cycle: int = -1
    started: int = 0  # distinct containers so far
    _containers: list[_Container] = field(default_factory=list)
    _snapshot: Snapshot | None = None

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        for _ in range(self.alive):
            self._start()

    def _start(self) -> None:
        self._containers.append(_Container(
            self.started, self._random.randrange(len(GPUS)),
            f"user{self._random.randrange(self.users)}", max(self.cycle, 0)))
        self.started += 1

    def live_container_ids(self) -> set[str]:
        return {c.attributes["container.id"] for c in self._containers}

    def step(self) -> Snapshot:
        """The next cycle: ``churn`` containers end, as many start, every live one works."""
        self.cycle += 1
        if self.cycle:
            for _ in range(self.churn):
                self._containers.pop(self._random.randrange(len(self._containers)))
                self._start()
        workloads, assignments, usages, insights = [], [], [], []
        for c in self._containers:
            c.cpu_s += 2.0
            attrs = c.attributes
            gpu = GPUS[c.gpu]
            workloads.append(Workload(device_uuid=gpu.uuid, mig=False,
                                      attributes={"process.owner": c.user, **attrs},
                                      processes=1, memory_bytes=(1 + c.number % 7) << 30,
                                      sm_utilization=0.4))
            assignments.append(DeviceAssignment(device_uuid=gpu.uuid, mig=False,
                                                attributes=attrs))
            age = self.cycle - c.born
            usages.append(ContainerUsage(attributes=attrs, resources=ContainerResources(
                cgroup_version=2, cpu_user_s=c.cpu_s, cpu_system_s=c.cpu_s / 10,
                cpu_limit=8.0, memory_usage_bytes=4 << 30, memory_limit_bytes=32 << 30,
                oom_kills=0, disk_read_bytes=1 << 20, disk_write_bytes=1 << 10,
                io_pressure_some_s=0.2 * age, io_pressure_full_s=0.05 * age,
                memory_pressure_some_s=0.02 * age, memory_pressure_full_s=0.01 * age),
                network=ContainerNetwork(rx_bytes=age << 20, tx_bytes=age << 10,
                                         rx_packets=age * 700, tx_packets=age * 10),
                storage=ContainerStorage(writable_bytes=(1 << 30) + (age << 20),
                                         writable_sampled_at=1.7e9 + 10.0 * c.born,
                                         shm_size_bytes=64 << 20, shm_used_bytes=age << 10,
                                         data_workers=4)))
            if c.number % 10 == 0:
                insights.append(Insight(rule="gpu.idle", severity="warning",
                                        attributes={**gpu_attributes(gpu), **attrs},
                                        message="idle", remedy="release it",
                                        since=float(c.born)))
        gpus = tuple(_advance(g, self.cycle) for g in GPUS)
        self._snapshot = Snapshot(
            cycle=self.cycle, timestamp=1.7e9 + 10.0 * self.cycle, driver_available=True,
            gpus=gpus, host=HostSnapshot(cpu_time_s={"user": 10.0 * self.cycle},
                                         cpu_logical_count=64),
            workloads=tuple(workloads), assignments=tuple(assignments),
            containers=tuple(usages), insights=tuple(insights))
        return self._snapshot

    def get(self) -> Snapshot:
        """The current Snapshot (a SnapshotSource for ``register_catalog``)."""
        assert self._snapshot is not None, "step() first"
        return self._snapshot


def gpu_attributes(gpu: Gpu) -> dict[str, str]:
    return {"hw.id": gpu.uuid, "hw.name": gpu.name}


def _advance(gpu: Gpu, cycle: int) -> Gpu:
    from dataclasses import replace

    assert gpu.energy_joules is not None
    return replace(gpu, energy_joules=gpu.energy_joules + 3000.0 * cycle)
