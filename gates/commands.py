"""Operator commands (topic ``rollout.commands``): inputs with their own event time.

``{"rollout_id": "chat-v7", "action": "pause"|"resume"|"rollback"|"promote", "ts": 1767225600,
   "actor": "alice", "reason": "investigating latency", "nonce": "9f2c...", "sig": "3b1e..."}``

``sig`` is the hex HMAC-SHA256, under the service's command key, of :func:`canonical` (every field
but ``sig``, keys sorted, ``ts`` as epoch seconds). ``nonce`` makes two commands that are alike in
everything else differ. A rollout refuses a command older than the last one it applied, or the
same (ts, nonce) again (:func:`replay_reason`): a captured command sent again does nothing, and a
replay of the log refuses it exactly as the live worker did.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec
import orjson

from gates.events import Rejection, parse_ts, rollout_id_problem

ACTIONS: tuple[str, ...] = ("pause", "resume", "rollback", "promote")
MAX_NONCE = 128
MAX_TEXT = 4096  # actor and reason


class Command(msgspec.Struct, frozen=True):
    rollout_id: str
    action: str
    ts: float
    actor: str = "operator"
    reason: str = ""
    nonce: str = ""
    sig: str = ""

    def to_json(self) -> bytes:
        d = msgspec.to_builtins(self)
        for k in ("nonce", "sig"):  # unsigned commands keep the shape they always had
            if not d[k]:
                del d[k]
        return orjson.dumps(d)


def canonical(cmd: Command) -> bytes:
    """The bytes a command's signature covers: every field but ``sig``, keys sorted."""
    return orjson.dumps({"action": cmd.action, "actor": cmd.actor, "nonce": cmd.nonce, "reason": cmd.reason,
                         "rollout_id": cmd.rollout_id, "ts": cmd.ts}, option=orjson.OPT_SORT_KEYS)  # fmt: skip


def signature(cmd: Command, key: bytes) -> str:
    return hmac.new(key, canonical(cmd), hashlib.sha256).hexdigest()


def sign(cmd: Command, key: bytes, nonce: str) -> Command:
    """``cmd`` with ``nonce`` and its signature under ``key``."""
    unsigned = msgspec.structs.replace(cmd, nonce=nonce, sig="")
    return msgspec.structs.replace(unsigned, sig=signature(unsigned, key))


def verify(cmd: Command, key: bytes) -> str | None:
    """Why ``cmd`` is not authentic under ``key``, or None."""
    if not cmd.sig:
        return "signature is missing: commands must be signed with the service's command key"
    if not hmac.compare_digest(cmd.sig.encode(), signature(cmd, key).encode()):
        return "signature does not match the command"
    return None


def replay_reason(cmd: Command, last_ts: float, nonces: list[str]) -> str | None:
    """Why a rollout that last applied a command at ``last_ts`` (with ``nonces`` at that ts) refuses
    ``cmd`` as a replay, or None."""
    if cmd.ts < last_ts:
        return "nonce refused: the command is older than the last one applied to this rollout"
    if cmd.ts == last_ts and cmd.nonce in nonces:
        return "nonce refused: this command was already applied to this rollout"
    return None


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
    problem = rollout_id_problem(rid)
    if problem is not None:
        return Rejection(reason=problem, raw=raw)
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
    if len(actor) > MAX_TEXT or len(reason) > MAX_TEXT:
        return Rejection(reason=f"actor and reason must be at most {MAX_TEXT} characters", raw=raw, rollout_id=rid)
    nonce, sig = obj.get("nonce", ""), obj.get("sig", "")
    if not isinstance(nonce, str) or len(nonce) > MAX_NONCE:
        return Rejection(reason=f"nonce must be a string of at most {MAX_NONCE} characters", raw=raw, rollout_id=rid)
    if not isinstance(sig, str) or len(sig) > 128:
        return Rejection(reason="signature must be a hex string", raw=raw, rollout_id=rid)
    return Command(rollout_id=rid, action=action, ts=ts, actor=actor, reason=reason, nonce=nonce, sig=sig)
