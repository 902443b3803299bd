"""The verdict API (``rollout-gate api``, stream.services) with a real worker on the real broker:
live gates between decisions, history, commands that apply (202) and commands that cannot (409)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors.config import KafkaConfig
from stream.services import build_api_app
from tests.integration.conftest import COMMAND_KEY, Topics
from tests.integration.helpers import metric_value, wait_for
from tests.integration.kafka_io import produce
from tests.integration.streams import BASELINE, CANARY, generate, messages, recent_start
from tests.integration.workerproc import Worker

pytestmark = pytest.mark.integration
AUTH = {"Authorization": "Bearer sesame"}


async def until(check: Any, timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.3)


def test_api_shows_live_gates_history_and_answers_409_for_commands_that_cannot_apply(
        worker: Worker, topics: Topics, kafka_bootstrap: str) -> None:
    worker.start()
    events = generate("chat-a", seconds=8, arms={"baseline": BASELINE, "canary": CANARY}, seed=5,
                      start=recent_start(600))
    asyncio.run(produce(kafka_bootstrap, topics.events, messages(events, 50)))
    assert wait_for(lambda: worker.get("/rollouts/chat-a")[0] == 200 and '"gates":[{' in worker.get(
        "/rollouts/chat-a")[1], 60)

    async def scenario() -> None:
        app: web.Application = build_api_app(KafkaConfig(bootstrap_servers=kafka_bootstrap), token="sesame",
                                             worker_urls=[f"http://127.0.0.1:{worker.port}"],
                                             decisions_topic=topics.decisions, commands_topic=topics.commands,
                                             command_key=COMMAND_KEY)
        async with TestClient(TestServer(app)) as client:
            async def view() -> dict[str, Any]:
                r = await client.get("/rollouts/chat-a")
                return await r.json() if r.status == 200 else {}

            v = await until(view)
            before = metric_value(await (await client.get("/metrics")).text(),
                                  "rollout_gate_api_command_refusals_total", action="pause", reason="halted") or 0
            # the latest decision is the start (no gates); the worker's live gates are shown
            assert v["action"] == "promote" and v["seq"] == 1 and v["decision_gates"] == []
            assert {g["name"] for g in v["gates"]} == {"latency", "cost", "errors", "output_length", "feedback"}
            assert v["live"]["state"] == "running" and v["live"]["needs"]["seconds"] >= 0
            assert v["live"]["step"]["min_samples"] == 150 and v["live"]["eta"]
            listed = await (await client.get("/rollouts")).json()
            assert [x["rollout_id"] for x in listed["rollouts"]] == ["chat-a"]
            assert len(listed["rollouts"][0]["gates"]) == 5 and listed["rollouts"][0]["live"]["stage"] == "canary-1"

            r = await client.post("/rollouts/chat-a/commands", json={"action": "resume"}, headers=AUTH)
            assert r.status == 409
            assert (await r.json())["error"] == "rollout chat-a is not paused (it runs at canary-1)"
            r = await client.post("/rollouts/chat-a/commands", json={"action": "pause", "actor": "alice"},
                                  headers=AUTH)
            assert r.status == 202, await r.text()

            async def paused() -> bool:
                return (await view()).get("action") == "hold"

            assert await until(paused)
            r = await client.post("/rollouts/chat-a/commands", json={"action": "pause"}, headers=AUTH)
            assert r.status == 409 and (await r.json())["code"] == "paused"
            r = await client.post("/rollouts/chat-a/commands", json={"action": "rollback", "actor": "alice"},
                                  headers=AUTH)
            assert r.status == 202

            async def halted() -> bool:
                return bool((await view()).get("halted"))

            assert await until(halted)
            for action in ("resume", "promote", "pause", "rollback"):
                r = await client.post("/rollouts/chat-a/commands", json={"action": action}, headers=AUTH)
                body = await r.json()
                assert r.status == 409 and body["code"] == "halted", body
                assert body["error"].startswith("rollout chat-a is halted (rolled back, seq 3)")
            r = await client.post("/rollouts/chat-typo/commands", json={"action": "promote"}, headers=AUTH)
            assert r.status == 409 and (await r.json())["code"] == "unknown"
            # auth still comes first
            assert (await client.post("/rollouts/chat-a/commands", json={"action": "pause"})).status == 401

            h = await (await client.get("/rollouts/chat-a/history")).json()
            assert [(d["seq"], d["action"]) for d in h["decisions"]] == [(1, "promote"), (2, "hold"), (3, "halt")]
            assert "Rolled back by alice." in h["decisions"][2]["reason"]
            assert (await client.get("/rollouts/chat-typo/history")).status == 404
            metrics = await (await client.get("/metrics")).text()
            after = metric_value(metrics, "rollout_gate_api_command_refusals_total", action="pause", reason="halted")
            assert after == before + 1  # the registry is the process's: other tests may have counted too

    asyncio.run(scenario())
