"""The insight engine: the one table of rules, and the state that turns their verdicts into
insights.

Each rule says, per subject, which severity its condition raises now and which severity still
holds inside the hysteresis band. The ``InsightEngine`` turns those verdicts into insights: a
condition fires once it has held for its duration, and clears only once it falls below its clear
threshold, all in Snapshot time (simulated time under ``--simulate``). Event rules (an Xid, an OOM
kill, a MIG reconfiguration) fire at once and stay active for a hold time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from otel_gpu.insights import container_rules as container
from otel_gpu.insights import operator_rules as operator
from otel_gpu.insights import user_rules as user
from otel_gpu.insights.thresholds import Thresholds, ThresholdsError
from otel_gpu.insights.window import Finding, Sample
from otel_gpu.snapshot import SEVERITY_RANK, Insight, Snapshot, TrainingSignals

RuleFunction = Callable[[Sequence[Sample], Thresholds], Iterable[Finding]]
USER, OPERATOR = "user", "operator"


@dataclass(frozen=True)
class Rule:
    id: str
    audience: str  # user or operator
    evaluate: RuleFunction


RULES: tuple[Rule, ...] = (
    Rule("input_bound", USER, user.input_bound),
    Rule("device_idle", USER, user.device_idle),
    Rule("gpu_memory_pressure", USER, user.gpu_memory_pressure),
    Rule("container_memory_pressure", USER, user.container_memory_pressure),
    Rule("cpu_throttled", USER, user.cpu_throttled),
    Rule("low_sm_activity", USER, user.low_sm_activity),
    Rule("large_egress", USER, user.large_egress),
    Rule("shm_small", USER, container.shm_small),
    Rule("writable_layer_growth", USER, container.writable_layer_growth),
    Rule("xid_critical", OPERATOR, operator.xid_critical),
    Rule("ecc_uncorrectable", OPERATOR, operator.ecc_uncorrectable),
    Rule("row_remap", OPERATOR, operator.row_remap),
    Rule("thermal_throttle", OPERATOR, operator.thermal_throttle),
    Rule("power_brake", OPERATOR, operator.power_brake),
    Rule("high_temperature", OPERATOR, operator.high_temperature),
    Rule("gpu_lost", OPERATOR, operator.gpu_lost),
    Rule("host_memory_pressure", OPERATOR, operator.host_memory_pressure),
    Rule("filesystem_full", OPERATOR, operator.filesystem_full),
    Rule("mig_reconfigured", OPERATOR, operator.mig_reconfigured),
    Rule("nvlink_errors", OPERATOR, operator.nvlink_errors),
    Rule("duplicated_environments", OPERATOR, container.duplicated_environments),
)
RULE_IDS = tuple(r.id for r in RULES)
USER_RULES = tuple(r.id for r in RULES if r.audience == USER)
OPERATOR_RULES = tuple(r.id for r in RULES if r.audience == OPERATOR)


def check_rules(thresholds: Thresholds) -> Thresholds:
    """``thresholds``, once every rule it disables is known; else ThresholdsError."""
    for i, rule in enumerate(thresholds.disabled_rules):
        if rule not in RULE_IDS:
            raise ThresholdsError(f"disabled_rules[{i}]: unknown rule {rule!r}")
    return thresholds


# -- the engine -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InsightUpdate:
    """The engine's answer for one Snapshot. A change of severity clears the insight at the old
    severity and fires it at the new one."""

    active: tuple[Insight, ...] = ()
    fired: tuple[Insight, ...] = ()
    cleared: tuple[Insight, ...] = ()


@dataclass
class _State:
    pending_since: float | None = None
    insight: Insight | None = None
    last_seen: float = 0.0
    last_event: float | None = None
    hold_s: float | None = None


def _worse(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if SEVERITY_RANK[a] >= SEVERITY_RANK[b] else b


def _milder(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return None
    return a if SEVERITY_RANK[a] <= SEVERITY_RANK[b] else b


def _sort_key(insight: Insight) -> tuple[Any, ...]:
    attributes = sorted(insight.attributes.items(), key=str)
    return (-SEVERITY_RANK[insight.severity], insight.rule, attributes)


class InsightEngine:
    """Runs the rules over a bounded window of Snapshots and keeps each insight's state."""

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        window: int = 60,
        rules: Sequence[Rule] = RULES,
    ) -> None:
        if window < 2:
            raise ValueError("window must hold at least 2 snapshots")
        self.thresholds = check_rules(thresholds or Thresholds())
        self.window: deque[Sample] = deque(maxlen=window)
        disabled = set(self.thresholds.disabled_rules)
        self.rules = tuple(r for r in rules if r.id not in disabled)
        self._states: dict[tuple[str, tuple[Any, ...]], _State] = {}

    @property
    def active(self) -> tuple[Insight, ...]:
        found = [s.insight for s in self._states.values() if s.insight is not None]
        return tuple(sorted(found, key=_sort_key))

    def update(
        self, snapshot: Snapshot, training: Iterable[TrainingSignals] = ()
    ) -> InsightUpdate:
        now = snapshot.timestamp
        self.window.append(Sample(snapshot, tuple(training)))
        window = tuple(self.window)
        fired: list[Insight] = []
        cleared: list[Insight] = []
        seen: set[tuple[str, tuple[Any, ...]]] = set()
        for rule in self.rules:
            for finding in rule.evaluate(window, self.thresholds):
                key = (rule.id, finding.key)
                if key in seen:
                    continue
                seen.add(key)
                state = self._states.setdefault(key, _State())
                state.last_seen = now
                self._apply(rule.id, state, finding, now, fired, cleared)
        for key in list(self._states):
            state = self._states[key]
            if state.insight is None:
                if key not in seen:
                    del self._states[key]
                continue
            if state.hold_s is not None:
                assert state.last_event is not None
                if now - state.last_event >= state.hold_s:
                    cleared.append(state.insight)
                    del self._states[key]
            elif key not in seen and now - state.last_seen > self.thresholds.missing_grace_s:
                cleared.append(state.insight)
                del self._states[key]
        return InsightUpdate(
            self.active,
            tuple(sorted(fired, key=_sort_key)),
            tuple(sorted(cleared, key=_sort_key)),
        )

    def _apply(
        self,
        rule: str,
        state: _State,
        finding: Finding,
        now: float,
        fired: list[Insight],
        cleared: list[Insight],
    ) -> None:
        current = state.insight
        if finding.hold_s is not None:
            if finding.raised is None:
                return
            state.last_event, state.hold_s = now, finding.hold_s
            severity = _worse(finding.raised, current.severity if current else None)
            assert severity is not None
        elif current is None:
            if finding.raised is None:
                state.pending_since = None
                return
            if state.pending_since is None:
                state.pending_since = now
            if now - state.pending_since < finding.for_s:
                return
            severity = finding.raised
        else:
            new = _worse(finding.raised, _milder(current.severity, finding.held))
            if new is None:
                cleared.append(current)
                state.insight = None
                state.pending_since = None
                return
            severity = new
        if current is not None and current.severity == severity:
            if finding.raised is not None:  # inside the band, the message that raised it stands
                state.insight = replace(current, message=finding.message, remedy=finding.remedy)
            return
        if current is not None:
            cleared.append(current)
        state.insight = Insight(
            rule=rule,
            severity=severity,
            message=finding.message,
            remedy=finding.remedy,
            attributes=current.attributes if current is not None else dict(finding.attributes),
            since=now,
        )
        fired.append(state.insight)
