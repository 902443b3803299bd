"""Reference router: an HTTP proxy in front of a baseline and a canary OpenAI-compatible upstream.

It splits by the weight of the latest decision (sticky per user/session), and for every request
publishes one inference event; ``POST /feedback`` turns a thumbs up/down/ticket into a feedback
event. Reading the weight is a dict lookup and publishing never waits for Kafka, so the gate adds
microseconds, not a network hop, to the request path.

    python -m connectors.router --rollout-id chat-v7 \\
        --baseline-url http://127.0.0.1:8101 --canary-url http://127.0.0.1:8102 \\
        --baseline-digest sha256:aaa --canary-digest sha256:bbb --port 8080
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.book import RolloutView
from connectors.config import DECISIONS_TOPIC, EVENTS_TOPIC, KafkaConfig
from connectors.publisher import EventPublisher, PublishInput
from connectors.split import (
    DEFAULT_REFUSAL_PATTERNS,
    Price,
    RefusalDetector,
    answer_text,
    bucket,
    choose_arm,
    cost_usd,
    parse_price,
)
from connectors.sse import SSEAccumulator
from connectors.subscriber import DecisionSubscriber
from gates.events import FEEDBACK_VALUES

log = logging.getLogger(__name__)

SUBSCRIBER = web.AppKey("subscriber", DecisionSubscriber)
PUBLISHER = web.AppKey("publisher", EventPublisher)
PROXIED_PATHS = ("/v1/chat/completions", "/v1/completions")
_FORWARDED_HEADERS = ("authorization", "content-type", "accept", "openai-organization", "openai-project")


class WeightSource(Protocol):
    """What the router needs from a :class:`DecisionSubscriber` (and what a test fake provides)."""

    def weight(self, rollout_id: str, default: float = 0.0) -> float: ...
    def state(self, rollout_id: str) -> RolloutView | None: ...


class EventSink(Protocol):
    def publish(self, event: PublishInput) -> bool: ...


@dataclass(frozen=True)
class RouterConfig:
    rollout_id: str
    baseline_url: str
    canary_url: str
    baseline_digest: str | None = None
    canary_digest: str | None = None
    baseline_model: str | None = None  # when set, rewrites the request's "model" for that arm
    canary_model: str | None = None
    sticky_headers: tuple[str, ...] = ("x-user-id", "x-session-id")
    refusal_patterns: tuple[str, ...] = DEFAULT_REFUSAL_PATTERNS
    prices: Mapping[str, Price] = field(default_factory=dict)
    timeout_s: float = 60.0
    feedback_memory: int = 100_000
    # Canary percent while the rollout has no decision yet (the first step, before the worker has
    # spoken). Any decision, including a halt, overrides it.
    initial_weight: float = 0.0


@dataclass(frozen=True)
class Served:
    arm: str
    ts: float


def _count(v: Any) -> int | None:
    """A token count from ``usage``; anything else (missing, negative, a bool) is unknown."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


class _LRU:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._d: OrderedDict[str, Served] = OrderedDict()

    def put(self, key: str, value: Served) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)

    def get(self, key: str) -> Served | None:
        return self._d.get(key)

    def __len__(self) -> int:
        return len(self._d)


class Router:
    def __init__(self, config: RouterConfig, weights: WeightSource, sink: EventSink) -> None:
        self.config = config
        self.weights = weights
        self.sink = sink
        self.refusals = RefusalDetector(config.refusal_patterns)
        self.served = _LRU(config.feedback_memory)
        self._session: aiohttp.ClientSession | None = None

    # -- the split ------------------------------------------------------------------------------
    def route(self, headers: Mapping[str, str], request_id: str) -> tuple[str, str | None]:
        """(arm, model_digest) for a request."""
        rid = self.config.rollout_id
        key = next((headers[h] for h in self.config.sticky_headers if headers.get(h)), request_id)
        arm = choose_arm(self.weights.weight(rid, self.config.initial_weight), bucket(rid, key))
        view = self.weights.state(rid)
        if arm == "canary":
            return arm, (view.canary_digest if view and view.canary_digest else self.config.canary_digest)
        # Baseline traffic, and all traffic after a halt: the decision's pinned baseline digest wins.
        pinned = view.pinned_digest if view and view.halted else (view.baseline_digest if view else None)
        return arm, pinned or self.config.baseline_digest

    # -- aiohttp wiring ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        for path in PROXIED_PATHS:
            app.router.add_post(path, self.proxy)
        app.router.add_post("/feedback", self.feedback)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.cleanup_ctx.append(self._client_session)
        return app

    async def _client_session(self, app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            connector=aiohttp.TCPConnector(limit=0),
        )
        yield
        await self._session.close()

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        arm, digest = self.route(request.headers, request_id)
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return web.json_response({"error": {"message": "request body is not JSON"}}, status=400)
        override = self.config.canary_model if arm == "canary" else self.config.baseline_model
        if override and isinstance(body, dict):
            body["model"] = override
            raw = orjson.dumps(body)
        base = self.config.canary_url if arm == "canary" else self.config.baseline_url
        headers = {h: request.headers[h] for h in _FORWARDED_HEADERS if h in request.headers}
        headers.setdefault("content-type", "application/json")
        out_headers = {"x-request-id": request_id, "x-rollout-arm": arm}
        if digest:
            out_headers["x-rollout-digest"] = digest
        req_model = body.get("model") if isinstance(body, dict) else None
        streaming = isinstance(body, dict) and body.get("stream") is True
        assert self._session is not None
        started = time.perf_counter()
        try:
            async with self._session.post(base.rstrip("/") + request.path, data=raw, headers=headers) as up:
                if streaming and up.status < 300:
                    return await self._relay_stream(request, up, out_headers, arm, digest, request_id, started, req_model)
                payload = await up.read()
                status = up.status
                ctype = up.headers.get("content-type", "application/json")
        except (TimeoutError, aiohttp.ClientError) as exc:
            timeout = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
            self._emit(arm, digest, request_id, started, req_model, None, error=True)
            return web.json_response(
                {"error": {"message": f"upstream {arm} {'timed out' if timeout else 'unreachable'}"}},
                status=504 if timeout else 502,
                headers=out_headers,
            )
        parsed: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(payload) if payload else None
        self._emit(
            arm,
            digest,
            request_id,
            started,
            req_model,
            parsed if isinstance(parsed, dict) else None,
            error=status >= 300,
        )
        return web.Response(body=payload, status=status, headers={**out_headers, "content-type": ctype})

    async def _relay_stream(
        self,
        request: web.Request,
        up: aiohttp.ClientResponse,
        out_headers: dict[str, str],
        arm: str,
        digest: str | None,
        request_id: str,
        started: float,
        req_model: Any,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=up.status,
            headers={**out_headers, "content-type": up.headers.get("content-type", "text/event-stream")},
        )
        await resp.prepare(request)
        acc = SSEAccumulator()
        failed = False
        try:
            async for chunk in up.content.iter_any():
                acc.feed(chunk)
                await resp.write(chunk)
        except (TimeoutError, aiohttp.ClientError):
            failed = True
        self._emit(arm, digest, request_id, started, req_model, acc.as_response(), error=failed)
        await resp.write_eof()
        return resp

    def _emit(
        self,
        arm: str,
        digest: str | None,
        request_id: str,
        started: float,
        req_model: Any,
        response: Mapping[str, Any] | None,
        *,
        error: bool,
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000.0
        ts = time.time()
        usage = (response or {}).get("usage") or {}
        in_tok = _count(usage.get("prompt_tokens"))
        out_tok = _count(usage.get("completion_tokens")) or 0
        model = (response or {}).get("model") or (req_model if isinstance(req_model, str) else None)
        text, finish, refusal_field = answer_text(response or {})
        event: dict[str, Any] = {
            "type": "inference",
            "rollout_id": self.config.rollout_id,
            "arm": arm,
            "request_id": request_id,
            "ts": ts,
            "latency_ms": latency_ms,
            "output_tokens": out_tok,
            "status": "error" if error else "ok",
            "refusal": (not error) and self.refusals.is_refusal(text, finish_reason=finish, refusal_field=refusal_field),
        }
        if in_tok is not None:
            event["input_tokens"] = in_tok
        if model:
            event["model"] = model
            cost = cost_usd(self.config.prices, model, in_tok, out_tok)
            if cost is not None:
                event["cost_usd"] = cost
        if digest:
            event["model_digest"] = digest
        self.served.put(request_id, Served(arm=arm, ts=ts))
        self.sink.publish(event)

    async def feedback(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        request_id, value = body.get("request_id"), body.get("value")
        if value not in FEEDBACK_VALUES:
            return web.json_response({"error": f"value must be one of {', '.join(FEEDBACK_VALUES)}"}, status=400)
        served = self.served.get(request_id) if isinstance(request_id, str) else None
        if served is None:
            return web.json_response({"error": "unknown or expired request_id"}, status=404)
        self.sink.publish(
            {
                "type": "feedback",
                "rollout_id": self.config.rollout_id,
                "arm": served.arm,
                "request_id": request_id,
                "ts": time.time(),
                "value": value,
                "request_ts": served.ts,
            }
        )
        return web.json_response({"ok": True, "arm": served.arm}, status=202)

    async def healthz(self, request: web.Request) -> web.Response:
        view = self.weights.state(self.config.rollout_id)
        return web.json_response(
            {
                "rollout_id": self.config.rollout_id,
                "weight": self.weights.weight(self.config.rollout_id, self.config.initial_weight),
                "seq": view.seq if view else None,
                "stage": view.stage if view else None,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})


def kafka_context(
    router: Router,
    kafka: KafkaConfig,
    *,
    events_topic: str = EVENTS_TOPIC,
    decisions_topic: str = DECISIONS_TOPIC,
) -> Any:
    """An aiohttp cleanup context that starts the subscriber (caught up before serving) and the
    publisher, and stops them (flushing events) on shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        subscriber = DecisionSubscriber(kafka, topic=decisions_topic)
        publisher = EventPublisher(kafka, topic=events_topic)
        await subscriber.start()
        await publisher.start()
        router.weights, router.sink = subscriber, publisher
        app[SUBSCRIBER], app[PUBLISHER] = subscriber, publisher
        yield
        await publisher.stop()
        await subscriber.stop()

    return ctx


class _Unstarted:
    def weight(self, rollout_id: str, default: float = 0.0) -> float:
        return default

    def state(self, rollout_id: str) -> RolloutView | None:
        return None

    def publish(self, event: PublishInput) -> bool:
        return False


def build_router_app(config: RouterConfig, kafka: KafkaConfig, **topics: str) -> web.Application:
    router = Router(config, _Unstarted(), _Unstarted())
    app = router.app()
    app.cleanup_ctx.insert(0, kafka_context(router, kafka, **topics))
    return app


def run_router(
    config: RouterConfig,
    kafka: KafkaConfig | None = None,
    *,
    host: str = "0.0.0.0",
    port: int = 8080,
    events_topic: str = EVENTS_TOPIC,
    decisions_topic: str = DECISIONS_TOPIC,
) -> None:
    """Serve until interrupted (the CLI's ``router`` command calls this)."""
    app = build_router_app(config, kafka or KafkaConfig.from_env(), events_topic=events_topic, decisions_topic=decisions_topic)
    web.run_app(app, host=host, port=port)


def parse_args(argv: list[str] | None = None) -> tuple[RouterConfig, KafkaConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m connectors.router", description=__doc__.split("\n")[0])
    p.add_argument("--rollout-id", required=True)
    p.add_argument("--baseline-url", required=True)
    p.add_argument("--canary-url", required=True)
    p.add_argument("--baseline-digest")
    p.add_argument("--canary-digest")
    p.add_argument("--baseline-model", help="rewrite the request's model for baseline traffic")
    p.add_argument("--canary-model", help="rewrite the request's model for canary traffic")
    p.add_argument(
        "--sticky-header",
        action="append",
        dest="sticky",
        help="header whose value keeps a caller on one arm (repeatable; default x-user-id, x-session-id)",
    )
    p.add_argument(
        "--refusal-pattern",
        action="append",
        dest="refusal",
        help="regex over the answer that marks a refusal (repeatable; replaces the defaults)",
    )
    p.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="MODEL=IN,OUT",
        help="USD per 1k input and output tokens (repeatable)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="upstream timeout in seconds")
    p.add_argument(
        "--initial-weight",
        type=float,
        default=0.0,
        help="canary percent until the first decision for the rollout arrives (default 0)",
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default $ROLLOUT_GATE_KAFKA_BOOTSTRAP)")
    p.add_argument("--events-topic", default=EVENTS_TOPIC)
    p.add_argument("--decisions-topic", default=DECISIONS_TOPIC)
    a = p.parse_args(argv)
    config = RouterConfig(
        rollout_id=a.rollout_id,
        baseline_url=a.baseline_url,
        canary_url=a.canary_url,
        baseline_digest=a.baseline_digest,
        canary_digest=a.canary_digest,
        baseline_model=a.baseline_model,
        canary_model=a.canary_model,
        sticky_headers=tuple(h.lower() for h in a.sticky) if a.sticky else RouterConfig.sticky_headers,
        refusal_patterns=tuple(a.refusal) if a.refusal else DEFAULT_REFUSAL_PATTERNS,
        prices=dict(parse_price(s) for s in a.price),
        timeout_s=a.timeout,
        initial_weight=a.initial_weight,
    )
    return config, KafkaConfig.from_env(bootstrap_servers=a.bootstrap), a


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO)
    config, kafka, a = parse_args(argv)
    run_router(
        config,
        kafka,
        host=a.host,
        port=a.port,
        events_topic=a.events_topic,
        decisions_topic=a.decisions_topic,
    )


if __name__ == "__main__":
    main()
