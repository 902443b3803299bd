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


def main() -> None:
    from stream import commands, offline, operator, services  # noqa: F401  (registers the commands on `app`)

    app()


if __name__ == "__main__":
    main()
