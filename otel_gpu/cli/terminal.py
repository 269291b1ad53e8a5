"""What every command shares at the terminal: colour, bars, wrapping, units, and printing a
document either as JSON or as a table."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import IO, Any

from otel_gpu.snapshot import format_gib, format_mib

WIDTH = 80
BAR_WIDTH = 20
_ESCAPE = re.compile(r"\033\[[0-9;]*m")


def use_colour(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Colour only on a terminal, and not when ``NO_COLOR`` is set (https://no-color.org) or
    ``TERM`` is ``dumb``."""
    env = os.environ if environ is None else environ
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in env and env.get("TERM") != "dumb"


class Style:
    """SGR colour codes, applied only when ``colour`` is on."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour and code else text

    @staticmethod
    def level(ratio: float | None) -> str:
        """Green below 75 %, yellow below 90 %, red from there."""
        if ratio is None:
            return ""
        return "31" if ratio >= 0.9 else "33" if ratio >= 0.75 else "32"


def visible(text: str) -> str:
    """``text`` without its colour codes: what takes columns."""
    return _ESCAPE.sub("", text)


def bar(ratio: float | None, style: Style, width: int = BAR_WIDTH) -> str:
    """``[####----]`` for a 0..1 ratio; blanks of the same width for None."""
    if ratio is None:
        return " " * (width + 2)
    filled = round(max(0.0, min(1.0, ratio)) * width)
    inner = style("#" * filled, style.level(ratio)) + "-" * (width - filled)
    return f"[{inner}]"


def wrap(text: str, indent: str, width: int = WIDTH) -> list[str]:
    """``text`` wrapped at ``width`` columns, every line indented; one line at least."""
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=True, break_on_hyphens=False) or [indent.rstrip()]


# -- units ----------------------------------------------------------------------------------


def gib(value: int | None) -> str:
    return "?" if value is None else format_gib(value)


def mib(value: int | None) -> str:
    return "?" if value is None else format_mib(value)


def short_gib(value: int | None) -> str:
    return "-" if value is None else format_gib(value, unit="G")


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def whole(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.0f}{unit}"


def cpus(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


# -- output ---------------------------------------------------------------------------------


def emit(fmt: str, document: Callable[[], Any], table: Callable[[bool], str],
         stream: IO[str] | None = None) -> None:
    """Print ``document()`` as JSON when ``fmt`` is ``json``, else ``table(colour)``."""
    out = sys.stdout if stream is None else stream
    if fmt == "json":
        json.dump(document(), out, indent=1)
        out.write("\n")
    else:
        out.write(table(use_colour(out)))
