"""The security posture checks of ``otel-gpu doctor`` on a shared GPU server.

They look for what lets one tenant read another's work or become root: home directories open
to others, private keys and credentials readable by others in the places they are usually
left, the Docker socket's group (its members are root-equivalent), containers running
privileged or with the host's ``/`` mounted, and ``/proc`` without ``hidepid``.

A finding is a warning with what to change: the agent itself runs either way, so none of them
fails the command. A finding names a file by path, mode and owner only; a file's content is read
(its first few KiB, to recognise a private key) but never printed. Every path is taken under
``root``, so that a host tree mounted elsewhere (or a test's) can be checked.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from otel_gpu.cli.doctor import WARN, Check, _hidepid, _with_deadline
from otel_gpu.sources.docker import DEFAULT_SOCKET as DOCKER_SOCKET
from otel_gpu.sources.docker import UnixHTTPConnection

MAX_FILES = 5000  # files looked at per scan, so a huge tree cannot hold the command
MAX_DEPTH = 6
MAX_LISTED = 12  # findings of one kind printed; the rest are counted
HEAD_BYTES = 4096
MAX_CONTAINERS = 200
MAX_ANSWER_BYTES = 8 << 20

_KEY_NAMES = frozenset({"id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk",
                        "id_ed25519_sk", "key.json", "kubeconfig", "admin.conf",
                        "credentials", ".git-credentials", ".netrc", ".pgpass"})
_KEY_SUFFIXES = (".key", "-key.pem", "_key.pem", ".p12", ".pfx", ".kubeconfig")
_NOT_SECRET = ("known_hosts", "authorized_keys", "config", "environment")
_DEEPOPS_NAMES = ("nvidia", "deepops")


@dataclass(frozen=True)
class Exposed:
    path: str  # as the host sees it, without the root prefix
    mode: int
    owner: str
    group: str
    what: str  # private key, kubeconfig, ...

    def describe(self) -> str:
        return f"{self.path} ({stat.filemode(self.mode)} {self.owner}:{self.group}, {self.what})"


class _Names:
    """uid and gid names from ``<root>/etc/passwd`` and ``<root>/etc/group``."""

    def __init__(self, root: str) -> None:
        self.users: dict[int, str] = {}
        self.primary: dict[int, list[str]] = {}
        self.groups: dict[int, tuple[str, list[str]]] = {}
        for fields in _colon_file(os.path.join(root, "etc", "passwd"), 4):
            if fields[2].isdigit():
                self.users.setdefault(int(fields[2]), fields[0])
                if fields[3].isdigit():
                    self.primary.setdefault(int(fields[3]), []).append(fields[0])
        for fields in _colon_file(os.path.join(root, "etc", "group"), 4):
            if fields[2].isdigit():
                members = [m for m in fields[3].split(",") if m]
                self.groups.setdefault(int(fields[2]), (fields[0], members))

    def user(self, uid: int) -> str:
        return self.users.get(uid, str(uid))

    def group(self, gid: int) -> str:
        return self.groups.get(gid, (str(gid), []))[0]

    def members(self, gid: int) -> list[str]:
        listed = self.groups.get(gid, ("", []))[1]
        return sorted(set(listed) | set(self.primary.get(gid, [])))


def _colon_file(path: str, fields: int) -> Iterator[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) >= fields and not line.startswith("#"):
            yield parts


def _open_to_others(mode: int) -> bool:
    return bool(mode & (stat.S_IROTH | stat.S_IXOTH))


def _children(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _reachable(root: str, path: str) -> bool:
    """Whether every directory from ``root`` down to ``path``'s parent lets others through."""
    prefix = root.rstrip("/")
    parent = os.path.dirname(path)
    while len(parent) > len(prefix) and parent != "/":
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        parent = os.path.dirname(parent)
    return True


# -- home directories ---------------------------------------------------------------------------


# Where DGX systems and shared servers keep per-user data beside /home (DGX OS mounts its data
# RAID at /raid); only entries named after a user in /etc/passwd are taken as user directories.
USER_DATA_DIRS = ("raid", "data", "scratch", "workspace")


def check_homes(root: str = "/", names: _Names | None = None) -> list[Check]:
    names = names or _Names(root)
    known = set(names.users.values())
    candidates = [("home", entry) for entry in _children(os.path.join(root, "home"))]
    candidates += [(base, entry) for base in USER_DATA_DIRS
                   for entry in _children(os.path.join(root, base)) if entry in known]
    open_dirs = []
    for base, entry in candidates:
        try:
            info = os.lstat(os.path.join(root, base, entry))
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and _open_to_others(info.st_mode):
            open_dirs.append(f"/{base}/{entry} ({stat.filemode(info.st_mode)} "
                             f"{names.user(info.st_uid)})")
    if not open_dirs:
        return [Check("home dirs", "ok", "no home or user directory is open to other users")]
    return [Check("home dirs", WARN, f"{len(open_dirs)} home or user director"
                                     f"{'y' if len(open_dirs) == 1 else 'ies'} other users can "
                                     f"list or enter (over SFTP too): {_listed(open_dirs)}",
                  "chmod 750 (or 700) each of them; for new users set DIR_MODE=0750 in "
                  "/etc/adduser.conf (Debian, Ubuntu) or HOME_MODE 0750 in /etc/login.defs")]


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


# -- credentials --------------------------------------------------------------------------------


def credential_places(root: str = "/") -> list[str]:
    """The directories searched for readable keys and credentials, under ``root``."""
    places = [os.path.join(root, "root", ".ssh"), os.path.join(root, "root", ".kube"),
              os.path.join(root, "root", ".docker"), os.path.join(root, "etc", "docker"),
              os.path.join(root, "etc", "kubernetes")]
    for home in _children(os.path.join(root, "home")):
        base = os.path.join(root, "home", home)
        places += [os.path.join(base, d) for d in (".ssh", ".kube", ".docker", ".aws")]
        places += _deepops_dirs(base)
    for base in (root, os.path.join(root, "opt"), os.path.join(root, "srv"),
                 os.path.join(root, "root")):
        places += _deepops_dirs(base)
    return [p for p in dict.fromkeys(places) if os.path.isdir(p)]


def _deepops_dirs(base: str) -> list[str]:
    return [os.path.join(base, entry) for entry in _children(base)
            if entry.lower() in _DEEPOPS_NAMES or entry.lower().startswith("deepops")]


def find_exposed(root: str = "/", names: _Names | None = None) -> tuple[list[Exposed], int]:
    """Credential files other users can read, and how many files were looked at."""
    names = names or _Names(root)
    prefix = root.rstrip("/")
    found: list[Exposed] = []
    looked = 0
    for place in credential_places(root):
        for path, info in _walk(place):
            looked += 1
            if looked > MAX_FILES:
                return found, looked
            if not info.st_mode & stat.S_IROTH or not _reachable(root, path):
                continue
            what = _credential_kind(path)
            if what:
                found.append(Exposed(path[len(prefix):] or "/", info.st_mode,
                                     names.user(info.st_uid), names.group(info.st_gid), what))
    return found, looked


def _walk(top: str, depth: int = 0) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under ``top``, symbolic links not followed."""
    for entry in _children(top):
        path = os.path.join(top, entry)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            yield path, info
        elif stat.S_ISDIR(info.st_mode) and depth < MAX_DEPTH:
            yield from _walk(path, depth + 1)


def _credential_kind(path: str) -> str | None:
    name = os.path.basename(path)
    head = _head(path)
    if b"PRIVATE KEY-----" in head:
        return "private key"
    if b"client-key-data:" in head or (b"apiVersion:" in head and b"kind: Config" in head):
        return "kubeconfig"
    if b'"auths"' in head:
        return "registry credentials"
    if b"aws_secret_access_key" in head:
        return "cloud credentials"
    if name.endswith(".pub") or name.startswith(_NOT_SECRET):
        return None
    if name in _KEY_NAMES or name.endswith(_KEY_SUFFIXES):
        return "key or credentials file"
    if os.path.basename(os.path.dirname(path)) == ".ssh" and name.startswith("id_"):
        return "private key"
    return None


def _head(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        return os.read(fd, HEAD_BYTES)
    except OSError:
        return b""
    finally:
        os.close(fd)


def check_credentials(root: str = "/", names: _Names | None = None) -> list[Check]:
    found, looked = find_exposed(root, names)
    if not found:
        more = " (stopped at the file limit)" if looked > MAX_FILES else ""
        return [Check("credentials", "ok", f"no key or credentials file readable by other "
                                           f"users in {looked} files of the usual places"
                                           f"{more}")]
    return [Check("credentials", WARN, f"{len(found)} key or credentials file"
                                       f"{'' if len(found) == 1 else 's'} any user can read: "
                                       f"{_listed([e.describe() for e in found])}",
                  "chmod 600 each file (and 700 its directory); then replace the key or "
                  "credentials, since anyone may have copied them")]


# -- the Docker socket and its containers -----------------------------------------------------


def check_docker_group(socket_path: str = DOCKER_SOCKET, root: str = "/",
                       names: _Names | None = None) -> list[Check]:
    name = "docker group"
    try:
        info = os.stat(socket_path)
    except OSError:
        return [Check(name, "ok", f"no Docker socket at {socket_path}")]
    names = names or _Names(root)
    group = names.group(info.st_gid)
    mode = stat.filemode(info.st_mode)
    if info.st_mode & stat.S_IWOTH:
        return [Check(name, WARN, f"{socket_path} ({mode}) is writable by every user: "
                                  "each of them is root on this host",
                      f"chmod 660 {socket_path} (and set the mode in the docker.socket unit)")]
    members = names.members(info.st_gid) if info.st_gid != 0 else []
    if not members:
        return [Check(name, "ok", f"{socket_path} ({mode} {names.user(info.st_uid)}:{group}): "
                                  f"group {group} has no members")]
    return [Check(name, WARN, f"{socket_path} ({mode}) belongs to group {group}, whose "
                              f"{len(members)} member{'' if len(members) == 1 else 's'} "
                              f"({_listed(members)}) can start a container with the host's / "
                              "mounted: root-equivalent",
                  f"remove the users who should not be root (gpasswd -d USER {group}); give "
                  "them rootless Docker, or a Kubernetes namespace, instead")]


def check_containers(socket_path: str = DOCKER_SOCKET, timeout_s: float = 2.0) -> list[Check]:
    name = "containers"
    if not os.path.exists(socket_path):
        return [Check(name, "ok", f"no Docker socket at {socket_path}: no containers to "
                                  "check")]

    def inspect_all() -> list[Check]:
        status, listed = _docker_get(socket_path, "/containers/json", timeout_s)
        if status != 200 or not isinstance(listed, list):
            return [Check(name, WARN, f"GET /containers/json on {socket_path} answered "
                                      f"{status or 'nothing'}: containers unchecked",
                          "run doctor as root or in the socket's group to check them")]
        risky = []
        for entry in listed[:MAX_CONTAINERS]:
            cid = entry.get("Id") if isinstance(entry, dict) else None
            if not isinstance(cid, str) or not cid.isalnum():
                continue
            status, doc = _docker_get(socket_path, f"/containers/{cid}/json", timeout_s)
            if status == 200 and isinstance(doc, dict):
                why = container_risks(doc)
                if why:
                    label = str(doc.get("Name") or cid[:12]).lstrip("/")[:64]
                    risky.append(f"{label} ({', '.join(why)})")
        if not risky:
            return [Check(name, "ok", f"none of {min(len(listed), MAX_CONTAINERS)} running "
                                      "containers is privileged or mounts the host's /")]
        return [Check(name, WARN, f"{len(risky)} container{'' if len(risky) == 1 else 's'} "
                                  f"with root on the host: {_listed(risky)}",
                      "recreate them without --privileged (give GPUs with --gpus, devices "
                      "with --device) and mount only the directories they need, read-only "
                      "where possible")]

    return _with_deadline(name, timeout_s * 4 + 1.0, inspect_all)


def container_risks(doc: dict) -> list[str]:
    """What in one container inspect document gives it the host: privileged, host / mounted."""
    host = doc.get("HostConfig") if isinstance(doc.get("HostConfig"), dict) else {}
    risks = []
    if host.get("Privileged") is True:
        risks.append("privileged")
    mounts = doc.get("Mounts") if isinstance(doc.get("Mounts"), list) else []
    sources = [m.get("Source") for m in mounts if isinstance(m, dict)]
    binds = host.get("Binds") if isinstance(host.get("Binds"), list) else []
    sources += [b.split(":", 1)[0] for b in binds if isinstance(b, str)]
    if "/" in sources:
        risks.append("host / mounted")
    return risks


def _docker_get(socket_path: str, path: str, timeout_s: float) -> tuple[int, object]:
    conn = UnixHTTPConnection(socket_path, timeout_s)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(MAX_ANSWER_BYTES)
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        conn.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, None


# -- /proc ------------------------------------------------------------------------------------


def check_hidepid(proc_root: str = "/proc") -> list[Check]:
    if _hidepid(proc_root):
        return [Check("hidepid", "ok", f"/proc is mounted with hidepid={_hidepid(proc_root)}")]
    return [Check("hidepid", WARN, "/proc is mounted without hidepid: every user sees every "
                                   "other user's processes and their command lines (and any "
                                   "secret passed as an argument)",
                  "mount /proc with hidepid=invisible,gid=<a group for the agent and admins> "
                  "(an fstab line: proc /proc proc defaults,hidepid=invisible,gid=NNN 0 0; "
                  "hidepid=2 before Linux 5.8), and run the agent in that group")]


def run_security_checks(*, root: str = "/", proc_root: str = "/proc",
                        docker_socket: str = DOCKER_SOCKET,
                        timeout_s: float = 2.0) -> list[Check]:
    """Every security check, in order, over the host tree at ``root``."""
    names = _Names(root)
    checks = check_homes(root, names)
    checks += check_credentials(root, names)
    checks += check_docker_group(docker_socket, root, names)
    checks += check_containers(docker_socket, timeout_s)
    checks += check_hidepid(proc_root)
    return checks
