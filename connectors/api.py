"""Read API over the subscriber's latest decisions, for people, Argo Rollouts and Flagger.

- ``GET /rollouts``, ``GET /rollouts/{id}``: the latest view (stage, weight, gates, reason).
- ``GET /rollouts/{id}/analysis[?step_weight=W]``: for Argo's ``web`` metric provider,
  ``jsonPath: "{$.status}"``, ``successCondition: result == "Successful"``,
  ``failureCondition: result == "Failed"``; "Running" is neither, so Argo counts it inconclusive and
  polls again (``deploy/argo/``).
- ``POST /flagger/confirm-promotion``: 200 only when the latest decision promotes or completes, else
  403; ``confirm-traffic-increase`` likewise, but each promote decision allows one step only;
  ``POST /flagger/rollback``: 200 when the rollout was halted (Flagger then rolls back), else 403
  (``deploy/flagger/``). They publish nothing, so they need no token.
- ``POST /rollouts/{id}/commands``: publish an operator command (pause, resume, rollback, promote)
  to ``rollout.commands``; needs ``Authorization: Bearer <token>``.

``python -m connectors.api --port 8090`` (token from ``$ROLLOUT_GATE_API_TOKEN``).
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.book import RolloutView
from connectors.config import COMMANDS_TOPIC, DECISIONS_TOPIC, KafkaConfig
from connectors.subscriber import DecisionSubscriber
from gates.commands import ACTIONS, Command, decode_command
from gates.events import Rejection

log = logging.getLogger(__name__)

PROMOTING = frozenset({"promote", "complete"})


class ViewSource(Protocol):
    def state(self, rollout_id: str) -> RolloutView | None: ...
    def rollouts(self) -> dict[str, RolloutView]: ...


class CommandSink(Protocol):
    async def send(self, command: Command) -> None: ...


class KafkaCommandSink:
    def __init__(self, kafka: KafkaConfig, topic: str = COMMANDS_TOPIC) -> None:
        self.topic = topic
        self.kafka = kafka
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # Built here, not in __init__: aiokafka clients must be created on the running loop.
        self._producer = AIOKafkaProducer(**self.kafka.client_kwargs(), acks="all", enable_idempotence=True)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send(self, command: Command) -> None:
        if self._producer is None:
            raise RuntimeError("KafkaCommandSink.send() before start()")
        # Awaited: the operator must learn whether the command reached Kafka.
        await self._producer.send_and_wait(self.topic, command.to_json(), key=command.rollout_id.encode())


class RecordingCommandSink:
    """The fake: keeps what would have been published."""

    def __init__(self) -> None:
        self.sent: list[Command] = []

    async def send(self, command: Command) -> None:
        self.sent.append(command)


def analysis_status(view: RolloutView, step_weight: float | None = None) -> str:
    """Argo's vocabulary: a halt fails the analysis, a promotion passes it, anything else runs on.

    ``step_weight`` is the weight of the Argo step being analysed: a promotion counts only once it
    goes beyond that weight, so the promote that opened this step does not pass it straight away."""
    if view.halted:
        return "Failed"
    if view.action == "complete" or (
        view.action == "promote" and (step_weight is None or view.weight > step_weight)
    ):
        return "Successful"
    return "Running"


def flagger_rollout_id(payload: dict[str, Any]) -> str | None:
    meta = payload.get("metadata") or {}
    if isinstance(meta, dict) and isinstance(meta.get("rollout_id"), str) and meta["rollout_id"]:
        return str(meta["rollout_id"])
    name, namespace = payload.get("name"), payload.get("namespace")
    if isinstance(name, str) and isinstance(namespace, str) and name and namespace:
        return f"{name}.{namespace}"
    return None


def _json(data: Any, status: int = 200, **kw: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", **kw)


class RolloutAPI:
    def __init__(
        self, views: ViewSource, commands: CommandSink | None = None, token: str | None = None
    ) -> None:
        self.views = views
        self.commands = commands
        self._token = token.encode() if token else None
        self._increase_seq: dict[str, int] = {}  # last promote seq that let Flagger step up

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/rollouts", self.list_rollouts)
        r.add_get("/rollouts/{id}", self.get_rollout)
        r.add_get("/rollouts/{id}/analysis", self.analysis)
        r.add_post("/rollouts/{id}/commands", self.command)
        r.add_post("/flagger/confirm-promotion", self.flagger_confirm)
        r.add_post("/flagger/confirm-traffic-increase", self.flagger_traffic_increase)
        r.add_post("/flagger/rollback", self.flagger_rollback)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        return app

    async def list_rollouts(self, request: web.Request) -> web.Response:
        views = sorted(self.views.rollouts().values(), key=lambda v: v.rollout_id)
        return _json({"rollouts": [v.to_dict() for v in views]})

    async def get_rollout(self, request: web.Request) -> web.Response:
        view = self.views.state(request.match_info["id"])
        if view is None:
            return _json({"error": "unknown rollout"}, 404)
        return _json(view.to_dict())

    async def analysis(self, request: web.Request) -> web.Response:
        view = self.views.state(request.match_info["id"])
        if view is None:
            return _json({"error": "unknown rollout"}, 404)
        try:
            raw_step = request.query.get("step_weight")
            step_weight = float(raw_step) if raw_step else None
        except ValueError:
            return _json({"error": "step_weight must be a number"}, 400)
        return _json(
            {
                "status": analysis_status(view, step_weight),
                "phase": view.stage,
                "action": view.action,
                "weight": view.weight,
                "seq": view.seq,
                "reason": view.reason,
                "gates": [
                    {
                        "name": g.name,
                        "status": g.status,
                        "ratio": g.ratio,
                        "threshold": g.threshold,
                        "observed": g.observed,
                        "baseline": g.baseline,
                        "samples": g.samples,
                    }
                    for g in view.gates
                ],
            }
        )

    async def _flagger_view(self, request: web.Request) -> tuple[str | None, RolloutView | None]:
        try:
            payload = await request.json()
        except ValueError:
            return None, None
        rid = flagger_rollout_id(payload) if isinstance(payload, dict) else None
        return rid, (self.views.state(rid) if rid else None)

    async def flagger_confirm(self, request: web.Request) -> web.Response:
        rid, view = await self._flagger_view(request)
        if view is not None and not view.halted and view.action in PROMOTING:
            return _json({"rollout_id": rid, "allowed": True, "stage": view.stage})
        why = "unknown rollout" if view is None else f"latest decision is {view.action}: {view.reason}"
        return _json({"rollout_id": rid, "allowed": False, "reason": why}, 403)

    async def flagger_traffic_increase(self, request: web.Request) -> web.Response:
        """One promote decision buys one Flagger step: Flagger asks every interval and its payload
        does not carry its weight, so a promote it already used must not let it climb again."""
        rid, view = await self._flagger_view(request)
        if rid and view is not None and not view.halted and view.action in PROMOTING:
            if view.action == "complete" or view.seq > self._increase_seq.get(rid, 0):
                self._increase_seq[rid] = view.seq
                return _json({"rollout_id": rid, "allowed": True, "stage": view.stage, "seq": view.seq})
            why = f"decision {view.seq} was already used for a traffic increase"
        else:
            why = "unknown rollout" if view is None else f"latest decision is {view.action}: {view.reason}"
        return _json({"rollout_id": rid, "allowed": False, "reason": why}, 403)

    async def flagger_rollback(self, request: web.Request) -> web.Response:
        rid, view = await self._flagger_view(request)
        if view is not None and view.halted:
            return _json({"rollout_id": rid, "rollback": True, "reason": view.reason})
        return _json({"rollout_id": rid, "rollback": False}, 403)

    def _authorize(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return _json({"error": "bearer token required"}, 401, headers={"WWW-Authenticate": "Bearer"})
        if self._token is None or not hmac.compare_digest(presented.strip().encode(), self._token):
            return _json({"error": "forbidden"}, 403)
        return None

    async def command(self, request: web.Request) -> web.Response:
        denied = self._authorize(request)
        if denied is not None:
            return denied
        if self.commands is None:
            return _json({"error": "commands are not enabled on this server"}, 503)
        try:
            body = await request.json()
        except ValueError:
            return _json({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict):
            return _json({"error": "body must be a JSON object"}, 400)
        candidate = {
            "rollout_id": request.match_info["id"],
            "action": body.get("action"),
            "ts": time.time(),
            "actor": body.get("actor", "operator"),
            "reason": body.get("reason", ""),
        }
        cmd = decode_command(orjson.dumps(candidate))  # the worker's own validation, not a copy of it
        if isinstance(cmd, Rejection):
            return _json({"error": cmd.reason, "actions": list(ACTIONS)}, 400)
        try:
            await self.commands.send(cmd)
        except Exception as exc:
            log.warning("api: command not published: %s", exc)
            return _json({"error": "command could not be published"}, 503)
        return _json(orjson.loads(cmd.to_json()), 202)

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "rollouts": len(self.views.rollouts())})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})


def build_api_app(
    kafka: KafkaConfig,
    *,
    token: str | None,
    decisions_topic: str = DECISIONS_TOPIC,
    commands_topic: str = COMMANDS_TOPIC,
) -> web.Application:
    subscriber = DecisionSubscriber(kafka, topic=decisions_topic)
    sink = KafkaCommandSink(kafka, commands_topic)
    app = RolloutAPI(subscriber, sink, token).app()

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await subscriber.start()
        await sink.start()
        yield
        await sink.stop()
        await subscriber.stop()

    app.cleanup_ctx.append(ctx)
    return app


def run_api(
    kafka: KafkaConfig | None = None,
    *,
    host: str = "0.0.0.0",
    port: int = 8090,
    token: str | None = None,
    decisions_topic: str = DECISIONS_TOPIC,
    commands_topic: str = COMMANDS_TOPIC,
) -> None:
    if token is None:
        token = os.environ.get("ROLLOUT_GATE_API_TOKEN") or None
    if token is None:
        log.warning("api: no ROLLOUT_GATE_API_TOKEN; operator commands are refused")
    web.run_app(
        build_api_app(
            kafka or KafkaConfig.from_env(),
            token=token,
            decisions_topic=decisions_topic,
            commands_topic=commands_topic,
        ),
        host=host,
        port=port,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m connectors.api", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default $ROLLOUT_GATE_KAFKA_BOOTSTRAP)")
    p.add_argument("--decisions-topic", default=DECISIONS_TOPIC)
    p.add_argument("--commands-topic", default=COMMANDS_TOPIC)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    run_api(
        KafkaConfig.from_env(bootstrap_servers=a.bootstrap),
        host=a.host,
        port=a.port,
        decisions_topic=a.decisions_topic,
        commands_topic=a.commands_topic,
    )


if __name__ == "__main__":
    main()
