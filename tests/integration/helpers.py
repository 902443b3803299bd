"""Shared steps of the worker integration tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from typing import Any

import orjson

from gates.engine import Engine
from gates.events import Rejection, decode_message
from gates.policy import parse_policy
from tests.integration.kafka_io import Message

from .streams import FAST_POLICY


def decoded(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in messages if m.value is not None]


def of(rollout_id: str, decisions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in decisions if d["rollout_id"] == rollout_id]


def has_action(rollout_id: str, *actions: str) -> Any:
    def done(msgs: list[Message]) -> bool:
        return any(d["rollout_id"] == rollout_id and d["action"] in actions for d in decoded(msgs))

    return done


def engine_decisions(values: Sequence[bytes], source: str, policy_text: str = FAST_POLICY) -> list[bytes]:
    """The pure engine fed message by message exactly as the worker feeds it (source, offset)."""
    engine = Engine(parse_policy(policy_text))
    out: list[bytes] = []
    for offset, value in enumerate(values):
        events = [e for e in decode_message(value) if not isinstance(e, Rejection)]
        if events:
            out.extend(d.to_json() for d in engine.ingest(events, source=source, offset=offset))
    return out


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        exact = head == name or head.startswith(name + "{")
        if exact and all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


def wait_for(check: Any, timeout: float, interval: float = 0.3) -> Any:
    """Poll ``check()`` until it returns something truthy; returns the last result either way."""
    deadline = time.monotonic() + timeout
    result = check()
    while not result and time.monotonic() < deadline:
        time.sleep(interval)
        result = check()
    return result


def first_difference(got: Sequence[bytes], expected: Sequence[bytes]) -> str:
    """A readable account of the first decision that differs (for assertion messages)."""
    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            dg, de = orjson.loads(g), orjson.loads(e)
            fields = {k: (dg.get(k), de.get(k)) for k in set(dg) | set(de) if dg.get(k) != de.get(k) and k != "gates"}
            gates = [(a["name"], {k: (a[k], b[k]) for k in a if a[k] != b.get(k)})
                     for a, b in zip(dg.get("gates", []), de.get("gates", []), strict=False) if a != b]
            return f"decision {i} (seq {dg.get('seq')}): got vs expected {fields}; gates {gates}"
    return f"lengths differ: got {len(got)}, expected {len(expected)}"


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
