"""The Gateway API Inference Extension and Envoy AI Gateway manifests rollout-gate renders, checked
against the projects' published CRD schemas (vendored in crds/) and their CEL rules."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from connectors.adapters.gateway_api import (
    AIBackend,
    AIGatewayRouteAdapter,
    Backend,
    GatewayAPIAdapter,
    inference_pool,
)
from connectors.adapters.kube import FakeKubeClient
from connectors.testing import decision
from tests.deploy import crd_schema

POOL = crd_schema.load("inferencepool-v1.schema.yaml")
ROUTE = crd_schema.load("aigatewayroute-v1alpha1.schema.yaml")


@pytest.mark.parametrize("doc", [POOL, ROUTE], ids=["InferencePool", "AIGatewayRoute"])
def test_vendored_schemas_are_valid_json_schema(doc: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(doc["openAPIV3Schema"])


def ai_route(**kwargs: Any) -> AIGatewayRouteAdapter:
    return AIGatewayRouteAdapter(
        FakeKubeClient(),
        rollout_id="chat-v7",
        name="chat",
        namespace="llm",
        parent_refs=[{"name": "ai-gw"}],
        model="chat",
        baseline=AIBackend("chat-v6"),
        canary=AIBackend("chat-v7", model_name_override="chat-v7-2026-12"),
        **kwargs,
    )


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, 25.0, 100.0])
def test_ai_gateway_route_is_accepted_by_the_crd(weight: float) -> None:
    m = ai_route(request_timeout="120s", llm_request_costs=[{"metadataKey": "llm_output_token", "type": "OutputToken"}]
                 ).render(decision("chat-v7", 2, weight=weight))
    assert crd_schema.errors(ROUTE, m) == []
    refs = m["spec"]["rules"][0]["backendRefs"]
    assert [r["weight"] for r in refs] == [10_000 - round(weight * 100), round(weight * 100)]
    assert m["spec"]["rules"][0]["matches"][0]["headers"] == [{"type": "Exact", "name": "x-ai-eg-model", "value": "chat"}]


def test_ai_gateway_route_halt_sends_nothing_to_the_canary() -> None:
    m = ai_route().render(decision("chat-v7", 5, action="halt"))
    assert crd_schema.errors(ROUTE, m) == []
    assert [r["weight"] for r in m["spec"]["rules"][0]["backendRefs"]] == [10_000, 0]


def test_the_crd_check_rejects_what_the_api_server_rejects() -> None:
    """The validator bites: each broken copy fails with the CRD's own reason."""
    good = ai_route().render(decision("chat-v7", 2, weight=10))
    rule = good["spec"]["rules"][0]

    two_pools = copy.deepcopy(good)
    two_pools["spec"]["rules"][0]["backendRefs"] = [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": n, "weight": w}
        for n, w in (("chat-v6", 9000), ("chat-v7", 1000))
    ]
    assert crd_schema.errors(ROUTE, two_pools) == [".spec.rules[0]: only one InferencePool backend is allowed per rule"]

    mixed = copy.deepcopy(good)
    mixed["spec"]["rules"][0]["backendRefs"][1].update(group="inference.networking.k8s.io", kind="InferencePool")
    assert "cannot mix InferencePool and AIServiceBackend references in the same rule" in " ".join(
        crd_schema.errors(ROUTE, mixed))

    negative = copy.deepcopy(good)
    negative["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    assert any("-1 is less than the minimum of 0" in e for e in crd_schema.errors(ROUTE, negative))

    no_rules = copy.deepcopy(good)
    del no_rules["spec"]["rules"]
    assert any("'rules' is a required property" in e for e in crd_schema.errors(ROUTE, no_rules))

    service_parent = copy.deepcopy(good)
    service_parent["spec"]["parentRefs"] = [{"name": "chat", "kind": "Service", "group": ""}]
    assert crd_schema.errors(ROUTE, service_parent) == [".spec.parentRefs: only Gateway is supported"]

    slow = copy.deepcopy(good)
    slow["spec"]["rules"][0]["timeouts"] = {"request": "10s", "backendRequest": "20s"}
    assert crd_schema.errors(ROUTE, slow) == [
        ".spec.rules[0].timeouts: backendRequest timeout cannot be longer than request timeout"]
    assert rule["backendRefs"][0]["name"] == "chat-v6"


def test_inference_pool_is_accepted_by_the_crd() -> None:
    m = inference_pool("chat-v7", "llm", match_labels={"app": "vllm-chat", "version": "v7"}, target_port=8000,
                       endpoint_picker="chat-v7-epp")
    assert crd_schema.errors(POOL, m) == []
    bad = copy.deepcopy(m)
    bad["spec"]["targetPorts"] = [{"number": 8000}, {"number": 8001}]
    assert any("is too long" in e for e in crd_schema.errors(POOL, bad))
    bad = copy.deepcopy(m)
    del bad["spec"]["extensionRef"]
    assert any("'extensionRef' is a required property" in e for e in crd_schema.errors(POOL, bad))


def test_httproute_splits_between_two_inference_pools() -> None:
    """The Inference Extension's rollout pattern: one pool per model-server version, HTTPRoute weights."""
    pools = [inference_pool(f"chat-{v}", "llm", match_labels={"app": "vllm", "version": v}, target_port=8000,
                            endpoint_picker=f"chat-{v}-epp") for v in ("v6", "v7")]
    assert all(crd_schema.errors(POOL, p) == [] for p in pools)
    a = GatewayAPIAdapter(
        FakeKubeClient(), rollout_id="chat-v7", name="chat", namespace="llm", parent_refs=[{"name": "inference-gw"}],
        baseline=Backend.inference_pool("chat-v6"), canary=Backend.inference_pool("chat-v7"),
    )
    for d, expect in ((decision("chat-v7", 1, weight=10), [9000, 1000]), (decision("chat-v7", 2, action="halt"), [10_000, 0])):
        refs = a.render(d)["spec"]["rules"][0]["backendRefs"]
        assert refs == [
            {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": p["metadata"]["name"], "weight": w}
            for p, w in zip(pools, expect, strict=True)
        ]
    # the HTTPRoute schema wants a port only for Service references; a pool reference carries none
    assert "port" not in Backend.inference_pool("chat-v7").ref(1)
    with pytest.raises(ValueError, match="needs a port"):
        Backend("chat-v7")
    with pytest.raises(ValueError, match="together"):
        Backend("chat-v7", group="inference.networking.k8s.io")


def test_httproute_matches_the_inference_extension_rollout_guide() -> None:
    """The upstream guide's 90/10 HTTPRoute, rendered by the adapter from a 10% decision: the same
    object, weights in basis points instead of percent."""
    guide = crd_schema.load("inferencepool-rollout-httproute.yaml")["manifest"]
    a = GatewayAPIAdapter(
        FakeKubeClient(), rollout_id="llama3", name="llm-route", namespace="default",
        parent_refs=guide["spec"]["parentRefs"], matches=guide["spec"]["rules"][0]["matches"],
        baseline=Backend.inference_pool("vllm-llama3-8b-instruct"), canary=Backend.inference_pool("vllm-llama3-8b-instruct-new"),
    )
    m = a.render(decision("llama3", 1, weight=10))
    expected = copy.deepcopy(guide["spec"])
    for ref in expected["rules"][0]["backendRefs"]:
        ref["weight"] *= 100
    assert (m["apiVersion"], m["kind"], m["metadata"]["name"]) == (guide["apiVersion"], guide["kind"], "llm-route")
    assert m["spec"] == expected
