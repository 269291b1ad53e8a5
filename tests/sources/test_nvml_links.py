"""Link health through the production NVML source on the simulated driver: active NVLinks only,
their counters, the field-value fallback, and the PCIe replay counter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from otel_gpu.collect.build import build_collector
from otel_gpu.snapshot import Snapshot

ROOT = Path(__file__).resolve().parents[2]
DEGRADING = ROOT / "tests" / "scenarios" / "nvlink-degrading.yaml"


def run(path: Path | str, cycles: int) -> Snapshot:
    collector = build_collector(str(path), 10.0, attribution=False)
    try:
        assert collector.start() is None
        for _ in range(cycles):
            snap = collector.collect()
        return snap
    finally:
        collector.close()


def links(snap: Snapshot, gpu: int) -> dict[int, Any]:
    return {link.link: link for link in snap.gpus[gpu].nvlinks}


def test_active_links_with_their_counters() -> None:
    snap = run(DEGRADING, 6)
    gpu0 = links(snap, 0)
    assert sorted(gpu0) == [0, 1, 2]  # link 4 is down
    assert gpu0[2].crc_flit_errors == 22000 and gpu0[2].crc_data_errors == 90
    assert gpu0[2].replay_errors == 5 and gpu0[2].recovery_errors == 0
    assert gpu0[0].tx_bytes == 5 * 10 * 20_000_000_000 // 1024 * 1024
    assert snap.gpus[0].pcie_replays == 15 and snap.gpus[1].pcie_replays == 0
    assert not [e for e in snap.errors if "NvLink" in e.call or "Replay" in e.call]


def test_error_counters_fall_back_to_field_values(tmp_path: Path) -> None:
    doc = yaml.safe_load(DEGRADING.read_text())
    doc["gpus"][0]["faults"] = [{"call": "nvmlDeviceGetNvLinkErrorCounter",
                                 "error": "NOT_SUPPORTED"}]
    path = tmp_path / "fallback.yaml"
    path.write_text(yaml.safe_dump(doc))
    gpu0 = links(run(path, 6), 0)
    assert gpu0[2].crc_flit_errors == 22000 and gpu0[2].replay_errors == 5


def test_a_board_without_nvlink_reports_no_links_and_counts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "pcie.yaml"
    path.write_text(yaml.safe_dump({"name": "pcie", "gpus": [{"model": "A100-SXM4-40GB"}]}))
    snap = run(path, 3)
    assert snap.gpus[0].nvlinks == ()
    assert not [e for e in snap.errors if "NvLink" in e.call]
