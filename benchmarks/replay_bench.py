"""Replay throughput and memory: `rollout-gate replay` against a bare orjson.loads loop.

Writes a 200k-event JSONL log (several rollouts, realistic fields) with the seeded simulator,
then measures in one run, alternating to share the machine's noise:
  - bare: for line in file: orjson.loads(line)
  - replay: the replay command's core (decode + validate + engine + decision output)
Peak memory is measured in child processes for logs of 50k, 100k and 200k events: it must not
grow with the number of events.

    .venv/bin/python benchmarks/replay_bench.py [--events 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from gates.events import encode_event
from gates.policy import PolicySet
from gates.sim import Injection, SimConfig, Traffic


def write_log(path: Path, n_events: int, rollouts: int = 5, rps: float = 200.0) -> None:
    per = n_events // rollouts
    streams = []
    for r in range(rollouts):
        tr = Traffic(SimConfig(rps=rps, seed=100 + r, rollout_id=f"bench-{r}"), Injection())
        evs = []
        t = SimConfig().start_ts
        while len(evs) < per:
            evs.extend(tr.tick(t, 10.0))
            t += 1.0
        streams.append(evs[:per])
    merged = sorted((e for s in streams for e in s), key=lambda e: e.ts)
    with path.open("wb") as f:
        for e in merged:
            f.write(encode_event(e) + b"\n")


def bare(path: Path) -> tuple[float, float]:
    """(wall, CPU) seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    with path.open("rb") as f:
        for line in f:
            orjson.loads(line)
    return time.perf_counter() - t0, time.process_time() - c0


def replay(path: Path) -> tuple[float, float]:
    """(wall, CPU) seconds."""
    from stream.offline import replay_stream

    t0, c0 = time.perf_counter(), time.process_time()
    with path.open("rb") as f:
        replay_stream(f, io.BytesIO(), PolicySet())
    return time.perf_counter() - t0, time.process_time() - c0


def peak_rss_child(path: Path) -> int:
    code = (
        "import resource,io,sys; from stream.offline import replay_stream; from gates.policy import PolicySet;"
        f"replay_stream(open({str(path)!r},'rb'), io.BytesIO(), PolicySet());"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "events.jsonl"
        write_log(log, args.events)
        size = log.stat().st_size
        replay(log)  # warm-up, not counted: imports, numpy and msgspec first-call costs
        bares, replays = [], []
        for _ in range(args.repeats):
            bares.append(bare(log))
            replays.append(replay(log))
        print(f"| log | {args.events:,} events, {size / 1e6:.1f} MB |")
        print("|---|---|")
        for i, what in ((0, "wall"), (1, "CPU")):
            b = statistics.median(x[i] for x in bares)
            r = statistics.median(x[i] for x in replays)
            ratios = sorted(x[i] / y[i] for x, y in zip(bares, replays, strict=True))
            print(f"| {what}: bare orjson.loads loop | {b:.3f} s ({args.events / b:,.0f} events/s) |")
            print(f"| {what}: rollout-gate replay | {r:.3f} s ({args.events / r:,.0f} events/s) |")
            print(f"| {what}: ratio replay/bare, median [min-max of {len(ratios)} side-by-side pairs] | "
                  f"**{b / r:.2f}** [{ratios[0]:.2f}-{ratios[-1]:.2f}] (target >= 0.3) |")
        rows = []
        for n in (args.events // 4, args.events // 2, args.events):
            sub = Path(d) / f"sub-{n}.jsonl"
            with log.open("rb") as src, sub.open("wb") as dst:
                for i, line in enumerate(src):
                    if i >= n:
                        break
                    dst.write(line)
            rows.append((n, peak_rss_child(sub)))
        for n, kib in rows:
            print(f"| peak RSS, {n:,} events | {kib / 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
