"""The shipped alert rules in a real Prometheus scraping a real worker: RolloutHalted fires within
2 minutes of a halt, before and right after a worker restart (a new instance, state restored).

Only the scrape and evaluation intervals are the test's (1 s); the rules file is
deploy/prometheus/rules.yml as shipped. Needs the ``prometheus`` binary (Debian's package).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO, Topics
from tests.integration.helpers import decoded, has_action, of, stop_process, wait_for
from tests.integration.kafka_io import produce, read_until
from tests.integration.streams import BASELINE, CANARY, generate, messages, recent_start
from tests.integration.workerproc import Worker, free_port

pytestmark = pytest.mark.integration

RULES = REPO / "deploy" / "prometheus" / "rules.yml"
ALERT_WITHIN = 120.0
COSTLY = CANARY.scaled(usd_per_1k_tokens=0.0027)  # 1.35x the baseline's cost: the cost gate halts it


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
        self.port = free_port()
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "rollout-gate-worker", "metrics_path": "/metrics",
                                "static_configs": [{"targets": targets}]}],
        }))
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_for(self._ready, 60), self.log_tail()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"]
                if a["labels"].get("alertname") == alertname and a["state"] == "firing"
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def value(self, query: str) -> float | None:
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join((self.workdir / "prometheus.log").read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
def two_ports(worker_env: dict[str, str]) -> tuple[int, int]:
    return int(worker_env["ROLLOUT_GATE_METRICS_PORT"]), free_port()


@pytest.fixture
def prometheus(tmp_path: Path, two_ports: tuple[int, int]) -> Iterator[Prometheus]:
    workdir = tmp_path / "prom"
    workdir.mkdir()
    prom = Prometheus(workdir, [f"127.0.0.1:{p}" for p in two_ports])
    yield prom
    prom.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def costly(rollout_id: str, seed: int, start: float) -> list[dict[str, Any]]:
    return generate(rollout_id, seconds=40, seed=seed, start=start, arms={"baseline": BASELINE, "canary": COSTLY})


def halt_and_time_the_alert(prom: Prometheus, kafka_bootstrap: str, topics: Topics, rollout_id: str,
                            rest: list[dict[str, Any]], instance: str) -> float:
    """Produce the rest of a costly rollout, wait for its halt decision, then for RolloutHalted;
    returns the seconds from the halt on the decisions topic to the alert firing."""
    run(produce(kafka_bootstrap, topics.events, messages(rest, 50)))
    msgs = run(read_until(kafka_bootstrap, topics.decisions, has_action(rollout_id, "halt"), timeout=90))
    halted_at = time.monotonic()
    assert any(d["action"] == "halt" for d in of(rollout_id, decoded(msgs))), [d["reason"] for d in decoded(msgs)]
    fired = wait_for(lambda: prom.firing("RolloutHalted", rollout=rollout_id, instance=instance),
                     ALERT_WITHIN, interval=0.5)
    took = time.monotonic() - halted_at
    assert fired, f"RolloutHalted for {rollout_id} did not fire within {ALERT_WITHIN:g}s:\n{prom.log_tail()}"
    (alert,) = fired
    assert alert["labels"]["severity"] == "warning" and alert["labels"]["action"] == "halt"
    assert f"Rollout {rollout_id} was halted" in alert["annotations"]["summary"]
    return took


def decisions_panel(prom: Prometheus) -> dict[tuple[str, str], float]:
    """The dashboard's "Decisions by action" query over the last 5 minutes, summed per series."""
    dashboard = json.loads((REPO / "deploy" / "grafana" / "rollout-gate.json").read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Decisions by action"]
    expr = panel["targets"][0]["expr"].replace("$__rate_interval", "15s").replace("$rollout", ".*")
    now = time.time()
    # a step of the scrape interval: the first worker stopped a second or two after its halt
    data = prom.api("query_range", query=expr, start=str(now - 300), end=str(now), step="1")
    return {(r["metric"]["rollout"], r["metric"]["action"]): max(float(v) for _, v in r["values"])
            for r in data["result"]}


def test_rollout_halted_fires_within_two_minutes_also_after_a_worker_restart(
        worker: Worker, worker_env: dict[str, str], topics: Topics, kafka_bootstrap: str,
        prometheus: Prometheus, two_ports: tuple[int, int], tmp_path: Path) -> None:
    first, second = (f"127.0.0.1:{p}" for p in two_ports)
    start = recent_start(600)
    a = costly("chat-h1", 11, start)
    b = costly("chat-h2", 12, start)
    head = lambda evs: [e for e in evs if e["ts"] < start + 3]  # noqa: E731 - fewer than min_blocks of blocks
    tail = lambda evs: [e for e in evs if e["ts"] >= start + 3]  # noqa: E731
    worker.start()
    # both rollouts known (their counters at 0), neither judged yet
    run(produce(kafka_bootstrap, topics.events, messages(head(a) + head(b), 50)))
    for rid in ("chat-h1", "chat-h2"):
        assert wait_for(lambda rid=rid: prometheus.value(
            f'rollout_gate_decisions_total{{rollout="{rid}",action="halt",instance="{first}"}}') == 0, 60), \
            prometheus.log_tail()

    took = halt_and_time_the_alert(prometheus, kafka_bootstrap, topics, "chat-h1", tail(a), first)
    assert took < ALERT_WITHIN
    assert not prometheus.firing("RolloutHalted", rollout="chat-h2")
    # the dashboard's "Decisions by action" query shows the start decision and the halt
    shown = decisions_panel(prometheus)
    assert shown.get(("chat-h1", "promote"), 0) >= 1 and shown.get(("chat-h1", "halt"), 0) >= 1, shown
    assert shown.get(("chat-h2", "promote"), 0) >= 1, shown

    # restart as a new instance (another port): chat-h2 is restored, its counters start at 0 there
    worker.stop()
    restarted = Worker({**worker_env, "ROLLOUT_GATE_METRICS_PORT": str(two_ports[1])}, tmp_path, "worker-2")
    try:
        restarted.start()
        assert wait_for(lambda: prometheus.value(
            f'rollout_gate_decisions_total{{rollout="chat-h2",action="halt",instance="{second}"}}') == 0, 60), \
            restarted.log_tail()
        # the restored halted rollout does not page again on the new instance
        assert prometheus.value(
            f'rollout_gate_decisions_total{{rollout="chat-h1",action="halt",instance="{second}"}}') == 0
        took2 = halt_and_time_the_alert(prometheus, kafka_bootstrap, topics, "chat-h2", tail(b), second)
        assert took2 < ALERT_WITHIN
        assert not prometheus.firing("RolloutHalted", rollout="chat-h1", instance=second)
        shown = decisions_panel(prometheus)
        assert shown.get(("chat-h2", "halt"), 0) == 1 and shown.get(("chat-h1", "halt"), 0) == 1, shown
        print(f"RolloutHalted fired {took:.1f}s after the halt, {took2:.1f}s after the halt following a restart")
    finally:
        restarted.stop()
