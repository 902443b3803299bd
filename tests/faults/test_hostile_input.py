"""Hostile input against a live worker: every kind of bad message lands in the dead-letter topic with
its reason, the worker keeps running, and its decisions equal ``rollout-gate replay`` of the good
events alone, byte for byte; ``replay`` of the same messages rejects the same ones.

The kinds and their outcomes are listed in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gates.events import reason_code
from stream.processor import DEAD_LETTER_MAX_BYTES, REASON_HEADER, SIZE_HEADER
from tests.faults.conftest import Topics, replay
from tests.integration.helpers import decoded, first_difference, has_action, metric_value, of, wait_for
from tests.integration.kafka_io import read_until
from tests.integration.streams import BASELINE, CANARY, generate, messages, recent_start
from tests.integration.workerproc import Worker

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RID = "chat-h"
BIG = 10 * 2**20  # the 10 MB message
TOPIC_MAX_BYTES = 16 * 2**20  # the test's events topic takes it (the broker default is ~1 MiB)


@dataclass(frozen=True)
class Kind:
    name: str
    value: bytes
    reasons: tuple[str, ...]  # the reason code of each rejection it gives, in order
    accepted: tuple[dict[str, Any], ...] = ()  # events of it that are valid and count
    in_jsonl: bool = True  # a JSONL log can hold it (an empty message is a blank line there)


def hostile_kinds(t0: float) -> list[Kind]:
    good = {"rollout_id": RID, "arm": "canary", "request_id": "h-1", "ts": t0 + 30, "latency_ms": 700.0,
            "output_tokens": 280, "input_tokens": 500, "cost_usd": 0.0016, "status": "ok", "model": "chat-v7"}

    def bad(**change: Any) -> bytes:
        d = dict(good, **change)
        return orjson.dumps({k: v for k, v in d.items() if v is not _DROP})

    raw = orjson.dumps(good)
    ok1 = dict(good, request_id="mix-1", ts=t0 + 31)
    ok2 = dict(good, request_id="mix-2", arm="baseline", ts=t0 + 31.5)
    dup = dict(good, request_id="c0-1", ts=t0 + 32)  # the generator's first canary request id
    orphan = {"type": "feedback", "rollout_id": RID, "arm": "canary", "request_id": "never-sent", "ts": t0 + 33,
              "value": "down"}
    number = raw.replace(b'"latency_ms":700.0', b'"latency_ms":%s')
    return [
        Kind("not JSON", b"hello, I am not JSON", ("invalid_json",)),
        Kind("truncated JSON", raw[: len(raw) // 2], ("invalid_json",)),
        Kind("invalid UTF-8", raw.replace(b"chat-v7", b"chat-\xff\xfe"), ("invalid_json",)),
        Kind("UTF-8 byte order mark", b"\xef\xbb\xbf" + raw, ("invalid_json",)),
        Kind("lone UTF-16 surrogate", raw.replace(b"chat-v7", b"chat-\\ud800"), ("invalid_json",)),
        Kind("NaN", number % b"NaN", ("invalid_json",)),
        Kind("Infinity", number % b"Infinity", ("invalid_json",)),
        Kind("number overflowing a double", number % b"1e400", ("invalid_json",)),
        Kind("10,000-deep nesting", b"[" * 10_000 + b"]" * 10_000, ("invalid_json",)),
        Kind("nesting inside an event", raw[:-1] + b',"extra":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
             ("invalid_json",)),
        Kind("10 MB message", raw[:-1] + b',"pad":"' + b"x" * BIG + b'"}', ("too_large",)),
        Kind("empty array", b"[]", ("empty",)),
        Kind("empty value", b"", ("invalid_json",), in_jsonl=False),
        Kind("JSON null", b"null", ("not_an_object",)),
        Kind("array of non-objects", b'[1, "two", null]', ("not_an_object",) * 3),
        Kind("latency as a string", bad(latency_ms="700"), ("latency_ms_invalid",)),
        Kind("latency as a boolean", bad(latency_ms=True), ("latency_ms_invalid",)),
        Kind("fractional token count", bad(output_tokens=1.5), ("output_tokens_invalid",)),
        Kind("rollout id a number", bad(rollout_id=7), ("rollout_id_invalid",)),
        Kind("missing rollout id", bad(rollout_id=_DROP), ("rollout_id_missing",)),
        Kind("missing arm", bad(arm=_DROP), ("arm_missing",)),
        Kind("missing ts", bad(ts=_DROP), ("ts_missing",)),
        Kind("missing status", bad(status=_DROP), ("status_missing",)),
        Kind("negative latency", bad(latency_ms=-1), ("latency_ms_invalid",)),
        Kind("huge latency", bad(latency_ms=1e300), ("latency_ms_invalid",)),
        Kind("huge token count", raw.replace(b'"output_tokens":280', b'"output_tokens":%d' % 10**30),
             ("output_tokens_invalid",)),
        Kind("negative cost", bad(cost_usd=-0.5), ("cost_usd_invalid",)),
        Kind("ts in 1969 (number)", bad(ts=-1), ("ts_invalid",)),
        Kind("ts in 1969 (RFC 3339)", bad(ts="1969-12-31T23:59:59Z"), ("ts_invalid",)),
        Kind("ts in 9999 (RFC 3339)", bad(ts="9999-12-31T23:59:59Z"), ("ts_invalid",)),
        Kind("ts in 9999 (number)", bad(ts=253402300799), ("ts_invalid",)),
        Kind("ts in milliseconds", bad(ts=int(t0 * 1000)), ("ts_invalid",)),
        Kind("ts not a time", bad(ts="yesterday"), ("ts_invalid",)),
        Kind("unknown arm", bad(arm="purple"), ("arm_invalid",)),
        Kind("unknown status", bad(status="maybe"), ("status_invalid",)),
        Kind("unknown type", bad(type="click"), ("type_invalid",)),
        Kind("feedback with an unknown value", orjson.dumps(dict(orphan, value="meh")), ("value_invalid",)),
        Kind("10,000-character rollout id", bad(rollout_id="r" * 10_000), ("rollout_id_invalid",)),
        Kind("control characters in the rollout id", bad(rollout_id="chat-\x1b[31mred\x00"), ("rollout_id_invalid",)),
        Kind("array mixing good and bad", orjson.dumps([ok1, dict(good, arm="purple"), ok2, 42]),
             ("arm_invalid", "not_an_object"), accepted=(ok1, ok2)),
        # valid by the contract, so counted (docs/reliability.md says why)
        Kind("duplicate request_id", orjson.dumps(dup), (), accepted=(dup,)),
        Kind("feedback for an unknown request", orjson.dumps(orphan), (), accepted=(orphan,)),
    ]


_DROP = object()


async def create_events_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={
            "max.message.bytes": str(TOPIC_MAX_BYTES), "cleanup.policy": "delete"})])
    finally:
        await admin.close()


async def produce_all(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=TOPIC_MAX_BYTES)
    await producer.start()
    try:
        pending = [await producer.send(topic, value=v, key=k) for k, v in msgs]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def test_hostile_input_is_dead_lettered_and_the_decisions_equal_replay_of_the_good_events(
        worker: Worker, topics: Topics, kafka_bootstrap: str, fast_policy: Path, tmp_path: Path) -> None:
    t0 = recent_start(600)
    events = generate(RID, seconds=140, arms={"baseline": BASELINE, "canary": CANARY}, seed=14, start=t0)
    good_msgs = [v for _, v in messages(events, 50)]
    kinds = hostile_kinds(t0)
    assert len(kinds) >= 25
    # each bad kind at a seeded position among the good messages (a few of them twice)
    rng = random.Random(14)
    placed = kinds + rng.sample(kinds, 5)
    slots = sorted(rng.randrange(1, len(good_msgs) - 5) for _ in placed)
    rng.shuffle(placed)
    stream: list[tuple[bytes, Kind | None]] = [(v, None) for v in good_msgs]
    for k, (slot, kind) in enumerate(zip(slots, placed, strict=True)):
        stream.insert(slot + k, (kind.value, kind))

    asyncio.run(create_events_topic(kafka_bootstrap, topics.events))
    worker.start()
    asyncio.run(produce_all(kafka_bootstrap, topics.events, [(RID.encode(), v) for v, _ in stream]))

    want = [code for _, kind in stream if kind is not None for code in kind.reasons]
    dlq = asyncio.run(read_until(kafka_bootstrap, topics.dlq, lambda m: len(m) >= len(want), timeout=120))
    msgs = asyncio.run(read_until(kafka_bootstrap, topics.decisions, has_action(RID, "complete", "halt"),
                                  timeout=120))

    # 1. every bad one in the dead-letter topic, in order, with its reason; nothing more
    got = [reason_code(m.headers[REASON_HEADER].decode()) for m in dlq]
    assert got == want, [(m.headers[REASON_HEADER][:80], m.value[:60]) for m in dlq]
    assert all(len(m.value or b"") <= DEAD_LETTER_MAX_BYTES for m in dlq)
    (cut,) = [m for m in dlq if SIZE_HEADER in m.headers]
    assert int(cut.headers[SIZE_HEADER]) > BIG

    # 2. the worker never stopped, and counted each rejection
    assert worker.proc is not None and worker.proc.poll() is None
    assert worker.get("/healthz")[0] == 200
    text = worker.metrics()
    for code, n in Counter(want).items():
        assert metric_value(text, "rollout_gate_rejected_events_total", reason=code) == n, code
    assert "stopping the worker" not in worker.log_path.read_text(errors="replace")

    # 3. its decisions equal replay of the good events alone, byte for byte
    good_log = tmp_path / "good.jsonl"
    with good_log.open("wb") as f:
        for value, kind in stream:
            for ev in (orjson.loads(value) if kind is None else kind.accepted):
                f.write(orjson.dumps(ev) + b"\n")
    from_replay = replay(good_log, fast_policy).stdout.splitlines()
    from_worker = [m.value for m in msgs]
    assert of(RID, decoded(msgs)) == decoded(msgs)  # no other rollout came out of the bad input
    assert from_worker == from_replay, first_difference(from_worker, from_replay)
    assert orjson.loads(from_replay[-1])["action"] == "complete"

    # 4. the same messages through replay: the same rejections, in the same order
    all_log, rejections = tmp_path / "all.jsonl", tmp_path / "rejections.jsonl"
    all_log.write_bytes(b"".join(v + b"\n" for v, kind in stream if kind is None or kind.in_jsonl))
    r = replay(all_log, fast_policy, "--rejections", str(rejections))
    assert r.stdout.splitlines() == from_replay
    replayed = [orjson.loads(line)["reason"] for line in rejections.read_bytes().splitlines()]
    live = [m.headers[REASON_HEADER].decode() for m, (_, kind) in
            zip(dlq, [(v, k) for v, k in stream if k is not None for _ in k.reasons], strict=True) if kind.in_jsonl]
    assert replayed == live
    print(f"\nhostile input: {len(kinds)} kinds, {len(placed)} bad messages, {len(want)} dead letters; "
          f"{len(good_msgs)} good messages, {len(from_worker)} decisions equal to replay")
    assert wait_for(lambda: worker.proc is not None and worker.proc.poll() is None, 1)
