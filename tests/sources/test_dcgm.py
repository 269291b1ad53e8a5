"""The DCGM source through its production adapter: over the stand-in bindings (host engine
route), over the stand-in dcgm-exporter (scrape route), and without DCGM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_gpu.collect.build import build_collector
from otel_gpu.simulate import SimulatedServer, load_scenario
from otel_gpu.simulate.dcgm_exporter import MALFORMED_BODY, render
from otel_gpu.snapshot import Snapshot
from otel_gpu.sources.dcgm import (
    EXPORTER,
    HOSTENGINE,
    DcgmSource,
    load_bindings,
    parse_exporter_scrape,
)

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
BASE = SCENARIOS / "dcgm-a100.yaml"


def scenario_with(tmp_path: Path, dcgm: dict[str, Any] | None, **top: Any) -> str:
    doc = yaml.safe_load(BASE.read_text())
    if dcgm is not None:
        doc["dcgm"] = dcgm
    doc.update(top)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def run(spec: str, cycles: int) -> list[Snapshot]:
    collector = build_collector(spec, interval_s=10.0)
    try:
        assert collector.start() is None
        return [collector.collect() for _ in range(cycles)]
    finally:
        collector.close()


def migs(snap: Snapshot) -> dict[str, Any]:
    return {m.name: m for g in snap.gpus for m in g.mig_devices}


def dcgm_errors(snap: Snapshot) -> dict[str, int]:
    return {kind: n for (source, kind), n in snap.error_counts.items() if source == "dcgm"}


def test_every_a100_slice_of_the_dgx_gets_dcgm_activity() -> None:
    snap = run("dgx-a100", 2)[-1]
    slices = migs(snap)
    assert len(slices) == 7
    for name, mig in slices.items():
        assert mig.dcgm is not None, name
        assert mig.dcgm.source == HOSTENGINE
        assert mig.dcgm.sm_active is not None and 0.0 <= mig.dcgm.sm_active <= 1.0
    # cycle 1 of gpu0/mig0 (3g.20gb at start 4) in the built-in scenario
    assert slices["gpu0/mig0"].dcgm.sm_active == pytest.approx(0.85)
    assert slices["gpu0/mig2"].dcgm.graphics_engine_active == 0.0
    assert dcgm_errors(snap) == {}
    assert "dcgm" in snap.durations_s


def test_values_join_by_gpu_uuid_and_gpu_instance_id() -> None:
    snap = run(str(BASE), 1)[-1]
    scenario = load_scenario(str(BASE))
    layout = scenario.gpus[0].mig.layouts[0]
    by_gi = {m.gpu_instance_id: m for m in migs(snap).values()}
    assert by_gi[layout.instances[0].gpu_instance_id].dcgm.sm_active == pytest.approx(0.8)
    assert by_gi[layout.instances[1].gpu_instance_id].dcgm.sm_active == 0.0
    whole = snap.gpus[1]
    assert whole.dcgm is not None and whole.dcgm.sm_active == pytest.approx(0.2)
    # Fields the scenario does not give are blank in DCGM, and absent here.
    assert whole.dcgm.tensor_active is None


@pytest.mark.parametrize("dcgm", [None, {"hostengine": False}])
def test_without_dcgm_or_with_a_refusing_host_engine_the_output_is_as_before(
    tmp_path: Path, dcgm: dict[str, Any] | None
) -> None:
    doc = yaml.safe_load(BASE.read_text())
    if dcgm is None:
        for instance in doc["gpus"][0]["mig"]["instances"]:
            del instance["dcgm"]
        del doc["gpus"][1]["dcgm"]
    else:
        doc["dcgm"] = dcgm
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    snaps = run(str(path), 8)  # past the quiet reconnect interval
    for snap in snaps:
        assert dcgm_errors(snap) == {}
        assert "dcgm" not in snap.durations_s
        assert all(g.dcgm is None and all(m.dcgm is None for m in g.mig_devices)
                   for g in snap.gpus)


def test_a_field_not_supported_is_counted_and_the_cycle_goes_on(tmp_path: Path) -> None:
    spec = scenario_with(tmp_path, {"faults": [
        {"call": "GetLatest_v2", "error": "NOT_SUPPORTED", "cycles": [1]}]})
    snaps = run(spec, 3)
    assert dcgm_errors(snaps[0]) == {}
    assert dcgm_errors(snaps[1]) == {"NOT_SUPPORTED": 1}
    assert all(m.dcgm is None for m in migs(snaps[1]).values())
    assert all(m.memory_used_bytes is not None for m in migs(snaps[1]).values())
    assert migs(snaps[2])["gpu0/mig0"].dcgm is not None


def test_profiling_busy_is_counted_each_cycle_it_lasts(tmp_path: Path) -> None:
    spec = scenario_with(tmp_path, {"faults": [
        {"call": "WatchFields", "error": "IN_USE", "cycles": [0, 1]}]})
    snaps = run(spec, 3)
    assert dcgm_errors(snaps[1]) == {"IN_USE": 2}
    assert migs(snaps[2])["gpu0/mig0"].dcgm is not None
    assert dcgm_errors(snaps[2]) == {"IN_USE": 2}


def test_a_lost_connection_is_counted_once_and_the_source_reconnects(tmp_path: Path) -> None:
    spec = scenario_with(tmp_path, {"faults": [
        {"call": "GetLatest_v2", "error": "CONNECTION_NOT_VALID", "cycles": [1]},
        {"call": "connect", "error": "CONNECTION_NOT_VALID", "cycles": [2, 3, 4, 5, 6, 7]}]})
    snaps = run(spec, 10)
    assert dcgm_errors(snaps[1]) == {"CONNECTION_NOT_VALID": 1}
    assert dcgm_errors(snaps[-1]) == {"CONNECTION_NOT_VALID": 1}  # reconnecting is quiet
    assert all(m.dcgm is None for s in snaps[1:8] for m in migs(s).values())
    assert migs(snaps[-1])["gpu0/mig0"].dcgm is not None


def test_the_exporter_route_reads_the_same_fields(tmp_path: Path) -> None:
    spec = scenario_with(tmp_path, {"hostengine": False, "exporter": True})
    snap = run(spec, 2)[-1]
    mig0 = migs(snap)["gpu0/mig0"]
    assert mig0.dcgm is not None and mig0.dcgm.source == EXPORTER
    assert mig0.dcgm.sm_active == pytest.approx(0.82)
    assert mig0.dcgm.dram_active == pytest.approx(0.5)
    assert snap.gpus[1].dcgm.sm_active == pytest.approx(0.2)
    assert dcgm_errors(snap) == {}


def test_a_malformed_scrape_is_counted_and_the_cycle_goes_on(tmp_path: Path) -> None:
    spec = scenario_with(tmp_path, {"hostengine": False, "exporter": True, "faults": [
        {"call": "scrape", "error": "Malformed", "cycles": [1]}]})
    snaps = run(spec, 3)
    assert dcgm_errors(snaps[1]) == {"Malformed": 1}
    assert all(m.dcgm is None for m in migs(snaps[1]).values())
    assert all(m.memory_used_bytes is not None for m in migs(snaps[1]).values())
    assert migs(snaps[2])["gpu0/mig0"].dcgm is not None


def test_the_stand_in_scrape_has_dcgm_exporter_names_and_labels() -> None:
    server = SimulatedServer(load_scenario(str(BASE)))
    text = render(server.dcgm)
    assert "# TYPE DCGM_FI_PROF_SM_ACTIVE gauge" in text
    line = next(t for t in text.splitlines() if t.startswith("DCGM_FI_PROF_SM_ACTIVE{")
                and "GPU_I_ID" in t)
    for label in ("gpu=", "UUID=", "GPU_I_ID=", "GPU_I_PROFILE=", "modelName=", "Hostname="):
        assert label in line
    parsed = parse_exporter_scrape(text)
    gpu = server.scenario.gpus[0]
    gi = gpu.mig.layouts[0].instances[0].gpu_instance_id
    assert parsed[(gpu.uuid, gi, None)].sm_active == pytest.approx(0.8)


def test_parse_rejects_text_that_is_not_the_exposition_format() -> None:
    with pytest.raises(ValueError):
        parse_exporter_scrape(MALFORMED_BODY)


def test_parse_leaves_out_series_without_uuid_nan_or_a_bad_instance_id() -> None:
    text = "\n".join([
        "# TYPE DCGM_FI_PROF_SM_ACTIVE gauge",
        'DCGM_FI_PROF_SM_ACTIVE{gpu="0"} 0.5',
        'DCGM_FI_PROF_SM_ACTIVE{gpu="1",UUID="GPU-a",GPU_I_ID="x"} 0.5',
        'DCGM_FI_PROF_SM_ACTIVE{gpu="2",UUID="GPU-b"} NaN',
        'DCGM_FI_PROF_SM_ACTIVE{gpu="3",UUID="GPU-c",GPU_I_ID="2"} 1.7',
        'DCGM_FI_DEV_GPU_UTIL{gpu="3",UUID="GPU-c"} 50',
    ]) + "\n"
    parsed = parse_exporter_scrape(text)
    assert list(parsed) == [("GPU-c", 2, None)]
    assert parsed[("GPU-c", 2, None)].sm_active == 1.0  # a ratio is clamped to 0..1


def test_without_dcgm_installed_the_source_stays_quiet() -> None:
    source = DcgmSource(environ={}, load=lambda: None)
    assert source.start() is False
    assert "bindings are not installed" in (source.unavailable_reason or "")
    assert "OTEL_GPU_DCGM_EXPORTER_URL is not set" in (source.unavailable_reason or "")
    assert source.read([], now=1000.0) == ([], [])


def test_turned_off_by_setting() -> None:
    server = SimulatedServer(load_scenario(str(BASE)))
    fake = server.dcgm
    source = DcgmSource(fake, environ={"OTEL_GPU_DCGM": "off"})
    assert source.start() is False
    assert "OTEL_GPU_DCGM=off" in (source.unavailable_reason or "")


def test_bindings_are_imported_only_from_an_install_path(tmp_path: Path) -> None:
    assert load_bindings([str(tmp_path)]) is None  # no pydcgm.py there
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pydcgm.py").write_text("raise ImportError('libdcgm.so not found')\n")
    assert load_bindings([str(broken)]) is None


def test_the_exporter_route_can_be_chosen_over_a_running_host_engine(tmp_path: Path) -> None:
    spec = scenario_with(tmp_path, {"hostengine": True, "exporter": True})
    server = SimulatedServer(load_scenario(spec))
    try:
        fake = server.dcgm
        environ = {"OTEL_GPU_DCGM_EXPORTER_URL": server.dcgm_exporter_url() or "",
                   "OTEL_GPU_DCGM_ROUTE": "exporter"}
        source = DcgmSource(fake, environ=environ)
        assert source.start() and source.route == EXPORTER
        assert fake.connected is None  # never connected to the host engine
        only_engine = DcgmSource(fake, environ={**environ, "OTEL_GPU_DCGM_ROUTE": "hostengine"})
        assert only_engine.start() and only_engine.route == HOSTENGINE
    finally:
        server.close()


def test_a_mig_reconfiguration_is_watched_anew(tmp_path: Path) -> None:
    path = tmp_path / "reconf.yaml"
    path.write_text(yaml.safe_dump({"name": "reconf", "gpus": [{
        "model": "A100-SXM4-40GB",
        "mig": {
            "instances": [{"profile": "3g.20gb", "start": 0, "dcgm": {"sm_active": 0.3}},
                          {"profile": "3g.20gb", "start": 4, "dcgm": {"sm_active": 0.4}}],
            "reconfigure": [{"cycle": 2, "instances": [
                {"profile": "7g.40gb", "start": 0, "dcgm": {"sm_active": 0.9}}]}],
        },
    }]}))
    snaps = run(str(path), 4)
    assert [m.dcgm.sm_active for m in snaps[1].gpus[0].mig_devices] == [0.3, 0.4]
    assert [m.dcgm.sm_active for m in snaps[3].gpus[0].mig_devices] == [0.9]
    assert dcgm_errors(snaps[-1]) == {}
