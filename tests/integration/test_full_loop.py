"""The whole local loop on the real broker, nothing mocked: HTTP users -> reference router -> two fake
model servers; the router publishes one event per request -> the worker (a subprocess) -> decisions on
the compacted topic -> the router's subscriber applies them to the split it serves."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors.book import RolloutView
from connectors.config import KafkaConfig
from connectors.fake_upstream import FakeUpstream, UpstreamSpec
from connectors.router import SUBSCRIBER, RouterConfig, build_router_app
from connectors.split import Price
from connectors.subscriber import DecisionSubscriber
from tests.integration.conftest import Topics
from tests.integration.helpers import decoded, has_action, metric_value, of, wait_for
from tests.integration.kafka_io import read_until
from tests.integration.streams import FULL_LOOP_POLICY
from tests.integration.workerproc import Worker

pytestmark = pytest.mark.integration

ROLLOUT = "chat-v7"
BASE_DIGEST = "sha256:" + "b" * 64
CANARY_DIGEST = "sha256:" + "c" * 64
PRICE = Price(input_per_1k=0.001, output_per_1k=0.002)
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "what is a canary release"}]}
USERS = 500  # sticky ids: enough that every step's weight is close to its share of users
CONCURRENCY = 24



@pytest.fixture
def fast_policy(tmp_path: Path) -> Path:
    """Overrides the conftest's policy: the worker fixture reads this one."""
    p = tmp_path / "policy.yaml"
    p.write_text(FULL_LOOP_POLICY)
    return p


@dataclass(frozen=True)
class Reply:
    user: str
    status: int
    arm: str
    digest: str | None
    seq: int | None  # the router's applied decision when the reply came back


@dataclass
class Loop:
    client: TestClient[Any, Any]
    subscriber: DecisionSubscriber

    def view(self) -> RolloutView | None:
        return self.subscriber.state(ROLLOUT)

    async def ask(self, user: str) -> Reply:
        r = await self.client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": user})
        await r.read()
        view = self.view()
        return Reply(user, r.status, r.headers["x-rollout-arm"], r.headers.get("x-rollout-digest"), view.seq if view else None)

    async def drive(self, until: Callable[[RolloutView | None], bool], timeout: float) -> list[Reply]:
        """Many sticky users in parallel until ``until(router's view)`` holds or the timeout; the
        replies either way (the caller asserts on the view)."""
        replies: list[Reply] = []
        stop = asyncio.Event()

        async def user_loop(k: int) -> None:
            for i in itertools.count(k, CONCURRENCY):
                if stop.is_set():
                    return
                replies.append(await self.ask(f"u{i % USERS}"))

        tasks = [asyncio.create_task(user_loop(k)) for k in range(CONCURRENCY)]
        deadline = time.monotonic() + timeout
        try:
            while not until(self.view()) and time.monotonic() < deadline and not any(t.done() for t in tasks):
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        return replies

    async def everyone(self) -> list[Reply]:
        """One request from every user, in parallel batches."""
        out: list[Reply] = []
        for lo in range(0, USERS, CONCURRENCY * 2):
            out += await asyncio.gather(*(self.ask(f"u{i}") for i in range(lo, min(lo + CONCURRENCY * 2, USERS))))
        return out


@asynccontextmanager
async def full_loop(topics: Topics, bootstrap: str, canary: UpstreamSpec) -> AsyncIterator[Loop]:
    """The router in front of a baseline (healthy) and the given canary, wired to the test's topics.
    Start the worker first: it creates the topics, and the subscriber then assigns the decisions
    topic at once."""
    base = FakeUpstream(UpstreamSpec(model="chat-v6", latency_ms=3, output_tokens=120), seed=1)
    cand = FakeUpstream(canary, seed=2)
    await base.start()
    await cand.start()
    config = RouterConfig(
        rollout_id=ROLLOUT,
        baseline_url=base.url,
        canary_url=cand.url,
        baseline_digest=BASE_DIGEST,
        canary_digest=CANARY_DIGEST,
        prices={"chat-v6": PRICE, canary.model: PRICE},
        initial_weight=20,  # the policy's first step: canary traffic flows before the worker speaks
    )
    app = build_router_app(
        config, KafkaConfig(bootstrap_servers=bootstrap), events_topic=topics.events, decisions_topic=topics.decisions
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    try:
        await asyncio.wait_for(client.start_server(), 30)
        yield Loop(client, app[SUBSCRIBER])
    finally:
        await asyncio.wait_for(client.close(), 30)  # stops the publisher, which flushes
        await base.stop()
        await cand.stop()


async def decisions_until(topics: Topics, bootstrap: str, *actions: str) -> list[dict[str, Any]]:
    msgs = await read_until(bootstrap, topics.decisions, has_action(ROLLOUT, *actions), timeout=30)
    assert all(m.key == ROLLOUT.encode() for m in msgs)
    return of(ROLLOUT, decoded(msgs))


async def assert_worker_counted(worker: Worker, replies: list[Reply]) -> None:
    """Every reply a user got reached the worker as one event of the arm the user saw: nothing lost
    between the router's publisher, the broker and the worker, nothing counted twice."""
    want = {arm: float(n) for arm, n in Counter(r.arm for r in replies).items()}
    got: dict[str, float] = {}

    def counted() -> bool:
        text = worker.metrics()
        got.update({arm: metric_value(text, "rollout_gate_events_total", arm=arm) or 0.0 for arm in want})
        return got == want

    assert await asyncio.to_thread(wait_for, counted, 30), (got, want)


async def test_regressing_canary_is_rolled_back_and_the_router_pins_the_baseline(
    worker: Worker, topics: Topics, kafka_bootstrap: str
) -> None:
    await asyncio.to_thread(worker.start)
    # Refuses 40% of requests where the baseline never does: the errors gate (error + refusal rate,
    # 2x limit) breaches on the first looks that have enough canary requests.
    refusing = UpstreamSpec(model="chat-v7", latency_ms=3, output_tokens=120, refusal_rate=0.4)
    async with full_loop(topics, kafka_bootstrap, refusing) as loop:
        during = await loop.drive(lambda v: v is not None and v.halted, timeout=60)
        view = loop.view()
        assert view is not None and view.halted, (view, len(during))
        assert (view.action, view.stage, view.weight) == ("halt", "rolled-back", 0.0)
        assert view.pinned_digest == BASE_DIGEST
        # Before the halt the canary served its share, with its own digest.
        served = {(r.arm, r.digest) for r in during if r.status == 200}
        assert served == {("baseline", BASE_DIGEST), ("canary", CANARY_DIGEST)}
        was_canary = {r.user for r in during if r.arm == "canary"}
        assert was_canary

        after = await loop.everyone()
        assert {(r.status, r.arm, r.digest) for r in after} == {(200, "baseline", BASE_DIGEST)}
        assert was_canary <= {r.user for r in after}  # the canary's users are back on the baseline
        health = await (await loop.client.get("/healthz")).json()
        assert health == {"rollout_id": ROLLOUT, "weight": 0.0, "seq": view.seq, "stage": "rolled-back"}

    await assert_worker_counted(worker, during + after)
    ds = await decisions_until(topics, kafka_bootstrap, "halt")
    assert [(d["seq"], d["action"], d["weight"]) for d in ds] == [(1, "promote", 20), (2, "halt", 0)], [d["reason"] for d in ds]
    halt = ds[-1]
    assert halt["seq"] == view.seq
    assert (halt["stage"], halt["previous_weight"]) == ("rolled-back", 20)
    assert (halt["baseline_digest"], halt["canary_digest"]) == (BASE_DIGEST, CANARY_DIGEST)
    gates = {g["name"]: g for g in halt["gates"]}
    assert gates["errors"]["status"] == "breach", gates
    assert gates["errors"]["ratio"] > 2
    assert halt["reason"].startswith("Halted at canary-20: error+refusal rate is "), halt["reason"]
    assert halt["reason"].endswith(f"Pin baseline {BASE_DIGEST}.")


async def test_healthy_canary_is_promoted_to_complete_and_the_router_serves_it_to_everyone(
    worker: Worker, topics: Topics, kafka_bootstrap: str
) -> None:
    await asyncio.to_thread(worker.start)
    same = UpstreamSpec(model="chat-v7", latency_ms=3, output_tokens=120)  # the baseline's behaviour
    async with full_loop(topics, kafka_bootstrap, same) as loop:
        applied: list[tuple[int, str, float]] = []
        loop.subscriber.on_decision(lambda d: applied.append((d.seq, d.action, d.weight)))
        during = await loop.drive(lambda v: v is not None and (v.halted or v.action == "complete"), timeout=90)
        view = loop.view()
        assert view is not None and view.action == "complete", (view, len(during))
        assert (view.stage, view.weight, view.pinned_digest) == ("complete", 100.0, CANARY_DIGEST)
        # The router applied every step in order, and the canary's share of replies grew with it.
        assert applied == [(1, "promote", 20.0), (2, "promote", 50.0), (3, "complete", 100.0)]
        share = {
            seq: sum(r.arm == "canary" for r in rs) / len(rs)
            for seq, g in itertools.groupby(sorted(during, key=lambda r: r.seq or 0), key=lambda r: r.seq)
            if seq is not None and len(rs := list(g)) >= 100
        }
        assert 0.1 < share[1] < 0.3 and 0.4 < share[2] < 0.6, share
        assert all(r.status == 200 for r in during)

        after = await loop.everyone()
        assert {(r.status, r.arm, r.digest) for r in after} == {(200, "canary", CANARY_DIGEST)}
        health = await (await loop.client.get("/healthz")).json()
        assert health == {"rollout_id": ROLLOUT, "weight": 100.0, "seq": 3, "stage": "complete"}

    await assert_worker_counted(worker, during + after)
    ds = await decisions_until(topics, kafka_bootstrap, "complete", "halt")
    assert [(d["seq"], d["stage"], d["action"], d["weight"]) for d in ds] == [
        (1, "canary-20", "promote", 20),
        (2, "canary-50", "promote", 50),
        (3, "complete", "complete", 100),
    ], [d["reason"] for d in ds]
    for d in ds[1:]:
        assert {g["name"] for g in d["gates"]} == {"cost", "errors", "output_length", "feedback"}
        assert all(g["status"] == "pass" for g in d["gates"]), d["gates"]
        assert d["gates"][0]["samples"]["canary"] >= 150
    assert (ds[-1]["baseline_digest"], ds[-1]["canary_digest"]) == (BASE_DIGEST, CANARY_DIGEST)
