"""(a) The publisher's messages, read back from a real topic, decode with the worker's decoder."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from connectors.publisher import EventPublisher, SyncEventPublisher
from connectors.testing import bootstrap, create_topics, read_all
from gates.events import FeedbackEvent, InferenceEvent, Rejection, decode_message

pytestmark = pytest.mark.integration


def event(rid: str, i: int) -> dict[str, object]:
    return {
        "rollout_id": rid,
        "arm": "canary" if i % 2 else "baseline",
        "request_id": f"{rid}-{i}",
        "ts": 1_767_225_600.0 + i,
        "latency_ms": 100.0 + i,
        "output_tokens": i,
        "status": "ok",
        "model": "m",
        "model_digest": "sha256:abc",
        "input_tokens": 7,
        "cost_usd": 0.001,
    }


def decoded_by_rollout(records: list) -> dict[str, list[InferenceEvent | FeedbackEvent]]:  # type: ignore[type-arg]
    out: dict[str, list[InferenceEvent | FeedbackEvent]] = {}
    for rec in records:
        for d in decode_message(rec.value):
            assert not isinstance(d, Rejection), d.reason
            assert d.rollout_id == rec.key.decode()  # key = rollout_id
            out.setdefault(d.rollout_id, []).append(d)
    return out


async def test_published_events_decode_on_the_consumer_side(unique_id: str) -> None:
    servers, topic = bootstrap(), f"{unique_id}.events"
    await create_topics(servers, [topic], partitions=3)
    reg = CollectorRegistry()
    pub = EventPublisher(servers, topic=topic, registry=reg, max_batch=50, linger_ms=5, compression="gzip")
    await pub.start()
    for i in range(120):
        for rid in ("chat-v7", "code-v2"):
            assert pub.publish(event(rid, i))
    assert pub.publish(
        {
            "type": "feedback",
            "rollout_id": "chat-v7",
            "arm": "canary",
            "request_id": "chat-v7-1",
            "ts": 1_767_225_700.0,
            "value": "down",
            "request_ts": 1_767_225_601.0,
        }
    )
    await asyncio.wait_for(pub.stop(), 30)
    assert reg.get_sample_value("rollout_gate_publisher_sent_events_total") == 241
    messages = reg.get_sample_value("rollout_gate_publisher_sent_messages_total")
    assert messages is not None and 6 <= messages < 241  # batched: several events per message

    records = await read_all(servers, topic, expect=int(messages))
    assert len(records) == messages
    got = decoded_by_rollout(records)
    chat = [d for d in got["chat-v7"] if isinstance(d, InferenceEvent)]
    assert [d.request_id for d in chat] == [f"chat-v7-{i}" for i in range(120)]  # order kept per rollout
    assert [d.request_id for d in got["code-v2"]] == [f"code-v2-{i}" for i in range(120)]
    first = chat[1]
    assert (first.arm, first.latency_ms, first.output_tokens, first.model_digest, first.cost_usd) == (
        "canary",
        101.0,
        1,
        "sha256:abc",
        0.001,
    )
    (fb,) = [d for d in got["chat-v7"] if isinstance(d, FeedbackEvent)]
    assert (fb.value, fb.request_ts, fb.negative) == ("down", 1_767_225_601.0, True)


async def test_sync_publisher_from_threads_reaches_kafka(unique_id: str) -> None:
    servers, topic = bootstrap(), f"{unique_id}.events.sync"
    await create_topics(servers, [topic])
    reg = CollectorRegistry()

    def produce() -> None:
        with SyncEventPublisher(servers, topic=topic, registry=reg) as pub:
            for i in range(50):
                assert pub.publish(event("sync-r", i))

    await asyncio.wait_for(asyncio.to_thread(produce), 30)
    assert reg.get_sample_value("rollout_gate_publisher_sent_events_total") == 50
    messages = int(reg.get_sample_value("rollout_gate_publisher_sent_messages_total") or 0)
    got = decoded_by_rollout(await read_all(servers, topic, expect=messages))
    assert [d.request_id for d in got["sync-r"]] == [f"sync-r-{i}" for i in range(50)]
