"""A container's network traffic, read from its network namespace through one of its processes.

``/proc/<pid>/net/dev`` shows the interfaces of the network namespace that ``pid`` is in
(proc_net(5)), so a process of a container, seen in the host's pid namespace, gives the
container's own counters without entering it. A container on the host's network (``docker run
--network host``, a pod with ``hostNetwork: true``) shares pid 1's namespace: its counters would be
the whole host's, so it is skipped (None), not reported; it is known by its ``/proc/<pid>/ns/net``
link naming the same namespace inode as ``/proc/1/ns/net`` (namespaces(7)). The loopback
interface is left out: traffic a container sends itself never leaves it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from otel_gpu.snapshot import ContainerNetwork, ErrorLog
from otel_gpu.sources._files import read_bytes
from otel_gpu.sources._text import parse_count

__all__ = ["ContainerNetwork", "NetnsReader", "parse_net_dev"]

_MAX_NET_DEV_BYTES = 1 << 20  # a namespace with thousands of interfaces still fits
# proc_net(5) /proc/net/dev: after "<iface>:", 8 receive then 8 transmit columns, the first two
# of each being bytes and packets.
_RX_BYTES, _RX_PACKETS, _TX_BYTES, _TX_PACKETS = 0, 1, 8, 9


def parse_net_dev(text: str) -> ContainerNetwork:
    """The summed counters of every interface but ``lo``; raises ``ValueError`` on a malformed
    line."""
    rx_bytes = rx_packets = tx_bytes = tx_packets = 0
    for line in text.splitlines()[2:]:  # two header lines
        name, sep, values = line.partition(":")
        if not sep:
            raise ValueError("no interface name")
        if name.strip() == "lo":
            continue
        fields = values.split()
        if len(fields) < 16:
            raise ValueError("short line")
        rx_bytes += parse_count(fields[_RX_BYTES])
        rx_packets += parse_count(fields[_RX_PACKETS])
        tx_bytes += parse_count(fields[_TX_BYTES])
        tx_packets += parse_count(fields[_TX_PACKETS])
    return ContainerNetwork(rx_bytes, tx_bytes, rx_packets, tx_packets)


@dataclass
class _HostNamespace:
    link: str | None = None


class NetnsReader(ErrorLog):
    """Network counters of the namespace a process is in, under a proc root; never raises."""

    source = "procfs"

    def __init__(self, root: str = "/proc") -> None:
        super().__init__()
        self.root = root
        self._host = _HostNamespace()

    def host_namespace(self) -> str | None:
        """The ``net:[<inode>]`` link of pid 1, read once: it never changes while the host runs."""
        if self._host.link is None:
            try:
                self._host.link = os.readlink(os.path.join(self.root, "1", "ns", "net"))
            except OSError as e:
                self.record("ns/net", type(e).__name__)
        return self._host.link

    def read(self, pid: int) -> ContainerNetwork | None:
        """The counters of ``pid``'s namespace; None for the host's namespace, an unreadable one
        (recorded), or a process that exited."""
        base = os.path.join(self.root, str(pid))
        host = self.host_namespace()
        if host is None:
            return None  # cannot tell the host's traffic from the container's
        try:
            if os.readlink(os.path.join(base, "ns", "net")) == host:
                return None
            data = read_bytes(os.path.join(base, "net", "dev"), _MAX_NET_DEV_BYTES)
        except FileNotFoundError:
            return None  # it exited
        except OSError as e:
            self.record("net/dev", type(e).__name__)
            return None
        try:
            return parse_net_dev(data.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            self.record("net/dev", "Malformed")
            return None
