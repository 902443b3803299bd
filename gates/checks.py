"""The five gates: each compares the tested arm (canary or shadow) with the concurrent baseline
over the step's window and returns a verdict with its evidence and one sentence.

Breach uses the halt confidence (``z_halt``), pass the promote confidence (``z_promote``): a
wrong promote is caught at the next, larger step, a wrong halt throws away a good model.
``lower`` in a result is the halt-confidence lower bound, ``upper`` the promote-confidence
upper bound, so that each verdict can be read off its own numbers.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from gates import sketch
from gates.decision import GateResult
from gates.policy import RolloutPolicy
from gates.stats import RatioEstimate, Totals, design_effect, proportion, ratio_of_means_at
from gates.window import SQ_UNIT, Window, columns, dense

FIELDS = (
    "n", "bad", "cost_n", "cost", "cost_sq", "tok", "tok_sq",
    "lat_k", "lat_k_sq", "len_k", "len_k_sq", "neg_fb", "fb",
)  # fmt: skip


@dataclass(frozen=True)
class Ctx:
    w: Window
    arm: str
    p: RolloutPolicy
    z_halt: float
    z_promote: float
    cols_t: dict[str, Any]
    cols_b: dict[str, Any]
    now: float = math.inf  # the evaluation's event time (inf: every block's feedback is in)
    # sorted (keys, cumulative counts, counts) per sketch, built once per evaluation; each entry
    # holds its store, so no id() in the cache can be reused by a later object (a temporary {})
    cache: dict[int, tuple[Any, Any, Any, Any]] = field(default_factory=dict)
    # values that several gates of this evaluation derive from the same window (design effects,
    # quantile bounds, column totals): computed once, dropped with the Ctx
    memo: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def sorted_sketch(self, store: dict[int, int]) -> tuple[Any, Any]:
        keys, cum, _ = self.sorted_counts(store)
        return keys, cum

    def sorted_counts(self, store: dict[int, int]) -> tuple[Any, Any, Any]:
        got = self.cache.get(id(store))
        if got is None or got[0] is not store:
            keys = np.fromiter(store.keys(), dtype=np.int64, count=len(store))
            counts = np.fromiter(store.values(), dtype=np.int64, count=len(store))
            order = keys.argsort()
            counts = counts[order]
            got = self.cache[id(store)] = (store, keys[order], counts.cumsum(), counts)
        return got[1], got[2], got[3]

    def count_above(self, store: dict[int, int], threshold: float) -> int:
        keys, cum = self.sorted_sketch(store)
        if keys.size == 0:
            return 0
        i = int(keys.searchsorted(sketch.key_of(threshold), side="right"))
        return int(cum[-1] - (cum[i - 1] if i > 0 else 0))

    def quantiles(self, store: dict[int, int], qs: Sequence[float]) -> Sequence[float | None]:
        """``sketch.quantile`` at each of ``qs``, on the sorted arrays this evaluation already holds,
        in one search."""
        keys, cum = self.sorted_sketch(store)
        n = int(cum[-1]) if keys.size else 0
        if n == 0:
            return [None for _ in qs]
        return sketch.values_at_cum_ranks(keys, cum, [q * (n - 1) for q in qs])

    @property
    def n_test(self) -> int:
        return int(self.cols_t["_sums"]["n"])

    @property
    def n_base(self) -> int:
        return int(self.cols_b["_sums"]["n"])

    def total(self, side: str, field: str) -> float:
        """The sum of a column over the blocks (side: "t" tested, "b" baseline)."""
        return float((self.cols_t if side == "t" else self.cols_b)["_sums"][field])

    def totals(self, x_field: str, n_field: str = "n") -> tuple[Totals, Totals]:
        """The (tested, baseline) Totals of a ratio of two columns, for the stats estimators."""
        got = self.memo.get(("totals", x_field, n_field))
        if got is None:
            got = self.memo[("totals", x_field, n_field)] = tuple(
                Totals(cols["_sums"][x_field], cols["_sums"][n_field], dense(cols, n_field))
                for cols in (self.cols_t, self.cols_b)
            )
        return got

    def design_effect(self, side: str, k_field: str) -> float:
        """``stats.design_effect`` of an arm's log-key means (side: "t" tested, "b" baseline)."""
        got = self.memo.get(("deff", side, k_field))
        if got is None:
            cols = self.cols_t if side == "t" else self.cols_b
            got = self.memo[("deff", side, k_field)] = design_effect(
                cols[k_field], cols["n"], cols["_sums"][k_field + "_sq"],
                totals=self.totals(k_field)[0 if side == "t" else 1],
            )  # fmt: skip
        return float(got)

    def level_sd(self, side: str, k_field: str) -> float:
        """The block noise in an arm's window mean of log values (latency or length), in nats: the
        cluster-robust variance of that mean beyond its per-request part, (design effect - 1) x
        per-request variance / n. Run-to-run noise moves an arm's whole distribution up or down
        for a while; this is how uncertain that leaves its level, quantiles included."""
        got = self.memo.get(("level", side, k_field))
        if got is None:
            sums = (self.cols_t if side == "t" else self.cols_b)["_sums"]
            n = float(sums["n"])
            if n <= 1:
                got = 0.0
            else:
                m = float(sums[k_field]) / n
                per_req = max(float(sums[k_field + "_sq"]) / n - m * m, 0.0)
                got = math.sqrt(max(self.design_effect(side, k_field) - 1.0, 0.0) * per_req / n) * sketch.LN_GAMMA
            self.memo[("level", side, k_field)] = got
        return float(got)

    def samples(self, test: int | None = None, base: int | None = None) -> dict[str, int]:
        return {
            self.arm: self.n_test if test is None else test,
            "baseline": self.n_base if base is None else base,
        }


def make_ctx(w: Window, arm: str, p: RolloutPolicy, z_halt: float, z_promote: float, now: float = math.inf) -> Ctx:
    return Ctx(w, arm, p, z_halt, z_promote, columns(w, arm, FIELDS), columns(w, "baseline", FIELDS), now)


def _r(x: float | None, nd: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float("%.*g" % (nd, x))  # noqa: UP031 - the same digits as f"{x:.{nd}g}", formatted faster


def _fmt_n(c: Ctx, samples: dict[str, int]) -> str:
    return f"on {samples[c.arm]:,} {c.arm} and {samples['baseline']:,} baseline requests"


def _ratio_verdict(
    c: Ctx,
    name: str,
    what: str,
    est_h: RatioEstimate | None,
    est_p: RatioEstimate | None,
    limit: float,
    samples: dict[str, int],
    *,
    two_sided: bool = False,
    details: dict[str, Any] | None = None,
) -> GateResult:
    details = details or {}
    if est_h is None or est_p is None:
        return GateResult(
            name, "insufficient", None, None, None, limit, samples,
            reason=f"{what}: no {c.arm} data yet" if samples[c.arm] == 0 else f"{what}: no baseline to compare",
            details=details,
        )  # fmt: skip
    lo_limit = 1.0 / limit
    breach_hi = est_h.lower > limit
    breach_lo = two_sided and est_h.upper < lo_limit
    passes = est_p.upper < limit and (not two_sided or est_p.lower > lo_limit)
    conf_h = 100 * (1 - c.p.false_halt_budget)
    if breach_hi or breach_lo:
        status = "breach"
        if breach_hi:
            txt = (f"{what} is {est_h.ratio:.2f}x baseline (at least {est_h.lower:.2f}x at {conf_h:g}% "
                   f"confidence), above the {limit:g}x limit")  # fmt: skip
        else:
            txt = (f"{what} is {est_h.ratio:.2f}x baseline (at most {est_h.upper:.2f}x at {conf_h:g}% "
                   f"confidence), below the {lo_limit:.2f}x limit")  # fmt: skip
    elif passes:
        status = "pass"
        band = f"{est_p.lower:.2f}-{est_p.upper:.2f}x" if two_sided else f"at most {est_p.upper:.2f}x"
        txt = f"{what} is {est_h.ratio:.2f}x baseline ({band}), within the {limit:g}x limit"
    else:
        status = "insufficient"
        txt = (f"{what} is {est_h.ratio:.2f}x baseline; its bounds {est_h.lower:.2f}-{est_p.upper:.2f}x "
               f"still straddle the {limit:g}x limit")  # fmt: skip
    lower = est_h.lower if not breach_lo else est_h.upper
    return GateResult(
        name=name,
        status=status,
        observed=_r(est_h.canary),
        baseline=_r(est_h.baseline),
        ratio=_r(est_h.ratio),
        threshold=limit,
        samples=samples,
        lower=_r(lower),
        upper=_r(est_p.upper),
        reason=f"{txt}, {_fmt_n(c, samples)}",
        details=details,
    )


def _paired(c: Ctx) -> int | None:
    """The ``paired_min_blocks`` of the ratio estimators: the policy's ``min_blocks`` when
    ``paired_blocks`` is on, else None (each arm's variance on its own)."""
    return c.p.min_blocks if c.p.paired_blocks else None


def cost_gate(c: Ctx) -> GateResult:
    g = c.p.gates.cost
    t, b = c.cols_t, c.cols_b
    samples = c.samples(int(c.total("t", "cost_n")), int(c.total("b", "cost_n")))
    # cost is summed in nano-dollars, its squares in micro-dollars: bring the squares to nano units
    sq = float(SQ_UNIT * SQ_UNIT)
    args = (t["cost"], t["cost_n"], c.total("t", "cost_sq") * sq, b["cost"], b["cost_n"], c.total("b", "cost_sq") * sq)
    est_h, est_p = ratio_of_means_at(*args, zs=(c.z_halt, c.z_promote), totals=c.totals("cost", "cost_n"),
                                     paired_min_blocks=_paired(c))  # fmt: skip
    res = _ratio_verdict(c, "cost", "cost per request", est_h, est_p, g.max_ratio, samples)
    if est_h is not None:
        unit = 1e-9
        return msgspec_replace(res, observed=_r(est_h.canary * unit), baseline=_r(est_h.baseline * unit))
    if samples[c.arm] == 0 and c.n_test > 0:
        return msgspec_replace(
            res, reason="cost per request: no event has cost_usd and the policy has no price for its model"
        )
    return res


def error_gate(c: Ctx) -> GateResult:
    g = c.p.gates.errors
    t, b = c.cols_t, c.cols_b
    args = (t["bad"], t["n"], 0.0, b["bad"], b["n"], 0.0)
    est_h, est_p = ratio_of_means_at(*args, zs=(c.z_halt, c.z_promote), smooth=g.min_rate, binary=True,
                                     totals=c.totals("bad"), upper_at_bound=True, paired_min_blocks=_paired(c))  # fmt: skip
    return _ratio_verdict(c, "errors", "error+refusal rate", est_h, est_p, g.max_ratio, c.samples())


def settled_feedback_deffs(c: Ctx) -> tuple[float, float] | None:
    """The (tested, baseline) design effects of the negative-feedback rate, measured on the blocks
    that ended at least ``settle_seconds`` before the evaluation, or None (the spread of every
    block is then used) when it is off or fewer than ``min_blocks`` blocks have settled.

    A block's feedback arrives over the minutes after its requests: the newest blocks hold a rate
    that is low in both arms, and in their spread that shortfall reads as block noise (at high
    traffic several times the real noise of the baseline's rate). Their requests and feedback
    still count toward the rate; only the noise is measured where the counts are complete."""
    settle = c.p.gates.feedback.settle_seconds
    if settle <= 0 or not math.isfinite(c.now):
        return None
    blocks = c.cols_t["_blocks"]  # the block numbers in time order, the same for both arms
    # block k ends at (k + 1) x block_seconds
    last = math.floor((c.now - settle) / c.w.block_seconds) - 1
    k = bisect.bisect_right(blocks, last)
    if k < c.p.min_blocks:
        return None
    out = []
    for cols in (c.cols_t, c.cols_b):
        neg, n = cols["neg_fb"][:k], cols["n"][:k]
        if int(np.count_nonzero(n)) < c.p.min_blocks:
            return None
        out.append(design_effect(neg, n, float(neg.sum())))  # binary: the sum of squares is the sum
    return out[0], out[1]


def feedback_gate(c: Ctx) -> GateResult:
    g = c.p.gates.feedback
    t, b = c.cols_t, c.cols_b
    args = (t["neg_fb"], t["n"], 0.0, b["neg_fb"], b["n"], 0.0)
    deffs = settled_feedback_deffs(c)
    est_h, est_p = ratio_of_means_at(*args, zs=(c.z_halt, c.z_promote), smooth=g.min_rate, binary=True,
                                     totals=c.totals("neg_fb"), deffs=deffs, upper_at_bound=True)  # fmt: skip
    details = {"negative_feedback": {c.arm: int(c.total("t", "neg_fb")), "baseline": int(c.total("b", "neg_fb"))}}
    return _ratio_verdict(
        c, "feedback", "negative-feedback rate", est_h, est_p, g.max_ratio, c.samples(), details=details
    )


class _Tail(NamedTuple):
    """Is the tested arm's q-quantile above ``ratio`` x the baseline's? Tested as: is the share
    of tested requests above ratio x (baseline q-quantile) more than 1-q? The baseline quantile's
    own uncertainty (order-statistic bounds, widened by its design effect) is taken against us."""

    status: str
    observed: float | None
    base: float | None
    ratio: float | None
    lower: float | None
    upper: float | None


def _quantile_bounds(
    c: Ctx, store: dict[int, int], q: float, zs: tuple[float, ...], level: float
) -> list[tuple[float, float, float] | None]:
    """Per z of ``zs``: the q-quantile and its bounds (lower, upper): the order-statistic bounds of
    the requests as drawn, widened by z x ``level`` (the arm's block noise in nats, see
    ``Ctx.level_sd``) on the log scale. Adding the two margins instead of their squares keeps the
    bound conservative; all ranks are looked up in one search."""
    keys, cum = c.sorted_sketch(store)
    if keys.size == 0:
        return [None for _ in zs]
    n = int(cum[-1])
    at = q * (n - 1)
    halves = [z * math.sqrt(n * q * (1 - q)) for z in zs]
    ranks = [min(max(rank, 0.0), n - 1.0) for half in halves for rank in (at, at - half, at + half)]
    found = cum.searchsorted(ranks, side="right")
    values = list(map(sketch.value_of, keys.take(np.minimum(found, keys.size - 1)).tolist()))
    out: list[tuple[float, float, float] | None] = []
    for j, half in enumerate(halves):
        mid, lo, hi = values[3 * j : 3 * j + 3]
        widen = math.exp(zs[j] * level)
        lo, hi = lo / widen, hi * widen
        if at + half > n - 1:
            hi = math.inf  # too few samples to bound the quantile from above
        if at - half < 0:
            lo = 0.0
        out.append((mid, lo, hi))
    return out


def _tail_inputs(c: Ctx, metric: str, q: float) -> tuple[float, Any, Any, Any, Any]:
    """(tested arm's design effect, baseline quantile bounds at the halt and promote z, tested arm's
    at both): the same for both sides of a two-sided check, so computed once per evaluation."""
    got = c.memo.get(("tail", metric, q))
    if got is None:
        b_store = getattr(c.w, metric).get("baseline", {})
        t_store = getattr(c.w, metric).get(c.arm, {})
        k_field = "lat_k" if metric == "lat" else "len_k"
        level_b = c.level_sd("b", k_field)
        level_t = c.level_sd("t", k_field)
        zs = (c.z_halt, c.z_promote)
        got = c.memo[("tail", metric, q)] = (
            level_t, *_quantile_bounds(c, b_store, q, zs, level_b), *_quantile_bounds(c, t_store, q, zs, level_t)
        )
    return got


def _tail_check(c: Ctx, metric: str, q: float, limit: float, *, upper_side: bool = True) -> _Tail:
    """upper_side: breach when tested quantile > limit x baseline; else when < baseline / limit."""
    level_t, qb_h, qb_p, qt, qt_p = _tail_inputs(c, metric, q)
    if qb_h is None or qt is None or qb_p is None or qt_p is None or qb_h[0] <= 0:
        return _Tail("insufficient", None if qt is None else qt[0], None if qb_h is None else qb_h[0],
                     None, None, None)  # fmt: skip
    t_store = getattr(c.w, metric).get(c.arm, {})
    n_test = c.total("t", "n")
    p0 = 1.0 - q

    def share_above(threshold: float, z: float, many: bool) -> tuple[float, float, float]:
        """The tested arm's share of requests above ``threshold``, with Wilson bounds at ``z``.
        ``many``: the bound is used to claim that many are above (else: that few are); the
        threshold is then moved by the tested arm's block noise against that claim (z x level up,
        or down), since the block noise may have lifted or lowered its whole distribution."""
        if not math.isfinite(threshold):
            return 0.0, 0.0, 0.0
        # The tested arm's requests above the threshold, over all its blocks: its window sketch
        # holds exactly its blocks' requests (gates/window.py folds each request into both).
        # The noise margin comes from the arm's log-quantity means, not from these counts: it must
        # not change with the threshold, or a looser limit could pass less often than a stricter one.
        moved = threshold * math.exp(z * level_t if many else -z * level_t)
        pr = proportion(c.count_above(t_store, moved), n_test, z=z, deff=1.0)
        return pr.p, pr.lower, pr.upper

    ratio = qt[0] / qb_h[0]
    if upper_side:
        # breach: even against the largest plausible baseline quantile, too many are above limit x it
        _, lo_h, _ = share_above(limit * qb_h[2], c.z_halt, True)
        _, _, hi_p = share_above(limit * qb_p[1], c.z_promote, False)
        breach = lo_h > p0
        passes = hi_p < p0
        lower = qt[1] / qb_h[2] if math.isfinite(qb_h[2]) and qb_h[2] > 0 else 0.0
        upper = qt_p[2] / qb_p[1] if qb_p[1] > 0 else math.inf
    else:
        # breach (too short a tail): even against the smallest plausible baseline quantile, too few
        # are above it / limit
        _, _, hi_h = share_above(qb_h[1] / limit, c.z_halt, False)
        _, lo_p, _ = share_above(qb_p[2] / limit, c.z_promote, True)
        breach = hi_h < p0
        passes = lo_p > p0
        lower = qt[1] / qb_h[2] if math.isfinite(qb_h[2]) and qb_h[2] > 0 else 0.0
        upper = qt_p[2] / qb_p[1] if qb_p[1] > 0 else math.inf
    status = "breach" if breach else "pass" if passes else "insufficient"
    return _Tail(status, qt[0], qb_h[0], ratio, lower, upper)


def latency_gate(c: Ctx) -> GateResult:
    g = c.p.gates.latency
    tail = _tail_check(c, "lat", g.quantile, g.max_ratio)
    qname = f"P{g.quantile * 100:g}"
    details: dict[str, Any] = {}
    qs = (0.5, 0.95)
    for q, vt, vb in zip(qs, c.quantiles(c.w.lat.get(c.arm, {}), qs), c.quantiles(c.w.lat.get("baseline", {}), qs),
                         strict=True):  # fmt: skip
        details[f"p{q * 100:g}"] = {
            c.arm: _r(vt), "baseline": _r(vb), "ratio": _r(vt / vb) if vt is not None and vb else None
        }
    samples = c.samples()
    if tail.ratio is None:
        reason = f"{qname} latency: not enough {c.arm} or baseline requests yet, {_fmt_n(c, samples)}"
    else:
        verb = {"breach": "above", "pass": "within", "insufficient": "not yet provably within"}[tail.status]
        reason = (f"{qname} latency is {tail.ratio:.2f}x baseline ({tail.observed:.0f} vs {tail.base:.0f} ms), "
                  f"{verb} the {g.max_ratio:g}x limit, {_fmt_n(c, samples)}")  # fmt: skip
    return GateResult(
        "latency", tail.status, _r(tail.observed), _r(tail.base), _r(tail.ratio), g.max_ratio, samples,
        lower=_r(tail.lower), upper=_r(tail.upper), reason=reason, details=details,
    )  # fmt: skip


def length_gate(c: Ctx) -> GateResult:
    """Output length: mean (two-sided), P99 (two-sided) and shape (Kolmogorov-Smirnov)."""
    g = c.p.gates.output_length
    t, b = c.cols_t, c.cols_b
    samples = c.samples()
    args = (t["tok"], t["n"], c.total("t", "tok_sq"), b["tok"], b["n"], c.total("b", "tok_sq"))
    mean_h, mean_p = ratio_of_means_at(*args, zs=(c.z_halt, c.z_promote), totals=c.totals("tok"))
    mean = _ratio_verdict(
        c, "output_length", "mean output length", mean_h, mean_p, g.mean_ratio, samples, two_sided=True,
    )  # fmt: skip
    hi = _tail_check(c, "len", 0.99, g.p99_ratio, upper_side=True)
    lo = _tail_check(c, "len", 0.99, g.p99_ratio, upper_side=False)
    p99_status = "breach" if "breach" in (hi.status, lo.status) else (
        "pass" if hi.status == lo.status == "pass" else "insufficient")  # fmt: skip
    # shape: KS distance after aligning the means, so that a change of scale is left to the mean and
    # P99 checks and this one sees only a change of shape (e.g. bimodal at an equal mean);
    # its sampling error uses effective sizes (design effect of log length)
    ta, ba = c.w.len.get(c.arm, {}), c.w.len.get("baseline", {})
    ka, cum_a, counts_a = c.sorted_counts(ta)
    kb, cum_b, counts_b = c.sorted_counts(ba)
    nt, nb = (int(cum_a[-1]) if ka.size else 0), (int(cum_b[-1]) if kb.size else 0)  # sketch.total
    d = 0.0
    if nt and nb:
        shift = -_log_key_shift(t["_sums"], b["_sums"])
        ks = sketch.shifted_keys(ka, shift)
        # the sorted-array form of cdf_distance(shifted(ta), ba); the dict form where a shift would
        # reorder or merge keys (a shift of about a million buckets: never in practice)
        d = (sketch.cdf_distance_sorted(ks, counts_a, kb, counts_b) if ks is not None else
             sketch.cdf_distance(sketch.shifted(ta, shift), ba))  # fmt: skip
    if nt and nb:
        # after the means are aligned, block noise enters as the error of that alignment: the arms'
        # level noise (nats, Ctx.level_sd) times the largest density of log length, added to the
        # requests' own sampling spread (a sum, not a root sum of squares: conservative)
        sd_log = _log_sd(t["_sums"])
        f_max = 1.0 / (sd_log * math.sqrt(2 * math.pi)) if sd_log > 0 else 0.0
        noise = f_max * (c.level_sd("t", "len_k") + c.level_sd("b", "len_k"))
        spread = math.sqrt(1.0 / nt + 1.0 / nb) / 2.0 + noise
        # DKW: P(sup|F_n - F| > eps) <= 2 exp(-2 n eps^2); z/2 per unit sqrt(1/n) matches the
        # normal bound's tail, and the confidence-sequence z carries the many looks.
        shape_status = ("breach" if d - c.z_halt * spread > g.max_shape_distance else
                        "pass" if d + c.z_promote * spread < g.max_shape_distance else "insufficient")  # fmt: skip
    else:
        shape_status = "insufficient"
        spread = math.inf
    details = {
        "mean": {"status": mean.status, "ratio": mean.ratio, "lower": mean.lower, "upper": mean.upper,
                 "limit": g.mean_ratio},
        "p99": {"status": p99_status, "ratio": _r(hi.ratio), "observed": _r(hi.observed), "baseline": _r(hi.base),
                "limit": g.p99_ratio},
        "shape": {"status": shape_status, "ks_distance": _r(d), "limit": g.max_shape_distance,
                  "lower": _r(max(d - c.z_halt * spread, 0.0)) if math.isfinite(spread) else None},
    }  # fmt: skip
    statuses = {"mean": mean.status, "p99": p99_status, "shape": shape_status}
    if "breach" in statuses.values():
        which = next(k for k, v in statuses.items() if v == "breach")
        status = "breach"
    elif all(v == "pass" for v in statuses.values()):
        which, status = "mean", "pass"
    else:
        which = next(k for k, v in statuses.items() if v == "insufficient")
        status = "insufficient"
    if which == "mean":
        return msgspec_replace(mean, status=status, details=details, reason=mean.reason if status != "pass" else
                               f"output length matches baseline: mean {mean.ratio}x, P99 {_r(hi.ratio)}x, "
                               f"KS distance {d:.3f}, {_fmt_n(c, samples)}")  # fmt: skip
    if which == "p99":
        side = hi if hi.status != "pass" or lo.status == "pass" else lo
        if lo.status == "breach":
            side = lo
        reason = (f"P99 output length is {side.ratio or float('nan'):.2f}x baseline "
                  f"({'breach of' if status == 'breach' else 'not yet provably within'} the "
                  f"{g.p99_ratio:g}x band), {_fmt_n(c, samples)}")  # fmt: skip
        return GateResult(
            "output_length", status, _r(side.observed), _r(side.base), _r(side.ratio), g.p99_ratio, samples,
            lower=_r(side.lower), upper=_r(side.upper), reason=reason, details=details,
        )  # fmt: skip
    reason = (f"output-length distribution has a different shape from baseline (scale aside): KS distance {d:.3f} vs the "
              f"{g.max_shape_distance:g} limit ({'breach' if status == 'breach' else 'inconclusive'}; "
              f"mean ratio {mean.ratio}x), {_fmt_n(c, samples)}")  # fmt: skip
    return GateResult(
        "output_length", status, _r(d), 0.0, _r(d), g.max_shape_distance, samples,
        lower=_r(max(d - c.z_halt * spread, 0.0)) if math.isfinite(spread) else None,
        upper=_r(d + c.z_promote * spread) if math.isfinite(spread) else None,
        reason=reason, details=details,
    )  # fmt: skip


def _log_sd(sums: dict[str, float]) -> float:
    """The per-request standard deviation of log output length (nats), from an arm's column totals."""
    n = float(sums["n"])
    if n <= 1:
        return 0.0
    m = float(sums["len_k"]) / n
    return math.sqrt(max(float(sums["len_k_sq"]) / n - m * m, 0.0)) * sketch.LN_GAMMA


def _log_key_shift(t: dict[str, float], b: dict[str, float]) -> int:
    """The ratio of the arms' mean lengths, in sketch buckets: aligning on it leaves a pure change of
    scale with no shape difference, while a change of shape at an equal mean keeps all of its.
    ``t``, ``b``: the arms' column totals."""
    nt, nb = float(t["n"]), float(b["n"])
    st, sb = float(t["tok"]), float(b["tok"])
    if nt <= 0 or nb <= 0 or st <= 0 or sb <= 0:
        return 0
    return round(math.log((st / nt) / (sb / nb)) / sketch.LN_GAMMA)


def msgspec_replace(res: GateResult, **changes: Any) -> GateResult:
    import msgspec

    return msgspec.structs.replace(res, **changes)


def evaluate_gates(
    w: Window, arm: str, p: RolloutPolicy, z_halt: float, z_promote: float, *, feedback: bool,
    now: float = math.inf,
) -> list[GateResult]:
    """The enabled gates' verdicts at event time ``now`` (inf: a window whose feedback is all in)."""
    c = make_ctx(w, arm, p, z_halt, z_promote, now)
    out: list[GateResult] = []
    if p.gates.latency.enabled:
        out.append(latency_gate(c))
    if p.gates.cost.enabled:
        out.append(cost_gate(c))
    if p.gates.errors.enabled:
        out.append(error_gate(c))
    if p.gates.output_length.enabled:
        out.append(length_gate(c))
    if feedback and p.gates.feedback.enabled:
        out.append(feedback_gate(c))
    return out
