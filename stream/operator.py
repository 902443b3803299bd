"""The operator's commands: ``command`` (pause, resume, rollback, promote), ``status``, ``list`` and
``history``. Settings come from ``ROLLOUT_GATE_*`` variables.

``command`` asks the worker whether the command can apply (stream.status.refusal: unknown rollout,
ended rollout, pause of a paused one, resume of a running one), publishes it to the commands
topic, prints what it published, then waits for what followed: the decision on the decisions
topic (pause -> hold, rollback -> halt, promote -> promote or complete), or for ``resume`` (which
makes no decision) the worker showing the rollout running again.

Exit codes: 0 done; 1 no answer in time, or the broker or the worker cannot be reached;
2 bad usage or settings; 3 the command cannot apply (the reason is printed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import orjson
import typer

from gates.commands import ACTIONS, Command
from gates.decision import Decision, decode_decision
from stream.cli import app
from stream.commands import sign_command

EXIT_TIMEOUT = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
# the decision each command leads to; resume leads to none
EXPECTED = {"pause": ("hold",), "rollback": ("halt",), "promote": ("promote", "complete")}


class WorkerError(RuntimeError):
    """No worker answered."""


def _settings() -> Any:
    from stream.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"rollout-gate: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, orjson.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return e.code, {"error": raw.decode(errors="replace").strip()}


def ask_workers(urls: list[str], method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """The first answer that is not a 404 from the workers at ``urls`` (each serves its own
    partitions' rollouts); (404, body) when every worker answered 404. Raises WorkerError when none
    answered at all."""
    last: tuple[int, Any] | None = None
    errors = []
    for base in urls:
        try:
            code, out = _http(method, base + path, body)
        except (OSError, orjson.JSONDecodeError) as exc:
            errors.append(f"{base}: {exc}")
            continue
        if code != 404:
            return code, out
        last = (code, out)
    if last is not None:
        return last
    raise WorkerError("no worker answered (" + "; ".join(errors) + "); set ROLLOUT_GATE_WORKER_URLS")


def all_views(urls: list[str]) -> list[dict[str, Any]]:
    views: list[dict[str, Any]] = []
    errors = []
    for base in urls:
        try:
            code, out = _http("GET", base + "/rollouts")
        except (OSError, orjson.JSONDecodeError) as exc:
            errors.append(f"{base}: {exc}")
            continue
        if code == 200:
            views.extend(out["rollouts"])
        else:
            errors.append(f"{base}: HTTP {code} {out}")
    if errors and not views and len(errors) == len(urls):
        raise WorkerError("no worker answered (" + "; ".join(errors) + "); set ROLLOUT_GATE_WORKER_URLS")
    return sorted(views, key=lambda v: v["rollout_id"])


# -- Kafka --------------------------------------------------------------------------------------

async def partitions_of(settings: Any, topic: str) -> list[int]:
    """The topic's partitions ([] while it does not exist)."""
    from stream.topics import admin_client

    admin = admin_client(settings)
    await admin.start()
    try:
        # listed first: a metadata request for a missing topic may make the broker create it, with
        # the broker's defaults (a decisions topic that is not compacted stops the worker at start)
        if topic not in await admin.list_topics():
            return []
        for t in await admin.describe_topics([topic]):
            if t["topic"] == topic and t.get("error_code", 0) == 0:
                return sorted(p["partition"] for p in t["partitions"])
        return []
    finally:
        await admin.close()


async def _end_offsets(settings: Any, topic: str) -> dict[Any, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    parts = await partitions_of(settings, topic)
    if not parts:  # no decision yet at all: the topic comes with the worker's first one
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                **settings.aiokafka_auth())
    await consumer.start()
    try:
        return dict(await consumer.end_offsets([TopicPartition(topic, p) for p in parts]))
    finally:
        await consumer.stop()


async def publish_command(settings: Any, cmd: Command) -> tuple[int, int]:
    """Publish and wait for the broker's acknowledgement; returns (partition, offset)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                enable_idempotence=True, **settings.aiokafka_auth())
    await producer.start()
    try:
        meta = await producer.send_and_wait(settings.commands_topic, cmd.to_json(), key=cmd.rollout_id.encode())
        return int(meta.partition), int(meta.offset)
    finally:
        await producer.stop()


async def read_decisions(settings: Any, rollout_id: str, *, start: dict[Any, int] | None = None,
                         until: Any = None, timeout: float = 30.0) -> list[Decision]:
    """The rollout's decisions on the decisions topic from ``start`` (end offsets taken before) or
    from the beginning, until ``until(decision)`` holds for one or the topic's end is reached (no
    ``until``) or the timeout."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = settings.decisions_topic
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **settings.aiokafka_auth())
    out: list[Decision] = []
    key = rollout_id.encode()
    deadline = time.monotonic() + timeout
    parts = await partitions_of(settings, topic)
    while not parts and until is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # the worker creates the topic at start
        parts = await partitions_of(settings, topic)
    if not parts:
        return out
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        for tp in tps:
            if start is not None and tp in start:
                consumer.seek(tp, start[tp])
            else:
                await consumer.seek_to_beginning(tp)
        ends = await consumer.end_offsets(tps) if until is None else {}
        while time.monotonic() < deadline:
            if until is None and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batch.values():
                for r in records:
                    if r.key != key or r.value is None:
                        continue
                    try:
                        d = decode_decision(r.value)
                    except Exception:  # an undecodable message is not ours to judge here
                        continue
                    out.append(d)
                    if until is not None and until(d):
                        return out
        return out
    finally:
        await consumer.stop()


# -- printing -----------------------------------------------------------------------------------

def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}x"


def describe_decision(d: Decision | dict[str, Any]) -> str:
    x = d.to_dict() if isinstance(d, Decision) else d
    return (f"decision seq {x['seq']}: {x['action']} at {x['stage']} (weight {x['previous_weight']:g}% -> "
            f"{x['weight']:g}%, trigger {x['trigger']}): {x['reason']}")


def render_status(v: dict[str, Any]) -> str:
    """Like ``kubectl argo rollouts get rollout``: the rollout, its step, then one line per gate."""
    lines = [f"Name:          {v['rollout_id']}",
             f"Status:        {v['state']}" + (" (paused by an operator)" if v["paused"] else ""),
             f"Stage:         {v['stage']}   canary weight {v['weight']:g}%   seq {v['seq']}",
             f"Event time:    {_when(v.get('watermark'))} UTC",
             "Samples:       " + ", ".join(f"{a} {n:,}" for a, n in v["samples"].items())]
    last = v.get("last_decision")
    if last:
        lines.append(f"Last decision: {last['action']} (seq {last['seq']}, {last['trigger']}) at "
                     f"{_when(last['ts'])}: {last['reason']}")
    step, needs = v.get("step"), v.get("needs")
    if step and needs:
        lines.append(
            f"Step:          {step['elapsed_seconds']:.0f}s of event time (min {step['min_seconds']:g}s, hold at "
            f"{step['max_seconds']:g}s); {step['tested_arm']} {step['tested_samples']:,} of {step['min_samples']:,} "
            f"requests; {step['blocks']} of {step['min_blocks']} blocks; {step['tested_rps']:.1f} req/s")
        wants = [f"{needs['samples']:,} more {step['tested_arm']} requests" if needs["samples"] else "",
                 f"{needs['seconds']:.0f}s more" if needs["seconds"] else "",
                 f"{needs['blocks']} more blocks" if needs["blocks"] else "",
                 f"conclusive {', '.join(needs['gates'])}" if needs["gates"] else ""]
        lines.append("Needs:         " + ("; ".join(w for w in wants if w) or "nothing: verdict at the next evaluation"))
    lines.append(f"Verdict in:    {v['eta']}")
    lines.append("")
    rows = [("GATE", "STATUS", "RATIO", "BOUNDS", "THRESHOLD", "SAMPLES (TESTED/BASE)", "REASON")]
    for g in v["gates"]:
        bounds = "-" if g["lower"] is None or g["upper"] is None else f"[{g['lower']:.3f}, {g['upper']:.3f}]"
        n = g["samples"]
        tested = next((n[a] for a in ("canary", "shadow") if a in n), None)
        samples = f"{tested if tested is not None else '-'}/{n.get('baseline', '-')}"
        rows.append((g["name"], g["status"], _ratio(g["ratio"]), bounds, f"{g['threshold']:g}x", samples,
                     g["reason"]))
    if len(rows) == 1:
        rows.append(("(no gate evaluated yet in this step)", "", "", "", "", "", ""))
    lines.extend(_table(rows))
    return "\n".join(lines)


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1] for r in rows]


# -- commands -----------------------------------------------------------------------------------

@app.command()
def command(
    action: str = typer.Argument(..., help="pause | resume | rollback | promote"),
    rollout_id: str = typer.Argument(..., help="the rollout to act on"),
    reason: str = typer.Option("", "--reason", "-r", help="why: it goes into the decision's reason"),
    actor: str = typer.Option("", "--actor", help="who (default: $USER)"),
    wait: float = typer.Option(30.0, "--wait", help="seconds to wait for the decision that follows"),
    force: bool = typer.Option(False, "--force", help="publish without asking the worker (the worker "
                               "still refuses a command that cannot apply)"),
) -> None:
    """Send an operator command through the commands topic and print the decision that follows."""
    import getpass

    if action not in ACTIONS:
        typer.echo(f"rollout-gate: action must be one of {', '.join(ACTIONS)}", err=True)
        raise typer.Exit(EXIT_USAGE)
    settings = _settings()
    urls = settings.worker_base_urls
    before: dict[str, Any] | None = None
    if not force:
        try:
            code, out = ask_workers(urls, "POST", f"/rollouts/{urllib.parse.quote(rollout_id, safe='')}/commands/check",
                                    {"action": action})
        except WorkerError as exc:
            typer.echo(f"rollout-gate: cannot check {rollout_id}: {exc} (or --force)", err=True)
            raise typer.Exit(EXIT_TIMEOUT) from None
        if code == 409 or code == 404:
            typer.echo(f"rollout-gate: {action} refused: {out.get('error', out)}", err=True)
            raise typer.Exit(EXIT_REFUSED)
        if code != 200:
            typer.echo(f"rollout-gate: cannot check {rollout_id}: HTTP {code}: {out}", err=True)
            raise typer.Exit(EXIT_TIMEOUT)
        before = out["rollout"]
    cmd = Command(rollout_id=rollout_id, action=action, ts=time.time(), actor=actor or getpass.getuser(),
                  reason=reason)  # fmt: skip
    cmd = sign_command(settings, cmd)

    async def send() -> tuple[dict[Any, int], tuple[int, int]]:
        start = await _end_offsets(settings, settings.decisions_topic)
        return start, await publish_command(settings, cmd)

    try:
        start, (partition, offset) = asyncio.run(asyncio.wait_for(send(), timeout=30))
    except (Exception, asyncio.CancelledError) as exc:  # a broker that is down or refuses us: no traceback
        typer.echo(f"rollout-gate: could not publish to {settings.commands_topic} at "
                   f"{settings.kafka_bootstrap}: {exc!r}", err=True)  # fmt: skip
        raise typer.Exit(EXIT_TIMEOUT) from None
    typer.echo(f"published {action} for {rollout_id} to {settings.commands_topic} "
               f"[partition {partition}, offset {offset}]: {cmd.to_json().decode()}")
    if wait <= 0:
        return
    if action == "resume":
        _wait_resumed(urls, rollout_id, wait)
        return
    expected = EXPECTED[action]
    seq_before = before["seq"] if before else 0
    try:
        got = asyncio.run(read_decisions(settings, rollout_id, start=start, timeout=wait,
                                         until=lambda d: d.seq > seq_before))
    except (Exception, asyncio.CancelledError) as exc:
        typer.echo(f"rollout-gate: could not read {settings.decisions_topic}: {exc!r}", err=True)
        raise typer.Exit(EXIT_TIMEOUT) from None
    new = [d for d in got if d.seq > seq_before]
    if not new:
        typer.echo(f"rollout-gate: no decision for {rollout_id} on {settings.decisions_topic} within {wait:g}s "
                   f"(expected {' or '.join(expected)}); see `rollout-gate status {rollout_id}` and the "
                   f"dead-letter topic {settings.dlq_topic}", err=True)
        raise typer.Exit(EXIT_TIMEOUT)
    d = new[0]
    typer.echo(describe_decision(d))
    if d.action not in expected:
        typer.echo(f"rollout-gate: the decision that followed is {d.action}, not {' or '.join(expected)}",
                   err=True)
        raise typer.Exit(EXIT_TIMEOUT)


def _wait_resumed(urls: list[str], rollout_id: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    path = f"/rollouts/{urllib.parse.quote(rollout_id, safe='')}"
    while True:
        try:
            code, view = ask_workers(urls, "GET", path)
        except WorkerError:
            code, view = 0, None
        if code == 200 and not view["paused"]:
            typer.echo(f"resumed: {rollout_id} is {view['state']} at {view['stage']} (seq {view['seq']}); "
                       f"no decision until the gates decide. Verdict in: {view['eta']}")
            return
        if time.monotonic() > deadline:
            typer.echo(f"rollout-gate: the worker did not show {rollout_id} resumed within {wait:g}s", err=True)
            raise typer.Exit(EXIT_TIMEOUT)
        time.sleep(0.3)


@app.command()
def status(
    rollout_id: str = typer.Argument(..., help="the rollout"),
    as_json: bool = typer.Option(False, "--json", help="the worker's view as JSON"),
) -> None:
    """A rollout's live state: stage, each gate's ratio and bounds, what the step still needs."""
    settings = _settings()
    try:
        code, view = ask_workers(settings.worker_base_urls, "GET", f"/rollouts/{urllib.parse.quote(rollout_id, safe='')}")
    except WorkerError as exc:
        typer.echo(f"rollout-gate: {exc}", err=True)
        raise typer.Exit(EXIT_TIMEOUT) from None
    if code == 404:
        typer.echo(f"rollout-gate: unknown rollout {rollout_id}", err=True)
        raise typer.Exit(EXIT_REFUSED)
    if code != 200:
        typer.echo(f"rollout-gate: HTTP {code}: {view}", err=True)
        raise typer.Exit(EXIT_TIMEOUT)
    typer.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() if as_json else render_status(view))


@app.command("list")
def list_rollouts(as_json: bool = typer.Option(False, "--json", help="the workers' views as JSON")) -> None:
    """Every rollout the workers hold, one line each."""
    settings = _settings()
    try:
        views = all_views(settings.worker_base_urls)
    except WorkerError as exc:
        typer.echo(f"rollout-gate: {exc}", err=True)
        raise typer.Exit(EXIT_TIMEOUT) from None
    if as_json:
        typer.echo(orjson.dumps({"rollouts": views}, option=orjson.OPT_INDENT_2).decode())
        return
    rows = [("ROLLOUT", "STATUS", "STAGE", "WEIGHT", "SEQ", "SAMPLES", "GATES", "VERDICT IN")]
    for v in views:
        gates = ",".join(f"{g['name']}={g['status']}" for g in v["gates"]) or "-"
        rows.append((v["rollout_id"], v["state"], v["stage"], f"{v['weight']:g}%", str(v["seq"]),
                     "/".join(str(n) for n in v["samples"].values()), gates, v["eta"]))
    for line in _table(rows):
        typer.echo(line)


@app.command()
def history(
    rollout_id: str = typer.Argument(..., help="the rollout"),
    as_json: bool = typer.Option(False, "--json", help="the decisions as JSON lines"),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds to read the decisions topic"),
) -> None:
    """A rollout's decisions in seq order, from the decisions topic (compaction keeps at least the
    latest; older ones stay until the broker compacts them)."""
    settings = _settings()
    try:
        got = asyncio.run(read_decisions(settings, rollout_id, timeout=timeout))
    except (Exception, asyncio.CancelledError) as exc:
        typer.echo(f"rollout-gate: could not read {settings.decisions_topic}: {exc!r}", err=True)
        raise typer.Exit(EXIT_TIMEOUT) from None
    by_seq = {d.seq: d for d in got}  # a re-emitted decision (same seq) after a restart counts once
    if not by_seq:
        typer.echo(f"rollout-gate: no decisions for {rollout_id} on {settings.decisions_topic}", err=True)
        raise typer.Exit(EXIT_REFUSED)
    ordered = [by_seq[s] for s in sorted(by_seq)]
    if as_json:
        for d in ordered:
            typer.echo(d.to_json().decode())
        return
    rows = [("SEQ", "EVENT TIME (UTC)", "ACTION", "STAGE", "WEIGHT", "TRIGGER", "REASON")]
    for d in ordered:
        rows.append((str(d.seq), _when(d.ts), d.action, d.stage, f"{d.previous_weight:g}->{d.weight:g}%", d.trigger,
                     d.reason))
    for line in _table(rows):
        typer.echo(line)
