"""The consumer-lag gauge is the broker's log end minus the next offset to process, never the
highwater cached from the last fetch (which lags the log and read 0 while messages waited)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from stream.agents import update_consumer_lag
from stream.metrics import Metrics

EVENTS, COMMANDS = "rollout.events", "rollout.commands"


class StaleHighwaterConsumer:
    """A consumer whose cached highwater is as old as its last fetch: equal to the position here."""

    def __init__(self, log_end: dict[TP, int], cached: dict[TP, int], fail: bool = False) -> None:
        self.log_end, self.cached, self.fail = log_end, cached, fail
        self.asked: list[tuple[TP, ...]] = []

    def assignment(self) -> set[TP]:
        return set(self.log_end)

    def highwater(self, tp: TP) -> int:
        return self.cached[tp]

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        self.asked.append(tps)
        if self.fail:
            raise RuntimeError("rebalancing")
        return {tp: self.log_end[tp] for tp in tps}

    async def position(self, tp: TP) -> int:
        return self.cached[tp]


def _wiring(consumer: Any, positions: dict[tuple[str, int], int]) -> Any:
    return SimpleNamespace(app=SimpleNamespace(consumer=consumer),
                           settings=SimpleNamespace(events_topic=EVENTS, commands_topic=COMMANDS),
                           processor=SimpleNamespace(positions=positions), metrics=Metrics())


def _lag(w: Any, topic: str) -> float | None:
    return w.metrics.registry.get_sample_value("rollout_gate_consumer_lag_messages",
                                               {"topic": topic, "partition": "0"})


def test_lag_counts_messages_past_a_stale_highwater() -> None:
    ev, cmd, other = TP(EVENTS, 0), TP(COMMANDS, 0), TP("rollout.changelog", 0)
    consumer = StaleHighwaterConsumer({ev: 674, cmd: 3, other: 9}, {ev: 661, cmd: 3, other: 9})
    w = _wiring(consumer, {(EVENTS, 0): 661})  # processed everything the last fetch brought
    asyncio.run(update_consumer_lag(w))
    assert _lag(w, EVENTS) == 13   # not 0: 13 messages are in the log and not yet counted
    assert _lag(w, COMMANDS) == 0  # no processed position yet: the consumer's own position
    assert _lag(w, "rollout.changelog") is None
    assert [set(tps) for tps in consumer.asked] == [{ev, cmd}]


def test_a_failed_end_offsets_request_leaves_the_gauge_for_the_next_tick() -> None:
    ev = TP(EVENTS, 0)
    w = _wiring(StaleHighwaterConsumer({ev: 10}, {ev: 10}, fail=True), {(EVENTS, 0): 4})
    w.metrics.set_consumer_lag(EVENTS, 0, 6)
    asyncio.run(update_consumer_lag(w))
    assert _lag(w, EVENTS) == 6
