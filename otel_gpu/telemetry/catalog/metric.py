"""A catalog row, the instrument kinds, the attribute sets rows share, and the sections rows
are written in."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from otel_gpu.snapshot import Attributes, Snapshot

Point = tuple[float, Attributes]
Observe = Callable[[Snapshot], Iterable[Point]]

COUNTER = "counter"
UPDOWNCOUNTER = "updowncounter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

class SeriesAttributes(dict[str, Any]):
    """An attribute set that carries its series key, ``frozenset(items)``, computed once.

    Handed out by :class:`AttributeSets`, the same object cycle after cycle, so that the series
    ledger finds the series without hashing its attributes again. Never changed once made.
    """

    __slots__ = ("key",)

    def __init__(self, attributes: Attributes) -> None:
        super().__init__(attributes)
        self.key = frozenset(self.items())


class AttributeSets:
    """The attribute sets of one observe function, by a key cheaper than the set itself (an
    interface name, a filesystem's mount point and state). At most ``limit`` are held: when
    full, all are forgotten, so that names that come and go (containers' interfaces, mounts)
    cannot grow it."""

    def __init__(self, limit: int = 1024) -> None:
        self._sets: dict[Hashable, SeriesAttributes] = {}
        self._limit = limit
        # the set held for a key, or None; the dict's own lookup, without a call of ours
        self.find: Callable[[Hashable], SeriesAttributes | None] = self._sets.get

    def add(self, key: Hashable, attributes: Attributes) -> SeriesAttributes:
        if len(self._sets) >= self._limit:
            self._sets.clear()
        made = self._sets[key] = SeriesAttributes(attributes)
        return made

    def __len__(self) -> int:
        return len(self._sets)


GPU_IDENTITY = ("hw.id", "hw.name", "hw.model", "hw.vendor")
MIG_IDENTITY = (*GPU_IDENTITY, "hw.parent", "nvidia.gpu.mig.profile")
LABEL_TEMPLATE = "container.label.<key>"  # one attribute per allow-listed container label
CONTAINER_ATTRIBUTES = (
    "container.id",
    "container.name",
    "container.image.name",
    "container.runtime.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.namespace.name",
    "k8s.container.name",
    LABEL_TEMPLATE,
)
# On a device given through a Dynamic Resource Allocation claim: the claim and its driver.
DRA_ATTRIBUTES = ("otel_gpu.k8s.resourceclaim.name", "otel_gpu.k8s.dra.driver.name")
# A GPU process in no container but in a Slurm job step: the job and step, from its cgroup path,
# and the job's account, from SLURM_JOB_ACCOUNT in its environment where that is readable.
SLURM_ATTRIBUTES = ("otel_gpu.slurm.job.id", "otel_gpu.slurm.step.id",
                    "otel_gpu.slurm.account.name")
WORKLOAD_ATTRIBUTES = ("process.owner", *CONTAINER_ATTRIBUTES, *SLURM_ATTRIBUTES)


@dataclass(frozen=True)
class Metric:
    """One instrument: its name, kind, unit and description, the attributes of its points, and
    how to read those points off a Snapshot (None: a synchronous instrument recorded elsewhere)."""

    name: str
    instrument: str
    unit: str
    description: str
    attributes: tuple[str, ...]
    section: str
    observe: Observe | None = None
    semconv: bool = False  # the name comes from the OpenTelemetry semantic conventions


class Section:
    """The rows of one section of the docs page, in the order they are written."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.metrics: list[Metric] = []

    def add(
        self,
        *,
        name: str,
        instrument: str,
        unit: str,
        description: str,
        attributes: tuple[str, ...],
        observe: Observe | None = None,
        semconv: bool = False,
    ) -> None:
        self.metrics.append(
            Metric(name, instrument, unit, description, attributes, self.title, observe, semconv)
        )

    def observed_by(
        self,
        *,
        name: str,
        instrument: str,
        unit: str,
        description: str,
        attributes: tuple[str, ...],
        semconv: bool = False,
    ) -> Callable[[Observe], Observe]:
        """A decorator: the row whose points the decorated function yields."""

        def register(observe: Observe) -> Observe:
            self.add(name=name, instrument=instrument, unit=unit, description=description,
                     attributes=attributes, observe=observe, semconv=semconv)
            return observe

        return register
