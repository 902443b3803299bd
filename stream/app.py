"""The one place that wires the worker: settings -> Faust app, topics, state table, metrics, engine.

``bootstrap(settings)`` returns a :class:`Wiring`; tests pass ``engine_factory`` to swap the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
import mode
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from gates.decision import Decision
from gates.policy import PolicySet

from .metrics import Metrics, MetricsServer
from .notify import Notifier
from .processor import CommandAuth, DeadLetter, EngineLike, Processor, Record
from .settings import Settings
from .status import LiveState

log = logging.getLogger(__name__)

STATE_TABLE = "rollout-state"
# Fetches of the events topic waiting for the agent (Faust pauses the partition above 80%), and
# the most fetches the agent folds in one batch. A fetch holds up to batch_max_messages messages.
EVENT_FETCHES_BUFFERED = 32
EVENT_FETCHES_PER_BATCH = 8


def partition_for_key(key: str, partitions: int) -> int:
    """Kafka's default partitioner for a keyed message (murmur2), as every standard client uses it."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class KafkaSink:
    """Decisions and dead letters through one idempotent producer (acks=all); state through the table.

    Faust's own producer only turns on idempotence for exactly-once transactions, so decisions get
    a dedicated aiokafka producer with ``enable_idempotence=True``.
    """

    def __init__(self, settings: Settings, table: Any) -> None:
        self.settings = settings
        self.table = table
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            client_id=f"{self.settings.app_id}-decisions",
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            **self.settings.aiokafka_auth(),
        )
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise RuntimeError("the decision producer is not started")
        return self.producer

    async def publish_decisions(self, decisions: Sequence[Decision]) -> None:
        producer = self._producer()
        topic = self.settings.decisions_topic
        pending = [await producer.send(topic, value=d.to_json(), key=d.rollout_id.encode())
                   for d in decisions]
        await asyncio.gather(*pending)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        producer = self._producer()
        topic = self.settings.dlq_topic
        pending = [await producer.send(topic, value=x.value, key=x.key, headers=x.headers) for x in letters]
        await asyncio.gather(*pending)

    def persist(self, rollout_id: str, blob: bytes) -> None:
        # use_partitioner=True: the changelog partition comes from the key, exactly like the events'
        # partition, so writing outside of stream iteration (take_events) is supported.
        self.table[rollout_id.encode()] = blob


class Runtime(mode.Service):
    """What must run beside the Faust app, started before it and stopped after it (a Worker service):
    the metrics/health server, the decision producer and the event-loop heartbeat. Topics are
    created before (stream.worker.run_worker), so that a bad topic fails without a traceback."""

    def __init__(self, wiring: Wiring, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wiring = wiring
        self.server: MetricsServer | None = None

    async def on_start(self) -> None:
        w = self.wiring
        warning = command_auth_warning(w.settings)
        if warning is not None:
            log.warning(warning)
        w.metrics.heartbeat = time.monotonic()
        if self.server is None:
            self.server = MetricsServer(w.metrics, w.settings.metrics_host, w.settings.metrics_port)
        self.server.live = w.live
        w.live.loop = asyncio.get_running_loop()
        self.server.start()
        await w.sink.start()
        await w.notifier.start()

    async def on_shutdown(self) -> None:
        self.wiring.live.loop = None
        await self.wiring.notifier.stop()
        await self.wiring.sink.stop()
        if self.server is not None:
            self.server.stop()

    @mode.Service.task
    async def _recover_decisions(self) -> None:
        # The latest decision of each restored rollout (its reason for status views and the
        # decision-info metric) is not in the engine's state: read it back once the worker is ready.
        w = self.wiring
        while not self.should_stop and not w.metrics.ready:
            await self.sleep(0.5)
        if self.should_stop:
            return
        try:
            n = await w.live.recover(w.settings)
            log.info("latest decisions of %d restored rollouts read back from %s", n, w.settings.decisions_topic)
        except Exception as exc:  # status views then lack the last reason until the next decision
            log.warning("could not read back the latest decisions from %s: %r", w.settings.decisions_topic, exc)

    @mode.Service.task
    async def _heartbeat(self) -> None:
        while not self.should_stop:
            self.wiring.metrics.heartbeat = time.monotonic()
            await self.sleep(1.0)


@dataclass
class Wiring:
    settings: Settings
    policy: PolicySet
    app: faust.App
    events_topic: Any
    commands_topic: Any
    table: Any
    metrics: Metrics
    sink: KafkaSink
    processor: Processor
    live: LiveState
    notifier: Notifier
    runtime: Runtime | None = None

    def assigned(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    def owned_snapshots(self) -> Iterable[tuple[str, bytes]]:
        """The table's rollouts whose partition this worker owns now."""
        parts = self.assigned(self.settings.events_topic)
        n = self.settings.topic_partitions
        for key, blob in list(self.table.data.items()):
            rollout_id = key.decode() if isinstance(key, bytes) else str(key)
            if partition_for_key(rollout_id, n) in parts:
                yield rollout_id, blob


def _default_engine_factory(policy: PolicySet) -> Callable[[], EngineLike]:
    from gates.engine import Engine

    return lambda: Engine(policy)


def command_auth(settings: Settings) -> CommandAuth:
    return CommandAuth(settings.command_key, settings.commands_allow_unsigned)


def command_auth_warning(settings: Settings) -> str | None:
    """The line logged at start when operator commands are not authenticated."""
    if settings.command_key is not None:
        return None
    if settings.commands_allow_unsigned:
        return ("no ROLLOUT_GATE_COMMAND_HMAC_KEY and ROLLOUT_GATE_COMMANDS_ALLOW_UNSIGNED=true: operator commands "
                "are NOT authenticated; anyone who can write to the commands topic can pause, promote or roll back")
    return "no ROLLOUT_GATE_COMMAND_HMAC_KEY: every operator command will be refused and dead-lettered"


def bootstrap(settings: Settings, *, engine_factory: Callable[[], EngineLike] | None = None,
              metrics: Metrics | None = None) -> Wiring:
    policy = settings.load_policy()
    factory = engine_factory if engine_factory is not None else _default_engine_factory(policy)
    from . import transport

    app = faust.App(
        settings.app_id,
        broker=[f"{transport.SCHEME}://{s}" for s in settings.bootstrap_servers],
        broker_credentials=settings.faust_credentials(),
        store="memory://",
        web_enabled=False,
        datadir=str(settings.data_dir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_seconds,
        consumer_max_fetch_size=settings.max_fetch_bytes,
        broker_max_poll_records=settings.batch_max_messages,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        autodiscover=False,
    )
    app.rollout_gate_fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.rollout_gate_bundled_topics = frozenset({settings.events_topic})
    # Each fetch of a partition comes as one bundle of up to batch_max_messages records
    # (stream.transport), so the stream's buffer counts fetches, not messages.
    events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw",
                             partitions=settings.topic_partitions, maxsize=EVENT_FETCHES_BUFFERED)
    commands_topic = app.topic(settings.commands_topic, key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw",
                               partitions=settings.topic_partitions)
    # Keys are the rollout id's UTF-8 bytes (raw, like the events' keys, so the partitioner puts a
    # rollout's state in the partition of its events); values are engine snapshots.
    table = app.Table(STATE_TABLE, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions,
                      use_partitioner=True, help="engine snapshot per rollout (gates.engine)")
    metrics = metrics if metrics is not None else Metrics(ended_retention_seconds=settings.metrics_ended_retention_seconds,
                                                          max_rollouts=settings.metrics_max_rollouts)
    sink = KafkaSink(settings, table)
    processor = Processor(factory, sink, metrics, max_live_rollouts=settings.max_live_rollouts,
                          command_auth=command_auth(settings))
    live = LiveState(processor, metrics)
    notifier = Notifier.from_settings(settings, metrics)
    processor.watchers += [live.decided, notifier.decided]
    processor.vet_command = live.vet
    guarded = {settings.events_topic, settings.commands_topic}

    def commit_limit(topic: str, partition: int) -> int | None:
        return processor.positions.get((topic, partition), 0) if topic in guarded else None

    app.rollout_gate_commit_limit = commit_limit
    wiring = Wiring(settings, policy, app, events_topic, commands_topic, table, metrics, sink, processor, live,
                    notifier)
    wiring.runtime = Runtime(wiring)
    from .agents import register

    register(wiring)
    return wiring


def records(events: Sequence[Any]) -> list[Record]:
    """Faust events -> processor records (topic, partition, offset, raw key and value); a bundled
    fetch (stream.transport.Bundle) gives each of its records."""
    out = []
    for e in events:
        m = e.message
        bundled = getattr(m, "records", None)
        if bundled is None:
            out.append(Record(m.topic, m.partition, m.offset, m.key, m.value))
        else:
            out.extend([Record(r.topic, r.partition, r.offset, r.key, r.value) for r in bundled])
    return out
