"""Prometheus metrics of the connectors, one set per registry (tests pass their own registry)."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge


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


_lock = threading.Lock()
# Keyed by the registry itself, weakly: an id() key outlives a collected registry, and a new registry
# given the same id would get metrics registered in the dead one.
_publisher: weakref.WeakKeyDictionary[CollectorRegistry, PublisherMetrics] = weakref.WeakKeyDictionary()
_subscriber: weakref.WeakKeyDictionary[CollectorRegistry, SubscriberMetrics] = weakref.WeakKeyDictionary()


def publisher_metrics(registry: CollectorRegistry | None = None) -> PublisherMetrics:
    reg = registry or REGISTRY
    with _lock:
        if reg not in _publisher:
            _publisher[reg] = PublisherMetrics(
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
        return _publisher[reg]


def subscriber_metrics(registry: CollectorRegistry | None = None) -> SubscriberMetrics:
    reg = registry or REGISTRY
    with _lock:
        if reg not in _subscriber:
            _subscriber[reg] = SubscriberMetrics(
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
        return _subscriber[reg]
