"""The rollout lesson's canary simulator, run on the real engine (or any judge) in a closed loop.

Synthetic traffic for a baseline and a candidate model; the candidate's share follows the
judge's decisions. Seeded, so a run is reproducible. LLM non-determinism is modelled as
run-to-run noise: for each arm and each ``noise_period`` of event time, every metric's level is
multiplied by an independent factor drawn uniformly from [1 - noise, 1 + noise] (``noise`` =
0.15 is the lesson's "up to 15%"). Injections change the candidate only, optionally from
``onset`` seconds on.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from gates.decision import Decision
from gates.events import Event, FeedbackEvent, InferenceEvent

BASE = {
    "latency_median_ms": 800.0,
    "latency_sigma": 0.5,
    "tokens_mean": 300.0,
    "tokens_sigma": 0.6,
    "input_tokens_mean": 500.0,
    "price_in_per_1k": 0.0005,
    "price_out_per_1k": 0.0015,
    "error_rate": 0.01,
    "refusal_rate": 0.02,
    "negative_feedback_rate": 0.03,
    "positive_feedback_rate": 0.05,
    "feedback_delay_s": 60.0,
}
P99_Z = 2.3263478740408408


@dataclass(frozen=True)
class Injection:
    """Multiplicative changes to the candidate (1.0 = unchanged)."""

    cost: float = 1.0
    latency_tail: float = 1.0  # P99 multiplier at an unchanged median
    latency_median: float = 1.0
    errors: float = 1.0
    refusals: float = 1.0
    length_mean: float = 1.0
    length_shape: float = 0.0  # 0..1: bimodal split of lengths at an equal mean
    feedback: float = 1.0
    onset_s: float = 0.0

    def describe(self) -> str:
        parts = [f"{k}={v:g}" for k, v in self.__dict__.items() if k != "onset_s" and v not in (1.0, 0.0)]
        if self.onset_s:
            parts.append(f"after {self.onset_s / 60:g} min")
        return ", ".join(parts) or "none (A/A)"


_INJECT_RE = re.compile(r"^\s*([a-z_]+)\s*=\s*([x*+-]?)\s*([0-9.]+)\s*(%?)\s*$")
_ALIASES = {
    "cost": "cost", "latency": "latency_tail", "latency_tail": "latency_tail", "tail": "latency_tail",
    "p99": "latency_tail", "latency_median": "latency_median", "median": "latency_median",
    "errors": "errors", "error": "errors", "refusal": "refusals", "refusals": "refusals",
    "length": "length_mean", "length_mean": "length_mean", "length_shape": "length_shape",
    "shape": "length_shape", "feedback": "feedback", "thumbs_down": "feedback", "onset": "onset_s",
}  # fmt: skip


def parse_injections(specs: Sequence[str]) -> Injection:
    """``cost=+25%``, ``refusal=x3``, ``latency=x2``, ``length=+40%``, ``shape=0.6``, ``onset=10``
    (minutes). Raises ValueError naming the bad spec."""
    values: dict[str, float] = {}
    for spec in specs:
        m = _INJECT_RE.match(spec)
        if not m:
            raise ValueError(f"cannot read injection {spec!r}: use NAME=+25%, NAME=x3 or NAME=1.5")
        name, op, num, pct = m.groups()
        key = _ALIASES.get(name)
        if key is None:
            raise ValueError(f"unknown injection {name!r}; known: {', '.join(sorted(set(_ALIASES)))}")
        v = float(num)
        if key == "onset_s":
            values[key] = v * 60.0
            continue
        if key == "length_shape":
            if not 0 <= v < 1:
                raise ValueError("shape must be in [0, 1): the bimodal split of output lengths")
            values[key] = v
            continue
        if op in ("+", "-"):
            v = 1 + (v / 100 if pct else v) * (1 if op == "+" else -1)
        elif pct:
            v = v / 100
        if v <= 0:
            raise ValueError(f"injection {spec!r} gives a non-positive multiplier")
        values[key] = v
    return Injection(**values)


class Judge(Protocol):
    def ingest(self, events: Sequence[Event]) -> list[Decision]: ...


@dataclass
class StageRecord:
    stage: str
    weight: float
    start: float
    end: float = math.nan
    samples: dict[str, int] = field(default_factory=dict)
    gates: list[dict[str, object]] = field(default_factory=list)
    action: str = ""


@dataclass
class RunResult:
    outcome: str  # halt | complete | timeout
    decisions: list[Decision]
    stages: list[StageRecord]
    halted_gate: str | None
    halted_stage: str | None
    canary_requests: int  # candidate requests served (canary arm) until the end
    canary_requests_to_halt: int | None
    duration_s: float
    timeline: list[tuple[float, float, dict[str, float]]]  # (t, weight, gate ratios)


@dataclass(frozen=True)
class SimConfig:
    rps: float = 100.0
    seed: int = 0
    noise: float = 0.15
    noise_period_s: float = 20.0
    max_seconds: float = 6 * 3600.0
    tick_s: float = 1.0
    start_ts: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    rollout_id: str = "sim"
    shadow: bool = False
    baseline_digest: str = "sha256:baseline0001"
    canary_digest: str = "sha256:canary0002"
    # open loop: the candidate gets this share (percent) whatever the judge decides (a halt or a
    # complete still ends the run); None follows the judge's weights (closed loop)
    fixed_weight: float | None = None
    # the part of each metric's run-to-run noise shared by both arms (load, time of day): the
    # factor is sqrt(shared) x a draw common to the arms + sqrt(1 - shared) x the arm's own draw,
    # so each arm's noise keeps its variance. 0 = independent arms.
    shared_noise: float = 0.0


class Traffic:
    """Generates one tick of events for both arms at the current weight."""

    def __init__(self, cfg: SimConfig, inj: Injection) -> None:
        self.cfg, self.inj = cfg, inj
        self.rng = np.random.default_rng(cfg.seed)
        self.noise_rng_seed = cfg.seed * 7919 + 17
        self.req = 0
        self.pending_fb: list[tuple[float, int, FeedbackEvent]] = []  # a heap by due time

    def _noise(self, arm: str, period: int) -> np.ndarray:
        # independent of the traffic draws, so judges that move weights differently still see
        # the same noise path in the same run
        if self.cfg.noise <= 0:
            return np.ones(5)
        ss = np.random.SeedSequence([self.noise_rng_seed, period, 0 if arm == "baseline" else 1])
        own = np.random.default_rng(ss).uniform(-self.cfg.noise, self.cfg.noise, 5)
        shared = self.cfg.shared_noise
        if shared <= 0:
            return 1.0 + own
        common = np.random.default_rng(np.random.SeedSequence([self.noise_rng_seed, period, 2]))
        both = common.uniform(-self.cfg.noise, self.cfg.noise, 5)
        return 1.0 + math.sqrt(shared) * both + math.sqrt(1.0 - shared) * own

    def tick(self, t: float, weight: float) -> list[Event]:
        cfg, rng = self.cfg, self.rng
        n = int(rng.poisson(cfg.rps * cfg.tick_s))
        out: list[Event] = []
        if n:
            period = int((t - cfg.start_ts) // cfg.noise_period_s)
            ts = t + np.sort(rng.uniform(0, cfg.tick_s, n))
            is_canary = rng.uniform(0, 100, n) < weight
            for arm, mask in (("baseline", ~is_canary), ("canary", is_canary)):
                k = int(mask.sum())
                if k:
                    out.extend(self._requests(arm, ts[mask], period, t))
            if cfg.shadow and weight == 0:
                out.extend(self._requests("shadow", ts, period, t))
        horizon = t + cfg.tick_s
        pending = self.pending_fb
        while pending and pending[0][0] <= horizon:
            out.append(heapq.heappop(pending)[2])
        out.sort(key=lambda e: e.ts)
        return out

    def _requests(self, arm: str, ts: np.ndarray, period: int, now: float) -> list[Event]:
        b, inj, rng = BASE, self.inj, self.rng
        k = ts.size
        f = self._noise(arm, period)
        cand = arm != "baseline"
        active = cand and (now - self.cfg.start_ts) >= inj.onset_s
        sigma = b["latency_sigma"]
        med = b["latency_median_ms"] * f[0]
        if active:
            med *= inj.latency_median
            sigma += math.log(inj.latency_tail) / P99_Z
        lat = med * np.exp(sigma * rng.standard_normal(k))
        mean_tok = b["tokens_mean"] * f[1] * (inj.length_mean if active else 1.0)
        ts_sig = b["tokens_sigma"]
        mu = math.log(mean_tok) - ts_sig**2 / 2
        tok = np.exp(mu + ts_sig * rng.standard_normal(k))
        if active and inj.length_shape > 0:
            s = inj.length_shape
            low = rng.uniform(size=k) < 0.5
            tok = tok * np.where(low, 1 - s, 1 + s)
        tok = np.maximum(np.rint(tok), 1).astype(np.int64)
        inp = np.maximum(np.rint(b["input_tokens_mean"] * np.exp(0.5 * rng.standard_normal(k) - 0.125)), 1)
        price_mult = inj.cost if active else 1.0
        cost = (inp / 1000 * b["price_in_per_1k"] + tok / 1000 * b["price_out_per_1k"]) * price_mult
        p_err = min(b["error_rate"] * f[2] * (inj.errors if active else 1.0), 0.9)
        p_ref = min(b["refusal_rate"] * f[3] * (inj.refusals if active else 1.0), 0.9)
        err = rng.uniform(size=k) < p_err
        ref = (rng.uniform(size=k) < p_ref) & ~err
        p_neg = min(b["negative_feedback_rate"] * f[4] * (inj.feedback if active else 1.0), 0.9)
        u = rng.uniform(size=k)
        delays = rng.exponential(b["feedback_delay_s"], size=k)
        digest = self.cfg.baseline_digest if arm == "baseline" else self.cfg.canary_digest
        model = "model-baseline" if arm == "baseline" else "model-candidate"
        out: list[Event] = []
        rid = self.cfg.rollout_id
        arm_: Any = arm
        first = self.req + 1
        self.req += k
        ts_l, lat_l, tok_l, inp_l, cost_l = ts.tolist(), lat.tolist(), tok.tolist(), inp.astype(np.int64).tolist(), cost.tolist()
        err_l, ref_l = err.tolist(), ref.tolist()
        # positional construction (field order of InferenceEvent) is the fast path for msgspec
        for i in range(k):
            out.append(InferenceEvent(
                rid, arm_, f"r{first + i}", ts_l[i], lat_l[i], tok_l[i], "error" if err_l[i] else "ok", ref_l[i],
                inp_l[i], cost_l[i], model, digest,
            ))  # fmt: skip
        if arm != "shadow":
            fb = (~err) & (u < p_neg + b["positive_feedback_rate"])
            for i in np.flatnonzero(fb).tolist():
                t = ts_l[i]
                fb_ts = t + float(delays[i])
                val: Any = "down" if u[i] < p_neg else "up"
                heapq.heappush(self.pending_fb, (fb_ts, first + i, FeedbackEvent(
                    rid, arm_, f"r{first + i}", fb_ts, val, t)))  # fmt: skip
        return out


def run(
    judge: Judge,
    cfg: SimConfig,
    inj: Injection,
    *,
    on_decision: Callable[[Decision], None] | None = None,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    traffic = Traffic(cfg, inj)
    t = cfg.start_ts
    weight = 0.0 if cfg.fixed_weight is None else cfg.fixed_weight
    decisions: list[Decision] = []
    stages: list[StageRecord] = []
    timeline: list[tuple[float, float, dict[str, float]]] = []
    canary_served = 0
    outcome = "timeout"
    halted_gate = halted_stage = None
    to_halt = None
    end = cfg.start_ts + cfg.max_seconds
    while t < end:
        evs = traffic.tick(t, weight)
        canary_served += sum(1 for e in evs if type(e) is InferenceEvent and e.arm == "canary")
        for d in judge.ingest(evs):
            decisions.append(d)
            if on_decision is not None:
                on_decision(d)
            if stages:
                stages[-1].end = d.ts
                stages[-1].action = d.action
                stages[-1].gates = [msg_gate(g) for g in d.gates]
                stages[-1].samples = dict(d.gates[0].samples) if d.gates else {}
            if cfg.fixed_weight is None:
                weight = d.weight
            timeline.append((d.ts - cfg.start_ts, d.weight, {g.name: g.ratio or math.nan for g in d.gates}))
            if d.action == "halt":
                outcome = "halt"
                breached = [g.name for g in d.gates if g.status == "breach"]
                halted_gate = breached[0] if breached else None
                halted_stage = stages[-1].stage if stages else d.stage
                to_halt = canary_served
                break
            if d.action == "complete":
                outcome = "complete"
                break
            if d.action == "promote":
                stages.append(StageRecord(stage=d.stage, weight=d.weight, start=d.ts))
        if outcome != "timeout":
            break
        if not stages and cfg.shadow and weight == 0:
            stages.append(StageRecord(stage="shadow", weight=0.0, start=t))
        t += cfg.tick_s
        status = getattr(judge, "status", None)
        if status is not None and int(t - cfg.start_ts) % 60 == 0:
            try:
                gates = status(cfg.rollout_id).gates
            except KeyError:
                gates = []
            if gates:
                timeline.append((t - cfg.start_ts, weight, {g.name: g.ratio or math.nan for g in gates}))
        if progress is not None:
            progress(t - cfg.start_ts)
    if stages and math.isnan(stages[-1].end):
        stages[-1].end = t
    return RunResult(
        outcome=outcome, decisions=decisions, stages=stages, halted_gate=halted_gate, halted_stage=halted_stage,
        canary_requests=canary_served, canary_requests_to_halt=to_halt, duration_s=t - cfg.start_ts,
        timeline=timeline,
    )  # fmt: skip


def msg_gate(g: object) -> dict[str, object]:
    import msgspec

    return msgspec.to_builtins(g)  # type: ignore[no-any-return]
