"""The processes bench_peer.py's process mode measures.

    peer_processes.py world SCENARIO
        serve the scenario's Docker and kubelet stand-ins, print their endpoints as one JSON
        line, and serve until stdin closes;
    peer_processes.py agent ARGS...
        ``otel-gpu ARGS...`` (the CLI's own entry point) with the simulated world's servers taken
        from $OTEL_GPU_PEER_WORLD instead of started in this process: the world's /proc and
        cgroup trees are still written here, as under ``--simulate``;
    peer_processes.py nvitop-exporter SCENARIO ARGS...
        ``nvitop-exporter ARGS...`` with the scenario's simulated driver installed as pynvml.
"""

from __future__ import annotations

import json
import os
import sys


def world(scenario: str) -> int:
    from otel_gpu.simulate import SimulatedServer
    from otel_gpu.simulate.world import SimulatedWorld

    with SimulatedWorld(SimulatedServer(scenario, interval_s=1.0)) as served:
        print(json.dumps({"docker_socket": served.docker_socket,
                          "pod_resources_socket": served.pod_resources_socket,
                          "pod_list_url": served.pod_list_url}), flush=True)
        sys.stdin.read()
    return 0


def agent(argv: list[str]) -> int:
    from otel_gpu import cli
    from otel_gpu.simulate.world import SimulatedWorld

    endpoints = json.loads(os.environ["OTEL_GPU_PEER_WORLD"])

    def serve_elsewhere(self: SimulatedWorld) -> None:
        self.docker_socket = endpoints["docker_socket"]
        self.pod_resources_socket = endpoints["pod_resources_socket"]
        self.pod_list_url = endpoints["pod_list_url"]

    SimulatedWorld._serve = serve_elsewhere  # type: ignore[method-assign]
    return cli.main(argv)


def nvitop_exporter(scenario: str, argv: list[str]) -> int:
    from otel_gpu.simulate.nvml_module import install

    install(scenario, interval_s=1.0)
    from nvitop_exporter.cli import main

    sys.argv = ["nvitop-exporter", *argv]
    return main()


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "world":
        sys.exit(world(rest[0]))
    if command == "agent":
        sys.exit(agent(["agent", *rest]))
    if command == "nvitop-exporter":
        sys.exit(nvitop_exporter(rest[0], rest[1:]))
    raise SystemExit(f"unknown command {command!r}")
