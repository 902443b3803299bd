"""OpenTelemetry bridge: GenAI spans and log events, as the Collector's Kafka exporter writes them,
turned into inference events keyed by ``rollout_id``.

The exporter writes one OTLP export request per message (``otlp_proto``: the protobuf
``TracesData``/``LogsData``; ``otlp_json``: OTLP/JSON, whose trace and span ids are hex strings) to
``otlp_spans`` and ``otlp_logs``. Its record keys are a trace id, a hash of resource attributes or
nothing, hashed with Sarama's FNV-1a by default, so those topics cannot feed the worker directly:
the bridge re-keys every event by ``rollout_id`` and produces with aiokafka's murmur2 partitioner,
the Java client's, like every other producer of the events topic.

A span is a GenAI span when it carries ``gen_ai.operation.name`` (required by the conventions).
Other spans are skipped; a GenAI span without a rollout id is not part of a rollout and is skipped
too. A GenAI span of a rollout that cannot become a valid event (unknown arm, no output tokens, no end
time, ...) goes to the dead-letter topic with the reason in the ``x-rollout-gate-reason`` header, as
the worker's dead letters do; so does a message that is not OTLP at all.

The attribute names are those of OpenTelemetry semantic conventions :data:`SEMCONV_VERSION`, where
the ``gen_ai.*`` names are still "development" stability; a later version may rename them, so the
names the bridge reads are fields of :class:`OtelMapping`, and only the defaults follow that version.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter

from connectors.config import EVENTS_TOPIC, KafkaConfig, as_config
from connectors.metrics import PerRegistry
from connectors.publisher import encode_batch, validate
from gates.events import ARMS, Event, Rejection

log = logging.getLogger(__name__)

SEMCONV_VERSION = "1.37.0"  # OpenTelemetry semantic conventions the default attribute names come from
SEMCONV_SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

Encoding = Literal["otlp_proto", "otlp_json"]
Signal = Literal["traces", "logs"]
ENCODINGS: tuple[str, ...] = ("otlp_proto", "otlp_json")
DLQ_TOPIC = "rollout.events.dlq"
REASON_HEADER = "x-rollout-gate-reason"  # the worker's dead-letter headers
SOURCE_HEADER = "x-rollout-gate-source"
_STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR


@dataclass(frozen=True)
class OtelMapping:
    """Which attributes say what. Span attributes win over resource attributes of the same name."""

    rollout_attribute: str = "rollout.id"
    arm_attribute: str = "rollout.arm"
    rollout_id: str | None = None  # every GenAI span belongs to this rollout (instead of an attribute)
    arms: Mapping[str, str] = field(default_factory=dict)  # attribute value -> arm, e.g. {"chat-v7": "canary"}
    request_id_attribute: str | None = None  # default: the span's trace id and span id
    cost_attribute: str | None = None  # USD; the conventions define none
    digest_attribute: str | None = None
    operation_attribute: str = "gen_ai.operation.name"
    input_tokens_attribute: str = "gen_ai.usage.input_tokens"
    output_tokens_attribute: str = "gen_ai.usage.output_tokens"
    finish_reasons_attribute: str = "gen_ai.response.finish_reasons"
    error_attribute: str = "error.type"
    model_attributes: tuple[str, ...] = ("gen_ai.response.model", "gen_ai.request.model")
    refusal_finish_reasons: frozenset[str] = frozenset({"content_filter"})
    # log records: the conventions' inference event, with its duration in seconds in this attribute
    log_event_names: frozenset[str] = frozenset({"gen_ai.client.inference.operation.details"})
    log_duration_attribute: str = "gen_ai.client.operation.duration"

    def arm(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        arm = self.arms.get(value, value)
        return arm if arm in ARMS else None


@dataclass
class Mapped:
    """One OTLP message's outcome: valid events, rejections for the DLQ, and how many were skipped."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    skipped: int = 0


# -- decoding ------------------------------------------------------------------------------------
def _pb() -> tuple[Any, Any, Any]:
    try:
        from google.protobuf import json_format
        from opentelemetry.proto.logs.v1 import logs_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the OpenTelemetry bridge needs opentelemetry-proto: pip install 'rollout-gate[otel]'") from exc
    return trace_pb2, logs_pb2, json_format


_ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping reads bytes as base64."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _ID_FIELDS and isinstance(v, str) and len(v) == 2 * _ID_FIELDS[k]:
                try:
                    v = base64.b64encode(bytes.fromhex(v)).decode()
                except ValueError:
                    pass  # not hex: leave it for the parser (base64 from a non-conforming producer)
            out[k] = _hex_ids_to_base64(v)
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def decode(value: bytes, signal: Signal, encoding: Encoding) -> Any:
    """The ``TracesData`` or ``LogsData`` of one message; ``ValueError`` with a reason if it is not one."""
    trace_pb2, logs_pb2, json_format = _pb()
    msg = trace_pb2.TracesData() if signal == "traces" else logs_pb2.LogsData()
    if encoding == "otlp_proto":
        try:
            msg.ParseFromString(value)
        except Exception as exc:  # google.protobuf.message.DecodeError, RuntimeWarning on bad varints
            raise ValueError(f"not valid OTLP protobuf {signal}: {exc}") from None
        return msg
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"not valid OTLP JSON {signal}: not a JSON object")
    try:
        json_format.ParseDict(_hex_ids_to_base64(doc), msg, ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error) as exc:
        raise ValueError(f"not valid OTLP JSON {signal}: {exc}") from None
    return msg


# -- mapping -------------------------------------------------------------------------------------
def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _count(v: Any) -> int | None:
    """A token count: an OTLP int, or a whole double or numeric string from a lax SDK."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    try:
        return float(v) if isinstance(v, str) else None
    except ValueError:
        return None


def _to_event(attrs: dict[str, Any], m: OtelMapping, *, ts_ns: int, latency_ms: float | None, request_id: str,
              span_error: bool, raw: Callable[[], bytes]) -> Event | Rejection | None:
    """``raw`` renders the span or record for a dead letter; it is called only for one (rendering
    every span as JSON cost more than the whole mapping)."""
    if m.operation_attribute not in attrs and m.output_tokens_attribute not in attrs:
        return None  # not a GenAI operation
    rollout_id = m.rollout_id or attrs.get(m.rollout_attribute)
    if not isinstance(rollout_id, str) or not rollout_id:
        return None  # a GenAI call that is not part of a rollout
    arm_value = attrs.get(m.arm_attribute)
    arm = m.arm(arm_value)
    if arm is None:
        reason = (f"{m.arm_attribute} is missing" if arm_value is None
                  else f"{m.arm_attribute} {arm_value!r} is not an arm (baseline, canary, shadow) nor mapped to one")
        return Rejection(reason, raw(), rollout_id)
    if latency_ms is None:
        return Rejection("latency is unknown", raw(), rollout_id)
    error = span_error or bool(attrs.get(m.error_attribute))
    out_tokens = _count(attrs.get(m.output_tokens_attribute))
    if out_tokens is None:
        if attrs.get(m.output_tokens_attribute) is not None:
            return Rejection(f"{m.output_tokens_attribute} is not a token count", raw(), rollout_id)
        if not error:
            return Rejection(f"{m.output_tokens_attribute} is missing", raw(), rollout_id)
        out_tokens = 0  # a failed call produced nothing
    own_id = attrs.get(m.request_id_attribute) if m.request_id_attribute else None
    reasons = attrs.get(m.finish_reasons_attribute) or []
    if isinstance(reasons, str):
        reasons = [reasons]
    event: dict[str, Any] = {
        "type": "inference",
        "rollout_id": rollout_id,
        "arm": arm,
        "request_id": str(own_id) if own_id else request_id,
        "ts": ts_ns / 1e9,
        "latency_ms": latency_ms,
        "output_tokens": out_tokens,
        "status": "error" if error else "ok",
        "refusal": any(r in m.refusal_finish_reasons for r in reasons if isinstance(r, str)),
    }
    if (inp := _count(attrs.get(m.input_tokens_attribute))) is not None:
        event["input_tokens"] = inp
    for name in m.model_attributes:
        if isinstance(attrs.get(name), str):
            event["model"] = attrs[name]
            break
    if m.cost_attribute and (cost := _number(attrs.get(m.cost_attribute))) is not None:
        event["cost_usd"] = cost
    if m.digest_attribute and isinstance(attrs.get(m.digest_attribute), str):
        event["model_digest"] = attrs[m.digest_attribute]
    try:
        return validate(event)
    except ValueError as exc:
        return Rejection(str(exc).removeprefix("invalid event: "), raw(), rollout_id)


def _json(message: Any) -> bytes:
    _, _, json_format = _pb()
    return str(json_format.MessageToJson(message, indent=None)).encode()


@dataclass(frozen=True)
class _Item:
    """One span or log record, whichever encoding it came in."""

    attrs: dict[str, Any]
    ts_ns: int
    latency_ms: float | None
    request_id: str
    error: bool
    raw: Callable[[], bytes]
    event_name: str | None = None  # log records only


def _span_item(attrs: dict[str, Any], start: int, end: int, trace_hex: str, span_hex: str, error: bool,
               raw: Callable[[], bytes]) -> _Item:
    latency = (end - start) / 1e6 if end and start and end >= start else None
    return _Item(attrs, end, latency, f"{trace_hex}-{span_hex}", error, raw)


def _pb_spans(data: Any) -> Iterator[_Item]:
    for rs in data.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                yield _span_item({**resource, **attributes(span.attributes)}, span.start_time_unix_nano,
                                 span.end_time_unix_nano, span.trace_id.hex(), span.span_id.hex(),
                                 span.status.code == _STATUS_ERROR, partial(_json, span))


def _pb_logs(data: Any) -> Iterator[_Item]:
    for rl in data.resource_logs:
        resource = attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            for i, rec in enumerate(sl.log_records):
                ts = rec.time_unix_nano or rec.observed_time_unix_nano
                rid = f"{rec.trace_id.hex()}-{rec.span_id.hex()}" if rec.span_id else f"log-{ts}-{i}"
                yield _Item({**resource, **attributes(rec.attributes)}, ts, None, rid, False,
                            partial(_json, rec), rec.event_name or None)


# OTLP/JSON read directly: protobuf's generic JSON parser (json_format.ParseDict) cost about 90% of
# the bridge's time on otlp_json. The rules are OTLP/JSON's: lowerCamelCase names, ids in hex, 64-bit
# integers as decimal strings or numbers, enums as integers or names, unknown fields ignored.
class _Shape(ValueError):
    pass


def _list(node: Any, key: str) -> list[Any]:
    if not isinstance(node, dict):
        raise _Shape(f"an element holding {key} is not an object")
    v = node.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise _Shape(f"{key} is not an array")
    return v


def _obj(node: Any, key: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise _Shape(f"an element holding {key} is not an object")
    v = node.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _Shape(f"{key} is not an object")
    return v


def _uint(v: Any, key: str) -> int:
    if v is None:
        return 0
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    raise _Shape(f"{key} is not an unsigned integer")


def _json_value(v: Any) -> Any:
    if not isinstance(v, dict) or not v:
        return None
    if "stringValue" in v:
        return v["stringValue"]
    if "boolValue" in v:
        return v["boolValue"]
    if "intValue" in v:
        i = v["intValue"]
        if isinstance(i, bool) or not isinstance(i, int | str):
            raise _Shape("intValue is not an integer")
        try:
            return int(i)
        except ValueError:
            raise _Shape("intValue is not an integer") from None
    if "doubleValue" in v:
        d = v["doubleValue"]
        if isinstance(d, bool) or not isinstance(d, int | float | str):
            raise _Shape("doubleValue is not a number")
        try:
            return float(d)
        except ValueError:
            raise _Shape("doubleValue is not a number") from None
    if "arrayValue" in v:
        return [_json_value(x) for x in _list(v["arrayValue"], "values")]
    if "kvlistValue" in v:
        return _json_attributes(_list(v["kvlistValue"], "values"))
    if "bytesValue" in v:
        try:
            return base64.b64decode(v["bytesValue"], validate=True)
        except (binascii.Error, TypeError):
            raise _Shape("bytesValue is not base64") from None
    return None


def _json_attributes(kvs: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise _Shape("an attribute has no key")
        out[kv["key"]] = _json_value(kv.get("value"))
    return out


def _json_id(v: Any, key: str) -> str:
    """A trace or span id as lowercase hex: OTLP/JSON writes hex; base64 from a non-conforming producer
    is accepted too, as protobuf's JSON mapping would read it."""
    if v is None or v == "":
        return ""
    if not isinstance(v, str):
        raise _Shape(f"{key} is not a string")
    if len(v) == 2 * _ID_FIELDS[key]:
        try:
            return bytes.fromhex(v).hex()
        except ValueError:
            pass
    try:
        return base64.b64decode(v, validate=True).hex()
    except binascii.Error:
        raise _Shape(f"{key} is neither hex nor base64") from None


def _json_error(status: dict[str, Any]) -> bool:
    return status.get("code") in (_STATUS_ERROR, "STATUS_CODE_ERROR")


def _json_spans(doc: dict[str, Any]) -> list[_Item]:
    out = []
    for rs in _list(doc, "resourceSpans"):
        resource = _json_attributes(_list(_obj(rs, "resource"), "attributes"))
        for ss in _list(rs, "scopeSpans"):
            for span in _list(ss, "spans"):
                if not isinstance(span, dict):
                    raise _Shape("a span is not an object")
                out.append(_span_item({**resource, **_json_attributes(_list(span, "attributes"))},
                                      _uint(span.get("startTimeUnixNano"), "startTimeUnixNano"),
                                      _uint(span.get("endTimeUnixNano"), "endTimeUnixNano"),
                                      _json_id(span.get("traceId"), "traceId"), _json_id(span.get("spanId"), "spanId"),
                                      _json_error(_obj(span, "status")), partial(orjson.dumps, span)))
    return out


def _json_logs(doc: dict[str, Any]) -> list[_Item]:
    out = []
    for rl in _list(doc, "resourceLogs"):
        resource = _json_attributes(_list(_obj(rl, "resource"), "attributes"))
        for sl in _list(rl, "scopeLogs"):
            for i, rec in enumerate(_list(sl, "logRecords")):
                if not isinstance(rec, dict):
                    raise _Shape("a log record is not an object")
                ts = _uint(rec.get("timeUnixNano"), "timeUnixNano") or _uint(rec.get("observedTimeUnixNano"),
                                                                              "observedTimeUnixNano")
                span_id = _json_id(rec.get("spanId"), "spanId")
                rid = f"{_json_id(rec.get('traceId'), 'traceId')}-{span_id}" if span_id else f"log-{ts}-{i}"
                name = rec.get("eventName")
                out.append(_Item({**resource, **_json_attributes(_list(rec, "attributes"))}, ts, None, rid, False,
                                 partial(orjson.dumps, rec), name if isinstance(name, str) and name else None))
    return out


def _map_spans(items: Iterable[_Item], m: OtelMapping) -> Mapped:
    out = Mapped()
    for it in items:
        _add(out, _to_event(it.attrs, m, ts_ns=it.ts_ns, latency_ms=it.latency_ms, request_id=it.request_id,
                            span_error=it.error, raw=it.raw))
    return out


def _map_logs(items: Iterable[_Item], m: OtelMapping) -> Mapped:
    out = Mapped()
    for it in items:
        name = it.event_name or it.attrs.get("event.name")
        if name not in m.log_event_names:
            out.skipped += 1
            continue
        seconds = _number(it.attrs.get(m.log_duration_attribute))
        latency = seconds * 1000.0 if seconds is not None and seconds >= 0 else None
        _add(out, _to_event(it.attrs, m, ts_ns=it.ts_ns, latency_ms=latency, request_id=it.request_id,
                            span_error=False, raw=it.raw))
    return out


def map_traces(data: Any, m: OtelMapping) -> Mapped:
    """The events of a decoded ``TracesData``."""
    return _map_spans(_pb_spans(data), m)


def map_logs(data: Any, m: OtelMapping) -> Mapped:
    """The events of a decoded ``LogsData``."""
    return _map_logs(_pb_logs(data), m)


def _add(out: Mapped, r: Event | Rejection | None) -> None:
    if r is None:
        out.skipped += 1
    elif isinstance(r, Rejection):
        out.rejected.append(r)
    else:
        out.events.append(r)


def map_message(value: bytes, signal: Signal, encoding: Encoding, m: OtelMapping) -> Mapped:
    if encoding == "otlp_json":
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Mapped(rejected=[Rejection(f"not valid JSON: {exc}", value)])
        try:
            if not isinstance(doc, dict):
                raise _Shape("not a JSON object")
            items = _json_spans(doc) if signal == "traces" else _json_logs(doc)
        except _Shape as exc:
            return Mapped(rejected=[Rejection(f"not valid OTLP JSON {signal}: {exc}", value)])
        return _map_spans(items, m) if signal == "traces" else _map_logs(items, m)
    try:
        data = decode(value, signal, encoding)
    except ValueError as exc:
        return Mapped(rejected=[Rejection(str(exc), value)])
    return map_traces(data, m) if signal == "traces" else map_logs(data, m)


# -- the service ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    topic: str
    signal: Signal
    encoding: Encoding = "otlp_proto"


bridge_counter = PerRegistry(lambda reg: Counter(
    "rollout_gate_otel_records_total",
    "OTLP spans and log records read by the bridge, by outcome (event, dead_letter, skipped)",
    ["signal", "outcome"],
    registry=reg,
))


def _batches(events: list[Event], max_batch: int) -> Iterator[tuple[str, list[Event]]]:
    by_rollout: dict[str, list[Event]] = {}
    for e in events:
        by_rollout.setdefault(e.rollout_id, []).append(e)
    for rid, evs in by_rollout.items():
        for i in range(0, len(evs), max_batch):
            yield rid, evs[i : i + max_batch]


class OtelBridge:
    """Consume the exporter's topics in a consumer group, produce events and dead letters, then commit:
    at-least-once (a restart may re-send a message's events; the worker's window dedups nothing, so
    keep restarts rare, as for any producer that retries)."""

    def __init__(
        self,
        kafka: KafkaConfig | str | None = None,
        *,
        sources: Iterable[Source] = (Source("otlp_spans", "traces"), Source("otlp_logs", "logs")),
        mapping: OtelMapping | None = None,
        events_topic: str = EVENTS_TOPIC,
        dlq_topic: str = DLQ_TOPIC,
        group_id: str = "rollout-gate-otel-bridge",
        auto_offset_reset: str = "earliest",
        max_batch: int = 100,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.kafka = as_config(kafka)
        self.sources = {s.topic: s for s in sources}
        if not self.sources:
            raise ValueError("the bridge needs at least one source topic")
        for s in self.sources.values():
            if s.encoding not in ENCODINGS:
                raise ValueError(f"{s.topic}: encoding must be one of {', '.join(ENCODINGS)}, not {s.encoding!r}")
        self.mapping = mapping or OtelMapping()
        self.events_topic, self.dlq_topic = events_topic, dlq_topic
        self.group_id, self.auto_offset_reset, self.max_batch = group_id, auto_offset_reset, max_batch
        self.counter = bridge_counter(registry)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if any(s.encoding == "otlp_proto" for s in self.sources.values()):
            _pb()  # fail at start, not on the first message, when opentelemetry-proto is missing
        kw = self.kafka.client_kwargs()
        self._producer = AIOKafkaProducer(**kw, acks="all", enable_idempotence=True)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            *self.sources, **kw, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="rollout-gate-otel-bridge")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def __aenter__(self) -> OtelBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_forever(self) -> None:
        await self.start()
        try:
            assert self._task is not None
            await self._task
        finally:
            await self.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=500, max_records=500)
            if batches:
                await self.process([r for records in batches.values() for r in records])
                await self._consumer.commit()

    async def process(self, records: list[Any]) -> None:
        """Map, produce and wait for every acknowledgement (then the caller may commit)."""
        assert self._producer is not None
        pending = []
        for rec in records:
            src = self.sources[rec.topic]
            mapped = map_message(rec.value or b"", src.signal, src.encoding, self.mapping)
            for rid, chunk in _batches(mapped.events, self.max_batch):
                pending.append(await self._producer.send(self.events_topic, value=encode_batch(chunk), key=rid.encode()))
            for rej in mapped.rejected:
                headers = [
                    (REASON_HEADER, rej.reason.encode("utf-8", "replace")),
                    (SOURCE_HEADER, f"{rec.topic}:{rec.partition}:{rec.offset}".encode()),
                ]
                key = rej.rollout_id.encode() if rej.rollout_id else rec.key
                pending.append(await self._producer.send(self.dlq_topic, value=rej.raw, key=key, headers=headers))
            self.counter.labels(src.signal, "event").inc(len(mapped.events))
            self.counter.labels(src.signal, "dead_letter").inc(len(mapped.rejected))
            self.counter.labels(src.signal, "skipped").inc(mapped.skipped)
        if pending:
            await asyncio.gather(*pending)


# -- command line --------------------------------------------------------------------------------
def _arm_pair(text: str) -> tuple[str, str]:
    value, sep, arm = text.rpartition("=")
    if not sep or not value or arm not in ARMS:
        raise argparse.ArgumentTypeError(f"--arm wants VALUE=baseline|canary|shadow, not {text!r}")
    return value, arm


def parse_args(argv: list[str] | None = None) -> tuple[OtelBridge, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="rollout-gate otel-bridge",
        description="Read GenAI spans and log events written by the OpenTelemetry Collector's Kafka exporter, "
                    f"publish inference events keyed by rollout_id (semantic conventions {SEMCONV_VERSION}).",
    )
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $ROLLOUT_GATE_KAFKA_BOOTSTRAP)")
    p.add_argument("--traces-topic", default="otlp_spans", help="the exporter's traces topic ('' to not read traces)")
    p.add_argument("--logs-topic", default="otlp_logs", help="the exporter's logs topic ('' to not read logs)")
    p.add_argument("--traces-encoding", choices=ENCODINGS, default="otlp_proto")
    p.add_argument("--logs-encoding", choices=ENCODINGS, default="otlp_proto")
    p.add_argument("--events-topic", default=EVENTS_TOPIC)
    p.add_argument("--dlq-topic", default=DLQ_TOPIC)
    p.add_argument("--group-id", default="rollout-gate-otel-bridge")
    p.add_argument("--rollout-attribute", default="rollout.id")
    p.add_argument("--rollout-id", help="every GenAI span belongs to this rollout (no rollout attribute needed)")
    p.add_argument("--arm-attribute", default="rollout.arm")
    p.add_argument("--arm", action="append", type=_arm_pair, default=[], metavar="VALUE=ARM",
                   help="map an arm attribute value to an arm, e.g. --arm chat-v7=canary (repeatable)")
    p.add_argument("--request-id-attribute", help="default: the span's trace id and span id")
    p.add_argument("--cost-attribute", help="a span attribute with the call's cost in USD")
    p.add_argument("--digest-attribute", help="a span attribute with the model's digest")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus metrics (rollout_gate_otel_records_total) on this port; 0: off")
    a = p.parse_args(argv)
    if not 0 <= a.metrics_port <= 65535:
        p.error(f"--metrics-port must be 0-65535, not {a.metrics_port}")
    sources = [Source(a.traces_topic, "traces", a.traces_encoding)] if a.traces_topic else []
    if a.logs_topic:
        sources.append(Source(a.logs_topic, "logs", a.logs_encoding))
    if not sources:
        p.error("nothing to read: both --traces-topic and --logs-topic are empty")
    mapping = OtelMapping(
        rollout_attribute=a.rollout_attribute, arm_attribute=a.arm_attribute, rollout_id=a.rollout_id,
        arms=dict(a.arm), request_id_attribute=a.request_id_attribute, cost_attribute=a.cost_attribute,
        digest_attribute=a.digest_attribute,
    )
    kafka = KafkaConfig.from_env(bootstrap_servers=a.bootstrap, client_id="rollout-gate-otel-bridge")
    bridge = OtelBridge(kafka, sources=sources, mapping=mapping, events_topic=a.events_topic,
                        dlq_topic=a.dlq_topic, group_id=a.group_id)
    return bridge, a


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO)
    bridge, a = parse_args(argv)
    if a.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(a.metrics_port)  # a daemon thread; every path answers with the metrics
        log.info("otel-bridge: metrics on :%d", a.metrics_port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(bridge.run_forever())


if __name__ == "__main__":
    main()
