"""Scenario files, driven with generated input: built-in scenarios with one part replaced by any
value (hostile text, NaN, infinities, huge or negative numbers, wrong shapes) and raw bytes. A
file is either loaded, with every number finite and within the loader's bounds (int64, except
where a counter or a cgroup file may go past it, up to ``MAX_FILE_INTEGER``, so that what the
agent does with such a value can be tested), or refused with a ``ScenarioError`` that names the
file; nothing else escapes."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_gpu.simulate.scenario import BUILTIN_DIR, load_scenario
from otel_gpu.simulate.scenario_checks import MAX_FILE_INTEGER, ScenarioError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT64 = 2**63
BASES = [yaml.safe_load(p.read_text()) for p in sorted(BUILTIN_DIR.glob("*.yaml"))]

leaf = st.one_of(
    st.none(), st.booleans(), st.text(max_size=40),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -1, 2**70, "", "\x1b[2J", "gpu0", "1g.10gb"]),
)
value = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=12)
# What replaces a number or a string most often: a value of the same kind that cannot be meant.
odd_number = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -1, -0.5, 1.5, 2**63, 2**70,
                     1e300]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**80),
                                                                max_value=2**80))
odd_text = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x1b[2J", "gpu9"]))


def _replacement(data: st.DataObject, old: Any) -> Any:
    if isinstance(old, (int, float)) and not isinstance(old, bool) and data.draw(st.booleans()):
        return data.draw(odd_number)
    if isinstance(old, str) and data.draw(st.booleans()):
        return data.draw(odd_text)
    return data.draw(value)


def _mutated(data: st.DataObject) -> Any:
    """A built-in scenario with one subtree (or one key's value) replaced."""
    import copy

    doc = copy.deepcopy(data.draw(st.sampled_from(BASES)))
    node = doc
    while True:
        children = (list(node.keys()) if isinstance(node, dict)
                    else list(range(len(node))) if isinstance(node, list) else [])
        if not children:
            return data.draw(value)
        key = data.draw(st.sampled_from(children))
        child = node[key]
        if not isinstance(child, (dict, list)) or data.draw(st.booleans()):
            node[key] = _replacement(data, child)
            return doc
        node = child


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [leaf for k, v in enumerate(node) for leaf in _leaves(v, (*path, k))]
    return [path]


# Every leaf of every built-in scenario: (scenario index, path to the leaf).
LEAVES = [(n, path) for n, base in enumerate(BASES) for path in _leaves(base)]


def _check_numbers(obj: Any, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, int):
        assert -INT64 <= obj <= MAX_FILE_INTEGER
    elif isinstance(obj, float):
        assert math.isfinite(obj), obj
    elif dataclasses.is_dataclass(obj):
        for item in dataclasses.fields(obj):
            _check_numbers(getattr(obj, item.name), seen)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_numbers(k, seen)
            _check_numbers(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _check_numbers(v, seen)


def _load(content: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="og-fuzz-") as tmp:
        path = Path(tmp) / "scenario.yaml"
        path.write_bytes(content)
        try:
            scenario = load_scenario(str(path))
        except ScenarioError as err:
            assert str(err).startswith(f"{path}: "), err
            return
        _check_numbers(scenario, set())


@FAST
@given(st.data())
def test_a_scenario_with_one_part_replaced_loads_or_is_refused(data: st.DataObject) -> None:
    _load(yaml.safe_dump(_mutated(data), allow_unicode=True).encode())


@FAST
@given(st.sampled_from(LEAVES), st.data())
def test_a_scenario_with_one_value_replaced_loads_or_is_refused(leaf: tuple,
                                                                data: st.DataObject) -> None:
    import copy

    number, path = leaf
    doc = copy.deepcopy(BASES[number])
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = _replacement(data, node[path[-1]])
    _load(yaml.safe_dump(doc, allow_unicode=True).encode())


@FAST
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode)))
def test_any_bytes_load_or_are_refused(content: bytes) -> None:
    _load(content)


def test_the_built_in_scenarios_load_and_pass_the_number_check() -> None:
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        _check_numbers(load_scenario(str(path)), set())
