"""Decision notifications to webhooks: Slack-compatible (``{"text": ...}``) and generic JSON
(``{"text": ..., "decision": <the full decision>}``), on halt, hold, promote and complete.

The worker must never wait for a webhook nor fail because of one: :meth:`Notifier.decided` only
puts the decision on a bounded queue per sink (a full queue drops it, counted), and one task per
sink posts them in order, retrying a failed post with exponential backoff
(``notify_backoff_seconds`` doubling up to ``notify_backoff_max_seconds``, ``notify_retries``
times) before giving up on that notification (counted, logged). Outcomes are counted in
``rollout_gate_notifications_total{sink,outcome}``: sent, retried, failed, dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gates.decision import Decision

if TYPE_CHECKING:
    from .metrics import Metrics
    from .settings import Settings

log = logging.getLogger(__name__)

NOTIFY_ACTIONS = ("halt", "hold", "promote", "complete")
_ICON = {"halt": ":rotating_light:", "hold": ":pause_button:", "promote": ":arrow_up:", "complete": ":white_check_mark:"}


def sentence(d: Decision) -> str:
    """One line for people: what happened to which rollout, and why."""
    verb = {"halt": "HALTED", "hold": "held", "promote": "promoted", "complete": "complete"}.get(d.action, d.action)
    return (f"rollout-gate: {d.rollout_id} {verb} at {d.stage} ({d.previous_weight:g}% -> {d.weight:g}%, "
            f"seq {d.seq}, {d.trigger}): {d.reason}")


def slack_payload(d: Decision) -> dict[str, Any]:
    return {"text": f"{_ICON.get(d.action, '')} {sentence(d)}".strip()}


def generic_payload(d: Decision) -> dict[str, Any]:
    return {"text": sentence(d), "decision": d.to_dict()}


@dataclass(frozen=True)
class Backoff:
    retries: int = 5
    first: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1-based): first, 2 x first, 4 x first, ..., at most cap."""
        return float(min(self.cap, self.first * 2 ** (attempt - 1)))


class Sink:
    """One webhook URL with its own queue and sender task."""

    def __init__(self, kind: str, url: str, backoff: Backoff, timeout: float, queue_size: int,
                 metrics: Metrics | None) -> None:
        self.kind = kind  # "slack" | "webhook"
        self.url = url
        self.backoff = backoff
        self.timeout = timeout
        self.metrics = metrics
        self.queue: asyncio.Queue[Decision] = asyncio.Queue(queue_size)
        self.task: asyncio.Task[None] | None = None

    def payload(self, d: Decision) -> dict[str, Any]:
        return slack_payload(d) if self.kind == "slack" else generic_payload(d)

    def count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(self.kind, outcome).inc()

    def offer(self, d: Decision) -> None:
        try:
            self.queue.put_nowait(d)
        except asyncio.QueueFull:
            self.count("dropped")
            log.warning("notify: %s queue full; dropped the notification of %s seq %d", self.kind,
                        d.rollout_id, d.seq)

    async def run(self, session: Any) -> None:
        while True:
            d = await self.queue.get()
            try:
                await self.deliver(session, d)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a sink's bug end its task
                log.exception("notify: %s sink failed on %s seq %d", self.kind, d.rollout_id, d.seq)

    async def deliver(self, session: Any, d: Decision) -> bool:
        import aiohttp

        body = orjson.dumps(self.payload(d), option=orjson.OPT_SERIALIZE_NUMPY)
        for attempt in range(self.backoff.retries + 1):
            if attempt:
                self.count("retried")
                await asyncio.sleep(self.backoff.delay(attempt))
            try:
                async with session.post(self.url, data=body, headers={"Content-Type": "application/json"},
                                        timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    if 200 <= resp.status < 300:
                        self.count("sent")
                        return True
                    why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = repr(exc)
            log.warning("notify: %s post of %s seq %d failed (attempt %d of %d): %s", self.kind, d.rollout_id,
                        d.seq, attempt + 1, self.backoff.retries + 1, why)
        self.count("failed")
        log.error("notify: gave up on the %s notification of %s seq %d (%s)", self.kind, d.rollout_id, d.seq,
                  d.action)
        return False


class Notifier:
    """The processor's watcher for notifications; does nothing without configured sinks."""

    def __init__(self, sinks: Sequence[Sink], actions: Sequence[str] = NOTIFY_ACTIONS) -> None:
        self.sinks = list(sinks)
        self.actions = frozenset(actions)
        self._session: Any = None

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> Notifier:
        backoff = Backoff(settings.notify_retries, settings.notify_backoff_seconds,
                          settings.notify_backoff_max_seconds)
        sinks = []
        for kind, urls in (("slack", settings.notify_slack_urls), ("webhook", settings.notify_webhook_urls)):
            for url in (u.strip() for u in urls.split(",")):
                if url:
                    sinks.append(Sink(kind, url, backoff, settings.notify_timeout_seconds,
                                      settings.notify_queue_size, metrics))
        actions = [a.strip() for a in settings.notify_actions.split(",") if a.strip()]
        return cls(sinks, actions)

    async def start(self) -> None:
        if not self.sinks:
            return
        import aiohttp

        self._session = aiohttp.ClientSession()
        for sink in self.sinks:
            sink.task = asyncio.ensure_future(sink.run(self._session))
        log.info("notify: %d webhook sink(s) for %s", len(self.sinks), ", ".join(sorted(self.actions)))

    async def stop(self) -> None:
        for sink in self.sinks:
            if sink.task is not None:
                sink.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sink.task
                sink.task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def decided(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            if d.action in self.actions:
                for sink in self.sinks:
                    sink.offer(d)
