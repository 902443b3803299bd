"""The event publisher inference services embed: ``publish()`` never waits for the network.

The request path only validates the event (the contract's own decoder, so what the publisher accepts
the worker accepts) and appends it to a bounded buffer. A background task groups events per
``rollout_id`` into JSON-array messages and hands them to an idempotent ``acks=all`` producer. When
Kafka is slow or away the buffer fills and new events are dropped and counted, never queued without
bound: a canary gate can live with a gap, a stalled inference service cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from connectors.config import EVENTS_TOPIC, KafkaConfig, as_config
from connectors.metrics import publisher_metrics
from gates.events import Event, FeedbackEvent, InferenceEvent, Rejection, decode_message, encode_event

log = logging.getLogger(__name__)

PublishInput = Mapping[str, Any] | InferenceEvent | FeedbackEvent


class Producer(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def flush(self) -> None: ...
    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]: ...


ProducerFactory = Callable[..., Producer]


def validate(event: PublishInput) -> Event:
    """The event as the worker will read it; ValueError (a caller bug) when the contract rejects it."""
    if isinstance(event, InferenceEvent | FeedbackEvent):
        raw = encode_event(event)
    elif isinstance(event, Mapping):
        try:
            raw = orjson.dumps(event)
        except TypeError as exc:
            raise ValueError(f"event is not JSON-serialisable: {exc}") from None
    else:
        raise ValueError(f"event must be a dict, InferenceEvent or FeedbackEvent, not {type(event).__name__}")
    decoded = decode_message(raw)
    if len(decoded) != 1 or isinstance(decoded[0], Rejection):
        reason = decoded[0].reason if decoded and isinstance(decoded[0], Rejection) else "not one event"
        raise ValueError(f"invalid event: {reason}")
    return decoded[0]


def encode_batch(events: list[Event]) -> bytes:
    return b"[" + b",".join(encode_event(e) for e in events) + b"]"


def group_batches(events: list[Event], max_batch: int) -> list[tuple[str, list[Event]]]:
    """Per rollout, in arrival order, chunks of at most ``max_batch`` events."""
    by_rollout: dict[str, list[Event]] = {}
    for e in events:
        by_rollout.setdefault(e.rollout_id, []).append(e)
    out: list[tuple[str, list[Event]]] = []
    for rid, evs in by_rollout.items():
        out.extend((rid, evs[i : i + max_batch]) for i in range(0, len(evs), max_batch))
    return out


class _Buffer:
    """Bounded FIFO; the lock makes the capacity check and the append one step across threads."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Event] = deque()
        self._lock = threading.Lock()

    def offer(self, event: Event) -> bool:
        with self._lock:
            if len(self._items) >= self.capacity:
                return False
            self._items.append(event)
            return True

    def take(self, n: int) -> list[Event]:
        with self._lock:
            k = min(n, len(self._items))
            return [self._items.popleft() for _ in range(k)]

    def __len__(self) -> int:
        return len(self._items)


class EventPublisher:
    """Async publisher. ``publish()`` must be called on the loop that ran ``start()``;
    use :class:`SyncEventPublisher` from threads."""

    def __init__(
        self,
        kafka: KafkaConfig | str | None = None,
        *,
        topic: str = EVENTS_TOPIC,
        buffer_size: int = 10_000,
        linger_ms: float = 5.0,
        max_batch: int = 100,
        compression: str | None = None,
        registry: CollectorRegistry | None = None,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        if max_batch < 1 or buffer_size < 1:
            raise ValueError("max_batch and buffer_size must be >= 1")
        self.kafka = as_config(kafka)
        self.topic = topic
        self.linger = linger_ms / 1000.0
        self.max_batch = max_batch
        self._compression = compression
        self._factory: ProducerFactory = producer_factory or AIOKafkaProducer
        self._buffer = _Buffer(buffer_size)
        self._metrics = publisher_metrics(registry)
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: Producer | None = None
        self._sender: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Future[Any]] = set()
        self._closed = False

    # -- request path ---------------------------------------------------------------------------
    def publish(self, event: PublishInput) -> bool:
        """Validate and buffer; True if buffered, False if dropped (counted). Never awaits."""
        ev = validate(event)
        if not self._offer(ev):
            return False
        if not self._wake.is_set():
            self._wake.set()
        return True

    def publish_threadsafe(self, event: PublishInput) -> bool:
        ev = validate(event)
        if not self._offer(ev):
            return False
        loop = self._loop
        # One wake-up per drain, not one cross-thread call per event: call_soon_threadsafe writes
        # to the loop's self-pipe, which would dominate the cost of publish().
        if loop is not None and not self._wake_pending:
            self._wake_pending = True
            loop.call_soon_threadsafe(self._wake.set)
        return True

    def _offer(self, ev: Event) -> bool:
        if self._closed:
            self._metrics.dropped.labels("closed").inc()
            return False
        if not self._buffer.offer(ev):
            self._metrics.dropped.labels("buffer_full").inc()
            return False
        return True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        producer = self._factory(
            **self.kafka.client_kwargs(),
            acks="all",
            enable_idempotence=True,
            compression_type=self._compression,
        )
        await producer.start()
        self._producer = producer
        self._sender = asyncio.create_task(self._run(), name="rollout-gate-publisher")
        if len(self._buffer):
            self._wake.set()

    async def stop(self, timeout: float = 30.0) -> None:
        """Send everything buffered, wait for the acknowledgements, close the producer."""
        self._closed = True
        self._wake.set()
        try:
            if self._sender is not None:
                await asyncio.wait_for(asyncio.shield(self._sender), timeout)
            if self._inflight:
                await asyncio.wait(set(self._inflight), timeout=timeout)
        except TimeoutError:
            log.warning("publisher stop: %d events not flushed within %.0fs", len(self._buffer), timeout)
        finally:
            if self._sender is not None and not self._sender.done():
                self._sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sender
            if self._producer is not None:
                await self._producer.stop()
            self._metrics.buffered.set(len(self._buffer))

    async def __aenter__(self) -> EventPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- background sender ---------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            if not len(self._buffer):
                if self._closed:
                    return
                await self._wake.wait()
            self._wake_pending = False
            self._wake.clear()
            if self.linger > 0 and len(self._buffer) < self.max_batch and not self._closed:
                await asyncio.sleep(self.linger)
            self._metrics.buffered.set(len(self._buffer))
            events = self._buffer.take(self.max_batch * 50)
            if events:
                await self._send(events)

    async def _send(self, events: list[Event]) -> None:
        assert self._producer is not None
        for rid, chunk in group_batches(events, self.max_batch):
            try:
                fut = await self._producer.send(self.topic, value=encode_batch(chunk), key=rid.encode())
            except Exception as exc:  # a rejected send must not kill the sender: count and go on
                log.warning("publisher: send of %d events failed: %s", len(chunk), exc)
                self._metrics.dropped.labels("send_error").inc(len(chunk))
                continue
            self._inflight.add(fut)
            fut.add_done_callback(self._delivered(len(chunk)))

    def _delivered(self, n: int) -> Callable[[asyncio.Future[Any]], None]:
        def done(fut: asyncio.Future[Any]) -> None:
            self._inflight.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                self._metrics.dropped.labels("send_error").inc(n)
                return
            self._metrics.sent_events.inc(n)
            self._metrics.sent_messages.inc()

        return done


class SyncEventPublisher:
    """Thread-safe wrapper for sync services: the async publisher runs on its own loop thread.

    ``publish()`` validates in the caller's thread (so a bad event raises there) and is O(1)."""

    def __init__(self, kafka: KafkaConfig | str | None = None, **kwargs: Any) -> None:
        self._pub = EventPublisher(kafka, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rollout-gate-publisher", daemon=True
        )

    def start(self, timeout: float = 30.0) -> SyncEventPublisher:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._pub.start(), self._loop).result(timeout)
        return self

    def publish(self, event: PublishInput) -> bool:
        return self._pub.publish_threadsafe(event)

    @property
    def buffered(self) -> int:
        return self._pub.buffered

    def close(self, timeout: float = 30.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._pub.stop(timeout), self._loop).result(timeout + 5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._loop.close()

    def __enter__(self) -> SyncEventPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
