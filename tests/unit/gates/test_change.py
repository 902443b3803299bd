"""The onset scan on the canary-minus-baseline contrast (gates/change.py)."""

from __future__ import annotations

import math

import numpy as np

from gates import change
from gates.engine import Engine
from gates.sim import SimConfig, parse_injections, run
from gates.window import ArmBlock, Window

BS = 60.0


def _window(canary_bad: list[int], baseline_bad: list[int], n_c: int = 120, n_b: int = 1080) -> Window:
    w = Window(start=0.0, block_seconds=BS)
    for i, (kc, kb) in enumerate(zip(canary_bad, baseline_bad, strict=True)):
        w.blocks[i] = {"canary": ArmBlock(n=n_c, bad=kc), "baseline": ArmBlock(n=n_b, bad=kb)}
    return w


def test_a_jump_in_the_canary_alone_is_found_at_its_block() -> None:
    rng = np.random.default_rng(1)
    before, after = 12, 5
    kc = list(rng.binomial(120, 0.03, before)) + list(rng.binomial(120, 0.12, after))
    kb = list(rng.binomial(1080, 0.03, before + after))
    got = change.scan(_window(kc, kb), "canary", before + after, threshold=4.5, min_after=2)
    assert got is not None and got.signal == "errors"
    assert abs(got.block - before) <= 1 and got.z > 4.5


def test_a_jump_in_both_arms_is_not_a_canary_change() -> None:
    rng = np.random.default_rng(2)
    kc = list(rng.binomial(120, 0.03, 12)) + list(rng.binomial(120, 0.12, 5))
    kb = list(rng.binomial(1080, 0.03, 12)) + list(rng.binomial(1080, 0.12, 5))
    assert change.scan(_window(kc, kb), "canary", 17, threshold=4.5, min_after=2) is None


def test_a_change_for_the_better_is_not_reported() -> None:
    rng = np.random.default_rng(3)
    kc = list(rng.binomial(120, 0.12, 12)) + list(rng.binomial(120, 0.01, 5))
    kb = list(rng.binomial(1080, 0.12, 17))
    assert change.scan(_window(kc, kb), "canary", 17, threshold=4.5, min_after=2) is None


def test_too_few_blocks_or_only_the_open_block_changed_gives_nothing() -> None:
    w = _window([3, 4, 3, 2, 60], [30, 31, 29, 33, 30])
    # 4 completed blocks: fewer than MIN_BEFORE + min_after
    assert change.scan(w, "canary", 4, threshold=4.5, min_after=2) is None
    # the jump sits in block 4: scanning up to it (exclusive) does not see it
    w2 = _window([3, 4, 3, 2, 3, 4, 60], [30, 31, 29, 33, 30, 32, 30])
    assert change.scan(w2, "canary", 6, threshold=4.5, min_after=2) is None


def test_identical_arms_raise_no_alarm_in_whole_rollouts() -> None:
    """A/A with the lesson's noise, 100 req/s: the scan's own false alarms (none in these seeds;
    the benchmark counts them over 200 runs)."""
    for seed in range(3):
        e = Engine()
        res = run(e, SimConfig(rps=100, seed=seed, max_seconds=3 * 3600), parse_injections([]))
        assert res.outcome == "complete"
        alarms = e.status("sim").drift_alarms
        assert not any(k.endswith(":contrast") for k in alarms), alarms


def test_the_engine_restarts_the_window_at_a_mid_rollout_onset() -> None:
    """Open loop, 2 canary requests a second; refusals 2% -> 8% and cost x1.3 from minute 15."""
    e = Engine()
    cfg = SimConfig(rps=20, seed=5001, max_seconds=3 * 3600, fixed_weight=10.0)
    res = run(e, cfg, parse_injections(["refusal=x4", "cost=x1.3", "onset=15"]))
    assert res.outcome == "halt"
    assert res.halted_gate in ("errors", "cost")
    assert any(k.endswith(":contrast") for k in e.status("sim").drift_alarms)
    assert res.duration_s - 15 * 60 <= 8 * 60
    assert not math.isnan(res.duration_s)


def test_the_scan_says_whether_the_baseline_moved_at_the_split() -> None:
    rng = np.random.default_rng(4)
    kc = list(rng.binomial(120, 0.03, 12)) + list(rng.binomial(120, 0.12, 5))
    steady = change.scan(_window(kc, list(rng.binomial(1080, 0.03, 17))), "canary", 17, threshold=4.5, min_after=2)
    assert steady is not None and abs(steady.baseline_z) < change.BASELINE_STEADY_Z
    # the contrast got worse because the baseline got better: the baseline's own move is large
    kc2 = list(rng.binomial(120, 0.06, 17))
    kb2 = list(rng.binomial(1080, 0.06, 12)) + list(rng.binomial(1080, 0.005, 5))
    moved = change.scan(_window(kc2, kb2), "canary", 17, threshold=4.5, min_after=2)
    assert moved is not None and moved.baseline_z < -change.BASELINE_STEADY_Z


def test_the_scan_reads_only_the_tested_arms_window() -> None:
    """Baseline blocks kept from before a restart are not the tested arm's history: a window whose
    canary starts at block 12, with baseline-only blocks 0-11 before it, scans as the window of
    blocks 12 on. Counted as history, those blocks would make a split after three canary blocks
    look like one with a long 'before'."""
    kc = [4] * 12 + [3, 4, 3, 30, 31]  # the canary jumps at block 15
    kb = [32] * 17
    full = _window(kc, kb)
    w = Window(start=12 * BS, block_seconds=BS, baseline_start=0.0)
    w.blocks = {b: (arms if b >= 12 else {"baseline": arms["baseline"]}) for b, arms in full.blocks.items()}
    # five blocks of the canary's own: fewer than MIN_BEFORE + min_after, so no verdict yet
    assert change.scan(w, "canary", 17, threshold=4.5, min_after=2) is None
    # the same blocks read as one window (every block the canary's) do show the jump
    assert change.scan(full, "canary", 17, threshold=4.5, min_after=2) is not None


def test_a_restart_at_the_canarys_onset_keeps_the_baselines_blocks() -> None:
    """After the scan finds the canary's change (the baseline steady), the restarted window's
    canary starts at the split and its baseline keeps the blocks from the old window's start."""
    seen: list[tuple[float, float | None, int, int]] = []
    e = Engine()
    cfg = SimConfig(rps=20, seed=5015, max_seconds=3 * 3600, fixed_weight=10.0)
    orig = e._restart_window

    def spy(st, start, *, keep_baseline=False):  # type: ignore[no-untyped-def]
        old_base = sum(a["baseline"].n for a in st.window.blocks.values() if "baseline" in a)
        orig(st, start, keep_baseline=keep_baseline)
        w = st.window
        canary_blocks = [b for b, a in w.blocks.items() if "canary" in a]
        assert min(canary_blocks) >= w.start_block
        new_base = sum(a["baseline"].n for a in w.blocks.values() if "baseline" in a)
        seen.append((w.start, w.baseline_start, old_base, new_base))

    e._restart_window = spy  # type: ignore[method-assign]
    res = run(e, cfg, parse_injections(["refusal=x4", "cost=x1.3", "onset=15"]))
    assert res.outcome == "halt" and res.halted_gate in ("errors", "cost")
    assert seen, "the onset was not found"
    start, base_start, old_base, new_base = seen[0]
    assert start == cfg.start_ts + 15 * 60  # the onset's block
    assert base_start == cfg.start_ts  # the old window's start: the rollout's first step
    assert new_base == old_base  # every baseline request of the old window is kept
