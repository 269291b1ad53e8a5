"""What a newcomer sees first: the README's first command, the version, the usage."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from runner import ROOT, run_cli, snapshot_json

from otel_gpu import __version__
from otel_gpu.cli.agent import snapshot_table
from otel_gpu.insights.engine import USER_RULES
from otel_gpu.snapshot import Snapshot, SourceError


def _readme_first_command() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    command = block.splitlines()[0].split("&&")[-1]
    words = shlex.split(command)
    assert words[0].endswith("otel-gpu"), words
    return words[1:]


@pytest.fixture(scope="module")
def first_screen() -> str:
    result = run_cli(*_readme_first_command())
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_first_command_shows_a_user_insight(first_screen: str) -> None:
    fired = re.findall(r"^  (?:CRITICAL|WARNING|INFO) +(\w+):", first_screen, re.M)
    assert set(fired) & set(USER_RULES), first_screen


def test_the_first_command_shows_who_holds_which_device(first_screen: str) -> None:
    lines = first_screen.splitlines()
    start = lines.index("who uses what (device, user, container or pod, its processes there):")
    rows = lines[start + 1 : lines.index("", start)]
    assert any(re.match(r"  gpu\d+/mig\d+ +\w+ +(container|pod) \S+", row) for row in rows), rows
    assert any(re.match(r"  gpu\d+ +\w+ +pod \S+/\S+", row) for row in rows), rows
    assert any(row.rstrip().endswith("given, runs nothing") for row in rows), rows
    # a device held by a container that runs nothing still names the user it is held for
    idle = [row for row in rows if row.rstrip().endswith("given, runs nothing")]
    assert all(not re.match(r"  \S+ +- ", row) for row in idle), idle


def test_the_first_command_measures_the_host_cpu(first_screen: str) -> None:
    host = next(line for line in first_screen.splitlines() if line.startswith("host:"))
    assert re.search(r"cpu busy \d+%", host), host


def test_the_first_screen_shows_no_fault(first_screen: str) -> None:
    assert "read errors" not in first_screen and "NOT_SUPPORTED" not in first_screen
    assert all(len(line) <= 80 for line in first_screen.splitlines())


def test_unsupported_readings_are_told_apart_from_failed_reads() -> None:
    fan = [SourceError("nvml", "nvmlDeviceGetFanSpeed", "NOT_SUPPORTED", f"gpu{i}")
           for i in range(8)]
    errors = (*fan, SourceError("nvml", "nvmlDeviceGetPowerUsage", "UNKNOWN", "gpu1"),
              SourceError("nvml", "nvmlDeviceGetTotalEnergyConsumption", "NOT_SUPPORTED", "gpu2"))
    table = snapshot_table(Snapshot(cycle=0, timestamp=0.0, driver_available=True,
                                    errors=errors))
    text = " ".join(table.split())
    assert "not offered by this hardware" in text and "not a fault" in text
    assert "fan speed (gpu0 to gpu7); total energy consumption (gpu2)" in text
    assert "read errors this cycle: 1 (nvml:UNKNOWN)" in text
    assert all(len(line) <= 80 for line in table.splitlines())
    healthy = snapshot_table(Snapshot(cycle=0, timestamp=0.0, driver_available=True))
    assert "not offered" not in healthy and "read errors" not in healthy


def test_a_failed_read_is_still_a_read_error(tmp_path: Path) -> None:
    scenario = tmp_path / "faulty.yaml"
    scenario.write_text("gpus:\n  - model: H200\n    faults:\n"
                        "      - {call: nvmlDeviceGetPowerUsage, error: UNKNOWN}\n")
    result = run_cli("snapshot", "--simulate", str(scenario))
    assert result.returncode == 0, result.stderr
    assert "read errors this cycle: 1 (nvml:UNKNOWN)" in result.stdout


def test_without_scenario_cpu_figures_the_table_says_why() -> None:
    result = run_cli("snapshot", "--simulate", "h200", "--cycles", "2")
    assert result.returncode == 0, result.stderr
    assert "cpu busy not measured in simulated time" in result.stdout


def test_scenario_cpu_figures_are_what_the_pipeline_reports() -> None:
    doc = snapshot_json("--simulate", "dgx-a100", "--cycles", "2")
    modes = {p["attributes"]["cpu.mode"]: p["value"] for p in doc["points"]
             if p["name"] == "system.cpu.utilization"}
    # dgx-a100 gives the host 46 % busy at cycle 1, split 80 % user, 20 % system.
    assert modes == pytest.approx({"user": 0.368, "system": 0.092, "idle": 0.54})


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"otel-gpu {__version__}"


def test_bare_command_prints_the_usage_and_exits_2() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: otel-gpu")
    for command in ("agent", "snapshot", "status", "doctor"):
        assert re.search(rf"^ +{command} ", result.stderr, re.M), result.stderr


def test_help_names_no_documents_and_shows_no_markup() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "``" not in result.stdout and "contract" not in result.stdout.lower()


def test_agent_help_says_what_the_signals_do() -> None:
    text = " ".join(run_cli("agent", "--help").stdout.split())
    assert "SIGTERM, SIGINT and SIGHUP each stop the agent cleanly" in text


def test_json_document_keeps_its_shape() -> None:
    result = run_cli("snapshot", "--simulate", "h200", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"resource", "points", "insights"}
