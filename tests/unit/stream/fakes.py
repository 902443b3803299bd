"""A tiny stand-in for gates.engine.Engine with the same interface, for the stream unit tests.

Every ``promote_every`` counted events of a rollout it emits a promote decision; its snapshot
holds the counts, seq and the per-source offsets (so the dedupe of re-delivered messages can be
tested exactly like the real engine's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gates.decision import Decision, GateResult


@dataclass
class FakeStatus:
    stage: str
    weight: float
    paused: bool = False
    terminal: bool = False
    gates: list[GateResult] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=dict)
    watermark: float = 0.0
    drift_alarms: dict[str, int] = field(default_factory=dict)


class FakeEngine:
    def __init__(self, promote_every: int = 3) -> None:
        self.promote_every = promote_every
        self.state: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self.ingest_calls: list[tuple[int, str | None, int | None]] = []
        self.ticks: list[float] = []

    def _st(self, rid: str) -> dict[str, Any]:
        return self.state.setdefault(rid, {"count": {}, "seq": 0, "offsets": {}, "watermark": 0.0,
                                           "paused": False, "alarms": {}})

    def _decide(self, rid: str, action: str, ts: float, reason: str) -> Decision:
        st = self._st(rid)
        st["seq"] += 1
        gate = GateResult(name="cost", status="pass", observed=1.0, baseline=1.0, ratio=1.0, threshold=1.2,
                          samples={"canary": sum(st["count"].values())})
        return Decision(rollout_id=rid, seq=st["seq"], ts=ts, action=action, stage=f"step-{st['seq']}",
                        weight=float(st["seq"]), previous_weight=float(st["seq"] - 1), baseline_digest=None,
                        canary_digest=None, gates=[gate], reason=reason)

    def ingest(self, events: Sequence[Any], source: str | None = None, offset: int | None = None) -> list[Decision]:
        self.ingest_calls.append((len(events), source, offset))
        out = []
        counted: set[str] = set()
        for e in events:
            st = self._st(e.rollout_id)
            if source is not None and offset is not None and st["offsets"].get(source, -1) >= offset:
                continue
            counted.add(e.rollout_id)
            st["count"][e.arm] = st["count"].get(e.arm, 0) + 1
            st["watermark"] = max(st["watermark"], e.ts)
            self._dirty.add(e.rollout_id)
            if sum(st["count"].values()) % self.promote_every == 0:
                out.append(self._decide(e.rollout_id, "promote", e.ts, "enough events"))
        if source is not None and offset is not None:
            for rid in counted:
                self._st(rid)["offsets"][source] = offset
        return out

    def knows(self, rollout_id: str) -> bool:
        return rollout_id in self.state

    def live_rollouts(self) -> int:
        return len(self.state)

    def source_offset(self, source: str) -> int:
        return max((st["offsets"].get(source, -1) for st in self.state.values()), default=-1)

    def command_replayed(self, cmd: Any, source: str | None = None, offset: int | None = None) -> str | None:
        return None

    def command(self, cmd: Any, source: str | None = None, offset: int | None = None) -> list[Decision]:
        st = self._st(cmd.rollout_id)
        if source is not None and offset is not None:
            if st["offsets"].get(source, -1) >= offset:
                return []
            st["offsets"][source] = offset
        self._dirty.add(cmd.rollout_id)
        if cmd.action == "pause":
            st["paused"] = True
            return [self._decide(cmd.rollout_id, "hold", cmd.ts, f"paused by {cmd.actor}")]
        return []

    def tick(self, now: float) -> list[Decision]:
        self.ticks.append(now)
        return []

    @property
    def event_time(self) -> float:
        return max((st["watermark"] for st in self.state.values()), default=float("-inf"))

    def rollout_ids(self) -> list[str]:
        return sorted(self.state)

    def dirty(self) -> set[str]:
        return set(self._dirty)

    def clear_dirty(self) -> None:
        self._dirty.clear()

    def snapshot(self, rollout_id: str) -> bytes:
        return orjson.dumps(self.state[rollout_id])

    def restore(self, rollout_id: str, blob: bytes) -> None:
        self.state[rollout_id] = orjson.loads(blob)

    def status(self, rollout_id: str) -> FakeStatus:
        st = self._st(rollout_id)
        gate = GateResult(name="cost", status="breach" if st["paused"] else "pass", observed=1.3, baseline=1.0,
                          ratio=1.3, threshold=1.2, samples={})
        return FakeStatus(stage=f"step-{st['seq']}", weight=float(st["seq"]), paused=st["paused"],
                          gates=[gate], samples=dict(st["count"]), watermark=st["watermark"],
                          drift_alarms=dict(st["alarms"]))


class ListSink:
    """Collects the processor's output; records the order of operations."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.letters: list[Any] = []
        self.table: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []

    async def publish_decisions(self, decisions: Sequence[Decision]) -> None:
        self.decisions.extend(decisions)
        self.log.extend(("decision", d.rollout_id) for d in decisions)

    async def dead_letter(self, letters: Sequence[Any]) -> None:
        self.letters.extend(letters)
        self.log.extend(("dlq", "") for _ in letters)

    def persist(self, rollout_id: str, blob: bytes) -> None:
        self.table[rollout_id] = blob
        self.log.append(("persist", rollout_id))
