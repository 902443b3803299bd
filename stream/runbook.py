"""``rollout-gate plan``: the lesson's runbook (shadow -> canary -> 100%) sized from traffic.

Each step lasts until every gate could pass an A/A canary, computed from the same statistics the
engine uses: a log-ratio standard error from per-request variance on both arms plus the
run-to-run noise floor per block, against the confidence-sequence width. The detection column
says which regression size (set by ``--risk``) a step can catch before it would promote.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gates.policy import PolicySet, RolloutPolicy
from gates.stats import cs_z

RISK_MULTIPLE = {"low": 1.1, "medium": 1.25, "high": 1.5}  # catch regressions this far past each limit
NOISE = 0.15  # the lesson's run-to-run non-determinism


class RunbookError(ValueError):
    pass


@dataclass(frozen=True)
class GateModel:
    name: str
    limit: float
    cv2: float  # per-request squared coefficient of variation of the gated quantity
    what: str


def _gate_models(p: RolloutPolicy) -> list[GateModel]:
    g = p.gates
    # Assumed production shapes (stated in the runbook): cost and length per request vary with a
    # CV of about 0.6; error+refusal and negative feedback run near 3%; a P99 is a 1% tail rate.
    models = [
        GateModel("latency", g.latency.max_ratio, (1 - 0.01) / 0.01 / 4.0, f"P99 latency > {g.latency.max_ratio:g}x"),
        GateModel("cost", g.cost.max_ratio, 0.36, f"cost per request > {g.cost.max_ratio:g}x"),
        GateModel("errors", g.errors.max_ratio, (1 - 0.03) / 0.03, f"error+refusal rate > {g.errors.max_ratio:g}x"),
        GateModel("output_length", g.output_length.mean_ratio, 0.36,
                  f"output length mean outside {1 / g.output_length.mean_ratio:.2f}-{g.output_length.mean_ratio:g}x"),
        GateModel("feedback", g.feedback.max_ratio, (1 - 0.03) / 0.03, f"negative feedback > {g.feedback.max_ratio:g}x"),
    ]  # fmt: skip
    enabled = {"latency": g.latency.enabled, "cost": g.cost.enabled, "errors": g.errors.enabled,
               "output_length": g.output_length.enabled, "feedback": g.feedback.enabled}  # fmt: skip
    return [m for m in models if enabled[m.name]]


def promote_bound(p: RolloutPolicy) -> tuple[float, float]:
    """(risk, mixture tuning) of the bounds a promotion reads, as the engine sets them: each decision
    looks at one side of a two-sided boundary run at twice the one-sided risk."""
    rho = p.cs_rho_blocks if p.cs_rho_promote_blocks is None else p.cs_rho_promote_blocks
    return min(2 * p.promote_risk, 0.8), rho


def halt_bound(p: RolloutPolicy) -> tuple[float, float]:
    """(risk, mixture tuning) of the bounds a halt reads (see :func:`promote_bound`)."""
    return min(2 * p.false_halt_budget, 0.5), p.cs_rho_blocks


def seconds_to_resolve(m: GateModel, delta: float, weight: float, rps: float, p: RolloutPolicy, alpha: float,
                       rho: float | None = None) -> float:
    """Event time until z * se(log ratio) < delta at this canary weight (fixed point in blocks);
    ``alpha`` and ``rho`` (default: ``cs_rho_blocks``) are the boundary's two-sided risk and tuning."""
    w = weight / 100.0
    noise_var = 2 * NOISE**2 / 3  # two arms, uniform +-NOISE per block
    t = p.block_seconds * p.min_blocks
    for _ in range(50):
        blocks = max(t / p.block_seconds, 1.0)
        z = cs_z(blocks, alpha, p.cs_rho_blocks if rho is None else rho)
        need = z * z * (m.cv2 / (rps * w) + m.cv2 / (rps * max(1 - w, 1e-3)) + noise_var * p.block_seconds) / delta**2
        if abs(need - t) < 1:
            break
        t = need
    return max(t, p.block_seconds * p.min_blocks)


def _mins(s: float) -> str:
    return f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "rollout"


def render_runbook(
    *, baseline: str, candidate: str, rps: float, risk: str, policy: PolicySet, rollout_id: str | None = None
) -> str:
    if risk not in RISK_MULTIPLE:
        raise RunbookError(f"--risk must be low, medium or high, not {risk!r}")
    if not math.isfinite(rps) or rps <= 0:
        raise RunbookError("--rps must be a positive number")
    rid = rollout_id or _slug(candidate)
    p = policy.for_rollout(rid)
    mult = RISK_MULTIPLE[risk]
    models = _gate_models(p)
    lines: list[str] = []
    add = lines.append
    add(f"# Rollout runbook: {baseline} -> {candidate}\n")
    add(f"- rollout id: `{rid}`   traffic: {rps:g} req/s   risk: **{risk}** (catch regressions {mult:g}x past "
        f"each limit before promoting)")  # fmt: skip
    add("- gates: " + "; ".join(m.what for m in models))
    add(f"- decision rule: halt when a gate is past its limit with {100 * (1 - p.false_halt_budget):g}% confidence "
        f"(valid over every look); promote when every gate is within it, with at least {p.min_samples} canary "
        f"requests and {p.min_step_seconds / 60:g} min at the step\n")  # fmt: skip
    add("## Before you start\n")
    add("1. Pin both models by registry digest; the baseline digest is what a halt pins back.")
    add(f"2. Every inference service publishes one event per request with `rollout_id: {rid}` and `arm` "
        "(`baseline`, `canary` or `shadow`) to `rollout.events`; user feedback follows as `type: feedback`.")  # fmt: skip
    add("3. The worker runs (`rollout-gate worker`) and the router follows `rollout.decisions`; the Grafana "
        "dashboard *rollout-gate* shows the rollout.\n")  # fmt: skip
    total = 0.0
    use_shadow = p.shadow.enabled or risk != "high"
    add("## Plan\n")
    add("| step | canary traffic | expected duration | canary requests | slowest gate | catches at this step |")
    add("|---|---|---|---|---|---|")
    if use_shadow:
        # shadow runs the candidate on a copy of all traffic: weight-equivalent 50/50 sample sizes
        secs = max(seconds_to_resolve(m, math.log(m.limit), 50.0, 2 * rps, p, *promote_bound(p))
                   for m in models if m.name != "feedback")  # fmt: skip
        secs = min(max(secs, p.shadow.min_seconds), p.shadow.max_seconds)
        total += secs
        add(f"| shadow | 0% (copies of every request) | {_mins(secs)} | {rps * secs:,.0f} | - | cost, length, "
            f"refusals, errors, latency; a 40% cost spike stops it here |")  # fmt: skip
    for w in p.steps[:-1]:
        times = {m.name: seconds_to_resolve(m, math.log(m.limit), w, rps, p, *promote_bound(p)) for m in models}
        slow = max(times, key=lambda k: times[k])
        secs = min(max(times[slow], p.min_step_seconds, p.min_samples / (rps * w / 100)), p.max_step_seconds)
        total += secs
        caught = [m.name for m in models if seconds_to_resolve(
            m, math.log(mult), w, rps, p, *halt_bound(p)) <= secs]  # fmt: skip
        note = " (capped: expect a hold; raise traffic or max_step_seconds)" if times[slow] > p.max_step_seconds else ""
        add(f"| canary-{w:g} | {w:g}% | {_mins(secs)}{note} | {rps * w / 100 * secs:,.0f} | {slow} | "
            f"{', '.join(caught) or 'only gross regressions'} |")  # fmt: skip
    add("| complete | 100% | - | - | - | - |\n")
    add(f"Expected time to 100% for a healthy candidate: **{_mins(total)}**. Steps 1% -> 10% -> 25% -> 50% -> "
        "75% -> 100% as in the policy; each step waits for enough samples, never for a fixed timer alone.\n")  # fmt: skip
    if p.ab.enabled:
        add(f"An A/B verdict is taken at {p.ab.weight:g}%: that step runs at least {p.ab.min_seconds / 60:g} min "
            f"and {p.ab.min_samples:,} canary requests, and its promote decision says better/worse per metric.\n")  # fmt: skip
    else:
        add("If the candidate is distinctly different (tone, cost curve), enable the A/B verdict at 50% "
            "(`ab.enabled: true` in the policy) before starting.\n")  # fmt: skip
    add("## Rollback (seconds, not a redeploy)\n")
    add("The worker halts by itself on a breach. To roll back by hand:\n")
    add("```bash")
    add(f"rollout-gate command rollback {rid} --reason 'describe why'   # router: weight 0, baseline digest pinned")
    add(f"rollout-gate command pause {rid} --reason 'investigating'     # hold: no automatic promotion")
    add(f"rollout-gate command resume {rid}")
    add(f"rollout-gate command promote {rid} --reason 'accepted by owner'  # force the next step")
    add("```\n")
    add("Routers apply a decision within a second of it being published; they keep the last known weight "
        "if Kafka is away. Check: `curl -s localhost:8090/rollouts/" + rid + " | jq .weight`.\n")  # fmt: skip
    add("## Alerts to watch\n")
    add("- `RolloutHalted`: a halt decision was published; read its `reason` on the dashboard.")
    add("- `RolloutGateBreach`: a gate is past its limit.")
    add("- `RolloutGateInsufficientTooLong`: a gate has stayed inconclusive; traffic may be too low for the step.")
    add("- `RolloutShadowCostSpike`: in shadow, the candidate costs over 1.4x the baseline per request.")
    add("- `RolloutEventTimeLagHigh`, `RolloutGateConsumerLagHigh`: decisions would be late.")
    add("- `RolloutGateDeadLetterRateHigh`: producers send events that break the contract (see the DLQ).")
    add("- `RolloutPublisherDroppingEvents`: an inference service is dropping events.")
    add("- `RolloutGateWorkerDown`: no worker is gating.\n")
    add("## Assumptions behind the durations\n")
    add(f"Run-to-run non-determinism of ±{NOISE:.0%} per {p.block_seconds:g} s block on each arm; cost and "
        "length per request with a CV of about 0.6; error+refusal and negative-feedback rates near 3%. Real "
        "traffic with rarer errors or feedback needs longer steps: `rollout-gate simulate --rps "
        f"{rps:g}` shows the engine on your traffic level.")  # fmt: skip
    return "\n".join(lines) + "\n"
