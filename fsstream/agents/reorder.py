"""The reorder agent: raw batches → per-view order → rows and tombstones on the events topic.

Decode, check, hand to the core, publish. A batch of raw records is published and
acknowledged by Kafka before the view states it changed are written, and faust
commits the raw offsets only after that, so after a crash the stored state is never
ahead of the output topic; replaying the raw records after it publishes the same ids
again (idempotent on the compacted topic).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fsstream import codec, metrics
from fsstream.batch_producer import BatchProducer, OutputRecord
from fsstream.content import RawContent, RawRecord
from fsstream.core.partitioning import partition_for
from fsstream.core.raw import InvalidRecord, Limits, OversizedRecord, RawEvent, check_batch, to_row
from fsstream.core.reorder import Arrival, Emission, Reorderer, Row, Tombstone
from fsstream.core.timefmt import format_event_time
from fsstream.settings import Settings
from fsstream.state import PartitionStore, TableViewStore

log = logging.getLogger(__name__)

VIEW_HEADER = "fs-view"
HEARTBEAT_HEADER = "fs-heartbeat"
ROW_INGESTED_HEADER = "fs-ingested"
ROW_EVENT_TIME_HEADER = "fs-event-time"
SUPERSEDED_BY_HEADER = "fs-superseded-at"
ERROR_HEADER = "fs-error"
SOURCE_HEADER = "fs-source"

Enricher = Callable[[RawEvent, int], tuple[dict[str, Any], dict[str, Any]]]
"""(event, raw record timestamp ms) → enriched (event_properties, source_properties)."""


def headers_of(message: Any) -> list[tuple[str, bytes]]:
    headers = message.headers or []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


def raw_limits(settings: Settings) -> Limits:
    return Limits(
        max_age_ms=int(settings.max_event_age_s * 1000),
        max_skew_ms=int(settings.max_clock_skew_s * 1000),
    )


def timestamp_ms(message: Any) -> int:
    """The record's Kafka timestamp in ms (faust gives seconds as a float)."""
    return round(message.timestamp * 1000)


def is_heartbeat(message: Any) -> bool:
    return any(name == HEARTBEAT_HEADER for name, _ in headers_of(message))


@dataclass(slots=True)
class PartitionOrder:
    """The reorderer of one assigned raw partition and when its stream time last moved."""

    reorderer: Reorderer
    store: TableViewStore
    advanced_at: float = field(default_factory=time.monotonic)
    heartbeat_at: float = 0.0


class ReorderAgent:
    """State and logic behind the faust agent on the raw topic."""

    def __init__(
        self,
        settings: Settings,
        producer: Any,
        views: PartitionStore,
        content: RawContent,
        enrich: Enricher,
        output: BatchProducer,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.output = output
        self._partitions: dict[str, int] = {}
        self.views = views
        self.content = content
        self.enrich = enrich
        self.limits = raw_limits(settings)
        self.partitions: dict[int, PartitionOrder] = {}
        self.greeted: set[int] = set()
        self._reported: dict[str, int] = {}

    # -- partitions -----------------------------------------------------------------

    def partition(self, number: int) -> PartitionOrder:
        """The partition's reorderer, rebuilt from its stored state on first use."""
        order = self.partitions.get(number)
        if order is None:
            store = TableViewStore(self.views, number, self.settings.view_cache_size)
            stream_time = store.stream_time()
            reorderer = Reorderer(
                store,
                grace_ms=int(self.settings.reorder_grace_s * 1000),
                ttl_ms=int(self.settings.view_ttl_s * 1000),
                stream_time_ms=stream_time,
            )
            restored = reorderer.restore(store.stored())
            order = self.partitions[number] = PartitionOrder(reorderer, store)
            log.info(
                "raw partition %d: restored %d views, stream time %d",
                number,
                restored,
                stream_time,
            )
        return order

    def revoke(self, numbers: set[int]) -> None:
        for number in numbers:
            self.partitions.pop(number, None)
            self.greeted.discard(number)
            self.content.drop_partition(number)

    # -- processing -----------------------------------------------------------------

    def check(self, message: Any) -> tuple[str, RawRecord]:
        value = message.value
        if value is None:
            raise InvalidRecord("the record has a null value")
        if len(value) > self.settings.max_record_bytes:
            raise OversizedRecord(
                f"{len(value)} bytes, more than the {self.settings.max_record_bytes} allowed"
            )
        batch = codec.decode(value, expected=codec.RAW_EVENT_BATCH)
        key = message.key.decode(errors="replace") if message.key is not None else None
        timestamp = timestamp_ms(message)
        view_key, events = check_batch(batch, key, timestamp, self.limits)
        return view_key, RawRecord(timestamp, batch["ingested_time"], events, len(value))

    async def process(self, events: Sequence[Any]) -> None:
        """Handle one batch of raw records, from decoding to writing state."""
        touched: dict[int, PartitionOrder] = {}
        emissions: list[tuple[int, Emission]] = []
        pending: list[Awaitable[Any]] = []
        raw_records = events_in = 0
        for event in events:
            message = event.message
            number = message.partition
            order = touched[number] = self.partition(number)
            before = order.reorderer.stream_time_ms
            if is_heartbeat(message):
                emitted = order.reorderer.advance(timestamp_ms(message))
            else:
                raw_records += 1
                try:
                    view_key, record = self.check(message)
                except (codec.CodecError, InvalidRecord) as exc:
                    pending.append(await self.to_dlq(message, exc))
                    continue
                events_in += len(record.events)
                self.content.put(number, message.offset, record)
                arrivals = [
                    Arrival(e.time_us, e.fp, i, e.event_type == "identify")
                    for i, e in enumerate(record.events)
                ]
                emitted = order.reorderer.on_record(
                    view_key,
                    arrivals,
                    offset=message.offset,
                    record_ts_ms=record.timestamp_ms,
                    ingested_ms=record.ingested_ms,
                )
            if order.reorderer.stream_time_ms > before:
                order.advanced_at = time.monotonic()
            emissions.extend((number, e) for e in emitted)
        metrics.RAW_RECORDS_IN.inc(raw_records)
        metrics.EVENTS_IN.inc(events_in)
        pending.extend(await self.publish(emissions))
        await asyncio.gather(*pending)
        for order in touched.values():
            order.reorderer.expire()
            order.store.flush(order.reorderer.stream_time_ms)
        self.observe()

    def output_partition(self, view_key: str) -> int:
        partition = self._partitions.get(view_key)
        if partition is None:
            if len(self._partitions) > 100_000:
                self._partitions.clear()
            partition = self._partitions[view_key] = partition_for(
                view_key, self.settings.events_partitions
            )
        return partition

    async def publish(self, emissions: list[tuple[int, Emission]]) -> list[Awaitable[Any]]:
        """Send rows and tombstones; return the delivery futures."""
        wanted: dict[int, set[int]] = {}
        for number, emission in emissions:
            if isinstance(emission, Row):
                wanted.setdefault(number, set()).add(emission.offset)
        records = {
            number: await self.content.get(number, offsets) for number, offsets in wanted.items()
        }
        processed_us = time.time_ns() // 1000
        processed_time = format_event_time(processed_us)
        now_ms = processed_us // 1000
        out: list[OutputRecord] = []
        tombstones = 0
        timed: set[tuple[int, int]] = set()
        for number, emission in emissions:
            view = emission.view_key.encode()
            if isinstance(emission, Tombstone):
                value = None
                headers = [
                    (VIEW_HEADER, view),
                    (ROW_INGESTED_HEADER, str(emission.ingested_ms).encode()),
                    (ROW_EVENT_TIME_HEADER, format_event_time(emission.time_us).encode()),
                    (SUPERSEDED_BY_HEADER, str(emission.superseded_at_ms).encode()),
                ]
                tombstones += 1
            else:
                record = records[number][emission.offset]
                raw = record.events[emission.index]
                event_properties, source_properties = self.enrich(raw, record.timestamp_ms)
                value = codec.encode(
                    codec.EVENT,
                    to_row(
                        raw,
                        emission.event_id,
                        processed_time=processed_time,
                        ingested_ms=emission.ingested_ms,
                        event_properties=event_properties,
                        source_properties=source_properties,
                    ),
                )
                headers = [(VIEW_HEADER, view)]
                if not emission.superseding and (number, emission.offset) not in timed:
                    timed.add((number, emission.offset))
                    metrics.RAW_TO_OUT_LATENCY.observe(max(0, now_ms - record.timestamp_ms) / 1000)
            out.append(
                (
                    self.output_partition(emission.view_key),
                    emission.event_id.encode(),
                    value,
                    headers,
                )
            )
        metrics.EVENTS_OUT.inc(len(out) - tombstones)
        metrics.TOMBSTONES.inc(tombstones)
        futures: list[Awaitable[Any]] = list(
            await self.output.send(self.settings.topic_events, out)
        )
        return futures

    async def to_dlq(self, message: Any, error: Exception) -> Awaitable[Any]:
        """Send the record, bytes unchanged, to the DLQ with the reason and its source."""
        reason = type(error).__name__
        metrics.DLQ_RECORDS.labels(reason).inc()
        log.warning(
            "DLQ %s/%d/%d: %s: %s", message.topic, message.partition, message.offset, reason, error
        )
        headers = [
            *headers_of(message),
            (ERROR_HEADER, f"{reason}: {error}".encode()),
            (SOURCE_HEADER, f"{message.topic}/{message.partition}/{message.offset}".encode()),
        ]
        future: Awaitable[Any] = await self.producer.send(
            self.settings.topic_dlq, message.key, message.value, None, None, headers
        )
        return future

    def observe(self) -> None:
        counters = [order.reorderer.counters for order in self.partitions.values()]
        metrics.OPEN_VIEWS.set(sum(o.reorderer.open_views for o in self.partitions.values()))
        for counter, metric in (
            ("late", metrics.LATE_EVENTS),
            ("duplicates", metrics.DUPLICATE_EVENTS),
            ("detached", metrics.EXPIRED_VIEW_EVENTS),
            ("expired_views", metrics.EXPIRED_VIEWS),
        ):
            total = sum(getattr(c, counter) for c in counters)
            seen = self._reported.get(counter, 0)
            if total > seen:
                metric.inc(total - seen)
            self._reported[counter] = total

    # -- idle partitions ------------------------------------------------------------

    async def heartbeat(self, assigned: set[int]) -> None:
        """Append a heartbeat to quiet partitions whose held events are due.

        The heartbeat goes through the raw topic like any record, so its stream time is
        part of the log and a replay releases exactly as the live run did. Its stream
        time is the partition's, advanced by the wall-clock time it has been quiet. A
        newly assigned partition gets one heartbeat that moves no time forward: taking
        it restores the partition's views, so held events are released on time even if
        no new record arrives.
        """
        now = time.monotonic()
        interval = max(self.settings.reorder_grace_s / 2, 0.2)
        for number in assigned:
            order = self.partitions.get(number)
            if order is None:
                if number in self.greeted:
                    continue
                self.greeted.add(number)
                timestamp_ms = 1
            else:
                deadline = order.reorderer.next_deadline_ms
                if deadline is None or now - order.heartbeat_at < interval:
                    continue
                timestamp_ms = order.reorderer.stream_time_ms + int(
                    (now - order.advanced_at) * 1000
                )
                if timestamp_ms < deadline + 100:
                    continue
                order.heartbeat_at = now
            await self.producer.send(
                self.settings.topic_raw,
                None,
                b"",
                number,
                timestamp_ms / 1000,
                [(HEARTBEAT_HEADER, b"1")],
            )
