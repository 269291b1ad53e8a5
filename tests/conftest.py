from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
# The agents and status commands that tests run use no machine-wide status socket; the tests of
# the socket name their own.
os.environ.setdefault("OTEL_GPU_STATUS_SOCKET", "off")


@pytest.fixture
def write_scenario(tmp_path: Path):
    def write(scenario: dict[str, Any], name: str = "scenario.yaml") -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(scenario))
        return str(path)

    return write


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A directory for Unix sockets: AF_UNIX (and gRPC's unix: targets) limit a socket's path to
    about 107 bytes, which pytest's ``tmp_path`` can exceed."""
    path = tempfile.mkdtemp(prefix="og-sock-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)
