"""LiteLLM: one inference event per call from LiteLLM's logging callbacks, and, inside the proxy,
the decisions applied to the proxy's own router.

:class:`RolloutGateCallback` is a ``litellm.integrations.custom_logger.CustomLogger``. LiteLLM hands
every finished call (SDK or proxy, success or failure) to it with a ``StandardLoggingPayload``,
which maps onto the event contract:

==============================  ==============================================================
``id``                          ``request_id``
``endTime`` / ``startTime``     ``ts``, ``latency_ms``
``prompt_tokens``               ``input_tokens``
``completion_tokens``           ``output_tokens``
``response_cost``               ``cost_usd`` (omitted when LiteLLM could not price the call)
``status`` != ``success``       ``status: error``
finish reason in the response   ``refusal`` when it is ``content_filter`` (configurable)
``model_id`` (deployment id)    ``arm``, through :attr:`LiteLLMRollout.arms`
==============================  ==============================================================

A call to a deployment that is not in the map is not part of the rollout and is skipped. The
callback publishes through :class:`~connectors.publisher.SyncEventPublisher` (its own thread and
loop, so it never waits on Kafka and works from the proxy's loop and from LiteLLM's logging threads
alike), and no exception leaves it: LiteLLM's callbacks run after the response is built, and a
broken gate must never fail a user's request. Failures are counted in
``rollout_gate_litellm_callback_failures_total``.

In the proxy, load it from ``config.yaml`` (``litellm_settings: {callbacks:
custom_callbacks.rollout_gate}``, with ``custom_callbacks.py`` beside the config holding
``rollout_gate = RolloutGateCallback.from_env()``). With ``apply_decisions`` (the default when a
baseline and canary deployment id are configured) it also follows the decisions topic and keeps the
two deployments' weights on the latest decision, a halt pinning the baseline.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from connectors.adapters.litellm import LiteLLMRouterAdapter
from connectors.config import DECISIONS_TOPIC, EVENTS_TOPIC, KafkaConfig
from connectors.metrics import PerRegistry
from connectors.publisher import SyncEventPublisher
from connectors.subscriber import DecisionSubscriber
from gates.decision import Decision
from gates.events import ARMS

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("connectors.litellm needs LiteLLM: pip install 'rollout-gate[litellm]'") from exc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiteLLMRollout:
    rollout_id: str
    arms: Mapping[str, str]  # deployment model_info.id (or litellm model name, or api_base) -> arm
    digests: Mapping[str, str] = field(default_factory=dict)  # arm -> model digest
    refusal_finish_reasons: frozenset[str] = frozenset({"content_filter"})
    baseline_id: str | None = None  # deployments whose weights the decisions set
    canary_id: str | None = None

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.arms.items() if v not in ARMS}
        if bad:
            raise ValueError(f"arms must map to baseline, canary or shadow: {bad}")

    @classmethod
    def from_env(cls, prefix: str = "ROLLOUT_GATE_LITELLM_") -> LiteLLMRollout:
        """``..._ROLLOUT_ID``, ``..._ARMS`` (``id=arm,id=arm``), ``..._BASELINE_ID``, ``..._CANARY_ID``,
        ``..._DIGESTS`` (``arm=digest,...``), ``..._REFUSAL_FINISH_REASONS`` (comma separated)."""
        def pairs(name: str) -> dict[str, str]:
            text = os.environ.get(prefix + name, "")
            out = {}
            for item in filter(None, (p.strip() for p in text.split(","))):
                key, sep, value = item.rpartition("=")
                if not sep or not key:
                    raise ValueError(f"{prefix}{name}: {item!r} is not KEY=VALUE")
                out[key] = value
            return out

        rollout_id = os.environ.get(prefix + "ROLLOUT_ID")
        if not rollout_id:
            raise ValueError(f"{prefix}ROLLOUT_ID is not set")
        baseline_id, canary_id = os.environ.get(prefix + "BASELINE_ID"), os.environ.get(prefix + "CANARY_ID")
        arms = pairs("ARMS")
        if baseline_id:
            arms.setdefault(baseline_id, "baseline")
        if canary_id:
            arms.setdefault(canary_id, "canary")
        reasons = os.environ.get(prefix + "REFUSAL_FINISH_REASONS")
        return cls(rollout_id=rollout_id, arms=arms, digests=pairs("DIGESTS"), baseline_id=baseline_id or None,
                   canary_id=canary_id or None,
                   **({"refusal_finish_reasons": frozenset(r.strip() for r in reasons.split(",") if r.strip())}
                      if reasons else {}))

    def arm_of(self, payload: Mapping[str, Any]) -> str | None:
        hidden = payload.get("hidden_params") or {}
        for key in (payload.get("model_id"), hidden.get("model_id"), payload.get("model"), payload.get("api_base")):
            if key and key in self.arms:
                return self.arms[key]
        return None


def finish_reasons(payload: Mapping[str, Any]) -> list[str]:
    response = payload.get("response")
    if not isinstance(response, Mapping):
        return []
    return [str(c.get("finish_reason")) for c in response.get("choices") or [] if isinstance(c, Mapping)
            and c.get("finish_reason")]


def payload_to_event(payload: Mapping[str, Any], rollout: LiteLLMRollout) -> dict[str, Any] | None:
    """The contract event of one ``StandardLoggingPayload``; None when the call is not in the rollout."""
    arm = rollout.arm_of(payload)
    if arm is None:
        return None
    start, end = float(payload["startTime"]), float(payload["endTime"])
    failed = payload.get("status") != "success"
    event: dict[str, Any] = {
        "type": "inference",
        "rollout_id": rollout.rollout_id,
        "arm": arm,
        "request_id": str(payload["id"]),
        "ts": end,
        "latency_ms": max(0.0, (end - start) * 1000.0),
        "output_tokens": int(payload.get("completion_tokens") or 0),
        "status": "error" if failed else "ok",
        "refusal": any(r in rollout.refusal_finish_reasons for r in finish_reasons(payload)),
    }
    if payload.get("prompt_tokens") is not None:
        event["input_tokens"] = int(payload["prompt_tokens"])
    cost = payload.get("response_cost")
    # LiteLLM reports 0.0 with debug info when it has no price for the model: let the policy price it
    if cost is not None and not (cost == 0 and payload.get("response_cost_failure_debug_info")):
        event["cost_usd"] = float(cost)
    if payload.get("model"):
        event["model"] = str(payload["model"])
    if arm in rollout.digests:
        event["model_digest"] = rollout.digests[arm]
    return event


failure_counter = PerRegistry(lambda reg: Counter(
    "rollout_gate_litellm_callback_failures_total",
    "LiteLLM calls the rollout-gate callback could not turn into an event (the call itself went on)",
    ["stage"],
    registry=reg,
))


def _proxy_router() -> Any:
    try:
        from litellm.proxy import proxy_server
    except Exception:  # not running in the proxy
        return None
    return getattr(proxy_server, "llm_router", None)


class RolloutGateCallback(CustomLogger):
    def __init__(
        self,
        rollout: LiteLLMRollout,
        *,
        kafka: KafkaConfig | str | None = None,
        events_topic: str = EVENTS_TOPIC,
        decisions_topic: str = DECISIONS_TOPIC,
        publisher: Any | None = None,
        apply_decisions: bool | None = None,
        router: Any | Callable[[], Any] | None = None,
        reconcile_seconds: float = 1.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__()
        self.rollout = rollout
        self.kafka = kafka if isinstance(kafka, KafkaConfig) else KafkaConfig.from_env(bootstrap_servers=kafka)
        self.events_topic, self.decisions_topic = events_topic, decisions_topic
        self.failures = failure_counter(registry)
        self.published = 0
        self._publisher = publisher
        self._own_publisher = publisher is None
        self._start_lock = threading.Lock()
        self._started = False
        if apply_decisions is None:
            apply_decisions = bool(rollout.baseline_id and rollout.canary_id)
        self.adapter: LiteLLMRouterAdapter | None = None
        if apply_decisions:
            if not (rollout.baseline_id and rollout.canary_id):
                raise ValueError("applying decisions needs the baseline and canary deployment ids")
            self.adapter = LiteLLMRouterAdapter(router or _proxy_router, rollout_id=rollout.rollout_id,
                                                baseline_id=rollout.baseline_id, canary_id=rollout.canary_id)
        self.reconcile_seconds = reconcile_seconds
        self.latest: Decision | None = None
        self.applied_seq: int | None = None
        self._stop = threading.Event()
        self._applier: threading.Thread | None = None
        if self.adapter is not None:
            self._applier = threading.Thread(target=self._follow_decisions, name="rollout-gate-litellm-decisions",
                                             daemon=True)
            self._applier.start()

    @classmethod
    def from_env(cls, **kwargs: Any) -> RolloutGateCallback:
        """Settings from ``ROLLOUT_GATE_LITELLM_*`` (see :meth:`LiteLLMRollout.from_env`), the broker from
        ``ROLLOUT_GATE_KAFKA_*``, topics from ``ROLLOUT_GATE_EVENTS_TOPIC`` / ``ROLLOUT_GATE_DECISIONS_TOPIC``."""
        kwargs.setdefault("events_topic", os.environ.get("ROLLOUT_GATE_EVENTS_TOPIC", EVENTS_TOPIC))
        kwargs.setdefault("decisions_topic", os.environ.get("ROLLOUT_GATE_DECISIONS_TOPIC", DECISIONS_TOPIC))
        return cls(LiteLLMRollout.from_env(), **kwargs)

    # -- events ------------------------------------------------------------------------------------
    def _ensure_publisher(self) -> Any:
        if self._publisher is not None and self._started:
            return self._publisher
        with self._start_lock:
            if self._publisher is None:
                self._publisher = SyncEventPublisher(self.kafka, topic=self.events_topic)
            if not self._started:
                self._started = True
                if self._own_publisher:
                    # connecting takes a round trip or more: never on the request's thread or loop.
                    # Events published meanwhile wait in the publisher's bounded buffer.
                    threading.Thread(target=self._start_publisher, name="rollout-gate-litellm-start",
                                     daemon=True).start()
                    atexit.register(self.close, 5.0)  # the proxy's shutdown sends what is buffered
        return self._publisher

    def _start_publisher(self) -> None:
        publisher = self._publisher
        if publisher is None:
            return
        try:
            publisher.start()
        except Exception:
            self.failures.labels("publisher_start").inc()
            log.exception("rollout-gate: the event publisher did not start; events are buffered, then dropped")

    def _record(self, kwargs: Mapping[str, Any]) -> None:
        try:
            payload = kwargs.get("standard_logging_object")
            if not payload:
                self.failures.labels("no_payload").inc()
                return
            event = payload_to_event(payload, self.rollout)
            if event is None:
                return
        except Exception:
            self.failures.labels("map").inc()
            log.warning("rollout-gate: could not map a LiteLLM call to an event", exc_info=True)
            return
        try:
            if self._ensure_publisher().publish(event):
                self.published += 1
        except Exception:
            self.failures.labels("publish").inc()
            log.warning("rollout-gate: could not publish a LiteLLM call's event", exc_info=True)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._record(kwargs)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._record(kwargs)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._record(kwargs)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._record(kwargs)

    # -- decisions ---------------------------------------------------------------------------------
    def _on_decision(self, d: Decision) -> None:
        if d.rollout_id == self.rollout.rollout_id:
            self.latest = d
            self._reconcile()

    def _reconcile(self) -> None:
        """Make the router serve the latest decision. Also run periodically: the proxy creates its
        router after loading callbacks, and may rebuild it (a config reload)."""
        d, adapter = self.latest, self.adapter
        if d is None or adapter is None:
            return
        try:
            if adapter.router() is None:
                return
            wanted = adapter.render(d)["model_weights"]
            if adapter.current() != wanted:
                adapter.apply(d)
                log.info("rollout-gate: %s seq %d (%s): LiteLLM weights %s", d.rollout_id, d.seq, d.action, wanted)
            self.applied_seq = d.seq
        except Exception:
            self.failures.labels("apply").inc()
            log.warning("rollout-gate: could not apply decision seq %d to the LiteLLM router", d.seq, exc_info=True)

    def _follow_decisions(self) -> None:
        asyncio.run(self._follow())

    async def _follow(self) -> None:
        sub = DecisionSubscriber(self.kafka, topic=self.decisions_topic)
        sub.on_decision(self._on_decision)
        delay = 0.5
        while not self._stop.is_set():
            try:
                await sub.start()
                break
            except Exception as exc:  # broker away at start: the proxy serves its configured weights
                log.warning("rollout-gate: decision subscriber not started (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        try:
            while not self._stop.is_set():
                self._reconcile()
                await asyncio.sleep(self.reconcile_seconds)
        finally:
            await sub.stop()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._applier is not None:
            self._applier.join(timeout)
        if self._publisher is not None and self._own_publisher and self._started:
            self._publisher.close(timeout)  # sends what is buffered
