"""Decoding of the wire contract's events (docs/event-contract.md).

A message value is one JSON object or a JSON array of objects. A bad object never raises:
it becomes a :class:`Rejection` with a reason, and the valid objects around it still count.
Extra fields are ignored (the contract only grows additively).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import orjson

Arm = Literal["baseline", "canary", "shadow"]
ARMS: tuple[str, ...] = ("baseline", "canary", "shadow")
FEEDBACK_VALUES: tuple[str, ...] = ("down", "up", "ticket")
NEGATIVE_FEEDBACK: frozenset[str] = frozenset({"down", "ticket"})


# The typed structs double as a strict fast path: msgspec validates in C, and anything it
# refuses (an RFC 3339 ts, a null refusal, a bad value) is re-read by the lenient path below,
# which accepts what the contract allows and names the problem otherwise.
# A rollout id becomes a Kafka key, a label on /metrics and part of log lines: short and printable.
MAX_ROLLOUT_ID = 256
MAX_REQUEST_ID = 1024
_CONTROL = "\x00-\x1f\x7f-\x9f"
_HAS_CONTROL = re.compile(f"[{_CONTROL}]")
# control characters are looked for once per distinct rollout id of a message (_printable_ids), not
# per event by msgspec: a pattern here doubles the cost of decoding
_RolloutId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ROLLOUT_ID)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REQUEST_ID)]
# 2100-01-01: a later ts is epoch milliseconds or microseconds by mistake, or a broken clock (one
# event far in the future would move the worker's event-time clock for every rollout)
MAX_TS = 4_102_444_800.0
MAX_NUMBER = 1e15
_Time = Annotated[float, msgspec.Meta(ge=0, le=MAX_TS)]
_NonNeg = Annotated[float, msgspec.Meta(ge=0, le=MAX_NUMBER)]
# the largest message value decoded (Kafka's default max.message.bytes is about 1 MiB): a larger
# one is rejected whole, before it is parsed
MAX_MESSAGE_BYTES = 1 << 20
MAX_COUNT = 10**9  # no request has a billion tokens; larger values are garbage (and overflow int64 columns)
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]


class InferenceEvent(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="inference"):
    rollout_id: _RolloutId
    arm: Literal["baseline", "canary", "shadow"]
    request_id: _Id
    ts: _Time
    latency_ms: _NonNeg
    output_tokens: _Count
    status: Literal["ok", "error"]
    refusal: bool = False
    input_tokens: _Count | None = None
    cost_usd: _NonNeg | None = None
    model: str | None = None
    model_digest: str | None = None

    @property
    def is_error(self) -> bool:
        return self.status == "error"


class FeedbackEvent(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="feedback"):
    rollout_id: _RolloutId
    arm: Literal["baseline", "canary", "shadow"]
    request_id: _Id
    ts: _Time
    value: Literal["down", "up", "ticket"]
    # Additive, optional: when the producer knows it, the time of the request the feedback is
    # about. It lets the feedback gate attribute late feedback to the right time block exactly.
    request_ts: _Time | None = None

    @property
    def negative(self) -> bool:
        return self.value in NEGATIVE_FEEDBACK


class Rejection(msgspec.Struct, frozen=True):
    reason: str
    raw: bytes
    rollout_id: str | None = None


Event = InferenceEvent | FeedbackEvent
Decoded = InferenceEvent | FeedbackEvent | Rejection


class _Wire(msgspec.Struct, gc=False):
    """Lenient first pass: every field optional, typed loosely; checked by hand afterwards so that
    each problem gets a precise reason instead of one generic decode error."""

    type: Any = "inference"
    rollout_id: Any = None
    arm: Any = None
    request_id: Any = None
    ts: Any = None
    latency_ms: Any = None
    input_tokens: Any = None
    output_tokens: Any = None
    cost_usd: Any = None
    status: Any = None
    refusal: Any = False
    model: Any = None
    model_digest: Any = None
    value: Any = None
    request_ts: Any = None


_wire_decoder = msgspec.json.Decoder(_Wire)
# Fast paths, strict and in C. With "type" present, the tagged union reads either kind. Without it
# the contract says inference, which the plain InferenceEvent decoder reads (it refuses a "type"
# other than "inference"). Anything refused goes to the lenient path, which names the problem.
_union_decoder = msgspec.json.Decoder(InferenceEvent | FeedbackEvent)
_union_list_decoder = msgspec.json.Decoder(list[InferenceEvent | FeedbackEvent])
_inference_decoder = msgspec.json.Decoder(InferenceEvent)
_inference_list_decoder = msgspec.json.Decoder(list[InferenceEvent])
_wire_list_decoder = msgspec.json.Decoder(list[_Wire])
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?\Z")


def parse_ts(value: Any, field: str = "ts") -> float:
    """Epoch seconds from a number or an RFC 3339 string. Naive times are taken as UTC."""
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a number or an RFC 3339 string, not a boolean")
    if isinstance(value, int | float):
        f = float(value)
        if not math.isfinite(f) or f < 0:
            raise ValueError(f"{field} must be a finite, non-negative epoch time")
        if f > MAX_TS:
            raise ValueError(f"{field} must be epoch seconds before 2100 (this looks like milliseconds or later)")
        return f
    if isinstance(value, str):
        # fromisoformat alone also takes ISO 8601 forms RFC 3339 does not (a bare date, week dates,
        # compact "20260101T000000"): a producer sending those has a bug worth hearing about
        dt = None
        if _RFC3339.match(value):
            try:
                dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                dt = None
        if dt is None:
            raise ValueError(f"{field} is not an RFC 3339 time: {value[:40]!r}")
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        f = dt.timestamp()
        if f < 0 or f > MAX_TS:
            raise ValueError(f"{field} is out of range: {value[:40]!r}")
        return f
    raise ValueError(f"{field} is missing" if value is None else f"{field} has the wrong type")


def _str(w: _Wire, field: str, max_length: int) -> str:
    v = getattr(w, field)
    if v is None:
        raise ValueError(f"{field} is missing")
    if not isinstance(v, str) or not v:
        raise ValueError(f"{field} must be a non-empty string")
    if len(v) > max_length:
        raise ValueError(f"{field} must be at most {max_length} characters, not {len(v):,}")
    return v


def rollout_id_problem(rid: str) -> str | None:
    """Why ``rollout_id`` is unfit (too long, control characters), or None."""
    if len(rid) > MAX_ROLLOUT_ID:
        return f"rollout_id must be at most {MAX_ROLLOUT_ID} characters, not {len(rid):,}"
    if _HAS_CONTROL.search(rid):
        return _CONTROL_REASON
    return None


def _rollout_id(w: _Wire) -> str:
    v = _str(w, "rollout_id", MAX_ROLLOUT_ID)
    if _HAS_CONTROL.search(v):
        raise ValueError(_CONTROL_REASON)
    return v


def _opt_str(w: _Wire, field: str) -> str | None:
    v = getattr(w, field)
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{field} must be a string")
    return v


def _num(w: _Wire, field: str, *, required: bool) -> float | None:
    v = getattr(w, field)
    if v is None:
        if required:
            raise ValueError(f"{field} is missing")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{field} must be a number")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{field} must be finite")
    if f < 0:
        raise ValueError(f"{field} must be >= 0")
    if f > MAX_NUMBER:
        raise ValueError(f"{field} must be <= {MAX_NUMBER:g}")
    return f


def _int(w: _Wire, field: str, *, required: bool) -> int | None:
    v = getattr(w, field)
    if v is None:
        if required:
            raise ValueError(f"{field} is missing")
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise ValueError(f"{field} must be an integer")
    if v < 0:
        raise ValueError(f"{field} must be >= 0")
    if v > MAX_COUNT:
        raise ValueError(f"{field} must be <= {MAX_COUNT:,}")
    return int(v)


def from_wire(w: _Wire) -> Event:
    """Validate one loosely-decoded object; raises ValueError with the reason."""
    kind = w.type
    rollout_id = _rollout_id(w)
    arm = w.arm
    if arm is None:
        raise ValueError("arm is missing")
    if arm not in ARMS:
        raise ValueError(f"arm must be one of baseline, canary, shadow, not {str(arm)[:20]!r}")
    request_id = _str(w, "request_id", MAX_REQUEST_ID)
    ts = parse_ts(w.ts)
    if kind == "inference":
        status = w.status
        if status is None:
            raise ValueError("status is missing")
        if status not in ("ok", "error"):
            raise ValueError(f"status must be 'ok' or 'error', not {str(status)[:20]!r}")
        refusal = w.refusal
        if refusal is None:
            refusal = False
        if not isinstance(refusal, bool):
            raise ValueError("refusal must be a boolean")
        latency = _num(w, "latency_ms", required=True)
        out_tokens = _int(w, "output_tokens", required=True)
        assert latency is not None and out_tokens is not None
        return InferenceEvent(
            rollout_id=rollout_id,
            arm=arm,
            request_id=request_id,
            ts=ts,
            latency_ms=latency,
            output_tokens=out_tokens,
            status=status,
            refusal=refusal,
            input_tokens=_int(w, "input_tokens", required=False),
            cost_usd=_num(w, "cost_usd", required=False),
            model=_opt_str(w, "model"),
            model_digest=_opt_str(w, "model_digest"),
        )
    if kind == "feedback":
        value = w.value
        if value is None:
            raise ValueError("value is missing")
        if value not in FEEDBACK_VALUES:
            raise ValueError(f"value must be one of down, up, ticket, not {str(value)[:20]!r}")
        request_ts = None if w.request_ts is None else parse_ts(w.request_ts, "request_ts")
        return FeedbackEvent(
            rollout_id=rollout_id, arm=arm, request_id=request_id, ts=ts, value=value, request_ts=request_ts
        )
    raise ValueError(f"type must be 'inference' or 'feedback', not {str(kind)[:20]!r}")


def _rejection(reason: str, obj: Any, raw: bytes | None = None) -> Rejection:
    rid = None
    if isinstance(obj, _Wire) and isinstance(obj.rollout_id, str):
        rid = obj.rollout_id
    elif isinstance(obj, dict) and isinstance(obj.get("rollout_id"), str):
        rid = obj["rollout_id"]
    if rid is not None and (len(rid) > MAX_ROLLOUT_ID or _HAS_CONTROL.search(rid)):
        rid = None  # not fit for a Kafka key or a log line either: the dead letter keeps the message's key
    if raw is None:
        try:
            raw = msgspec.json.encode(obj)
        except Exception:  # pragma: no cover - msgspec encodes anything it decoded
            raw = b""
    return Rejection(reason=reason, raw=raw, rollout_id=rid)


def _one(w: _Wire, raw: bytes | None = None) -> Decoded:
    try:
        return from_wire(w)
    except ValueError as exc:
        return _rejection(str(exc), w, raw)


def _unfit(raw: bytes) -> Rejection | None:
    """A message refused whole before it is parsed: too large."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection(reason=f"message is {len(raw):,} bytes, more than the {MAX_MESSAGE_BYTES:,} allowed",
                         raw=raw)
    return None


def _too_deep(raw: bytes) -> list[Decoded]:
    return [Rejection(reason="not valid JSON: nested too deeply", raw=raw)]


def decode_message(raw: bytes) -> list[Decoded]:
    """Decode one Kafka message value: a JSON object or a JSON array of objects (not empty)."""
    unfit = _unfit(raw)
    if unfit is not None:
        return [unfit]
    try:
        out = _decode_message(raw)
    except RecursionError:  # msgspec refuses deep nesting by raising this one
        return _too_deep(raw)
    if not out:
        return [Rejection(reason="message holds no events (an empty array)", raw=raw)]
    return _printable_ids(out, raw)


_CONTROL_REASON = "rollout_id must not contain control characters"


def _printable_ids(out: list[Decoded], raw: bytes | None = None) -> list[Decoded]:
    """The events whose rollout id holds a control character, as rejections (``raw``: the message,
    kept for a one-event message; an array element is re-encoded)."""
    ids = {rid for d in out if type(d) is not Rejection and (rid := d.rollout_id) is not None}
    bad = {rid for rid in ids if _HAS_CONTROL.search(rid)}
    if not bad:
        return out
    whole = raw if raw is not None and len(out) == 1 and raw.lstrip()[:1] == b"{" else None
    return [Rejection(reason=_CONTROL_REASON, raw=whole or encode_event(d))  # type: ignore[arg-type]
            if type(d) is not Rejection and d.rollout_id in bad else d for d in out]


def _decode_message(raw: bytes) -> list[Decoded]:
    head = raw.lstrip()[:1]
    try:
        if head == b"[":
            for dec in (_union_list_decoder, _inference_list_decoder):
                try:
                    return list(dec.decode(raw))
                except msgspec.DecodeError:
                    pass
            mixed = _fast_each(raw)
            if mixed is not None:
                return mixed
            out = [_one(w) for w in _wire_list_decoder.decode(raw)]
            if any(type(d) is Rejection for d in out):
                return _decode_slow(raw)  # to keep each bad element's original JSON
            return out
        if head == b"{":
            fast = _fast_one(raw)
            if fast is not None:
                return [fast]
            return [_one(_wire_decoder.decode(raw), raw)]
    except msgspec.ValidationError:
        pass  # an element is not an object, or a field has a type msgspec refuses: go slow
    except msgspec.DecodeError as exc:
        return [Rejection(reason=f"not valid JSON: {exc}", raw=raw)]
    return _decode_slow(raw)


def _decode_slow(raw: bytes) -> list[Decoded]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc).lower():
            return _too_deep(raw)
        return [Rejection(reason=f"not valid JSON: {exc}", raw=raw)]
    items = obj if isinstance(obj, list) else [obj]
    out: list[Decoded] = []
    for item in items:
        if not isinstance(item, dict):
            out.append(_rejection("event must be a JSON object", item))
            continue
        try:
            w = msgspec.convert(item, _Wire)
        except msgspec.ValidationError as exc:  # pragma: no cover - _Wire accepts Any
            out.append(_rejection(str(exc), item))
            continue
        out.append(_one(w, orjson.dumps(item)))
    return out




def _fast_each(raw: bytes) -> list[Decoded] | None:
    """An array mixing inference events without ``type`` (the default) and feedback events, which
    neither typed list decoder takes: each element through the typed decoders, still in C; None
    when any element needs the lenient path."""
    out: list[Decoded] = []
    for item in _raw_list_decoder.decode(raw):
        try:
            out.append(_inference_decoder.decode(item))
            continue
        except msgspec.DecodeError:
            pass
        try:
            out.append(_union_decoder.decode(item))
        except msgspec.DecodeError:
            return None
    return out


def _fast_one(raw: bytes) -> Event | None:
    try:
        # bound to a typed name so that the result is `Event` whichever msgspec stubs are installed
        ev: Event = _union_decoder.decode(raw)
        return ev
    except msgspec.DecodeError:
        pass
    try:
        return _inference_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def decode_lines(lines: list[bytes]) -> list[Decoded]:
    """Decode JSONL lines (one event per line); blank lines are skipped."""
    try:
        # the whole chunk in one call when every line is a well-formed event with its "type"
        fast: list[Decoded] = list(_union_decoder.decode_lines(b"".join(lines)))
        if not any(_HAS_CONTROL.search(rid) for rid in {d.rollout_id for d in fast if d.rollout_id is not None}):
            return fast
        # else each line again, so that the rejection keeps the line's own bytes
    except (msgspec.DecodeError, RecursionError):
        pass
    out: list[Decoded] = []
    for line in lines:
        try:
            out.extend(_decode_line(line))
        except RecursionError:
            out.extend(_too_deep(line.strip()))
    return out


def _decode_line(line: bytes) -> list[Decoded]:
    """One JSONL line as decode_message reads one Kafka message (a blank line holds nothing)."""
    if not line.strip():
        return []
    line = line.rstrip(b"\r\n")
    return decode_message(line)


def encode_event(event: Event) -> bytes:
    """The contract's JSON for an event, with its "type" (fields left at None are omitted)."""
    d = {"type": "feedback" if type(event) is FeedbackEvent else "inference"}
    d.update((k, v) for k, v in msgspec.structs.asdict(event).items() if v is not None)
    return orjson.dumps(d)


def reason_code(reason: str) -> str:
    """A low-cardinality label for metrics, e.g. ``latency_ms_invalid`` or ``arm_missing``."""
    if reason.startswith("not valid JSON"):
        return "invalid_json"
    if reason.startswith("rollout cap"):
        return "rollout_cap"
    if reason.startswith("message is"):
        return "too_large"
    if reason.startswith("message holds no events"):
        return "empty"
    if "JSON object" in reason:
        return "not_an_object"
    head = reason.split(" ", 1)[0]
    if not head.isidentifier():
        return "invalid"
    missing = reason.endswith(" is missing") or reason.startswith(f"{head} is missing:")
    return f"{head}_missing" if missing else f"{head}_invalid"


def split_rejections(decoded: list[Decoded]) -> tuple[list[Event], list[Rejection]]:
    """(valid events in order, rejections)."""
    bad = [d for d in decoded if type(d) is Rejection]
    if not bad:
        return decoded, []  # type: ignore[return-value]
    return [d for d in decoded if type(d) is not Rejection], bad  # type: ignore[misc]
