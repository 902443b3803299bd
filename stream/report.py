"""Human output of a simulated run: a table per stage and a PNG of the weight and every gate's
bounds over time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from gates.decision import Decision, GateResult
from gates.policy import RolloutPolicy
from gates.sim import RunResult, SimConfig

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
        latest = r.decisions[-1] if r.decisions else None
        console.print(f"[yellow]No verdict within {cfg.max_seconds / 3600:g} h[/]: still at "
                      f"{r.stages[-1].stage if r.stages else 'start'}."
                      + (f" Last decision: {latest.action}: {latest.reason}" if latest else ""))  # fmt: skip


# The panels of the plot: the four ratio gates, then output length's mean (a ratio, with its P99
# ratio) and its shape, a Kolmogorov-Smirnov distance between the arms' length distributions: 0 for
# the same shape, at most 1. A distance is not a ratio and gets its own axis.
RATIO_PANELS = {
    "latency": "P99 latency",
    "cost": "cost per request",
    "errors": "error + refusal rate",
    "feedback": "negative-feedback rate",
    "output_length": "mean output length",
}
SHAPE_PANEL = "output_length shape"
History = Sequence[tuple[float, float, Sequence[GateResult]]]


def _f(x: Any) -> float:
    """A plottable number: None and infinite bounds (no evidence yet) become gaps."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return math.nan
    return float(x)


def gate_series(history: History, start_ts: float) -> dict[str, dict[str, list[float]]]:
    """Per panel: minutes, value, lower and upper bound, limit (and P99 for the mean panel)."""
    out: dict[str, dict[str, list[float]]] = {}

    def add(panel: str, t: float, value: Any, lower: Any, upper: Any, limit: Any, **more: Any) -> None:
        s = out.setdefault(panel, {"t": [], "value": [], "lower": [], "upper": [], "limit": []})
        for key, v in (("t", t), ("value", value), ("lower", lower), ("upper", upper), ("limit", limit), *more.items()):
            s.setdefault(key, []).append(_f(v))

    for ts, _, gates in history:
        t = (ts - start_ts) / 60
        for g in gates:
            if g.name != "output_length":
                if g.name in RATIO_PANELS:
                    add(g.name, t, g.ratio, g.lower, g.upper, g.threshold)
                continue
            mean, p99, shape = (g.details.get(k) or {} for k in ("mean", "p99", "shape"))
            add("output_length", t, mean.get("ratio"), mean.get("lower"), mean.get("upper"), mean.get("limit"),
                p99=p99.get("ratio"), p99_limit=p99.get("limit"))  # fmt: skip
            # the gate's own bounds are the shape's when the shape check decided its result
            own = g.threshold == shape.get("limit") and g.observed == shape.get("ks_distance")
            add(SHAPE_PANEL, t, shape.get("ks_distance"), shape.get("lower"), g.upper if own else None,
                shape.get("limit"))  # fmt: skip
    return out


def _fired_panel(d: Decision) -> str | None:
    """The panel of the check that fired a halt: the breached gate's, and for output length the
    shape panel when its shape check breached."""
    for g in d.gates:
        if g.status == "breach":
            if g.name == "output_length":
                shape = g.details.get("shape") or {}
                mean = g.details.get("mean") or {}
                p99 = g.details.get("p99") or {}
                if shape.get("status") == "breach" and "breach" not in (mean.get("status"), p99.get("status")):
                    return SHAPE_PANEL
            return g.name
    return None


def _halt_label(d: Decision) -> str:
    breached = [g for g in d.gates if g.status == "breach"]
    if not breached:
        return f"halt ({d.trigger})"
    g = breached[0]
    panel = _fired_panel(d)
    if panel == SHAPE_PANEL:
        shape = g.details.get("shape") or {}
        return f"halt: output_length gate (shape: KS distance {_f(shape.get('ks_distance')):.3f} > {shape.get('limit')})"
    if g.ratio is None:
        return f"halt: {g.name} gate"
    return f"halt: {g.name} gate ({g.ratio:.2f}x, limit {g.threshold:g}x)"


def plot_figure(
    r: RunResult, *, history: History | None = None, start_ts: float | None = None, title: str = "",
    policy: RolloutPolicy | None = None,
) -> Figure:
    """The run as a figure: canary weight, then one panel per gate with its ratio (output length's
    shape: its KS distance), the confidence bounds around it, its limit, and the halt line naming
    the gate that fired.

    ``history``: (event time, weight, gate results) over the run, e.g. from ``RecordingJudge``;
    without it, the decisions' gates. ``start_ts``: the event time of minute 0."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    if start_ts is None:
        start_ts = r.decisions[0].ts - r.timeline[0][0] if r.decisions and r.timeline else 0.0
    if history is None:
        history = [(d.ts, d.weight, d.gates) for d in r.decisions]
    halt_conf = f"{1 - policy.false_halt_budget:.0%}" if policy is not None else "halt confidence"
    promote_conf = f"{1 - policy.promote_risk:.0%}" if policy is not None else "promote confidence"

    fig = Figure(figsize=(12, 11), constrained_layout=True)
    grid = fig.add_gridspec(4, 2, height_ratios=[1.1, 1, 1, 1])
    ax_w = fig.add_subplot(grid[0, :])
    panels: dict[str, Axes] = {}
    for i, name in enumerate([*RATIO_PANELS, SHAPE_PANEL]):
        panels[name] = fig.add_subplot(grid[1 + i // 2, i % 2], sharex=ax_w)

    xs, ws = [0.0], [0.0]
    for t, w, _ in r.timeline:
        if w != ws[-1]:
            xs += [t / 60, t / 60]
            ws += [ws[-1], w]
    xs.append(r.duration_s / 60)
    ws.append(ws[-1])
    ax_w.plot(xs, ws, color="tab:blue", lw=2, label="canary weight")
    ax_w.set_ylabel("canary weight (%)")
    ax_w.set_ylim(-3, 103)
    ax_w.grid(alpha=0.3)
    ax_w.set_title(title or "rollout")

    series = gate_series(history, start_ts)
    band = f"bounds: lower at {halt_conf}, upper at {promote_conf}"
    for name, ax in panels.items():
        s = series.get(name)
        ax.grid(alpha=0.3)
        if name == SHAPE_PANEL:
            ax.set_title("output_length: shape (KS distance)", fontsize=10)
            ax.set_ylabel("KS distance (0 = same shape)")
        else:
            ax.set_title(f"{name}: {RATIO_PANELS[name]} ratio", fontsize=10)
            ax.set_ylabel("canary / baseline")
            ax.axhline(1.0, color="grey", lw=0.8)
        if not s:
            ax.text(0.5, 0.5, "no results", transform=ax.transAxes, ha="center", color="grey")
            continue
        minutes = s["t"]
        value_label = "KS distance" if name == SHAPE_PANEL else "ratio"
        if sum(not math.isnan(v) for v in s["upper"]) >= 2:
            ax.fill_between(minutes, s["lower"], s["upper"], color="tab:blue", alpha=0.2, lw=0, label=band)
        ax.plot(minutes, s["value"], color="tab:blue", lw=1.6, label=value_label)
        if name == SHAPE_PANEL:
            # the upper bound is known only where the shape check decided the gate's result
            # (a breach is the lower bound above the limit)
            ax.plot(minutes, s["lower"], color="tab:blue", lw=1.2, ls="--", label=f"lower bound at {halt_conf}")
        limits = [v for v in s["limit"] if not math.isnan(v)]
        limit = limits[-1] if limits else math.nan
        tops = [v for v in s["value"] if not math.isnan(v)] + [limit]
        if name == SHAPE_PANEL:
            ax.axhline(limit, color="tab:red", ls=":", lw=1.2, label=f"limit {limit:g}")
            ax.set_ylim(0, min(1.0, max(tops) * 1.3 if tops else 1.0))
        else:
            ax.axhline(limit, color="tab:red", ls=":", lw=1.2, label=f"limit {limit:g}x")
            if name == "output_length":
                # two-sided: too short is a breach as well
                ax.axhline(1 / limit, color="tab:red", ls=":", lw=1.2)
                ax.plot(minutes, s["p99"], color="tab:purple", lw=1, ls="--", label="P99 ratio")
            ax.set_ylim(0, max(limit * 1.4, max(tops) * 1.2))
        ax.legend(loc="upper left", fontsize=7)
    for ax in (panels["feedback"], panels[SHAPE_PANEL]):
        ax.set_xlabel("minutes (event time)")

    for d in r.decisions:
        if d.action != "halt":
            continue
        x = (d.ts - start_ts) / 60
        label = _halt_label(d)
        ax_w.axvline(x, color="tab:red", ls="--")
        ax_w.annotate(label, (x, 50), xytext=(-6, 0), textcoords="offset points", ha="right", color="tab:red",
                      fontweight="bold")  # fmt: skip
        fired = _fired_panel(d)
        for name, ax in panels.items():
            ax.axvline(x, color="tab:red", ls="--", lw=0.8 if name != fired else 1.6)
            if name == fired:
                ax.set_title(ax.get_title() + " - fired the halt", fontsize=10, color="tab:red", fontweight="bold")
    return fig


def write_plot(
    r: RunResult, path: Path, *, title: str = "", history: History | None = None, start_ts: float | None = None,
    policy: RolloutPolicy | None = None,
) -> None:
    fig = plot_figure(r, history=history, start_ts=start_ts, title=title, policy=policy)
    fig.savefig(path, dpi=100)
