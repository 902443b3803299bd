"""Gate quality: false halts, detection, specificity at the limit and speed, for three judges.

Runs the seeded closed-loop simulator (gates.sim) with the Engine (default policy), the naive
fixed-ratio judge and the Kayenta-style judge (benchmarks/judges.py) on the SAME seeds, and measures

* false-halt rate per whole A/A rollout (noise 0.15);
* regressions halted with the right gate named (target >= 95 %);
* canaries whose true ratio equals the threshold, halted (target <= 5 %);
* median canary requests until a right-gate halt, engine vs Kayenta (target: engine <= 0.5 x);
* median event time to halt and to completion.

A run ends at halt, complete, or ``--max-hours`` of event time ("timeout": counted apart, and a
regression not halted by then counts as not halted).

    .venv/bin/python -m benchmarks.gate_quality      # the defaults below: ~22 CPU-min, ~2,100 runs
    .venv/bin/python -m benchmarks.gate_quality --judges engine,naive,kayenta,kayenta-strict --runs-aa 200 \
        --runs-reg 20 --seed0 5000 --rps 100 --max-hours 3 --max-hours-limit 2 --jobs 2 \
        --out benchmarks/results/gate_quality.json
    .venv/bin/python -m benchmarks.gate_quality --quick      # smoke test -> results/quick.json, a few minutes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gates.engine import Engine
from gates.policy import load_policy
from gates.sim import SimConfig, parse_injections, run

ROOT = Path(__file__).resolve().parent.parent
JUDGES = ("engine", "naive", "kayenta", "kayenta-p", "kayenta-strict")
# kayenta-strict: Kayenta at confLevel 0.998 instead of 0.98, so that its A/A false-halt rate comes
# near the engine's and the speed comparison is at (roughly) equal false-halt rates
DEFAULT_JUDGES = ("engine", "naive", "kayenta", "kayenta-strict")


@dataclass(frozen=True)
class Scenario:
    key: str
    kind: str  # aa | regression | threshold
    specs: tuple[str, ...]
    gate: str | None  # the gate that should name the halt
    note: str = ""
    # open-loop scenarios: this request rate and a candidate share held whatever the judge decides
    rps: float | None = None
    fixed_weight: float | None = None
    gates_ok: tuple[str, ...] = ()  # other gates whose halt is right too (several metrics injected)


# Baseline: error 1 %, refusal 2 % (refusals are drawn among non-errors), so error+refusal = 2.98 %.
SCENARIOS = (
    Scenario("aa", "aa", (), None, "A/A: candidate identical to the baseline"),
    Scenario("cost+25%", "regression", ("cost=+25%",), "cost", "cost per request x1.25 (limit 1.2)"),
    Scenario("refusal x3", "regression", ("refusal=x3",), "errors",
             "error+refusal (1+6)/3 = 2.33x (limit 2)"),
    Scenario("errors x6", "regression", ("errors=x6",), "errors",
             "error+refusal (6+2)/3 = 2.67x (2.64x exactly; limit 2)"),
    Scenario("latency P99 x2", "regression", ("latency=x2",), "latency",
             "P99 x2 at an equal median (limit 1.5)"),
    Scenario("length +40%", "regression", ("length=+40%",), "output_length",
             "mean output length x1.4 (limit 1.25); cost rises 1.26x too"),
    Scenario("length shape 0.6", "regression", ("shape=0.6",), "output_length",
             "bimodal lengths (x0.4 / x1.6) at an equal mean"),
    Scenario("feedback x2", "regression", ("feedback=x2",), "feedback", "negative feedback x2 (limit 1.5)"),
    # turns bad mid-rollout: 20 req/s with the candidate held at 10% (2 canary req/s); from minute 15
    # refusals 2% -> 8% (error+refusal 3x, limit 2) and cost x1.3 (limit 1.2)
    Scenario("onset refusal x4 + cost x1.3 at 15 min", "onset", ("refusal=x4", "cost=x1.3", "onset=15"), "errors",
             "open loop, 20 req/s, 10% canary", rps=20.0, fixed_weight=10.0, gates_ok=("cost",)),
    Scenario("open feedback x2", "onset", ("feedback=x2",), "feedback",
             "open loop, 20 req/s, 10% canary, from the start", rps=20.0, fixed_weight=10.0),
    Scenario("at-limit cost x1.2", "threshold", ("cost=x1.2",), "cost", "true ratio = limit 1.2"),
    Scenario("at-limit refusal x2.5", "threshold", ("refusal=x2.5",), "errors", "(1+5)/3 = 2.0x = limit"),
    Scenario("at-limit latency x1.5", "threshold", ("latency=x1.5",), "latency", "P99 x1.5 = limit"),
    Scenario("at-limit feedback x1.5", "threshold", ("feedback=x1.5",), "feedback", "x1.5 = limit"),
    Scenario("at-limit length x1.25", "threshold", ("length=x1.25",), "output_length",
             "mean x1.25 = limit (cost 1.16x, under its 1.2 limit)"),
    # within the lesson's limits: a halt here is a false halt too
    Scenario("within cost x1.1", "threshold", ("cost=x1.1",), "cost", "x1.1, under the 1.2 limit"),
    Scenario("within refusal x1.5", "threshold", ("refusal=x1.5",), "errors", "(1+3)/3 = 1.33x, under 2"),
    Scenario("within latency x1.25", "threshold", ("latency=x1.25",), "latency", "P99 x1.25, under 1.5"),
    Scenario("within feedback x1.3", "threshold", ("feedback=x1.3",), "feedback", "x1.3, under 1.5"),
)  # fmt: skip
BY_KEY = {s.key: s for s in SCENARIOS}

# rough relative cost of a run, to start the long ones first
_COST = {"engine": 10.0, "kayenta": 2.0, "kayenta-p": 2.0, "kayenta-strict": 2.0, "naive": 0.5}


def make_judge(name: str, seed: int) -> Any:
    from benchmarks.judges import KayentaJudge, NaiveJudge

    if name == "engine":
        return Engine(load_policy(POLICY) if POLICY else None)
    if name == "naive":
        return NaiveJudge()
    if name == "kayenta":
        return KayentaJudge(seed=seed)
    if name == "kayenta-p":
        return KayentaJudge(seed=seed, rule="p")
    if name == "kayenta-strict":
        return KayentaJudge(seed=seed, confidence=0.998)
    raise ValueError(f"unknown judge {name!r}")


# set by main() before the worker processes fork: the policy file the engine runs with (None: defaults)
# and the shared part of the run-to-run noise
POLICY: str | None = None
SHARED_NOISE = 0.0


def one_run(task: tuple[str, str, int, float, float]) -> dict[str, Any]:
    judge_name, key, seed, rps, max_seconds = task
    sc = BY_KEY[key]
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = SimConfig(rps=sc.rps or rps, seed=seed, noise=0.15, max_seconds=max_seconds, fixed_weight=sc.fixed_weight,
                    shared_noise=SHARED_NOISE)  # fmt: skip
    inj = parse_injections(sc.specs)
    judge = make_judge(judge_name, seed)
    res = run(judge, cfg, inj)
    alarms = judge.status(cfg.rollout_id).drift_alarms if isinstance(judge, Engine) and res.decisions else {}
    last = res.decisions[-1] if res.decisions else None
    breached = [g.name for g in last.gates if g.status == "breach"] if last and last.action == "halt" else []
    top_stage = max((s.weight for s in res.stages), default=0.0)
    right = {sc.gate, *sc.gates_ok} if sc.gate else set()
    return {
        "judge": judge_name, "scenario": key, "seed": seed, "outcome": res.outcome,
        "halted_gate": res.halted_gate, "breached": breached, "halted_stage": res.halted_stage,
        "right_gate": bool(right & set(breached)),
        "minutes_after_onset": round((res.duration_s - inj.onset_s) / 60, 2) if res.outcome == "halt" else None,
        "policy": POLICY, "shared_noise": SHARED_NOISE, "onset_alarms": alarms,
        "canary_requests": res.canary_requests, "canary_requests_to_halt": res.canary_requests_to_halt,
        "duration_s": res.duration_s, "top_weight": top_stage,
        "holds": sum(1 for d in res.decisions if d.action == "hold"),
        "reason": last.reason if last else "", "rps": rps, "max_seconds": max_seconds,
        "wall_s": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3),
    }  # fmt: skip


# ---- statistics ----------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def median_or_none(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def median_inf(xs: list[float], n: int) -> float | None:
    """Median over n runs where the runs missing from xs count as +inf; None when that is +inf."""
    if n == 0:
        return None
    m = statistics.median(sorted(xs) + [math.inf] * (n - len(xs)))
    return None if math.isinf(m) else m


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    halts = [r for r in rows if r["outcome"] == "halt"]
    right = [r for r in halts if r["right_gate"]]
    comp = [r for r in rows if r["outcome"] == "complete"]
    tout = [r for r in rows if r["outcome"] == "timeout"]
    req_right = [float(r["canary_requests_to_halt"]) for r in right]
    out: dict[str, Any] = {
        "runs": n,
        "halted": len(halts), "halt_rate": len(halts) / n if n else None,
        "halt_rate_ci95": wilson(len(halts), n),
        "halted_right_gate": len(right), "right_rate": len(right) / n if n else None,
        "right_rate_ci95": wilson(len(right), n),
        "completed": len(comp), "timeouts": len(tout),
        "timeouts_top_weight": dict(Counter(f"{r['top_weight']:g}%" for r in tout)),
        "first_named_gate": dict(Counter(r["halted_gate"] or "-" for r in halts)),
        "breached_gates": dict(Counter(g for r in halts for g in r["breached"])),
        "halted_stage": dict(Counter(r["halted_stage"] or "-" for r in halts)),
        "median_canary_requests_to_right_halt": median_or_none(req_right),
        "median_canary_requests_to_right_halt_all_runs": median_inf(req_right, n),
        "median_minutes_to_halt": _min(median_or_none([r["duration_s"] for r in halts])),
        "median_minutes_to_complete": _min(median_or_none([r["duration_s"] for r in comp])),
        "median_minutes_after_onset_to_right_halt": median_inf(
            [r["minutes_after_onset"] for r in right if r.get("minutes_after_onset") is not None], n),
        "right_halts_within_8_min_of_onset": sum(
            1 for r in right if r.get("minutes_after_onset") is not None and r["minutes_after_onset"] <= 8),
        "runs_with_onset_alarms": sum(1 for r in rows if r.get("onset_alarms")),
        "wall_s_total": round(sum(r["wall_s"] for r in rows), 1),
        "cpu_s_total": round(sum(r.get("cpu_s", math.nan) for r in rows), 1),
    }  # fmt: skip
    return out


def _min(s: float | None) -> float | None:
    return None if s is None else round(s / 60, 1)


# ---- report --------------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def ci(c: tuple[float, float]) -> str:
    return "" if any(math.isnan(v) for v in c) else f" [{100 * c[0]:.0f}-{100 * c[1]:.0f}]"


def num(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "∞" if x is None else fmt.format(x)


def _summaries(
    res: dict[str, dict[str, Any]], judges: list[str], kind: str
) -> Iterator[tuple[Scenario, str, dict[str, Any], str]]:
    """(scenario, judge, summary, gates first named) for every judged scenario of this kind."""
    for sc in SCENARIOS:
        if sc.kind != kind:
            continue
        for j in judges:
            s = res[j].get(sc.key)
            if s:
                named = ", ".join(f"{g} {c}" for g, c in sorted(s["first_named_gate"].items(), key=lambda kv: -kv[1]))
                yield sc, j, s, named


def markdown(summary: dict[str, Any]) -> str:
    res, judges = summary["results"], summary["config"]["judges"]
    lines = []
    lines.append("### A/A: false halts per whole rollout (target for the engine: <= 1%)\n")
    lines.append("| judge | runs | false halts [95% CI] | gates named | completed | timeouts | median min to complete |")
    lines.append("|---|---|---|---|---|---|---|")
    for j in judges:
        s = res[j].get("aa")
        if not s:
            continue
        gates = ", ".join(f"{g} {c}" for g, c in sorted(s["first_named_gate"].items(), key=lambda kv: -kv[1])) or "-"
        done = num(s["median_minutes_to_complete"], "{:.1f}")
        lines.append(
            f"| {j} | {s['runs']} | {s['halted']} = {pct(s['halt_rate'])}{ci(s['halt_rate_ci95'])} | "
            f"{gates} | {s['completed']} | {s['timeouts']} | {done} |"
        )
    lines.append("\n### Regressions: halted with the right gate (target >= 95%)\n")
    lines.append(
        "| regression | gate | judge | right-gate halts [95% CI] | any halt | timeouts | first gate named"
        " | median canary req. to halt (halted / all runs) | median min to halt |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for sc, j, s, named in _summaries(res, judges, "regression"):
        lines.append(
            f"| {sc.key} | {sc.gate} | {j} | {s['halted_right_gate']}/{s['runs']} = "
            f"{pct(s['right_rate'])}{ci(s['right_rate_ci95'])} | {pct(s['halt_rate'])} | "
            f"{s['timeouts']} | {named or '-'} | "
            f"{num(s['median_canary_requests_to_right_halt'])} / "
            f"{num(s['median_canary_requests_to_right_halt_all_runs'])} | "
            f"{num(s['median_minutes_to_halt'], '{:.1f}')} |"
        )
    if any(sc.kind == "onset" for sc in SCENARIOS if any(sc.key in res[j] for j in judges)):
        lines.append("\n### Open loop (candidate share held): halted with the right gate, time from the onset\n")
        lines.append("| scenario | gate | judge | right-gate halts [95% CI] | within 8 min of onset | "
                     "median min after onset (all runs) | median canary req. to halt | completed | timeouts |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for sc, j, s, _named in _summaries(res, judges, "onset"):
            lines.append(
                f"| {sc.key} | {'/'.join((sc.gate or '-', *sc.gates_ok))} | {j} | {s['halted_right_gate']}/{s['runs']}"
                f"{ci(s['right_rate_ci95'])} | {s['right_halts_within_8_min_of_onset']}/{s['runs']} | "
                f"{num(s['median_minutes_after_onset_to_right_halt'], '{:.1f}')} | "
                f"{num(s['median_canary_requests_to_right_halt'])} | {s['completed']} | {s['timeouts']} |"
            )
    lines.append("\n### At or under the limit: halted (a false halt; target <= 5% at the limit)\n")
    lines.append("| canary | gate | judge | any halt [95% CI] | gates named | completed | timeouts (stuck at) |")
    lines.append("|---|---|---|---|---|---|---|")
    for sc, j, s, named in _summaries(res, judges, "threshold"):
        stuck = ", ".join(f"{w} {c}" for w, c in s["timeouts_top_weight"].items())
        lines.append(f"| {sc.key} | {sc.gate} | {j} | {s['halted']}/{s['runs']} = {pct(s['halt_rate'])}"
                     f"{ci(s['halt_rate_ci95'])} | {named or '-'} | {s['completed']} | {s['timeouts']}"
                     f"{' (' + stuck + ')' if stuck else ''} |")  # fmt: skip
    for variant, comp in (summary.get("engine_vs_kayenta") or {}).items():
        fh = comp["false_halt_rate"]
        lines.append(f"\n### Speed: median canary requests to a right-gate halt, engine / {variant} (target <= 0.5)\n")
        lines.append(
            f"A/A false-halt rates side by side: engine {pct(fh['engine'])}, {variant} {pct(fh[variant])}. "
            "Median over all runs counts a run without a right-gate halt as ∞.\n"
        )
        lines.append(
            f"| regression | engine (all runs) | {variant} (all runs) | ratio | engine (halted only) | "
            f"{variant} (halted only) | ratio (halted only) |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for key, c in comp["regressions"].items():
            if c["kayenta_all"] is None and c["engine_all"] is not None:
                ratio = f"0 ({variant} ∞)"
            else:
                ratio = num(c["ratio_all"], "{:.2f}")
            lines.append(f"| {key} | {num(c['engine_all'])} | {num(c['kayenta_all'])} | {ratio} | "
                         f"{num(c['engine_halted'])} | {num(c['kayenta_halted'])} | "
                         f"{num(c['ratio_halted'], '{:.2f}')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


KAYENTAS = ("kayenta", "kayenta-p", "kayenta-strict")


def compare(res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Engine vs each Kayenta variant present: median canary requests to a right-gate halt."""
    out: dict[str, Any] = {}
    if "engine" not in res:
        return out
    for variant in KAYENTAS:
        if variant not in res:
            continue
        v: dict[str, Any] = {
            "false_halt_rate": {j: res[j].get("aa", {}).get("halt_rate") for j in ("engine", variant)},
            "regressions": {},
        }
        for sc in SCENARIOS:
            if sc.kind != "regression" or sc.key not in res["engine"] or sc.key not in res[variant]:
                continue
            e, k = res["engine"][sc.key], res[variant][sc.key]
            ea, ka = (e["median_canary_requests_to_right_halt_all_runs"], k["median_canary_requests_to_right_halt_all_runs"])
            eh, kh = e["median_canary_requests_to_right_halt"], k["median_canary_requests_to_right_halt"]
            v["regressions"][sc.key] = {
                "engine_all": ea, "kayenta_all": ka,
                "ratio_all": (ea / ka) if ea is not None and ka else (0.0 if ea is not None else None),
                "engine_halted": eh, "kayenta_halted": kh,
                "ratio_halted": (eh / kh) if eh is not None and kh else None,
            }  # fmt: skip
        out[variant] = v
    return out


def targets(res: dict[str, dict[str, Any]], comp: dict[str, Any]) -> dict[str, Any]:
    e = res.get("engine", {})
    t: dict[str, Any] = {}
    if "aa" in e:
        t["aa_false_halt<=1%"] = {"value": e["aa"]["halt_rate"], "met": e["aa"]["halt_rate"] <= 0.01}
    for sc in SCENARIOS:
        s = e.get(sc.key)
        if s is None:
            continue
        if sc.kind == "regression":
            t[f"{sc.key}: right-gate halt>=95%"] = {"value": s["right_rate"], "met": s["right_rate"] >= 0.95}
        elif sc.kind == "threshold":
            t[f"{sc.key}: halt<=5%"] = {"value": s["halt_rate"], "met": s["halt_rate"] <= 0.05}
    for variant, v in comp.items():
        for key, c in v["regressions"].items():
            r = c["ratio_all"]
            t[f"{key}: engine/{variant} requests<=0.5"] = {"value": r, "met": r is not None and r <= 0.5}
    return t


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def provenance() -> dict[str, Any]:
    """Which engine was measured: the gates package actually imported (a snapshot put first on
    PYTHONPATH is honoured) and the repository's HEAD."""
    import gates

    gates_dir = Path(gates.__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(gates_dir.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    status = _git("status", "--porcelain", "gates")
    in_tree = gates_dir == ROOT / "gates"
    return {
        "git_head": _git("rev-parse", "--short", "HEAD"),
        "gates_path": str(gates_dir),
        "gates_from_working_tree": in_tree,
        "working_tree_gates_dirty": bool(status),
        "gates_sha256": h.hexdigest()[:16],
    }


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-aa", type=int, default=200, help="A/A rollouts per judge")
    ap.add_argument("--runs-reg", type=int, default=20, help="runs per regression and per at/under-limit scenario")
    ap.add_argument("--seed0", type=int, default=5000, help="run i of every scenario uses seed seed0 + i")
    ap.add_argument("--rps", type=float, default=100.0)
    ap.add_argument("--max-hours", type=float, default=3.0, help="event-time cap of a run")
    ap.add_argument(
        "--max-hours-limit",
        type=float,
        default=2.0,
        help="cap for the at/under-limit scenarios (their engine runs mostly hold at 1%% until the cap)",
    )
    ap.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        help="raw .jsonl of another run (e.g. an engine-only run on the same seeds): its rows are used "
        "for the tasks they match (judge, scenario, seed, rps, cap); repeatable",
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--policy", default=None, help="policy file for the engine (default: the built-in policy)")
    ap.add_argument("--shared-noise", type=float, default=0.0,
                    help="part of the run-to-run noise shared by both arms (0: independent arms)")
    ap.add_argument("--judges", default=",".join(DEFAULT_JUDGES), help=f"comma list of {', '.join(JUDGES)}")
    ap.add_argument("--scenarios", default="", help="comma list of scenario keys (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="default results/gate_quality.json (--quick: results/quick.json)")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in the raw .jsonl next to --out (same settings) and run the rest",
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 4 A/A and 1 run per scenario, 2 h cap")
    args = ap.parse_args(argv)
    global POLICY, SHARED_NOISE
    POLICY, SHARED_NOISE = args.policy, args.shared_noise
    if args.quick:
        args.runs_aa, args.runs_reg, args.max_hours, args.max_hours_limit = 4, 1, 2.0, 2.0
    if args.out is None:
        args.out = Path("benchmarks/results") / ("quick.json" if args.quick else "gate_quality.json")
    judges = [j.strip() for j in args.judges.split(",") if j.strip()]
    bad = [j for j in judges if j not in JUDGES]
    if bad:
        ap.error(f"unknown judge(s) {bad}; known: {', '.join(JUDGES)}")
    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()] or [s.key for s in SCENARIOS]
    if any(k not in BY_KEY for k in keys):
        ap.error(f"unknown scenario; known: {', '.join(BY_KEY)}")
    lim_h = args.max_hours if args.max_hours_limit is None else args.max_hours_limit
    cap = {s.key: (lim_h if s.kind == "threshold" else args.max_hours) * 3600 for s in SCENARIOS}
    tasks = []
    for key in keys:
        n = args.runs_aa if BY_KEY[key].kind == "aa" else args.runs_reg
        for i in range(n):
            for j in judges:
                tasks.append((j, key, args.seed0 + i, args.rps, cap[key]))
    # longest first: engine at-limit and error runs often go to the cap
    tasks.sort(key=lambda t: -(_COST[t[0]] * (3 if BY_KEY[t[1]].kind == "threshold" else 1)))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw_path = args.out.with_name(args.out.stem + "_runs.jsonl")
    rows: list[dict[str, Any]] = []
    merged: dict[str, Any] = {}
    sources = ([raw_path] if args.resume and raw_path.exists() else []) + list(args.merge)
    if sources:
        wanted = {(t[0], t[1], t[2]): t for t in tasks}
        for src in sources:
            kept = 0
            for line in src.read_text().splitlines():
                r = json.loads(line)
                t = wanted.get((r["judge"], r["scenario"], r["seed"]))
                if (t is None or r.get("rps", args.rps) != args.rps or r.get("max_seconds", t[4]) != t[4]
                        or r.get("policy") != POLICY or r.get("shared_noise", 0.0) != SHARED_NOISE):
                    continue
                rows.append(r)
                del wanted[(r["judge"], r["scenario"], r["seed"])]
                kept += 1
            if src != raw_path:
                side = src.with_name(src.name.removesuffix("_runs.jsonl") + ".json")
                prov = json.loads(side.read_text()).get("provenance") if side.exists() else None
                merged[str(src)] = {"runs_used": kept, "provenance": prov}
            print(f"{src}: {kept} runs reused")
        tasks = [t for t in tasks if (t[0], t[1], t[2]) in wanted]
        print(f"{len(rows)} runs reused, {len(tasks)} to run")
    t0 = time.perf_counter()
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn())  # fmt: skip
    with Progress(*cols) as prog, raw_path.open("w") as raw, mp.get_context("fork").Pool(args.jobs) as pool:
        bar = prog.add_task("gate quality", total=len(tasks))
        for r in rows:  # reused runs first, so the raw file always holds the whole result
            raw.write(json.dumps(r) + "\n")
        for r in pool.imap_unordered(one_run, tasks, chunksize=1):
            rows.append(r)
            raw.write(json.dumps(r) + "\n")
            raw.flush()
            halts = sum(1 for x in rows if x["outcome"] == "halt")
            prog.update(bar, advance=1, description=f"gate quality ({halts} halts)")
    wall = time.perf_counter() - t0

    res: dict[str, dict[str, Any]] = {}
    for j in judges:
        res[j] = {}
        for key in keys:
            sel = [r for r in rows if r["judge"] == j and r["scenario"] == key]
            if sel:
                res[j][key] = summarize(sel)
    comp = compare(res)
    cmd = "python -m benchmarks.gate_quality " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = {
        "command": cmd.strip(),
        "config": {
            "runs_aa": args.runs_aa, "runs_reg": args.runs_reg, "seed0": args.seed0, "rps": args.rps,
            "noise": 0.15, "shared_noise": SHARED_NOISE, "policy": POLICY,
            "max_hours": args.max_hours, "max_hours_limit_scenarios": lim_h, "jobs": args.jobs,
            "judges": judges,
            "quick": args.quick,
        },
        "provenance": provenance(),
        "merged_runs_from": merged,
        "wall_seconds": round(wall, 1),
        "scenarios": {s.key: {"kind": s.kind, "inject": list(s.specs), "gate": s.gate, "note": s.note}
                      for s in SCENARIOS if s.key in keys},
        "results": res,
        "engine_vs_kayenta": comp,
        "engine_targets": targets(res, comp),
        "raw_runs": str(raw_path),
    }  # fmt: skip
    args.out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    md = markdown(summary)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wall {wall / 60:.1f} min; summary {args.out}; raw {raw_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
