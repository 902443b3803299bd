"""(b) The subscriber knows every rollout's state when start() returns, then follows in seq order."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from connectors.subscriber import DecisionSubscriber
from connectors.testing import bootstrap, create_topics, decision, produce

pytestmark = pytest.mark.integration


async def test_start_reads_the_compacted_topic_then_follows_in_seq_order(unique_id: str) -> None:
    servers, topic = bootstrap(), f"{unique_id}.decisions"
    await create_topics(servers, [topic], partitions=3, compact=True)
    d = decision
    await produce(
        servers,
        topic,
        [
            (b"r1", d("r1", 1, weight=1).to_json()),
            (b"r1", d("r1", 2, weight=10).to_json()),
            (b"r2", d("r2", 1, weight=1, canary_digest="sha256:r2c").to_json()),
            (b"r1", d("r1", 3, weight=25).to_json()),
            (b"r1", d("r1", 2, weight=10).to_json()),  # an old seq arriving late: ignored
            (b"r2", d("r2", 1, weight=50).to_json()),  # a duplicate seq with other content: ignored
            (b"r3", d("r3", 1, weight=5).to_json()),
            (b"r3", None),  # tombstone: r3 was deleted
            (b"r1", b"{garbage"),
        ],
    )
    reg = CollectorRegistry()
    seen: list[tuple[str, int]] = []
    sub = DecisionSubscriber(servers, topic=topic, registry=reg)
    sub.on_decision(lambda dec: seen.append((dec.rollout_id, dec.seq)))
    await asyncio.wait_for(sub.start(), 30)
    try:
        # Known before start() returned, with no sleep in between.
        assert sub.weight("r1") == 25.0 and sub.state("r1").seq == 3  # type: ignore[union-attr]
        assert sub.weight("r2") == 1.0 and sub.pinned_digest("r2") == "sha256:r2c"
        assert sub.state("r3") is None and sub.weight("r3") == 0.0
        assert sorted(seen) == [("r1", 1), ("r1", 2), ("r1", 3), ("r2", 1), ("r3", 1)]
        assert reg.get_sample_value("rollout_gate_subscriber_ignored_total", {"rollout": "r1"}) == 1
        assert reg.get_sample_value("rollout_gate_subscriber_ignored_total", {"rollout": "r2"}) == 1
        assert reg.get_sample_value("rollout_gate_subscriber_rejected_total") == 1

        stream = sub.decisions()
        follower = asyncio.ensure_future(stream.__anext__())
        await produce(
            servers,
            topic,
            [
                (b"r1", d("r1", 3, weight=99).to_json()),  # replayed old decision: ignored
                (b"r1", d("r1", 4, action="halt", baseline_digest="sha256:r1b").to_json()),
            ],
        )
        new = await asyncio.wait_for(follower, 15)
        assert (new.rollout_id, new.seq, new.action) == ("r1", 4, "halt")
        assert sub.weight("r1") == 0.0 and sub.pinned_digest("r1") == "sha256:r1b"
        view = sub.state("r1")
        assert view is not None and view.halted and view.stage == "rolled-back"
        assert reg.get_sample_value("rollout_gate_subscriber_ignored_total", {"rollout": "r1"}) == 2
        await stream.aclose()
    finally:
        await sub.stop()


async def test_start_on_an_empty_topic_returns_and_picks_up_the_first_decision(unique_id: str) -> None:
    servers, topic = bootstrap(), f"{unique_id}.decisions.empty"
    await create_topics(servers, [topic], compact=True)
    sub = DecisionSubscriber(servers, topic=topic, registry=CollectorRegistry())
    await asyncio.wait_for(sub.start(), 30)
    try:
        assert sub.rollouts() == {}
        await produce(servers, topic, [(b"r", decision("r", 1, weight=10).to_json())])
        for _ in range(100):
            if sub.weight("r") == 10.0:
                break
            await asyncio.sleep(0.1)
        assert sub.weight("r") == 10.0
    finally:
        await sub.stop()


async def test_a_topic_created_after_start_is_picked_up_within_seconds(unique_id: str) -> None:
    # a router started before the worker: the missing topic is looked for every second, not at the
    # (default, 10 s) interval for new partitions
    servers, topic = bootstrap(), f"{unique_id}.decisions.late"
    sub = DecisionSubscriber(servers, topic=topic, registry=CollectorRegistry())
    await asyncio.wait_for(sub.start(), 30)
    try:
        assert sub.rollouts() == {}
        await create_topics(servers, [topic], compact=True)
        await produce(servers, topic, [(b"r", decision("r", 1, weight=75).to_json())])
        for _ in range(60):
            if sub.weight("r") == 75.0:
                break
            await asyncio.sleep(0.1)
        assert sub.weight("r") == 75.0
    finally:
        await sub.stop()
