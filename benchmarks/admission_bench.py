"""What a flood of new rollout ids costs the worker's core, with and without the live-rollout cap.

The real Processor (decoder, admission, engine, metrics) without Kafka: N one-event messages, each
of a new rollout id, in batches of 1000; a sink that keeps nothing. Prints the process's RSS growth
and the size of /metrics for each cap (each run in a fresh subprocess, so RSS does not carry over),
and how long ``GET /rollouts`` holds the worker's event loop to build the live view of every rollout.

    .venv/bin/python benchmarks/admission_bench.py [--ids 100000] [--caps 1000,none]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from gates.engine import Engine
from gates.policy import parse_policy
from stream.metrics import Metrics
from stream.processor import Processor, Record
from stream.settings import Settings
from stream.status import LiveState
from tests.integration.streams import FAST_POLICY, START


class NullSink:
    def __init__(self) -> None:
        self.letters = 0

    async def publish_decisions(self, decisions: Sequence[Any]) -> None:
        pass

    async def dead_letter(self, letters: Sequence[Any]) -> None:
        self.letters += len(letters)

    def persist(self, rollout_id: str, blob: bytes) -> None:
        pass


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one(ids: int, cap: int | None) -> str:
    policy = parse_policy(FAST_POLICY)
    shown = Settings.model_fields["metrics_max_rollouts"].default if cap is not None else None
    metrics = Metrics(max_rollouts=shown)
    sink = NullSink()
    proc = Processor(lambda: Engine(policy), sink, metrics, max_live_rollouts=cap)
    before = rss_mib()
    started = time.perf_counter()
    for lo in range(0, ids, 1000):
        batch = [Record("ev", 0, i, None, orjson.dumps({
            "rollout_id": f"flood-{i:06d}", "arm": "canary", "request_id": f"q{i}", "ts": START + i / ids,
            "latency_ms": 5.0, "output_tokens": 3, "status": "ok"})) for i in range(lo, min(ids, lo + 1000))]
        await proc.process_events(batch)
    took = time.perf_counter() - started
    size = len(metrics.render())
    live = LiveState(proc, metrics)
    t = time.perf_counter()
    views = [v for rid in proc.engine.rollout_ids() if (v := live._view(proc.engine, rid)) is not None]
    view_ms = (time.perf_counter() - t) * 1000
    return (f"cap {cap if cap is not None else 'none':>6}: {ids:,} new ids in {took:.1f} s, "
            f"{proc.engine.live_rollouts():,} live, {sink.letters:,} dead letters, RSS +{rss_mib() - before:.0f} MiB, "
            f"/metrics {size:,} bytes, GET /rollouts builds {len(views):,} views in {view_ms:,.0f} ms")


def fat_view(minutes: float) -> str:
    """The view of one rollout with ``minutes`` of history at 100 requests/s, canary 10%."""
    from gates.sim import Injection, SimConfig, run

    # the lesson's policy, with a step that does not end within the run: the window keeps growing
    engine = Engine(parse_policy("defaults:\n  min_step_seconds: 86400\n  max_step_seconds: 172800\n"))
    cfg = SimConfig(rps=100.0, seed=1, max_seconds=minutes * 60, fixed_weight=10.0)
    result = run(engine, cfg, Injection())
    live = LiveState(Processor(lambda: engine, NullSink(), Metrics()), Metrics())
    t = time.perf_counter()
    n = 20
    for _ in range(n):
        view = live._view(engine, cfg.rollout_id)
    ms = (time.perf_counter() - t) * 1000 / n
    assert view is not None
    blocks = engine.progress(cfg.rollout_id).blocks
    return (f"one rollout after {result.duration_s / 60:.0f} min at 100 req/s ({result.outcome}): "
            f"view of {len(view['gates'])} gates over {blocks} blocks in {ms:.2f} ms")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ids", type=int, default=100_000)
    p.add_argument("--caps", default="1000,none")
    p.add_argument("--fat-minutes", type=float, default=30.0, help="history of the one full rollout whose view is timed")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:
        print(asyncio.run(one(a.ids, None if a.one == "none" else int(a.one))))
        return
    for cap in a.caps.split(","):
        subprocess.run([sys.executable, __file__, "--ids", str(a.ids), "--one", cap], check=True)
    if a.fat_minutes > 0:
        print(fat_view(a.fat_minutes))


if __name__ == "__main__":
    main()
