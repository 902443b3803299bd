"""The cap on live rollouts: a publisher sending endless new rollout ids must not exhaust the worker.

A rollout that is neither halted nor complete is live. An event (or command) of a rollout the
engine does not know yet is refused while ``max_live`` rollouts are live; the rollout is admitted
by its first event after a slot frees up. The verdict depends only on the engine's state and the
order of the messages, so a replay of the same messages refuses the same events; the worker and
``rollout-gate replay`` both call :func:`admit` once per message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gates.events import Event, Rejection, encode_event

REASON = "rollout cap: {n:,} rollouts are live already (ROLLOUT_GATE_MAX_LIVE_ROLLOUTS)"


class Admitting(Protocol):
    def knows(self, rollout_id: str) -> bool: ...
    def live_rollouts(self) -> int: ...
    def source_offset(self, source: str) -> int: ...


def new_rollouts(engine: Admitting, events: Sequence[Event]) -> list[str]:
    """The rollout ids of ``events`` the engine does not know, sorted (the engine creates the
    rollouts of one message in this order)."""
    return sorted({e.rollout_id for e in events if not engine.knows(e.rollout_id)})


def admit(engine: Admitting, events: list[Event], max_live: int | None, *, source: str | None = None,
          offset: int | None = None, raw: bytes | None = None) -> tuple[list[Event], list[Rejection]]:
    """(the events to ingest, the refused ones) for one message.

    A message the engine already counted past (``offset`` at or below the source's highest counted
    offset: delivered again after a restart) admits no new rollout, as it did not the first time."""
    if max_live is None or not events:
        return events, []
    fresh = new_rollouts(engine, events)
    if not fresh:
        return events, []
    live = engine.live_rollouts()
    seen_before = source is not None and offset is not None and offset <= engine.source_offset(source)
    room = 0 if seen_before else max(0, max_live - live)
    refused = set(fresh[room:])
    if not refused:
        return events, []
    reason = REASON.format(n=live)
    whole = raw if raw is not None and len(events) == 1 and raw.lstrip()[:1] == b"{" else None
    keep = [e for e in events if e.rollout_id not in refused]
    bad = [Rejection(reason=reason, raw=whole or encode_event(e), rollout_id=e.rollout_id)
           for e in events if e.rollout_id in refused]
    return keep, bad
