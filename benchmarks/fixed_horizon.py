"""The fixed-horizon reference for the halt goals: how many canary requests a test that looks once
needs, on the simulator's own traffic (15% run-to-run noise included).

A goal such as "median requests to halt within 2x of the fixed-horizon bound" needs that bound
for the same traffic the engine is measured on. This script draws each run's traffic with
``gates.sim.Traffic`` (the same seeds as ``gate_quality``), folds it into 60-s blocks per arm and,
at every horizon of ``m`` blocks, applies the one-sided test a fixed design would make once:

    log(ratio) - z sqrt(var_c / mean_c^2 + var_b / mean_b^2) > log(limit)

with z = 1.645 (5%, the halt budget per gate) and each arm's variance the cluster-robust
(batch-means) one over its blocks, floored by the i.i.d. one: the engine's estimator, without the
price of looking at every block. The "bound" is the first horizon at which at least half of the
runs reject (the sample size at which the fixed test has 50% power); the 80% and 95% horizons are
reported beside it. The same test on the at-limit scenario checks its size (about 5% at every
horizon if the variance is right).

Beside it, ``oracle``: the margin over the limit and the per-block variance measured at the last
horizon (means over the runs) give a drift per block, and a Gaussian simulation with that drift
says what a test that knew the variance could do: the fixed test, the SPRT against the true effect
(Wald's mean length, and its median by simulation: no sequential test at this error rate has a
shorter mean, and the SPRT needs the effect known in advance), and the engine's normal-mixture
confidence sequence at several tunings. It tells which goals no valid-at-every-look test at this
budget can meet on this traffic.

    .venv/bin/python -m benchmarks.fixed_horizon --runs 100 --out benchmarks/results/fixed_horizon.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from gates.change import _segment_stats
from gates.events import InferenceEvent
from gates.sim import SimConfig, Traffic, parse_injections

Z = 1.6448536269514722  # one-sided 5%
BLOCK_S = 60.0
MIN_BLOCKS = 3  # the policy's min_blocks: no verdict on fewer blocks


@dataclass(frozen=True)
class Case:
    key: str
    specs: tuple[str, ...]
    metric: str  # cost | errors
    limit: float
    hours: float
    weight: float = 1.0  # canary percent of 100 req/s, as in the closed-loop 1% step
    rps: float = 100.0
    onset_min: float = 0.0  # the test starts at the onset (an oracle that knows it)


CASES = (
    Case("cost+25%", ("cost=+25%",), "cost", 1.2, 1.0),
    Case("at-limit cost x1.2", ("cost=x1.2",), "cost", 1.2, 1.0),
    Case("refusal x3", ("refusal=x3",), "errors", 2.0, 3.0),
    Case("at-limit refusal x2.5", ("refusal=x2.5",), "errors", 2.0, 3.0),
    # the onset scenario (open loop, 20 req/s, 10% canary), tested from the onset on: a fixed test
    # that knew when the change came, for cost and for errors on their own
    Case("onset cost x1.3 (from the onset)", ("refusal=x4", "cost=x1.3", "onset=15"), "cost", 1.2, 0.5,
         weight=10.0, rps=20.0, onset_min=15.0),
    Case("onset refusal x4 (from the onset)", ("refusal=x4", "cost=x1.3", "onset=15"), "errors", 2.0, 0.5,
         weight=10.0, rps=20.0, onset_min=15.0),
)  # fmt: skip
BY_KEY = {c.key: c for c in CASES}
SMOOTH = 0.001  # the errors gate's min_rate


def blocks_of(case: Case, seed: int) -> dict[str, np.ndarray]:
    """Per arm and 60-s block: [requests, sum, sum of squares] of the case's metric."""
    cfg = SimConfig(rps=case.rps, seed=seed, noise=0.15, max_seconds=case.hours * 3600, fixed_weight=case.weight)
    inj = parse_injections(case.specs)
    traffic = Traffic(cfg, inj)
    n_blocks = int(case.hours * 3600 // BLOCK_S)
    out = {arm: np.zeros((n_blocks, 3)) for arm in ("baseline", "canary")}
    t = cfg.start_ts
    first = cfg.start_ts + case.onset_min * 60
    while t < cfg.start_ts + case.hours * 3600:
        for e in traffic.tick(t, case.weight):
            if type(e) is not InferenceEvent or e.ts < first:
                continue
            k = int((e.ts - cfg.start_ts) // BLOCK_S)
            if k >= n_blocks:
                continue
            x = (e.cost_usd or 0.0) if case.metric == "cost" else float(e.status == "error" or e.refusal)
            row = out[e.arm][k]
            row[0] += 1
            row[1] += x
            row[2] += x * x
        t += cfg.tick_s
    lo = int(case.onset_min * 60 // BLOCK_S)
    return {arm: a[lo:] for arm, a in out.items()}


def _arm(c: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative mean and variance of the mean at each horizon of 1..B blocks: the onset scan's
    segment statistics (cluster-robust, floored by i.i.d.) of the blocks before each split, with an
    empty block appended so that the last split is the whole run."""
    pad = np.vstack((c, np.zeros((1, 3))))
    r, v_cl, v_iid, *_ = _segment_stats(pad[:, 1], pad[:, 0], None if binary else pad[:, 2], binary)
    return r, np.maximum(v_cl, v_iid)


def rejections(case: Case, seed: int) -> dict[str, Any]:
    b = blocks_of(case, seed)
    binary = case.metric == "errors"
    smooth = SMOOTH if binary else 0.0
    rc, vc = _arm(b["canary"], binary)
    rb, vb = _arm(b["baseline"], binary)
    with np.errstate(divide="ignore", invalid="ignore"):
        dc, db = rc + smooth, rb + smooth
        se = np.sqrt(vc / (dc * dc) + vb / (db * db))
        reject = np.log(dc) - np.log(db) - Z * se > math.log(case.limit)
    reject[: MIN_BLOCKS - 1] = False  # the engine's min_blocks: a block spread needs a few blocks
    margin = np.log(dc[-1]) - np.log(db[-1]) - math.log(case.limit)
    return {"seed": seed, "reject": np.nan_to_num(reject, nan=0).astype(bool).tolist(),
            "canary_requests": np.cumsum(b["canary"][:, 0]).astype(int).tolist(),
            "final_margin": float(margin), "final_var_per_block": float(se[-1] ** 2 * se.size)}  # fmt: skip


def oracle(mu: float, horizon: int, *, alpha: float = 0.05, sims: int = 20000, seed: int = 0) -> dict[str, Any]:
    """What a test that knew the per-block variance could do, on Gaussian block increments with
    drift ``mu`` (the margin over the limit per block, in standard deviations of one block): the
    fixed test's 50% horizon, Wald's approximation of the mean length of the SPRT against the true
    effect (the best any sequential test can do in the mean), and the normal-mixture confidence
    sequence the engine uses (two-sided at 2 alpha, no verdict before MIN_BLOCKS) at several rho."""
    from gates.stats import cs_z

    rng = np.random.default_rng(seed)
    s = np.cumsum(rng.standard_normal((sims, horizon)) + mu, axis=1)
    m = np.arange(1, horizon + 1, dtype=np.float64)
    out: dict[str, Any] = {"mu_per_block": round(mu, 4), "fixed_50_blocks": round((Z / mu) ** 2, 1),
                           "sprt_mean_blocks": round(2 * math.log(1 / alpha) / mu**2, 1), "mixture": {}}  # fmt: skip
    # the SPRT against the true effect, by simulation: log LR = mu S_m - m mu^2 / 2 past log(1/alpha)
    llr = mu * s - m * mu * mu / 2
    sprt_hit = llr >= math.log(1 / alpha)
    sprt_first = np.where(sprt_hit.any(axis=1), sprt_hit.argmax(axis=1) + 1, horizon + 1)
    out["sprt_median_blocks"] = float(np.median(sprt_first))
    for rho in (1.0, 2.0, 4.0, 8.0, 16.0):
        bound = np.array([cs_z(t, 2 * alpha, rho) for t in m]) * np.sqrt(m)
        bound[: MIN_BLOCKS - 1] = np.inf
        hit = s >= bound
        crossed = hit.any(axis=1)
        first = np.where(crossed, hit.argmax(axis=1) + 1, horizon + 1)
        out["mixture"][f"rho {rho:g}"] = {"halted_by_horizon": round(float(crossed.mean()), 3),
                                          "median_blocks": float(np.median(first))}  # fmt: skip
    return out


def _task(args: tuple[str, int]) -> dict[str, Any]:
    return rejections(BY_KEY[args[0]], args[1])


def summarise(case: Case, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rej = np.array([r["reject"] for r in runs], dtype=bool)
    req = np.array([r["canary_requests"] for r in runs], dtype=np.float64)
    power = rej.mean(axis=0)
    mean_req = req.mean(axis=0)

    def horizon(p: float) -> dict[str, Any] | None:
        hit = np.flatnonzero(power >= p)
        if hit.size == 0:
            return None
        m = int(hit[0])
        return {"blocks": m + 1, "minutes": (m + 1) * BLOCK_S / 60, "canary_requests": round(float(mean_req[m]))}

    margin = float(np.mean([r["final_margin"] for r in runs]))
    var = float(np.mean([r["final_var_per_block"] for r in runs]))
    mu = margin / math.sqrt(var) if var > 0 else math.nan
    req_per_block = float(mean_req[-1]) / mean_req.size
    orc = oracle(mu, mean_req.size) if mu > 0 else None
    if orc is not None:
        orc["canary_requests_per_block"] = round(req_per_block, 1)
    return {
        "oracle": orc,
        "runs": len(runs), "metric": case.metric, "limit": case.limit, "canary_percent": case.weight,
        "rps": case.rps, "from_onset_min": case.onset_min,
        "power_50": horizon(0.5), "power_80": horizon(0.8), "power_95": horizon(0.95),
        "rejection_rate_max": round(float(power.max()), 3),
        "rejection_rate_at": {str(m): round(float(power[m - 1]), 3) for m in (5, 8, 10, 20, 30, 60, 120, 180)
                              if m <= power.size},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(c.key for c in CASES), help="comma-separated case keys")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed0", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/fixed_horizon.json")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {sorted(BY_KEY)}")
    if args.runs < 1 or args.jobs < 1:
        ap.error("--runs and --jobs must be at least 1")
    t0 = time.perf_counter()
    out: dict[str, Any] = {"command": "python -m benchmarks.fixed_horizon " + " ".join(sys.argv[1:]), "z": Z,
                           "block_seconds": BLOCK_S, "cases": {}}  # fmt: skip
    from rich.progress import Progress

    with ProcessPoolExecutor(args.jobs) as pool, Progress() as bar:
        for key in keys:
            task = bar.add_task(key, total=args.runs)
            runs = []
            for r in pool.map(_task, [(key, args.seed0 + i) for i in range(args.runs)]):
                runs.append(r)
                bar.advance(task)
            out["cases"][key] = summarise(BY_KEY[key], runs)
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    for key, s in out["cases"].items():
        print(key, json.dumps({k: s[k] for k in ("power_50", "power_80", "power_95", "rejection_rate_max")}))
    print(f"wall {out['wall_seconds'] / 60:.1f} min; {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
