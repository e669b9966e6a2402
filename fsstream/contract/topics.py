"""The topics of the product contract and their idempotent creation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from fsstream.infra import kafka_clients
from fsstream.settings import Settings

STATE_RECORD_MAX_BYTES = 16 * 1024 * 1024
"""The largest view-state record the changelog takes."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic's name, partition count and topic-level configs."""

    name: str
    partitions: int
    configs: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The spec's topics: raw in, definitions in, ordered events out, dead letters out."""
    retention_ms = str(int(settings.raw_retention_s * 1000))
    return [
        TopicSpec(
            settings.topic_raw,
            settings.raw_partitions,
            {"cleanup.policy": "delete", "retention.ms": retention_ms},
        ),
        # Old definition versions stay as long as raw records that could be replayed.
        TopicSpec(
            settings.topic_definitions,
            settings.definitions_partitions,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": retention_ms},
        ),
        TopicSpec(
            settings.topic_events,
            settings.events_partitions,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "3600000"},
        ),
        TopicSpec(settings.topic_dlq, settings.dlq_partitions, {"cleanup.policy": "delete"}),
        # The reorder worker's view state, one partition per raw partition, written in the
        # same transactions as its output.
        TopicSpec(
            settings.topic_views_changelog,
            settings.raw_partitions,
            {"cleanup.policy": "compact", "max.message.bytes": str(STATE_RECORD_MAX_BYTES)},
        ),
    ]


async def create_topics(settings: Settings) -> list[tuple[TopicSpec, str]]:
    """Create the missing topics; return each with ``created`` or ``exists``."""
    specs = topic_specs(settings)
    client = kafka_clients.admin(settings)
    await client.start()
    try:
        existing = set(await client.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        created: set[str] = set()
        if missing:
            response = await client.create_topics(
                [
                    NewTopic(
                        spec.name,
                        num_partitions=spec.partitions,
                        replication_factor=settings.replication_factor,
                        topic_configs=spec.configs,
                    )
                    for spec in missing
                ],
                timeout_ms=30_000,
            )
            for name, code, *rest in response.topic_errors:
                error = for_code(code)
                if code and error is not TopicAlreadyExistsError:
                    message = rest[0] if rest else ""
                    raise RuntimeError(f"creating topic {name} failed: {error.__name__} {message}")
                if not code:
                    created.add(name)
        await _wait_for_leaders(client, [spec.name for spec in specs])
    finally:
        await client.close()
    return [(spec, "created" if spec.name in created else "exists") for spec in specs]


async def _wait_for_leaders(
    client: AIOKafkaAdminClient, names: list[str], timeout: float = 30.0
) -> None:
    """Return once every partition of ``names`` has a leader, so producers need no retries."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        described = await client.describe_topics(names)
        ready = all(
            topic["error_code"] == 0
            and topic["partitions"]
            and all(p["leader"] >= 0 for p in topic["partitions"])
            for topic in described
        )
        if ready or asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.1)


async def describe_topic_configs(settings: Settings, names: list[str]) -> dict[str, dict[str, str]]:
    """Topic-level configs as the broker reports them."""
    client = kafka_clients.admin(settings)
    await client.start()
    try:
        responses = await client.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await client.close()
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            _code, _message, _type, name, entries = resource[:5]
            configs[name] = {entry[0]: entry[1] for entry in entries}
    return configs
