"""Admission: a publisher sending 100,000 distinct rollout ids does not exhaust the worker. Past
ROLLOUT_GATE_MAX_LIVE_ROLLOUTS live rollouts, events of a new rollout go to the dead-letter topic
(counted as reason="rollout_cap"), /metrics shows at most ROLLOUT_GATE_METRICS_MAX_ROLLOUTS
rollouts, a real rollout started before the flood completes, and replay with the same cap takes
the same decisions and refuses the same events.

Prints the worker's RSS and /metrics size (docs/reliability.md quotes them). ROLLOUT_GATE_FLOOD_IDS
changes the number of ids (default 100,000).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.processor import REASON_HEADER
from tests.faults.conftest import Topics, replay
from tests.integration.helpers import decoded, has_action, metric_value, wait_for
from tests.integration.kafka_io import end_offsets, produce, read_until
from tests.integration.streams import BASELINE, CANARY, generate, messages, recent_start
from tests.integration.workerproc import Worker

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FLOOD = int(os.environ.get("ROLLOUT_GATE_FLOOD_IDS", "100000"))
CAP = 1000  # the default of ROLLOUT_GATE_MAX_LIVE_ROLLOUTS
SHOWN = 1500


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_flood_of_new_rollout_ids_is_capped_counted_and_dead_lettered_as_replay_does(
        worker: Worker, topics: Topics, kafka_bootstrap: str, fast_policy: Path, tmp_path: Path) -> None:
    worker.env["ROLLOUT_GATE_MAX_LIVE_ROLLOUTS"] = str(CAP)
    worker.env["ROLLOUT_GATE_METRICS_MAX_ROLLOUTS"] = str(SHOWN)
    worker.start()
    assert worker.proc is not None
    t0 = recent_start(600)
    real = [v for _, v in messages(generate("chat-real", seconds=140, arms={"baseline": BASELINE, "canary": CANARY},
                                            seed=7, start=t0), 50)]
    flood = [orjson.dumps({"rollout_id": f"flood-{i:06d}", "arm": "canary", "request_id": f"q{i}", "ts": t0 + 1 + i / FLOOD,
                           "latency_ms": 5.0, "output_tokens": 3, "status": "ok"}) for i in range(FLOOD)]
    # the real rollout starts, then the flood comes, interleaved with the rest of the real rollout
    stream = real[:1] + flood[: FLOOD // 2] + real[1:] + flood[FLOOD // 2:]
    rss_before = rss_mib(worker.proc.pid)
    metrics_before = len(worker.metrics().encode())
    started = time.monotonic()
    keyed = [(b"chat-real" if v[:1] == b"[" else orjson.loads(v)["rollout_id"].encode(), v) for v in stream]
    asyncio.run(produce(kafka_bootstrap, topics.events, keyed))
    # chat-real holds a slot until it completes (mid-flood), then one more flood rollout gets in
    refused = FLOOD - CAP
    text = worker.metrics()

    def all_refused() -> bool:
        nonlocal text
        text = worker.metrics()
        return metric_value(text, "rollout_gate_rejected_events_total", reason="rollout_cap") == refused

    assert wait_for(all_refused, 300, interval=1.0), metric_value(text, "rollout_gate_rejected_events_total",
                                                                  reason="rollout_cap")
    took = time.monotonic() - started
    msgs = asyncio.run(read_until(kafka_bootstrap, topics.decisions, has_action("chat-real", "complete", "halt"),
                                  timeout=120))
    text = worker.metrics()
    rss_after = rss_mib(worker.proc.pid)
    size = len(text.encode())
    assert sum(asyncio.run(end_offsets(kafka_bootstrap, topics.dlq)).values()) == refused
    sample = asyncio.run(read_until(kafka_bootstrap, topics.dlq, lambda m: len(m) >= 3, timeout=30))
    assert sample[0].headers[REASON_HEADER].decode() == \
        f"rollout cap: {CAP:,} rollouts are live already (ROLLOUT_GATE_MAX_LIVE_ROLLOUTS)"
    assert sample[0].key == f"flood-{CAP - 1:06d}".encode()  # 999 flood rollouts and chat-real fill the cap

    # /metrics: per-rollout series for at most SHOWN rollouts
    shown = {line.split('rollout="', 1)[1].split('"', 1)[0] for line in text.splitlines()
             if line.startswith("rollout_gate_stage_info{")}
    assert len(shown) == CAP + 1 <= SHOWN and "chat-real" in shown
    assert worker.proc.poll() is None and worker.get("/healthz")[0] == 200

    # replay with the same cap: the same decisions (per rollout, byte for byte), the same refusals
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(v + b"\n" for v in stream))
    r = replay(log, fast_policy, "--max-live-rollouts", str(CAP), "--rejections", str(tmp_path / "rej.jsonl"))
    from_replay = r.stdout.splitlines()
    from_worker = [m.value for m in msgs]
    ds = decoded(msgs)
    assert any(d["rollout_id"] == "chat-real" and d["action"] == "complete" for d in ds)
    # the decisions topic holds what the worker decided; replay's are the same bytes
    got = asyncio.run(read_until(kafka_bootstrap, topics.decisions, lambda m: len(m) >= len(from_replay), timeout=60))
    assert sorted(m.value for m in got) == sorted(from_replay)
    assert len(from_worker) <= len(from_replay)
    rejected = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    assert len(rejected) == refused and rejected[0]["rollout_id"] == f"flood-{CAP - 1:06d}"
    print(f"\nadmission: {FLOOD:,} new rollout ids in {took:.1f} s, cap {CAP:,}: {refused:,} refused; worker RSS "
          f"{rss_before:.0f} MiB before, {rss_after:.0f} MiB after; /metrics {metrics_before:,} bytes before, "
          f"{size:,} bytes after ({len(shown):,} rollouts shown)")


def test_metrics_show_at_most_the_configured_rollouts_and_an_expired_one_frees_its_slot() -> None:
    from dataclasses import dataclass, field

    from stream.metrics import Metrics

    @dataclass
    class Status:
        stage: str = "canary-1"
        weight: float = 1.0
        terminal: bool = False
        gates: list[object] = field(default_factory=list)
        samples: dict[str, int] = field(default_factory=dict)
        watermark: float = 0.0
        drift_alarms: dict[str, int] = field(default_factory=dict)

    now = [1000.0]
    m = Metrics(clock=lambda: now[0], ended_retention_seconds=10, max_rollouts=2)
    m.observe_status("a", Status(terminal=True, stage="complete"))
    m.observe_status("b", Status())
    m.observe_status("c", Status())
    text = m.render().decode()
    assert 'rollout="a"' in text and 'rollout="b"' in text and 'rollout="c"' not in text
    assert metric_value(text, "rollout_gate_metrics_unshown_rollouts") == 1
    now[0] += 11
    assert m.expire_ended() == ["a"]
    m.observe_status("c", Status())
    text = m.render().decode()
    assert 'rollout="c"' in text and 'rollout="a"' not in text
    assert metric_value(text, "rollout_gate_metrics_unshown_rollouts") == 0


def test_admission_takes_new_rollouts_in_sorted_order_and_a_redelivered_message_admits_none() -> None:
    from gates import admission
    from gates.engine import Engine
    from gates.events import InferenceEvent
    from gates.policy import parse_policy
    from tests.integration.streams import FAST_POLICY

    def ev(rid: str, ts: float = 1_767_225_600.0) -> InferenceEvent:
        return InferenceEvent(rollout_id=rid, arm="canary", request_id="q", ts=ts, latency_ms=1.0,
                              output_tokens=1, status="ok")

    engine = Engine(parse_policy(FAST_POLICY))
    # two slots, three new rollouts in one message: the first two in sorted order get them
    keep, refused = admission.admit(engine, [ev("c"), ev("a"), ev("b"), ev("a")], 2, source="s", offset=0)
    assert [e.rollout_id for e in keep] == ["a", "b", "a"] and [r.rollout_id for r in refused] == ["c"]
    engine.ingest(keep, source="s", offset=0)
    assert engine.live_rollouts() == 2
    # full: a new one is refused, a known one is not
    keep, refused = admission.admit(engine, [ev("d"), ev("a")], 2, source="s", offset=1)
    assert [e.rollout_id for e in keep] == ["a"] and refused[0].reason.startswith("rollout cap: 2 rollouts")
    # a message delivered again after a restart (offset already counted) admits no new rollout,
    # even with room, as it did not the first time
    engine.command(rollback("a"), source="c", offset=0)
    assert engine.live_rollouts() == 1
    engine.ingest(keep, source="s", offset=1)
    keep, refused = admission.admit(engine, [ev("c")], 2, source="s", offset=0)
    assert keep == [] and len(refused) == 1
    keep, refused = admission.admit(engine, [ev("c")], 2, source="s", offset=2)
    assert keep == [ev("c")] and refused == []


def rollback(rid: str) -> Any:
    from gates.commands import Command

    return Command(rollout_id=rid, action="rollback", ts=1_767_225_601.0)
