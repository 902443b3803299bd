"""The gate engine: events in, state and decisions out. Pure and deterministic.

Time is event time only. Gates are evaluated at fixed event-time ticks (``eval_seconds``) as
events cross them, so the decisions depend on the sequence of events and not on how they were
batched: a replay of a log and the live worker give the same decisions. Aggregates are integers,
so the state does not depend on batching either.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from gates import change
from gates import window as win
from gates.checks import evaluate_gates
from gates.commands import Command, replay_reason
from gates.decision import Decision, GateResult
from gates.drift import MIN_SHIFT, Detectors, DriftState, canary_onset
from gates.events import ARMS, Event, InferenceEvent
from gates.pending import PendingBatch
from gates.policy import PolicySet, RolloutPolicy
from gates.sketch import LN_GAMMA
from gates.stats import cs_z

SHADOW = "shadow"
COMPLETE = "complete"
ROLLED_BACK = "rolled-back"
STATE_VERSION = 1


def stage_name(weight: float) -> str:
    return f"canary-{weight:g}"


class RolloutState(msgspec.Struct):
    rollout_id: str
    stage: str
    weight: float
    step_index: int  # -1 while in shadow
    step_start: float
    window: win.Window
    seq: int = 0
    watermark: float = -math.inf
    next_eval: float = -math.inf
    paused: bool = False
    terminal: bool = False
    held: bool = False  # a max-step-time hold was already emitted for this step
    baseline_digest: str | None = None
    canary_digest: str | None = None
    offsets: dict[str, int] = {}
    last_gates: list[GateResult] = []
    drift: DriftState = msgspec.field(default_factory=DriftState)
    events: dict[str, int] = {}
    ignored: int = 0  # events after the rollout ended
    version: int = STATE_VERSION
    # samples per arm when the rollout ended: its window is dropped then, so an ended rollout keeps
    # a few hundred bytes of state, not its blocks and sketches
    final_samples: dict[str, int] = {}
    # operator commands applied: the latest one's ts and the nonces applied at that ts, so that a
    # command sent again (captured and replayed) is refused (gates.commands.replay_reason)
    command_ts: float = -math.inf
    command_nonces: list[str] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RolloutState)


@dataclass
class RolloutStatus:
    rollout_id: str
    stage: str
    weight: float
    paused: bool
    terminal: bool
    seq: int
    gates: list[GateResult]
    samples: dict[str, int]
    watermark: float
    drift_alarms: dict[str, int]
    events: dict[str, int]


@dataclass
class StepProgress:
    """Where the current step stands against the policy's limits (read-only; for status views)."""

    arm: str  # the tested arm: canary, or shadow while in shadow
    step_start: float
    watermark: float
    tested_samples: int
    blocks: int  # blocks with both arms
    min_samples: int
    min_seconds: float
    max_seconds: float
    min_blocks: int
    min_halt_samples: int
    block_seconds: float
    paused: bool
    held: bool
    terminal: bool


_TS = operator.attrgetter("ts")
_RID = operator.attrgetter("rollout_id")
ARM_NAMES = ARMS  # in the order of the pending batch's arm codes
BLOCK_SKETCH_ARMS = frozenset(ARM_NAMES) - {"baseline"}  # the baseline keeps window-wide sketches only
# the arm codes whose first model digest is still wanted, by (baseline's unknown, canary's unknown):
# the canary's digest is also the shadow arm's
_UNKNOWN_DIGESTS: dict[tuple[bool, bool], tuple[int, ...]] = {
    (False, False): (), (True, False): (0,), (False, True): (1, 2), (True, True): (0, 1, 2),
}  # fmt: skip


class Engine:
    def __init__(self, policy: PolicySet | None = None) -> None:
        self.policy_set = policy or PolicySet()
        self._states: dict[str, RolloutState] = {}
        self._policies: dict[str, RolloutPolicy] = {}
        self._pending: dict[str, PendingBatch] = {}
        self._detectors: dict[str, Detectors] = {}
        self._dirty: set[str] = set()
        # the latest event time seen in any rollout: the worker's clock for idle rollouts
        self.event_time = -math.inf
        self._live = 0  # rollouts neither halted nor complete (gates.admission caps them)
        self._source_high: dict[str, int] = {}  # the highest offset counted, per source

    def knows(self, rollout_id: str) -> bool:
        return rollout_id in self._states

    def live_rollouts(self) -> int:
        return self._live

    def source_offset(self, source: str) -> int:
        """The highest offset of ``source`` any rollout counted (-1 if none)."""
        return self._source_high.get(source, -1)

    def command_replayed(self, cmd: Command, source: str | None = None, offset: int | None = None) -> str | None:
        """Why the rollout refuses ``cmd`` as a replay, or None (also for a message delivered again
        after a restart, which ``command`` skips by its offset)."""
        st = self._states.get(cmd.rollout_id)
        if st is None or (source is not None and offset is not None and st.offsets.get(source, -1) >= offset):
            return None
        return replay_reason(cmd, st.command_ts, st.command_nonces)

    # ---- queries ---------------------------------------------------------------------------
    def rollout_ids(self) -> list[str]:
        return sorted(self._states)

    def dirty(self) -> set[str]:
        return set(self._dirty)

    def clear_dirty(self) -> None:
        self._dirty.clear()

    def policy(self, rollout_id: str) -> RolloutPolicy:
        p = self._policies.get(rollout_id)
        if p is None:
            p = self._policies[rollout_id] = self.policy_set.for_rollout(rollout_id)
        return p

    def status(self, rollout_id: str) -> RolloutStatus:
        st = self._states[rollout_id]
        self._flush(st)
        samples = dict(st.final_samples) if st.terminal else _samples(st)
        return RolloutStatus(
            rollout_id=rollout_id, stage=st.stage, weight=st.weight, paused=st.paused, terminal=st.terminal,
            seq=st.seq, gates=list(st.last_gates), samples=samples, watermark=st.watermark,
            drift_alarms=dict(st.drift.alarms), events=dict(st.events),
        )  # fmt: skip

    def progress(self, rollout_id: str) -> StepProgress:
        """The current step's counts and the policy limits they are held to. Reads the state only
        (pending events are folded first, as ``status`` does)."""
        st = self._states[rollout_id]
        self._flush(st)
        p = self.policy(rollout_id)
        arm = SHADOW if st.stage == SHADOW else "canary"
        blocks = st.window.blocks.values()
        both = sum(1 for b in blocks if b.get(arm) and b[arm].n and b.get("baseline") and b["baseline"].n)
        n_test = sum(b[arm].n for b in blocks if arm in b)
        min_n, min_s, max_s = self._step_limits(st, p)
        return StepProgress(arm=arm, step_start=st.step_start, watermark=st.watermark, tested_samples=n_test,
                            blocks=both, min_samples=min_n, min_seconds=min_s, max_seconds=max_s,
                            min_blocks=p.min_blocks, min_halt_samples=p.min_halt_samples,
                            block_seconds=p.block_seconds, paused=st.paused, held=st.held,
                            terminal=st.terminal)  # fmt: skip

    def seen(self, rollout_id: str, source: str, offset: int) -> bool:
        """Whether the rollout already counted this source offset (a message delivered again)."""
        st = self._states.get(rollout_id)
        return st is not None and st.offsets.get(source, -1) >= offset

    # ---- state as a value ------------------------------------------------------------------
    def snapshot(self, rollout_id: str) -> bytes:
        st = self._states[rollout_id]
        self._flush(st)
        det = self._detectors.get(rollout_id)
        if det is not None:
            det.dump()
        win.canonicalize(st.window)  # equal states encode to equal bytes, however they were batched
        return _encoder.encode(st)

    def restore(self, rollout_id: str, blob: bytes) -> None:
        st = _decoder.decode(blob)
        if st.rollout_id != rollout_id:
            raise ValueError(f"snapshot is for rollout {st.rollout_id!r}, not {rollout_id!r}")
        old = self._states.get(rollout_id)
        self._live += (not st.terminal) - (old is not None and not old.terminal)
        self._states[rollout_id] = st
        for source, off in st.offsets.items():
            self._source_high[source] = max(self._source_high.get(source, -1), off)
        self._pending.pop(rollout_id, None)
        self._detectors.pop(rollout_id, None)
        self.event_time = max(self.event_time, st.watermark)

    # ---- inputs ----------------------------------------------------------------------------
    def ingest(
        self, events: Sequence[Event] | Iterable[Event], source: str | None = None, offset: int | None = None
    ) -> list[Decision]:
        """Fold events in order; returns the decisions taken at the event-time ticks they cross.

        With ``source``/``offset`` (one Kafka message), a rollout that already holds this offset
        for the source skips the events: they were counted before a restart."""
        evs = events if type(events) is list else list(events)
        ids = list(map(_RID, evs))
        if ids and ids.count(ids[0]) == len(ids):  # the common case: a message holds one rollout's events
            return self._ingest_rollout(ids[0], evs, source, offset)
        # a stable sort by rollout keeps each rollout's events in order, and runs in C
        ordered = sorted(evs, key=_RID)
        out: list[Decision] = []
        many = False
        for rid, group in itertools.groupby(ordered, key=_RID):
            if out:
                many = True
            out.extend(self._ingest_rollout(rid, list(group), source, offset))
        if many:
            out.sort(key=lambda d: d.ts)  # stable: per-rollout order is kept
        return out

    def _ingest_rollout(
        self, rid: str, evs: list[Event], source: str | None, offset: int | None
    ) -> list[Decision]:
        out: list[Decision] = []
        e0 = evs[0]
        st = self._admit(rid, e0.ts, e0.arm, e0.model_digest if type(e0) is InferenceEvent else None,
                         source, offset, out)  # fmt: skip
        if st is None:
            return out
        top = max(map(_TS, evs))
        if top > self.event_time:
            self.event_time = top
        if not st.terminal and top < st.next_eval:  # the common case: no tick crossed in this batch
            self._add_pending(st, evs)
            if top > st.watermark:
                st.watermark = top
            return out
        ts = np.array([e.ts for e in evs], dtype=np.float64)
        runmax = np.maximum.accumulate(ts)
        n, i = len(evs), 0
        # Evaluate where the running event-time maximum first crosses each tick, exactly as an
        # event-by-event loop would, whatever the batch boundaries.
        while i < n:
            if st.terminal:
                st.ignored += n - i
                break
            j = i + int(runmax[i:].searchsorted(st.next_eval, side="left"))
            if j >= n:
                self._add_pending(st, evs[i:])
                st.watermark = max(st.watermark, float(runmax[-1]))
                break
            # The tick is judged on the events before the first one at or past it, at the tick's own
            # time: events may arrive in any order within a tick and give the same verdicts.
            self._add_pending(st, evs[i:j])
            if j > i:
                st.watermark = max(st.watermark, float(runmax[j - 1]))
            tick = math.floor(float(ts[j]) / self.policy(rid).eval_seconds) * self.policy(rid).eval_seconds
            d = self._evaluate(st, tick)
            if d is not None:
                out.append(d)
            i = j
        return out

    def command(self, cmd: Command, source: str | None = None, offset: int | None = None) -> list[Decision]:
        out: list[Decision] = []
        st = self._admit(cmd.rollout_id, cmd.ts, None, None, source, offset, out)
        if st is None or st.terminal:
            return out
        self._flush(st)
        if cmd.ts > st.command_ts:
            st.command_ts, st.command_nonces = cmd.ts, [cmd.nonce]
        else:
            st.command_nonces.append(cmd.nonce)
        who = f"{cmd.actor}" + (f": {cmd.reason}" if cmd.reason else "")
        if cmd.action == "pause":
            if not st.paused:
                st.paused = True
                out.append(self._decide(st, cmd.ts, "hold", f"Paused by {who}; holding at {st.weight:g}%.",
                                        trigger="operator"))  # fmt: skip
        elif cmd.action == "resume":
            st.paused = False
        elif cmd.action == "rollback":
            out.append(self._halt(st, cmd.ts, f"Rolled back by {who}.", trigger="operator"))
        elif cmd.action == "promote":
            st.paused = False
            out.append(self._promote(st, cmd.ts, f"Promoted by {who}", trigger="operator"))
        return out

    def _admit(
        self, rid: str, ts: float, arm: str | None, digest: str | None, source: str | None, offset: int | None,
        out: list[Decision],
    ) -> RolloutState | None:
        """The rollout's state (created, with its start decision in ``out``, if new), or None when
        this source offset was already counted before a restart."""
        st = self._states.get(rid)
        if st is None:
            st, started = self._create(rid, ts, arm, digest)
            if started is not None:
                out.append(started)
        if source is not None and offset is not None:
            if st.offsets.get(source, -1) >= offset:
                return None
            st.offsets[source] = offset
            if offset > self._source_high.get(source, -1):
                self._source_high[source] = offset
        self._dirty.add(rid)
        return st

    def tick(self, now: float) -> list[Decision]:
        """Idle rollouts: a step past its maximum time gets its hold even with no new events."""
        out: list[Decision] = []
        for st in self._states.values():
            if st.terminal or st.held:
                continue
            p = self.policy(st.rollout_id)
            max_s = p.shadow.max_seconds if st.stage == SHADOW else p.max_step_seconds
            if now - st.step_start > max_s and now - st.watermark > p.eval_seconds:
                self._flush(st)
                out.append(self._hold_timeout(st, now, max_s))
        return out

    # ---- internals -------------------------------------------------------------------------
    def _create(
        self, rollout_id: str, ts: float, arm: str | None = None, digest: str | None = None
    ) -> tuple[RolloutState, Decision | None]:
        p = self.policy(rollout_id)
        shadow = p.shadow.enabled
        weight = 0.0 if shadow else p.steps[0]
        ts = math.floor(ts / p.eval_seconds) * p.eval_seconds  # the tick, whichever event came first
        st = RolloutState(
            rollout_id=rollout_id,
            stage=SHADOW if shadow else stage_name(weight),
            weight=weight,
            step_index=-1 if shadow else 0,
            step_start=ts,
            window=win.Window(start=ts, block_seconds=p.block_seconds),
            next_eval=ts + p.eval_seconds,
        )
        if digest is not None:
            if arm == "baseline":
                st.baseline_digest = digest
            else:
                st.canary_digest = digest
        self._states[rollout_id] = st
        self._live += 1
        self._dirty.add(rollout_id)
        if shadow:
            return st, None
        if weight >= 100:
            st.stage, st.terminal = COMPLETE, True
        d = self._decide(st, ts, "complete" if st.terminal else "promote",
                         f"Rollout started at {weight:g}% canary traffic.", previous_weight=0.0, trigger="start")  # fmt: skip
        return st, d

    def _add_pending(self, st: RolloutState, evs: list[Event]) -> None:
        batch = self._pending.get(st.rollout_id)
        if batch is None:
            batch = self._pending[st.rollout_id] = PendingBatch()
        p = self.policy(st.rollout_id)
        wanted = _UNKNOWN_DIGESTS[(st.baseline_digest is None, st.canary_digest is None)]
        batch.add(evs, functools.partial(_cost, p=p), p.gates.feedback.assumed_delay_seconds, wanted)

    def _flush(self, st: RolloutState) -> None:
        batch = self._pending.pop(st.rollout_id, None)
        if batch is None or not (batch.n_requests or batch.n_feedback):
            return
        w = st.window
        det = self._detectors.get(st.rollout_id)
        if det is None:
            det = self._detectors[st.rollout_id] = Detectors(st.drift)
        if batch.n_requests:
            arms, ts, latency, tokens, errors, refusals, cost = batch.requests()
            totals = win.add_requests(w, ARM_NAMES, arms, ts, latency, tokens, errors, refusals, cost,
                                      block_sketches=BLOCK_SKETCH_ARMS)  # fmt: skip
            for code, (k, len_keys, n_refusals) in enumerate(totals):
                if not k:
                    continue
                arm = ARM_NAMES[code]
                st.events[arm] = st.events.get(arm, 0) + k
                det.count(arm, k, len_keys, n_refusals)
                # the arm's first event with a digest, if any
                if arm == "baseline":
                    if st.baseline_digest is None:
                        st.baseline_digest = batch.digests.get(code)
                elif st.canary_digest is None:
                    st.canary_digest = batch.digests.get(code)
        if batch.n_feedback:
            st.events["feedback"] = st.events.get("feedback", 0) + batch.n_feedback
            win.add_arms_feedback(w, ARM_NAMES, *batch.feedback())

    def _evaluate(self, st: RolloutState, now: float) -> Decision | None:
        p = self.policy(st.rollout_id)
        self._flush(st)
        st.next_eval = (math.floor(now / p.eval_seconds) + 1) * p.eval_seconds
        arm = SHADOW if st.stage == SHADOW else "canary"
        w = st.window
        det = self._detectors.get(st.rollout_id)
        if det is None:
            det = self._detectors[st.rollout_id] = Detectors(st.drift)
        det.tick(arm, now)
        det.tick("baseline", now)
        onset = canary_onset(st.drift, arm, since=w.start, tolerance=2 * p.block_seconds)
        if onset is not None:
            signal, t = onset
            cut = (math.floor(t / p.block_seconds) - 2) * p.block_seconds  # ADWIN reveals a change late
            shift = _shift(w, arm, signal, cut)
            if shift is not None:  # judged once there are blocks on both sides of the cut
                st.drift.handled = t
            if shift is not None and abs(shift) >= MIN_SHIFT[signal]:
                key = f"{arm}:{signal}"
                st.drift.alarms[key] = st.drift.alarms.get(key, 0) + 1
                if p.drift_reset:
                    self._restart_window(st, cut)
                    w = st.window
        if p.change_z > 0:
            upto = math.floor(now / p.block_seconds)  # the blocks before this one are complete
            if upto > st.drift.scanned:
                st.drift.scanned = upto
                ch = change.scan(w, arm, upto, threshold=p.change_z, min_after=p.change_min_blocks)
                if ch is not None:
                    key = f"{arm}:{ch.signal}:contrast"
                    st.drift.alarms[key] = st.drift.alarms.get(key, 0) + 1
                    if p.drift_reset:
                        # the change is the tested arm's when the baseline held steady over the
                        # scanned blocks: its blocks before the split still describe it
                        steady = abs(ch.baseline_z) < change.BASELINE_STEADY_Z
                        self._restart_window(st, ch.block * p.block_seconds, keep_baseline=steady)
                        w = st.window
        win.compact(w, p.max_window_blocks)
        both = sum(1 for b in w.blocks.values() if b.get(arm) and b[arm].n and b.get("baseline") and b["baseline"].n)
        # Each decision looks at one side of its bound only (halt: is the ratio above the limit;
        # promote: is it below), so the two-sided boundary is run at twice the one-sided risk.
        z_halt = cs_z(max(both, 1), min(2 * p.false_halt_budget, 0.5), p.cs_rho_blocks)
        rho_promote = p.cs_rho_blocks if p.cs_rho_promote_blocks is None else p.cs_rho_promote_blocks
        z_promote = cs_z(max(both, 1), min(2 * p.promote_risk, 0.8), rho_promote)
        gates = evaluate_gates(w, arm, p, z_halt, z_promote, feedback=arm != SHADOW, now=now)
        st.last_gates = gates
        n_test = sum(b[arm].n for b in w.blocks.values() if arm in b)
        elapsed = now - st.step_start
        breaches = [g for g in gates if g.status == "breach"]
        if breaches and n_test >= p.min_halt_samples and both >= p.min_blocks:
            head = breaches[0].reason
            more = f" Also breached: {', '.join(g.name for g in breaches[1:])}." if len(breaches) > 1 else ""
            return self._halt(st, now, f"Halted at {st.stage}: {head}.{more}", trigger="gates")
        if st.paused:
            return None
        min_n, min_s, max_s = self._step_limits(st, p)
        # the step's own requests (a window carried over from earlier steps holds theirs too)
        first = math.floor(st.step_start / p.block_seconds)
        n_step = sum(b[arm].n for blk, b in w.blocks.items() if arm in b and blk >= first)
        if all(g.status == "pass" for g in gates) and n_step >= min_n and elapsed >= min_s and both >= p.min_blocks:
            ab = self._ab_verdict(st, p, gates)
            why = (f"All {len(gates)} gates pass at {st.stage} after {elapsed / 60:.1f} min on {n_test:,} "
                   f"{arm} requests{ab}")  # fmt: skip
            return self._promote(st, now, why, trigger="gates")
        if elapsed > max_s and not st.held:
            return self._hold_timeout(st, now, max_s)
        return None

    def _step_limits(self, st: RolloutState, p: RolloutPolicy) -> tuple[int, float, float]:
        if st.stage == SHADOW:
            return p.shadow.min_samples, p.shadow.min_seconds, p.shadow.max_seconds
        if p.ab.enabled and st.weight == p.ab.weight:
            return (max(p.min_samples, p.ab.min_samples), max(p.min_step_seconds, p.ab.min_seconds),
                    max(p.max_step_seconds, p.ab.min_seconds))  # fmt: skip
        return p.min_samples, p.min_step_seconds, p.max_step_seconds

    def _ab_verdict(self, st: RolloutState, p: RolloutPolicy, gates: list[GateResult]) -> str:
        if not (p.ab.enabled and st.weight == p.ab.weight):
            return ""
        parts = []
        for g in gates:
            if g.lower is None or g.upper is None or g.name == "output_length":
                continue
            verdict = "better" if g.upper < 1 else "worse" if g.lower > 1 else "no different"
            parts.append(f"{g.name} {verdict}")
        return f"; A/B verdict at {st.weight:g}%: " + ", ".join(parts)

    def _restart_window(self, st: RolloutState, start: float, *, keep_baseline: bool = False) -> None:
        """Restart the comparison window at ``start`` (an onset). ``keep_baseline``: the baseline
        keeps its blocks from the old window's start on, so that the first verdicts on the changed
        arm are not limited by a baseline that starts again from nothing."""
        p = self.policy(st.rollout_id)
        old = st.window
        new = win.Window(start=start, block_seconds=p.block_seconds)
        if keep_baseline and old.start < start:
            new.baseline_start = old.start
        # keep the blocks from the new start on (their per-arm aggregates are exact), rebuild the
        # window-level sketches from the per-block ones where kept
        first_base = new.first_block("baseline")
        for blk, arms in old.blocks.items():
            if blk >= new.start_block:
                new.blocks[blk] = arms
            elif blk >= first_base and "baseline" in arms:
                new.blocks[blk] = {"baseline": arms["baseline"]}
        for arm in old.lat:
            if arm == "baseline":
                # the baseline keeps no per-block sketch: its quantiles stay window-wide
                new.lat[arm], new.len[arm] = old.lat[arm], old.len.get(arm, {})
                continue
            lat: dict[int, int] = {}
            ln: dict[int, int] = {}
            for arms in new.blocks.values():
                ab = arms.get(arm)
                if ab is not None and ab.lat is not None and ab.len is not None:
                    for k, c in ab.lat.items():
                        lat[k] = lat.get(k, 0) + c
                    for k, c in ab.len.items():
                        ln[k] = ln.get(k, 0) + c
            new.lat[arm], new.len[arm] = lat, ln
        st.window = new

    def _retire(self, st: RolloutState) -> None:
        """An ended rollout keeps its identity, seq, digests, verdicts and counters (late events are
        still ignored, and a restart still knows it ended), but not its window or detectors."""
        self._live -= 1
        self._pending.pop(st.rollout_id, None)
        self._detectors.pop(st.rollout_id, None)
        st.final_samples = _samples(st)
        st.window = win.Window(start=st.step_start, block_seconds=st.window.block_seconds)
        st.drift = DriftState(onset=st.drift.onset, alarms=st.drift.alarms)

    def _new_step(self, st: RolloutState, now: float, *, carry: bool = False) -> None:
        p = self.policy(st.rollout_id)
        st.step_start = now
        if not (carry and p.carry_evidence):
            st.window = win.Window(start=now, block_seconds=p.block_seconds)
        st.held = False
        st.last_gates = []

    def _promote(self, st: RolloutState, now: float, why: str, *, trigger: str) -> Decision:
        p = self.policy(st.rollout_id)
        prev = st.weight
        st.step_index += 1
        st.weight = p.steps[min(st.step_index, len(p.steps) - 1)]
        if st.weight >= 100:
            st.stage, st.terminal = COMPLETE, True
            return self._decide(st, now, "complete", f"{why}; canary is at 100%.", previous_weight=prev,
                                trigger=trigger, gates=st.last_gates)  # fmt: skip
        gates = st.last_gates
        carry = st.stage != SHADOW  # a shadow's window holds no canary requests
        st.stage = stage_name(st.weight)
        self._new_step(st, now, carry=carry)
        return self._decide(st, now, "promote", f"{why}; promoting to {st.weight:g}%.", previous_weight=prev,
                            trigger=trigger, gates=gates)  # fmt: skip

    def _halt(self, st: RolloutState, now: float, why: str, *, trigger: str) -> Decision:
        prev = st.weight
        st.weight = 0.0
        st.stage, st.terminal = ROLLED_BACK, True
        digest = f" Pin baseline {st.baseline_digest}." if st.baseline_digest else ""
        return self._decide(st, now, "halt", why + digest, previous_weight=prev, trigger=trigger)

    def _hold_timeout(self, st: RolloutState, now: float, max_s: float) -> Decision:
        st.held = True
        open_gates = [g for g in st.last_gates if g.status != "pass"]
        names = ", ".join(g.name for g in open_gates) or "no gate evaluated yet"
        first = f" {open_gates[0].reason}." if open_gates else ""
        why = (f"{st.stage} passed its {max_s / 60:g}-minute limit with {names} inconclusive; holding at "
               f"{st.weight:g}%.{first}")  # fmt: skip
        return self._decide(st, now, "hold", why, trigger="timeout")

    def _decide(
        self,
        st: RolloutState,
        now: float,
        action: str,
        reason: str,
        *,
        previous_weight: float | None = None,
        trigger: str,
        gates: list[GateResult] | None = None,
    ) -> Decision:
        st.seq += 1
        self._dirty.add(st.rollout_id)
        if st.terminal:
            self._retire(st)
        return Decision(
            rollout_id=st.rollout_id,
            seq=st.seq,
            ts=now,
            action=action,
            stage=st.stage,
            weight=st.weight,
            previous_weight=st.weight if previous_weight is None else previous_weight,
            baseline_digest=st.baseline_digest,
            canary_digest=st.canary_digest,
            gates=list(st.last_gates if gates is None else gates),
            reason=reason,
            trigger=trigger,
        )


def _samples(st: RolloutState) -> dict[str, int]:
    arm = SHADOW if st.stage == SHADOW else "canary"
    return {a: sum(b[a].n for b in st.window.blocks.values() if a in b) for a in ("baseline", arm)}


def _cost(e: InferenceEvent, p: RolloutPolicy) -> float:
    if e.cost_usd is not None:
        return e.cost_usd
    price = p.price(e.model)
    if price is None:
        return math.nan
    return (e.input_tokens or 0) / 1000 * price.input_per_1k + e.output_tokens / 1000 * price.output_per_1k


def _shift(w: win.Window, arm: str, signal: str, cut: float) -> float | None:
    """How much ``arm`` moved after ``cut`` beyond the baseline's move over the same blocks
    (log length in nats, refusal rate in absolute terms); None without enough blocks on a side."""
    cut_block = math.floor(cut / w.block_seconds)
    sums: dict[tuple[str, bool], list[int]] = {}
    for blk, arms in w.blocks.items():
        after = blk >= cut_block
        for a in (arm, "baseline"):
            ab = arms.get(a)
            if ab is None or ab.n == 0:
                continue
            acc = sums.setdefault((a, after), [0, 0, 0])
            acc[0] += ab.n
            acc[1] += ab.len_k if signal == "log_length" else ab.refusals
            acc[2] += 1
    if any(sums.get((a, side), [0, 0, 0])[2] < 2 for a in (arm, "baseline") for side in (False, True)):
        return None
    scale = LN_GAMMA if signal == "log_length" else 1.0

    def mean(a: str, side: bool) -> float:
        n, tot, _ = sums[(a, side)]
        return tot / n * scale

    return (mean(arm, True) - mean(arm, False)) - (mean("baseline", True) - mean("baseline", False))
