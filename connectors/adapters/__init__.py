"""Traffic adapters: push the weight of each decision into a real router.

One interface (:class:`TrafficAdapter`), one file per target (``istio``, ``gateway_api``,
``nginx``), one fake cluster (:class:`~connectors.adapters.kube.FakeKubeClient`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from connectors.book import RolloutView
from gates.decision import Decision


class TrafficAdapter(Protocol):
    rollout_id: str

    def render(self, decision: Decision) -> str | dict[str, Any]:
        """The target's configuration for this decision (a manifest dict or a config file's text)."""
        ...

    def apply(self, decision: Decision) -> None:
        """Make the target serve the decision's weight (idempotent)."""
        ...


def canary_share(decision: Decision, scale: int) -> tuple[int, int]:
    """(baseline, canary) integer weights summing to ``scale``; a halt is always (scale, 0)."""
    weight = RolloutView.of(decision).weight  # clamps to 0..100 and forces 0 on halt
    canary = round(weight * scale / 100)
    return scale - canary, canary


def managed_manifest(api_version: str, kind: str, name: str, namespace: str, decision: Decision,
                     spec: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes object that rollout-gate owns, labelled and annotated with the decision."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "rollout-gate"},
            "annotations": managed_annotations(decision),
        },
        "spec": spec,
    }


def managed_annotations(decision: Decision) -> dict[str, str]:
    return {
        "rollout-gate.io/rollout-id": decision.rollout_id,
        "rollout-gate.io/seq": str(decision.seq),
        "rollout-gate.io/stage": decision.stage,
        "rollout-gate.io/action": decision.action,
    }


async def drive(decisions: Any, adapter: TrafficAdapter) -> None:
    """Apply every decision of ``adapter.rollout_id`` from ``subscriber.decisions()``. ``apply`` may
    shell out, so it runs in a thread instead of stalling the subscriber's loop."""
    async for d in decisions:
        if d.rollout_id == adapter.rollout_id:
            await asyncio.to_thread(adapter.apply, d)
