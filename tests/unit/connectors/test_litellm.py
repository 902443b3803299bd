"""The LiteLLM callback and router adapter, driven by the real litellm package (its Router and its
logging callbacks) against the project's fake OpenAI-compatible upstreams; no broker needed."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import litellm
import pytest
from prometheus_client import CollectorRegistry

from connectors.adapters.litellm import LiteLLMProxyAdapter, LiteLLMRouterAdapter
from connectors.fake_upstream import UpstreamSpec, serving
from connectors.litellm import LiteLLMRollout, RolloutGateCallback, payload_to_event
from connectors.publisher import validate
from connectors.testing import decision

ROLLOUT = LiteLLMRollout(rollout_id="chat-v7", arms={"chat-base": "baseline", "chat-cand": "canary"},
                         digests={"canary": "sha256:cand"}, baseline_id="chat-base", canary_id="chat-cand")


class Recorder:
    """Stands in for the publisher: keeps what it is given (publish() must be O(1) and not raise)."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = fail

    def start(self) -> None: ...

    def publish(self, event: dict[str, Any]) -> bool:
        if self.fail:
            raise RuntimeError("broker on fire")
        validate(event)  # what the real publisher checks
        self.events.append(event)
        return True


@pytest.fixture
async def upstreams() -> Any:
    async with serving(UpstreamSpec(model="base", latency_ms=5, output_tokens=40),
                       UpstreamSpec(model="cand", latency_ms=5, output_tokens=40, refusal_rate=1.0,
                                    refusal_finish_reason="content_filter")) as (base, cand):
        yield base, cand


def router(base_url: str, cand_url: str, weights: tuple[int, int] = (5000, 5000)) -> litellm.Router:
    return litellm.Router(model_list=[
        {"model_name": "chat", "litellm_params": {"model": "openai/base", "api_base": f"{base_url}/v1",
                                                  "api_key": "x", "weight": weights[0]}, "model_info": {"id": "chat-base"}},
        {"model_name": "chat", "litellm_params": {"model": "openai/cand", "api_base": f"{cand_url}/v1",
                                                  "api_key": "x", "weight": weights[1]}, "model_info": {"id": "chat-cand"}},
    ], num_retries=0)


@pytest.fixture
def callbacks() -> Any:
    saved = list(litellm.callbacks)
    yield litellm.callbacks
    litellm.callbacks[:] = saved


async def settle(cond: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)


async def test_calls_through_the_router_become_contract_events(upstreams: Any, callbacks: Any) -> None:
    base, cand = upstreams
    rec = Recorder()
    cb = RolloutGateCallback(ROLLOUT, kafka="127.0.0.1:1", publisher=rec, apply_decisions=False, registry=CollectorRegistry())
    callbacks.append(cb)
    r = router(base.url, cand.url)
    for _ in range(40):
        await r.acompletion(model="chat", messages=[{"role": "user", "content": "hello there"}])
    await settle(lambda: len(rec.events) == 40)
    assert len(rec.events) == 40
    arms = Counter(e["arm"] for e in rec.events)
    assert arms["baseline"] == base.requests and arms["canary"] == cand.requests and base.requests + cand.requests == 40
    for e in rec.events:
        assert e["rollout_id"] == "chat-v7" and e["status"] == "ok" and e["latency_ms"] > 0
        assert e["refusal"] is (e["arm"] == "canary")  # the canary answers with finish_reason content_filter
        assert e["input_tokens"] == 2 and e["output_tokens"] >= 1
    assert {e["model_digest"] for e in rec.events if e["arm"] == "canary"} == {"sha256:cand"}
    assert len({e["request_id"] for e in rec.events}) == 40


async def test_a_failing_call_is_an_error_event(upstreams: Any, callbacks: Any) -> None:
    base, cand = upstreams
    cand.spec = UpstreamSpec(model="cand", latency_ms=5, error_rate=1.0)
    rec = Recorder()
    callbacks.append(RolloutGateCallback(ROLLOUT, kafka="127.0.0.1:1", publisher=rec, apply_decisions=False,
                                         registry=CollectorRegistry()))
    r = router(base.url, cand.url, weights=(0, 10_000))
    with pytest.raises(Exception, match="upstream failure"):
        await r.acompletion(model="chat", messages=[{"role": "user", "content": "hi"}])
    await settle(lambda: bool(rec.events))
    (e,) = rec.events
    assert (e["arm"], e["status"], e["output_tokens"]) == ("canary", "error", 0)


async def test_a_broken_callback_never_fails_the_request(upstreams: Any, callbacks: Any) -> None:
    base, cand = upstreams
    reg = CollectorRegistry()
    cb = RolloutGateCallback(ROLLOUT, kafka="127.0.0.1:1", publisher=Recorder(fail=True), apply_decisions=False,
                             registry=reg)
    callbacks.append(cb)
    r = router(base.url, cand.url)
    replies = [await r.acompletion(model="chat", messages=[{"role": "user", "content": "hi"}]) for _ in range(5)]
    assert all(x.choices[0].message.content for x in replies)  # every user got an answer
    await settle(lambda: reg.get_sample_value("rollout_gate_litellm_callback_failures_total", {"stage": "publish"}) == 5)
    assert reg.get_sample_value("rollout_gate_litellm_callback_failures_total", {"stage": "publish"}) == 5
    # and a payload it cannot read: counted, not raised
    cb.log_success_event({"standard_logging_object": {"model_id": "chat-base"}}, None, None, None)
    assert reg.get_sample_value("rollout_gate_litellm_callback_failures_total", {"stage": "map"}) == 1


def test_unmapped_deployments_are_not_in_the_rollout() -> None:
    payload = {"id": "x", "startTime": 1.0, "endTime": 2.0, "model_id": "other", "status": "success",
               "completion_tokens": 3, "prompt_tokens": 1, "response_cost": 0.0,
               "response_cost_failure_debug_info": {"error_message": "no price"}}
    assert payload_to_event(payload, ROLLOUT) is None
    e = payload_to_event({**payload, "model_id": "chat-base"}, ROLLOUT)
    assert e is not None and "cost_usd" not in e and e["latency_ms"] == 1000.0  # unpriced: the policy prices it
    assert payload_to_event({**payload, "model_id": "chat-base", "response_cost": 0.004,
                             "response_cost_failure_debug_info": None}, ROLLOUT)["cost_usd"] == 0.004  # type: ignore[index]


async def test_router_adapter_moves_traffic_and_a_halt_pins_the_baseline(upstreams: Any) -> None:
    base, cand = upstreams
    r = router(base.url, cand.url, weights=(9000, 1000))
    a = LiteLLMRouterAdapter(r, rollout_id="chat-v7", baseline_id="chat-base", canary_id="chat-cand")
    a.apply(decision("chat-v7", 1, weight=50))
    assert a.current() == {"chat-base": 5000, "chat-cand": 5000}
    a.apply(decision("chat-v7", 2, action="halt"))
    assert a.current() == {"chat-base": 10_000, "chat-cand": 0}
    before = cand.requests
    for _ in range(30):
        await r.acompletion(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert cand.requests == before and base.requests >= 30
    with pytest.raises(KeyError, match="nope"):
        LiteLLMRouterAdapter(r, rollout_id="chat-v7", baseline_id="chat-base", canary_id="nope").apply(
            decision("chat-v7", 3, weight=10))


def test_proxy_adapter_shrinks_the_canary_first_on_a_halt() -> None:
    a = LiteLLMProxyAdapter("http://proxy:4000/", master_key="sk-1", rollout_id="chat-v7", baseline_id="b",
                            canary_id="c")
    assert a.render(decision("chat-v7", 2, action="halt"))["requests"] == [
        {"model_info": {"id": "c"}, "litellm_params": {"weight": 0}},
        {"model_info": {"id": "b"}, "litellm_params": {"weight": 10_000}},
    ]
    assert [r["model_info"]["id"] for r in a.render(decision("chat-v7", 1, weight=25))["requests"]] == ["b", "c"]


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_GATE_LITELLM_ROLLOUT_ID", "chat-v7")
    monkeypatch.setenv("ROLLOUT_GATE_LITELLM_BASELINE_ID", "chat-base")
    monkeypatch.setenv("ROLLOUT_GATE_LITELLM_CANARY_ID", "chat-cand")
    monkeypatch.setenv("ROLLOUT_GATE_LITELLM_ARMS", "shadow-dep=shadow")
    r = LiteLLMRollout.from_env()
    assert dict(r.arms) == {"shadow-dep": "shadow", "chat-base": "baseline", "chat-cand": "canary"}
    monkeypatch.setenv("ROLLOUT_GATE_LITELLM_ARMS", "x=blue")
    with pytest.raises(ValueError, match="arms must map"):
        LiteLLMRollout.from_env()
