"""The processor's position per partition, kept contiguous: no offset is passed over unprocessed.

faust-streaming can drop a fetched message before it reaches the agent: while flow control is
suspended (start, rebalance, stop) a stream skips and *acknowledges* what it receives, and the
fetcher skips records of partitions paused meanwhile. Observed in the restart tests: a worker's
first message after recovery (the committed offset) never reached the agent, the next one did;
under load, a whole backlog fetched while the partition was still paused (stream.transport, 3.,
closes that one). The guard notices the jump (offsets are dense in the events and commands
topics: the contract's producers are idempotent, not transactional), drops the records after it,
and asks for a seek back to the first missing offset (stream.transport.Consumer.rewind, which
holds while the fetcher runs); the records come again. Together with the commit cap
(stream.transport) this makes the worker at-least-once whatever Faust does, and the engine's
per-source offsets make it count each event once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (topic, partition)


class HasOffset(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass
class _Rewind:
    offset: int
    since: float


class OffsetGuard:
    def __init__(self, clock: Callable[[], float], *, retry_after: float = 5.0, stall_after: float = 10.0) -> None:
        self.clock = clock
        self.retry_after = retry_after
        self.stall_after = stall_after
        self.positions: dict[Key, int] = {}  # the next offset to process
        self._rewinding: dict[Key, _Rewind] = {}
        self._behind: dict[Key, _Rewind] = {}  # position seen behind what Faust handed on, since when

    def start(self, positions: Mapping[Key, int]) -> None:
        """After recovery: where each assigned partition resumes (its committed offset)."""
        self.positions = dict(positions)
        self._rewinding.clear()

    def forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.positions.pop(key, None)
            self._rewinding.pop(key, None)
            self._behind.pop(key, None)

    def stalled(self, key: Key, handed_on: int | None) -> int | None:
        """The offset to seek back to when records were lost with nothing after them.

        admit() sees a gap only when a later record arrives; on a quiet partition (the commands
        topic) a record Faust dropped would wait for the next one. ``handed_on`` is the last offset
        Faust passed to the streams; if the processor's position has stayed behind it for
        ``stall_after`` seconds, the records in between are taken as lost (a slow batch that was
        in fact still in flight comes again and is skipped: the engine counts each offset once)."""
        position = self.positions.get(key)
        if position is None or handed_on is None or handed_on < position or key in self._rewinding:
            self._behind.pop(key, None)
            return None
        now = self.clock()
        seen = self._behind.get(key)
        if seen is None or seen.offset != position:
            self._behind[key] = _Rewind(position, now)
            return None
        if now - seen.since < self.stall_after:
            return None
        log.warning("%s:%d: offsets %d..%d were handed on but never processed; seeking back to %d",
                    key[0], key[1], position, handed_on, position)
        del self._behind[key]
        self._rewinding[key] = _Rewind(position, now)
        return position

    def rewound(self, key: Key, offset: int) -> None:
        """The seek went to ``offset``; beyond the missing one if the broker no longer has it."""
        expected = self.positions.get(key)
        if expected is not None and offset > expected:
            log.warning("%s:%d: offsets %d..%d were deleted before they were processed",
                        key[0], key[1], expected, offset - 1)
            self.positions[key] = offset
            self._rewinding.pop(key, None)

    def admit(self, records: Sequence[HasOffset]) -> tuple[list[int], dict[Key, int]]:
        """Indexes of the records to process now, and the seeks to request (key -> offset)."""
        admitted: list[int] = []
        seeks: dict[Key, int] = {}
        upcoming: dict[Key, int] = {}
        now = self.clock()
        for i, rec in enumerate(records):
            key = (rec.topic, rec.partition)
            expected = upcoming.get(key, self.positions.get(key))
            if expected is None or rec.offset <= expected:
                # in order, the first of an unknown partition, or delivered again (the engine skips
                # what its snapshot already counted)
                if expected is None or rec.offset == expected:
                    self._rewinding.pop(key, None)
                admitted.append(i)
                upcoming[key] = rec.offset + 1 if expected is None else max(expected, rec.offset + 1)
                continue
            rewind = self._rewinding.get(key)
            if rewind is None or rewind.offset != expected:
                log.warning("%s:%d: offsets %d..%d did not reach the processor; seeking back to %d",
                            rec.topic, rec.partition, expected, rec.offset - 1, expected)
                self._rewinding[key] = _Rewind(expected, now)
                seeks[key] = expected
            elif now - rewind.since >= self.retry_after:
                log.warning("%s:%d: still waiting for offset %d; seeking again", rec.topic, rec.partition,
                            expected)
                rewind.since = now
                seeks[key] = expected
            # else: fetched before the seek took effect; it comes again after the missing ones
        return admitted, seeks

    def advance(self, records: Iterable[HasOffset]) -> None:
        """Records processed (and their effects published and persisted)."""
        for rec in records:
            key = (rec.topic, rec.partition)
            self.positions[key] = max(self.positions.get(key, 0), rec.offset + 1)
