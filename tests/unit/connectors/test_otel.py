"""The OpenTelemetry bridge's mapping, on messages built with opentelemetry-proto (both encodings)."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.otel import SEMCONV_VERSION, OtelMapping, decode, map_logs, map_message, map_traces, parse_args
from gates.events import InferenceEvent
from tests.unit.connectors.otlp_messages import T0, encode, genai_attrs, log_record, logs, span, traces

ENCODINGS = ["otlp_proto", "otlp_json"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_genai_span_becomes_an_inference_event(encoding: str) -> None:
    msg = encode(traces([span(3, genai_attrs(output_tokens=57, input_tokens=11), latency_ms=250.5)]), encoding)
    out = map_message(msg, "traces", encoding, OtelMapping())  # type: ignore[arg-type]
    assert out.rejected == [] and out.skipped == 0
    (e,) = out.events
    assert isinstance(e, InferenceEvent)
    assert (e.rollout_id, e.arm, e.output_tokens, e.input_tokens, e.status, e.refusal, e.model) == (
        "chat-v7", "canary", 57, 11, "ok", False, "chat-7b")
    assert e.latency_ms == pytest.approx(250.5)
    assert e.ts == pytest.approx((T0 + 3 * 10**9 + 250_500_000) / 1e9)  # event time = the span's end
    assert e.request_id == f"{(3).to_bytes(16, 'big').hex()}-{(4).to_bytes(8, 'big').hex()}"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_errors_refusals_and_skips(encoding: str) -> None:
    spans = [
        span(1, genai_attrs(finish=["content_filter"])),                    # refusal
        span(2, genai_attrs(error="timeout", output_tokens=None)),           # error, no usage -> 0 tokens
        span(3, genai_attrs(), error=True),                                  # span status ERROR
        span(4, {"http.route": "/healthz"}),                                  # not GenAI: skipped
        span(5, genai_attrs(rollout=None)),                                   # GenAI, no rollout: skipped
    ]
    out = map_message(encode(traces(spans), encoding), "traces", encoding, OtelMapping())  # type: ignore[arg-type]
    assert out.rejected == [] and out.skipped == 2
    refused, timed_out, failed = out.events
    assert refused.refusal and refused.status == "ok"  # type: ignore[union-attr]
    assert timed_out.status == "error" and timed_out.output_tokens == 0  # type: ignore[union-attr]
    assert failed.status == "error"  # type: ignore[union-attr]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_what_cannot_be_mapped_is_rejected_with_a_reason(encoding: str) -> None:
    spans = [
        span(1, genai_attrs(arm="v7")),
        span(2, genai_attrs(arm=None)),
        span(3, genai_attrs(output_tokens=None)),
        span(4, genai_attrs(), latency_ms=-5),
    ]
    out = map_message(encode(traces(spans), encoding), "traces", encoding, OtelMapping())  # type: ignore[arg-type]
    assert out.events == []
    assert [r.reason for r in out.rejected] == [
        "rollout.arm 'v7' is not an arm (baseline, canary, shadow) nor mapped to one",
        "rollout.arm is missing",
        "gen_ai.usage.output_tokens is missing",
        "latency is unknown",
    ]
    assert all(r.rollout_id == "chat-v7" for r in out.rejected)
    assert orjson.loads(out.rejected[0].raw)["name"] == "chat chat-7b"  # the span itself, readable


def test_configurable_attribute_names_and_arm_map() -> None:
    attrs = genai_attrs(rollout=None, arm=None, **{"deployment.version": "chat-v6", "app.rollout": "r1",
                                                   "llm.cost_usd": 0.002, "gen_ai.response.id": "chatcmpl-9"})
    m = OtelMapping(rollout_attribute="app.rollout", arm_attribute="deployment.version",
                    arms={"chat-v6": "baseline", "chat-v7": "canary"}, cost_attribute="llm.cost_usd",
                    request_id_attribute="gen_ai.response.id")
    (e,) = map_message(encode(traces([span(1, attrs)]), "otlp_proto"), "traces", "otlp_proto", m).events
    assert (e.rollout_id, e.arm, e.cost_usd, e.request_id) == ("r1", "baseline", 0.002, "chatcmpl-9")  # type: ignore[union-attr]
    # the rollout and arm may sit on the resource instead of the span
    res = traces([span(1, genai_attrs(rollout=None, arm=None))], resource={"rollout.id": "r2", "rollout.arm": "baseline"})
    (e,) = map_message(encode(res, "otlp_json"), "traces", "otlp_json", OtelMapping()).events
    assert (e.rollout_id, e.arm) == ("r2", "baseline")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_genai_log_events(encoding: str) -> None:
    recs = [log_record(1, genai_attrs(finish=["content_filter"]), duration_s=0.5),
            log_record(2, genai_attrs(), duration_s=None),
            log_record(3, {"msg": "hello"}, event_name="app.started")]
    out = map_message(encode(logs(recs), encoding), "logs", encoding, OtelMapping())  # type: ignore[arg-type]
    (e,) = out.events
    assert e.latency_ms == pytest.approx(500.0) and e.refusal and e.ts == pytest.approx((T0 + 10**9) / 1e9)  # type: ignore[union-attr]
    assert [r.reason for r in out.rejected] == ["latency is unknown"] and out.skipped == 1


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_garbage_is_one_rejection(encoding: str) -> None:
    out = map_message(b"\xff\x00garbage", "traces", encoding, OtelMapping())  # type: ignore[arg-type]
    assert out.events == [] and len(out.rejected) == 1
    assert out.rejected[0].raw == b"\xff\x00garbage" and out.rejected[0].reason.startswith("not valid")


def test_json_ids_are_hex_as_otlp_json_requires() -> None:
    msg = encode(traces([span(7, genai_attrs())]), "otlp_json")
    doc = orjson.loads(msg)
    assert doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == (7).to_bytes(16, "big").hex()
    assert decode(msg, "traces", "otlp_json").resource_spans[0].scope_spans[0].spans[0].trace_id == (7).to_bytes(16, "big")


def test_cli_options_become_the_mapping() -> None:
    bridge, _ = parse_args(["--bootstrap", "k:9092", "--traces-encoding", "otlp_json", "--logs-topic", "",
                            "--arm", "chat-v7=canary", "--arm", "a=b=baseline", "--rollout-attribute", "x.rollout"])
    assert [(s.topic, s.signal, s.encoding) for s in bridge.sources.values()] == [("otlp_spans", "traces", "otlp_json")]
    assert bridge.mapping.arms == {"chat-v7": "canary", "a=b": "baseline"}
    assert bridge.mapping.rollout_attribute == "x.rollout" and bridge.kafka.bootstrap_servers == "k:9092"
    with pytest.raises(SystemExit):
        parse_args(["--arm", "v7=blue"])
    assert SEMCONV_VERSION == "1.37.0"


def _via_protobuf_json(value: bytes, signal: str) -> tuple[list[object], list[str], int]:
    """The same message through protobuf's own JSON parser (decode), then the protobuf mapping."""
    data = decode(value, signal, "otlp_json")  # type: ignore[arg-type]
    out = (map_traces if signal == "traces" else map_logs)(data, OtelMapping())
    return out.events, [r.reason for r in out.rejected], out.skipped


def test_the_direct_json_reader_agrees_with_protobufs_json_parser() -> None:
    """otlp_json is read without protobuf's (slow) generic parser; on the same messages it must give
    what that parser followed by the protobuf mapping gives."""
    spans = [
        span(1, genai_attrs(finish=["content_filter"], **{"gen_ai.request.temperature": 0.2, "tags": ["a", 1]})),
        span(2, genai_attrs(error="timeout", output_tokens=None)),
        span(3, genai_attrs(), error=True),
        span(4, {"http.route": "/healthz"}),
        span(5, genai_attrs(arm="v7")),
        span(6, genai_attrs(), latency_ms=-5),
        span(7, genai_attrs(arm="baseline", output_tokens=2**40)),
    ]
    records = [log_record(8, genai_attrs()), log_record(9, genai_attrs(), event_name="other"),
               log_record(10, genai_attrs(), duration_s=None)]
    for signal, message in (("traces", traces(spans, {"service.name": "gw", "rollout.arm": "canary"})),
                            ("logs", logs(records))):
        value = encode(message, "otlp_json")
        direct = map_message(value, signal, "otlp_json", OtelMapping())  # type: ignore[arg-type]
        assert (direct.events, [r.reason for r in direct.rejected], direct.skipped) == _via_protobuf_json(value, signal)
        assert direct.events  # the comparison is not between two empty results
    # ids as protobuf's JSON mapping writes them (base64) are read too, to the same hex request id
    doc = orjson.loads(encode(traces([span(3, genai_attrs())]), "otlp_json"))
    for key in ("traceId", "spanId"):
        s = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        s[key] = base64.b64encode(bytes.fromhex(s[key])).decode()
    (e,) = map_message(orjson.dumps(doc), "traces", "otlp_json", OtelMapping()).events
    assert e.request_id == f"{(3).to_bytes(16, 'big').hex()}-{(4).to_bytes(8, 'big').hex()}"


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"resourceSpans": {"not": "a list"}}, "resourceSpans is not an array"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": ["x"]}]}]}, "a span is not an object"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "-3"}]}]}]},
         "startTimeUnixNano is not an unsigned integer"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}, "traceId is neither hex nor base64"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [{"value": {}}]}]}]}]}, "an attribute has no key"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [
            {"key": "n", "value": {"intValue": "many"}}]}]}]}]}, "intValue is not an integer"),
        ([1, 2], "not a JSON object"),
        ({"resourceSpans": ["x"]}, "an element holding resource is not an object"),
        ({"resourceSpans": [{"scopeSpans": [7]}]}, "an element holding spans is not an object"),
        ({"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": {"arrayValue": 3}}]}}]},
         "an element holding values is not an object"),
    ],
)
def test_malformed_otlp_json_is_one_rejection_with_the_reason(doc: object, reason: str) -> None:
    out = map_message(orjson.dumps(doc), "traces", "otlp_json", OtelMapping())
    assert out.events == [] and [r.reason for r in out.rejected] == [f"not valid OTLP JSON traces: {reason}"]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["resourceSpans", "resourceLogs", "scopeSpans", "scopeLogs", "spans", "logRecords",
                         "resource", "attributes", "key", "value", "stringValue", "intValue", "arrayValue",
                         "kvlistValue", "values", "traceId", "spanId", "status", "code", "startTimeUnixNano",
                         "endTimeUnixNano", "timeUnixNano", "eventName", "doubleValue", "bytesValue"]),
        inner, max_size=5),
    max_leaves=30,
)


_otlp_shaped = st.one_of(
    _json_values,
    st.lists(_json_values, max_size=3).map(lambda xs: {"resourceSpans": xs, "resourceLogs": xs}),
    st.lists(_json_values, max_size=3).map(lambda xs: {"resourceSpans": [{"resource": x, "scopeSpans": xs} for x in xs],
                                                       "resourceLogs": [{"resource": x, "scopeLogs": xs} for x in xs]}),
    st.lists(_json_values, max_size=3).map(lambda xs: {"resourceSpans": [{"scopeSpans": [{"spans": xs}]}],
                                                       "resourceLogs": [{"scopeLogs": [{"logRecords": xs}]}]}),
    st.lists(st.dictionaries(st.sampled_from(["key", "value"]), _json_values), max_size=3).map(
        lambda kvs: {"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": kvs}]}]}],
                     "resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": kvs}]}]}]}),
)


@settings(max_examples=400, deadline=None)
@given(doc=_otlp_shaped, signal=st.sampled_from(["traces", "logs"]))
def test_no_otlp_json_shape_escapes_the_reader(doc: object, signal: str) -> None:
    """Whatever JSON arrives, the bridge maps it or rejects it; it never raises (which would stop it)."""
    out = map_message(orjson.dumps(doc), signal, "otlp_json", OtelMapping())  # type: ignore[arg-type]
    assert all(r.reason for r in out.rejected)
