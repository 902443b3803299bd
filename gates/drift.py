"""Onset alarms from river's ADWIN, run on short chunk means of each arm's stream.

ADWIN finds a change within one stream, not a difference between arms, so it does not gate:
it tells when the tested arm changed while the baseline did not, and the engine then restarts
the step's comparison window at the onset so the gates judge the model as it is now.
"""

from __future__ import annotations

import math
import pickle

import msgspec
import numpy as np
import numpy.typing as npt
from river import drift

CHUNK = 25  # events per chunk mean fed to ADWIN: per-event updates would cost more than the gates
SIGNALS = ("log_length", "refusal")
MIN_EFFECT = {"log_length": 0.15, "refusal": 0.05}  # smaller shifts are left to the gates


class DriftState(msgspec.Struct):
    carry: dict[str, list[list[float]]] = {}  # arm -> [log_length values, refusal values] not yet chunked
    detectors: bytes = b""  # pickled {(arm, signal): ADWIN}
    onset: dict[str, float] = {}  # "arm:signal" -> event time of the last detected change
    alarms: dict[str, int] = {}  # "arm:signal" -> count of onset alarms raised


class Detectors:
    """Live ADWIN objects for one rollout; serialised into DriftState.detectors on snapshot."""

    def __init__(self, state: DriftState) -> None:
        self.state = state
        self.adwin: dict[tuple[str, str], drift.ADWIN] = pickle.loads(state.detectors) if state.detectors else {}

    def dump(self) -> None:
        self.state.detectors = pickle.dumps(self.adwin, protocol=5)

    def _det(self, arm: str, signal: str) -> drift.ADWIN:
        d = self.adwin.get((arm, signal))
        if d is None:
            d = self.adwin[(arm, signal)] = drift.ADWIN(delta=1e-4, clock=8, min_window_length=4, grace_period=8)
        return d

    def feed(self, arm: str, ts: float, tokens: npt.NDArray[np.int64], refusal: npt.NDArray[np.int64]) -> None:
        carry = self.state.carry.setdefault(arm, [[], []])
        loglen = carry[0] + np.log1p(tokens.astype(np.float64)).tolist()
        refs = carry[1] + refusal.astype(np.float64).tolist()
        full = len(loglen) // CHUNK * CHUNK
        for signal, vals in (("log_length", loglen), ("refusal", refs)):
            det = self._det(arm, signal)
            for i in range(0, full, CHUNK):
                before = det.estimation
                det.update(sum(vals[i : i + CHUNK]) / CHUNK)
                if det.drift_detected and abs(det.estimation - before) >= MIN_EFFECT[signal]:
                    self.state.onset[f"{arm}:{signal}"] = ts
        carry[0], carry[1] = loglen[full:], refs[full:]


def canary_onset(state: DriftState, arm: str, since: float, tolerance: float) -> tuple[str, float] | None:
    """A change in ``arm`` after ``since`` with no baseline change within ``tolerance`` of it."""
    for signal in SIGNALS:
        t = state.onset.get(f"{arm}:{signal}")
        if t is None or t <= since:
            continue
        b = state.onset.get(f"baseline:{signal}", -math.inf)
        if abs(t - b) > tolerance:
            return signal, t
    return None
