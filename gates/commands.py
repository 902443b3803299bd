"""Operator commands (topic ``rollout.commands``): inputs with their own event time.

``{"rollout_id": "chat-v7", "action": "pause"|"resume"|"rollback"|"promote", "ts": 1767225600,
   "actor": "alice", "reason": "investigating latency"}``
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from gates.events import Rejection, parse_ts

ACTIONS: tuple[str, ...] = ("pause", "resume", "rollback", "promote")


class Command(msgspec.Struct, frozen=True):
    rollout_id: str
    action: str
    ts: float
    actor: str = "operator"
    reason: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(msgspec.to_builtins(self))


def decode_command(raw: bytes) -> Command | Rejection:
    try:
        obj: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(reason=f"not valid JSON: {exc}", raw=raw)
    if not isinstance(obj, dict):
        return Rejection(reason="command must be a JSON object", raw=raw)
    rid = obj.get("rollout_id")
    if not isinstance(rid, str) or not rid:
        return Rejection(reason="rollout_id is missing", raw=raw)
    action = obj.get("action")
    if action not in ACTIONS:
        return Rejection(reason=f"action must be one of {', '.join(ACTIONS)}", raw=raw, rollout_id=rid)
    try:
        ts = parse_ts(obj.get("ts"))
    except ValueError as exc:
        return Rejection(reason=str(exc), raw=raw, rollout_id=rid)
    actor = obj.get("actor", "operator")
    reason = obj.get("reason", "")
    if not isinstance(actor, str) or not isinstance(reason, str):
        return Rejection(reason="actor and reason must be strings", raw=raw, rollout_id=rid)
    return Command(rollout_id=rid, action=action, ts=ts, actor=actor, reason=reason)
