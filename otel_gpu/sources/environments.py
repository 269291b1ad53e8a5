"""Python environments that several containers carry, each its own copy: the same conda or pip
environment installed again and again.

On a slow cadence (``interval_s``, default 1800 s, ``OTEL_GPU_ENVIRONMENT_INTERVAL``; 0: off),
through ``/proc/<pid>/root`` of one process of each container (the host's pid namespace), at most
``max_containers`` containers a scan:

- a conda environment at a well-known prefix (``/opt/conda``, ``/opt/miniconda3``, ...) is known
  by the names of the files in its ``conda-meta`` directory, one ``<name>-<version>-<build>.json``
  per installed package (conda's own package records);
- a pip environment (``/usr/local/lib/python3.*/{site,dist}-packages``,
  ``/usr/lib/python3/dist-packages``) by the names of its ``*.dist-info`` directories
  (``<name>-<version>.dist-info``, the Python packaging specifications' installed-distribution
  format).

Two containers whose listing hashes to the same digest carry the same environment. Its size is
measured once per digest, by walking one copy (``lstat``, the files' apparent sizes, as
``du --apparent-size`` counts them) for at most
``max_entries`` entries, and kept while a container carries it. Containers of one image share
its layers on disk, so the copies an environment costs are the distinct images carrying it
(an environment installed at run time in containers of one image shows in their writable layers
instead). No path component is followed when it is a symbolic link (each is opened relative to
the last with O_NOFOLLOW): in a container's tree it would resolve in the agent's root. Package
names are hashed, never kept or exported.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from otel_gpu.snapshot import ErrorLog, SharedEnvironment

DEFAULT_INTERVAL_S = 1800.0
MAX_CONTAINERS = 64
MAX_ENTRIES = 200_000
MAX_LISTING = 20_000  # names read from one conda-meta or site-packages directory
CONDA_PREFIXES = ("/opt/conda", "/opt/miniconda3", "/opt/anaconda3", "/root/miniconda3",
                  "/root/anaconda3", "/usr/local/miniconda3")
PIP_DIRS = ("/usr/lib/python3/dist-packages",)
PIP_PARENT = "/usr/local/lib"  # python3.X/{site,dist}-packages under it


@dataclass(frozen=True)
class EnvTarget:
    """A container to look into: its attributes, a process of it (host pid) and its image."""

    attributes: dict[str, str]
    pid: int
    image_id: str | None = None


@dataclass(frozen=True)
class _Found:
    kind: str
    path: str
    digest: str
    packages: int


class EnvironmentScanner(ErrorLog):
    """Finds the environments each container carries, once per ``interval_s``; never raises."""

    source = "procfs"

    def __init__(
        self,
        proc_root: str = "/proc",
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        max_containers: int = MAX_CONTAINERS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.proc_root = proc_root
        self.interval_s = interval_s
        self.max_containers = max_containers
        self.max_entries = max_entries
        self._clock = clock
        self._due = float("-inf")
        self._found: dict[str, tuple[EnvTarget, tuple[_Found, ...]]] = {}  # by container id
        self._sizes: dict[str, tuple[int, bool]] = {}  # by digest: (bytes, complete)
        self.scans = 0

    def read(self, targets: Sequence[EnvTarget]) -> tuple[SharedEnvironment, ...]:
        """The environments found in two or more of ``targets``' containers, as of the last
        scan; a container gone since is left out at once."""
        current = {t.attributes.get("container.id", ""): t for t in targets}
        for cid in self._found.keys() - current.keys():
            del self._found[cid]
        now = self._clock()
        if self.interval_s > 0 and now >= self._due:
            self._due = now + self.interval_s
            self._scan(sorted(current.items())[: self.max_containers])
        return self._shared(current)

    def _scan(self, targets: list[tuple[str, EnvTarget]]) -> None:
        self.scans += 1
        self._found = {}
        for cid, target in targets:
            root = os.path.join(self.proc_root, str(target.pid), "root")
            self._found[cid] = (target, tuple(self._environments(root)))
        carried = {f.digest for _, found in self._found.values() for f in found}
        for digest in self._sizes.keys() - carried:
            del self._sizes[digest]

    def _shared(self, current: dict[str, EnvTarget]) -> tuple[SharedEnvironment, ...]:
        groups: dict[tuple[str, str, str], list[tuple[str, _Found]]] = {}
        for cid, (_, found) in self._found.items():
            for env in found:
                groups.setdefault((env.kind, env.path, env.digest), []).append((cid, env))
        shared = []
        for (kind, path, digest), members in sorted(groups.items()):
            if len(members) < 2:
                continue
            images = {current[cid].image_id or cid for cid, _ in members}
            if digest not in self._sizes:
                cid = members[0][0]
                root = os.path.join(self.proc_root, str(current[cid].pid), "root")
                self._sizes[digest] = self._size(root, path)
            size, complete = self._sizes[digest]
            shared.append(SharedEnvironment(
                kind=kind, path=path, digest=digest, packages=members[0][1].packages,
                containers=tuple(dict(current[cid].attributes) for cid, _ in members),
                copies=len(images), size_bytes=size, size_complete=complete,
            ))
        return tuple(shared)

    # -- one container --

    def _environments(self, root: str) -> Iterator[_Found]:
        for prefix in CONDA_PREFIXES:
            names = self._listing(root, f"{prefix}/conda-meta", ".json")
            if names:
                yield _Found("conda", prefix, _digest(names), len(names))
        pip_dirs = list(PIP_DIRS)
        for name in self._listing(root, PIP_PARENT, "") or ():
            if name.startswith("python3"):
                pip_dirs += [f"{PIP_PARENT}/{name}/dist-packages",
                             f"{PIP_PARENT}/{name}/site-packages"]
        for path in pip_dirs:
            names = self._listing(root, path, ".dist-info")
            if names:
                yield _Found("pip", path, _digest(names), len(names))

    def _listing(self, root: str, path: str, suffix: str) -> list[str] | None:
        """The names under ``root``/``path`` ending in ``suffix``; None when it is not there, a
        component is a symbolic link, or it cannot be read (recorded)."""
        names = []
        try:
            fd = _open_dir(root, path)
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.name.endswith(suffix):
                            names.append(entry.name)
                            if len(names) >= MAX_LISTING:
                                break
            finally:
                os.close(fd)
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                return None  # a symbolic link where a directory was expected: not followed
            self.record("environment", type(e).__name__)
            return None
        return names

    def _size(self, root: str, path: str) -> tuple[int, bool]:
        """The apparent bytes of the files under ``root``/``path``, and whether every entry was
        counted (the walk stops after ``max_entries``)."""
        total, seen = 0, 0
        try:
            pending = [_open_dir(root, path)]
        except OSError:
            return 0, True
        try:
            while pending:
                fd = pending.pop()
                try:
                    with os.scandir(fd) as entries:
                        for entry in entries:
                            seen += 1
                            if seen > self.max_entries:
                                return total, False
                            info = entry.stat(follow_symlinks=False)
                            if stat.S_ISDIR(info.st_mode):
                                pending.append(os.open(entry.name, _NO_FOLLOW, dir_fd=fd))
                            elif stat.S_ISREG(info.st_mode):
                                total += info.st_size
                except OSError:
                    continue  # a directory that went away or is unreadable: counted as empty
                finally:
                    os.close(fd)
        finally:
            for fd in pending:
                os.close(fd)
        return total, True


_NO_FOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(root: str, path: str) -> int:
    """A descriptor of the directory ``path`` in the tree whose root is ``root``: ``root`` is
    followed (``/proc/<pid>/root`` is a link to the container's root by design), then each
    component is opened relative to the last with O_NOFOLLOW, so that no symbolic link in the
    container's tree is followed, not even one swapped in while the path is walked."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path.strip("/").split("/"):
            next_fd = os.open(part, _NO_FOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _digest(names: list[str]) -> str:
    listing = "\n".join(sorted(names)).encode("utf-8", "surrogateescape")
    return hashlib.sha256(listing).hexdigest()[:16]
