"""The comparison window of one step: per event-time block and arm, integer aggregates.

Every aggregate is an integer (counts, token sums, cost in nano-dollars, sketch keys), so the
state is the same whatever the batching: a replay and a live worker agree bit for bit. Blocks
are the unit of the batch-means variance: block-to-block spread carries the run-to-run
non-determinism that per-request variance misses.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Container, Iterable, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from gates import sketch

COST_UNIT = 1e-9  # cost is kept in integer nano-dollars
LOG_KEY_FLOOR = sketch.key_of(sketch.MIN_POSITIVE * 1.0001)

SCALARS = (
    "n", "bad", "errors", "refusals", "cost_n", "cost", "cost_sq", "tok", "tok_sq",
    "lat_k", "lat_k_sq", "len_k", "len_k_sq", "neg_fb", "fb",
)  # fmt: skip


class ArmBlock(msgspec.Struct):
    n: int = 0
    bad: int = 0  # error or refusal (a request that is both counts once)
    errors: int = 0
    refusals: int = 0
    cost_n: int = 0  # requests with a known cost
    cost: int = 0
    cost_sq: int = 0  # sum of squared costs in micro-dollars (nano-dollar squares overflow 64 bits)
    tok: int = 0
    tok_sq: int = 0
    lat_k: int = 0  # sum of log-latency keys (for the design effect of latency)
    lat_k_sq: int = 0
    len_k: int = 0
    len_k_sq: int = 0
    neg_fb: int = 0  # negative feedback attributed to requests of this block
    fb: int = 0
    lat: dict[int, int] | None = None  # per-block sketches, kept for the tested arm only
    len: dict[int, int] | None = None

    def add_requests(
        self, n: int, bad: int, errors: int, refusals: int, cost_n: int, cost: int, cost_sq: int, tok: int,
        tok_sq: int, lat_k: int, lat_k_sq: int, len_k: int, len_k_sq: int,
    ) -> None:
        """Add the totals of ``n`` requests folded into this block (every field but the feedback's)."""
        self.n += n
        self.bad += bad
        self.errors += errors
        self.refusals += refusals
        self.cost_n += cost_n
        self.cost += cost
        self.cost_sq += cost_sq
        self.tok += tok
        self.tok_sq += tok_sq
        self.lat_k += lat_k
        self.lat_k_sq += lat_k_sq
        self.len_k += len_k
        self.len_k_sq += len_k_sq

    def merge(self, other: ArmBlock) -> None:
        for f in SCALARS:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for f in ("lat", "len"):
            o = getattr(other, f)
            if o is not None:
                mine = getattr(self, f)
                if mine is None:
                    setattr(self, f, dict(o))
                else:
                    sketch.merge_into(mine, o)


class Window(msgspec.Struct):
    start: float  # event time the window opened (step start, or a drift onset)
    block_seconds: float
    blocks: dict[int, dict[str, ArmBlock]] = {}
    lat: dict[str, dict[int, int]] = {}  # window-level sketches per arm
    len: dict[str, dict[int, int]] = {}
    late_events: int = 0
    late_feedback: int = 0
    # where the baseline's blocks begin when that is earlier than ``start``: a restart at an onset
    # of the tested arm keeps the baseline's blocks before it (the baseline did not change there).
    # None: at ``start``, like every arm's
    baseline_start: float | None = None

    @property
    def start_block(self) -> int:
        return int(self.start // self.block_seconds)

    def first_block(self, arm: str) -> int:
        """The first block that counts for ``arm``: the window's, or the baseline's own start."""
        if arm == "baseline" and self.baseline_start is not None:
            return min(int(self.baseline_start // self.block_seconds), self.start_block)
        return self.start_block

    def arm_block(self, block: int, arm: str) -> ArmBlock:
        b = self.blocks.get(block)
        if b is None:
            b = self.blocks[block] = {}
        ab = b.get(arm)
        if ab is None:
            ab = b[arm] = ArmBlock()
        return ab


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _isum(a: IntArray) -> int:
    return int(a.sum()) if a.size else 0


SQ_UNIT = 1_000  # nano-dollars per micro-dollar, the unit of cost_sq


def _nano_costs(cost: FloatArray) -> tuple[npt.NDArray[np.bool_], IntArray]:
    """(which requests have a cost, costs in nano-dollars with 0 where unknown); ``cost`` is NaN
    where unknown."""
    has_cost = ~np.isnan(cost)
    if has_cost.all():
        return has_cost, np.rint(cost / COST_UNIT).astype(np.int64)
    cost_i = np.zeros(cost.shape, np.int64)
    cost_i[has_cost] = np.rint(cost[has_cost] / COST_UNIT).astype(np.int64)
    return has_cost, cost_i


def _micro(cost_nano: IntArray) -> IntArray:
    return (cost_nano + SQ_UNIT // 2) // SQ_UNIT


def _squares_fit_int64(micro: IntArray) -> bool:
    """Whether no sum of squares of ``micro`` (non-empty) can overflow int64."""
    top = int(micro.max())
    return int(micro.min()) >= 0 and top < 3_000_000_000 and micro.size * top * top < 2**62


def _square_sum_micro(cost_nano: IntArray) -> int:
    """Exact sum of squared costs in micro-dollars, as a Python int: a $1 call adds 1e12, so a block
    holds millions of dollar-sized calls within the 64 bits that msgpack encodes."""
    if cost_nano.size == 0:
        return 0
    micro = _micro(cost_nano)
    if _squares_fit_int64(micro):
        return int((micro * micro).sum())
    return sum(m * m for m in micro.tolist())


def add_inference(
    w: Window,
    arm: str,
    ts: FloatArray,
    latency_ms: FloatArray,
    tokens: IntArray,
    bad: IntArray,
    errors: IntArray,
    refusals: IntArray,
    cost: FloatArray,  # NaN where unknown
    *,
    keep_block_sketches: bool,
) -> int:
    """Fold a batch of one arm's requests into the window; returns how many were too late."""
    blocks = np.floor(ts / w.block_seconds).astype(np.int64)
    keep = blocks >= w.first_block(arm)
    late = int((~keep).sum())
    if late:
        w.late_events += late
        blocks, latency_ms, tokens = blocks[keep], latency_ms[keep], tokens[keep]
        bad, errors, refusals, cost = bad[keep], errors[keep], refusals[keep], cost[keep]
    if blocks.size == 0:
        return late
    lat_keys = sketch.keys_of(latency_ms)
    len_keys = sketch.keys_of(tokens.astype(np.float64))
    lk = np.maximum(lat_keys, LOG_KEY_FLOOR)
    nk = np.maximum(len_keys, LOG_KEY_FLOOR)
    has_cost, cost_i = _nano_costs(cost)
    lat_counts = sketch.key_counts(lat_keys)
    len_counts = sketch.key_counts(len_keys)
    sketch.add_counts(w.lat.setdefault(arm, {}), *lat_counts)
    sketch.add_counts(w.len.setdefault(arm, {}), *len_counts)
    first, last = int(blocks.min()), int(blocks.max())
    if first == last:
        # The common case: the engine flushes at every evaluation tick, which is shorter than a
        # block, so the batch is one block: no per-block masks, and the block's sketches get the
        # key counts already taken for the window's.
        ab = w.arm_block(first, arm)
        _add_block(ab, bad, errors, refusals, cost_i[has_cost], tokens, lk, nk)
        if keep_block_sketches:
            sketch.add_counts(_block_sketch(ab, "lat"), *lat_counts)
            sketch.add_counts(_block_sketch(ab, "len"), *len_counts)
        return late
    uniq, inv = np.unique(blocks, return_inverse=True)
    for j, blk in enumerate(uniq.tolist()):
        m = inv == j
        ab = w.arm_block(blk, arm)
        _add_block(ab, bad[m], errors[m], refusals[m], cost_i[m & has_cost], tokens[m], lk[m], nk[m])
        if keep_block_sketches:
            sketch.add_keys(_block_sketch(ab, "lat"), lat_keys[m])
            sketch.add_keys(_block_sketch(ab, "len"), len_keys[m])
    return late


def _single_block(w: Window, ts: FloatArray) -> int | None:
    """The block of every time in ``ts`` when they all fall in one block at or after the window's
    start, else None. Block numbers grow with time, so the first and last times tell: each is
    ``floor(ts / block_seconds)`` in the same float arithmetic as the per-event blocks."""
    first, last = float(ts.min()) / w.block_seconds, float(ts.max()) / w.block_seconds
    if not (math.isfinite(first) and math.isfinite(last)):
        return None
    block = math.floor(first)
    return block if block == math.floor(last) and block >= w.start_block else None


def add_requests(
    w: Window,
    arms: Sequence[str],
    codes: IntArray,
    ts: FloatArray,
    latency_ms: FloatArray,
    tokens: IntArray,
    errors: IntArray,
    refusals: IntArray,
    cost: FloatArray,  # NaN where unknown
    *,
    block_sketches: Container[str],
) -> list[tuple[int, int, int]]:
    """Fold a batch of requests of several arms (``codes`` index ``arms``) into the window: what
    ``add_inference`` on each arm's requests does, with ``block_sketches`` the arms that keep
    per-block sketches. Returns per arm (requests, sum of floored log-length keys, refusals), late
    requests included: what the drift detectors count."""
    n, n_arms = int(ts.size), len(arms)
    per_arm = np.bincount(codes, minlength=n_arms).tolist()
    block = _single_block(w, ts) if n else None
    if block is None:
        return _add_requests_per_arm(w, arms, codes, per_arm, ts, latency_ms, tokens, errors, refusals, cost,
                                     block_sketches=block_sketches)  # fmt: skip
    # The common case: the engine flushes at every evaluation tick, which is shorter than a block,
    # so the batch is one block and none of it is late. Every arm's sums come from one integer
    # product and its key counts from one counting pass: int64 sums are exact (and wrap alike), so
    # the totals are those of add_inference.
    keys = sketch.keys_of(np.concatenate((latency_ms, tokens.astype(np.float64))))
    floored = np.maximum(keys, LOG_KEY_FLOOR)
    lk, nk = floored[:n], floored[n:]
    has_cost, cost_i = _nano_costs(cost)
    micro = _micro(cost_i)
    # the squares in int64 when no sum of them can overflow; _square_sum_micro per arm otherwise
    squares_fit = _squares_fit_int64(micro)
    table = np.array((
        np.maximum(errors, refusals), errors, refusals, tokens, tokens * tokens, lk, lk * lk, nk, nk * nk,
        has_cost, cost_i, micro * micro if squares_fit else np.zeros_like(micro),
    ))  # fmt: skip
    one_hot = codes == np.arange(n_arms)[:, None]
    sums = np.einsum("an,fn->af", one_hot, table).tolist()  # exact int64 sums; cheaper than a matmul here
    counts = sketch.key_counts_by_group(keys, np.concatenate((codes, codes + n_arms)), 2 * n_arms)
    out = []
    for code, (arm, k) in enumerate(zip(arms, per_arm, strict=True)):
        if not k:
            out.append((0, 0, 0))
            continue
        lat_counts, len_counts = counts[code], counts[n_arms + code]
        sketch.add_counts(w.lat.setdefault(arm, {}), *lat_counts)
        sketch.add_counts(w.len.setdefault(arm, {}), *len_counts)
        ab = w.arm_block(block, arm)
        bad, n_err, n_ref, tok, tok_sq, lat, lat_sq, ln, ln_sq, cost_n, cost_sum, cost_sq = sums[code]
        if not squares_fit:
            cost_sq = _square_sum_micro(cost_i[has_cost & one_hot[code]])
        ab.add_requests(k, bad, n_err, n_ref, cost_n, cost_sum, cost_sq, tok, tok_sq, lat, lat_sq, ln, ln_sq)
        if arm in block_sketches:
            sketch.add_counts(_block_sketch(ab, "lat"), *lat_counts)
            sketch.add_counts(_block_sketch(ab, "len"), *len_counts)
        out.append((k, ln, n_ref))
    return out


def _add_requests_per_arm(
    w: Window, arms: Sequence[str], codes: IntArray, per_arm: list[int], ts: FloatArray, latency_ms: FloatArray,
    tokens: IntArray, errors: IntArray, refusals: IntArray, cost: FloatArray, *, block_sketches: Container[str],
) -> list[tuple[int, int, int]]:
    """add_requests through add_inference, one arm at a time (a batch across blocks, or late requests)."""
    out = []
    for code, (arm, k) in enumerate(zip(arms, per_arm, strict=True)):
        if not k:
            out.append((0, 0, 0))
            continue
        m = codes == code
        tok, err, ref = tokens[m], errors[m], refusals[m]
        add_inference(w, arm, ts[m], latency_ms[m], tok, np.maximum(err, ref), err, ref, cost[m],
                      keep_block_sketches=arm in block_sketches)  # fmt: skip
        len_k = int(np.maximum(sketch.keys_of(tok.astype(np.float64)), LOG_KEY_FLOOR).sum())
        out.append((k, len_k, int(ref.sum())))
    return out


def _block_sketch(ab: ArmBlock, which: str) -> dict[int, int]:
    store: dict[int, int] | None = getattr(ab, which)
    if store is None:
        store = {}
        setattr(ab, which, store)
    return store


def _add_block(
    ab: ArmBlock, bad: IntArray, errors: IntArray, refusals: IntArray, cost: IntArray, tokens: IntArray,
    lat_k: IntArray, len_k: IntArray,
) -> None:
    """Fold one block's requests (``cost``: the known ones only, in nano-dollars) into its aggregates."""
    # one integer reduction over the stacked columns instead of one per column: int64 sums are
    # exact (and wrap alike), so the totals are the same
    sums = np.stack((bad, errors, refusals, tokens, tokens * tokens, lat_k, lat_k * lat_k, len_k, len_k * len_k))
    n_bad, n_err, n_ref, tok, tok_sq, lat, lat_sq, ln, ln_sq = sums.sum(axis=1).tolist()
    ab.add_requests(int(tokens.size), n_bad, n_err, n_ref, int(cost.size), _isum(cost), _square_sum_micro(cost), tok,
                    tok_sq, lat, lat_sq, ln, ln_sq)  # fmt: skip


def add_feedback(w: Window, arm: str, request_ts: FloatArray, negative: IntArray) -> None:
    add_arms_feedback(w, (arm,), np.zeros(request_ts.shape, np.int64), request_ts, negative)


# the dense per-(arm, block) counting of a feedback batch holds at most this many cells; wider
# (feedback about requests far apart in time) counts the distinct cells with a sort instead
DENSE_FEEDBACK_CELLS = 4096


def add_arms_feedback(w: Window, arms: Sequence[str], codes: IntArray, request_ts: FloatArray, negative: IntArray) -> None:
    """Fold a batch of feedback on several arms (``codes`` index ``arms``) into the blocks of its requests."""
    if request_ts.size == 0:
        return
    first = _single_block(w, request_ts)
    if first is not None:  # the common case: every request in one block, none late
        _add_feedback_cells(w, arms, codes, negative, first, 1)
        return
    blocks = np.floor(request_ts / w.block_seconds).astype(np.int64)
    first = int(blocks.min())
    if first < w.start_block:
        # each arm's own first block (the baseline's may be earlier: see Window.baseline_start)
        firsts = np.array([w.first_block(a) for a in arms], dtype=np.int64)
        keep = blocks >= firsts[codes]
        w.late_feedback += int(blocks.size - np.count_nonzero(keep))
        blocks, codes, negative = blocks[keep], codes[keep], negative[keep]
        if blocks.size == 0:
            return
        first = int(blocks.min())
    span = int(blocks.max()) - first + 1
    _add_feedback_cells(w, arms, codes * span + (blocks - first), negative, first, span)


def _add_feedback_cells(
    w: Window, arms: Sequence[str], cell: IntArray, negative: IntArray, first: int, span: int
) -> None:
    """Count feedback by cell (``arm code * span + block - first``) into the arm blocks."""
    if span * len(arms) <= DENSE_FEEDBACK_CELLS:
        fb = np.bincount(cell, minlength=span * len(arms))
        cells = fb.nonzero()[0]
        fb, neg = fb[cells], np.bincount(cell, weights=negative, minlength=span * len(arms))[cells]
    else:
        cells, inv = np.unique(cell, return_inverse=True)
        fb, neg = np.bincount(inv), np.bincount(inv, weights=negative)
    for c, n_fb, n_neg in zip(cells.tolist(), fb.tolist(), neg.astype(np.int64).tolist(), strict=True):
        code, offset = divmod(c, span)
        ab = w.arm_block(first + offset, arms[code])
        ab.fb += n_fb
        ab.neg_fb += n_neg


def compact(w: Window, max_blocks: int) -> None:
    """Bound memory: merge the two oldest blocks until at most ``max_blocks`` remain.

    Window totals are unchanged; the batch-means variance just sees fewer, larger blocks."""
    while len(w.blocks) > max_blocks:
        first, second = sorted(w.blocks)[:2]
        older = w.blocks.pop(first)
        newer = w.blocks[second]
        for arm, ab in older.items():
            if arm in newer:
                ab.merge(newer[arm])
            newer[arm] = ab


def columns(w: Window, arm: str, fields: Iterable[str]) -> dict[str, Any]:
    """Per-block arrays of ``fields`` for one arm, over the window's blocks in time order; with the
    blocks (``_blocks``), their arm blocks (``_rows``) and each field's total (``_sums``)."""
    order = sorted(w.blocks)
    empty = ArmBlock()
    rows = [w.blocks[b].get(arm, empty) for b in order]
    out: dict[str, Any] = {}
    fields = tuple(fields)
    plain = tuple(f for f in fields if f != "cost_sq")
    if plain:
        # every row's fields in one C-level getter call and one conversion (this runs at every
        # evaluation tick): the same float64 values as one np.array per field
        table = np.array(list(map(operator.attrgetter(*plain), rows)), dtype=np.float64)
        table = np.ascontiguousarray(table.reshape(len(rows), len(plain)).T)
        out.update(zip(plain, table, strict=True))
        # every column's total in one reduction: the integer counts sum exactly in float64, so
        # these equal each column's own sum
        sums = dict(zip(plain, table.sum(axis=1).tolist(), strict=True))
    else:
        sums = {}
    if "cost_sq" in fields:
        out["cost_sq"] = np.array([float(r.cost_sq) for r in rows], dtype=np.float64)
        sums["cost_sq"] = float(out["cost_sq"].sum())
    out["_blocks"] = order
    out["_rows"] = rows
    out["_sums"] = sums
    return out


def dense(cols: dict[str, Any], n_field: str = "n") -> bool:
    """Whether every block of ``columns`` output has a positive ``n_field``: what
    ``n.size and n.min() > 0`` says of that column, read from the arm blocks without a reduction."""
    rows = cols["_rows"]
    return bool(rows) and all(getattr(r, n_field) > 0 for r in rows)


def _sorted_dict(d: dict[int, int]) -> dict[int, int]:
    """``d`` in key order: ``d`` itself when it already is (every snapshot canonicalises every
    sketch, and most are untouched since the last one: checking the keys is cheaper than sorting
    the items), else a sorted copy."""
    keys = list(d)
    ordered = sorted(keys)
    if keys == ordered:
        return d
    return {k: d[k] for k in ordered}


def canonicalize(w: Window) -> None:
    """Put every mapping of the window in key order, so that equal windows encode to equal bytes
    (sketches otherwise keep the order in which batches happened to add their keys)."""
    w.blocks = {b: {a: w.blocks[b][a] for a in sorted(w.blocks[b])} for b in sorted(w.blocks)}
    for arms in w.blocks.values():
        for ab in arms.values():
            if ab.lat is not None:
                ab.lat = _sorted_dict(ab.lat)
            if ab.len is not None:
                ab.len = _sorted_dict(ab.len)
    w.lat = {a: _sorted_dict(w.lat[a]) for a in sorted(w.lat)}
    w.len = {a: _sorted_dict(w.len[a]) for a in sorted(w.len)}
