"""(c) The subscriber serves its last known state while the broker is away and picks up a decision
published after the broker is back. Uses its own broker (never restarts the shared one).

Note: ``scripts/kafka-local start`` formats a fresh data dir, so the broker comes back empty; the
subscriber's old position is then past the log end and it must re-read the topic from the start.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from connectors.subscriber import DecisionSubscriber
from connectors.testing import create_topics, decision, produce, unique

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("ROLLOUT_GATE_RESTART_KAFKA_PORT", "19192"))


class OwnBroker:
    def __init__(self, port: int) -> None:
        self.run_dir = tempfile.mkdtemp(prefix="rollout-gate-restart-")
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(port + 1),
            "KAFKA_RUN_DIR": self.run_dir,
        }

    async def script(self, command: str, timeout: float = 120) -> None:
        # A subprocess on the loop, not subprocess.run: the subscriber keeps running meanwhile,
        # as it would in a router while the broker restarts.
        proc = await asyncio.create_subprocess_exec(
            str(REPO / "scripts" / "kafka-local"),
            command,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode == 0, out.decode()


@pytest.fixture
async def broker() -> AsyncIterator[OwnBroker]:
    b = OwnBroker(PORT)
    await b.script("start")
    try:
        yield b
    finally:
        await b.script("stop")
        shutil.rmtree(b.run_dir, ignore_errors=True)


async def wait_for(predicate: object, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())  # type: ignore[operator]


async def test_subscriber_survives_a_broker_restart(broker: OwnBroker) -> None:
    topic = unique("it.decisions.restart")
    await create_topics(broker.bootstrap, [topic], compact=True)
    await produce(
        broker.bootstrap,
        topic,
        [(b"r1", decision("r1", s, weight=w).to_json()) for s, w in ((1, 1), (2, 10), (3, 25))],
    )
    reg = CollectorRegistry()
    sub = DecisionSubscriber(
        broker.bootstrap,
        topic=topic,
        registry=reg,
        backoff_max=1.0,
        metadata_check_s=1.0,
        request_timeout_ms=5000,
    )
    await asyncio.wait_for(sub.start(), 30)
    try:
        assert sub.weight("r1") == 25.0
        await broker.script("stop")
        await asyncio.sleep(3)
        # Broker away: the router keeps serving the last known weight, and the follow task lives on.
        assert sub.weight("r1") == 25.0 and sub.state("r1").seq == 3  # type: ignore[union-attr]
        assert sub._task is not None and not sub._task.done()
        assert (reg.get_sample_value("rollout_gate_subscriber_reconnects_total") or 0) >= 1

        await broker.script("start")
        await create_topics(broker.bootstrap, [topic], compact=True)
        await produce(
            broker.bootstrap,
            topic,
            [(b"r1", decision("r1", 4, action="halt", baseline_digest="sha256:pinned").to_json())],
        )
        assert await wait_for(lambda: sub.weight("r1") == 0.0, 30), "halt published after restart not applied"
        assert sub.pinned_digest("r1") == "sha256:pinned" and sub.state("r1").seq == 4  # type: ignore[union-attr]
    finally:
        await sub.stop()
