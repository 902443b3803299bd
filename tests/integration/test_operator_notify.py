"""Decision notifications from a real worker to local webhook servers (aiohttp): a Slack-style sink
that fails twice before it accepts, and a generic one; the worker's decisions are not held up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.integration.conftest import Topics
from tests.integration.helpers import decoded, metric_value, of, wait_for
from tests.integration.kafka_io import produce, read_until
from tests.integration.streams import BASELINE, CANARY, generate, messages, recent_start
from tests.integration.workerproc import Worker

pytestmark = pytest.mark.integration


class Hooks:
    """Two webhook endpoints on a local aiohttp server in its own thread."""

    def __init__(self, slack_failures: int) -> None:
        self.slack_failures = slack_failures
        self.slack: list[tuple[float, dict[str, Any]]] = []
        self.generic: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def slack(request: web.Request) -> web.Response:
            self.slack.append((time.monotonic(), orjson.loads(await request.read())))
            if len(self.slack) <= self.slack_failures:
                return web.Response(status=503, text="try later")
            return web.Response(text="ok")

        async def generic(request: web.Request) -> web.Response:
            self.generic.append(orjson.loads(await request.read()))
            return web.Response(status=204)

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/slack", slack)
            app.router.add_post("/generic", generic)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks(slack_failures=2)
    yield h
    h.stop()


def test_the_worker_notifies_a_halt_with_its_reason_retrying_a_failing_sink(
        worker_env: dict[str, str], topics: Topics, kafka_bootstrap: str, hooks: Hooks, tmp_path: Path) -> None:
    env = {**worker_env,
           "ROLLOUT_GATE_NOTIFY_SLACK_URLS": f"http://127.0.0.1:{hooks.port}/slack",
           "ROLLOUT_GATE_NOTIFY_WEBHOOK_URLS": f"http://127.0.0.1:{hooks.port}/generic",
           "ROLLOUT_GATE_NOTIFY_BACKOFF_SECONDS": "0.5"}
    worker = Worker(env, tmp_path, "worker")
    try:
        worker.start()
        costly = CANARY.scaled(usd_per_1k_tokens=0.0027)
        events = generate("chat-n", seconds=40, seed=7, start=recent_start(600),
                          arms={"baseline": BASELINE, "canary": costly})
        asyncio.run(produce(kafka_bootstrap, topics.events, messages(events, 50)))
        msgs = asyncio.run(read_until(kafka_bootstrap, topics.decisions, lambda m: any(
            d["action"] == "halt" for d in decoded(m)), timeout=90))
        halt = next(d for d in of("chat-n", decoded(msgs)) if d["action"] == "halt")
        assert wait_for(lambda: any(b["decision"]["action"] == "halt" for b in hooks.generic), 30)
        assert wait_for(lambda: len(hooks.slack) >= 2 + len(hooks.generic), 30), (hooks.slack, hooks.generic)
        # the generic sink has every decision in order, the halt with its full content
        assert [b["decision"]["seq"] for b in hooks.generic] == [d["seq"] for d in of("chat-n", decoded(msgs))]
        body = next(b for b in hooks.generic if b["decision"]["action"] == "halt")
        assert body["decision"] == halt and halt["reason"] in body["text"]
        # the Slack sink failed twice, then got the same first message, then the others
        texts = [b["text"] for _, b in hooks.slack]
        assert texts[0] == texts[1] == texts[2] and "chat-n promoted at canary-1" in texts[0]
        gaps = [b[0] - a[0] for a, b in zip(hooks.slack, hooks.slack[1:3], strict=False)]
        assert gaps[0] >= 0.45 and gaps[1] >= 0.95, gaps  # 0.5 s, then 1 s
        assert any("chat-n HALTED at rolled-back" in t and halt["reason"] in t for t in texts)
        text = worker.metrics()
        assert metric_value(text, "rollout_gate_notifications_total", sink="slack", outcome="retried") == 2
        assert metric_value(text, "rollout_gate_notifications_total", sink="webhook", outcome="sent") == len(
            hooks.generic)
    finally:
        worker.stop()
