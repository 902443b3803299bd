"""deploy/grafana: the dashboard JSON and its provisioning for docker-compose."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import GRAFANA_DIR, ROOT, load_yaml, require_tool, run
from tests.deploy.promql import FAMILIES, METRICS, problems, scan

DASHBOARD = GRAFANA_DIR / "rollout-gate.json"
PANEL_TYPES = {"row", "timeseries", "stat", "state-timeline", "bargauge", "table", "heatmap", "text", "gauge"}
# Labels that only the rollout-scoped metrics carry: those panels must follow the $rollout variable.
ROLLOUT_SCOPED = {name for name, labels in METRICS.items() if "rollout" in labels}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _queries() -> list[tuple[str, str]]:
    """(where, expr) for every PromQL expression: panel targets, annotations and variables."""
    d = _dashboard()
    out = []
    for p in _panels(d["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for a in d["annotations"]["list"]:
        if "expr" in a:
            out.append((f"annotation {a['name']!r}", a["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            assert inner, f"variable {v['name']}: expected label_values(<selector>, <label>), got {q!r}"
            out.append((f"variable {v['name']!r}", inner.group(1)))
    return out


def test_is_valid_json_with_stable_identity() -> None:
    d = _dashboard()
    assert d["uid"] == "rollout-gate"
    assert d["title"]
    assert isinstance(d["schemaVersion"], int)
    assert "id" not in d or d["id"] is None, "an exported numeric id breaks provisioning into another Grafana"


def test_per_rollout_variable() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    rollout = variables["rollout"]
    assert rollout["type"] == "query"
    assert rollout["multi"] is True and rollout["includeAll"] is True
    assert "label_values(rollout_gate_stage_info, rollout)" in json.dumps(rollout["query"])


@pytest.mark.parametrize("where_expr", _queries(), ids=lambda we: we[0])
def test_every_query_uses_only_contract_metrics(where_expr: tuple[str, str]) -> None:
    where, expr = where_expr
    assert problems(expr) == [], f"{where}: {expr}"


@pytest.mark.parametrize("where_expr", _queries(), ids=lambda we: we[0])
def test_rollout_scoped_queries_follow_the_rollout_variable(where_expr: tuple[str, str]) -> None:
    where, expr = where_expr
    if where == "variable 'rollout'":
        return
    used = scan(expr).metrics & ROLLOUT_SCOPED
    for metric in used:
        assert re.search(re.escape(metric) + r'\{[^}]*rollout=~"\$rollout"', expr), (
            f'{where}: {metric} is not filtered by rollout=~"$rollout"'
        )


def test_every_metric_family_is_on_the_dashboard() -> None:
    used: set[str] = set()
    for _, expr in _queries():
        used |= scan(expr).metrics
    used_families = {"rollout_gate_batch_seconds" if m.startswith("rollout_gate_batch_seconds") else m for m in used}
    assert used_families == FAMILIES, f"not shown: {sorted(FAMILIES - used_families)}"


@pytest.mark.parametrize(
    ("panel_type", "metric"),
    [
        ("stat", "rollout_gate_stage_info"),
        ("state-timeline", "rollout_gate_stage_info"),
        ("timeseries", "rollout_gate_canary_weight_ratio"),
        ("state-timeline", "rollout_gate_gate_status"),
        ("timeseries", "rollout_gate_gate_ratio"),
        ("timeseries", "rollout_gate_gate_threshold_ratio"),
        ("timeseries", "rollout_gate_window_samples"),
        ("timeseries", "rollout_gate_decisions_total"),
        ("timeseries", "rollout_gate_events_total"),
        ("timeseries", "rollout_gate_rejected_events_total"),
        ("timeseries", "rollout_gate_event_time_lag_seconds"),
        ("timeseries", "rollout_gate_consumer_lag_messages"),
        ("timeseries", "rollout_gate_drift_alarms_total"),
        ("timeseries", "rollout_gate_batch_seconds_bucket"),
        ("timeseries", "rollout_gate_publisher_dropped_total"),
        ("table", "rollout_gate_decision_info"),
        ("timeseries", "rollout_gate_command_refusals_total"),
        ("timeseries", "rollout_gate_notifications_total"),
    ],
)
def test_required_panel(panel_type: str, metric: str) -> None:
    for p in _panels(_dashboard()["panels"]):
        if p["type"] == panel_type and any(metric in scan(t["expr"]).metrics for t in p.get("targets", [])):
            return
    pytest.fail(f"no {panel_type} panel shows {metric}")


def test_ratio_and_threshold_share_a_panel_repeated_per_gate() -> None:
    for p in _panels(_dashboard()["panels"]):
        metrics = set().union(*(scan(t["expr"]).metrics for t in p.get("targets", [])))
        if {"rollout_gate_gate_ratio", "rollout_gate_gate_threshold_ratio"} <= metrics:
            assert p.get("repeat") == "gate"
            return
    pytest.fail("no panel plots a gate's ratio against its threshold")


def test_gate_status_mapping_matches_the_metric() -> None:
    (panel,) = [
        p for p in _panels(_dashboard()["panels"]) if any("rollout_gate_gate_status" in t["expr"] for t in p.get("targets", []))
    ]
    mapping = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {k: v["text"] for k, v in mapping.items()} == {"0": "pass", "1": "insufficient", "2": "breach"}


def test_panels_are_well_formed_and_do_not_overlap() -> None:
    panels = list(_panels(_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        assert p["type"] in PANEL_TYPES, p["type"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"{p['title']}: outside the 24-column grid"
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p.get("description"), f"{p['title']}: panels explain what they show"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_compose_provisioning_points_at_the_dashboard() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["volumes"] if v.startswith("./"))
    dashboard_target = mounts["./deploy/grafana/rollout-gate.json"]
    provisioning_target = mounts["./deploy/grafana/provisioning"]
    assert provisioning_target == "/etc/grafana/provisioning"
    providers = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "rollout-gate.yml")["providers"]
    assert any(Path(dashboard_target).parent == Path(p["options"]["path"]) for p in providers)
    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    (prom,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prom["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in load_yaml(ROOT / "docker-compose.yml")["services"]["prometheus"]["ports"]


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Grafana variables replaced by plain values, each query becomes a recording rule for promtool."""
    promtool = require_tool("promtool")
    rules = []
    for i, (_, expr) in enumerate(_queries()):
        plain = expr.replace("$__rate_interval", "5m").replace("$rollout", ".*").replace("$gate", ".*")
        assert "$" not in plain, f"unhandled Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": plain})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_decisions_panel_shows_a_counter_that_appears_already_counted() -> None:
    """The start decision is counted with the rollout's first events, before any scrape: increase()
    alone would never show it."""
    (panel,) = [p for p in _panels(_dashboard()["panels"]) if p["title"] == "Decisions by action"]
    expr = " ".join(panel["targets"][0]["expr"].split())
    x = 'rollout_gate_decisions_total{rollout=~"$rollout"}'
    assert expr == f"sum by (rollout, action) (clamp_min({x} - ({x} offset $__rate_interval or {x} * 0), 0))"


def test_latest_decision_table_shows_the_reason_label() -> None:
    (panel,) = [p for p in _panels(_dashboard()["panels"])
                if any("rollout_gate_decision_info" in t["expr"] for t in p.get("targets", []))]
    assert panel["type"] == "table"
    (target,) = panel["targets"]
    assert target["instant"] is True and target.get("format") == "table"
    assert scan(target["expr"]).grouping_labels >= {"rollout", "action", "trigger", "reason"}
