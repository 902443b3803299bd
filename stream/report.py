"""Human output of a simulated run: a table per stage and a PNG of weight and gate ratios."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gates.sim import RunResult, SimConfig

GATES = ("latency", "cost", "errors", "output_length", "feedback")
STYLE = {"pass": "green", "breach": "bold red", "insufficient": "yellow"}


def print_run(console: Console, r: RunResult, cfg: SimConfig) -> None:
    t = Table(title="Stages", title_justify="left")
    t.add_column("stage")
    t.add_column("weight", justify="right")
    t.add_column("minutes", justify="right")
    t.add_column("canary / baseline", justify="right")
    for g in GATES:
        t.add_column(g, justify="right")
    t.add_column("decision")
    for s in r.stages:
        by_name = {str(g["name"]): g for g in s.gates}
        cells = []
        for g in GATES:
            res = by_name.get(g)
            if res is None:
                cells.append("-")
                continue
            ratio = res.get("ratio")
            st = str(res.get("status"))
            txt = f"{ratio:.2f}x {st}" if isinstance(ratio, int | float) else st
            cells.append(f"[{STYLE.get(st, '')}]{txt}[/]")
        samples = " / ".join(f"{v:,}" for v in s.samples.values()) if s.samples else "-"
        minutes = (s.end - s.start) / 60 if not math.isnan(s.end) else math.nan
        t.add_row(s.stage, f"{s.weight:g}%", f"{minutes:.1f}", samples, *cells, s.action or "(running)")
    console.print(t)
    if r.outcome == "halt":
        last = r.decisions[-1]
        console.print(f"[bold red]HALTED at {r.halted_stage}[/] by the [bold]{r.halted_gate}[/] gate after "
                      f"{r.duration_s / 60:.1f} min and {r.canary_requests_to_halt:,} canary requests; rolled back "
                      f"to the baseline ({last.baseline_digest}).")  # fmt: skip
        console.print(f"why: {last.reason}")
    elif r.outcome == "complete":
        console.print(f"[bold green]COMPLETE[/]: the canary reached 100% after {r.duration_s / 60:.1f} min "
                      f"({r.canary_requests:,} canary requests).")  # fmt: skip
    else:
        last = r.decisions[-1] if r.decisions else None
        console.print(f"[yellow]No verdict within {cfg.max_seconds / 3600:g} h[/]: still at "
                      f"{r.stages[-1].stage if r.stages else 'start'}."
                      + (f" Last decision: {last.action}: {last.reason}" if last else ""))  # fmt: skip


def write_plot(r: RunResult, path: Path, *, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_w, ax_r) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, constrained_layout=True)
    xs = [0.0]
    ws = [0.0]
    for t, w, _ in r.timeline:
        if w != ws[-1]:
            xs += [t / 60, t / 60]
            ws += [ws[-1], w]
    xs.append(r.duration_s / 60)
    ws.append(ws[-1])
    ax_w.plot(xs, ws, color="tab:blue", lw=2, drawstyle="default")
    ax_w.set_ylabel("canary weight (%)")
    ax_w.set_ylim(-3, 103)
    ax_w.grid(alpha=0.3)
    for d in r.decisions:
        if d.action == "halt":
            ax_w.axvline((d.ts - r.decisions[0].ts) / 60, color="tab:red", ls="--")
            ax_w.annotate("halt", ((d.ts - r.decisions[0].ts) / 60, 50), color="tab:red")
    limits = {}
    for d in r.decisions:
        for g in d.gates:
            limits[g.name] = g.threshold
    for name in GATES:
        pts = [(t / 60, ratios[name]) for t, _, ratios in r.timeline if name in ratios and not math.isnan(ratios[name])]
        if pts:
            line = ax_r.plot([p[0] for p in pts], [p[1] for p in pts], label=name)[0]
            if name in limits and name != "output_length":
                ax_r.axhline(limits[name], color=line.get_color(), ls=":", lw=1)
    ax_r.axhline(1.0, color="grey", lw=0.8)
    ax_r.set_ylabel("gate ratio (canary / baseline)")
    ax_r.set_xlabel("minutes (event time)")
    ax_r.grid(alpha=0.3)
    ax_r.legend(loc="upper left", fontsize=8)
    ax_w.set_title(title or "rollout")
    fig.savefig(path, dpi=110)
    plt.close(fig)
