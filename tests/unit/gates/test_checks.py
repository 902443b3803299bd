"""The five gates on whole windows: each limit acts monotonically (a stricter limit breaches at
least as often and passes at most as often), and the verdicts read off their own evidence."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gates import sketch
from gates import window as win
from gates.checks import evaluate_gates, feedback_gate, make_ctx, settled_feedback_deffs
from gates.decision import GateResult
from gates.engine import Engine, RolloutState
from gates.policy import RolloutPolicy
from gates.sim import Injection
from gates.stats import cs_z, design_effect

from .helpers import RID, SMALL, T0, small_policy, stream

ORDER = {"breach": 0, "insufficient": 1, "pass": 2}


def _window(seed: int, inj: Injection, seconds: int, weight: float) -> win.Window:
    # never promotes nor halts, no drift restart: the window holds the whole stream
    e = Engine(small_policy(drift_reset=False, min_samples=10**9, min_halt_samples=10**9, max_step_seconds=10**6))
    e.ingest(stream(seed, inj, seconds=seconds, weight=weight))
    return msgspec.msgpack.decode(e.snapshot(RID), type=RolloutState).window


def _status(w: win.Window, gate: str, key: str, limit: float, z: tuple[float, float], part: str | None) -> str:
    p = RolloutPolicy.model_validate({**SMALL, "gates": {gate: {key: limit}}})
    g = next(g for g in evaluate_gates(w, "canary", p, z[0], z[1], feedback=True) if g.name == gate)
    return str(g.details[part]["status"]) if part else g.status


# (gate, key, sub-verdict in details or None, grid of limits from strict to loose)
LIMITS: list[tuple[str, str, str | None, list[float]]] = [
    ("cost", "max_ratio", None, [1.02, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4, 1.6, 2.0]),
    ("errors", "max_ratio", None, [1.05, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0]),
    ("feedback", "max_ratio", None, [1.05, 1.2, 1.5, 2.0, 3.0, 5.0]),
    ("output_length", "mean_ratio", "mean", [1.02, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0]),
    ("output_length", "max_shape_distance", "shape", [0.02, 0.05, 0.08, 0.12, 0.2, 0.3]),
]


@given(
    st.integers(0, 10_000),
    st.sampled_from([Injection(), Injection(cost=1.2), Injection(refusals=2.5), Injection(feedback=2.0),
                     Injection(length_mean=1.2), Injection(length_mean=0.8), Injection(length_shape=0.4)]),
    st.sampled_from([20, 60, 150]),
    st.sampled_from([5.0, 50.0]),
)  # fmt: skip
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_a_stricter_limit_breaches_at_least_as_often_and_passes_at_most_as_often(
    seed: int, inj: Injection, seconds: int, weight: float
) -> None:
    w = _window(seed, inj, seconds, weight)
    blocks = sum(1 for b in w.blocks.values() if b.get("canary") and b.get("baseline"))
    z = (cs_z(max(blocks, 1), 0.1, 8.0), cs_z(max(blocks, 1), 0.4, 8.0))
    for gate, key, part, grid in LIMITS:
        statuses = [_status(w, gate, key, lim, z, part) for lim in grid]
        ranks = [ORDER[s] for s in statuses]
        assert ranks == sorted(ranks), (gate, key, list(zip(grid, statuses, strict=True)))


def _evidence_consistent(g: Any) -> None:
    """A ratio gate's status is read off its own bounds against its threshold."""
    if g.status == "breach":
        assert g.lower is not None and g.lower >= g.threshold
    if g.status == "pass":
        assert g.upper is not None and g.upper <= g.threshold


@pytest.mark.parametrize("inj", [Injection(), Injection(cost=1.6), Injection(refusals=5.0), Injection(feedback=4.0)])
def test_ratio_gate_verdicts_match_their_reported_bounds(inj: Injection) -> None:
    w = _window(40, inj, 240, 50.0)
    z = (cs_z(20, 0.1, 8.0), cs_z(20, 0.4, 8.0))
    gates = evaluate_gates(w, "canary", RolloutPolicy.model_validate(SMALL), z[0], z[1], feedback=True)
    assert [g.name for g in gates] == ["latency", "cost", "errors", "output_length", "feedback"]
    for g in gates:
        if g.name in ("cost", "errors", "feedback"):
            _evidence_consistent(g)
        assert g.reason.strip()
        if g.name in ("cost", "errors", "feedback", "latency") and g.status != "insufficient":
            assert f"{g.threshold:g}x" in g.reason  # the sentence names the limit it was held to
    names = {g.name: g for g in gates}
    if inj.cost > 1.5:
        assert names["cost"].status == "breach"
    if inj.refusals > 4:
        assert names["errors"].status == "breach"
    if inj.feedback > 3:
        assert names["feedback"].status == "breach"


def test_disabled_gates_are_not_evaluated_and_shadow_has_no_feedback_gate() -> None:
    w = _window(41, Injection(), 60, 50.0)
    p = RolloutPolicy.model_validate({**SMALL, "gates": {"cost": {"enabled": False}, "latency": {"enabled": False}}})
    assert [g.name for g in evaluate_gates(w, "canary", p, 3.0, 2.0, feedback=True)] == [
        "errors", "output_length", "feedback"]  # fmt: skip
    assert "feedback" not in [g.name for g in evaluate_gates(w, "canary", p, 3.0, 2.0, feedback=False)]


def test_an_empty_tested_arm_is_insufficient_on_every_gate() -> None:
    w = _window(42, Injection(), 60, 0.0)
    gates = evaluate_gates(w, "canary", RolloutPolicy.model_validate(SMALL), 3.0, 2.0, feedback=True)
    assert all(g.status == "insufficient" for g in gates)
    assert all(g.samples["canary"] == 0 and g.samples["baseline"] > 0 for g in gates)


# ---- the tail checks count the tested arm's requests in its window sketch ----------------------
# (the share of requests above a threshold is read from the window-level sketch, which must hold
# exactly the requests of the arm's blocks: what the per-block sketches add up to)


def _block_sum(w: win.Window, metric: str, arm: str = "canary") -> dict[int, int]:
    total: dict[int, int] = {}
    for arms in w.blocks.values():
        ab = arms.get(arm)
        for k, c in (getattr(ab, metric) or {}).items() if ab is not None else ():
            total[k] = total.get(k, 0) + c
    return total


def _add_canary(w: win.Window, ts: float, latency_ms: float, tokens: int, n: int = 3) -> None:
    z = np.zeros(n, np.int64)
    win.add_inference(w, "canary", np.full(n, ts), np.full(n, latency_ms), np.full(n, tokens, np.int64), z, z, z,
                      np.full(n, 1e-3), keep_block_sketches=True)  # fmt: skip


def _add_spread(w: win.Window, first: float, last: float, n: int = 50) -> None:
    """Requests of both arms spread over several blocks (and before the window's start), through
    the engine's several-arm fold."""
    codes = np.arange(n, dtype=np.int64) % 2
    z = np.zeros(n, np.int64)
    win.add_requests(w, ("baseline", "canary"), codes, np.linspace(first, last, n), np.linspace(5.0, 9_000.0, n),
                     np.arange(n, dtype=np.int64) * 37, z, z, np.full(n, 1e-3), block_sketches={"canary"})  # fmt: skip


def test_the_tested_arms_window_sketch_holds_exactly_its_blocks_requests() -> None:
    w = _window(43, Injection(latency_tail=1.3), 120, 50.0)
    closed = w.blocks[math.floor((T0 + 15.0) / w.block_seconds)]["canary"]
    last = max(w.blocks)
    changes = [
        lambda: None,
        # requests into a closed block, with keys it has and with new keys
        lambda: _add_canary(w, T0 + 15.0, sketch.value_of(next(iter(closed.lat or {}))),
                            round(sketch.value_of(next(iter(closed.len or {}))))),
        lambda: _add_canary(w, T0 + 15.0, 123_456.0, 77_777),
        lambda: _add_canary(w, last * w.block_seconds + 1.0, 5.0, 3),  # into the newest block
        lambda: _add_canary(w, w.start - 30.0, 700.0, 100),  # late: counted nowhere
        lambda: _add_spread(w, w.start - 20.0, (last + 2) * w.block_seconds),  # several blocks, some late
        lambda: _add_spread(w, last * w.block_seconds + 0.5, last * w.block_seconds + 2.0),  # one block
        lambda: win.compact(w, 4),  # merges the oldest blocks into one
        lambda: win.canonicalize(w),  # key-ordered copies of the sketches
    ]
    for change in changes:
        change()
        for metric in ("lat", "len"):
            assert _block_sum(w, metric) == getattr(w, metric)["canary"]


def test_a_drift_restart_rebuilds_the_window_sketch_from_the_kept_blocks() -> None:
    # a length drift halfway: the engine restarts the step's window at the onset
    e = Engine(small_policy(min_samples=10**9, min_halt_samples=10**9, max_step_seconds=10**6))
    e.ingest(stream(46, Injection(length_mean=1.8, onset_s=150.0), seconds=300, weight=50.0))
    st = msgspec.msgpack.decode(e.snapshot(RID), type=RolloutState)
    assert st.window.start > T0  # restarted
    for metric in ("lat", "len"):
        assert _block_sum(st.window, metric) == getattr(st.window, metric)["canary"]


# ---- regression: a bug found while writing these tests (fixed in ae21e64) -----------------------


def _tail_window() -> win.Window:
    """Baseline at a steady 1000 ms; the canary at 500 ms (half the baseline) with three slow
    requests: two at 10 s in block 3, one at 3.45 s in block 4."""
    w = win.Window(start=T0, block_seconds=10.0)
    z = np.zeros(100, np.int64)
    for b in range(17):
        ts = T0 + b * 10 + np.linspace(0.1, 9.9, 100)
        for arm in ("baseline", "canary"):
            lat = np.full(100, 1000.0 if arm == "baseline" else 500.0)
            if arm == "canary" and b == 3:
                lat[:2] = 10_000.0
            if arm == "canary" and b == 4:
                lat[0] = 3450.0
            win.add_inference(w, arm, ts, lat, np.full(100, 300, np.int64), z, z, z, np.full(100, 0.001),
                              keep_block_sketches=arm != "baseline")  # fmt: skip
    return w


def test_latency_gate_passes_at_a_looser_limit_whenever_it_passes_at_a_stricter_one() -> None:
    w = _tail_window()
    # z_promote in the range the engine uses (cs_z at 4 blocks and a 0.4 two-sided risk is ~2.6)
    for z_promote in (2.3, 2.6, 2.9):
        statuses = [_status(w, "latency", "max_ratio", lim, (3.0, z_promote), None) for lim in (3.3, 3.6, 5.0)]
        ranks = [ORDER[s] for s in statuses]
        assert ranks == sorted(ranks), (z_promote, statuses)


# ---- the feedback rate's spread is measured where the feedback is in --------------------------------


def _feedback_window(late_neg: int) -> win.Window:
    """Ten 10-s blocks of 1000 requests per arm at a steady 3% negative feedback, then two newest
    blocks whose feedback is still arriving (``late_neg`` negatives so far in each arm)."""
    w = win.Window(start=T0, block_seconds=10.0)
    for b in range(12):
        for arm in ("baseline", "canary"):
            ab = w.arm_block(int(T0 // 10) + b, arm)
            ab.n = 1000
            ab.neg_fb = 30 if b < 10 else late_neg
            ab.fb = 80 if b < 10 else late_neg
    return w


def _feedback(w: win.Window, settle: float, now: float) -> GateResult:
    p = RolloutPolicy.model_validate({**SMALL, "gates": {"feedback": {"settle_seconds": settle}}})
    return feedback_gate(make_ctx(w, "canary", p, 3.0, 2.0, now))


def test_the_newest_blocks_count_toward_the_feedback_rate_but_not_its_spread() -> None:
    w = _feedback_window(late_neg=3)
    now = T0 + 125.0  # the last block ended 5 s ago, the one before 15 s ago
    settled = _feedback(w, 20.0, now)
    every = _feedback(w, 0.0, now)
    # the same requests and feedback in the rate either way
    assert settled.ratio == every.ratio == 1.0
    assert settled.observed == every.observed == pytest.approx(306 / 12000, rel=1e-3)
    # the settled blocks are identical, so their design effect is 1: the i.i.d. bound; the shortfall
    # of the two newest blocks read as block noise widens the bound with settle_seconds 0
    c = make_ctx(w, "canary", RolloutPolicy.model_validate({**SMALL, "gates": {"feedback": {"settle_seconds": 20.0}}}),
                 3.0, 2.0, now)  # fmt: skip
    assert settled_feedback_deffs(c) == (1.0, 1.0)
    assert settled.upper is not None and every.upper is not None
    assert settled.upper < every.upper
    assert settled.lower is not None and every.lower is not None
    assert settled.lower > every.lower
    r = 306 / 12000
    # both arms alike: the i.i.d. variance of the rate over the smoothed rate squared (min_rate 0.001)
    iid_se = math.sqrt(2 * r * (1 - r) / 12000) / (r + 0.001)
    assert -math.log(settled.lower) == pytest.approx(3.0 * iid_se, rel=2e-3)  # the halt side's Wald bound


def test_which_blocks_have_settled_follows_the_evaluation_time() -> None:
    w = _feedback_window(late_neg=3)
    p = RolloutPolicy.model_validate({**SMALL, "gates": {"feedback": {"settle_seconds": 30.0}}})
    # at T0 + 125 s the blocks ending at or before T0 + 95 s have settled: nine of them
    c = make_ctx(w, "canary", p, 3.0, 2.0, T0 + 125.0)
    got = settled_feedback_deffs(c)
    cols = c.cols_b
    want = design_effect(cols["neg_fb"][:9], cols["n"][:9], float(cols["neg_fb"][:9].sum()))
    assert got is not None and got[1] == want
    # a block with a different count among the settled ones moves the design effect
    w.blocks[int(T0 // 10) + 2]["baseline"].neg_fb = 60
    c2 = make_ctx(w, "canary", p, 3.0, 2.0, T0 + 125.0)
    got2 = settled_feedback_deffs(c2)
    assert got2 is not None and got2[1] > 1.0 and got2[0] == 1.0


def test_too_few_settled_blocks_fall_back_to_the_spread_of_every_block() -> None:
    w = _feedback_window(late_neg=3)
    # only the blocks ending by T0 + 25 s have settled: two, fewer than min_blocks (3)
    p = RolloutPolicy.model_validate({**SMALL, "gates": {"feedback": {"settle_seconds": 100.0}}})
    c = make_ctx(w, "canary", p, 3.0, 2.0, T0 + 125.0)
    assert settled_feedback_deffs(c) is None
    assert _feedback(w, 100.0, T0 + 125.0) == _feedback(w, 0.0, T0 + 125.0)
    # and without an evaluation time (a window judged as a whole) every block's spread is used
    assert _feedback(w, 20.0, math.inf) == _feedback(w, 0.0, T0 + 125.0)
