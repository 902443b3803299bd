"""Worker benchmark on the local broker, side by side in one run; prints a markdown table.

    .venv/bin/python benchmarks/worker_bench.py [--events 1000000] [--single-events 200000] [--repeats 3] [--halts 60]
                                                [--pin-cpu CPU] [--quick] [--keep-topics]

(a) throughput: the worker (decode + engine + state + decisions) vs a bare aiokafka consumer that
    only decodes the same topic (gates.events.decode_message, msgspec), for messages of 100 events
    and for one event per message. Both read a topic produced beforehand, from the beginning; the
    worker's clock starts when /readyz turns 200 and stops when /metrics has counted every event.
    --repeats pairs run alternately (medians and the range of the pairs' ratios are reported).
    Each pair also reports CPU seconds per event (the bare loop's process time; every thread of the
    worker from ready to done), which a machine shared with other work disturbs less than wall time.
(b) decision latency: for each of N cost-regressed rollouts, everything up to the deciding message
    is produced first; then the deciding message alone, timed from just before the send until the
    halt is read from the decisions topic.
(c) worker RSS with 1,000 and 10,000 rollouts holding state (30 events each, both arms).

Needs the broker (scripts/kafka-local start) and ROLLOUT_GATE_KAFKA_BOOTSTRAP (default
127.0.0.1:19092). Every run uses fresh topics and app ids, and deletes them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from connectors.testing import bootstrap as broker_bootstrap  # noqa: E402
from gates.engine import Engine  # noqa: E402
from gates.events import Rejection, decode_message  # noqa: E402
from gates.policy import parse_policy  # noqa: E402
from tests.integration.helpers import metric_value  # noqa: E402
from tests.integration.kafka_io import delete_topics_with_prefixes, end_offsets, produce  # noqa: E402
from tests.integration.streams import (  # noqa: E402
    BASELINE,
    CANARY,
    FAST_POLICY,
    generate,
    interleave,
    messages,
    recent_start,
)
from tests.integration.workerproc import Worker, free_port  # noqa: E402

BOOTSTRAP = broker_bootstrap()
# the name prefix of every topic and app id this run creates: deleted at the end (--keep-topics keeps them)
PREFIXES: set[str] = set()


def worker_env(prefix: str, workdir: Path, policy: Path | None, app_id: str | None = None) -> dict[str, str]:
    PREFIXES.add(prefix)
    assert app_id is None or app_id.startswith(prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_GATE_")}
    env.update({
        "ROLLOUT_GATE_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "ROLLOUT_GATE_APP_ID": app_id or prefix,
        "ROLLOUT_GATE_EVENTS_TOPIC": f"{prefix}.events",
        "ROLLOUT_GATE_DECISIONS_TOPIC": f"{prefix}.decisions",
        "ROLLOUT_GATE_DLQ_TOPIC": f"{prefix}.dlq",
        "ROLLOUT_GATE_COMMANDS_TOPIC": f"{prefix}.commands",
        "ROLLOUT_GATE_METRICS_HOST": "127.0.0.1",
        "ROLLOUT_GATE_METRICS_PORT": str(free_port()),
        "PYTHONPATH": str(REPO),
    })
    if policy is not None:
        env["ROLLOUT_GATE_POLICY_FILE"] = str(policy)
    return env


# --pin-cpu: the CPU that the throughput pairs' bare consumer and worker run on, or None
PIN: set[int] | None = None


def start_worker(prefix: str, workdir: Path, policy: Path | None = None,
                 app_id: str | None = None, cpus: set[int] | None = None) -> tuple[Worker, float]:
    w = Worker(worker_env(prefix, workdir, policy, app_id), workdir, app_id or prefix, cpus=cpus)
    # the worker starts consuming as soon as /readyz turns 200: poll it finely, so that the clock
    # starts within a few ms of that (a coarse poll would hand the worker free time)
    w.start(ready_timeout=120, ready_poll=0.005)
    return w, time.perf_counter()


def scrape(w: Worker, timeout: float = 60.0) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=timeout) as r:
        return str(r.read().decode())


def counted(w: Worker) -> float:
    text = scrape(w)
    return sum(metric_value(text, "rollout_gate_events_total", arm=a) or 0.0
               for a in ("baseline", "canary", "shadow"))


def wait_counted(w: Worker, n: int, timeout: float, interval: float = 0.1, fine: float | None = None) -> float:
    """The time /metrics first shows ``n`` events counted. With ``fine``, polls every ``interval``
    until the count's rate says the end is near, then halves the wait down to ``fine``: each scrape
    costs the worker a few ms of CPU (and the GIL), so polling finely all along would slow it."""
    deadline = time.monotonic() + timeout
    last: tuple[float, float] | None = None
    while time.monotonic() < deadline:
        c = counted(w)
        now = time.perf_counter()
        if c >= n:
            return now
        wait = interval
        if fine is not None and last is not None and c > last[1]:
            eta = (n - c) / ((c - last[1]) / (now - last[0]))
            wait = min(interval, max(fine, eta / 2))
        last = (now, c)
        time.sleep(wait)
    raise RuntimeError(f"worker counted {counted(w)} of {n} events within {timeout}s:\n{w.log_tail()}")


def rss_mb(w: Worker) -> float:
    assert w.proc is not None
    return psutil.Process(w.proc.pid).memory_info().rss / 2**20


# ---- (a) throughput --------------------------------------------------------------------------

async def bare_decode(topic: str) -> tuple[int, float, float]:
    """Read the whole topic with one aiokafka consumer and decode every message; (events, seconds,
    CPU seconds of this process)."""
    ends = await end_offsets(BOOTSTRAP, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 2**20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        for tp in tps:
            await consumer.seek_to_beginning(tp)
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        left = dict(ends)
        while any(left[p] > 0 for p in left):
            batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
            for tp, records in batch.items():
                for r in records:
                    n += sum(1 for e in decode_message(r.value) if not isinstance(e, Rejection))
                left[tp.partition] = ends[tp.partition] - (records[-1].offset + 1)
        return n, time.perf_counter() - t0, time.process_time() - c0
    finally:
        await consumer.stop()


def throughput(per_message: int, n_events: int, workdir: Path, repeats: int) -> dict[str, Any]:
    """``repeats`` pairs (bare consumer, then a fresh worker) over one topic produced beforehand;
    each worker has its own app id (consumer group and state), so each reads the topic from the start."""
    prefix = f"bench-tp{per_message}-{uuid.uuid4().hex[:6]}"
    PREFIXES.add(prefix)
    rollouts = 10
    seconds = n_events / rollouts / (BASELINE.rps + CANARY.rps) / 1.5  # feedback adds ~50%
    start = recent_start(seconds + 600)
    streams = [generate(f"bench-{i}", seconds=seconds, seed=100 + i, start=start,
                        arms={"baseline": BASELINE, "canary": CANARY}) for i in range(rollouts)]
    events = interleave(*streams)
    msgs = list(messages(events, per_message))
    # create the topics with the worker's own settings first, then fill the events topic
    import stream.topics as st
    from stream.settings import Settings

    settings = Settings(kafka_bootstrap=BOOTSTRAP, events_topic=f"{prefix}.events",
                        decisions_topic=f"{prefix}.decisions", dlq_topic=f"{prefix}.dlq",
                        commands_topic=f"{prefix}.commands", app_id=prefix)
    asyncio.run(st.ensure_topics(settings))
    asyncio.run(produce(BOOTSTRAP, f"{prefix}.events", msgs, linger_ms=20))
    pairs = []
    cpu_ratios = []
    for i in range(repeats):
        allowed = os.sched_getaffinity(0)
        if PIN:
            os.sched_setaffinity(0, PIN)
        try:
            n_bare, s_bare, cpu_bare = asyncio.run(bare_decode(f"{prefix}.events"))
        finally:
            os.sched_setaffinity(0, allowed)
        assert n_bare == len(events)
        w, t_ready = start_worker(prefix, workdir, app_id=f"{prefix}-{i}", cpus=PIN)
        try:
            assert w.proc is not None
            proc = psutil.Process(w.proc.pid)
            c0 = proc.cpu_times()
            t_done = wait_counted(w, len(events), timeout=600, interval=0.25, fine=0.005)
            c1 = proc.cpu_times()
            s_worker = t_done - t_ready
        finally:
            w.stop()
        # CPU seconds of every thread of the worker (Faust's consumer thread included) from ready to
        # done: a steadier measure than wall time on a machine shared with other work
        cpu_worker = (c1.user - c0.user) + (c1.system - c0.system)
        pairs.append((n_bare / s_bare, len(events) / s_worker))
        cpu_ratios.append(cpu_bare / cpu_worker)
        print(f"  {per_message}/message pair {i + 1}: bare {pairs[-1][0]:,.0f} ev/s, worker {pairs[-1][1]:,.0f} ev/s, "
              f"{pairs[-1][1] / pairs[-1][0]:.2f}x; CPU per event {cpu_ratios[-1]:.2f}x", file=sys.stderr)
    ratios = sorted(w_eps / b_eps for b_eps, w_eps in pairs)
    cpu_ratios.sort()
    return {"per_message": per_message, "events": len(events), "messages": len(msgs),
            "bare_eps": statistics.median(p[0] for p in pairs), "worker_eps": statistics.median(p[1] for p in pairs),
            "ratio": statistics.median(ratios), "ratio_range": (ratios[0], ratios[-1]), "pairs": len(pairs),
            "cpu_ratio": statistics.median(cpu_ratios), "cpu_range": (cpu_ratios[0], cpu_ratios[-1])}


# ---- (b) decision latency ------------------------------------------------------------------

def deciding_split(values: list[bytes], policy_text: str) -> int:
    """Index of the message whose ingest yields the halt (the pure engine, fed like the worker)."""
    engine = Engine(parse_policy(policy_text))
    for i, v in enumerate(values):
        events = [e for e in decode_message(v) if not isinstance(e, Rejection)]
        if any(d.action == "halt" for d in engine.ingest(events, source="x:0", offset=i)):
            return i
    raise RuntimeError("no halt in the stream")


async def _latencies(prefix: str, cases: list[tuple[str, bytes]]) -> list[float]:
    topic = f"{prefix}.decisions"
    ends = await end_offsets(BOOTSTRAP, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=10)
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=0)
    await producer.start()
    out: list[float] = []
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, ends[tp.partition])
        for rid, deciding in cases:
            t0 = time.perf_counter()
            await producer.send_and_wait(f"{prefix}.events", deciding, key=rid.encode())
            found = False
            deadline = time.monotonic() + 30
            while not found and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        d = orjson.loads(r.value)
                        if d["rollout_id"] == rid and d["action"] == "halt":
                            found = True
            if not found:
                raise RuntimeError(f"no halt for {rid} within 30 s")
            out.append(time.perf_counter() - t0)
    finally:
        await producer.stop()
        await consumer.stop()
    return out


def latency(n_halts: int, workdir: Path) -> dict[str, Any]:
    prefix = f"bench-lat-{uuid.uuid4().hex[:6]}"
    policy = workdir / "fast.yaml"
    policy.write_text(FAST_POLICY)
    start = recent_start(900)
    prefixes: list[tuple[bytes, bytes]] = []
    cases: list[tuple[str, bytes]] = []
    for i in range(n_halts):
        rid = f"lat-{i}"
        evs = generate(rid, seconds=20, seed=500 + i, start=start,
                       arms={"baseline": BASELINE, "canary": CANARY.scaled(usd_per_1k_tokens=0.0027)})
        values = [v for _, v in messages(evs, 10)]
        k = deciding_split(values, FAST_POLICY)
        prefixes.extend((rid.encode(), v) for v in values[:k])
        cases.append((rid, values[k]))
    w, _ = start_worker(prefix, workdir, policy)
    try:
        asyncio.run(produce(BOOTSTRAP, f"{prefix}.events", prefixes, linger_ms=20))
        n_prefix = sum(len(decode_message(v)) for _, v in prefixes)
        wait_counted(w, n_prefix, timeout=300)
        time.sleep(1.0)
        lat = sorted(asyncio.run(_latencies(prefix, cases)))
    finally:
        w.stop()
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"halts": len(lat), "p50": statistics.median(lat), "p99": q[98], "max": lat[-1]}


# ---- (c) memory ------------------------------------------------------------------------------

def memory(counts: list[int], workdir: Path) -> list[dict[str, Any]]:
    out = []
    for n in counts:
        prefix = f"bench-mem{n}-{uuid.uuid4().hex[:6]}"
        w, _ = start_worker(prefix, workdir)
        try:
            idle = rss_mb(w)
            start = recent_start(900)
            msgs: list[tuple[bytes, bytes]] = []
            total = 0
            for i in range(n):
                evs = generate(f"mem-{i}", seconds=60, seed=i, start=start,
                               arms={"baseline": BASELINE.scaled(rps=0.2, feedback_p=0.2),
                                     "canary": CANARY.scaled(rps=0.2, feedback_p=0.2)})
                evs = evs[:30]
                total += len(evs)
                msgs.extend(messages(evs, 30))
            asyncio.run(produce(BOOTSTRAP, f"{prefix}.events", msgs, linger_ms=20))
            wait_counted(w, total, timeout=600, interval=2.0)
            time.sleep(2.0)
            t0 = time.perf_counter()
            body = scrape(w)
            scrape_s = time.perf_counter() - t0
            series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
            out.append({"rollouts": n, "events": total, "idle_mb": idle, "rss_mb": rss_mb(w),
                        "scrape_s": scrape_s, "series": series, "scrape_kb": len(body) / 1024})
        finally:
            w.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    # several seconds of worker time each, so that start-up and the end's detection stay small
    ap.add_argument("--events", type=int, default=1_000_000, help="events for the batched throughput run")
    ap.add_argument("--single-events", type=int, default=200_000, help="events for one-event-per-message")
    ap.add_argument("--halts", type=int, default=60)
    ap.add_argument("--rollouts", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--repeats", type=int, default=3, help="bare/worker pairs per throughput measure")
    ap.add_argument("--quick", action="store_true", help="small sizes, to check that the script runs")
    ap.add_argument("--keep-topics", action="store_true", help="leave this run's topics on the broker")
    ap.add_argument("--pin-cpu", type=int, default=None, metavar="CPU",
                    help="run the throughput pairs' bare consumer and worker on this CPU only (the broker and "
                         "the rest stay anywhere): one dedicated core each, as a pod with an exclusive CPU gets")  # fmt: skip
    a = ap.parse_args()
    global PIN
    if a.pin_cpu is not None:
        if a.pin_cpu not in os.sched_getaffinity(0):
            ap.error(f"--pin-cpu {a.pin_cpu}: not one of this process's CPUs {sorted(os.sched_getaffinity(0))}")
        PIN = {a.pin_cpu}
    if a.quick:
        a.events, a.single_events, a.halts, a.rollouts, a.repeats = 20_000, 5_000, 10, [100], 1
    with tempfile.TemporaryDirectory(prefix="worker-bench-") as tmp:
        work = Path(tmp)
        print(f"broker {BOOTSTRAP}; {psutil.cpu_count()} CPUs; Python {sys.version.split()[0]}", file=sys.stderr)
        try:
            tp = [throughput(100, a.events, work, a.repeats), throughput(1, a.single_events, work, a.repeats)]
            lat = latency(a.halts, work)
            mem = memory(a.rollouts, work)
        finally:
            if not a.keep_topics:
                try:
                    n = asyncio.run(delete_topics_with_prefixes(BOOTSTRAP, PREFIXES))
                    print(f"deleted this run's {n} topics (--keep-topics keeps them)", file=sys.stderr)
                except Exception as exc:  # do not hide the run's own error behind the cleanup's
                    print(f"WARNING: could not delete this run's topics: {exc!r}", file=sys.stderr)
    targets = {100: 0.5, 1: 0.2}
    print("\n| measure | bare decode | worker | ratio / value | target |")
    print("|---|---|---|---|---|")
    for r in tp:
        print(f"| throughput, {r['per_message']} event(s)/message ({r['events']:,} events) | "
              f"{r['bare_eps']:,.0f} ev/s | {r['worker_eps']:,.0f} ev/s | {r['ratio']:.2f}x "
              f"(median of {r['pairs']} pairs; {r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}) | "
              f">= {targets[r['per_message']]}x |")
        print(f"| CPU per event, {r['per_message']} event(s)/message: bare / worker | | | {r['cpu_ratio']:.2f}x "
              f"({r['cpu_range'][0]:.2f}-{r['cpu_range'][1]:.2f}) | |")
    print(f"| decision latency over {lat['halts']} halts | | | p50 {lat['p50'] * 1000:.0f} ms, "
          f"p99 {lat['p99'] * 1000:.0f} ms (max {lat['max'] * 1000:.0f} ms) | p99 <= 1000 ms |")
    for m in mem:
        print(f"| worker RSS, {m['rollouts']:,} rollouts ({m['events']:,} events) | | | "
              f"{m['rss_mb']:.0f} MB (idle {m['idle_mb']:.0f} MB); /metrics {m['series']:,} series, "
              f"{m['scrape_kb']:,.0f} KiB in {m['scrape_s']:.2f} s | |")


if __name__ == "__main__":
    main()
