"""Shared builders for the engine tests: a small, fast test policy and simulator streams."""

from __future__ import annotations

from typing import Any

from gates.decision import Decision
from gates.events import Event, InferenceEvent
from gates.policy import PolicySet, RolloutPolicy
from gates.sim import Injection, SimConfig, Traffic

T0 = SimConfig().start_ts  # 2026-01-01T00:00:00Z
RID = SimConfig().rollout_id

# Small windows so that a few minutes of simulated traffic exercise whole steps.
SMALL: dict[str, Any] = {
    "block_seconds": 10,
    "eval_seconds": 2,
    "min_step_seconds": 30,
    "min_samples": 50,
    "max_step_seconds": 600,
}


def small_policy(**changes: Any) -> PolicySet:
    return PolicySet(defaults=RolloutPolicy.model_validate({**SMALL, **changes}))


def stream(seed: int, inj: Injection | None = None, *, seconds: int = 240, weight: float = 50.0,
           rps: float = 20.0, start: float = T0, rollout_id: str = RID) -> list[Event]:  # fmt: skip
    """Simulated events at a fixed canary weight (the weight does not follow the decisions)."""
    cfg = SimConfig(rps=rps, seed=seed, start_ts=start, rollout_id=rollout_id)
    traffic = Traffic(cfg, inj or Injection())
    out: list[Event] = []
    for i in range(seconds):
        out.extend(traffic.tick(start + i, weight))
    return out


def ev(arm: str, ts: float, i: int = 0, *, rollout_id: str = RID, **kw: Any) -> InferenceEvent:
    base: dict[str, Any] = {"latency_ms": 800.0, "output_tokens": 300, "status": "ok", "cost_usd": 0.001}
    base.update(kw)
    return InferenceEvent(rollout_id=rollout_id, arm=arm, request_id=f"{arm}-{i}-{ts}", ts=ts, **base)


def as_json(decisions: list[Decision]) -> list[bytes]:
    return [d.to_json() for d in decisions]


def summary(decisions: list[Decision]) -> list[tuple[Any, ...]]:
    return [(d.seq, d.action, d.stage, tuple((g.name, g.status) for g in d.gates)) for d in decisions]
