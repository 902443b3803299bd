"""Onset scan: did the tested arm get worse, against the baseline, from some block on?

ADWIN (gates/drift.py) watches one arm's stream at a time and needs hundreds of requests per tick
to see a refusal rate move; at a few canary requests a second it may never fire. This scan works
on the canary-minus-baseline contrast of the step window's completed blocks, the same integer
aggregates the gates read, so a change of the whole service (load, time of day) moves both arms
and cancels out.

For every split of the window's completed blocks into a before (at least ``MIN_BEFORE`` blocks)
and an after (at least ``min_after`` blocks), it compares the contrast after with the contrast
before:

    z = (D_after - D_before) / sqrt(V_after + V_before),    D = tested mean - baseline mean

with each arm's variance the cluster-robust (batch-means) variance of its segment, floored by the
per-request variance times the design effect measured before the split (a segment of two blocks
cannot measure its own block noise). The largest z over the splits is a CUSUM-type (GLR) change
statistic; a change is reported when it passes ``threshold``, the scan's own false-alarm budget
(its rate on identical arms is measured in docs/benchmarks.md). Only a change for the worse is
reported (more errors, more cost; output length is left to ADWIN): a change for the better
needs no restart.

What the engine does with a change is what it does with an ADWIN onset: restart the step's
comparison window at the split, so that the gates judge the model as it is now instead of diluting
its new behaviour with the old. The baseline did not change there when its own move at the split
is small (``baseline_z`` within ``BASELINE_STEADY_Z``): the restarted window then keeps the
baseline's blocks from the old window's start (``Window.baseline_start``), so the first verdicts on
the changed arm are not held back by a baseline that starts from nothing. Otherwise, and after an
ADWIN onset, both arms start again at the split.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from gates.window import SQ_UNIT, Window

FloatArray = npt.NDArray[np.float64]
MIN_BEFORE = 4  # blocks before a split: enough to measure the block noise it floors the after with
# a change is the tested arm's own when the baseline's move at the split is within this many of its
# standard deviations: a restart then keeps the baseline's blocks before the split
BASELINE_STEADY_Z = 2.0

# signal -> (sum field, count field, square-sum field or None for a 0/1 outcome, two-sided, scale of
# the square-sum units against the sum's)
SIGNALS: dict[str, tuple[str, str, str | None, bool, float]] = {
    "errors": ("bad", "n", None, False, 1.0),
    "cost": ("cost", "cost_n", "cost_sq", False, float(SQ_UNIT * SQ_UNIT)),
}


class Change(NamedTuple):
    signal: str
    block: int  # the first block after the split
    z: float
    # the baseline's own move at the split, (after - before) / sd: near 0 when the change is the
    # tested arm's, which lets a restart keep the baseline's blocks before the split
    baseline_z: float = 0.0


def _arm_columns(w: Window, arm: str, blocks: list[int], fields: tuple[str, ...]) -> dict[str, FloatArray]:
    out: dict[str, FloatArray] = {}
    for f in fields:
        out[f] = np.array(
            [float(getattr(w.blocks[b][arm], f)) if arm in w.blocks[b] else 0.0 for b in blocks], dtype=np.float64
        )
    return out


def _segment_stats(
    x: FloatArray, n: FloatArray, sq: FloatArray | None, binary: bool
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """For every split k (1..B-1: blocks [0, k) before, [k, B) after): per segment the mean, the
    cluster-robust variance of the mean and the per-request variance of the mean."""
    b = x.size
    used = (n > 0).astype(np.float64)
    c = {name: np.concatenate(([0.0], np.cumsum(a))) for name, a in
         (("x", x), ("n", n), ("xx", x * x), ("xn", x * n), ("nn", n * n), ("u", used),
          ("sq", sq if sq is not None else np.zeros(b)))}  # fmt: skip
    k = np.arange(1, b)

    def seg(lo: npt.NDArray[np.int64] | int, hi: npt.NDArray[np.int64] | int) -> tuple[FloatArray, FloatArray, FloatArray]:
        sx, sn = c["x"][hi] - c["x"][lo], c["n"][hi] - c["n"][lo]
        sxx, sxn, snn = c["xx"][hi] - c["xx"][lo], c["xn"][hi] - c["xn"][lo], c["nn"][hi] - c["nn"][lo]
        m = c["u"][hi] - c["u"][lo]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = sx / sn
            resid = np.maximum(sxx - 2 * r * sxn + r * r * snn, 0.0)
            v_cl = np.where(m >= 2, m / np.maximum(m - 1, 1) * resid / (sn * sn), 0.0)
            per_req = r * (1 - r) if binary else np.maximum((c["sq"][hi] - c["sq"][lo]) / sn - r * r, 0.0)
            v_iid = per_req / sn
        return r, v_cl, v_iid

    r0, vc0, vi0 = seg(0, k)
    r1, vc1, vi1 = seg(k, b)
    return r0, vc0, vi0, r1, vc1, vi1


def _arm_split(
    w: Window, arm: str, blocks: list[int], x_f: str, n_f: str, sq_f: str | None, sq_scale: float
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per split: (mean before, variance before, mean after, variance after) of one arm."""
    fields = (x_f, n_f) if sq_f is None else (x_f, n_f, sq_f)
    cols = _arm_columns(w, arm, blocks, fields)
    sq = None if sq_f is None else cols[sq_f] * sq_scale
    r0, vc0, vi0, r1, vc1, vi1 = _segment_stats(cols[x_f], cols[n_f], sq, sq_f is None)
    with np.errstate(divide="ignore", invalid="ignore"):
        deff0 = np.where(vi0 > 0, np.maximum(vc0 / vi0, 1.0), 1.0)
    v0 = np.maximum(vc0, vi0)
    v1 = np.maximum(vc1, vi1 * deff0)
    return r0, v0, r1, v1


def scan(w: Window, arm: str, upto_block: int, *, threshold: float, min_after: int) -> Change | None:
    """The strongest change for the worse in ``arm`` against the baseline over the window's blocks
    before ``upto_block`` (the completed ones), if its z passes ``threshold``; None otherwise."""
    # the tested arm's window only: the baseline's blocks kept from before a restart are not
    # the tested arm's history
    blocks = sorted(b for b in w.blocks if w.start_block <= b < upto_block)
    if len(blocks) < MIN_BEFORE + min_after:
        return None
    best: Change | None = None
    for signal, (x_f, n_f, sq_f, two_sided, sq_scale) in SIGNALS.items():
        t0, tv0, t1, tv1 = _arm_split(w, arm, blocks, x_f, n_f, sq_f, sq_scale)
        b0, bv0, b1, bv1 = _arm_split(w, "baseline", blocks, x_f, n_f, sq_f, sq_scale)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = ((t1 - b1) - (t0 - b0)) / np.sqrt(tv0 + tv1 + bv0 + bv1)
            z_base = (b1 - b0) / np.sqrt(bv0 + bv1)
        if two_sided:
            z = np.abs(z)
        # split k puts blocks [0, k) before: k in MIN_BEFORE .. len - min_after
        z = z[MIN_BEFORE - 1 : len(blocks) - min_after]
        z = np.where(np.isfinite(z), z, -np.inf)
        if z.size == 0:
            continue
        i = int(np.argmax(z))
        top = float(z[i])
        if top > threshold and (best is None or top > best.z):
            zb = float(z_base[MIN_BEFORE - 1 + i])
            best = Change(signal, blocks[MIN_BEFORE + i], top, zb if math.isfinite(zb) else math.inf)
    return best


def describe(change: Change) -> str:
    return f"{change.signal} changed from block {change.block} (z {change.z:.1f})"

