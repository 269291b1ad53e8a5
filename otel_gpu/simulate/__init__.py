"""A simulated GPU server standing in for the driver, Docker and the kubelet.

``SimulatedServer(load_scenario("dgx-a100"))`` gives ``.nvml`` to pass where the ``pynvml``
module would go; see :mod:`otel_gpu.simulate.server`. Scenario files are loaded by
:mod:`otel_gpu.simulate.scenario` into the model of :mod:`otel_gpu.simulate.spec`.
"""

from otel_gpu.simulate.fake_nvml import FakeNvml
from otel_gpu.simulate.scenario import ScenarioError, load_scenario
from otel_gpu.simulate.server import HostOverrides, SimulatedServer
from otel_gpu.simulate.spec import Scenario, at_cycle

__all__ = [
    "FakeNvml",
    "HostOverrides",
    "Scenario",
    "ScenarioError",
    "SimulatedServer",
    "at_cycle",
    "load_scenario",
]
