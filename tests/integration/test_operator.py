"""The operator's path end to end: ``rollout-gate command|status|list|history`` against a real
worker on the real broker (a subprocess each, unique topics per test)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import orjson
import pytest

from gates.commands import Command, sign
from tests.integration.conftest import COMMAND_KEY, REPO, Topics
from tests.integration.helpers import decoded, metric_value, of, wait_for
from tests.integration.kafka_io import produce, read_until
from tests.integration.streams import BASELINE, CANARY, generate, messages, recent_start
from tests.integration.workerproc import Worker

pytestmark = pytest.mark.integration


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def cli(worker: Worker, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**worker.env, "ROLLOUT_GATE_WORKER_URLS": f"http://127.0.0.1:{worker.port}"}
    return subprocess.run([sys.executable, "-c", "from stream.cli import main; main()", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def start_rollout(worker: Worker, kafka_bootstrap: str, topics: Topics, rollout_id: str,
                  seconds: float = 8) -> list[dict[str, Any]]:
    """A rollout at canary-1 whose gates have been evaluated (more than min_blocks blocks of events)
    but not promoted (shorter than min_step_seconds)."""
    events = generate(rollout_id, seconds=seconds, arms={"baseline": BASELINE, "canary": CANARY}, seed=3,
                      start=recent_start(600))
    run(produce(kafka_bootstrap, topics.events, messages(events, 50)))

    def evaluated() -> bool:
        code, body = worker.get(f"/rollouts/{rollout_id}")
        return code == 200 and bool(orjson.loads(body)["gates"])

    assert wait_for(evaluated, 60), worker.get(f"/rollouts/{rollout_id}")
    return events


def test_rollback_halts_then_every_command_on_the_halted_rollout_is_refused(
        worker: Worker, topics: Topics, kafka_bootstrap: str) -> None:
    worker.start()
    start_rollout(worker, kafka_bootstrap, topics, "chat-r")
    r = cli(worker, "command", "rollback", "chat-r", "--reason", "thumbs-down up", "--actor", "alice")
    assert r.returncode == 0, r.stderr
    assert f"published rollback for chat-r to {topics.commands}" in r.stdout
    assert '"action":"rollback"' in r.stdout and '"actor":"alice"' in r.stdout
    assert "decision seq 2: halt at rolled-back (weight 1% -> 0%, trigger operator): Rolled back by alice: " \
           "thumbs-down up." in r.stdout, r.stdout
    msgs = run(read_until(kafka_bootstrap, topics.decisions, lambda m: len(m) >= 2, timeout=30))
    assert [d["action"] for d in of("chat-r", decoded(msgs))] == ["promote", "halt"]

    for action in ("pause", "resume", "promote", "rollback"):
        r = cli(worker, "command", action, "chat-r")
        assert r.returncode == 3, (action, r.stdout, r.stderr)
        assert f"{action} refused: rollout chat-r is halted (rolled back, seq 2)" in r.stderr
        assert "published" not in r.stdout
    text = worker.metrics()
    assert metric_value(text, "rollout_gate_command_refusals_total", action="pause", reason="halted") == 1
    assert metric_value(text, "rollout_gate_command_refusals_total", action="promote", reason="halted") == 1
    # the halt shows on the decision counters and the decision-info metric
    assert metric_value(text, "rollout_gate_decisions_total", rollout="chat-r", action="halt") == 1
    assert metric_value(text, "rollout_gate_decisions_total", rollout="chat-r", action="hold") == 0
    assert metric_value(text, "rollout_gate_decision_info", rollout="chat-r", action="halt", trigger="operator",
                        reason="operator rollback") is not None
    assert "decision chat-r seq=2 halt: rolled-back" in worker.log_path.read_text()

    # a restarted worker reads the latest decision back: its reason is in the status and the metric
    worker.stop()
    worker.start()

    def last_known() -> bool:
        code, body = worker.get("/rollouts/chat-r")
        return code == 200 and (orjson.loads(body)["last_decision"] or {}).get("seq") == 2

    assert wait_for(last_known, 30), worker.get("/rollouts/chat-r")
    st = cli(worker, "status", "chat-r")
    assert "Last decision: halt (seq 2, operator)" in st.stdout and "Rolled back by alice: thumbs-down up." in st.stdout
    assert metric_value(worker.metrics(), "rollout_gate_decision_info", rollout="chat-r", action="halt",
                        reason="operator rollback") is not None
    assert cli(worker, "command", "resume", "chat-r").returncode == 3


def test_pause_holds_resume_resumes_and_no_op_commands_are_refused(
        worker: Worker, topics: Topics, kafka_bootstrap: str) -> None:
    worker.start()
    start_rollout(worker, kafka_bootstrap, topics, "chat-p")
    r = cli(worker, "command", "pause", "chat-p", "--reason", "looking at latency", "--actor", "bob")
    assert r.returncode == 0, r.stderr
    assert "published pause for chat-p" in r.stdout
    assert "decision seq 2: hold at canary-1 (weight 1% -> 1%, trigger operator): Paused by bob: looking at " \
           "latency; holding at 1%." in r.stdout, r.stdout

    r = cli(worker, "command", "pause", "chat-p")
    assert r.returncode == 3 and "pause refused: rollout chat-p is already paused at canary-1" in r.stderr
    st = cli(worker, "status", "chat-p")
    assert st.returncode == 0, st.stderr
    assert "Status:        paused (paused by an operator)" in st.stdout
    assert "paused: no promotion until resumed" in st.stdout

    r = cli(worker, "command", "resume", "chat-p", "--actor", "bob")
    assert r.returncode == 0, r.stderr
    assert "published resume for chat-p" in r.stdout
    assert "resumed: chat-p is running at canary-1 (seq 2)" in r.stdout, r.stdout
    r = cli(worker, "command", "resume", "chat-p")
    assert r.returncode == 3 and "resume refused: rollout chat-p is not paused (it runs at canary-1)" in r.stderr
    text = worker.metrics()
    assert metric_value(text, "rollout_gate_command_refusals_total", action="pause", reason="paused") == 1
    assert metric_value(text, "rollout_gate_command_refusals_total", action="resume", reason="not_paused") == 1


def test_promote_steps_up_to_complete_then_refuses(worker: Worker, topics: Topics, kafka_bootstrap: str) -> None:
    worker.start()
    start_rollout(worker, kafka_bootstrap, topics, "chat-u")
    stages = []
    for _ in range(5):
        r = cli(worker, "command", "promote", "chat-u", "--reason", "manual", "--actor", "carol")
        assert r.returncode == 0, r.stderr
        assert "published promote for chat-u" in r.stdout
        line = next(x for x in r.stdout.splitlines() if x.startswith("decision seq"))
        stages.append(line.split(" at ", 1)[1].split(" ", 1)[0])
    assert stages == ["canary-10", "canary-25", "canary-50", "canary-75", "complete"]
    assert "Promoted by carol: manual; canary is at 100%." in r.stdout
    r = cli(worker, "command", "promote", "chat-u")
    assert r.returncode == 3 and "rollout chat-u is complete (canary at 100%, seq 6)" in r.stderr
    h = cli(worker, "history", "chat-u")
    assert h.returncode == 0, h.stderr
    rows = [x.split() for x in h.stdout.splitlines()[1:]]
    assert [(x[0], x[3], x[4]) for x in rows] == [
        ("1", "promote", "canary-1"), ("2", "promote", "canary-10"), ("3", "promote", "canary-25"),
        ("4", "promote", "canary-50"), ("5", "promote", "canary-75"), ("6", "complete", "complete")]
    assert "Rollout started at 1% canary traffic." in h.stdout


def test_unknown_rollout_status_list_and_a_raw_command_that_cannot_apply(
        worker: Worker, topics: Topics, kafka_bootstrap: str) -> None:
    worker.start()
    start_rollout(worker, kafka_bootstrap, topics, "chat-s")
    # a typo'd id: refused, nothing published, no rollout created
    r = cli(worker, "command", "promote", "chat-typo")
    assert r.returncode == 3 and "promote refused: unknown rollout chat-typo" in r.stderr
    assert cli(worker, "status", "chat-typo").returncode == 3

    # live gates between decisions: the last decision (the start) has none, the worker shows five
    st = cli(worker, "status", "chat-s", "--json")
    assert st.returncode == 0, st.stderr
    view = orjson.loads(st.stdout)
    assert view["state"] == "running" and view["stage"] == "canary-1" and view["seq"] == 1
    assert {g["name"] for g in view["gates"]} == {"latency", "cost", "errors", "output_length", "feedback"}
    for g in view["gates"]:
        assert g["threshold"] > 0 and g["samples"]["canary"] > 0, g
    step, needs = view["step"], view["needs"]
    assert step["min_samples"] == 150 and step["min_seconds"] == 10 and step["min_blocks"] == 3
    assert step["tested_samples"] == view["samples"]["canary"] > 0 and step["tested_rps"] > 0
    assert needs["seconds"] == pytest.approx(max(0.0, 10 - step["elapsed_seconds"]))
    assert needs["samples"] == max(0, 150 - step["tested_samples"])
    assert view["eta_seconds"] is not None and view["eta_seconds"] > 0
    text = cli(worker, "status", "chat-s")
    assert text.returncode == 0
    assert "GATE" in text.stdout and "THRESHOLD" in text.stdout and "latency" in text.stdout
    assert "Verdict in:    about" in text.stdout
    ls = cli(worker, "list")
    assert ls.returncode == 0 and "chat-s" in ls.stdout and "canary-1" in ls.stdout

    # a raw producer bypasses the check (signed, so that applicability is what refuses it): the worker
    # dead-letters the command instead of creating a rollout
    raw = sign(Command(rollout_id="chat-ghost", action="promote", ts=1767225600.0, actor="eve"), COMMAND_KEY,
               "ghost-nonce").to_json()
    run(produce(kafka_bootstrap, topics.commands, [(b"chat-ghost", raw)]))
    dlq = run(read_until(kafka_bootstrap, topics.dlq, lambda m: len(m) >= 1, timeout=30))
    assert dlq[0].headers["x-rollout-gate-reason"].startswith(b"command refused: unknown rollout chat-ghost")
    assert worker.get("/rollouts/chat-ghost")[0] == 404
    text = worker.metrics()
    assert metric_value(text, "rollout_gate_command_refusals_total", action="promote", reason="unknown") == 2


def test_without_a_worker_the_command_is_not_checked_and_a_forced_one_times_out_clearly(
        worker: Worker, topics: Topics, kafka_bootstrap: str) -> None:
    # the worker fixture is never started: nothing answers on its port, nothing consumes the commands
    r = cli(worker, "command", "pause", "chat-x")
    assert r.returncode == 1 and "cannot check chat-x: no worker answered" in r.stderr
    assert "published" not in r.stdout
    r = cli(worker, "command", "pause", "chat-x", "--force", "--wait", "3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"published pause for chat-x to {topics.commands} [partition 0, offset 0]" in r.stdout
    assert f"no decision for chat-x on {topics.decisions} within 3s (expected hold)" in r.stderr
    cmds = run(read_until(kafka_bootstrap, topics.commands, lambda m: len(m) >= 1, timeout=10))
    assert orjson.loads(cmds[0].value)["action"] == "pause" and cmds[0].key == b"chat-x"

    async def listed() -> list[str]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()

    # waiting for a decision did not create the decisions topic with the broker's defaults
    assert topics.decisions not in run(listed())
