"""``rollout-gate command``: publish an operator command (pause, resume, rollback, promote)."""

from __future__ import annotations

import asyncio
import time

import typer

from gates.commands import ACTIONS, Command
from stream.cli import app
from stream.commands import sign_command


async def publish_command(settings, cmd: Command) -> None:  # type: ignore[no-untyped-def]
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), acks="all", enable_idempotence=True,
        **settings.aiokafka_auth(),
    )  # fmt: skip
    await producer.start()
    try:
        await producer.send_and_wait(settings.commands_topic, cmd.to_json(), key=cmd.rollout_id.encode())
    finally:
        await producer.stop()


@app.command()
def command(
    action: str = typer.Argument(..., help="pause | resume | rollback | promote"),
    rollout_id: str = typer.Argument(..., help="the rollout to act on"),
    reason: str = typer.Option("", "--reason", "-r", help="why: it goes into the decision's reason"),
    actor: str = typer.Option("", "--actor", help="who (default: $USER)"),
) -> None:
    """Send an operator command to the worker through the commands topic (ROLLOUT_GATE_* settings)."""
    import getpass

    from stream.settings import SettingsError, load_settings

    if action not in ACTIONS:
        typer.echo(f"rollout-gate: action must be one of {', '.join(ACTIONS)}", err=True)
        raise typer.Exit(2)
    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(f"rollout-gate: {exc}", err=True)
        raise typer.Exit(2) from None
    cmd = Command(rollout_id=rollout_id, action=action, ts=time.time(), actor=actor or getpass.getuser(),
                  reason=reason)  # fmt: skip
    cmd = sign_command(settings, cmd)
    try:
        asyncio.run(asyncio.wait_for(publish_command(settings, cmd), timeout=30))
    except Exception as exc:  # a broker that is down or refuses us: say so, no traceback
        typer.echo(f"rollout-gate: could not publish to {settings.commands_topic} at "
                   f"{settings.kafka_bootstrap}: {exc!r}", err=True)  # fmt: skip
        raise typer.Exit(1) from None
    typer.echo(f"{action} sent for {rollout_id}")
