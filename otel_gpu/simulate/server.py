"""The simulated GPU server: a scenario, the stand-in ``pynvml`` that serves it, and its clock.

``SimulatedServer(load_scenario("dgx-a100"))`` gives ``.nvml`` to pass where the ``pynvml``
module would go, and ``.dcgm`` (None without DCGM in the scenario) where DCGM's bindings would;
``dcgm_exporter_url()`` starts a stand-in dcgm-exporter on loopback; call ``begin_cycle(k)``
before collection cycle k. Time is simulated: cycle k is
at ``clock(k)``, ``interval_s`` after cycle k - 1, without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from otel_gpu.simulate.fake_dcgm import FakeDcgm
from otel_gpu.simulate.fake_nvml import SIMULATION_EPOCH, FakeNvml
from otel_gpu.simulate.scenario import load_scenario
from otel_gpu.simulate.spec import Scenario, at_cycle

if TYPE_CHECKING:
    from otel_gpu.simulate.dcgm_exporter import DcgmExporterStandIn


@dataclass(frozen=True)
class HostOverrides:
    """The host figures a scenario imposes at one cycle."""

    memory_used_ratio: float | None
    filesystems: tuple[tuple[str, int, int], ...]  # (mountpoint, size_bytes, used_bytes)
    # Share of CPU time by mode (user, system, idle), over the last cycle; None: the real host's.
    cpu_utilization: dict[str, float] | None = None


class SimulatedServer:
    """A scenario served through :class:`FakeNvml`, one collection cycle at a time."""

    def __init__(self, scenario: Scenario | str, interval_s: float = 10.0) -> None:
        if isinstance(scenario, str):
            scenario = load_scenario(scenario)
        self.scenario = scenario
        self.interval_s = interval_s
        self.nvml = FakeNvml(scenario, interval_s=interval_s, start_time=SIMULATION_EPOCH)
        self.dcgm = FakeDcgm(self.nvml, scenario.dcgm) if scenario.dcgm is not None else None
        self._exporter: DcgmExporterStandIn | None = None

    def dcgm_exporter_url(self) -> str | None:
        """The URL of the stand-in dcgm-exporter, started on first use; None when the scenario
        runs none."""
        if self.dcgm is None or not self.dcgm.spec.exporter:
            return None
        if self._exporter is None:
            from otel_gpu.simulate.dcgm_exporter import DcgmExporterStandIn  # http.server

            self._exporter = DcgmExporterStandIn(self.dcgm)
        return self._exporter.url

    def close(self) -> None:
        """Stop the stand-in dcgm-exporter, if one runs."""
        exporter, self._exporter = self._exporter, None
        if exporter is not None:
            exporter.close()

    @property
    def cycle(self) -> int:
        return self.nvml.cycle

    def begin_cycle(self, cycle: int) -> None:
        """Serve the state of ``cycle``: values, MIG layout, faults and Xid events."""
        self.nvml.begin_cycle(cycle)

    def clock(self, cycle: int) -> float:
        """Simulated epoch seconds at ``cycle``."""
        return self.nvml.clock(cycle)

    def host_overrides(self, cycle: int) -> HostOverrides | None:
        """The scenario's host figures at ``cycle``, or None when it gives none."""
        host = self.scenario.host
        if host is None:
            return None
        ratio = at_cycle(host.memory_used_ratio, cycle)
        busy = at_cycle(host.cpu_utilization, cycle)
        return HostOverrides(
            cpu_utilization=None if busy is None else _cpu_modes(float(busy)),
            memory_used_ratio=None if ratio is None else float(ratio),
            filesystems=tuple(
                (
                    fs.mountpoint,
                    int(at_cycle(fs.size_bytes, cycle)),
                    int(at_cycle(fs.used_bytes, cycle)),
                )
                for fs in host.filesystems
            ),
        )


def _cpu_modes(busy: float) -> dict[str, float]:
    """Busy time split as the simulated containers split theirs: 80 % user, 20 % system."""
    return {"user": busy * 0.8, "system": busy * 0.2, "idle": 1.0 - busy}
