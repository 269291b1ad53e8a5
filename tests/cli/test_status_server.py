"""The status socket server under injected credentials (runs as any user), and under abuse:
malformed requests, slow clients and many clients never stop it answering, and never hold up
the agent's cycle."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from status_agent import CONTAINERS, Agent, shared_place

from otel_gpu.cli.status import view_from_agent
from otel_gpu.cli.status_server import (
    MAX_REQUEST_BYTES,
    SCHEMA,
    NoAgent,
    Peer,
    StatusServer,
    ask_agent,
)
from otel_gpu.cli.status_share import DecodeError, decode_snapshot, encode
from otel_gpu.collect.build import build_collector
from otel_gpu.snapshot import Snapshot

OPERATORS_GID = 4242


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    collector = build_collector("dgx-a100", 10.0)
    try:
        collector.start()
        for _ in range(2):
            latest = collector.collect()
        return latest
    finally:
        collector.close()


@pytest.fixture
def place() -> Iterator[Path]:
    yield from shared_place()


class Served:
    """A server whose peers are whoever ``as_peer`` says, over a stand-in /proc."""

    def __init__(self, place: Path, snapshot: Snapshot | None, **options: Any) -> None:
        self.peer = Peer(pid=4000, uid=1002, gid=1002)
        self.proc = place / "proc"
        users = {0: "root", 1000: "alice", 1001: "bob", 1002: "carol", 1500: "olga"}
        self.server = StatusServer(
            str(place / "run" / "status.sock"), credentials=lambda conn: self.peer,
            proc_root=str(self.proc), owner_name=users.get,
            is_operator=lambda peer: peer.gid == OPERATORS_GID, **options,
        )
        self.server.start()
        if snapshot is not None:
            self.server.publish(snapshot)

    def ask(self, peer: Peer, request: dict[str, Any] | None = None,
            container: str | None = None) -> dict[str, Any]:
        self.peer = peer
        if container is not None:
            (self.proc / str(peer.pid)).mkdir(exist_ok=True)
            (self.proc / str(peer.pid) / "cgroup").write_text(
                f"0::/system.slice/docker-{CONTAINERS[container].id}.scope\n")
        return ask_agent(self.server.path, request)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def served(place: Path, snapshot: Snapshot) -> Iterator[Served]:
    s = Served(place, snapshot)
    yield s
    s.close()


def _owners(reply: dict[str, Any]) -> set[str]:
    snap = reply["snapshot"]
    return {w["attributes"].get("process.owner") for w in snap["workloads"]} | {
        a["owner"] for a in snap["assignments"]}


def test_scopes_by_credentials(served: Served) -> None:
    carol = served.ask(Peer(4001, 1002, 1002))
    assert carol["scope"]["kind"] == "user" and _owners(carol) == {"carol"}
    olga = served.ask(Peer(4002, 1500, OPERATORS_GID))
    assert olga["scope"]["kind"] == "all" and _owners(olga) == {"alice", "bob", "carol"}
    assert olga["snapshot"]["host"] is not None
    narrowed = served.ask(Peer(4002, 1500, OPERATORS_GID), {"as_user": "bob"})
    assert narrowed["scope"]["kind"] == "user" and _owners(narrowed) == {"bob"}
    root = served.ask(Peer(4003, 0, 0))
    assert root["scope"]["kind"] == "all"
    boxed = served.ask(Peer(4004, 0, 0), {"as_user": "carol"}, container="alice-notebook")
    assert boxed["scope"]["kind"] == "container" and _owners(boxed) == {"alice"}
    assert {a["attributes"]["container.name"] for a in boxed["snapshot"]["assignments"]} == {
        "alice-notebook"}
    unseen = served.ask(Peer(0, 1002, 1002))
    assert unseen["scope"]["kind"] == "none" and unseen["snapshot"] is None
    # no pid leaves, for anyone
    for reply in (carol, olga, root, boxed):
        assert all(not g["processes"] and all(not m["processes"] for m in g["mig_devices"])
                   for g in reply["snapshot"]["gpus"])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=MAX_REQUEST_BYTES + 64),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
    .map(lambda doc: json.dumps(doc).encode() + b"\n"),
))
def test_fuzzed_requests_get_an_answer_never_a_crash(served: Served, data: bytes) -> None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(served.server.path)
    served.peer = Peer(4001, 1002, 1002)
    try:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        body = b"".join(iter(lambda: conn.recv(1 << 16), b""))
    except (BrokenPipeError, ConnectionResetError):
        body = b""  # the server read its limit and answered before all was sent
    finally:
        conn.close()
    if body:
        reply = json.loads(body)
        assert reply["schema"] == SCHEMA
        if "error" not in reply:
            assert reply["scope"]["kind"] == "user" and reply["scope"]["uid"] == 1002
            assert _owners(reply) <= {"carol"}
    assert served.server.stats.failed == 0, served.server.stats.errors
    assert served.ask(Peer(4001, 1002, 1002))["scope"]["kind"] == "user"  # still serving


def test_many_clients_are_answered_or_told_busy(place: Path, snapshot: Snapshot) -> None:
    s = Served(place, snapshot, max_clients=2, deadline_s=5.0)
    try:
        slow = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        for conn in slow:  # they take both slots and send nothing
            conn.connect(s.server.path)
        outcomes: list[str] = []

        def one() -> None:
            try:
                outcomes.append(ask_agent(s.server.path)["scope"]["kind"])
            except NoAgent as err:
                outcomes.append(str(err))

        threads = [threading.Thread(target=one) for _ in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(outcomes) == 30
        assert set(outcomes) == {"the agent answered: busy"}
        for conn in slow:
            conn.close()
    finally:
        s.close()
    assert s.server.stats.busy == 30


def test_slow_clients_meet_the_deadline(place: Path, snapshot: Snapshot) -> None:
    s = Served(place, snapshot, max_clients=4, deadline_s=0.3)
    try:
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.settimeout(30)
        slow.connect(s.server.path)
        slow.sendall(b'{"as_user": ')  # and never the rest
        assert slow.recv(1 << 16) == b""  # closed at the deadline, without an answer
        slow.close()
        assert s.server.stats.deadline == 1
        assert s.ask(Peer(4001, 1002, 1002))["scope"]["kind"] == "user"
    finally:
        s.close()


def test_the_agent_cycles_on_while_clients_hold_the_server(place: Path, monkeypatch) -> None:
    """With every connection slot held by clients that send half a request, and more clients
    knocking, the agent runs its cycles on: publish() is the cycle's only contact with them.
    The deadline is far longer than the run, so had a cycle waited for a client, the held
    connections would have expired before the count of cycles was reached."""
    run = Agent(place, cycles=40, monkeypatch=monkeypatch, deadline_s=120.0, max_clients=8)
    held: list[socket.socket] = []
    seen: dict[str, Any] = {}

    def storm() -> None:
        assert run.server is not None
        seen["published_before"] = run.server.stats.published
        for _ in range(12):  # more than the server's slots
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(run.socket)
            held.append(conn)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # told busy
                conn.sendall(b"{")  # a request that never ends
        malformed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        malformed.connect(run.socket)
        held.append(malformed)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            malformed.sendall(b"\xff" * (MAX_REQUEST_BYTES + 1))

    def after() -> None:
        assert run.server is not None
        stats = run.server.stats
        seen.update(published=stats.published - seen["published_before"],
                    deadline=stats.deadline, served=stats.served, busy=stats.busy,
                    failed=stats.failed)

    run.checks[5] = storm
    run.checks[35] = after
    try:
        run.run()
    finally:
        for conn in held:
            conn.close()
    # 30 cycles published while 8 connections were held open and unanswered
    assert seen == {"published_before": 5, "published": 30, "deadline": 0, "served": 0,
                    "busy": 5, "failed": 0}
    assert run.done == 39  # every cycle but the last waited once


def test_the_snapshot_survives_json_and_later_fields(snapshot: Snapshot) -> None:
    doc = json.loads(json.dumps(encode(snapshot)))
    assert decode_snapshot(doc) == snapshot
    doc["added_later"] = {"x": 1}
    doc["gpus"][0]["added_later"] = 3
    del doc["durations_s"]  # a field the other side does not have yet takes its default
    back = decode_snapshot(doc)
    assert back.gpus == snapshot.gpus and back.durations_s == {}


@pytest.mark.parametrize("doc", [None, [], {"cycle": "x"}, {"cycle": 1},
                                 {"cycle": 1, "timestamp": 0, "driver_available": True,
                                  "gpus": [{"index": 0}]}])
def test_a_reply_that_is_no_snapshot_is_refused(doc: Any) -> None:
    with pytest.raises(DecodeError):
        decode_snapshot(doc)
    reply = {"schema": SCHEMA, "scope": {"kind": "user"}, "snapshot": doc or {"cycle": "x"}}
    with pytest.raises(NoAgent):
        view_from_agent(reply)


def test_a_tenant_share_keeps_its_disk_and_none_of_the_environments(snapshot: Snapshot) -> None:
    from otel_gpu.cli.status_share import USER, Scope, share_of

    assert snapshot.environments  # alice-train's and carol-finetune's, one image
    share = share_of(snapshot, Scope(USER, uid=1000, user="alice"))
    mine = {c.attributes.get("container.name"): c.storage for c in share.containers}
    train = mine["alice-train"]
    assert train is not None and train.shm_size_bytes == 16 << 30 and train.data_workers == 8
    assert "carol-finetune" not in mine
    # Which containers of which users carry an environment is the operator's to see.
    assert share.environments == ()
    assert decode_snapshot(json.loads(json.dumps(encode(share)))) == share
