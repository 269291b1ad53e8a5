"""The layout's rules that the import contract in pyproject.toml cannot state."""

from __future__ import annotations

import grimp


def test_nothing_imports_the_package_face() -> None:
    graph = grimp.build_graph("otel_gpu")
    importers = graph.find_modules_that_directly_import("otel_gpu")
    assert importers == set(), f"these import the public face instead of the module: {importers}"


def test_every_stage_is_a_folder_of_the_flow() -> None:
    graph = grimp.build_graph("otel_gpu")
    top = {module for module in graph.find_children("otel_gpu")}
    stages = {"otel_gpu." + name for name in (
        "sources", "collect", "insights", "telemetry", "session", "cli", "simulate")}
    leaves = {"otel_gpu." + name for name in ("snapshot", "config", "_version")}
    faces = {"otel_gpu." + name for name in ("frameworks", "instrumentation", "embedded")}
    assert top == stages | leaves | faces
