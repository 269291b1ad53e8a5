"""DCGM activity and link health as the backend receives them: names, one source per device,
NVLink and PCIe replay counters."""

from __future__ import annotations

from pathlib import Path

import yaml
from runner import ROOT, points_named, snapshot_json

NVLINK = str(ROOT / "tests" / "scenarios" / "nvlink-degrading.yaml")


def test_gpm_wins_over_dcgm_and_no_series_is_doubled(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({"name": "both", "gpus": [
        {"model": "H100-SXM5-80GB", "utilization": 0.9,
         "gpm": {"sm_utilization": 0.5},
         "dcgm": {"sm_active": 0.9, "tensor_active": 0.3}},
        {"model": "A100-SXM4-40GB", "utilization": 0.9, "dcgm": {"sm_active": 0.7}},
    ]}))
    doc = snapshot_json("--simulate", str(path), "--cycles", "2")
    sm = {p["attributes"]["hw.name"]: p["value"]
          for p in points_named(doc, "nvidia.gpu.sm.utilization")}
    assert len(points_named(doc, "nvidia.gpu.sm.utilization")) == 2
    assert sm == {"gpu0": 0.5, "gpu1": 0.7}
    # A field GPM lacks on that device comes from DCGM.
    tensor = points_named(doc, "nvidia.gpu.tensor.utilization")
    assert [(p["attributes"]["hw.name"], p["value"]) for p in tensor] == [("gpu0", 0.3)]


def test_nvlink_counters_of_active_links_and_pcie_replays() -> None:
    doc = snapshot_json("--simulate", NVLINK, "--cycles", "5", "--interval", "10")
    errors = points_named(doc, "nvidia.gpu.nvlink.errors")
    by = {(p["attributes"]["hw.name"], p["attributes"]["nvidia.gpu.nvlink.link"],
           p["attributes"]["error.type"]): p["value"] for p in errors}
    assert by[("gpu0", 2, "crc_flit")] == 12000  # cycle 4
    assert by[("gpu0", 2, "replay")] == 3
    assert by[("gpu1", 0, "crc_flit")] == 0
    assert {link for (_, link, _) in by} == {0, 1, 2}  # link 4 is down, 3 not on the board
    assert all(p["kind"] == "sum" for p in errors)
    io = {(p["attributes"]["hw.name"], p["attributes"]["nvidia.gpu.nvlink.link"],
           p["attributes"]["network.io.direction"]): p["value"]
          for p in points_named(doc, "nvidia.gpu.nvlink.io")}
    # 20 GB/s for four 10 s cycles, counted by the driver in KiB
    assert io[("gpu0", 0, "transmit")] == 4 * 10 * 20_000_000_000 // 1024 * 1024
    replays = {p["attributes"]["hw.name"]: p["value"]
               for p in points_named(doc, "nvidia.gpu.pcie.replays")}
    assert replays == {"gpu0": 9, "gpu1": 0}


def test_dcgm_errors_are_counted_with_their_source(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "tests" / "scenarios" / "dcgm-a100.yaml").read_text())
    doc["dcgm"] = {"faults": [{"call": "GetLatest_v2", "error": "NOT_SUPPORTED", "cycles": [1]}]}
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = snapshot_json("--simulate", str(path), "--cycles", "3")
    errors = [(p["attributes"]["error.type"], p["value"])
              for p in points_named(out, "otel_gpu.collection.errors")
              if p["attributes"]["otel_gpu.source"] == "dcgm"]
    assert errors == [("NOT_SUPPORTED", 1)]
    # the cycle after the failure has the slices' activity again
    assert {p["attributes"]["hw.name"] for p in points_named(out, "nvidia.gpu.sm.utilization")} \
        >= {"gpu0/mig0", "gpu0/mig1"}
