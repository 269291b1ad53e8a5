"""Rules for the people who run work on the GPUs: what slows their job or wastes a device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from otel_gpu.insights.storage import (
    STORAGE_REMEDY,
    cpu_phrase,
    host_cpu_busy,
    run_container,
    storage_reads,
    storage_verdict,
)
from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.insights.window import (
    ContainerKey,
    Finding,
    Sample,
    cap,
    condition,
    container_key,
    counter_increase,
    device_label,
    duty_cycle,
    event,
    latched,
    level,
    minutes,
    pct,
    run_key,
    single_holder,
    sm_activity,
    span_start,
    who,
    workload_devices,
)
from otel_gpu.snapshot import (
    CRITICAL,
    INFO,
    WARNING,
    Attributes,
    TrainingSignals,
    Workload,
    cpu_rates,
    format_gib,
)


def input_bound(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    newest = window[-1]
    signals = [s for s in newest.training if s.data_wait_ratio is not None]
    if signals:
        start = span_start(window, t.rate_span_s)
        for signal in signals:
            if signal.steps < t.data_wait_min_steps or not _steps_advanced(window, signal):
                continue
            ratio = signal.data_wait_ratio
            assert ratio is not None
            verdict = level(
                ratio,
                True,
                (
                    (INFO, t.data_wait_info, t.data_wait_info_clear),
                    (WARNING, t.data_wait_warning, t.data_wait_warning_clear),
                ),
            )
            degree = "highly" if ratio >= t.data_wait_warning else "moderately"
            key = ("training", *sorted(signal.attributes.items()))
            message = (f"The training loop is {degree} input-bound: {pct(ratio)} of step time "
                       "is spent waiting for the next batch")
            remedy = _data_wait_remedy(signal.dali, ratio)
            # The storage variant has a band of its own, so that its wording does not flap.
            where = run_container(newest, dict(signal.attributes))
            reads = storage_reads(newest, start, where)
            cpu = _cpu_of_limit(newest, start, where) if where is not None else None
            busy = host_cpu_busy(newest)
            on, still = storage_verdict(reads, cpu if cpu is not None else busy, t)
            if latched(window, ("input_bound.storage", key), on, still):
                usage = newest.containers.get(where) if where is not None else None
                limit = usage.resources.cpu_limit if usage is not None else None
                message += (f", and it waits on storage: {reads.phrase()}, while "
                            f"{cpu_phrase(cpu, limit, busy)}")
                remedy = STORAGE_REMEDY
            yield condition(key, dict(signal.attributes), verdict, message + ".", remedy,
                            t.data_wait_for_s)
        return
    yield from _input_bound_from_cpu(window, t)


# NVIDIA DALI's names for what sizes its pipeline: nvidia.dali.pipeline.Pipeline's num_threads
# and prefetch_queue_depth, and the readers' device="mixed" decoding (DALI documentation).
_DALI_PIPELINE = (
    "look at the DALI pipeline: more reader threads (Pipeline num_threads), a deeper "
    "prefetch_queue_depth, decoders on device='mixed', and the storage it reads from (a local "
    "copy or cache of the dataset, fewer and larger files)."
)


def _data_wait_remedy(dali: bool | None, ratio: float) -> str:
    if dali:
        return "NVIDIA DALI is loaded, so decoding already runs on the GPU: " + _DALI_PIPELINE
    remedy = ("Feed the device faster: more DataLoader workers, pin_memory and prefetching, "
              "faster storage or caching, or preprocessing on the GPU.")
    if dali is False:
        remedy += (f" With {pct(ratio)} of step time waiting for data, NVIDIA DALI can take "
                   "image or video decoding and augmentation off the CPU and onto the GPU.")
    return remedy


def _dali_by_container(snap_workloads: Sequence[Workload]) -> dict[str, bool]:
    """Per container, whether one of its GPU processes maps DALI; containers none of whose
    processes could be read are absent."""
    found: dict[str, bool] = {}
    for w in snap_workloads:
        cid = w.attributes.get("container.id")
        if cid is not None and w.dali is not None:
            found[cid] = found.get(cid, False) or w.dali
    return found


def _steps_advanced(window: Sequence[Sample], signal: TrainingSignals) -> bool:
    """Whether the run made progress since the previous sample (a stalled run says nothing)."""
    key = run_key(signal)
    for i in range(len(window) - 2, -1, -1):
        earlier = window[i].runs.get(key)
        if earlier is not None:
            return signal.steps > earlier.steps
    return True


def _cpu_of_limit(newest: Sample, start: Sample, key: ContainerKey) -> float | None:
    """The container's CPU use since ``start`` (the trailing rate span), as a share of its CPU
    limit."""
    now = newest.containers.get(key)
    if now is None or not now.resources.cpu_limit:
        return None
    before = start.containers.get(key)
    if before is None or start is newest:
        return None
    elapsed = newest.snapshot.timestamp - start.snapshot.timestamp
    used, _ = cpu_rates(before.resources, now.resources, elapsed)
    return None if used is None else used / now.resources.cpu_limit


def _input_bound_from_cpu(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    newest = window[-1]
    snap = newest.snapshot
    start = span_start(window, t.rate_span_s)
    devices = {dev.uuid: dev for dev, _ in workload_devices(snap)}
    dali_of: dict[str, bool] | None = None  # built once, when a container first needs it
    for usage in snap.containers:
        key = container_key(usage.attributes)
        cpu = _cpu_of_limit(newest, start, key)
        cid = usage.attributes.get("container.id")
        if cid is None:
            continue
        used = newest.container_devices.get(cid, frozenset())
        activities = [a for a in (duty_cycle(devices[u]) for u in used if u in devices)
                      if a is not None]
        if not activities:
            continue
        activity = sum(activities) / len(activities)
        reads = storage_reads(newest, start, key)
        busy = host_cpu_busy(newest)
        on, still = storage_verdict(reads, cpu if cpu is not None else busy, t)
        idle = activity < t.input_bound_device_activity
        still_idle = activity < t.input_bound_device_activity_clear
        cpu_bound = cpu is not None and idle and cpu >= t.input_bound_cpu_of_limit
        # One finding per container: the storage variant while its own band holds, unless the
        # CPU-bound one is raised now (the two bands never raise together).
        if (idle and on) or (still_idle and still and not cpu_bound):
            yield condition(
                key, usage.attributes,
                (WARNING if idle and on else None, WARNING if still_idle and still else None),
                f"{cap(who(usage.attributes))} looks input-bound on storage: its GPU activity is "
                f"{pct(activity)} while {reads.phrase()}; the CPUs are not the limit "
                f"({cpu_phrase(cpu, usage.resources.cpu_limit, busy)}).",
                STORAGE_REMEDY,
                t.input_bound_for_s,
            )
            continue
        if cpu is None:
            continue
        raised = WARNING if (
            activity < t.input_bound_device_activity and cpu >= t.input_bound_cpu_of_limit
        ) else None
        held = WARNING if (
            activity < t.input_bound_device_activity_clear
            and cpu > t.input_bound_cpu_of_limit_clear
        ) else None
        limit = usage.resources.cpu_limit
        if dali_of is None:
            dali_of = _dali_by_container(snap.workloads)
        dali = dali_of.get(cid)
        if dali:
            remedy = ("NVIDIA DALI is loaded here, so move its remaining CPU operators "
                      "(device='cpu') to the GPU, and " + _DALI_PIPELINE)
        else:
            remedy = ("Give the container more CPUs, or do less on the CPU per batch (more "
                      "efficient decoding, preprocessing on the GPU, cached datasets).")
            if dali is False:
                remedy += (" No GPU process here uses NVIDIA DALI, which decodes and augments "
                           "images and video on the GPU, taking that work off the CPUs.")
        yield condition(
            key,
            usage.attributes,
            (raised, held),
            f"{cap(who(usage.attributes))} looks input-bound: its GPU activity "
            f"is {pct(activity)} while it uses {pct(cpu)} of its limit of {limit:g} CPUs.",
            remedy,
            t.input_bound_for_s,
        )


def device_idle(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    devices = {dev.uuid: (dev, ident) for dev, ident in workload_devices(snap)}
    for assignment in snap.assignments:
        found = devices.get(assignment.device_uuid)
        if found is None:
            continue
        device, ident = found
        activity = duty_cycle(device)
        if not device.processes:
            idle = still_idle = True
            what = "no process has run on it"
        elif activity is None:
            idle = still_idle = False
            what = ""
        else:
            idle = activity <= t.device_idle_activity
            still_idle = activity < t.device_idle_activity_clear
            what = f"its activity is {pct(activity)}"
        attrs: Attributes = {**ident, **assignment.attributes}
        yield condition(
            (assignment.device_uuid, *sorted(assignment.attributes.items())),
            attrs,
            (WARNING if idle else None, WARNING if still_idle else None),
            f"{device_label(ident)} is given to {who(assignment.attributes)} but "
            f"{what} for {minutes(t.device_idle_for_s)} or more.",
            "Release the device (stop the idle notebook or job, or lower its GPU "
            "request) so that someone else can use it.",
            t.device_idle_for_s,
        )


def gpu_memory_pressure(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    for device, ident in workload_devices(snap):
        used, total = device.memory_used_bytes, device.memory_total_bytes
        if used is None or not total:
            continue
        ratio = used / total
        yield condition(
            (device.uuid,),
            {**ident, **single_holder(window[-1], device.uuid)},
            level(ratio, True, ((WARNING, t.gpu_memory_used, t.gpu_memory_used_clear),)),
            f"{device_label(ident)} memory is {pct(ratio)} full "
            f"({format_gib(used)} of {format_gib(total)}); the next allocation may fail.",
            "Lower the batch size or sequence length, use mixed precision, activation "
            "checkpointing or gradient accumulation, or ask for a larger device or MIG profile.",
            t.gpu_memory_for_s,
        )


def container_memory_pressure(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    for usage in snap.containers:
        res = usage.resources
        key = container_key(usage.attributes)
        whose = who(usage.attributes)
        if res.memory_usage_bytes is not None and res.memory_limit_bytes:
            ratio = res.memory_usage_bytes / res.memory_limit_bytes
            yield condition(
                key,
                usage.attributes,
                level(
                    ratio,
                    True,
                    ((WARNING, t.container_memory_used, t.container_memory_used_clear),),
                ),
                f"{cap(whose)} uses {pct(ratio)} of its memory limit "
                f"({format_gib(res.memory_usage_bytes)} of {format_gib(res.memory_limit_bytes)});"
                " the kernel will kill a process when it reaches the limit.",
                "Raise the container's memory limit, or use less host memory (fewer or "
                "lighter DataLoader workers, smaller prefetch buffers, memory-mapped datasets).",
                t.container_memory_for_s,
            )
        kills = counter_increase(
            window,
            lambda s, key=key: _oom_kills(s, key),
            first_from_zero=False,
        )
        if kills:
            yield event(
                (*key, "oom_kill"),
                usage.attributes,
                CRITICAL,
                f"The kernel killed {kills} process{'es' if kills > 1 else ''} of "
                f"{whose} for exceeding its memory limit"
                + (f" of {format_gib(res.memory_limit_bytes)}." if res.memory_limit_bytes
                   else "."),
                "Raise the container's memory limit or lower the job's host memory use; "
                "check which process died (often a DataLoader worker).",
                t.oom_kill_hold_s,
            )


def _oom_kills(sample: Sample, key: ContainerKey) -> int | None:
    usage = sample.containers.get(key)
    return usage.resources.oom_kills if usage is not None else None


def cpu_throttled(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    if len(window) < 2:
        return
    snap = window[-1].snapshot
    start = span_start(window, t.rate_span_s)
    before_all = start.containers
    elapsed = snap.timestamp - start.snapshot.timestamp
    for usage in snap.containers:
        before = before_all.get(container_key(usage.attributes))
        if before is None:
            continue
        _, share = cpu_rates(before.resources, usage.resources, elapsed)
        if share is None:
            continue
        res = usage.resources
        limit = f" of {res.cpu_limit:g} CPUs" if res.cpu_limit else ""
        yield condition(
            container_key(usage.attributes),
            usage.attributes,
            level(share, True, ((WARNING, t.cpu_throttled, t.cpu_throttled_clear),)),
            f"{cap(who(usage.attributes))} was throttled by its CPU quota"
            f"{limit} in {pct(share)} of scheduling periods.",
            "Raise the container's CPU limit, or lower its CPU work (fewer DataLoader "
            "workers than CPUs, fewer threads per worker).",
            t.cpu_throttled_for_s,
        )


def large_egress(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    """A container sending much over the network, from its namespace's transmit counter."""
    if len(window) < 2:
        return
    snap = window[-1].snapshot
    start = span_start(window, t.rate_span_s)
    elapsed = snap.timestamp - start.snapshot.timestamp
    if elapsed <= 0:
        return
    for usage in snap.containers:
        before = start.containers.get(container_key(usage.attributes))
        if usage.network is None or before is None or before.network is None:
            continue
        sent = usage.network.tx_bytes - before.network.tx_bytes
        if sent < 0:  # a new namespace: its counters started again
            continue
        rate = sent / elapsed
        yield condition(
            container_key(usage.attributes),
            usage.attributes,
            level(rate, True, ((INFO, t.egress_bytes_per_s, t.egress_bytes_per_s_clear),)),
            f"{cap(who(usage.attributes))} is sending {rate / 1e6:.0f} MB/s over the network "
            f"({sent / 1e9:.1f} GB in the last {minutes(elapsed)}).",
            "Large results belong on the shared storage mounted into the container, where "
            "they need no copy out; if this is multi-node training traffic, it is expected.",
            t.egress_for_s,
        )


def low_sm_activity(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    snap = window[-1].snapshot
    for device, ident in workload_devices(snap):
        duty = duty_cycle(device)
        sm = sm_activity(device)
        if duty is None or sm is None:
            continue
        raised = WARNING if duty >= t.low_sm_duty_cycle and sm < t.low_sm_activity else None
        held = WARNING if duty > t.low_sm_duty_cycle_clear and sm < t.low_sm_activity_clear \
            else None
        yield condition(
            (device.uuid,),
            {**ident, **single_holder(window[-1], device.uuid)},
            (raised, held),
            f"{device_label(ident)} is busy {pct(duty)} of the time but its SMs are "
            f"only {pct(sm)} active: its kernels are too small to fill the device.",
            "Use larger batches or fused kernels (torch.compile, CUDA graphs), overlap "
            "work on several streams, or move to a smaller MIG profile.",
            t.low_sm_for_s,
        )
