"""The work an agent does with one batch: decode, call the engine, emit, persist. No thresholds here.

Kept free of Faust so that unit tests drive it with a fake engine and fake sinks. Order per batch:
1. decode each message; bad events go to the dead-letter topic (value: the bad event's bytes as
   gates.events keeps them: the original for a one-object message, the element's JSON for an
   array element), the valid ones of the same message are ingested with
   ``source=topic:partition`` and the message offset;
2. publish the decisions and wait until the broker has them;
3. write one snapshot per changed rollout to the state table (once per batch, not per event).
A crash between 2 and 3 re-emits the same decisions (same ``seq``) after restart, which routers
ignore; the reverse order could lose a decision, so it is not used.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from gates import admission
from gates.commands import decode_command, verify
from gates.decision import Decision
from gates.events import ARMS, MAX_ROLLOUT_ID, Rejection, decode_message, reason_code, split_rejections

from .clock import EventClock
from .metrics import Metrics
from .offsets import Key, OffsetGuard

log = logging.getLogger(__name__)

REASON_HEADER = "x-rollout-gate-reason"
SOURCE_HEADER = "x-rollout-gate-source"
SIZE_HEADER = "x-rollout-gate-original-size"  # on a dead letter cut to DEAD_LETTER_MAX_BYTES
# a dead letter keeps this much of the bad message: enough to see what it was, small enough for
# the producer's request limit whatever the events topic allows
DEAD_LETTER_MAX_BYTES = 64 * 1024
NO_KEY_REASON = ("signature is missing: no command key is configured (ROLLOUT_GATE_COMMAND_HMAC_KEY), so "
                 "operator commands are refused")
# the longest a batch holds the event loop without handing it back
YIELD_EVERY_SECONDS = 0.005
_ARM = operator.attrgetter("arm")


class Record(NamedTuple):
    """One consumed Kafka message, as far as the processor cares (a tuple: the worker builds one
    per message, and a frozen dataclass costs several times more to build)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.partition}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class EngineLike(Protocol):
    def ingest(self, events: Sequence[Any], source: str | None = None,
               offset: int | None = None) -> list[Decision]: ...
    def command(self, cmd: Any, source: str | None = None, offset: int | None = None) -> list[Decision]: ...
    def tick(self, now: float) -> list[Decision]: ...
    @property
    def event_time(self) -> float: ...
    def rollout_ids(self) -> list[str]: ...
    def dirty(self) -> set[str]: ...
    def clear_dirty(self) -> None: ...
    def snapshot(self, rollout_id: str) -> bytes: ...
    def restore(self, rollout_id: str, blob: bytes) -> None: ...
    def status(self, rollout_id: str) -> Any: ...
    # gates.admission and the command replay check
    def knows(self, rollout_id: str) -> bool: ...
    def live_rollouts(self) -> int: ...
    def source_offset(self, source: str) -> int: ...
    def command_replayed(self, cmd: Any, source: str | None = None, offset: int | None = None) -> str | None: ...


class Sink(Protocol):
    """Where the processor's output goes: Kafka in the worker, lists in tests."""

    async def publish_decisions(self, decisions: Sequence[Decision]) -> None:
        """Send in order and return once the broker acknowledged every one."""

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Send and return once acknowledged."""

    def persist(self, rollout_id: str, blob: bytes) -> None:
        """Write a rollout's snapshot to the changelog-backed state table."""


# Seek a partition back to an offset; returns where it went (later if the broker deleted it).
Rewind = Callable[[str, int, int], Awaitable[int]]


@dataclass(frozen=True)
class CommandAuth:
    """How operator commands are authenticated: signed under ``key``; with no key, refused unless
    ``allow_unsigned`` (then taken as they come)."""

    key: bytes | None = None
    allow_unsigned: bool = False

    def __repr__(self) -> str:  # never the key
        return f"CommandAuth(key={'set' if self.key else None}, allow_unsigned={self.allow_unsigned})"

    def problem(self, cmd: Any) -> str | None:
        if self.key is not None:
            return verify(cmd, self.key)
        return None if self.allow_unsigned else NO_KEY_REASON


UNAUTHENTICATED = CommandAuth(allow_unsigned=True)


class Processor:
    def __init__(self, engine_factory: Callable[[], EngineLike], sink: Sink, metrics: Metrics,
                 *, clock: Callable[[], float] = time.time, rewind: Rewind | None = None,
                 max_live_rollouts: int | None = None, command_auth: CommandAuth = UNAUTHENTICATED) -> None:
        self.max_live_rollouts = max_live_rollouts
        self.command_auth = command_auth
        self._engine_factory = engine_factory
        self.engine = engine_factory()
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        # One batch at a time across the events agent, the commands agent and the timer, so that
        # the engine's dirty set and the snapshots written belong to exactly one batch.
        self._lock = asyncio.Lock()
        self.guard = OffsetGuard(clock)
        self.rewind = rewind
        # the timer's "now" for idle rollouts: event time, running with the wall clock while idle
        self.event_clock = EventClock(lambda: self.engine.event_time, clock)
        # Told of every decision once it is published (live views, notifications); must not block.
        self.watchers: list[Callable[[Sequence[Decision]], None]] = []
        # A refusal sentence for an operator command that cannot apply (it is dead-lettered), or None;
        # called with the engine, the command and the message's source and offset.
        self.vet_command: Callable[[EngineLike, Any, str, int], str | None] | None = None

    @property
    def positions(self) -> dict[Key, int]:
        """The next offset to process, per (topic, partition): the cap of every offset commit."""
        return self.guard.positions

    def _admit(self, records: Sequence[Record]) -> tuple[list[Record], dict[Key, int]]:
        if self.rewind is None:  # nothing to seek with: take what comes
            return list(records), {}
        idx, seeks = self.guard.admit(records)
        return [records[i] for i in idx], seeks

    async def _settle(self, admitted: Sequence[Record], seeks: Mapping[Key, int]) -> None:
        self.guard.advance(admitted)
        for (topic, partition), offset in seeks.items():
            assert self.rewind is not None
            went = await self.rewind(topic, partition, offset)
            self.guard.rewound((topic, partition), went)

    async def process_events(self, records: Sequence[Record]) -> list[Decision]:
        async with self._lock:
            started = time.perf_counter()
            decisions: list[Decision] = []
            letters: list[DeadLetter] = []
            arm_counts = [0, 0, 0]  # in the order of ARMS: baseline, canary, shadow
            reasons: Counter[str] = Counter()
            records, seeks = self._admit(records)
            handed_back = started
            for rec in records:
                now = time.perf_counter()
                if now - handed_back > YIELD_EVERY_SECONDS:
                    # Let the event loop run between messages of a long batch: Faust's fetcher
                    # then keeps pulling the next fetches from the consumer while this one is folded.
                    await asyncio.sleep(0)
                    handed_back = now
                # per message, not per event: split in one pass, count arms in C
                events, bad = split_rejections(decode_message(rec.value or b""))
                if events and self.max_live_rollouts is not None:
                    events, refused = admission.admit(self.engine, events, self.max_live_rollouts,
                                                      source=rec.source, offset=rec.offset, raw=rec.value)
                    bad.extend(refused)
                for item in bad:
                    letters.append(_dead_letter(rec, item.reason, item.raw, item.rollout_id))
                    reasons[reason_code(item.reason)] += 1
                if events:
                    # list.count finds the decoder's shared literal strings by identity: cheaper than
                    # hashing every event's arm into a Counter
                    names = list(map(_ARM, events))
                    n_base, n_canary = names.count("baseline"), names.count("canary")
                    arm_counts[0] += n_base
                    arm_counts[1] += n_canary
                    arm_counts[2] += len(names) - n_base - n_canary
                    decisions.extend(self.engine.ingest(events, source=rec.source, offset=rec.offset))
            if letters:
                await self.sink.dead_letter(letters)
            await self._finish(decisions)
            self.metrics.count_events(Counter({arm: n for arm, n in zip(ARMS, arm_counts, strict=True) if n}))
            self.metrics.count_rejections(reasons)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            await self._settle(records, seeks)  # last: a consumer lag of 0 means "processed and counted"
            return decisions

    async def process_commands(self, records: Sequence[Record]) -> list[Decision]:
        async with self._lock:
            decisions: list[Decision] = []
            letters: list[DeadLetter] = []
            reasons: Counter[str] = Counter()
            records, seeks = self._admit(records)
            for rec in records:
                cmd = decode_command(rec.value or b"")
                if not isinstance(cmd, Rejection):
                    why = self._command_problem(cmd, rec)
                    if why is not None:
                        cmd = Rejection(reason=why, raw=rec.value or b"", rollout_id=cmd.rollout_id)
                if isinstance(cmd, Rejection):
                    letters.append(_dead_letter(rec, cmd.reason, cmd.raw, cmd.rollout_id))
                    reasons[reason_code(cmd.reason)] += 1
                elif self.vet_command is not None and (
                        refused := self.vet_command(self.engine, cmd, rec.source, rec.offset)):
                    letters.append(_dead_letter(rec, refused, rec.value or b"", cmd.rollout_id))
                else:
                    log.info("operator command %s on %s by %s: %s", cmd.action, cmd.rollout_id, cmd.actor,
                             cmd.reason or "(no reason given)")
                    decisions.extend(self.engine.command(cmd, source=rec.source, offset=rec.offset))
            if letters:
                await self.sink.dead_letter(letters)
            await self._finish(decisions)
            self.metrics.count_command_rejections(reasons)
            await self._settle(records, seeks)
            return decisions

    def _command_problem(self, cmd: Any, rec: Record) -> str | None:
        """Why an operator command is refused: not authentic, a replay, or a new rollout over the cap."""
        why = self.command_auth.problem(cmd)
        if why is not None:
            return why
        why = self.engine.command_replayed(cmd, source=rec.source, offset=rec.offset)
        if why is not None:
            return why
        engine, cap = self.engine, self.max_live_rollouts
        if cap is not None and not engine.knows(cmd.rollout_id) and engine.live_rollouts() >= cap:
            return admission.REASON.format(n=engine.live_rollouts())
        return None

    async def tick(self, now: float | None = None) -> list[Decision]:
        async with self._lock:
            decisions = self.engine.tick(self.event_clock() if now is None else now)
            await self._finish(decisions)
            self.metrics.expire_ended()
            return decisions

    async def check_stalls(self, handed_on: Mapping[Key, int | None]) -> dict[Key, int]:
        """Seek back partitions whose records Faust handed on but the processor never got, with no
        later record to reveal the gap (``OffsetGuard.stalled``); returns where each went."""
        if self.rewind is None:
            return {}
        async with self._lock:
            went: dict[Key, int] = {}
            for key, offset in handed_on.items():
                target = self.guard.stalled(key, offset)
                if target is not None:
                    went[key] = await self.rewind(key[0], key[1], target)
                    self.guard.rewound(key, went[key])
            return went

    async def restore(self, items: Iterable[tuple[str, bytes]],
                      positions: Mapping[Key, int] | None = None) -> int:
        """Rebuild the engine from persisted snapshots (after recovery or a rebalance); ``positions``
        are the committed offsets the consumer resumes from."""
        async with self._lock:
            if positions is not None:
                self.guard.start(positions)
            engine = self._engine_factory()
            n = 0
            for rollout_id, blob in items:
                engine.restore(rollout_id, blob)
                n += 1
            engine.clear_dirty()
            self.engine = engine
            self.metrics.forget_rollouts()
            for rid in engine.rollout_ids():
                self.metrics.observe_status(rid, engine.status(rid))
            return n

    async def _finish(self, decisions: list[Decision]) -> None:
        if decisions:
            await self.sink.publish_decisions(decisions)
            for d in decisions:
                self.metrics.count_decision(d)
            for watch in self.watchers:
                try:
                    watch(decisions)
                except Exception:  # a view or a notification must never stop the worker
                    log.exception("decision watcher %r failed", watch)
        dirty = self.engine.dirty()
        if not dirty:
            return
        for rid in sorted(dirty):
            self.sink.persist(rid, self.engine.snapshot(rid))
            self.metrics.observe_status(rid, self.engine.status(rid))
        self.engine.clear_dirty()


def _dead_letter(rec: Record, reason: str, raw: bytes, rollout_id: str | None) -> DeadLetter:
    key = rollout_id.encode() if rollout_id else rec.key
    if key is not None and len(key) > 4 * MAX_ROLLOUT_ID:
        key = None  # a message key no rollout id can be
    headers = [
        (REASON_HEADER, reason.encode("utf-8", "replace")[:1024]),
        (SOURCE_HEADER, f"{rec.topic}:{rec.partition}:{rec.offset}".encode()),
    ]
    if len(raw) > DEAD_LETTER_MAX_BYTES:
        headers.append((SIZE_HEADER, str(len(raw)).encode()))
        raw = raw[:DEAD_LETTER_MAX_BYTES]
    return DeadLetter(key=key, value=raw, headers=headers)
