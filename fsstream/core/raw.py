"""Checking decoded raw batches, and building the published rows from raw events.

Every way a raw record can be unusable has its own exception class; its name and
message become the DLQ record's ``fs-error`` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from fsstream.core.ids import fingerprint, source_fingerprint
from fsstream.core.jsondepth import json_depth
from fsstream.core.models import view_key
from fsstream.core.timefmt import format_event_time, is_canonical_event_time, parse_rfc3339_us


class InvalidRecord(ValueError):
    """A raw record that cannot be processed; the class name is the DLQ reason."""


class OversizedRecord(InvalidRecord):
    """The record value is larger than the configured maximum."""


class EmptyBatch(InvalidRecord):
    """The batch holds no event."""


class MissingDeviceId(InvalidRecord):
    """An event has no device_id."""


class BadEventTime(InvalidRecord):
    """An event_time is not an RFC 3339 timestamp."""


class AbsurdEventTime(InvalidRecord):
    """An event_time is too far from the record's timestamp to be real."""


class AbsurdIngestedTime(InvalidRecord):
    """The batch's ingested_time is too far from the record's timestamp to be real."""


class PropertiesTooDeep(InvalidRecord):
    """event_properties or source_properties nests deeper than a published row can."""


class MissingEventType(InvalidRecord):
    """An event has no event_type or source_type."""


class PropertiesNotObject(InvalidRecord):
    """event_properties or source_properties is not a JSON object."""


class EmptySourceEventId(InvalidRecord):
    """An event's source_event_id is an empty string, which identifies nothing."""


class ViewKeyMismatch(InvalidRecord):
    """The batch's events do not all belong to the record's view."""


MAX_TIME_MS = 253_402_300_799_999
"""The last millisecond of year 9999: the latest time the warehouse's formats can hold."""

MAX_PROPERTIES_DEPTH = 254
"""The deepest nesting of arrays and objects a published row can carry (orjson writes no
deeper); enrichment only adds values near the top."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How far an event_time or ingested_time may lie before or after its record's timestamp."""

    max_age_ms: int
    max_skew_ms: int

    def outside(self, time_ms: int, record_ts_ms: int) -> bool:
        return time_ms > record_ts_ms + self.max_skew_ms or time_ms < record_ts_ms - self.max_age_ms


@dataclass(slots=True)
class RawEvent:
    """A checked raw event with its parsed properties and fingerprint (from its source id
    when it has one, else from its content)."""

    device_id: int
    session_id: int | None
    view_id: int | None
    time_us: int
    event_time: str
    event_type: str
    event_properties: dict[str, Any]
    source_type: str
    source_properties: dict[str, Any]
    fp: int


def _properties(text: str, name: str, position: int) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PropertiesNotObject(f"event {position}: {name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise PropertiesNotObject(
            f"event {position}: {name} is a JSON {type(value).__name__}, not an object"
        )
    # Only a text with that many brackets can nest that deep: the walk is rarely needed.
    if text.count("{") + text.count("[") > MAX_PROPERTIES_DEPTH and (
        json_depth(value, MAX_PROPERTIES_DEPTH) > MAX_PROPERTIES_DEPTH
    ):
        raise PropertiesTooDeep(
            f"event {position}: {name} nests deeper than {MAX_PROPERTIES_DEPTH} levels"
        )
    return value


def check_event(
    event: dict[str, Any], position: int, record_ts_ms: int, limits: Limits
) -> RawEvent:
    """A decoded RawEvent made safe to process, or ``InvalidRecord`` saying why not."""
    device_id = event["device_id"]
    if device_id is None:
        raise MissingDeviceId(f"event {position} has no device_id")
    text = event["event_time"]
    try:
        time_us = parse_rfc3339_us(text)
    except ValueError:
        raise BadEventTime(f"event {position}: event_time {text[:40]!r} is not RFC 3339") from None
    time_ms = time_us // 1000
    if limits.outside(time_ms, record_ts_ms):
        raise AbsurdEventTime(
            f"event {position}: event_time {text[:40]} is {(time_ms - record_ts_ms) / 1000:+.0f}s"
            " from the record timestamp"
        )
    event_type = event["event_type"]
    if not event_type:
        raise MissingEventType(f"event {position} has no event_type")
    source_type = event["source_type"]
    if not source_type:
        raise MissingEventType(f"event {position} has no source_type")
    session_id = event["session_id"]
    view_id = event["view_id"]
    event_properties_text = event["event_properties"]
    source_properties_text = event["source_properties"]
    event_properties = _properties(event_properties_text, "event_properties", position)
    source_properties = _properties(source_properties_text, "source_properties", position)
    # Absent from records written with the schema before it, and from hand-built batches.
    source_event_id = event.get("source_event_id")
    if source_event_id is None:
        fp = fingerprint(
            time_us, event_type, event_properties_text, source_type, source_properties_text
        )
    elif source_event_id:
        fp = source_fingerprint(source_event_id)
    else:
        raise EmptySourceEventId(f"event {position}: source_event_id is empty")
    return RawEvent(
        device_id,
        session_id,
        view_id,
        time_us,
        text if is_canonical_event_time(text) else format_event_time(time_us),
        event_type,
        event_properties,
        source_type,
        source_properties,
        fp,
    )


def check_batch(
    batch: dict[str, Any], record_key: str | None, record_ts_ms: int, limits: Limits
) -> tuple[str, list[RawEvent]]:
    """(view key, checked events) of a decoded RawEventBatch."""
    events = batch["events"]
    if not events:
        raise EmptyBatch("the batch holds no event")
    ingested_ms = batch["ingested_time"]
    if limits.outside(ingested_ms, record_ts_ms) or not 0 <= ingested_ms <= MAX_TIME_MS:
        raise AbsurdIngestedTime(
            f"ingested_time {ingested_ms} is {(ingested_ms - record_ts_ms) / 1000:+.0f}s"
            " from the record timestamp"
        )
    checked = [check_event(e, i, record_ts_ms, limits) for i, e in enumerate(events)]
    first = checked[0]
    key = view_key(first.device_id, first.session_id, first.view_id)
    for i, event in enumerate(checked):
        if (event.device_id, event.session_id, event.view_id) != (
            first.device_id,
            first.session_id,
            first.view_id,
        ):
            raise ViewKeyMismatch(
                f"event {i} is of view "
                f"{view_key(event.device_id, event.session_id, event.view_id)}"
                f", event 0 of {key}"
            )
    if record_key is not None and record_key != key:
        raise ViewKeyMismatch(f"record key {record_key[:80]!r} but the events are of view {key}")
    return key, checked


def to_row(
    event: RawEvent,
    event_id: str,
    *,
    processed_time: str,
    ingested_ms: int,
    event_properties: dict[str, Any],
    source_properties: dict[str, Any],
) -> dict[str, Any]:
    """The published ``Event`` record of a raw event (properties already enriched)."""
    return {
        "event_id": event_id,
        "event_time": event.event_time,
        "processed_time": processed_time,
        "updated_time": None,
        "device_id": event.device_id,
        "session_id": event.session_id,
        "view_id": event.view_id,
        "event_type": event.event_type,
        "event_properties": orjson.dumps(event_properties).decode(),
        "source_type": event.source_type,
        "source_properties": orjson.dumps(source_properties).decode(),
        "ingested_time": ingested_ms,
    }
