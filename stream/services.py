"""``rollout-gate router | api | fake-upstream``: the connectors' services under the one CLI.

Each forwards its arguments to the connector's own parser, so ``--help`` is the connector's.
"""

from __future__ import annotations

import typer

from stream.cli import app

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def router(ctx: typer.Context) -> None:
    """The reference router: splits traffic by the latest decision, publishes one event per request."""
    from connectors.router import main as router_main

    router_main(list(ctx.args))


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def api(ctx: typer.Context) -> None:
    """The verdict API: GET /rollouts/{id}, Argo web metric, Flagger webhooks, operator commands."""
    import os

    from connectors import api as api_module
    from stream.commands import signing_sink

    # commands it publishes are signed with the worker's key (ROLLOUT_GATE_COMMAND_HMAC_KEY); its
    # token (ROLLOUT_GATE_API_TOKEN) is read by connectors.api, which refuses commands without one
    key = os.environ.get("ROLLOUT_GATE_COMMAND_HMAC_KEY") or None
    api_module.KafkaCommandSink = signing_sink(api_module.KafkaCommandSink, key.encode() if key else None)
    api_module.main(list(ctx.args))


@app.command("fake-upstream", context_settings=_PASS_THROUGH, add_help_option=False)
def fake_upstream(ctx: typer.Context) -> None:
    """A fake OpenAI-compatible model server with settable latency, length, refusals and errors."""
    from connectors.fake_upstream import main as upstream_main

    upstream_main(list(ctx.args))
