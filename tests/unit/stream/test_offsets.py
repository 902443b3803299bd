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
