"""Onset alarms from river's ADWIN on each arm's log output length and refusal rate.

ADWIN is fed one value per arm and signal at every evaluation tick (the tick's mean), computed from
integer running totals, so the alarms depend neither on batching nor on the order of events
within a tick.

ADWIN finds a change within one stream, not a difference between arms, so it does not gate:
it tells when the tested arm changed while the baseline did not, and the engine then restarts
the step's comparison window at the onset so the gates judge the model as it is now.
"""

from __future__ import annotations

import math
import pickle

import msgspec
from river import drift

from gates.sketch import LN_GAMMA

SIGNALS = ("log_length", "refusal")


class DriftState(msgspec.Struct):
    acc: dict[str, list[int]] = {}  # arm -> running [requests, sum of log-length keys, refusals]
    fed: dict[str, list[int]] = {}  # arm -> the running totals at the last tick fed to ADWIN
    handled: float = -math.inf  # onsets at or before this event time were already judged
    detectors: bytes = b""  # pickled {(arm, signal): ADWIN}
    onset: dict[str, float] = {}  # "arm:signal" -> event time of the last detected change
    alarms: dict[str, int] = {}  # "arm:signal" -> count of onset alarms raised
    scanned: int = -1  # the block up to which (exclusive) the contrast scan (gates/change.py) last ran


class Detectors:
    """Live ADWIN objects for one rollout; serialised into DriftState.detectors on snapshot."""

    def __init__(self, state: DriftState) -> None:
        self.state = state
        self.adwin: dict[tuple[str, str], drift.ADWIN] = pickle.loads(state.detectors) if state.detectors else {}
        # whether state.detectors was pickled from these objects and they have not changed since: a
        # snapshot between two ticks then keeps the bytes it has (pickling the same objects again
        # gives the same bytes)
        self.dumped = False

    def dump(self) -> None:
        if not self.dumped:
            self.state.detectors = pickle.dumps(self.adwin, protocol=5)
            self.dumped = True

    def _det(self, arm: str, signal: str) -> drift.ADWIN:
        d = self.adwin.get((arm, signal))
        if d is None:
            d = self.adwin[(arm, signal)] = drift.ADWIN(  # type: ignore[no-untyped-call]
                delta=1e-3, clock=4, min_window_length=5, grace_period=12
            )
        return d

    def count(self, arm: str, n: int, len_keys: int, refusals: int) -> None:
        """Fold a batch into the running totals (integers: order and batching do not matter)."""
        acc = self.state.acc.setdefault(arm, [0, 0, 0])
        acc[0] += n
        acc[1] += len_keys
        acc[2] += refusals

    def tick(self, arm: str, t: float) -> None:
        """Feed ADWIN this tick's means for ``arm``; stamp an onset with the tick time."""
        acc = self.state.acc.get(arm)
        if acc is None:
            return
        fed = self.state.fed.setdefault(arm, [0, 0, 0])
        n = acc[0] - fed[0]
        if n <= 0:
            return
        values = {"log_length": (acc[1] - fed[1]) / n * LN_GAMMA, "refusal": (acc[2] - fed[2]) / n}
        self.state.fed[arm] = list(acc)
        self.dumped = False
        for signal, v in values.items():
            det = self._det(arm, signal)
            det.update(v)  # type: ignore[no-untyped-call]
            if det.drift_detected:
                self.state.onset[f"{arm}:{signal}"] = t


# A change must be at least this large, against the baseline's change over the same blocks, to
# restart the window: run-to-run noise moves an arm's level by up to ~15% for short periods,
# which ADWIN sees at high traffic; the gates already account for that.
MIN_SHIFT = {"log_length": 0.2, "refusal": 0.03}


def canary_onset(state: DriftState, arm: str, since: float, tolerance: float) -> tuple[str, float] | None:
    """A change in ``arm`` after ``since`` with no baseline change within ``tolerance`` of it."""
    for signal in SIGNALS:
        t = state.onset.get(f"{arm}:{signal}")
        if t is None or t <= max(since, state.handled):
            continue
        b = state.onset.get(f"baseline:{signal}", -math.inf)
        if abs(t - b) > tolerance:
            return signal, t
    return None
