"""Trust: operator commands are authenticated (HMAC-SHA256) and a replayed one is refused, on a live
worker and in the pure parts; the HTTP API refuses mutating calls without a token and compares
tokens in constant time; no secret reaches a log line."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

import connectors.api as api_module
from connectors.api import RecordingCommandSink, RolloutAPI
from connectors.subscriber import DecisionSubscriber
from gates.commands import Command, decode_command, sign, verify
from gates.engine import Engine
from gates.policy import parse_policy
from stream.commands import signing_sink
from stream.metrics import Metrics
from stream.processor import NO_KEY_REASON, REASON_HEADER, SOURCE_HEADER, CommandAuth, Processor, Record
from stream.settings import load_settings
from tests.faults.conftest import COMMAND_KEY, Topics
from tests.integration.helpers import decoded, has_action, metric_value, of, wait_for
from tests.integration.kafka_io import produce, read_until
from tests.integration.streams import BASELINE, CANARY, FAST_POLICY, generate, messages, recent_start
from tests.integration.workerproc import Worker

API_TOKEN = "api-token-that-must-never-be-logged-0123"
TS = 1_767_225_600.0


def cmd(action: str = "pause", ts: float = TS, rid: str = "r1", **kw: Any) -> Command:
    return Command(rollout_id=rid, action=action, ts=ts, actor="alice", **kw)


# ---- the pure parts --------------------------------------------------------------------------------

def test_a_signed_command_verifies_and_any_change_breaks_it() -> None:
    signed = sign(cmd(reason="latency"), COMMAND_KEY, "n-1")
    assert verify(signed, COMMAND_KEY) is None
    again = decode_command(signed.to_json())
    assert isinstance(again, Command) and verify(again, COMMAND_KEY) is None  # survives the wire
    for change in ({"action": "rollback"}, {"rollout_id": "r2"}, {"ts": TS + 1}, {"actor": "mallory"},
                   {"reason": "x"}, {"nonce": "n-2"}):
        forged = decode_command(orjson.dumps({**orjson.loads(signed.to_json()), **change}))
        assert isinstance(forged, Command)
        assert verify(forged, COMMAND_KEY) == "signature does not match the command", change
    assert verify(signed, b"another-key-of-sixteen") == "signature does not match the command"
    assert verify(cmd(), COMMAND_KEY).startswith("signature is missing")  # type: ignore[union-attr]


def test_the_engine_refuses_a_replayed_or_older_command_and_a_restored_snapshot_still_does() -> None:
    engine = Engine(parse_policy(FAST_POLICY))
    first = sign(cmd("pause", TS), COMMAND_KEY, "n-1")
    assert engine.command_replayed(first, "c:0", 0) is None
    assert [d.action for d in engine.command(first, "c:0", 0)] == ["promote", "hold"]
    # the same command again, from a later offset (sent again): refused
    assert engine.command_replayed(first, "c:0", 1) == "nonce refused: this command was already applied to this rollout"
    # the same offset again (delivered again after a restart): not a replay, the engine skips it
    assert engine.command_replayed(first, "c:0", 0) is None
    older = sign(cmd("resume", TS - 5), COMMAND_KEY, "n-2")
    assert "older than the last one applied" in (engine.command_replayed(older, "c:0", 2) or "")
    same_ts = sign(cmd("resume", TS), COMMAND_KEY, "n-3")  # another command at the same ts: fine
    assert engine.command_replayed(same_ts, "c:0", 3) is None
    engine.command(same_ts, "c:0", 3)
    restored = Engine(parse_policy(FAST_POLICY))
    restored.restore("r1", engine.snapshot("r1"))
    assert restored.command_replayed(first, "c:0", 9) is not None
    assert restored.command_replayed(same_ts, "c:0", 9) is not None


async def test_without_a_key_commands_are_refused_unless_unsigned_ones_are_allowed_explicitly() -> None:
    from tests.unit.stream.fakes import FakeEngine, ListSink

    value = cmd().to_json()
    for auth, refused in ((CommandAuth(), True), (CommandAuth(allow_unsigned=True), False),
                          (CommandAuth(key=COMMAND_KEY), True)):
        sink = ListSink()
        proc = Processor(lambda: FakeEngine(), sink, Metrics(), command_auth=auth)
        decisions = await proc.process_commands([Record("cmd", 0, 0, b"r1", value)])
        assert (decisions == []) is refused, auth
        if refused:
            (letter,) = sink.letters
            why = dict(letter.headers)[REASON_HEADER].decode()
            assert why == NO_KEY_REASON if auth.key is None else why.startswith("signature is missing")
    assert "key=set" in repr(CommandAuth(key=COMMAND_KEY)) and COMMAND_KEY.decode() not in repr(CommandAuth(COMMAND_KEY))


def test_secrets_are_secret_strings_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_GATE_COMMAND_HMAC_KEY", COMMAND_KEY.decode())
    monkeypatch.setenv("ROLLOUT_GATE_API_TOKEN", API_TOKEN)
    s = load_settings()
    assert s.command_key == COMMAND_KEY
    assert s.api_token is not None and s.api_token.get_secret_value() == API_TOKEN
    for text in (repr(s), str(s), str(s.model_dump())):
        assert COMMAND_KEY.decode() not in text and API_TOKEN not in text


# ---- the HTTP API ----------------------------------------------------------------------------------

async def _post(api: RolloutAPI, token: str | None) -> int:
    client = TestClient(TestServer(api.app()))
    await client.start_server()
    try:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        r = await client.post("/rollouts/r1/commands", json={"action": "pause"}, headers=headers)
        return r.status
    finally:
        await client.close()


async def test_the_api_refuses_commands_without_a_configured_token_and_compares_in_constant_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    views = DecisionSubscriber("127.0.0.1:1")  # never started: no decisions, none needed
    sink = RecordingCommandSink()
    # no token configured: every mutating call is refused, whatever is presented
    for presented in (None, "", "anything", API_TOKEN):
        assert await _post(RolloutAPI(views, sink, token=None), presented) in (401, 403)
    assert sink.sent == []
    compared: list[tuple[bytes, bytes]] = []
    real = api_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_module.hmac, "compare_digest", spy)
    api = RolloutAPI(views, sink, token=API_TOKEN)
    assert await _post(api, API_TOKEN[:-1] + "x") == 403
    assert await _post(api, API_TOKEN) == 202
    assert compared == [((API_TOKEN[:-1] + "x").encode(), API_TOKEN.encode()), (API_TOKEN.encode(), API_TOKEN.encode())]
    assert len(sink.sent) == 1


async def test_the_api_sink_of_rollout_gate_api_signs_what_it_publishes() -> None:
    sink = signing_sink(RecordingCommandSink, COMMAND_KEY)()
    await sink.send(cmd())
    await sink.send(cmd())
    a, b = sink.sent
    assert verify(a, COMMAND_KEY) is None and verify(b, COMMAND_KEY) is None
    assert a.nonce != b.nonce  # a fresh nonce each time: two real pauses are two commands


def test_the_cli_signs_its_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import stream.operator as operator
    from stream.cli import app, main  # noqa: F401 - registers the commands

    sent: list[Command] = []

    async def fake_publish(settings: Any, c: Command) -> tuple[int, int]:
        sent.append(c)
        return 0, 0

    async def no_offsets(settings: Any, topic: str) -> dict[Any, int]:
        return {}

    monkeypatch.setattr(operator, "publish_command", fake_publish)
    monkeypatch.setattr(operator, "_end_offsets", no_offsets)
    monkeypatch.setenv("ROLLOUT_GATE_COMMAND_HMAC_KEY", COMMAND_KEY.decode())
    # --force: no worker to ask here; --wait 0: no decision to wait for
    r = CliRunner().invoke(app, ["command", "pause", "chat-v7", "--reason", "why", "--force", "--wait", "0"])
    assert r.exit_code == 0, r.output
    (c,) = sent
    assert (c.action, c.rollout_id, c.reason) == ("pause", "chat-v7", "why")
    assert verify(c, COMMAND_KEY) is None and len(c.nonce) == 32
    assert COMMAND_KEY.decode() not in r.output


# ---- a live worker ---------------------------------------------------------------------------------

def _source_offset(message: Any, topic: str) -> int:
    """The offset in ``topic`` of the message a dead letter came from (-1: from another topic)."""
    src_topic, _, offset = message.headers.get(SOURCE_HEADER, b"").decode().rpartition(":")
    return int(offset) if src_topic.rpartition(":")[0] == topic and offset.isdigit() else -1


@pytest.mark.integration
@pytest.mark.faults
def test_live_worker_applies_signed_commands_once_and_dead_letters_the_rest_without_logging_secrets(
        worker: Worker, topics: Topics, kafka_bootstrap: str, tmp_path: Path) -> None:
    worker.env["ROLLOUT_GATE_API_TOKEN"] = API_TOKEN
    worker.start()
    rid = "chat-t"
    events = generate(rid, seconds=8, arms={"baseline": BASELINE, "canary": CANARY}, seed=2, start=recent_start(600))
    asyncio.run(produce(kafka_bootstrap, topics.events, messages(events, 50)))
    t = events[-1]["ts"]
    pause = sign(cmd("pause", t, rid), COMMAND_KEY, "n-1")
    tampered = orjson.dumps({**orjson.loads(pause.to_json()), "action": "rollback"})
    sequence = [
        (cmd("pause", t, rid).to_json(), "signature is missing"),
        (sign(cmd("pause", t, rid), b"not-the-workers-key!", "n-0").to_json(), "signature does not match"),
        (tampered, "signature does not match"),
        (pause.to_json(), None),
        (pause.to_json(), "nonce refused: this command was already applied"),
        (sign(cmd("resume", t - 10, rid), COMMAND_KEY, "n-2").to_json(), "nonce refused: the command is older"),
        (sign(cmd("rollback", t + 1, rid), COMMAND_KEY, "n-3").to_json(), None),
    ]
    asyncio.run(produce(kafka_bootstrap, topics.commands, [(rid.encode(), v) for v, _ in sequence]))
    want = [why for _, why in sequence if why]
    dlq = asyncio.run(read_until(kafka_bootstrap, topics.dlq, lambda m: len(m) >= len(want), timeout=60))
    msgs = asyncio.run(read_until(kafka_bootstrap, topics.decisions, has_action(rid, "halt"), timeout=60))
    assert [d["action"] for d in of(rid, decoded(msgs))] == ["promote", "hold", "halt"]
    assert [d["trigger"] for d in of(rid, decoded(msgs))][1:] == ["operator", "operator"]
    reasons = [m.headers[REASON_HEADER].decode() for m in dlq]
    assert len(reasons) == len(want) and all(r.startswith(w) for r, w in zip(reasons, want, strict=True)), reasons
    text = worker.metrics()
    assert metric_value(text, "rollout_gate_rejected_commands_total", reason="signature_missing") == 1
    assert metric_value(text, "rollout_gate_rejected_commands_total", reason="signature_invalid") == 2
    assert metric_value(text, "rollout_gate_rejected_commands_total", reason="nonce_invalid") == 2

    # after a crash the restored state still refuses the captured pause
    worker.kill()
    worker.start()
    asyncio.run(produce(kafka_bootstrap, topics.commands, [(rid.encode(), pause.to_json())]))
    # the restarted worker may dead-letter the earlier commands again (at-least-once past the last
    # commit): pick the new command's letter by its source offset, the one after the sequence's
    def new_letter(ms: list[Any]) -> list[Any]:
        return [m for m in ms if _source_offset(m, topics.commands) >= len(sequence)]

    dlq = asyncio.run(read_until(kafka_bootstrap, topics.dlq, lambda m: bool(new_letter(m)), timeout=60))
    (letter,) = new_letter(dlq)
    assert letter.headers[REASON_HEADER].decode().startswith("nonce refused")

    log = worker.log_path.read_text(errors="replace")
    assert "operator command pause on chat-t by alice" in log  # the log is there, and says what happened
    for secret in (COMMAND_KEY.decode(), API_TOKEN):
        assert secret not in log
    assert wait_for(lambda: worker.proc is not None and worker.proc.poll() is None, 1)


@pytest.mark.integration
@pytest.mark.faults
def test_a_worker_without_a_key_warns_at_start_and_refuses_every_command(
        worker: Worker, topics: Topics, kafka_bootstrap: str) -> None:
    del worker.env["ROLLOUT_GATE_COMMAND_HMAC_KEY"]
    worker.start()
    signed = sign(cmd("pause", time.time(), "chat-n"), COMMAND_KEY, "n-1").to_json()
    asyncio.run(produce(kafka_bootstrap, topics.commands, [(b"chat-n", cmd("pause", time.time(), "chat-n").to_json()),
                                                           (b"chat-n", signed)]))
    dlq = asyncio.run(read_until(kafka_bootstrap, topics.dlq, lambda m: len(m) >= 2, timeout=60))
    assert [m.headers[REASON_HEADER].decode() for m in dlq] == [NO_KEY_REASON] * 2
    assert "no ROLLOUT_GATE_COMMAND_HMAC_KEY: every operator command will be refused" in worker.log_path.read_text()
    logging.getLogger(__name__).info("refused as expected")


def test_an_empty_secret_is_not_configured_and_a_short_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.settings import SettingsError

    monkeypatch.setenv("ROLLOUT_GATE_COMMAND_HMAC_KEY", "")
    monkeypatch.setenv("ROLLOUT_GATE_API_TOKEN", "")
    s = load_settings()
    assert s.command_key is None and s.api_token is None
    monkeypatch.setenv("ROLLOUT_GATE_COMMAND_HMAC_KEY", "short")
    with pytest.raises(SettingsError, match="ROLLOUT_GATE_COMMAND_HMAC_KEY") as err:
        load_settings()
    assert "short" not in str(err.value)
