"""``otel-gpu doctor``'s security checks, run as an unprivileged user over a planted host tree:
every planted readable key is found by path, mode and owner, and no key material is printed."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_gpu.cli.doctor import OK, WARN, report_document, report_table
from otel_gpu.cli.doctor_security import (
    check_containers,
    check_docker_group,
    check_hidepid,
    container_risks,
    run_security_checks,
)
from otel_gpu.simulate.docker_api import serve_docker_api

NOBODY = 65534
DOCKER_GID = 4242
SECRET = "sekrit-" + secrets.token_hex(16)


@pytest.fixture
def host() -> Iterator[Path]:
    """A host tree others can traverse (a test's tmp_path is private to root)."""
    top = Path(tempfile.mkdtemp(prefix="otel-gpu-security-", dir="/tmp"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def plant(root: Path, relative: str, text: str, mode: int = 0o644) -> Path:
    path = root / relative
    for parent in reversed(path.relative_to(root).parents):
        directory = root / parent
        directory.mkdir(exist_ok=True)
        directory.chmod(0o755)
    path.write_text(text)
    path.chmod(mode)
    return path


def key_text(kind: str = "OPENSSH") -> str:
    return f"-----BEGIN {kind} PRIVATE KEY-----\n{SECRET}\n-----END {kind} PRIVATE KEY-----\n"


EXPOSED = {
    "/home/alice/.ssh/id_ed25519": "private key",
    "/home/alice/.kube/config": "kubeconfig",
    "/home/alice/nvidia/keys/cluster.pem": "private key",
    "/opt/deepops/config/artifacts/admin.conf": "kubeconfig",
    "/etc/docker/key.json": "key or credentials file",
    "/etc/docker/certs.d/registry.local/client.key": "private key",
    "/root/.docker/config.json": "registry credentials",
}


def plant_host(root: Path, docker_gid: int) -> None:
    plant(root, "etc/passwd", "root:x:0:0::/root:/bin/bash\n"
                              "alice:x:1000:1000::/home/alice:/bin/sh\n"
                              "bob:x:1001:1001::/home/bob:/bin/sh\n"
                              f"carol:x:1002:{docker_gid}::/home/carol:/bin/sh\n")
    plant(root, "etc/group", "root:x:0:\nalice:x:1000:\nbob:x:1001:\n"
                             f"docker:x:{docker_gid}:alice\n")
    plant(root, "home/alice/.ssh/id_ed25519", key_text())
    plant(root, "home/alice/.ssh/id_ed25519.pub", f"ssh-ed25519 AAAA{SECRET} alice@dgx\n")
    plant(root, "home/alice/.ssh/authorized_keys", f"ssh-ed25519 AAAA{SECRET}\n")
    plant(root, "home/alice/.kube/config", "apiVersion: v1\nkind: Config\nusers:\n- user:\n"
                                           f"    client-key-data: {SECRET}\n")
    plant(root, "home/alice/nvidia/keys/cluster.pem", key_text("RSA"))
    plant(root, "home/alice/notes.txt", f"not a key {SECRET}\n")
    plant(root, "opt/deepops/config/artifacts/admin.conf",
          f"apiVersion: v1\nkind: Config\nusers:\n- user:\n    token: {SECRET}\n")
    plant(root, "etc/docker/key.json", json.dumps({"d": SECRET}))
    plant(root, "etc/docker/daemon.json", json.dumps({"runtimes": {"nvidia": {}}}))
    plant(root, "etc/docker/certs.d/registry.local/client.key", key_text("EC"))
    plant(root, "root/.docker/config.json", json.dumps({"auths": {"nvcr.io": {"auth": SECRET}}}))
    # kept private: a 0600 key, and a readable key behind a 0700 home that others cannot enter
    plant(root, "home/carol/.ssh/id_rsa", key_text(), mode=0o600)
    plant(root, "home/bob/.ssh/id_rsa", key_text())
    (root / "home" / "bob").chmod(0o700)
    (root / "home" / "carol").chmod(0o750)
    (root / "home" / "alice").chmod(0o755)
    plant(root, "proc/self/mounts", "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n")
    plant(root, "raid/bob/results.csv", "epoch,loss\n")  # a user's directory on the data RAID
    plant(root, "raid/datasets/imagenet.txt", "shared on purpose\n")  # not named after a user
    if os.geteuid() == 0:
        for path in [root / "home" / "alice", *(root / "home" / "alice").rglob("*")]:
            os.chown(path, 1000, 1000)


CONTAINERS = [
    {"id": "a" * 64, "inspect": {"Id": "a" * 64, "Name": "/alice-root",
                                 "HostConfig": {"Privileged": True}, "Mounts": []}},
    {"id": "b" * 64, "inspect": {"Id": "b" * 64, "Name": "/bob-hostfs", "HostConfig": {},
                                 "Mounts": [{"Type": "bind", "Source": "/",
                                             "Destination": "/host"}]}},
    {"id": "c" * 64, "inspect": {"Id": "c" * 64, "Name": "/carol-train",
                                 "HostConfig": {"Binds": ["/data/carol:/data:ro"]},
                                 "Mounts": [{"Type": "bind", "Source": "/data/carol"}]}},
]


def run_unprivileged(root: Path, socket_path: str) -> dict:
    """The checks in a forked child that dropped to nobody (plus the docker group), as a tenant
    or an unprivileged agent would run them; when not root, as this user."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([DOCKER_GID])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            checks = run_security_checks(root=str(root), proc_root=str(root / "proc"),
                                         docker_socket=socket_path)
            answer = {"uid": os.getuid(), "table": report_table(checks),
                      "doc": report_document(checks)}
        except BaseException:
            answer = {"error": traceback.format_exc()}
        with os.fdopen(write_end, "w") as out:
            json.dump(answer, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer_pipe:
        text = answer_pipe.read()
    os.waitpid(pid, 0)
    answer = json.loads(text)
    assert "error" not in answer, answer.get("error")
    return answer


def test_unprivileged_checks_find_each_planted_key_and_print_no_secret(host: Path) -> None:
    root = host / "root"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    docker_gid = DOCKER_GID if os.geteuid() == 0 else os.getgid()
    plant_host(root, docker_gid)
    socket_path = str(host / "docker.sock")
    with serve_docker_api(socket_path, CONTAINERS):
        if os.geteuid() == 0:
            os.chown(socket_path, 0, DOCKER_GID)
        os.chmod(socket_path, 0o660)
        answer = run_unprivileged(root, socket_path)

    if os.geteuid() == 0:
        assert answer["uid"] == NOBODY
    assert answer["uid"] != 0
    printed = answer["table"] + json.dumps(answer["doc"])
    assert SECRET not in printed
    assert "PRIVATE KEY" not in printed
    checks = {c["name"]: c for c in answer["doc"]["checks"]}

    credentials = checks["credentials"]
    assert credentials["status"] == WARN
    for path, kind in EXPOSED.items():
        assert f"{path} (-rw-r--r-- " in credentials["message"], path
        assert f", {kind})" in credentials["message"].split(path, 1)[1], path
    assert f"{len(EXPOSED)} key or credentials files" in credentials["message"]
    for private in ("/home/bob/.ssh/id_rsa", "/home/carol/.ssh/id_rsa", "id_ed25519.pub",
                    "authorized_keys", "daemon.json", "notes.txt"):
        assert private not in credentials["message"]
    assert "chmod 600" in credentials["remedy"]

    homes = checks["home dirs"]
    owner = "alice" if os.geteuid() == 0 else "root" if os.getuid() == 0 else str(os.getuid())
    assert homes["status"] == WARN and f"/home/alice (drwxr-xr-x {owner})" in homes["message"]
    if os.geteuid() == 0:
        assert "/home/alice/.ssh/id_ed25519 (-rw-r--r-- alice:alice, private key)" in \
            credentials["message"]
    assert "/home/bob" not in homes["message"] and "/home/carol" not in homes["message"]
    assert "/raid/bob (drwxr-xr-x " in homes["message"]
    assert "/raid/datasets" not in homes["message"]

    group = checks["docker group"]
    assert group["status"] == WARN and "group docker" in group["message"]
    assert "alice, carol" in group["message"] and "root-equivalent" in group["message"]
    assert "gpasswd -d" in group["remedy"]

    containers = checks["containers"]
    assert containers["status"] == WARN
    assert "alice-root (privileged)" in containers["message"]
    assert "bob-hostfs (host / mounted)" in containers["message"]
    assert "carol-train" not in containers["message"]

    assert checks["hidepid"]["status"] == WARN and "hidepid=" in checks["hidepid"]["remedy"]


def test_a_tidy_host_has_no_findings(host: Path) -> None:
    root = host / "root"
    plant(root, "etc/passwd", "alice:x:1000:1000::/home/alice:/bin/sh\n")
    plant(root, "etc/group", "docker:x:998:\n")
    plant(root, "home/alice/.ssh/id_ed25519", key_text(), mode=0o600)
    (root / "home" / "alice").chmod(0o700)
    plant(root, "proc/self/mounts", "proc /proc proc rw,hidepid=invisible,gid=1500 0 0\n")
    checks = run_security_checks(root=str(root), proc_root=str(root / "proc"),
                                 docker_socket=str(host / "absent.sock"))
    assert [(c.name, c.status) for c in checks] == [
        ("home dirs", OK), ("credentials", OK), ("docker group", OK), ("containers", OK),
        ("hidepid", OK)]
    assert SECRET not in report_table(checks)


def test_a_socket_writable_by_everyone_is_reported(host: Path) -> None:
    plant(host, "etc/group", "docker:x:998:\n")
    socket_path = str(host / "docker.sock")
    with serve_docker_api(socket_path, []):
        os.chmod(socket_path, 0o666)
        (check,) = check_docker_group(socket_path, str(host))
        (listed,) = check_containers(socket_path)
    assert check.status == WARN and "writable by every user" in check.message
    assert stat.filemode(0o140666) in check.message
    assert listed.status == OK and "none of 0" in listed.message


def test_docker_answering_garbage_is_a_warning_not_a_crash(host: Path) -> None:
    socket_path = str(host / "docker.sock")
    broken = [{"id": "d" * 64, "raw": b"{not json"}]
    with serve_docker_api(socket_path, broken):
        (listed,) = check_containers(socket_path)
    assert listed.status == OK and "none of 1" in listed.message


@pytest.mark.parametrize(("doc", "risks"), [
    ({"HostConfig": {"Privileged": True, "Binds": ["/:/host:ro"]}}, ["privileged",
                                                                     "host / mounted"]),
    ({"HostConfig": {"Privileged": "yes"}, "Mounts": "nonsense"}, []),
    ({"HostConfig": None, "Mounts": [None, {"Source": "/srv"}]}, []),
])
def test_container_risks_read_only_well_formed_fields(doc: dict, risks: list[str]) -> None:
    assert container_risks(doc) == risks


def test_hidepid_present(tmp_path: Path) -> None:
    plant(tmp_path, "self/mounts", "proc /proc proc rw,hidepid=2 0 0\n")
    (check,) = check_hidepid(str(tmp_path))
    assert check.status == OK and "hidepid=2" in check.message
