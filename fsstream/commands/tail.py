"""Read a topic from the beginning and turn each record into a JSON-ready dict."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import ConsumerRecord

from fsstream.contract import codec
from fsstream.infra import kafka_clients
from fsstream.settings import Settings


def describe_record(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """A record with its value decoded; a null value stays null (a tombstone)."""
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": record.key.decode(errors="replace") if record.key is not None else None,
        "headers": {name: value.decode(errors="replace") for name, value in record.headers},
        "value": None,
    }
    if record.value is not None:
        try:
            out["schema"] = codec.schema_of(record.value).name
            out["value"] = codec.decode(record.value)
        except codec.CodecError as exc:
            out["error"] = str(exc)
            out["raw"] = base64.b64encode(record.value).decode()
    return out


async def read_topic(
    settings: Settings, topic: str, *, follow: bool = False, limit: int | None = None
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic``; without ``follow``, stop at the end offsets seen at start."""
    consumer = await kafka_clients.start(kafka_clients.consumer(settings))
    try:
        reading = await kafka_clients.read_from_beginning(consumer, topic)
        seen = 0
        async for records in reading.batches(follow=follow):
            for record in records:
                yield record
                seen += 1
                if limit is not None and seen >= limit:
                    return
    finally:
        await consumer.stop()
