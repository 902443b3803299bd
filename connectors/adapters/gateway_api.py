"""Gateway API: the ``backendRefs`` weights of an HTTPRoute rule, and of an Envoy AI Gateway
``AIGatewayRoute`` rule.

Weights are relative integers, so they are written in basis points (baseline + canary = 10000):
a 0.5% canary stays 0.5%, unlike with Istio's percent integers.

A backend is a Service (name and port) or, for model servers behind the Gateway API Inference
Extension, an ``InferencePool`` (``group: inference.networking.k8s.io``, ``kind: InferencePool``, no
port: the pool's endpoint picker chooses the pod). A canary between two model-server versions is then
two pools, and this adapter moves the HTTPRoute's weight between them.

Envoy AI Gateway allows one InferencePool per ``AIGatewayRoute`` rule (a CEL rule of its CRD), so a
weighted canary there is between two ``AIServiceBackend``\\ s; split two InferencePools with the
HTTPRoute adapter instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.adapters import canary_share, managed_manifest
from connectors.adapters.kube import KubeClient
from gates.decision import Decision

INFERENCE_GROUP = "inference.networking.k8s.io"
INFERENCE_POOL = "InferencePool"
INFERENCE_POOL_API = f"{INFERENCE_GROUP}/v1"
AI_GATEWAY_API = "aigateway.envoyproxy.io/v1alpha1"
AI_GATEWAY_MODEL_HEADER = "x-ai-eg-model"  # the header Envoy AI Gateway sets from the request's model


@dataclass(frozen=True)
class Backend:
    """One ``backendRefs`` entry. ``port`` is required for a Service and absent for an InferencePool."""

    name: str
    port: int | None = None
    namespace: str | None = None
    group: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if (self.group is None) != (self.kind is None):
            raise ValueError("group and kind must be set together")
        if self.kind in (None, "Service") and not self.group and self.port is None:
            raise ValueError(f"backend {self.name!r}: a Service reference needs a port")

    @classmethod
    def inference_pool(cls, name: str, namespace: str | None = None) -> Backend:
        return cls(name, namespace=namespace, group=INFERENCE_GROUP, kind=INFERENCE_POOL)

    def ref(self, weight: int) -> dict[str, Any]:
        r: dict[str, Any] = {}
        if self.group is not None and self.kind is not None:
            r["group"], r["kind"] = self.group, self.kind
        r["name"] = self.name
        if self.namespace:
            r["namespace"] = self.namespace
        if self.port is not None:
            r["port"] = self.port
        r["weight"] = weight
        return r


class GatewayAPIAdapter:
    def __init__(
        self,
        kube: KubeClient,
        *,
        rollout_id: str,
        name: str,
        namespace: str,
        parent_refs: list[dict[str, Any]],
        baseline: Backend,
        canary: Backend,
        hostnames: list[str] | None = None,
        matches: list[dict[str, Any]] | None = None,
    ) -> None:
        self.kube = kube
        self.rollout_id = rollout_id
        self.name, self.namespace, self.parent_refs = name, namespace, parent_refs
        self.baseline, self.canary, self.hostnames, self.matches = baseline, canary, hostnames, matches

    def render(self, decision: Decision) -> dict[str, Any]:
        base_w, canary_w = canary_share(decision, 10_000)
        rule: dict[str, Any] = {"backendRefs": [self.baseline.ref(base_w), self.canary.ref(canary_w)]}
        if self.matches:
            rule["matches"] = self.matches
        spec: dict[str, Any] = {"parentRefs": self.parent_refs, "rules": [rule]}
        if self.hostnames:
            spec["hostnames"] = self.hostnames
        return managed_manifest("gateway.networking.k8s.io/v1", "HTTPRoute", self.name, self.namespace, decision, spec)

    def apply(self, decision: Decision) -> None:
        self.kube.apply(self.render(decision))


@dataclass(frozen=True)
class AIBackend:
    """One ``AIGatewayRoute`` backendRef: an ``AIServiceBackend`` by name (the default kind)."""

    name: str
    namespace: str | None = None
    model_name_override: str | None = None

    def ref(self, weight: int) -> dict[str, Any]:
        r: dict[str, Any] = {"name": self.name}
        if self.namespace:
            r["namespace"] = self.namespace
        if self.model_name_override:
            r["modelNameOverride"] = self.model_name_override
        r["weight"] = weight
        return r


class AIGatewayRouteAdapter:
    """An Envoy AI Gateway ``AIGatewayRoute`` with one rule: requests for ``model`` (matched on the
    ``x-ai-eg-model`` header the gateway extracts from the body) split between two AIServiceBackends."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        rollout_id: str,
        name: str,
        namespace: str,
        parent_refs: list[dict[str, Any]],
        model: str,
        baseline: AIBackend,
        canary: AIBackend,
        request_timeout: str | None = None,
        llm_request_costs: list[dict[str, Any]] | None = None,
    ) -> None:
        self.kube = kube
        self.rollout_id = rollout_id
        self.name, self.namespace, self.parent_refs, self.model = name, namespace, parent_refs, model
        self.baseline, self.canary = baseline, canary
        self.request_timeout, self.llm_request_costs = request_timeout, llm_request_costs

    def render(self, decision: Decision) -> dict[str, Any]:
        base_w, canary_w = canary_share(decision, 10_000)
        rule: dict[str, Any] = {
            "matches": [{"headers": [{"type": "Exact", "name": AI_GATEWAY_MODEL_HEADER, "value": self.model}]}],
            "backendRefs": [self.baseline.ref(base_w), self.canary.ref(canary_w)],
        }
        if self.request_timeout:
            rule["timeouts"] = {"request": self.request_timeout}
        spec: dict[str, Any] = {"parentRefs": self.parent_refs, "rules": [rule]}
        if self.llm_request_costs:
            spec["llmRequestCosts"] = self.llm_request_costs
        return managed_manifest(AI_GATEWAY_API, "AIGatewayRoute", self.name, self.namespace, decision, spec)

    def apply(self, decision: Decision) -> None:
        self.kube.apply(self.render(decision))


def inference_pool(
    name: str,
    namespace: str,
    *,
    match_labels: dict[str, str],
    target_port: int,
    endpoint_picker: str,
    endpoint_picker_port: int = 9002,
    failure_mode: str = "FailClose",
) -> dict[str, Any]:
    """An ``InferencePool`` (v1) for one model-server version, e.g. the canary's pods, to reference
    with :meth:`Backend.inference_pool`. Created once by the user; rollout-gate moves only weights."""
    return {
        "apiVersion": INFERENCE_POOL_API,
        "kind": INFERENCE_POOL,
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "rollout-gate"}},
        "spec": {
            "selector": {"matchLabels": dict(match_labels)},
            "targetPorts": [{"number": target_port}],
            # the released v1 API (Inference Extension v1.x) names the picker endpointPickerRef; an
            # endpoint-picker Service (the default kind) needs its port
            "endpointPickerRef": {"name": endpoint_picker, "port": {"number": endpoint_picker_port},
                                  "failureMode": failure_mode},
        },
    }
