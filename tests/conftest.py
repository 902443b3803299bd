"""Shared fixtures. Integration tests talk to the broker at ROLLOUT_GATE_KAFKA_BOOTSTRAP
(default 127.0.0.1:19092, started by ``scripts/kafka-local start`` or ``bash scripts/test``)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator

import pytest

from connectors.testing import bootstrap as broker_bootstrap


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker's bootstrap address; the test fails (not skips) when nothing listens there."""
    bootstrap = broker_bootstrap()
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"no Kafka broker at {bootstrap} ({exc}); start one with `scripts/kafka-local start`")
    return bootstrap


# the unique ids of the tests that passed: their topics are deleted when the session ends
_PASSED_IDS: list[str] = []


@pytest.fixture
def unique_id(request: pytest.FixtureRequest) -> Iterator[str]:
    """A short name unique to this test run, safe for topic names and consumer groups. Every topic
    named from it is deleted at the end of the session if the test passed (a failed test's topics
    stay for a look), so that a long-lived broker does not pile up thousands of topics."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    uid = f"t-{base}-{uuid.uuid4().hex[:8]}"
    yield uid
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        _PASSED_IDS.append(uid)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + rep.when, rep)


_CLEANUP: list[str] = []  # what the session's topic cleanup did, for the terminal summary


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _PASSED_IDS:
        return
    from tests.integration.kafka_io import delete_topics_with_prefixes

    bootstrap = broker_bootstrap()
    try:
        n = asyncio.run(asyncio.wait_for(delete_topics_with_prefixes(bootstrap, _PASSED_IDS), 120))
        _CLEANUP.append(f"deleted the {n} topics of {len(_PASSED_IDS)} passed broker tests from {bootstrap}")
    except Exception as exc:  # cleanup only: the tests' results stand
        _CLEANUP.append(f"WARNING: could not delete the passed broker tests' topics from {bootstrap}: {exc!r}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _CLEANUP:
        terminalreporter.write_line(line)
