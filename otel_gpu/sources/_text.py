"""Text from outside the agent: the one sanitizer, uid and user names, container-id patterns.

Every string that another party chooses (container names, images and labels, pod, namespace and
container names from the kubelet, user names, environment values) passes through
:func:`clean_text` before it becomes an attribute, a Prometheus label or a line in a terminal.
It drops every character of Unicode category C (controls such as ESC, BEL, CR and LF; format
characters such as the bidi overrides U+202A-U+202E and U+2066-U+2069; surrogates; private-use
and unassigned code points) and the line and paragraph separators U+2028 and U+2029, trims
surrounding white space and cuts the rest to ``MAX_TEXT`` characters.
"""

from __future__ import annotations

import pwd
import re
import unicodedata
from typing import Any

MAX_TEXT = 128

# Container ids as runtimes write them: 64 hex digits, or the 12-digit short form Docker shows.
CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")
# The full id alone, as cgroup paths and bind-mount sources carry it.
FULL_CONTAINER_ID = r"[0-9a-f]{64}"

_DROPPED_SPACES = frozenset({"Zl", "Zp"})

INT64_MAX = (1 << 63) - 1


def parse_count(text: str | bytes) -> int:
    """A counter as the kernel writes one: ASCII decimal digits, at most int64. Anything else
    (a sign, ``1_000``, other scripts' digits, an overflowing value) raises ``ValueError``."""
    digits = text.strip()
    # bytes.isdigit() knows ASCII digits only; str.isdigit() knows every script's
    if digits.isdigit() and (type(digits) is bytes or digits.isascii()):
        value = int(digits)
        if value > INT64_MAX:
            raise ValueError("counter beyond int64")
        return value
    raise ValueError(f"not a counter: {digits[:32]!r}")


def parse_signed(text: str | bytes) -> int:
    """:func:`parse_count` allowing a leading minus (``cpu.cfs_quota_us`` writes -1)."""
    digits = text.strip()
    negative = digits[:1] in ("-", b"-")
    value = parse_count(digits[1:] if negative else digits)
    return -value if negative else value


def clean_text(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as a string fit for display and attributes (see the module docstring)."""
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable():
        return text.strip()[:limit].strip()
    kept = "".join(
        c for c in text if (cat := unicodedata.category(c))[0] != "C" and cat not in _DROPPED_SPACES
    )
    return kept.strip()[:limit].strip()


def clean_value(value: Any, limit: int = MAX_TEXT) -> str | None:
    """:func:`clean_text`, with None for None and for a value that has nothing left."""
    if value is None:
        return None
    return clean_text(value, limit) or None


def is_container_id(value: Any) -> bool:
    return isinstance(value, str) and CONTAINER_ID.match(value) is not None


def parse_uid(status: str) -> int | None:
    """The real uid from the ``Uid:`` line of ``/proc/<pid>/status`` (proc_pid_status(5))."""
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            try:
                uid = parse_count(fields[1]) if len(fields) > 1 else None
            except ValueError:
                return None
            return uid if uid is not None and uid < 1 << 32 else None
    return None


def passwd_name(uid: int) -> str | None:
    """The cleaned passwd name of ``uid``, or None when the database has none for it."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError, ValueError, TypeError):
        return None
    return clean_value(name)
