"""The Gateway API and Inference Extension manifests rollout-gate renders, checked against the
published release CRDs (downloaded at test time, see crd_schema.py) and their CEL rules, and the
Envoy AI Gateway route checked field by field against its API reference."""

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


def test_the_release_crds_are_valid_json_schema(
    inference_pool_crd: dict[str, Any], httproute_crd: dict[str, Any]
) -> None:
    for doc in (inference_pool_crd, httproute_crd):
        jsonschema.Draft7Validator.check_schema(doc["openAPIV3Schema"])
    assert (inference_pool_crd["group"], inference_pool_crd["kind"]) == ("inference.networking.k8s.io", "InferencePool")
    assert (httproute_crd["group"], httproute_crd["kind"]) == ("gateway.networking.k8s.io", "HTTPRoute")


def pool(version: str = "v7") -> dict[str, Any]:
    return inference_pool(f"chat-{version}", "llm", match_labels={"app": "vllm-chat", "version": version},
                          target_port=8000, endpoint_picker=f"chat-{version}-epp")


def test_inference_pool_is_accepted_by_the_crd(inference_pool_crd: dict[str, Any]) -> None:
    m = pool()
    assert crd_schema.errors(inference_pool_crd, m) == []
    assert m["spec"]["endpointPickerRef"] == {"name": "chat-v7-epp", "port": {"number": 9002}, "failureMode": "FailClose"}


def test_the_crd_check_rejects_what_the_api_server_rejects(inference_pool_crd: dict[str, Any]) -> None:
    """The validator bites: each broken copy fails with the CRD's own reason."""
    good = pool()

    no_port = copy.deepcopy(good)
    del no_port["spec"]["endpointPickerRef"]["port"]
    assert crd_schema.errors(inference_pool_crd, no_port) == [
        ".spec.endpointPickerRef: port is required when kind is 'Service' or unspecified (defaults to 'Service')"
    ]

    old_field = copy.deepcopy(good)  # the pre-v1 name of the picker reference
    old_field["spec"]["extensionRef"] = old_field["spec"].pop("endpointPickerRef")
    assert crd_schema.errors(inference_pool_crd, old_field) == [".spec.extensionRef: unknown field"]

    bad_port = copy.deepcopy(good)
    bad_port["spec"]["targetPorts"] = [{"number": 0}]
    assert any("0 is less than the minimum of 1" in e for e in crd_schema.errors(inference_pool_crd, bad_port))

    bad_mode = copy.deepcopy(good)
    bad_mode["spec"]["endpointPickerRef"]["failureMode"] = "Maybe"
    assert any("'Maybe' is not one of" in e for e in crd_schema.errors(inference_pool_crd, bad_mode))

    no_labels = copy.deepcopy(good)
    no_labels["spec"]["selector"]["matchLabels"] = {}
    assert any("should be non-empty" in e or "does not have enough properties" in e
               for e in crd_schema.errors(inference_pool_crd, no_labels))


def route(**kw: Any) -> GatewayAPIAdapter:
    return GatewayAPIAdapter(
        FakeKubeClient(), rollout_id="chat-v7", name="chat", namespace="llm",
        parent_refs=[{"name": "inference-gw"}],
        matches=[{"path": {"type": "PathPrefix", "value": "/v1"}}],
        **{"baseline": Backend.inference_pool("chat-v6"), "canary": Backend.inference_pool("chat-v7"), **kw},
    )


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, 10.0, 25.0, 100.0])
def test_httproute_splitting_two_inference_pools_is_accepted_by_the_crd(
    httproute_crd: dict[str, Any], inference_pool_crd: dict[str, Any], weight: float
) -> None:
    """The Inference Extension's rollout pattern: one pool per model-server version, HTTPRoute weights."""
    assert all(crd_schema.errors(inference_pool_crd, pool(v)) == [] for v in ("v6", "v7"))
    m = route().render(decision("chat-v7", 2, weight=weight))
    assert crd_schema.errors(httproute_crd, m) == []
    canary_w = round(weight * 100)
    assert m["spec"]["rules"][0]["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": n, "weight": w}
        for n, w in (("chat-v6", 10_000 - canary_w), ("chat-v7", canary_w))
    ]


def test_halt_sends_nothing_to_the_canary_pool(httproute_crd: dict[str, Any]) -> None:
    m = route().render(decision("chat-v7", 5, action="halt"))
    assert crd_schema.errors(httproute_crd, m) == []
    assert [r["weight"] for r in m["spec"]["rules"][0]["backendRefs"]] == [10_000, 0]


def test_service_backends_still_render_a_valid_httproute(httproute_crd: dict[str, Any]) -> None:
    m = route(baseline=Backend("chat-v6", 8000), canary=Backend("chat-v7", 8000, namespace="llm")).render(
        decision("chat-v7", 3, weight=25))
    assert crd_schema.errors(httproute_crd, m) == []
    assert m["spec"]["rules"][0]["backendRefs"][1] == {"name": "chat-v7", "namespace": "llm", "port": 8000, "weight": 2500}


def test_the_httproute_crd_check_bites(httproute_crd: dict[str, Any]) -> None:
    good = route().render(decision("chat-v7", 2, weight=10))
    negative = copy.deepcopy(good)
    negative["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    assert any("-1 is less than the minimum of 0" in e for e in crd_schema.errors(httproute_crd, negative))
    service_without_port = copy.deepcopy(good)
    for ref in service_without_port["spec"]["rules"][0]["backendRefs"]:
        del ref["group"], ref["kind"]  # now Services (the default kind), which need a port
    assert any("Must have port for Service reference" in e for e in crd_schema.errors(httproute_crd, service_without_port))
    typo = copy.deepcopy(good)
    typo["spec"]["rules"][0]["backendRef"] = typo["spec"]["rules"][0].pop("backendRefs")
    assert ".spec.rules[0].backendRef: unknown field" in crd_schema.errors(httproute_crd, typo)


def test_backend_references_are_checked_when_built() -> None:
    assert "port" not in Backend.inference_pool("chat-v7").ref(1)
    with pytest.raises(ValueError, match="needs a port"):
        Backend("chat-v7")
    with pytest.raises(ValueError, match="together"):
        Backend("chat-v7", group="inference.networking.k8s.io")


# Envoy AI Gateway: aigateway.envoyproxy.io/v1alpha1 AIGatewayRoute. Its CRD is not published as a Go
# module the proxy serves here, so the rendered object is checked against the fields of the API
# reference (https://aigateway.envoyproxy.io/docs/api/) instead of the CRD schema.
AI_ROUTE_SPEC_FIELDS = {"parentRefs", "rules", "llmRequestCosts", "filterConfig"}
AI_RULE_FIELDS = {"matches", "backendRefs", "timeouts", "modelsOwnedBy", "modelsCreatedAt"}
AI_BACKEND_REF_FIELDS = {"name", "namespace", "group", "kind", "modelNameOverride", "weight", "priority"}


def ai_route(**kwargs: Any) -> AIGatewayRouteAdapter:
    return AIGatewayRouteAdapter(
        FakeKubeClient(), rollout_id="chat-v7", name="chat", namespace="llm", parent_refs=[{"name": "ai-gw"}],
        model="chat", baseline=AIBackend("chat-v6"), canary=AIBackend("chat-v7", model_name_override="chat-v7-2026-12"),
        **kwargs,
    )


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, 25.0, 100.0])
def test_ai_gateway_route_has_the_api_reference_shape(weight: float) -> None:
    m = ai_route(request_timeout="120s", llm_request_costs=[{"metadataKey": "llm_output_token", "type": "OutputToken"}]
                 ).render(decision("chat-v7", 2, weight=weight))
    assert (m["apiVersion"], m["kind"]) == ("aigateway.envoyproxy.io/v1alpha1", "AIGatewayRoute")
    spec = m["spec"]
    assert set(spec) <= AI_ROUTE_SPEC_FIELDS and spec["parentRefs"] == [{"name": "ai-gw"}]
    (rule,) = spec["rules"]
    assert set(rule) <= AI_RULE_FIELDS and rule["timeouts"] == {"request": "120s"}
    assert rule["matches"] == [{"headers": [{"type": "Exact", "name": "x-ai-eg-model", "value": "chat"}]}]
    for ref in rule["backendRefs"]:
        assert set(ref) <= AI_BACKEND_REF_FIELDS and isinstance(ref["weight"], int) and ref["weight"] >= 0
    canary_w = round(weight * 100)
    assert [(r["name"], r["weight"]) for r in rule["backendRefs"]] == [("chat-v6", 10_000 - canary_w), ("chat-v7", canary_w)]
    assert rule["backendRefs"][1]["modelNameOverride"] == "chat-v7-2026-12"
    assert spec["llmRequestCosts"] == [{"metadataKey": "llm_output_token", "type": "OutputToken"}]


def test_ai_gateway_route_halt_sends_nothing_to_the_canary() -> None:
    m = ai_route().render(decision("chat-v7", 5, action="halt"))
    assert [r["weight"] for r in m["spec"]["rules"][0]["backendRefs"]] == [10_000, 0]
    assert "timeouts" not in m["spec"]["rules"][0] and "llmRequestCosts" not in m["spec"]
