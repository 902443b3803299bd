"""Gateway API: the ``backendRefs`` weights of an HTTPRoute rule.

Weights are relative integers, so they are written in basis points (baseline + canary = 10000):
a 0.5% canary stays 0.5%, unlike with Istio's percent integers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.adapters import canary_share, managed_manifest
from connectors.adapters.kube import KubeClient
from gates.decision import Decision


@dataclass(frozen=True)
class Backend:
    name: str
    port: int
    namespace: str | None = None

    def ref(self, weight: int) -> dict[str, Any]:
        r: dict[str, Any] = {"name": self.name, "port": self.port, "weight": weight}
        if self.namespace:
            r["namespace"] = self.namespace
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
