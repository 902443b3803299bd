"""Rollout policy: every limit lives here, loaded from YAML and validated with clear errors.

Defaults are the rollout lesson's numbers. Per-rollout overrides are matched by exact id first,
then by the first glob that matches (``fnmatch``), and are deep-merged over the defaults.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyGateSpec(_Spec):
    enabled: bool = True
    quantile: float = Field(0.99, gt=0.5, lt=1.0, description="the gated latency quantile")
    max_ratio: float = Field(1.5, gt=1.0, description="breach: canary quantile > max_ratio x baseline")


class CostGateSpec(_Spec):
    enabled: bool = True
    max_ratio: float = Field(1.2, gt=1.0, description="breach: cost per request > max_ratio x baseline")


class ErrorGateSpec(_Spec):
    enabled: bool = True
    max_ratio: float = Field(2.0, gt=1.0, description="breach: error+refusal rate > max_ratio x baseline")
    min_rate: float = Field(
        0.001,
        ge=0.0,
        lt=0.5,
        description="added to both rates before the ratio, so that 0 vs 1 error in a thousand is not a 'x∞'",
    )


class LengthGateSpec(_Spec):
    enabled: bool = True
    mean_ratio: float = Field(1.25, gt=1.0, description="breach: mean length outside [1/r, r] x baseline")
    p99_ratio: float = Field(1.5, gt=1.0, description="breach: P99 length outside [1/r, r] x baseline")
    max_shape_distance: float = Field(
        0.12, gt=0.0, lt=1.0, description="breach: Kolmogorov-Smirnov distance of the length distributions"
    )


class FeedbackGateSpec(_Spec):
    enabled: bool = True
    max_ratio: float = Field(1.5, gt=1.0, description="breach: negative-feedback rate > max_ratio x baseline")
    min_rate: float = Field(0.001, ge=0.0, lt=0.5)
    assumed_delay_seconds: float = Field(
        120.0,
        ge=0.0,
        description="when a feedback event has no request_ts, its request is taken to be this much older",
    )
    settle_seconds: float = Field(
        180.0,
        ge=0.0,
        description="how long after its request most feedback is in: the block-to-block spread of the "
        "negative-feedback rate (its variance) is measured on the blocks that ended at least this long "
        "ago, while every block counts toward the rate itself; the newest blocks' feedback still to come "
        "is not noise. 0: the spread of every block",
    )


class GatesSpec(_Spec):
    latency: LatencyGateSpec = LatencyGateSpec()
    cost: CostGateSpec = CostGateSpec()
    errors: ErrorGateSpec = ErrorGateSpec()
    output_length: LengthGateSpec = LengthGateSpec()
    feedback: FeedbackGateSpec = FeedbackGateSpec()


class ShadowSpec(_Spec):
    enabled: bool = False
    min_samples: int = Field(500, ge=1)
    min_seconds: float = Field(300.0, ge=0)
    max_seconds: float = Field(3600.0, gt=0)


class ABSpec(_Spec):
    """Optional A/B verdict at a step (default 50%): the step runs longer and the promote decision
    carries a per-metric better/worse/same verdict."""

    enabled: bool = False
    weight: float = Field(50.0, gt=0, lt=100)
    min_samples: int = Field(5000, ge=1)
    min_seconds: float = Field(3600.0, ge=0)


class ModelPrice(_Spec):
    input_per_1k: float = Field(0.0, ge=0)
    output_per_1k: float = Field(0.0, ge=0)


class RolloutPolicy(_Spec):
    steps: list[float] = Field(default_factory=lambda: [1.0, 10.0, 25.0, 50.0, 75.0, 100.0])
    block_seconds: float = Field(
        60.0, gt=0, description="event-time block for batch means: longer than the noise's correlation time"
    )
    eval_seconds: float = Field(5.0, gt=0, description="event-time interval between gate evaluations")
    min_samples: int = Field(200, ge=1, description="canary requests needed in a step before promotion")
    min_step_seconds: float = Field(300.0, ge=0)
    max_step_seconds: float = Field(3600.0, gt=0)
    min_blocks: int = Field(3, ge=2, description="blocks with both arms before any verdict")
    min_halt_samples: int = Field(30, ge=1, description="canary requests before a halt is allowed")
    false_halt_budget: float = Field(
        0.05, gt=0, lt=0.5, description="per-gate error probability at the threshold, over all looks"
    )
    promote_risk: float = Field(
        0.2,
        gt=0,
        lt=0.5,
        description="per-gate chance of passing a canary whose true ratio sits at the limit; a wrong "
        "promote is re-checked at the next, larger step",
    )
    cs_rho_blocks: float = Field(
        2.0, gt=0, description="confidence-sequence tuning: the boundary is tightest near this many blocks"
    )
    cs_rho_promote_blocks: float | None = Field(
        4.0,
        gt=0,
        description="the same tuning for the promote side of the bounds (null: cs_rho_blocks). Halts are "
        "decided a few blocks after a window restart, promotions after the 10-30 blocks of canary "
        "requests the first step takes: each side is tightest where its own decisions are taken",
    )
    max_window_blocks: int = Field(240, ge=4, description="memory bound on blocks kept per step")
    drift_reset: bool = Field(True, description="restart the step window at a drift onset in the canary")
    change_z: float = Field(
        4.5,
        ge=0,
        description="onset scan of the canary-minus-baseline contrast (errors, cost) over the "
        "window's blocks: a change for the worse past this z restarts the window at it; 0 turns it off",
    )
    carry_evidence: bool = Field(
        True,
        description="a promotion keeps the comparison window: the next step starts with the evidence so far "
        "(an onset alarm still restarts it) and moves on once its own min_samples and min_step_seconds are met",
    )
    paired_blocks: bool = Field(
        False,
        strict=True,
        description="cost and error+refusal ratios: take the per-block covariance of the two arms out of "
        "the contrast's variance (a paired-by-block contrast), so noise both arms share (load, time of "
        "day) is not counted twice; only with at least min_blocks blocks common to the arms, and never "
        "below the two arms' per-request (i.i.d.) variance sum. Off: each arm's variance on its own",
    )
    change_min_blocks: int = Field(2, ge=1, description="blocks after a split before the scan may report it")
    shadow: ShadowSpec = ShadowSpec()
    ab: ABSpec = ABSpec()
    gates: GatesSpec = GatesSpec()
    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    @field_validator("steps")
    @classmethod
    def _steps_ok(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("steps must not be empty")
        if any(not (0 < s <= 100) or not math.isfinite(s) for s in v):
            raise ValueError("each step must be a percent in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError("steps must be strictly increasing")
        if v[-1] != 100:
            raise ValueError("the last step must be 100")
        return v

    @model_validator(mode="after")
    def _times_ok(self) -> RolloutPolicy:
        if self.max_step_seconds < self.min_step_seconds:
            raise ValueError("max_step_seconds must be >= min_step_seconds")
        if self.eval_seconds > self.block_seconds:
            raise ValueError("eval_seconds must be <= block_seconds")
        if self.shadow.max_seconds < self.shadow.min_seconds:
            raise ValueError("shadow.max_seconds must be >= shadow.min_seconds")
        return self

    def price(self, model: str | None) -> ModelPrice | None:
        if model is None:
            return None
        return self.prices.get(model)


class Override(_Spec):
    match: str = Field(description="a rollout id, or a glob such as 'chat-*'")
    policy: dict[str, Any]


class PolicySet(_Spec):
    """The whole policy file: defaults plus ordered overrides."""

    defaults: RolloutPolicy = RolloutPolicy()
    overrides: list[Override] = Field(default_factory=list)

    @model_validator(mode="after")
    def _overrides_ok(self) -> PolicySet:
        for i, o in enumerate(self.overrides):
            try:
                _merge(self.defaults, o.policy)
            except ValidationError as exc:
                raise ValueError(f"overrides[{i}] (match {o.match!r}): {_describe(exc)}") from None
        return self

    def for_rollout(self, rollout_id: str) -> RolloutPolicy:
        for o in self.overrides:
            if o.match == rollout_id:
                return _merge(self.defaults, o.policy)
        for o in self.overrides:
            if fnmatch.fnmatchcase(rollout_id, o.match):
                return _merge(self.defaults, o.policy)
        return self.defaults


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _merge(base: RolloutPolicy, patch: dict[str, Any]) -> RolloutPolicy:
    return RolloutPolicy.model_validate(_deep_merge(base.model_dump(), patch))


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the field."""


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_policy(text: str, source: str = "<policy>") -> PolicySet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping with 'defaults' and 'overrides'")
    try:
        return PolicySet.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {_describe(exc)}") from None


def load_policy(path: str | Path | None = None) -> PolicySet:
    """The policy in ``path``, or the built-in defaults when ``path`` is None."""
    if path is None:
        return PolicySet()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{p}: cannot read policy file: {exc.strerror}") from None
    return parse_policy(text, str(p))


Risk = Literal["low", "medium", "high"]
