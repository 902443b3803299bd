"""Onset alarms: ADWIN on per-tick means from integer running totals (independent of batching and
of the order within a tick), and a canary-only change (not a common-mode one) restarts the step's
window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gates import sketch
from gates import window as win
from gates.drift import Detectors, DriftState, canary_onset
from gates.engine import Engine
from gates.policy import PolicySet, RolloutPolicy
from gates.sim import SimConfig, parse_injections, run

T0 = 1_767_225_600.0
TICK = 5.0


def _ticks(seed: int, ticks: int, per_tick: int, change_at: int | None, factor: float, refusal: float = 0.02
           ) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Per tick: output tokens and refusal bits of one arm; lengths x factor from tick change_at."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(ticks):
        tok = rng.lognormal(5.5, 0.6, per_tick) * (factor if change_at is not None and k >= change_at else 1.0)
        out.append((np.maximum(np.rint(tok), 1).astype(np.int64), (rng.uniform(size=per_tick) < refusal).astype(np.int64)))
    return out


def _count(det: Detectors, arm: str, tok: np.ndarray, ref: np.ndarray) -> None:
    keys = np.maximum(sketch.keys_of(tok.astype(np.float64)), win.LOG_KEY_FLOOR)
    det.count(arm, int(tok.size), int(keys.sum()), int(ref.sum()))


def _run(data: list[tuple[np.ndarray, np.ndarray]], arm: str = "canary", pieces: int = 1,
         state: DriftState | None = None) -> DriftState:  # fmt: skip
    st = state or DriftState()
    det = Detectors(st)
    for k, (tok, ref) in enumerate(data):
        for part in np.array_split(np.arange(tok.size), pieces):
            _count(det, arm, tok[part], ref[part])
        det.tick(arm, T0 + (k + 1) * TICK)
    return st


def test_a_canary_length_jump_raises_an_onset_soon_after_it() -> None:
    st = _run(_ticks(1, 400, 50, 200, 1.8))
    t = st.onset.get("canary:log_length")
    assert t is not None
    change = T0 + 200 * TICK
    assert change <= t <= change + 60 * TICK  # within 60 ticks (5 minutes at 5 s ticks)
    assert canary_onset(st, "canary", since=T0, tolerance=20.0) == ("log_length", t)


def test_a_stationary_stream_raises_no_length_onset() -> None:
    st = _run(_ticks(2, 600, 50, None, 1.0))
    assert "canary:log_length" not in st.onset
    assert canary_onset(st, "canary", since=T0, tolerance=20.0) is None


@pytest.mark.parametrize("pieces", [2, 7, 50])
def test_onsets_do_not_depend_on_the_batching_within_a_tick(pieces: int) -> None:
    data = _ticks(3, 400, 50, 200, 1.8)
    whole, split = _run(data), _run(data, pieces=pieces)
    assert split.onset == whole.onset
    assert split.acc == whole.acc and split.fed == whole.fed


def test_onsets_do_not_depend_on_the_order_within_a_tick() -> None:
    data = _ticks(4, 400, 50, 200, 1.8)
    rng = np.random.default_rng(0)
    shuffled = []
    for tok, ref in data:
        p = rng.permutation(tok.size)
        shuffled.append((tok[p], ref[p]))
    assert _run(shuffled, pieces=5).onset == _run(data).onset


def test_detectors_survive_a_dump_and_reload() -> None:
    data = _ticks(5, 400, 50, 250, 1.8)
    ref = _run(data)
    st = DriftState()
    det = Detectors(st)
    for k, (tok, r) in enumerate(data[:120]):
        _count(det, "canary", tok, r)
        det.tick("canary", T0 + (k + 1) * TICK)
    det.dump()
    assert st.detectors
    again = Detectors(st)  # a fresh object from the pickled state, as after a restore
    for k, (tok, r) in enumerate(data[120:], start=120):
        _count(again, "canary", tok, r)
        again.tick("canary", T0 + (k + 1) * TICK)
    assert st.onset == ref.onset and st.acc == ref.acc


def test_a_tick_without_new_requests_feeds_nothing() -> None:
    st = DriftState()
    det = Detectors(st)
    det.tick("canary", T0)  # nothing counted yet
    assert st.fed == {} and st.onset == {}
    det.count("canary", 10, 3000, 1)
    det.tick("canary", T0 + 5)
    fed = dict(st.fed)
    det.tick("canary", T0 + 10)  # no new requests since
    assert st.fed == fed


def test_a_common_mode_change_is_not_a_canary_onset() -> None:
    st = DriftState(onset={"canary:log_length": T0 + 100.0, "baseline:log_length": T0 + 95.0})
    assert canary_onset(st, "canary", since=T0, tolerance=20.0) is None
    st = DriftState(onset={"canary:log_length": T0 + 100.0, "baseline:log_length": T0 + 50.0})
    assert canary_onset(st, "canary", since=T0, tolerance=20.0) == ("log_length", T0 + 100.0)


def test_onsets_before_the_window_or_already_handled_are_ignored() -> None:
    st = DriftState(onset={"canary:refusal": T0 + 100.0})
    assert canary_onset(st, "canary", since=T0 + 100.0, tolerance=1.0) is None
    assert canary_onset(st, "canary", since=T0, tolerance=1.0) == ("refusal", T0 + 100.0)
    st.handled = T0 + 100.0
    assert canary_onset(st, "canary", since=T0, tolerance=1.0) is None
    assert math.isinf(DriftState().handled)


@pytest.mark.slow
def test_a_mid_step_length_regression_is_caught_no_later_with_the_window_restart() -> None:
    """The onset restarts the window, so the gates judge the post-onset model alone."""
    earlier = 0
    for seed in range(4):
        ends = {}
        for reset in (True, False):
            e = Engine(PolicySet(defaults=RolloutPolicy(drift_reset=reset)))
            res = run(e, SimConfig(rps=100, seed=seed, max_seconds=2 * 3600), parse_injections(["length=+40%", "onset=15"]))
            # +40% output tokens is +26% cost per request too (limit 1.2x): the contrast scan may see
            # the cost change first, and a cost halt is right as well
            assert res.outcome == "halt" and res.halted_gate in ("output_length", "cost")
            ends[reset] = (res.duration_s, e.status("sim").drift_alarms)
        assert ends[True][0] <= ends[False][0]
        if ends[True][0] < ends[False][0]:
            earlier += 1
            alarms = ends[True][1]
            assert alarms.get("canary:log_length", 0) + alarms.get("canary:cost:contrast", 0) >= 1, alarms
    assert earlier >= 1
