"""HTTP/1.1 connections whose whole request, not each socket operation, has a deadline.

``http.client`` applies its timeout to each connect, send and receive: a peer that trickles a byte
just inside the timeout holds a request for as long as it likes. Here every socket operation is
given only the time left until the request's deadline (a monotonic instant), and one begun after
it raises ``TimeoutError``, so a request costs at most its deadline, headers and body included.
"""

from __future__ import annotations

import http.client
import math
import socket
import ssl
import time
from typing import Any


class _Deadlined:
    """Socket operations bounded by ``deadline`` (``time.monotonic()`` seconds)."""

    deadline: float = math.inf

    def _arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's deadline has passed")
        if remaining != math.inf:
            self.settimeout(remaining)  # type: ignore[attr-defined]

    def connect(self, address: Any) -> None:
        self._arm()
        super().connect(address)  # type: ignore[misc]

    def recv(self, *args: Any) -> bytes:
        self._arm()
        return super().recv(*args)  # type: ignore[misc]

    def recv_into(self, *args: Any) -> int:
        self._arm()
        return super().recv_into(*args)  # type: ignore[misc]

    def send(self, *args: Any) -> int:
        self._arm()
        return super().send(*args)  # type: ignore[misc]

    def sendall(self, *args: Any) -> None:
        self._arm()
        super().sendall(*args)  # type: ignore[misc]


class DeadlineSocket(_Deadlined, socket.socket):
    pass


class DeadlineSSLSocket(_Deadlined, ssl.SSLSocket):
    pass


def _tcp_socket(address: tuple[str, int], deadline: float) -> socket.socket:
    host, port = address
    last: OSError | None = None
    for family, kind, proto, _, target in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = DeadlineSocket(family, kind, proto)
        sock.deadline = deadline
        try:
            sock.connect(target)
        except OSError as err:
            sock.close()
            last = err
            continue
        return sock
    raise last or OSError(f"cannot resolve {host}")


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 to a server listening on a Unix socket; ``deadline`` bounds the whole request."""

    def __init__(self, socket_path: str, timeout: float, deadline: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path
        self.deadline = time.monotonic() + timeout if deadline is None else deadline

    def connect(self) -> None:
        sock = DeadlineSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.deadline = self.deadline
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class DeadlineHTTPConnection(http.client.HTTPConnection):
    """HTTP over TCP with a deadline for the whole request."""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self.deadline = deadline
        self._create_connection = lambda address, *_: _tcp_socket(address, self.deadline)


class DeadlineHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS over TCP with a deadline for the whole request, TLS handshake included."""

    def __init__(self, host: str, port: int, deadline: float, context: ssl.SSLContext) -> None:
        context.sslsocket_class = DeadlineSSLSocket
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001),
                         context=context)
        self.deadline = deadline
        self._create_connection = lambda address, *_: _tcp_socket(address, self.deadline)

    def connect(self) -> None:
        super().connect()
        if isinstance(self.sock, _Deadlined):
            self.sock.deadline = self.deadline
