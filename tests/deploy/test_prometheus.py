"""deploy/prometheus: alert rules, their promtool unit tests and the scrape config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.conftest import CHART, PROM_DIR, ROOT, load_yaml, require_tool, run
from tests.deploy.promql import METRICS, UP, problems, scan

RULES = PROM_DIR / "rules.yml"
RULES_TEST = PROM_DIR / "rules_test.yml"
CONFIG = PROM_DIR / "prometheus.yml"

# The alerts the deployment promises (brief: halted, breach, insufficient for long, event-time lag,
# consumer lag, DLQ/rejections, worker down, publisher drops, the lesson's shadow cost spike).
REQUIRED_ALERTS = {
    "RolloutHalted",
    "RolloutGateBreach",
    "RolloutGateInsufficientTooLong",
    "RolloutEventTimeLagHigh",
    "RolloutGateConsumerLagHigh",
    "RolloutGateDeadLetterRateHigh",
    "RolloutGateWorkerDown",
    "RolloutPublisherDroppingEvents",
    "RolloutShadowCostSpike",
}


def _alerts() -> list[dict]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]


def test_every_promised_alert_exists_once() -> None:
    names = [a["alert"] for a in _alerts()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert set(names) == REQUIRED_ALERTS


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_and_actionable_text(alert: dict) -> None:
    assert alert["labels"]["severity"] in {"critical", "warning", "info"}
    assert alert["labels"].get("component") == "rollout-gate"
    for key in ("summary", "description", "runbook"):
        text = alert["annotations"].get(key, "")
        assert len(text.split()) >= 4, f"{alert['alert']}: annotation {key!r} is missing or too short"


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_uses_only_contract_metrics(alert: dict) -> None:
    assert problems(alert["expr"], allowed={**METRICS, **UP}) == []


def test_shadow_cost_alert_is_the_lessons_rule() -> None:
    """Shadow mode catches a 40% cost spike: cost ratio > 1.4 while the rollout's stage is shadow."""
    (alert,) = [a for a in _alerts() if a["alert"] == "RolloutShadowCostSpike"]
    expr = " ".join(alert["expr"].split())
    assert 'rollout_gate_gate_ratio{gate="cost"} > 1.4' in expr
    assert 'and on(rollout) rollout_gate_stage_info{stage="shadow"} == 1' in expr


def test_worker_down_selects_the_job_the_scrape_configs_use() -> None:
    (alert,) = [a for a in _alerts() if a["alert"] == "RolloutGateWorkerDown"]
    jobs = set(re.findall(r'job="([^"]+)"', alert["expr"]))
    assert jobs == {"rollout-gate-worker"}
    config_jobs = {c["job_name"] for c in load_yaml(CONFIG)["scrape_configs"]}
    assert jobs <= config_jobs
    values = load_yaml(CHART / "values.yaml")
    assert values["metrics"]["jobName"] in jobs


def test_every_alert_has_unit_tests_that_fire_and_stay_silent() -> None:
    suite = load_yaml(RULES_TEST)
    assert suite["rule_files"] == ["rules.yml"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fired == REQUIRED_ALERTS, f"alerts never tested firing: {REQUIRED_ALERTS - fired}"
    assert silent == REQUIRED_ALERTS, f"alerts never tested silent: {REQUIRED_ALERTS - silent}"


def test_chart_ships_the_same_rules() -> None:
    assert (CHART / "files" / "rules.yml").read_bytes() == RULES.read_bytes(), (
        "helm/rollout-gate/files/rules.yml differs from deploy/prometheus/rules.yml: "
        "cp deploy/prometheus/rules.yml helm/rollout-gate/files/rules.yml"
    )


def test_scrape_config_points_at_compose_services() -> None:
    config = load_yaml(CONFIG)
    compose = load_yaml(ROOT / "docker-compose.yml")
    for rule_file in config["rule_files"]:
        assert (PROM_DIR / rule_file).is_file(), rule_file
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                if host == "localhost":
                    continue
                assert host in compose["services"], f"{job['job_name']}: no compose service {host!r}"
                published = " ".join(str(p) for p in compose["services"][host].get("ports", []))
                command = " ".join(str(c) for c in compose["services"][host].get("command", []))
                env = compose["services"][host].get("environment", {})
                assert f":{port}" in published or port in command or str(env.get("ROLLOUT_GATE_METRICS_PORT")) == port, (
                    f"{job['job_name']}: {target} is not a port of service {host}"
                )
        for sd in job.get("file_sd_configs", []):
            for pattern in sd["files"]:
                assert list(PROM_DIR.glob(pattern)), f"{pattern}: no example target file"


# -- promtool ------------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    promtool = require_tool("promtool")
    result = run([promtool, "test", "rules", RULES_TEST.name], cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config() -> None:
    promtool = require_tool("promtool")
    result = run([promtool, "check", "config", CONFIG.name], cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check above is only worth something if promtool does fail on a bad expression here."""
    promtool = require_tool("promtool")
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n")
    assert run([promtool, "check", "rules", str(bad)]).returncode != 0


def test_scanner_sees_every_metric_of_a_rule() -> None:
    """Guards the scanner: the shadow rule names two metrics, the worker-down rule only `up`."""
    by_name = {a["alert"]: a for a in _alerts()}
    assert scan(by_name["RolloutShadowCostSpike"]["expr"]).metrics == {
        "rollout_gate_gate_ratio",
        "rollout_gate_stage_info",
    }
    assert scan(by_name["RolloutGateWorkerDown"]["expr"]).metrics == {"up"}


def test_rollout_halted_needs_no_history_of_the_target() -> None:
    """Counters exist at 0 from the moment the worker knows a rollout (also after a restart), so a
    plain increase() sees the first halt; no fallback that waits for the target's past."""
    (alert,) = [a for a in _alerts() if a["alert"] == "RolloutHalted"]
    expr = " ".join(alert["expr"].split())
    assert expr == 'increase(rollout_gate_decisions_total{action="halt"}[15m]) > 0'
    assert "for" not in alert
