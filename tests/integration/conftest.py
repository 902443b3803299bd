"""Fixtures for the integration tests: unique topics per test and the worker as a subprocess."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.streams import FAST_POLICY
from tests.integration.workerproc import Worker, free_port

REPO = Path(__file__).resolve().parents[2]
# operator commands to the test workers are signed with this key (gates.commands.sign)
COMMAND_KEY = b"integration-test-command-key"


@dataclass(frozen=True)
class Topics:
    app_id: str
    events: str
    decisions: str
    dlq: str
    commands: str


@pytest.fixture
def topics(unique_id: str) -> Topics:
    return Topics(app_id=unique_id, events=f"{unique_id}.events", decisions=f"{unique_id}.decisions",
                  dlq=f"{unique_id}.dlq", commands=f"{unique_id}.commands")


@pytest.fixture
def fast_policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(FAST_POLICY)
    return p


@pytest.fixture
def worker_env(kafka_bootstrap: str, topics: Topics, fast_policy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_GATE_")}
    env.update({
        "ROLLOUT_GATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "ROLLOUT_GATE_APP_ID": topics.app_id,
        "ROLLOUT_GATE_EVENTS_TOPIC": topics.events,
        "ROLLOUT_GATE_DECISIONS_TOPIC": topics.decisions,
        "ROLLOUT_GATE_DLQ_TOPIC": topics.dlq,
        "ROLLOUT_GATE_COMMANDS_TOPIC": topics.commands,
        "ROLLOUT_GATE_POLICY_FILE": str(fast_policy),
        "ROLLOUT_GATE_METRICS_HOST": "127.0.0.1",
        "ROLLOUT_GATE_METRICS_PORT": str(free_port()),
        "ROLLOUT_GATE_TICK_SECONDS": "1",
        "ROLLOUT_GATE_COMMAND_HMAC_KEY": COMMAND_KEY.decode(),
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Worker]:
    """A worker (not started); stopped at teardown, its log printed when the test failed."""
    w = Worker(worker_env, tmp_path, "worker")
    yield w
    w.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"--- worker log ({w.log_path}) ---\n{w.log_tail(120)}")

