"""NDJSON events in the base event model → ``RawEventBatch`` records on the raw topic.

Each event is checked first exactly as the reorder worker checks it (``check_batch`` with
the worker's limits), so events the worker would send to the DLQ are reported, and not
sent unless asked, instead of vanishing behind a successful run.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from fsstream.contract import codec
from fsstream.contract.wire import VIEW_HEADER
from fsstream.core.models import view_key
from fsstream.core.raw import InvalidRecord, Limits, OversizedRecord, check_batch
from fsstream.core.timefmt import parse_rfc3339_us
from fsstream.infra import kafka_clients
from fsstream.settings import Settings

ParsedEvent = tuple[str, int, dict[str, Any]]
"""(view key, ingested ms, RawEvent record) of one input line."""


class NdjsonError(ValueError):
    """Malformed input lines, each named by its line number."""

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = problems
        more = f"\n... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__("\n".join(problems) + more)


@dataclass(slots=True)
class ViewBatch:
    """Raw events of one view that go into one record."""

    key: str
    ingested_time: int
    events: list[dict[str, Any]] = field(default_factory=list)

    def encode(self) -> bytes:
        return codec.encode(
            codec.RAW_EVENT_BATCH, {"ingested_time": self.ingested_time, "events": self.events}
        )


class EncodedBatch(NamedTuple):
    """A batch with its record value, encoded once."""

    batch: ViewBatch
    """The view's events that go into the record."""
    value: bytes
    """The record value: the batch in Avro single-object encoding."""


def encoded(batches: Iterable[ViewBatch]) -> Iterator[EncodedBatch]:
    """Each batch with its record value."""
    for batch in batches:
        yield EncodedBatch(batch, batch.encode())


def _optional_int(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _properties(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
    return orjson.dumps(value).decode()


def _source_event_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("source_event_id")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a sequence number
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"source_event_id must be a non-empty string or an integer, got {value!r}")


def _ingested_time(obj: dict[str, Any], default: int) -> int:
    value = obj.get("ingested_time")
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_rfc3339_us(value) // 1000
    raise ValueError(f"ingested_time must be ms since the epoch or RFC 3339, got {value!r}")


def raw_event(obj: Any, ingested_default: int) -> ParsedEvent:
    """(view key, ingested ms, RawEvent record) of one parsed line; ``ValueError`` if invalid."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    device_id = _optional_int(obj, "device_id")
    if device_id is None:
        raise ValueError("device_id is missing")
    session_id = _optional_int(obj, "session_id")
    view_id = _optional_int(obj, "view_id")
    event_time = obj.get("event_time")
    if not isinstance(event_time, str):
        raise ValueError(f"event_time must be an RFC 3339 string, got {event_time!r}")
    parse_rfc3339_us(event_time)
    event_type = obj.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise ValueError(f"event_type must be a non-empty string, got {event_type!r}")
    source_type = obj.get("source_type")
    if not isinstance(source_type, str) or not source_type:
        raise ValueError(f"source_type must be a non-empty string, got {source_type!r}")
    record = {
        "device_id": device_id,
        "session_id": session_id,
        "view_id": view_id,
        "event_time": event_time,
        "event_type": event_type,
        "event_properties": _properties(obj, "event_properties"),
        "source_type": source_type,
        "source_properties": _properties(obj, "source_properties"),
        "source_event_id": _source_event_id(obj),
    }
    return view_key(device_id, session_id, view_id), _ingested_time(obj, ingested_default), record


def parse_ndjson(
    lines: Iterable[bytes | str], ingested_time: int, max_problems: int = 20
) -> list[ParsedEvent]:
    """Parse every line; raise ``NdjsonError`` naming each malformed line."""
    parsed: list[ParsedEvent] = []
    problems: list[str] = []
    total = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            total += 1
            if len(problems) < max_problems:
                problems.append(f"line {number}: invalid JSON ({exc})")
            continue
        try:
            parsed.append(raw_event(obj, ingested_time))
        except ValueError as exc:
            total += 1
            if len(problems) < max_problems:
                problems.append(f"line {number}: {exc}")
    if problems:
        raise NdjsonError(problems, total)
    return parsed


class PastRawRetention(InvalidRecord):
    """The record's timestamp (its ingested_time) is older than the raw topic keeps records:
    the broker would delete it, perhaps before any worker reads it."""


HINTS = {
    "AbsurdEventTime": "an event's time is compared with its record's timestamp, which is"
    " the batch's ingested_time (the line's, else --ingested-time, else now): raise"
    " FSSTREAM_MAX_EVENT_AGE_S (now {max_event_age_s:.0f} s) for older events, e.g. to load"
    " history (README: Loading history), or FSSTREAM_MAX_CLOCK_SKEW_S"
    " (now {max_clock_skew_s:.0f} s) for events ahead of it",
    "PastRawRetention": "the broker deletes raw records older than the raw topic's"
    " retention, measured from their timestamp (the batch's ingested_time): raise"
    " FSSTREAM_RAW_RETENTION_S (now {raw_retention_s:.0f} s) past the oldest ingested_time,"
    " and the topic's retention.ms if it exists already (README: Loading history)",
    "OversizedRecord": "one event alone is larger than FSSTREAM_MAX_RECORD_BYTES"
    " (now {max_record_bytes} bytes)",
}
"""What to change for a refusal reason; formatted with the settings."""


@dataclass(slots=True)
class Screened:
    """Input events split into those the reorder worker accepts and those it would refuse."""

    accepted: list[ParsedEvent] = field(default_factory=list)
    refused: list[ParsedEvent] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    """Refused events per reason (the ``InvalidRecord`` class name, as in the DLQ)."""
    examples: list[str] = field(default_factory=list)
    """The first refusals: event number (1-based, in input order), view, reason."""


def screen(
    events: Iterable[ParsedEvent],
    limits: Limits,
    max_record_bytes: int,
    oldest_kept_ms: int | None = None,
    max_examples: int = 5,
) -> Screened:
    """Check each event as the reorder worker checks a record holding it, and (from
    ``oldest_kept_ms`` on) that the raw topic keeps the record."""
    screened = Screened()
    for number, event in enumerate(events, start=1):
        key, ingested, record = event
        batch = ViewBatch(key, ingested, [record])
        try:
            if oldest_kept_ms is not None and ingested < oldest_kept_ms:
                raise PastRawRetention(
                    f"ingested_time {ingested} is {(oldest_kept_ms - ingested) / 1000:.0f}s"
                    " older than the raw topic keeps records"
                )
            check_batch({"ingested_time": ingested, "events": batch.events}, key, ingested, limits)
            size = len(batch.encode())
            if size > max_record_bytes:
                raise OversizedRecord(
                    f"{size} bytes, more than the {max_record_bytes} allowed, for this event alone"
                )
        except InvalidRecord as exc:
            reason = type(exc).__name__
            screened.refused.append(event)
            screened.reasons[reason] += 1
            if len(screened.examples) < max_examples:
                detail = str(exc).removeprefix("event 0: ")
                screened.examples.append(f"event {number} (view {key}): {reason}: {detail}")
            continue
        screened.accepted.append(event)
    return screened


def refusal_report(screened: Screened, settings: Settings, sent_anyway: bool) -> str:
    """The lines that tell an operator what was refused, why, and what to change."""
    count = len(screened.refused)
    by_reason = ", ".join(f"{n} {reason}" for reason, n in screened.reasons.most_common())
    fate = (
        "sent anyway (--send-refused): the reorder worker sends them to"
        f" {settings.topic_dlq}, if the broker keeps them"
        if sent_anyway
        else "not sent (--send-refused sends them, to the DLQ)"
    )
    lines = [f"refused {count} events ({by_reason}); {fate}"]
    lines += [f"  {example}" for example in screened.examples]
    if count > len(screened.examples):
        lines.append(f"  ... and {count - len(screened.examples)} more")
    values = {
        "max_event_age_s": settings.max_event_age_s,
        "max_clock_skew_s": settings.max_clock_skew_s,
        "max_record_bytes": settings.max_record_bytes,
        "raw_retention_s": settings.raw_retention_s,
    }
    lines += [
        f"  {reason}: {HINTS[reason].format(**values)}"
        for reason in screened.reasons
        if reason in HINTS
    ]
    return "\n".join(lines)


def within(batches: Iterable[ViewBatch], max_record_bytes: int) -> Iterator[EncodedBatch]:
    """The batches encoded, each one larger than ``max_record_bytes`` split in halves until
    it fits (a single event too large is left as it is: the worker refuses it)."""
    for batch in batches:
        value = batch.encode()
        if len(batch.events) == 1 or len(value) <= max_record_bytes:
            yield EncodedBatch(batch, value)
            continue
        half = len(batch.events) // 2
        yield from within(
            [
                ViewBatch(batch.key, batch.ingested_time, batch.events[:half]),
                ViewBatch(batch.key, batch.ingested_time, batch.events[half:]),
            ],
            max_record_bytes,
        )


def group_batches(events: Iterable[ParsedEvent], batch_size: int) -> Iterator[ViewBatch]:
    """Consecutive events of a view with one ingested time, ``batch_size`` per record.

    A view's batches come out in input order.
    """
    open_batches: dict[str, ViewBatch] = {}
    for key, ingested, record in events:
        batch = open_batches.get(key)
        if batch is not None and batch.ingested_time != ingested:
            yield open_batches.pop(key)
            batch = None
        if batch is None:
            batch = open_batches[key] = ViewBatch(key, ingested)
        batch.events.append(record)
        if len(batch.events) >= batch_size:
            yield open_batches.pop(key)
    yield from open_batches.values()


async def produce_batches(
    settings: Settings, batches: Iterable[EncodedBatch], **producer_options: Any
) -> tuple[int, int]:
    """Send the encoded batches keyed by view, timestamped with their ingested time.

    Returns (records, events) once every record is acknowledged.
    """
    producer = kafka_clients.producer(settings, **producer_options)
    await producer.start()
    records = events = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        for batch, value in batches:
            pending.append(
                await producer.send(
                    settings.topic_raw,
                    value,
                    key=batch.key.encode(),
                    timestamp_ms=batch.ingested_time,
                    headers=[(VIEW_HEADER, batch.key.encode())],
                )
            )
            records += 1
            events += len(batch.events)
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return records, events


def now_ms() -> int:
    return time.time_ns() // 1_000_000
