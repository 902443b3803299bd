"""The Engine's behaviour: operator commands, steps, timeouts, shadow, feedback, evidence."""

from __future__ import annotations

import itertools
import math

import msgspec
import numpy as np
import orjson
import pytest

from gates.commands import Command
from gates.decision import Decision
from gates.engine import Engine, RolloutState
from gates.events import Event, FeedbackEvent, InferenceEvent, decode_message
from gates.policy import PolicySet, RolloutPolicy, ShadowSpec
from gates.sim import Injection, SimConfig, parse_injections, run
from gates.stats import cs_z

from .helpers import RID, SMALL, T0, ev, small_policy, stream

CONTRACT_GATE_FIELDS = ("name", "status", "observed", "baseline", "ratio", "threshold", "samples")


def cmd(action: str, ts: float, rollout_id: str = RID, **kw: str) -> Command:
    return Command(rollout_id=rollout_id, action=action, ts=ts, **kw)


def state(engine: Engine, rollout_id: str = RID) -> RolloutState:
    """The rollout's state, read through the public snapshot."""
    return msgspec.msgpack.decode(engine.snapshot(rollout_id), type=RolloutState)


# ---- start, promote, complete ---------------------------------------------------------------------


def test_first_event_starts_the_rollout_at_the_first_step() -> None:
    e = Engine(small_policy())
    out = e.ingest([ev("baseline", T0 + 0.5)])
    assert len(out) == 1
    d = out[0]
    assert (d.seq, d.action, d.stage, d.weight, d.previous_weight) == (1, "promote", "canary-1", 1.0, 0.0)
    # the rollout starts on the eval tick that holds its first event
    tick = SMALL["eval_seconds"]
    assert d.ts == math.floor((T0 + 0.5) / tick) * tick <= T0 + 0.5
    assert d.trigger == "start" and d.reason


def test_a_single_step_policy_completes_at_once() -> None:
    e = Engine(small_policy(steps=[100]))
    d = e.ingest([ev("canary", T0)])[0]
    assert (d.action, d.stage, d.weight) == ("complete", "complete", 100.0)
    assert e.ingest([ev("canary", T0 + 100)]) == []


def test_an_aa_canary_walks_all_steps_to_complete() -> None:
    # the gates that need the most samples (feedback at a 3% negative rate, the two-sided P99 of
    # output length) are off or loosened, to keep the stream short: this is about the walk, not power
    e = Engine(small_policy(gates={"feedback": {"enabled": False}, "output_length": {"p99_ratio": 2.0}}))
    out = e.ingest(stream(3, seconds=1500, weight=50, rps=30))
    actions = [d.action for d in out]
    assert actions == ["promote"] * 5 + ["complete"]
    assert [d.weight for d in out] == [1, 10, 25, 50, 75, 100]
    assert [d.previous_weight for d in out] == [0, 1, 10, 25, 50, 75]
    for d in out[1:]:
        assert d.trigger == "gates"
        assert all(g.status == "pass" for g in d.gates)
        assert "All 4 gates pass" in d.reason
    # each step lasted at least min_step_seconds
    gaps = np.diff([d.ts for d in out])
    assert np.all(gaps >= SMALL["min_step_seconds"])


# ---- operator commands ----------------------------------------------------------------------------


def test_pause_holds_and_blocks_promotion_until_resume() -> None:
    evs = stream(5, seconds=400, weight=50, rps=30)
    ref = Engine(small_policy()).ingest(evs)
    first_promote = next(d for d in ref if d.trigger == "gates" and d.action == "promote")

    e = Engine(small_policy())
    out = e.ingest([x for x in evs if x.ts < T0 + 1])
    hold = e.command(cmd("pause", T0 + 1, actor="alice", reason="investigating"))
    assert len(hold) == 1
    h = hold[0]
    assert (h.action, h.stage, h.weight, h.trigger) == ("hold", "canary-1", 1.0, "operator")
    assert "alice" in h.reason and "investigating" in h.reason
    assert e.status(RID).paused
    assert e.command(cmd("pause", T0 + 2)) == []  # already paused: no second hold
    paused = e.ingest([x for x in evs if T0 + 1 <= x.ts < T0 + 300])
    assert paused == [], "no decision while paused, although the reference run promoted"
    assert first_promote.ts < T0 + 300
    assert e.command(cmd("resume", T0 + 300)) == []
    assert not e.status(RID).paused
    after = e.ingest([x for x in evs if x.ts >= T0 + 300])
    assert after and after[0].action == "promote" and after[0].stage == "canary-10"
    assert [d.seq for d in out + hold + after] == list(range(1, len(out + hold + after) + 1))


def test_a_breach_halts_even_while_paused() -> None:
    evs = stream(6, parse_injections(["cost=+60%"]), seconds=300, weight=50, rps=30)
    e = Engine(small_policy())
    e.ingest(evs[:1])
    e.command(cmd("pause", evs[0].ts))
    out = e.ingest(evs[1:])
    assert [d.action for d in out] == ["halt"]
    assert out[0].stage == "rolled-back" and out[0].weight == 0.0
    assert next(g.name for g in out[0].gates if g.status == "breach") == "cost"


def test_rollback_halts_at_once_and_pins_the_baseline_digest() -> None:
    e = Engine(small_policy())
    e.ingest([ev("baseline", T0, model_digest="sha256:base"), ev("canary", T0 + 1, model_digest="sha256:cand")])
    out = e.command(cmd("rollback", T0 + 5, actor="bob", reason="weird answers"))
    assert len(out) == 1
    d = out[0]
    assert (d.action, d.stage, d.weight, d.previous_weight, d.trigger) == ("halt", "rolled-back", 0.0, 1.0, "operator")
    assert d.baseline_digest == "sha256:base" and d.canary_digest == "sha256:cand"
    assert "sha256:base" in d.reason and "bob" in d.reason
    assert e.status(RID).terminal
    # terminal: commands and events change nothing any more
    assert e.command(cmd("promote", T0 + 6)) == []
    assert e.command(cmd("resume", T0 + 6)) == []
    assert e.ingest(stream(1, seconds=60, start=T0 + 10)) == []


def test_promote_command_moves_to_the_next_step() -> None:
    e = Engine(small_policy())
    e.ingest([ev("baseline", T0)])
    out = e.command(cmd("promote", T0 + 3, actor="carol"))
    assert len(out) == 1
    d = out[0]
    assert (d.action, d.stage, d.weight, d.previous_weight, d.trigger) == ("promote", "canary-10", 10.0, 1.0, "operator")
    assert "carol" in d.reason
    assert e.status(RID).stage == "canary-10"
    # the new step keeps the evidence gathered so far (carry_evidence, the default)
    assert e.status(RID).samples == {"baseline": 1, "canary": 0}


def test_without_carry_evidence_a_new_step_starts_from_scratch() -> None:
    e = Engine(small_policy(carry_evidence=False))
    e.ingest([ev("baseline", T0)])
    e.command(cmd("promote", T0 + 3, actor="carol"))
    assert e.status(RID).stage == "canary-10"
    assert e.status(RID).samples == {"baseline": 0, "canary": 0}


def test_a_carried_window_still_waits_for_the_steps_own_samples_and_time() -> None:
    """The evidence carries over, the step's minimums do not: each step serves min_samples canary
    requests of its own and lasts min_step_seconds before it moves on."""
    engine = Engine(small_policy(min_samples=150))
    served: list[int] = [0]  # canary requests since the last decision

    class Counting:
        def ingest(self, events: list[Event]) -> list[Decision]:
            out = []
            for e in events:  # one at a time, so the count stops at the deciding event
                for d in engine.ingest([e]):
                    out.append(d)
                    served.append(0)
                if type(e) is InferenceEvent and e.arm == "canary":
                    served[-1] += 1
            return out

    res = run(Counting(), SimConfig(rps=100, seed=3, max_seconds=7200), parse_injections([]))
    steps = [d for d in res.decisions if d.action in ("promote", "complete")]
    assert [d.weight for d in steps] == [1, 10, 25, 50, 75, 100]
    for prev, nxt in itertools.pairwise(steps):
        assert nxt.ts - prev.ts >= SMALL["min_step_seconds"]
    # served[k]: canary requests between decision k and k+1 (the first one is the start)
    assert all(n >= 150 for n in served[1 : len(steps)]), served


def test_promote_command_on_a_paused_rollout_resumes_it() -> None:
    e = Engine(small_policy())
    e.ingest([ev("baseline", T0)])
    e.command(cmd("pause", T0 + 1))
    e.command(cmd("promote", T0 + 2))
    assert not e.status(RID).paused


def test_promote_command_at_the_last_step_completes() -> None:
    e = Engine(small_policy(steps=[50, 100]))
    e.ingest([ev("baseline", T0)])
    d = e.command(cmd("promote", T0 + 1))[0]
    assert (d.action, d.stage, d.weight) == ("complete", "complete", 100.0)


def test_a_command_for_an_unknown_rollout_starts_it() -> None:
    e = Engine(small_policy())
    out = e.command(cmd("pause", T0, rollout_id="new-one"))
    assert [(d.seq, d.action) for d in out] == [(1, "promote"), (2, "hold")]
    assert e.rollout_ids() == ["new-one"]


# ---- no traffic, timeouts -------------------------------------------------------------------------


def test_a_step_with_no_canary_traffic_never_promotes() -> None:
    e = Engine(small_policy())
    out = e.ingest(stream(8, seconds=900, weight=0.0, rps=20))
    assert [d.action for d in out] == ["promote", "hold"]  # the start, then the max-step-time hold
    hold = out[1]
    assert hold.trigger == "timeout" and hold.stage == "canary-1"
    assert hold.ts - T0 > SMALL["max_step_seconds"]
    assert all(g.status == "insufficient" for g in hold.gates)
    # the reason names every inconclusive gate
    for g in hold.gates:
        assert g.name in hold.reason
    assert "inconclusive" in hold.reason


def test_max_step_time_hold_names_the_inconclusive_gates_and_is_emitted_once() -> None:
    # a sliver of canary traffic: some gates pass on it, the tails cannot be judged
    e = Engine(small_policy(max_step_seconds=120))
    out = e.ingest(stream(9, seconds=400, weight=2.0, rps=20))
    holds = [d for d in out if d.action == "hold"]
    assert len(holds) == 1 and holds[0].trigger == "timeout"
    h = holds[0]
    open_gates = [g.name for g in h.gates if g.status != "pass"]
    assert open_gates
    named = h.reason.split(" inconclusive")[0]
    assert all(n in named for n in open_gates)
    assert not any(g.name in named for g in h.gates if g.status == "pass")
    assert "canary-1" in h.reason and "2-minute" in h.reason
    assert not any(d.action == "promote" and d.trigger == "gates" for d in out)


def test_tick_holds_an_idle_rollout_past_its_max_step_time() -> None:
    e = Engine(small_policy())
    e.ingest(stream(10, seconds=60, weight=50))
    assert e.tick(T0 + 300) == []  # within the step's time
    out = e.tick(T0 + 601)
    assert len(out) == 1
    d = out[0]
    assert (d.action, d.trigger, d.stage, d.weight) == ("hold", "timeout", "canary-1", 1.0)
    assert d.ts == T0 + 601
    assert "10-minute" in d.reason
    assert e.tick(T0 + 1000) == []  # held once per step
    assert e.status(RID).seq == d.seq


def test_tick_waits_while_events_are_still_flowing() -> None:
    e = Engine(small_policy())
    e.ingest([ev("baseline", T0), ev("baseline", T0 + 700)])
    # the watermark is within one eval interval: the event path decides, not the timer
    assert e.tick(T0 + 701) == []


def test_tick_ignores_terminal_rollouts() -> None:
    e = Engine(small_policy())
    e.ingest([ev("baseline", T0)])
    e.command(cmd("rollback", T0 + 1))
    assert e.tick(T0 + 10_000) == []


# ---- shadow stage ---------------------------------------------------------------------------------


def shadow_policy() -> PolicySet:
    return small_policy(shadow=ShadowSpec(enabled=True, min_samples=300, min_seconds=60, max_seconds=600))


@pytest.mark.parametrize("seed", [2, 3])
def test_aa_shadow_passes_to_canary_1(seed: int) -> None:
    res = run(Engine(shadow_policy()), SimConfig(rps=50, seed=seed, max_seconds=300, shadow=True), Injection())
    first = res.decisions[0]
    assert (first.seq, first.action, first.stage, first.weight, first.previous_weight) == (
        1, "promote", "canary-1", 1.0, 0.0)  # fmt: skip
    assert first.ts - T0 >= 60
    names = [g.name for g in first.gates]
    assert "feedback" not in names  # shadow answers are never shown: no user feedback on them
    assert all(g.status == "pass" for g in first.gates)
    assert all(set(g.samples) == {"shadow", "baseline"} for g in first.gates)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_a_40_percent_shadow_cost_spike_halts_in_shadow_naming_cost(seed: int) -> None:
    res = run(Engine(shadow_policy()), SimConfig(rps=50, seed=seed, max_seconds=300, shadow=True),
              parse_injections(["cost=+40%"]))  # fmt: skip
    assert res.outcome == "halt"
    assert len(res.decisions) == 1
    d = res.decisions[0]
    assert (d.action, d.stage, d.weight, d.previous_weight) == ("halt", "rolled-back", 0.0, 0.0)
    assert res.halted_stage == "shadow"
    breached = [g for g in d.gates if g.status == "breach"]
    assert breached[0].name == "cost"
    # the bound, not only the point estimate, is above the limit (the ratio itself carries the
    # simulator's +-15% per-arm noise on top of the 1.4x)
    # (evidence is rounded to 4 significant digits, hence >=)
    assert breached[0].lower is not None and breached[0].lower >= breached[0].threshold == 1.2
    assert "cost per request" in d.reason
    assert res.canary_requests == 0  # no user ever saw the candidate


def test_shadow_with_default_policy_catches_the_lessons_cost_spike() -> None:
    ps = PolicySet(defaults=RolloutPolicy(shadow=ShadowSpec(enabled=True)))
    res = run(Engine(ps), SimConfig(rps=100, seed=2, max_seconds=900, shadow=True), parse_injections(["cost=+40%"]))
    assert res.outcome == "halt" and res.halted_gate == "cost" and res.halted_stage == "shadow"


# ---- feedback attribution -------------------------------------------------------------------------


def fb(arm: str, ts: float, value: str, request_ts: float | None, i: int = 0) -> FeedbackEvent:
    return FeedbackEvent(rollout_id=RID, arm=arm, request_id=f"fb{i}", ts=ts, value=value, request_ts=request_ts)


def test_feedback_is_attributed_to_the_block_of_its_request_ts() -> None:
    e = Engine(small_policy())
    e.ingest([ev("canary", T0 + i) for i in range(0, 60, 3)])
    e.ingest([fb("canary", T0 + 55, "down", request_ts=T0 + 3, i=1),
              fb("canary", T0 + 56, "ticket", request_ts=T0 + 14, i=2),
              fb("canary", T0 + 57, "up", request_ts=T0 + 14, i=3)])  # fmt: skip
    blocks = state(e).window.blocks
    b0, b1 = int(T0 // 10), int(T0 // 10) + 1
    assert (blocks[b0]["canary"].fb, blocks[b0]["canary"].neg_fb) == (1, 1)
    assert (blocks[b1]["canary"].fb, blocks[b1]["canary"].neg_fb) == (2, 1)
    assert blocks[int((T0 + 55) // 10)]["canary"].fb == 0  # not the block the feedback arrived in


def test_feedback_without_request_ts_assumes_the_policys_delay() -> None:
    e = Engine(small_policy(gates={"feedback": {"assumed_delay_seconds": 30}}))
    e.ingest([ev("canary", T0 + i) for i in range(0, 60, 3)])
    e.ingest([fb("canary", T0 + 45, "down", request_ts=None)])
    blocks = state(e).window.blocks
    assert blocks[int((T0 + 15) // 10)]["canary"].neg_fb == 1


def test_feedback_about_a_request_before_the_step_is_counted_late() -> None:
    e = Engine(small_policy())
    e.ingest([ev("canary", T0 + 100)])
    e.ingest([fb("canary", T0 + 105, "down", request_ts=T0 + 50)])
    st = state(e)
    assert st.window.late_feedback == 1
    assert sum(a.fb for arms in st.window.blocks.values() for a in arms.values()) == 0


def test_feedback_gate_sees_negative_feedback_by_request_time() -> None:
    res = run(Engine(small_policy()), SimConfig(rps=50, seed=4, max_seconds=900), parse_injections(["feedback=x4"]))
    assert res.outcome == "halt" and res.halted_gate == "feedback"
    g = next(g for g in res.decisions[-1].gates if g.name == "feedback")
    assert g.details["negative_feedback"]["canary"] > 0
    assert g.ratio is not None and g.ratio > 1.5


# ---- decisions carry their evidence ---------------------------------------------------------------


@pytest.mark.parametrize("spec", [[], ["cost=+50%"], ["latency=x3"], ["length=+60%"], ["refusal=x5"]])
def test_decisions_have_seq_from_one_and_evidence_on_every_gate(spec: list[str]) -> None:
    e = Engine(small_policy())
    out = e.ingest(stream(12, parse_injections(spec), seconds=600, weight=50, rps=30))
    assert out
    assert [d.seq for d in out] == list(range(1, len(out) + 1))
    assert all(b.ts >= a.ts for a, b in itertools.pairwise(out))
    for d in out:
        j = orjson.loads(d.to_json())
        assert j["reason"].strip()
        assert j["rollout_id"] == RID
        assert j["action"] in ("promote", "halt", "complete", "hold")
        if d.trigger == "start":
            continue
        assert [g["name"] for g in j["gates"]] == ["latency", "cost", "errors", "output_length", "feedback"]
        for g in j["gates"]:
            assert all(k in g for k in CONTRACT_GATE_FIELDS)
            assert g["status"] in ("pass", "breach", "insufficient")
            assert g["reason"].strip()
            assert isinstance(g["threshold"], float) and g["threshold"] > 0
            assert set(g["samples"]) == {"canary", "baseline"}
            if g["status"] != "insufficient":
                assert g["observed"] is not None and g["baseline"] is not None and g["ratio"] is not None
        if d.action == "halt":
            assert any(g.status == "breach" for g in d.gates)
            assert d.weight == 0 and d.stage == "rolled-back"
            breached = next(g for g in d.gates if g.status == "breach")
            assert breached.reason.split(",")[0] in d.reason


def test_halt_reason_names_the_gate_the_ratio_and_the_samples() -> None:
    out = Engine(small_policy()).ingest(stream(13, parse_injections(["cost=+80%"]), seconds=300, weight=50, rps=30))
    halt = out[-1]
    assert halt.action == "halt"
    g = next(g for g in halt.gates if g.status == "breach")
    assert g.name == "cost"
    assert g.lower is not None and g.lower > g.threshold == 1.2
    assert g.ratio is not None and g.observed is not None and g.baseline is not None
    assert g.ratio == pytest.approx(g.observed / g.baseline, rel=0.01)
    assert f"{g.ratio:.2f}x" in halt.reason
    assert f"{g.samples['canary']:,} canary" in halt.reason


def test_digests_come_from_the_events() -> None:
    e = Engine(small_policy())
    e.ingest(stream(14, seconds=20, weight=50))
    d = e.command(cmd("pause", T0 + 21))[0]
    assert d.baseline_digest == SimConfig().baseline_digest
    assert d.canary_digest == SimConfig().canary_digest


# ---- status, termination, several rollouts --------------------------------------------------------


def test_status_reports_stage_samples_and_counts() -> None:
    e = Engine(small_policy())
    evs = stream(15, seconds=20, weight=50)
    e.ingest(evs)
    s = e.status(RID)
    assert (s.rollout_id, s.stage, s.weight, s.paused, s.terminal) == (RID, "canary-1", 1.0, False, False)
    n_inf = {a: sum(1 for x in evs if isinstance(x, InferenceEvent) and x.arm == a) for a in ("baseline", "canary")}
    assert s.samples == n_inf  # nothing was late in a fresh step
    # every event was taken in: the counts of requests per arm plus the feedback events
    assert sum(s.events.values()) == len(evs)
    assert {a: s.events.get(a, 0) for a in ("baseline", "canary")} == n_inf
    assert s.watermark == max(x.ts for x in evs)
    assert s.seq == 1
    assert s.gates and all(g.name for g in s.gates)


def test_events_after_termination_are_ignored() -> None:
    e = Engine(small_policy())
    e.ingest([ev("baseline", T0)])
    e.command(cmd("rollback", T0 + 1))
    before = state(e)
    later = stream(16, parse_injections(["cost=+90%"]), seconds=120, start=T0 + 10)
    assert e.ingest(later) == []
    after = state(e)
    assert after.ignored == len(later)
    assert after.window == before.window and after.seq == before.seq
    assert e.status(RID).terminal and e.status(RID).stage == "rolled-back"


def test_an_ended_rollout_drops_its_window_but_keeps_what_it_decided() -> None:
    e = Engine(small_policy())
    evs = stream(16, parse_injections(["cost=+90%"]), seconds=600, start=T0)
    decisions = e.ingest(evs)
    assert decisions[-1].action == "halt"
    live = Engine(small_policy())  # the same traffic without the regression: still open
    assert not any(d.action == "halt" for d in live.ingest(stream(16, parse_injections([]), seconds=600, start=T0)))
    st = state(e)
    assert st.terminal and st.window.blocks == {} and st.drift.detectors == b""
    assert sum(st.final_samples.values()) > 0
    assert e.status(RID).samples == st.final_samples
    assert len(e.snapshot(RID)) < len(live.snapshot(RID)) / 4
    # restored, it still knows it ended: late events change nothing and decide nothing
    again = Engine(small_policy())
    again.restore(RID, e.snapshot(RID))
    late = stream(16, parse_injections([]), seconds=60, start=evs[-1].ts + 1)
    assert again.ingest(late) == []
    assert state(again).seq == st.seq and state(again).ignored == st.ignored + len(late)


def test_event_time_is_the_latest_ts_seen_in_any_rollout_and_survives_a_restore() -> None:
    e = Engine(small_policy())
    assert e.event_time == -math.inf
    e.ingest([ev("baseline", T0 + 5), ev("canary", T0 + 2)])
    e.ingest([InferenceEvent(rollout_id="other", arm="baseline", request_id="x", ts=T0 + 9, latency_ms=1.0,
                             output_tokens=1, status="ok", refusal=False, cost_usd=0.0)])  # fmt: skip
    e.ingest([ev("canary", T0 + 7)])  # older than the latest: the clock does not go back
    assert e.event_time == T0 + 9
    again = Engine(small_policy())
    again.restore(RID, e.snapshot(RID))
    assert again.event_time == T0 + 7


def test_rollouts_are_independent() -> None:
    e = Engine(small_policy())
    a = stream(17, parse_injections(["cost=+80%"]), seconds=300, weight=50, rollout_id="a")
    b = stream(17, seconds=300, weight=50, rollout_id="b")
    merged = sorted(a + b, key=lambda x: x.ts)
    out = e.ingest(merged)
    by = {rid: [d for d in out if d.rollout_id == rid] for rid in ("a", "b")}
    assert by["a"][-1].action == "halt"
    assert "halt" not in [d.action for d in by["b"]]
    assert [d.seq for d in by["b"]] == list(range(1, len(by["b"]) + 1))
    assert Engine(small_policy()).ingest(b) == by["b"]
    assert e.rollout_ids() == ["a", "b"]


def test_per_rollout_policy_override_applies() -> None:
    ps = PolicySet.model_validate({"defaults": SMALL, "overrides": [
        {"match": "strict-*", "policy": {"steps": [5, 100]}}]})  # fmt: skip
    e = Engine(ps)
    out = e.ingest([ev("baseline", T0, rollout_id="strict-1"), ev("baseline", T0, rollout_id="loose")])
    assert {d.rollout_id: d.weight for d in out} == {"strict-1": 5.0, "loose": 1.0}


def test_restore_refuses_another_rollouts_snapshot() -> None:
    e = Engine(small_policy())
    e.ingest([ev("baseline", T0)])
    with pytest.raises(ValueError, match="snapshot is for rollout"):
        Engine(small_policy()).restore("other", e.snapshot(RID))


# ---- regressions: bugs found while writing these tests (fixed in ae21e64) -----------------------


def test_one_event_with_a_millisecond_timestamp_does_not_stop_the_gates() -> None:
    evs = stream(3, parse_injections(["cost=+50%"]), seconds=300, weight=50)
    poison = orjson.loads(orjson.dumps(msgspec.to_builtins(evs[100])))
    poison["ts"] = int(poison["ts"] * 1000)  # the classic Date.now() mistake
    e = Engine(small_policy())
    out = e.ingest(evs[:100])
    out += e.ingest([x for x in decode_message(orjson.dumps(poison)) if isinstance(x, InferenceEvent)])
    out += e.ingest(evs[100:])
    assert all(d.ts < T0 + 10_000 for d in out)
    assert out[-1].action == "halt"


def test_snapshot_works_with_realistic_costs_and_volume() -> None:
    e = Engine()  # the default 60 s blocks
    evs = [ev("canary" if i % 10 == 0 else "baseline", T0 + i / 200, i, cost_usd=0.10) for i in range(200 * 65)]
    e.ingest(evs)
    blob = e.snapshot(RID)
    restored = Engine()
    restored.restore(RID, blob)
    assert restored.status(RID).samples["baseline"] > 10_000
    assert math.isfinite(restored.status(RID).watermark)


# ---- the promote side of the bounds has its own mixture tuning ---------------------------------------


def _cost_gate_z_ratio(rho_promote: float | None) -> tuple[float, int]:
    """The cost gate's (promote half-width / halt half-width) on the log scale, and the blocks, on an
    A/A stream that never leaves its first step."""
    e = Engine(small_policy(min_samples=10**9, cs_rho_promote_blocks=rho_promote))
    e.ingest(stream(5, seconds=300, weight=50))
    g = next(g for g in e.status(RID).gates if g.name == "cost")
    assert g.ratio is not None and g.lower is not None and g.upper is not None
    return (math.log(g.upper) - math.log(g.ratio)) / (math.log(g.ratio) - math.log(g.lower)), e.progress(RID).blocks


@pytest.mark.parametrize("rho_promote", [0.5, 8.0, 100.0])
def test_the_promote_bound_uses_its_own_mixture_tuning_and_the_halt_bound_keeps_cs_rho_blocks(
    rho_promote: float,
) -> None:
    got, blocks = _cost_gate_z_ratio(rho_promote)
    p = RolloutPolicy.model_validate(SMALL)
    want = cs_z(blocks, 2 * p.promote_risk, rho_promote) / cs_z(blocks, 2 * p.false_halt_budget, p.cs_rho_blocks)
    assert got == pytest.approx(want, rel=0.03)  # the reported bounds keep 4 significant digits


def test_without_a_promote_tuning_both_sides_use_cs_rho_blocks() -> None:
    got, blocks = _cost_gate_z_ratio(None)
    p = RolloutPolicy.model_validate(SMALL)
    assert got == pytest.approx(cs_z(blocks, 2 * p.promote_risk, p.cs_rho_blocks)
                                / cs_z(blocks, 2 * p.false_halt_budget, p.cs_rho_blocks), rel=0.03)  # fmt: skip
    # and the same decisions as naming cs_rho_blocks for the promote side
    evs = stream(6, seconds=900, weight=50, rps=30)
    a = Engine(small_policy(cs_rho_promote_blocks=None)).ingest(evs)
    b = Engine(small_policy(cs_rho_promote_blocks=p.cs_rho_blocks)).ingest(evs)
    assert [msgspec.json.encode(d) for d in a] == [msgspec.json.encode(d) for d in b]
    assert any(d.action == "promote" and d.trigger == "gates" for d in a)
