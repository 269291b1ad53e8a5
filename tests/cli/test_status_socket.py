"""The agent's status socket on the simulated dgx-a100: each asker sees its own share, decided by
the kernel's peer credentials (real uids through SO_PEERCRED, containers through the peer pid's
cgroup), never by what it asks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runner import ROOT
from status_agent import CONTAINERS, Agent, shared_place

from otel_gpu.cli.status_server import SCHEMA, ask_agent

# Asking as other uids needs root; the scoping itself is also tested with injected credentials
# in test_status_server.py, which runs as any user.
needs_root = pytest.mark.skipif(not hasattr(os, "setuid") or os.geteuid() != 0,
                                reason="asking as other uids needs root")

ALICE, CAROL = 1000, 1002


@pytest.fixture
def place() -> Iterator[Path]:
    yield from shared_place()


def _names(doc: dict[str, Any]) -> set[str]:
    return {w["attributes"].get("container.name") or w["attributes"].get("k8s.pod.name", "")
            for w in doc["workloads"]}


def _devices(doc: dict[str, Any]) -> set[str]:
    return {d["hw.name"] for w in doc["workloads"] for d in w["devices"]}


def _rules(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(w["attributes"].get("container.name", ""), i["rule"])
            for w in doc["workloads"] for i in w["insights"]}


@needs_root
def test_each_uid_and_container_sees_only_its_share(place: Path, monkeypatch) -> None:
    run = Agent(place, cycles=3, monkeypatch=monkeypatch)

    def check() -> None:
        carol = run.status_as(CAROL)
        assert carol["me"]["scope"] == "user" and carol["me"]["user"] == "carol"
        assert _names(carol) == {"carol-finetune", "carol-notebook"}
        assert _devices(carol) == {"gpu0/mig0", "gpu1/mig2"}
        assert "alice" not in json.dumps(carol) and "bob" not in json.dumps(carol)
        alice = run.status_as(ALICE)
        assert _names(alice) == {"alice-train", "alice-notebook", "alice-dev", "alice-eval-0"}
        assert "carol" not in json.dumps(alice) and "bob" not in json.dumps(alice)
        # root on the host sees everyone's
        root = run.status_as(0)
        assert root["me"]["scope"] == "all"
        assert _names(root) >= _names(alice) | _names(carol) | {"bob-job-0"}
        # in a container, the container decides, whatever the uid (root there included)
        notebook = run.ask_as(CAROL, {}, container="carol-notebook")
        assert notebook["scope"]["kind"] == "container"
        assert notebook["scope"]["container.id"] == CONTAINERS["carol-notebook"].id
        held = notebook["snapshot"]["assignments"]
        assert [a["attributes"]["container.name"] for a in held] == ["carol-notebook"]
        assert notebook["snapshot"]["workloads"] == []
        boxed_root = run.ask_as(0, {"as_user": "alice"}, container="alice-train")
        assert boxed_root["scope"]["kind"] == "container" and boxed_root["ignored"] == ["as_user"]
        names = {w["attributes"]["container.name"] for w in boxed_root["snapshot"]["workloads"]}
        assert names == {"alice-train"}
        for reply in (notebook, boxed_root):
            assert reply["snapshot"]["host"] is None
            assert all(not g["processes"] for g in reply["snapshot"]["gpus"])

    run.checks[2] = check
    run.run()


@needs_root
@pytest.mark.parametrize("request_doc", [
    {"as_user": "alice"}, {"as_user": "0"}, {"scope": "all"}, {"kind": "all", "uid": 0},
    {"as_user": "root", "container.id": CONTAINERS["alice-train"].id},
])
def test_a_tenant_cannot_widen_its_view_by_any_argument(place: Path, monkeypatch,
                                                        request_doc: dict[str, Any]) -> None:
    run = Agent(place, cycles=2, monkeypatch=monkeypatch)
    seen: dict[str, Any] = {}

    def check() -> None:
        seen["plain"] = run.ask_as(CAROL, {})
        seen["asked"] = run.ask_as(CAROL, request_doc)
        seen["cli"] = run.status_as(CAROL, "--as-user", "alice")
        seen["cli_note"] = run.stderr

    run.checks[1] = check
    run.run()
    plain, asked = seen["plain"], seen["asked"]
    assert asked["scope"] == plain["scope"] == {**plain["scope"], "kind": "user", "uid": CAROL}
    assert asked["snapshot"] == plain["snapshot"]
    assert asked["ignored"] == sorted(k for k in request_doc if k != "schema")
    assert _names(seen["cli"]) == {"carol-finetune", "carol-notebook"}
    assert "your own share only (ignored: as_user)" in seen["cli_note"]


@needs_root
def test_after_200_cycles_carol_sees_device_idle_for_her_held_slice(place: Path,
                                                                    monkeypatch) -> None:
    run = Agent(place, cycles=202, monkeypatch=monkeypatch)
    seen: dict[int, dict[str, Any]] = {}
    run.checks[2] = lambda: seen.setdefault(2, run.status_as(CAROL))
    run.checks[200] = lambda: seen.setdefault(200, run.status_as(CAROL))
    run.run()
    assert ("carol-notebook", "device_idle") not in _rules(seen[2])  # 20 s: not yet
    assert ("carol-notebook", "device_idle") in _rules(seen[200])
    (notebook,) = [w for w in seen[200]["workloads"]
                   if w["attributes"].get("container.name") == "carol-notebook"]
    (idle,) = [i for i in notebook["insights"] if i["rule"] == "device_idle"]
    assert idle["attributes"]["hw.name"] == "gpu1/mig2" and "Release the device" in idle["remedy"]
    assert notebook["memory"]["limit_bytes"] == CONTAINERS["carol-notebook"].resources \
        .memory_limit_bytes


def test_status_falls_back_to_its_own_collection_in_one_line(place: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "otel_gpu.cli", "status", "--format", "json", "--cycles", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "OTEL_GPU_STATUS_SOCKET": str(place / "nobody.sock")},
    )
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "no agent answered" in line]
    assert len(notes) == 1 and "collecting here for 1 cycle" in notes[0]
    assert json.loads(result.stdout)["schema"]


def test_the_reply_names_its_schema(place: Path, monkeypatch) -> None:
    run = Agent(place, cycles=2, monkeypatch=monkeypatch)
    seen: dict[str, Any] = {}
    run.checks[1] = lambda: seen.setdefault("root", ask_agent(run.socket))
    run.run()
    reply = seen["root"]
    assert reply["schema"] == SCHEMA and reply["scope"]["kind"] == "all"
    assert {i["rule"] for i in reply["insights"]} == {
        i["rule"] for i in reply["snapshot"]["insights"]}
    assert not os.path.exists(run.socket)  # the agent removed it at shutdown
