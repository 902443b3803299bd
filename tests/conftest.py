"""Shared fixtures. Integration tests talk to the broker at ROLLOUT_GATE_KAFKA_BOOTSTRAP
(default 127.0.0.1:19092, started by ``scripts/kafka-local start`` or ``bash scripts/test``)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker's bootstrap address; the test fails (not skips) when nothing listens there."""
    bootstrap = os.environ.get("ROLLOUT_GATE_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"no Kafka broker at {bootstrap} ({exc}); start one with `scripts/kafka-local start`")
    return bootstrap


@pytest.fixture
def unique_id(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test run, safe for topic names and consumer groups."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return f"t-{base}-{uuid.uuid4().hex[:8]}"
