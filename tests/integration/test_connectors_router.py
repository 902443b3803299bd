"""(d) The router with two fake upstreams: events reach Kafka; a halt on the decisions topic moves all
traffic to the baseline and pins the baseline digest."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors.config import KafkaConfig
from connectors.fake_upstream import FakeUpstream, UpstreamSpec
from connectors.router import RouterConfig, build_router_app
from connectors.split import Price
from connectors.testing import bootstrap, create_topics, decision, produce, read_events, unique
from gates.events import FeedbackEvent, InferenceEvent, Rejection

pytestmark = pytest.mark.integration

CHAT = {"model": "m", "messages": [{"role": "user", "content": "what is a canary"}]}


async def test_router_publishes_events_and_applies_a_halt(unique_id: str) -> None:
    servers = bootstrap()
    events, decisions = f"{unique_id}.router.events", f"{unique_id}.router.decisions"
    await create_topics(servers, [events])
    await create_topics(servers, [decisions], compact=True)
    rid = unique("chat")
    # Already on the topic before the router starts: the router must serve it from the first request.
    await produce(
        servers,
        decisions,
        [
            (
                rid.encode(),
                decision(
                    rid, 1, weight=100, baseline_digest="sha256:base", canary_digest="sha256:cand"
                ).to_json(),
            )
        ],
    )
    base = FakeUpstream(UpstreamSpec(model="base-m", latency_ms=2), seed=1)
    cand = FakeUpstream(UpstreamSpec(model="cand-m", latency_ms=2, refusal_rate=1.0), seed=2)
    await base.start()
    await cand.start()
    config = RouterConfig(
        rollout_id=rid,
        baseline_url=base.url,
        canary_url=cand.url,
        baseline_digest="sha256:cfg-base",
        canary_digest="sha256:cfg-cand",
        prices={"cand-m": Price(0.5, 1.0)},
    )
    app = build_router_app(
        config, KafkaConfig(bootstrap_servers=servers), events_topic=events, decisions_topic=decisions
    )
    client = TestClient(TestServer(app))
    served: dict[str, tuple[str, str]] = {}
    try:
        await asyncio.wait_for(client.start_server(), 30)
        for i in range(10):
            r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": f"u{i}"})
            assert r.status == 200
            served[r.headers["x-request-id"]] = (r.headers["x-rollout-arm"], r.headers["x-rollout-digest"])
        assert set(served.values()) == {("canary", "sha256:cand")}
        first = next(iter(served))
        assert (await client.post("/feedback", json={"request_id": first, "value": "down"})).status == 202

        await produce(
            servers,
            decisions,
            [(rid.encode(), decision(rid, 2, action="halt", baseline_digest="sha256:pinned").to_json())],
        )
        for _ in range(100):
            health = await (await client.get("/healthz")).json()
            if health["weight"] == 0.0:
                break
            await asyncio.sleep(0.1)
        assert health == {"rollout_id": rid, "weight": 0.0, "seq": 2, "stage": "rolled-back"}
        after: dict[str, tuple[str, str]] = {}
        for i in range(10):
            r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": f"u{i}"})
            after[r.headers["x-request-id"]] = (r.headers["x-rollout-arm"], r.headers["x-rollout-digest"])
        assert set(after.values()) == {("baseline", "sha256:pinned")}
    finally:
        await asyncio.wait_for(client.close(), 30)  # stops the publisher, which flushes
        await base.stop()
        await cand.stop()

    decoded = await read_events(servers, events, expect=21)
    assert not [d for d in decoded if isinstance(d, Rejection)]
    inference = [d for d in decoded if isinstance(d, InferenceEvent)]
    feedback = [d for d in decoded if isinstance(d, FeedbackEvent)]
    assert len(inference) == 20 and len(feedback) == 1
    by_id = {e.request_id: e for e in inference}
    assert set(by_id) == set(served) | set(after)
    for req_id, (arm, digest) in {**served, **after}.items():
        e = by_id[req_id]
        assert (e.arm, e.model_digest, e.rollout_id, e.status) == (arm, digest, rid, "ok")
    canary = [by_id[r] for r in served]
    assert all(e.refusal and e.model == "cand-m" and e.cost_usd is not None for e in canary)
    assert all(not by_id[r].refusal and by_id[r].model == "base-m" for r in after)
    assert all(e.latency_ms >= 1.0 and e.input_tokens == 4 for e in inference)
    (fb,) = feedback
    assert (fb.request_id, fb.arm, fb.value) == (first, "canary", "down")
    assert fb.request_ts == pytest.approx(by_id[first].ts)
