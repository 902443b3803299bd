"""Decision counters created at 0, the latest-decision info metric and the refusal counter."""

from __future__ import annotations

import asyncio

from gates.decision import Decision, GateResult
from stream.metrics import DECISION_ACTIONS, Metrics, reason_code
from stream.processor import Processor

from .fakes import FakeEngine, FakeStatus, ListSink


def _decision(action: str, trigger: str = "gates", gates: list[GateResult] | None = None, seq: int = 2) -> Decision:
    return Decision(rollout_id="r1", seq=seq, ts=1767225600.0, action=action, stage="canary-10", weight=10.0,
                    previous_weight=1.0, baseline_digest=None, canary_digest=None, gates=gates or [],
                    reason="a sentence with numbers 1.23x", trigger=trigger)


def _gate(name: str, status: str) -> GateResult:
    return GateResult(name=name, status=status, observed=1.0, baseline=1.0, ratio=1.0, threshold=1.2, samples={})


def test_every_action_counter_exists_at_zero_as_soon_as_the_rollout_is_known() -> None:
    m = Metrics()
    m.observe_status("r1", FakeStatus(stage="canary-1", weight=1.0))
    text = m.render().decode()
    for action in DECISION_ACTIONS:
        assert f'rollout_gate_decisions_total{{action="{action}",rollout="r1"}} 0.0' in text
    m.count_decision(_decision("halt", gates=[_gate("latency", "pass"), _gate("cost", "breach")]))
    text = m.render().decode()
    assert 'rollout_gate_decisions_total{action="halt",rollout="r1"} 1.0' in text
    assert 'rollout_gate_decisions_total{action="promote",rollout="r1"} 0.0' in text
    assert ('rollout_gate_decision_info{action="halt",reason="cost breach",rollout="r1",trigger="gates"} '
            '1.7672256e+09') in text


def test_counters_are_created_again_after_a_restore() -> None:
    """A restarted worker (new process, new counters) knows its rollouts from the restore."""
    engine = FakeEngine()
    engine.state["r9"] = {"count": {}, "seq": 4, "offsets": {}, "watermark": 0.0, "paused": False, "alarms": {}}
    blob = engine.snapshot("r9")
    m = Metrics()
    proc = Processor(FakeEngine, ListSink(), m)
    assert asyncio.run(proc.restore([("r9", blob)])) == 1
    text = m.render().decode()
    for action in DECISION_ACTIONS:
        assert f'rollout_gate_decisions_total{{action="{action}",rollout="r9"}} 0.0' in text


def test_reason_codes_have_bounded_cardinality() -> None:
    assert reason_code(_decision("halt", gates=[_gate("cost", "pass"), _gate("errors", "breach")])) == "errors breach"
    assert reason_code(_decision("halt", trigger="operator")) == "operator rollback"
    assert reason_code(_decision("hold", trigger="operator")) == "operator pause"
    assert reason_code(_decision("promote", trigger="operator")) == "operator promote"
    assert reason_code(_decision("complete", trigger="operator")) == "operator promote"
    assert reason_code(_decision("hold", trigger="timeout")) == "max step time"
    assert reason_code(_decision("promote", trigger="start", seq=1)) == "rollout started"
    assert reason_code(_decision("promote")) == "all gates pass"
    assert reason_code(_decision("complete")) == "all gates pass"


def test_refusals_are_counted_by_action_and_reason() -> None:
    m = Metrics()
    m.count_command_refusal("pause", "halted")
    m.count_command_refusal("pause", "halted")
    text = m.render().decode()
    assert 'rollout_gate_command_refusals_total{action="pause",reason="halted"} 2.0' in text


def test_an_ended_rollouts_precreated_counters_go_with_it() -> None:
    now = [1000.0]
    m = Metrics(clock=lambda: now[0], ended_retention_seconds=10)
    m.observe_status("r1", FakeStatus(stage="rolled-back", weight=0.0, terminal=True))
    m.count_decision(_decision("halt", trigger="operator"))
    now[0] += 11
    assert m.expire_ended() == ["r1"]
    assert 'rollout="r1"' not in m.render().decode()
