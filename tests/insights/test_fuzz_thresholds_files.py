"""Thresholds files, driven with generated input: known and unknown keys with values that cannot
be meant (NaN, infinities, huge or negative numbers, text, nesting), as YAML, as JSON and as raw
bytes. A file is either loaded, with every number finite and within int64, or refused with a
``ThresholdsError`` that names the file; nothing else escapes."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_gpu.insights.thresholds import ThresholdsError, threshold_names
from otel_gpu.insights.thresholds_file import load_thresholds

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT64 = 2**63

number = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -1, 0, 2**63, 2**70, 1e300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
)
leaf = st.one_of(number, st.none(), st.booleans(), st.text(max_size=20),
                 st.sampled_from(["input_bound", "\x1b[2J"]))
value = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
document = st.dictionaries(
    st.one_of(st.sampled_from(sorted(threshold_names())), st.text(max_size=12)),
    st.one_of(number, value), max_size=6)


def _load(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory(prefix="og-fuzz-") as tmp:
        path = Path(tmp) / f"thresholds{suffix}"
        path.write_bytes(content)
        try:
            thresholds = load_thresholds(path)
        except ThresholdsError as err:
            assert str(err).startswith(f"{path}: "), err
            return
    for name, got in dataclasses.asdict(thresholds).items():
        for item in got if isinstance(got, (list, tuple)) else [got]:
            if isinstance(item, float):
                assert math.isfinite(item), (name, item)
            elif isinstance(item, int) and not isinstance(item, bool):
                assert -INT64 <= item < INT64, (name, item)


@FAST
@given(document)
def test_a_yaml_thresholds_file_loads_or_is_refused(doc: dict[str, Any]) -> None:
    _load(yaml.safe_dump(doc, allow_unicode=True).encode(), ".yaml")


@FAST
@given(document)
def test_a_json_thresholds_file_loads_or_is_refused(doc: dict[str, Any]) -> None:
    _load(json.dumps(doc).encode(), ".json")


@FAST
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_any_bytes_load_or_are_refused(content: bytes) -> None:
    _load(content, ".yaml")
