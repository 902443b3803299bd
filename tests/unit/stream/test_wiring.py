from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

from stream import commands
from stream.agents import to_completion
from stream.app import bootstrap, partition_for_key
from stream.settings import Settings
from stream.topics import topic_specs

from .fakes import FakeEngine


def test_partition_for_key_matches_kafkas_default_partitioner() -> None:
    part = DefaultPartitioner()
    for n in (1, 3, 12):
        for key in ("chat-v7", "a", "rollout-ü-42", "x" * 100):
            assert partition_for_key(key, n) == part(key.encode(), list(range(n)), list(range(n)))


def test_bootstrap_wires_raw_topics_a_partitioned_table_and_acks_all(tmp_path: Path) -> None:
    s = Settings(app_id="unit-wiring", data_dir=tmp_path, topic_partitions=3)
    w = bootstrap(s, engine_factory=FakeEngine)
    assert w.app.conf.producer_acks == -1
    assert w.app.conf.web_enabled is False
    assert str(w.app.conf.store) == "memory:"
    assert w.events_topic.get_topic_name() == "rollout.events"
    assert w.events_topic.value_serializer == "raw"
    assert w.table.use_partitioner is True
    assert (w.table.key_serializer, w.table.value_serializer) == ("raw", "raw")
    assert w.table.changelog_topic_name == "unit-wiring-rollout-state-changelog"
    assert w.table.partitions == 3
    agents = {a.name: a for a in w.app.agents.values()}
    assert set(agents) == {"unit-wiring.events", "unit-wiring.commands"}
    assert all(a.concurrency == 1 for a in agents.values())
    assert isinstance(w.processor.engine, FakeEngine)


def test_topic_specs_compact_decisions_and_retain_events() -> None:
    specs = {t.name: t for t in topic_specs(Settings(events_retention_seconds=3600))}
    assert specs["rollout.decisions"].config["cleanup.policy"] == "compact"
    assert specs["rollout.events"].config == {"cleanup.policy": "delete", "retention.ms": "3600000"}
    assert specs["rollout.events.dlq"].config["cleanup.policy"] == "delete"
    assert specs["rollout.events"].copartitioned and specs["rollout.commands"].copartitioned


async def test_to_completion_finishes_the_batch_before_the_cancellation() -> None:
    done: list[str] = []

    async def batch() -> str:
        await asyncio.sleep(0.05)
        done.append("batch")
        return "ok"

    task = asyncio.ensure_future(to_completion(batch()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["batch"]
    assert await to_completion(batch()) == "ok"


def test_kafka_command_says_clearly_when_there_is_no_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from stream.cli import app

    assert commands.kafka_script() is not None  # this test runs from the repository
    monkeypatch.setattr(commands, "kafka_script", lambda: None)
    r = CliRunner().invoke(app, ["kafka", "status"])
    assert r.exit_code == 2
    assert "no source checkout" in r.output


async def test_transport_sets_the_fetch_wait_on_faust_s_consumer(tmp_path: Path) -> None:
    import aiokafka
    from faust.transport import drivers

    from stream import transport

    assert drivers.by_url(f"{transport.SCHEME}://localhost:9092") is transport.Transport
    s = Settings(app_id="unit-fetch", data_dir=tmp_path, fetch_max_wait_ms=37)
    w = bootstrap(s, engine_factory=FakeEngine)
    assert str(w.app.conf.broker[0]).startswith("rgkafka://")
    assert w.app.conf.consumer_max_fetch_size == s.max_fetch_bytes
    thread = transport.ConsumerThread(w.app.consumer)
    consumer = thread._create_worker_consumer(w.app.transport)
    assert isinstance(consumer, aiokafka.AIOKafkaConsumer)
    # the private attribute aiokafka hands to its Fetcher; if an upgrade renames it, this fails
    assert consumer._fetch_max_wait_ms == 37
    await consumer.stop()


def test_fail_stop_exits_at_once_with_its_code_and_says_why() -> None:
    import subprocess
    import sys

    code = ("import logging; logging.basicConfig(); from stream.agents import fail_stop; "
            "fail_stop('batch of 3 messages', RuntimeError('engine broke')); print('not reached')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[3])
    assert r.returncode == 70
    assert "batch of 3 messages failed; stopping the worker without committing" in r.stderr
    assert "engine broke" in r.stderr
    assert "not reached" not in r.stdout


def test_commits_are_capped_at_what_the_processor_finished() -> None:
    from faust.types import TP

    from stream.transport import clamp_commit_offsets

    ev0, ev1, cmd0, other = TP("ev", 0), TP("ev", 1), TP("cmd", 0), TP("changelog", 0)
    positions = {("ev", 0): 120, ("cmd", 0): 7}

    def limit(topic: str, partition: int) -> int | None:
        return positions.get((topic, partition), 0) if topic in ("ev", "cmd") else None

    offsets = {ev0: 150, ev1: 40, cmd0: 7, other: 99}
    committed = {ev0: 100, ev1: None, cmd0: 7, other: 10}
    # ev0: Faust acked (skipped) up to 150, the processor finished 120 -> 120
    # ev1: nothing processed here yet -> no commit; cmd0: no progress -> no commit
    # a topic the processor does not consume is left to Faust
    assert clamp_commit_offsets(offsets, committed, limit) == {ev0: 120, other: 99}
    # never backwards
    assert clamp_commit_offsets({ev0: 150}, {ev0: 130}, limit) == {}
