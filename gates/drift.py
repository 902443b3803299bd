"""Onset alarms from river's ADWIN on each arm's log output length and refusal bits.

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

BASELINE_STRIDE = 10  # the baseline is only a reference for common-mode shifts: every 10th event
SIGNALS = ("log_length", "refusal")


class DriftState(msgspec.Struct):
    seen: dict[str, int] = {}  # arm -> events seen (for the baseline's stride)
    handled: float = -math.inf  # onsets at or before this event time were already judged
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
            d = self.adwin[(arm, signal)] = drift.ADWIN(delta=1e-4)  # type: ignore[no-untyped-call]
        return d

    def feed(
        self, arm: str, ts: npt.NDArray[np.float64], tokens: npt.NDArray[np.int64], refusal: npt.NDArray[np.int64]
    ) -> None:
        """Per-event updates (river's ADWIN costs well under a microsecond each); an onset is stamped
        with the event time of the event that revealed it, so batching does not matter."""
        seen = self.state.seen.get(arm, 0)
        self.state.seen[arm] = seen + len(ts)
        if arm == "baseline":
            first = (-seen) % BASELINE_STRIDE
            idx = slice(first, None, BASELINE_STRIDE)
            ts, tokens, refusal = ts[idx], tokens[idx], refusal[idx]
        loglen = np.log1p(tokens.astype(np.float64)).tolist()
        refs = refusal.astype(np.float64).tolist()
        times = ts.tolist()
        for signal, vals in (("log_length", loglen), ("refusal", refs)):
            det = self._det(arm, signal)
            update = det.update
            for i, v in enumerate(vals):
                update(v)  # type: ignore[no-untyped-call]
                if det.drift_detected:
                    self.state.onset[f"{arm}:{signal}"] = times[i]


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
