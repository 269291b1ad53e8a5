"""The environment settings: each read in one place, validated, and named when wrong."""

from __future__ import annotations

import pytest

from otel_gpu import config
from otel_gpu.config import ConfigError


def test_otlp_protocol_prefers_the_signal_variable_and_names_the_bad_one() -> None:
    assert config.otlp_protocol(environ={}) == "grpc"
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": " HTTP/Protobuf "}
    assert config.otlp_protocol("traces", env) == "http/protobuf"
    assert config.otlp_protocol("metrics", env) == "grpc"
    with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/json'"):
        config.otlp_protocol("metrics", {"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"})
    with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_OTLP_PROTOCOL: 'thrift'"):
        config.otlp_protocol("logs", {"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"})


def test_otlp_target_per_signal_paths() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert config.otlp_target(env, "traces").url == "http://collector:4318/v1/traces"
    assert config.otlp_target(env, "logs").url == "http://collector:4318/v1/logs"
    env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] = "http://other:9999/logs-in"
    assert config.otlp_target(env, "logs") == ("http/protobuf", "http://other:9999/logs-in",
                                               "other", 9999)


def test_a_grpc_unix_socket_is_a_target() -> None:
    for url in ("unix:///run/otel.sock", "unix:/run/otel.sock"):
        target = config.otlp_target({"OTEL_EXPORTER_OTLP_ENDPOINT": url})
        assert (target.host, target.port) == ("/run/otel.sock", 0)
    with pytest.raises(ConfigError, match="names no socket"):
        config.otlp_target({"OTEL_EXPORTER_OTLP_ENDPOINT": "unix:"})


@pytest.mark.parametrize(("endpoint", "why"), [
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://collector:99999", "Port out of range"),
    ("http://collector:port", "Port could not be cast"),
    ("http://:4317", "names no host"),
])
def test_a_bad_endpoint_names_its_variable(endpoint: str, why: str) -> None:
    with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_OTLP_ENDPOINT: ") as caught:
        config.otlp_target({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    assert why in str(caught.value)
    specific = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://fine:4317",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": endpoint}
    with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: "):
        config.otlp_target(specific)


def test_export_interval() -> None:
    assert config.export_interval_ms(60_000.0, {}) == 60_000.0
    assert config.export_interval_ms(1.0, {"OTEL_METRIC_EXPORT_INTERVAL": "250"}) == 250.0
    for bad in ("soon", "0", "-5", "nan", "inf"):
        with pytest.raises(ConfigError, match=r"^OTEL_METRIC_EXPORT_INTERVAL: "):
            config.export_interval_ms(1.0, {"OTEL_METRIC_EXPORT_INTERVAL": bad})


def test_prometheus_address() -> None:
    assert config.prometheus_address({}) == ("localhost", 9464)  # the specification's default
    env = {"OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT": "9100"}
    assert config.prometheus_address(env) == ("127.0.0.1", 9100)
    for bad in ("http", "0", "65536", "-1", ""):
        with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_PROMETHEUS_PORT: "):
            config.prometheus_address({"OTEL_EXPORTER_PROMETHEUS_PORT": bad})


def test_signal_exporters() -> None:
    assert config.signal_exporters("metrics", {}) == ["otlp"]
    env = {"OTEL_TRACES_EXPORTER": " Console, none ,"}
    assert config.signal_exporters("traces", env) == ["console", "none"]
    with pytest.raises(ConfigError, match=r"^OTEL_LOGS_EXPORTER: 'zipkin'"):
        config.signal_exporters("logs", {"OTEL_LOGS_EXPORTER": "otlp,zipkin"})


def test_otel_gpu_settings() -> None:
    env = {"OTEL_GPU_THRESHOLDS": "/etc/t.yaml", "OTEL_GPU_SIMULATE": "h200",
           "OTEL_GPU_COLLECT_IN_PROCESS": "TRUE", "OTEL_GPU_KUBELET_URL": "https://n:10250/pods",
           "OTEL_GPU_KUBELET_INSECURE": "yes"}
    assert config.thresholds_file(env) == "/etc/t.yaml"
    assert config.simulated_scenario(env) == "h200"
    assert config.collect_in_process(env) is True
    assert config.kubelet_url(env) == "https://n:10250/pods"
    assert config.kubelet_insecure(env) is False  # only "true" is true
    empty = {k: "" for k in env}
    assert config.thresholds_file(empty) is None and config.simulated_scenario(empty) is None
    assert config.kubelet_url(empty) is None and config.collect_in_process(empty) is False


def test_slow_scan_intervals() -> None:
    name = config.DISK_INTERVAL
    assert config.scan_interval_s(name, 300.0, {}) == 300.0
    assert config.scan_interval_s(name, 300.0, {name: " 60 "}) == 60.0
    assert config.scan_interval_s(name, 300.0, {name: "0"}) == 0.0  # off
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(ConfigError, match=rf"^{name}: expected a number of seconds"):
            config.scan_interval_s(name, 300.0, {name: bad})
