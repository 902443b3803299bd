"""The offline commands as a user runs them: replay, simulate, plan (no broker)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from gates.events import encode_event
from gates.sim import Injection, SimConfig, Traffic
from stream import commands, offline, operator  # noqa: F401  (registers the commands)
from stream.cli import app

CONTRACT_FIELDS = {  # the decision fields of docs/event-contract.md (the original ones)
    "rollout_id", "seq", "ts", "action", "stage", "weight", "previous_weight",
    "baseline_digest", "canary_digest", "gates", "reason",
}  # fmt: skip
GATE_FIELDS = {"name", "status", "observed", "baseline", "ratio", "threshold", "samples"}

runner = CliRunner()


@pytest.fixture(scope="module")
def event_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty minutes of a healthy rollout at 10% canary, plus two bad lines."""
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    cfg = SimConfig(rps=60, seed=11, rollout_id="chat-v7")
    traffic = Traffic(cfg, Injection())
    t = cfg.start_ts
    with path.open("wb") as f:
        for i in range(1200):
            for e in traffic.tick(t, 10.0):
                f.write(encode_event(e) + b"\n")
            if i == 100:
                f.write(b"this is not json\n")
                f.write(b'{"rollout_id": "chat-v7", "arm": "blue"}\n')
            t += 1
    return path


def test_replay_is_deterministic_and_speaks_the_contract(event_log: Path) -> None:
    a = runner.invoke(app, ["replay", str(event_log)])
    b = runner.invoke(app, ["replay", str(event_log)])
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout
    decisions = [orjson.loads(line) for line in a.stdout.splitlines()]
    assert decisions, "a 20-minute healthy log must produce decisions"
    assert [d["seq"] for d in decisions] == list(range(1, len(decisions) + 1))
    for d in decisions:
        assert d.keys() >= CONTRACT_FIELDS
        assert d["reason"]
        for g in d["gates"]:
            assert g.keys() >= GATE_FIELDS
    # the healthy canary is promoted past its first step
    assert any(d["action"] == "promote" and d["previous_weight"] == 1.0 for d in decisions)
    assert "rejected: 2" in a.stderr
    assert "not valid JSON" in a.stderr and "arm must be one of" in a.stderr


def test_replay_reads_stdin(event_log: Path) -> None:
    from_file = runner.invoke(app, ["replay", str(event_log)])
    from_stdin = runner.invoke(app, ["replay", "-"], input=event_log.read_bytes())
    assert from_stdin.exit_code == 0
    assert from_stdin.stdout == from_file.stdout


def test_replay_errors_are_clear(tmp_path: Path, event_log: Path) -> None:
    missing = runner.invoke(app, ["replay", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    bad = tmp_path / "policy.yaml"
    bad.write_text("defaults:\n  gates:\n    cost: {max_ratio: 0.9}\n")
    res = runner.invoke(app, ["replay", str(event_log), "--policy", str(bad)])
    assert res.exit_code == 2
    assert "defaults.gates.cost.max_ratio" in res.stderr


def test_simulate_answers_the_lessons_first_exercise(tmp_path: Path) -> None:
    png = tmp_path / "run.png"
    out = tmp_path / "decisions.jsonl"
    res = runner.invoke(app, ["simulate", "--inject", "cost=+25%", "--seed", "0", "--plot", str(png),
                              "--decisions", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "HALTED at canary-1" in res.stdout
    assert "cost gate" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = json.loads(out.read_text().splitlines()[-1])
    assert last["action"] == "halt" and last["weight"] == 0
    assert [g["name"] for g in last["gates"] if g["status"] == "breach"] == ["cost"]
    assert last["baseline_digest"] == "sha256:baseline0001"


def test_simulate_rejects_bad_injections() -> None:
    res = runner.invoke(app, ["simulate", "--inject", "speed=fast"])
    assert res.exit_code == 2
    assert "--inject" in res.stderr


def test_plan_writes_a_runbook(tmp_path: Path) -> None:
    out = tmp_path / "runbook.md"
    res = runner.invoke(app, ["plan", "--baseline", "chat-v6", "--candidate", "chat-v7", "--rps", "50",
                              "--risk", "low", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    text = out.read_text()
    for step in ("shadow", "canary-1 ", "canary-10 ", "canary-25 ", "canary-50 ", "canary-75 ", "complete"):
        assert step in text
    assert "rollout-gate command rollback chat-v7" in text
    # every alert the runbook names exists in the shipped rules
    import re as _re

    rules = (Path(__file__).resolve().parents[3] / "deploy/prometheus/rules.yml").read_text()
    for name in _re.findall(r"`(Rollout[A-Za-z]+)`", text):
        assert f"alert: {name}" in rules, name
    assert "RolloutShadowCostSpike" in text
    bad = runner.invoke(app, ["plan", "--baseline", "a", "--candidate", "b", "--rps", "50", "--risk", "extreme"])
    assert bad.exit_code == 2 and "--risk" in bad.stderr


def test_plan_steps_get_shorter_with_more_traffic() -> None:
    from gates.policy import PolicySet
    from stream.runbook import GateModel, seconds_to_resolve

    p = PolicySet().defaults
    m = GateModel("cost", 1.2, 0.36, "cost")
    slow = seconds_to_resolve(m, 0.18, 1.0, 10.0, p, 0.2)
    fast = seconds_to_resolve(m, 0.18, 1.0, 1000.0, p, 0.2)
    assert fast < slow


def test_plan_sizes_steps_with_the_bounds_the_engine_decides_on() -> None:
    """Promotions read the promote side (twice the one-sided risk, its own mixture tuning), halts
    the halt side, as in gates.engine; the plan's estimates follow both."""
    from gates.policy import PolicySet
    from stream.runbook import GateModel, halt_bound, promote_bound, seconds_to_resolve

    p = PolicySet().defaults
    assert promote_bound(p) == (min(2 * p.promote_risk, 0.8), p.cs_rho_promote_blocks)
    assert halt_bound(p) == (min(2 * p.false_halt_budget, 0.5), p.cs_rho_blocks)
    assert promote_bound(p.model_copy(update={"cs_rho_promote_blocks": None}))[1] == p.cs_rho_blocks
    m = GateModel("errors", 2.0, 32.3, "errors")
    at_rho = {rho: seconds_to_resolve(m, math.log(2.0), 1.0, 100.0, p, 0.4, rho) for rho in (1.0, 30.0)}
    assert at_rho[1.0] != at_rho[30.0]  # the tuning reaches the estimate


# ---- simulate --events: the run's event log, replayed to the same decisions -----------------------


@pytest.mark.parametrize(
    "args",
    [["--inject", "cost=+25%"], ["--inject", "refusal=x3", "--shadow", "--rps", "60", "--seed", "3"]],
    ids=["cost", "shadow-refusal"],
)
def test_simulate_events_replay_to_byte_identical_decisions(tmp_path: Path, args: list[str]) -> None:
    events, decisions = tmp_path / "run.jsonl", tmp_path / "decisions.jsonl"
    sim = runner.invoke(app, ["simulate", *args, "--events", str(events), "--decisions", str(decisions)])
    assert sim.exit_code == 0, sim.output
    assert "HALTED" in sim.stdout
    sim_decisions = decisions.read_bytes()
    last = orjson.loads(sim_decisions.splitlines()[-1])
    assert last["action"] == "halt"
    # the log is the contract's JSONL: every line one event with its type
    with events.open("rb") as f:
        first = orjson.loads(f.readline())
    assert first["type"] in ("inference", "feedback") and first["rollout_id"] == "sim"
    # simulate prints the replay command, with the policy file --shadow needs
    hint = sim.stdout[sim.stdout.index("rollout-gate replay "):].split()
    replay_args = hint[2:]
    assert replay_args[0] == str(events)
    if "--shadow" in args:
        assert replay_args[1:] == ["--policy", str(tmp_path / "run.policy.yaml")]
        from gates.policy import load_policy

        assert load_policy(tmp_path / "run.policy.yaml").defaults.shadow.enabled
        assert last["previous_weight"] == 0 and "shadow" in last["reason"], "halted in the shadow stage"
    else:
        assert replay_args[1:] == []
        assert last["previous_weight"] == 1
    rep = runner.invoke(app, ["replay", *replay_args])
    assert rep.exit_code == 0, rep.output
    assert rep.stdout_bytes == sim_decisions
    assert "rejected: 0" in rep.stderr


def test_simulate_events_to_an_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["simulate", "--events", str(tmp_path / "no-such-dir" / "run.jsonl")])
    assert res.exit_code == 2
    assert "--events" in res.stderr and "no-such-dir" in res.stderr


@pytest.mark.parametrize(
    ("body", "what"),
    [(b"", "it is empty"), (b"\n\n", "it is empty"),
     (b'not json\n{"rollout_id": "chat-v7", "arm": "blue"}\n', "all 2 events were rejected")],
    ids=["empty", "blank-lines", "all-invalid"],
)  # fmt: skip
def test_replay_without_a_valid_event_fails_clearly(tmp_path: Path, body: bytes, what: str) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(body)
    res = runner.invoke(app, ["replay", str(path)])
    assert res.exit_code == 1
    assert res.stdout == ""
    assert f"{path}: no valid event ({what})" in res.stderr
    from_stdin = runner.invoke(app, ["replay", "-"], input=body)
    assert from_stdin.exit_code == 1 and "standard input: no valid event" in from_stdin.stderr


def test_replay_with_one_valid_event_among_bad_ones_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = encode_event(next(e for e in Traffic(SimConfig(rps=50), Injection()).tick(SimConfig().start_ts, 10.0)))
    path.write_bytes(b"not json\n" + good + b"\n")
    res = runner.invoke(app, ["replay", str(path)])
    assert res.exit_code == 0, res.output
    assert "events: 1  rejected: 1" in res.stderr
