from __future__ import annotations

import os
import sys
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
