"""Registers every CLI command on the typer app (imported by stream.cli.main)."""

from __future__ import annotations

import os
import shutil
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from stream.cli import app


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command()
def worker(
    log_level: LogLevel = typer.Option(LogLevel.info, "--log-level", "-l", help="log verbosity"),
) -> None:
    """Run the streaming worker: events in, decisions out. Settings come from ROLLOUT_GATE_* variables."""
    from stream.settings import SettingsError, load_settings
    from stream.worker import run_worker

    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(f"rollout-gate: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(run_worker(settings, log_level.value))


class KafkaAction(StrEnum):
    start = "start"
    stop = "stop"
    status = "status"
    restart = "restart"
    logs = "logs"
    reset = "reset"


def kafka_script() -> Path | None:
    """scripts/kafka-local of the source checkout this package runs from, if there is one."""
    candidate = Path(__file__).resolve().parent.parent / "scripts" / "kafka-local"
    return candidate if candidate.is_file() else None


@app.command()
def kafka(action: KafkaAction = typer.Argument(..., help="start | stop | status | restart | logs | reset")) -> None:
    """Run the local single-node Kafka broker for development (scripts/kafka-local; env KAFKA_PORT...)."""
    script = kafka_script()
    if script is None:
        typer.echo(
            "rollout-gate: scripts/kafka-local is not here: this installation has no source checkout. "
            "The local broker is a development tool; run it from a clone of the rollout-gate repository.",
            err=True,
        )
        raise typer.Exit(2)
    bash = shutil.which("bash")
    if bash is None:
        typer.echo("rollout-gate: bash is required to run scripts/kafka-local", err=True)
        raise typer.Exit(2)
    os.execv(bash, [bash, str(script), action.value])


def sign_command(settings: Any, cmd: Any) -> Any:
    """``cmd`` signed with the settings' command key and a fresh nonce (gates.commands); unsigned,
    with a warning, when no key is set (the worker then refuses it unless it allows unsigned ones)."""
    import secrets

    from gates.commands import sign

    key = settings.command_key
    if key is None:
        typer.echo("rollout-gate: no ROLLOUT_GATE_COMMAND_HMAC_KEY: the command goes unsigned, and a worker "
                   "with a key (or without ROLLOUT_GATE_COMMANDS_ALLOW_UNSIGNED) refuses it", err=True)
        return cmd
    return sign(cmd, key, secrets.token_hex(16))


def signing_sink(base: Any, key: bytes | None) -> Any:
    """A subclass of the API's command sink (connectors.api.KafkaCommandSink) that signs each command
    before it is published, so the worker accepts what the API sends."""
    import secrets

    from gates.commands import sign

    class SigningCommandSink(base):  # type: ignore[misc, valid-type]
        async def send(self, command: Any) -> None:
            await super().send(command if key is None else sign(command, key, secrets.token_hex(16)))

    return SigningCommandSink


# rollout-gate router | api | fake-upstream live in stream/services.py
