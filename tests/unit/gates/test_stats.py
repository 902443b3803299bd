"""Estimators against numpy/scipy, and the core claim: a confidence sequence re-checked at every
look keeps its error rate, where a fixed-horizon interval re-checked at every look does not."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, norm

from gates.stats import (
    arm_cov,
    arm_mean_var,
    cs_z,
    design_effect,
    paired_log_var,
    proportion,
    rate_ratio_upper,
    ratio_of_means,
    ratio_of_means_at,
    wilson,
)


def _blocks(values: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-block sums and counts of per-request values, and the sum of squares."""
    edges = np.concatenate([[0], np.cumsum(sizes)])
    x = np.array([values[a:b].sum() for a, b in itertools.pairwise(edges)], dtype=np.float64)
    return x, sizes.astype(np.float64), float(np.dot(values, values))


def _arm(rng: np.random.Generator, blocks: int, mean: float, *, block_noise: float = 0.0,
         size: int = 50) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:  # fmt: skip
    sizes = rng.poisson(size, blocks) + 1
    level = mean * (1 + rng.uniform(-block_noise, block_noise, blocks)) if block_noise else np.full(blocks, mean)
    vals = np.concatenate([rng.exponential(level[i], sizes[i]) for i in range(blocks)])
    x, n, sq = _blocks(vals, sizes)
    return x, n, sq, vals


# ---- ratio_of_means -------------------------------------------------------------------------------


@given(st.integers(0, 10**6), st.integers(1, 60), st.integers(1, 60))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_ratio_point_estimate_is_the_ratio_of_numpy_means(seed: int, bc: int, bb: int) -> None:
    rng = np.random.default_rng(seed)
    xc, nc, sqc, vc = _arm(rng, bc, 2.0)
    xb, nb, sqb, vb = _arm(rng, bb, 1.5)
    est = ratio_of_means(xc, nc, sqc, xb, nb, sqb, z=1.96)
    assert est is not None
    assert est.canary == pytest.approx(np.mean(vc), rel=1e-12)
    assert est.baseline == pytest.approx(np.mean(vb), rel=1e-12)
    assert est.ratio == pytest.approx(np.mean(vc) / np.mean(vb), rel=1e-12)
    assert est.lower <= est.ratio <= est.upper
    assert est.blocks == min(bc, bb)
    # the bound is symmetric on the log scale with half-width z * log_se
    assert math.log(est.upper / est.ratio) == pytest.approx(1.96 * est.log_se, rel=1e-9)
    assert math.log(est.ratio / est.lower) == pytest.approx(1.96 * est.log_se, rel=1e-9)


def test_ratio_of_means_with_smoothing_is_the_smoothed_ratio() -> None:
    k_c, n_c, k_b, n_b = np.array([3.0, 1.0]), np.array([500.0, 500.0]), np.array([1.0, 0.0]), np.array([800.0, 700.0])
    est = ratio_of_means(k_c, n_c, 0.0, k_b, n_b, 0.0, z=2.0, smooth=0.002, binary=True)
    assert est is not None
    assert est.ratio == pytest.approx((4 / 1000 + 0.002) / (1 / 1500 + 0.002), rel=1e-12)
    # 0 errors in the baseline is still a finite ratio thanks to the smoothing
    zero = ratio_of_means(k_c, n_c, 0.0, np.zeros(2), n_b, 0.0, z=2.0, smooth=0.002, binary=True)
    assert zero is not None and math.isfinite(zero.upper)
    assert ratio_of_means(k_c, n_c, 0.0, np.zeros(2), n_b, 0.0, z=2.0, binary=True) is None


def test_ratio_of_means_without_data_is_none() -> None:
    some = np.array([1.0, 2.0])
    assert ratio_of_means(np.zeros(0), np.zeros(0), 0.0, some, some, 5.0, z=2) is None
    assert ratio_of_means(some, some, 5.0, np.zeros(2), np.zeros(2), 0.0, z=2) is None


def test_log_se_with_iid_blocks_is_the_delta_method_se() -> None:
    rng = np.random.default_rng(42)
    xc, nc, sqc, vc = _arm(rng, 400, 3.0)
    xb, nb, sqb, vb = _arm(rng, 400, 2.0)
    est = ratio_of_means(xc, nc, sqc, xb, nb, sqb, z=1.0)
    assert est is not None
    # delta method for log(mean_c / mean_b) of independent samples, by hand
    se_hand = math.sqrt(
        np.var(vc, ddof=1) / (len(vc) * np.mean(vc) ** 2) + np.var(vb, ddof=1) / (len(vb) * np.mean(vb) ** 2)
    )
    # the estimator is max(cluster, i.i.d.): never below the i.i.d. value, and with i.i.d. blocks the
    # cluster estimate differs from it by its sampling noise only (~5% of the SE with 400 blocks)
    assert 0.99 * se_hand <= est.log_se <= 1.12 * se_hand, (est.log_se, se_hand)


def _mc_log_ratio(block_noise: float, reps: int, seed: int) -> tuple[float, float, float]:
    """Monte-Carlo: (sd of log ratio, mean reported log_se, mean i.i.d. delta-method se)."""
    rng = np.random.default_rng(seed)
    logs, ses, iid = [], [], []
    for _ in range(reps):
        xc, nc, sqc, vc = _arm(rng, 40, 1.0, block_noise=block_noise)
        xb, nb, sqb, vb = _arm(rng, 40, 1.0, block_noise=block_noise)
        est = ratio_of_means(xc, nc, sqc, xb, nb, sqb, z=1.0)
        assert est is not None
        logs.append(math.log(est.ratio))
        ses.append(est.log_se)
        iid.append(math.sqrt(np.var(vc) / (len(vc) * np.mean(vc) ** 2) + np.var(vb) / (len(vb) * np.mean(vb) ** 2)))
    return float(np.std(logs, ddof=1)), float(np.mean(ses)), float(np.mean(iid))


def test_log_se_is_calibrated_with_iid_data() -> None:
    sd, se, iid = _mc_log_ratio(0.0, 400, seed=7)
    assert se == pytest.approx(sd, rel=0.12)
    assert se == pytest.approx(iid, rel=0.08)


def test_log_se_carries_block_level_noise_that_per_request_variance_misses() -> None:
    # +-40% run-to-run level noise per block: the real spread is much wider than the i.i.d. SE says
    sd, se, iid = _mc_log_ratio(0.4, 400, seed=8)
    assert sd > 1.5 * iid
    assert se == pytest.approx(sd, rel=0.15)


def test_arm_mean_var_single_block_falls_back_to_iid_variance() -> None:
    r, v, b = arm_mean_var(np.array([30.0]), np.array([10.0]), 100.0, binary=False)
    assert (r, b) == (3.0, 1)
    assert v == pytest.approx((100.0 / 10 - 9.0) / 10)


def test_arm_mean_var_with_a_design_effect_measured_elsewhere_scales_the_iid_variance() -> None:
    # a wide spread of block totals: the blocks' own variance is far above the i.i.d. one
    x, n = np.array([10.0, 50.0, 12.0, 48.0]), np.array([100.0, 100.0, 100.0, 100.0])
    r, v_own, b = arm_mean_var(x, n, float(x.sum()), binary=True)
    v_iid = r * (1 - r) / 400
    assert v_own > 10 * v_iid
    for deff, want in ((3.0, 3.0 * v_iid), (1.0, v_iid), (0.4, v_iid)):  # floored at the i.i.d. variance
        r2, v2, b2 = arm_mean_var(x, n, float(x.sum()), binary=True, deff=deff)
        assert (r2, b2) == (r, b)
        assert v2 == pytest.approx(want)
    # ratio_of_means_at takes one per arm
    est = ratio_of_means_at(x, n, float(x.sum()), x, n, float(x.sum()), zs=(2.0,), binary=True, deffs=(2.0, 1.0))[0]
    assert est is not None
    assert est.log_se == pytest.approx(math.sqrt(3.0 * v_iid) / r)


# ---- score-type upper bound of a rate ratio ------------------------------------------------------


def _score_excess(u: float, a: float, z: float, db: float, s: float, n: float, deff: float, vb: float) -> float:
    p = math.exp(u) * db - s
    return u - a - z * math.sqrt(deff * p * (1 - p) / (n * (p + s) ** 2) + vb)


@pytest.mark.parametrize("k,n,deff,vb", [(30, 1000, 1.0, 0.0), (12, 400, 1.6, 0.002), (80, 2000, 1.0, 0.01)])
def test_rate_ratio_upper_solves_the_score_equation_and_grows_with_z(k: int, n: int, deff: float, vb: float) -> None:
    s, pb = 0.001, 0.03
    db = pb + s
    a = math.log((k / n + s) / db)
    ups = [rate_ratio_upper(a, z, db, s, n, deff, vb) for z in (1.0, 2.0, 3.0)]
    assert ups == sorted(ups) and ups[0] > math.exp(a)
    for z, u in zip((1.0, 2.0, 3.0), ups, strict=True):
        assert _score_excess(math.log(u), a, z, db, s, n, deff, vb) == pytest.approx(0.0, abs=1e-9)
    # the variance at the bound's higher rate is smaller relative to its level: tighter than Wald
    r = k / n
    wald = math.exp(a + 2.0 * math.sqrt(deff * r * (1 - r) / (n * (r + s) ** 2) + vb))
    assert ups[1] < wald


def test_rate_ratio_upper_is_a_bound_with_no_event_in_the_tested_arm() -> None:
    s, db = 0.001, 0.031
    a = math.log(s / db)  # no negative feedback yet in 300 requests
    u = rate_ratio_upper(a, 2.0, db, s, 300, 1.0, 0.0)
    # the Wald variance is zero here (bound = point estimate); the score bound is well above it
    assert u > 3 * math.exp(a)
    assert _score_excess(math.log(u), a, 2.0, db, s, 300, 1.0, 0.0) == pytest.approx(0.0, abs=1e-9)


def test_rate_ratio_upper_keeps_its_one_sided_level_at_the_limit() -> None:
    # a tested rate exactly 1.5x a known baseline rate: the bound may fall under 1.5 (a wrong pass)
    # in about 5% of draws at z = 1.645
    rng = np.random.default_rng(11)
    s, pb, n, limit = 0.001, 0.03, 1000, 1.5
    db = pb + s
    ks = rng.binomial(n, limit * db - s, 20_000)
    below = sum(rate_ratio_upper(math.log((k / n + s) / db), 1.645, db, s, n, 1.0, 0.0) < limit for k in ks.tolist())
    assert 0.035 < below / ks.size < 0.065


def test_ratio_of_means_at_takes_the_score_upper_only_when_asked() -> None:
    x, n = np.array([10.0, 12.0, 9.0, 11.0]), np.array([300.0, 300.0, 300.0, 300.0])
    xb, nb = np.array([300.0, 310.0, 290.0, 300.0]), np.array([1e4, 1e4, 1e4, 1e4])
    wald = ratio_of_means_at(x, n, float(x.sum()), xb, nb, float(xb.sum()), zs=(2.0,), smooth=0.001, binary=True)[0]
    score = ratio_of_means_at(x, n, float(x.sum()), xb, nb, float(xb.sum()), zs=(2.0,), smooth=0.001, binary=True,
                              upper_at_bound=True)[0]  # fmt: skip
    assert wald is not None and score is not None
    assert (score.ratio, score.lower, score.log_se) == (wald.ratio, wald.lower, wald.log_se)
    assert score.upper < wald.upper


# ---- proportions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("conf", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("k,n", [(0, 50), (1, 50), (7, 200), (100, 200), (199, 200), (200, 200), (3, 10_000)])
def test_wilson_matches_scipy(k: int, n: int, conf: float) -> None:
    z = float(norm.ppf(1 - (1 - conf) / 2))
    ref = binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    lo, hi = wilson(k, n, z)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


@pytest.mark.parametrize("conf", [0.9, 0.95])
def test_proportion_with_design_effect_one_is_wilson(conf: float) -> None:
    z = float(norm.ppf(1 - (1 - conf) / 2))
    pr = proportion(24.0, 800.0, z=z, deff=1.0)
    ref = binomtest(24, 800).proportion_ci(confidence_level=conf, method="wilson")
    assert pr.p == 24 / 800 and pr.n == 800
    assert (pr.lower, pr.upper) == (pytest.approx(ref.low, abs=1e-12), pytest.approx(ref.high, abs=1e-12))
    # a design effect below 1 is taken as 1: never narrower than plain Wilson
    low = proportion(24.0, 800.0, z=z, deff=0.5)
    assert (low.lower, low.upper) == (pytest.approx(ref.low, abs=1e-12), pytest.approx(ref.high, abs=1e-12))


def test_proportion_widens_with_the_design_effect() -> None:
    z = 1.96
    pr = proportion(72.0, 800.0, z=z, deff=4.0)
    plain = wilson(72, 800, z)
    assert pr.p == pytest.approx(72 / 800)
    assert pr.lower < plain[0] and pr.upper > plain[1]
    # Wilson on the effective sample size n / deff
    assert (pr.lower, pr.upper) == tuple(pytest.approx(v, abs=1e-12) for v in wilson(18, 200, z))
    assert proportion(0.0, 0.0, z=z, deff=1.0).n == 0


def test_design_effect_is_one_for_iid_and_large_for_clustered_blocks() -> None:
    rng = np.random.default_rng(1)
    n = np.full(300, 40.0)
    vals = rng.normal(10, 2, (300, 40))
    d_iid = design_effect(vals.sum(1), n, float((vals**2).sum()))
    assert 1.0 <= d_iid < 1.3
    shifted = vals + rng.normal(0, 2, (300, 1))  # a shared level per block
    d_cl = design_effect(shifted.sum(1), n, float((shifted**2).sum()))
    # theory: 1 + (m - 1) * icc with icc = 4 / (4 + 4) = 0.5, m = 40 -> about 20
    assert 14 < d_cl < 27


# ---- the confidence-sequence boundary -------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2, 0.4])
@pytest.mark.parametrize("rho", [1.0, 8.0, 50.0])
def test_cs_z_decreases_then_increases_slowly(alpha: float, rho: float) -> None:
    t = np.geomspace(0.05, 1e7, 800)
    z = np.array([cs_z(float(u), alpha, rho) for u in t])
    i = int(np.argmin(z))
    assert 0 < i < len(t) - 1
    assert np.all(np.diff(z[: i + 1]) < 0) and np.all(np.diff(z[i:]) > 0)
    # "slowly": like sqrt(log t). A hundredfold more data past the minimum widens it by under 50%
    # (a fixed half-width on the sum itself would grow tenfold)
    for u in (10 * rho, 100 * rho, 1000 * rho):
        assert cs_z(100 * u, alpha, rho) / cs_z(u, alpha, rho) < 1.5
    assert z[-1] / z[i] < 3.0


@given(st.floats(0.001, 0.49), st.floats(0.5, 100.0), st.floats(0.01, 1e6))
@settings(max_examples=50, deadline=None, derandomize=True)
def test_cs_z_is_always_wider_than_the_fixed_horizon_z(alpha: float, rho: float, t: float) -> None:
    assert cs_z(t, alpha, rho) > float(norm.ppf(1 - alpha / 2))


def test_cs_z_is_tightest_near_rho() -> None:
    for rho in (4.0, 8.0, 32.0):
        t = np.arange(1, 400, dtype=np.float64)
        z = [cs_z(float(u), 0.05, rho) for u in t]
        best = t[int(np.argmin(z))]
        assert rho / 4 <= best <= rho * 20


def _crossing_rates(paths: int, looks: int, alpha: float, rho: float, seed: int, first: int = 3
                    ) -> tuple[float, float]:  # fmt: skip
    """Null: canary and baseline blocks from the same distribution, with block-level level noise like
    LLM serving. After each new block, is ratio 1 outside the interval? Returns the share of paths
    that ever excluded it, with the confidence sequence and with a fixed-horizon z."""
    rng = np.random.default_rng(seed)
    z_fixed = float(norm.ppf(1 - alpha / 2))
    size = 40
    ever_cs = ever_fixed = 0
    for _ in range(paths):
        sizes = rng.poisson(size, (2, looks)) + 1
        level = 1 + rng.uniform(-0.15, 0.15, (2, looks))
        means = rng.gamma(sizes * 4.0, level / 4.0) / sizes  # mean of `size` gamma(4) requests
        sums = means * sizes
        sq = (means**2 + level**2 / 4.0) * sizes  # its expected sum of squares
        cs_hit = fixed_hit = False
        for t in range(first, looks + 1):
            est = ratio_of_means(sums[0, :t], sizes[0, :t].astype(float), float(sq[0, :t].sum()),
                                 sums[1, :t], sizes[1, :t].astype(float), float(sq[1, :t].sum()), z=1.0)  # fmt: skip
            assert est is not None
            dev = abs(math.log(est.ratio)) / est.log_se
            cs_hit = cs_hit or dev > cs_z(t, alpha, rho)
            fixed_hit = fixed_hit or dev > z_fixed
            if cs_hit and fixed_hit:
                break
        ever_cs += cs_hit
        ever_fixed += fixed_hit
    return ever_cs / paths, ever_fixed / paths


def test_confidence_sequence_keeps_alpha_over_all_looks_where_a_fixed_z_does_not() -> None:
    alpha, paths, looks = 0.05, 2000, 100
    cs_rate, fixed_rate = _crossing_rates(paths, looks, alpha, rho=8.0, seed=2024)
    mc_slack = 3 * math.sqrt(alpha * (1 - alpha) / paths)  # three Monte-Carlo standard errors
    assert cs_rate <= alpha + mc_slack, cs_rate
    # a 95% interval re-checked at 98 looks crosses far more often than 5% of the time
    assert fixed_rate > 2 * alpha, fixed_rate
    assert fixed_rate > cs_rate + 0.1


def _arm_mean_var_masked(x: np.ndarray, n: np.ndarray, sum_sq: float) -> tuple[float, float, int]:
    """arm_mean_var written with the selection of used blocks always applied."""
    used = (n > 0) | (x != 0)
    b, big_n = int(used.sum()), float(n.sum())
    r = float(x.sum()) / big_n
    v_iid = max(sum_sq / big_n - r * r, 0.0) / big_n
    resid = x[used] - r * n[used]
    return r, max(b / (b - 1) * float(np.dot(resid, resid)) / (big_n * big_n), v_iid), b


@pytest.mark.parametrize("empty_blocks", [0, 1, 3])
def test_blocks_without_requests_are_left_out_of_the_block_variance(empty_blocks: int) -> None:
    rng = np.random.default_rng(5)
    x, n, sq, _ = _arm(rng, 12, 2.0, block_noise=0.3)
    x, n = np.concatenate([x, np.zeros(empty_blocks)]), np.concatenate([n, np.zeros(empty_blocks)])
    assert arm_mean_var(x, n, sq, binary=False) == _arm_mean_var_masked(x, n, sq)  # bit for bit
    assert arm_mean_var(x, n, sq, binary=False)[2] == 12
    assert design_effect(x, n, sq) == pytest.approx(design_effect(x[:12], n[:12], sq), rel=1e-12)
    # a block with a total but no requests still counts as used
    assert arm_mean_var(np.append(x, 1.0), np.append(n, 0.0), sq, binary=False)[2] == 13


# ---- paired-by-block contrast ---------------------------------------------------------------------


def _paired_arms(rng: np.random.Generator, blocks: int, *, shared: float, own: float, binary: bool = False,
                 sizes: tuple[int, int] = (40, 400)) -> tuple[tuple[np.ndarray, np.ndarray, float], ...]:  # fmt: skip
    """Canary and baseline per-block sums, counts and sums of squares over the same blocks: each
    block's level is 1 + a draw common to the arms (``shared``) + the arm's own draw (``own``)."""
    common = rng.uniform(-shared, shared, blocks)
    out = []
    for size in sizes:
        n = rng.poisson(size, blocks) + 1
        level = 1.0 + common + rng.uniform(-own, own, blocks)
        if binary:
            x = rng.binomial(n, np.clip(0.03 * level, 0.0, 1.0)).astype(np.float64)
            out.append((x, n.astype(np.float64), float(x.sum())))
        else:
            vals = np.concatenate([rng.exponential(10.0 * level[i], n[i]) for i in range(blocks)])
            out.append(_blocks(vals, n))
    return tuple(out)


def _iid_floor(arms: tuple[tuple[np.ndarray, np.ndarray, float], ...], *, binary: bool, smooth: float = 0.0) -> float:
    """The two arms' i.i.d. per-request variance sum of the log ratio."""
    total = 0.0
    for x, n, sq in arms:
        big_n = float(n.sum())
        r = float(x.sum()) / big_n
        per_req = r * (1 - r) if binary else sq / big_n - r * r
        total += per_req / big_n / (r + smooth) ** 2
    return total


@pytest.mark.parametrize("binary", [False, True])
def test_paired_variance_is_smaller_when_the_arms_share_block_noise(binary: bool) -> None:
    smooth = 0.001 if binary else 0.0
    smaller = 0
    for seed in range(40):
        # binary: enough requests a block that the shared level, not the counts, is most of the noise
        sizes = (400, 4000) if binary else (40, 400)
        (c, b) = _paired_arms(np.random.default_rng(seed), 30, shared=0.25, own=0.05, binary=binary, sizes=sizes)
        off = ratio_of_means(*c, *b, z=2.0, smooth=smooth, binary=binary)
        on = ratio_of_means_at(*c, *b, zs=(2.0,), smooth=smooth, binary=binary, paired_min_blocks=3)[0]
        assert off is not None and on is not None
        assert on.ratio == off.ratio  # the point estimate is the same
        smaller += on.log_se < off.log_se
        assert on.log_se**2 >= _iid_floor((c, b), binary=binary, smooth=smooth) * (1 - 1e-12)
    assert smaller == 40


def test_paired_variance_takes_most_of_the_shared_part_out() -> None:
    # cost-like means, shared noise far above the own noise and the per-request noise: the paired
    # variance is well under half the unpaired one, and near what the own noise alone gives
    ratios = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        c, b = _paired_arms(rng, 60, shared=0.3, own=0.03, sizes=(400, 4000))
        off = ratio_of_means(*c, *b, z=2.0)
        on = ratio_of_means_at(*c, *b, zs=(2.0,), paired_min_blocks=3)[0]
        assert off is not None and on is not None
        ratios.append((on.log_se / off.log_se) ** 2)
    assert float(np.median(ratios)) < 0.3


@given(st.integers(0, 10**6), st.integers(2, 40), st.booleans())
@settings(max_examples=60, deadline=None, derandomize=True)
def test_paired_variance_with_independent_arms_is_never_below_the_iid_floor(seed: int, blocks: int, binary: bool) -> None:
    rng = np.random.default_rng(seed)
    smooth = 0.001 if binary else 0.0
    c, b = _paired_arms(rng, blocks, shared=0.0, own=0.2, binary=binary, sizes=(5, 50))
    on = ratio_of_means_at(*c, *b, zs=(1.0, 2.5), smooth=smooth, binary=binary, paired_min_blocks=3,
                           upper_at_bound=binary)  # fmt: skip
    if on[0] is None:
        return
    floor = _iid_floor((c, b), binary=binary, smooth=smooth)
    assert on[0].log_se ** 2 >= floor * (1 - 1e-12)
    # the bounds are at least as wide as the floor's, on both sides
    for est, z in zip(on, (1.0, 2.5), strict=True):
        assert est is not None
        assert math.log(est.ratio) - math.log(est.lower) >= z * math.sqrt(floor) * (1 - 1e-9)
        if not binary:
            assert math.log(est.upper) - math.log(est.ratio) >= z * math.sqrt(floor) * (1 - 1e-9)


def test_paired_log_var_floor_and_sign() -> None:
    assert paired_log_var(4.0, 3.0, 1.0, 1.0, 1.0) == 5.0
    assert paired_log_var(4.0, 3.0, 3.0, 1.0, 1.5) == 2.5  # floored at the i.i.d. sum
    assert paired_log_var(4.0, 3.0, -1.0, 1.0, 1.0) == 9.0  # a negative covariance widens it


def test_arm_cov_needs_min_blocks_common_to_both_arms() -> None:
    rng = np.random.default_rng(3)
    (xc, nc, sqc), (xb, nb, sqb) = _paired_arms(rng, 6, shared=0.3, own=0.0)
    nc[:4] = 0.0  # the canary has 2 of the 6 blocks
    xc[:4] = 0.0
    rc, rb = xc.sum() / nc.sum(), xb.sum() / nb.sum()
    assert arm_cov(xc, nc, rc, xb, nb, rb, min_blocks=3) is None
    assert arm_cov(xc, nc, rc, xb, nb, rb, min_blocks=2) is not None
    # without enough common blocks the estimate is the unpaired one, bit for bit
    on = ratio_of_means_at(xc, nc, sqc, xb, nb, sqb, zs=(2.0,), paired_min_blocks=3)
    assert on == ratio_of_means_at(xc, nc, sqc, xb, nb, sqb, zs=(2.0,))


def test_arm_cov_is_the_cluster_robust_formula() -> None:
    rng = np.random.default_rng(7)
    (xc, nc, _), (xb, nb, _) = _paired_arms(rng, 12, shared=0.2, own=0.1)
    rc, rb = xc.sum() / nc.sum(), xb.sum() / nb.sum()
    want = sum((xc[k] - rc * nc[k]) * (xb[k] - rb * nb[k]) for k in range(12)) * 12 / 11 / (nc.sum() * nb.sum())
    assert arm_cov(xc, nc, rc, xb, nb, rb, min_blocks=3) == pytest.approx(want, rel=1e-12)


@given(st.integers(0, 10**6), st.integers(1, 30), st.booleans(), st.booleans())
@settings(max_examples=60, deadline=None, derandomize=True)
def test_paired_off_is_the_unpaired_estimate_bit_for_bit(seed: int, blocks: int, binary: bool, score: bool) -> None:
    # the estimate as it was before the paired contrast existed: each arm's variance on its own
    rng = np.random.default_rng(seed)
    smooth = 0.001 if binary else 0.0
    c, b = _paired_arms(rng, blocks, shared=0.2, own=0.1, binary=binary, sizes=(5, 50))
    zs = (1.3, 2.4)
    got = ratio_of_means_at(*c, *b, zs=zs, smooth=smooth, binary=binary, upper_at_bound=score)
    rc, vc, _ = arm_mean_var(*c, binary=binary)
    rb, vb, _ = arm_mean_var(*b, binary=binary)
    dc, db = rc + smooth, rb + smooth
    if dc <= 0 or db <= 0:
        assert got == [None, None]
        return
    log_ratio = math.log(dc) - math.log(db)
    se = math.sqrt(vc / (dc * dc) + vb / (db * db))
    for est, z in zip(got, zs, strict=True):
        assert est is not None
        assert est.log_se == se
        assert est.lower == math.exp(log_ratio - z * se)
        if score and binary:
            n_c = float(c[1].sum())
            iid = rc * (1.0 - rc) / n_c
            deff_c = vc / iid if iid > 0 else 1.0
            assert est.upper == rate_ratio_upper(log_ratio, z, db, smooth, n_c, deff_c, vb / (db * db))
        else:
            assert est.upper == math.exp(log_ratio + z * se)
