"""Live rollout state for operators: what each gate shows between decisions, what the step still
needs, and whether an operator command can apply.

The worker is the only process that holds the gates' live state (the decisions topic carries it
only at decisions), so it serves these views on its metrics port: ``GET /rollouts``,
``GET /rollouts/{id}`` and ``POST /rollouts/{id}/commands/check`` (stream.metrics.MetricsServer).
The CLI (stream.operator) and the verdict API (stream.services) ask it.

Applicability of a command is decided from the worker's engine state, by :func:`refusal`:

- any command on a rollout the worker does not know: ``unknown`` (the engine would otherwise
  create a rollout from a typo'd id);
- any command on a halted (rolled-back) or complete rollout: ``halted`` / ``complete`` (the
  engine ignores them: an ended rollout takes no more decisions);
- ``pause`` on a paused rollout: ``paused``; ``resume`` on a rollout that is not paused:
  ``not_paused`` (both would change nothing).

The same rule vets commands that reach the worker on the commands topic without the check (a
raw producer, or a race with a decision): those are dead-lettered with the reason instead of
being applied. Every refusal is counted in ``rollout_gate_command_refusals_total{action,reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gates.decision import Decision

if TYPE_CHECKING:
    from .metrics import Metrics
    from .processor import EngineLike, Processor

log = logging.getLogger(__name__)

REFUSAL_CODES = ("unknown", "halted", "complete", "paused", "not_paused")


class WorkerUnavailable(RuntimeError):
    """The worker's event loop is not running (starting or stopping)."""


def refusal(action: str, rollout_id: str, view: dict[str, Any] | None) -> tuple[str, str] | None:
    """(code, sentence) when ``action`` cannot apply to the rollout in ``view`` (None: unknown)."""
    if view is None:
        return "unknown", f"unknown rollout {rollout_id}: the worker has no state for it (check the id)"
    if view["state"] == "halted":
        return "halted", (f"rollout {rollout_id} is halted (rolled back, seq {view['seq']}): an ended rollout "
                          f"takes no more commands; start a new rollout")
    if view["state"] == "complete":
        return "complete", (f"rollout {rollout_id} is complete (canary at 100%, seq {view['seq']}): an ended "
                            f"rollout takes no more commands")
    if action == "pause" and view["paused"]:
        return "paused", f"rollout {rollout_id} is already paused at {view['stage']}"
    if action == "resume" and not view["paused"]:
        return "not_paused", f"rollout {rollout_id} is not paused (it runs at {view['stage']})"
    return None


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def decision_summary(d: Decision) -> dict[str, Any]:
    return {"seq": d.seq, "ts": d.ts, "action": d.action, "stage": d.stage, "weight": d.weight,
            "previous_weight": d.previous_weight, "trigger": d.trigger, "reason": d.reason}


def rollout_view(status: Any, progress: Any, last: Decision | None) -> dict[str, Any]:
    """One rollout as operators read it: gates, samples, what the step still needs, and an estimate
    of the time to a verdict at the tested arm's current event rate. ``status`` and ``progress``
    are the engine's ``RolloutStatus`` and ``StepProgress``."""
    if status.terminal:
        state = "halted" if status.stage == "rolled-back" else "complete"
    else:
        state = "paused" if status.paused else "held" if progress.held else "running"
    gates = [{"name": g.name, "status": g.status, "ratio": _num(g.ratio), "lower": _num(g.lower),
              "upper": _num(g.upper), "threshold": g.threshold, "observed": _num(g.observed),
              "baseline": _num(g.baseline), "samples": dict(g.samples), "reason": g.reason}
             for g in status.gates]
    out: dict[str, Any] = {
        "rollout_id": status.rollout_id, "state": state, "stage": status.stage, "weight": status.weight,
        "paused": status.paused, "terminal": status.terminal, "seq": status.seq,
        "watermark": _num(status.watermark), "samples": dict(status.samples), "gates": gates,
        "last_decision": None if last is None else decision_summary(last),
    }
    if status.terminal:
        out["step"] = None
        out["needs"] = None
        out["eta_seconds"] = None
        out["eta"] = f"ended ({state})"
        return out
    elapsed = max(0.0, progress.watermark - progress.step_start) if math.isfinite(progress.watermark) else 0.0
    rate = progress.tested_samples / elapsed if elapsed > 0 else 0.0
    need_n = max(0, progress.min_samples - progress.tested_samples)
    need_s = max(0.0, progress.min_seconds - elapsed)
    need_b = max(0, progress.min_blocks - progress.blocks)
    open_gates = [g["name"] for g in gates if g["status"] != "pass"] if gates else ["(not evaluated yet)"]
    out["step"] = {
        "tested_arm": progress.arm, "started": progress.step_start, "elapsed_seconds": elapsed,
        "tested_samples": progress.tested_samples, "blocks": progress.blocks,
        "min_samples": progress.min_samples, "min_seconds": progress.min_seconds,
        "max_seconds": progress.max_seconds, "min_blocks": progress.min_blocks,
        "min_halt_samples": progress.min_halt_samples, "block_seconds": progress.block_seconds,
        "tested_rps": rate,
    }
    out["needs"] = {"samples": need_n, "seconds": need_s, "blocks": need_b, "gates": open_gates}
    eta, why = _eta(progress, rate, need_n, need_s, need_b, open_gates, elapsed, status.paused)
    out["eta_seconds"] = eta
    out["eta"] = why
    return out


def _eta(progress: Any, rate: float, need_n: int, need_s: float, need_b: int, open_gates: list[str],
         elapsed: float, paused: bool) -> tuple[float | None, str]:
    if paused:
        return None, "paused: no promotion until resumed (a breach still halts)"
    hold_in = max(0.0, progress.max_seconds - elapsed)
    if need_n and rate <= 0:
        return None, f"no {progress.arm} traffic yet: needs {need_n} more {progress.arm} requests"
    waits = {"samples": need_n / rate if need_n else 0.0, "time": need_s, "blocks": need_b * progress.block_seconds}
    eta = max(waits.values())
    if eta > 0:
        what = max(waits, key=lambda k: waits[k])
        gates = "" if not open_gates else f"; then the gates ({', '.join(open_gates)}) must be conclusive"
        return eta, f"about {_dur(eta)} at {rate:.1f} {progress.arm} req/s (waiting on {what}){gates}"
    if open_gates:
        return None, (f"limits met; waiting for {', '.join(open_gates)} to be conclusive "
                      f"(hold in {_dur(hold_in)} of event time)")
    return 0.0, "every gate passes and every limit is met: a verdict at the next evaluation"


def _dur(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LiveState:
    """The worker's side: builds views from the processor's engine on the event loop, and vets
    commands. The HTTP thread calls :meth:`views`, :meth:`view` and :meth:`check`; the processor
    calls :meth:`decided` (a watcher) and :meth:`vet` on the loop."""

    def __init__(self, processor: Processor, metrics: Metrics, *, timeout: float = 5.0) -> None:
        self.processor = processor
        self.metrics = metrics
        self.timeout = timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last: dict[str, Decision] = {}

    # -- on the event loop --
    def decided(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            self.last[d.rollout_id] = d
            log.info("decision %s seq=%d %s: %s at %g%% (%s): %s", d.rollout_id, d.seq, d.action, d.stage,
                     d.weight, d.trigger, d.reason)

    def _view(self, engine: EngineLike, rollout_id: str) -> dict[str, Any] | None:
        progress: Callable[[str], Any] = engine.progress  # type: ignore[attr-defined]
        try:
            status = engine.status(rollout_id)
        except KeyError:  # the engine has no state for it
            return None
        return rollout_view(status, progress(rollout_id), self.last.get(rollout_id))

    def adopt(self, latest: dict[str, Decision]) -> int:
        """After a restart: the latest decision of each restored rollout, read back from the decisions
        topic (the engine's state keeps its seq, not its reason); taken only where the seq matches."""
        from .metrics import reason_code

        engine = self.processor.engine
        n = 0
        for rid, d in latest.items():
            if rid in self.last:
                continue
            try:
                seq = engine.status(rid).seq
            except KeyError:
                continue
            if seq == d.seq:
                self.last[rid] = d
                self.metrics.rollouts.decided(rid, (d.action, d.trigger, reason_code(d), float(d.ts)))
                n += 1
        return n

    async def recover(self, settings: Any, timeout: float = 60.0) -> int:
        """Read the decisions topic to its end (compacted: the latest per rollout survives) and adopt
        the restored rollouts' latest decisions."""
        return self.adopt(await latest_decisions(settings, timeout))

    def vet(self, engine: EngineLike, cmd: Any, source: str, offset: int) -> str | None:
        """The refusal sentence for a command from the topic that cannot apply (counted), or None.
        A command delivered again after a restart is left to the engine, which skips it."""
        seen: Callable[[str, str, int], bool] | None = getattr(engine, "seen", None)
        if seen is not None and seen(cmd.rollout_id, source, offset):
            return None
        why = refusal(cmd.action, cmd.rollout_id, self._view(engine, cmd.rollout_id))
        if why is None:
            return None
        self.metrics.count_command_refusal(cmd.action, why[0])
        log.warning("operator command %s on %s by %s refused: %s", cmd.action, cmd.rollout_id, cmd.actor, why[1])
        return f"command refused: {why[1]}"

    # -- from other threads --
    def _call(self, fn: Callable[[], Any]) -> Any:
        loop = self.loop
        if loop is None or loop.is_closed():
            raise WorkerUnavailable("the worker is not running yet")

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(self.timeout)

    def views(self) -> list[dict[str, Any]]:
        def build() -> list[dict[str, Any]]:
            engine = self.processor.engine
            out = [self._view(engine, rid) for rid in engine.rollout_ids()]
            return [v for v in out if v is not None]

        return list(self._call(build))

    def view(self, rollout_id: str) -> dict[str, Any] | None:
        return self._call(lambda: self._view(self.processor.engine, rollout_id))  # type: ignore[no-any-return]

    def check(self, rollout_id: str, action: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for ``POST /rollouts/{id}/commands/check``: 200 with the rollout's view,
        or 409 with the reason (counted)."""
        view = self.view(rollout_id)
        why = refusal(action, rollout_id, view)
        if why is None:
            return 200, {"applicable": True, "action": action, "rollout": view}
        self.metrics.count_command_refusal(action, why[0])
        return 409, {"applicable": False, "action": action, "code": why[0], "error": why[1], "rollout": view}


async def latest_decisions(settings: Any, timeout: float = 60.0) -> dict[str, Decision]:
    """The latest decision per rollout on the decisions topic (a snapshot up to its end offsets)."""
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from gates.decision import decode_decision

    from .topics import admin_client

    topic = settings.decisions_topic
    admin = admin_client(settings)
    await admin.start()
    try:
        if topic not in await admin.list_topics():  # never make the broker create it
            return {}
        parts = [p["partition"] for t in await admin.describe_topics([topic]) if t["topic"] == topic
                 for p in t["partitions"]]
    finally:
        await admin.close()
    out: dict[str, Decision] = {}
    if not parts:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                client_id=f"{settings.app_id}-decisions-reader", **settings.aiokafka_auth())
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for r in records:
                    if r.value is None:
                        continue
                    try:
                        d = decode_decision(r.value)
                    except Exception:  # not ours to judge here
                        continue
                    if d.seq >= getattr(out.get(d.rollout_id), "seq", 0):
                        out[d.rollout_id] = d
        return out
    finally:
        await consumer.stop()
