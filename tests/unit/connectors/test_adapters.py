"""Contract tests: every traffic adapter, against its fake, must obey the same rules."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.adapters import TrafficAdapter, canary_share
from connectors.adapters.gateway_api import AIBackend, AIGatewayRouteAdapter, Backend, GatewayAPIAdapter
from connectors.adapters.istio import Destination, IstioAdapter
from connectors.adapters.kube import FakeKubeClient, KubectlClient, run_command
from connectors.adapters.nginx import NginxAdapter
from connectors.testing import decision


@dataclass
class Target:
    """An adapter, and how to read back what the fake target now serves as (baseline, canary)."""

    adapter: TrafficAdapter
    live: Callable[[], tuple[float, float] | None]
    parse: Callable[[Any], tuple[float, float]]


def istio_weights(vs: dict[str, Any]) -> tuple[float, float]:
    route = vs["spec"]["http"][0]["route"]
    assert [r["destination"]["subset"] for r in route] == ["baseline", "canary"]
    assert all(isinstance(r["weight"], int) for r in route) and sum(r["weight"] for r in route) == 100
    return route[0]["weight"], route[1]["weight"]


def httproute_weights(route: dict[str, Any]) -> tuple[float, float]:
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [r["name"] for r in refs] == ["chat-baseline", "chat-canary"]
    return refs[0]["weight"], refs[1]["weight"]


def nginx_weights(text: str) -> tuple[float, float]:
    lines = [line.split() for line in text.splitlines() if line.strip().startswith("server ")]
    assert [parts[1] for parts in lines] == ["10.0.0.1:8000", "10.0.0.2:8000"]
    out = []
    for parts in lines:
        out.append(0.0 if parts[2] == "down;" else float(parts[2].removeprefix("weight=").rstrip(";")))
    return out[0], out[1]


def make_istio(tmp_path: Path) -> Target:
    kube = FakeKubeClient()
    a = IstioAdapter(
        kube,
        rollout_id="chat-v7",
        name="chat",
        namespace="llm",
        hosts=["chat.llm.svc"],
        baseline=Destination("chat", "baseline"),
        canary=Destination("chat", "canary"),
    )
    live = kube.get
    return Target(
        a, lambda: istio_weights(o) if (o := live("VirtualService", "llm", "chat")) else None, istio_weights
    )


def make_gateway(tmp_path: Path) -> Target:
    kube = FakeKubeClient()
    a = GatewayAPIAdapter(
        kube,
        rollout_id="chat-v7",
        name="chat",
        namespace="llm",
        parent_refs=[{"name": "public-gw"}],
        baseline=Backend("chat-baseline", 80),
        canary=Backend("chat-canary", 80),
    )
    return Target(
        a,
        lambda: httproute_weights(o) if (o := kube.get("HTTPRoute", "llm", "chat")) else None,
        httproute_weights,
    )


def ai_route_weights(route: dict[str, Any]) -> tuple[float, float]:
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [r["name"] for r in refs] == ["chat-v6", "chat-v7"]
    return refs[0]["weight"], refs[1]["weight"]


def make_ai_gateway(tmp_path: Path) -> Target:
    kube = FakeKubeClient()
    a = AIGatewayRouteAdapter(
        kube,
        rollout_id="chat-v7",
        name="chat",
        namespace="llm",
        parent_refs=[{"name": "ai-gw"}],
        model="chat",
        baseline=AIBackend("chat-v6"),
        canary=AIBackend("chat-v7"),
    )
    return Target(
        a,
        lambda: ai_route_weights(o) if (o := kube.get("AIGatewayRoute", "llm", "chat")) else None,
        ai_route_weights,
    )


def make_inference_pools(tmp_path: Path) -> Target:
    kube = FakeKubeClient()
    a = GatewayAPIAdapter(
        kube,
        rollout_id="chat-v7",
        name="chat",
        namespace="llm",
        parent_refs=[{"name": "inference-gw"}],
        baseline=Backend.inference_pool("chat-baseline"),
        canary=Backend.inference_pool("chat-canary"),
    )
    return Target(
        a,
        lambda: httproute_weights(o) if (o := kube.get("HTTPRoute", "llm", "chat")) else None,
        httproute_weights,
    )


def make_nginx(tmp_path: Path) -> Target:
    path = tmp_path / "conf.d" / "chat-upstream.conf"
    reloads: list[Sequence[str]] = []
    a = NginxAdapter(
        rollout_id="chat-v7",
        path=path,
        upstream="chat",
        baseline="10.0.0.1:8000",
        canary="10.0.0.2:8000",
        runner=lambda argv, stdin: reloads.append(argv),
    )
    a.reloads = reloads  # type: ignore[attr-defined]
    return Target(a, lambda: nginx_weights(path.read_text()) if path.exists() else None, nginx_weights)


TARGETS = [make_istio, make_gateway, make_inference_pools, make_ai_gateway, make_nginx]


def share(w: tuple[float, float]) -> float:
    return 100.0 * w[1] / (w[0] + w[1])


@pytest.fixture(params=TARGETS, ids=["istio", "gateway-api", "inference-pool", "ai-gateway", "nginx"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return request.param(tmp_path)  # type: ignore[no-any-return]


@pytest.mark.parametrize("weight", [1.0, 10.0, 25.0, 50.0, 75.0, 100.0])
def test_render_carries_the_weight(target: Target, weight: float) -> None:
    rendered = target.adapter.render(decision("chat-v7", 3, weight=weight))
    assert share(target.parse(rendered)) == pytest.approx(weight)


def test_halt_renders_zero_canary_whatever_the_decision_says(target: Target) -> None:
    from gates.decision import Decision

    halt = Decision(**{**decision("chat-v7", 9, action="halt").to_dict(), "weight": 40.0, "gates": []})
    assert target.parse(target.adapter.render(halt))[1] == 0


def test_apply_makes_the_target_serve_the_decision(target: Target) -> None:
    assert target.live() is None
    target.adapter.apply(decision("chat-v7", 1, weight=10))
    assert share(target.live()) == pytest.approx(10)  # type: ignore[arg-type]
    target.adapter.apply(decision("chat-v7", 2, action="halt"))
    assert target.live()[1] == 0  # type: ignore[index]
    target.adapter.apply(decision("chat-v7", 3, weight=100, action="complete", stage="complete"))
    assert share(target.live()) == pytest.approx(100)  # type: ignore[arg-type]


@settings(max_examples=60)
@given(st.floats(0, 100), st.floats(0, 100))
def test_shares_sum_to_the_scale_and_grow_with_weight(w1: float, w2: float) -> None:
    lo, hi = sorted((w1, w2))
    for scale in (100, 10_000):
        b_lo, c_lo = canary_share(decision("r", 1, weight=lo), scale)
        b_hi, c_hi = canary_share(decision("r", 1, weight=hi), scale)
        assert b_lo + c_lo == scale == b_hi + c_hi
        assert 0 <= c_lo <= c_hi <= scale
        assert abs(c_lo - lo * scale / 100) <= 0.5


def test_istio_rounds_fractions_gateway_keeps_them(tmp_path: Path) -> None:
    d = decision("chat-v7", 1, weight=0.5)
    assert istio_weights(make_istio(tmp_path).adapter.render(d)) in ((99, 1), (100, 0))  # type: ignore[arg-type]
    assert httproute_weights(make_gateway(tmp_path).adapter.render(d)) == (9950, 50)  # type: ignore[arg-type]


def test_manifests_are_labelled_with_the_decision(tmp_path: Path) -> None:
    for make in (make_istio, make_gateway, make_inference_pools, make_ai_gateway):
        m = make(tmp_path).adapter.render(decision("chat-v7", 7, weight=25, stage="canary-25"))
        assert isinstance(m, dict)
        ann = m["metadata"]["annotations"]
        assert ann["rollout-gate.io/seq"] == "7" and ann["rollout-gate.io/stage"] == "canary-25"
        assert m["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rollout-gate"


def test_nginx_writes_atomically_and_reloads_only_on_change(tmp_path: Path) -> None:
    t = make_nginx(tmp_path)
    a: Any = t.adapter
    a.apply(decision("chat-v7", 1, weight=10))
    a.apply(decision("chat-v7", 2, weight=10, action="hold"))  # same weights: no rewrite, no reload
    assert len(a.reloads) == 1 and "seq 1 " in a.path.read_text()
    a.apply(decision("chat-v7", 3, action="halt"))
    assert len(a.reloads) == 2 and a.reloads[-1] == ["nginx", "-s", "reload"]
    text = a.path.read_text()
    assert "server 10.0.0.2:8000 down;" in text and "server 10.0.0.1:8000 weight=1;" in text
    assert [p.name for p in a.path.parent.iterdir()] == ["chat-upstream.conf"]  # no temp files left


def test_nginx_reload_failure_surfaces(tmp_path: Path) -> None:
    a = NginxAdapter(
        rollout_id="r",
        path=tmp_path / "u.conf",
        upstream="u",
        baseline="a:1",
        canary="b:1",
        reload_command=["false"],
    )
    with pytest.raises(RuntimeError, match="false failed"):
        a.apply(decision("r", 1, weight=10))


def test_kubectl_client_pipes_the_manifest_as_json() -> None:
    calls: list[tuple[Sequence[str], bytes | None]] = []
    client = KubectlClient(context="prod", runner=lambda argv, stdin: calls.append((argv, stdin)))
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "y"}}
    client.apply(manifest)
    ((argv, stdin),) = calls
    assert argv == ["kubectl", "--context", "prod", "apply", "--field-manager=rollout-gate", "-f", "-"]
    assert stdin is not None and json.loads(stdin) == manifest


def test_run_command_passes_stdin_and_raises_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_command(["sh", "-c", f"cat > {out}"], b"hello")
    assert out.read_bytes() == b"hello"
    with pytest.raises(RuntimeError, match="boom"):
        run_command(["sh", "-c", "echo boom >&2; exit 3"], None)


async def test_drive_applies_only_its_rollout(tmp_path: Path) -> None:
    from connectors.adapters import drive

    t = make_istio(tmp_path)

    async def stream() -> Any:
        yield decision("someone-else", 1, weight=90)
        yield decision("chat-v7", 1, weight=25)

    await drive(stream(), t.adapter)
    assert share(t.live()) == pytest.approx(25)  # type: ignore[arg-type]
