"""Every parser of outside input, driven with generated input: nothing escapes, numbers stay
within int64 (and non-negative where the kernel says so), and text comes out clean and bounded."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import unicodedata
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_gpu.sources import proc_files, procfs
from otel_gpu.sources._text import INT64_MAX, MAX_TEXT, clean_text, parse_uid
from otel_gpu.sources.cgroup import CgroupReader, container_from_cgroup_lines, parse_cgroup_path
from otel_gpu.sources.docker import DockerClient
from otel_gpu.sources.kubelet import (
    ListPodResourcesResponse,
    _pods,
    pod_devices,
)
from otel_gpu.sources.mounts import parse_mounts, parse_mountstats

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Numbers as the kernel writes them, and as a hostile or broken file might.
number = st.one_of(st.integers(min_value=0, max_value=2**64 + 5).map(str),
                   st.integers(min_value=-(2**63), max_value=-1).map(str),
                   st.sampled_from(["1_000", "+5", "0x10", "١٢", "²", "", "nan",
                                    "18446744073709551616"]))
word = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
hostile_text = st.text(max_size=300)
blob = st.binary(max_size=600)


def lines_of(columns: st.SearchStrategy[str], min_size: int = 0) -> st.SearchStrategy[bytes]:
    line = st.lists(columns, min_size=min_size, max_size=20).map(" ".join)
    return st.lists(line, max_size=8).map(lambda ls: "\n".join(ls).encode("utf-8", "replace"))


column = st.one_of(number, word)


def check_text(value: Any) -> None:
    assert isinstance(value, str)
    assert len(value) <= MAX_TEXT
    assert not any(unicodedata.category(c)[0] == "C" for c in value)
    assert "\u2028" not in value and "\u2029" not in value


def check_count(value: Any) -> None:
    assert isinstance(value, int) and 0 <= value <= INT64_MAX


def check_fields(obj: Any, non_negative: bool = True) -> None:
    for item in dataclasses.fields(obj):
        value = getattr(obj, item.name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            assert -INT64_MAX - 1 <= value <= INT64_MAX
            if non_negative:
                assert value >= 0, item.name
        elif isinstance(value, float):
            assert value == value and abs(value) < 2.0**64  # no NaN, no overflow
            if non_negative:
                assert value >= 0, item.name
        elif isinstance(value, str):
            check_text(value)


# -- /proc files ----------------------------------------------------------------------------------


@FAST
@given(st.one_of(blob, lines_of(column)), st.one_of(lines_of(column), blob))
def test_proc_stat_and_meminfo(stat: bytes, meminfo: bytes) -> None:
    modes, _ = proc_files.parse_proc_stat(b"cpu " + stat, 100.0)
    for value in (modes or {}).values():
        assert 0 <= value < 2.0**63
    values, _ = proc_files.parse_meminfo(meminfo)
    for value in values.values():
        check_count(value)
    memory = proc_files.memory_from_meminfo(values)
    if memory is not None:
        for value in memory:
            if value is not None:
                check_count(value)
    for value in (proc_files.swap_from_meminfo(values) or {}).values():
        check_count(value)


@FAST
@given(st.one_of(blob, lines_of(column, min_size=7)))
def test_diskstats(data: bytes) -> None:
    disks, _ = proc_files.parse_diskstats(data)
    for name, io in disks.items():
        check_text(name)
        check_fields(io)


@FAST
@given(st.one_of(blob, lines_of(column)), st.lists(st.tuples(word, st.lists(number, min_size=16,
                                                                            max_size=16))))
def test_net_dev(data: bytes, rows: list[tuple[str, list[str]]]) -> None:
    made = b"h1\nh2\n" + b"\n".join(f"{n}: {' '.join(c)}".encode("utf-8", "replace")
                                    for n, c in rows)
    for text in (data, made):
        networks, _ = proc_files.parse_net_dev(text)
        for name, io in networks.items():
            check_text(name)
            check_fields(io)


@FAST
@given(hostile_text, st.lists(column, max_size=30))
def test_pid_stat_and_status(comm: str, fields: list[str]) -> None:
    start, name = procfs._parse_stat(f"42 ({comm}) " + " ".join(fields))
    if start is not None:
        check_count(start)
    assert name is None or (len(name) <= MAX_TEXT and name.isprintable())
    uid = parse_uid(f"Name:\tx\nUid:\t{' '.join(fields[:4])}\n")
    assert uid is None or 0 <= uid < 2**32


# -- cgroups --------------------------------------------------------------------------------------


cgroup_segment = st.one_of(
    word,
    st.sampled_from(["docker", "kubepods.slice", "kubepods-burstable.slice", "..", "system.slice"]),
    st.from_regex(r"(docker|cri-containerd|crio|libpod)-[0-9a-f]{64}\.scope", fullmatch=True),
    st.from_regex(r"kubepods-(burstable-|besteffort-)?pod[0-9a-f_]{32,36}\.slice", fullmatch=True),
)
cgroup_path = st.lists(cgroup_segment, max_size=6).map(lambda p: "/" + "/".join(p))


@FAST
@given(cgroup_path, st.lists(st.tuples(st.sampled_from(["0", "1", "7", "x"]),
                                       st.sampled_from(["", "memory", "cpu,cpuacct", "name=x"]),
                                       cgroup_path)))
def test_cgroup_paths(path: str, lines: list[tuple[str, str, str]]) -> None:
    for ref in (parse_cgroup_path(path),
                container_from_cgroup_lines(":".join(line) for line in lines)):
        if ref is not None:
            assert len(ref.id) == 64 and set(ref.id) <= set("0123456789abcdef")
            assert ref.pod_uid is None or len(ref.pod_uid) <= 36


V2_FILES = ("cpu.stat", "cpu.max", "memory.current", "memory.max", "memory.events", "io.stat",
            "io.pressure", "memory.pressure")
V1_FILES = {"cpu,cpuacct": ("cpu.stat", "cpu.cfs_quota_us", "cpu.cfs_period_us",
                            "cpuacct.usage_user", "cpuacct.usage_sys"),
            "memory": ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.oom_control"),
            "blkio": ("blkio.throttle.io_service_bytes",)}
keyed = st.lists(st.tuples(st.sampled_from(["user_usec", "system_usec", "nr_periods",
                                             "nr_throttled", "throttled_usec", "oom_kill",
                                             "throttled_time", "8:0", "Read", "Write",
                                             "some avg10=1.00", "full"]),
                           number, st.sampled_from(["", "rbytes=", "wbytes=", "total="]))
                 ).map(lambda rows: "\n".join(f"{k} {p}{v}" for k, v, p in rows))
cgroup_file = st.one_of(number, keyed, hostile_text, st.sampled_from(["max", "max 100000"]),
                        st.tuples(number, number).map(" ".join))


@FAST
@given(st.fixed_dictionaries({name: cgroup_file for name in V2_FILES}),
       st.fixed_dictionaries({f"{d}/{n}": cgroup_file for d, names in V1_FILES.items()
                              for n in names}))
def test_cgroup_v1_and_v2_accounting(v2: dict[str, str], v1: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(f"{root}/v2/pod/c")
        open(f"{root}/v2/cgroup.controllers", "w").close()
        for name, text in v2.items():
            with open(f"{root}/v2/pod/c/{name}", "w", encoding="utf-8") as f:
                f.write(text)
        for path, text in v1.items():
            directory, name = path.split("/")
            os.makedirs(f"{root}/v1/{directory}/pod/c", exist_ok=True)
            with open(f"{root}/v1/{directory}/pod/c/{name}", "w", encoding="utf-8") as f:
                f.write(text)
        for reader in (CgroupReader(f"{root}/v2"), CgroupReader(f"{root}/v1")):
            resources = reader.read_path("/pod/c")
            assert resources is not None
            check_fields(resources)
            reader.take_errors()


mount_field = st.one_of(word, st.sampled_from(["nfs4", "fuse.sshfs", "cifs", "/data", "\\040",
                                              "nas:/e", "rw,vers=4.2", "ro", "0"]))
mountstats_line = st.one_of(
    st.lists(mount_field, max_size=8).map(" ".join),
    st.tuples(mount_field, mount_field, mount_field).map(
        lambda t: f"device {t[0]} mounted on {t[1]} with fstype {t[2]} statvers=1.1"),
    st.lists(number, max_size=10).map(lambda ns: "\tbytes:\t" + " ".join(ns)),
)


@FAST
@given(st.lists(st.lists(mount_field, max_size=8).map(" ".join), max_size=8).map("\n".join),
       st.lists(mountstats_line, max_size=10).map("\n".join))
def test_mounts_and_mountstats(mounts: str, mountstats: str) -> None:
    found, _ = parse_mounts(mounts)
    for mount in found:
        assert mount.mode in ("ro", "rw") and all(isinstance(f, str) for f in mount)
    counters, _ = parse_mountstats(mountstats)
    for read, written in counters.values():
        check_count(read)
        check_count(written)


# -- Docker and kubelet replies -------------------------------------------------------------------


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                      hostile_text)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(hostile_text, st.sampled_from(
                                ["Name", "Config", "HostConfig", "Image", "Labels", "Env",
                                 "Runtime", "DeviceRequests", "DeviceIDs", "Count", "Driver",
                                 "Capabilities", "com.docker.compose.project"])), inner,
                                max_size=5)),
    max_leaves=25,
)
inspect_doc = st.fixed_dictionaries(
    {},
    optional={
        "Name": json_value,
        "Config": st.fixed_dictionaries({}, optional={
            "Image": json_value, "Labels": st.dictionaries(hostile_text, json_value, max_size=3),
            "Env": st.lists(st.one_of(hostile_text, hostile_text.map(
                lambda t: f"NVIDIA_VISIBLE_DEVICES={t}")), max_size=3)}),
        "HostConfig": st.fixed_dictionaries({}, optional={
            "Runtime": st.one_of(st.just("nvidia"), json_value),
            "DeviceRequests": st.lists(st.fixed_dictionaries({}, optional={
                "Driver": st.one_of(st.just("nvidia"), json_value),
                "Count": json_value, "DeviceIDs": st.lists(hostile_text, max_size=3),
                "Capabilities": json_value}), max_size=3)}),
    },
)

CONTAINER = "a" * 64


@FAST
@given(inspect_doc)
def test_docker_inspect_answers(doc: dict[str, Any]) -> None:
    client = DockerClient("/nonexistent.sock", label_allowlist=["com.docker.compose.project"])
    meta = client._meta(CONTAINER, doc)
    check_text(meta.name)
    for text in (meta.image, meta.runtime, *meta.gpu_ids, *meta.labels.values()):
        if text is not None:
            check_text(text)
    assert meta.gpu_count is None or meta.gpu_count > 0


pod_item = st.fixed_dictionaries({}, optional={
    "metadata": st.one_of(json_value, st.fixed_dictionaries(
        {"uid": hostile_text, "name": hostile_text, "namespace": hostile_text})),
    "status": st.one_of(json_value, st.fixed_dictionaries({}, optional={
        "containerStatuses": st.lists(st.fixed_dictionaries({}, optional={
            "name": hostile_text, "image": hostile_text,
            "containerID": st.one_of(hostile_text, st.from_regex(
                r"(containerd|docker|cri-o|x)://[0-9a-f]{64}", fullmatch=True))}), max_size=3)
    })),
})


@FAST
@given(st.one_of(blob, st.lists(pod_item, max_size=4).map(
    lambda items: json.dumps({"items": items}).encode())))
def test_kubelet_pod_list_answers(body: bytes) -> None:
    pods = _pods(body)
    if isinstance(pods, str):
        return
    for uid, pod in pods.items():
        for text in (uid, pod.name, pod.namespace):
            check_text(text)
        for cid, container in pod.containers.items():
            assert len(cid) <= 64
            check_text(container.name)
            if container.image is not None:
                check_text(container.image)


@FAST
@given(st.lists(st.tuples(hostile_text, hostile_text, hostile_text,
                          st.one_of(st.just("nvidia.com/gpu"), hostile_text),
                          st.lists(hostile_text, max_size=3)), max_size=4),
       blob)
def test_kubelet_pod_resources_answers(rows: list[tuple], raw: bytes) -> None:
    response = ListPodResourcesResponse()
    for namespace, pod_name, container_name, resource, ids in rows:
        pod = response.pod_resources.add(name=pod_name, namespace=namespace)
        container = pod.containers.add(name=container_name)
        container.devices.add(resource_name=resource, device_ids=ids)
    for answer in (response, _parsed_or_empty(raw)):
        for device in pod_devices(answer):
            for text in (device.namespace, device.pod_name, device.container_name,
                         device.resource_name, *device.device_ids):
                check_text(text)


def _parsed_or_empty(raw: bytes) -> Any:
    try:
        return ListPodResourcesResponse.FromString(raw)
    except Exception:  # what the gRPC client turns into a recorded INTERNAL error
        return ListPodResourcesResponse()


def test_clean_text_keeps_ordinary_names() -> None:
    assert clean_text("alice-train_01.v2") == "alice-train_01.v2"
    assert clean_text("équipe/模型") == "équipe/模型"
