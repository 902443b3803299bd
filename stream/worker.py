"""Run the Faust worker programmatically with the settings (``rollout-gate worker``)."""

from __future__ import annotations

import asyncio
import logging
import sys

from .settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)

EXIT_CONFIG = 2


def run_worker(settings: Settings, log_level: str = "info") -> int:
    """Check topics, bind the metrics port, then run until SIGTERM/SIGINT. Returns an exit code."""
    import faust

    from .app import bootstrap
    from .metrics import MetricsServer
    from .topics import TopicError, ensure_topics

    try:
        wiring = bootstrap(settings)
    except SettingsError as exc:
        return _fail(str(exc))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        created = loop.run_until_complete(ensure_topics(settings))
    except TopicError as exc:
        return _fail(str(exc))
    if created:
        print(f"rollout-gate: created topics {', '.join(created)}", file=sys.stderr)
    try:
        server = MetricsServer(wiring.metrics, settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        return _fail(f"ROLLOUT_GATE_METRICS_PORT: cannot listen on {settings.metrics_host}:"
                     f"{settings.metrics_port}: {exc.strerror}")
    assert wiring.runtime is not None
    wiring.runtime.server = server
    worker = faust.Worker(wiring.app, wiring.runtime, loop=loop, loglevel=log_level.upper(),
                          redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def _fail(message: str) -> int:
    print(f"rollout-gate: {message}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    """``python -m stream.worker_main [--log-level LEVEL]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stream.worker_main")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        return _fail(str(exc))
    return run_worker(settings, args.log_level)
