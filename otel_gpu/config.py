"""Settings: the error every bad setting raises, and the one reader of each environment setting,
shared by the command line, ``otel-gpu doctor``, the agent and ``otel_gpu.start()``.

Each reader takes an optional ``environ`` mapping (default: ``os.environ``), validates what it
reads and raises :class:`ConfigError` naming the variable. The OpenTelemetry variables follow
the SDK environment variable specification
(https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/) and the OTLP
exporter specification
(https://opentelemetry.io/docs/specs/otel/protocol/exporter/#configuration-options).
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

OTLP_PROTOCOLS = ("grpc", "http/protobuf")
AGENT_EXPORTERS = ("otlp", "console", "prometheus", "none")  # what --exporter may name
SIGNAL_EXPORTERS = ("otlp", "console", "none")
DEFAULT_PROMETHEUS_HOST = "localhost"  # the OpenTelemetry specification's default
DEFAULT_PROMETHEUS_PORT = 9464
_DEFAULT_OTLP_ENDPOINT = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}
_HTTP_PATHS = {"metrics": "/v1/metrics", "traces": "/v1/traces", "logs": "/v1/logs"}


class ConfigError(ValueError):
    """A setting that cannot work; the CLI exits 2 with this message."""


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _signal(signal: str) -> str:
    if signal not in _HTTP_PATHS:
        raise ValueError(f"unknown signal {signal!r}")
    return signal


def env_list(name: str, default: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """A comma-separated variable as lower-case items, blanks dropped."""
    raw = _env(environ).get(name, default)
    return [item.strip().lower() for item in raw.split(",") if item.strip()]


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """A boolean variable: only ``true`` (any case) is true, as the SDK specification says."""
    return _env(environ).get(name, "").strip().lower() == "true"


def signal_exporters(signal: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters ``OTEL_<SIGNAL>_EXPORTER`` names (default otlp): otlp, console or none."""
    variable = f"OTEL_{_signal(signal).upper()}_EXPORTER"
    names = env_list(variable, "otlp", environ)
    for name in names:
        if name not in SIGNAL_EXPORTERS:
            raise ConfigError(f"{variable}: {name!r} is not supported (otlp, console or none)")
    return names


def otlp_protocol(signal: str = "metrics", environ: Mapping[str, str] | None = None) -> str:
    """``grpc`` or ``http/protobuf``: the per-signal variable, else the general one, else grpc."""
    env = _env(environ)
    specific = f"OTEL_EXPORTER_OTLP_{_signal(signal).upper()}_PROTOCOL"
    name = specific if env.get(specific) else "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = (env.get(name) or "grpc").strip().lower()
    if protocol not in OTLP_PROTOCOLS:
        raise ConfigError(
            f"{name}: {protocol!r} is not supported (use {' or '.join(OTLP_PROTOCOLS)})"
        )
    return protocol


class OtlpTarget(NamedTuple):
    """Where the OTLP exporter of one signal sends; a Unix socket's path is its ``host``, with
    port 0."""

    protocol: str
    url: str
    host: str
    port: int


def otlp_target(environ: Mapping[str, str] | None = None, signal: str = "metrics") -> OtlpTarget:
    """The OTLP endpoint of ``signal``: the per-signal endpoint as is, else the general one
    (plus ``/v1/<signal>`` over HTTP), else the protocol's default."""
    env = _env(environ)
    protocol = otlp_protocol(signal, env)
    specific_name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    specific = (env.get(specific_name) or "").strip()
    general = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
    name = specific_name if specific else "OTEL_EXPORTER_OTLP_ENDPOINT"
    if protocol == "grpc" or specific:
        url = specific or general or _DEFAULT_OTLP_ENDPOINT[protocol]
    else:
        base = general or _DEFAULT_OTLP_ENDPOINT[protocol]
        url = base.rstrip("/") + _HTTP_PATHS[signal]
    if protocol == "grpc" and url.startswith("unix:"):
        # gRPC's unix:PATH and unix:///PATH targets (grpc/doc/naming.md): a socket, no port.
        path = url.removeprefix("unix:").removeprefix("//")
        if not path:
            raise ConfigError(f"{name}: {url!r} names no socket")
        return OtlpTarget(protocol, url, path, 0)
    # gRPC targets without a port use 443, whatever the scheme says.
    try:
        parts = urlsplit(url if "://" in url else "http://" + url)
        default = 443 if parts.scheme == "https" or protocol == "grpc" else 80
        port = parts.port or default
    except ValueError as err:
        raise ConfigError(f"{name}: {url!r}: {err}") from None
    if not parts.hostname:
        raise ConfigError(f"{name}: {url!r} names no host")
    return OtlpTarget(protocol, url, parts.hostname, port)


def export_interval_ms(default_ms: float, environ: Mapping[str, str] | None = None) -> float:
    """``OTEL_METRIC_EXPORT_INTERVAL`` in milliseconds: a positive, finite number."""
    raw = _env(environ).get("OTEL_METRIC_EXPORT_INTERVAL")
    if raw is None:
        return default_ms
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL: {raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL: {raw!r} must be positive")
    return value


class PrometheusAddress(NamedTuple):
    host: str
    port: int


def prometheus_address(environ: Mapping[str, str] | None = None) -> PrometheusAddress:
    """Where the scrape endpoint listens: ``OTEL_EXPORTER_PROMETHEUS_HOST`` (default localhost,
    the OpenTelemetry specification's default)
    and ``OTEL_EXPORTER_PROMETHEUS_PORT`` (default 9464, 1..65535)."""
    env = _env(environ)
    host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST") or DEFAULT_PROMETHEUS_HOST
    text = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", str(DEFAULT_PROMETHEUS_PORT))
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConfigError(f"OTEL_EXPORTER_PROMETHEUS_PORT: {text!r} is not a port (1..65535)")
    return PrometheusAddress(host, port)


def disabled_instrumentations(environ: Mapping[str, str] | None = None) -> set[str]:
    """``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``: the entry point names auto-instrumentation
    skips (``*``: all), as opentelemetry-instrumentation reads it."""
    raw = _env(environ).get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def runtime_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """``XDG_RUNTIME_DIR``: the user's runtime directory, when set and present."""
    value = _env(environ).get("XDG_RUNTIME_DIR") or None
    return value if value is not None and os.path.isdir(value) else None


# -- otel-gpu's own settings ----------------------------------------------------------------


def thresholds_file(environ: Mapping[str, str] | None = None) -> str | None:
    """``OTEL_GPU_THRESHOLDS``: the insight thresholds file, or None."""
    return _env(environ).get("OTEL_GPU_THRESHOLDS") or None


def simulated_scenario(environ: Mapping[str, str] | None = None) -> str | None:
    """``OTEL_GPU_SIMULATE``: the scenario ``otel_gpu.start()`` simulates, or None."""
    return _env(environ).get("OTEL_GPU_SIMULATE") or None


def run_summary(environ: Mapping[str, str] | None = None) -> bool:
    """``OTEL_GPU_SUMMARY``: ``stop()`` writes the end-of-run summary on stderr; ``true`` (the
    default) or ``false``, any case."""
    raw = _env(environ).get("OTEL_GPU_SUMMARY", "")
    value = raw.strip().lower()
    if value in ("", "true"):
        return True
    if value == "false":
        return False
    raise ConfigError(f"OTEL_GPU_SUMMARY: {raw!r} is not true or false")


EXPORT_FROM = ("auto", "application")


def export_from(environ: Mapping[str, str] | None = None) -> str:
    """``OTEL_GPU_EXPORT_FROM``: with an application's MeterProvider that exports as the
    environment says, ``auto`` (the default) exports the GPU metrics from the collector process
    (``otel_gpu.session.mirror``); ``application`` keeps them on that provider, in the training
    process."""
    raw = _env(environ).get("OTEL_GPU_EXPORT_FROM", "")
    value = raw.strip().lower() or "auto"
    if value not in EXPORT_FROM:
        raise ConfigError(f"OTEL_GPU_EXPORT_FROM: {raw!r} is not auto or application")
    return value


def collect_in_process(environ: Mapping[str, str] | None = None) -> bool:
    """``OTEL_GPU_COLLECT_IN_PROCESS=true``: ``otel_gpu.start()`` collects in its own process."""
    return env_flag("OTEL_GPU_COLLECT_IN_PROCESS", environ)


# Network, cluster and FUSE filesystems reported beside the local disks unless
# OTEL_GPU_FILESYSTEM_INCLUDE says otherwise.
DEFAULT_FILESYSTEM_INCLUDE = ("nfs", "nfs4", "cifs", "smb3", "lustre", "beegfs", "gpfs", "fuse.*")


def _filesystem_patterns(name: str, default: tuple[str, ...],
                         environ: Mapping[str, str] | None) -> tuple[str, ...]:
    raw = _env(environ).get(name)
    if raw is None or not raw.strip():
        return default
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if [item.lower() for item in items] == ["none"]:
        return ()
    # A mount point is matched as written; filesystem types are lower case in the kernel.
    return tuple(item if item.startswith("/") else item.lower() for item in items)


def filesystem_include(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``OTEL_GPU_FILESYSTEM_INCLUDE``: the mounts reported beside the local disks, as
    comma-separated shell patterns, each on the mount point when it starts with ``/``, else on
    the filesystem type (default: nfs, nfs4, cifs, smb3, lustre, beegfs, gpfs, fuse.*);
    ``none`` for none."""
    return _filesystem_patterns("OTEL_GPU_FILESYSTEM_INCLUDE", DEFAULT_FILESYSTEM_INCLUDE,
                                environ)


# Mounts that come and go with a workload or a desktop login, each a series of its own: the
# kubelet mounts every pod's network and block volumes under its pod directory (an NFS export a
# pod uses is also mounted once at its PersistentVolume's global mount point, or by the node),
# and a user session mounts its own FUSE helpers under /run/user/<uid>. lxcfs is a FUSE view of
# /proc, not storage.
DEFAULT_FILESYSTEM_EXCLUDE = ("/var/lib/kubelet/pods/*", "/run/user/*", "fuse.lxcfs",
                              "fuse.portal", "fuse.gvfsd-fuse", "fuse.snapfuse")


def filesystem_exclude(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``OTEL_GPU_FILESYSTEM_EXCLUDE``: filesystems never reported, local disks included, in
    ``OTEL_GPU_FILESYSTEM_INCLUDE``'s pattern syntax (default: every pod's volume mounts, the
    per-login mounts under ``/run/user`` and the FUSE helpers that hold no data; ``none`` for
    none)."""
    return _filesystem_patterns("OTEL_GPU_FILESYSTEM_EXCLUDE", DEFAULT_FILESYSTEM_EXCLUDE,
                                environ)


def kubelet_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``OTEL_GPU_KUBELET_URL``: the kubelet's pod list URL, when not the default."""
    return _env(environ).get("OTEL_GPU_KUBELET_URL") or None


def kubelet_insecure(environ: Mapping[str, str] | None = None) -> bool:
    """``OTEL_GPU_KUBELET_INSECURE=true``: do not verify the kubelet's certificate."""
    return env_flag("OTEL_GPU_KUBELET_INSECURE", environ)


class QueryApi(NamedTuple):
    """A Prometheus-compatible query API (Prometheus, Mimir) and the headers it wants."""

    url: str  # the base before /api/v1/query, e.g. http://prometheus:9090
    headers: dict[str, str]


def query_api(url: str | None = None, environ: Mapping[str, str] | None = None) -> QueryApi:
    """Where ``otel-gpu usage`` reads: ``url`` or ``OTEL_GPU_PROM_URL``; a bearer token from
    ``OTEL_GPU_PROM_BEARER_TOKEN``, else basic auth from ``OTEL_GPU_PROM_USERNAME`` and
    ``OTEL_GPU_PROM_PASSWORD``; Mimir's tenant (``X-Scope-OrgID``) from ``OTEL_GPU_PROM_TENANT``."""
    env = _env(environ)
    given = url or env.get("OTEL_GPU_PROM_URL", "")
    where = "--url" if url else "OTEL_GPU_PROM_URL"
    if not given:
        raise ConfigError("OTEL_GPU_PROM_URL: not set; give the query API's address "
                          "(e.g. http://prometheus:9090) there or with --url")
    parts = urlsplit(given)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {given!r} is not an http:// or https:// address")
    headers: dict[str, str] = {}
    token = env.get("OTEL_GPU_PROM_BEARER_TOKEN")
    user, password = env.get("OTEL_GPU_PROM_USERNAME"), env.get("OTEL_GPU_PROM_PASSWORD")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user:
        pair = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    elif password:
        raise ConfigError("OTEL_GPU_PROM_PASSWORD: set without OTEL_GPU_PROM_USERNAME")
    tenant = env.get("OTEL_GPU_PROM_TENANT")
    if tenant:
        headers["X-Scope-OrgID"] = tenant
    return QueryApi(given.rstrip("/"), headers)

DEFAULT_STATUS_SOCKET = "/run/otel-gpu/status.sock"
_OFF = ("off", "none", "false", "0")


def status_socket(environ: Mapping[str, str] | None = None) -> str | None:
    """``OTEL_GPU_STATUS_SOCKET``: the Unix socket the agent serves status on and ``status``
    asks (default ``/run/otel-gpu/status.sock``); ``off`` for none."""
    value = _env(environ).get("OTEL_GPU_STATUS_SOCKET", "").strip()
    if value.lower() in _OFF:
        return None
    return value or DEFAULT_STATUS_SOCKET


def operator_group(environ: Mapping[str, str] | None = None) -> str | None:
    """``OTEL_GPU_OPERATOR_GROUP``: the group whose members get every tenant's status, or None
    (then root only)."""
    return _env(environ).get("OTEL_GPU_OPERATOR_GROUP", "").strip() or None
