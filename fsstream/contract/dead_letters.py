"""Dead-letter records: the original record with why it failed and where it came from.

A dead letter must always be producible, or the record that caused it would stop its
worker: when the original is larger than the broker takes, its value (then its headers,
then its key) is left out, and headers say what was left out, with the value's size
and SHA-256, so the original can be found at its source location and checked.
"""

from __future__ import annotations

import hashlib
import logging

from fsstream import metrics
from fsstream.contract.wire import ERROR_HEADER, SOURCE_HEADER, Headers, Record, headers_of

log = logging.getLogger(__name__)

DLQ_SIZE_HEADER = "fs-dlq-size"
DLQ_SHA256_HEADER = "fs-dlq-sha256"
DLQ_DROPPED_HEADER = "fs-dlq-dropped"
"""Comma-separated parts of the original left out: ``value``, ``headers``, ``key``."""

DLQ_RECORD_LIMIT = 900_000
"""Bytes of key, value and headers a dead letter may carry: the broker's default record
limit is 1 MiB."""
ERROR_TEXT_LIMIT = 2_000

DeadLetter = tuple[bytes | None, bytes | None, Headers]
"""(key, value, headers) of a DLQ record."""


def _size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") + 8 for k, v in headers)


def dead_letter(
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    *,
    reason: str,
    message: str,
    source: str,
    limit: int = DLQ_RECORD_LIMIT,
) -> DeadLetter:
    """The DLQ record of one failed record; counted by reason and logged (truncated)."""
    metrics.DLQ_RECORDS.labels(reason).inc()
    log.warning("DLQ %s: %s: %s", source, reason, message[:500])
    own: Headers = [
        (ERROR_HEADER, f"{reason}: {message[:ERROR_TEXT_LIMIT]}".encode(errors="replace")),
        (SOURCE_HEADER, source.encode(errors="replace")),
    ]
    kept = list(headers)
    dropped: list[str] = []
    if value is not None and _size(key, value, kept + own) > limit:
        own.append((DLQ_SIZE_HEADER, str(len(value)).encode()))
        own.append((DLQ_SHA256_HEADER, hashlib.sha256(value).hexdigest().encode()))
        value = None
        dropped.append("value")
    if kept and _size(key, value, kept + own) > limit:
        kept = []
        dropped.append("headers")
    if key is not None and _size(key, value, kept + own) > limit:
        key = None
        dropped.append("key")
    if dropped:
        own.append((DLQ_DROPPED_HEADER, ",".join(dropped).encode()))
    return key, value, kept + own


def dead_letter_of(record: Record, error: Exception) -> DeadLetter:
    """The DLQ record of a consumed record that failed with ``error``, bytes unchanged."""
    return dead_letter(
        record.key,
        record.value,
        headers_of(record),
        reason=type(error).__name__,
        message=str(error),
        source=f"{record.topic}/{record.partition}/{record.offset}",
    )
