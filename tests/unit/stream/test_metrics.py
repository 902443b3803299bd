from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from gates.decision import GateResult
from stream.metrics import Metrics, MetricsServer, split_alarm_key

from .fakes import FakeStatus

NAMES = [
    "rollout_gate_stage_info", "rollout_gate_canary_weight_ratio", "rollout_gate_gate_status",
    "rollout_gate_gate_ratio", "rollout_gate_gate_threshold_ratio", "rollout_gate_window_samples",
    "rollout_gate_decisions_total", "rollout_gate_events_total", "rollout_gate_rejected_events_total",
    "rollout_gate_event_time_lag_seconds", "rollout_gate_consumer_lag_messages",
    "rollout_gate_drift_alarms_total", "rollout_gate_batch_seconds",
]


def _status(alarms: dict[str, int]) -> FakeStatus:
    gates = [GateResult(name="latency", status="insufficient", observed=None, baseline=None, ratio=None,
                        threshold=1.5, samples={}),
             GateResult(name="cost", status="breach", observed=2.0, baseline=1.0, ratio=2.0, threshold=1.2,
                        samples={})]
    return FakeStatus(stage="canary-10", weight=10.0, gates=gates, samples={"baseline": 5, "canary": 3},
                      watermark=100.0, drift_alarms=alarms)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_status_is_mirrored_and_drift_counts_move_by_difference() -> None:
    m = Metrics(clock=lambda: 130.0)
    m.observe_status("r1", _status({"canary:output_tokens": 2}))
    m.observe_status("r1", _status({"canary:output_tokens": 3, "refusal": 1}))
    m.set_consumer_lag("rollout.events", 0, 42)
    text = m.render().decode()
    assert 'rollout_gate_gate_status{gate="latency",rollout="r1"} 1.0' in text
    assert 'rollout_gate_gate_status{gate="cost",rollout="r1"} 2.0' in text
    assert 'rollout_gate_gate_ratio{gate="latency",rollout="r1"} NaN' in text
    assert 'rollout_gate_canary_weight_ratio{rollout="r1"} 0.1' in text
    assert 'rollout_gate_event_time_lag_seconds{rollout="r1"} 30.0' in text
    assert 'rollout_gate_drift_alarms_total{arm="canary",rollout="r1",signal="output_tokens"} 3.0' in text
    assert 'rollout_gate_drift_alarms_total{arm="canary",rollout="r1",signal="refusal"} 1.0' in text
    assert 'rollout_gate_consumer_lag_messages{partition="0",topic="rollout.events"} 42.0' in text
    assert split_alarm_key("shadow:latency") == ("shadow", "latency")


def test_every_metric_is_exposed_and_promtool_accepts_them() -> None:
    m = Metrics()
    m.observe_status("r1", _status({"canary:x": 1}))
    m.set_consumer_lag("t", 0, 1)
    m.batch_seconds.observe(0.01)
    from collections import Counter

    m.count_events(Counter({"canary": 1}))
    m.count_rejections(Counter({"arm_invalid": 1}))
    from .fakes import FakeEngine

    m.count_decision(FakeEngine()._decide("r1", "promote", 1.0, "x"))
    text = m.render().decode()
    for name in NAMES:
        assert f"\n{name}" in "\n" + text or f"# TYPE {name.removesuffix('_total')}" in text, name
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/test installs it)")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_http_server_serves_metrics_health_and_readiness() -> None:
    m = Metrics()
    server = MetricsServer(m, "127.0.0.1", 0, stale_after=0.5)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        code, body = _get(base + "/metrics")
        assert code == 200 and "rollout_gate_batch_seconds_bucket" in body
        assert _get(base + "/readyz")[0] == 503
        m.ready = True
        assert _get(base + "/readyz") == (200, "ready\n")
        m.heartbeat = time.monotonic()
        assert _get(base + "/healthz")[0] == 200
        m.heartbeat = time.monotonic() - 5
        assert _get(base + "/healthz")[0] == 503
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_rollout_gauges_are_built_at_scrape_time_and_survive_concurrent_updates() -> None:
    import threading

    now = [130.0]
    m = Metrics(clock=lambda: now[0])
    m.observe_status("r1", _status({}))
    assert 'rollout_gate_event_time_lag_seconds{rollout="r1"} 30.0' in m.render().decode()
    now[0] = 160.0  # idle rollout: the lag grows without a new batch
    assert 'rollout_gate_event_time_lag_seconds{rollout="r1"} 60.0' in m.render().decode()

    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            m.observe_status(f"w{i % 500}", _status({}))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(20):
            m.render()  # must not fail with "dictionary changed size during iteration"
    finally:
        stop.set()
        t.join()
    assert len(m.rollouts) == 501
    m.forget_rollouts()
    assert "rollout_gate_stage_info{" not in m.render().decode()


def test_an_ended_rollouts_series_go_after_the_retention_and_the_others_stay() -> None:
    from types import SimpleNamespace

    from gates.decision import Decision

    now = [1000.0]
    m = Metrics(clock=lambda: now[0], ended_retention_seconds=3600)

    def status(stage: str, terminal: bool) -> SimpleNamespace:
        return SimpleNamespace(stage=stage, weight=0.0 if terminal else 10.0, gates=[], samples={"canary": 5},
                               watermark=now[0], drift_alarms={"canary:log_length": 1}, terminal=terminal)

    for rid, stage, terminal in (("old", "rolled-back", True), ("live", "canary-10", False)):
        m.observe_status(rid, status(stage, terminal))
        m.count_decision(Decision(rollout_id=rid, seq=1, ts=now[0], action="halt" if terminal else "promote",
                                  stage=stage, weight=0.0, previous_weight=1.0, baseline_digest=None,
                                  canary_digest=None, gates=[], reason="r"))
    now[0] += 1800
    m.observe_status("old", status("rolled-back", True))  # seen again: the retention runs from the first time
    assert m.expire_ended() == []
    now[0] += 1801
    assert m.expire_ended() == ["old"]
    text = m.render().decode()
    assert 'rollout="old"' not in text
    assert 'rollout_gate_stage_info{rollout="live",stage="canary-10"} 1.0' in text
    assert 'rollout_gate_decisions_total{action="promote",rollout="live"} 1.0' in text
    assert 'rollout_gate_drift_alarms_total{arm="canary",rollout="live",signal="log_length"} 1.0' in text
