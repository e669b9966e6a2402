"""aiokafka clients configured from settings (brokers, SASL/TLS), for the CLI commands."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from fsstream.settings import Settings


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent-acks producer with zstd compression."""
    options: dict[str, Any] = {
        "acks": "all",
        "compression_type": "zstd",
        "linger_ms": 5,
        "max_request_size": max(settings.max_record_bytes * 2, 1_048_576),
        "client_id": f"{settings.app_id}-cli",
    }
    options.update(overrides)
    return AIOKafkaProducer(**settings.kafka_client_options(), **options)


def consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer with no group unless one is given, reading from the earliest offset.

    It reads committed records only: the reorder worker writes in transactions, and a
    row of an aborted or still open one is not part of the events topic.
    """
    options: dict[str, Any] = {
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "client_id": f"{settings.app_id}-cli",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **settings.kafka_client_options(), **options)


async def start(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    """Start a consumer so that stopping it right away is safe.

    aiokafka's group-less coordinator starts a task that, cancelled before its first
    step, makes ``stop()`` raise CancelledError; one loop iteration lets it begin.
    """
    await consumer.start()
    await asyncio.sleep(0)
    return consumer


async def assign_from_beginning(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a group-less consumer, from the beginning."""
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer._client.force_metadata_update()  # topic may be new to this client
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise LookupError(f"topic {topic} does not exist")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


def admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        **settings.kafka_client_options(), client_id=f"{settings.app_id}-admin"
    )
