"""Comparison judges for the gate-quality benchmark: a naive fixed-ratio gate and a Kayenta-style
Mann-Whitney judge.

Both speak the simulator's judge interface (``ingest(events) -> list[Decision]``) and run the same
schedule as the Engine with its default policy: an initial promote to the first step on the first
event, steps 1 → 10 → 25 → 50 → 75 → 100 %, a promote only after ``min_step_seconds`` (300 s) and
``min_samples`` (200 canary requests) in the step, and no halt before ``min_halt_samples`` (30)
canary requests. They check every 60 s of *event* time, on the window since the step started.

Kayenta (spinnaker/kayenta, ``NetflixACAJudge`` + ``MannWhitneyClassifier``), and what is kept:

* per metric, a two-sided Mann-Whitney test at ``confLevel = 0.98``;
* Kayenta's ``tolerance = 0.25``: a metric is High only when the lower end of the 98 % confidence
  interval of the Hodges-Lehmann shift exceeds ``tolerance × |estimate|`` (Low symmetrically).
  With the large-sample interval ``estimate ± z·se`` that is ``estimate / se > z / (1 - tolerance)``,
  i.e. a Mann-Whitney z above 2.326 / 0.75 = 3.10 (p < 0.0019). We use that z form (``rule="ci"``),
  because on per-request 0/1 indicators the Hodges-Lehmann interval is degenerate (every pairwise
  difference is -1, 0 or 1, so estimate and bounds all sit at 0 and Kayenta's test never fires).
  ``rule="p"`` is the plain p < 0.02 reading;
* the effect size is Kayenta's ``EffectSizes.meanRatio`` (canary mean / baseline mean; 1.0 when the
  baseline mean is 0), and it must reach the per-metric ``effectSize.allowedIncrease`` /
  ``allowedDecrease``. We set those to the lesson's thresholds (cost 1.2, errors 2.0, feedback 1.5,
  latency 1.5, output length [0.8, 1.25]) so that all three judges gate at the same ratios;
* direction ``increase`` for latency, cost, errors and feedback, ``either`` for output length; all
  metrics ``critical``, so one High (or Low) fails the canary, which here means halt; promote needs a
  score (percent of classified metrics that Pass) of 100 with no metric Nodata;
* Kayenta's preprocessing: NaNs removed, then ``IQRDetector(factor=3, reduceSensitivity=true)`` drops
  values beyond ``min(P1, Q1 - 3·IQR)`` / ``max(P99, Q3 + 3·IQR)`` in each arm. Applied to latency,
  cost and output tokens, not to the 0/1 indicators (there the fence is P99, which deletes every 1
  once a rate is under 1 %);
* the identical-data and single-value shortcuts return Pass.

Departures, for speed: the continuous metrics are tested on a seeded reservoir sample of at most
``reservoir`` (5,000) requests per arm of the step window; the 0/1 indicators (error-or-refusal per
request, negative feedback per request) use exact counts, from which the tie-corrected
Mann-Whitney z follows in closed form (same value as ``scipy.stats.mannwhitneyu``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from gates.decision import Decision, GateResult
from gates.events import NEGATIVE_FEEDBACK, Event, InferenceEvent
from gates.policy import RolloutPolicy

GATES = ("latency", "cost", "errors", "output_length", "feedback")
COMPLETE, ROLLED_BACK = "complete", "rolled-back"


def stage_name(weight: float) -> str:
    return f"canary-{weight:g}"


@dataclass
class _Arm:
    """Everything one arm contributed to the current step's window."""

    n: int = 0
    bad: int = 0  # error or refusal
    neg: int = 0  # negative feedback on a request of this window
    sum_cost: float = 0.0
    n_cost: int = 0
    sum_tok: float = 0.0
    lat: list[np.ndarray] = field(default_factory=list)
    # reservoir (Kayenta): rows of (latency, cost, tokens)
    res: np.ndarray | None = None
    res_n: int = 0


class _StepJudge:
    """The Engine's step schedule and check cadence; subclasses decide on a window."""

    name = "base"

    def __init__(self, policy: RolloutPolicy | None = None, *, check_seconds: float = 60.0) -> None:
        p = policy or RolloutPolicy()
        self.steps = list(p.steps)
        self.min_step_seconds = p.min_step_seconds
        self.min_samples = p.min_samples
        self.min_halt_samples = p.min_halt_samples
        self.check_seconds = check_seconds
        self.rollout_id: str | None = None
        self.seq = 0
        self.step_index = 0
        self.weight = 0.0
        self.stage = ""
        self.step_start = 0.0
        self.next_check = -math.inf
        self.terminal = False
        self.baseline_digest: str | None = None
        self.canary_digest: str | None = None
        self.arms: dict[str, _Arm] = {}
        self._pend: dict[str, list[tuple[float, float, int, bool]]] = {}

    # ---- interface -------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> list[Decision]:
        out: list[Decision] = []
        for e in events:
            if self.rollout_id is None:
                out.append(self._start(e.rollout_id, e.ts))
            if self.terminal:
                continue
            if type(e) is InferenceEvent:
                if e.model_digest is not None:
                    if e.arm == "baseline":
                        self.baseline_digest = self.baseline_digest or e.model_digest
                    else:
                        self.canary_digest = self.canary_digest or e.model_digest
                if e.ts >= self.step_start:
                    cost = e.cost_usd if e.cost_usd is not None else math.nan
                    bad = e.status == "error" or e.refusal
                    self._pend.setdefault(e.arm, []).append((e.latency_ms, cost, e.output_tokens, bad))
            elif e.value in NEGATIVE_FEEDBACK:
                rts = e.request_ts if e.request_ts is not None else e.ts - 120.0  # type: ignore[union-attr]
                if rts >= self.step_start:
                    self._arm(e.arm).neg += 1
            if e.ts >= self.next_check:
                self.next_check = (math.floor(e.ts / self.check_seconds) + 1) * self.check_seconds
                d = self._check(e.ts)
                if d is not None:
                    out.append(d)
        return out

    # ---- schedule --------------------------------------------------------------------------
    def _start(self, rollout_id: str, ts: float) -> Decision:
        self.rollout_id = rollout_id
        self.weight = self.steps[0]
        self.stage = stage_name(self.weight)
        self._new_step(ts)
        self.next_check = (math.floor(ts / self.check_seconds) + 1) * self.check_seconds
        return self._decide(ts, "promote", f"Rollout started at {self.weight:g}% canary traffic.", 0.0, [],
                            trigger="start")  # fmt: skip

    def _new_step(self, ts: float) -> None:
        self.step_start = ts
        self.arms = {}
        self._pend = {}

    def _arm(self, arm: str) -> _Arm:
        a = self.arms.get(arm)
        if a is None:
            a = self.arms[arm] = _Arm()
        return a

    def _flush(self) -> None:
        for arm, rows in self._pend.items():
            if not rows:
                continue
            a = self._arm(arm)
            lat, cost, tok, bad = (np.asarray(c) for c in zip(*rows, strict=True))
            a.n += len(rows)
            a.bad += int(bad.sum())
            ok = ~np.isnan(cost)
            a.sum_cost += float(cost[ok].sum())
            a.n_cost += int(ok.sum())
            a.sum_tok += float(tok.sum())
            self._add(a, lat.astype(np.float64), cost.astype(np.float64), tok.astype(np.float64))
        self._pend = {}

    def _add(self, a: _Arm, lat: np.ndarray, cost: np.ndarray, tok: np.ndarray) -> None:
        raise NotImplementedError

    def _gates(self) -> list[GateResult]:
        raise NotImplementedError

    def _check(self, now: float) -> Decision | None:
        self._flush()
        gates = self._gates()
        n_test = self.arms["canary"].n if "canary" in self.arms else 0
        breaches = [g for g in gates if g.status == "breach"]
        if breaches and n_test >= self.min_halt_samples:
            more = f" Also breached: {', '.join(g.name for g in breaches[1:])}." if len(breaches) > 1 else ""
            prev = self.weight
            self.weight, self.stage, self.terminal = 0.0, ROLLED_BACK, True
            return self._decide(now, "halt", f"Halted: {breaches[0].reason}.{more}", prev, gates)
        elapsed = now - self.step_start
        if all(g.status == "pass" for g in gates) and n_test >= self.min_samples and elapsed >= self.min_step_seconds:
            prev = self.weight
            self.step_index += 1
            self.weight = self.steps[min(self.step_index, len(self.steps) - 1)]
            why = f"All {len(gates)} gates pass after {elapsed / 60:.1f} min on {n_test:,} canary requests"
            if self.weight >= 100:
                self.stage, self.terminal = COMPLETE, True
                return self._decide(now, "complete", f"{why}; canary is at 100%.", prev, gates)
            self.stage = stage_name(self.weight)
            self._new_step(now)
            return self._decide(now, "promote", f"{why}; promoting to {self.weight:g}%.", prev, gates)
        return None

    def _decide(
        self,
        ts: float,
        action: str,
        reason: str,
        prev: float,
        gates: list[GateResult],
        *,
        trigger: str = "gates",
    ) -> Decision:
        self.seq += 1
        return Decision(
            rollout_id=self.rollout_id or "", seq=self.seq, ts=ts, action=action, stage=self.stage,
            weight=self.weight, previous_weight=prev, baseline_digest=self.baseline_digest,
            canary_digest=self.canary_digest, gates=gates, reason=reason, trigger=trigger,
        )  # fmt: skip

    def _samples(self) -> dict[str, int]:
        return {arm: self.arms[arm].n if arm in self.arms else 0 for arm in ("baseline", "canary")}


def _ratio(c: float, b: float) -> float:
    if b == 0:
        return 1.0 if c == 0 else math.inf
    return c / b


# ---- naive ---------------------------------------------------------------------------------


class NaiveJudge(_StepJudge):
    """Fixed ratios of window means, as in the lesson's table: no statistics at all."""

    name = "naive"
    LIMITS = {"latency": 1.5, "cost": 1.2, "errors": 2.0, "feedback": 1.5}
    LENGTH = (0.8, 1.25)

    def _add(self, a: _Arm, lat: np.ndarray, cost: np.ndarray, tok: np.ndarray) -> None:
        a.lat.append(lat)

    def _gates(self) -> list[GateResult]:
        b, c = self.arms.get("baseline"), self.arms.get("canary")
        samples = self._samples()
        if b is None or c is None or not b.n or not c.n:
            return [GateResult(name=g, status="insufficient", observed=None, baseline=None, ratio=None,
                               threshold=self.LIMITS.get(g, self.LENGTH[1]), samples=samples,
                               reason=f"{g}: no data in one arm") for g in GATES]  # fmt: skip
        p99c = float(np.percentile(np.concatenate(c.lat), 99))
        p99b = float(np.percentile(np.concatenate(b.lat), 99))
        values = {
            "latency": (p99c, p99b),
            "cost": (c.sum_cost / max(c.n_cost, 1), b.sum_cost / max(b.n_cost, 1)),
            "errors": (c.bad / c.n, b.bad / b.n),
            "output_length": (c.sum_tok / c.n, b.sum_tok / b.n),
            "feedback": (c.neg / c.n, b.neg / b.n),
        }
        out = []
        for g in GATES:
            obs, base = values[g]
            r = _ratio(obs, base)
            if g == "output_length":
                lo, hi = self.LENGTH
                breach, thr = not (lo <= r <= hi), hi
            else:
                thr = self.LIMITS[g]
                breach = r > thr
            reason = f"{g} window-mean ratio {r:.3f} vs limit {thr:g} on {c.n:,} canary requests"
            out.append(GateResult(name=g, status="breach" if breach else "pass", observed=obs, baseline=base,
                                  ratio=r, threshold=thr, samples=samples, reason=reason))  # fmt: skip
        return out


# ---- Kayenta -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KayentaMetric:
    gate: str
    column: int  # reservoir column, or -1 for a 0/1 indicator from counts
    direction: str  # increase | either
    allowed_increase: float
    allowed_decrease: float = 0.0


KAYENTA_METRICS = (
    KayentaMetric("latency", 0, "increase", 1.5),
    KayentaMetric("cost", 1, "increase", 1.2),
    KayentaMetric("errors", -1, "increase", 2.0),
    KayentaMetric("output_length", 2, "either", 1.25, 0.8),
    KayentaMetric("feedback", -1, "increase", 1.5),
)


def iqr_filter(x: np.ndarray, factor: float = 3.0) -> np.ndarray:
    """Kayenta's IQRDetector(factor, reduceSensitivity=true): keep values inside the fences."""
    if x.size < 2:
        return x
    p1, p25, p75, p99 = np.percentile(x, [1, 25, 75, 99])
    iqr = p75 - p25
    lo, hi = min(p1, p25 - factor * iqr), max(p99, p75 + factor * iqr)
    return x[(x >= lo) & (x <= hi)]


def mw_z(x: np.ndarray, y: np.ndarray) -> float:
    """Signed, tie- and continuity-corrected Mann-Whitney z of x (canary) against y (baseline)."""
    n, m = x.size, y.size
    ranks = stats.rankdata(np.concatenate([x, y]))
    u = float(ranks[:n].sum()) - n * (n + 1) / 2
    _, t = np.unique(ranks, return_counts=True)
    nn = n + m
    var = n * m / 12 * ((nn + 1) - float((t.astype(np.float64) ** 3 - t).sum()) / (nn * (nn - 1)))
    d = u - n * m / 2
    if var <= 0:
        return 0.0
    return (d - 0.5 * np.sign(d)) / math.sqrt(var)


def mw_z_binary(a: int, n: int, b: int, m: int) -> float:
    """mw_z for x = a ones in n, y = b ones in m, in closed form."""
    if n == 0 or m == 0:
        return 0.0
    nn, ones = n + m, a + b
    zeros = nn - ones
    r0, r1 = (zeros + 1) / 2, zeros + (ones + 1) / 2
    u = (n - a) * r0 + a * r1 - n * (n + 1) / 2
    ties = (zeros**3 - zeros) + (ones**3 - ones)
    var = n * m / 12 * ((nn + 1) - ties / (nn * (nn - 1)))
    d = u - n * m / 2
    if var <= 0:
        return 0.0
    return (d - 0.5 * np.sign(d)) / math.sqrt(var)


class KayentaJudge(_StepJudge):
    """NetflixACAJudge with the MannWhitneyClassifier, run at every check on the step window."""

    name = "kayenta"

    def __init__(
        self,
        policy: RolloutPolicy | None = None,
        *,
        seed: int = 0,
        confidence: float = 0.98,
        tolerance: float = 0.25,
        rule: str = "ci",
        reservoir: int = 5000,
        metrics: Sequence[KayentaMetric] = KAYENTA_METRICS,
        check_seconds: float = 60.0,
    ) -> None:
        super().__init__(policy, check_seconds=check_seconds)
        if rule not in ("ci", "p"):
            raise ValueError("rule must be 'ci' (Kayenta's tolerance margin) or 'p' (p < 1 - confidence)")
        self.rng = np.random.default_rng(seed)
        self.reservoir = reservoir
        self.metrics = tuple(metrics)
        z = float(stats.norm.isf((1 - confidence) / 2))
        self.z_crit = z / (1 - tolerance) if rule == "ci" else z
        self.rule = rule

    def _add(self, a: _Arm, lat: np.ndarray, cost: np.ndarray, tok: np.ndarray) -> None:
        rows = np.column_stack([lat, cost, tok])
        cap = self.reservoir
        if a.res is None:
            a.res = np.empty((cap, 3))
        seen = a.res_n
        fill = max(0, min(cap - seen, len(rows)))
        if fill:
            a.res[seen : seen + fill] = rows[:fill]
        rest = rows[fill:]
        if len(rest):
            # Algorithm R: item number t (1-based) replaces a random slot with probability cap/t
            t = np.arange(seen + fill + 1, seen + len(rows) + 1)
            j = self.rng.integers(0, t)
            keep = j < cap
            a.res[j[keep]] = rest[keep]
        a.res_n = seen + len(rows)

    def _classify(self, km: KayentaMetric) -> GateResult:
        b, c = self.arms.get("baseline"), self.arms.get("canary")
        samples = self._samples()
        thr = km.allowed_increase
        nodata = GateResult(name=km.gate, status="insufficient", observed=None, baseline=None, ratio=None,
                            threshold=thr, samples=samples, reason=f"{km.gate}: Nodata")  # fmt: skip
        if b is None or c is None or not b.n or not c.n:
            return nodata
        if km.column < 0:
            ca, ba = (c.bad, b.bad) if km.gate == "errors" else (c.neg, b.neg)
            ca, ba = min(ca, c.n), min(ba, b.n)
            xm, ym = ca / c.n, ba / b.n
            one_value = ca == ba == 0 or (ca == c.n and ba == b.n)  # Kayenta: Pass
            z = 0.0 if one_value else mw_z_binary(ca, c.n, ba, b.n)
        else:
            assert c.res is not None and b.res is not None
            x = c.res[: min(c.res_n, self.reservoir), km.column]
            y = b.res[: min(b.res_n, self.reservoir), km.column]
            x, y = iqr_filter(x[~np.isnan(x)]), iqr_filter(y[~np.isnan(y)])
            if not x.size or not y.size:
                return nodata
            xm, ym = float(x.mean()), float(y.mean())
            z = 0.0 if np.unique(np.concatenate([x, y])).size == 1 else mw_z(x, y)
        dev = 1.0 if ym == 0 else xm / ym
        high = km.direction in ("increase", "either") and z > self.z_crit and dev >= km.allowed_increase
        low = km.direction in ("decrease", "either") and z < -self.z_crit and dev <= km.allowed_decrease
        label = "High" if high else "Low" if low else "Pass"
        p = float(2 * stats.norm.sf(abs(z)))
        reason = (
            f"{km.gate} classified {label}: mean ratio {dev:.3f} (allowed {km.allowed_decrease:g}.."
            f"{km.allowed_increase:g}), Mann-Whitney z {z:+.2f} (p {p:.2g}) on {c.n:,} canary requests"
        )
        return GateResult(
            name=km.gate, status="breach" if high or low else "pass", observed=xm, baseline=ym, ratio=dev,
            threshold=thr, samples=samples, reason=reason,
            details={"classification": label, "z": round(float(z), 3), "p": p, "rule": self.rule},
        )  # fmt: skip

    def _gates(self) -> list[GateResult]:
        return [self._classify(km) for km in self.metrics]
