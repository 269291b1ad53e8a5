"""On a machine with an NVIDIA driver: the adapter against the real driver (skipped elsewhere)."""

from __future__ import annotations

import pytest
from runner import points_named, snapshot_json


def _driver_gpu_uuids() -> list[str] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        return [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


UUIDS = _driver_gpu_uuids()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(UUIDS is None, reason="no NVIDIA driver on this machine")]


def test_every_gpu_of_the_driver_is_reported_with_its_uuid() -> None:
    doc = snapshot_json("--cycles", "2", "--interval", "1")
    reported = {p["attributes"]["hw.id"] for p in points_named(doc, "hw.status")
                if "hw.parent" not in p["attributes"]}
    assert UUIDS is not None and set(UUIDS) <= reported
    for point in points_named(doc, "hw.gpu.memory.limit"):
        assert point["value"] > 0
