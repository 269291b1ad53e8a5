"""DRA claims in the kubelet's pod-resources ``List``: the wire layout of k8s.io/kubelet
``pkg/apis/podresources/v1/api.proto`` encoded by hand here (not with our message classes), served
by a real gRPC server and read by the production client."""

from __future__ import annotations

import pytest

from otel_gpu.simulate.kubelet_api import list_response, serve_pod_resources
from otel_gpu.sources.kubelet import (
    DraClaim,
    PodDevices,
    PodResourcesClient,
    dra_device_ref,
)

GPU = "GPU-8f2c1d3e-0000-1111-2222-333344445555"
MIG = "MIG-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (wire type 2): strings and embedded messages."""
    raw = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


def _claim_resource(driver: str, pool: str, device: str, cdi: list[str]) -> bytes:
    # ClaimResource: cdi_devices 1 (CDIDevice: name 1), driver_name 2, pool_name 3, device_name 4
    return (b"".join(_field(1, _field(1, c)) for c in cdi)
            + _field(2, driver) + _field(3, pool) + _field(4, device))


def _response() -> bytes:
    claim = (
        _field(1, "gpu.nvidia.com")  # class_name, as kubelets before 1.31 sent it: skipped
        + _field(2, "train-gpus")  # claim_name
        + _field(3, "research")  # claim_namespace
        + _field(4, _claim_resource("gpu.nvidia.com", "node-7", "gpu-0",
                                    ["k8s.gpu.nvidia.com/claim=5e1f-gpu-0"]))
        + _field(4, _claim_resource("gpu.nvidia.com", "node-7", "gpu-3-mig-1",
                                    ["k8s.gpu.nvidia.com/claim=5e1f-gpu-3-mig-1"]))
        + _field(4, _claim_resource("gpu.nvidia.com", "node-7", "mig-2g-20gb-x",
                                    [f"nvidia.com/gpu={MIG}"]))
    )
    nic = _field(2, "nic") + _field(3, "research") + _field(
        4, _claim_resource("dra.net", "node-7", "eth1", ["dra.net/nic=eth1"]))
    container = (
        _field(1, "trainer")
        + _field(3, _varint(2) + _varint(3))  # cpu_ids, packed
        + _field(5, claim)  # dynamic_resources
        + _field(5, nic)
    )
    pod = _field(1, "bob-job-0") + _field(2, "research") + _field(3, container)
    return _field(1, pod)



def test_claims_read_off_the_wire_layout(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    with serve_pod_resources(path, [], raw_response=_response()):
        client = PodResourcesClient(path)
        devices = client.list_devices()
    claim = DraClaim(name="train-gpus", namespace="research", driver="gpu.nvidia.com",
                     pool="node-7", devices=("gpu-0", "gpu-3-mig-1", "mig-2g-20gb-x"))
    # the network driver's claim is no GPU's: left out
    assert devices == (PodDevices("research", "bob-job-0", "trainer", "gpu.nvidia.com",
                                  ("0", "3:1", MIG), claim),)
    assert client.take_errors() == ()


def test_a_configured_driver_is_read_too(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    with serve_pod_resources(path, [], raw_response=_response()):
        devices = PodResourcesClient(path, resource_names=["dra.net"]).list_devices()
    assert devices is not None
    assert [(d.resource_name, d.device_ids) for d in devices] == [
        ("gpu.nvidia.com", ("0", "3:1", MIG)), ("dra.net", ("eth1",))]


def test_the_simulator_encodes_what_a_kubelet_sends() -> None:
    pods = [{"namespace": "research", "name": "bob-job-0", "containers": [{
        "name": "trainer", "cpu_ids": [2, 3],
        "claims": [{"name": "train-gpus", "namespace": "research", "devices": [
            {"driver": "gpu.nvidia.com", "pool": "node-7", "device": "gpu-0",
             "cdi": ["k8s.gpu.nvidia.com/claim=5e1f-gpu-0"]}]}]}]}]
    ours = list_response(pods).SerializeToString()
    claim = (_field(2, "train-gpus") + _field(3, "research")
             + _field(4, _claim_resource("gpu.nvidia.com", "node-7", "gpu-0",
                                         ["k8s.gpu.nvidia.com/claim=5e1f-gpu-0"])))
    container = _field(1, "trainer") + _field(3, _varint(2) + _varint(3)) + _field(5, claim)
    assert ours == _field(1, _field(1, "bob-job-0") + _field(2, "research")
                          + _field(3, container))


@pytest.mark.parametrize(
    ("device", "cdi", "ref"),
    [
        ("gpu-0", ["k8s.gpu.nvidia.com/claim=5e1f-gpu-0"], "0"),
        ("gpu-12", [], "12"),
        ("gpu-2-mig-4", [], "2:4"),
        ("gpu-0", [f"nvidia.com/gpu={GPU}"], GPU),  # a UUID in a CDI id wins over the name
        (MIG, [], MIG),
        ("mig-1g.10gb-0-3", [], None),  # nothing this node can map
        ("gpu-x", ["vendor.com/gpu=all"], None),
    ],
)
def test_device_refs(device: str, cdi: list[str], ref: str | None) -> None:
    assert dra_device_ref(device, cdi) == ref
