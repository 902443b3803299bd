"""Live rollout views from the real engine, the applicability of operator commands, and the
worker's /rollouts endpoints."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gates.commands import Command
from gates.engine import Engine
from gates.events import decode_message
from gates.policy import parse_policy
from stream.metrics import Metrics, MetricsServer
from stream.processor import Processor
from stream.status import LiveState, refusal, rollout_view
from tests.integration.streams import BASELINE, CANARY, FAST_POLICY, START, generate

from .fakes import ListSink


def engine_with(rollout_id: str = "chat-v7", seconds: float = 8.0) -> Engine:
    engine = Engine(parse_policy(FAST_POLICY))
    events = generate(rollout_id, seconds=seconds, arms={"baseline": BASELINE, "canary": CANARY}, seed=1, start=START)
    engine.ingest(list(decode_message(orjson.dumps(events))))
    return engine


def view_of(engine: Engine, rid: str = "chat-v7") -> dict[str, Any]:
    return rollout_view(engine.status(rid), engine.progress(rid), None)


def test_between_decisions_the_view_has_live_gates_and_what_the_step_still_needs() -> None:
    engine = engine_with()
    v = view_of(engine)
    assert v["state"] == "running" and v["stage"] == "canary-1" and v["seq"] == 1
    assert {g["name"] for g in v["gates"]} == {"latency", "cost", "errors", "output_length", "feedback"}
    step, needs = v["step"], v["needs"]
    assert step["tested_samples"] == v["samples"]["canary"] > 0
    assert step["elapsed_seconds"] == pytest.approx(engine.status("chat-v7").watermark - START, abs=1e-6)
    assert needs["seconds"] == pytest.approx(10 - step["elapsed_seconds"])
    assert needs["samples"] == max(0, 150 - step["tested_samples"])
    rate = step["tested_samples"] / step["elapsed_seconds"]
    assert step["tested_rps"] == pytest.approx(rate)
    expected = max(needs["samples"] / rate, needs["seconds"], needs["blocks"] * 2.0)
    assert v["eta_seconds"] == pytest.approx(expected)
    assert v["eta"].startswith("about ")


def test_a_paused_rollout_has_no_eta_and_a_promoted_one_keeps_its_evidence_in_a_new_step() -> None:
    engine = engine_with()
    engine.command(Command(rollout_id="chat-v7", action="pause", ts=START + 9, actor="alice"))
    v = view_of(engine)
    samples = v["step"]["tested_samples"]
    assert samples > 0
    assert v["state"] == "paused" and v["paused"] is True and v["eta_seconds"] is None
    assert refusal("pause", "chat-v7", v) == ("paused", "rollout chat-v7 is already paused at canary-1")
    assert refusal("resume", "chat-v7", v) is None
    engine.command(Command(rollout_id="chat-v7", action="promote", ts=START + 9, actor="alice"))
    v = view_of(engine)
    # the policy's carry_evidence: the next step starts with the window so far, not from nothing
    assert v["stage"] == "canary-10" and v["gates"] == [] and v["step"]["tested_samples"] == samples
    assert v["needs"]["gates"] == ["(not evaluated yet)"]
    assert refusal("resume", "chat-v7", v)[0] == "not_paused"  # type: ignore[index]


def test_ended_rollouts_and_unknown_ones_take_no_commands() -> None:
    engine = engine_with()
    engine.command(Command(rollout_id="chat-v7", action="rollback", ts=START + 9, actor="alice"))
    v = view_of(engine)
    assert v["state"] == "halted" and v["needs"] is None and v["eta"] == "ended (halted)"
    for action in ("pause", "resume", "rollback", "promote"):
        code, why = refusal(action, "chat-v7", v)  # type: ignore[misc]
        assert code == "halted" and "is halted (rolled back, seq 2)" in why
    assert refusal("promote", "nope", None) == (
        "unknown", "unknown rollout nope: the worker has no state for it (check the id)")
    done = dict(v, state="complete")
    assert refusal("pause", "chat-v7", done)[0] == "complete"  # type: ignore[index]


def test_a_refused_command_from_the_topic_is_dead_lettered_not_applied() -> None:
    from stream.processor import Record

    metrics = Metrics()
    sink = ListSink()
    proc = Processor(lambda: Engine(parse_policy(FAST_POLICY)), sink, metrics)
    live = LiveState(proc, metrics)
    proc.vet_command = live.vet
    cmd = orjson.dumps({"rollout_id": "ghost", "action": "promote", "ts": START, "actor": "eve"})
    out = asyncio.run(proc.process_commands([Record("rollout.commands", 0, 0, b"ghost", cmd)]))
    assert out == [] and proc.engine.rollout_ids() == []
    (letter,) = sink.letters
    assert dict(letter.headers)["x-rollout-gate-reason"].startswith(b"command refused: unknown rollout ghost")
    assert metrics.registry.get_sample_value("rollout_gate_command_refusals_total",
                                             {"action": "promote", "reason": "unknown"}) == 1


@pytest.fixture
def served() -> Iterator[tuple[str, Metrics]]:
    metrics = Metrics()
    proc = Processor(lambda: engine_with(), ListSink(), metrics)
    live = LiveState(proc, metrics)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    live.loop = loop
    server = MetricsServer(metrics, "127.0.0.1", 0)
    server.live = live
    server.start()
    yield f"http://127.0.0.1:{server.port}", metrics
    server.stop()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def test_the_worker_serves_live_views_and_checks_commands(served: tuple[str, Metrics]) -> None:
    base, metrics = served
    code, body = _call(base + "/rollouts")
    assert code == 200 and [v["rollout_id"] for v in body["rollouts"]] == ["chat-v7"]
    code, view = _call(base + "/rollouts/chat-v7")
    assert code == 200 and len(view["gates"]) == 5
    assert _call(base + "/rollouts/nope")[0] == 404
    code, ok = _call(base + "/rollouts/chat-v7/commands/check", {"action": "pause"})
    assert code == 200 and ok["applicable"] is True and ok["rollout"]["stage"] == "canary-1"
    code, no = _call(base + "/rollouts/chat-v7/commands/check", {"action": "resume"})
    assert code == 409 and no["code"] == "not_paused" and "is not paused" in no["error"]
    code, no = _call(base + "/rollouts/nope/commands/check", {"action": "promote"})
    assert code == 409 and no["code"] == "unknown"
    assert _call(base + "/rollouts/chat-v7/commands/check", {"action": "explode"})[0] == 400
    assert metrics.registry.get_sample_value("rollout_gate_command_refusals_total",
                                             {"action": "resume", "reason": "not_paused"}) == 1


def test_before_the_loop_runs_the_views_answer_503() -> None:
    metrics = Metrics()
    server = MetricsServer(metrics, "127.0.0.1", 0)
    server.live = LiveState(Processor(lambda: engine_with(), ListSink(), metrics), metrics)
    server.start()
    try:
        code, body = _call(f"http://127.0.0.1:{server.port}/rollouts")
        assert code == 503 and "not ready" in body["error"]
    finally:
        server.stop()


def test_a_command_delivered_again_is_left_to_the_engine_not_refused() -> None:
    from stream.processor import Record

    metrics = Metrics()
    sink = ListSink()
    proc = Processor(lambda: engine_with(), sink, metrics)
    live = LiveState(proc, metrics)
    proc.vet_command = live.vet
    pause = orjson.dumps({"rollout_id": "chat-v7", "action": "pause", "ts": START + 9, "actor": "al"})
    rec = Record("rollout.commands", 0, 5, b"chat-v7", pause)
    assert [d.action for d in asyncio.run(proc.process_commands([rec]))] == ["hold"]
    assert asyncio.run(proc.process_commands([rec])) == []  # the same message again (a restart)
    assert sink.letters == []
    assert metrics.registry.get_sample_value("rollout_gate_command_refusals_total",
                                             {"action": "pause", "reason": "paused"}) is None
    # a new pause of a paused rollout (a new command: its own ts and nonce, not the same one again)
    pause2 = orjson.dumps({"rollout_id": "chat-v7", "action": "pause", "ts": START + 10, "actor": "al", "nonce": "n2"})
    again = Record("rollout.commands", 0, 6, b"chat-v7", pause2)
    assert asyncio.run(proc.process_commands([again])) == []
    (letter,) = sink.letters
    assert dict(letter.headers)["x-rollout-gate-reason"] == b"command refused: rollout chat-v7 is already paused at canary-1"
    assert metrics.registry.get_sample_value("rollout_gate_command_refusals_total",
                                             {"action": "pause", "reason": "paused"}) == 1


def test_a_failing_watcher_does_not_stop_the_batch() -> None:
    from stream.processor import Record

    proc = Processor(lambda: engine_with(), ListSink(), Metrics())

    def broken(_: Any) -> None:
        raise RuntimeError("boom")

    seen: list[str] = []
    proc.watchers += [broken, lambda ds: seen.extend(d.action for d in ds)]
    pause = orjson.dumps({"rollout_id": "chat-v7", "action": "pause", "ts": START + 9, "actor": "al"})
    assert [d.action for d in asyncio.run(proc.process_commands([Record("c", 0, 0, b"chat-v7", pause)]))] == ["hold"]
    assert seen == ["hold"]
