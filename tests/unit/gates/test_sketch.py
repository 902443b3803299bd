"""The log-bucket quantile sketch against exact numpy quantiles, the ddsketch package and scipy's
two-sample KS statistic, each within the sketch's documented guarantee."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from gates import sketch

ALPHA = sketch.RELATIVE_ACCURACY
assert ALPHA == 0.01  # the guarantee these tests check: 1% relative error
QS = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]
# floating point at the bucket edges: log/ceil may put a value one ulp-ish over
TOL = ALPHA * (1 + 1e-9) + 1e-12


def _data(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "lognormal":
        return rng.lognormal(mean=6.5, sigma=0.8, size=n)  # latency-like, ms
    if kind == "uniform":
        return rng.uniform(0.01, 5000.0, size=n)
    if kind == "pareto":  # heavy tail, spanning many orders of magnitude
        return (rng.pareto(1.1, size=n) + 1) * 3.0
    if kind == "tokens_with_zeros":  # integer token counts, 10% exact zeros
        x = np.rint(rng.lognormal(5.5, 1.0, size=n))
        x[rng.uniform(size=n) < 0.1] = 0.0
        return x
    if kind == "mostly_zeros":
        x = rng.lognormal(3, 1, size=n)
        x[rng.uniform(size=n) < 0.8] = 0.0
        return x
    raise ValueError(kind)


KINDS = ["lognormal", "uniform", "pareto", "tokens_with_zeros", "mostly_zeros"]


def _store(values: np.ndarray) -> dict[int, int]:
    s: dict[int, int] = {}
    sketch.add_keys(s, sketch.keys_of(values))
    return s


def _exact_lower(values: np.ndarray, q: float) -> float:
    """The exact order statistic at DDSketch's rank convention: index floor(q * (n - 1))."""
    xs = np.sort(values)
    return float(xs[math.floor(q * (len(xs) - 1))])


def _close(est: float, exact: float) -> bool:
    if exact <= sketch.MIN_POSITIVE:
        return est == 0.0
    return abs(est - exact) <= TOL * exact


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 7, 1000, 20_000])
def test_quantiles_are_within_one_percent_of_the_exact_order_statistic(kind: str, n: int) -> None:
    x = _data(kind, n, seed=n)
    s = _store(x)
    assert sketch.total(s) == n
    for q in QS:
        exact = _exact_lower(x, q)
        # the same order statistic numpy calls method="lower"
        assert exact == float(np.quantile(x, q, method="lower"))
        est = sketch.quantile(s, q)
        assert est is not None and _close(est, exact), (kind, n, q, est, exact)
    assert sketch.quantiles(s, QS) == [sketch.quantile(s, q) for q in QS]


@given(
    st.lists(
        st.floats(min_value=0.002, max_value=1e12, allow_nan=False, allow_infinity=False) | st.just(0.0),
        min_size=1,
        max_size=300,
    ),
    st.floats(min_value=0.0, max_value=1.0),
)
@settings(max_examples=50, deadline=None, derandomize=True)
def test_quantile_guarantee_on_arbitrary_data(values: list[float], q: float) -> None:
    x = np.array(values)
    est = sketch.quantile(_store(x), q)
    assert est is not None and _close(est, _exact_lower(x, q))


def test_empty_sketch_has_no_quantile() -> None:
    assert sketch.quantile({}, 0.5) is None
    assert sketch.quantiles({}, [0.5, 0.99]) == [None, None]
    assert sketch.count_above({}, 1.0) == 0


def test_values_at_or_below_min_positive_go_to_the_zero_bucket() -> None:
    x = np.array([0.0, 1e-9, sketch.MIN_POSITIVE, 0.5])
    keys = sketch.keys_of(x)
    assert keys.tolist()[:3] == [sketch.ZERO_KEY] * 3 and keys[3] != sketch.ZERO_KEY
    assert [sketch.key_of(float(v)) for v in x] == keys.tolist()
    assert sketch.value_of(sketch.ZERO_KEY) == 0.0
    assert sketch.quantile(_store(x), 0.5) == 0.0  # absolute error at most MIN_POSITIVE


def test_every_value_is_within_alpha_of_its_keys_representative() -> None:
    x = np.geomspace(sketch.MIN_POSITIVE * 1.001, 1e9, 50_000)
    keys = sketch.keys_of(x)
    rep = np.array([sketch.value_of(int(k)) for k in keys])
    assert np.all(np.abs(rep - x) <= TOL * x)
    # the vectorised and scalar keys agree
    assert all(sketch.key_of(float(v)) == int(k) for v, k in zip(x[::997], keys[::997], strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_agrees_with_the_ddsketch_package_within_the_guarantee(kind: str) -> None:
    x = _data(kind, 5000, seed=11)
    ours = _store(x)
    theirs = DDSketch(relative_accuracy=ALPHA)
    for v in x.tolist():
        theirs.add(v)
    assert theirs.count == sketch.total(ours)
    for q in QS:
        a = sketch.quantile(ours, q)
        b = theirs.get_quantile_value(q)
        exact = _exact_lower(x, q)
        assert a is not None and b is not None
        if exact <= sketch.MIN_POSITIVE:
            assert a == 0.0 and b == pytest.approx(0.0, abs=sketch.MIN_POSITIVE)
            continue
        # both are within alpha of the same order statistic, so within ~2 alpha of each other
        assert abs(b - exact) <= TOL * exact
        assert abs(a - b) <= (2 * ALPHA + 1e-9) * exact, (q, a, b, exact)


def test_merge_equals_the_sketch_of_the_concatenation_exactly() -> None:
    a = _data("lognormal", 3000, seed=1)
    b = _data("tokens_with_zeros", 2000, seed=2)
    sa, sb = _store(a), _store(b)
    merged = dict(sa)
    sketch.merge_into(merged, sb)
    assert merged == _store(np.concatenate([a, b]))
    assert sketch.total(merged) == 5000
    for q in QS:
        assert sketch.quantile(merged, q) == sketch.quantile(_store(np.concatenate([b, a])), q)


@given(st.lists(st.integers(0, 10), min_size=0, max_size=8), st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None, derandomize=True)
def test_adding_in_any_split_gives_the_same_integer_counts(cuts: list[int], seed: int) -> None:
    x = _data("pareto", 200, seed=seed % 1000)
    bounds = sorted({min(c * 20, 200) for c in cuts} | {0, 200})
    s: dict[int, int] = {}
    for lo, hi in itertools.pairwise(bounds):
        sketch.add_keys(s, sketch.keys_of(x[lo:hi]))
    assert s == _store(x)
    assert all(isinstance(c, int) and c > 0 for c in s.values())


@pytest.mark.parametrize("kind", ["lognormal", "pareto", "tokens_with_zeros"])
def test_count_above_is_exact_up_to_the_threshold_bucket(kind: str) -> None:
    x = _data(kind, 10_000, seed=5)
    s = _store(x)
    gamma = sketch.GAMMA
    for th in [*np.quantile(x[x > 0], [0.01, 0.3, 0.5, 0.9, 0.99, 0.999]).tolist(), 1.0, 1000000000.0]:
        got = sketch.count_above(s, th)
        # counted values are above th; every value above th * gamma lies in a higher bucket
        assert int((x > th * gamma * (1 + 1e-12)).sum()) <= got <= int((x > th).sum()), (th, got)
    assert sketch.count_above(s, 0.0) == int((x > sketch.MIN_POSITIVE).sum())


def _ks_bound_slack(a: dict[int, int], b: dict[int, int]) -> float:
    """How far the sketched KS distance can sit below the exact one: within a bucket each empirical
    CDF moves by at most that bucket's mass."""
    na, nb = sketch.total(a), sketch.total(b)
    return max(max(c / na for c in a.values()), max(c / nb for c in b.values()))


@pytest.mark.parametrize(
    "make_b",
    [
        lambda rng: rng.lognormal(6.5, 0.8, 4000),  # same distribution
        lambda rng: rng.lognormal(6.6, 0.8, 3000),  # small shift
        lambda rng: rng.lognormal(6.5, 1.2, 5000),  # wider
        lambda rng: np.concatenate([rng.lognormal(6.0, 0.3, 2000), rng.lognormal(7.2, 0.3, 2000)]),  # bimodal
        lambda rng: rng.lognormal(9.0, 0.5, 1000),  # disjoint-ish
    ],
)
def test_cdf_distance_matches_scipy_ks_statistic(make_b: object) -> None:
    rng = np.random.default_rng(3)
    xa = rng.lognormal(6.5, 0.8, 4000)
    xb = make_b(rng)  # type: ignore[operator]
    sa, sb = _store(xa), _store(xb)
    d_sketch = sketch.cdf_distance(sa, sb)
    d_exact = float(ks_2samp(xa, xb).statistic)
    # the sketch evaluates both empirical CDFs exactly at the bucket edges, a subset of all points
    assert d_sketch <= d_exact + 1e-12
    assert d_exact - d_sketch <= _ks_bound_slack(sa, sb) + 1e-12
    assert d_sketch == pytest.approx(d_exact, abs=0.02)


def test_cdf_distance_edge_cases() -> None:
    x = _data("tokens_with_zeros", 1000, seed=9)
    s = _store(x)
    assert sketch.cdf_distance(s, s) == 0.0
    assert sketch.cdf_distance(s, {}) == 0.0 and sketch.cdf_distance({}, s) == 0.0
    far = _store(x + 1e6)
    assert sketch.cdf_distance(s, far) == pytest.approx(1.0)
    assert sketch.cdf_distance(s, far) == pytest.approx(float(ks_2samp(x, x + 1e6).statistic))


@pytest.mark.parametrize("kind", ["lognormal", "pareto", "tokens_with_zeros", "mostly_zeros"])
@pytest.mark.parametrize("n_groups", [1, 2, 6])
def test_key_counts_by_group_equals_key_counts_of_each_group(kind: str, n_groups: int) -> None:
    keys = sketch.keys_of(_data(kind, 500, seed=n_groups))
    groups = np.random.default_rng(7).integers(0, n_groups, keys.size)
    got = sketch.key_counts_by_group(keys, groups, n_groups)
    assert got == [sketch.key_counts(keys[groups == g]) for g in range(n_groups)]


def test_key_counts_by_group_edge_cases() -> None:
    zero = sketch.ZERO_KEY
    empty = np.zeros(0, np.int64)
    assert sketch.key_counts_by_group(empty, empty, 3) == [([], []), ([], []), ([], [])]
    # only the zero bucket, and a group with nothing in it
    keys, groups = np.array([zero, zero, zero]), np.array([0, 2, 0])
    assert sketch.key_counts_by_group(keys, groups, 3) == [([zero], [2]), ([], []), ([zero], [1])]
    # keys spread wider than the dense range: counted group by group instead
    keys = np.array([-300, zero, 5, 10**6, 5, -300], np.int64)
    groups = np.array([0, 0, 1, 1, 1, 0])
    assert sketch.key_counts_by_group(keys, groups, 2) == [([zero, -300], [1, 2]), ([5, 10**6], [2, 1])]


@pytest.mark.parametrize("kind", ["lognormal", "uniform", "pareto", "tokens_with_zeros"])
def test_keys_of_is_the_same_with_and_without_zero_values(kind: str) -> None:
    # a batch without values in the zero bucket takes a shorter path: it must give the same keys
    x = _data(kind, 2000, seed=3)
    positive = x[x > sketch.MIN_POSITIVE]
    with_zero = np.concatenate(([0.0], positive))
    assert sketch.keys_of(positive).tolist() == sketch.keys_of(with_zero)[1:].tolist()
    assert sketch.keys_of(positive[::3]).tolist() == sketch.keys_of(positive)[::3].tolist()  # strided input
