"""Fakes shared by the connector unit tests."""

from __future__ import annotations

import asyncio
from typing import Any

from connectors.book import DecisionBook, RolloutView
from connectors.publisher import PublishInput, validate
from gates.decision import Decision
from gates.events import Event


class FakeProducer:
    """Records what the publisher sends; ``fail`` makes deliveries fail, ``hang`` makes send() block."""

    instances: list[FakeProducer] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = False
        self.hang = False
        self.started = self.stopped = False
        FakeProducer.instances.append(self)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def flush(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        if self.hang:
            await asyncio.Event().wait()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(RuntimeError("broker said no"))
        else:
            self.sent.append((topic, key, value))
            fut.set_result(None)
        return fut


class ListSink:
    """An EventSink that validates like the real publisher and keeps the events."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: PublishInput) -> bool:
        self.events.append(validate(event))
        return True


class StaticWeights:
    """A WeightSource driven by decisions applied by hand (the same book the subscriber uses)."""

    def __init__(self, *decisions: Decision) -> None:
        self.book = DecisionBook()
        for d in decisions:
            self.book.apply(d)

    def weight(self, rollout_id: str, default: float = 0.0) -> float:
        v = self.book.get(rollout_id)
        return default if v is None else v.weight

    def state(self, rollout_id: str) -> RolloutView | None:
        return self.book.get(rollout_id)
