"""``otel-gpu status --watch``: the status view, redrawn in place every interval.

It draws on the terminal's alternate screen with the cursor hidden, reads keys without waiting
for Enter (cbreak mode), and quits on ``q`` or Ctrl-C, putting the terminal back as it was
(its modes, the main screen, the cursor). Below the view: this user's training sessions on
this node (``otel_gpu.sources.sessions``), with the data wait of each.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable, Sequence
from typing import IO, Any

from otel_gpu.cli.status_render import status_table
from otel_gpu.cli.terminal import WIDTH, Style, use_colour, visible
from otel_gpu.config import ConfigError
from otel_gpu.sources.sessions import SessionState, read_sessions

ENTER = "\033[?1049h\033[?25l"  # the alternate screen, the cursor hidden
LEAVE = "\033[?25h\033[?1049l"
HOME = "\033[H"
CLEAR_LINE = "\033[K"
CLEAR_BELOW = "\033[J"
QUIT_KEYS = b"qQ"


def session_lines(sessions: Sequence[SessionState], now: float, style: Style) -> list[str]:
    lines = ["", style("my training sessions on this node", "1")]
    if not sessions:
        lines.append("  none running (a script that calls otel_gpu.start() shows here)")
    for s in sessions:
        wait = "data wait -" if s.data_wait_ratio is None else \
            f"data wait {s.data_wait_ratio:.0%}"
        age = max(0.0, now - s.updated)
        tail = f": {s.steps} steps, {wait} ({age:.0f} s ago)"
        if s.data_wait_ratio is not None and s.data_wait_ratio >= 0.2:
            tail = tail.replace(wait, style(wait, "33"))
        head = f"  pid {s.pid}"
        room = WIDTH - len(head) - len(visible(tail))  # a long service name is cut, not wrapped
        name = f" {s.service}"[:max(0, room)] if s.service else ""
        lines.append(head + name + tail)
    return lines


def frame(view: Any, sessions: Sequence[SessionState], *, refresh_s: float, now: float,
          colour: bool, rows: int) -> str:
    """One screen: a header, the status view and the sessions, cut to ``rows`` lines."""
    style = Style(colour)
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    header = f"every {refresh_s:g} s, q to quit  {clock}"
    lines = [style(header.rjust(WIDTH), "2")]
    lines += status_table(view, colour).rstrip("\n").split("\n")
    lines += session_lines(sessions, now, style)
    lines = lines[:max(1, rows)]
    return HOME + "".join(line + CLEAR_LINE + "\n" for line in lines[:-1]) + \
        lines[-1] + CLEAR_LINE + CLEAR_BELOW


def _quit_within(fd: int, timeout_s: float, clock: Callable[[], float]) -> bool:
    """Wait up to ``timeout_s`` for a key; True when it is a quit key or input ended."""
    deadline = clock() + timeout_s
    while True:
        left = deadline - clock()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 64)
            if not data or any(key in data for key in QUIT_KEYS):
                return True


def run_watch(source: Any, *, refresh_s: float, stdin: IO[str] | None = None,
              stdout: IO[str] | None = None,
              sessions: Callable[[], Sequence[SessionState]] = read_sessions,
              clock: Callable[[], float] = time.monotonic) -> int:
    """Redraw ``source``'s view (a ``status.ViewSource``) every ``refresh_s`` until ``q`` or
    Ctrl-C; exit status 0. Raises ConfigError when stdin or stdout is not a terminal."""
    inp = sys.stdin if stdin is None else stdin
    out = sys.stdout if stdout is None else stdout
    if not (inp.isatty() and out.isatty()):
        raise ConfigError("status --watch needs a terminal (use --format json for scripts)")
    fd = inp.fileno()
    saved = termios.tcgetattr(fd)
    colour = use_colour(out)
    out.write(ENTER)
    try:
        tty.setcbreak(fd)
        while True:
            source.collect()
            rows = shutil.get_terminal_size((WIDTH, 24)).lines
            out.write(frame(source.view(), sessions(), refresh_s=refresh_s, now=time.time(),
                            colour=colour, rows=rows))
            out.flush()
            if _quit_within(fd, refresh_s, clock):
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write(LEAVE)
        out.flush()
