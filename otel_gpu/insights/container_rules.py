"""Rules about what a container keeps in its shared memory and on its own disk (for its user),
and the environments several containers each carry (for the operator)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.insights.window import (
    Finding,
    Sample,
    cap,
    condition,
    container_key,
    flag,
    level,
    pct,
    who,
)
from otel_gpu.snapshot import INFO, WARNING, format_gib, format_mib


def _workers(count: int) -> str:
    return f"{count} DataLoader worker{'s' if count != 1 else ''}"


def _larger(size: int) -> str:
    """A /dev/shm size to suggest: 16 GiB, or twice the present one where that is more."""
    return f"{max(16, 2 * -(-size // 2**30))}g"


def shm_small(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    """/dev/shm nearly full, or at Docker's 64 MiB default, while DataLoader workers run."""
    for usage in window[-1].snapshot.containers:
        shm = usage.storage
        if shm is None or not shm.shm_size_bytes or shm.shm_used_bytes is None:
            continue
        size, used, workers = shm.shm_size_bytes, shm.shm_used_bytes, shm.data_workers
        if workers == 0:
            continue  # no worker shares it: a full /dev/shm is someone else's design
        ratio = used / size
        full = level(ratio, True, ((WARNING, t.shm_used, t.shm_used_clear),))
        small = flag(bool(workers) and size <= t.shm_small_bytes and not shm.ipc_host, WARNING)
        verdict = (full[0] or small[0], full[1] or small[1])
        whose = cap(who(usage.attributes))
        running = f"{_workers(workers)} share" if workers else "it has"
        default = " (Docker's default)" if size == 64 << 20 else ""
        yield condition(
            container_key(usage.attributes),
            usage.attributes,
            verdict,
            f"{whose}: {running} a /dev/shm of {format_mib(size)}{default}, {pct(ratio)} in use; a "
            "worker that cannot place its batch there dies with \"bus error\".",
            f"Give the container a larger /dev/shm: docker run --shm-size={_larger(size)} (in "
            "Kubernetes, an emptyDir with medium: Memory mounted at /dev/shm), or the host's with "
            "--ipc=host; or run fewer DataLoader workers.",
            t.shm_for_s,
        )


def writable_layer_growth(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    """A writable layer growing fast, over the slow-cadence samples of the last hour."""
    for usage in window[-1].snapshot.containers:
        disk = usage.storage
        if disk is None or disk.writable_growth_bytes_per_s is None or disk.writable_bytes is None:
            continue
        per_hour = disk.writable_growth_bytes_per_s * 3600
        yield condition(
            container_key(usage.attributes),
            usage.attributes,
            level(per_hour, True, ((WARNING, t.writable_growth_bytes_per_h,
                                    t.writable_growth_bytes_per_h_clear),)),
            f"{cap(who(usage.attributes))} writes {per_hour / 1e9:.1f} GB per hour into its own "
            f"filesystem (its writable layer holds {format_gib(disk.writable_bytes)}): that data "
            "is lost with the container, and fills the disk every container shares.",
            "Write outputs (checkpoints, trained models, logs, datasets) to a mounted volume: "
            "docker run -v /data/$USER:/workspace, or a persistentVolumeClaim in Kubernetes.",
            t.writable_growth_for_s,
        )


_NAMED = 5  # containers named in a message; the rest are counted


def duplicated_environments(window: Sequence[Sample], t: Thresholds) -> Iterator[Finding]:
    """One conda or pip environment carried in several images' or containers' own copies."""
    for env in window[-1].snapshot.environments:
        if env.size_bytes is None:
            continue
        wasted = (env.copies - 1) * env.size_bytes
        at_least = "" if env.size_complete else "at least "
        names = [who(c).removeprefix("container ") for c in env.containers[:_NAMED]]
        more = len(env.containers) - len(names)
        listed = ", ".join(names) + (f" and {more} more" if more > 0 else "")
        yield condition(
            ("environment", env.kind, env.path, env.digest),
            {"otel_gpu.environment.kind": env.kind, "otel_gpu.environment.path": env.path,
             "otel_gpu.environment.digest": env.digest},
            flag(env.copies >= 2 and wasted >= t.environment_wasted_bytes, INFO),
            f"{len(env.containers)} containers ({listed}) carry the same {env.kind} environment at "
            f"{env.path} ({env.packages} packages, {at_least}{format_gib(env.size_bytes)}) in "
            f"{env.copies} copies: {at_least}{format_gib(wasted)} of disk holds the same files "
            "again.",
            "Build one image with this environment and start these containers from it (an "
            "image's layers are stored once), or serve it from a shared read-only volume; users "
            "then add only their own packages.",
        )
