"""Pending events as columns: the same values the events hold, in order, with unknown costs priced
and missing request times filled in."""

from __future__ import annotations

import math

import numpy as np

from gates.events import Event, FeedbackEvent, InferenceEvent
from gates.pending import PendingBatch

T0 = 1_767_225_600.0


def _inf(arm: str, i: int, **kw: object) -> InferenceEvent:
    base: dict[str, object] = {"latency_ms": 100.0 + i, "output_tokens": 10 * i, "status": "ok", "cost_usd": 0.001 * i}
    base.update(kw)
    return InferenceEvent(rollout_id="r", arm=arm, request_id=f"{arm}{i}", ts=T0 + i, **base)


def _fb(arm: str, i: int, value: str = "down", request_ts: float | None = None) -> FeedbackEvent:
    return FeedbackEvent(rollout_id="r", arm=arm, request_id=f"{arm}{i}", ts=T0 + i, value=value,
                         request_ts=request_ts)  # fmt: skip


def _price(e: InferenceEvent) -> float:
    return e.cost_usd if e.cost_usd is not None else (math.nan if e.model is None else 0.5)


def test_columns_hold_the_events_values_in_order() -> None:
    evs: list[Event] = [
        _inf("baseline", 1), _fb("canary", 2, "up", T0 + 1), _inf("canary", 3, status="error", refusal=True),
        _inf("shadow", 4, refusal=True), _fb("baseline", 5, "ticket", T0 + 2),
    ]  # fmt: skip
    b = PendingBatch()
    b.add(evs[:2], _price, 60.0, ())
    b.add(evs[2:], _price, 60.0, ())
    assert (b.n_requests, b.n_feedback) == (3, 2)
    arms, ts, lat, tok, err, ref, cost = b.requests()
    assert arms.tolist() == [0, 1, 2] and ts.tolist() == [T0 + 1, T0 + 3, T0 + 4]
    assert lat.tolist() == [101.0, 103.0, 104.0] and tok.tolist() == [10, 30, 40]
    assert err.tolist() == [0, 1, 0] and ref.tolist() == [0, 1, 1]
    assert cost.tolist() == [0.001, 0.003, 0.004]
    assert all(a.dtype == np.int64 for a in (arms, tok, err, ref))
    fb_arms, req_ts, neg = b.feedback()
    assert fb_arms.tolist() == [1, 0] and req_ts.tolist() == [T0 + 1, T0 + 2] and neg.tolist() == [0, 1]


def test_unknown_costs_are_priced_and_missing_request_times_filled() -> None:
    b = PendingBatch()
    b.add([_inf("canary", 1, cost_usd=None, model="m"), _inf("canary", 2), _inf("canary", 3, cost_usd=None)],
          _price, 60.0, ())  # fmt: skip
    b.add([_fb("canary", 100), _fb("canary", 101, request_ts=T0 + 7)], _price, 60.0, ())
    cost = b.requests()[-1]
    assert cost[:2].tolist() == [0.5, 0.002] and math.isnan(cost[2])
    assert b.feedback()[1].tolist() == [T0 + 100 - 60.0, T0 + 7]


def test_the_first_digest_of_each_wanted_arm_is_kept() -> None:
    b = PendingBatch()
    b.add([_inf("canary", 1), _inf("baseline", 2, model_digest="b1"), _inf("canary", 3, model_digest="")],
          _price, 60.0, (0, 1, 2))  # fmt: skip
    b.add([_inf("canary", 4, model_digest="c1"), _inf("baseline", 5, model_digest="b2"),
           _inf("shadow", 6, model_digest="s1")], _price, 60.0, (1,))  # fmt: skip
    assert b.digests == {0: "b1", 1: "c1"}  # empty digests skipped; the shadow arm's was not wanted
