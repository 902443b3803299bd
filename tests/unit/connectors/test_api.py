from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from connectors.api import RecordingCommandSink, RolloutAPI, analysis_status
from connectors.subscriber import DecisionSubscriber
from connectors.testing import decision

REPO = Path(__file__).resolve().parents[3]
TOKEN = "s3cret-token"


def views(*decisions: Any) -> DecisionSubscriber:
    """The real subscriber fed by hand: its ingest path is the one the API reads in production."""
    sub = DecisionSubscriber("unused:9092", registry=CollectorRegistry())
    for d in decisions:
        sub.ingest(d.rollout_id.encode(), d.to_json())
    return sub


@pytest.fixture
async def api() -> Any:
    sub = views(
        decision("chat-v7", 3, weight=25, stage="canary-25"),
        decision("bad-v2", 5, action="halt", reason="latency P99 2.1x baseline on 900 samples"),
        decision("slow-v1", 2, action="hold", weight=10, reason="latency insufficient samples"),
    )
    sink = RecordingCommandSink()
    client = TestClient(TestServer(RolloutAPI(sub, sink, TOKEN).app()))
    await client.start_server()
    yield client, sub, sink
    await client.close()


async def test_rollout_views(api: Any) -> None:
    client, _, _ = api
    r = await client.get("/rollouts/chat-v7")
    body = await r.json()
    assert r.status == 200
    assert (body["stage"], body["weight"], body["seq"]) == ("canary-25", 25.0, 3)
    assert body["gates"][0]["name"] == "latency" and body["gates"][0]["status"] == "pass"
    assert (await client.get("/rollouts/nope")).status == 404
    listed = await (await client.get("/rollouts")).json()
    assert [v["rollout_id"] for v in listed["rollouts"]] == ["bad-v2", "chat-v7", "slow-v1"]


async def test_argo_analysis_status(api: Any) -> None:
    client, _, _ = api
    got = {
        rid: await (await client.get(f"/rollouts/{rid}/analysis")).json()
        for rid in ("chat-v7", "bad-v2", "slow-v1")
    }
    assert {rid: g["status"] for rid, g in got.items()} == {
        "chat-v7": "Successful",
        "bad-v2": "Failed",
        "slow-v1": "Running",
    }
    assert got["bad-v2"]["weight"] == 0 and got["bad-v2"]["phase"] == "rolled-back"
    # The promote to 25 does not pass the analysis of the 25% step itself.
    at_step = await (await client.get("/rollouts/chat-v7/analysis?step_weight=25")).json()
    assert at_step["status"] == "Running"
    below = await (await client.get("/rollouts/chat-v7/analysis?step_weight=10")).json()
    assert below["status"] == "Successful"
    assert (await client.get("/rollouts/chat-v7/analysis?step_weight=x")).status == 400
    assert (await client.get("/rollouts/nope/analysis")).status == 404


def test_analysis_status_complete_passes_any_step() -> None:
    sub = views(decision("r", 9, action="complete", weight=100, stage="complete"))
    assert analysis_status(sub.state("r"), 100) == "Successful"  # type: ignore[arg-type]


async def test_flagger_webhooks(api: Any) -> None:
    client, sub, _ = api
    payload = {
        "name": "chat",
        "namespace": "llm",
        "phase": "Progressing",
        "metadata": {"rollout_id": "chat-v7"},
    }
    assert (await client.post("/flagger/confirm-promotion", json=payload)).status == 200
    assert (await client.post("/flagger/rollback", json=payload)).status == 403
    halted = {
        "name": "bad-v2",
        "namespace": "llm",
        "phase": "Progressing",
        "metadata": {"rollout_id": "bad-v2"},
    }
    r = await client.post("/flagger/confirm-promotion", json=halted)
    assert r.status == 403 and "halt" in (await r.json())["reason"]
    assert (await client.post("/flagger/rollback", json=halted)).status == 200
    held = {"name": "x", "namespace": "y", "metadata": {"rollout_id": "slow-v1"}}
    assert (await client.post("/flagger/confirm-promotion", json=held)).status == 403
    # Without metadata.rollout_id, the rollout id is "<name>.<namespace>".
    sub.ingest(b"chat.llm", decision("chat.llm", 1, weight=10).to_json())
    assert (
        await client.post("/flagger/confirm-promotion", json={"name": "chat", "namespace": "llm"})
    ).status == 200
    assert (
        await client.post("/flagger/confirm-promotion", json={"name": "ghost", "namespace": "llm"})
    ).status == 403
    assert (await client.post("/flagger/rollback", data=b"not json")).status == 403


async def test_flagger_traffic_increase_is_one_step_per_promote(api: Any) -> None:
    client, sub, _ = api
    payload = {"name": "chat", "namespace": "llm", "metadata": {"rollout_id": "chat-v7"}}
    assert (await client.post("/flagger/confirm-traffic-increase", json=payload)).status == 200
    assert (await client.post("/flagger/confirm-traffic-increase", json=payload)).status == 403
    sub.ingest(b"chat-v7", decision("chat-v7", 4, weight=50).to_json())
    assert (await client.post("/flagger/confirm-traffic-increase", json=payload)).status == 200
    sub.ingest(b"chat-v7", decision("chat-v7", 5, action="halt").to_json())
    assert (await client.post("/flagger/confirm-traffic-increase", json=payload)).status == 403


async def test_commands_need_the_bearer_token(api: Any) -> None:
    client, _, sink = api
    url = "/rollouts/chat-v7/commands"
    body = {"action": "pause", "actor": "alice", "reason": "investigating latency"}
    r = await client.post(url, json=body)
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.post(url, json=body, headers={"Authorization": "Basic abc"})).status == 401
    assert (await client.post(url, json=body, headers={"Authorization": "Bearer wrong"})).status == 403
    assert sink.sent == []
    ok = await client.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 202
    (cmd,) = sink.sent
    assert (cmd.rollout_id, cmd.action, cmd.actor, cmd.reason) == (
        "chat-v7",
        "pause",
        "alice",
        "investigating latency",
    )
    assert (await ok.json())["ts"] == pytest.approx(cmd.ts)
    bad = await client.post(url, json={"action": "explode"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bad.status == 400 and "action must be one of" in (await bad.json())["error"]
    assert len(sink.sent) == 1


async def test_commands_refused_when_no_token_is_configured() -> None:
    sink = RecordingCommandSink()
    client = TestClient(TestServer(RolloutAPI(views(), sink, token=None).app()))
    await client.start_server()
    try:
        r = await client.post(
            "/rollouts/r/commands", json={"action": "pause"}, headers={"Authorization": "Bearer anything"}
        )
        assert r.status == 403 and sink.sent == []
    finally:
        await client.close()


def _docs(path: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((REPO / path).read_text()))


async def test_argo_template_matches_the_api(api: Any) -> None:
    client, _, _ = api
    routes = {r.resource.canonical for r in client.server.app.router.routes() if r.resource}
    statuses = {"Successful", "Running", "Failed"}
    for template in _docs("deploy/argo/analysis-template.yaml"):
        for metric in template["spec"]["metrics"]:
            web = metric["provider"]["web"]
            assert web["jsonPath"] == "{$.status}"
            assert "/rollouts/{{args.rollout-id}}/analysis" in web["url"]
            for cond in ("successCondition", "failureCondition"):
                if cond in metric:
                    value = metric[cond].split("==")[1].strip().strip('"')
                    assert value in statuses
    assert "/rollouts/{id}/analysis" in routes
    body = await (await client.get("/rollouts/chat-v7/analysis")).json()
    assert body["status"] in statuses  # what "{$.status}" selects
    (rollout,) = _docs("deploy/argo/rollout.yaml")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    weights = [s["setWeight"] for s in steps if "setWeight" in s]
    step_args = [
        a["value"]
        for s in steps
        if "analysis" in s
        for a in s["analysis"]["args"]
        if a["name"] == "step-weight"
    ]
    assert weights == [1, 10, 25, 50, 75] and step_args == [str(w) for w in weights]


async def test_flagger_canary_points_at_registered_webhooks(api: Any) -> None:
    client, _, _ = api
    routes = {r.resource.canonical for r in client.server.app.router.routes() if r.resource}
    (canary,) = _docs("deploy/flagger/canary.yaml")
    hooks = canary["spec"]["analysis"]["webhooks"]
    assert {h["type"] for h in hooks} == {"confirm-traffic-increase", "confirm-promotion", "rollback"}
    for h in hooks:
        path = "/" + h["url"].split("/", 3)[3]
        assert path in routes and path == f"/flagger/{h['type']}"
        assert h["metadata"]["rollout_id"] == "chat-v7"
