"""The router's view of each rollout: the latest applied decision, folded in ``seq`` order.

Pure (no Kafka, no clock) so the ordering rules are unit-tested on their own: a decision is
applied only when its ``seq`` is greater than the last applied one for that rollout; a compacted
topic may have dropped the seqs in between, so gaps are normal and not waited for.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gates.decision import Decision, GateResult


def is_halted(d: Decision) -> bool:
    return d.action == "halt" or d.stage == "rolled-back"


class RolloutView(msgspec.Struct, frozen=True):
    rollout_id: str
    seq: int
    ts: float
    action: str
    stage: str
    weight: float
    previous_weight: float
    baseline_digest: str | None
    canary_digest: str | None
    pinned_digest: str | None
    halted: bool
    gates: list[GateResult]
    reason: str
    trigger: str

    @classmethod
    def of(cls, d: Decision) -> RolloutView:
        halted = is_halted(d)
        return cls(
            rollout_id=d.rollout_id,
            seq=d.seq,
            ts=d.ts,
            action=d.action,
            stage=d.stage,
            # The contract says halt means 0; a router must not trust a halt that says otherwise.
            weight=0.0 if halted else min(100.0, max(0.0, float(d.weight))),
            previous_weight=d.previous_weight,
            baseline_digest=d.baseline_digest,
            canary_digest=d.canary_digest,
            pinned_digest=d.baseline_digest if halted else d.canary_digest,
            halted=halted,
            gates=list(d.gates),
            reason=d.reason,
            trigger=d.trigger,
        )

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class DecisionBook:
    def __init__(self) -> None:
        self._views: dict[str, RolloutView] = {}

    def apply(self, d: Decision) -> RolloutView | None:
        """The new view, or None when ``d.seq`` is not newer than what was applied."""
        current = self._views.get(d.rollout_id)
        if current is not None and d.seq <= current.seq:
            return None
        view = RolloutView.of(d)
        self._views[d.rollout_id] = view
        return view

    def forget(self, rollout_id: str) -> bool:
        """A tombstone on the compacted topic deletes the rollout."""
        return self._views.pop(rollout_id, None) is not None

    def get(self, rollout_id: str) -> RolloutView | None:
        return self._views.get(rollout_id)

    def all(self) -> dict[str, RolloutView]:
        return dict(self._views)

    def last_seq(self, rollout_id: str) -> int:
        v = self._views.get(rollout_id)
        return 0 if v is None else v.seq
