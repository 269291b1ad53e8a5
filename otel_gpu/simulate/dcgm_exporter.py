"""A stand-in dcgm-exporter: a loopback HTTP endpoint serving the simulated server's DCGM
profiling values in the Prometheus text format, as dcgm-exporter's ``/metrics`` does.

Series carry dcgm-exporter's labels: ``gpu`` (the DCGM GPU id), ``UUID`` (the GPU's UUID, on MIG
series too), ``device`` (``nvidia<index>``), ``modelName``, ``Hostname``, and on MIG series
``GPU_I_PROFILE`` and ``GPU_I_ID``. A value the scenario does not give has no series. A
``scrape`` fault with error ``Malformed`` serves a body that is not in the text format.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any

from otel_gpu.simulate._http import QuietHandler
from otel_gpu.simulate.fake_dcgm import FIELDS, VALUE_OF, FakeDcgm
from otel_gpu.simulate.spec import at_cycle

_HELP = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "Ratio of time the graphics engine is active.",
    "DCGM_FI_PROF_SM_ACTIVE": "The ratio of cycles an SM has at least 1 warp assigned.",
    "DCGM_FI_PROF_SM_OCCUPANCY": "The ratio of number of warps resident on an SM.",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "Ratio of cycles the tensor (HMMA) pipe is active.",
    "DCGM_FI_PROF_DRAM_ACTIVE": "Ratio of cycles the device memory interface is active.",
    "DCGM_FI_PROF_PCIE_TX_BYTES": "The rate of data transmitted over the PCIe bus, in B/s.",
    "DCGM_FI_PROF_PCIE_RX_BYTES": "The rate of data received over the PCIe bus, in B/s.",
    "DCGM_FI_PROF_NVLINK_TX_BYTES": "The rate of data transmitted over NVLink, in B/s.",
    "DCGM_FI_PROF_NVLINK_RX_BYTES": "The rate of data received over NVLink, in B/s.",
}
MALFORMED_BODY = 'DCGM_FI_PROF_SM_ACTIVE{gpu="0",UUID="GPU-truncated 0.5\n'


def render(dcgm: FakeDcgm, hostname: str = "sim-dgx") -> str:
    """The scrape dcgm-exporter would serve at the current cycle."""
    lines: list[str] = []
    for name in FIELDS:
        series = []
        for gpu in dcgm.nvml.scenario.gpus:
            base = {"gpu": str(gpu.index), "UUID": gpu.uuid, "device": f"nvidia{gpu.index}",
                    "modelName": gpu.model.nvml_name, "Hostname": hostname}
            layout = gpu.mig.layout_at(dcgm.cycle) if gpu.mig else None
            entries: list[tuple[dict[str, str], Any]] = [(base, gpu.dcgm)]
            for instance in layout.instances if layout else ():
                labels = {**base, "GPU_I_PROFILE": instance.profile.name,
                          "GPU_I_ID": str(instance.gpu_instance_id)}
                entries.append((labels, instance.dcgm))
            for labels, values in entries:
                value = at_cycle(getattr(values, VALUE_OF[name]), dcgm.cycle) if values else None
                if value is not None:
                    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
                    series.append(f"{name}{{{text}}} {float(value)!r}")
        if series:
            lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge", *series]
    return "\n".join(lines) + "\n"


class DcgmExporterStandIn:
    """Serves ``render(dcgm)`` at ``url`` (loopback, a free port) until ``close()``."""

    def __init__(self, dcgm: FakeDcgm) -> None:
        self._dcgm = dcgm
        stand_in = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = stand_in.body().encode()
                self.reply(200, body, "text/plain; version=0.0.4")


        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}/metrics"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="dcgm-exporter-stand-in")
        self._thread.start()

    def body(self) -> str:
        if self._dcgm._fault("scrape") == "Malformed":
            return MALFORMED_BODY
        return render(self._dcgm)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
