"""The wire contract (docs/event-contract.md) pinned: what is accepted, what is rejected and
with which reason, and the field set of a decision."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gates.decision import Decision, GateResult, decode_decision
from gates.events import (
    FeedbackEvent,
    InferenceEvent,
    Rejection,
    _decode_slow,
    decode_lines,
    decode_message,
    encode_event,
    reason_code,
)

TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z

INFERENCE: dict[str, Any] = {
    "rollout_id": "chat-v7",
    "arm": "canary",
    "request_id": "req-1",
    "ts": TS,
    "latency_ms": 812.5,
    "output_tokens": 240,
    "status": "ok",
}
FEEDBACK: dict[str, Any] = {
    "type": "feedback",
    "rollout_id": "chat-v7",
    "arm": "baseline",
    "request_id": "req-1",
    "ts": TS + 60,
    "value": "down",
}
# The contract's "required: yes" rows, per event kind.
REQUIRED_INFERENCE = ("rollout_id", "arm", "request_id", "ts", "latency_ms", "output_tokens", "status")
REQUIRED_FEEDBACK = ("rollout_id", "arm", "request_id", "ts", "value")


def one(obj: Any) -> InferenceEvent | FeedbackEvent | Rejection:
    out = decode_message(orjson.dumps(obj))
    assert len(out) == 1
    return out[0]


def rejected(obj: Any) -> Rejection:
    r = one(obj)
    assert isinstance(r, Rejection), f"accepted {obj!r} as {r!r}"
    return r


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    d = dict(base)
    d.update(changes)
    return d


def without(base: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != field}


# ---- valid events ---------------------------------------------------------------------------------


def test_minimal_inference_event_decodes_with_the_contract_defaults() -> None:
    e = one(INFERENCE)
    assert isinstance(e, InferenceEvent)
    assert (e.rollout_id, e.arm, e.request_id, e.ts) == ("chat-v7", "canary", "req-1", TS)
    assert e.latency_ms == 812.5 and e.output_tokens == 240 and e.status == "ok"
    # optional fields: type defaults to inference, refusal to false, the rest absent
    assert e.refusal is False and not e.is_error
    assert e.cost_usd is None and e.input_tokens is None and e.model is None and e.model_digest is None


def test_full_inference_event_keeps_every_optional_field() -> None:
    e = one(with_(INFERENCE, type="inference", model="m-7", model_digest="sha256:ab12", input_tokens=512,
                  cost_usd=0.0031, status="error", refusal=True))  # fmt: skip
    assert isinstance(e, InferenceEvent)
    assert (e.model, e.model_digest, e.input_tokens, e.cost_usd) == ("m-7", "sha256:ab12", 512, 0.0031)
    assert e.is_error and e.refusal


@pytest.mark.parametrize("arm", ["baseline", "canary", "shadow"])
def test_every_contract_arm_is_accepted(arm: str) -> None:
    assert isinstance(one(with_(INFERENCE, arm=arm)), InferenceEvent)


@pytest.mark.parametrize("value,negative", [("down", True), ("up", False), ("ticket", True)])
def test_feedback_values_and_which_count_as_negative(value: str, negative: bool) -> None:
    e = one(with_(FEEDBACK, value=value))
    assert isinstance(e, FeedbackEvent)
    assert e.negative is negative
    assert e.request_ts is None


def test_zero_values_are_valid() -> None:
    e = one(with_(INFERENCE, latency_ms=0, output_tokens=0, cost_usd=0, input_tokens=0))
    assert isinstance(e, InferenceEvent)
    assert e.latency_ms == 0.0 and e.output_tokens == 0 and e.cost_usd == 0.0


def test_extra_fields_are_ignored_never_an_error() -> None:
    e = one(with_(INFERENCE, region="eu-west-1", trace={"id": [1, 2, 3]}, temperature=None, score=1e300))
    assert e == one(INFERENCE)
    f = one(with_(FEEDBACK, comment="meh", rating=2))
    assert f == one(FEEDBACK)


def test_integer_valued_float_token_counts_are_accepted() -> None:
    # JSON has one number type: 240.0 is the integer 240 to most producers
    e = one(with_(INFERENCE, output_tokens=240.0))
    assert isinstance(e, InferenceEvent) and e.output_tokens == 240 and isinstance(e.output_tokens, int)


# ---- timestamps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-01-01T00:00:00Z", TS),
        ("2026-01-01T00:00:00z", TS),
        ("2026-01-01T00:00:00+00:00", TS),
        ("2026-01-01T01:00:00+01:00", TS),
        ("2025-12-31T19:00:00-05:00", TS),
        ("2026-01-01T05:30:00.250+05:30", TS + 0.25),
        ("2026-01-01T00:00:01.5Z", TS + 1.5),
    ],
)
def test_rfc3339_ts_with_z_or_offset_equals_the_epoch_value(text: str, expected: float) -> None:
    e = one(with_(INFERENCE, ts=text))
    assert isinstance(e, InferenceEvent)
    assert e.ts == pytest.approx(expected, abs=1e-6)


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
@settings(max_examples=50, deadline=None, derandomize=True)
def test_rfc3339_ts_in_any_offset_equals_the_epoch_value(when: datetime, offset_min: int) -> None:
    # the same instant written in another zone must decode to the same epoch seconds
    local = when.astimezone(timezone(timedelta(minutes=offset_min)))
    text = local.isoformat()
    epoch = (when - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    e = one(with_(INFERENCE, ts=text))
    assert isinstance(e, InferenceEvent)
    assert e.ts == pytest.approx(epoch, abs=1e-5)


@pytest.mark.parametrize(
    "bad",
    ["yesterday", "", "2026-13-01T00:00:00Z", "2026-01-01T25:00:00Z", "1767225600", "01/01/2026 00:00",
     # ISO 8601 forms that are not RFC 3339 date-times, and instants outside the epoch range
     "2026-01-01", "20260101T000000Z", "2026-W01-4", "2026-01-01T00:00Z", "1969-12-31T23:59:59Z",
     "9999-01-01T00:00:00Z"],
)
def test_bad_ts_strings_are_rejected_naming_ts(bad: str) -> None:
    r = rejected(with_(INFERENCE, ts=bad))
    assert r.reason.startswith("ts ")
    assert reason_code(r.reason) == "ts_invalid"


@pytest.mark.parametrize("bad", [True, False, [TS], {"s": TS}, -1, -0.5])
def test_ts_of_the_wrong_type_or_negative_is_rejected(bad: Any) -> None:
    r = rejected(with_(INFERENCE, ts=bad))
    assert reason_code(r.reason) == "ts_invalid"


def test_feedback_request_ts_is_decoded_like_ts_and_a_bad_one_is_named() -> None:
    f = one(with_(FEEDBACK, request_ts="2026-01-01T00:00:00Z"))
    assert isinstance(f, FeedbackEvent) and f.request_ts == TS
    r = rejected(with_(FEEDBACK, request_ts="soon"))
    assert reason_code(r.reason) == "request_ts_invalid"


# ---- required fields, types, ranges ---------------------------------------------------------------


@pytest.mark.parametrize("field", REQUIRED_INFERENCE)
def test_each_missing_required_inference_field_is_a_rejection_naming_it(field: str) -> None:
    r = rejected(without(INFERENCE, field))
    assert field in r.reason and "missing" in r.reason
    assert reason_code(r.reason) == f"{field}_missing"
    # the raw message is kept for the dead-letter topic, and the rollout is known when present
    assert orjson.loads(r.raw) == without(INFERENCE, field)
    assert r.rollout_id == (None if field == "rollout_id" else "chat-v7")


@pytest.mark.parametrize("field", REQUIRED_FEEDBACK)
def test_each_missing_required_feedback_field_is_a_rejection_naming_it(field: str) -> None:
    r = rejected(without(FEEDBACK, field))
    assert reason_code(r.reason) == f"{field}_missing"


@pytest.mark.parametrize("field", REQUIRED_INFERENCE)
def test_an_explicit_null_counts_as_missing(field: str) -> None:
    r = rejected(with_(INFERENCE, **{field: None}))
    assert reason_code(r.reason) == f"{field}_missing"


@pytest.mark.parametrize(
    "field,value",
    [
        ("rollout_id", 7),
        ("rollout_id", ""),
        ("request_id", ["a"]),
        ("request_id", ""),
        ("latency_ms", "812"),
        ("latency_ms", True),
        ("latency_ms", [1.0]),
        ("output_tokens", 1.5),
        ("output_tokens", "240"),
        ("output_tokens", False),
        ("input_tokens", 2.5),
        ("input_tokens", "512"),
        ("cost_usd", "0.01"),
        ("cost_usd", True),
        ("status", "OK"),
        ("status", "timeout"),
        ("status", 500),
        ("refusal", "yes"),
        ("refusal", 1),
        ("model", 3),
        ("model_digest", {"sha": 1}),
        ("type", "metric"),
        ("type", 1),
    ],
)
def test_wrong_types_are_rejected_naming_the_field(field: str, value: Any) -> None:
    r = rejected(with_(INFERENCE, **{field: value}))
    assert reason_code(r.reason) == f"{field}_invalid", r.reason


@pytest.mark.parametrize("field", ["latency_ms", "output_tokens", "input_tokens", "cost_usd"])
@pytest.mark.parametrize("value", [-1, -0.001, -1e300])
def test_negative_numbers_are_rejected(field: str, value: float) -> None:
    if field.endswith("tokens") and value != int(value):
        value = -3
    r = rejected(with_(INFERENCE, **{field: value}))
    assert reason_code(r.reason) == f"{field}_invalid"
    assert ">= 0" in r.reason


@pytest.mark.parametrize("literal", [b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity"])
@pytest.mark.parametrize("field", ["latency_ms", "cost_usd", "ts"])
def test_non_finite_numbers_never_decode_to_an_event(field: str, literal: bytes) -> None:
    # 1e999 is valid JSON syntax but overflows a double: some parsers give inf. NaN/Infinity are
    # not JSON at all. Either way the event must not be accepted.
    raw = orjson.dumps(with_(INFERENCE, **{field: 12345})).replace(b"12345", literal)
    out = decode_message(raw)
    assert len(out) == 1 and isinstance(out[0], Rejection)
    assert out[0].raw == raw
    assert re.fullmatch(r"[a-z_]+", reason_code(out[0].reason))


@pytest.mark.parametrize("arm", ["Canary", "control", "", "treatment", 1, ["canary"]])
def test_unknown_arm_is_rejected(arm: Any) -> None:
    r = rejected(with_(INFERENCE, arm=arm))
    assert reason_code(r.reason) == "arm_invalid"


@pytest.mark.parametrize("value", ["meh", "", "DOWN", 1, None])
def test_unknown_feedback_value_is_rejected(value: Any) -> None:
    r = rejected(with_(FEEDBACK, value=value))
    assert reason_code(r.reason) == ("value_missing" if value is None else "value_invalid")


def test_unknown_type_is_rejected() -> None:
    r = rejected(with_(INFERENCE, type="heartbeat"))
    assert reason_code(r.reason) == "type_invalid"
    assert "heartbeat" in r.reason


# ---- messages: arrays, bad JSON, JSONL ------------------------------------------------------------


def test_array_message_keeps_the_valid_elements_and_the_bad_elements_original_json() -> None:
    good1 = with_(INFERENCE, request_id="a")
    bad = with_(INFERENCE, request_id="b", arm="control", extra={"nested": [1, 2]})
    good2 = with_(FEEDBACK, request_id="c")
    # pretty-printed on purpose: the producer's formatting is not the decoder's business
    raw = orjson.dumps([good1, bad, good2], option=orjson.OPT_INDENT_2)
    out = decode_message(raw)
    assert [type(x).__name__ for x in out] == ["InferenceEvent", "Rejection", "FeedbackEvent"]
    assert out[0] == one(good1) and out[2] == one(good2)
    rej = out[1]
    assert isinstance(rej, Rejection)
    assert reason_code(rej.reason) == "arm_invalid"
    assert rej.rollout_id == "chat-v7"
    assert orjson.loads(rej.raw) == bad  # the bad element's own JSON, not the whole message


def test_array_with_a_non_object_element_rejects_only_that_element() -> None:
    out = decode_message(orjson.dumps([INFERENCE, 42, "x", None, [INFERENCE]]))
    assert isinstance(out[0], InferenceEvent)
    assert all(isinstance(r, Rejection) for r in out[1:]) and len(out) == 5
    assert [orjson.loads(r.raw) for r in out[1:]] == [42, "x", None, [INFERENCE]]  # type: ignore[union-attr]
    assert {reason_code(r.reason) for r in out[1:]} == {"not_an_object"}  # type: ignore[union-attr]


def test_array_of_valid_events_decodes_all_in_order() -> None:
    objs = [with_(INFERENCE, request_id=f"r{i}", ts=TS + i) for i in range(5)]
    out = decode_message(orjson.dumps(objs))
    assert [e.request_id for e in out] == [f"r{i}" for i in range(5)]  # type: ignore[union-attr]
    (empty,) = decode_message(b"[]")  # a message with no events is a producer's bug worth hearing about
    assert isinstance(empty, Rejection) and empty.reason == "message holds no events (an empty array)"


@given(st.lists(st.sampled_from(["untagged", "tagged", "feedback", "string-ts", "bad"]), min_size=1, max_size=12))
@settings(max_examples=60, deadline=None, derandomize=True)
def test_any_array_decodes_as_the_lenient_path_does_element_by_element(kinds: list[str]) -> None:
    # the typed fast paths (whole array, or element by element for inference events without "type"
    # next to feedback events) must give exactly what the lenient decoder gives
    make = {
        "untagged": lambda i: with_(INFERENCE, request_id=f"u{i}", ts=TS + i),
        "tagged": lambda i: with_(INFERENCE, type="inference", request_id=f"t{i}", cost_usd=0.001),
        "feedback": lambda i: with_(FEEDBACK, request_id=f"f{i}", request_ts=TS + i),
        "string-ts": lambda i: with_(INFERENCE, request_id=f"s{i}", ts="2026-01-01T00:00:01Z"),
        "bad": lambda i: with_(INFERENCE, request_id=f"b{i}", latency_ms=-1),
    }
    raw = orjson.dumps([make[k](i) for i, k in enumerate(kinds)])
    assert decode_message(raw) == _decode_slow(raw)
    assert [type(x).__name__ for x in decode_message(raw)] == [
        {"feedback": "FeedbackEvent", "bad": "Rejection"}.get(k, "InferenceEvent") for k in kinds
    ]


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b'{"rollout_id": "x",}', b"\xff\xfe{}", b"[{}", b"42", b'"x"', b"null"]
)
def test_non_json_or_non_object_message_is_one_rejection_with_the_raw_bytes(raw: bytes) -> None:
    out = decode_message(raw)
    assert len(out) == 1 and isinstance(out[0], Rejection)
    assert out[0].raw == raw
    assert reason_code(out[0].reason) in ("invalid_json", "not_an_object")


def test_single_object_rejection_keeps_the_exact_original_bytes() -> None:
    raw = b'{ "rollout_id" : "chat-v7", "arm": "nope",\n "request_id": "q", "ts": 1 }'
    out = decode_message(raw)
    assert len(out) == 1 and isinstance(out[0], Rejection) and out[0].raw == raw


def test_decode_lines_skips_blank_lines_and_reports_bad_ones() -> None:
    lines = [
        orjson.dumps(with_(INFERENCE, request_id="a")),
        b"",
        b"   ",
        b"\n",
        orjson.dumps(with_(INFERENCE, request_id="b", arm="x")) + b"\n",
        b"this is not json",
        b"{broken",
        b"42",
        orjson.dumps(with_(FEEDBACK, request_id="c")) + b"\r\n",
    ]
    out = decode_lines(lines)
    kinds = [type(x).__name__ for x in out]
    assert kinds == ["InferenceEvent", "Rejection", "Rejection", "Rejection", "Rejection", "FeedbackEvent"]
    codes = [reason_code(x.reason) for x in out if isinstance(x, Rejection)]
    assert codes == ["arm_invalid", "invalid_json", "invalid_json", "not_an_object"]
    assert [x.raw for x in out if isinstance(x, Rejection)][1:] == [b"this is not json", b"{broken", b"42"]
    assert out[0].request_id == "a" and out[-1].request_id == "c"  # type: ignore[union-attr]


def test_decode_lines_of_a_jsonl_file_body() -> None:
    body = b"\n".join(orjson.dumps(with_(INFERENCE, request_id=f"r{i}")) for i in range(3)) + b"\n\n"
    out = decode_lines(body.splitlines())
    assert [e.request_id for e in out] == ["r0", "r1", "r2"]  # type: ignore[union-attr]


# ---- encode round-trip ----------------------------------------------------------------------------

_finite = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
_rollout_id = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
_inference = st.builds(
    InferenceEvent,
    rollout_id=_rollout_id,
    arm=st.sampled_from(["baseline", "canary", "shadow"]),
    request_id=_text,
    ts=st.floats(min_value=0, max_value=4e9),
    latency_ms=_finite,
    output_tokens=st.integers(0, 10**6),
    status=st.sampled_from(["ok", "error"]),
    refusal=st.booleans(),
    input_tokens=st.none() | st.integers(0, 10**6),
    cost_usd=st.none() | _finite,
    model=st.none() | st.text(max_size=8),
    model_digest=st.none() | st.text(max_size=8),
)
_feedback = st.builds(
    FeedbackEvent,
    rollout_id=_rollout_id,
    arm=st.sampled_from(["baseline", "canary", "shadow"]),
    request_id=_text,
    ts=st.floats(min_value=0, max_value=4e9),
    value=st.sampled_from(["down", "up", "ticket"]),
    request_ts=st.none() | st.floats(min_value=0, max_value=4e9),
)


@given(_inference | _feedback)
@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_encode_event_round_trips_through_decode_message(event: InferenceEvent | FeedbackEvent) -> None:
    raw = encode_event(event)
    assert decode_message(raw) == [event]
    assert decode_lines([raw]) == [event]


def test_encode_event_writes_contract_field_names() -> None:
    e = one(with_(INFERENCE, cost_usd=0.01))
    d = orjson.loads(encode_event(e))  # type: ignore[arg-type]
    assert set(REQUIRED_INFERENCE) <= set(d) and d["cost_usd"] == 0.01
    assert "input_tokens" not in d  # absent stays absent, it is not written as null
    f = orjson.loads(encode_event(one(FEEDBACK)))  # type: ignore[arg-type]
    assert f["type"] == "feedback" and set(REQUIRED_FEEDBACK) <= set(f)


# ---- reason codes ---------------------------------------------------------------------------------

BAD_INPUTS: list[bytes] = [
    b"",
    b"{",
    b"[1]",
    b"null",
    *(orjson.dumps(without(INFERENCE, f)) for f in REQUIRED_INFERENCE),
    *(orjson.dumps(without(FEEDBACK, f)) for f in REQUIRED_FEEDBACK),
    orjson.dumps(with_(INFERENCE, arm="x" * 500)),
    orjson.dumps(with_(INFERENCE, ts="garbage " * 50)),
    orjson.dumps(with_(INFERENCE, status="s" * 300)),
    orjson.dumps(with_(INFERENCE, type="t" * 300)),
    orjson.dumps(with_(INFERENCE, latency_ms=-5)),
    orjson.dumps(with_(INFERENCE, output_tokens=2.5)),
    orjson.dumps(with_(FEEDBACK, value="v" * 300)),
    orjson.dumps(with_(FEEDBACK, request_ts="r" * 300)),
]


def test_reason_codes_are_low_cardinality_identifiers() -> None:
    codes = set()
    for raw in BAD_INPUTS:
        for r in decode_message(raw):
            assert isinstance(r, Rejection)
            code = reason_code(r.reason)
            assert re.fullmatch(r"[a-z][a-z_]*", code), code
            assert len(code) <= 32
            codes.add(code)
    fields = {*REQUIRED_INFERENCE, *REQUIRED_FEEDBACK, "type", "request_ts", "input_tokens", "cost_usd",
              "refusal", "model", "model_digest"}  # fmt: skip
    allowed = {f"{f}_{s}" for f in fields for s in ("missing", "invalid")} | {"invalid_json", "not_an_object"}
    assert codes <= allowed
    # the offending value never leaks into the label (that would explode the metric's cardinality)
    assert not any("xxx" in c or "garbage" in c for c in codes)


def test_reason_code_does_not_depend_on_the_offending_value() -> None:
    a = rejected(with_(INFERENCE, arm="foo")).reason
    b = rejected(with_(INFERENCE, arm="bar-baz qux")).reason
    assert a != b and reason_code(a) == reason_code(b) == "arm_invalid"


# ---- the decision contract ------------------------------------------------------------------------

DECISION_FIELDS = {
    "rollout_id", "seq", "ts", "action", "stage", "weight", "previous_weight", "baseline_digest",
    "canary_digest", "gates", "reason",
}  # fmt: skip
GATE_FIELDS = {"name", "status", "observed", "baseline", "ratio", "threshold", "samples"}


def _decision() -> Decision:
    g = GateResult(name="cost", status="breach", observed=0.0012, baseline=0.001, ratio=1.2, threshold=1.2,
                   samples={"canary": 300, "baseline": 3000}, reason="cost per request is 1.20x baseline")  # fmt: skip
    return Decision(rollout_id="chat-v7", seq=3, ts=TS, action="halt", stage="rolled-back", weight=0.0,
                    previous_weight=10.0, baseline_digest="sha256:aa", canary_digest="sha256:bb", gates=[g],
                    reason="Halted at canary-10.")  # fmt: skip


def test_decision_json_has_every_contract_field_with_the_contract_types() -> None:
    d = orjson.loads(_decision().to_json())
    missing = DECISION_FIELDS - set(d)
    assert not missing, f"contract fields removed or renamed: {missing}"
    assert isinstance(d["rollout_id"], str) and isinstance(d["seq"], int) and not isinstance(d["seq"], bool)
    assert isinstance(d["ts"], int | float) and isinstance(d["weight"], int | float)
    assert isinstance(d["previous_weight"], int | float)
    assert d["action"] in ("promote", "halt", "complete", "hold")
    assert isinstance(d["stage"], str) and isinstance(d["reason"], str)
    assert d["baseline_digest"] == "sha256:aa" and d["canary_digest"] == "sha256:bb"
    assert isinstance(d["gates"], list) and len(d["gates"]) == 1
    g = d["gates"][0]
    missing_g = GATE_FIELDS - set(g)
    assert not missing_g, f"gate contract fields removed or renamed: {missing_g}"
    assert g["status"] in ("pass", "breach", "insufficient")
    assert g["samples"] == {"canary": 300, "baseline": 3000}


def test_decision_contract_fields_are_declared_on_the_structs() -> None:
    # fails if a field is removed or renamed in the type itself, not only in one instance
    assert set(Decision.__struct_fields__) >= DECISION_FIELDS
    assert set(GateResult.__struct_fields__) >= GATE_FIELDS


def test_decision_digests_may_be_null() -> None:
    d = msgspec.structs.replace(_decision(), baseline_digest=None, canary_digest=None, gates=[])
    j = orjson.loads(d.to_json())
    assert j["baseline_digest"] is None and j["canary_digest"] is None and j["gates"] == []


def test_decision_json_round_trips_and_a_router_can_read_only_the_contract_fields() -> None:
    dec = _decision()
    assert decode_decision(dec.to_json()) == dec
    # a router built on the contract alone: only the documented fields, no additive ones
    d = orjson.loads(dec.to_json())
    contract_only = {k: d[k] for k in DECISION_FIELDS}
    contract_only["gates"] = [{k: g[k] for k in GATE_FIELDS} for g in d["gates"]]
    back = decode_decision(orjson.dumps(contract_only))
    assert back.seq == 3 and back.action == "halt" and back.gates[0].name == "cost"


# ---- regressions: bugs found while writing these tests (fixed in ae21e64) -----------------------


def test_a_ts_in_epoch_milliseconds_is_rejected() -> None:
    r = one(with_(INFERENCE, ts=int(TS * 1000)))
    assert isinstance(r, Rejection) and reason_code(r.reason) == "ts_invalid"


def test_a_token_count_beyond_int64_is_rejected() -> None:
    raw = orjson.dumps(with_(INFERENCE, output_tokens=12345)).replace(b"12345", b"18446744073709551616")
    r = decode_message(raw)[0]
    assert isinstance(r, Rejection) and reason_code(r.reason) == "output_tokens_invalid"


def test_an_extra_field_never_changes_how_an_event_decodes() -> None:
    typeless = without(FEEDBACK, "type")  # by the contract: an inference event, missing its fields
    plain = one(typeless)
    assert isinstance(plain, Rejection) and reason_code(plain.reason) == "status_missing"
    other = one(with_(typeless, source="feedback"))
    assert isinstance(other, Rejection) and other.reason == plain.reason
