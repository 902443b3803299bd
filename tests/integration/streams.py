"""Deterministic synthetic event streams for the integration tests and the benchmark.

Seeded numpy: each arm has Poisson arrivals at a fixed rate, lognormal latency and output length,
a cost from the tokens, error/refusal probabilities, and feedback events that arrive a little
later than their request. Arm shares are fixed (the canary weight does not follow the decisions):
enough canary traffic for ``min_samples`` at every step is all these tests need.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def recent_start(seconds: float, align: float = 60.0) -> float:
    """An event-time start ``seconds`` ago, aligned to ``align`` so that blocks line up as with START.

    The worker's timer lets event time run with the wall clock once input is idle (max-step-time
    holds), so a stream that should not meet a hold there is kept recent; replay does not care."""
    import math
    import time

    return math.floor((time.time() - seconds) / align) * align


@dataclass(frozen=True)
class ArmTraffic:
    rps: float
    latency_median_ms: float = 800.0
    latency_sigma: float = 0.35
    tokens_median: float = 300.0
    tokens_sigma: float = 0.4
    input_tokens: int = 500
    usd_per_1k_tokens: float = 0.002
    # Frequent errors and feedback keep the rate gates decisive on a few thousand requests.
    error_p: float = 0.04
    refusal_p: float = 0.04
    feedback_p: float = 0.5  # share of requests that get a feedback event
    negative_p: float = 0.3  # share of those that are "down"
    feedback_delay_s: float = 2.0
    model: str = "model"
    digest: str | None = None

    def scaled(self, **changes: Any) -> ArmTraffic:
        return replace(self, **changes)


BASELINE = ArmTraffic(rps=80.0, model="chat-v6", digest="sha256:" + "b" * 64)
CANARY = ArmTraffic(rps=80.0, model="chat-v7", digest="sha256:" + "c" * 64)


def generate(rollout_id: str, *, seconds: float, arms: Mapping[str, ArmTraffic], seed: int,
             start: float = START) -> list[dict[str, Any]]:
    """Events of one rollout over ``seconds`` of event time, sorted by ``ts`` (ties keep arm order)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, int, dict[str, Any]]] = []
    counter = 0
    for arm, t in arms.items():
        n = int(rng.poisson(t.rps * seconds))
        rel = np.sort(rng.uniform(0.0, seconds, n))  # relative, so that a shifted start is exact
        latency = rng.lognormal(np.log(t.latency_median_ms), t.latency_sigma, n)
        tokens = np.maximum(1, rng.lognormal(np.log(t.tokens_median), t.tokens_sigma, n).astype(np.int64))
        errors = rng.random(n) < t.error_p
        refusals = rng.random(n) < t.refusal_p
        feedback = rng.random(n) < t.feedback_p
        negative = rng.random(n) < t.negative_p
        for i in range(n):
            counter += 1
            rid = f"{arm[0]}{seed}-{counter}"
            when = start + round(float(rel[i]), 3)
            ev = {
                "rollout_id": rollout_id, "arm": arm, "request_id": rid, "ts": when,
                "model": t.model, "latency_ms": round(float(latency[i]), 2),
                "input_tokens": t.input_tokens, "output_tokens": int(tokens[i]),
                "cost_usd": round((t.input_tokens + int(tokens[i])) / 1000 * t.usd_per_1k_tokens, 8),
                "status": "error" if errors[i] else "ok", "refusal": bool(refusals[i]),
            }
            if t.digest:
                ev["model_digest"] = t.digest
            out.append((when, counter, ev))
            if feedback[i]:
                fts = start + round(float(rel[i]) + t.feedback_delay_s, 3)
                fb = {"type": "feedback", "rollout_id": rollout_id, "arm": arm, "request_id": rid,
                      "ts": fts, "request_ts": when, "value": "down" if negative[i] else "up"}
                out.append((fts, counter, fb))
    out.sort(key=lambda x: (x[0], x[1]))
    return [ev for _, _, ev in out]


def interleave(*streams: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge several rollouts' streams by event time (stable)."""
    merged = [(ev["ts"], i, j, ev) for i, s in enumerate(streams) for j, ev in enumerate(s)]
    merged.sort(key=lambda x: (x[0], x[1], x[2]))
    return [ev for *_, ev in merged]


def messages(events: Sequence[dict[str, Any]], per_message: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) Kafka messages: one event per message, or JSON arrays of up to ``per_message``
    events of one rollout (messages are keyed by rollout_id, so an array never mixes rollouts)."""
    if per_message <= 1:
        for ev in events:
            yield ev["rollout_id"].encode(), orjson.dumps(ev)
        return
    pending: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        buf = pending.setdefault(ev["rollout_id"], [])
        buf.append(ev)
        if len(buf) >= per_message:
            yield ev["rollout_id"].encode(), orjson.dumps(buf)
            pending[ev["rollout_id"]] = []
    for rid, buf in pending.items():
        if buf:
            yield rid.encode(), orjson.dumps(buf)


def jsonl(events: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(ev) + b"\n" for ev in events)


FAST_POLICY = """\
# Small limits so that a whole rollout fits in a couple of minutes of event time.
defaults:
  steps: [1, 10, 25, 50, 75, 100]
  block_seconds: 2
  eval_seconds: 1
  min_samples: 150
  min_step_seconds: 10
  max_step_seconds: 100000
  min_blocks: 3
  min_halt_samples: 30
"""


# Seconds of event time per step instead of minutes: 1 s blocks, a look every 0.5 s, three steps.
# Latency is off: the router, both fake model servers and the HTTP clients share one event loop
# on a small machine, so a P99 over a few hundred requests measures that loop's scheduling, not
# the models (the worker's latency gate has its own integration and statistical tests). The other
# four gates run as in production: cost (priced by the router), errors+refusals, output length,
# and feedback (no feedback is sent, so both arms are 0 and it passes).
FULL_LOOP_POLICY = """\
defaults:
  steps: [20, 50, 100]
  block_seconds: 1
  eval_seconds: 0.5
  min_samples: 150
  min_step_seconds: 4
  max_step_seconds: 600
  min_blocks: 3
  min_halt_samples: 30
  gates:
    latency: {enabled: false}
"""
