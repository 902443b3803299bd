"""The LiteLLM proxy in the loop, nothing mocked: HTTP clients -> the real LiteLLM proxy (a subprocess)
-> two fake model servers, the canary refusing with finish_reason content_filter. The proxy loads
RolloutGateCallback from its config.yaml: every call becomes an event on the real broker, the real
worker halts the canary, and the callback sets the canary deployment's weight to 0 in the proxy's
router, after which the canary's model server receives no request."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.fake_upstream import FakeUpstream, UpstreamSpec, serving
from connectors.subscriber import DecisionSubscriber
from connectors.testing import read_events
from gates.events import InferenceEvent
from tests.integration.conftest import REPO, Topics
from tests.integration.helpers import stop_process
from tests.integration.streams import FULL_LOOP_POLICY
from tests.integration.workerproc import Worker, free_port

pytestmark = pytest.mark.integration

ROLLOUT = "chat-v7"
MASTER_KEY = "sk-rollout-gate-test"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "what is a canary release"}]}
CONCURRENCY = 12

# The full-loop policy: one-second blocks, so the halt comes within seconds of traffic; latency
# off (proxy, model servers and clients share two cores). The errors gate, which counts refusals,
# is the one that must halt this canary.
POLICY = FULL_LOOP_POLICY

CALLBACKS = """\
from connectors.litellm import RolloutGateCallback

rollout_gate = RolloutGateCallback.from_env(reconcile_seconds=0.2)
"""


@pytest.fixture
def fast_policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    return p


def proxy_config(base_url: str, cand_url: str) -> str:
    return f"""\
model_list:
  - model_name: chat
    litellm_params: {{model: openai/chat-v6, api_base: "{base_url}/v1", api_key: unused, weight: 8000}}
    model_info: {{id: chat-v6-deployment}}
  - model_name: chat
    litellm_params: {{model: openai/chat-v7, api_base: "{cand_url}/v1", api_key: unused, weight: 2000}}
    model_info: {{id: chat-v7-deployment}}
router_settings:
  routing_strategy: simple-shuffle
  num_retries: 0
litellm_settings:
  callbacks: custom_callbacks.rollout_gate
general_settings:
  master_key: {MASTER_KEY}
"""


class Proxy:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "litellm-proxy.log"
        litellm_bin = Path(sys.executable).parent / "litellm"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(litellm_bin), "--config", str(workdir / "config.yaml"), "--host",
                                          "127.0.0.1", "--port", str(self.port), "--num_workers", "1"],
                                         cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"LiteLLM proxy exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with session.get(f"{self.url}/health/liveliness") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        raise AssertionError(f"LiteLLM proxy not ready within {timeout}s:\n{self.log_tail()}")

    async def weights(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.url}/model/info", headers={"Authorization": f"Bearer {MASTER_KEY}"}) as r:
            body = await r.json()
        return {m["model_info"]["id"]: m["litellm_params"].get("weight") for m in body["data"]}

    def stop(self) -> None:
        stop_process(self.proc)

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    async with serving(UpstreamSpec(model="chat-v6", latency_ms=3, output_tokens=120),
                       UpstreamSpec(model="chat-v7", latency_ms=3, output_tokens=120, refusal_rate=0.5,
                                    refusal_finish_reason="content_filter")) as (base, cand):
        yield base, cand


@pytest.fixture
def proxy(tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream], worker_env: dict[str, str],
          topics: Topics, request: pytest.FixtureRequest) -> Iterator[Proxy]:
    base, cand = upstreams
    (tmp_path / "config.yaml").write_text(proxy_config(base.url, cand.url))
    (tmp_path / "custom_callbacks.py").write_text(CALLBACKS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_GATE_")}
    env.update({
        "ROLLOUT_GATE_KAFKA_BOOTSTRAP": worker_env["ROLLOUT_GATE_KAFKA_BOOTSTRAP"],
        "ROLLOUT_GATE_EVENTS_TOPIC": topics.events,
        "ROLLOUT_GATE_DECISIONS_TOPIC": topics.decisions,
        "ROLLOUT_GATE_LITELLM_ROLLOUT_ID": ROLLOUT,
        "ROLLOUT_GATE_LITELLM_BASELINE_ID": "chat-v6-deployment",
        "ROLLOUT_GATE_LITELLM_CANARY_ID": "chat-v7-deployment",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONPATH": str(REPO) + os.pathsep + str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    })
    p = Proxy(tmp_path, env)
    yield p
    p.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"--- LiteLLM proxy log ({p.log_path}) ---\n{p.log_tail(150)}")


async def test_worker_halts_the_refusing_canary_and_the_proxy_stops_sending_it_traffic(
    worker: Worker, proxy: Proxy, upstreams: tuple[FakeUpstream, FakeUpstream], topics: Topics, kafka_bootstrap: str,
) -> None:
    base, cand = upstreams
    worker.start()  # creates the topics
    async with aiohttp.ClientSession() as session:
        await proxy.wait_ready(session)
        assert await proxy.weights(session) == {"chat-v6-deployment": 8000, "chat-v7-deployment": 2000}
        sub = DecisionSubscriber(kafka_bootstrap, topic=topics.decisions)
        await sub.start()
        statuses: Counter[int] = Counter()

        async def ask() -> None:
            async with session.post(f"{proxy.url}/v1/chat/completions", json=CHAT,
                                    headers={"Authorization": f"Bearer {MASTER_KEY}"}) as r:
                await r.read()
                statuses[r.status] += 1

        stop = asyncio.Event()

        async def user() -> None:
            while not stop.is_set():
                await ask()

        users = [asyncio.create_task(user()) for _ in range(CONCURRENCY)]
        deadline = time.monotonic() + 240
        try:
            while (sub.state(ROLLOUT) is None or not sub.state(ROLLOUT).halted) and time.monotonic() < deadline:  # type: ignore[union-attr]
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*users)
        view = sub.state(ROLLOUT)
        await sub.stop()
        assert view is not None and view.halted, f"no halt within the deadline: {view}"
        assert statuses and set(statuses) == {200}, statuses  # the callback never failed a request
        assert cand.requests > 30 and base.requests > cand.requests

        # the proxy's callback applies the halt to its router: canary weight 0, visible on /model/info
        for _ in range(100):
            if (await proxy.weights(session)).get("chat-v7-deployment") == 0:
                break
            await asyncio.sleep(0.1)
        assert await proxy.weights(session) == {"chat-v6-deployment": 10_000, "chat-v7-deployment": 0}

        before_base, before_cand = base.requests, cand.requests
        for lo in range(0, 200, CONCURRENCY):
            await asyncio.gather(*(ask() for _ in range(min(CONCURRENCY, 200 - lo))))
        assert cand.requests == before_cand, "the halted canary still received traffic"
        assert base.requests - before_base == 200

    # what the worker judged: the callback's events, refusals read from finish_reason content_filter
    events = [e for e in await read_events(kafka_bootstrap, topics.events, expect=before_base + before_cand, timeout=30)
              if isinstance(e, InferenceEvent)]
    by_arm = Counter(e.arm for e in events)
    assert by_arm["canary"] >= 30 and by_arm["baseline"] >= 30
    canary_refusals = sum(e.refusal for e in events if e.arm == "canary") / by_arm["canary"]
    assert 0.3 < canary_refusals < 0.7
    assert not any(e.refusal for e in events if e.arm == "baseline")
    assert all(e.rollout_id == ROLLOUT and e.status == "ok" and e.output_tokens > 0 for e in events)


async def test_model_update_api_refuses_config_deployments_without_a_database(proxy: Proxy) -> None:
    """LiteLLMProxyAdapter speaks the proxy's POST /model/update; a proxy without its database (like
    this one, whose deployments come from config.yaml) refuses, and the adapter raises with the reason
    instead of letting the old weights serve unnoticed."""
    from connectors.adapters.litellm import LiteLLMProxyAdapter
    from connectors.testing import decision

    async with aiohttp.ClientSession() as session:
        await proxy.wait_ready(session)
        adapter = LiteLLMProxyAdapter(proxy.url, master_key=MASTER_KEY, rollout_id=ROLLOUT,
                                      baseline_id="chat-v6-deployment", canary_id="chat-v7-deployment")
        with pytest.raises(RuntimeError, match=r"chat-v7-deployment failed \(500\).*No DB Connected"):
            await asyncio.to_thread(adapter.apply, decision(ROLLOUT, 1, action="halt"))
        wrong_key = LiteLLMProxyAdapter(proxy.url, master_key="sk-wrong", rollout_id=ROLLOUT,
                                        baseline_id="chat-v6-deployment", canary_id="chat-v7-deployment")
        with pytest.raises(RuntimeError, match=r"failed \(4\d\d\)"):
            await asyncio.to_thread(wrong_key.apply, decision(ROLLOUT, 1, action="halt"))
        assert await proxy.weights(session) == {"chat-v6-deployment": 8000, "chat-v7-deployment": 2000}
