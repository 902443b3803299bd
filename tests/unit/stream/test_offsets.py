from __future__ import annotations

import orjson

from stream.metrics import Metrics
from stream.offsets import OffsetGuard
from stream.processor import Processor, Record

from .fakes import FakeEngine, ListSink

TS = 1_767_225_600.0


def rec(offset: int, partition: int = 0, rid: str = "r1") -> Record:
    ev = {"rollout_id": rid, "arm": "canary", "request_id": f"q{offset}", "ts": TS + offset, "latency_ms": 1.0,
          "output_tokens": 1, "status": "ok"}
    return Record("ev", partition, offset, rid.encode(), orjson.dumps(ev))


def test_a_jump_is_not_processed_and_asks_for_a_seek_back() -> None:
    now = [0.0]
    g = OffsetGuard(lambda: now[0], retry_after=5.0)
    g.start({("ev", 0): 10})
    batch = [rec(10), rec(11), rec(13), rec(14)]
    idx, seeks = g.admit(batch)
    assert idx == [0, 1] and seeks == {("ev", 0): 12}
    g.advance([batch[i] for i in idx])
    assert g.positions[("ev", 0)] == 12
    # records fetched before the seek took effect: dropped, no new seek
    now[0] = 1.0
    assert g.admit([rec(15)]) == ([], {})
    # the missing offset comes: processing resumes, a re-delivered older record is let through
    idx, seeks = g.admit([rec(11), rec(12), rec(13)])
    assert idx == [0, 1, 2] and seeks == {}


def test_the_seek_is_repeated_when_the_offset_does_not_come() -> None:
    now = [0.0]
    g = OffsetGuard(lambda: now[0], retry_after=5.0)
    g.start({("ev", 0): 0})
    assert g.admit([rec(3)]) == ([], {("ev", 0): 0})
    now[0] = 4.0
    assert g.admit([rec(3)]) == ([], {})
    now[0] = 6.0
    assert g.admit([rec(3)]) == ([], {("ev", 0): 0})


def test_offsets_deleted_by_retention_are_skipped_once_the_broker_says_so() -> None:
    g = OffsetGuard(lambda: 0.0)
    g.start({("ev", 0): 5})
    assert g.admit([rec(40)]) == ([], {("ev", 0): 5})
    g.rewound(("ev", 0), 40)  # the earliest offset the broker still has
    assert g.admit([rec(40), rec(41)]) == ([0, 1], {})


def test_partitions_are_independent_and_unknown_ones_start_where_they_are() -> None:
    g = OffsetGuard(lambda: 0.0)
    g.start({("ev", 0): 0})
    idx, seeks = g.admit([rec(0, 0), rec(7, 1), rec(2, 0), rec(8, 1)])
    assert idx == [0, 1, 3] and seeks == {("ev", 0): 1}


async def test_processor_rewinds_and_counts_every_event_once() -> None:
    sought: list[tuple[str, int, int]] = []

    async def rewind(topic: str, partition: int, offset: int) -> int:
        sought.append((topic, partition, offset))
        return offset

    sink = ListSink()
    proc = Processor(lambda: FakeEngine(100), sink, Metrics(), rewind=rewind)
    await proc.restore([], positions={("ev", 0): 0})
    await proc.process_events([rec(0), rec(1), rec(3), rec(4)])  # offset 2 was dropped upstream
    assert sought == [("ev", 0, 2)]
    assert proc.positions[("ev", 0)] == 2
    await proc.process_events([rec(4)])  # stale, before the seek took effect
    await proc.process_events([rec(2), rec(3), rec(4), rec(5)])  # after the seek
    engine = proc.engine
    assert isinstance(engine, FakeEngine)
    assert engine.state["r1"]["count"] == {"canary": 6}
    assert proc.positions[("ev", 0)] == 6


def test_records_handed_on_but_never_processed_are_sought_again_after_a_while() -> None:
    now = [0.0]
    g = OffsetGuard(lambda: now[0], stall_after=10.0)
    g.start({("cmd", 0): 7, ("ev", 0): 3})
    # nothing handed on yet, or everything handed on already processed: never a stall
    assert g.stalled(("cmd", 0), None) is None
    assert g.stalled(("ev", 0), 2) is None
    # offset 7 was handed on (Faust's read offset) but the processor never got it, and no later
    # record came to show the gap: after stall_after, seek back to it, once
    assert g.stalled(("cmd", 0), 7) is None
    now[0] = 9.0
    assert g.stalled(("cmd", 0), 7) is None
    now[0] = 10.5
    assert g.stalled(("cmd", 0), 7) == 7
    now[0] = 30.0
    assert g.stalled(("cmd", 0), 7) is None  # a rewind is in progress: admit() handles retries
    idx, seeks = g.admit([Record("cmd", 0, 7, b"r1", b"{}")])
    assert idx == [0] and seeks == {}


def test_a_position_that_moves_is_not_a_stall() -> None:
    now = [0.0]
    g = OffsetGuard(lambda: now[0], stall_after=10.0)
    g.start({("ev", 0): 0})
    for t in range(0, 40, 5):
        now[0] = float(t)
        assert g.stalled(("ev", 0), g.positions[("ev", 0)] + 50) is None  # the agent is behind, working
        g.advance([rec(g.positions[("ev", 0)])])


async def test_processor_seeks_back_a_stalled_partition_and_then_counts_its_records() -> None:
    sought: list[tuple[str, int, int]] = []

    async def rewind(topic: str, partition: int, offset: int) -> int:
        sought.append((topic, partition, offset))
        return offset

    now = [0.0]
    proc = Processor(lambda: FakeEngine(100), ListSink(), Metrics(), clock=lambda: now[0], rewind=rewind)
    await proc.restore([], positions={("ev", 0): 0})
    await proc.process_events([rec(0), rec(1)])
    # offsets 2 and 3 were handed on by Faust and lost on the way; nothing else arrives
    assert await proc.check_stalls({("ev", 0): 3}) == {}
    now[0] = 11.0
    assert await proc.check_stalls({("ev", 0): 3}) == {("ev", 0): 2}
    assert sought == [("ev", 0, 2)]
    await proc.process_events([rec(2), rec(3)])
    engine = proc.engine
    assert isinstance(engine, FakeEngine)
    assert engine.state["r1"]["count"] == {"canary": 4}
    assert proc.positions[("ev", 0)] == 4
