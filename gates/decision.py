"""Decisions and gate results: the contract's output, each verdict with its evidence."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Literal

import msgspec
import orjson

Action = Literal["promote", "halt", "complete", "hold"]


class Verdict(IntEnum):
    """Ordered like Argo's phases: combine with max() ("worst wins")."""

    PASS = 0
    INSUFFICIENT = 1
    BREACH = 2

    @property
    def label(self) -> str:
        return ("pass", "insufficient", "breach")[self]


class GateResult(msgspec.Struct, frozen=True):
    name: str
    status: str  # pass | breach | insufficient
    observed: float | None
    baseline: float | None
    ratio: float | None
    threshold: float
    samples: dict[str, int]
    # Additive fields beyond the contract: the confidence bounds on the ratio and the reason.
    lower: float | None = None
    upper: float | None = None
    reason: str = ""
    details: dict[str, Any] = {}

    @property
    def verdict(self) -> Verdict:
        return {"pass": Verdict.PASS, "insufficient": Verdict.INSUFFICIENT, "breach": Verdict.BREACH}[
            self.status
        ]


class Decision(msgspec.Struct, frozen=True):
    rollout_id: str
    seq: int
    ts: float
    action: str  # promote | halt | complete | hold
    stage: str
    weight: float
    previous_weight: float
    baseline_digest: str | None
    canary_digest: str | None
    gates: list[GateResult]
    reason: str
    # Additive: what caused the decision ("gates", "operator", "timeout", "drift").
    trigger: str = "gates"

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)


_decision_decoder = msgspec.json.Decoder(Decision)


def decode_decision(raw: bytes) -> Decision:
    """Parse a decision message; raises msgspec.ValidationError/DecodeError on a bad one."""
    return _decision_decoder.decode(raw)
