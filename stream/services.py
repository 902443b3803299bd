"""``rollout-gate router | api | fake-upstream``: the connectors' services under the one CLI.

``router`` and ``fake-upstream`` forward their arguments to the connector's own parser, so
``--help`` is the connector's. ``api`` is the verdict API (connectors.api.RolloutAPI) with the
operator's additions, :class:`OperatorAPI`:

- ``GET /rollouts/{id}`` and ``GET /rollouts``: the latest decision as before, with ``gates`` the
  worker's *live* gates (they move at every evaluation, not only at decisions), ``decision_gates``
  the gates of the latest decision, and ``live`` the worker's view (state, samples, what the step
  still needs, estimated time to a verdict; stream.status.rollout_view).
- ``GET /rollouts/{id}/history``: the rollout's decisions in seq order, as read from the decisions
  topic since the API started (from the beginning of the compacted topic).
- ``POST /rollouts/{id}/commands``: 409 with the reason when the command cannot apply, as the
  worker decides it (stream.status.refusal); when no worker answers, from the latest decision
  (unknown, halted or complete rollouts only). Counted in
  ``rollout_gate_api_command_refusals_total{action,reason}``.

The workers are found at ``ROLLOUT_GATE_WORKER_URLS`` (or ``--worker-url``).
"""

from __future__ import annotations

import argparse
import logging
import os
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import typer

from stream.cli import app

log = logging.getLogger(__name__)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
HISTORY_PER_ROLLOUT = 1000


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def router(ctx: typer.Context) -> None:
    """The reference router: splits traffic by the latest decision, publishes one event per request."""
    from connectors.router import main as router_main

    router_main(list(ctx.args))


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def api(ctx: typer.Context) -> None:
    """The verdict API: rollouts with live gates, history, Argo web metric, Flagger webhooks, commands."""
    api_main(list(ctx.args))


@app.command("fake-upstream", context_settings=_PASS_THROUGH, add_help_option=False)
def fake_upstream(ctx: typer.Context) -> None:
    """A fake OpenAI-compatible model server with settable latency, length, refusals and errors."""
    from connectors.fake_upstream import main as upstream_main

    upstream_main(list(ctx.args))


# -- the verdict API with live state ------------------------------------------------------------

class WorkerClient:
    """Asks the workers' metrics ports for live views (stream.status); each worker holds its own
    partitions' rollouts, so the first answer that is not a 404 wins."""

    def __init__(self, urls: list[str], timeout: float = 3.0) -> None:
        self.urls = urls
        self.timeout = timeout
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def ask(self, method: str, path: str, body: Any = None) -> tuple[int, Any] | None:
        """(status, JSON) from the first worker that knows the path, (404, ...) when none does, or
        None when no worker answered."""
        import aiohttp

        last = None
        for base in self.urls:
            try:
                async with self.session.request(method, base + path, json=body) as resp:
                    out = await resp.json(content_type=None)
                    if resp.status != 404:
                        return resp.status, out
                    last = (resp.status, out)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("api: worker %s did not answer %s %s: %r", base, method, path, exc)
        return last

    async def views(self) -> dict[str, dict[str, Any]] | None:
        import aiohttp

        out: dict[str, dict[str, Any]] = {}
        answered = False
        for base in self.urls:
            try:
                async with self.session.get(base + "/rollouts") as resp:
                    if resp.status == 200:
                        answered = True
                        for v in (await resp.json(content_type=None))["rollouts"]:
                            out[v["rollout_id"]] = v
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("api: worker %s did not answer /rollouts: %r", base, exc)
        return out if answered else None


def merged(decision: dict[str, Any] | None, live: dict[str, Any] | None) -> dict[str, Any]:
    """The decision view with the worker's live gates and state beside it."""
    out: dict[str, Any] = dict(decision) if decision is not None else {"rollout_id": live["rollout_id"] if live else None}
    out["decision_gates"] = out.get("gates", [])
    if live is not None:
        out["gates"] = live["gates"]
        out["live"] = {k: v for k, v in live.items() if k != "gates"}
    else:
        out["live"] = None
    return out


def build_operator_api(views: Any, commands: Any, token: str | None, workers: WorkerClient,
                       history: dict[str, dict[int, Any]] | None = None) -> Any:
    """An OperatorAPI instance (the class is built lazily so that the CLI starts without aiohttp)."""
    from aiohttp import web
    from prometheus_client import Counter

    from connectors.api import RolloutAPI, _json
    from gates.commands import ACTIONS

    refusals = _refusal_counter(Counter)

    class OperatorAPI(RolloutAPI):
        def __init__(self) -> None:
            super().__init__(views, commands, token)
            self.workers = workers
            self.history = history if history is not None else {}

        def app(self) -> web.Application:
            application = super().app()
            application.router.add_get("/rollouts/{id}/history", self.get_history)
            return application

        async def get_rollout(self, request: web.Request) -> web.Response:
            rid = request.match_info["id"]
            view = self.views.state(rid)
            got = await self.workers.ask("GET", f"/rollouts/{urllib.parse.quote(rid, safe='')}")
            live = got[1] if got is not None and got[0] == 200 else None
            if view is None and live is None:
                return _json({"error": "unknown rollout"}, 404)
            return _json(merged(None if view is None else view.to_dict(), live))

        async def list_rollouts(self, request: web.Request) -> web.Response:
            decided = {rid: v.to_dict() for rid, v in self.views.rollouts().items()}
            live = await self.workers.views() or {}
            ids = sorted(set(decided) | set(live))
            return _json({"rollouts": [merged(decided.get(rid), live.get(rid)) for rid in ids]})

        async def get_history(self, request: web.Request) -> web.Response:
            rid = request.match_info["id"]
            seen = self.history.get(rid)
            if not seen:
                return _json({"error": "unknown rollout"}, 404)
            return _json({"rollout_id": rid, "decisions": [seen[s].to_dict() for s in sorted(seen)]})

        async def command(self, request: web.Request) -> web.Response:
            denied = self._authorize(request)
            if denied is not None:
                return denied
            try:
                body = await request.json()
            except ValueError:
                return _json({"error": "body must be JSON"}, 400)
            action = body.get("action") if isinstance(body, dict) else None
            if action in ACTIONS:
                rid = request.match_info["id"]
                why = await self._refusal(rid, action)
                if why is not None:
                    refusals.labels(action, why[0]).inc()
                    return _json({"error": why[1], "code": why[0], "rollout_id": rid, "action": action}, 409)
            return await super().command(request)  # aiohttp keeps the body: it is read again there

        async def _refusal(self, rid: str, action: str) -> tuple[str, str] | None:
            got = await self.workers.ask("POST", f"/rollouts/{urllib.parse.quote(rid, safe='')}/commands/check",
                                         {"action": action})
            if got is not None and got[0] == 200:
                return None
            if got is not None and got[0] in (404, 409):
                return str(got[1].get("code", "unknown")), str(got[1].get("error", "unknown rollout"))
            # no worker answered: what the latest decision tells
            view = self.views.state(rid)
            if view is None:
                return "unknown", f"unknown rollout {rid}: no decision on the decisions topic and no worker answered"
            if view.halted or view.action == "complete":
                code = "halted" if view.halted else "complete"
                return code, f"rollout {rid} is {code} (seq {view.seq}): an ended rollout takes no more commands"
            return None

    return OperatorAPI()


_COUNTER: Any = None


def _refusal_counter(counter_cls: Any) -> Any:
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = counter_cls("rollout_gate_api_command_refusals",
                               "Operator commands the API refused with 409 because they cannot apply",
                               ["action", "reason"])
    return _COUNTER


def build_api_app(kafka: Any, *, token: str | None, worker_urls: list[str], decisions_topic: str,
                  commands_topic: str, command_key: bytes | None = None) -> Any:
    """The API's aiohttp application. Commands it publishes are signed with ``command_key`` (the
    worker's ROLLOUT_GATE_COMMAND_HMAC_KEY), without which the worker refuses them."""
    from connectors.api import KafkaCommandSink
    from connectors.subscriber import DecisionSubscriber
    from stream.commands import signing_sink

    subscriber = DecisionSubscriber(kafka, topic=decisions_topic)
    sink = signing_sink(KafkaCommandSink, command_key)(kafka, commands_topic)
    workers = WorkerClient(worker_urls)
    history: dict[str, dict[int, Any]] = {}

    def remember(d: Any) -> None:
        seen = history.setdefault(d.rollout_id, {})
        seen[d.seq] = d
        if len(seen) > HISTORY_PER_ROLLOUT:
            del seen[min(seen)]

    subscriber.on_decision(remember)
    application = build_operator_api(subscriber, sink, token, workers, history).app()

    async def ctx(_: Any) -> AsyncIterator[None]:
        await workers.start()
        await subscriber.start()
        await sink.start()
        yield
        await sink.stop()
        await subscriber.stop()
        await workers.stop()

    application.cleanup_ctx.append(ctx)
    return application


def api_main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    from connectors.config import COMMANDS_TOPIC, DECISIONS_TOPIC, KafkaConfig

    p = argparse.ArgumentParser(prog="rollout-gate api", description="The verdict API with live rollout state.")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default $ROLLOUT_GATE_KAFKA_BOOTSTRAP)")
    p.add_argument("--decisions-topic", default=os.environ.get("ROLLOUT_GATE_DECISIONS_TOPIC", DECISIONS_TOPIC))
    p.add_argument("--commands-topic", default=os.environ.get("ROLLOUT_GATE_COMMANDS_TOPIC", COMMANDS_TOPIC))
    p.add_argument("--worker-url", action="append", default=None,
                   help="a worker's metrics base URL (repeat for several; default $ROLLOUT_GATE_WORKER_URLS)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    urls = a.worker_url or [u.strip().rstrip("/") for u in
                            os.environ.get("ROLLOUT_GATE_WORKER_URLS", "http://127.0.0.1:9108").split(",") if u.strip()]
    token = os.environ.get("ROLLOUT_GATE_API_TOKEN") or None
    if token is None:
        log.warning("api: no ROLLOUT_GATE_API_TOKEN; operator commands are refused")
    key = os.environ.get("ROLLOUT_GATE_COMMAND_HMAC_KEY") or None
    if key is None:
        log.warning("api: no ROLLOUT_GATE_COMMAND_HMAC_KEY; the worker refuses the unsigned commands it would send")
    web.run_app(build_api_app(KafkaConfig.from_env(bootstrap_servers=a.bootstrap), token=token, worker_urls=urls,
                              decisions_topic=a.decisions_topic, commands_topic=a.commands_topic,
                              command_key=key.encode() if key else None),
                host=a.host, port=a.port)
