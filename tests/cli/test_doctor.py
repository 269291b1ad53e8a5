"""``otel-gpu doctor``: each check against real servers (the Docker API stand-in on a Unix socket,
the kubelet's pod-resources gRPC server, TCP listeners) and the simulated driver."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runner import run_cli

from otel_gpu.cli import doctor
from otel_gpu.cli.doctor import (
    EXIT_CHECKS_FAILED,
    FAIL,
    OK,
    WARN,
    Check,
    _with_deadline,
    cgroup_layout,
    check_container_roots,
    check_docker,
    check_kubelet,
    check_nvml,
    check_otlp,
    check_proc,
    check_prometheus,
    exit_code,
    report_document,
    report_table,
)
from otel_gpu.config import otlp_target
from otel_gpu.simulate import SimulatedServer
from otel_gpu.simulate.docker_api import serve_docker_api
from otel_gpu.simulate.kubelet_api import serve_pod_resources

GPU_UUID = "GPU-6f4c2a1e-9b3d-4c8e-a1f2-0123456789ab"


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path: Unix socket paths are limited to 107 bytes."""
    path = tempfile.mkdtemp(prefix="doc", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listening() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one(checks: list[Check]) -> Check:
    (check,) = checks
    return check


# -- Docker ------------------------------------------------------------------------------------


def test_docker_ping_over_the_unix_socket(short_dir: str) -> None:
    path = os.path.join(short_dir, "docker.sock")
    with serve_docker_api(path, []) as api:
        check = _one(check_docker(path, timeout_s=2.0))
    assert check.status == OK, check
    assert path in check.message and "OK" in check.message
    assert api.requests == ["/_ping"]


def test_docker_that_hangs_fails_within_its_timeout(short_dir: str) -> None:
    path = os.path.join(short_dir, "docker.sock")
    with serve_docker_api(path, [], delay_s=30.0):
        check = _one(check_docker(path, timeout_s=0.3))
    # The daemon answers only after 30 s: a failure now is the timeout's.
    assert check.status == FAIL and "within 0.3 s" in check.message and check.remedy


def test_docker_socket_nobody_listens_on(short_dir: str) -> None:
    path = os.path.join(short_dir, "docker.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nothing listens: what a stopped daemon leaves
    check = _one(check_docker(path, timeout_s=1.0))
    assert check.status == FAIL
    assert "ConnectionRefusedError" in check.message


def test_docker_socket_absent(short_dir: str) -> None:
    path = os.path.join(short_dir, "docker.sock")
    assert _one(check_docker(path, in_container=False)).status == OK
    inside = _one(check_docker(path, in_container=True))
    assert inside.status == WARN and path in (inside.remedy or "")


# -- kubelet -----------------------------------------------------------------------------------


def test_kubelet_pod_resources_list(short_dir: str) -> None:
    path = os.path.join(short_dir, "kubelet.sock")
    pods = [{"namespace": "research", "name": "job-0", "uid": "u",
             "containers": [{"name": "trainer", "id": "a" * 64, "devices": [GPU_UUID]}]}]
    with serve_pod_resources(path, pods) as server:
        check = _one(check_kubelet(path, timeout_s=2.0, environ={}))
    assert check.status == OK, check
    assert "1 pod with GPUs" in check.message
    assert server.calls == 1


def test_kubelet_that_hangs_fails_within_its_timeout(short_dir: str) -> None:
    path = os.path.join(short_dir, "kubelet.sock")
    with serve_pod_resources(path, [], delay_s=30.0):
        check = _one(check_kubelet(path, timeout_s=0.3, environ={}))
    assert check.status == FAIL and "DEADLINE_EXCEEDED" in check.message


def test_kubelet_socket_absent(short_dir: str) -> None:
    path = os.path.join(short_dir, "kubelet.sock")
    assert _one(check_kubelet(path, environ={})).status == OK
    in_k8s = _one(check_kubelet(path, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}))
    assert in_k8s.status == WARN


# -- OTLP and Prometheus -----------------------------------------------------------------------


def test_otlp_endpoint_listening(listening: int) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{listening}"}
    check = _one(check_otlp(env, timeout_s=1.0))
    assert check.status == OK
    assert f"http://127.0.0.1:{listening}" in check.message and "grpc" in check.message


def test_otlp_endpoint_closed(closed_port: int) -> None:
    env = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{closed_port}/v1/metrics",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    check = _one(check_otlp(env, timeout_s=1.0))
    assert check.status == FAIL and check.remedy
    assert f"http://127.0.0.1:{closed_port}/v1/metrics" in check.message


def test_otlp_endpoint_on_a_unix_socket(short_dir: str) -> None:
    path = os.path.join(short_dir, "otlp.sock")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"unix://{path}"}
    assert _one(check_otlp(env, timeout_s=1.0)).status == FAIL  # nothing there yet
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        check = _one(check_otlp(env, timeout_s=1.0))
    assert check.status == OK and f"{path} accepts connections" in check.message


def test_a_check_that_hangs_is_cut_off() -> None:
    check = _one(_with_deadline("slow", 0.2, lambda: time.sleep(5) or []))
    assert check.status == FAIL and "no answer within 0.2 s" in check.message


def test_otlp_target_follows_the_standard_variables() -> None:
    assert otlp_target({}) == ("grpc", "http://localhost:4317", "localhost", 4317)
    assert otlp_target({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == (
        "http/protobuf", "http://localhost:4318/v1/metrics", "localhost", 4318)
    assert otlp_target({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example.com/otlp/"}) == (
        "http/protobuf", "https://otlp.example.com/otlp/v1/metrics", "otlp.example.com", 443)
    assert otlp_target({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
                        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:9000/custom"})[1] == (
        "http://c:9000/custom")
    assert otlp_target({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"})[2:] == (
        "collector", 4317)
    bad = _one(check_otlp({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}))
    assert bad.status == FAIL and "thrift" in bad.message


def test_prometheus_port_free(closed_port: int) -> None:
    env = {"OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
           "OTEL_EXPORTER_PROMETHEUS_PORT": str(closed_port)}
    assert _one(check_prometheus(env, timeout_s=1.0)).status == OK


def test_prometheus_port_taken_by_something_else(listening: int) -> None:
    env = {"OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
           "OTEL_EXPORTER_PROMETHEUS_PORT": str(listening)}
    check = _one(check_prometheus(env, timeout_s=0.5))
    assert check.status == WARN and str(listening) in check.message


def test_prometheus_port_not_a_port() -> None:
    check = _one(check_prometheus({"OTEL_EXPORTER_PROMETHEUS_PORT": "http"}))
    assert check.status == FAIL


# -- NVML ----------------------------------------------------------------------------------------


def test_nvml_and_mig_modes_on_the_simulated_dgx() -> None:
    server = SimulatedServer("dgx-a100")
    server.begin_cycle(0)
    checks = {c.name: c for c in check_nvml(server.nvml)}
    assert checks["nvml"].status == OK and "550.54.15" in checks["nvml"].message
    assert "8 GPUs" in checks["nvml"].message
    assert checks["mig gpu0"].message == "MIG on, 4 MIG devices"
    assert checks["mig gpu2"].message == "MIG off"
    assert all(c.status == OK for c in checks.values())


class _NoDriver:
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_UNKNOWN = 999

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

    def nvmlInit(self) -> None:
        raise self.NVMLError(self.NVML_ERROR_LIBRARY_NOT_FOUND)


def test_no_driver_is_a_warning() -> None:
    check = _one(check_nvml(_NoDriver()))
    assert check.status == WARN and "LIBRARY_NOT_FOUND" in check.message


def test_broken_driver_is_a_failure() -> None:
    broken = _NoDriver()
    broken.nvmlInit = lambda: (_ for _ in ()).throw(  # type: ignore[method-assign]
        _NoDriver.NVMLError(_NoDriver.NVML_ERROR_UNKNOWN))
    check = _one(check_nvml(broken))
    assert check.status == FAIL and "retries nvmlInit" in check.message


def test_a_driver_not_loaded_yet_is_said_to_be_retried() -> None:
    loading = _NoDriver()
    loading.NVML_ERROR_DRIVER_NOT_LOADED = 9  # type: ignore[attr-defined]
    loading.nvmlInit = lambda: (_ for _ in ()).throw(  # type: ignore[method-assign]
        _NoDriver.NVMLError(9))
    check = _one(check_nvml(loading))
    assert check.status == WARN and "DRIVER_NOT_LOADED" in check.message
    assert "retries nvmlInit" in check.message
    # Without the driver library there is nothing to wait for: no retry is promised.
    assert "retries" not in _one(check_nvml(_NoDriver())).message


# -- /proc and cgroups ---------------------------------------------------------------------------


def _proc(root: Path, pid: int, uid: int, cgroup: bool = True) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "status").write_text(f"Name:\tpython\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    if cgroup:
        (d / "cgroup").write_text("0::/user.slice\n")


def test_proc_another_users_process_is_readable(tmp_path: Path) -> None:
    _proc(tmp_path, 10, 1000)
    _proc(tmp_path, 11, 1001)
    assert _one(check_proc(str(tmp_path), uid=1000)).status == OK


def test_proc_another_users_cgroup_unreadable(tmp_path: Path) -> None:
    _proc(tmp_path, 10, 1000)
    _proc(tmp_path, 11, 1001, cgroup=False)
    check = _one(check_proc(str(tmp_path), uid=1000))
    assert check.status == FAIL and "/proc/11/cgroup" in check.message


def test_container_roots_need_ptrace_access(tmp_path: Path) -> None:
    _proc(tmp_path, 10, 1000)
    _proc(tmp_path, 11, 1001)
    os.symlink(tmp_path, tmp_path / "11" / "root")
    assert _one(check_container_roots(str(tmp_path), uid=1000)).status == OK

    def denied(path: str) -> os.stat_result:  # the kernel without CAP_SYS_PTRACE
        raise PermissionError(13, "Permission denied", path)

    check = _one(check_container_roots(str(tmp_path), uid=1000, stat=denied))
    assert check.status == WARN and "/proc/11/root" in check.message
    assert check.remedy is not None and "CAP_SYS_PTRACE" in check.remedy
    alone = _one(check_container_roots(str(tmp_path), uid=1001))  # pid 10 has no root to enter
    assert alone.status == WARN and "untested" in alone.message


def test_proc_hidepid(tmp_path: Path) -> None:
    _proc(tmp_path, 10, 1000)
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mounts").write_text("proc /proc proc rw,nosuid,hidepid=2 0 0\n")
    check = _one(check_proc(str(tmp_path), uid=1000))
    assert check.status == FAIL and "hidepid=2" in check.message


def test_cgroup_layouts(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    mounts = tmp_path / "self" / "mounts"
    mounts.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n")
    assert cgroup_layout(str(tmp_path)) == "v2"
    mounts.write_text("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n")
    assert cgroup_layout(str(tmp_path)) == "v1"
    mounts.write_text("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
                      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert cgroup_layout(str(tmp_path)) == "hybrid"
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert cgroup_layout(str(tmp_path)) is None


# -- the report and the command ------------------------------------------------------------------


def test_exit_code_and_report() -> None:
    checks = [Check("a", OK, "fine"), Check("b", WARN, "meh", "do x")]
    assert exit_code(checks) == 0
    doc = report_document([*checks, Check("c", FAIL, "broken", "do y")])
    assert doc["exit_code"] == EXIT_CHECKS_FAILED and doc["ok"] is False
    table = report_table([*checks, Check("c", FAIL, "broken " * 30, "do y " * 30)])
    assert all(len(line) <= 80 for line in table.splitlines())
    assert "\033[" not in table
    assert "fix: do x" in table and "1 failed, 1 warnings, 1 ok" in table


def test_cli_names_the_failed_otlp_endpoint_and_exits_3(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    result = run_cli("doctor", "--format", "json", "--timeout", "1",
                     env={"OTEL_EXPORTER_OTLP_ENDPOINT": url}, timeout=60)
    assert result.returncode == EXIT_CHECKS_FAILED, result.stderr
    doc = json.loads(result.stdout)
    (otlp,) = [c for c in doc["checks"] if c["name"] == "otlp"]
    assert otlp["status"] == FAIL and url in otlp["message"]
    assert {c["name"] for c in doc["checks"]} >= {"nvml", "proc", "cgroup", "pid namespace",
                                                  "docker", "kubelet", "otlp"}


def test_cli_exit_code_follows_the_checks(listening: int) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{listening}"}
    result = run_cli("doctor", "--format", "json", "--timeout", "1", env=env, timeout=60)
    doc = json.loads(result.stdout)
    failed = [c for c in doc["checks"] if c["status"] == FAIL]
    assert result.returncode == (EXIT_CHECKS_FAILED if failed else 0), doc
    table = run_cli("doctor", "--timeout", "1", env=env, timeout=60)
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    assert "\033[" not in table.stdout


def test_cli_rejects_bad_usage() -> None:
    result = run_cli("doctor", "--timeout", "soon")
    assert result.returncode == 2 and result.stderr.count("\n") == 1


# -- DCGM ------------------------------------------------------------------------------------------


def _dcgm_source(tmp_path: Path, **dcgm: object):
    import yaml

    from otel_gpu.collect.build import simulated_dcgm
    from otel_gpu.simulate import SimulatedServer, load_scenario
    from otel_gpu.simulate.scenario import BUILTIN_DIR

    doc = yaml.safe_load((BUILTIN_DIR / "dgx-a100.yaml").read_text())
    doc["dcgm"] = dcgm
    path = tmp_path / "dgx.yaml"
    path.write_text(yaml.safe_dump(doc))
    server = SimulatedServer(load_scenario(str(path)))
    return server, simulated_dcgm(server)


def test_dcgm_host_engine_found_with_its_version_module_and_fields(tmp_path: Path) -> None:
    _, source = _dcgm_source(tmp_path, version="4.2.3")
    (check,) = doctor.check_dcgm(source)
    assert check.status == doctor.OK
    assert "host engine at 127.0.0.1 (DCGM 4.2.3), profiling module loaded" in check.message
    assert "SM_ACTIVE" in check.message and "GR_ENGINE_ACTIVE" in check.message


def test_dcgm_absent_or_refusing_is_one_quiet_line(tmp_path: Path) -> None:
    from otel_gpu.sources.dcgm import DcgmSource

    absent = doctor.check_dcgm(DcgmSource(environ={}, load=lambda: None))
    _, refusing_source = _dcgm_source(tmp_path, hostengine=False)
    refusing = doctor.check_dcgm(refusing_source)
    for checks in (absent, refusing):
        assert [c.status for c in checks] == [doctor.OK]
        assert checks[0].message.startswith("not found")
        assert "nv-hostengine" in (checks[0].remedy or "")
    assert "bindings are not installed" in (absent[0].remedy or "")
    assert "no DCGM host engine answers at 127.0.0.1" in (refusing[0].remedy or "")


def test_dcgm_profiling_held_by_another_client_warns_of_the_pitfall(tmp_path: Path) -> None:
    _, source = _dcgm_source(tmp_path, faults=[{"call": "WatchFields", "error": "IN_USE"}])
    checks = doctor.check_dcgm(source)
    assert [c.status for c in checks] == [doctor.WARN, doctor.WARN]
    assert "IN_USE" in checks[1].message
    assert "one group of profiling fields at a time" in (checks[1].remedy or "")


def test_dcgm_without_its_profiling_module_warns(tmp_path: Path) -> None:
    _, source = _dcgm_source(tmp_path, profiling_module=False)
    (check, *_) = doctor.check_dcgm(source)
    assert check.status == doctor.WARN
    assert "profiling module NOT loaded" in check.message and "none" in check.message


def test_dcgm_exporter_route(tmp_path: Path) -> None:
    server, source = _dcgm_source(tmp_path, hostengine=False, exporter=True)
    try:
        (check,) = doctor.check_dcgm(source)
    finally:
        server.close()
    assert check.status == doctor.OK
    assert check.message.startswith("dcgm-exporter at http://127.0.0.1:")
    assert "SM_ACTIVE" in check.message
