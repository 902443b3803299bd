"""The decision subscriber routers embed: the latest decision per rollout, always answerable.

On ``start()`` it reads the compacted decisions topic from the beginning to the end offsets, with no
consumer group (every router needs every rollout), so a router knows each rollout's state before it
serves. It then follows new decisions. While the broker is away, the last known views keep serving;
the consumer reconnects with exponential backoff and, if the log it had read is gone, reads the
topic again from the beginning (``seq`` makes replays harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from connectors.book import DecisionBook, RolloutView
from connectors.config import DECISIONS_TOPIC, KafkaConfig, as_config
from connectors.metrics import subscriber_metrics
from gates.decision import Decision, decode_decision

log = logging.getLogger(__name__)

DecisionCallback = Callable[[Decision], None]


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """Fresh partition ids of ``topic`` (empty if it does not exist). The consumer's own metadata
    cache only tracks assigned topics and the public ``topics()`` returns names only, so this asks
    the client for full cluster metadata (a private attribute, pinned by the integration tests)."""
    cluster = await consumer._client.fetch_all_metadata()
    return set(cluster.partitions_for_topic(topic) or ())


class DecisionSubscriber:
    def __init__(
        self,
        kafka: KafkaConfig | str | None = None,
        *,
        topic: str = DECISIONS_TOPIC,
        registry: CollectorRegistry | None = None,
        consumer_factory: Callable[..., Any] | None = None,
        poll_timeout_ms: int = 200,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        metadata_check_s: float = 10.0,
        request_timeout_ms: int = 10_000,
    ) -> None:
        self.kafka = as_config(kafka)
        self.topic = topic
        self._factory = consumer_factory or AIOKafkaConsumer
        self._poll_ms = poll_timeout_ms
        self._backoff = (backoff_initial, backoff_max)
        self._metadata_check_s = metadata_check_s
        self._request_timeout_ms = request_timeout_ms
        self._metrics = subscriber_metrics(registry)
        self._book = DecisionBook()
        self._callbacks: list[DecisionCallback] = []
        self._queues: set[asyncio.Queue[Decision | None]] = set()
        self._next: dict[TopicPartition, int] = {}  # our own positions survive a consumer rebuild
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_metadata_check = 0.0
        self.caught_up = False

    # -- queries the router makes on every request: plain dict lookups ---------------------------
    def weight(self, rollout_id: str, default: float = 0.0) -> float:
        """Canary percent 0..100; ``default`` (all baseline) for a rollout without a decision."""
        v = self._book.get(rollout_id)
        return default if v is None else v.weight

    def pinned_digest(self, rollout_id: str) -> str | None:
        v = self._book.get(rollout_id)
        return None if v is None else v.pinned_digest

    def state(self, rollout_id: str) -> RolloutView | None:
        return self._book.get(rollout_id)

    def rollouts(self) -> dict[str, RolloutView]:
        return self._book.all()

    # -- notifications ---------------------------------------------------------------------------
    def on_decision(self, cb: DecisionCallback) -> Callable[[], None]:
        """``cb(decision)`` runs on the loop for every applied decision (the start-up replay too, when
        registered before ``start()``). Returns a function that unregisters it."""
        self._callbacks.append(cb)
        return lambda: self._callbacks.remove(cb) if cb in self._callbacks else None

    async def decisions(self, maxsize: int = 1000) -> AsyncIterator[Decision]:
        """Applied decisions from now on, until ``stop()``. A slow reader loses the oldest ones."""
        q: asyncio.Queue[Decision | None] = asyncio.Queue(maxsize)
        self._queues.add(q)
        try:
            while (d := await q.get()) is not None:
                yield d
        finally:
            self._queues.discard(q)

    # -- ingest (pure except for notifications; unit-tested without Kafka) -----------------------
    def ingest(self, key: bytes | None, value: bytes | None) -> RolloutView | None:
        if value is None:
            if key:
                self._book.forget(key.decode("utf-8", "replace"))
            return None
        try:
            d = decode_decision(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._metrics.rejected.inc()
            log.warning("subscriber: undecodable decision skipped: %s", exc)
            return None
        view = self._book.apply(d)
        if view is None:
            self._metrics.ignored.labels(d.rollout_id).inc()
            return None
        self._metrics.applied.labels(d.rollout_id).inc()
        for cb in list(self._callbacks):
            try:
                cb(d)
            except Exception:  # one broken listener must not stop the others or the consumer
                log.exception("subscriber: decision callback failed")
        for q in list(self._queues):
            if q.full():
                q.get_nowait()
            q.put_nowait(d)
        return view

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> None:
        """Returns once every decision present at start-up is applied; TimeoutError otherwise."""
        self._stopping = False
        await asyncio.wait_for(self._catch_up(), timeout)
        self.caught_up = True
        self._task = asyncio.create_task(self._follow(), name="rollout-gate-subscriber")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_consumer()
        for q in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    async def __aenter__(self) -> DecisionSubscriber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _catch_up(self) -> None:
        try:
            await self._open()
            tps = sorted(self._consumer.assignment(), key=lambda tp: tp.partition)
            if not tps:
                return
            ends = await self._consumer.end_offsets(tps)
            while True:
                pending = [tp for tp in tps if await self._consumer.position(tp) < ends[tp]]
                if not pending:
                    return
                self._consume(await self._consumer.getmany(*pending, timeout_ms=self._poll_ms))
        except BaseException:
            await self._close_consumer()
            raise

    async def _follow(self) -> None:
        delay = self._backoff[0]
        while not self._stopping:
            try:
                if self._consumer is None:
                    await self._open()
                else:
                    # new partitions every metadata_check_s; a topic not created yet every second, so
                    # that a router started before the worker follows its first decision at once
                    since = time.monotonic() - self._last_metadata_check
                    if since > self._metadata_check_s or (since > 1.0 and not self._consumer.assignment()):
                        await self._refresh_partitions()
                if self._consumer.assignment():
                    self._consume(await self._consumer.getmany(timeout_ms=self._poll_ms))
                else:  # topic not created yet; getmany() would wait for an assignment forever
                    await asyncio.sleep(min(self._metadata_check_s, 0.25))
                delay = self._backoff[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Serving goes on from the book; only the consumer is rebuilt.
                log.warning("subscriber: consumer error, reconnecting in %.1fs: %s", delay, exc)
                self._metrics.reconnects.inc()
                await self._close_consumer()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])

    def _consume(self, batches: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batches.items():
            for r in records:
                self.ingest(r.key, r.value)
                self._next[tp] = r.offset + 1

    async def _open(self) -> None:
        consumer = self._factory(
            **self.kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            # A position past the log end means the log was lost (broker rebuilt): read it again.
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            request_timeout_ms=self._request_timeout_ms,
        )
        self._consumer = consumer
        try:
            await consumer.start()
            await self._refresh_partitions()
        except BaseException:
            await self._close_consumer()
            raise

    async def _refresh_partitions(self) -> None:
        """Assign every partition of the topic; new ones (or a topic created late) from the start."""
        self._last_metadata_check = time.monotonic()
        parts = await partitions_of(self._consumer, self.topic)
        tps = {TopicPartition(self.topic, p) for p in parts}
        if tps == set(self._consumer.assignment()):
            return
        self._consumer.assign(list(tps))
        for tp in tps:
            if tp in self._next:
                self._consumer.seek(tp, self._next[tp])
            else:
                await self._consumer.seek_to_beginning(tp)

    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            await consumer.stop()
        except asyncio.CancelledError:
            # aiokafka's stop() can leak the CancelledError of its own fetch task when the broker
            # is away; only a cancellation aimed at us may end the follow loop.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except Exception:
            log.debug("subscriber: consumer stop failed", exc_info=True)
