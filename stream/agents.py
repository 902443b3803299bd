"""The agents, the timer and the recovery hook. Each hands its input to the Processor and nothing more.

Both agents keep concurrency=1: faust-streaming loses messages with concurrent actors on one
topic (issue #606), and the engine is not meant to be fed from two tasks at once anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from aiokafka import TopicPartition
from faust.types import TP

if TYPE_CHECKING:
    from .app import Wiring

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_ENGINE_FAILURE = 70


async def to_completion(aw: Awaitable[T]) -> T:
    """Run a batch to its end even if the agent is cancelled meanwhile (worker shutdown).

    take_events() acknowledges a batch when the agent leaves it, also on cancellation; if the
    batch were cut in the middle its offsets would be committed without its state being
    persisted. So the batch finishes first and the cancellation is re-raised after.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


def fail_stop(what: str, exc: BaseException) -> NoReturn:
    """An engine or producer failure: exit at once, before Faust commits the batch's offsets.

    The state lives in Kafka (changelog + committed offsets), so a restarted worker resumes from
    the last persisted batch; going on after a half-applied batch could count events twice.
    """
    log.critical("%s failed; stopping the worker without committing: %r", what, exc, exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_ENGINE_FAILURE)


async def finish_or_stop(aw: Awaitable[T], what: str) -> T:
    """``to_completion``, and ``fail_stop`` on any failure but a cancellation (``what`` names the
    work in the log line)."""
    try:
        return await to_completion(aw)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        fail_stop(what, exc)


def register(w: Wiring) -> None:
    from .app import EVENT_FETCHES_PER_BATCH, records

    app, s, proc = w.app, w.settings, w.processor

    @app.agent(w.events_topic, name=f"{s.app_id}.events", concurrency=1)
    async def consume_events(stream: Any) -> None:
        # each item is a fetch of one partition (stream.transport.Bundle), unpacked by records()
        async for batch in stream.take_events(EVENT_FETCHES_PER_BATCH, within=s.batch_within_seconds):
            recs = records(batch)
            await finish_or_stop(proc.process_events(recs), f"batch of {len(recs)} messages from {s.events_topic}")

    @app.agent(w.commands_topic, name=f"{s.app_id}.commands", concurrency=1)
    async def consume_commands(stream: Any) -> None:
        async for batch in stream.take_events(100, within=s.batch_within_seconds):
            await finish_or_stop(proc.process_commands(records(batch)),
                                 f"batch of {len(batch)} commands from {s.commands_topic}")

    sources = (s.events_topic, s.commands_topic)

    async def check_stalls() -> None:
        await proc.check_stalls(handed_on(app.consumer, sources))

    @app.timer(s.tick_seconds, name=f"{s.app_id}.tick")
    async def tick() -> None:
        await finish_or_stop(proc.tick(), "timer tick")
        await finish_or_stop(check_stalls(), "stall check")
        await update_consumer_lag(w)

    async def rewind(topic: str, partition: int, offset: int) -> int:
        # stream.transport.Consumer.rewind: Faust's plain seek does not hold while the fetcher runs
        consumer: Any = app.consumer
        return int(await consumer.rewind(TP(topic, partition), offset))

    proc.rewind = rewind

    @w.table.on_recover
    async def restore_engine() -> None:
        # Called after the changelog is read and before the consumer resumes the source topics.
        tps = [tp for tp in app.consumer.assignment() if tp.topic in sources]
        positions = await resume_offsets(w, tps)
        n = await proc.restore(w.owned_snapshots(), positions)
        assigned = w.assigned(s.events_topic)
        w.metrics.ready = bool(assigned)
        log.info("restored %d rollouts from %s; events partitions %s", n, w.table.changelog_topic_name,
                 sorted(assigned) or "none")

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        if revoked:
            w.metrics.ready = False
        # whoever gets the partition next starts from the committed offset
        proc.guard.forget((tp.topic, tp.partition) for tp in revoked)


async def resume_offsets(w: Wiring, tps: list[TP]) -> dict[tuple[str, int], int]:
    """Where the consumer resumes each partition: the group's committed offset, else the earliest."""
    if not tps:
        return {}
    from .topics import admin_client

    admin = admin_client(w.settings)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(
            w.settings.app_id, partitions=[TopicPartition(tp.topic, tp.partition) for tp in tps])
    finally:
        await admin.close()
    out: dict[tuple[str, int], int] = {}
    missing: list[TP] = []
    for tp in tps:
        meta = committed.get(TopicPartition(tp.topic, tp.partition))
        if meta is not None and meta.offset >= 0:
            out[(tp.topic, tp.partition)] = meta.offset
        else:
            missing.append(tp)
    if missing:
        for tp, offset in (await w.app.consumer.earliest_offsets(*missing)).items():
            out[(tp.topic, tp.partition)] = offset
    return out


def handed_on(consumer: Any, topics: tuple[str, ...]) -> dict[tuple[str, int], int | None]:
    """The last offset Faust passed to the streams, per assigned partition of ``topics``."""
    read = getattr(consumer, "_read_offset", {})
    return {(tp.topic, tp.partition): read.get(tp) for tp in consumer.assignment() if tp.topic in topics}


async def update_consumer_lag(w: Wiring) -> None:
    """Set the consumer-lag gauge: the broker's log end now minus the next offset to process.

    The log end is asked of the broker (ListOffsets) on every update. The highwater the consumer
    caches is only as new as its last fetch response: while Faust holds fetched records or pauses
    the partition, it stays behind the log, and then equals the position while newer messages wait.
    The end is read before the position, so a lag of 0 means every message written before the
    update was processed and counted.
    """
    consumer = w.app.consumer
    tps = [tp for tp in consumer.assignment() if tp.topic in (w.settings.events_topic, w.settings.commands_topic)]
    if not tps:
        return
    try:
        ends = await consumer.highwaters(*tps)
    except Exception as exc:  # lag is best effort: the consumer may be rebalancing; the next tick retries
        log.debug("consumer lag: could not read the log end offsets: %r", exc)
        return
    for tp in tps:
        end = ends.get(tp)
        try:
            position = w.processor.positions.get((tp.topic, tp.partition))
            if position is None:
                position = await consumer.position(tp)
        except Exception:
            continue
        if end is not None and position is not None:
            w.metrics.set_consumer_lag(tp.topic, tp.partition, end - position)
