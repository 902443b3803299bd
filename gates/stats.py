"""Estimators with anytime-valid confidence bounds.

Two ideas carry the gates:

* **Batch means over time blocks.** The variance of an arm's ratio-of-sums is estimated from the
  spread of its per-block totals (the cluster-robust ratio-estimator variance), floored by the
  per-request variance. Block-level spread includes the run-to-run non-determinism of LLM
  serving (batching, GPU reduction order, sampling), which per-request variance alone misses.
* **Confidence sequences.** The bound uses Robbins' normal-mixture boundary, valid
  simultaneously over every look, so evaluating after every batch does not inflate false
  halts the way a fixed-horizon test re-checked on a growing window does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def cs_z(units: float, alpha: float, rho: float) -> float:
    """Half-width multiplier of a two-sided normal-mixture confidence sequence.

    With S_t a sum whose variance is t units, P(exists t: |S_t| >= z(t) sqrt(t)) <= alpha
    (Robbins 1970; Howard et al. 2021). ``rho`` sets where the boundary is tightest."""
    t = max(units, 1e-9)
    return math.sqrt((t + rho) / t * math.log((t + rho) / (rho * alpha * alpha)))


class RatioEstimate(NamedTuple):  # a tuple: several are built at every evaluation
    ratio: float
    lower: float
    upper: float
    canary: float
    baseline: float
    log_se: float
    blocks: int


class Totals(NamedTuple):
    """An arm's per-block column totals, taken once per evaluation and shared by every estimator
    that reads those columns (the sums of integer counts are exact, so they equal what each
    estimator would sum itself)."""

    x: float  # sum of the column
    n: float  # sum of the block sizes
    dense: bool  # every block has requests: no block needs to be masked out


def _blocks_used(n: FloatArray, x: FloatArray | None = None, dense: bool | None = None) -> npt.NDArray[np.bool_] | None:
    """The blocks with requests (or, given ``x``, with requests or a non-zero total), or None when
    that is every block: the common case then needs no mask and no selection. ``dense``: whether
    every block has requests, when the caller already knows."""
    if dense is None:
        dense = bool(n.size and n.min() > 0)
    if dense:
        return None
    return n > 0 if x is None else (n > 0) | (x != 0)


def arm_mean_var(
    x: FloatArray, n: FloatArray, sum_sq: float, *, binary: bool, totals: Totals | None = None,
    deff: float | None = None,
) -> tuple[float, float, int]:
    """Ratio estimator R = sum(x)/sum(n) over blocks and its variance (cluster-robust, floored
    by the i.i.d. per-request variance). Returns (R, var, blocks used).

    ``deff``: a design effect measured elsewhere (on blocks whose counts are complete, say); the
    variance is then the i.i.d. one times max(1, deff) instead of the blocks' own spread."""
    r, v, b, _ = _arm_moments(x, n, sum_sq, binary=binary, totals=totals, deff=deff)
    return r, v, b


def _arm_moments(
    x: FloatArray, n: FloatArray, sum_sq: float, *, binary: bool, totals: Totals | None, deff: float | None
) -> tuple[float, float, int, float]:
    """``arm_mean_var`` and the i.i.d. per-request variance it is floored by."""
    used = _blocks_used(n, x, None if totals is None else totals.dense)
    b = n.size if used is None else int(used.sum())
    big_n = float(n.sum()) if totals is None else totals.n
    if big_n <= 0:
        return math.nan, math.inf, b, math.inf
    r = (float(x.sum()) if totals is None else totals.x) / big_n
    per_req = r * (1.0 - r) if binary else max(sum_sq / big_n - r * r, 0.0)
    v_iid = per_req / big_n
    if deff is not None:
        return r, v_iid * max(1.0, deff), b, v_iid
    if b >= 2:
        resid = x - r * n if used is None else x[used] - r * n[used]
        v_cl = b / (b - 1) * float(np.dot(resid, resid)) / (big_n * big_n)
    else:
        v_cl = 0.0
    return r, max(v_cl, v_iid), b, v_iid


def arm_cov(
    xc: FloatArray, nc: FloatArray, rc: float, xb: FloatArray, nb: FloatArray, rb: float, *, min_blocks: int
) -> float | None:
    """Cluster-robust covariance of two arms' ratio estimators over the blocks both arms have
    (the arrays are aligned by block):

        sum_k (x_c,k - r_c n_c,k)(x_b,k - r_b n_b,k) x b/(b-1) / (N_c N_b)

    with N the arms' request totals over all their blocks. Block noise common to the arms (load,
    time of day) moves both residuals of a block the same way; independent arms give a covariance
    near zero, of either sign. None with fewer than ``min_blocks`` common blocks."""
    both = (nc > 0) & (nb > 0)
    b = int(both.sum())
    if b < max(min_blocks, 2):
        return None
    big_nc, big_nb = float(nc.sum()), float(nb.sum())
    resid_c = xc[both] - rc * nc[both]
    resid_b = xb[both] - rb * nb[both]
    return b / (b - 1) * float(np.dot(resid_c, resid_b)) / (big_nc * big_nb)


def ratio_of_means(
    xc: FloatArray,
    nc: FloatArray,
    sqc: float,
    xb: FloatArray,
    nb: FloatArray,
    sqb: float,
    *,
    z: float,
    smooth: float = 0.0,
    binary: bool = False,
) -> RatioEstimate | None:
    """Canary/baseline ratio of per-request means on a log scale, with a z-wide bound."""
    return ratio_of_means_at(xc, nc, sqc, xb, nb, sqb, zs=(z,), smooth=smooth, binary=binary)[0]


def ratio_of_means_at(
    xc: FloatArray,
    nc: FloatArray,
    sqc: float,
    xb: FloatArray,
    nb: FloatArray,
    sqb: float,
    *,
    zs: tuple[float, ...],
    smooth: float = 0.0,
    binary: bool = False,
    totals: tuple[Totals, Totals] | None = None,
    deffs: tuple[float, float] | None = None,
    upper_at_bound: bool = False,
    paired_min_blocks: int | None = None,
) -> list[RatioEstimate | None]:
    """``ratio_of_means`` at each z of ``zs``: the arms' means and variances are computed once.
    ``totals``: the two arms' (canary, baseline) column totals, when the caller has them.
    ``deffs``: the two arms' design effects measured elsewhere (see ``arm_mean_var``).
    ``upper_at_bound`` (a rate, ``binary``): the upper bound is the score-type one of
    ``rate_ratio_upper``, the tested arm's variance taken at the bound instead of at its observed
    rate; the point estimate and the lower bound are unchanged.
    ``paired_min_blocks``: a paired-by-block contrast (see ``paired_log_var``), with at least this
    many blocks common to the arms; None: each arm's variance on its own."""
    tc, tb = (None, None) if totals is None else totals
    dfc, dfb = (None, None) if deffs is None else deffs
    rc, vc, bc, ic = _arm_moments(xc, nc, sqc, binary=binary, totals=tc, deff=dfc)
    rb, vb, bb, ib = _arm_moments(xb, nb, sqb, binary=binary, totals=tb, deff=dfb)
    if math.isnan(rc) or math.isnan(rb):
        return [None for _ in zs]
    dc, db = rc + smooth, rb + smooth
    if dc <= 0 or db <= 0:
        return [None for _ in zs]
    log_ratio = math.log(dc) - math.log(db)
    var_b = vb / (db * db)  # the baseline's part of the log ratio's variance
    if paired_min_blocks is not None:
        cov = arm_cov(xc, nc, rc, xb, nb, rb, min_blocks=paired_min_blocks)
        if cov is not None:
            # the covariance term is booked against the baseline's part, so the sum is the paired
            # variance (never below the two arms' i.i.d. sum)
            var_b = paired_log_var(vc / (dc * dc), var_b, cov / (dc * db), ic / (dc * dc), ib / (db * db))
            var_b -= vc / (dc * dc)
    se = math.sqrt(vc / (dc * dc) + var_b)
    if upper_at_bound and binary:
        n_c = float(nc.sum()) if tc is None else tc.n
        iid = rc * (1.0 - rc) / n_c
        deff_c = vc / iid if iid > 0 else 1.0
        # the tested arm's part is taken at the bound: the baseline's part then keeps at least its
        # own i.i.d. floor, so the score bound's variance stays positive and above the i.i.d. sum
        var_b_up = var_b if paired_min_blocks is None else max(var_b, ib / (db * db))
        uppers = [rate_ratio_upper(log_ratio, z, db, smooth, n_c, deff_c, var_b_up) for z in zs]
    else:
        uppers = [math.exp(log_ratio + z * se) for z in zs]
    return [
        RatioEstimate(
            ratio=math.exp(log_ratio),
            lower=math.exp(log_ratio - z * se),
            upper=upper,
            canary=rc,
            baseline=rb,
            log_se=se,
            blocks=min(bc, bb),
        )
        for z, upper in zip(zs, uppers, strict=True)
    ]


def paired_log_var(var_c: float, var_b: float, cov: float, iid_c: float, iid_b: float) -> float:
    """Variance of a log ratio of means from a paired-by-block contrast, every term on the log
    scale (each divided by the arms' means): var_c + var_b - 2 cov, never below the two arms'
    i.i.d. per-request variance sum iid_c + iid_b (the floor each arm's own variance has). A
    negative covariance widens it: the estimate is not clipped to the side that helps."""
    return max(var_c + var_b - 2.0 * cov, iid_c + iid_b)


def rate_ratio_upper(
    log_ratio: float, z: float, db: float, smooth: float, n_c: float, deff_c: float, var_b: float
) -> float:
    """Score-type upper bound of a ratio of rates (smoothed: (p_c + smooth) / (p_b + smooth)): the
    largest ratio u not rejected by the one-sided test of "the ratio is u" with the tested arm's
    variance taken at the rate that ratio implies, p_u = u (p_b + smooth) - smooth, instead of at
    its observed rate (Wilson's interval does the same for one proportion):

        log u - log_ratio <= z sqrt(deff_c p_u (1 - p_u) / (n_c (p_u + smooth)^2) + var_b)

    A rate at the limit is noisier, in absolute terms, than a lower one, but less so relative to
    its level: a canary well under a ratio limit is shown to be under it on fewer requests than
    the Wald bound (the variance at the observed rate) needs, while at the limit the two agree.
    It also stays a bound with no event in the tested arm, where the Wald variance is zero.
    ``deff_c``: the tested arm's design effect (its variance over the i.i.d. one), ``var_b``: the
    baseline's variance of its log rate. Solved by bisection: deterministic to the last bit."""
    top = math.log((1.0 + smooth) / db)  # the tested rate at 1

    def excess(u: float) -> float:
        p = min(max(math.exp(u) * db - smooth, 0.0), 1.0)
        v = deff_c * p * (1.0 - p) / (n_c * (p + smooth) ** 2) + var_b
        return u - log_ratio - z * math.sqrt(v)

    if top <= log_ratio or excess(top) <= 0:
        return math.exp(max(top, log_ratio))
    lo, hi = log_ratio, top
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if excess(mid) <= 0:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


class Proportion(NamedTuple):
    p: float
    lower: float
    upper: float
    n: int


def wilson(k: float, n: float, z: float) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    den = 1.0 + z2 / n
    mid = p + z2 / (2 * n)
    half = z * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    return max((mid - half) / den, 0.0), min((mid + half) / den, 1.0)


def proportion(k: float, n: float, *, z: float, deff: float) -> Proportion:
    """``k`` of ``n`` requests, with Wilson bounds on the effective sample size ``n / deff``: the
    design effect (at least 1) is measured elsewhere, so that it cannot depend on these counts."""
    if n <= 0:
        return Proportion(math.nan, 0.0, 1.0, 0)
    p = k / n
    n_eff = n / max(1.0, deff)
    lo, hi = wilson(p * n_eff, n_eff, z)
    return Proportion(p, lo, hi, int(n))


def design_effect(sum_k: FloatArray, n: FloatArray, total_sq: float, *, totals: Totals | None = None) -> float:
    """How much block-level noise inflates the variance of a per-request mean (>= 1)."""
    used = _blocks_used(n, dense=None if totals is None else totals.dense)
    b = n.size if used is None else int(used.sum())
    big_n = float(n.sum()) if totals is None else totals.n
    if b < 2 or big_n <= 1:
        return 1.0
    m = (float(sum_k.sum()) if totals is None else totals.x) / big_n
    per_req = max(total_sq / big_n - m * m, 1e-12)
    resid = sum_k - m * n if used is None else sum_k[used] - m * n[used]
    v_cl = b / (b - 1) * float(np.dot(resid, resid)) / (big_n * big_n)
    return max(1.0, v_cl / (per_req / big_n))
