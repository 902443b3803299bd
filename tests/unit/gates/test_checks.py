"""The five gates on whole windows: each limit acts monotonically (a stricter limit breaches at
least as often and passes at most as often), and the verdicts read off their own evidence."""

from __future__ import annotations

import copy
import math
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gates import sketch
from gates import window as win
from gates.checks import BlockSketches, evaluate_gates
from gates.engine import Engine, RolloutState
from gates.policy import RolloutPolicy
from gates.sim import Injection
from gates.stats import cs_z

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


# ---- per-block sketch arrays kept between evaluations ----------------------------------------


def _fresh_arrays(w: win.Window, metric: str) -> tuple[list[list[int]], list[list[int]]]:
    rows = [w.blocks[b].get("canary", win.ArmBlock()) for b in sorted(w.blocks)]
    stores = [getattr(r, metric) or {} for r in rows]
    return [list(s) for s in stores if s], [list(s.values()) for s in stores if s]


def _cached_arrays(cache: BlockSketches, w: win.Window, metric: str) -> tuple[list[list[int]], list[list[int]]]:
    order = sorted(w.blocks)
    rows = [w.blocks[b].get("canary", win.ArmBlock()) for b in order]
    keys, counts, sizes = cache.arrays(metric, order, rows)
    ends = np.cumsum(sizes).tolist()
    begins = [e - n for e, n in zip(ends, sizes, strict=True)]
    return ([keys[b:e].tolist() for b, e, n in zip(begins, ends, sizes, strict=True) if n],
            [counts[b:e].tolist() for b, e, n in zip(begins, ends, sizes, strict=True) if n])  # fmt: skip


def _add_canary(w: win.Window, ts: float, latency_ms: float, tokens: int, n: int = 3) -> None:
    z = np.zeros(n, np.int64)
    win.add_inference(w, "canary", np.full(n, ts), np.full(n, latency_ms), np.full(n, tokens, np.int64), z, z, z,
                      np.full(n, 1e-3), keep_block_sketches=True)  # fmt: skip


def test_kept_block_sketch_arrays_follow_every_change_of_the_window() -> None:
    w = _window(43, Injection(latency_tail=1.3), 120, 50.0)
    cache = BlockSketches()
    for metric in ("lat", "len"):
        assert _cached_arrays(cache, w, metric) == _fresh_arrays(w, metric)
    closed = w.blocks[math.floor((T0 + 15.0) / w.block_seconds)]["canary"]
    last = max(w.blocks)
    changes = [
        # requests into a closed block, with keys it has (no new key: same sizes) and with new keys
        lambda: _add_canary(w, T0 + 15.0, sketch.value_of(next(iter(closed.lat or {}))),
                            round(sketch.value_of(next(iter(closed.len or {}))))),
        lambda: _add_canary(w, T0 + 15.0, 123_456.0, 77_777),
        lambda: _add_canary(w, last * w.block_seconds + 1.0, 5.0, 3),  # into the newest block
        lambda: win.compact(w, 4),  # merges the oldest blocks into one
        lambda: win.canonicalize(w),  # key-ordered copies of the sketches
    ]
    for change in changes:
        change()
        for metric in ("lat", "len"):
            assert _cached_arrays(cache, w, metric) == _fresh_arrays(w, metric)
    # another window (a restored or new step's) reuses nothing stale, even with equal block numbers
    other = _window(44, Injection(), 120, 50.0)
    for metric in ("lat", "len"):
        assert _cached_arrays(cache, other, metric) == _fresh_arrays(other, metric)


def test_evaluations_with_kept_block_sketches_equal_fresh_ones_as_the_window_grows() -> None:
    p = RolloutPolicy.model_validate(SMALL)
    full = _window(45, Injection(latency_tail=1.5, length_mean=1.2), 150, 50.0)
    cache = BlockSketches()
    w = win.Window(start=full.start, block_seconds=full.block_seconds)
    for blk in sorted(full.blocks):
        w.blocks[blk] = copy.deepcopy(full.blocks[blk])
        w.lat, w.len = full.lat, full.len
        z = (cs_z(len(w.blocks), 0.1, 8.0), cs_z(len(w.blocks), 0.4, 8.0))
        kept = evaluate_gates(w, "canary", p, *z, feedback=True, block_sketches=cache)
        assert kept == evaluate_gates(w, "canary", p, *z, feedback=True)
        # a change inside the newest block after it was read: the next evaluation sees it
        _add_canary(w, blk * w.block_seconds + 0.5, 50_000.0, 4_000, n=40)
        kept = evaluate_gates(w, "canary", p, *z, feedback=True, block_sketches=cache)
        assert kept == evaluate_gates(w, "canary", p, *z, feedback=True)


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
