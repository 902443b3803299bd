"""Faust's aiokafka transport with these changes (URL scheme ``rgkafka://``).

1. Commits never pass what the processor has finished. When the app stops or rebalances, Faust
   suspends flow control and *acknowledges* the messages it then skips without handing them to
   the agent (streams.py: ``value = skipped_value`` ... ``it.after(event, do_ack or value is
   skipped_value)``); the final commit then covers messages that were never processed, and they
   are lost. Seen in test_worker_stopped_mid_rollout_resumes_without_counting_twice[SIGTERM]: one
   message of 20 events missing after a graceful restart. The guard caps each commit of a source
   topic at the processor's position (the offset after its last finished batch); the processor's
   OffsetGuard (stream.offsets) handles the messages Faust drops at start and on rebalance.

2. A configurable fetch wait. faust-streaming builds its consumer with ``fetch_max_wait_ms=1500``
   and no setting to change it. aiokafka leaves a partition whose fetched records are still
   buffered out of the next fetch request, so that request may hold only idle partitions
   (commands, the assignor's topic) and the broker parks it for the full wait: events then stall
   for up to 1.5 s at a time. Measured on the worker benchmark: ~1.3 s pauses between batches and
   5x lower throughput. The wait comes from ``Settings.fetch_max_wait_ms``.

3. No records of paused partitions are consumed behind Faust's back. Faust hands its live set of
   active partitions to the consumer thread, where aiokafka reads it again each time it wakes
   while waiting for records (up to a second); an *empty* set means "every partition" there. At
   start the set goes empty between the end of the changelog recovery (changelog partitions
   paused) and the resume of the source partitions, so a fetch in that window returned the
   records of the still-paused events partition; Faust skips records of paused partitions
   silently, and aiokafka had moved past them: they were never handed on nor fetched again. Seen
   under load in test_worker_stopped_mid_rollout_resumes_without_counting_twice[SIGKILL]: the
   whole first part (offsets 0..766) vanished after the restart. ``_getmany`` gives the thread a
   copy taken when the fetch is asked for.

4. A seek back that holds (``Consumer.rewind``, used by the processor's OffsetGuard). Faust's own
   ``Consumer.seek`` does not hold while the fetcher runs: the records of the fetch in hand are
   still handed on after it, each one moving Faust's read offset (``_read_offset``) past the
   sought offset, so the records fetched again from there are dropped as already read (``DROPPED
   MESSAGE ROFF`` in consumer.py ``_drain_messages``). In the same test the guard then sought back
   to 0 while the second part was arriving, everything from 0 to the end of that fetch was
   dropped, and the partition stalled for good. ``rewind`` seeks in the consumer's thread (aiokafka
   is not thread-safe) and, until the first record from the new position comes, drops what was
   fetched before the seek; that first record resets the read offset, so every record from the
   sought offset on is handed on again.

5. Each fetch of an events partition reaches Faust as one message (a :class:`Bundle` of its
   records). Faust's per-message path (message and event objects, the conductor, the stream's
   queue, acks, sensors) costs 50-100 us per message; with small messages it dominates the
   worker (measured: one-event messages at 0.03x the rate of a bare consumer). A bundle pays it
   once per fetch; its offset is the last record's, so Faust's read offset, acks and commits mean
   what they meant, and the records keep their own offsets for the processor's OffsetGuard.
   ``stream.app.records`` unpacks bundles.

Everything else is Faust's own transport.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiokafka
from aiokafka.errors import IllegalStateError
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

log = logging.getLogger(__name__)

SCHEME = "rgkafka"
FETCH_MAX_WAIT_MS = 100  # set by stream.app.bootstrap from the settings


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka keeps the constructor argument here and hands it to its Fetcher in start().
        consumer._fetch_max_wait_ms = int(getattr(self.app, "rollout_gate_fetch_max_wait_ms", FETCH_MAX_WAIT_MS))
        return consumer

    async def seek_here(self, tp: TP, offset: int) -> None:
        """aiokafka's seek, run in this thread (through ``call_thread``), where aiokafka lives."""
        self._ensure_consumer().seek(tp, offset)


# (topic, partition) -> the next offset the processor has not finished, 0 if none, or None for a
# topic the processor does not consume (left to Faust).
CommitLimit = Callable[[str, int], int | None]


def clamp_commit_offsets(offsets: Mapping[Any, int], committed: Mapping[Any, int | None],
                         limit: CommitLimit) -> dict[Any, int]:
    """Faust's committable offsets, each capped at the processor's position; an offset that would
    not move the committed one forward is dropped."""
    out: dict[Any, int] = {}
    for tp, offset in offsets.items():
        cap = limit(tp.topic, tp.partition)
        if cap is not None:
            offset = min(offset, cap)
            done = committed.get(tp)
            if offset <= 0 or (done is not None and offset <= done):
                continue
        out[tp] = offset
    return out


class Verdict(Enum):
    PASS = "pass"  # not being rewound: hand the record on
    RESUME = "resume"  # the first record from the sought position: reset the read offset, hand it on
    STALE = "stale"  # fetched before the seek: drop it, it comes again
    RETRY = "retry"  # still stale long after the seek: drop it and seek again


@dataclass
class _Pending:
    target: int
    high: int  # a record at or below this offset can only come from the new position
    since: float


class Rewinds:
    """The partitions sought back and not yet fetched from the new position.

    The records of a partition come in offset order; a seek back makes the order restart at the
    sought offset, which is at or below any offset already fetched. So after a seek to ``target``,
    a record at or below ``max(target, the highest offset fetched so far)`` is from the new
    position, and one above it was fetched before the seek.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, retry_after: float = 5.0) -> None:
        self.clock = clock
        self.retry_after = retry_after
        self._pending: dict[Any, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, tp: object) -> bool:
        return tp in self._pending

    def begin(self, tp: Any, target: int, read_offset: int | None) -> None:
        """Before the seek to ``target``; ``read_offset`` is the last offset Faust handed on."""
        highs = [target]
        if read_offset is not None:
            highs.append(read_offset)
        pending = self._pending.get(tp)
        if pending is not None:
            highs.append(pending.high)
        self._pending[tp] = _Pending(target, max(highs), self.clock())

    def target(self, tp: Any) -> int | None:
        pending = self._pending.get(tp)
        return None if pending is None else pending.target

    def check(self, tp: Any, offset: int) -> Verdict:
        pending = self._pending.get(tp)
        if pending is None:
            return Verdict.PASS
        if offset <= pending.high:
            del self._pending[tp]
            return Verdict.RESUME
        pending.high = offset
        if self.clock() - pending.since >= self.retry_after:
            # the sought offset did not come (deleted meanwhile: the fetcher went on from the
            # earliest one); seek again, to where the broker still has records
            return Verdict.RETRY
        return Verdict.STALE

    def forget(self, tps: Iterable[Any] | None = None) -> None:
        if tps is None:
            self._pending.clear()
        else:
            for tp in tps:
                self._pending.pop(tp, None)


class Bundle:
    """The records of one partition from one fetch, as one record for Faust (5.): the last record's
    position and timestamp, no key, an empty value; the records themselves in ``records``."""

    __slots__ = ("offset", "partition", "records", "serialized_value_size", "timestamp", "timestamp_type",
                 "topic")
    key = None
    value = b""
    checksum = None
    headers: tuple[Any, ...] = ()
    serialized_key_size = 0

    def __init__(self, records: list[Any]) -> None:
        last = records[-1]
        self.records = records
        self.topic, self.partition, self.offset = last.topic, last.partition, last.offset
        self.timestamp, self.timestamp_type = last.timestamp, last.timestamp_type
        self.serialized_value_size = sum(r.serialized_value_size for r in records)


def bundle_fetch(records: Mapping[Any, list[Any]], topics: Collection[str]) -> dict[Any, list[Any]]:
    """A fetch (partition -> records) with each partition of ``topics`` as one :class:`Bundle`."""
    return {tp: [Bundle(recs)] if recs and tp.topic in topics else recs for tp, recs in records.items()}


class Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rewinds = Rewinds()

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        # a copy: the thread must not see later pauses, least of all the set going empty (3.)
        frozen = None if active_partitions is None else set(active_partitions)
        records = await super()._getmany(frozen, timeout)
        bundled: Collection[str] = getattr(self.app, "rollout_gate_bundled_topics", ())
        return bundle_fetch(records, bundled) if records and bundled else records

    def _to_message(self, tp: TP, record: Any) -> Any:
        message = super()._to_message(tp, record)
        if type(record) is Bundle:
            message.records = record.records
        return message

    async def rewind(self, tp: TP, offset: int) -> int:
        """Seek ``tp`` back to ``offset`` (or the earliest offset the broker still has, if later) so
        that every record from there is handed to the streams again; returns where it went."""
        earliest = (await self.earliest_offsets(tp)).get(tp)
        target = max(offset, earliest or 0)
        # first, so that whatever the fetcher hands on from now until the seek is judged stale
        self.rewinds.begin(tp, target, self._read_offset.get(tp))
        thread = self._thread
        assert isinstance(thread, ConsumerThread)
        try:
            await thread.call_thread(thread.seek_here, tp, target)
        except IllegalStateError:  # revoked meanwhile: its next owner starts from the committed offset
            self.rewinds.forget([tp])
        return target

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        rewinds = self.rewinds
        async for tp, message in super().getmany(timeout):
            if tp not in rewinds:
                yield tp, message
                continue
            bundled: list[Any] | None = getattr(message, "records", None)
            kept: list[Any] = []
            for rec in (message,) if bundled is None else bundled:
                verdict = rewinds.check(tp, rec.offset)
                if verdict is Verdict.PASS:
                    kept.append(rec)
                elif verdict is Verdict.RESUME:
                    # Faust compares each record with the last offset it handed on and drops older ones
                    self._read_offset[tp] = None
                    kept.append(rec)
                elif verdict is Verdict.RETRY:
                    target = rewinds.target(tp)
                    assert target is not None
                    log.warning("%s:%d: offset %d still not fetched again; seeking again", tp.topic,
                                tp.partition, target)
                    await self.rewind(tp, target)
                    break  # the rest of this fetch predates the new seek
            if not kept:
                continue
            if bundled is not None:
                message.records = kept
                message.offset = kept[-1].offset
            yield tp, message

    async def perform_seek(self) -> None:
        # Faust puts every partition back to its committed offset (after a rebalance)
        self.rewinds.forget()
        await super().perform_seek()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.rewinds.forget(revoked)
        await super().on_partitions_revoked(revoked)

    def _filter_committable_offsets(self, tps: Any) -> dict[Any, int]:
        offsets = super()._filter_committable_offsets(tps)
        limit: CommitLimit | None = getattr(self.app, "rollout_gate_commit_limit", None)
        if limit is None:
            return offsets
        return clamp_commit_offsets(offsets, self._committed_offset, limit)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


drivers.TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")
