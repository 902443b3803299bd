"""A rollout's events waiting for the engine's next flush, kept as columns.

The engine folds events into its window at evaluation ticks and snapshots, often hundreds of
messages after they were decoded. Reading each event's fields as it arrives, while the decoder's
objects are still in cache, into flat numeric columns costs less than walking the same objects
again at the flush; the flush then takes the columns as numpy arrays without a copy.
"""

from __future__ import annotations

import itertools
import operator
from array import array
from collections.abc import Callable, Collection

import numpy as np
import numpy.typing as npt

from gates.events import ARMS, NEGATIVE_FEEDBACK, Event, FeedbackEvent, InferenceEvent

ARM_CODE = {arm: code for code, arm in enumerate(ARMS)}  # the codes index gates.events.ARMS

_TS = operator.attrgetter("ts")
_LATENCY = operator.attrgetter("latency_ms")
_TOKENS = operator.attrgetter("output_tokens")
_STATUS = operator.attrgetter("status")
_REFUSAL = operator.attrgetter("refusal")
_COST = operator.attrgetter("cost_usd")
_ARM = operator.attrgetter("arm")
_DIGEST = operator.attrgetter("model_digest")
_REQUEST_TS = operator.attrgetter("request_ts")
_VALUE = operator.attrgetter("value")
_IS_NEGATIVE = NEGATIVE_FEEDBACK.__contains__


class PendingBatch:
    """Columns of the requests (cost NaN where unknown and unpriced) and of the feedback
    (``request_ts`` filled in with the feedback's time less the assumed delay where missing).
    Floats and counts go to ``array`` columns, flags and arm codes to bytes."""

    __slots__ = (
        "arms", "cost", "digests", "errors", "fb_arms", "fb_negative", "fb_request_ts", "latency_ms", "refusals",
        "tokens", "ts",
    )  # fmt: skip

    def __init__(self) -> None:
        self.ts = array("d")
        self.latency_ms = array("d")
        self.tokens = array("q")
        self.errors = bytearray()
        self.refusals = bytearray()
        self.cost = array("d")
        self.arms = bytearray()
        # arm code -> the first non-empty model digest among the pending requests of that arm
        self.digests: dict[int, str] = {}
        self.fb_request_ts = array("d")
        self.fb_negative = bytearray()
        self.fb_arms = bytearray()

    @property
    def n_requests(self) -> int:
        return len(self.ts)

    @property
    def n_feedback(self) -> int:
        return len(self.fb_arms)

    def add(
        self,
        events: list[Event],
        price: Callable[[InferenceEvent], float],
        feedback_delay: float,
        digest_arms: Collection[int],
    ) -> None:
        """Append ``events`` in order. ``price`` gives a request's cost where it has no ``cost_usd``;
        ``digest_arms`` are the arm codes whose first digest is still wanted."""
        # (array.fromlist of a list is cheaper than array.extend of an iterator, and leaves the
        # array as it was when an item does not fit)
        inf: list[InferenceEvent] = [e for e in events if type(e) is InferenceEvent]
        if inf:
            try:
                self.cost.fromlist(list(map(_COST, inf)))
            except TypeError:  # a request without cost_usd (None): priced from the policy, if it can be
                self.cost.fromlist([price(e) for e in inf])
            self.ts.fromlist(list(map(_TS, inf)))
            self.latency_ms.fromlist(list(map(_LATENCY, inf)))
            self.tokens.fromlist(list(map(_TOKENS, inf)))
            self.errors.extend(map(operator.eq, map(_STATUS, inf), itertools.repeat("error")))
            self.refusals.extend(map(_REFUSAL, inf))
            self.arms.extend(map(ARM_CODE.__getitem__, map(_ARM, inf)))
            if digest_arms:
                for e in filter(_DIGEST, inf):
                    code = ARM_CODE[e.arm]
                    if code in digest_arms and code not in self.digests and e.model_digest:
                        self.digests[code] = e.model_digest
        if len(inf) < len(events):
            fbs: list[FeedbackEvent] = [e for e in events if type(e) is FeedbackEvent]
            try:
                self.fb_request_ts.fromlist(list(map(_REQUEST_TS, fbs)))
            except TypeError:  # feedback that does not carry its request's time (None)
                self.fb_request_ts.fromlist([e.ts - feedback_delay if e.request_ts is None else e.request_ts for e in fbs])
            self.fb_negative.extend(map(_IS_NEGATIVE, map(_VALUE, fbs)))
            self.fb_arms.extend(map(ARM_CODE.__getitem__, map(_ARM, fbs)))

    def requests(self) -> tuple[IntArray, FloatArray, FloatArray, IntArray, IntArray, IntArray, FloatArray]:
        """(arm codes, ts, latency_ms, output tokens, errors, refusals, cost) as numpy arrays."""
        return (
            _ints(self.arms), np.frombuffer(self.ts, np.float64), np.frombuffer(self.latency_ms, np.float64),
            np.frombuffer(self.tokens, np.int64), _ints(self.errors), _ints(self.refusals),
            np.frombuffer(self.cost, np.float64),
        )  # fmt: skip

    def feedback(self) -> tuple[IntArray, FloatArray, IntArray]:
        """(arm codes, request times, negative) as numpy arrays."""
        return _ints(self.fb_arms), np.frombuffer(self.fb_request_ts, np.float64), _ints(self.fb_negative)


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _ints(column: bytearray) -> IntArray:
    return np.frombuffer(column, np.uint8).astype(np.int64)
