"""The catalog is the one source of truth: docs match it, and its names match the conventions."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import opentelemetry.semconv
import pytest

from otel_gpu.telemetry.catalog import (
    CATALOG,
    COUNTER,
    GAUGE,
    HISTOGRAM,
    UPDOWNCOUNTER,
    render_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
OWN_PREFIXES = ("nvidia.", "otel_gpu.")


def _semconv_strings() -> set[str]:
    """Every name constant of the installed package, incubating ones included."""
    base = Path(opentelemetry.semconv.__file__).parent
    values: set[str] = set()
    for path in base.rglob("*.py"):
        parts = path.relative_to(base).with_suffix("").parts
        if not {"metrics", "attributes"} & set(parts[:-1]):
            continue
        module = importlib.import_module(".".join(("opentelemetry.semconv", *parts)))
        values.update(v for k, v in vars(module).items() if k.isupper() and isinstance(v, str))
    return values


SEMCONV = _semconv_strings()


def test_docs_page_is_generated_from_the_catalog() -> None:
    page = (ROOT / "docs" / "metrics.md").read_text()
    assert page == render_markdown(), "run: python -m otel_gpu.telemetry.catalog > docs/metrics.md"


def test_the_installed_conventions_were_found() -> None:
    assert "hw.gpu.utilization" in SEMCONV and "system.cpu.time" in SEMCONV


@pytest.mark.parametrize("metric", [m for m in CATALOG if m.semconv], ids=lambda m: m.name)
def test_semconv_names_exist_in_the_installed_package(metric) -> None:
    assert metric.name in SEMCONV


def _attribute_key(name: str) -> str:
    """A template such as ``container.label.<key>`` stands for the conventions' prefix."""
    return name.removesuffix(".<key>")


@pytest.mark.parametrize("metric", CATALOG, ids=lambda m: m.name)
def test_attribute_keys_outside_our_namespaces_are_conventions(metric) -> None:
    foreign = [_attribute_key(a) for a in metric.attributes if not a.startswith(OWN_PREFIXES)]
    assert [a for a in foreign if a not in SEMCONV] == []


def test_attribute_templates_are_the_only_placeholders() -> None:
    templates = {a for m in CATALOG for a in m.attributes if "<" in a or ">" in a}
    assert templates == {"container.label.<key>"}


@pytest.mark.parametrize("metric", [m for m in CATALOG if not m.semconv], ids=lambda m: m.name)
def test_own_names_stay_in_our_namespaces(metric) -> None:
    assert metric.name.startswith(OWN_PREFIXES)
    assert metric.name not in SEMCONV


def test_names_are_unique_and_well_formed() -> None:
    names = [m.name for m in CATALOG]
    assert len(names) == len(set(names))
    for metric in CATALOG:
        assert re.fullmatch(r"[a-z][a-z0-9_.]*", metric.name)
        assert metric.instrument in (COUNTER, UPDOWNCOUNTER, GAUGE, HISTOGRAM)
        assert "%" not in metric.unit and metric.description.endswith(".")
        if metric.unit == "1":
            assert metric.instrument == GAUGE or metric.name == "hw.status"
