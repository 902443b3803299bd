from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors.fake_upstream import FakeUpstream, UpstreamSpec
from connectors.router import Router, RouterConfig
from connectors.split import Price
from connectors.testing import decision
from gates.events import FeedbackEvent, InferenceEvent
from tests.unit.connectors.fakes import ListSink, StaticWeights

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    base = FakeUpstream(UpstreamSpec(model="base-m", latency_ms=1, output_tokens=50), seed=1)
    cand = FakeUpstream(UpstreamSpec(model="cand-m", latency_ms=1, output_tokens=80), seed=2)
    await base.start()
    await cand.start()
    yield base, cand
    await base.stop()
    await cand.stop()


async def client_for(router: Router) -> TestClient[Any, Any]:
    client = TestClient(TestServer(router.app()))
    await client.start_server()
    return client


def config(base: FakeUpstream, cand: FakeUpstream, **kw: Any) -> RouterConfig:
    return RouterConfig(
        rollout_id="chat-v7",
        baseline_url=base.url,
        canary_url=cand.url,
        baseline_digest="sha256:cfg-base",
        canary_digest="sha256:cfg-cand",
        **kw,
    )


async def test_weight_zero_and_hundred_send_everything_to_one_arm(upstreams: Any) -> None:
    base, cand = upstreams
    sink = ListSink()
    weights = StaticWeights()
    client = await client_for(Router(config(base, cand), weights, sink))
    try:
        for i in range(10):
            r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": f"u{i}"})
            assert r.status == 200 and r.headers["x-rollout-arm"] == "baseline"
        weights.book.apply(decision("chat-v7", 1, weight=100, baseline_digest="sha256:b", canary_digest="sha256:c"))
        for i in range(10):
            r = await client.post("/v1/completions", json={"prompt": "hi"}, headers={"x-user-id": f"u{i}"})
            assert r.status == 200 and r.headers["x-rollout-arm"] == "canary"
            assert r.headers["x-rollout-digest"] == "sha256:c"
    finally:
        await client.close()
    assert (base.requests, cand.requests) == (10, 10)
    arms = [e.arm for e in sink.events]
    assert arms == ["baseline"] * 10 + ["canary"] * 10
    first, last = sink.events[0], sink.events[-1]
    assert isinstance(first, InferenceEvent) and isinstance(last, InferenceEvent)
    assert first.model == "base-m" and first.model_digest == "sha256:cfg-base" and first.status == "ok"
    assert last.model == "cand-m" and last.model_digest == "sha256:c"
    assert first.output_tokens > 0 and first.input_tokens == 2 and first.latency_ms > 0


async def test_split_is_sticky_per_user_and_session(upstreams: Any) -> None:
    base, cand = upstreams
    sink = ListSink()
    router = Router(config(base, cand), StaticWeights(decision("chat-v7", 1, weight=50)), sink)
    client = await client_for(router)
    try:
        arms: dict[str, set[str]] = {}
        for _ in range(3):
            for i in range(20):
                r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": f"user-{i}"})
                arms.setdefault(f"user-{i}", set()).add(r.headers["x-rollout-arm"])
            r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-session-id": "sess-1"})
            arms.setdefault("sess-1", set()).add(r.headers["x-rollout-arm"])
    finally:
        await client.close()
    assert all(len(a) == 1 for a in arms.values())
    assert {next(iter(a)) for a in arms.values()} == {"baseline", "canary"}  # 50%: both arms are used


async def test_halt_pins_the_baseline_digest_of_the_decision(upstreams: Any) -> None:
    base, cand = upstreams
    sink = ListSink()
    weights = StaticWeights(
        decision("chat-v7", 1, weight=100),
        decision("chat-v7", 2, action="halt", baseline_digest="sha256:pinned"),
    )
    client = await client_for(Router(config(base, cand), weights, sink))
    try:
        for i in range(5):
            r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": f"u{i}"})
            assert r.headers["x-rollout-arm"] == "baseline"
            assert r.headers["x-rollout-digest"] == "sha256:pinned"
    finally:
        await client.close()
    assert cand.requests == 0
    assert {(e.arm, e.model_digest) for e in sink.events} == {("baseline", "sha256:pinned")}  # type: ignore[union-attr]


async def test_refusals_errors_and_cost_are_reported(upstreams: Any) -> None:
    base, cand = upstreams
    base.spec = UpstreamSpec(model="base-m", latency_ms=1, refusal_rate=1.0)
    cand.spec = UpstreamSpec(model="cand-m", latency_ms=1, error_rate=1.0, error_status=503)
    sink = ListSink()
    weights = StaticWeights()
    prices = {"base-m": Price(1.0, 2.0)}
    client = await client_for(Router(config(base, cand, prices=prices), weights, sink))
    try:
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status == 200
        weights.book.apply(decision("chat-v7", 1, weight=100))
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status == 503
    finally:
        await client.close()
    refused, failed = sink.events
    assert isinstance(refused, InferenceEvent) and isinstance(failed, InferenceEvent)
    assert refused.refusal and refused.status == "ok"
    assert refused.cost_usd == pytest.approx(2 / 1000 * 1.0 + refused.output_tokens / 1000 * 2.0)
    assert failed.status == "error" and failed.arm == "canary" and not failed.refusal
    assert failed.cost_usd is None  # unpriced model: the worker prices it from the policy


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_and_slow_upstreams_are_errors(upstreams: Any) -> None:
    base, _ = upstreams
    base.spec = UpstreamSpec(latency_ms=2000, tail_ms=2000)
    sink = ListSink()
    cfg = RouterConfig(
        rollout_id="chat-v7",
        baseline_url=base.url,
        canary_url=f"http://127.0.0.1:{_closed_port()}",
        timeout_s=0.3,
    )
    weights = StaticWeights()
    client = await client_for(Router(cfg, weights, sink))
    try:
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status == 504
        weights.book.apply(decision("chat-v7", 1, weight=100))
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status == 502
    finally:
        await client.close()
    assert [(e.arm, e.status) for e in sink.events] == [("baseline", "error"), ("canary", "error")]  # type: ignore[union-attr]
    assert sink.events[0].latency_ms >= 250  # type: ignore[union-attr]


async def test_feedback_is_attributed_to_the_arm_that_served(upstreams: Any) -> None:
    base, cand = upstreams
    sink = ListSink()
    client = await client_for(Router(config(base, cand), StaticWeights(decision("chat-v7", 1, weight=100)), sink))
    try:
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "req-42"})
        assert r.headers["x-request-id"] == "req-42"
        ok = await client.post("/feedback", json={"request_id": "req-42", "value": "down"})
        assert ok.status == 202
        assert (await client.post("/feedback", json={"request_id": "nope", "value": "up"})).status == 404
        assert (await client.post("/feedback", json={"request_id": "req-42", "value": "meh"})).status == 400
    finally:
        await client.close()
    served, fb = sink.events
    assert isinstance(fb, FeedbackEvent) and isinstance(served, InferenceEvent)
    assert (fb.arm, fb.request_id, fb.value, fb.rollout_id) == ("canary", "req-42", "down", "chat-v7")
    assert fb.request_ts == pytest.approx(served.ts) and fb.ts >= served.ts


async def test_feedback_memory_is_bounded(upstreams: Any) -> None:
    base, cand = upstreams
    router = Router(config(base, cand, feedback_memory=3), StaticWeights(), ListSink())
    client = await client_for(router)
    try:
        for i in range(5):
            await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": f"q{i}"})
        assert len(router.served) == 3
        assert (await client.post("/feedback", json={"request_id": "q0", "value": "up"})).status == 404
        assert (await client.post("/feedback", json={"request_id": "q4", "value": "up"})).status == 202
    finally:
        await client.close()


async def test_streaming_answers_are_relayed_and_measured() -> None:
    chunks = [
        b'data: {"model":"s-m","choices":[{"delta":{"content":"I am sorry, I cannot "}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"help with that."},"finish_reason":"stop"}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":8}}\n\ndata: [DONE]\n\n',
    ]

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for c in chunks:
            await resp.write(c)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", sse)
    server = TestServer(app)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    sink = ListSink()
    client = await client_for(Router(RouterConfig(rollout_id="r", baseline_url=url, canary_url=url), StaticWeights(), sink))
    try:
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        body = await r.read()
    finally:
        await client.close()
        await server.close()
    assert body == b"".join(chunks)
    (e,) = sink.events
    assert isinstance(e, InferenceEvent)
    assert (e.output_tokens, e.input_tokens, e.model, e.refusal, e.status) == (8, 3, "s-m", True, "ok")


async def test_initial_weight_applies_only_until_the_first_decision(upstreams: Any) -> None:
    base, cand = upstreams
    weights = StaticWeights()
    client = await client_for(Router(config(base, cand, initial_weight=100.0), weights, ListSink()))
    try:
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": "u1"})
        assert r.headers["x-rollout-arm"] == "canary"
        assert (await (await client.get("/healthz")).json())["weight"] == 100.0
        weights.book.apply(decision("chat-v7", 1, action="halt"))
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": "u1"})
        assert r.headers["x-rollout-arm"] == "baseline"
    finally:
        await client.close()
