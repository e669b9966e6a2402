"""The reorder worker's logic for one batch of one raw partition: decode, order, build records.

Nothing here talks to Kafka except through ``RawContent`` (re-reading old raw records):
the worker hands a partition's records in, gets the output records, DLQ records and
state changes back, and commits them all in one transaction. Any exception raised by
one record sends that record to the DLQ; nothing a record holds stops the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fsstream import metrics
from fsstream.contract import codec
from fsstream.contract.dead_letters import DeadLetter, dead_letter, dead_letter_of
from fsstream.contract.partitioning import partition_for
from fsstream.contract.wire import (
    HEARTBEAT_HEADER,
    ROW_EVENT_TIME_HEADER,
    ROW_INGESTED_HEADER,
    SUPERSEDED_BY_HEADER,
    VIEW_HEADER,
    Headers,
    Record,
    headers_of,
)
from fsstream.core.raw import InvalidRecord, Limits, OversizedRecord, RawEvent, check_batch, to_row
from fsstream.core.reorder import Arrival, Emission, Reorderer, Row, Tombstone
from fsstream.core.timefmt import format_event_time
from fsstream.reorder.content import RawContent, RawRecord
from fsstream.reorder.state import PartitionState
from fsstream.settings import Settings

log = logging.getLogger(__name__)

Enricher = Callable[[RawEvent, int], tuple[dict[str, Any], dict[str, Any]]]
"""(event, raw record timestamp ms) → enriched (event_properties, source_properties)."""


class OutputRecord(NamedTuple):
    """A record to publish, with the partition it goes to."""

    partition: int
    """The partition of the topic it goes to."""
    key: bytes | None
    """The record key."""
    value: bytes | None
    """The record value; None for a tombstone."""
    headers: Headers
    """The record headers."""


ROW_VALUE_LIMIT = 1_000_000
"""The largest row value published: the broker's default record limit is 1 MiB, and a row
past it would fail its whole transaction again and again."""
HEARTBEAT_VALUE = b""
HEARTBEAT_MARK = b"1"


def raw_limits(settings: Settings) -> Limits:
    return Limits(
        max_age_ms=int(settings.max_event_age_s * 1000),
        max_skew_ms=int(settings.max_clock_skew_s * 1000),
    )


def is_heartbeat(record: Record) -> bool:
    """Exactly what the worker writes: no key, an empty value, the one heartbeat header."""
    return (
        record.key is None
        and record.value == HEARTBEAT_VALUE
        and headers_of(record) == [(HEARTBEAT_HEADER, HEARTBEAT_MARK)]
    )


def heartbeat_headers() -> Headers:
    return [(HEARTBEAT_HEADER, HEARTBEAT_MARK)]


@dataclass(slots=True)
class PartitionOrder:
    """One assigned raw partition: its reorderer, its state and when stream time last moved."""

    number: int
    reorderer: Reorderer
    state: PartitionState
    advanced_at: float = field(default_factory=time.monotonic)
    heartbeat_at: float = 0.0


@dataclass(slots=True)
class BatchOutput:
    """What one partition's batch produces, to be committed in one transaction."""

    events: list[OutputRecord] = field(default_factory=list)
    dlq: list[DeadLetter] = field(default_factory=list)
    raw_records: int = 0
    events_in: int = 0
    rows: int = 0
    tombstones: int = 0


class ReorderAgent:
    """Decode → core → output records, for the raw partitions one worker owns."""

    def __init__(
        self,
        settings: Settings,
        content: RawContent,
        enrich: Enricher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.content = content
        self.enrich = enrich
        self.clock = clock
        self.limits = raw_limits(settings)
        self.max_lead_ms = int(settings.max_stream_lead_s * 1000)
        self._partitions: dict[str, int] = {}

    def new_order(self, number: int, state: PartitionState) -> PartitionOrder:
        """The partition's reorderer, its indexes rebuilt from the (caught up) state."""
        reorderer = Reorderer(
            state,
            grace_ms=int(self.settings.reorder_grace_s * 1000),
            ttl_ms=int(self.settings.view_ttl_s * 1000),
            horizon_ms=self.settings.dedup_horizon_ms,
            stream_time_ms=state.stream_time(),
            max_view_events=self.settings.max_view_events,
        )
        restored = reorderer.restore(state.stored())
        log.info(
            "raw partition %d: %d open views, stream time %d",
            number,
            restored,
            reorderer.stream_time_ms,
        )
        return PartitionOrder(number, reorderer, state)

    # -- one batch ------------------------------------------------------------------

    def check(self, record: Record) -> tuple[str, RawRecord]:
        value = record.value
        if value is None:
            raise InvalidRecord("the record has a null value")
        if len(value) > self.settings.max_record_bytes:
            raise OversizedRecord(
                f"{len(value)} bytes, more than the {self.settings.max_record_bytes} allowed"
            )
        batch = codec.decode(value, expected=codec.RAW_EVENT_BATCH)
        key = record.key.decode(errors="replace") if record.key is not None else None
        view_key, events = check_batch(batch, key, record.timestamp, self.limits)
        return view_key, RawRecord(record.timestamp, batch["ingested_time"], events, len(value))

    async def process(self, order: PartitionOrder, records: list[Record]) -> BatchOutput:
        """Order one partition's records (in offset order); build what to publish."""
        out = BatchOutput()
        emissions: list[Emission] = []
        reorderer = order.reorderer
        before = reorderer.stream_time_ms
        ceiling_ms = int(self.clock() * 1000) + self.max_lead_ms
        for record in records:
            timestamp_ms = record.timestamp
            if timestamp_ms > ceiling_ms:
                metrics.FUTURE_RECORDS.inc()
                timestamp_ms = ceiling_ms
            if is_heartbeat(record):
                emissions.extend(reorderer.advance(timestamp_ms))
                continue
            out.raw_records += 1
            try:
                view_key, raw = self.check(record)
                arrivals = [
                    Arrival(e.time_us, e.fp, i, e.event_type == "identify")
                    for i, e in enumerate(raw.events)
                ]
                emissions.extend(
                    reorderer.on_record(
                        view_key,
                        arrivals,
                        offset=record.offset,
                        record_ts_ms=timestamp_ms,
                        ingested_ms=raw.ingested_ms,
                    )
                )
            except Exception as exc:  # any failure of one record is that record's
                out.dlq.append(dead_letter_of(record, exc))
                continue
            out.events_in += len(raw.events)
            self.content.put(order.number, record.offset, raw)
        if reorderer.stream_time_ms > before:
            order.advanced_at = time.monotonic()
        reorderer.expire()
        order.state.sweep(reorderer.stream_time_ms)
        await self.build(order.number, emissions, out)
        return out

    def output_partition(self, view_key: str) -> int:
        partition = self._partitions.get(view_key)
        if partition is None:
            if len(self._partitions) > 100_000:
                self._partitions.clear()
            partition = self._partitions[view_key] = partition_for(
                view_key, self.settings.events_partitions
            )
        return partition

    async def build(self, number: int, emissions: list[Emission], out: BatchOutput) -> None:
        """The events-topic records of ``emissions``; a row that cannot be built is DLQ'd."""
        offsets = {e.offset for e in emissions if isinstance(e, Row)}
        records, missing = await self.content.get(number, offsets)
        processed_us = time.time_ns() // 1000
        processed_time = format_event_time(processed_us)
        now_ms = processed_us // 1000
        timed: set[int] = set()
        failed: set[int] = set()
        for emission in emissions:
            view = emission.view_key.encode()
            if isinstance(emission, Tombstone):
                value = None
                headers = [
                    (VIEW_HEADER, view),
                    (ROW_INGESTED_HEADER, str(emission.ingested_ms).encode()),
                    (ROW_EVENT_TIME_HEADER, format_event_time(emission.time_us).encode()),
                    (SUPERSEDED_BY_HEADER, str(emission.superseded_at_ms).encode()),
                ]
                out.tombstones += 1
            else:
                record = records.get(emission.offset)
                if record is None:
                    if emission.offset not in failed:
                        failed.add(emission.offset)
                        out.dlq.append(self._gone(number, emission.offset, missing))
                    continue
                try:
                    value = self._row_value(record, emission, processed_time)
                except Exception as exc:  # one event's failure is its record's
                    if emission.offset not in failed:
                        failed.add(emission.offset)
                        out.dlq.append(self._unbuildable(number, emission, exc))
                    continue
                headers = [(VIEW_HEADER, view)]
                out.rows += 1
                if not emission.superseding and emission.offset not in timed:
                    timed.add(emission.offset)
                    metrics.RAW_TO_OUT_LATENCY.observe(max(0, now_ms - record.timestamp_ms) / 1000)
            out.events.append(
                OutputRecord(
                    self.output_partition(emission.view_key),
                    emission.event_id.encode(),
                    value,
                    headers,
                )
            )

    def _row_value(self, record: RawRecord, row: Row, processed_time: str) -> bytes:
        raw = record.events[row.index]
        event_properties, source_properties = self.enrich(raw, record.timestamp_ms)
        value = codec.encode(
            codec.EVENT,
            to_row(
                raw,
                row.event_id,
                processed_time=processed_time,
                ingested_ms=row.ingested_ms,
                event_properties=event_properties,
                source_properties=source_properties,
            ),
        )
        if len(value) > ROW_VALUE_LIMIT:
            raise RowTooLarge(f"the row takes {len(value)} bytes, more than {ROW_VALUE_LIMIT}")
        return value

    # -- dead letters ---------------------------------------------------------------

    def _source(self, number: int, offset: int) -> str:
        return f"{self.settings.topic_raw}/{number}/{offset}"

    def _gone(self, number: int, offset: int, missing: dict[int, str]) -> DeadLetter:
        message = missing.get(offset, "the raw record could not be read back")
        return dead_letter(
            None,
            None,
            [],
            reason="RawRecordGone",
            message=message,
            source=self._source(number, offset),
        )

    def _unbuildable(self, number: int, row: Row, error: Exception) -> DeadLetter:
        view = row.view_key.encode()
        return dead_letter(
            view,
            None,
            [(VIEW_HEADER, view)],
            reason=type(error).__name__,
            message=f"event {row.index}: {error}",
            source=self._source(number, row.offset),
        )


class RowTooLarge(InvalidRecord):
    """An event's published row would be larger than the events topic takes."""
