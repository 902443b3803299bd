"""Cost of the integrations' request-path and ingest work, side by side with the project's own path
(no broker needed):

1. OpenTelemetry bridge: mapping the Collector's Kafka messages (batches of ``--spans`` GenAI spans,
   ``otlp_proto`` and ``otlp_json``; log records in ``otlp_proto``) to contract events, beside
   decoding the same events as a contract message (``gates.events.decode_message``).
2. LiteLLM callback: one ``log_success_event`` call (payload -> event -> publisher buffer), beside a
   direct ``EventPublisher.publish`` of the same event. The publisher's sender runs on a stub
   producer, so only the request-path cost is measured.

    .venv/bin/python benchmarks/integrations_bench.py [--messages 200] [--spans 100] [--calls 20000] [--repeats 5]
        [--previous-otel FILE]

``--previous-otel`` times another version of ``connectors/otel.py`` (for example
``git show REV:connectors/otel.py > /tmp/otel_prev.py``) in the same rounds, on the same messages.

Ratios are medians over ``--repeats`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.litellm import LiteLLMRollout, RolloutGateCallback
from connectors.otel import OtelMapping, map_message
from connectors.publisher import EventPublisher
from gates.events import decode_message
from tests.unit.connectors.fakes import FakeProducer
from tests.unit.connectors.otlp_messages import encode, genai_attrs, log_record, logs, span, traces


def otel_messages(n_msgs: int, n_spans: int) -> dict[str, tuple[str, str, list[bytes]]]:
    spans = [[span(m * n_spans + i, genai_attrs(arm="canary" if i % 10 == 0 else "baseline"))
              for i in range(n_spans)] for m in range(n_msgs)]
    recs = [[log_record(m * n_spans + i, genai_attrs()) for i in range(n_spans)] for m in range(n_msgs)]
    return {
        "traces otlp_proto": ("traces", "otlp_proto", [encode(traces(s), "otlp_proto") for s in spans]),
        "traces otlp_json": ("traces", "otlp_json", [encode(traces(s), "otlp_json") for s in spans]),
        "logs otlp_proto": ("logs", "otlp_proto", [encode(logs(r), "otlp_proto") for r in recs]),
    }


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def load_module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("otel_previous", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def bench_otel(n_msgs: int, n_spans: int, repeats: int, previous: Any | None = None) -> list[str]:
    m = OtelMapping()
    msgs = otel_messages(n_msgs, n_spans)
    # the same events as contract messages, for the decoder baseline
    first = map_message(msgs["traces otlp_proto"][2][0], "traces", "otlp_proto", m)
    assert len(first.events) == n_spans and not first.rejected, first
    contract = [orjson.dumps([orjson.loads(e.to_json()) if hasattr(e, "to_json") else _as_dict(e)
                              for e in map_message(v, "traces", "otlp_proto", m).events])
                for v in msgs["traces otlp_proto"][2]]
    names = [*msgs, *(f"{k} (previous)" for k in msgs if previous is not None)]
    per: dict[str, list[float]] = {k: [] for k in [*names, "contract decode"]}
    if previous is not None:
        pm = previous.OtelMapping()
        for name, (signal, enc, values) in msgs.items():  # both versions map the messages alike
            got = [len(previous.map_message(v, signal, enc, pm).events) for v in values[:3]]
            assert got == [len(map_message(v, signal, enc, m).events) for v in values[:3]], (name, got)
    for _ in range(repeats):
        for name, (signal, enc, values) in msgs.items():
            per[name].append(timed(lambda s=signal, e=enc, vs=values: [map_message(v, s, e, m) for v in vs]))
            if previous is not None:
                per[f"{name} (previous)"].append(timed(
                    lambda s=signal, e=enc, vs=values: [previous.map_message(v, s, e, pm) for v in vs]))
        per["contract decode"].append(timed(lambda: [decode_message(c) for c in contract]))
    n = n_msgs * n_spans
    base = statistics.median(per["contract decode"])
    rows = ["| path | spans/s | µs per span | × contract decode |", "|---|---|---|---|"]
    for name, xs in per.items():
        t = statistics.median(xs)
        rows.append(f"| {name} | {n / t:,.0f} | {t / n * 1e6:.1f} | {t / base:.1f} |")
    return rows


def _as_dict(e: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(e)  # type: ignore[no-any-return]


def payload(i: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{i}", "model_id": "chat-v7-deployment" if i % 10 == 0 else "chat-v6-deployment",
        "model": "openai/chat-v7", "startTime": 1_767_225_600.0 + i, "endTime": 1_767_225_600.4 + i,
        "status": "success", "prompt_tokens": 20, "completion_tokens": 120, "response_cost": 0.00042,
        "response": {"choices": [{"finish_reason": "stop"}]},
    }


async def bench_litellm(calls: int, repeats: int) -> list[str]:
    rollout = LiteLLMRollout("chat-v7", {"chat-v6-deployment": "baseline", "chat-v7-deployment": "canary"})
    pub = EventPublisher("unused:9092", registry=CollectorRegistry(), producer_factory=FakeProducer,
                         buffer_size=calls * repeats * 2 + 10)
    await pub.start()
    cb = RolloutGateCallback(rollout, kafka="unused:9092", publisher=pub, apply_decisions=False,
                             registry=CollectorRegistry())
    cb._started = True  # the publisher above is already running
    kwargs = [{"standard_logging_object": payload(i)} for i in range(calls)]
    from connectors.litellm import payload_to_event

    events = [payload_to_event(k["standard_logging_object"], rollout) for k in kwargs]
    cb_t: list[float] = []
    pub_t: list[float] = []
    for _ in range(repeats):
        cb_t.append(timed(lambda: [cb.log_success_event(k, None, None, None) for k in kwargs]))
        pub_t.append(timed(lambda: [pub.publish(e) for e in events]))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
    assert cb.published == calls * repeats, (cb.published, calls * repeats)
    await pub.stop()
    c, p = statistics.median(cb_t) / calls * 1e6, statistics.median(pub_t) / calls * 1e6
    return ["| path | µs per call | × publish() |", "|---|---|---|",
            f"| LiteLLM callback (payload → event → buffer) | {c:.1f} | {c / p:.1f} |",
            f"| EventPublisher.publish of the same event | {p:.1f} | 1.0 |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--spans", type=int, default=100)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--previous-otel", metavar="FILE", help="another connectors/otel.py to time beside this one")
    a = ap.parse_args()
    if min(a.messages, a.spans, a.calls, a.repeats) < 1:
        ap.error("every count must be >= 1")
    print(f"OpenTelemetry bridge mapping, {a.messages} messages x {a.spans} spans, median of {a.repeats}:")
    previous = load_module(a.previous_otel) if a.previous_otel else None
    print("\n".join(bench_otel(a.messages, a.spans, a.repeats, previous)))
    print(f"\nLiteLLM callback, {a.calls} calls, median of {a.repeats}:")
    print("\n".join(asyncio.run(bench_litellm(a.calls, a.repeats))))


if __name__ == "__main__":
    main()
