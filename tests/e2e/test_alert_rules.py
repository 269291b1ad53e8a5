"""The operator alert rules: promtool accepts them, their unit tests pass, every alert has a case
that fires and one that does not, and every metric and label they read is one we export, under
its name after OTLP-to-Prometheus translation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from otel_gpu.telemetry.catalog import CATALOG, COUNTER, GAUGE, HISTOGRAM, Metric

RULES_DIR = Path(__file__).resolve().parents[2] / "collector_config" / "rules"
RULES = RULES_DIR / "otel-gpu-alerts.yaml"
RULE_TESTS = sorted((RULES_DIR / "tests").glob("*.yaml"))

# UCUM units our catalog uses, as the translator's unit map writes them.
_UNIT_SUFFIX = {"By": "bytes", "s": "seconds", "Cel": "celsius", "W": "watts", "J": "joules",
                "Hz": "hertz"}
# Labels the scrape or the translation adds, beside our attributes.
_TARGET_LABELS = {"job", "instance"}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def prometheus_name(metric: Metric) -> str:
    """The name a backend gives our metric (unit and type suffixes on, as by default)."""
    tokens = [t for t in re.split(r"[^a-zA-Z0-9]+|_", metric.name) if t]
    suffix = None
    if metric.unit == "1":
        suffix = "ratio" if metric.instrument == GAUGE else None
    elif not metric.unit.startswith("{"):
        suffix = _UNIT_SUFFIX[metric.unit]
    if suffix == "ratio":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    elif suffix is not None and suffix not in tokens:
        tokens.append(suffix)
    if metric.instrument == COUNTER:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    return "_".join(tokens)


def _label(attribute: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_translation_examples() -> None:
    by_name = {m.name: m for m in CATALOG}
    assert prometheus_name(by_name["nvidia.gpu.xid.errors"]) == "nvidia_gpu_xid_errors_total"
    assert prometheus_name(by_name["hw.temperature"]) == "hw_temperature_celsius"
    assert prometheus_name(by_name["hw.status"]) == "hw_status"
    assert prometheus_name(by_name["hw.fan.speed_ratio"]) == "hw_fan_speed_ratio"
    assert prometheus_name(by_name["system.filesystem.usage"]) == "system_filesystem_usage_bytes"
    assert (prometheus_name(by_name["system.memory.utilization"])
            == "system_memory_utilization_ratio")


def test_rules_read_only_metrics_and_labels_we_export() -> None:
    exported = {prometheus_name(m): m for m in CATALOG if m.instrument != HISTOGRAM}
    for rule in _rules():
        expr = rule["expr"]
        for name, selector in re.findall(r"\b([a-z][a-z0-9_]*)\s*(\{[^}]*\})?", expr):
            if not name.startswith(("hw_", "nvidia_", "system_", "otel_gpu_", "container_")):
                continue
            assert name in exported, f"{rule['alert']}: {name} is not a metric we export"
            labels = {_label(a) for a in exported[name].attributes} | _TARGET_LABELS
            for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector):
                assert label in labels, f"{rule['alert']}: {name} has no label {label}"


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    alerts = {rule["alert"] for rule in _rules()}
    fires: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for check in test.get("alert_rule_test", ()):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts - fires == set(), "alerts no test sees firing"
    assert alerts - silent == set(), "alerts no test sees silent"


def test_every_alert_names_its_severity_and_insight() -> None:
    insights = {"xid_critical", "ecc_uncorrectable", "row_remap", "thermal_throttle",
                "power_brake", "high_temperature", "gpu_lost", "host_memory_pressure",
                "filesystem_full", "mig_reconfigured", "nvlink_errors"}
    seen = set()
    for rule in _rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["labels"]["insight"] in insights, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        seen.add(rule["labels"]["insight"])
    assert seen == insights


def test_promtool_check_rules() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    assert RULE_TESTS
    result = subprocess.run([_promtool(), "test", "rules", *map(str, RULE_TESTS)],
                            capture_output=True, text=True, timeout=300, cwd=RULES_DIR / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_promtool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        _promtool()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _promtool()
