"""Every bad scenario or thresholds file ends the command with exit 2 and one line on stderr that
names the file and the key: never exit 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from runner import run_cli

DEEP = 20_000

SCENARIOS = {
    "reason list in reasons": (
        "gpus: [{model: H200, clocks_event_reasons: [sw_power_cap, [hw_slowdown]]}]\n",
        "gpus[0].clocks_event_reasons[1]",
    ),
    "reason mapping in reasons": (
        "gpus: [{model: H200, clocks_event_reasons: [{sw_power_cap: 1}]}]\n",
        "gpus[0].clocks_event_reasons[0]",
    ),
    "nested brackets": ("gpus: " + "[" * DEEP + "]" * DEEP + "\n", "(file)"),
    "nan utilization": ("gpus: [{model: H200, utilization: .nan}]\n", "gpus[0].utilization"),
    "infinite power": ("gpus: [{model: H200, power_watts: .inf}]\n", "gpus[0].power_watts"),
    "a number of 5000 digits": ("gpus: [{model: H200, power_watts: " + "9" * 5000 + "}]\n",
                                "(file)"),
    "huge pid": (f"gpus: [{{model: H200, processes: [{{pid: {2**70}}}]}}]\n",
                 "gpus[0].processes[0].pid"),
}

THRESHOLDS = {
    "nested brackets": (("gpu_memory_used: " + "[" * DEEP + "]" * DEEP + "\n").encode(),
                        "nested too deeply"),
    "a number of 5000 digits": (b"gpu_memory_used: " + b"9" * 5000 + b"\n", "4300 digits"),
    "a huge whole number": (b"data_wait_min_steps: 1180591620717411303424\n",
                            "data_wait_min_steps"),
    "an infinite duration": (b"container_memory_for_s: .inf\n", "container_memory_for_s"),
    "a number too large for a float": (("xid_hold_s: " + "9" * 400 + "\n").encode(),
                                       "xid_hold_s"),
    "not utf-8": (b"gpu_memory_used: 0.9\n# caf\xe9\n", "not UTF-8"),
    "clear above fire": (b"gpu_memory_used: 0.5\n", "gpu_memory_used_clear"),
    "clear below fire on a rule that fires below": (
        b"device_idle_activity: 0.05\ndevice_idle_activity_clear: 0.01\n",
        "device_idle_activity_clear",
    ),
    "temperature clear above fire": (
        b"temperature_celsius: 80\ntemperature_clear_celsius: 85\n", "temperature_clear_celsius"),
}


def _one_line_exit_2(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(("text", "key"), SCENARIOS.values(), ids=SCENARIOS.keys())
def test_bad_scenario_exits_2_with_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    _one_line_exit_2(run_cli("snapshot", "--simulate", str(path)), f"{path}: {key}: ")


def test_a_json_scenario_with_a_number_of_5000_digits_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text('{"gpus": [{"model": "H200", "power_watts": ' + "9" * 5000 + "}]}")
    _one_line_exit_2(run_cli("snapshot", "--simulate", str(path)), f"{path}: (file): ")


@pytest.mark.parametrize(("content", "needle"), THRESHOLDS.values(), ids=THRESHOLDS.keys())
def test_bad_thresholds_file_exits_2_with_file_and_key(tmp_path: Path, content: bytes,
                                                       needle: str) -> None:
    path = tmp_path / "thresholds.yaml"
    path.write_bytes(content)
    _one_line_exit_2(run_cli("snapshot", "--simulate", "h200", "--thresholds", str(path)),
                     f"{path}: ", needle)


def test_consistent_hysteresis_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.yaml"
    path.write_text("gpu_memory_used: 0.5\ngpu_memory_used_clear: 0.5\n"
                    "device_idle_activity: 0.02\ndevice_idle_activity_clear: 0.5\n")
    result = run_cli("snapshot", "--simulate", "h200", "--thresholds", str(path))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://collector:99999", "http://:4317"])
def test_bad_otlp_endpoint_exits_2_naming_the_variable(endpoint: str) -> None:
    result = run_cli("snapshot", "--simulate", "h200", "--exporter", "otlp",
                     env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    _one_line_exit_2(result, "OTEL_EXPORTER_OTLP_ENDPOINT: ")


def test_prometheus_port_out_of_range_exits_2() -> None:
    result = run_cli("snapshot", "--simulate", "h200", "--exporter", "prometheus",
                     env={"OTEL_EXPORTER_PROMETHEUS_PORT": "99999"})
    _one_line_exit_2(result, "OTEL_EXPORTER_PROMETHEUS_PORT: '99999'")
