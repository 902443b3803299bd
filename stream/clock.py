"""The worker's clock for idle rollouts: event time, advanced by wall time only while input is idle.

The engine judges steps in event time. Its ticks (a step past its maximum time gets a hold even
without new events) need a "now" in the same time. The wall clock is wrong while the worker works
through a backlog of older events (after a restart, behind a slow producer): every step would look
hours old. This clock follows the newest event time the engine has seen, and adds the wall time
that passed since that value last moved, so an idle stream still lets time run. It never runs
ahead of the wall clock (an event stamped in the future does not age every rollout at once).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class EventClock:
    def __init__(self, event_time: Callable[[], float], wall: Callable[[], float] = time.time) -> None:
        self._event_time = event_time
        self._wall = wall
        self._seen = -math.inf  # the engine's event time at the last reading
        self._seen_at = 0.0  # wall time when it last moved

    def __call__(self) -> float:
        wall = self._wall()
        et = self._event_time()
        if not math.isfinite(et):
            return wall
        if et != self._seen:
            self._seen, self._seen_at = et, wall
        return min(wall, et + max(0.0, wall - self._seen_at))
