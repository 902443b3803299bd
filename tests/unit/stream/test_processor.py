from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from stream.metrics import Metrics
from stream.processor import REASON_HEADER, SOURCE_HEADER, Processor, Record

from .fakes import FakeEngine, ListSink

TS = 1_767_225_600.0


def ev(rid: str = "r1", arm: str = "canary", i: int = 0, **extra: object) -> dict[str, object]:
    d: dict[str, object] = {"rollout_id": rid, "arm": arm, "request_id": f"q{i}", "ts": TS + i,
                            "latency_ms": 100.0, "output_tokens": 10, "status": "ok"}
    d.update(extra)
    return d


def rec(value: bytes, offset: int, partition: int = 0, topic: str = "ev") -> Record:
    return Record(topic, partition, offset, b"r1", value)


def make(promote_every: int = 3) -> tuple[Processor, ListSink, Metrics]:
    sink, metrics = ListSink(), Metrics(clock=lambda: TS + 100)
    return Processor(lambda: FakeEngine(promote_every), sink, metrics, clock=lambda: TS + 100), sink, metrics


async def test_bad_events_go_to_dlq_with_reason_and_the_valid_ones_in_the_same_message_count() -> None:
    proc, sink, metrics = make(promote_every=100)
    bad = {"rollout_id": "r1", "arm": "purple", "request_id": "x", "ts": TS, "latency_ms": 1,
           "output_tokens": 1, "status": "ok"}
    batch = [
        rec(orjson.dumps([ev(i=1), bad, ev(i=2)]), 10),
        rec(b'{"rollout_id": "r1", "arm": "canary", "latency_ms": -5}', 11),
        rec(b"not json at all", 12),
    ]
    await proc.process_events(batch)
    engine = proc.engine
    assert isinstance(engine, FakeEngine)
    # the two valid events of message 10 were ingested with their source and offset
    assert engine.ingest_calls == [(2, "ev:0", 10)]
    assert engine.state["r1"]["count"] == {"canary": 2}
    reasons = [dict(x.headers)[REASON_HEADER].decode() for x in sink.letters]
    sources = [dict(x.headers)[SOURCE_HEADER].decode() for x in sink.letters]
    assert reasons[0].startswith("arm must be one of")
    assert reasons[1] == "request_id is missing"
    assert reasons[2].startswith("not valid JSON")
    assert sources == ["ev:0:10", "ev:0:11", "ev:0:12"]
    # single-object messages keep their original bytes; array elements are the element's JSON
    assert sink.letters[1].value == b'{"rollout_id": "r1", "arm": "canary", "latency_ms": -5}'
    assert sink.letters[2].value == b"not json at all"
    assert orjson.loads(sink.letters[0].value) == bad
    assert sink.letters[0].key == b"r1"
    text = metrics.render().decode()
    assert 'rollout_gate_rejected_events_total{reason="arm_invalid"} 1.0' in text
    assert 'rollout_gate_rejected_events_total{reason="request_id_missing"} 1.0' in text
    assert 'rollout_gate_rejected_events_total{reason="invalid_json"} 1.0' in text
    assert 'rollout_gate_events_total{arm="canary"} 2.0' in text


async def test_decisions_are_published_before_the_state_is_persisted_once_per_batch() -> None:
    proc, sink, _ = make(promote_every=3)
    batch = [rec(orjson.dumps(ev(i=i)), i) for i in range(7)]
    decisions = await proc.process_events(batch)
    assert [d.seq for d in decisions] == [1, 2]
    assert sink.log == [("decision", "r1"), ("decision", "r1"), ("persist", "r1")]
    assert orjson.loads(sink.table["r1"])["offsets"] == {"ev:0": 6}
    # nothing changed -> nothing written
    await proc.tick()
    assert sink.log.count(("persist", "r1")) == 1


async def test_restore_resumes_seq_and_skips_redelivered_messages() -> None:
    proc, sink, _ = make(promote_every=2)
    first = [rec(orjson.dumps(ev(i=i)), i) for i in range(4)]
    await proc.process_events(first)
    assert [d.seq for d in sink.decisions] == [1, 2]
    # a new worker: fresh engine restored from the persisted table, then the consumer re-delivers
    # offsets 2..5 (3 and below were committed only partially)
    proc2 = Processor(lambda: FakeEngine(2), sink, Metrics())
    assert await proc2.restore(sink.table.items()) == 1
    again = [rec(orjson.dumps(ev(i=i)), i) for i in range(2, 6)]
    await proc2.process_events(again)
    assert [d.seq for d in sink.decisions] == [1, 2, 3]
    engine = proc2.engine
    assert isinstance(engine, FakeEngine)
    assert engine.state["r1"]["count"] == {"canary": 6}


async def test_commands_are_decoded_and_bad_ones_dead_lettered() -> None:
    proc, sink, _ = make()
    good = orjson.dumps({"rollout_id": "r1", "action": "pause", "ts": TS, "actor": "alice"})
    bad = orjson.dumps({"rollout_id": "r1", "action": "explode", "ts": TS})
    decisions = await proc.process_commands([rec(good, 0, topic="cmd"), rec(bad, 1, topic="cmd")])
    assert [(d.action, d.reason) for d in decisions] == [("hold", "paused by alice")]
    assert len(sink.letters) == 1
    assert dict(sink.letters[0].headers)[REASON_HEADER].startswith(b"action must be one of")
    assert proc.positions[("cmd", 0)] == 2


async def test_metrics_follow_the_engine_status_after_a_batch() -> None:
    proc, _, metrics = make(promote_every=2)
    await proc.process_events([rec(orjson.dumps([ev(i=1), ev(i=2, arm="baseline")]), 0)])
    text = metrics.render().decode()
    assert 'rollout_gate_stage_info{rollout="r1",stage="step-1"} 1.0' in text
    assert 'rollout_gate_canary_weight_ratio{rollout="r1"} 0.01' in text
    assert 'rollout_gate_gate_status{gate="cost",rollout="r1"} 0.0' in text
    assert 'rollout_gate_gate_ratio{gate="cost",rollout="r1"} 1.3' in text
    assert 'rollout_gate_gate_threshold_ratio{gate="cost",rollout="r1"} 1.2' in text
    assert 'rollout_gate_window_samples{arm="baseline",rollout="r1"} 1.0' in text
    assert 'rollout_gate_decisions_total{action="promote",rollout="r1"} 1.0' in text
    assert 'rollout_gate_event_time_lag_seconds{rollout="r1"} 98.0' in text
    assert "rollout_gate_batch_seconds_count 1.0" in text
    # a stage change replaces the stage series instead of adding a second one
    await proc.process_events([rec(orjson.dumps([ev(i=3), ev(i=4)]), 1)])
    text = metrics.render().decode()
    assert 'stage="step-1"' not in text
    assert 'rollout_gate_stage_info{rollout="r1",stage="step-2"} 1.0' in text


async def test_an_engine_error_propagates_and_nothing_is_persisted() -> None:
    class Broken(FakeEngine):
        def ingest(self, *a: object, **k: object) -> list:  # type: ignore[override]
            raise RuntimeError("boom")

    sink = ListSink()
    proc = Processor(Broken, sink, Metrics())
    with pytest.raises(RuntimeError, match="boom"):
        await proc.process_events([rec(orjson.dumps(ev()), 0)])
    assert sink.log == []


async def test_the_timer_judges_steps_in_event_time_not_by_the_wall_clock() -> None:
    """A backlog hours behind the wall clock gets no max-step hold it has not earned; an idle
    rollout gets its hold once event time, running with the wall clock while idle, passes the limit."""
    from gates.engine import Engine
    from gates.policy import PolicySet

    policy = PolicySet.model_validate({"defaults": {"max_step_seconds": 600}})
    wall = [TS + 6 * 3600]  # the events below are six hours old
    proc = Processor(lambda: Engine(policy), ListSink(), Metrics(), clock=lambda: wall[0])
    backlog = [rec(orjson.dumps([ev(arm=arm, i=i) for arm in ("baseline", "canary")]), i) for i in range(0, 300, 2)]
    await proc.process_events(backlog)
    assert [d.action for d in await proc.tick()] == []  # 300 s of event time: within the 600 s step
    wall[0] += 200
    assert [d.action for d in await proc.tick()] == []  # idle for 200 s: 500 s into the step
    wall[0] += 200
    held = await proc.tick()  # idle for 400 s: 700 s into the step
    assert [(d.action, d.trigger) for d in held] == [("hold", "timeout")]


async def test_a_long_batch_hands_the_event_loop_back_between_messages() -> None:
    """Faust's fetcher, timers and commits share the event loop with the batch: a batch that
    takes long must let them run, in message order and without changing what it computes."""
    import stream.processor as sp

    class SlowEngine(FakeEngine):
        def ingest(self, events: Any, source: str | None = None, offset: int | None = None) -> list[Any]:
            time.sleep(sp.YIELD_EVERY_SECONDS / 2)  # CPU-bound work that never awaits
            return super().ingest(events, source, offset)

    sink, metrics = ListSink(), Metrics(clock=lambda: TS + 100)
    proc = Processor(lambda: SlowEngine(promote_every=100), sink, metrics, clock=lambda: TS + 100)
    ran_during: list[int] = []

    async def other_task() -> None:
        while True:
            engine = proc.engine
            assert isinstance(engine, FakeEngine)
            ran_during.append(len(engine.ingest_calls))
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(other_task())
    await asyncio.sleep(0)
    ran_during.clear()
    await proc.process_events([rec(orjson.dumps(ev(i=i)), i) for i in range(20)])
    task.cancel()
    engine = proc.engine
    assert isinstance(engine, FakeEngine)
    assert [c[2] for c in engine.ingest_calls] == list(range(20))  # every message, in order
    # the other task ran while the batch was under way, several times
    assert len([n for n in ran_during if 0 < n < 20]) >= 3
