"""Timestamps as integers (µs or ms since the epoch) and their fixed string formats."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS_PER_HOUR = 3_600_000


def parse_rfc3339_us(text: str) -> int:
    """µs since the epoch of an RFC 3339 timestamp; ``ValueError`` if it is not one."""
    if len(text) < 20 or text[10] not in "Tt ":
        raise ValueError(f"not an RFC 3339 timestamp: {text[:40]!r}")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {text[:40]!r}")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_SECONDS: dict[int, str] = {}


def format_event_time(us: int) -> str:
    """``yyyy-MM-ddTHH:mm:ss.SSSSSSZ``, the warehouse's event and processed time format."""
    seconds, fraction = divmod(us, 1_000_000)
    head = _SECONDS.get(seconds)
    if head is None:
        if len(_SECONDS) > 65_536:
            _SECONDS.clear()
        head = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{head}.{fraction:06d}Z"


def is_canonical_event_time(text: str) -> bool:
    """Whether ``text`` is already in the ``yyyy-MM-ddTHH:mm:ss.SSSSSSZ`` format."""
    return len(text) == 27 and text[26] == "Z" and text[19] == "." and text[10] == "T"


def format_definition_time(ms: int) -> str:
    """``YYYY-MM-DD HH:mm:ss.SSSSSS``, the definition exports' time format."""
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%d %H:%M:%S.%f")


def hour_floor_ms(ms: int) -> int:
    """The start of the UTC hour containing ``ms``."""
    return ms - ms % MS_PER_HOUR


def format_partition_hour(ms: int) -> str:
    """``yyyy-MM-dd HH:00:00`` of the hour containing ``ms``: the warehouse partition value."""
    return (_EPOCH + timedelta(milliseconds=hour_floor_ms(ms))).strftime("%Y-%m-%d %H:%M:%S")


def parse_partition_hour(text: str) -> int:
    """The ms of the hour a warehouse partition value names, the inverse of
    ``format_partition_hour``; ``ValueError`` if it is not ``yyyy-MM-dd HH:00:00``."""
    moment = datetime.strptime(text, "%Y-%m-%d %H:00:00").replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def format_partition_second(ms: int) -> str:
    """``yyyy-MM-dd HH:mm:ss``: the definition exports' partition value."""
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%d %H:%M:%S")
