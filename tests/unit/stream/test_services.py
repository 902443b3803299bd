"""The verdict API's operator additions without a worker: refusals from the latest decision."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from connectors.api import RecordingCommandSink
from connectors.book import DecisionBook, RolloutView
from gates.decision import Decision
from stream.services import WorkerClient, build_operator_api, merged

AUTH = {"Authorization": "Bearer t"}


class Views:
    def __init__(self, *decisions: Decision) -> None:
        self.book = DecisionBook()
        for d in decisions:
            self.book.apply(d)

    def state(self, rollout_id: str) -> RolloutView | None:
        return self.book.get(rollout_id)

    def rollouts(self) -> dict[str, RolloutView]:
        return self.book.all()


def decision(rid: str, action: str, stage: str, seq: int = 2) -> Decision:
    return Decision(rollout_id=rid, seq=seq, ts=1.0, action=action, stage=stage, weight=0.0 if action == "halt" else 10.0,
                    previous_weight=1.0, baseline_digest=None, canary_digest=None, gates=[], reason="why")


async def test_without_a_worker_the_latest_decision_decides_and_the_rest_is_published() -> None:
    sink = RecordingCommandSink()
    views = Views(decision("halted", "halt", "rolled-back"), decision("done", "complete", "complete"),
                  decision("going", "promote", "canary-10"))
    workers = WorkerClient(["http://127.0.0.1:9"], timeout=1.0)  # nothing listens there
    api = build_operator_api(views, sink, "t", workers)
    await workers.start()
    try:
        async with TestClient(TestServer(api.app())) as client:
            for rid, code in (("halted", "halted"), ("done", "complete"), ("ghost", "unknown")):
                r = await client.post(f"/rollouts/{rid}/commands", json={"action": "pause"}, headers=AUTH)
                body = await r.json()
                assert r.status == 409 and body["code"] == code, body
            r = await client.post("/rollouts/going/commands", json={"action": "pause", "actor": "al"}, headers=AUTH)
            assert r.status == 202
            v = await (await client.get("/rollouts/going")).json()
            assert v["live"] is None and v["decision_gates"] == [] and v["stage"] == "canary-10"
            assert (await client.get("/rollouts/ghost")).status == 404
    finally:
        await workers.stop()
    assert [(c.rollout_id, c.action, c.actor) for c in sink.sent] == [("going", "pause", "al")]


def test_merged_puts_live_gates_first_and_keeps_the_decisions() -> None:
    live = {"rollout_id": "r", "gates": [{"name": "cost"}], "state": "running"}
    out = merged({"rollout_id": "r", "gates": [], "seq": 1}, live)
    assert out["gates"] == [{"name": "cost"}] and out["decision_gates"] == [] and out["live"] == {
        "rollout_id": "r", "state": "running"}
    assert merged(None, live)["rollout_id"] == "r"
