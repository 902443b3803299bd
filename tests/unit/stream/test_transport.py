"""stream.transport's consumer: the guard's seek back holds while Faust's fetcher runs, and the
consumer thread never takes records of partitions Faust has paused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream.app import bootstrap, records
from stream.settings import Settings
from stream.transport import Bundle, Consumer, ConsumerThread, Rewinds, Verdict, bundle_fetch

from .fakes import FakeEngine

EV = TP("ev", 0)


def test_after_a_rewind_records_fetched_before_it_are_stale_until_the_sought_offset_comes() -> None:
    r = Rewinds(lambda: 0.0)
    assert r.check(EV, 12) is Verdict.PASS
    r.begin(EV, 5, read_offset=11)
    assert [r.check(EV, o) for o in (12, 13)] == [Verdict.STALE, Verdict.STALE]
    assert r.check(EV, 5) is Verdict.RESUME
    assert [r.check(EV, o) for o in (6, 7, 14)] == [Verdict.PASS] * 3
    assert EV not in r


def test_a_rewind_to_an_offset_deleted_meanwhile_is_retried_and_then_resumes() -> None:
    now = [0.0]
    r = Rewinds(lambda: now[0], retry_after=5.0)
    r.begin(EV, 5, read_offset=11)
    # the broker deleted 5..39 after the earliest offset was asked: the fetcher goes on from 40,
    # above anything fetched before, so it looks like what was fetched before the seek
    assert r.check(EV, 40) is Verdict.STALE
    now[0] = 6.0
    assert r.check(EV, 41) is Verdict.RETRY
    r.begin(EV, 40, read_offset=11)  # the new seek, to the earliest offset the broker has now
    assert r.check(EV, 40) is Verdict.RESUME


def test_rewinds_are_forgotten_for_revoked_partitions() -> None:
    r = Rewinds(lambda: 0.0)
    r.begin(EV, 5, read_offset=11)
    r.begin(TP("ev", 1), 0, read_offset=None)
    r.forget([EV])
    assert r.check(EV, 12) is Verdict.PASS and TP("ev", 1) in r
    r.forget()
    assert not r


def _consumer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batches: list[list[int]]) -> tuple[Consumer, list[int]]:
    """The worker's consumer with Faust's fetch replaced by ``batches`` (offsets of EV) and the
    consumer thread by a recorder of the seeks asked of it."""
    w = bootstrap(Settings(app_id="unit-rewind", data_dir=tmp_path), engine_factory=FakeEngine)
    consumer = w.app.consumer
    assert isinstance(consumer, Consumer)

    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for offset in batches.pop(0):
            yield EV, SimpleNamespace(offset=offset)

    monkeypatch.setattr(faust_consumer.Consumer, "getmany", getmany)

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return {tp: 0 for tp in tps}

    sought: list[int] = []

    async def call_thread(fun: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert fun == thread.seek_here
        sought.append(args[1])

    thread = consumer._thread
    assert isinstance(thread, ConsumerThread)
    monkeypatch.setattr(consumer, "earliest_offsets", earliest_offsets)
    monkeypatch.setattr(thread, "call_thread", call_thread)
    return consumer, sought


async def _drain(consumer: Any, delivered: list[int], on_delivered: Callable[[int], Awaitable[None]]) -> None:
    """One fetch as Faust's Consumer._drain_messages hands it on: a record below the last offset
    handed on is dropped, and the read offset is set once the callback returned."""
    async for tp, message in consumer.getmany(timeout=1.0):
        read = consumer._read_offset[tp]
        if read is None or message.offset >= read:
            delivered.append(message.offset)
            await on_delivered(message.offset)
            consumer._read_offset[tp] = message.offset


async def test_a_rewind_during_a_fetch_gets_every_record_from_the_sought_offset_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the guard expected 5 and got 10: it asks for 5 while Faust is still handing on that fetch
    # (the callback for 11 waits on the agent's full queue), and the fetch after the seek starts at 5
    consumer, sought = _consumer(tmp_path, monkeypatch, [[10, 11, 12, 13], list(range(5, 16))])
    delivered: list[int] = []

    async def agent(offset: int) -> None:
        if offset == 11 and not sought:
            assert await consumer.rewind(EV, 5) == 5

    await _drain(consumer, delivered, agent)
    await _drain(consumer, delivered, agent)
    assert sought == [5]
    # 12 and 13 were fetched before the seek: not handed on; then everything from 5 again
    assert delivered == [10, 11, *range(5, 16)]
    assert EV not in consumer.rewinds


async def test_faust_s_own_seek_during_a_fetch_loses_the_records_fetched_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # why Consumer.rewind exists; if an upgrade of faust-streaming makes this fail, its seek holds
    consumer, _ = _consumer(tmp_path, monkeypatch, [[10, 11, 12, 13], list(range(5, 16))])
    monkeypatch.setattr(faust_aiokafka.Consumer, "_seek", lambda self, tp, offset: _nothing())
    delivered: list[int] = []

    async def agent(offset: int) -> None:
        if offset == 11 and len(delivered) == 2:
            await consumer.seek(EV, 5)

    await _drain(consumer, delivered, agent)
    await _drain(consumer, delivered, agent)
    assert delivered == [10, 11, 12, 13, 13, 14, 15]  # 5..12 dropped as already read


async def _nothing() -> None:
    return None


async def test_the_consumer_thread_gets_a_copy_of_the_active_partitions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = bootstrap(Settings(app_id="unit-active", data_dir=tmp_path), engine_factory=FakeEngine)
    consumer = w.app.consumer
    seen: list[set[TP] | None] = []
    live = {TP("changelog", 0)}

    async def thread_getmany(self: Any, active_partitions: set[TP] | None, timeout: float) -> dict[TP, Any]:
        # Faust pauses the changelog while the thread waits; aiokafka reads an empty set as "all"
        live.clear()
        seen.append(active_partitions)
        return {}

    monkeypatch.setattr(faust_consumer.ThreadDelegateConsumer, "_getmany", thread_getmany)
    await consumer._getmany(live, 1.0)
    await consumer._getmany(None, 1.0)
    assert seen == [{TP("changelog", 0)}, None]


def _rec(offset: int, topic: str = "ev", value: bytes = b"{}") -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=0, offset=offset, timestamp=1000 + offset, timestamp_type=0,
                           key=b"r", value=value, serialized_value_size=len(value))


def test_a_fetch_of_a_bundled_topic_becomes_one_record_per_partition() -> None:
    ev, cmd = TP("ev", 0), TP("cmd", 0)
    fetch = {ev: [_rec(4), _rec(5), _rec(6)], cmd: [_rec(9, "cmd"), _rec(10, "cmd")], TP("ev", 1): []}
    out = bundle_fetch(fetch, {"ev"})
    assert out[cmd] == fetch[cmd] and out[TP("ev", 1)] == []
    [b] = out[ev]
    assert isinstance(b, Bundle) and b.records == fetch[ev]
    # Faust sees the last record's position: its read offset, acks and commits cover the fetch
    assert (b.topic, b.partition, b.offset, b.timestamp) == ("ev", 0, 6, 1006)
    assert (b.key, b.value, b.serialized_value_size) == (None, b"", 6)


async def test_the_consumer_bundles_the_events_topic_and_the_message_carries_the_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = bootstrap(Settings(app_id="unit-bundle", data_dir=tmp_path, events_topic="ev"), engine_factory=FakeEngine)
    consumer = w.app.consumer
    fetched = [_rec(0), _rec(1)]

    async def thread_getmany(self: Any, active_partitions: set[TP] | None, timeout: float) -> dict[TP, Any]:
        return {EV: list(fetched), TP("other", 0): [_rec(3, "other")]}

    monkeypatch.setattr(faust_consumer.ThreadDelegateConsumer, "_getmany", thread_getmany)
    got = await consumer._getmany({EV}, 1.0)
    assert got[TP("other", 0)][0].offset == 3 and not isinstance(got[TP("other", 0)][0], Bundle)
    message = consumer._to_message(EV, got[EV][0])
    assert message.offset == 1 and message.records == fetched
    assert [(r.offset, r.value) for r in records([SimpleNamespace(message=message)])] == [(0, b"{}"), (1, b"{}")]


async def test_after_a_rewind_bundles_fetched_before_it_are_dropped_and_the_first_one_after_it_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # as the rewind test above, with each fetch as one bundle: Faust handed on 10 and 11, the guard
    # sought back to 5, the rest of the fetch in hand (12, 13) is stale, the next fetch starts at 5
    w = bootstrap(Settings(app_id="unit-rewind-bundle", data_dir=tmp_path), engine_factory=FakeEngine)
    consumer = w.app.consumer
    fetches = [[SimpleNamespace(offset=13, records=[_rec(12), _rec(13)])],
               [SimpleNamespace(offset=15, records=[_rec(o) for o in range(5, 16)])]]

    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for message in fetches.pop(0):
            yield EV, message

    monkeypatch.setattr(faust_consumer.Consumer, "getmany", getmany)
    consumer._read_offset[EV] = 11
    consumer.rewinds.begin(EV, 5, read_offset=11)  # as Consumer.rewind does
    assert [m async for _, m in consumer.getmany(timeout=1.0)] == []
    got = [m async for _, m in consumer.getmany(timeout=1.0)]
    assert [m.offset for m in got] == [15] and [r.offset for r in got[0].records] == list(range(5, 16))
    assert consumer._read_offset[EV] is None  # so Faust hands on 15 although it read past 5 before
    assert EV not in consumer.rewinds


async def test_a_retried_rewind_drops_the_rest_of_the_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, sought = _consumer(tmp_path, monkeypatch, [])
    now = [0.0]
    consumer.rewinds = Rewinds(lambda: now[0], retry_after=5.0)
    fetches = [[SimpleNamespace(offset=42, records=[_rec(40), _rec(41), _rec(42)])]]

    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for message in fetches.pop(0):
            yield EV, message

    monkeypatch.setattr(faust_consumer.Consumer, "getmany", getmany)
    consumer.rewinds.begin(EV, 5, read_offset=11)
    now[0] = 6.0  # 5..39 were deleted meanwhile: 40 looks stale, long after the seek
    assert [m async for _, m in consumer.getmany(timeout=1.0)] == []
    assert sought == [5] and consumer.rewinds.target(EV) == 5
