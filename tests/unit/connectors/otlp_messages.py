"""OTLP messages as the Collector's Kafka exporter writes them, built with opentelemetry-proto's own
classes: ``otlp_proto`` is the serialized TracesData/LogsData; ``otlp_json`` is protobuf's JSON
mapping with the ids rewritten as hex, as OTLP/JSON requires."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z in ns


def any_value(v: Any) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    if isinstance(v, list | tuple):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(x) for x in v]))
    return common_pb2.AnyValue(string_value=str(v))


def kvs(attrs: dict[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def genai_attrs(*, rollout: str | None = "chat-v7", arm: str | None = "canary", output_tokens: int | None = 42,
                input_tokens: int = 10, finish: list[str] | None = None, error: str | None = None,
                **extra: Any) -> dict[str, Any]:
    a: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "chat", "gen_ai.response.model": "chat-7b",
                         "gen_ai.usage.input_tokens": input_tokens, "gen_ai.response.finish_reasons": finish or ["stop"]}
    if output_tokens is not None:
        a["gen_ai.usage.output_tokens"] = output_tokens
    if rollout is not None:
        a["rollout.id"] = rollout
    if arm is not None:
        a["rollout.arm"] = arm
    if error is not None:
        a["error.type"] = error
    a.update(extra)
    return a


def span(i: int, attrs: dict[str, Any], *, latency_ms: float = 120.0, start_ns: int | None = None,
         error: bool = False) -> trace_pb2.Span:
    start = T0 + i * 10**9 if start_ns is None else start_ns
    s = trace_pb2.Span(
        trace_id=i.to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), name="chat chat-7b",
        kind=trace_pb2.Span.SPAN_KIND_CLIENT, start_time_unix_nano=start,
        end_time_unix_nano=start + int(latency_ms * 1e6), attributes=kvs(attrs),
    )
    if error:
        s.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    return s


def traces(spans: list[trace_pb2.Span], resource: dict[str, Any] | None = None) -> trace_pb2.TracesData:
    return trace_pb2.TracesData(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=kvs(resource or {"service.name": "chat-gateway"})),
        scope_spans=[trace_pb2.ScopeSpans(spans=spans)],
        schema_url="https://opentelemetry.io/schemas/1.37.0",
    )])


def log_record(i: int, attrs: dict[str, Any], *, duration_s: float | None = 0.25,
               event_name: str = "gen_ai.client.inference.operation.details") -> logs_pb2.LogRecord:
    a = dict(attrs)
    if duration_s is not None:
        a["gen_ai.client.operation.duration"] = duration_s
    return logs_pb2.LogRecord(time_unix_nano=T0 + i * 10**9, event_name=event_name, attributes=kvs(a),
                              trace_id=i.to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"))


def logs(records: list[logs_pb2.LogRecord]) -> logs_pb2.LogsData:
    return logs_pb2.LogsData(resource_logs=[logs_pb2.ResourceLogs(
        resource=resource_pb2.Resource(attributes=kvs({"service.name": "chat-gateway"})),
        scope_logs=[logs_pb2.ScopeLogs(log_records=records)],
    )])


def _ids_to_hex(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
                    else _ids_to_hex(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_ids_to_hex(v) for v in node]
    return node


def encode(message: Any, encoding: str) -> bytes:
    if encoding == "otlp_proto":
        return bytes(message.SerializeToString())
    return orjson.dumps(_ids_to_hex(json_format.MessageToDict(message)))
