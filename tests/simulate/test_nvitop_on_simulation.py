"""nvitop, a third-party monitor that imports ``pynvml`` itself, runs on the installed simulation.

nvitop copies the module's functions when it is first imported, so it runs in a fresh
interpreter that installs the stand-in before importing it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from otel_gpu.simulate import at_cycle, load_scenario
from otel_gpu.simulate.fake_nvml import FakeNvml

pytest.importorskip("nvitop")

SCRIPT = r"""
import json, logging
logging.disable(logging.CRITICAL)
from otel_gpu.simulate.nvml_module import install
install("dgx-a100")
from nvitop import Device

def processes(device):
    return {str(pid): [p.gpu_memory(), p.gpu_sm_utilization()]
            for pid, p in device.processes().items()}

out = {"count": Device.count(), "driver": Device.driver_version(),
       "cuda": Device.cuda_driver_version(), "devices": []}
for device in Device.all():
    out["devices"].append({
        "index": device.index, "uuid": device.uuid(), "name": device.name(),
        "memory_used": device.memory_used(), "memory_total": device.memory_total(),
        "utilization": device.gpu_utilization(), "bus_id": device.bus_id(),
        "processes": processes(device),
        "mig": [{"uuid": m.uuid(), "memory_used": m.memory_used(), "processes": processes(m)}
                for m in device.mig_devices()],
    })
print(json.dumps(out))
"""


def nvitop_view() -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_nvitop_enumerates_devices_and_reads_memory_utilization_and_processes() -> None:
    view = nvitop_view()
    nvml = FakeNvml(load_scenario("dgx-a100"))
    nvml.nvmlInit()
    scenario = nvml.scenario
    assert view["count"] == len(scenario.gpus) == 8
    assert view["driver"] == scenario.driver_version and view["cuda"] == "12.4"
    assert len({d["bus_id"] for d in view["devices"]}) == 8
    for seen, gpu in zip(view["devices"], scenario.gpus, strict=True):
        handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        assert (seen["index"], seen["uuid"]) == (gpu.index, gpu.uuid)
        assert seen["name"] == gpu.model.nvml_name
        assert (seen["memory_used"], seen["memory_total"]) == (memory.used, memory.total)
        if gpu.mig:
            assert seen["utilization"] == "N/A"  # NOT_SUPPORTED in MIG mode
            layout = gpu.mig.layout_at(0)
            assert [m["uuid"] for m in seen["mig"]] == [i.uuid for i in layout.instances]
            mig_pids = {pid for m in seen["mig"] for pid in m["processes"]}
            assert mig_pids == {str(p.pid) for p in gpu.processes_at(0)}
            continue
        assert seen["utilization"] == round(at_cycle(gpu.utilization, 0) * 100)
        expected = {
            str(p.pid): [int(at_cycle(p.used_memory_bytes, 0)),
                         round((at_cycle(p.sm_utilization, 0) or 0.0) * 100)]
            for p in gpu.processes_at(0)
        }
        assert seen["processes"] == expected
    busy = [p for d in view["devices"] for p in d["processes"].values() if p[1]]
    assert len(busy) >= 4  # per-process SM utilization reaches nvitop, asked by wall clock
