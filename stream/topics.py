"""Topic declarations and their creation with aiokafka's admin client, before the Faust app starts.

Faust only declares its internal topics (the state changelog); the broker would auto-create the
others with its defaults on first use, so a compacted decisions topic has to exist before that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from .settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)


class TopicError(RuntimeError):
    """A topic exists but cannot be used as it is (wrong cleanup policy or partition count)."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: Mapping[str, str] = field(default_factory=dict)
    # Topics whose partitions must line up with the state changelog (keyed by rollout_id).
    copartitioned: bool = False


def topic_specs(settings: Settings) -> list[TopicSpec]:
    rf = settings.kafka_replication_factor
    n = settings.topic_partitions
    return [
        TopicSpec(settings.events_topic, n, rf, {
            "cleanup.policy": "delete", "retention.ms": str(settings.events_retention_seconds * 1000)},
            copartitioned=True),
        TopicSpec(settings.commands_topic, n, rf, {
            "cleanup.policy": "delete", "retention.ms": str(settings.events_retention_seconds * 1000)},
            copartitioned=True),
        TopicSpec(settings.dlq_topic, n, rf, {
            "cleanup.policy": "delete", "retention.ms": str(settings.dlq_retention_seconds * 1000)}),
        # Compacted: a router that starts reads the latest decision of every rollout.
        TopicSpec(settings.decisions_topic, n, rf, {
            "cleanup.policy": "compact", "min.compaction.lag.ms": "0"}),
    ]


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                               client_id=f"{settings.app_id}-admin", **settings.aiokafka_auth())


async def _start_admin(settings: Settings, timeout: float) -> AIOKafkaAdminClient:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = admin_client(settings)
        try:
            await admin.start()
            return admin
        except KafkaConnectionError as exc:
            await admin.close()
            if asyncio.get_running_loop().time() > deadline:
                raise TopicError(f"cannot reach Kafka at {settings.kafka_bootstrap} "
                                 f"({ENV_PREFIX}KAFKA_BOOTSTRAP): {exc}") from None
            log.warning("Kafka at %s not reachable yet, retrying", settings.kafka_bootstrap)
            await asyncio.sleep(1.0)


async def describe_topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            error, name, entries = resource[0], resource[3], resource[4]
            if error == 0 and entries:  # a topic created a moment ago may not be described yet
                out[name] = {e[0]: e[1] for e in entries}
    return out


async def topic_partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in await admin.describe_topics(names):
        if t.get("error_code", 0) == 0:
            out[t["topic"]] = len(t["partitions"])
    return out


async def ensure_topics(settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Create the missing topics and check the existing ones; returns the names created."""
    specs = topic_specs(settings)
    admin = await _start_admin(settings, timeout)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.config))
                     for s in missing],
                    timeout_ms=int(timeout * 1000),
                )
            except TopicAlreadyExistsError:  # another worker of the group was faster
                pass
            created = [s.name for s in missing]
            log.info("created topics: %s", ", ".join(created))
        await _check(admin, settings, specs, timeout=timeout)
        return created
    finally:
        await admin.close()


async def _check(admin: AIOKafkaAdminClient, settings: Settings, specs: list[TopicSpec],
                 timeout: float = 15.0) -> None:
    names = [s.name for s in specs]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:  # metadata of topics created just now reaches the admin client a little later
        counts = await topic_partition_counts(admin, names)
        configs = await describe_topic_configs(admin, [settings.decisions_topic])
        if (len(counts) == len(names) and settings.decisions_topic in configs) or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    if settings.decisions_topic not in configs:
        raise TopicError(f"cannot read the configuration of topic {settings.decisions_topic} "
                         f"within {timeout:g} s")
    policy = configs[settings.decisions_topic].get("cleanup.policy", "")
    if "compact" not in policy.split(","):
        raise TopicError(
            f"topic {settings.decisions_topic} has cleanup.policy={policy or '?'}; decisions need "
            f"'compact' (routers read the latest decision per rollout). Fix the topic or choose another "
            f"name with {ENV_PREFIX}DECISIONS_TOPIC."
        )
    for s in specs:
        n = counts.get(s.name)
        if s.copartitioned and n is not None and n != settings.topic_partitions:
            raise TopicError(
                f"topic {s.name} has {n} partitions but "
                f"{ENV_PREFIX}TOPIC_PARTITIONS={settings.topic_partitions}; "
                "they must match so that a rollout's events and its state live in the same partition"
            )
