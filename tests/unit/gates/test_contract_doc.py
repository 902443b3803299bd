"""docs/event-contract.md pinned to the code, both ways: every field, arm, status, value and action
its tables name exists in the msgspec structs (gates/events.py, gates/decision.py) with the type,
the required-ness and the choices the doc gives, and every field of those structs is in the doc.
A field added to the code without its row, or a row left after a rename, fails here."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest

from gates.decision import Action, Decision, GateResult, Verdict
from gates.events import ARMS, FEEDBACK_VALUES, FeedbackEvent, InferenceEvent

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "event-contract.md"

Row = dict[str, str]


@cache
def sections() -> dict[str, list[list[Row]]]:
    """Heading (without ``## ``) -> the tables under it, each a list of rows keyed by the header."""
    out: dict[str, list[list[Row]]] = {}
    heading = ""
    table: list[list[str]] = []

    def close() -> None:
        if table:
            header, _sep, *body = table
            out.setdefault(heading, []).append([dict(zip(header, cells, strict=True)) for cells in body])
            table.clear()

    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        close()
        if line.startswith("## "):
            heading = line[3:].strip()
    close()
    return out


def table(heading_start: str, index: int = 0) -> list[Row]:
    (heading,) = [h for h in sections() if h.startswith(heading_start)]
    return sections()[heading][index]


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def choices(cell: str) -> list[str]:
    return re.findall(r'"([^"]+)"', cell)


def fields_of(rows: list[Row], column: str = "field") -> dict[str, Row]:
    return {name: row for row in rows for name in names(row[column])}


def info(struct: type) -> dict[str, msgspec.inspect.Field]:
    return {f.name: f for f in msgspec.inspect.type_info(struct).fields}  # type: ignore[attr-defined]


def _diff(doc: dict[str, Any], code: dict[str, Any]) -> str:
    return f"only in the doc {sorted(set(doc) - set(code))}, only in the code {sorted(set(code) - set(doc))}"


def unwrap(t: Any) -> tuple[Any, bool]:
    """(the type, whether null is allowed) of a field's msgspec type."""
    if isinstance(t, msgspec.inspect.UnionType):
        rest = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        (only,) = rest
        return only, len(rest) != len(t.types)
    return t, False


DOC_TYPES = {
    "string": msgspec.inspect.StrType,
    "number": msgspec.inspect.FloatType,
    "integer": msgspec.inspect.IntType,
    "boolean": msgspec.inspect.BoolType,
    "list": msgspec.inspect.ListType,
    "object": msgspec.inspect.DictType,
}


def assert_type(field: str, cell: str, t: Any) -> None:
    """The doc's type column against the struct's type: choices are a Literal, else the first word."""
    t, nullable = unwrap(t)
    listed = choices(cell)
    if listed and isinstance(t, msgspec.inspect.LiteralType):
        assert sorted(listed) == sorted(t.values), f"{field}: the doc lists {listed}, the code {t.values}"
        return
    word = cell.split()[0].strip("`")
    if listed:  # a str field whose values the code sets (checked by the caller)
        assert isinstance(t, msgspec.inspect.StrType), f"{field}: choices {listed} on a {t}"
        return
    assert isinstance(t, DOC_TYPES[word]), f"{field}: the doc says {cell!r}, the code has {t}"
    if ">= 0" in cell:
        assert t.ge == 0, f"{field}: the doc says >= 0, the code's bound is {t.ge}"
    if "or null" in cell:
        assert nullable, f"{field}: the doc allows null, the code does not"


# ---- events ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("heading", "struct", "tag"), [("Inference event", InferenceEvent, "inference"),
                                                         ("Feedback event", FeedbackEvent, "feedback")])  # fmt: skip
def test_event_tables_name_exactly_the_struct_fields(heading: str, struct: type, tag: str) -> None:
    rows = fields_of(table(heading))
    code = info(struct)
    assert set(rows) == set(code) | {"type"}, f"{heading}: {_diff(rows, {**code, 'type': None})}"
    # the "type" row is the struct's tag
    ti = msgspec.inspect.type_info(struct)
    assert (ti.tag_field, ti.tag) == ("type", tag)  # type: ignore[attr-defined]
    assert choices(rows["type"]["type"]) == [tag]
    assert rows["type"]["required"] == ("no (default)" if tag == "inference" else "yes")


@pytest.mark.parametrize(("heading", "struct"), [("Inference event", InferenceEvent), ("Feedback event", FeedbackEvent)])
def test_required_optional_and_types_match(heading: str, struct: type) -> None:
    rows = fields_of(table(heading))
    for name, f in info(struct).items():
        row = rows[name]
        required = row["required"]
        assert required.startswith("yes") == f.required, f"{heading}.{name}: doc {required!r}, code required={f.required}"
        if required.startswith("no (") and required != "no (default)":
            assert required == f"no ({str(f.default).lower()})", f"{heading}.{name}: default {f.default!r}"
        if row["type"] != "as above":
            assert_type(name, row["type"], f.type)


def test_arms_statuses_and_feedback_values_are_the_codes() -> None:
    inference = fields_of(table("Inference event"))
    assert choices(inference["arm"]["type"]) == list(ARMS)
    assert sorted(choices(inference["status"]["type"])) == ["error", "ok"]
    feedback = fields_of(table("Feedback event"))
    assert choices(feedback["value"]["type"]) == list(FEEDBACK_VALUES)
    assert set(info(FeedbackEvent)["value"].type.values) == set(FEEDBACK_VALUES)
    # the feedback table's shared row covers the event's common fields
    shared = next(r for r in table("Feedback event") if r["type"] == "as above")
    assert names(shared["field"]) == ["rollout_id", "arm", "request_id", "ts"]


# ---- decisions ---------------------------------------------------------------------------------


def test_the_decision_table_names_exactly_the_decision_fields() -> None:
    rows = fields_of(table("Decision"))
    code = info(Decision)
    assert set(rows) == set(code), _diff(rows, code)
    for name, f in code.items():
        assert_type(name, rows[name]["type"], f.type)
    assert choices(rows["action"]["type"]) == list(get_args(Action))


def test_the_gate_table_names_exactly_the_gate_result_fields() -> None:
    rows = fields_of(table("Decision", 1))
    code = info(GateResult)
    assert set(rows) == set(code), _diff(rows, code)
    for name, f in code.items():
        assert_type(name, rows[name]["type"], f.type)
    assert sorted(choices(rows["status"]["type"])) == sorted(v.label for v in Verdict)


def test_fields_marked_added_are_exactly_the_ones_an_old_decision_may_lack() -> None:
    """A router decoding a decision written before a field existed must still decode it: every field
    the doc marks as added has a default in the struct, and every other field is required."""
    for index, struct in ((0, Decision), (1, GateResult)):
        rows = fields_of(table("Decision", index))
        added = {n for n, r in rows.items() if r["meaning"].startswith("added:")}
        optional = {n for n, f in info(struct).items() if not f.required}
        assert added == optional, struct.__name__


def test_the_triggers_are_the_ones_the_engine_sets() -> None:
    engine = (ROOT / "gates" / "engine.py").read_text()
    set_by_engine = set(re.findall(r'trigger="(\w+)"', engine)) | {info(Decision)["trigger"].default}
    assert set(choices(fields_of(table("Decision"))["trigger"]["type"])) == set_by_engine


def test_the_gates_named_are_the_policys_gates_and_the_engines() -> None:
    from gates.engine import Engine
    from gates.policy import GatesSpec
    from gates.sim import Injection, SimConfig, run

    in_doc = choices(fields_of(table("Decision", 1))["name"]["type"])
    defaults = [n for row in table("Default gates") for n in names(row["gate"])]
    assert in_doc == defaults == list(GatesSpec.model_fields)
    engine, cfg = Engine(), SimConfig(rps=40, max_seconds=600)
    run(engine, cfg, Injection())
    assert [g.name for g in engine.status(cfg.rollout_id).gates] == in_doc


def test_the_tests_that_pin_the_original_fields_agree_with_the_doc() -> None:
    from tests.unit.gates import test_events

    original = {n for n, r in fields_of(table("Decision")).items() if not r["meaning"].startswith("added:")}
    assert original == test_events.DECISION_FIELDS
    gate_original = {n for n, r in fields_of(table("Decision", 1)).items() if not r["meaning"].startswith("added:")}
    assert gate_original == test_events.GATE_FIELDS
    assert set(test_events.REQUIRED_INFERENCE) == {n for n, f in info(InferenceEvent).items() if f.required}
    assert set(test_events.REQUIRED_FEEDBACK) == {n for n, f in info(FeedbackEvent).items() if f.required}


# ---- topics and dead letters --------------------------------------------------------------------


def test_topic_names_and_dead_letter_headers_are_the_defaults() -> None:
    from stream.processor import REASON_HEADER, SOURCE_HEADER
    from stream.settings import Settings

    text = DOC.read_text(encoding="utf-8")
    defaults = {name: Settings.model_fields[name].default for name in ("events_topic", "decisions_topic", "dlq_topic")}
    assert f"## Inference event (topic `{defaults['events_topic']}`, default name)" in text
    assert f"## Decision (topic `{defaults['decisions_topic']}`, default name; compacted)" in text
    assert f"dead-letter topic (`{defaults['dlq_topic']}`)" in text
    assert f"`{REASON_HEADER}`" in text and f"`{SOURCE_HEADER}`" in text


def test_the_code_points_at_the_doc() -> None:
    events = (ROOT / "gates" / "events.py").read_text()
    assert "docs/event-contract.md" in events.split('"""')[1]
    for path in (ROOT / "gates").glob("*.py"):
        assert "shared/docs" not in path.read_text(), path
