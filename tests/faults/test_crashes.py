"""Faults on a live worker: kill -9 at ten seeded points of a rollout, a restart of the broker, and
a rebalance between two workers of one group. In every case the decisions equal the uninterrupted
run's (the pure engine fed the same messages), no seq is lost, and a seq published twice (a
decision re-emitted after a crash, before its snapshot was persisted) carries the same bytes.

The broker test starts its own broker (scripts/kafka-local on other ports and another data
directory) and restarts only that one. Recovery times are printed (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stream.app import partition_for_key
from tests.faults.conftest import REPO, Topics
from tests.integration.helpers import engine_decisions, first_difference, has_action, wait_for
from tests.integration.kafka_io import Message, delete_topics_with_prefixes, end_offsets, produce, read_until
from tests.integration.streams import BASELINE, CANARY, generate, messages, recent_start
from tests.integration.workerproc import Worker, free_port

pytestmark = [pytest.mark.integration, pytest.mark.faults]

KILLS = 10


def healthy_values(rid: str, seed: int) -> list[bytes]:
    events = generate(rid, seconds=140, arms={"baseline": BASELINE, "canary": CANARY}, seed=seed,
                      start=recent_start(600))
    return [v for _, v in messages(events, 50)]


def by_seq(msgs: list[Message], rid: str) -> tuple[list[bytes], int]:
    """The rollout's decisions in seq order, and how many were published more than once (each
    repeat must be the same bytes; none may be missing)."""
    seen: dict[int, bytes] = {}
    repeats = 0
    for m in msgs:
        assert m.value is not None
        d = orjson.loads(m.value)
        if d["rollout_id"] != rid:
            continue
        first = seen.setdefault(d["seq"], m.value)
        if first is not m.value:
            repeats += 1
            assert first == m.value, f"seq {d['seq']} twice with different bytes: " + first_difference([m.value], [first])
    assert sorted(seen) == list(range(1, len(seen) + 1)), f"a seq is missing: {sorted(seen)}"
    return [seen[s] for s in sorted(seen)], repeats


def summary(xs: list[float]) -> str:
    return f"min {min(xs):.1f} s, median {statistics.median(xs):.1f} s, max {max(xs):.1f} s"


def test_kill_9_at_ten_seeded_points_gives_the_uninterrupted_decisions(
        worker: Worker, topics: Topics, kafka_bootstrap: str) -> None:
    values = healthy_values("chat-k", seed=11)
    rng = random.Random(2026)
    cuts = sorted(rng.sample(range(20, len(values) - 20), KILLS))
    worker.env["ROLLOUT_GATE_COMMIT_INTERVAL_SECONDS"] = "1"
    worker.start()
    recoveries: list[float] = []
    for k, (lo, hi) in enumerate(zip([0, *cuts[:-1]], cuts, strict=True)):
        asyncio.run(produce(kafka_bootstrap, topics.events, [(b"chat-k", v) for v in values[lo:hi]]))
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the middle of folding that part, or after it
        worker.kill()
        assert worker.proc is not None and worker.proc.returncode == -9, k
        killed = time.monotonic()
        worker.start(ready_timeout=90)
        recoveries.append(time.monotonic() - killed)
    asyncio.run(produce(kafka_bootstrap, topics.events, [(b"chat-k", v) for v in values[cuts[-1]:]]))
    msgs = asyncio.run(read_until(kafka_bootstrap, topics.decisions, has_action("chat-k", "complete", "halt"),
                                  timeout=120))
    got, repeats = by_seq(msgs, "chat-k")
    expected = engine_decisions(values, f"{topics.events}:0")
    assert got == expected, first_difference(got, expected)
    assert orjson.loads(expected[-1])["action"] == "complete"
    print(f"\nkill -9 x{KILLS}: decisions equal the uninterrupted run's ({len(got)}, {repeats} re-emitted with the "
          f"same bytes); kill to ready: {summary(recoveries)}")


# ---- a broker of the test's own ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A second single-node broker on free ports with its own data directory (never the shared one)."""
    if shutil.which("java") is None:
        pytest.fail("java is needed to run a broker of the test's own")
    run = tmp_path_factory.mktemp("broker")
    env = dict(os.environ, KAFKA_PORT=str(free_port()), KAFKA_CONTROLLER_PORT=str(free_port()),
               KAFKA_RUN_DIR=str(run), KAFKA_FRESH="1", KAFKA_HEAP_OPTS="-Xms128m -Xmx384m")
    script = str(REPO / "scripts" / "kafka-local")
    subprocess.run([script, "start"], env=env, check=True, timeout=180, capture_output=True)
    env.pop("KAFKA_FRESH")
    try:
        yield env
    finally:
        subprocess.run([script, "stop"], env=env, timeout=120, capture_output=True)


def test_a_broker_restart_mid_rollout_gives_the_uninterrupted_decisions(
        own_broker: dict[str, str], worker: Worker, topics: Topics) -> None:
    bootstrap = f"127.0.0.1:{own_broker['KAFKA_PORT']}"
    worker.env["ROLLOUT_GATE_KAFKA_BOOTSTRAP"] = bootstrap
    values = healthy_values("chat-b", seed=12)
    cut, cut2 = len(values) // 3, 2 * len(values) // 3
    worker.start(ready_timeout=90)
    try:
        asyncio.run(produce(bootstrap, topics.events, [(b"chat-b", v) for v in values[:cut]]))
        first = asyncio.run(read_until(bootstrap, topics.decisions, lambda m: len(m) >= 2, timeout=60))
        assert len(first) >= 2
        # the second third right before the restart: the worker is still folding it when the broker stops
        asyncio.run(produce(bootstrap, topics.events, [(b"chat-b", v) for v in values[cut:cut2]]))
        script = str(REPO / "scripts" / "kafka-local")
        down = time.monotonic()
        subprocess.run([script, "restart"], env=own_broker, check=True, timeout=240, capture_output=True)
        back = time.monotonic()
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
        asyncio.run(produce(bootstrap, topics.events, [(b"chat-b", v) for v in values[cut2:]]))
        msgs = asyncio.run(read_until(bootstrap, topics.decisions, has_action("chat-b", "complete", "halt"),
                                      timeout=180))
        completed = time.monotonic() - back
        assert worker.proc.poll() is None, "the worker stopped during the broker restart:\n" + worker.log_tail()
        assert "stopping the worker" not in worker.log_path.read_text(errors="replace")
        got, repeats = by_seq(msgs, "chat-b")
        expected = engine_decisions(values, f"{topics.events}:0")
        assert got == expected, first_difference(got, expected)
        print(f"\nbroker restart: down and back in {back - down:.1f} s; the same worker process (never restarted) "
              f"completed the rollout {completed:.1f} s after the broker was back (a third of its events produced just "
              f"before the restart, the last third after it); decisions equal the uninterrupted run's "
              f"({len(got)}, {repeats} re-emitted)")
    finally:
        worker.stop()
        asyncio.run(delete_topics_with_prefixes(bootstrap, [topics.app_id]))


# ---- two workers, one group --------------------------------------------------------------------------

def two_rollouts(partitions: int) -> tuple[str, str]:
    """Two rollout ids in different partitions."""
    a = "chat-ra"
    b = next(f"chat-rb{i}" for i in range(100) if partition_for_key(f"chat-rb{i}", partitions)
             != partition_for_key(a, partitions))
    return a, b


def test_a_second_worker_joins_then_the_first_is_killed_and_the_decisions_are_the_uninterrupted_ones(
        worker: Worker, worker_env: dict[str, str], topics: Topics, kafka_bootstrap: str, tmp_path: Path) -> None:
    worker.env["ROLLOUT_GATE_TOPIC_PARTITIONS"] = "2"
    worker.env["ROLLOUT_GATE_DATA_DIR"] = str(tmp_path / "data-a")
    env_b = dict(worker.env, ROLLOUT_GATE_METRICS_PORT=str(free_port()), ROLLOUT_GATE_DATA_DIR=str(tmp_path / "data-b"))
    second = Worker(env_b, tmp_path, "worker-b")
    rids = two_rollouts(2)
    values = {rid: healthy_values(rid, seed=20 + i) for i, rid in enumerate(rids)}

    def part(lo: float, hi: float) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        for rid, vs in values.items():
            out.extend((rid.encode(), v) for v in vs[int(len(vs) * lo):int(len(vs) * hi)])
        return out

    try:
        worker.start()
        asyncio.run(produce(kafka_bootstrap, topics.events, part(0, 0.3)))
        joined = time.monotonic()
        second.start(ready_timeout=90)  # a rebalance: each worker takes one partition
        assert wait_for(lambda: worker.get("/readyz")[0] == 200, 60)
        join_time = time.monotonic() - joined
        asyncio.run(produce(kafka_bootstrap, topics.events, part(0.3, 0.6)))
        time.sleep(1.0)
        worker.kill()  # the first one dies: the second takes both partitions
        killed = time.monotonic()
        asyncio.run(produce(kafka_bootstrap, topics.events, part(0.6, 1.0)))

        def done(m: list[Message]) -> bool:
            return all(has_action(rid, "complete", "halt")(m) for rid in rids)

        msgs = asyncio.run(read_until(kafka_bootstrap, topics.decisions, done, timeout=180))
        takeover = time.monotonic() - killed
        assert second.proc is not None and second.proc.poll() is None
        ends = asyncio.run(end_offsets(kafka_bootstrap, topics.events))
        repeats = 0
        for rid in rids:
            got, n = by_seq(msgs, rid)
            repeats += n
            source = f"{topics.events}:{partition_for_key(rid, 2)}"
            expected = engine_decisions(values[rid], source)
            assert got == expected, f"{rid}: " + first_difference(got, expected)
            assert orjson.loads(expected[-1])["action"] == "complete"
        assert sum(ends.values()) == sum(len(v) for v in values.values())
        print(f"\nrebalance: second worker joined and both ready in {join_time:.1f} s; after kill -9 of the first, "
              f"both rollouts complete {takeover:.1f} s later with the uninterrupted decisions ({repeats} re-emitted)")
    finally:
        second.stop()
        if second.proc is not None and second.proc.returncode not in (0, None):
            print(second.log_tail(80))
