"""Data Export bundles built from the warehouse's live rows.

A bundle is the gzip JSON array of live events (``event_type`` not NULL, and no NULL
row for the same event id in the scanned data), sorted by event time, then event id,
stored at ``fullstory_<org>/exports/bundles/<start>-<stop>.json.gz``
(``20240101T000000Z`` stamps). Those names are the index: one listing of the folder
gives every bundle's Id, Start, Stop and size, with nothing to keep consistent when
builders run concurrently.

Which bundle holds a row is a pure function of the row (``bundle_period``), so that
clients that replicate append-only (tap-fullstory, hauser: they page with ``start`` =
the last ``Stop`` they saw) get every event exactly once:

- every bundle reads the ingested hours from ``lookback`` before its period start up
  to its *cutoff*, ``max(period end, period end + availability delay - allowed
  lateness)`` rounded to the hour (``cutoff_ms``); it is due once the cutoff's last
  hour is sealed and the availability delay has passed;
- a row belongs to the bundle of its event time's period if it was ingested before
  that bundle's cutoff, otherwise to the first later period whose cutoff is after its
  ingested hour. Such a *late* row keeps its own ``EventStart``, older than the
  bundle's Start, and is listed among the bundle's other events in event-time order.

A bundle therefore never changes once its cutoff hour is sealed: a row ingested later
lands in a bundle not built yet, and a rebuild reads the same rows and writes the
same bytes (fixed gzip header, fixed field order, total sort). Rows the reorderer
supersedes are left out: a superseded row is NULL in its (recreated) file, or has a
NULL row of the same id in the hours read. Its corrected copy, re-emitted under a new
event id with the late batch's ingested time, is a live row of the same content; when
it lands in a later bundle than the original and the original was exported (the
tombstone came after that bundle was built), it is not exported again. To know that,
each bundle is stored with the content fingerprints of the events it holds, at
``exports/fingerprints/<start>-<stop>.bin``, written before the bundle itself; a late
row whose fingerprint is in the record of an earlier listed bundle is left out. (The
Data Export format carries no event id, so clients could not drop such a copy
themselves.) Bundles built before these records existed have none: a copy of one of
their events is exported again.

The context of an event comes from the same scan: the user of its device is the merge
of the device's identify events read (event time from the lookback on, or late rows
of the bundle) before the bundle's end; ``PageDuration`` is the time from the first to
the last event read of its page (view) and ``PageActiveDuration`` the same with each
pause between two events counted up to 30 s; ``PageNum*`` count the page's console
messages and exceptions read, up to the event. For a late row whose event time is
older than the lookback, that context is what the scan holds of its page and device:
usually only the other late rows of the same page and identify events from the
lookback on.

The rows a build reads are held in Arrow (the uncompressed size of their columns, each
view's source properties once), never all as Python objects: the JSON is produced and
compressed a few thousand events at a time.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sys
import time
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fsstream.core.layout import events_prefix, hour_prefix, org_prefix
from fsstream.core.timefmt import (
    format_event_time,
    hour_floor_ms,
    parse_partition_hour,
    parse_rfc3339_us,
)
from fsstream.export.config import (
    DAY_MS,
    HOUR_MS,
    ExportConfig,
    Period,
    period_containing,
    periods_covering,
)
from fsstream.export.mapping import (
    CONSOLE_EVENT_TYPES,
    ConsoleTotals,
    PageTotals,
    UserProfile,
    export_event,
    parse_properties,
)
from fsstream.infra.object_store import ObjectStore
from fsstream.sink.parquet_format import EVENTS_SCHEMA

__all__ = [
    "BuiltBundle",
    "BundleInfo",
    "build_bundles",
    "build_due",
    "bundle_key",
    "bundles_prefix",
    "due_ms",
    "exportable",
    "list_bundles",
    "scan_hours",
]

log = logging.getLogger(__name__)

ACTIVE_GAP_CAP_MS = 30_000
"""The longest pause between two events of a page still counted as active time."""

GZIP_LEVEL = 6
_SLICE_ROWS = 4096
_FETCHES = 4
_STAMP = "%Y%m%dT%H%M%SZ"
_SUFFIX = ".json.gz"
_VIEW_COLUMNS = ["device_id", "session_id", "view_id"]
_CONSOLE_TYPES = pa.array(sorted(CONSOLE_EVENT_TYPES), pa.string())
_CONTEXT_TYPES = pa.array(sorted({"identify", *CONSOLE_EVENT_TYPES}), pa.string())

ViewKey = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """A stored bundle as the export API lists it."""

    period: Period
    key: str
    size: int

    @property
    def id(self) -> str:
        return self.period.id

    @property
    def start_s(self) -> int:
        return self.period.start_ms // 1000

    @property
    def stop_s(self) -> int:
        return self.period.stop_ms // 1000


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    """A bundle just written: its period, object key, event count and size in bytes."""

    period: Period
    key: str
    events: int
    size: int


# -- names and index -----------------------------------------------------------------


def bundles_prefix(org_id: str) -> str:
    return f"{org_prefix(org_id)}exports/bundles/"


def fingerprints_key(org_id: str, period: Period) -> str:
    """``.../exports/fingerprints/<start>-<stop>.bin``: what a bundle holds, for later ones."""
    return (
        f"{org_prefix(org_id)}exports/fingerprints/"
        f"{_stamp(period.start_ms)}-{_stamp(period.stop_ms)}.bin"
    )


def bundle_key(org_id: str, period: Period) -> str:
    """``.../exports/bundles/20240101T000000Z-20240102T000000Z.json.gz``."""
    return f"{bundles_prefix(org_id)}{_stamp(period.start_ms)}-{_stamp(period.stop_ms)}{_SUFFIX}"


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime(_STAMP)


def _period_of(name: str) -> Period | None:
    """The period a bundle's file name stands for; None for any other name."""
    if not name.endswith(_SUFFIX):
        return None
    start, _, stop = name.removesuffix(_SUFFIX).partition("-")
    try:
        period = Period(_parse_stamp(start), _parse_stamp(stop))
    except ValueError:
        return None
    return period if Period.from_id(period.id) == period else None


def _parse_stamp(text: str) -> int:
    moment = datetime.strptime(text, _STAMP).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000


async def list_bundles(store: ObjectStore, org_id: str) -> list[BundleInfo]:
    """Every stored bundle, by start then stop."""
    prefix = bundles_prefix(org_id)
    found = []
    for info in await store.list(prefix):
        period = _period_of(info.key[len(prefix) :])
        if period is not None:
            found.append(BundleInfo(period, info.key, info.size))
    found.sort(key=lambda bundle: bundle.period)
    return found


def exportable(bundles: Iterable[BundleInfo]) -> list[BundleInfo]:
    """The bundles a client replicates, oldest first, none overlapping another.

    Bundles of different lengths overlap only if an operator built a range again with
    another period; the one starting first is kept, so paging by ``Stop`` never delivers
    an event twice.
    """
    chain: list[BundleInfo] = []
    for bundle in sorted(bundles, key=lambda b: b.period):
        if not chain or bundle.period.start_ms >= chain[-1].period.stop_ms:
            chain.append(bundle)
    return chain


# -- when and what ---------------------------------------------------------------------


def scan_hours(first: Period, last: Period, config: ExportConfig) -> range:
    """The ingested hours (ms) whose partitions hold the rows of ``first`` .. ``last``."""
    return range(
        hour_floor_ms(first.start_ms - config.lookback_ms), cutoff_ms(last, config), HOUR_MS
    )


def cutoff_ms(period: Period, config: ExportConfig) -> int:
    """The first ingested hour a period's bundle does not read; rows of later hours go on."""
    late = max(config.availability_delay_ms - config.allowed_lateness_ms, 0)
    return max(_hour_ceil_ms(period.stop_ms), hour_floor_ms(period.stop_ms + late))


def bundle_period(event_time_ms: int, ingested_ms: int, config: ExportConfig) -> Period:
    """The bundle holding a live row: its event time's period if ingested before that
    bundle's cutoff, else the first later period whose cutoff is after its ingestion."""
    own = period_containing(event_time_ms, config.period_ms)
    if ingested_ms < cutoff_ms(own, config):
        return own
    return max(own, _first_period_reading(ingested_ms, config))


def _first_period_reading(ingested_ms: int, config: ExportConfig) -> Period:
    """The first period whose cutoff is after ``ingested_ms``.

    A cutoff lies between ``stop + late - 1 h`` and ``stop + max(late, 1 h)``, so the
    search starts a little before that and takes a few steps at most.
    """
    late = max(config.availability_delay_ms - config.allowed_lateness_ms, HOUR_MS)
    period = period_containing(ingested_ms - late - HOUR_MS, config.period_ms)
    while cutoff_ms(period, config) <= ingested_ms:
        period = Period(period.stop_ms, period.stop_ms + config.period_ms)
    return period


def due_ms(period: Period, config: ExportConfig) -> int:
    """When a bundle becomes available: its delay has passed and its partitions are sealed."""
    return max(
        period.stop_ms + config.availability_delay_ms,
        cutoff_ms(period, config) + config.allowed_lateness_ms,
    )


def _hour_ceil_ms(ms: int) -> int:
    return -(-ms // HOUR_MS) * HOUR_MS


# -- building --------------------------------------------------------------------------


async def build_bundles(
    store: ObjectStore,
    config: ExportConfig,
    *,
    start_ms: int,
    stop_ms: int,
    now_ms: int | None = None,
) -> list[BuiltBundle]:
    """(Re)build the bundles of every period overlapping ``[start_ms, stop_ms)``.

    Ignores the availability delay, for backfills and rebuilds, but refuses a period
    that has not ended by ``now_ms`` (the wall clock by default): it would be cut short.
    """
    now_ms = _wall_clock_ms() if now_ms is None else now_ms
    periods = periods_covering(start_ms, stop_ms, config.period_ms)
    unfinished = [p for p in periods if p.stop_ms > now_ms]
    if unfinished:
        raise ValueError(
            f"the period {_stamp(unfinished[0].start_ms)}-{_stamp(unfinished[0].stop_ms)} "
            "has not ended yet"
        )
    return await _build(store, config, periods)


async def build_due(
    store: ObjectStore, config: ExportConfig, now_ms: int, *, limit: int | None = None
) -> list[BuiltBundle]:
    """Build every bundle that is due at ``now_ms`` and not built yet, oldest first.

    Periods run from the first stored bundle, or when there is none yet from the first
    bundle that can hold a row of the warehouse (``_first_bundle_start``), so events
    older than the warehouse's first ingested hour are exported too. A period
    overlapping a stored bundle counts as built. At most ``limit`` bundles are built
    per call, so a timer catching up on history makes steady progress.
    """
    stored = await list_bundles(store, config.org_id)
    if stored:
        first_ms = stored[0].period.start_ms
    else:
        first_hour = await _first_warehouse_hour(store, config.org_id)
        if first_hour is None:
            return []
        earliest = _first_period_reading(first_hour, config)
        if due_ms(earliest, config) > now_ms:
            return []  # no later period is due either
        first_ms = await _first_bundle_start(store, config, first_hour, earliest)
    taken = [(b.period.start_ms, b.period.stop_ms) for b in exportable(stored)]
    stops = [stop for _, stop in taken]
    missing: list[Period] = []
    for period in periods_covering(first_ms, now_ms, config.period_ms):
        if due_ms(period, config) > now_ms:
            break
        at = bisect.bisect_right(stops, period.start_ms)
        overlaps = any(start < period.stop_ms for start, _ in taken[at : at + 1])
        if not overlaps:
            missing.append(period)
            if limit is not None and len(missing) >= limit:
                break
    return await _build(store, config, missing)


async def _first_warehouse_hour(store: ObjectStore, org_id: str) -> int | None:
    prefix = f"{events_prefix(org_id)}ingested_time="
    for info in await store.list(prefix):
        if info.key.endswith(".parquet"):
            return parse_partition_hour(info.key[len(prefix) : len(prefix) + 19])
    return None


async def _first_bundle_start(
    store: ObjectStore, config: ExportConfig, first_hour: int, earliest: Period
) -> int:
    """The start of the first bundle that can hold a row of the warehouse.

    No row is in a bundle before ``earliest``, whose cutoff is the first after the
    warehouse's first hour, nor before the period of its own event time. Rows ingested
    from the cutoff of the first hour's period on belong to later bundles, so the event
    times of the partitions before that cutoff settle it.
    """
    first_period = period_containing(first_hour, config.period_ms)
    oldest_ms = first_period.start_ms
    for hour in range(first_hour, cutoff_ms(first_period, config), HOUR_MS):
        folder = hour_prefix(config.org_id, hour)
        for info in await store.list(folder):
            name = info.key[len(folder) :]
            if "/" in name or not name.endswith(".parquet"):
                continue
            data = await store.get(info.key)
            if data is not None:
                oldest = await asyncio.to_thread(_oldest_event_time, data)
                if oldest is not None:
                    oldest_ms = min(oldest_ms, parse_rfc3339_us(oldest) // 1000)
    own = period_containing(oldest_ms, config.period_ms)
    return max(own, earliest).start_ms


def _oldest_event_time(data: bytes) -> str | None:
    times = pq.read_table(pa.BufferReader(data), columns=["event_time"])["event_time"]
    oldest: str | None = pc.min(times).as_py()
    return oldest


async def _build(
    store: ObjectStore, config: ExportConfig, periods: Sequence[Period]
) -> list[BuiltBundle]:
    built: list[BuiltBundle] = []
    records = _ExportedRecords(store, config.org_id)
    for chunk in _chunks(periods):
        window = await _read_window(store, config, chunk[0], chunk[-1])
        for period in chunk:
            late_since = await asyncio.to_thread(_earliest_late_ms, window, period, config)
            exported = (
                frozenset() if late_since is None else await records.before(period, late_since)
            )
            bundle = await asyncio.to_thread(_encode_bundle, window, period, config, exported)
            # The record first: a listed bundle always has one.
            await store.put(fingerprints_key(config.org_id, period), _pack(bundle.fingerprints))
            key = bundle_key(config.org_id, period)
            await store.put(key, bundle.data)
            records.wrote(period, bundle.fingerprints)
            built.append(BuiltBundle(period, key, bundle.events, len(bundle.data)))
            log.info(
                "built export bundle %s (%s to %s): %d events, %d bytes",
                period.id,
                _stamp(period.start_ms),
                _stamp(period.stop_ms),
                bundle.events,
                len(bundle.data),
            )
    return built


class _ExportedRecords:
    """The fingerprints of the events of the listed bundles, read when late rows need them."""

    def __init__(self, store: ObjectStore, org_id: str) -> None:
        self._store = store
        self._org_id = org_id
        self._chain: list[BundleInfo] | None = None
        self._read: dict[Period, frozenset[int]] = {}

    async def before(self, period: Period, since_ms: int) -> frozenset[int]:
        """What the listed bundles starting before ``period`` and ending after
        ``since_ms`` hold: the only ones a late row of ``period`` can be a copy from."""
        if self._chain is None:
            self._chain = exportable(await list_bundles(self._store, self._org_id))
        held: set[int] = set()
        for bundle in self._chain:
            if bundle.period.start_ms < period.start_ms and bundle.period.stop_ms > since_ms:
                held |= await self._fingerprints(bundle.period)
        return frozenset(held)

    def wrote(self, period: Period, fingerprints: frozenset[int]) -> None:
        self._chain = None  # listed again when next needed
        self._read[period] = fingerprints

    async def _fingerprints(self, period: Period) -> frozenset[int]:
        found = self._read.get(period)
        if found is None:
            data = await self._store.get(fingerprints_key(self._org_id, period))
            # A bundle built before records were kept has none.
            found = self._read[period] = _unpack(data or b"")
        return found


def _pack(fingerprints: frozenset[int]) -> bytes:
    """Sorted 64-bit little-endian integers."""
    packed = array("Q", sorted(fingerprints))
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _unpack(data: bytes) -> frozenset[int]:
    packed = array("Q")
    packed.frombytes(data)
    if sys.byteorder == "big":
        packed.byteswap()
    return frozenset(packed)


def exported_fingerprint(row: Mapping[str, Any]) -> int:
    """A 64-bit hash of the content a row exports, ids aside.

    The copy of an event the reorderer re-emits after a late event has a new event id
    but the same content, so it has the same fingerprint.
    """
    text = (
        f"{row['device_id']}\x1f{row['session_id']}\x1f{row['view_id']}\x1f{row['event_time']}"
        f"\x1f{row['event_type']}\x1f{row['event_properties']}\x1f{row['source_type']}"
        f"\x1f{row['source_properties']}"
    )
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")


def _chunks(periods: Sequence[Period]) -> list[list[Period]]:
    """Consecutive periods spanning at most a day, which share one scan of the warehouse."""
    chunks: list[list[Period]] = []
    for period in periods:
        chunk = chunks[-1] if chunks else None
        if (
            chunk is not None
            and chunk[-1].stop_ms == period.start_ms
            and period.stop_ms - chunk[0].start_ms <= DAY_MS
        ):
            chunk.append(period)
        else:
            chunks.append([period])
    return chunks


@dataclass(frozen=True, slots=True)
class _Window:
    """Rows read for consecutive periods, each tagged with its partition's ``_hour``.

    Live rows are those from the lookback on, and in the hours from the first period's
    late cutoff on (``_late_from_ms``) all of them, late rows of any age included.
    ``rows``: the live rows whose event time is in the periods or, in those late hours,
    before them, with the columns a bundle needs; ``times``: view, time and id of every
    live row, for page durations; ``context``: the live identify, console message and
    exception rows; ``nulled``: the ids of NULL rows. Each bundle takes the part of
    these its own scan would have read, so how periods are grouped into one read never
    changes a bundle.
    """

    rows: pa.Table
    times: pa.Table
    context: pa.Table
    nulled: pa.Table

    @classmethod
    def concat(cls, windows: Sequence[_Window]) -> _Window:
        return cls(
            *(
                pa.concat_tables([getattr(w, name) for w in windows])
                for name in ("rows", "times", "context", "nulled")
            )
        )


_ROW_COLUMNS = [
    "event_id",
    "event_time",
    *_VIEW_COLUMNS,
    "event_type",
    "event_properties",
    "source_type",
    "source_properties",
]
_TIME_COLUMNS = [*_VIEW_COLUMNS, "event_time", "event_id"]
_EXPORT_COLUMNS = [name for name in _ROW_COLUMNS if name != "event_id"]


# One source per view repeats on each of its events: read as a dictionary, it is held once.
_DICTIONARY_COLUMNS = ["source_properties"]
_READ_SCHEMA = EVENTS_SCHEMA.set(
    EVENTS_SCHEMA.get_field_index("source_properties"),
    EVENTS_SCHEMA.field("source_properties").with_type(pa.dictionary(pa.int32(), pa.string())),
)


def _empty_window() -> _Window:
    table = _READ_SCHEMA.empty_table().select(_ROW_COLUMNS)
    table = table.append_column("_hour", pa.array([], pa.int64()))
    return _Window(
        table.select([*_ROW_COLUMNS, "_hour"]),
        table.select([*_TIME_COLUMNS, "_hour"]),
        table.select([*_ROW_COLUMNS, "_hour"]),
        table.select(["event_id", "_hour"]),
    )


def _time_text(ms: int) -> str:
    """An event time bound comparable, as text, with the warehouse's event times."""
    return format_event_time(ms * 1000)


async def _read_window(
    store: ObjectStore, config: ExportConfig, first: Period, last: Period
) -> _Window:
    lookback = _time_text(first.start_ms - config.lookback_ms)
    start, stop = _time_text(first.start_ms), _time_text(last.stop_ms)
    late_from = _late_from_ms(first, config)
    files: list[tuple[str, int]] = []
    for hour in scan_hours(first, last, config):
        folder = hour_prefix(config.org_id, hour)
        for info in await store.list(folder):
            name = info.key[len(folder) :]
            if "/" not in name and name.endswith(".parquet"):
                files.append((info.key, hour))
    fetching = asyncio.Semaphore(_FETCHES)

    async def read(key: str, hour: int) -> _Window:
        async with fetching:  # bounds the files fetched and decoded at once
            data = await store.get(key)
            if data is None:  # deleted between listing and reading
                return _empty_window()
            since = None if hour >= late_from else lookback
            return await asyncio.to_thread(_split_file, key, hour, data, since, start, stop)

    windows = await asyncio.gather(*(read(key, hour) for key, hour in files))
    return await asyncio.to_thread(_Window.concat, [_empty_window(), *windows])


def _late_from_ms(period: Period, config: ExportConfig) -> int:
    """The first ingested hour whose rows of older periods are late rows of ``period``."""
    return cutoff_ms(Period(period.start_ms - period.length_ms, period.start_ms), config)


def _split_file(
    key: str, hour: int, data: bytes, since: str | None, start: str, stop: str
) -> _Window:
    """The parts of one file a window keeps: live rows from ``since`` on (all when None)."""
    file = pq.ParquetFile(pa.BufferReader(data), read_dictionary=_DICTIONARY_COLUMNS)
    if not file.schema_arrow.equals(_READ_SCHEMA):
        raise ValueError(f"{key} is not an events file of the warehouse schema")
    table = file.read(columns=_ROW_COLUMNS)
    table = table.append_column("_hour", pa.repeat(pa.scalar(hour, pa.int64()), table.num_rows))
    event_type = table["event_type"]
    nulled = table.filter(pc.is_null(event_type)).select(["event_id", "_hour"])
    if since is None:
        live = table.filter(pc.is_valid(event_type))
        first = None
    else:
        live = table.filter(
            pc.and_(pc.is_valid(event_type), pc.greater_equal(table["event_time"], since))
        )
        first = start
    time_of_live = live["event_time"]
    before_stop = pc.less(time_of_live, stop)
    in_rows = (
        before_stop
        if first is None
        else pc.and_(pc.greater_equal(time_of_live, first), before_stop)
    )
    context = pc.and_(pc.is_in(live["event_type"], value_set=_CONTEXT_TYPES), before_stop)
    return _Window(
        live.filter(in_rows).select([*_ROW_COLUMNS, "_hour"]),
        live.select([*_TIME_COLUMNS, "_hour"]),
        live.filter(context).select([*_ROW_COLUMNS, "_hour"]),
        nulled,
    )


@dataclass(frozen=True, slots=True)
class _Selection:
    """Which rows of a window are a period's: conditions on ``_hour`` and ``event_time``.

    ``late``: rows of older periods ingested from the period's late cutoff to its
    cutoff; ``own``: rows of the period itself, from the lookback to its cutoff;
    ``read``: every row the period's own scan reads as context, i.e. from the lookback
    on or late. All three leave out superseded rows.
    """

    late: pc.Expression
    own: pc.Expression
    read: pc.Expression

    @classmethod
    def of(cls, window: _Window, period: Period, config: ExportConfig) -> _Selection:
        hours = scan_hours(period, period, config)
        hour, event_time = pc.field("_hour"), pc.field("event_time")
        scanned = (hour >= hours.start) & (hour < hours.stop)
        nulled = pc.unique(window.nulled.filter(scanned)["event_id"])
        if len(nulled):
            scanned = scanned & pc.invert(pc.is_in(pc.field("event_id"), value_set=nulled))
        start = _time_text(period.start_ms)
        late = scanned & (hour >= _late_from_ms(period, config)) & (event_time < start)
        own = scanned & (event_time >= start) & (event_time < _time_text(period.stop_ms))
        since_lookback = event_time >= _time_text(period.start_ms - config.lookback_ms)
        return cls(late, own, scanned & (since_lookback | late))


def _earliest_late_ms(window: _Window, period: Period, config: ExportConfig) -> int | None:
    """The oldest event time of the period's late rows; None when it has none."""
    late = window.rows.select(["event_id", "event_time", "_hour"]).filter(
        _Selection.of(window, period, config).late
    )
    if late.num_rows == 0:
        return None
    oldest: str = pc.min(late["event_time"]).as_py()
    return parse_rfc3339_us(oldest) // 1000


@dataclass(frozen=True, slots=True)
class _EncodedBundle:
    data: bytes
    events: int
    fingerprints: frozenset[int]


def _encode_bundle(
    window: _Window, period: Period, config: ExportConfig, exported_before: frozenset[int]
) -> _EncodedBundle:
    """The gzip JSON array of a period's events: its own rows and its late rows, less the
    copies of events listed bundles already hold (``exported_before``)."""
    selection = _Selection.of(window, period, config)
    start, stop = _time_text(period.start_ms), _time_text(period.stop_ms)
    event_time = pc.field("event_time")
    members = window.rows.select(["device_id", "event_id", "event_time", "_hour"]).filter(
        selection.own | selection.late
    )
    devices = pc.is_in(pc.field("device_id"), value_set=pc.unique(members["device_id"]))
    context = _in_event_order(window.context.filter(selection.read & devices & (event_time < stop)))
    pages = _page_totals(window.times.filter(selection.read & devices))
    profiles: dict[int, UserProfile] = {}
    for row in context.filter(pc.field("event_type") == "identify").to_pylist():
        device = row["device_id"]
        properties = parse_properties(row["event_properties"])
        profiles[device] = profiles.get(device, _ANONYMOUS).identified(properties)
    console: dict[ViewKey, ConsoleTotals] = {}
    fingerprints: set[int] = set()
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    out = [compressor.compress(b"[")]
    events = 0

    def encode(rows: pa.Table, *, marked: bool) -> None:
        """Appends the rows (only those marked ``_export`` when ``marked``); every row
        counts in its page's console."""
        nonlocal events
        parts: list[bytes] = []
        for row in rows.to_pylist():
            view = _view_of(row)
            totals = None
            if view is not None:
                totals = console.get(view, _NO_CONSOLE).after(
                    row["event_type"], row["event_properties"]
                )
                console[view] = totals
            if marked and not row["_export"]:
                continue
            fingerprint = exported_fingerprint(row)
            if fingerprint in exported_before:
                continue  # a re-emitted copy of an event a listed bundle holds
            fingerprints.add(fingerprint)
            event = export_event(
                row,
                profile=profiles.get(row["device_id"]),
                page=pages.get(view) if view is not None else None,
                console=totals,
            )
            parts.append(b",\n" if events else b"")
            parts.append(orjson.dumps(event))
            events += 1
        out.append(compressor.compress(b"".join(parts)))

    # Before the period: the late rows, among the console messages their pages had.
    earlier = context.filter(
        (event_time < start)
        & pc.invert(selection.late)
        & pc.is_in(pc.field("event_type"), value_set=_CONSOLE_TYPES)
    )
    late = window.rows.filter(selection.late)
    before = _in_event_order(
        pa.concat_tables(
            [_marked(earlier.select(_ROW_COLUMNS), False), _marked(late.select(_ROW_COLUMNS), True)]
        )
    )
    for offset in range(0, before.num_rows, _SLICE_ROWS):
        encode(before.slice(offset, _SLICE_ROWS), marked=True)
    for part_start in range(period.start_ms, period.stop_ms, HOUR_MS):
        # An hour of event time at a time: sorting a copy of the whole period would
        # double the memory a build needs.
        part_stop = _time_text(min(part_start + HOUR_MS, period.stop_ms))
        part = selection.own & (event_time >= _time_text(part_start)) & (event_time < part_stop)
        rows = _in_event_order(window.rows.filter(part)).select(_EXPORT_COLUMNS)
        for offset in range(0, rows.num_rows, _SLICE_ROWS):
            encode(rows.slice(offset, _SLICE_ROWS), marked=False)
    out.append(compressor.compress(b"]"))
    out.append(compressor.flush())
    return _EncodedBundle(b"".join(out), events, frozenset(fingerprints))


def _marked(table: pa.Table, export: bool) -> pa.Table:
    return table.append_column("_export", pa.repeat(pa.scalar(export), table.num_rows))


_ANONYMOUS = UserProfile()
_NO_CONSOLE = ConsoleTotals()


def _in_event_order(table: pa.Table) -> pa.Table:
    """Sorted by event time, then event id: a total order, the same on every rebuild."""
    order = pc.sort_indices(
        table, sort_keys=[("event_time", "ascending"), ("event_id", "ascending")]
    )
    return table.take(order)


def _page_totals(times: pa.Table) -> dict[ViewKey, PageTotals]:
    """Duration and active duration of every view, from all its rows read."""
    views = times.filter(pc.is_valid(pc.field("session_id")) & pc.is_valid(pc.field("view_id")))
    if views.num_rows == 0:
        return {}
    microseconds = pc.cast(pc.cast(views["event_time"], pa.timestamp("us", "UTC")), pa.int64())
    views = pa.table([*(views[c] for c in _VIEW_COLUMNS), microseconds], names=["d", "s", "v", "t"])
    order = pc.sort_indices(views, sort_keys=[(c, "ascending") for c in ("d", "s", "v", "t")])
    views = views.take(order).combine_chunks()
    device, session, view, moment = (column.chunk(0) for column in views.columns)
    same_view = pc.and_(
        pc.and_(pc.equal(device[1:], device[:-1]), pc.equal(session[1:], session[:-1])),
        pc.equal(view[1:], view[:-1]),
    )
    step = pc.min_element_wise(pc.subtract(moment[1:], moment[:-1]), ACTIVE_GAP_CAP_MS * 1000)
    active = pa.concat_arrays([pa.array([0], pa.int64()), pc.if_else(same_view, step, 0)])
    summary = (
        pa.table({"d": device, "s": session, "v": view, "t": moment, "a": active})
        .group_by(["d", "s", "v"])
        .aggregate([("t", "min"), ("t", "max"), ("a", "sum")])
        .to_pydict()
    )
    return {
        (d, s, v): PageTotals((last - first) // 1000, total // 1000)
        for d, s, v, first, last, total in zip(
            summary["d"],
            summary["s"],
            summary["v"],
            summary["t_min"],
            summary["t_max"],
            summary["a_sum"],
            strict=True,
        )
    }


def _view_of(row: Mapping[str, Any]) -> ViewKey | None:
    session, view = row["session_id"], row["view_id"]
    if session is None or view is None:
        return None
    return (row["device_id"], session, view)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000
