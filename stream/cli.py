"""The ``rollout-gate`` command line. Each command lives in its own module; this file only wires."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="rollout-gate",
    help="Statistically sound canary gates for LLM rollouts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("otel-bridge", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                              "help_option_names": []}, add_help_option=False)
def otel_bridge(ctx: typer.Context) -> None:
    """GenAI spans and log events from the OpenTelemetry Collector's Kafka exporter, as inference events."""
    from connectors.otel import main as otel_main

    otel_main(list(ctx.args))


def main() -> None:
    from stream import commands, offline, operator, services  # noqa: F401  (registers the commands on `app`)

    app()


if __name__ == "__main__":
    main()
