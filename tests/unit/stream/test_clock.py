from __future__ import annotations

import math

from stream.clock import EventClock


class Box:
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def test_without_events_the_clock_is_the_wall_clock() -> None:
    wall = Box(1000.0)
    assert EventClock(Box(-math.inf), wall)() == 1000.0


def test_a_backlog_keeps_the_clock_at_its_event_time() -> None:
    wall, et = Box(10_000.0), Box(1_000.0)
    clock = EventClock(et, wall)
    assert clock() == 1_000.0
    for _ in range(5):  # events keep coming, an hour behind the wall clock
        wall.value += 1.0
        et.value += 1.0
        assert clock() == et.value


def test_idle_input_lets_event_time_run_with_the_wall_clock() -> None:
    wall, et = Box(10_000.0), Box(1_000.0)
    clock = EventClock(et, wall)
    clock()
    wall.value += 600.0  # ten minutes without a new event
    assert clock() == 1_600.0
    et.value = 1_005.0  # a late event moves it back to the input's time
    assert clock() == 1_005.0


def test_the_clock_never_runs_ahead_of_the_wall_clock() -> None:
    wall, et = Box(1_000.0), Box(5_000.0)  # an event stamped in the future
    clock = EventClock(et, wall)
    assert clock() == 1_000.0
    wall.value += 30.0
    assert clock() == 1_030.0
