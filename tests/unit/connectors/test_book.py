from __future__ import annotations

import asyncio
import itertools

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from connectors.book import DecisionBook
from connectors.subscriber import DecisionSubscriber
from connectors.testing import decision
from gates.decision import Decision


def test_applies_newer_seq_and_ignores_duplicates_and_older() -> None:
    book = DecisionBook()
    assert book.apply(decision("r", 1, weight=1)) is not None
    assert book.apply(decision("r", 3, weight=25)) is not None  # gaps are normal on a compacted topic
    assert book.apply(decision("r", 2, weight=10)) is None
    assert book.apply(decision("r", 3, weight=50)) is None
    view = book.get("r")
    assert view is not None and (view.seq, view.weight) == (3, 25)
    assert book.apply(decision("other", 1, weight=5)) is not None  # seq is per rollout
    assert book.last_seq("r") == 3 and book.last_seq("other") == 1 and book.last_seq("nobody") == 0


def test_halt_pins_baseline_and_forces_weight_zero() -> None:
    book = DecisionBook()
    book.apply(decision("r", 1, weight=10, baseline_digest="sha256:b", canary_digest="sha256:c"))
    view = book.get("r")
    assert view is not None and view.pinned_digest == "sha256:c" and not view.halted
    sloppy_halt = Decision(**{**decision("r", 2, action="halt").to_dict(), "weight": 25.0, "gates": []})
    view = book.apply(sloppy_halt)
    assert view is not None and view.halted and view.weight == 0.0 and view.pinned_digest == "sha256:base"
    # A later hold after the rollback still pins the baseline: the stage says rolled-back.
    view = book.apply(decision("r", 3, action="hold", weight=0, stage="rolled-back"))
    assert view is not None and view.halted and view.pinned_digest == "sha256:base"


def test_weight_is_clamped_to_percent_range() -> None:
    book = DecisionBook()
    assert book.apply(decision("r", 1, weight=250)).weight == 100.0  # type: ignore[union-attr]
    assert book.apply(decision("r", 2, weight=-3)).weight == 0.0  # type: ignore[union-attr]


@given(st.lists(st.integers(min_value=1, max_value=50), max_size=60))
def test_applied_seqs_strictly_increase_and_end_at_the_max(seqs: list[int]) -> None:
    book = DecisionBook()
    applied = [s for s in seqs if book.apply(decision("r", s, weight=float(s % 101))) is not None]
    assert applied == sorted(set(applied))
    assert all(a < b for a, b in itertools.pairwise(applied))
    assert book.last_seq("r") == (max(seqs) if seqs else 0)
    if seqs:
        assert book.get("r").weight == float(max(seqs) % 101)  # type: ignore[union-attr]


def _sub() -> tuple[DecisionSubscriber, CollectorRegistry]:
    reg = CollectorRegistry()
    return DecisionSubscriber("unused:9092", registry=reg), reg


def test_ingest_skips_undecodable_messages_and_counts_them() -> None:
    sub, reg = _sub()
    sub.ingest(b"r", decision("r", 1, weight=10).to_json())
    assert sub.ingest(b"r", b"{not json") is None
    assert sub.ingest(b"r", b'{"rollout_id": "r"}') is None
    assert reg.get_sample_value("rollout_gate_subscriber_rejected_total") == 2
    assert sub.weight("r") == 10.0


def test_tombstone_forgets_the_rollout() -> None:
    sub, _ = _sub()
    sub.ingest(b"r", decision("r", 4, weight=10).to_json())
    sub.ingest(b"r", None)
    assert sub.state("r") is None and sub.weight("r") == 0.0 and sub.weight("r", default=100.0) == 100.0


async def test_callbacks_and_iterator_see_only_applied_decisions() -> None:
    sub, reg = _sub()
    seen: list[int] = []
    unregister = sub.on_decision(lambda d: seen.append(d.seq))
    sub.on_decision(lambda d: 1 / 0)  # a failing listener must not stop the others
    got: list[int] = []

    async def reader() -> None:
        async for d in sub.decisions():
            got.append(d.seq)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    for s in (1, 2, 2, 1, 5):
        sub.ingest(b"r", decision("r", s).to_json())
    await asyncio.sleep(0)
    unregister()
    sub.ingest(b"r", decision("r", 6).to_json())
    await sub.stop()
    await asyncio.wait_for(task, 1)
    assert seen == [1, 2, 5]
    assert got == [1, 2, 5, 6]
    assert reg.get_sample_value("rollout_gate_subscriber_ignored_total", {"rollout": "r"}) == 2
    assert reg.get_sample_value("rollout_gate_subscriber_applied_total", {"rollout": "r"}) == 4
