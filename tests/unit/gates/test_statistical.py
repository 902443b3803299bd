"""The gates' statistical behaviour on the lesson's simulator, with the default policy.

A/A: the candidate is the baseline model, with the lesson's run-to-run noise (up to 15%): no run
may halt. Regressions strictly beyond each limit: every run must halt, and on the right gate.
Seeded and sized for CI (about a minute of CPU)."""

from __future__ import annotations

import pytest

from gates.engine import Engine
from gates.sim import RunResult, SimConfig, parse_injections, run

pytestmark = pytest.mark.slow

AA_SEEDS = list(range(12))
REGRESSION_SEEDS = [0, 1, 2]

# injection -> (the gate that must halt it, words of that gate's sentence in the halt reason)
REGRESSIONS: dict[str, tuple[str, str]] = {
    "cost=+40%": ("cost", "cost per request"),  # limit 1.2x
    "refusal=x4": ("errors", "error+refusal rate"),  # 1% errors + 2% refusals -> 1% + 8%: 3x, limit 2x
    "latency=x3": ("latency", "P99 latency"),  # P99 x3 at the same median, limit 1.5x
    "length=+60%": ("output_length", "output length"),  # mean x1.6, limit 1.25x
    "shape=0.6": ("output_length", "output-length distribution"),  # same mean, bimodal: KS ~0.3 > 0.12
    "feedback=x3": ("feedback", "negative-feedback rate"),  # limit 1.5x
}


@pytest.mark.parametrize("seed", AA_SEEDS)
def test_aa_with_the_lessons_noise_completes_without_a_halt(seed: int) -> None:
    res = run(Engine(), SimConfig(rps=100, seed=seed, noise=0.15, max_seconds=4 * 3600), parse_injections([]))
    assert "halt" not in [d.action for d in res.decisions], res.decisions[-1].reason
    assert res.outcome == "complete", (res.outcome, res.decisions[-1].reason)
    assert [d.weight for d in res.decisions if d.action != "hold"] == [1, 10, 25, 50, 75, 100]


def _regression(spec: str, seed: int) -> RunResult:
    return run(Engine(), SimConfig(rps=100, seed=seed, noise=0.15, max_seconds=3600), parse_injections([spec]))


@pytest.mark.parametrize("seed", REGRESSION_SEEDS)
@pytest.mark.parametrize("spec", list(REGRESSIONS))
def test_a_regression_beyond_the_limit_halts_on_the_right_gate(spec: str, seed: int) -> None:
    gate, words = REGRESSIONS[spec]
    res = _regression(spec, seed)
    assert res.outcome == "halt", (spec, seed, res.outcome, res.decisions[-1].reason)
    halt = res.decisions[-1]
    assert halt.action == "halt" and halt.weight == 0 and halt.stage == "rolled-back"
    breached = [g.name for g in halt.gates if g.status == "breach"]
    if spec.startswith("length"):
        # the simulator prices output tokens, so +60% length is also +39% cost per request (limit 1.2x):
        # a cost breach next to the length breach is right too (2 of 30 seeds in a wider run)
        assert gate in breached and set(breached) <= {gate, "cost"}, (spec, seed, breached)
    else:
        assert res.halted_gate == gate, (spec, seed, breached)
    # the reason names the gate: its sentence leads, or it is listed among the other breaches
    head, _, also = halt.reason.partition("Also breached:")
    assert words in head or gate in also, halt.reason
    assert halt.baseline_digest is not None and halt.baseline_digest in halt.reason
    # caught at the first canary step: at most 1% of users ever saw the candidate
    assert res.halted_stage == "canary-1"
