"""Connector latencies on a real broker (loopback):

1. halt -> weight 0: from the moment a halt decision is handed to a producer to the moment the
   DecisionSubscriber (what the router reads on every request) applies weight 0. Alternates a promote
   and a halt per round so every halt is a real change; p50/p99 over ``--halts`` halts.
2. publisher overhead: the cost of one ``publish()`` call on the request path, at a paced
   ``--rate`` requests/s for ``--seconds``, while the background sender ships to Kafka; for the
   async publisher (on the caller's loop) and for SyncEventPublisher (from a worker thread).

    .venv/bin/python benchmarks/connectors_bench.py [--halts 100] [--rate 2000] [--seconds 10]

Needs the broker (scripts/kafka-local start); reads ROLLOUT_GATE_KAFKA_BOOTSTRAP. The run's topics
are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.publisher import EventPublisher, SyncEventPublisher
from connectors.subscriber import DecisionSubscriber
from connectors.testing import bootstrap, create_topics, decision, unique
from tests.integration.kafka_io import delete_topics_with_prefixes

RUN = f"bench-conn-{uuid.uuid4().hex[:6]}"  # the name prefix of every topic this run creates


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


async def halt_latency(servers: str, halts: int) -> list[float]:
    topic = unique(f"{RUN}.decisions")
    await create_topics(servers, [topic], compact=True)
    sub = DecisionSubscriber(servers, topic=topic, registry=CollectorRegistry())
    applied: dict[int, float] = {}
    waiters: dict[int, asyncio.Event] = {}

    def on_decision(d: Any) -> None:
        applied[d.seq] = time.perf_counter()
        if d.seq in waiters:
            waiters[d.seq].set()

    sub.on_decision(on_decision)
    await sub.start()
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", enable_idempotence=True, linger_ms=0)
    await producer.start()
    out: list[float] = []
    try:
        seq = 0
        for i in range(halts + 5):  # the first 5 rounds warm connections up and are not counted
            for action in ("promote", "halt"):
                seq += 1
                waiters[seq] = asyncio.Event()
                d = decision("bench", seq, action=action, weight=10)
                t0 = time.perf_counter()
                await producer.send(topic, d.to_json(), key=b"bench")
                await asyncio.wait_for(waiters[seq].wait(), 10)
                if action == "halt":
                    assert sub.weight("bench") == 0.0
                    if i >= 5:
                        out.append((applied[seq] - t0) * 1000)
    finally:
        await producer.stop()
        await sub.stop()
    return out


def event(i: int) -> dict[str, Any]:
    return {
        "rollout_id": "bench-r",
        "arm": "canary" if i % 10 == 0 else "baseline",
        "request_id": f"q{i}",
        "ts": time.time(),
        "latency_ms": 123.4,
        "output_tokens": 250,
        "input_tokens": 600,
        "status": "ok",
        "refusal": False,
        "model": "m",
        "model_digest": "sha256:abc",
        "cost_usd": 0.0012,
    }


def paced(rate: int, seconds: float, call: Any) -> list[float]:
    """Calls ``call(i)`` on a fixed schedule of ``rate`` per second; returns each call's cost in µs."""
    costs: list[float] = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter_ns()
        call(i)
        costs.append((time.perf_counter_ns() - t0) / 1000)
    return costs


async def async_overhead(servers: str, rate: int, seconds: float) -> tuple[list[float], dict[str, float]]:
    topic = unique(f"{RUN}.events")
    await create_topics(servers, [topic])
    reg = CollectorRegistry()
    pub = EventPublisher(servers, topic=topic, registry=reg)
    await pub.start()
    costs: list[float] = []
    per_tick = max(1, rate // 1000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    i = 0
    # 1 ms ticks on the loop, like a server handling requests; the sender shares this loop.
    while loop.time() - start < seconds:
        for _ in range(per_tick):
            t0 = time.perf_counter_ns()
            pub.publish(event(i))
            costs.append((time.perf_counter_ns() - t0) / 1000)
            i += 1
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
    achieved = i / (loop.time() - start)
    await pub.stop()
    return costs, stats(reg, achieved)


def stats(reg: CollectorRegistry, achieved: float) -> dict[str, float]:
    return {
        "rate": achieved,
        "sent": reg.get_sample_value("rollout_gate_publisher_sent_events_total") or 0,
        "messages": reg.get_sample_value("rollout_gate_publisher_sent_messages_total") or 0,
        "dropped": sum(
            reg.get_sample_value("rollout_gate_publisher_dropped_total", {"reason": r}) or 0
            for r in ("buffer_full", "send_error", "closed")
        ),
    }


def sync_overhead(
    servers: str, topic: str, rate: int, seconds: float
) -> tuple[list[float], dict[str, float]]:
    reg = CollectorRegistry()
    pub = SyncEventPublisher(servers, topic=topic, registry=reg).start()
    costs: list[float] = []
    result: dict[str, float] = {}

    def worker() -> None:
        t0 = time.perf_counter()
        costs.extend(paced(rate, seconds, lambda i: pub.publish(event(i))))
        result["rate"] = len(costs) / (time.perf_counter() - t0)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    pub.close()
    return costs, stats(reg, result["rate"])


def row(name: str, xs: list[float], unit: str) -> str:
    return (
        f"| {name} | {len(xs)} | {pct(xs, 50):.1f} {unit} | {pct(xs, 99):.1f} {unit} | "
        f"{pct(xs, 99.9):.1f} {unit} | {statistics.fmean(xs):.1f} {unit} | {max(xs):.1f} {unit} |"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--halts", type=int, default=100)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args()
    servers = bootstrap()

    try:
        halts = await halt_latency(servers, a.halts)
        a_costs, a_stats = await async_overhead(servers, a.rate, a.seconds)
        topic = unique(f"{RUN}.events.sync")
        await create_topics(servers, [topic])
        s_costs, s_stats = await asyncio.to_thread(sync_overhead, servers, topic, a.rate, a.seconds)
    finally:
        try:
            await delete_topics_with_prefixes(servers, [RUN])  # this run's topics
        except Exception as exc:  # do not hide the run's own error behind the cleanup's
            print(f"WARNING: could not delete this run's topics: {exc!r}", file=sys.stderr)

    print(f"broker {servers}, {a.halts} halts, publish() paced at {a.rate}/s for {a.seconds:.0f} s\n")
    print("| measurement | n | p50 | p99 | p99.9 | mean | max |")
    print("|---|---|---|---|---|---|---|")
    print(row("halt produced -> subscriber weight 0", halts, "ms"))
    print(row("EventPublisher.publish() (async, same loop)", a_costs, "µs"))
    print(row("SyncEventPublisher.publish() (thread)", s_costs, "µs"))
    print()
    for name, st in (("async", a_stats), ("sync", s_stats)):
        print(
            f"- {name}: achieved {st['rate']:.0f} req/s, {st['sent']:.0f} events in {st['messages']:.0f} "
            f"Kafka messages, {st['dropped']:.0f} dropped"
        )


if __name__ == "__main__":
    asyncio.run(main())
