"""How Data Export bundles are cut, when they become available and who may fetch them.

A bundle covers one period, ``[start, stop)``: 30 minutes to 24 hours long, dividing
the UTC day evenly and aligned to the epoch, so the periods of one length tile every
day the same way. Its Id packs the period into one decimal number,
``start (unix seconds) * 100 + length in half hours``: ``170406720048`` is the 24 h
bundle of 2024-01-01. An Id therefore names its bundle without any lookup, and reads
as an integer for clients that decode it as one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fsstream.settings import Settings

HALF_HOUR_MS = 1_800_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_HALF_HOURS_PER_DAY = DAY_MS // HALF_HOUR_MS

HEADER_TIMEOUT_S = 10.0
KEEPALIVE_TIMEOUT_S = 15.0
MAX_CONNECTIONS = 256


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """The half-open time range ``[start_ms, stop_ms)`` of one bundle."""

    start_ms: int
    stop_ms: int

    @property
    def id(self) -> str:
        return str(self.start_ms // 1000 * 100 + (self.stop_ms - self.start_ms) // HALF_HOUR_MS)

    @classmethod
    def from_id(cls, text: str) -> Period | None:
        """The period an Id names; None if no bundle could carry that Id."""
        if not text.isascii() or not text.isdigit() or text.startswith("0"):
            return None
        number = int(text)
        start_s, half_hours = divmod(number, 100)
        if not 1 <= half_hours <= _HALF_HOURS_PER_DAY or _HALF_HOURS_PER_DAY % half_hours:
            return None
        length_ms = half_hours * HALF_HOUR_MS
        start_ms = start_s * 1000
        if start_ms % length_ms:
            return None
        return cls(start_ms, start_ms + length_ms)

    @property
    def length_ms(self) -> int:
        return self.stop_ms - self.start_ms


def check_period_length(length_ms: int) -> None:
    """Refuse a bundle length that is not a whole number of half hours dividing a day."""
    if length_ms <= 0 or length_ms % HALF_HOUR_MS or DAY_MS % length_ms:
        raise ValueError(
            "a bundle period is 30 min to 24 h, a multiple of 30 min dividing 24 h "
            f"(30m, 1h, 1h30m, 2h, 3h, 4h, 6h, 8h, 12h, 24h); got {length_ms / 60_000:g} min"
        )


def period_containing(ms: int, length_ms: int) -> Period:
    """The aligned period of ``length_ms`` that holds the moment ``ms``."""
    start = ms - ms % length_ms
    return Period(start, start + length_ms)


def periods_covering(start_ms: int, stop_ms: int, length_ms: int) -> list[Period]:
    """The aligned periods of ``length_ms`` that overlap ``[start_ms, stop_ms)``, in order."""
    check_period_length(length_ms)
    first = start_ms - start_ms % length_ms
    return [Period(at, at + length_ms) for at in range(first, stop_ms, length_ms)]


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """Settings of the Data Export bundles and of their API.

    ``lookback_ms`` is how far before a period its scan starts: rows of the period can
    sit in partitions ingested up to the accepted clock skew before it, and the identify,
    console and page context of its events reaches back that far. ``api_keys`` are the
    keys the API accepts; ``integer_ids`` lists Ids as JSON numbers instead of strings,
    for clients that decode them as integers (hauser). ``index_ttl_s`` bounds how long
    the API serves its cached list of bundles before listing the store again.

    The API's connection limits keep slow or idle clients from holding its sockets:
    ``header_timeout_s`` is how long a client has to send a whole request line and
    headers (counted from its first byte, or from connecting), ``keepalive_timeout_s``
    how long a connection may sit idle between requests, and ``max_connections`` how
    many connections are served at once; beyond it a connection is answered 503 and
    closed.
    """

    org_id: str = "o-local"
    period_ms: int = DAY_MS
    availability_delay_ms: int = DAY_MS
    allowed_lateness_ms: int = HOUR_MS
    lookback_ms: int = DAY_MS
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    integer_ids: bool = False
    index_ttl_s: float = 30.0
    header_timeout_s: float = HEADER_TIMEOUT_S
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS

    def __post_init__(self) -> None:
        check_period_length(self.period_ms)
        if min(self.availability_delay_ms, self.allowed_lateness_ms, self.lookback_ms) < 0:
            raise ValueError("delays, lateness and lookback cannot be negative")
        if self.index_ttl_s < 0:
            raise ValueError("index_ttl_s cannot be negative")
        if min(self.header_timeout_s, self.keepalive_timeout_s) <= 0:
            raise ValueError("header_timeout_s and keepalive_timeout_s must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ExportConfig:
        """The export configuration of a deployment: org, lateness and skew from ``settings``."""
        values: dict[str, Any] = {
            "org_id": settings.org_id,
            "period_ms": round(settings.export_period_s * 1000),
            "availability_delay_ms": round(settings.export_delay_s * 1000),
            "api_keys": settings.export_keys,
            "integer_ids": settings.export_integer_ids,
            "allowed_lateness_ms": round(settings.allowed_lateness_s * 1000),
            "lookback_ms": max(DAY_MS, round(settings.max_clock_skew_s * 1000)),
            "header_timeout_s": settings.export_header_timeout_s,
            "keepalive_timeout_s": settings.export_keepalive_timeout_s,
            "max_connections": settings.export_max_connections,
        }
        values.update(overrides)
        return cls(**values)


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration_ms(text: str) -> int:
    """``30m``, ``6h``, ``1h30m``, ``1d`` or plain seconds, in milliseconds."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text) * 1000
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 6h, 1h30m, 1d or seconds)")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60_000 + seconds * 1000
