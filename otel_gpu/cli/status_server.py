"""The agent's status socket: each tenant asks for its own share of the agent's latest Snapshot.

A client connects to the Unix socket, may send one request line (a JSON object, at most
``MAX_REQUEST_BYTES``), and reads one JSON reply (schema ``otel-gpu.status/1``), then the server
closes the connection. Who asks is decided by the kernel, never by the request: ``SO_PEERCRED``
gives the peer's uid and pid, and the pid's cgroup (``/proc/<pid>/cgroup``) its container or pod.

- A peer in a container or pod gets that container's (or pod's) share, whatever its uid: root in
  a container is not the host's operator.
- A peer on the host whose uid is 0, or who is in the operator group, gets everything; it may
  narrow the reply to one user with ``{"as_user": NAME}``.
- Any other peer gets its own user's share; request arguments cannot widen it (they are ignored,
  and the reply's ``ignored`` lists them).
- A peer whose pid cannot be seen gets nothing (scope ``none``).

The agent's cycle only calls ``publish()``, which replaces one reference; everything else runs
on the server's threads: one accept thread and at most ``max_clients`` connection threads, each
connection bounded by ``deadline_s`` from accept to the last byte. A connection beyond
``max_clients`` is answered ``busy`` at once and closed.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from otel_gpu.cli.status_share import ALL, CONTAINER, NONE, USER, Scope, encode, share_of
from otel_gpu.snapshot import Snapshot
from otel_gpu.sources.cgroup import container_from_cgroup_lines

SCHEMA = "otel-gpu.status/1"
DEFAULT_MODE = 0o666
MAX_REQUEST_BYTES = 4096
MAX_REPLY_BYTES = 64 << 20
DEFAULT_DEADLINE_S = 2.0
DEFAULT_MAX_CLIENTS = 8
_SHARES = 256  # replies kept per published Snapshot, one per scope asked
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (socket(7), SO_PEERCRED)


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(conn: socket.socket) -> Peer:
    """The connecting process's pid, uid and gid, as the kernel recorded them at connect."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid)


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def in_group(group: str | None) -> Callable[[Peer], bool]:
    """Whether a peer is in ``group`` (its primary gid, or listed as a member); never for None."""

    def check(peer: Peer) -> bool:
        if not group:
            return False
        try:
            entry = grp.getgrnam(group)
        except KeyError:
            return False
        name = user_name(peer.uid)
        return peer.gid == entry.gr_gid or (name is not None and name in entry.gr_mem) or (
            name is not None and entry.gr_gid in _groups_of(name, peer.gid))

    return check


def _groups_of(name: str, gid: int) -> list[int]:
    try:
        return os.getgrouplist(name, gid)
    except OSError:
        return []


@dataclass
class ServerStats:
    """What the server did, for tests and for the agent's log."""

    served: int = 0
    malformed: int = 0
    deadline: int = 0
    busy: int = 0
    failed: int = 0
    published: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class StatusServer:
    """Serves the latest published Snapshot on a Unix socket; see the module's description.

    ``proc_root`` is where a peer's pid is looked up; ``is_operator`` decides who gets
    everything besides root; ``owner_name`` spells a uid as ``process.owner`` does.
    """

    def __init__(
        self,
        path: str,
        *,
        mode: int = DEFAULT_MODE,
        is_operator: Callable[[Peer], bool] | None = None,
        owner_name: Callable[[int], str | None] = user_name,
        proc_root: str = "/proc",
        deadline_s: float = DEFAULT_DEADLINE_S,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        host: str = "",
        simulated: bool = False,
        interval_s: float = 0.0,
        credentials: Callable[[socket.socket], Peer] = peer_credentials,
    ) -> None:
        self.path = path
        self.mode = mode
        self.is_operator = is_operator or in_group(None)
        self.owner_name = owner_name
        self.proc_root = proc_root
        self.deadline_s = deadline_s
        self.host = host
        self.simulated = simulated
        self.interval_s = interval_s
        self.stats = ServerStats()
        self._credentials = credentials
        self._slots = threading.BoundedSemaphore(max_clients)
        self._latest: tuple[Snapshot | None, Snapshot] | None = None  # (previous, latest)
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards stats and shares; publish() never takes it
        self._shares_of: tuple[Snapshot | None, Snapshot] | None = None
        self._shares: dict[Scope, str] = {}

    # -- the agent's side --

    def publish(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the one served; one reference assignment, never waits."""
        latest = self._latest
        self._latest = (latest[1] if latest is not None else None, snapshot)
        self.stats.published += 1

    def start(self) -> None:
        """Bind the socket (taking over a stale one, never a live one) and start serving.
        Raises ``OSError`` when it cannot."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        _remove_stale(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            os.chmod(self.path, self.mode)
            listener.listen(64)
            listener.settimeout(0.2)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="otel-gpu-status",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self._listener = None

    # -- the server's side --

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)  # e.g. out of descriptors: let connections finish
                continue
            if not self._slots.acquire(blocking=False):
                self._count("busy")
                _send_and_close(conn, {"schema": SCHEMA, "error": "busy"})
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name="otel-gpu-status-client")
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: this connection only goes unanswered
                self._slots.release()
                conn.close()
                self._count("failed", "RuntimeError")

    def _serve(self, conn: socket.socket) -> None:
        try:
            deadline = time.monotonic() + self.deadline_s
            outcome, body = self._answer(conn, deadline)
            if body is not None:
                _send_within(conn, body, deadline)
            self._count(outcome)
        except TimeoutError:
            self._count("deadline")
        except Exception as err:  # a client's trouble costs its own connection only
            self._count("failed", type(err).__name__)
        finally:
            conn.close()
            self._slots.release()

    def _answer(self, conn: socket.socket, deadline: float) -> tuple[str, bytes | None]:
        peer = self._credentials(conn)
        request = _read_request(conn, deadline)
        if request is None:
            return "malformed", _line({"schema": SCHEMA, "error": "malformed request"})
        scope, ignored = self.scope_for(peer, request)
        head = json.dumps({
            "schema": SCHEMA,
            "scope": scope.to_dict(),
            "ignored": ignored,
            "agent": {"host": self.host, "simulated": self.simulated,
                      "interval_s": self.interval_s},
        }, separators=(",", ":"))
        return "served", (head[:-1] + "," + self._share_text(scope) + "}\n").encode()

    def _share_text(self, scope: Scope) -> str:
        """The ``snapshot``, ``previous`` and ``insights`` members of a reply to ``scope``,
        built once per published Snapshot and scope (at most ``_SHARES`` scopes are kept)."""
        latest = self._latest
        with self._lock:
            if self._shares_of is not latest:
                self._shares_of, self._shares = latest, {}
            cached = self._shares.get(scope)
        if cached is not None:
            return cached
        members: dict[str, Any] = {"snapshot": None, "previous": None, "insights": []}
        if latest is not None and scope.kind != NONE:
            previous, snapshot = latest
            share = share_of(snapshot, scope)
            members["snapshot"] = encode(share)
            members["insights"] = [i.to_dict() for i in share.insights]
            if previous is not None:  # its cgroup figures give CPU rates over the last cycle
                before = share_of(previous, scope)
                members["previous"] = encode(replace(before, gpus=(), workloads=(),
                                                     assignments=(), insights=()))
        text = json.dumps(members, separators=(",", ":"))[1:-1]
        with self._lock:
            if self._shares_of is latest and len(self._shares) < _SHARES:
                self._shares[scope] = text
        return text

    def scope_for(self, peer: Peer, request: Mapping[str, Any]) -> tuple[Scope, list[str]]:
        """Whose share ``peer`` gets, and the request keys that were not honoured."""
        asked = sorted(k for k in request if k != "schema")
        if peer.pid <= 0:
            return Scope(NONE, uid=peer.uid), asked
        ref = container_from_cgroup_lines(self._cgroup_lines(peer.pid))
        name = self.owner_name(peer.uid) or str(peer.uid)
        if ref is not None:
            return Scope(CONTAINER, uid=peer.uid, user=name, container_id=ref.id,
                         pod_uid=ref.pod_uid), asked
        if peer.uid == 0 or self.is_operator(peer):
            as_user = request.get("as_user")
            if isinstance(as_user, str) and as_user:
                uid = int(as_user) if as_user.isdigit() else None
                return Scope(USER, uid=uid, user=as_user), [k for k in asked if k != "as_user"]
            return Scope(ALL, uid=peer.uid, user=name), asked
        return Scope(USER, uid=peer.uid, user=name), asked

    def _cgroup_lines(self, pid: int) -> list[str]:
        try:
            with open(os.path.join(self.proc_root, str(pid), "cgroup"), encoding="utf-8",
                      errors="replace") as f:
                return f.read(1 << 16).splitlines()
        except OSError:
            return []

    def _count(self, outcome: str, error: str | None = None) -> None:
        with self._lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
            if error is not None:
                self.stats.errors[error] = self.stats.errors.get(error, 0) + 1


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody answers on; raise when an agent already serves there, or when
    the path is something other than a socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise FileExistsError(f"another agent serves {path}")


def _read_request(conn: socket.socket, deadline: float) -> dict[str, Any] | None:
    """The request line: ``{}`` for none (the client closed its side or sent an empty line);
    None for a malformed one. Raises ``TimeoutError`` past the deadline."""
    data = b""
    while b"\n" not in data and len(data) <= MAX_REQUEST_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        conn.settimeout(remaining)
        chunk = conn.recv(MAX_REQUEST_BYTES + 1 - len(data))
        if not chunk:
            break
        data += chunk
    line = data.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST_BYTES:
        return None
    if not line.strip():
        return {}
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return request if isinstance(request, dict) else None


def _send_within(conn: socket.socket, body: bytes, deadline: float) -> None:
    view = memoryview(body)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        conn.settimeout(remaining)
        sent = conn.send(view[:1 << 16])
        view = view[sent:]


def _line(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def _send_and_close(conn: socket.socket, reply: dict[str, Any]) -> None:
    """Answer at once, never waiting: what the client already sent is read and dropped first,
    so that closing does not reset the connection before it reads the answer."""
    try:
        conn.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            conn.recv(MAX_REQUEST_BYTES + 1)
        conn.send(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass
    finally:
        conn.close()


# -- the client --------------------------------------------------------------------------------


class NoAgent(Exception):
    """No agent answered on the socket (absent, refused, timed out, or a reply that is not ours)."""


def ask_agent(path: str, request: Mapping[str, Any] | None = None,
              timeout_s: float = 3.0) -> dict[str, Any]:
    """The agent's reply for the calling process; raises ``NoAgent``."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout_s
    try:
        conn.settimeout(timeout_s)
        conn.connect(path)
        # answered (busy) and closed before reading the request: the answer may still be there
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(json.dumps(dict(request or {})).encode() + b"\n")
        chunks, size = [], 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAgent("the agent did not answer in time")
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(1 << 16)
            except ConnectionResetError:
                if not chunks:
                    raise
                break  # the server answered and closed before reading all we sent
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise NoAgent("the reply is too large")
            chunks.append(chunk)
    except OSError as err:
        raise NoAgent(f"{type(err).__name__}") from None
    finally:
        conn.close()
    try:
        reply = json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise NoAgent("the reply is not JSON") from None
    if not isinstance(reply, dict) or not str(reply.get("schema", "")).startswith(
            "otel-gpu.status/"):
        raise NoAgent("the reply is not an otel-gpu status reply")
    if reply.get("error"):
        raise NoAgent(f"the agent answered: {reply['error']}")
    return reply
