"""The broker helpers the tests and benchmarks share, on the real broker."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.kafka_io import delete_topics_with_prefixes

pytestmark = pytest.mark.integration


async def _names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _create(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names])
    finally:
        await admin.close()


def test_delete_topics_with_prefixes_deletes_only_the_prefixed_topics(kafka_bootstrap: str, unique_id: str) -> None:
    mine = [f"{unique_id}.events", f"{unique_id}-app-state-changelog"]
    other = f"keep-{unique_id}.events"  # holds the id, but does not start with it
    asyncio.run(_create(kafka_bootstrap, [*mine, other]))
    assert {*mine, other} <= asyncio.run(_names(kafka_bootstrap))

    assert asyncio.run(delete_topics_with_prefixes(kafka_bootstrap, [unique_id])) == 2

    deadline = time.monotonic() + 10  # the broker removes deleted topics from its metadata shortly after
    left = asyncio.run(_names(kafka_bootstrap))
    while set(mine) & left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = asyncio.run(_names(kafka_bootstrap))
    assert not set(mine) & left
    assert other in left
    # gone already, or never there: not an error, nothing counted
    assert asyncio.run(delete_topics_with_prefixes(kafka_bootstrap, [unique_id, "no-such-prefix-"])) == 0
    assert asyncio.run(delete_topics_with_prefixes(kafka_bootstrap, [])) == 0
    asyncio.run(delete_topics_with_prefixes(kafka_bootstrap, [other]))
