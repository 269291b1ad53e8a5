"""Thresholds from a YAML or JSON file: a mapping of ``Thresholds`` field names to values.

Errors name the file and the key, e.g. ``t.yaml: disabled_rules[0]: unknown rule 'x'``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from otel_gpu.insights.engine import check_rules
from otel_gpu.insights.thresholds import Thresholds, ThresholdsError, threshold_names


def thresholds_from_mapping(raw: Any, path: str = "<thresholds>") -> Thresholds:
    """Thresholds from a mapping of field names to values; unknown keys and wrong types raise."""
    if raw is None:
        return Thresholds()
    if not isinstance(raw, dict):
        raise ThresholdsError(f"{path}: expected a mapping of threshold names to values")
    names = threshold_names()
    for key in raw:
        if not isinstance(key, str) or key not in names:
            raise ThresholdsError(f"{path}: {key}: unknown threshold")
    try:
        return check_rules(Thresholds(**raw))
    except ThresholdsError as err:
        raise ThresholdsError(f"{path}: {err}") from None


def load_thresholds(path: str | os.PathLike[str] | None) -> Thresholds:
    """Thresholds from a YAML or JSON file (a mapping of field names); None: the defaults."""
    if path is None:
        return Thresholds()
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ThresholdsError(f"{name}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        why = f"{err.reason} at byte {err.start}"
        raise ThresholdsError(f"{name}: not UTF-8 text ({why})") from None
    import yaml

    try:
        raw = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ThresholdsError(f"{name}: not valid YAML or JSON: {err}") from err
    except RecursionError:
        raise ThresholdsError(f"{name}: nested too deeply to be a thresholds file") from None
    return thresholds_from_mapping(raw, name)
