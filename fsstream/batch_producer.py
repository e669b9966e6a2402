"""Publishing many records at once with aiokafka's batch API.

One record per event is published, so the per-record cost of ``producer.send`` (a
future, a partitioner call and a lock per record) matters; appending to a batch per
partition and sending the batch costs one future per partition instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from fsstream import kafka_clients
from fsstream.settings import Settings

OutputRecord = tuple[int, bytes, bytes | None, list[tuple[str, bytes]]]
"""(partition, key, value or None for a tombstone, headers)."""


class BatchProducer:
    """An idempotent-acks zstd producer that sends a list of records per partition batch."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = kafka_clients.producer(
                self.settings,
                client_id=self.client_id,
                max_batch_size=1_048_576,
                linger_ms=0,
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def send(self, topic: str, records: Iterable[OutputRecord]) -> list[asyncio.Future[Any]]:
        """Queue ``records`` (in order within each partition); return the delivery futures."""
        producer = await self._started()
        by_partition: dict[int, list[OutputRecord]] = {}
        for record in records:
            by_partition.setdefault(record[0], []).append(record)
        futures: list[asyncio.Future[Any]] = []
        for partition, batch_records in by_partition.items():
            batch = producer.create_batch()
            for _, key, value, headers in batch_records:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
