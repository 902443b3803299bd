"""LiteLLM: the ``weight`` of the baseline and canary deployments of one model group.

LiteLLM's router (``routing_strategy: simple-shuffle``, the default) picks a deployment of a model
group at random in proportion to ``litellm_params.weight``. A decision sets the two deployments'
weights in basis points (baseline + canary = 10000); a halt sets the canary's to 0, so the router
sends it nothing.

Two ways in, one interface:

- :class:`LiteLLMRouterAdapter` changes the weights of a running :class:`litellm.Router` in place,
  for code that embeds the router, or the proxy's own router from a callback loaded by the proxy
  (``connectors.litellm.RolloutGateCallback``). It needs no database.
- :class:`LiteLLMProxyAdapter` calls the proxy's ``POST /model/update`` with the master key. The
  proxy accepts it only for deployments stored in its database (``STORE_MODEL_IN_DB=True`` and a
  ``DATABASE_URL``; deployments from ``config.yaml`` are refused), and reports the error, which this
  adapter raises.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from connectors.adapters import canary_share
from gates.decision import Decision

SCALE = 10_000


def _weights(decision: Decision, baseline_id: str, canary_id: str) -> dict[str, int]:
    base_w, canary_w = canary_share(decision, SCALE)
    return {baseline_id: base_w, canary_id: canary_w}


class LiteLLMRouterAdapter:
    """Sets ``litellm_params.weight`` in a router's ``model_list`` (what simple-shuffle reads on every
    request). ``router`` is the Router or a function returning it (the proxy creates its router after
    loading callbacks, so the proxy callback passes a getter)."""

    def __init__(self, router: Any | Callable[[], Any], *, rollout_id: str, baseline_id: str, canary_id: str) -> None:
        self._router = router if callable(router) and not hasattr(router, "model_list") else (lambda: router)
        self.rollout_id, self.baseline_id, self.canary_id = rollout_id, baseline_id, canary_id

    def render(self, decision: Decision) -> dict[str, Any]:
        return {"model_weights": _weights(decision, self.baseline_id, self.canary_id)}

    def router(self) -> Any:
        return self._router()

    def current(self) -> dict[str, int | None]:
        router = self.router()
        if router is None:
            return {}
        return {m["model_info"]["id"]: m["litellm_params"].get("weight")
                for m in router.model_list if m.get("model_info", {}).get("id") in (self.baseline_id, self.canary_id)}

    def apply(self, decision: Decision) -> None:
        router = self.router()
        if router is None:
            raise RuntimeError("the LiteLLM router is not created yet")
        wanted = _weights(decision, self.baseline_id, self.canary_id)
        found = {m["model_info"]["id"]: m for m in router.model_list
                 if isinstance(m, dict) and m.get("model_info", {}).get("id") in wanted}
        missing = set(wanted) - set(found)
        if missing:
            raise KeyError(f"no deployment with model_info.id {', '.join(sorted(missing))} in the LiteLLM router")
        # canary first when it shrinks, baseline first when it grows: in between, the canary never
        # holds more than either its old or its new share
        order = [self.canary_id, self.baseline_id]
        if wanted[self.canary_id] > (found[self.canary_id]["litellm_params"].get("weight") or 0):
            order.reverse()
        for model_id in order:
            found[model_id]["litellm_params"]["weight"] = wanted[model_id]


class LiteLLMProxyAdapter:
    """``POST {base_url}/model/update`` per deployment, authenticated with the proxy's master key."""

    def __init__(self, base_url: str, *, master_key: str, rollout_id: str, baseline_id: str, canary_id: str,
                 timeout: float = 10.0, opener: Callable[..., Any] = urllib.request.urlopen) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = master_key
        self.rollout_id, self.baseline_id, self.canary_id = rollout_id, baseline_id, canary_id
        self.timeout = timeout
        self._open = opener

    def render(self, decision: Decision) -> dict[str, Any]:
        return {"requests": [{"model_info": {"id": mid}, "litellm_params": {"weight": w}}
                             for mid, w in self._ordered(decision)]}

    def _ordered(self, decision: Decision) -> list[tuple[str, int]]:
        w = _weights(decision, self.baseline_id, self.canary_id)
        # shrink the canary before growing the baseline on a halt; the other way round on a promote
        ids = [self.canary_id, self.baseline_id] if decision.action == "halt" or w[self.canary_id] == 0 else \
            [self.baseline_id, self.canary_id]
        return [(mid, w[mid]) for mid in ids]

    def apply(self, decision: Decision) -> None:
        for body in self.render(decision)["requests"]:
            req = urllib.request.Request(
                f"{self.base_url}/model/update", data=json.dumps(body).encode(), method="POST",
                headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"},
            )
            try:
                with self._open(req, timeout=self.timeout) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[-500:]
                raise RuntimeError(f"LiteLLM /model/update for {body['model_info']['id']} failed ({exc.code}): "
                                   f"{detail}") from None
