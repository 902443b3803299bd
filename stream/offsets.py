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
    def __init__(self, clock: Callable[[], float], *, retry_after: float = 5.0) -> None:
        self.clock = clock
        self.retry_after = retry_after
        self.positions: dict[Key, int] = {}  # the next offset to process
        self._rewinding: dict[Key, _Rewind] = {}

    def start(self, positions: Mapping[Key, int]) -> None:
        """After recovery: where each assigned partition resumes (its committed offset)."""
        self.positions = dict(positions)
        self._rewinding.clear()

    def forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.positions.pop(key, None)
            self._rewinding.pop(key, None)

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
