"""Running ``otel-gpu`` as a user would, and reading its snapshot JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
            **kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``otel-gpu`` as a user would: a separate process, through the installed entry point."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "otel_gpu.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=ROOT, **kwargs)


def snapshot_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_cli("snapshot", "--format", "json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def points_named(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in doc["points"] if p["name"] == name]
