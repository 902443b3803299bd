"""The worker's metric contract and a small PromQL scanner for the dashboard and rule tests.

The scanner is not a PromQL parser: it finds the metric names, label matchers and grouping labels
of an expression, which is what the tests check against the contract. Syntax is checked by
promtool (tests feed every expression to `promtool check rules`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Metric name -> its labels (besides the target labels job and instance). Names are fixed by the
# worker (stream/metrics.py) and the publisher (connectors/); dashboards and alerts use nothing else.
METRICS: dict[str, frozenset[str]] = {
    "rollout_gate_stage_info": frozenset({"rollout", "stage"}),
    "rollout_gate_canary_weight_ratio": frozenset({"rollout"}),
    "rollout_gate_gate_status": frozenset({"rollout", "gate"}),
    "rollout_gate_gate_ratio": frozenset({"rollout", "gate"}),
    "rollout_gate_gate_threshold_ratio": frozenset({"rollout", "gate"}),
    "rollout_gate_window_samples": frozenset({"rollout", "arm"}),
    "rollout_gate_decisions_total": frozenset({"rollout", "action"}),
    "rollout_gate_events_total": frozenset({"arm"}),
    "rollout_gate_rejected_events_total": frozenset({"reason"}),
    "rollout_gate_event_time_lag_seconds": frozenset({"rollout"}),
    "rollout_gate_consumer_lag_messages": frozenset({"topic", "partition"}),
    "rollout_gate_drift_alarms_total": frozenset({"rollout", "arm", "signal"}),
    "rollout_gate_batch_seconds_bucket": frozenset({"le"}),
    "rollout_gate_batch_seconds_sum": frozenset(),
    "rollout_gate_batch_seconds_count": frozenset(),
    "rollout_gate_publisher_dropped_total": frozenset({"reason"}),
    "rollout_gate_decision_info": frozenset({"rollout", "action", "trigger", "reason"}),
    "rollout_gate_command_refusals_total": frozenset({"action", "reason"}),
    "rollout_gate_notifications_total": frozenset({"sink", "outcome"}),
}
# The metric families of the brief (a histogram counts once).
FAMILIES = {"rollout_gate_batch_seconds" if n.startswith("rollout_gate_batch_seconds") else n for n in METRICS}
TARGET_LABELS = frozenset({"job", "instance"})
# Prometheus' own scrape metric, allowed in alert rules (worker down), not needed on the dashboard.
UP = {"up": frozenset()}

# Closed label values of the contract: a typo in a matcher selects nothing, silently.
LABEL_VALUES: dict[str, frozenset[str]] = {
    "gate": frozenset({"latency", "cost", "errors", "output_length", "feedback"}),
    "action": frozenset({"promote", "halt", "complete", "hold"}),
    "arm": frozenset({"baseline", "canary", "shadow"}),
}
STAGE_WORDS = frozenset({"shadow", "rolled-back", "complete"})  # plus canary-<percent>

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
        "start",
        "end",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)")


@dataclass(frozen=True)
class Matcher:
    metric: str | None
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Scan:
    metrics: frozenset[str]
    matchers: tuple[Matcher, ...]
    grouping_labels: frozenset[str]


def scan(expr: str) -> Scan:
    """Metric names, label matchers and by/on/without/ignoring labels of a PromQL expression."""
    matchers: list[Matcher] = []
    for m in _SELECTOR.finditer(expr):
        metric = m.group(1)
        for lm in _MATCHER.finditer(m.group(2)):
            matchers.append(Matcher(metric, lm.group(1), lm.group(2), lm.group(3)[1:-1]))
    grouping: set[str] = set()
    for g in _GROUPING.finditer(expr):
        grouping.update(x.strip() for x in g.group(2).split(",") if x.strip())

    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\boffset\s+-?[\w$]+", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    names: set[str] = set()
    for m in _IDENT.finditer(s):
        word = m.group(1)
        rest = s[m.end() :].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    for mt in matchers:
        if mt.label == "__name__":
            names.add("__name__ selector")  # never allowed: hides metric names from this check
    return Scan(frozenset(names), tuple(matchers), frozenset(grouping))


def _literal_values(value: str, op: str) -> list[str]:
    if "$" in value or value in {".*", ".+"}:
        return []
    if op in ("=", "!="):
        return [value]
    if re.fullmatch(r"[\w.-]+(\|[\w.-]+)*", value):  # a plain alternation
        return value.split("|")
    return []


def problems(expr: str, *, allowed: dict[str, frozenset[str]] | None = None) -> list[str]:
    """Everything in ``expr`` that does not fit the metric contract (empty: it fits)."""
    allowed = METRICS if allowed is None else allowed
    found = scan(expr)
    out: list[str] = []
    if not found.metrics:
        out.append("references no metric")
    unknown = sorted(found.metrics - set(allowed))
    if unknown:
        out.append(f"unknown metric(s) {unknown}")
    known_labels: set[str] = set(TARGET_LABELS)
    for name in found.metrics & set(allowed):
        known_labels |= allowed[name]
    for mt in found.matchers:
        labels = (allowed.get(mt.metric, frozenset()) | TARGET_LABELS) if mt.metric else known_labels
        if mt.metric and mt.metric in allowed and mt.label not in labels:
            out.append(f"{mt.metric} has no label {mt.label!r}")
        for v in _literal_values(mt.value, mt.op):
            if mt.label in LABEL_VALUES and v not in LABEL_VALUES[mt.label]:
                out.append(f"{mt.label}={v!r} is not one of {sorted(LABEL_VALUES[mt.label])}")
            if mt.label == "stage" and v not in STAGE_WORDS and not re.fullmatch(r"canary-\d+(\.\d+)?", v):
                out.append(f"stage={v!r} is not shadow, canary-<percent>, rolled-back or complete")
    stray = sorted(found.grouping_labels - known_labels)
    if stray:
        out.append(f"grouping by label(s) {stray} that none of its metrics has")
    return out
