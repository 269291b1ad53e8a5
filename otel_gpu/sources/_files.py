"""Whole small files from /proc and cgroupfs with the fewest system calls and objects.

``open()`` builds a file object, a buffer and (in text mode) a decoder for every file; the
readers open thousands of small files a cycle, so they read through the descriptor directly.
"""

from __future__ import annotations

import os

_CHUNK = 1 << 16


def read_bytes(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path``; raises what ``os.open`` and ``os.read`` raise.

    Reads until end of file: /proc and cgroupfs files are served a page at a time and a single
    ``read`` may return less than the file holds.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, min(limit, _CHUNK))
        if not data or len(data) >= limit:
            return data
        parts = [data]
        total = len(data)
        while total < limit:
            chunk = os.read(fd, min(limit - total, _CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)
