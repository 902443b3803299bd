"""The worker's core without Kafka or Faust: Processor.process_events vs the bare decoder.

Separates what the engine and the processor cost from what Faust and the broker add
(benchmarks/worker_bench.py measures the whole worker). Same stream as the worker benchmark:
10 rollouts, both arms, feedback, messages of N events; a sink that drops the output. Both sides
are timed alternately in CPU time.

    .venv/bin/python benchmarks/processor_bench.py [--events 200000] [--per-message 100] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gates.engine import Engine
from gates.events import Rejection, decode_message
from gates.policy import PolicySet
from stream.metrics import Metrics
from stream.processor import Processor, Record
from tests.integration.streams import BASELINE, CANARY, START, generate, interleave, messages


class NullSink:
    async def publish_decisions(self, decisions: Sequence[Any]) -> None:
        pass

    async def dead_letter(self, letters: Sequence[Any]) -> None:
        pass

    def persist(self, rollout_id: str, blob: bytes) -> None:
        pass


def records(n_events: int, per_message: int, rollouts: int = 10) -> list[Record]:
    seconds = n_events / rollouts / (BASELINE.rps + CANARY.rps) / 1.5  # feedback adds about half
    streams = [generate(f"bench-{i}", seconds=seconds, seed=100 + i, start=START,
                        arms={"baseline": BASELINE, "canary": CANARY}) for i in range(rollouts)]  # fmt: skip
    return [Record("ev", 0, i, k, v) for i, (k, v) in enumerate(messages(interleave(*streams), per_message))]


def bare(recs: list[Record]) -> tuple[float, int]:
    t = time.process_time()
    n = sum(sum(1 for e in decode_message(r.value or b"") if not isinstance(e, Rejection)) for r in recs)
    return time.process_time() - t, n


def core(recs: list[Record], batch: int) -> float:
    proc = Processor(lambda: Engine(PolicySet()), NullSink(), Metrics())

    async def go() -> None:
        for i in range(0, len(recs), batch):
            await proc.process_events(recs[i : i + batch])

    t = time.process_time()
    asyncio.run(go())
    return time.process_time() - t


def evaluations(recs: list[Record], batch: int) -> tuple[int, float]:
    """A separate, untimed pass with ``evaluate_gates`` wrapped: (evaluations, mean seconds each)."""
    import gates.engine as engine_module

    real = engine_module.evaluate_gates
    spent = [0, 0.0]

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.process_time()
        try:
            return real(*args, **kwargs)
        finally:
            spent[0] += 1
            spent[1] += time.process_time() - t

    engine_module.evaluate_gates = timed  # type: ignore[assignment]
    try:
        core(recs, batch)
    finally:
        engine_module.evaluate_gates = real  # type: ignore[assignment]
    return int(spent[0]), spent[1] / max(spent[0], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--per-message", type=int, default=100)
    ap.add_argument("--batch", type=int, default=500, help="messages per process_events call")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    recs = records(args.events, args.per_message)
    pairs = []
    for _ in range(args.repeats):
        b, n = bare(recs)
        pairs.append((b, core(recs, args.batch)))
    b = statistics.median(p[0] for p in pairs)
    c = statistics.median(p[1] for p in pairs)
    print(f"| {n:,} events in {len(recs):,} messages of {args.per_message}, batches of {args.batch} | CPU s |")
    print("|---|---|")
    print(f"| bare decode_message | {b:.3f} ({n / b:,.0f} events/s) |")
    print(f"| Processor.process_events (decode + engine + snapshots) | {c:.3f} ({n / c:,.0f} events/s) |")
    print(f"| ratio | **{b / c:.2f}** [{min(x / y for x, y in pairs):.2f}-{max(x / y for x, y in pairs):.2f}] |")
    n_evals, each = evaluations(recs, args.batch)
    print(f"| evaluations (gate checks every 5 s of event time per rollout; separate pass) | {n_evals:,}, "
          f"{each * 1e6:.0f} µs each |")


if __name__ == "__main__":
    main()
