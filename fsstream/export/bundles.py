"""Data Export bundles built from the warehouse's live rows.

A bundle is the gzip JSON array of the live events (``event_type`` not NULL, and no
NULL row for the same event id in the scanned data) whose ``event_time`` falls in its
period, sorted by event time, then event id, stored at
``fullstory_<org>/exports/bundles/<start>-<stop>.json.gz`` (``20240101T000000Z``
stamps). Those names are the index: one listing of the folder gives every bundle's Id,
Start, Stop and size, with nothing to keep consistent when builders run concurrently.

Which partitions a bundle reads is fixed by its period alone, so a rebuild reads the
same rows and writes the same bytes (fixed gzip header, fixed field order, total sort):

- from the hour ``lookback`` before the period start: rows of the period ingested early
  (clock skew), and the identify, console and page context of its events;
- up to ``max(period end, period end + availability delay - allowed lateness)``:
  every late row that arrives while the bundle is not yet available.

A bundle is due once its period end plus the availability delay has passed and the
last partition it reads is sealed (its hour plus the allowed lateness), so a bundle
built on time already holds everything a later rebuild would read, apart from rows the
warehouse itself corrects afterwards. Rows ingested after the window are not exported:
the bundle is published, and clients replicate append-only.

The context of an event comes from the same scan: the user of its device is the merge
of the device's identify events before the bundle's end; ``PageDuration`` is the time
from the first to the last event read of its page (view) and ``PageActiveDuration`` the
same with each pause between two events counted up to 30 s; ``PageNum*`` count the
page's console messages and exceptions up to the event.

The rows a build reads are held in Arrow (the uncompressed size of their columns, each
view's source properties once), never all as Python objects: the JSON is produced and
compressed a few thousand events at a time.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fsstream.core.layout import events_prefix, hour_prefix, org_prefix
from fsstream.core.timefmt import format_event_time, hour_floor_ms, parse_partition_hour
from fsstream.export.config import DAY_MS, HOUR_MS, ExportConfig, Period, periods_covering
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
    begin = hour_floor_ms(first.start_ms - config.lookback_ms)
    late = max(config.availability_delay_ms - config.allowed_lateness_ms, 0)
    end = max(_hour_ceil_ms(last.stop_ms), hour_floor_ms(last.stop_ms + late))
    return range(begin, end, HOUR_MS)


def due_ms(period: Period, config: ExportConfig) -> int:
    """When a bundle becomes available: its delay has passed and its partitions are sealed."""
    hours = scan_hours(period, period, config)
    return max(
        period.stop_ms + config.availability_delay_ms, hours.stop + config.allowed_lateness_ms
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

    Periods run from the first stored bundle, or when there is none yet from the
    warehouse's first hour (found by listing its events once; events older than that
    hour are exported with an explicit ``build_bundles``); a period overlapping a
    stored bundle counts as built. At
    most ``limit`` bundles are built per call, so a timer catching up on history makes
    steady progress.
    """
    stored = await list_bundles(store, config.org_id)
    if stored:
        first_ms = stored[0].period.start_ms
    else:
        first_hour = await _first_warehouse_hour(store, config.org_id)
        if first_hour is None:
            return []
        first_ms = first_hour
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


async def _build(
    store: ObjectStore, config: ExportConfig, periods: Sequence[Period]
) -> list[BuiltBundle]:
    built: list[BuiltBundle] = []
    for chunk in _chunks(periods):
        window = await _read_window(store, config, chunk[0], chunk[-1])
        for period in chunk:
            data, events = await asyncio.to_thread(_encode_bundle, window, period, config)
            key = bundle_key(config.org_id, period)
            await store.put(key, data)
            built.append(BuiltBundle(period, key, events, len(data)))
            log.info(
                "built export bundle %s (%s to %s): %d events, %d bytes",
                period.id,
                _stamp(period.start_ms),
                _stamp(period.stop_ms),
                events,
                len(data),
            )
    return built


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

    ``rows``: the live rows whose event time is in the periods, with the columns a
    bundle needs; ``times``: view, time and id of every live row from the lookback on,
    for page durations; ``context``: the identify, console message and exception rows
    from the lookback on; ``nulled``: the ids of NULL rows. Each bundle takes the part
    of these its own scan would have read, so how periods are grouped into one read
    never changes a bundle.
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
            return await asyncio.to_thread(_split_file, key, hour, data, lookback, start, stop)

    windows = await asyncio.gather(*(read(key, hour) for key, hour in files))
    return await asyncio.to_thread(_Window.concat, [_empty_window(), *windows])


def _split_file(key: str, hour: int, data: bytes, lookback: str, start: str, stop: str) -> _Window:
    file = pq.ParquetFile(pa.BufferReader(data), read_dictionary=_DICTIONARY_COLUMNS)
    if not file.schema_arrow.equals(_READ_SCHEMA):
        raise ValueError(f"{key} is not an events file of the warehouse schema")
    table = file.read(columns=_ROW_COLUMNS)
    table = table.append_column("_hour", pa.repeat(pa.scalar(hour, pa.int64()), table.num_rows))
    event_type = table["event_type"]
    nulled = table.filter(pc.is_null(event_type)).select(["event_id", "_hour"])
    live = table.filter(
        pc.and_(pc.is_valid(event_type), pc.greater_equal(table["event_time"], lookback))
    )
    time_of_live = live["event_time"]
    in_periods = pc.and_(pc.greater_equal(time_of_live, start), pc.less(time_of_live, stop))
    context = pc.and_(
        pc.is_in(live["event_type"], value_set=_CONTEXT_TYPES), pc.less(time_of_live, stop)
    )
    return _Window(
        live.filter(in_periods).select([*_ROW_COLUMNS, "_hour"]),
        live.select([*_TIME_COLUMNS, "_hour"]),
        live.filter(context).select([*_ROW_COLUMNS, "_hour"]),
        nulled,
    )


def _encode_bundle(window: _Window, period: Period, config: ExportConfig) -> tuple[bytes, int]:
    """The gzip JSON array of a period's events, and how many there are."""
    hours = scan_hours(period, period, config)
    lookback = _time_text(period.start_ms - config.lookback_ms)
    start, stop = _time_text(period.start_ms), _time_text(period.stop_ms)

    def scanned(table: pa.Table, condition: pc.Expression) -> pa.Table:
        """The rows of ``table`` this period's own scan reads that meet ``condition``."""
        hour = pc.field("_hour")
        return table.filter((hour >= hours.start) & (hour < hours.stop) & condition)

    event_time = pc.field("event_time")
    nulled = pc.unique(scanned(window.nulled, pc.scalar(True))["event_id"])
    live = (
        pc.invert(pc.is_in(pc.field("event_id"), value_set=nulled))
        if len(nulled)
        else pc.scalar(True)
    )
    keys = window.rows.select(
        ["device_id", "event_time", "_hour", *(["event_id"] if len(nulled) else [])]
    )
    in_period = scanned(keys, (event_time >= start) & (event_time < stop) & live)
    devices = pc.is_in(pc.field("device_id"), value_set=pc.unique(in_period["device_id"]))
    after_lookback = (event_time >= lookback) & devices & live
    context = _in_event_order(scanned(window.context, after_lookback & (event_time < stop)))
    pages = _page_totals(scanned(window.times, after_lookback))
    profiles: dict[int, UserProfile] = {}
    console: dict[ViewKey, ConsoleTotals] = {}
    for row in context.to_pylist():
        if row["event_type"] == "identify":
            device = row["device_id"]
            properties = parse_properties(row["event_properties"])
            profiles[device] = profiles.get(device, _ANONYMOUS).identified(properties)
        elif row["event_time"] < start and (view := _view_of(row)) is not None:
            console[view] = console.get(view, _NO_CONSOLE).after(
                row["event_type"], row["event_properties"]
            )
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    out = [compressor.compress(b"[")]
    separator = b""
    for part_start in range(period.start_ms, period.stop_ms, HOUR_MS):
        # An hour of event time at a time: sorting a copy of the whole period would
        # double the memory a build needs.
        part_stop = _time_text(min(part_start + HOUR_MS, period.stop_ms))
        part = (event_time >= _time_text(part_start)) & (event_time < part_stop) & live
        rows = _in_event_order(scanned(window.rows, part)).select(_EXPORT_COLUMNS)
        for offset in range(0, rows.num_rows, _SLICE_ROWS):
            parts: list[bytes] = []
            for row in rows.slice(offset, _SLICE_ROWS).to_pylist():
                view = _view_of(row)
                totals = None
                if view is not None:
                    totals = console.get(view, _NO_CONSOLE).after(
                        row["event_type"], row["event_properties"]
                    )
                    console[view] = totals
                event = export_event(
                    row,
                    profile=profiles.get(row["device_id"]),
                    page=pages.get(view) if view is not None else None,
                    console=totals,
                )
                parts.append(separator)
                parts.append(orjson.dumps(event))
                separator = b",\n"
            out.append(compressor.compress(b"".join(parts)))
    out.append(compressor.compress(b"]"))
    out.append(compressor.flush())
    return b"".join(out), in_period.num_rows


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
