"""Helpers for tests and benchmarks that talk to a real broker (also for the future full-loop test)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connectors.config import DEFAULT_BOOTSTRAP, KafkaConfig
from connectors.subscriber import partitions_of
from gates.decision import Decision, GateResult
from gates.events import Decoded, decode_message


def bootstrap() -> str:
    return os.environ.get("ROLLOUT_GATE_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


async def create_topics(
    servers: str, names: Iterable[str], *, partitions: int = 1, compact: bool = False
) -> None:
    config = {"cleanup.policy": "compact"} if compact else {}
    admin = AIOKafkaAdminClient(**KafkaConfig(bootstrap_servers=servers).client_kwargs())
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(n, num_partitions=partitions, replication_factor=1, topic_configs=config)
                for n in names
            ]
        )
    finally:
        await admin.close()


async def produce(servers: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def read_all(servers: str, topic: str, *, expect: int, timeout: float = 20.0) -> list[Any]:
    """Records of every partition from the beginning until ``expect`` arrived (or the timeout)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []
    try:
        parts = await partitions_of(consumer, topic)
        for _ in range(50):
            if parts:
                break
            await asyncio.sleep(0.1)
            parts = await partitions_of(consumer, topic)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < expect and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def read_events(servers: str, topic: str, *, expect: int, timeout: float = 20.0) -> list[Decoded]:
    """Decoded events (and rejections) of a topic until ``expect`` of them arrived (or the timeout)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[Decoded] = []
    try:
        parts: set[int] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not parts and loop.time() < deadline:
            parts = await partitions_of(consumer, topic)
            if not parts:
                await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while len(out) < expect and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    out.extend(decode_message(r.value))
    finally:
        await consumer.stop()
    return out


def decision(
    rollout_id: str,
    seq: int,
    *,
    action: str = "promote",
    weight: float = 10.0,
    stage: str | None = None,
    baseline_digest: str | None = "sha256:base",
    canary_digest: str | None = "sha256:cand",
    ts: float = 1_767_225_600.0,
    gates: list[GateResult] | None = None,
    reason: str = "all gates pass",
) -> Decision:
    """A contract decision with sensible defaults; ``halt`` implies weight 0 and ``rolled-back``."""
    if action == "halt":
        weight, stage = 0.0, stage or "rolled-back"
    return Decision(
        rollout_id=rollout_id,
        seq=seq,
        ts=ts + seq,
        action=action,
        stage=stage or f"canary-{weight:g}",
        weight=weight,
        previous_weight=0.0,
        baseline_digest=baseline_digest,
        canary_digest=canary_digest,
        gates=gates
        if gates is not None
        else [
            GateResult(
                name="latency",
                status="pass",
                observed=110.0,
                baseline=100.0,
                ratio=1.1,
                threshold=1.5,
                samples={"baseline": 500, "canary": 500},
            )
        ],
        reason=reason,
    )
