"""Small aiokafka helpers for the integration tests and the benchmark: produce, read a topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


async def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]], *,
                  linger_ms: int = 5) -> int:
    """Send every (key, value) and wait for the broker's acknowledgements; returns the count."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all",
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        pending = [await producer.send(topic, value=v, key=k) for k, v in messages]
        await asyncio.gather(*pending)
        return len(pending)
    finally:
        await producer.stop()


async def read_until(bootstrap: str, topic: str, done: Callable[[list[Message]], bool], *,
                     timeout: float, from_offsets: dict[int, int] | None = None) -> list[Message]:
    """Read ``topic`` from the beginning (no group) until ``done(messages)`` or the timeout.
    Returns what was read either way; the caller asserts on it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[Message] = []
    try:
        deadline = time.monotonic() + timeout
        parts: list[int] = []
        while not parts and time.monotonic() < deadline:
            parts = await partitions_of(bootstrap, topic)
            if not parts:
                await asyncio.sleep(0.2)
        if not parts:
            return out
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        for tp in tps:
            if from_offsets and tp.partition in from_offsets:
                consumer.seek(tp, from_offsets[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        while not done(out):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batch = await consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000), max_records=5000)
            for records in batch.values():
                for r in records:
                    out.append(Message(r.topic, r.partition, r.offset, r.key, r.value,
                                       {k: bytes(v) for k, v in (r.headers or ())}, r.timestamp))
        return out
    finally:
        await consumer.stop()


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """The topic's partitions, [] while it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for t in await admin.describe_topics([topic]):
            if t["topic"] == topic and t.get("error_code", 0) == 0:
                return sorted(p["partition"] for p in t["partitions"])
        return []
    finally:
        await admin.close()


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    from stream.topics import describe_topic_configs

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return (await describe_topic_configs(admin, [topic]))[topic]
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    parts = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


def values(messages: Sequence[Message]) -> list[bytes]:
    return [m.value for m in messages if m.value is not None]


async def delete_topics_with_prefixes(bootstrap: str, prefixes: Iterable[str], *, chunk: int = 200) -> int:
    """Delete every topic whose name starts with one of ``prefixes`` (a test's or a benchmark's own
    topics, Faust's changelog and leader topics included); returns how many were deleted. Topics
    that are already gone are not an error."""
    wanted = tuple(prefixes)
    if not wanted:
        return 0
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(wanted))
        deleted = 0
        for i in range(0, len(names), chunk):
            resp = await admin.delete_topics(names[i : i + chunk], timeout_ms=30_000)
            for err in resp.topic_error_codes:  # (topic, error code): 0 done, 3 unknown topic (gone)
                if err[1] == 0:
                    deleted += 1
                elif err[1] != 3:
                    raise RuntimeError(f"deleting topic {err[0]} failed with Kafka error code {err[1]}")
        return deleted
    finally:
        await admin.close()
