"""The simulate plot, read from the matplotlib figure's artists and texts (not its pixels): the halt
line names the gate that fired, every gate shows its ratio inside its confidence bounds with its
limit, and output length's shape is drawn as a KS distance on an axis of its own."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection

from gates.engine import Engine
from gates.policy import PolicySet
from gates.sim import RunResult, SimConfig, parse_injections, run
from stream.offline import RecordingJudge
from stream.report import RATIO_PANELS, SHAPE_PANEL, gate_series, plot_figure, write_plot

CFG = SimConfig(seed=0)


@cache
def _run(inject: str) -> tuple[RunResult, RecordingJudge]:
    judge = RecordingJudge(Engine(PolicySet()))
    return run(judge, CFG, parse_injections([inject])), judge


def _figure(inject: str):  # type: ignore[no-untyped-def]
    r, judge = _run(inject)
    fig = plot_figure(r, history=judge.history, start_ts=CFG.start_ts, title=inject,
                      policy=PolicySet().for_rollout(CFG.rollout_id))  # fmt: skip
    weight_ax, *gate_axes = fig.axes
    return r, judge, fig, weight_ax, dict(zip([*RATIO_PANELS, SHAPE_PANEL], gate_axes, strict=True))


def _texts(ax) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.get_text() for t in ax.texts]


def _vlines(ax) -> list[float]:  # type: ignore[no-untyped-def]
    return [float(ln.get_xdata()[0]) for ln in ax.get_lines() if len(set(ln.get_xdata())) == 1 and ln.get_ls() == "--"]


def _hlines(ax) -> list[float]:  # type: ignore[no-untyped-def]
    return [float(ln.get_ydata()[0]) for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1 and len(ln.get_ydata()) == 2
            and ln.get_color() == "tab:red"]  # fmt: skip


def test_the_halt_line_names_the_gate_that_fired() -> None:
    r, _, _, weight_ax, panels = _figure("cost=+25%")
    assert r.outcome == "halt" and r.halted_gate == "cost"
    halt = r.decisions[-1]
    minute = (halt.ts - CFG.start_ts) / 60
    cost = next(g for g in halt.gates if g.name == "cost")
    assert _texts(weight_ax) == [f"halt: cost gate ({cost.ratio:.2f}x, limit 1.2x)"]
    assert _vlines(weight_ax) == [pytest.approx(minute)]
    # the halt line crosses every panel; the cost panel says it fired
    for name, ax in panels.items():
        assert _vlines(ax) == [pytest.approx(minute)], name
        assert ("fired the halt" in ax.get_title()) == (name == "cost"), name


def test_each_ratio_gate_shows_its_ratio_inside_its_bounds_and_its_limit() -> None:
    r, judge, _, _, panels = _figure("cost=+25%")
    series = gate_series(judge.history, CFG.start_ts)
    halt = r.decisions[-1]
    for name in RATIO_PANELS:
        ax = panels[name]
        assert "ratio" in ax.get_title() and ax.get_ylabel() == "canary / baseline"
        s = series[name]
        (ratio_line,) = [ln for ln in ax.get_lines() if ln.get_label() == "ratio"]
        assert list(ratio_line.get_xdata()) == s["t"]
        assert [v for v in ratio_line.get_ydata() if not math.isnan(v)] == [v for v in s["value"] if not math.isnan(v)]
        # the confidence band: one filled area from the lower to the upper bound
        (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert band.get_label().startswith("bounds: lower at 95%, upper at 80%")
        ys = [y for path in band.get_paths() for _, y in path.vertices]
        uppers = [u for u in s["upper"] if not math.isnan(u)]
        lowers = [lo for lo, u in zip(s["lower"], s["upper"], strict=True) if not math.isnan(lo) and not math.isnan(u)]
        assert uppers and max(ys) == pytest.approx(max(uppers)) and min(ys) == pytest.approx(min(lowers))
        # the limit line: the gate's threshold (output length: its mean band, both sides)
        gate = next(g for g in halt.gates if g.name == name)
        limit = gate.details["mean"]["limit"] if name == "output_length" else gate.threshold
        expected = [limit, 1 / limit] if name == "output_length" else [limit]
        assert _hlines(ax) == pytest.approx(expected), name
    # the halting gate's last bounds are the decision's own numbers
    cost = next(g for g in halt.gates if g.name == "cost")
    assert series["cost"]["lower"][-1] == cost.lower and series["cost"]["upper"][-1] == cost.upper
    # why it halted, visible in the band (the bounds are rounded to 4 digits: at least the limit)
    assert cost.lower is not None and cost.lower >= cost.threshold


def test_the_shape_is_drawn_as_a_distance_not_a_ratio() -> None:
    r, judge, _, weight_ax, panels = _figure("shape=0.6")
    assert r.halted_gate == "output_length"
    ax = panels[SHAPE_PANEL]
    assert "distance" in ax.get_ylabel().lower() and "ratio" not in ax.get_ylabel().lower()
    assert "KS distance" in ax.get_title() and "ratio" not in ax.get_title()
    assert "fired the halt" in ax.get_title()
    assert "fired the halt" not in panels["output_length"].get_title()
    (text,) = _texts(weight_ax)
    assert text.startswith("halt: output_length gate (shape: KS distance ") and text.endswith(" > 0.12)")
    # the distances drawn are the shape check's, never plotted on a ratio axis
    distances = [g.details["shape"]["ks_distance"] for _, _, gates in judge.history for g in gates
                 if g.name == "output_length"]  # fmt: skip
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "KS distance"]
    assert list(line.get_ydata()) == pytest.approx(distances)
    assert _hlines(ax) == [0.12]
    mean_panel = panels["output_length"]
    for ln in mean_panel.get_lines():
        if ln.get_label() == "ratio":
            assert list(ln.get_ydata()) != pytest.approx(distances)
    # the halt came from the lower bound above the limit: drawn as such
    (lower,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("lower bound at 95%")]
    assert lower.get_ydata()[-1] > 0.12


def test_without_history_the_decisions_are_plotted(tmp_path: Path) -> None:
    r, _ = _run("cost=+25%")
    fig = plot_figure(r)
    assert next(t.get_text() for t in fig.axes[0].texts).startswith("halt: cost gate")
    png = tmp_path / "run.png"
    write_plot(r, png, history=_run("cost=+25%")[1].history, start_ts=CFG.start_ts)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recording_judge_only_forwards() -> None:
    r, judge = _run("cost=+25%")
    plain = run(Engine(PolicySet()), CFG, parse_injections(["cost=+25%"]))
    assert [d.to_json() for d in plain.decisions] == [d.to_json() for d in r.decisions]
    times = [t for t, _, _ in judge.history]
    assert times == sorted(times) and len(times) > 10
