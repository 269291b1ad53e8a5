"""What an agent on a real host loads: not the simulator, and not what its run does not use.

Each check runs in a fresh interpreter, since this test process has loaded everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from otel_gpu.sources.kubelet import POD_RESOURCES_SOCKET

PROGRAM = """
import json, sys
from otel_gpu.cli import main
code = main(["agent", "--interval", "0.01", "--exporter", "none", "--cycles", "2"])
watched = ("otel_gpu.simulate", "yaml", "grpc", "google.protobuf", "http.server",
           "opentelemetry.sdk._logs", "opentelemetry.exporter.otlp.proto.grpc",
           "opentelemetry.exporter.prometheus", "urllib.request")
print(json.dumps({"code": code, "loaded": [m for m in watched if m in sys.modules]}))
"""


def _run(program: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_real_host_agent_loads_no_simulator_and_no_unused_exporter() -> None:
    found = _run(PROGRAM)
    assert found["code"] == 0
    expected = []
    if os.path.exists(POD_RESOURCES_SOCKET):  # a Kubernetes node: the pod-resources client
        expected = [m for m in ("grpc", "google.protobuf") if m in found["loaded"]]
    assert found["loaded"] == expected


def test_the_pod_resources_messages_load_on_first_use() -> None:
    found = _run(
        "import json, sys\n"
        "import otel_gpu.sources.kubelet as k\n"
        "before = 'grpc' in sys.modules or 'google.protobuf' in sys.modules\n"
        "request = k.ListPodResourcesRequest()\n"
        "print(json.dumps({'before': before, 'bytes': len(request.SerializeToString()),"
        " 'response': k.ListPodResourcesResponse.DESCRIPTOR.full_name,"
        " 'descriptor_pb2': 'google.protobuf.descriptor_pb2' in sys.modules}))\n"
    )
    assert found == {"before": False, "bytes": 0, "response": "v1.ListPodResourcesResponse",
                     "descriptor_pb2": False}


def test_the_pod_resources_descriptor_loaded_is_the_one_its_table_builds() -> None:
    from otel_gpu.sources import kubelet

    assert kubelet.build_descriptor() == kubelet.DESCRIPTOR, kubelet.build_descriptor().hex()
