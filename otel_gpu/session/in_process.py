"""The modes that collect through the training process's own providers (see
``otel_gpu.session``): ``Mode.SOURCES_CHILD``, whose sources run in a child, and
``Mode.IN_PROCESS``. Imported only when one of them is chosen: this module and the child's
program are the two doors into the collection side.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from otel_gpu.collect.build import build_collector
from otel_gpu.collect.collector import Collector
from otel_gpu.insights.engine import InsightEngine
from otel_gpu.session.child import CollectorChild
from otel_gpu.session.delivery import Backend, guarded_otlp
from otel_gpu.session.drain import StepDrain
from otel_gpu.session.modes import Request
from otel_gpu.session.protocol import Role, SourceSettings, Task
from otel_gpu.session.providers import Providers, insight_logger_provider, session_providers
from otel_gpu.session.recorder import RunRecorder
from otel_gpu.session.scope import ScopedCache, rank_devices
from otel_gpu.session.steps import dali_loaded
from otel_gpu.session.tracker import TrainingTracker
from otel_gpu.snapshot import ErrorLog, Snapshot, TrainingSignals
from otel_gpu.sources.identity import detect_self
from otel_gpu.sources.sessions import SessionBeacon
from otel_gpu.telemetry.instruments import TrainingInstruments
from otel_gpu.telemetry.node_agent import agent_running
from otel_gpu.telemetry.pipeline import Pipeline, assemble_pipeline
from otel_gpu.telemetry.providers import self_resource
from otel_gpu.telemetry.system_metrics import StandDown

log = logging.getLogger("otel_gpu")


class ChildSources:
    """A Collector's sources, read by a child process in the sources role."""

    def __init__(self, child: CollectorChild) -> None:
        self.child = child

    def start(self) -> str | None:
        return self.child.message

    def read(self) -> Snapshot:
        return self.child.read_snapshot()

    def close(self) -> None:
        self.child.close()


@dataclass
class InProcess:
    """What a session in one of these modes holds."""

    tracker: TrainingTracker
    providers: Providers
    pipeline: Pipeline
    view: ScopedCache
    recorder: RunRecorder
    drain: StepDrain
    beacon: SessionBeacon


def start_in_process(request: Request, *, child: bool) -> InProcess:
    """GPU, MIG and host metrics through this process's providers; the sources in a child
    process when ``child`` (raising ``ChildError`` when it cannot start)."""
    info = detect_self()
    resource = self_resource(info).merge(request.base_resource) if request.detect \
        else request.base_resource
    # NVML reports host pids: inside a container without the host pid namespace they would be
    # joined to the wrong local processes, so only the devices are reported there.
    attribution = request.simulate is not None or not info.in_container or \
        bool(info.host_pid_namespace)
    if info.attribution_note:
        log.info("otel-gpu: %s", info.attribution_note)
    interval_s = request.interval_ms / 1e3
    if child:
        sources = ChildSources(CollectorChild(Task(Role.SOURCES, SourceSettings(
            request.simulate, interval_s, attribution))))
        collector = Collector(sources, insights=InsightEngine(request.thresholds))
    else:
        collector = build_collector(request.simulate, interval_s, attribution=attribution,
                                    thresholds=request.thresholds)
    providers = None
    # The OTLP exporters of the providers made here fail at once while no collector was ever
    # reached (``otel_gpu.session.delivery``), as the export child's do.
    backend = Backend()
    try:
        providers = session_providers(
            request.meter_provider, request.tracer_provider, request.metric_exporters,
            request.interval_ms, resource,
            otlp_metrics=lambda name: guarded_otlp("metrics", backend, name),
            otlp_spans=lambda name: guarded_otlp("traces", backend, name))
        errors = ErrorLog("training")
        # The loop only writes into the tracker's buffer; the drain records on the providers.
        tracker = TrainingTracker(providers.meter, providers.tracer,
                                  attributes=request.attributes, defer=True, error_log=errors)
        assert tracker.buffer is not None
        run_attributes = dict(request.attributes)
        collector.add_error_source(tracker.take_errors)
        collector.add_training_source(lambda: TrainingSignals(
            tracker.data_wait_ratio, tracker.steps, run_attributes, dali_loaded()))
        logger_provider, owns_logger = insight_logger_provider(
            resource, otlp=lambda name: guarded_otlp("logs", backend, name))
        devices, host = rank_devices()
        recorder = RunRecorder(devices, host)
        collector.add_insight_listener(recorder)
        beacon = SessionBeacon(os.getpid(), str(resource.attributes.get("service.name", "")))
        collector.add_insight_listener(lambda update, snapshot: beacon.write(
            tracker.steps, tracker.data_wait_ratio))
        views: list[ScopedCache] = []

        def view(cache: object) -> ScopedCache:
            views.append(ScopedCache(cache, devices, host))  # type: ignore[arg-type]
            return views[-1]

        pipeline = assemble_pipeline(collector, cache_max_age_s=min(1.0, interval_s / 2),
                                     provider=providers.meter, logger_provider=logger_provider,
                                     owns_logger_provider=owns_logger, view=view,
                                     stand_down=StandDown(), own_only=agent_running())
        drain = StepDrain(tracker.buffer, TrainingInstruments(providers.meter), interval_s,
                          errors)
    except BaseException:
        # Nothing half-started stays behind: not our providers as the globals of a later start.
        if providers is not None:
            providers.retire()
        collector.close()
        raise
    if pipeline.driver_message:
        log.warning("otel-gpu: %s; reporting host metrics only", pipeline.driver_message)
    return InProcess(tracker, providers, pipeline, views[0], recorder, drain, beacon)
