"""A sparse, mergeable, relative-error quantile sketch with DDSketch's logarithmic mapping.

Why not the ``ddsketch`` package directly: it adds values one at a time in pure Python, which
costs more than the rest of the per-event work together. This sketch keys a whole numpy batch
at once and keeps integer counts only, so that aggregation is exact and order-independent (a
replay and a live worker that batch differently still hold identical state). Tests check it
against ``ddsketch`` and exact numpy quantiles.
"""

from __future__ import annotations

import itertools
import math
import operator

import numpy as np
import numpy.typing as npt

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
LN_GAMMA = math.log(GAMMA)
# Values at or below this are counted in the zero bucket (0 tokens, 0 ms).
MIN_POSITIVE = 1e-3
ZERO_KEY = -(2**20)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def keys_of(values: FloatArray) -> IntArray:
    """DDSketch's logarithmic key of each value; ZERO_KEY for values <= MIN_POSITIVE."""
    v = np.asarray(values, dtype=np.float64)
    if v.size and v.min() > MIN_POSITIVE:  # no zero bucket: the same keys without the masking
        return np.ceil(np.log(np.ascontiguousarray(v)) / LN_GAMMA).astype(np.int64)
    out = np.full(v.shape, ZERO_KEY, dtype=np.int64)
    pos = v > MIN_POSITIVE
    out[pos] = np.ceil(np.log(v[pos]) / LN_GAMMA).astype(np.int64)
    return out


def key_of(value: float) -> int:
    if value <= MIN_POSITIVE:
        return ZERO_KEY
    return math.ceil(math.log(value) / LN_GAMMA)


def value_of(key: int) -> float:
    """The representative value of a key: within RELATIVE_ACCURACY of every value in it."""
    if key == ZERO_KEY:
        return 0.0
    return 2.0 * GAMMA**key / (GAMMA + 1.0)


def add_keys(store: dict[int, int], keys: IntArray) -> None:
    add_counts(store, *key_counts(keys))


def key_counts(keys: IntArray) -> tuple[list[int], list[int]]:
    """The distinct keys in increasing order and how often each occurs, as Python ints."""
    if keys.size == 0:
        return [], []
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq.tolist(), counts.tolist()


# key_counts_by_group counts over a dense range of keys when the groups' rows of that range hold
# at most this many cells (latency and token keys of a batch span a few hundred buckets)
DENSE_CELLS = 1 << 15


def key_counts_by_group(keys: IntArray, groups: IntArray, n_groups: int) -> list[tuple[list[int], list[int]]]:
    """``key_counts(keys[groups == g])`` for every group ``g`` in ``range(n_groups)``, in one counting
    pass over the batch's range of keys instead of a sort per group."""
    if keys.size == 0:
        return [([], []) for _ in range(n_groups)]
    low = int(keys.min())
    zero = None
    real = keys
    if low == ZERO_KEY:
        zero = keys == ZERO_KEY
        real = keys[~zero]
        if real.size == 0:
            return [([ZERO_KEY], [c]) if c else ([], []) for c in np.bincount(groups, minlength=n_groups).tolist()]
        low = int(real.min()) - 1  # slot 0 is the zero bucket: it sorts below every real key
    span = int(real.max()) - low + 1
    if span * n_groups > DENSE_CELLS:
        return [key_counts(keys[groups == g]) for g in range(n_groups)]
    slots = np.where(zero, 0, keys - low) if zero is not None else keys - low
    dense = np.bincount(groups * span + slots, minlength=n_groups * span)
    cells = dense.nonzero()[0]
    row, slot = np.divmod(cells, span)
    out_keys = slot + low
    if zero is not None:
        out_keys[slot == 0] = ZERO_KEY
    ends = row.searchsorted(np.arange(1, n_groups + 1)).tolist()
    key_list, count_list = out_keys.tolist(), dense[cells].tolist()
    out = []
    begin = 0
    for end in ends:
        out.append((key_list[begin:end], count_list[begin:end]))
        begin = end
    return out


def add_counts(store: dict[int, int], keys: list[int], counts: list[int]) -> None:
    """``store[k] += c`` for each distinct key (new keys appended in order), iterated in C: this
    runs for every flushed batch, over hundreds of keys."""
    store.update(zip(keys, map(operator.add, map(store.get, keys, itertools.repeat(0)), counts), strict=True))


def merge_into(store: dict[int, int], other: dict[int, int]) -> None:
    get = store.get
    for k, c in other.items():
        store[k] = get(k, 0) + c


def total(store: dict[int, int]) -> int:
    return sum(store.values())


def _sorted(store: dict[int, int]) -> tuple[IntArray, IntArray]:
    if not store:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.fromiter(store.keys(), dtype=np.int64, count=len(store))
    counts = np.fromiter(store.values(), dtype=np.int64, count=len(store))
    order = np.argsort(keys)
    return keys[order], counts[order]


def quantile(store: dict[int, int], q: float) -> float | None:
    """The q-quantile (DDSketch's rank convention: rank = q * (n - 1))."""
    keys, counts = _sorted(store)
    n = int(counts.sum())
    if n == 0:
        return None
    return value_at_rank(keys, counts, q * (n - 1))


def value_at_rank(keys: IntArray, counts: IntArray, rank: float) -> float:
    return value_at_cum_rank(keys, counts.cumsum(), rank)


def value_at_cum_rank(keys: IntArray, cum: IntArray, rank: float) -> float:
    """value_at_rank with the cumulative counts already summed."""
    return values_at_cum_ranks(keys, cum, [rank])[0]


def values_at_cum_ranks(keys: IntArray, cum: IntArray, ranks: list[float]) -> list[float]:
    """value_at_cum_rank at each of ``ranks``, in one search."""
    top = float(cum[-1] - 1)
    found = cum.searchsorted([min(max(rank, 0.0), top) for rank in ranks], side="right")
    return list(map(value_of, keys.take(np.minimum(found, len(keys) - 1)).tolist()))


def quantiles(store: dict[int, int], qs: list[float]) -> list[float | None]:
    keys, counts = _sorted(store)
    n = int(counts.sum())
    if n == 0:
        return [None for _ in qs]
    return [value_at_rank(keys, counts, q * (n - 1)) for q in qs]


def count_above(store: dict[int, int], threshold: float) -> int:
    """How many values are above ``threshold`` (exact up to the bucket that holds it)."""
    kt = key_of(threshold)
    return sum(c for k, c in store.items() if k > kt)


def shifted(store: dict[int, int], by: int) -> dict[int, int]:
    """The sketch of every value multiplied by GAMMA**by (zeros stay zeros)."""
    if by == 0:
        return store
    return {(k if k == ZERO_KEY else k + by): c for k, c in store.items()}


def shifted_keys(keys: IntArray, by: int) -> IntArray | None:
    """``shifted`` on sorted keys: the shifted keys, still sorted and distinct, or None when the
    shift would move a key onto or below the zero bucket (then ``shifted`` merges or reorders)."""
    if by == 0 or keys.size == 0:
        return keys
    out = keys.copy()
    out[keys != ZERO_KEY] += by
    if out.size > 1 and not bool((out[1:] > out[:-1]).all()):
        return None
    return out


def cdf_distance_sorted(ka: IntArray, ca: IntArray, kb: IntArray, cb: IntArray) -> float:
    """``cdf_distance`` of two sketches given as sorted distinct keys with their counts, without the
    per-key Python loop. Both step CDFs are read at every key of either sketch from integer cumulative
    counts: integers below 2**53, so the same floats as cdf_distance's float64 running sums."""
    na, nb = int(ca.sum()), int(cb.sum())
    if na == 0 or nb == 0:
        return 0.0
    keys = np.concatenate((ka, kb))
    cum_a = np.concatenate(([0], ca.cumsum()))
    cum_b = np.concatenate(([0], cb.cumsum()))
    fa = cum_a[ka.searchsorted(keys, side="right")] / na
    fb = cum_b[kb.searchsorted(keys, side="right")] / nb
    return float(np.abs(fa - fb).max())


def cdf_distance(a: dict[int, int], b: dict[int, int]) -> float:
    """Kolmogorov-Smirnov distance between the two sketched distributions."""
    na, nb = total(a), total(b)
    if na == 0 or nb == 0:
        return 0.0
    keys = np.array(sorted(set(a) | set(b)), dtype=np.int64)
    ca = np.array([a.get(k, 0) for k in keys.tolist()], dtype=np.float64).cumsum() / na
    cb = np.array([b.get(k, 0) for k in keys.tolist()], dtype=np.float64).cumsum() / nb
    return float(np.max(np.abs(ca - cb)))
