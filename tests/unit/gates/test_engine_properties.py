"""Properties of the engine on realistic simulated streams: order within a tick, batching, snapshot
and restore, threshold monotonicity, and at-least-once delivery."""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gates.decision import Decision
from gates.engine import Engine, RolloutState
from gates.events import Event
from gates.policy import PolicySet
from gates.sim import Injection, SimConfig, Traffic

from .helpers import RID, SMALL, T0, as_json, small_policy, stream, summary

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip

# A/A and regressions near and beyond the limits, some starting mid-stream: streams that promote,
# halt, hold, and (with an onset) move the canary while the step runs.
INJECTIONS = [
    Injection(),
    Injection(cost=1.15),
    Injection(cost=1.35),
    Injection(refusals=3.0),
    Injection(latency_tail=2.5),
    Injection(length_mean=1.4),
    Injection(length_shape=0.5),
    Injection(feedback=3.0),
    Injection(length_mean=1.5, onset_s=90),
    Injection(cost=1.5, onset_s=120),
]
seeds = st.integers(0, 10_000)
injections = st.sampled_from(INJECTIONS)
weights = st.sampled_from([5.0, 20.0, 50.0])


def permute_within_ticks(evs: list[Event], rng: random.Random, eval_seconds: float) -> list[Event]:
    """Shuffle events inside each eval interval, keeping the intervals in order."""
    groups: dict[int, list[Event]] = {}
    for e in evs:
        groups.setdefault(math.floor(e.ts / eval_seconds), []).append(e)
    out: list[Event] = []
    for k in sorted(groups):
        g = groups[k][:]
        rng.shuffle(g)
        out.extend(g)
    return out


def in_chunks(engine: Engine, evs: list[Event], sizes: list[int]) -> list[Decision]:
    out: list[Decision] = []
    i, k = 0, 0
    while i < len(evs):
        n = sizes[k % len(sizes)] if sizes else len(evs)
        out.extend(engine.ingest(evs[i : i + n]))
        i += n
        k += 1
    return out


# ---- order of events within a tick ----------------------------------------------------------------


@given(seeds, injections, weights, st.integers(0, 2**31))
@example(seed=1, inj=Injection(cost=1.35), weight=50.0, shuffle_seed=468941787)  # once changed a gate status
@SETTINGS
def test_order_of_events_within_an_eval_tick_does_not_change_the_verdicts(
    seed: int, inj: Injection, weight: float, shuffle_seed: int
) -> None:
    policy = small_policy()  # drift restarts on: their onsets must not depend on the order either
    evs = stream(seed, inj, seconds=240, weight=weight)
    shuffled = permute_within_ticks(evs, random.Random(shuffle_seed), SMALL["eval_seconds"])
    assert sorted(id(e) for e in shuffled) == sorted(id(e) for e in evs)
    ref = Engine(policy).ingest(evs)
    got = Engine(policy).ingest(shuffled)
    assert summary(got) == summary(ref)
    # every verdict byte for byte, at the same tick times; only the start decision may differ, in
    # which arm's digest it already knew from the first event
    assert as_json(got)[1:] == as_json(ref)[1:]
    assert [d.ts for d in got] == [d.ts for d in ref]


def test_order_within_a_tick_does_not_change_the_verdicts_with_drift_restarts() -> None:
    # streams whose drift onsets (and so window restarts and halts) once moved with the order
    inj = Injection(length_mean=1.5, onset_s=90)
    for seed in (0, 3, 11):
        evs = stream(seed, inj, seconds=300, weight=50)
        shuffled = permute_within_ticks(evs, random.Random(seed), SMALL["eval_seconds"])
        for policy in (small_policy(drift_reset=False), small_policy()):
            assert summary(Engine(policy).ingest(shuffled)) == summary(Engine(policy).ingest(evs))


# ---- batching -------------------------------------------------------------------------------------


@given(seeds, injections, weights, st.lists(st.integers(1, 600), min_size=1, max_size=30))
@SETTINGS
def test_batching_does_not_change_the_decisions(seed: int, inj: Injection, weight: float, sizes: list[int]) -> None:
    policy = small_policy()
    evs = stream(seed, inj, seconds=240, weight=weight)
    ref = as_json(Engine(policy).ingest(evs))
    assert as_json(in_chunks(Engine(policy), evs, sizes)) == ref


def test_one_event_at_a_time_gives_the_same_decisions_as_one_batch() -> None:
    policy = small_policy()
    for inj in (Injection(), Injection(length_mean=1.5, onset_s=90), Injection(cost=1.4)):
        evs = stream(21, inj, seconds=300, weight=50)
        assert as_json(in_chunks(Engine(policy), evs, [1])) == as_json(Engine(policy).ingest(evs))


@given(seeds, injections, st.integers(20, 300))
@SETTINGS
def test_status_and_snapshot_calls_do_not_change_the_decisions(seed: int, inj: Injection, every: int) -> None:
    policy = small_policy()
    evs = stream(seed, inj, seconds=240, weight=50)
    ref = as_json(Engine(policy).ingest(evs))
    e = Engine(policy)
    out: list[Decision] = []
    for i in range(0, len(evs), every):
        out.extend(e.ingest(evs[i : i + every]))
        e.status(RID)
        e.snapshot(RID)
    assert as_json(out) == ref


# ---- snapshot and restore -------------------------------------------------------------------------


@given(seeds, injections, weights, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
@SETTINGS
def test_snapshot_restore_into_a_fresh_engine_matches_the_uninterrupted_run(
    seed: int, inj: Injection, weight: float, cut1: float, cut2: float
) -> None:
    policy = small_policy()
    evs = stream(seed, inj, seconds=240, weight=weight)
    ref = as_json(Engine(policy).ingest(evs))
    # two cuts (possibly equal); at least one event first, as a snapshot needs the rollout to exist
    a, b = sorted((max(int(cut1 * len(evs)), 1), max(int(cut2 * len(evs)), 1)))
    e = Engine(policy)
    out = e.ingest(evs[:a])
    for lo, hi in ((a, b), (b, len(evs))):
        blob = e.snapshot(RID)
        e = Engine(PolicySet.model_validate(policy.model_dump()))  # a fresh engine, an equal policy
        e.restore(RID, blob)
        out += e.ingest(evs[lo:hi])
    assert as_json(out) == ref


def test_restore_then_snapshot_is_the_same_state() -> None:
    policy = small_policy()
    e = Engine(policy)
    e.ingest(stream(22, Injection(length_mean=1.5, onset_s=60), seconds=200, weight=50))
    blob = e.snapshot(RID)
    f = Engine(policy)
    f.restore(RID, blob)
    again = f.snapshot(RID)
    st_a = msgspec.msgpack.decode(blob, type=RolloutState)
    st_b = msgspec.msgpack.decode(again, type=RolloutState)
    assert st_a == st_b
    assert f.status(RID) == e.status(RID)


# ---- a stricter threshold never promotes where a looser one halts ---------------------------------

# (gate, limit key, (strict, loose)) on the limits that a breach/pass compares against directly
TIGHTENINGS: list[tuple[str, str, tuple[float, float]]] = [
    ("cost", "max_ratio", (1.1, 1.3)),
    ("cost", "max_ratio", (1.2, 1.5)),
    ("errors", "max_ratio", (1.5, 2.5)),
    ("feedback", "max_ratio", (1.3, 2.0)),
    ("output_length", "mean_ratio", (1.15, 1.4)),
    ("output_length", "max_shape_distance", (0.08, 0.15)),
]


def _leaves_first_step(decisions: list[Decision]) -> Decision | None:
    """The decision that ends the first step (a gate promote or halt); holds do not end it."""
    return next((d for d in decisions if d.trigger == "gates" and d.action != "hold"), None)


@given(seeds, injections, st.sampled_from(TIGHTENINGS))
@SETTINGS
def test_a_stricter_threshold_never_promotes_where_a_looser_one_halts(
    seed: int, inj: Injection, tightening: tuple[str, str, tuple[float, float]]
) -> None:
    gate, key, (strict, loose) = tightening
    evs = stream(seed, inj, seconds=400, weight=50)
    a = _leaves_first_step(Engine(small_policy(gates={gate: {key: strict}})).ingest(evs))
    b = _leaves_first_step(Engine(small_policy(gates={gate: {key: loose}})).ingest(evs))
    # Both runs see the same stream and the same window until one of them leaves the first step.
    if b is not None and b.action == "halt":
        # the looser policy halts: the stricter one halted no later, and never promoted before that
        assert a is not None and a.action == "halt" and a.ts <= b.ts
    if a is not None and a.action in ("promote", "complete"):
        # the stricter policy promotes: the looser one promoted no later
        assert b is not None and b.action in ("promote", "complete") and b.ts <= a.ts


# ---- at-least-once delivery: offsets dedupe -------------------------------------------------------


def _messages(evs: list[Event], size: int) -> list[list[Event]]:
    return [evs[i : i + size] for i in range(0, len(evs), size)]


def _state(e: Engine) -> dict[str, Any]:
    st = msgspec.to_builtins(msgspec.msgpack.decode(e.snapshot(RID), type=RolloutState))
    st.pop("offsets")
    st.pop("drift")  # pickled ADWIN bytes; the decisions and the window carry the verdicts
    return st  # type: ignore[no-any-return]


@given(seeds, st.integers(5, 200), st.lists(st.integers(0, 10_000), min_size=1, max_size=15))
@SETTINGS
def test_the_same_message_ingested_twice_counts_once(seed: int, size: int, dups: list[int]) -> None:
    policy = small_policy()
    msgs = _messages(stream(seed, Injection(cost=1.3), seconds=200, weight=50), size)
    plain = Engine(policy)
    ref = [d for m in msgs for d in plain.ingest(m)]

    e = Engine(policy)
    out: list[Decision] = []
    again = {d % len(msgs) for d in dups}
    for off, m in enumerate(msgs):
        out += e.ingest(m, source="events:0", offset=off)
        if off in again:  # redelivered right away, and an older message once more
            assert e.ingest(m, source="events:0", offset=off) == []
            assert e.ingest(msgs[off // 2], source="events:0", offset=off // 2) == []
    assert as_json(out) == as_json(ref)
    assert _state(e) == _state(plain)
    assert e.status(RID).samples == plain.status(RID).samples


def test_offsets_are_per_source() -> None:
    policy = small_policy()
    evs = stream(30, seconds=60, weight=50)
    half = len(evs) // 2
    e = Engine(policy)
    e.ingest(evs[:half], source="events:0", offset=7)
    e.ingest(evs[half:], source="events:1", offset=7)  # same offset, another partition: new data
    ref = Engine(policy)
    ref.ingest(evs)
    assert e.status(RID).samples == ref.status(RID).samples
    e.ingest(evs[:half], source="events:0", offset=7)  # a redelivery of the first
    assert e.status(RID).samples == ref.status(RID).samples


def test_a_redelivered_message_after_restore_is_skipped() -> None:
    policy = small_policy()
    msgs = _messages(stream(31, Injection(cost=1.4), seconds=200, weight=50), 100)
    ref = Engine(policy)
    ref_out = [d for m in msgs for d in ref.ingest(m)]
    e = Engine(policy)
    out: list[Decision] = []
    cut = len(msgs) // 2
    for off in range(cut):
        out += e.ingest(msgs[off], source="ev:0", offset=off)
    blob = e.snapshot(RID)
    f = Engine(policy)
    f.restore(RID, blob)
    # the consumer restarts from an older committed position: messages before the cut come again
    for off in range(cut - 5, len(msgs)):
        out += f.ingest(msgs[off], source="ev:0", offset=off)
    assert as_json(out) == as_json(ref_out)


# ---- the paired-by-block contrast ----------------------------------------------------------------


def _shared_stream(seed: int, inj: Injection, *, seconds: int = 240, weight: float = 50.0) -> list[Event]:
    """``stream`` with half of the run-to-run noise common to both arms."""
    cfg = SimConfig(rps=20.0, seed=seed, start_ts=T0, shared_noise=0.5)
    traffic = Traffic(cfg, inj)
    out: list[Event] = []
    for i in range(seconds):
        out.extend(traffic.tick(T0 + i, weight))
    return out


@given(seeds, injections, st.lists(st.integers(1, 600), min_size=1, max_size=30), st.floats(0.0, 1.0))
@SETTINGS
def test_paired_blocks_decisions_are_a_function_of_the_event_log(
    seed: int, inj: Injection, sizes: list[int], cut: float
) -> None:
    # in batches, or cut by a snapshot and a restore into a fresh engine: the same decisions
    policy = small_policy(paired_blocks=True)
    evs = _shared_stream(seed, inj)
    ref = as_json(Engine(policy).ingest(evs))
    assert as_json(in_chunks(Engine(policy), evs, sizes)) == ref
    a = max(int(cut * len(evs)), 1)
    e = Engine(policy)
    out = e.ingest(evs[:a])
    blob = e.snapshot(RID)
    e = Engine(PolicySet.model_validate(policy.model_dump()))
    e.restore(RID, blob)
    out += e.ingest(evs[a:])
    assert as_json(out) == ref


def test_paired_blocks_narrow_the_cost_bounds_when_the_arms_share_noise() -> None:
    narrower = 0
    for seed in range(6):
        evs = _shared_stream(seed, Injection(), seconds=300)
        widths = []
        for on in (False, True):
            e = Engine(small_policy(paired_blocks=on, drift_reset=False))
            e.ingest(evs)
            (cost,) = [g for g in e.status(RID).gates if g.name == "cost"]
            assert cost.lower is not None and cost.upper is not None
            widths.append(math.log(cost.upper / cost.lower))
        narrower += widths[1] < widths[0]
    assert narrower >= 5
