"""Where a healthy rollout spends its time: A/A runs of the closed-loop simulator on the engine,
with the check that passed last at the first (1%) step.

For each seed: minutes to 100%, minutes at the 1% step, canary requests when it promoted, and
the check whose last non-pass came latest in that step (the one that held the promotion; output
length is split into its mean, P99 and shape checks). The engine is asked for its gates once a
second of event time; status calls do not change the decisions (a property test pins that).

    python -m benchmarks.aa_trace --seeds 40 --seed0 5000 [--policy policy.yaml]
"""

from __future__ import annotations

import argparse
import collections
import statistics
from typing import Any

from gates.engine import Engine
from gates.policy import load_policy
from gates.sim import Injection, SimConfig, Traffic


def trace(seed: int, policy: str | None, max_seconds: float = 3 * 3600.0) -> dict[str, Any]:
    eng = Engine(load_policy(policy) if policy else None)
    cfg = SimConfig(rps=100.0, seed=seed, noise=0.15, max_seconds=max_seconds)
    traffic = Traffic(cfg, Injection())
    t, weight, step_start = cfg.start_ts, 0.0, cfg.start_ts
    last_bad: dict[str, float] = {}
    out: dict[str, Any] = {"seed": seed, "minutes": None}
    while t < cfg.start_ts + max_seconds:
        for d in eng.ingest(traffic.tick(t, weight)):
            if d.action == "halt":
                out["outcome"] = "halt"
                return out
            if d.action in ("promote", "complete"):
                if d.previous_weight == 1.0:
                    out["first_step_minutes"] = (d.ts - step_start) / 60
                    out["first_step_canary"] = d.gates[0].samples.get("canary") if d.gates else None
                    out["held_by"] = max(last_bad, key=lambda k: last_bad[k]) if last_bad else None
                step_start, weight, last_bad = d.ts, d.weight, {}
                if d.action == "complete":
                    out["outcome"], out["minutes"] = "complete", (d.ts - cfg.start_ts) / 60
                    return out
        if weight == 1.0:
            for g in eng.status(cfg.rollout_id).gates:
                if g.status == "pass":
                    continue
                name = g.name
                if name == "output_length":
                    parts = [k for k in ("mean", "p99", "shape") if g.details[k]["status"] != "pass"]
                    name = "output_length:" + ",".join(parts)
                last_bad[name] = t
        t += 1.0
    out["outcome"] = "timeout"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--seed0", type=int, default=5000)
    ap.add_argument("--policy", default=None, help="policy file for the engine (default: the built-in policy)")
    args = ap.parse_args(argv)
    rows = []
    for seed in range(args.seed0, args.seed0 + args.seeds):
        r = trace(seed, args.policy)
        rows.append(r)
        first = r.get("first_step_minutes")
        print(f"seed {seed}: {r['outcome']}, {r['minutes'] or float('nan'):.1f} min to 100%, 1% step "
              f"{first or float('nan'):.1f} min on {r.get('first_step_canary')} canary requests, held by "
              f"{r.get('held_by')}", flush=True)  # fmt: skip
    done = [r["minutes"] for r in rows if r["minutes"] is not None]
    firsts = [r["first_step_minutes"] for r in rows if r.get("first_step_minutes") is not None]
    held = collections.Counter(str(r.get("held_by")).split(":")[0] for r in rows if r.get("held_by"))
    print(f"{len(rows)} runs, {len(done)} complete, {sum(r['outcome'] == 'halt' for r in rows)} halted; median "
          f"minutes to 100% {statistics.median(done) if done else float('nan'):.2f}, at the 1% step "
          f"{statistics.median(firsts) if firsts else float('nan'):.2f}; held by {dict(held)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
