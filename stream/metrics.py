"""Prometheus metrics and the small HTTP server that serves /metrics, /healthz and /readyz.

The server runs in its own thread: Faust's web server and timers only start after table recovery,
and a probe must answer during recovery too (readyz 503, healthz 200).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.parse
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gates.decision import Decision, Verdict

if TYPE_CHECKING:
    from .status import LiveState

log = logging.getLogger(__name__)

# Every decision action; each rollout gets a counter at 0 for each as soon as it is known (also
# after a restart), so that increase() in the alert rules sees the first halt.
DECISION_ACTIONS = ("promote", "halt", "complete", "hold")
_STATUS_CODE = {"pass": Verdict.PASS, "insufficient": Verdict.INSUFFICIENT, "breach": Verdict.BREACH}


@dataclass(frozen=True, slots=True)
class _RolloutView:
    """What the per-rollout gauges show, copied from the engine's status after a batch."""

    stage: str
    weight_ratio: float
    gates: tuple[tuple[str, int, float, float], ...]  # name, status code, ratio (NaN if none), threshold
    samples: tuple[tuple[str, int], ...]
    watermark: float
    ended_at: float = math.nan  # wall time the rollout was first seen halted or complete


class RolloutGauges(Collector):
    """The per-rollout gauges, built at scrape time from one small record per rollout.

    With thousands of rollouts, one prometheus_client child per series costs ~140 MB and a lock
    per update at 10,000 rollouts; a record per rollout costs a few MB. The event-time lag is
    computed at scrape time, so it keeps growing while a rollout is idle."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._views: dict[str, _RolloutView] = {}
        # the latest decision per rollout: (action, trigger, reason code, ts)
        self._decisions: dict[str, tuple[str, str, str, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def update(self, rollout_id: str, view: _RolloutView) -> None:
        with self._lock:
            self._views[rollout_id] = view

    def decided(self, rollout_id: str, info: tuple[str, str, str, float]) -> None:
        with self._lock:
            self._decisions[rollout_id] = info

    def clear(self) -> None:
        with self._lock:
            self._views.clear()

    def get(self, rollout_id: str) -> _RolloutView | None:
        with self._lock:
            return self._views.get(rollout_id)

    def remove_ended_before(self, cutoff: float) -> list[str]:
        with self._lock:
            gone = [rid for rid, v in self._views.items() if v.ended_at < cutoff]
            for rid in gone:
                del self._views[rid]
                self._decisions.pop(rid, None)
        return gone

    def __len__(self) -> int:
        return len(self._views)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            items = sorted(self._views.items())
            decided = sorted(self._decisions.items())
        now = self._clock()
        stage = GaugeMetricFamily("rollout_gate_stage_info", "Current stage of a rollout (1)",
                                  labels=["rollout", "stage"])
        weight = GaugeMetricFamily("rollout_gate_canary_weight_ratio", "Canary traffic share, 0..1",
                                   labels=["rollout"])
        status = GaugeMetricFamily("rollout_gate_gate_status",
                                   "Last verdict of a gate: 0 pass, 1 insufficient, 2 breach",
                                   labels=["rollout", "gate"])
        ratio = GaugeMetricFamily("rollout_gate_gate_ratio", "Observed canary/baseline ratio of a gate",
                                  labels=["rollout", "gate"])
        threshold = GaugeMetricFamily("rollout_gate_gate_threshold_ratio", "Breach threshold of a gate",
                                      labels=["rollout", "gate"])
        samples = GaugeMetricFamily("rollout_gate_window_samples", "Requests in the comparison window",
                                    labels=["rollout", "arm"])
        lag = GaugeMetricFamily("rollout_gate_event_time_lag_seconds",
                                "Wall clock minus the rollout's event-time watermark", labels=["rollout"])
        info = GaugeMetricFamily("rollout_gate_decision_info",
                                 "The latest decision of a rollout (value: its event time); reason is a "
                                 "short code (the breached gate, max step time, operator, ...)",
                                 labels=["rollout", "action", "trigger", "reason"])
        for rid, (action, trigger, code, ts) in decided:
            info.add_metric([rid, action, trigger, code], ts)
        for rid, v in items:
            stage.add_metric([rid, v.stage], 1)
            weight.add_metric([rid], v.weight_ratio)
            for name, code, r, t in v.gates:
                status.add_metric([rid, name], code)
                ratio.add_metric([rid, name], r)
                threshold.add_metric([rid, name], t)
            for arm, n in v.samples:
                samples.add_metric([rid, arm], n)
            if math.isfinite(v.watermark):
                lag.add_metric([rid], max(0.0, now - v.watermark))
        return [stage, weight, status, ratio, threshold, samples, lag, info]


class Metrics:
    """Every metric of the worker, in its own registry (tests build as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, clock: Callable[[], float] = time.time,
                 ended_retention_seconds: float = 86400.0, max_rollouts: int | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._clock = clock
        # an ended rollout's series stay this long (its final state on the dashboard), then go, so
        # the number of series follows the rollouts in flight, not every rollout ever run
        self.ended_retention_seconds = ended_retention_seconds
        self._actions: dict[str, set[str]] = {}
        # at most this many rollouts have series (labels rollout=...): the first ones seen, until an
        # ended one expires; the others are only counted, so /metrics stays small whatever comes in
        self.max_rollouts = max_rollouts
        self._series: set[str] = set()
        self._unshown: set[str] = set()
        r = self.registry
        self.rollouts = RolloutGauges(clock)
        r.register(self.rollouts)
        self.decisions = Counter("rollout_gate_decisions", "Decisions published",
                                 ["rollout", "action"], registry=r)
        self.events = Counter("rollout_gate_events", "Valid events consumed", ["arm"], registry=r)
        self.rejected = Counter("rollout_gate_rejected_events", "Events sent to the dead-letter topic",
                                ["reason"], registry=r)
        self.consumer_lag = Gauge("rollout_gate_consumer_lag_messages",
                                  "Highwater minus the next offset to process",
                                  ["topic", "partition"], registry=r)
        self.drift_alarms = Counter("rollout_gate_drift_alarms", "Drift alarms raised in a rollout",
                                    ["rollout", "arm", "signal"], registry=r)
        self.batch_seconds = Histogram("rollout_gate_batch_seconds", "Time to process one consumed batch",
                                       registry=r,
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                1.0, 2.5, 5.0, 10.0))
        self.command_refusals = Counter("rollout_gate_command_refusals",
                                        "Operator commands refused because they cannot apply",
                                        ["action", "reason"], registry=r)
        self.notifications = Counter("rollout_gate_notifications", "Decision notifications by outcome",
                                     ["sink", "outcome"], registry=r)
        self.rejected_commands = Counter("rollout_gate_rejected_commands", "Operator commands sent to the "
                                         "dead-letter topic (unsigned, bad signature, replayed, invalid)",
                                         ["reason"], registry=r)
        self.unshown = Gauge("rollout_gate_metrics_unshown_rollouts",
                             "Rollouts without per-rollout series: over ROLLOUT_GATE_METRICS_MAX_ROLLOUTS",
                             registry=r)
        self._drift_seen: dict[tuple[str, str, str], int] = {}
        # /readyz and /healthz state, read from the server thread.
        self.ready = False
        self.heartbeat = time.monotonic()

    # -- updates from the processor (event-loop thread) --

    def count_events(self, arms: Tally[str]) -> None:
        for arm, n in arms.items():
            self.events.labels(arm).inc(n)

    def count_rejections(self, reasons: Tally[str]) -> None:
        for reason, n in reasons.items():
            self.rejected.labels(reason).inc(n)

    def count_command_rejections(self, reasons: Tally[str]) -> None:
        for reason, n in reasons.items():
            self.rejected_commands.labels(reason).inc(n)

    def shown(self, rollout_id: str) -> bool:
        """Whether the rollout has series on /metrics (taken on the first look while there is room)."""
        if self.max_rollouts is None or rollout_id in self._series:
            return True
        if len(self._series) < self.max_rollouts:
            self._series.add(rollout_id)
            self._unshown.discard(rollout_id)
            self.unshown.set(len(self._unshown))
            return True
        if rollout_id not in self._unshown:
            self._unshown.add(rollout_id)
            self.unshown.set(len(self._unshown))
        return False

    def count_decision(self, decision: Decision) -> None:
        if not self.shown(decision.rollout_id):
            return
        self.known(decision.rollout_id)
        self.decisions.labels(decision.rollout_id, decision.action).inc()
        self.rollouts.decided(decision.rollout_id, (decision.action, decision.trigger, reason_code(decision),
                                                    float(decision.ts)))

    def known(self, rollout_id: str) -> None:
        """Create the rollout's decision counters at 0 for every action (once), if it has series."""
        if rollout_id in self._actions or not self.shown(rollout_id):
            return
        self._actions[rollout_id] = set(DECISION_ACTIONS)
        for action in DECISION_ACTIONS:
            self.decisions.labels(rollout_id, action)

    def count_command_refusal(self, action: str, reason: str) -> None:
        self.command_refusals.labels(action, reason).inc()

    def observe_status(self, rollout_id: str, status: Any) -> None:
        """Mirror one rollout's engine status (gates.engine.RolloutStatus) into the gauges."""
        if not self.shown(rollout_id):
            return
        self.known(rollout_id)
        gates = tuple(
            (g.name, int(_STATUS_CODE.get(g.status, Verdict.INSUFFICIENT)),
             math.nan if g.ratio is None else float(g.ratio), float(g.threshold))
            for g in status.gates
        )
        watermark = float(status.watermark) if status.watermark is not None else math.nan
        ended_at = math.nan
        if getattr(status, "terminal", False):
            before = self.rollouts.get(rollout_id)
            ended_at = before.ended_at if before is not None and not math.isnan(before.ended_at) else self._clock()
        self.rollouts.update(rollout_id, _RolloutView(status.stage, status.weight / 100.0, gates,
                                                      tuple(status.samples.items()), watermark, ended_at))
        self._observe_drift(rollout_id, status.drift_alarms)

    def _observe_drift(self, rollout_id: str, alarms: Mapping[str, int]) -> None:
        # The engine reports totals; the counter moves by the difference.
        for key, total in alarms.items():
            arm, signal = split_alarm_key(key)
            k = (rollout_id, arm, signal)
            seen = self._drift_seen.get(k, 0)
            if total > seen:
                self.drift_alarms.labels(rollout_id, arm, signal).inc(total - seen)
                self._drift_seen[k] = total

    def expire_ended(self) -> list[str]:
        """Drop every series of rollouts that ended more than ``ended_retention_seconds`` ago."""
        gone = self.rollouts.remove_ended_before(self._clock() - self.ended_retention_seconds)
        for rid in gone:
            self._series.discard(rid)
            for action in self._actions.pop(rid, ()):
                self.decisions.remove(rid, action)
            for k in [k for k in self._drift_seen if k[0] == rid]:
                del self._drift_seen[k]
                self.drift_alarms.remove(*k)
        return gone

    def forget_rollouts(self) -> None:
        """After a rebalance the engine is rebuilt: the gauges are refilled from it."""
        self.rollouts.clear()
        self._drift_seen.clear()

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic, str(partition)).set(max(0, lag))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def reason_code(d: Decision) -> str:
    """A decision's reason as a short code of bounded cardinality (for a label): the sentence itself
    carries numbers, so each decision would make a new series."""
    if d.trigger == "start":
        return "rollout started"
    if d.trigger == "operator":
        return {"halt": "operator rollback", "hold": "operator pause"}.get(d.action, "operator promote")
    if d.trigger == "timeout":
        return "max step time"
    if d.trigger == "drift":
        return "drift"
    if d.action == "halt":
        breached = [g.name for g in d.gates if g.status == "breach"]
        return f"{breached[0]} breach" if breached else "breach"
    if d.action in ("promote", "complete"):
        return "all gates pass"
    return d.trigger


def split_alarm_key(key: str) -> tuple[str, str]:
    """Drift alarm keys are ``arm:signal`` (``canary:latency``); a bare signal is the canary's."""
    for sep in (":", "/", "."):
        if sep in key:
            arm, signal = key.split(sep, 1)
            return arm, signal
    return "canary", key


class MetricsServer:
    """/metrics, /healthz (the event loop is alive) and /readyz (recovered and assigned)."""

    def __init__(self, metrics: Metrics, host: str, port: int, *, stale_after: float = 30.0) -> None:
        self.metrics = metrics
        self.stale_after = stale_after
        self.live: LiveState | None = None  # the live rollout views (stream.status), set by the runtime
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", *self._server.server_address[:2])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def healthy(self) -> bool:
        return time.monotonic() - self.metrics.heartbeat < self.stale_after


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, server.metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = server.healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"event loop stalled\n")
            elif path == "/readyz":
                ok = server.metrics.ready
                self._send(200 if ok else 503, b"ready\n" if ok else b"recovering or not assigned\n")
            elif path == "/rollouts" or path.startswith("/rollouts/"):
                self._live("GET", path)
            else:
                self._send(404, b"not found\n")

        def do_POST(self) -> None:
            self._live("POST", self.path.split("?", 1)[0])

        def _live(self, method: str, path: str) -> None:
            from .status import WorkerUnavailable

            live = server.live
            parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
            try:
                if live is None:
                    raise WorkerUnavailable("the worker is not running yet")
                if method == "GET" and parts == ["rollouts"]:
                    return self._json(200, {"rollouts": live.views()})
                if method == "GET" and len(parts) == 2 and parts[0] == "rollouts":
                    view = live.view(parts[1])
                    if view is None:
                        return self._json(404, {"error": f"unknown rollout {parts[1]}"})
                    return self._json(200, view)
                if method == "POST" and len(parts) == 4 and parts[0] == "rollouts" and parts[2:] == ["commands", "check"]:
                    length = int(self.headers.get("Content-Length") or 0)
                    try:
                        body = orjson.loads(self.rfile.read(length) or b"{}")
                    except orjson.JSONDecodeError:
                        return self._json(400, {"error": "body must be JSON"})
                    action = body.get("action") if isinstance(body, dict) else None
                    from gates.commands import ACTIONS

                    if action not in ACTIONS:
                        return self._json(400, {"error": f"action must be one of {', '.join(ACTIONS)}"})
                    code, out = live.check(parts[1], action)
                    return self._json(code, out)
            except (WorkerUnavailable, TimeoutError) as exc:
                return self._json(503, {"error": f"worker not ready: {exc}"})
            self._send(404, b"not found\n")

        def _json(self, code: int, data: Any) -> None:
            self._send(code, orjson.dumps(data), "application/json")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            pass

    return Handler
