"""The wire contract the workers share: record header names and their helpers.

Neither worker owns it: the reorder worker writes these headers, the sink, replay,
tail and export read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

VIEW_HEADER = "fs-view"
"""Every produced record: the view key ``device:session:view``."""
HEARTBEAT_HEADER = "fs-heartbeat"
"""A raw-topic record the reorder worker appends to a quiet partition to move stream time."""
ROW_INGESTED_HEADER = "fs-ingested"
"""Tombstones: the superseded row's ``ingested_time`` (ms), which places it in the warehouse."""
ROW_EVENT_TIME_HEADER = "fs-event-time"
"""Tombstones: the superseded row's ``event_time``."""
SUPERSEDED_BY_HEADER = "fs-superseded-at"
"""Tombstones: the ``ingested_time`` (ms) of the batch whose late event superseded the row."""
ERROR_HEADER = "fs-error"
"""DLQ records: ``Class: message``."""
SOURCE_HEADER = "fs-source"
"""DLQ records: ``topic/partition/offset`` of the original record."""

Headers = list[tuple[str, bytes]]


class Record(Protocol):
    """A consumed Kafka record, as the workers read it: what aiokafka's ``ConsumerRecord``
    has, and all a test needs to stand in for one."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch."""
        ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def headers_of(message: Record) -> Headers:
    """A consumer record's headers as a list of (name, value), whatever the client gave."""
    headers = message.headers or []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)
