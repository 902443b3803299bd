"""Istio: the weights of a VirtualService route between the baseline and canary subsets.

Istio wants integer weights that sum to 100, so fractional percents round (0.5% -> 1%, 0.4% -> 0%)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.adapters import canary_share, managed_manifest
from connectors.adapters.kube import KubeClient
from gates.decision import Decision


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str | None = None
    port: int | None = None

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {"host": self.host}
        if self.subset:
            d["subset"] = self.subset
        if self.port:
            d["port"] = {"number": self.port}
        return d


class IstioAdapter:
    def __init__(
        self,
        kube: KubeClient,
        *,
        rollout_id: str,
        name: str,
        namespace: str,
        hosts: list[str],
        baseline: Destination,
        canary: Destination,
        gateways: list[str] | None = None,
        route_name: str = "rollout-gate",
    ) -> None:
        self.kube = kube
        self.rollout_id = rollout_id
        self.name, self.namespace, self.hosts = name, namespace, hosts
        self.baseline, self.canary, self.gateways, self.route_name = baseline, canary, gateways, route_name

    def render(self, decision: Decision) -> dict[str, Any]:
        base_w, canary_w = canary_share(decision, 100)
        spec: dict[str, Any] = {
            "hosts": list(self.hosts),
            "http": [
                {
                    "name": self.route_name,
                    "route": [
                        {"destination": self.baseline.spec(), "weight": base_w},
                        {"destination": self.canary.spec(), "weight": canary_w},
                    ],
                }
            ],
        }
        if self.gateways:
            spec["gateways"] = list(self.gateways)
        return managed_manifest("networking.istio.io/v1", "VirtualService", self.name, self.namespace, decision, spec)

    def apply(self, decision: Decision) -> None:
        self.kube.apply(self.render(decision))
