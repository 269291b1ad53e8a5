"""The agent keeps what start-up built out of the garbage collector's passes."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import gc
from otel_gpu.cli import main
before = gc.get_freeze_count()
code = main(["agent", "--interval", "0.01", "--exporter", "none", "--cycles", "1"])
print(code, before, gc.get_freeze_count())
"""


def test_the_agent_freezes_its_start_up_objects() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    code, before, after = (int(x) for x in result.stdout.split()[-3:])
    assert code == 0 and before == 0
    assert after > 10_000  # the modules, the catalog and the SDK's instruments
