"""Container disk, shm and duplicated environments through the production readers over a
simulated world: the metrics a backend receives, the slow cadences in simulated time, and the
state of gone containers dropped."""

from __future__ import annotations

from runner import ROOT, points_named, snapshot_json

from otel_gpu.collect.build import build_collector

INSIGHTS = ROOT / "tests" / "scenarios" / "insights"
GIB = 1 << 30


def _by_name(doc: dict, metric: str, key: str = "container.name") -> dict:
    return {p["attributes"].get(key): p["value"] for p in points_named(doc, metric)}


def test_dgx_a100_reports_writable_layers_shm_and_workers() -> None:
    doc = snapshot_json("--simulate", "dgx-a100", "--cycles", "1")
    layers = _by_name(doc, "container.filesystem.usage")
    assert layers["alice-train"] == 1288490188 and layers["alice-dev"] == 3758096384
    shm = _by_name(doc, "otel_gpu.container.shm.usage")
    limits = _by_name(doc, "otel_gpu.container.shm.limit")
    assert (shm["alice-train"], limits["alice-train"]) == (2 * GIB, 16 * GIB)
    assert limits["alice-dev"] == 64 << 20  # Docker's default
    workers = _by_name(doc, "otel_gpu.container.dataloader.workers")
    assert workers["alice-train"] == 8 and workers["carol-finetune"] == 4
    assert workers["alice-dev"] == 0
    pods = points_named(doc, "k8s.pod.filesystem.usage")
    eval_pod = [p for p in pods if p["attributes"]["k8s.pod.name"] == "alice-eval-0"]
    assert [p["value"] for p in eval_pod] == [268435456]
    assert set(eval_pod[0]["attributes"]) == {"k8s.pod.name", "k8s.pod.uid",
                                              "k8s.namespace.name"}
    # One image holds alice-train's and carol-finetune's environment: shared, one copy.
    copies = points_named(doc, "otel_gpu.environment.copies")
    assert [p["value"] for p in copies] == [1]


def test_duplicated_environments_are_counted_by_image() -> None:
    doc = snapshot_json("--simulate", str(INSIGHTS / "duplicated-environments.yaml"),
                        "--cycles", "1")
    key = "otel_gpu.environment.kind"
    assert _by_name(doc, "otel_gpu.environment.containers", key) == {"conda": 3, "pip": 2}
    assert _by_name(doc, "otel_gpu.environment.copies", key) == {"conda": 2, "pip": 1}
    assert _by_name(doc, "otel_gpu.environment.size", key)["conda"] >= 3 * GIB
    rules = {i["rule"] for i in doc["insights"]}
    assert "duplicated_environments" in rules


def test_slow_scans_run_on_their_cadence_in_simulated_time() -> None:
    collector = build_collector(str(INSIGHTS / "writable-layer.yaml"), 10.0)
    collector.start()
    try:
        world = collector.sources.simulation
        attributor = collector.sources.attributor
        snaps = [collector.collect() for _ in range(61)]  # 10 min of 10 s cycles, and one
        sizes = [p for p in world.docker_api.requests if p.endswith("?size=true")]
        assert len(sizes) == 3
        assert [p for p in world.pod_list_api.paths if p == "/stats/summary"] == [
            "/stats/summary"] * 3
        assert attributor.environments.scans == 1  # every 30 min

        def alice(k: int) -> tuple[int | None, float | None]:
            usage = next(c for c in snaps[k].containers
                         if c.attributes.get("container.name") == "alice-train")
            assert usage.storage is not None
            return usage.storage.writable_bytes, usage.storage.writable_sampled_at

        # The scenario's layer grows 2 GB a cycle; between samples the last one stands.
        assert alice(5) == (10**9, snaps[0].timestamp)
        assert alice(45) == (23 * 10**9, snaps[30].timestamp)
    finally:
        collector.close()


def test_a_container_that_goes_leaves_no_state() -> None:
    collector = build_collector(str(INSIGHTS / "duplicated-environments.yaml"), 600.0)
    collector.start()
    try:
        attributor = collector.sources.attributor
        dave = "c" * 64
        collector.collect()
        assert dave in attributor.disk.tracked
        for _ in range(5):
            snap = collector.collect()
        assert dave not in attributor.disk.tracked
        assert all(dave not in (c["container.id"] for c in env.containers)
                   for env in snap.environments)
    finally:
        collector.close()


def test_a_bad_interval_is_a_usage_error() -> None:
    from runner import run_cli

    result = run_cli("snapshot", "--simulate", "dgx-a100",
                     env={"OTEL_GPU_ENVIRONMENT_INTERVAL": "hourly"})
    assert result.returncode == 2
    assert result.stderr.startswith("otel-gpu: OTEL_GPU_ENVIRONMENT_INTERVAL: expected")


def test_readers_turned_off_ask_nothing(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_GPU_DISK_INTERVAL", "0")
    monkeypatch.setenv("OTEL_GPU_ENVIRONMENT_INTERVAL", "0")
    collector = build_collector("dgx-a100")
    collector.start()
    try:
        snap = [collector.collect() for _ in range(3)][-1]
        world = collector.sources.simulation
        assert not [p for p in world.docker_api.requests if p.endswith("?size=true")]
        attributor = collector.sources.attributor
        assert attributor.disk is None and attributor.environments is None
        assert not snap.environments and all(c.storage is None for c in snap.containers)
        assert snap.containers  # the rest of the join is as before
    finally:
        collector.close()
