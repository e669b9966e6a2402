"""The content of raw events, by (partition, offset): the raw topic is its log.

View state keeps only where each event came from. A row is built from the decoded
record, kept in a bounded cache while it is recent; a row that has to be published
again later (a superseded row, or a held event after a restart) is read back from
the raw topic itself, so state writes never copy event content.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from fsstream.contract import codec
from fsstream.core.raw import Limits, RawEvent, check_batch
from fsstream.infra import kafka_clients
from fsstream.settings import Settings


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A checked raw record: its Kafka timestamp, batch ingested time, events, encoded size."""

    timestamp_ms: int
    ingested_ms: int
    events: list[RawEvent]
    size: int


DECODED_OVERHEAD = 5
"""A decoded raw record takes about five times its encoded size in memory (measured on
generated traffic: parsed property dicts and per-event objects)."""


class LoggedRecord(NamedTuple):
    """A raw record as read back from the raw topic."""

    timestamp_ms: int
    """The record's Kafka timestamp."""
    value: bytes
    """The encoded raw event batch."""
    key: bytes | None
    """The record key: the view key."""


class RawLog(Protocol):
    """Random access to raw records by partition and offset."""

    async def read(self, partition: int, offsets: list[int]) -> dict[int, LoggedRecord]:
        """The record at each offset that still exists."""
        ...


class KafkaRawLog:
    """Reads raw records back from the raw topic with a group-less consumer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic_raw
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._assigned: set[TopicPartition] = set()

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            self._consumer = await kafka_clients.start(
                kafka_clients.consumer(
                    self.settings,
                    client_id=f"{self.settings.app_id}-raw-reader",
                )
            )
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def read(self, partition: int, offsets: list[int]) -> dict[int, LoggedRecord]:
        tp = TopicPartition(self.topic, partition)
        found: dict[int, LoggedRecord] = {}
        async with self._lock:
            consumer = await self._started()
            if tp not in self._assigned:
                self._assigned.add(tp)
                consumer.assign(sorted(self._assigned))
            wanted = sorted(set(offsets))
            for offset in wanted:
                if offset in found:
                    continue
                consumer.seek(tp, offset)
                for _ in range(50):
                    batch = await consumer.getmany(tp, timeout_ms=2_000, max_records=500)
                    records = batch.get(tp, [])
                    for record in records:
                        if record.offset in wanted and record.value is not None:
                            found[record.offset] = LoggedRecord(
                                record.timestamp, record.value, record.key
                            )
                    if offset in found or (records and records[-1].offset >= offset):
                        break
        return found


class RawContent:
    """Recent raw records in memory, older ones re-read from the raw log."""

    def __init__(self, log: RawLog, limits: Limits, max_bytes: int) -> None:
        self.log = log
        self.limits = limits
        self.max_bytes = max_bytes
        self._bytes = 0
        self._cache: OrderedDict[tuple[int, int], RawRecord] = OrderedDict()
        self.misses = 0

    def put(self, partition: int, offset: int, record: RawRecord) -> None:
        key = (partition, offset)
        if key in self._cache:
            return
        self._cache[key] = record
        self._bytes += record.size * DECODED_OVERHEAD
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._bytes -= evicted.size * DECODED_OVERHEAD

    def drop_partition(self, partition: int) -> None:
        for key in [k for k in self._cache if k[0] == partition]:
            self._bytes -= self._cache.pop(key).size * DECODED_OVERHEAD

    async def get(
        self, partition: int, offsets: Iterable[int]
    ) -> tuple[dict[int, RawRecord], dict[int, str]]:
        """The records at ``offsets``, and why each one that could not be had is missing."""
        out: dict[int, RawRecord] = {}
        missing: list[int] = []
        for offset in offsets:
            record = self._cache.get((partition, offset))
            if record is None:
                missing.append(offset)
            else:
                out[offset] = record
        problems: dict[int, str] = {}
        if missing:
            self.misses += len(missing)
            fetched = await self.log.read(partition, missing)
            for offset in missing:
                if offset not in fetched:
                    problems[offset] = f"raw record {partition}/{offset} is gone from the raw topic"
                    continue
                timestamp, value, key = fetched[offset]
                try:
                    batch = codec.decode(value, expected=codec.RAW_EVENT_BATCH)
                    record_key = key.decode() if key else None
                    _, events = check_batch(batch, record_key, timestamp, self.limits)
                except Exception as exc:
                    problems[offset] = f"raw record {partition}/{offset} read back: {exc}"
                    continue
                record = RawRecord(timestamp, batch["ingested_time"], events, len(value))
                self.put(partition, offset, record)
                out[offset] = record
        return out, problems
