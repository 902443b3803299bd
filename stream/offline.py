"""Offline commands: ``replay`` a log, ``simulate`` a rollout, ``plan`` a runbook. No broker needed."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import IO

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from stream.cli import app
from stream.settings import DEFAULT_MAX_LIVE_ROLLOUTS

err = Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one plain error line (no markup: messages quote user input) and return the exit."""
    err.print(f"rollout-gate: {message}", style="red", markup=False)
    return typer.Exit(code)

POLICY_HELP = "policy YAML (defaults: the rollout lesson's numbers)"


def _policy(path: Path | None):  # type: ignore[no-untyped-def]
    from gates.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        raise fail(f"{exc}") from None


def replay_stream(src: IO[bytes], out: IO[bytes], policy, *, size: int | None = None, chunk_lines: int = 16384,  # type: ignore[no-untyped-def]
                  max_live_rollouts: int | None = None, rejected: IO[bytes] | None = None):
    """Fold a JSONL event log through the engine; write decision JSONL to ``out`` (and each
    rejection as a JSON line to ``rejected``). One line is read as the worker reads one message,
    the live-rollout cap included.

    Returns (events, rejections by reason, decisions by action)."""
    import orjson

    from gates import admission
    from gates.engine import Engine
    from gates.events import decode_lines, split_rejections

    engine = Engine(policy)
    rejections: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    n_events = 0
    show = size is not None and size > 8 * 1024 * 1024 and err.is_terminal
    progress = Progress(
        TextColumn("replay"), BarColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=err,
        transient=True, disable=not show,
    )  # fmt: skip
    task = progress.add_task("replay", total=size)
    write = out.write
    with progress:
        while True:
            lines = src.readlines(chunk_lines * 256)
            if not lines:
                break
            good, bad = split_rejections(decode_lines(lines))
            cap = max_live_rollouts
            if cap is not None and good and engine.live_rollouts() + len(admission.new_rollouts(engine, good)) > cap:
                # the cap may refuse some: line by line, exactly as the worker admits message by message
                folded: list = []  # type: ignore[type-arg]
                bad = []
                for line in lines:
                    g, b = split_rejections(decode_lines([line]))
                    g, refused = admission.admit(engine, g, cap, raw=line.rstrip(b"\r\n"))
                    bad.extend(b)
                    bad.extend(refused)
                    n_events += len(g)
                    folded.extend(engine.ingest(g))
                decisions = folded
            else:
                n_events += len(good)
                decisions = engine.ingest(good)
            for r in bad:
                rejections[r.reason] += 1
                if rejected is not None:
                    rejected.write(orjson.dumps({"reason": r.reason, "rollout_id": r.rollout_id}) + b"\n")
            for dec in decisions:
                actions[dec.action] += 1
                write(dec.to_json() + b"\n")
            if show:
                progress.update(task, advance=sum(len(x) for x in lines))
    return n_events, rejections, actions


@app.command()
def replay(
    events: str = typer.Argument(..., help="JSONL event log, or - for standard input"),
    policy: Path | None = typer.Option(None, "--policy", "-p", help=POLICY_HELP),
    max_live_rollouts: int = typer.Option(DEFAULT_MAX_LIVE_ROLLOUTS, "--max-live-rollouts", min=1,
                                          envvar="ROLLOUT_GATE_MAX_LIVE_ROLLOUTS",
                                          help="the worker's cap on live rollouts (the same setting)"),
    rejections_out: Path | None = typer.Option(None, "--rejections", help="write each rejected event's reason "
                                               "as a JSON line here"),
) -> None:
    """Fold an event log through the gate engine: decisions as JSONL on stdout, a summary on stderr.

    The same input always gives the same output, and the same decisions as the live worker. Exits 1
    when the log holds no valid event."""
    pol = _policy(policy)
    if events == "-":
        src: IO[bytes] = sys.stdin.buffer
        size = None
    else:
        p = Path(events)
        if not p.is_file():
            raise fail(f"{p}: no such file")
        src = p.open("rb")
        size = p.stat().st_size
    rejected = rejections_out.open("wb") if rejections_out is not None else None
    try:
        n, rejections, actions = replay_stream(src, sys.stdout.buffer, pol, size=size,
                                               max_live_rollouts=max_live_rollouts, rejected=rejected)
    finally:
        if src is not sys.stdin.buffer:
            src.close()
        if rejected is not None:
            rejected.close()
    sys.stdout.buffer.flush()
    rej = sum(rejections.values())
    err.print(f"events: {n:,}  rejected: {rej:,}  decisions: {sum(actions.values()):,} "
              + " ".join(f"{a}={c}" for a, c in sorted(actions.items())))  # fmt: skip
    for reason, c in rejections.most_common(10):
        err.print(f"  rejected {c:,}: {reason}")
    if len(rejections) > 10:
        err.print(f"  ... and {len(rejections) - 10} more reasons")
    if n == 0:
        # Nothing to judge: a wrong file, a truncated export, or another format. Say so, and exit
        # non-zero so that a pipeline does not take "no decisions" for "all is well".
        where = "standard input" if events == "-" else events
        what = f"all {rej:,} events were rejected" if rej else "it is empty"
        raise fail(f"{where}: no valid event ({what}); expected JSONL, one event of the contract "
                   "(docs/event-contract.md) per line", code=1)  # fmt: skip


@app.command()
def simulate(
    inject: list[str] = typer.Option([], "--inject", "-i", help="candidate regression, e.g. cost=+25%, refusal=x3, "
                                     "latency=x2 (P99), median=x1.5, errors=x6, length=+40%, shape=0.6, feedback=x2, "
                                     "onset=10 (minutes)"),
    noise: float = typer.Option(0.15, help="run-to-run non-determinism: each arm's levels vary by up to this"),
    rps: float = typer.Option(100.0, help="requests per second over both arms"),
    seed: int = typer.Option(0, help="random seed (same seed, same run)"),
    shadow: bool = typer.Option(False, "--shadow", help="start with a shadow stage"),
    hours: float = typer.Option(6.0, help="give up after this much simulated time"),
    plot: Path | None = typer.Option(None, "--plot", help="write a PNG of weight and gate ratios over time"),
    policy: Path | None = typer.Option(None, "--policy", "-p", help=POLICY_HELP),
    decisions_out: Path | None = typer.Option(None, "--decisions", help="also write the decisions as JSONL"),
    events_out: Path | None = typer.Option(None, "--events", help="also write the simulated event log as JSONL "
                                           "(the contract's events, as `replay` reads them)"),
) -> None:
    """The rollout lesson's canary simulator, on the real engine, in a closed loop.

    With --events, `rollout-gate replay` of that file gives the same decisions as the simulation
    (it prints the command, with the policy to pass)."""
    from gates.engine import Engine
    from gates.sim import SimConfig, parse_injections, run
    from stream.report import print_run, write_plot

    if rps <= 0 or not 0 <= noise < 1 or hours <= 0:
        raise fail("--rps and --hours must be > 0 and --noise in [0, 1)")
    try:
        inj = parse_injections(inject)
    except ValueError as exc:
        raise fail(f"--inject: {exc}") from None
    pol = _policy(policy)
    if shadow:
        from gates.policy import PolicySet

        pol = PolicySet.model_validate({**pol.model_dump(), "defaults": {**pol.defaults.model_dump(),
                                        "shadow": {**pol.defaults.shadow.model_dump(), "enabled": True}}})  # fmt: skip
    cfg = SimConfig(rps=rps, seed=seed, noise=noise, max_seconds=hours * 3600, shadow=shadow)
    replay_policy = policy
    if events_out is not None and shadow:
        # --shadow changed the policy: replay needs that policy, so it goes next to the events
        replay_policy = events_out.with_name(events_out.stem + ".policy.yaml")
        if replay_policy == events_out:
            raise fail(f"--events {events_out}: name the event log *.jsonl")
    console = Console() if sys.stdout.isatty() else Console(width=150)
    console.print(f"Simulating a rollout at {rps:g} req/s, noise ±{noise:.0%}, seed {seed}; candidate change: "
                  f"[bold]{inj.describe()}[/bold]")  # fmt: skip
    with Progress(TextColumn("simulated time"), BarColumn(), TextColumn("{task.fields[t]}"), console=err,
                  transient=True) as prog:  # fmt: skip
        task = prog.add_task("sim", total=cfg.max_seconds, t="")
        last = [0.0]

        def tick(t: float) -> None:
            if t - last[0] >= 60:
                prog.update(task, completed=t, t=f"{t / 60:.0f} min")
                last[0] = t

        try:
            log = events_out.open("wb") if events_out is not None else None
        except OSError as exc:
            raise fail(f"--events {events_out}: {exc.strerror or exc}") from None
        try:
            judge = RecordingJudge(Engine(pol), log)
            result = run(judge, cfg, inj, progress=tick)
        finally:
            if log is not None:
                log.close()
    print_run(console, result, cfg)
    if decisions_out is not None:
        with decisions_out.open("wb") as f:
            for d in result.decisions:
                f.write(d.to_json() + b"\n")
    if events_out is not None:
        if shadow and replay_policy is not None:
            import yaml

            replay_policy.write_text(yaml.safe_dump(pol.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        hint = f" --policy {replay_policy}" if replay_policy is not None else ""
        console.print(f"{judge.events_written:,} events written to {events_out}; replay them to the same "
                      f"decisions with:\n  rollout-gate replay {events_out}{hint}", markup=False, highlight=False,
                      soft_wrap=True)  # fmt: skip
    if plot is not None:
        write_plot(result, plot, title=f"candidate change: {inj.describe()}", history=judge.history,
                   start_ts=cfg.start_ts, policy=pol.for_rollout(cfg.rollout_id))  # fmt: skip
        console.print(f"plot written to {plot}")


class RecordingJudge:
    """The engine as the simulator's judge, keeping what `simulate` reports besides decisions: the
    events it was fed (written as contract JSONL to ``log``, for `replay`) and each gate's result
    over time (from the simulator's status looks and from every decision, for the plot).

    It only forwards: the engine sees the same calls as without it, so the decisions are the same."""

    def __init__(self, engine, log: IO[bytes] | None = None) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.log = log
        self.events_written = 0
        # (event time, canary weight, the gates' results), in event-time order
        self.history: list[tuple[float, float, list]] = []  # type: ignore[type-arg]

    def ingest(self, events):  # type: ignore[no-untyped-def]
        from gates.events import encode_event

        if self.log is not None and events:
            self.log.write(b"\n".join(map(encode_event, events)) + b"\n")
            self.events_written += len(events)
        decisions = self.engine.ingest(events)
        for d in decisions:
            self.history.append((d.ts, d.weight, list(d.gates)))
        return decisions

    def status(self, rollout_id: str):  # type: ignore[no-untyped-def]
        st = self.engine.status(rollout_id)
        # the gates of the latest evaluation tick, at most one tick before the watermark
        last = self.history[-1] if self.history else None
        if st.gates and (last is None or (st.watermark >= last[0] and st.gates != last[2])):
            self.history.append((st.watermark, st.weight, list(st.gates)))
        return st


@app.command()
def plan(
    baseline: str = typer.Option(..., help="the model in production (name or digest)"),
    candidate: str = typer.Option(..., help="the model to roll out"),
    rps: float = typer.Option(..., help="production requests per second"),
    risk: str = typer.Option("medium", help="low | medium | high: how large a regression must be caught"),
    output: Path | None = typer.Option(None, "-o", "--output", help="write the runbook here (default: stdout)"),
    policy: Path | None = typer.Option(None, "--policy", "-p", help=POLICY_HELP),
    rollout_id: str | None = typer.Option(None, help="rollout id (default: derived from the candidate)"),
) -> None:
    """The rollout lesson's runbook: shadow -> canary -> 100%, with step durations from traffic."""
    from stream.runbook import RunbookError, render_runbook

    pol = _policy(policy)
    try:
        text = render_runbook(baseline=baseline, candidate=candidate, rps=rps, risk=risk, policy=pol,
                              rollout_id=rollout_id)  # fmt: skip
    except RunbookError as exc:
        raise fail(f"{exc}") from None
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"runbook written to {output}")


def _quiet_matplotlib() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
