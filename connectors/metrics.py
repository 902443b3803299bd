"""Prometheus metrics of the connectors, one set per registry (tests pass their own registry)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

T = TypeVar("T")


@dataclass(frozen=True)
class PublisherMetrics:
    dropped: Counter
    sent_events: Counter
    sent_messages: Counter
    buffered: Gauge


@dataclass(frozen=True)
class SubscriberMetrics:
    applied: Counter
    ignored: Counter
    rejected: Counter
    reconnects: Counter


class PerRegistry(Generic[T]):
    """One set of metrics per registry, built on first use (tests pass their own registry).

    Keyed by the registry itself, weakly: an ``id()`` key outlives a collected registry, and a new
    registry given the same id would get metrics registered in the dead one."""

    def __init__(self, build: Callable[[CollectorRegistry], T]) -> None:
        self._build = build
        self._sets: weakref.WeakKeyDictionary[CollectorRegistry, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, registry: CollectorRegistry | None = None) -> T:
        reg = registry or REGISTRY
        with self._lock:
            got = self._sets.get(reg)
            if got is None:
                got = self._sets[reg] = self._build(reg)
            return got


def _publisher_metrics(reg: CollectorRegistry) -> PublisherMetrics:
    return PublisherMetrics(
        dropped=Counter(
            "rollout_gate_publisher_dropped_total",
            "Events the publisher dropped instead of blocking the request path",
            ["reason"],
            registry=reg,
        ),
        sent_events=Counter(
            "rollout_gate_publisher_sent_events_total", "Events acknowledged by Kafka", registry=reg
        ),
        sent_messages=Counter(
            "rollout_gate_publisher_sent_messages_total",
            "Kafka messages (JSON arrays of events) acknowledged",
            registry=reg,
        ),
        buffered=Gauge(
            "rollout_gate_publisher_buffered_events", "Events waiting in the buffer", registry=reg
        ),
    )


publisher_metrics = PerRegistry(_publisher_metrics)


def _subscriber_metrics(reg: CollectorRegistry) -> SubscriberMetrics:
    return SubscriberMetrics(
        applied=Counter(
            "rollout_gate_subscriber_applied_total", "Decisions applied", ["rollout"], registry=reg
        ),
        ignored=Counter(
            "rollout_gate_subscriber_ignored_total",
            "Decisions ignored because their seq was already applied",
            ["rollout"],
            registry=reg,
        ),
        rejected=Counter(
            "rollout_gate_subscriber_rejected_total",
            "Decision messages that failed to decode",
            registry=reg,
        ),
        reconnects=Counter(
            "rollout_gate_subscriber_reconnects_total",
            "Consumer restarts after an error",
            registry=reg,
        ),
    )


subscriber_metrics = PerRegistry(_subscriber_metrics)
