"""The OpenTelemetry bridge on the real broker: the Collector exporter's messages (built with
opentelemetry-proto, both encodings, traces and logs) in; contract events keyed by rollout_id and
dead letters with reasons out; offsets committed so a restart does not send them twice."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry

from connectors.otel import REASON_HEADER, SOURCE_HEADER, OtelBridge, OtelMapping, Source
from connectors.testing import bootstrap, create_topics, produce, read_all
from gates.events import InferenceEvent, Rejection, decode_message
from tests.integration.conftest import REPO
from tests.integration.helpers import metric_value, stop_process, wait_for
from tests.integration.workerproc import free_port
from tests.unit.connectors.otlp_messages import encode, genai_attrs, log_record, logs, span, traces

pytestmark = pytest.mark.integration

ROLLOUTS = ("chat-v7", "code-v2", "summarize-v3")


async def read_event_records(servers: str, topic: str, n_events: int, timeout: float = 30.0) -> list:  # type: ignore[type-arg]
    """The topic's records once they hold ``n_events`` events (a record is a JSON array of events)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        records = await read_all(servers, topic, expect=10**9, timeout=1.0)
        if sum(len(decode_message(r.value)) for r in records) >= n_events or loop.time() > deadline:
            return records


def span_batch(base: int, n: int) -> list:  # type: ignore[type-arg]
    return [span(base + i, genai_attrs(rollout=ROLLOUTS[i % 3], arm="canary" if i % 2 else "baseline",
                                       output_tokens=10 + i, finish=["content_filter"] if i == 0 else ["stop"]))
            for i in range(n)]


async def test_bridge_maps_both_encodings_of_traces_and_logs(unique_id: str) -> None:
    servers = bootstrap()
    src = {(sig, enc): f"{unique_id}.{sig}.{enc}" for sig in ("traces", "logs") for enc in ("otlp_proto", "otlp_json")}
    events, dlq = f"{unique_id}.events", f"{unique_id}.dlq"
    await create_topics(servers, list(src.values()), partitions=2)
    await create_topics(servers, [events, dlq], partitions=3)

    expected_ok = 0
    for (sig, enc), topic in src.items():
        if sig == "traces":
            good = traces(span_batch(1000 if enc == "otlp_proto" else 2000, 12))
            bad = traces([span(1, genai_attrs(arm="blue")), span(2, {"http.route": "/healthz"})])
        else:
            good = logs([log_record(3000 + i, genai_attrs(rollout=ROLLOUTS[i % 3], arm="canary")) for i in range(6)])
            bad = logs([log_record(1, genai_attrs(), duration_s=None)])
        expected_ok += 12 if sig == "traces" else 6
        # keys as the exporter's partition_traces_by_id would set them: a trace id, not a rollout
        await produce(servers, topic, [(b"0af7651916cd43dd8448eb211c80319c", encode(good, enc)),
                                       (None, encode(bad, enc)), (None, b"\x00not otlp")])

    mapping = OtelMapping()
    bridge_kw = dict(sources=[Source(t, sig, enc) for (sig, enc), t in src.items()], mapping=mapping,  # type: ignore[arg-type]
                     events_topic=events, dlq_topic=dlq, group_id=f"{unique_id}.bridge")
    reg = CollectorRegistry()
    async with OtelBridge(servers, registry=reg, **bridge_kw):  # type: ignore[arg-type]
        records = await read_event_records(servers, events, expected_ok)
        letters = await read_all(servers, dlq, expect=8, timeout=30)
        await asyncio.sleep(1.0)  # let the bridge commit its offsets

    got = []
    part = DefaultPartitioner()
    for r in records:
        decoded = decode_message(r.value)
        assert all(isinstance(e, InferenceEvent) for e in decoded), decoded
        for e in decoded:
            assert e.rollout_id == r.key.decode()
            # the Java client's murmur2 placement, as the worker's keyed partitions expect
            assert r.partition == part(r.key, [0, 1, 2], [0, 1, 2])
            got.append(e)
    assert len(got) == expected_ok
    assert {e.rollout_id for e in got} == set(ROLLOUTS)
    assert sum(e.refusal for e in got) == 2  # the first span of each trace batch (content_filter)
    assert sum(1 for e in got if e.request_id.startswith("0000")) == expected_ok  # ids from the trace and span ids

    reasons = sorted(dict(lt.headers)[REASON_HEADER].decode() for lt in letters)
    assert len(letters) == 8
    assert reasons.count("rollout.arm 'blue' is not an arm (baseline, canary, shadow) nor mapped to one") == 2
    assert reasons.count("latency is unknown") == 2
    assert sum(r.startswith("not valid") for r in reasons) == 4  # one garbage message per topic
    for lt in letters:
        topic, partition, offset = dict(lt.headers)[SOURCE_HEADER].decode().rsplit(":", 2)
        assert topic in src.values() and partition.isdigit() and offset.isdigit()
        if lt.key is not None and lt.key != b"0af7651916cd43dd8448eb211c80319c":
            assert lt.key == b"chat-v7"  # mappable rollout, unmappable span: keyed by its rollout
    assert all(not isinstance(d, Rejection) for r in records for d in decode_message(r.value))

    # offsets were committed: a second bridge in the same group sends nothing again
    async with OtelBridge(servers, registry=CollectorRegistry(), **bridge_kw):  # type: ignore[arg-type]
        await asyncio.sleep(4.0)
    again = await read_event_records(servers, events, expected_ok + 1, timeout=3)
    assert sum(len(decode_message(r.value)) for r in again) == expected_ok
    counted = reg.get_sample_value("rollout_gate_otel_records_total", {"signal": "traces", "outcome": "event"})
    assert counted == 24


async def test_the_cli_bridge_serves_its_metrics_and_maps_otlp_json(unique_id: str, tmp_path: Path) -> None:
    """``rollout-gate otel-bridge`` as users run it (a process, the CLI's options), otlp_json traces."""
    servers = bootstrap()
    spans_topic, events, dlq = f"{unique_id}.otlp_spans", f"{unique_id}.events", f"{unique_id}.dlq"
    await create_topics(servers, [spans_topic, events, dlq], partitions=2)
    port = free_port()
    log = (tmp_path / "bridge.log").open("w")
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "rollout-gate"), "otel-bridge", "--bootstrap", servers,
         "--traces-topic", spans_topic, "--traces-encoding", "otlp_json", "--logs-topic", "",
         "--events-topic", events, "--dlq-topic", dlq, "--group-id", f"{unique_id}-bridge",
         "--arm", "chat-v6=baseline", "--arm", "chat-v7=canary", "--metrics-port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )
    try:
        batch = [span(i, genai_attrs(rollout="chat-v7", arm="chat-v7" if i % 2 else "chat-v6")) for i in range(10)]
        await produce(servers, spans_topic, [(None, encode(traces(batch), "otlp_json"))])
        records = await read_event_records(servers, events, 10, timeout=60)
        got = [e for r in records for e in decode_message(r.value)]
        assert sorted(e.arm for e in got) == ["baseline"] * 5 + ["canary"] * 5  # type: ignore[union-attr]

        def scraped() -> float | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return None
            return metric_value(text, "rollout_gate_otel_records_total", signal="traces", outcome="event")

        assert wait_for(lambda: scraped() == 10, timeout=20), (scraped(), (tmp_path / "bridge.log").read_text())
    finally:
        stop_process(proc)
        log.close()
