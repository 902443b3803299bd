"""The worker end to end on the real broker: a subprocess per test, unique topics per test."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from gates.commands import Command, sign
from tests.integration.conftest import COMMAND_KEY, REPO, Topics
from tests.integration.helpers import (
    decoded,
    engine_decisions,
    first_difference,
    has_action,
    metric_value,
    of,
    wait_for,
)
from tests.integration.kafka_io import end_offsets, produce, read_until, topic_config
from tests.integration.streams import BASELINE, CANARY, generate, messages, recent_start
from tests.integration.workerproc import Worker

pytestmark = pytest.mark.integration

STEPS = ["canary-1", "canary-10", "canary-25", "canary-50", "canary-75", "complete"]


def healthy(rollout_id: str, seed: int = 0, seconds: float = 140.0) -> list[dict[str, Any]]:
    return generate(rollout_id, seconds=seconds, arms={"baseline": BASELINE, "canary": CANARY}, seed=seed,
                    start=recent_start(600))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def metrics_when(worker: Worker, ok: Callable[[str], bool], timeout: float) -> str:
    """The worker's /metrics once ``ok(text)`` holds (bounded wait); fails the test otherwise."""
    last = [""]

    def check() -> bool:
        last[0] = worker.metrics()
        return ok(last[0])

    assert wait_for(check, timeout), last[0]
    return last[0]


def test_healthy_canary_is_promoted_through_every_step_to_complete(
        worker: Worker, topics: Topics, kafka_bootstrap: str) -> None:
    worker.start()
    events = healthy("chat-v7")
    n = run(produce(kafka_bootstrap, topics.events, messages(events, 50)))
    msgs = run(read_until(kafka_bootstrap, topics.decisions, has_action("chat-v7", "complete", "halt"),
                          timeout=90))
    ds = of("chat-v7", decoded(msgs))
    assert [d["stage"] for d in ds] == STEPS, [d["reason"] for d in ds]
    assert [d["action"] for d in ds] == ["promote"] * 5 + ["complete"]
    assert [d["seq"] for d in ds] == [1, 2, 3, 4, 5, 6]
    assert [d["weight"] for d in ds] == [1, 10, 25, 50, 75, 100]
    assert all(m.key == b"chat-v7" for m in msgs)
    for d in ds[1:]:
        assert {g["name"] for g in d["gates"]} == {"latency", "cost", "errors", "output_length", "feedback"}
        assert all(g["status"] == "pass" for g in d["gates"]), d["gates"]
    # every event was consumed and counted once; the gauges show the end state
    text = metrics_when(worker, lambda t: metric_value(t, "rollout_gate_consumer_lag_messages",
                                                       topic=topics.events) == 0, 30)
    assert metric_value(text, "rollout_gate_events_total", arm="baseline") + \
        metric_value(text, "rollout_gate_events_total", arm="canary") == len(events)
    assert metric_value(text, "rollout_gate_stage_info", rollout="chat-v7", stage="complete") == 1
    assert metric_value(text, "rollout_gate_canary_weight_ratio", rollout="chat-v7") == 1.0
    assert metric_value(text, "rollout_gate_decisions_total", rollout="chat-v7", action="promote") == 5
    assert metric_value(text, "rollout_gate_batch_seconds_count") >= 1
    assert n > 0
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
    assert worker.get("/healthz")[0] == 200


def test_cost_regression_halts_and_names_the_cost_gate(worker: Worker, topics: Topics,
                                                       kafka_bootstrap: str) -> None:
    worker.start()
    events = generate("chat-v8", seconds=60, seed=3, start=recent_start(600),
                      arms={"baseline": BASELINE, "canary": CANARY.scaled(usd_per_1k_tokens=0.0027)})
    run(produce(kafka_bootstrap, topics.events, messages(events, 50)))
    msgs = run(read_until(kafka_bootstrap, topics.decisions, has_action("chat-v8", "halt", "complete"),
                          timeout=60))
    ds = of("chat-v8", decoded(msgs))
    halt = ds[-1]
    assert halt["action"] == "halt", ds
    assert (halt["stage"], halt["weight"], halt["previous_weight"]) == ("rolled-back", 0, 1)
    gates = {g["name"]: g for g in halt["gates"]}
    assert gates["cost"]["status"] == "breach"
    assert gates["cost"]["ratio"] > 1.2
    assert "cost" in halt["reason"]
    assert halt["baseline_digest"] == BASELINE.digest and BASELINE.digest in halt["reason"]
    # nothing after the halt: the rollout is terminal
    assert [d["seq"] for d in ds] == list(range(1, len(ds) + 1))


def test_malformed_events_go_to_the_dlq_and_valid_ones_still_count(worker: Worker, topics: Topics,
                                                                   kafka_bootstrap: str) -> None:
    worker.start()
    t0 = recent_start(600)
    good1 = {"rollout_id": "dlq-r", "arm": "baseline", "request_id": "a", "ts": t0, "latency_ms": 10,
             "output_tokens": 5, "status": "ok"}
    good2 = dict(good1, arm="canary", request_id="b")
    bad_arm = dict(good1, arm="purple", request_id="c")
    mixed = orjson.dumps([good1, bad_arm, good2])
    negative = b'{"rollout_id": "dlq-r", "arm": "canary", "request_id": "d", "ts": 1, "latency_ms": -3, ' \
               b'"output_tokens": 5, "status": "ok"}'
    garbage = b"\x00not json{"
    run(produce(kafka_bootstrap, topics.events, [(b"dlq-r", mixed), (b"dlq-r", negative), (b"dlq-r", garbage)]))
    dlq = run(read_until(kafka_bootstrap, topics.dlq, lambda m: len(m) >= 3, timeout=60))
    assert len(dlq) == 3
    reasons = [m.headers["x-rollout-gate-reason"].decode() for m in dlq]
    assert reasons[0].startswith("arm must be one of baseline, canary, shadow")
    assert reasons[1] == "latency_ms must be >= 0"
    assert reasons[2].startswith("not valid JSON")
    assert [m.headers["x-rollout-gate-source"].decode() for m in dlq] == [
        f"{topics.events}:0:0", f"{topics.events}:0:1", f"{topics.events}:0:2"]
    assert orjson.loads(dlq[0].value) == bad_arm  # the bad element of the array
    assert dlq[1].value == negative and dlq[2].value == garbage  # original bytes
    assert dlq[0].key == b"dlq-r"
    # the two valid events of the mixed message were ingested: the rollout started, both counted
    started = run(read_until(kafka_bootstrap, topics.decisions, has_action("dlq-r", "promote"), timeout=30))
    assert [d["stage"] for d in of("dlq-r", decoded(started))] == ["canary-1"]
    text = metrics_when(worker, lambda t: metric_value(t, "rollout_gate_rejected_events_total",
                                                       reason="invalid_json") == 1, 20)
    assert metric_value(text, "rollout_gate_rejected_events_total", reason="arm_invalid") == 1
    assert metric_value(text, "rollout_gate_rejected_events_total", reason="latency_ms_invalid") == 1
    assert metric_value(text, "rollout_gate_events_total", arm="baseline") == 1
    assert metric_value(text, "rollout_gate_events_total", arm="canary") == 1


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_worker_stopped_mid_rollout_resumes_without_counting_twice(worker: Worker, topics: Topics,
                                                                   kafka_bootstrap: str, how: str) -> None:
    events = healthy("chat-v9", seed=1)
    values = [v for _, v in messages(events, 20)]
    cut = int(len(values) * 0.45)
    # (almost) no offset commit before the kill: messages of the first part are delivered again after
    # the restart, and the engine must skip the ones its restored snapshot already holds
    worker.env["ROLLOUT_GATE_COMMIT_INTERVAL_SECONDS"] = "600"
    worker.start()
    run(produce(kafka_bootstrap, topics.events, [(b"chat-v9", v) for v in values[:cut]]))
    first = run(read_until(kafka_bootstrap, topics.decisions, lambda m: len(m) >= 3, timeout=60))
    assert len(first) >= 3
    # The snapshot goes to the changelog after the batch's decisions, through Faust's buffered
    # producer: a kill right after the decisions can come before it (the restart then rebuilds the
    # rollout from the start, also correct). Wait for one, so that the restart restores it.
    changelog = f"{topics.app_id}-rollout-state-changelog"
    deadline = time.monotonic() + 30
    while sum(run(end_offsets(kafka_bootstrap, changelog)).values()) == 0:
        assert time.monotonic() < deadline, "no snapshot in the changelog within 30 s"
        time.sleep(0.1)
    if how == "SIGKILL":
        worker.kill()  # mid-rollout: no shutdown, no final commit
        assert worker.proc is not None and worker.proc.returncode == -9
    else:
        # graceful: the batch in hand is finished, offsets are committed, the worker exits 0
        assert worker.stop() == 0
    worker.start()
    assert "restored 1 rollouts" in worker.log_path.read_text()
    run(produce(kafka_bootstrap, topics.events, [(b"chat-v9", v) for v in values[cut:]]))
    msgs = run(read_until(kafka_bootstrap, topics.decisions, has_action("chat-v9", "complete", "halt"),
                          timeout=90))
    got = [m.value for m in msgs]
    # a decision published before the crash but after the last persisted snapshot is published again
    # with the same seq and the same bytes; a router ignores it
    by_seq: dict[int, bytes] = {}
    for v in got:
        seq = orjson.loads(v)["seq"]
        first = by_seq.setdefault(seq, v)
        assert first == v, f"seq {seq} published twice with different content: " + first_difference([v], [first])
    assert sorted(by_seq) == list(range(1, len(by_seq) + 1))
    # the same messages through the pure engine, uninterrupted: identical decisions, byte for byte,
    # so no event was lost or counted twice (the gates carry the sample counts)
    expected = engine_decisions(values, f"{topics.events}:0")
    ordered = [by_seq[s] for s in sorted(by_seq)]
    assert ordered == expected, first_difference(ordered, expected)
    assert orjson.loads(expected[-1])["action"] == "complete"
    text = metrics_when(worker, lambda t: metric_value(t, "rollout_gate_consumer_lag_messages",
                                                       topic=topics.events) == 0, 30)
    consumed = sum(metric_value(text, "rollout_gate_events_total", arm=a) or 0 for a in ("baseline", "canary"))
    second_part = sum(len(orjson.loads(v)) for v in values[cut:])
    if how == "SIGKILL":
        # the restarted worker was handed (part of) the first part again and skipped it
        assert len(events) >= consumed > second_part
    else:
        # what was fetched but not yet handed to the agent is delivered again (not processed twice:
        # the decisions above equal the uninterrupted engine's)
        assert len(events) >= consumed >= second_part


def test_operator_pause_holds_and_topics_have_the_right_configs(worker: Worker, topics: Topics,
                                                                 kafka_bootstrap: str) -> None:
    worker.start()
    events = healthy("chat-p", seconds=8)
    run(produce(kafka_bootstrap, topics.events, messages(events, 50)))
    pause = sign(Command(rollout_id="chat-p", action="pause", ts=events[-1]["ts"], actor="alice",
                         reason="looking at latency"), COMMAND_KEY, "n-1").to_json()
    run(produce(kafka_bootstrap, topics.commands, [(b"chat-p", pause), (b"chat-p", b"{}")]))
    msgs = run(read_until(kafka_bootstrap, topics.decisions, has_action("chat-p", "hold"), timeout=60))
    hold = [d for d in of("chat-p", decoded(msgs)) if d["action"] == "hold"]
    assert hold and hold[0]["trigger"] == "operator" and "alice" in hold[0]["reason"]
    dlq = run(read_until(kafka_bootstrap, topics.dlq, lambda m: len(m) >= 1, timeout=30))
    assert dlq[0].headers["x-rollout-gate-reason"] == b"rollout_id is missing"
    assert dlq[0].headers["x-rollout-gate-source"] == f"{topics.commands}:0:1".encode()

    decisions_cfg = run(topic_config(kafka_bootstrap, topics.decisions))
    events_cfg = run(topic_config(kafka_bootstrap, topics.events))
    dlq_cfg = run(topic_config(kafka_bootstrap, topics.dlq))
    changelog_cfg = run(topic_config(kafka_bootstrap, f"{topics.app_id}-rollout-state-changelog"))
    assert decisions_cfg["cleanup.policy"] == "compact"
    assert changelog_cfg["cleanup.policy"] == "compact"
    assert events_cfg["cleanup.policy"] == "delete" and events_cfg["retention.ms"] == str(7 * 86400 * 1000)
    assert dlq_cfg["cleanup.policy"] == "delete" and dlq_cfg["retention.ms"] == str(14 * 86400 * 1000)
    assert worker.get("/readyz") == (200, "ready\n")


def test_replay_and_worker_give_byte_identical_decisions(worker: Worker, topics: Topics, kafka_bootstrap: str,
                                                         fast_policy: Any, tmp_path: Any) -> None:
    start = recent_start(600)
    good = generate("chat-a", seconds=140, seed=4, start=start, arms={"baseline": BASELINE, "canary": CANARY})
    costly = generate("chat-b", seconds=40, seed=5, start=start,
                      arms={"baseline": BASELINE, "canary": CANARY.scaled(usd_per_1k_tokens=0.0027)})
    from tests.integration.streams import interleave, jsonl

    msgs = list(messages(interleave(good, costly), 25))
    # the log replay reads is the events in the order the worker consumes them
    log = tmp_path / "events.jsonl"
    log.write_bytes(jsonl(ev for _, v in msgs for ev in orjson.loads(v)))
    worker.start()
    run(produce(kafka_bootstrap, topics.events, msgs))

    def both_done(m: list[Any]) -> bool:
        ds = decoded(m)
        return all(any(d["rollout_id"] == r and d["action"] in ("complete", "halt") for d in ds)
                   for r in ("chat-a", "chat-b"))

    from_worker = [m.value for m in run(read_until(kafka_bootstrap, topics.decisions, both_done, timeout=120))]
    r = subprocess.run([sys.executable, "-c", "from stream.cli import main; main()", "replay", str(log),
                        "--policy", str(fast_policy)], capture_output=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr.decode()
    from_replay = r.stdout.splitlines()
    assert {orjson.loads(v)["action"] for v in from_replay if orjson.loads(v)["rollout_id"] == "chat-b"} >= {"halt"}
    assert [orjson.loads(v)["action"] for v in from_replay if orjson.loads(v)["rollout_id"] == "chat-a"][-1] \
        == "complete"
    for rid in ("chat-a", "chat-b"):
        w = [v for v in from_worker if orjson.loads(v)["rollout_id"] == rid]
        p = [v for v in from_replay if orjson.loads(v)["rollout_id"] == rid]
        assert w == p, f"{rid}: " + first_difference(w, p)
    # across rollouts the order is not part of the contract (rollouts live in different partitions
    # and replay folds a chunk of lines per call), but nothing may be missing or extra
    assert sorted(from_worker) == sorted(from_replay)


def test_a_decisions_topic_that_is_not_compacted_is_refused_at_start(worker_env: dict[str, str], topics: Topics,
                                                                      kafka_bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topics.decisions, 1, 1, topic_configs={"cleanup.policy": "delete"})])
        finally:
            await admin.close()

    run(create())
    r = subprocess.run([sys.executable, "-m", "stream.worker_main"], env=worker_env, capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2
    assert f"topic {topics.decisions} has cleanup.policy=delete; decisions need 'compact'" in r.stderr
    assert "ROLLOUT_GATE_DECISIONS_TOPIC" in r.stderr
    assert "Traceback" not in r.stderr
