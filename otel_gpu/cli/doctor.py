"""``otel-gpu doctor``: checks what the agent needs from this machine and says what to fix.

Each check ends ``ok``, ``warn`` (the agent runs, with less) or ``fail`` (something it is meant
to do cannot work), with a remedy. Every network check runs in a daemon thread with a deadline,
so neither a hung daemon nor a slow name lookup holds the command.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import textwrap
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from otel_gpu.cli.terminal import WIDTH, Style, emit
from otel_gpu.config import ConfigError, otlp_target, prometheus_address
from otel_gpu.sources._text import parse_uid
from otel_gpu.sources.cgroup import CgroupReader
from otel_gpu.sources.docker import DEFAULT_SOCKET as DOCKER_SOCKET
from otel_gpu.sources.docker import UnixHTTPConnection
from otel_gpu.sources.identity import ATTRIBUTION_NOTE, detect_self
from otel_gpu.sources.kubelet import POD_RESOURCES_SOCKET, PodResourcesClient
from otel_gpu.sources.libnvml import error_names
from otel_gpu.sources.nvml import INIT_RETRY_NOTE

SCHEMA = "otel-gpu.doctor/1"
OK, WARN, FAIL = "ok", "warn", "fail"
EXIT_CHECKS_FAILED = 3


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn, fail
    message: str
    remedy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message,
                "remedy": self.remedy}


def _with_deadline(name: str, seconds: float, check: Callable[[], list[Check]]) -> list[Check]:
    """``check()`` in a daemon thread; a fail if it has not answered within ``seconds``."""
    box: list[list[Check]] = []

    def run() -> None:
        try:
            box.append(check())
        except Exception as err:
            box.append([Check(name, FAIL, f"the check itself failed: {type(err).__name__}: "
                                          f"{err}")])

    thread = threading.Thread(target=run, name=f"doctor-{name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        return [Check(name, FAIL, f"no answer within {seconds:g} s",
                      "whatever this check talks to hangs; see below for what it asked")]
    return box[0]


# -- NVML --------------------------------------------------------------------------------------


def check_nvml(nvml: Any | None = None) -> list[Check]:
    """The NVML library, the driver behind it and each GPU's MIG mode."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return [Check("nvml", FAIL, "nvidia-ml-py (module pynvml) is not installed",
                          "pip install nvidia-ml-py (it comes with otel-gpu)")]
    names = error_names(nvml)
    error = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error as err:
        code = names.get(getattr(err, "value", None), "UNKNOWN")
        if code in ("LIBRARY_NOT_FOUND", "DRIVER_NOT_LOADED"):
            return [Check("nvml", WARN, f"no NVIDIA driver (nvmlInit: {code}); the agent "
                                        "reports host metrics only" + (
                                            "" if code == "LIBRARY_NOT_FOUND" else
                                            f" until then: {INIT_RETRY_NOTE}"),
                          "on a GPU server: install the NVIDIA driver; in a container: run "
                          "it with --gpus all (Docker) or the NVIDIA runtime / device plugin")]
        return [Check("nvml", FAIL, f"nvmlInit failed: {code}; {INIT_RETRY_NOTE}",
                      "check `nvidia-smi`; after a driver upgrade, reboot or reload the "
                      "kernel module so that library and driver versions match")]
    except OSError as err:
        return [Check("nvml", WARN, f"no NVIDIA driver ({err}); host metrics only",
                      "install the NVIDIA driver, or give the container the GPUs")]
    checks: list[Check] = []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        count = int(nvml.nvmlDeviceGetCount())
        checks.append(Check("nvml", OK, f"driver {driver}, {count} GPU"
                                        f"{'' if count == 1 else 's'}"))
        for index in range(count):
            checks.append(_mig_check(nvml, error, names, index))
    except error as err:
        code = names.get(getattr(err, "value", None), "UNKNOWN")
        checks.append(Check("nvml", FAIL, f"NVML answers nvmlInit but not the next call: "
                                          f"{code}", "check `nvidia-smi` and dmesg for Xid"))
    finally:
        with contextlib.suppress(error):
            nvml.nvmlShutdown()
    return checks


def _mig_check(nvml: Any, error: Any, names: Mapping[Any, str], index: int) -> Check:
    name = f"mig gpu{index}"
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except error as err:
        code = names.get(getattr(err, "value", None), "UNKNOWN")
        remedy = "drain the node and reboot it" if code == "GPU_IS_LOST" else \
            "check `nvidia-smi -i " + str(index) + "`"
        return Check(f"gpu{index}", FAIL, f"cannot open the GPU: {code}", remedy)
    try:
        current, pending = (int(v) for v in nvml.nvmlDeviceGetMigMode(handle))
    except error as err:
        code = names.get(getattr(err, "value", None), "UNKNOWN")
        if code == "NOT_SUPPORTED":
            return Check(name, OK, "no MIG on this model")
        return Check(name, WARN, f"MIG mode unreadable: {code}")
    if current != pending:
        return Check(name, WARN, f"MIG mode {'on' if current else 'off'}, "
                                 f"{'on' if pending else 'off'} after the next GPU reset",
                     f"reset the GPU (nvidia-smi -r -i {index}) once its jobs are done")
    if not current:
        return Check(name, OK, "MIG off")
    try:
        instances = sum(
            1 for j in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)))
            if _mig_exists(nvml, error, handle, j)
        )
    except error:
        return Check(name, OK, "MIG on")
    if instances == 0:
        return Check(name, WARN, "MIG on, but no MIG devices: the GPU serves no one",
                     "create instances (nvidia-smi mig -cgi ... -C) or turn MIG off")
    return Check(name, OK, f"MIG on, {instances} MIG device{'' if instances == 1 else 's'}")


def _mig_exists(nvml: Any, error: Any, handle: Any, index: int) -> bool:
    try:
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
    except error:
        return False
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- /proc, cgroups, pid namespace -----------------------------------------------------------------


def check_proc(proc_root: str = "/proc", uid: int | None = None) -> list[Check]:
    """Whether another user's /proc/<pid>/status and cgroup can be read, as attribution needs."""
    me = os.getuid() if uid is None else uid
    hidepid = _hidepid(proc_root)
    others = seen = 0
    for entry in _pids(proc_root):
        status = _read(os.path.join(proc_root, entry, "status"))
        if status is None:
            continue
        seen += 1
        owner = _uid_of(status)
        if owner is None or owner == me:
            continue
        others += 1
        if _read(os.path.join(proc_root, entry, "cgroup")) is not None:
            return [Check("proc", OK, f"another user's /proc/<pid>/status and cgroup are "
                                      f"readable ({seen + others - 1}+ processes seen)")]
        return [Check("proc", FAIL, f"/proc/{entry}/cgroup of uid {owner} is not readable",
                      "run the agent as root or with CAP_SYS_PTRACE; check the LSM profile")]
    if hidepid:
        return [Check("proc", FAIL, f"/proc is mounted with hidepid={hidepid}: other users' "
                                    "processes are hidden", "run the agent as root, or add it "
                                    "to the gid= group of the /proc mount")]
    if me == 0 and seen > 1:
        return [Check("proc", OK, f"running as root: all {seen} processes' /proc entries "
                                  "are readable")]
    if seen <= 1:
        return [Check("proc", WARN, f"only {seen} process{'' if seen == 1 else 'es'} "
                                    "visible: no other user's to read",
                      "run the agent in the host pid namespace (--pid=host, hostPID: true)")]
    return [Check("proc", WARN, "no other user's process is running, so their readability "
                                "is untested")]


def check_container_roots(
    proc_root: str = "/proc", uid: int | None = None, stat: Any = os.stat
) -> list[Check]:
    """Whether another user's ``/proc/<pid>/root`` can be entered, as the /dev/shm and
    environment reads need: the kernel asks for CAP_SYS_PTRACE there (proc(5), ptrace access
    mode), where status and cgroup need nothing."""
    me = os.getuid() if uid is None else uid
    for entry in _pids(proc_root):
        status = _read(os.path.join(proc_root, entry, "status"))
        owner = _uid_of(status) if status is not None else None
        if owner is None or owner == me:
            continue
        try:
            stat(os.path.join(proc_root, entry, "root", ""))
        except PermissionError:
            return [Check("container roots", WARN, f"/proc/{entry}/root of uid {owner} cannot "
                          "be entered: containers' /dev/shm and environments are not read",
                          "give the agent CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE; "
                          "securityContext.capabilities.add: [SYS_PTRACE])")]
        except OSError:
            continue  # it exited, or has no root to enter (a kernel thread)
        return [Check("container roots", OK, "another user's /proc/<pid>/root can be entered: "
                                             "containers' /dev/shm and environments are read")]
    return [Check("container roots", WARN, "no other user's process is running, so entering "
                                           "their /proc/<pid>/root is untested")]


def _pids(proc_root: str) -> Iterable[str]:
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    return sorted((n for n in names if n.isdigit()), key=int)[:4096]


def _hidepid(proc_root: str) -> str | None:
    mounts = _read(os.path.join(proc_root, "self", "mounts")) or ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "proc" and fields[1] == "/proc":
            for option in fields[3].split(","):
                if option.startswith("hidepid=") and option not in ("hidepid=0",
                                                                     "hidepid=off"):
                    return option.partition("=")[2]
    return None


def _uid_of(status: str) -> int | None:
    return parse_uid(status)


def _read(path: str, limit: int = 1 << 16) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except (OSError, ValueError):
        return None


def cgroup_layout(proc_root: str = "/proc") -> str | None:
    """``v2``, ``v1``, ``hybrid`` (v1 controllers with a v2 tree beside them) or None."""
    v1 = v2 = False
    for line in (_read(os.path.join(proc_root, "self", "mounts")) or "").splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        if fields[2] == "cgroup2":
            v2 = True
        elif fields[2] == "cgroup":
            v1 = True
    if v1 and v2:
        return "hybrid"
    return "v1" if v1 else "v2" if v2 else None


def check_cgroup(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> list[Check]:
    layout = cgroup_layout(proc_root)
    if layout is None:
        return [Check("cgroup", FAIL, "no cgroup filesystem is mounted",
                      f"mount the host's cgroup tree at {cgroup_root} (read-only is enough)")]
    lines = (_read(os.path.join(proc_root, "self", "cgroup")) or "").splitlines()
    reader = CgroupReader(cgroup_root)
    resources = reader.read(lines)
    errors = reader.take_errors()
    if resources is None:
        return [Check("cgroup", FAIL, f"cgroup {layout}: our own cgroup is not under "
                                      f"{cgroup_root}", "mount the host's cgroup tree there "
                                      "and share the host cgroup namespace (--cgroupns=host)")]
    if errors:
        return [Check("cgroup", FAIL, f"cgroup {layout}: {errors[0].call} not readable "
                                      f"({errors[0].error_type})",
                      "run the agent as root, or give it read access to the cgroup tree")]
    paths = {line.split(":", 2)[2] for line in lines if line.count(":") >= 2}
    if paths == {"/"} and detect_self(proc_root).in_container:
        return [Check("cgroup", WARN, f"cgroup {layout} is readable, but we see our "
                                      "container's cgroup as the root: other containers' "
                                      "limits are out of reach",
                      "share the host cgroup namespace (--cgroupns=host)")]
    limit = "no limit" if resources.memory_limit_bytes is None else "limits readable"
    return [Check("cgroup", OK, f"cgroup {layout} mounted and readable ({limit} here)")]


def check_pid_namespace(proc_root: str = "/proc",
                        environ: Mapping[str, str] | None = None) -> list[Check]:
    info = detect_self(proc_root, environ)
    if info.host_pid_namespace is True:
        return [Check("pid namespace", OK, "the host's: NVML's pids are ours")]
    if info.host_pid_namespace is False:
        return [Check("pid namespace", WARN, f"a container's own. {ATTRIBUTION_NOTE}",
                      "run the agent with --pid=host (Docker) or hostPID: true (Kubernetes)")]
    return [Check("pid namespace", OK, "not in a container: the host's, presumably")]


# -- Docker and the kubelet ----------------------------------------------------------------------


def check_docker(socket_path: str = DOCKER_SOCKET, timeout_s: float = 2.0,
                 in_container: bool | None = None) -> list[Check]:
    name = "docker"
    if not os.path.exists(socket_path):
        inside = detect_self().in_container if in_container is None else in_container
        if inside:
            return [Check(name, WARN, f"no Docker socket at {socket_path}: containers are "
                                      "known by id only",
                          f"mount it: -v {socket_path}:{socket_path}:ro")]
        return [Check(name, OK, f"no Docker socket at {socket_path} (Docker not used here)")]

    def ping() -> list[Check]:
        conn = UnixHTTPConnection(socket_path, timeout_s)
        try:
            conn.request("GET", "/_ping")
            response = conn.getresponse()
            body = response.read(256)
            version = response.getheader("Api-Version")
        except PermissionError:
            return [Check(name, FAIL, f"{socket_path}: permission denied",
                          "run the agent as root or in the docker group")]
        except TimeoutError:
            return [Check(name, FAIL, f"{socket_path}: no answer to GET /_ping within "
                                      f"{timeout_s:g} s", "check the Docker daemon "
                                      "(systemctl status docker)")]
        except (OSError, http.client.HTTPException) as err:
            return [Check(name, FAIL, f"{socket_path}: {type(err).__name__}: {err}",
                          "check that the Docker daemon runs (systemctl status docker)")]
        finally:
            conn.close()
        if response.status != 200:
            return [Check(name, FAIL, f"GET /_ping on {socket_path} answered "
                                      f"HTTP {response.status}",
                          "check the socket is the Docker daemon's")]
        api = f", API {version}" if version else ""
        return [Check(name, OK, f"{socket_path} answers /_ping "
                                f"({body.decode(errors='replace').strip()[:20]}{api})")]

    return _with_deadline(name, timeout_s + 1.0, ping)


def check_kubelet(socket_path: str = POD_RESOURCES_SOCKET, timeout_s: float = 2.0,
                  environ: Mapping[str, str] | None = None) -> list[Check]:
    name = "kubelet"
    env = os.environ if environ is None else environ
    if not os.path.exists(socket_path):
        if env.get("KUBERNETES_SERVICE_HOST"):
            return [Check(name, WARN, f"in Kubernetes, but no pod-resources socket at "
                                      f"{socket_path}: devices given to pods are unknown",
                          "mount /var/lib/kubelet/pod-resources into the agent's pod "
                          "(hostPath)")]
        return [Check(name, OK, "no kubelet pod-resources socket (not a Kubernetes node)")]

    def list_call() -> list[Check]:
        client = PodResourcesClient(socket_path, timeout_s=timeout_s)
        devices = client.list_devices()
        if devices is None:
            errors = client.take_errors()
            why = errors[0].error_type if errors else "unknown error"
            return [Check(name, FAIL, f"List on {socket_path} failed: {why}",
                          "run the agent as root; check the kubelet runs and serves "
                          "pod-resources (KubeletPodResources, on by default since 1.15)")]
        pods = {(d.namespace, d.pod_name) for d in devices}
        return [Check(name, OK, f"{socket_path} answers List: {len(pods)} pod"
                                f"{'' if len(pods) == 1 else 's'} with GPUs")]

    return _with_deadline(name, timeout_s + 1.0, list_call)


# -- exporters -----------------------------------------------------------------------------------


def check_otlp(environ: Mapping[str, str] | None = None, timeout_s: float = 2.0) -> list[Check]:
    name = "otlp"
    try:
        protocol, url, host, port = otlp_target(environ)
    except ConfigError as err:
        return [Check(name, FAIL, str(err), "fix OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT / "
                                            "_PROTOCOL")]

    where = host if port == 0 else f"{host}:{port}"

    def connect() -> list[Check]:
        try:
            if port == 0:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
                    unix.settimeout(timeout_s)
                    unix.connect(host)
            else:
                with socket.create_connection((host, port), timeout=timeout_s):
                    pass
        except OSError as err:
            why = "timed out" if isinstance(err, TimeoutError) else type(err).__name__
            return [Check(name, FAIL, f"{url} ({protocol}): cannot connect to {where} ({why})",
                          "start the Collector there, or point OTEL_EXPORTER_OTLP_ENDPOINT "
                          "at one; a firewall may drop the port")]
        return [Check(name, OK, f"{url} ({protocol}): {where} accepts connections")]

    return _with_deadline(name, timeout_s + 1.0, connect)


def check_prometheus(environ: Mapping[str, str] | None = None,
                     timeout_s: float = 2.0) -> list[Check]:
    name = "prometheus"
    try:
        host, port = prometheus_address(environ)
    except ConfigError as err:
        return [Check(name, FAIL, str(err), "set it to a free TCP port, 9464 by default")]
    probe = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host

    def probe_port() -> list[Check]:
        try:
            with socket.create_connection((probe, port), timeout=timeout_s):
                pass
        except OSError:
            pass
        else:
            return _scrape(probe, port, timeout_s)
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.bind((host, port))
        except OSError as err:
            return [Check(name, FAIL, f"cannot listen on {host}:{port}: {err.strerror or err}",
                          "pick another OTEL_EXPORTER_PROMETHEUS_PORT / _HOST")]
        return [Check(name, OK, f"{host}:{port} is free for the scrape endpoint")]

    return _with_deadline(name, timeout_s + 1.0, probe_port)


def _scrape(host: str, port: int, timeout_s: float) -> list[Check]:
    name = "prometheus"
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read(1 << 20).decode(errors="replace")
    except (OSError, http.client.HTTPException) as err:
        return [Check(name, WARN, f"{host}:{port} is taken by something that does not "
                                  f"answer HTTP ({type(err).__name__}): the agent cannot "
                                  "listen there", "stop it, or pick another "
                                  "OTEL_EXPORTER_PROMETHEUS_PORT")]
    finally:
        conn.close()
    if response.status == 200 and ("hw_" in body or "otel_gpu_" in body):
        return [Check(name, OK, f"an otel-gpu scrape endpoint answers on {host}:{port}")]
    return [Check(name, WARN, f"{host}:{port} is taken by another program (GET /metrics: "
                              f"HTTP {response.status}): the agent cannot listen there",
                  "stop it, or pick another OTEL_EXPORTER_PROMETHEUS_PORT")]


# -- all of them -------------------------------------------------------------------------------


_DCGM_HOW = ("start DCGM's host engine (DGX OS: systemctl start nvidia-dcgm; elsewhere "
             "nv-hostengine) and set OTEL_GPU_DCGM_ADDRESS if it is not on 127.0.0.1:5555, or "
             "point OTEL_GPU_DCGM_EXPORTER_URL at a dcgm-exporter's /metrics")
_DCGM_PITFALL = ("some GPUs watch only one group of profiling fields at a time: another DCGM "
                 "client watching other profiling fields (dcgm-exporter with its own counters, "
                 "Nsight, dcgmi dmon) makes ours fail with IN_USE")


def check_dcgm(source: Any | None = None, timeout_s: float = 2.0) -> list[Check]:
    """DCGM, which gives an A100 MIG slice its activity: the host engine or the dcgm-exporter
    route, its version, the profiling module and the fields it gives. One line when DCGM is
    absent; a warning on the one-profiling-group pitfall."""
    name = "dcgm"

    def probe() -> list[Check]:
        from otel_gpu.sources.dcgm import EXPORTER, DcgmSource

        dcgm = source if source is not None else DcgmSource()
        try:
            found = dcgm.probe()
        finally:
            if source is None:
                dcgm.close()
        if found.route is None:
            return [Check(name, OK, "not found: optional, gives A100 MIG slices their activity",
                          f"{found.reason}. To use it: {_DCGM_HOW}")]
        fields = ", ".join(f.removeprefix("DCGM_FI_PROF_") for f in found.fields) or "none"
        if found.route == EXPORTER:
            what = f"dcgm-exporter at {found.where}"
        else:
            version = f"DCGM {found.version}" if found.version else "version unknown"
            module = {True: "profiling module loaded", False: "profiling module NOT loaded",
                      None: "profiling module state unknown"}[found.profiling_loaded]
            what = f"host engine at {found.where} ({version}), {module}"
        checks = [Check(name, OK if found.fields else WARN,
                        f"{what}; profiling fields with values: {fields}",
                        None if found.fields else "load DCGM's profiling module (it needs a "
                        "data-center GPU, Volta or later) and check that no other client "
                        "holds profiling")]
        if found.reason and "IN_USE" in found.reason:
            checks.append(Check(name, WARN, f"profiling is in use by another client "
                                f"({found.reason})", _DCGM_PITFALL))
        elif found.single_group_only:
            checks.append(Check(name, WARN, "these GPUs watch one profiling group at a time",
                                _DCGM_PITFALL))
        return checks

    return _with_deadline(name, timeout_s + 3.0, probe)


def run_checks(
    *,
    exporters: Sequence[str] = (),
    timeout_s: float = 2.0,
    environ: Mapping[str, str] | None = None,
    nvml: Any | None = None,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
    docker_socket: str = DOCKER_SOCKET,
    pod_resources_socket: str = POD_RESOURCES_SOCKET,
    dcgm: Any | None = None,
) -> list[Check]:
    """Every check, in order. ``exporters`` as the agent would get them (default ``otlp``)."""
    env = os.environ if environ is None else environ
    wanted = list(exporters) or ["otlp"]
    in_container = detect_self(proc_root, env).in_container
    checks = _with_deadline("nvml", max(10.0, timeout_s), lambda: check_nvml(nvml))
    checks += check_proc(proc_root)
    checks += check_container_roots(proc_root)
    checks += check_cgroup(proc_root, cgroup_root)
    checks += check_pid_namespace(proc_root, env)
    checks += check_docker(docker_socket, timeout_s, in_container)
    checks += check_kubelet(pod_resources_socket, timeout_s, env)
    checks += check_dcgm(dcgm, timeout_s)
    if "otlp" in wanted:
        checks += check_otlp(env, timeout_s)
    if "prometheus" in wanted:
        checks += check_prometheus(env, timeout_s)
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    return EXIT_CHECKS_FAILED if any(c.status == FAIL for c in checks) else 0


def report_document(checks: Sequence[Check]) -> dict[str, Any]:
    code = exit_code(checks)
    return {"schema": SCHEMA, "ok": code == 0, "exit_code": code,
            "checks": [c.to_dict() for c in checks]}


_STYLE = {OK: "32", WARN: "33", FAIL: "1;31"}


def report_table(checks: Sequence[Check], colour: bool = False) -> str:
    style = Style(colour)
    lines = []
    for check in checks:
        shown = style(f"{check.status:<4}", _STYLE[check.status])
        head = f"{check.name:<14} "
        body = textwrap.wrap(check.message, WIDTH - 5 - len(head)) or [""]
        lines.append(f"{shown} {head}{body[0]}")
        lines += [" " * (5 + len(head)) + more for more in body[1:]]
        if check.remedy and check.status != OK:
            lines += textwrap.wrap(f"fix: {check.remedy}", WIDTH, initial_indent=" " * 5,
                                   subsequent_indent=" " * 10)
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines += ["", f"{failed} failed, {warned} warnings, {len(checks) - failed - warned} ok"]
    return "\n".join(lines) + "\n"


def print_report(checks: Sequence[Check], fmt: str, stream: IO[str] | None = None) -> int:
    emit(fmt, lambda: report_document(checks), lambda colour: report_table(checks, colour), stream)
    return exit_code(checks)
