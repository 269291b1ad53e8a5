"""Session files are written by any process of the user: a reader skips what it cannot use and
cleans what it shows."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

from otel_gpu.sources.sessions import read_sessions


def _write(directory: Path, name: str, text: str) -> None:
    (directory / f"{name}.json").write_text(text)


def _session(**fields: object) -> str:
    return json.dumps({"pid": os.getpid(), "steps": 3, "updated": 1.0, **fields})


def test_a_hostile_service_name_is_cleaned(tmp_path: Path) -> None:
    _write(tmp_path, "a", _session(service="train\x1b]0;owned\x07\r\n\u202ejob"))
    (state,) = read_sessions(tmp_path)
    assert state.service == "train]0;ownedjob"
    assert not any(unicodedata.category(c)[0] == "C" for c in state.service)


def test_files_that_cannot_be_used_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path, "deep", "[" * 60_000 + "]" * 60_000)
    _write(tmp_path, "nan", _session(data_wait_ratio=float("nan")))
    _write(tmp_path, "inf", _session(updated=float("inf")))
    _write(tmp_path, "good", _session(service="train"))
    assert [s.service for s in read_sessions(tmp_path)] == ["train"]
