from __future__ import annotations

import importlib.metadata
import json
import os
import pwd
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from otel_gpu.embedded import OtelGpuResourceDetector
from otel_gpu.sources._text import clean_value
from otel_gpu.sources.identity import (
    ATTRIBUTION_NOTE,
    MAX_VALUE_LENGTH,
    SelfInfo,
    detect_self,
    visible_devices,
)

CID = "3f2a9c1be0d74e55a0c6b1f2d3e4a5b6c7d8e9f00112233445566778899aabbc"
SANDBOX = "9be1a7c3d5f70123456789abcdef0123456789abcdef0123456789abcdef0123"
UID = "6d1c2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
UID_ = UID.replace("-", "_")
PRIVATE_NS = "pid:[4026532201]"
INIT_NS = "pid:[4026531836]"


def mount(n: int, source: str, target: str, fstype: str = "ext4") -> str:
    return f"{n} 1 8:1 {source} {target} rw,relatime - {fstype} /dev/sda1 rw"


ROOT_MOUNT = (
    "1 0 0:52 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/"
    "l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/x/diff"
)
DOCKER_MOUNTS = [
    ROOT_MOUNT,
    mount(2, f"/var/lib/docker/containers/{CID}/resolv.conf", "/etc/resolv.conf"),
    mount(3, f"/var/lib/docker/containers/{CID}/hostname", "/etc/hostname"),
    mount(4, f"/var/lib/docker/containers/{CID}/hosts", "/etc/hosts"),
]
KUBELET_MOUNTS = [
    ROOT_MOUNT,
    mount(2, f"/var/lib/kubelet/pods/{UID}/etc-hosts", "/etc/hosts"),
    mount(3, f"/var/lib/kubelet/pods/{UID}/containers/trainer/6a1b2c3d", "/dev/termination-log"),
    mount(4, f"/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{SANDBOX}/hostname",
          "/etc/hostname"),
    mount(5, f"/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{SANDBOX}/resolv.conf",
          "/etc/resolv.conf"),
    mount(6, f"/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~projected/kube-api-access-x",
          "/var/run/secrets/kubernetes.io/serviceaccount", "tmpfs"),
]


def make_proc(tmp_path: Path, *, cgroup: list[str] | None, pid1_cgroup: list[str] | None = None,
              mountinfo: list[str] | None = None, ns_pid: str | None = PRIVATE_NS,
              uid: int = 0, namespace_file: str | None = None) -> str:
    """A /proc tree with the files detect_self reads; None leaves a file out."""
    proc = tmp_path / "proc"
    own = proc / "self"
    (own / "ns").mkdir(parents=True)
    (proc / "1").mkdir()
    if cgroup is not None:
        (own / "cgroup").write_text("\n".join(cgroup) + "\n")
    if pid1_cgroup is not None:
        (proc / "1" / "cgroup").write_text("\n".join(pid1_cgroup) + "\n")
    if mountinfo is not None:
        (own / "mountinfo").write_text("\n".join(mountinfo) + "\n")
    if ns_pid is not None:
        os.symlink(ns_pid, own / "ns" / "pid")
    (own / "status").write_text(f"Name:\tpython\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    if namespace_file is not None:
        path = own / "root" / "var/run/secrets/kubernetes.io/serviceaccount/namespace"
        path.parent.mkdir(parents=True)
        path.write_text(namespace_file)
    return str(proc)


def attributes(proc: str, environ: dict[str, str]) -> dict[str, object]:
    return dict(OtelGpuResourceDetector(proc_root=proc, environ=environ).detect().attributes)


def unknown_uid() -> int:
    for uid in range(3_999_000, 3_999_100):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    pytest.skip("every uid probed has a passwd entry")


def test_docker_cgroup_v2_systemd(tmp_path: Path) -> None:
    line = f"0::/system.slice/docker-{CID}.scope"
    proc = make_proc(tmp_path, cgroup=[line], pid1_cgroup=[line], mountinfo=DOCKER_MOUNTS)
    info = detect_self(proc, {"CUDA_VISIBLE_DEVICES": "GPU-5c1f,1"})
    assert info == SelfInfo(
        container_id=CID, container_runtime="docker", uid=0, user="root",
        devices=("GPU-5c1f", "1"), host_pid_namespace=False, attribution_note=ATTRIBUTION_NOTE,
    )
    assert info.in_container
    assert attributes(proc, {"CUDA_VISIBLE_DEVICES": "GPU-5c1f,1"}) == {
        "container.id": CID,
        "container.runtime.name": "docker",
        "process.owner": "root",
        "otel_gpu.device.ids": ("GPU-5c1f", "1"),
    }


def test_docker_cgroupfs_v1(tmp_path: Path) -> None:
    lines = [
        f"12:memory:/docker/{CID}",
        f"11:cpu,cpuacct:/docker/{CID}",
        f"4:devices:/docker/{CID}",
        f"1:name=systemd:/docker/{CID}",
    ]
    proc = make_proc(tmp_path, cgroup=lines, pid1_cgroup=lines, mountinfo=None)
    info = detect_self(proc, {})
    assert (info.container_id, info.container_runtime) == (CID, "docker")
    assert info.host_pid_namespace is False
    assert info.devices is None
    assert "otel_gpu.device.ids" not in attributes(proc, {})


def test_kubernetes_containerd_with_downward_api_env(tmp_path: Path) -> None:
    line = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope")
    pause = line.replace(CID, SANDBOX)
    proc = make_proc(tmp_path, cgroup=[line], pid1_cgroup=[pause], mountinfo=KUBELET_MOUNTS,
                     uid=unknown_uid(), namespace_file="from-file")
    env = {
        "POD_NAME": "llm-train-7f9c-0",
        "POD_NAMESPACE": "research",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "HOSTNAME": "llm-train-7f9c-0",
        "NVIDIA_VISIBLE_DEVICES": "MIG-1b2e3a4f-0000-5555-aaaa-0123456789ab",
    }
    info = detect_self(proc, env)
    assert info.container_id == CID  # ours, not the sandbox's from the /etc/hostname mount
    assert info.container_runtime == "containerd"
    assert info.pod_uid == UID
    assert info.k8s_container_name == "trainer"
    assert info.in_kubernetes and info.in_container
    assert info.attribution_note == ATTRIBUTION_NOTE
    assert attributes(proc, env) == {
        "container.id": CID,
        "container.runtime.name": "containerd",
        "k8s.pod.name": "llm-train-7f9c-0",
        "k8s.pod.uid": UID,
        "k8s.namespace.name": "research",
        "k8s.container.name": "trainer",
        "process.owner": str(info.uid),
        "otel_gpu.device.ids": ("MIG-1b2e3a4f-0000-5555-aaaa-0123456789ab",),
    }


def test_kubernetes_alternative_variable_names(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, cgroup=["0::/"], pid1_cgroup=["0::/"], mountinfo=KUBELET_MOUNTS)
    env = {"K8S_POD_NAME": "job-a", "K8S_NAMESPACE": "team-b", "KUBERNETES_SERVICE_HOST": "x",
           "HOSTNAME": "job-a-host"}
    info = detect_self(proc, env)
    assert (info.pod_name, info.pod_namespace) == ("job-a", "team-b")


def test_kubernetes_private_cgroup_namespace_uses_hostname_and_service_account(
        tmp_path: Path) -> None:
    proc = make_proc(tmp_path, cgroup=["0::/"], pid1_cgroup=["0::/"], mountinfo=KUBELET_MOUNTS,
                     namespace_file="vision\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "HOSTNAME": "resnet-worker-3"}
    info = detect_self(proc, env)
    assert info.container_id is None  # the mounts only name the pod sandbox
    assert info.pod_name == "resnet-worker-3"
    assert info.pod_namespace == "vision"
    assert info.pod_uid == UID
    assert info.in_container
    assert info.host_pid_namespace is False
    assert info.attribution_note == ATTRIBUTION_NOTE


def test_hostname_is_no_pod_name_outside_kubernetes(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, cgroup=[f"0::/system.slice/docker-{CID}.scope"],
                     pid1_cgroup=[f"0::/system.slice/docker-{CID}.scope"])
    info = detect_self(proc, {"HOSTNAME": "3f2a9c1be0d7"})
    assert info.pod_name is None and info.pod_namespace is None
    assert not info.in_kubernetes


@pytest.mark.parametrize(
    "line",
    [
        f"0::/machine.slice/libpod-{CID}.scope/container",
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container",
    ],
    ids=["rootful", "rootless"],
)
def test_podman_cgroup(tmp_path: Path, line: str) -> None:
    proc = make_proc(tmp_path, cgroup=[line], pid1_cgroup=[line])
    info = detect_self(proc, {})
    assert (info.container_id, info.container_runtime) == (CID, "podman")
    assert info.host_pid_namespace is False


def test_podman_private_cgroup_namespace_from_mountinfo(tmp_path: Path) -> None:
    store = "/home/ana/.local/share/containers/storage/overlay-containers"
    mounts = [
        ROOT_MOUNT,
        mount(2, f"/run/user/1000/containers/overlay-containers/{CID}/userdata/.containerenv",
              "/run/.containerenv", "tmpfs"),
        mount(3, f"{store}/{CID}/userdata/hostname", "/etc/hostname"),
    ]
    proc = make_proc(tmp_path, cgroup=["0::/"], pid1_cgroup=["0::/"], mountinfo=mounts, uid=1000)
    info = detect_self(proc, {})
    assert (info.container_id, info.container_runtime) == (CID, "podman")
    assert info.host_pid_namespace is False


def test_bare_host_user_session_is_no_container(tmp_path: Path) -> None:
    lines = ["0::/user.slice/user-1000.slice/session-3.scope"]
    mounts = [
        "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw",
        "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
    ]
    proc = make_proc(tmp_path, cgroup=lines, pid1_cgroup=["0::/init.scope"], mountinfo=mounts,
                     ns_pid=INIT_NS)
    info = detect_self(proc, {"USER": "ana"})
    assert info.container_id is None and info.container_runtime is None
    assert not info.in_container
    assert info.host_pid_namespace is True
    assert info.attribution_note is None
    assert attributes(proc, {}) == {"process.owner": "root"}


def test_bare_host_v1_session_is_no_container(tmp_path: Path) -> None:
    lines = [
        "12:memory:/user.slice/user-1000.slice/session-3.scope",
        "1:name=systemd:/user.slice/user-1000.slice/session-3.scope",
        "0::/user.slice/user-1000.slice/session-3.scope",
    ]
    proc = make_proc(tmp_path, cgroup=lines, pid1_cgroup=["0::/init.scope"], ns_pid=None)
    info = detect_self(proc, {})
    assert info.container_id is None
    assert info.host_pid_namespace is None  # outside a container only the ns link can tell
    assert info.attribution_note is None


def test_docker_private_cgroup_namespace_from_mountinfo(tmp_path: Path) -> None:
    mounts = [
        *DOCKER_MOUNTS,
        # a user's bind mount is no runtime mount, whatever its path holds
        mount(9, f"/srv/containers/{SANDBOX}/data", "/data"),
    ]
    proc = make_proc(tmp_path, cgroup=["0::/"], pid1_cgroup=["0::/"], mountinfo=mounts)
    info = detect_self(proc, {})
    assert (info.container_id, info.container_runtime) == (CID, "docker")
    assert info.host_pid_namespace is False
    assert info.attribution_note == ATTRIBUTION_NOTE


def test_mountinfo_with_separate_data_root_and_escaped_spaces(tmp_path: Path) -> None:
    mounts = [
        mount(2, r"/data\040root/containers/" + CID + "/hostname", "/etc/hostname"),
    ]
    proc = make_proc(tmp_path, cgroup=["0::/"], pid1_cgroup=["0::/"], mountinfo=mounts)
    info = detect_self(proc, {})
    assert (info.container_id, info.container_runtime) == (CID, None)


def test_mountinfo_nerdctl(tmp_path: Path) -> None:
    mounts = [mount(2, f"/var/lib/nerdctl/1935db59/containers/default/{CID}/hostname",
                    "/etc/hostname")]
    proc = make_proc(tmp_path, cgroup=["0::/"], mountinfo=mounts)
    assert detect_self(proc, {}).container_runtime == "containerd"


def test_mountinfo_ignores_short_and_session_ids(tmp_path: Path) -> None:
    mounts = [
        mount(2, "/var/lib/docker/containers/3f2a9c1be0d7/hostname", "/etc/hostname"),
        mount(3, "/run/user/1000/session-3.scope/hosts", "/etc/hosts"),
        mount(4, f"/var/lib/other/{CID}/resolv.conf", "/etc/resolv.conf"),
    ]
    proc = make_proc(tmp_path, cgroup=["0::/user.slice/user-1000.slice/session-3.scope"],
                     mountinfo=mounts, ns_pid=INIT_NS)
    info = detect_self(proc, {})
    assert info.container_id is None and not info.in_container


def test_host_pid_namespace_from_namespace_link(tmp_path: Path) -> None:
    line = f"0::/system.slice/docker-{CID}.scope"
    proc = make_proc(tmp_path, cgroup=[line], pid1_cgroup=None, ns_pid=INIT_NS)
    info = detect_self(proc, {})
    assert info.container_id == CID
    assert info.host_pid_namespace is True
    assert info.attribution_note is None


def test_host_pid_namespace_from_pid1_cgroup(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, cgroup=[f"0::/system.slice/docker-{CID}.scope"],
                     pid1_cgroup=["0::/init.scope"], ns_pid=None)
    info = detect_self(proc, {})
    assert info.host_pid_namespace is True
    assert info.attribution_note is None


def test_host_pid_namespace_with_private_cgroup_namespace(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, cgroup=["0::/"], pid1_cgroup=["0::/../../init.scope"],
                     mountinfo=DOCKER_MOUNTS, ns_pid=None)
    info = detect_self(proc, {})
    assert info.container_id == CID
    assert info.host_pid_namespace is True


def test_pid1_in_a_container_means_private_pid_namespace(tmp_path: Path) -> None:
    line = f"0::/system.slice/docker-{CID}.scope"
    proc = make_proc(tmp_path, cgroup=[line], pid1_cgroup=[line], ns_pid=None)
    assert detect_self(proc, {}).host_pid_namespace is False


def test_unreadable_pid1_leaves_the_namespace_unknown(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, cgroup=[f"0::/system.slice/docker-{CID}.scope"],
                     pid1_cgroup=None, ns_pid=None)
    info = detect_self(proc, {})
    assert info.host_pid_namespace is None
    assert info.attribution_note == ATTRIBUTION_NOTE


def test_missing_proc_tree(tmp_path: Path) -> None:
    info = detect_self(str(tmp_path / "absent"), {"CUDA_VISIBLE_DEVICES": "none"})
    assert info.container_id is None and info.pod_uid is None
    assert info.host_pid_namespace is None and info.attribution_note is None
    assert info.uid == os.getuid()
    assert info.devices == ()
    assert attributes(str(tmp_path / "absent"), {"CUDA_VISIBLE_DEVICES": "none"})[
        "otel_gpu.device.ids"] == ()


def test_malformed_files(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_bytes(b"\xff\xfe garbage\n::\n0::\n")
    (proc / "self" / "mountinfo").write_bytes(b"1 2\n\x00\x00\n")
    (proc / "self" / "status").write_text("Uid:\tnot-a-number\n")
    info = detect_self(str(proc), {})
    assert info.container_id is None
    assert info.uid == os.getuid()


def test_unknown_uid_is_reported_as_number(tmp_path: Path) -> None:
    uid = unknown_uid()
    proc = make_proc(tmp_path, cgroup=["0::/"], uid=uid)
    assert detect_self(proc, {}).user == str(uid)


def is_clean(value: str) -> bool:
    return len(value) <= MAX_VALUE_LENGTH and all(
        unicodedata.category(ch)[0] != "C" for ch in value)


def test_hostile_environment_values(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, cgroup=["0::/"], mountinfo=KUBELET_MOUNTS)
    env = {
        "POD_NAME": "\x1b[31mevil\x1b[0m\n" + "p" * 5000,
        "POD_NAMESPACE": "\u202eteam\u200b\x00",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "CUDA_VISIBLE_DEVICES": "GPU-a\r\n,\x07," + "x" * 300 + ","
        + ",".join(map(str, range(500))),
    }
    info = detect_self(proc, env)
    assert info.pod_name is not None and info.pod_name.startswith("[31mevil[0mppp")
    assert len(info.pod_name) == MAX_VALUE_LENGTH
    assert info.pod_namespace == "team"
    assert info.devices is not None
    assert info.devices[:2] == ("GPU-a", "x" * MAX_VALUE_LENGTH)
    assert len(info.devices) == 128
    attrs = attributes(proc, env)
    for key, value in attrs.items():
        values = value if isinstance(value, tuple) else (value,)
        assert all(isinstance(v, str) and is_clean(v) for v in values), key


def test_undecodable_and_blank_values() -> None:
    assert clean_value("ab\udcffcd") == "abcd"
    assert clean_value(" \t\x00 ") is None
    assert clean_value(None) is None
    assert clean_value("a" * 200 + "\x00") == "a" * MAX_VALUE_LENGTH


def test_blank_downward_api_value_falls_through(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, cgroup=["0::/"])
    env = {"POD_NAME": "\x00", "K8S_POD_NAME": "real-pod", "KUBERNETES_SERVICE_HOST": "x",
           "HOSTNAME": "host"}
    assert detect_self(proc, env).pod_name == "real-pod"


def test_real_proc_of_this_process() -> None:
    info = detect_self()
    uid = os.getuid()
    try:
        expected_user = pwd.getpwuid(uid).pw_name
    except KeyError:
        expected_user = str(uid)
    assert info.uid == uid
    assert info.user == expected_user
    devices = visible_devices()
    assert info.devices == (None if devices is None else tuple(devices))
    assert info.container_id is None or len(info.container_id) == 64
    if not info.in_container:
        assert info.attribution_note is None
    resource = OtelGpuResourceDetector().detect()
    assert resource.attributes["process.owner"] == expected_user
    assert all(not str(v).startswith("session") for v in resource.attributes.values())


def test_detector_loads_through_the_sdk_entry_point() -> None:
    names = importlib.metadata.entry_points(group="opentelemetry_resource_detector").names
    if "otel_gpu" not in names:
        pytest.skip("the otel_gpu resource detector entry point is not installed; reinstall "
                    "the package (pip install -e .) after adding it to pyproject.toml")
    code = (
        "import json\n"
        "from opentelemetry.sdk.resources import Resource\n"
        "print(json.dumps(dict(Resource.create().attributes)))\n"
    )
    env = {**os.environ, "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel_gpu",
           "CUDA_VISIBLE_DEVICES": "GPU-0f1e,3", "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=wins"}
    env.pop("OTEL_SDK_DISABLED", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Failed to load resource detector" not in result.stderr
    attrs = json.loads(result.stdout)
    assert attrs["otel_gpu.device.ids"] == ["GPU-0f1e", "3"]
    assert attrs["process.owner"] == detect_self().user
    assert attrs["k8s.pod.name"] == "wins"  # OTEL_RESOURCE_ATTRIBUTES stays last
