"""An application's MeterProvider that exports exactly what the session's own would.

With the application's providers, the GPU, MIG and host instruments go on its MeterProvider and
its metric reader collects and OTLP-encodes their points in the training process: about 560
points on an 8-GPU server with MIG, some 20 ms of a core at each collection, taken from the
training loop's interpreter (``benchmarks/README.md``, ``bench_training.py``). Most applications
that set up a MeterProvider in code do what ``otel_gpu.start()`` would do from the environment:
one periodic reader over the SDK's OTLP exporter built from the ``OTEL_EXPORTER_OTLP_*``
variables. Such a provider is *mirrored*: the session's collector process exports the GPU, MIG,
host and training metrics itself, under that provider's resource and at its reader's interval,
to the same endpoint with the same settings; the application's own metrics stay on its provider.

An application LoggerProvider is allowed when it too is what the environment gives (the one
``opentelemetry-instrument`` sets up): a batch processor over each exporter
``OTEL_LOGS_EXPORTER`` names, built from the environment, under the same resource. The collector
process then sends the insight log records through its own exporters, built the same way. Next
to the contrib system-metrics instrumentation (instrumented here, or about to be under
``opentelemetry-instrument``), the collector process's host instruments stand down for the
``system.*`` names it reports (``Mirror.stand_down`` at first, then what the training process
reports with its steps), as ours do in this process.

Anything else keeps the instruments on the application's provider: another exporter or a
second reader (a console or Prometheus one, an in-memory reader), an exporter given settings in
code (an endpoint, headers, a temporality), views, a meter configurator, another exemplar
filter, a LoggerProvider with processors or exporters of its own, or
``OTEL_GPU_EXPORT_FROM=application``.

Whether the exporter was given settings in code is told by building the same class from the
environment and comparing the two instances' settings: the SDK keeps them as attributes of the
exporter (``_endpoint``, ``_headers``, ``_timeout``, ``_compression``, ``_preferred_temporality``,
...). These are not public API, so the comparison is conservative: an exporter without an
``_endpoint`` attribute is never mirrored, and every plain-valued attribute must be equal.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from otel_gpu.config import export_from
from otel_gpu.session.providers import app_logger_provider, retired
from otel_gpu.telemetry.providers import (
    OTLP_NAMES,
    env_exemplar_filter,
    exporter_names,
    otlp_class_name,
)
from otel_gpu.telemetry.system_metrics import contrib_names

log = logging.getLogger("otel_gpu")

_PLAIN = (type(None), str, bytes, int, float, bool, Enum, type)


@dataclass(frozen=True)
class Mirror:
    """What the collector process needs to export as the application's provider would."""

    resource: Resource
    interval_ms: float
    #: the ``system.*`` names the contrib system-metrics instrumentation reports here
    stand_down: frozenset[str] = frozenset()


def mirror_of(provider: Any, environ: Mapping[str, str] | None = None) -> Mirror | None:
    """The mirror of ``provider``, or None when its instruments must stay on it. A bad
    ``OTEL_GPU_EXPORT_FROM`` raises ``ConfigError``."""
    if export_from(environ) != "auto":
        return None
    try:
        if not isinstance(provider, MeterProvider) or provider in retired or \
                getattr(provider, "_shutdown", True):
            return None
        logger_provider = app_logger_provider()
        if logger_provider is not None and not _logs_as_environment(logger_provider, provider):
            return None
        mirror = _mirror(provider)
        return None if mirror is None else replace(mirror, stand_down=contrib_names(environ))
    except Exception:  # an SDK whose insides differ: keep the instruments on the provider
        log.debug("otel-gpu: the application's MeterProvider is not mirrored", exc_info=True)
        return None


def _mirror(provider: MeterProvider) -> Mirror | None:
    config = provider._sdk_config
    readers = list(provider._metric_readers)
    if config.views or len(readers) != 1 or type(readers[0]) is not PeriodicExportingMetricReader:
        return None
    module = sys.modules[MeterProvider.__module__]
    default_configurator = getattr(module, "_default_meter_configurator", None)
    if getattr(provider, "_meter_configurator", default_configurator) is not default_configurator:
        return None
    if type(config.exemplar_filter) is not type(env_exemplar_filter()):
        return None
    names = exporter_names("metrics")
    if len(names) != 1 or names[0] not in OTLP_NAMES:
        return None
    reader = readers[0]
    exporter = reader._exporter
    cls = type(exporter)
    if (cls.__module__, cls.__qualname__) != otlp_class_name("metrics", names[0]):
        return None
    if not _built_from_environment(exporter):
        return None
    return Mirror(config.resource, float(reader._export_interval_millis))


def _logs_as_environment(logger_provider: Any, meter_provider: MeterProvider) -> bool:
    """Whether ``logger_provider`` sends log records where the collector process's own would:
    one batch processor over each exporter ``OTEL_LOGS_EXPORTER`` names, built from the
    environment, under the meter provider's resource."""
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    if type(logger_provider) is not LoggerProvider or \
            logger_provider.resource != meter_provider._sdk_config.resource:
        return False
    processors = logger_provider._multi_log_record_processor._log_record_processors
    names = exporter_names("logs")
    if names == ["none"]:
        return not processors
    if len(processors) != len(names) or not all(name in OTLP_NAMES for name in names):
        return False
    for processor, name in zip(processors, names, strict=True):
        if type(processor) is not BatchLogRecordProcessor:
            return False
        exporter = processor._batch_processor._exporter
        cls = type(exporter)
        if (cls.__module__, cls.__qualname__) != otlp_class_name("logs", name) or \
                not _built_from_environment(exporter):
            return False
    return True


def _built_from_environment(exporter: Any) -> bool:
    from_env = type(exporter)()
    try:
        return hasattr(exporter, "_endpoint") and _same_settings(exporter, from_env)
    finally:
        with contextlib.suppress(Exception):
            from_env.shutdown()


def _same_settings(given: Any, from_env: Any) -> bool:
    ours, theirs = vars(given), vars(from_env)
    if ours.keys() != theirs.keys():
        return False
    return all(_same(ours[key], theirs[key], 1) for key in ours)


def _same(a: Any, b: Any, depth: int) -> bool:
    """Equal where a setting can be told apart; objects (channels, clients, locks) by type,
    and their plain attributes one level down (an aggregation's boundaries)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, _PLAIN):
        return bool(a == b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y, depth) for x, y in zip(a, b, strict=True))
    if isinstance(a, (set, frozenset)):
        return bool(a == b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], depth) for k in a)
    if depth > 0 and hasattr(a, "__dict__"):
        plain = {k: v for k, v in vars(a).items() if isinstance(v, _PLAIN)}
        return all(_same(v, getattr(b, k, None), 0) for k, v in plain.items())
    return True
