from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from connectors.publisher import EventPublisher, SyncEventPublisher, group_batches, validate
from gates.events import FeedbackEvent, InferenceEvent, decode_message
from tests.unit.connectors.fakes import FakeProducer


def ev(rid: str = "r1", n: int = 0, **kw: object) -> dict[str, object]:
    e: dict[str, object] = {
        "rollout_id": rid,
        "arm": "canary",
        "request_id": f"{rid}-{n}",
        "ts": 1_767_225_600 + n,
        "latency_ms": 12.5,
        "output_tokens": 40,
        "status": "ok",
    }
    e.update(kw)
    return e


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


def make(reg: CollectorRegistry, **kw: object) -> EventPublisher:
    return EventPublisher("unused:9092", registry=reg, producer_factory=FakeProducer, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"arm": "canary"}, "rollout_id is missing"),
        (ev(arm="treatment"), "arm must be one of"),
        (ev(latency_ms=-1), "latency_ms must be >= 0"),
        (ev(status="maybe"), "status must be"),
        (ev(output_tokens=1.5), "output_tokens must be an integer"),
        ({**ev(), "type": "feedback", "value": "meh"}, "value must be one of"),
    ],
)
def test_invalid_events_raise_at_the_caller(bad: dict[str, object], reason: str) -> None:
    reg = CollectorRegistry()
    pub = make(reg)
    with pytest.raises(ValueError, match=reason):
        pub.publish(bad)
    assert pub.buffered == 0


def test_non_event_objects_raise() -> None:
    with pytest.raises(ValueError, match="must be a dict"):
        validate(["not", "an", "event"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        validate({**ev(), "extra": object()})


def test_structs_are_validated_too() -> None:
    good = InferenceEvent(
        rollout_id="r", arm="baseline", request_id="q", ts=1.0, latency_ms=1.0, output_tokens=1, status="ok"
    )
    assert validate(good) == good
    fb = FeedbackEvent(rollout_id="r", arm="canary", request_id="q", ts=2.0, value="down", request_ts=1.0)
    assert validate(fb) == fb
    with pytest.raises(ValueError, match="arm"):
        validate(
            InferenceEvent(
                rollout_id="r",
                arm="nope",
                request_id="q",
                ts=1.0,
                latency_ms=1.0,
                output_tokens=1,
                status="ok",
            )
        )


def test_full_buffer_drops_and_counts() -> None:
    reg = CollectorRegistry()
    pub = make(reg, buffer_size=3)
    results = [pub.publish(ev(n=i)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert pub.buffered == 3
    assert value(reg, "rollout_gate_publisher_dropped_total", reason="buffer_full") == 2


def test_group_batches_keeps_order_per_rollout_and_caps_size() -> None:
    events = [validate(ev("a", i)) for i in range(7)] + [validate(ev("b", i)) for i in range(2)]
    events.insert(3, validate(ev("b", 99)))
    groups = group_batches(events, 3)
    assert [(rid, [e.request_id for e in chunk]) for rid, chunk in groups] == [
        ("a", ["a-0", "a-1", "a-2"]),
        ("a", ["a-3", "a-4", "a-5"]),
        ("a", ["a-6"]),
        ("b", ["b-99", "b-0", "b-1"]),
    ]


async def test_background_sender_batches_per_rollout_into_json_arrays() -> None:
    reg = CollectorRegistry()
    pub = make(reg, max_batch=3, linger_ms=20, topic="t.events")
    await pub.start()
    for i in range(7):
        assert pub.publish(ev("r1", i))
    pub.publish(ev("r2", 0, type="feedback", value="down"))
    await pub.stop()
    producer = FakeProducer.instances[-1]
    assert producer.kwargs["acks"] == "all" and producer.kwargs["enable_idempotence"] is True
    assert producer.stopped
    by_key: dict[bytes, list[list[str]]] = {}
    for topic, key, raw in producer.sent:
        assert topic == "t.events"
        assert raw.startswith(b"[")
        decoded = decode_message(raw)
        assert all(d.rollout_id == key.decode() for d in decoded)  # type: ignore[union-attr]
        by_key.setdefault(key, []).append([d.request_id for d in decoded])  # type: ignore[union-attr]
    assert by_key[b"r1"] == [["r1-0", "r1-1", "r1-2"], ["r1-3", "r1-4", "r1-5"], ["r1-6"]]
    assert by_key[b"r2"] == [["r2-0"]]
    assert isinstance(decode_message(producer.sent[-1][2])[0], FeedbackEvent)
    assert value(reg, "rollout_gate_publisher_sent_events_total") == 8
    assert value(reg, "rollout_gate_publisher_sent_messages_total") == 4


async def test_stop_flushes_events_buffered_before_start_and_refuses_later_ones() -> None:
    reg = CollectorRegistry()
    pub = make(reg, linger_ms=1000)  # a long linger must not delay the flush at stop
    for i in range(5):
        pub.publish(ev(n=i))
    await pub.start()
    t0 = time.perf_counter()
    await pub.stop()
    assert time.perf_counter() - t0 < 0.5
    assert value(reg, "rollout_gate_publisher_sent_events_total") == 5
    assert pub.publish(ev(n=9)) is False
    assert value(reg, "rollout_gate_publisher_dropped_total", reason="closed") == 1


async def test_failed_deliveries_are_counted_as_dropped() -> None:
    reg = CollectorRegistry()

    def failing(**kw: object) -> FakeProducer:
        p = FakeProducer(**kw)
        p.fail = True
        return p

    pub = EventPublisher("unused:9092", registry=reg, producer_factory=failing, linger_ms=0)
    await pub.start()
    for i in range(4):
        pub.publish(ev(n=i))
    await pub.stop()
    assert value(reg, "rollout_gate_publisher_dropped_total", reason="send_error") == 4
    assert value(reg, "rollout_gate_publisher_sent_events_total") == 0


async def test_publish_stays_fast_when_kafka_hangs() -> None:
    reg = CollectorRegistry()

    def hanging(**kw: object) -> FakeProducer:
        p = FakeProducer(**kw)
        p.hang = True
        return p

    pub = EventPublisher("unused:9092", registry=reg, producer_factory=hanging, buffer_size=100, linger_ms=0)
    await pub.start()
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    results = [pub.publish(ev(n=i)) for i in range(1000)]
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.05)  # the sender took a batch and is stuck in send()
    more = [pub.publish(ev(n=i)) for i in range(1000, 1200)]
    assert elapsed < 0.5  # 1000 calls; bounded by validation, not by the network
    # The first 1000 calls run without yielding: 100 fill the buffer, 900 drop. The sender then takes
    # those 100 and hangs in send(), so the next 200 calls find room for exactly 100 more.
    assert results.count(True) == 100 and more.count(True) == 100
    assert value(reg, "rollout_gate_publisher_dropped_total", reason="buffer_full") == 1000
    assert pub.buffered == 100
    await pub.stop(timeout=0.2)


def test_sync_publisher_is_thread_safe_and_keeps_order_per_rollout() -> None:
    reg = CollectorRegistry()
    FakeProducer.instances.clear()
    pub = SyncEventPublisher(
        "unused:9092", registry=reg, producer_factory=FakeProducer, linger_ms=1, buffer_size=100_000
    ).start()
    n, threads = 500, 4

    def worker(t: int) -> None:
        for i in range(n):
            assert pub.publish(ev(f"r{t}", i))

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with pytest.raises(ValueError):
        pub.publish({"nope": 1})
    pub.close()
    sent = FakeProducer.instances[-1].sent
    per_rollout: dict[str, list[int]] = {}
    for _, key, raw in sent:
        for d in decode_message(raw):
            per_rollout.setdefault(key.decode(), []).append(int(d.request_id.split("-")[1]))  # type: ignore[union-attr]
    assert sorted(per_rollout) == [f"r{t}" for t in range(threads)]
    for ids in per_rollout.values():
        assert ids == list(range(n))
    assert value(reg, "rollout_gate_publisher_sent_events_total") == n * threads
