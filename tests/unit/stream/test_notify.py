"""Webhook notifications against a local aiohttp server: payloads, retries with backoff, and a
worker that is never blocked by a slow or failing sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from aiohttp import web

from gates.decision import Decision, GateResult
from stream.metrics import Metrics
from stream.notify import Backoff, Notifier, Sink, generic_payload, slack_payload
from stream.settings import load_settings


def decision(action: str, seq: int = 2, rid: str = "chat-v7") -> Decision:
    gate = GateResult(name="cost", status="breach" if action == "halt" else "pass", observed=0.0024,
                      baseline=0.0019, ratio=1.24, threshold=1.2, samples={"canary": 2144, "baseline": 219518},
                      lower=1.21, upper=1.27, reason="cost per request is 1.24x baseline")
    reasons = {"halt": "Halted at canary-1: cost per request is 1.24x baseline. Pin baseline sha256:b.",
               "hold": "Paused by alice; holding at 1%.", "promote": "All 5 gates pass; promoting to 10%.",
               "complete": "All 5 gates pass; canary is at 100%."}
    return Decision(rollout_id=rid, seq=seq, ts=1767225600.0, action=action,
                    stage="rolled-back" if action == "halt" else "canary-10", weight=0.0 if action == "halt" else 10.0,
                    previous_weight=1.0, baseline_digest="sha256:b", canary_digest="sha256:c", gates=[gate],
                    reason=reasons[action], trigger="gates")


class Hook:
    """A webhook server: answers ``statuses`` in turn (then 200), records every body and its time."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.bodies: list[dict] = []
        self.times: list[float] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        self.bodies.append(orjson.loads(await request.read()))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status == 200 else "nope")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Hook], asyncio.Future]]:
    runners: list[web.AppRunner] = []

    async def start(hook: Hook) -> Hook:
        app = web.Application()
        app.router.add_post("/hook", hook.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        hook.url = f"http://127.0.0.1:{port}/hook"
        runners.append(runner)
        return hook

    yield start  # type: ignore[misc]
    for r in runners:
        await r.cleanup()


async def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def counted(m: Metrics, sink: str, outcome: str) -> float:
    v = m.registry.get_sample_value("rollout_gate_notifications_total", {"sink": sink, "outcome": outcome})
    return v or 0.0


def test_payloads_carry_the_reason_sentence_and_the_full_decision() -> None:
    d = decision("halt")
    slack = slack_payload(d)
    assert set(slack) == {"text"}
    assert "chat-v7 HALTED at rolled-back (1% -> 0%, seq 2, gates)" in slack["text"]
    assert d.reason in slack["text"]
    generic = generic_payload(d)
    assert generic["decision"] == orjson.loads(d.to_json())
    assert d.reason in generic["text"]


async def test_slack_and_generic_sinks_get_halt_hold_promote_and_complete(serve: Callable) -> None:
    slack, hook = await serve(Hook()), await serve(Hook())
    m = Metrics()
    settings = load_settings(notify_slack_urls=slack.url, notify_webhook_urls=hook.url)
    n = Notifier.from_settings(settings, m)
    await n.start()
    try:
        n.decided([decision("promote", 2), decision("hold", 3), decision("promote", 4), decision("complete", 5)])
        n.decided([decision("halt", 2, rid="sum-v2")])
        await wait_until(lambda: len(slack.bodies) == 5 and len(hook.bodies) == 5)
    finally:
        await n.stop()
    assert [b["decision"]["seq"] for b in hook.bodies[:4]] == [2, 3, 4, 5]  # in order per sink
    assert [b["decision"]["action"] for b in hook.bodies] == ["promote", "hold", "promote", "complete", "halt"]
    assert all(set(b) == {"text"} for b in slack.bodies)
    assert "Paused by alice; holding at 1%." in slack.bodies[1]["text"]
    assert counted(m, "slack", "sent") == 5 and counted(m, "webhook", "sent") == 5


async def test_only_the_configured_actions_are_sent(serve: Callable) -> None:
    hook = await serve(Hook())
    n = Notifier.from_settings(load_settings(notify_webhook_urls=hook.url, notify_actions="halt"))
    await n.start()
    try:
        n.decided([decision("promote"), decision("hold", 3), decision("halt", 4)])
        await wait_until(lambda: len(hook.bodies) == 1)
        await asyncio.sleep(0.1)
    finally:
        await n.stop()
    assert [b["decision"]["action"] for b in hook.bodies] == ["halt"]


async def test_a_server_that_fails_first_gets_it_after_retries_with_exponential_backoff(serve: Callable) -> None:
    hook = await serve(Hook(statuses=[500, 503, 502]))
    m = Metrics()
    n = Notifier([Sink("webhook", hook.url, Backoff(retries=5, first=0.05, cap=1.0), 2.0, 10, m)])
    await n.start()
    try:
        n.decided([decision("halt")])
        await wait_until(lambda: counted(m, "webhook", "sent") == 1)
    finally:
        await n.stop()
    assert len(hook.bodies) == 4 and all(b == hook.bodies[0] for b in hook.bodies)
    gaps = [b - a for a, b in zip(hook.times, hook.times[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2, gaps
    assert counted(m, "webhook", "retried") == 3 and counted(m, "webhook", "failed") == 0


async def test_a_sink_that_never_answers_well_blocks_nothing_and_is_given_up(serve: Callable) -> None:
    bad = await serve(Hook(statuses=[500] * 100, delay=0.2))
    good = await serve(Hook())
    m = Metrics()
    backoff = Backoff(retries=2, first=0.01, cap=0.02)
    unreachable = "http://127.0.0.1:9/hook"  # nothing listens there
    n = Notifier([Sink("webhook", bad.url, backoff, 0.1, 10, m), Sink("slack", unreachable, backoff, 0.5, 10, m),
                  Sink("webhook", good.url, backoff, 2.0, 10, m)])
    await n.start()
    try:
        started = time.perf_counter()
        n.decided([decision("halt")])
        assert time.perf_counter() - started < 0.01  # the worker's loop is not held
        await wait_until(lambda: len(good.bodies) == 1, 5)
        await wait_until(lambda: counted(m, "webhook", "failed") == 1 and counted(m, "slack", "failed") == 1, 10)
    finally:
        await n.stop()
    assert len(bad.bodies) == 3  # the first attempt and two retries (each timed out)
    assert counted(m, "webhook", "sent") == 1


async def test_a_full_queue_drops_and_counts(serve: Callable) -> None:
    slow = await serve(Hook(delay=0.5))
    m = Metrics()
    n = Notifier([Sink("webhook", slow.url, Backoff(0, 0.01, 0.01), 2.0, 2, m)])
    await n.start()
    try:
        n.decided([decision("promote", s) for s in range(2, 8)])
        assert counted(m, "webhook", "dropped") >= 3
    finally:
        await n.stop()


def test_no_sinks_configured_means_no_task_and_no_session() -> None:
    n = Notifier.from_settings(load_settings())
    assert n.sinks == []
    asyncio.run(n.start())
    n.decided([decision("halt")])
    asyncio.run(n.stop())


def test_backoff_doubles_up_to_the_cap() -> None:
    b = Backoff(retries=6, first=1.0, cap=10.0)
    assert [b.delay(i) for i in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
