"""Window aggregation: exact integers, the same state whatever the batching, compaction that keeps
totals, late events counted."""

from __future__ import annotations

import itertools
import math
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gates import sketch
from gates import window as win

BLOCK = 10.0
START = 1000.0
ARMS = ("baseline", "canary")


def _stream(seed: int, n: int = 1500, span: float = 120.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = np.sort(START + rng.uniform(0, span, n))
    err = (rng.uniform(size=n) < 0.05).astype(np.int64)
    ref = (rng.uniform(size=n) < 0.05).astype(np.int64)
    cost = rng.lognormal(-7, 1.0, n)
    cost[rng.uniform(size=n) < 0.1] = np.nan  # unknown cost on some requests
    tok = np.rint(rng.lognormal(5.5, 0.8, n)).astype(np.int64)
    tok[rng.uniform(size=n) < 0.03] = 0
    return {
        "arm": rng.choice(np.array(ARMS), n),
        "ts": ts,
        "lat": rng.lognormal(6.5, 0.6, n),
        "tok": tok,
        "err": err,
        "ref": ref,
        "bad": np.maximum(err, ref),
        "cost": cost,
    }


def _fold(w: win.Window, s: dict[str, np.ndarray], idx: np.ndarray) -> None:
    """Fold the events at ``idx`` into ``w``, one call per arm (as the engine's flush does)."""
    for arm in ARMS:
        m = idx[s["arm"][idx] == arm]
        if m.size:
            win.add_inference(w, arm, s["ts"][m], s["lat"][m], s["tok"][m], s["bad"][m], s["err"][m], s["ref"][m],
                              s["cost"][m], keep_block_sketches=arm != "baseline")  # fmt: skip


def _canonical(obj: Any) -> Any:
    """Builtins with every mapping sorted by key: equal values give equal canonical forms."""
    if isinstance(obj, dict):
        return sorted((str(k), _canonical(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    return obj


def canonical_bytes(w: win.Window) -> bytes:
    return msgspec.msgpack.encode(_canonical(msgspec.to_builtins(w)))


def _one_pass(s: dict[str, np.ndarray]) -> win.Window:
    w = win.Window(start=START, block_seconds=BLOCK)
    _fold(w, s, np.arange(len(s["ts"])))
    return w


@given(st.integers(0, 10_000), st.lists(st.integers(1, 1499), max_size=40))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_batching_does_not_change_the_window(seed: int, cuts: list[int]) -> None:
    s = _stream(seed)
    whole = _one_pass(s)
    w = win.Window(start=START, block_seconds=BLOCK)
    bounds = sorted({0, len(s["ts"]), *cuts})
    for lo, hi in itertools.pairwise(bounds):
        _fold(w, s, np.arange(lo, hi))
    assert w == whole
    assert canonical_bytes(w) == canonical_bytes(whole)


@given(st.integers(0, 10_000))
@settings(max_examples=25, deadline=None, derandomize=True)
def test_order_within_a_batch_does_not_change_the_window(seed: int) -> None:
    s = _stream(seed)
    shuffled = np.random.default_rng(seed + 1).permutation(len(s["ts"]))
    w = win.Window(start=START, block_seconds=BLOCK)
    _fold(w, s, shuffled)
    assert w == _one_pass(s)
    assert canonical_bytes(w) == canonical_bytes(_one_pass(s))


def test_batching_does_not_change_the_encoded_bytes() -> None:
    s = _stream(1)
    w = win.Window(start=START, block_seconds=BLOCK)
    for part in np.array_split(np.arange(len(s["ts"])), 7):
        _fold(w, s, part)
    whole = _one_pass(s)
    assert w == whole  # equal values...
    win.canonicalize(w)
    win.canonicalize(whole)
    assert msgspec.msgpack.encode(w) == msgspec.msgpack.encode(whole)  # ...and equal bytes (as snapshots are)


def test_aggregates_are_exact_per_block_and_arm() -> None:
    s = _stream(3)
    w = _one_pass(s)
    blk = np.floor(s["ts"] / BLOCK).astype(np.int64)
    for b in np.unique(blk).tolist():
        for arm in ARMS:
            m = (blk == b) & (s["arm"] == arm)
            ab = w.blocks[b].get(arm)
            if not m.any():
                assert ab is None
                continue
            assert ab is not None
            assert ab.n == int(m.sum())
            assert ab.errors == int(s["err"][m].sum()) and ab.refusals == int(s["ref"][m].sum())
            # a request that is both an error and a refusal counts once as bad
            assert ab.bad == int((s["err"][m] | s["ref"][m]).sum())
            c = s["cost"][m]
            known = c[~np.isnan(c)]
            nano = [round(v / win.COST_UNIT) for v in known.tolist()]
            assert ab.cost_n == len(known)
            assert ab.cost == sum(nano)
            # the squares may be kept in a coarser unit (SQ_UNIT nano-dollars) to stay within 64 bits
            unit = getattr(win, "SQ_UNIT", 1)
            assert ab.cost_sq * unit * unit == pytest.approx(sum(v * v for v in nano), rel=2e-3)
            t = s["tok"][m].tolist()
            assert ab.tok == sum(t) and ab.tok_sq == sum(v * v for v in t)
            if arm == "baseline":
                assert ab.lat is None and ab.len is None  # per-block sketches only for the tested arm
            else:
                assert sketch.total(ab.lat) == ab.n and sketch.total(ab.len) == ab.n  # type: ignore[arg-type]
    for arm in ARMS:
        m = s["arm"] == arm
        assert sketch.total(w.lat[arm]) == int(m.sum()) == sketch.total(w.len[arm])
        # window-level sketch is the sketch of all of the arm's values
        ref: dict[int, int] = {}
        sketch.add_keys(ref, sketch.keys_of(s["lat"][m]))
        assert w.lat[arm] == ref


def _totals(w: win.Window) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for arms in w.blocks.values():
        for arm, ab in arms.items():
            t = out.setdefault(arm, dict.fromkeys(win.SCALARS, 0))
            for f in win.SCALARS:
                t[f] += getattr(ab, f)
            t["lat_sketch"] = t.get("lat_sketch", 0) + (sketch.total(ab.lat) if ab.lat else 0)
            t["len_sketch"] = t.get("len_sketch", 0) + (sketch.total(ab.len) if ab.len else 0)
    return out


@pytest.mark.parametrize("max_blocks", [4, 5, 7, 12])
def test_compaction_keeps_window_totals(max_blocks: int) -> None:
    s = _stream(4, span=200.0)
    w = _one_pass(s)
    win.add_feedback(w, "canary", s["ts"][:300], (np.arange(300) % 3 == 0).astype(np.int64))
    before = _totals(w)
    lat_before, len_before = msgspec.structs.asdict(w)["lat"], msgspec.structs.asdict(w)["len"]
    newest = max(w.blocks)
    assert len(w.blocks) > max_blocks
    win.compact(w, max_blocks)
    assert len(w.blocks) == max_blocks
    assert _totals(w) == before
    assert w.lat == lat_before and w.len == len_before
    assert max(w.blocks) == newest  # the oldest blocks are merged, recent ones stay as they were
    # merged per-block sketches hold all their requests
    for arms in w.blocks.values():
        ab = arms.get("canary")
        if ab is not None:
            assert ab.lat is not None and sketch.total(ab.lat) == ab.n


def test_compaction_below_the_limit_changes_nothing() -> None:
    w = _one_pass(_stream(5, span=30.0))
    before = canonical_bytes(w)
    win.compact(w, 10)
    assert canonical_bytes(w) == before


def test_merge_of_arm_blocks_adds_every_scalar_and_sketch() -> None:
    a = win.ArmBlock(n=3, bad=1, cost=10, cost_sq=40, tok=7, lat={1: 2, 5: 1}, len=None)
    b = win.ArmBlock(n=2, bad=0, cost=5, cost_sq=13, tok=1, lat={5: 1, 9: 1}, len={3: 2})
    a.merge(b)
    assert (a.n, a.bad, a.cost, a.cost_sq, a.tok) == (5, 1, 15, 53, 8)
    assert a.lat == {1: 2, 5: 2, 9: 1} and a.len == {3: 2}
    b.len[3] = 99  # type: ignore[index]
    assert a.len == {3: 2}  # a copy, not an alias of the other block's sketch


def test_late_events_are_counted_not_aggregated() -> None:
    w = win.Window(start=START + 25.0, block_seconds=BLOCK)  # start block = 102
    ts = np.array([START - 50, START + 5, START + 19.99, START + 20.0, START + 24.0, START + 30.0])
    n = ts.size
    z = np.zeros(n, np.int64)
    late = win.add_inference(w, "canary", ts, np.full(n, 100.0), np.full(n, 10, np.int64), z, z, z,
                             np.full(n, 0.001), keep_block_sketches=True)  # fmt: skip
    # blocks before the start block are late; events earlier in the start block itself are kept
    assert late == 3 and w.late_events == 3
    assert sorted(w.blocks) == [102, 103]
    assert w.blocks[102]["canary"].n == 2 and w.blocks[103]["canary"].n == 1
    assert sketch.total(w.lat["canary"]) == 3
    again = win.add_inference(w, "canary", ts[:1], np.ones(1), np.ones(1, np.int64), z[:1], z[:1], z[:1],
                              np.ones(1), keep_block_sketches=True)  # fmt: skip
    assert again == 1 and w.late_events == 4


def test_feedback_goes_to_the_block_of_its_request_and_late_feedback_is_counted() -> None:
    w = win.Window(start=START, block_seconds=BLOCK)
    req_ts = np.array([START + 1, START + 2, START + 15, START + 15, START - 1])
    neg = np.array([1, 0, 1, 1, 1], dtype=np.int64)
    win.add_feedback(w, "canary", req_ts, neg)
    assert (w.blocks[100]["canary"].fb, w.blocks[100]["canary"].neg_fb) == (2, 1)
    assert (w.blocks[101]["canary"].fb, w.blocks[101]["canary"].neg_fb) == (2, 2)
    assert w.late_feedback == 1
    assert w.blocks[100]["canary"].n == 0  # feedback is not a request


def test_the_baselines_own_start_takes_its_late_requests_and_feedback() -> None:
    """After a restart that kept the baseline's blocks (``baseline_start`` before ``start``), the
    baseline's late requests and feedback in those blocks still count; the canary's are late."""
    w = win.Window(start=START + 30.0, block_seconds=BLOCK, baseline_start=START)  # blocks 103 / 100
    assert w.first_block("canary") == 103 and w.first_block("baseline") == 100
    ts = np.array([START - 5, START + 5, START + 15, START + 35])
    n = ts.size
    z = np.zeros(n, np.int64)
    cols = (np.full(n, 100.0), np.full(n, 10, np.int64), z, z, z, np.full(n, 0.001))
    assert win.add_inference(w, "baseline", ts, *cols, keep_block_sketches=False) == 1  # before 100 only
    assert win.add_inference(w, "canary", ts, *cols, keep_block_sketches=True) == 3
    assert [b for b in sorted(w.blocks) if "baseline" in w.blocks[b]] == [100, 101, 103]
    assert [b for b in sorted(w.blocks) if "canary" in w.blocks[b]] == [103]
    # feedback of both arms in one batch: each arm is cut at its own first block
    req_ts = np.array([START + 1, START + 12, START + 12, START + 31])
    codes = np.array([0, 0, 1, 1], dtype=np.int64)
    win.add_arms_feedback(w, ARMS, codes, req_ts, np.ones(4, np.int64))
    assert w.blocks[100]["baseline"].fb == 1 and w.blocks[101]["baseline"].fb == 1
    assert w.blocks[103]["canary"].fb == 1 and "canary" not in w.blocks[101]
    assert w.late_feedback == 1
    # without its own start the baseline is cut where the window starts, like every arm
    plain = win.Window(start=START + 30.0, block_seconds=BLOCK)
    assert plain.first_block("baseline") == 103
    # a snapshot keeps the field; one written before it decodes with None
    blob = msgspec.msgpack.encode(w)
    assert msgspec.msgpack.decode(blob, type=win.Window).baseline_start == START
    old = msgspec.msgpack.encode({"start": 1.0, "block_seconds": 60.0})
    assert msgspec.msgpack.decode(old, type=win.Window).baseline_start is None


def test_columns_are_in_time_order_with_zeros_for_missing_arms() -> None:
    w = win.Window(start=START, block_seconds=BLOCK)
    z = np.zeros(1, np.int64)
    for t, arm in [(START + 35, "canary"), (START + 5, "baseline"), (START + 15, "canary")]:
        win.add_inference(w, arm, np.array([t]), np.ones(1), np.ones(1, np.int64), z, z, z, np.full(1, math.nan),
                          keep_block_sketches=False)  # fmt: skip
    cols = win.columns(w, "canary", ["n", "cost_n", "cost_sq"])
    assert cols["_blocks"] == [100, 101, 103]
    assert cols["n"].tolist() == [0.0, 1.0, 1.0]
    assert cols["cost_n"].tolist() == [0.0, 0.0, 0.0]  # NaN cost means unknown, not counted


@pytest.mark.parametrize("price,count", [(0.31, 100), (0.05, 4000), (5.0, 1)])
def test_cost_sum_of_squares_is_exact_for_expensive_requests(price: float, count: int) -> None:
    w = win.Window(start=960.0, block_seconds=60.0)  # one block: [960, 1020)
    z = np.zeros(count, np.int64)
    win.add_inference(w, "canary", np.linspace(961.0, 1019.0, count), np.full(count, 900.0),
                      np.full(count, 300, np.int64), z, z, z, np.full(count, price), keep_block_sketches=False)  # fmt: skip
    nano = round(price / win.COST_UNIT)
    assert list(w.blocks) == [16]
    ab = w.blocks[16]["canary"]
    assert ab.cost == count * nano
    unit = getattr(win, "SQ_UNIT", 1)  # squares may be kept in a coarser unit
    assert ab.cost_sq * unit * unit == pytest.approx(count * nano * nano, rel=1e-9)
    assert -(2**63) <= ab.cost_sq < 2**64  # what msgpack can encode


ARM_NAMES = ("baseline", "canary", "shadow")


def _requests(seed: int, n: int, start: float, span: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cost = rng.lognormal(-7, 1.0, n)
    cost[rng.uniform(size=n) < 0.1] = np.nan
    tok = np.rint(rng.lognormal(5.5, 0.8, n)).astype(np.int64)
    tok[rng.uniform(size=n) < 0.03] = 0
    return {
        "codes": rng.integers(0, 3, n), "ts": np.sort(start + rng.uniform(0, span, n)),
        "lat": rng.lognormal(6.5, 0.6, n), "tok": tok, "err": (rng.uniform(size=n) < 0.05).astype(np.int64),
        "ref": (rng.uniform(size=n) < 0.05).astype(np.int64), "cost": cost,
    }  # fmt: skip


def _per_arm(w: win.Window, r: dict[str, np.ndarray]) -> list[tuple[int, int, int]]:
    """What add_requests does, through add_inference one arm at a time."""
    out = []
    for code, arm in enumerate(ARM_NAMES):
        m = r["codes"] == code
        if not m.any():
            out.append((0, 0, 0))
            continue
        win.add_inference(w, arm, r["ts"][m], r["lat"][m], r["tok"][m], np.maximum(r["err"][m], r["ref"][m]),
                          r["err"][m], r["ref"][m], r["cost"][m], keep_block_sketches=arm != "baseline")  # fmt: skip
        len_k = int(np.maximum(sketch.keys_of(r["tok"][m].astype(np.float64)), win.LOG_KEY_FLOOR).sum())
        out.append((int(m.sum()), len_k, int(r["ref"][m].sum())))
    return out


@pytest.mark.parametrize(
    "start,span,n",
    [
        (START + 1, 8.0, 300),  # one block
        (START + 1, 45.0, 300),  # several blocks
        (START - 15, 30.0, 300),  # some late
        (START - 30, 10.0, 50),  # all late
        (START + 1, 8.0, 1),
    ],
)
def test_add_requests_equals_add_inference_on_each_arm(start: float, span: float, n: int) -> None:
    r = _requests(int(span) + n, n, start, span)
    w, ref_w = win.Window(start=START, block_seconds=BLOCK), win.Window(start=START, block_seconds=BLOCK)
    totals = win.add_requests(w, ARM_NAMES, r["codes"], r["ts"], r["lat"], r["tok"], r["err"], r["ref"], r["cost"],
                              block_sketches={"canary", "shadow"})  # fmt: skip
    assert totals == _per_arm(ref_w, r)
    assert w == ref_w
    win.canonicalize(w)
    win.canonicalize(ref_w)
    assert msgspec.msgpack.encode(w) == msgspec.msgpack.encode(ref_w)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # 2e10 USD: beyond int64 nano-dollars
@pytest.mark.parametrize("price", [0.002, 5.0, 5e4, 2e10])
def test_add_requests_squares_of_large_costs_match_add_inference(price: float) -> None:
    r = _requests(1, 200, START + 1, 8.0)
    r["cost"] = np.full(200, price)
    w, ref_w = win.Window(start=START, block_seconds=BLOCK), win.Window(start=START, block_seconds=BLOCK)
    win.add_requests(w, ARM_NAMES, r["codes"], r["ts"], r["lat"], r["tok"], r["err"], r["ref"], r["cost"],
                     block_sketches={"canary", "shadow"})  # fmt: skip
    _per_arm(ref_w, r)
    assert w == ref_w


@pytest.mark.parametrize("start,span", [(START + 1, 8.0), (START + 1, 45.0), (START - 15, 30.0), (START, 1e6)])
def test_add_arms_feedback_equals_add_feedback_on_each_arm(start: float, span: float) -> None:
    rng = np.random.default_rng(3)
    n = 400
    codes, req_ts = rng.integers(0, 3, n), start + rng.uniform(0, span, n)
    neg = (rng.uniform(size=n) < 0.3).astype(np.int64)
    w, ref_w = win.Window(start=START, block_seconds=BLOCK), win.Window(start=START, block_seconds=BLOCK)
    win.add_arms_feedback(w, ARM_NAMES, codes, req_ts, neg)
    for code, arm in enumerate(ARM_NAMES):
        m = codes == code
        blocks = np.floor(req_ts[m] / BLOCK).astype(np.int64)
        ref_w.late_feedback += int((blocks < ref_w.start_block).sum())
        for b in np.unique(blocks[blocks >= ref_w.start_block]).tolist():
            ab = ref_w.arm_block(b, arm)
            ab.fb += int((blocks == b).sum())
            ab.neg_fb += int(neg[m][blocks == b].sum())
    assert w == ref_w
