"""The sink's logic: the events topic → hourly parquet files, exactly once in effect.

Rows are buffered per (events partition, hour) and written to deterministic object
names (topic, partition, first offset). A message is acknowledged, so its offset can
be committed, only once the file holding its row is uploaded and recorded in the
partition's ledger (``ledger.py``), and only after every message before it (a committed
offset stands for everything before it).
After a crash, rows already in a recorded file are skipped, and a file uploaded but not
recorded is written again at the same name, or deleted if the rows read again start at
another offset: no row is lost and none is duplicated.

The sink is idempotent by event id as well: a row whose id its hour already holds (a
redelivery by an at-least-once producer, a replayed topic) is skipped. The ids of an
hour's recorded files are read back from the files the first time a row touches the
hour, and kept while the hour is open.

Tombstones null out the superseded row: dropped from the buffer if it is still
there, otherwise every file holding it is recreated at the same name (once per sync,
however many tombstones hit it), or, in append mode, a NULL row goes to the current
partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fsstream import metrics
from fsstream.contract import codec
from fsstream.contract.wire import (
    ROW_EVENT_TIME_HEADER,
    ROW_INGESTED_HEADER,
    SUPERSEDED_BY_HEADER,
    VIEW_HEADER,
    Record,
    headers_of,
)
from fsstream.core.layout import event_file_key, hour_of, manifest_key, seal_marker_key
from fsstream.core.layout import hour_prefix as layout_hour_prefix
from fsstream.core.raw import MAX_TIME_MS
from fsstream.core.timefmt import (
    MS_PER_HOUR,
    format_event_time,
    format_partition_hour,
    parse_rfc3339_us,
)
from fsstream.infra.crashpoints import CrashPoints
from fsstream.infra.object_store import ObjectStore
from fsstream.settings import Settings
from fsstream.sink.ledger import FileRecord, HourLedger, Ledgers
from fsstream.sink.parquet_format import (
    EVENTS_SCHEMA,
    nullify,
    read_event_columns,
    serialize_events,
)

log = logging.getLogger(__name__)

COLUMNS = [f.name for f in EVENTS_SCHEMA]
NULL_ROW_BYTES = 200
"""What a row without a value (a NULL row, a tombstone) counts towards the byte budget."""


Reject = Callable[[Record, Exception], Awaitable[None]]
"""Called with a message that cannot be written and why; it is acknowledged afterwards."""


class UnwritableRow(ValueError):
    """An events-topic record the warehouse cannot hold; the class name is the DLQ reason."""


@dataclass(frozen=True, slots=True)
class TombstoneOf:
    """What a tombstone names: the row's id and hour, and the NULL row append mode writes."""

    event_id: str
    hour: int
    view: tuple[int, int | None, int | None]
    event_time: str
    superseded_at_ms: int | None


def _ms(value: object, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TIME_MS:
        raise UnwritableRow(f"{name} {str(value)[:40]} is not a time the warehouse can hold")
    return value


def parse_row(value: bytes) -> tuple[dict[str, Any], int]:
    """The decoded row of an events record, and its hour; ``UnwritableRow`` if it has none."""
    row = codec.decode(value, expected=codec.EVENT)
    hour = hour_of(_ms(row["ingested_time"], "ingested_time"))
    if not row["event_id"]:
        raise UnwritableRow("the row has no event_id")
    event_time = row["event_time"]
    if event_time is not None:
        try:
            parse_rfc3339_us(event_time)
        except ValueError:
            raise UnwritableRow(f"event_time {event_time[:40]!r} is not RFC 3339") from None
    return row, hour


def parse_tombstone(key: bytes | None, headers: dict[str, bytes]) -> TombstoneOf:
    """What a tombstone record names, from its key and headers."""
    if not key:
        raise UnwritableRow("a tombstone without a key")
    for name in (ROW_INGESTED_HEADER, VIEW_HEADER, ROW_EVENT_TIME_HEADER):
        if name not in headers:
            raise UnwritableRow(f"a tombstone without the {name} header")
    try:
        ingested = _ms(int(headers[ROW_INGESTED_HEADER]), ROW_INGESTED_HEADER)
        superseded = headers.get(SUPERSEDED_BY_HEADER)
        superseded_ms = (
            _ms(int(superseded), SUPERSEDED_BY_HEADER) if superseded is not None else None
        )
        device, session, view = [*headers[VIEW_HEADER].decode().split(":"), "", ""][:3]
        ids = (int(device), int(session) if session else None, int(view) if view else None)
        event_time = headers[ROW_EVENT_TIME_HEADER].decode()
        parse_rfc3339_us(event_time)
        event_id = key.decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnwritableRow(f"a tombstone with unreadable headers: {exc}") from None
    return TombstoneOf(event_id, hour_of(ingested), ids, event_time, superseded_ms)


async def _log_rejected(message: Record, error: Exception) -> None:
    log.warning(
        "%s/%d/%d not written: %s: %s",
        message.topic,
        message.partition,
        message.offset,
        type(error).__name__,
        str(error)[:500],
    )


IDS_KEPT_S = 600.0
"""How long the ids of a sealed hour stay in memory after a row last touched it."""


@dataclass(slots=True)
class HourIds:
    """Event ids in one hour's recorded files: which file holds each, and the NULL rows."""

    files: dict[bytes, int] = field(default_factory=dict)
    """16-byte event id → index of its file in the hour's ledger."""
    copies: dict[bytes, list[int]] = field(default_factory=dict)
    """Further files holding an id, in a warehouse written before ids were deduplicated."""
    nulls: set[bytes] = field(default_factory=set)
    """Ids with a NULL row appended (append tombstone mode)."""
    touched: float = 0.0

    def holds(self, key: bytes, null: bool) -> bool:
        return key in self.nulls if null else key in self.files

    def record(self, key: bytes, index: int, null: bool) -> None:
        if null:
            self.nulls.add(key)
        elif key not in self.files:
            self.files[key] = index
        elif self.files[key] != index:
            self.copies.setdefault(key, []).append(index)

    def indexes(self, key: bytes) -> list[int]:
        """Every file holding a row of ``key``."""
        first = self.files.get(key)
        return [] if first is None else [first, *self.copies.get(key, ())]


@dataclass(slots=True)
class HourBuffer:
    """Rows of one hour not yet in a file, column by column, with their messages."""

    columns: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    offsets: list[int] = field(default_factory=list)
    messages: list[Record] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    """Live rows: event id → position."""
    nulls: set[str] = field(default_factory=set)
    """Ids of the NULL rows here (append tombstone mode)."""
    dropped: set[int] = field(default_factory=set)
    size: int = 0

    @property
    def rows(self) -> int:
        return len(self.offsets) - len(self.dropped)

    def holds(self, event_id: str, null: bool) -> bool:
        return event_id in self.nulls if null else event_id in self.positions

    def add(
        self, offset: int, row: dict[str, Any], message: Record, size: int, null: bool = False
    ) -> None:
        if null:
            self.nulls.add(row["event_id"])
        else:
            self.positions[row["event_id"]] = len(self.offsets)
        for column in COLUMNS:
            self.columns[column].append(row[column])
        self.offsets.append(offset)
        self.messages.append(message)
        self.size += size

    def drop(self, event_id: str) -> Record | None:
        """Drop the row of ``event_id``; return its message, None if it is not here."""
        position = self.positions.pop(event_id, None)
        if position is None:
            return None
        self.dropped.add(position)
        return self.messages[position]

    def kept(self) -> tuple[dict[str, list[Any]], list[int]]:
        if not self.dropped:
            return self.columns, self.offsets
        keep = [i for i in range(len(self.offsets)) if i not in self.dropped]
        return (
            {c: [values[i] for i in keep] for c, values in self.columns.items()},
            [self.offsets[i] for i in keep],
        )


@dataclass(slots=True)
class PartitionSink:
    """Buffers and ledgers of one assigned events partition.

    ``start`` is the first offset read since the assignment: every row from there on is
    read again after a crash, so an unrecorded file starting there or later is a crashed
    run's upload, whose rows go into the files written now. ``checked`` are the hours
    already cleared of such files, ``ids`` the ids of the open hours' files.
    ``unacked`` holds the messages read and not yet acknowledged, in offset order;
    ``durable`` the offsets among them that are done.
    """

    number: int
    ledgers: dict[int, HourLedger]
    start: int = 0
    buffers: dict[int, HourBuffer] = field(default_factory=dict)
    checked: set[int] = field(default_factory=set)
    ids: dict[int, HourIds] = field(default_factory=dict)
    unacked: deque[Record] = field(default_factory=deque)
    durable: set[int] = field(default_factory=set)
    newest_ms: int = 0


class SinkAgent:
    """Buffers, files and ledgers of the events partitions one sink worker owns."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        ledgers: Ledgers,
        ack: Callable[[Record], None],
        clock: Callable[[], float] = time.time,
        reject: Reject = _log_rejected,
    ) -> None:
        self.settings = settings
        self.reject = reject
        self.store = store
        self.ledgers = ledgers
        self.ack = ack
        self.clock = clock
        self.lock = asyncio.Lock()
        self.partitions: dict[int, PartitionSink] = {}
        self.rewrites: dict[str, tuple[int, int, set[str], list[Record]]] = {}
        self._size = 0  # bytes in buffers
        self._held = 0  # bytes of durable messages waiting for an earlier one to be acknowledged
        self.peak_bytes = 0  # the most buffered and held at once, budget checks included
        self.prefix_topic = settings.topic_events
        self.crash = CrashPoints(settings.crash_point)

    # -- partitions -----------------------------------------------------------------

    async def _open(self, number: int, offset: int) -> PartitionSink:
        """Start on a partition at ``offset``, the first one read since it was assigned."""
        ledgers = await self.ledgers.load(number)
        sink = self.partitions[number] = PartitionSink(number, ledgers, offset)
        return sink

    def revoke(self, numbers: set[int]) -> None:
        """Forget revoked partitions unacknowledged: their new owner reads them again."""
        for number in numbers:
            sink = self.partitions.pop(number, None)
            if sink is not None:
                self._size -= sum(buffer.size for buffer in sink.buffers.values())
                self._held -= sum(_weight(m) for m in sink.unacked if m.offset in sink.durable)
        self.rewrites = {k: v for k, v in self.rewrites.items() if v[0] not in numbers}

    @property
    def buffered(self) -> tuple[int, int]:
        """Rows in buffers, and the bytes the byte budget bounds: buffers and held messages."""
        rows = sum(b.rows for sink in self.partitions.values() for b in sink.buffers.values())
        return rows, self._size + self._held

    # -- incoming -------------------------------------------------------------------

    async def process(self, messages: Sequence[Record]) -> None:
        """Buffer rows and apply tombstones; write buffers as soon as a budget is exceeded,
        so neither a file nor the memory held ever goes past its budget by more than a row.

        ``messages`` are consumer records of the events topic, in offset order per partition.
        """
        async with self.lock:
            for message in messages:
                sink = self.partitions.get(message.partition)
                if sink is None:
                    sink = await self._open(message.partition, message.offset)
                sink.unacked.append(message)
                try:  # what the record holds is checked before any I/O
                    parsed: TombstoneOf | tuple[dict[str, Any], int] = (
                        parse_tombstone(message.key, dict(headers_of(message)))
                        if message.value is None
                        else parse_row(message.value)
                    )
                except Exception as exc:  # one record's failure is that record's
                    await self.reject(message, exc)
                    self._done(sink, message)
                    continue
                if isinstance(parsed, TombstoneOf):
                    buffer = await self._tombstone(sink, message, parsed)
                else:
                    buffer = await self._row(sink, message, *parsed)
                held = self._size + self._held
                if held > self.peak_bytes:
                    self.peak_bytes = held
                if (
                    buffer is not None and buffer.rows >= self.settings.sink_max_rows
                ) or held > self.settings.sink_max_bytes:
                    for target in self._over_budget():
                        await self._flush(*target)
                    if self._size + self._held > self.settings.sink_max_bytes:
                        await self._drain()  # what is held waits for a rewrite or a buffer
            self._observe()

    async def _row(
        self, sink: PartitionSink, message: Record, row: dict[str, Any], hour: int
    ) -> HourBuffer | None:
        sink.newest_ms = max(sink.newest_ms, row["ingested_time"])
        return await self._buffer(sink, hour, message, row, _weight(message))

    async def _buffer(
        self,
        sink: PartitionSink,
        hour: int,
        message: Record,
        row: dict[str, Any],
        size: int,
        null: bool = False,
    ) -> HourBuffer | None:
        """Add a row to its hour's buffer, unless the hour holds it already."""
        ledger = sink.ledgers.get(hour)
        if ledger is not None and ledger.covers(message.offset):
            self._done(sink, message)
            return None
        event_id = row["event_id"]
        buffer = sink.buffers.get(hour)
        ids = await self._ids(sink, hour)
        if (buffer is not None and buffer.holds(event_id, null)) or ids.holds(
            _id_key(event_id), null
        ):
            metrics.ROWS_SKIPPED.inc()
            self._done(sink, message)
            return None
        if buffer is None:
            buffer = sink.buffers[hour] = HourBuffer()
        buffer.add(message.offset, row, message, size, null)
        self._size += size
        return buffer

    async def _ids(self, sink: PartitionSink, hour: int) -> HourIds:
        """The ids of the hour's recorded files, read from the files on first use."""
        ids = sink.ids.get(hour)
        if ids is None:
            ids = HourIds()
            ledger = sink.ledgers.get(hour)
            loop = asyncio.get_running_loop()
            append = self.settings.tombstone_mode == "append"
            for index, record in enumerate(ledger.files if ledger is not None else ()):
                data = await self.store.get(record.name)
                if data is not None:
                    columns = await loop.run_in_executor(
                        None, read_event_columns, data, ["event_id", "event_type"]
                    )
                    for event_id, event_type in zip(
                        columns["event_id"], columns["event_type"], strict=True
                    ):
                        ids.record(_id_key(event_id), index, append and event_type is None)
            sink.ids[hour] = ids
        ids.touched = self.clock()
        return ids

    async def _tombstone(
        self, sink: PartitionSink, message: Record, tombstone: TombstoneOf
    ) -> HourBuffer | None:
        event_id = tombstone.event_id
        hour = tombstone.hour
        buffer = sink.buffers.get(hour)
        row_message = buffer.drop(event_id) if buffer is not None else None
        if row_message is not None:
            self._done(sink, row_message)
            self._done(sink, message)
            return None
        if self.settings.tombstone_mode == "append":
            return await self._null_row(sink, message, tombstone)
        ids = await self._ids(sink, hour)
        ledger = sink.ledgers.get(hour)
        indexes = ids.indexes(_id_key(event_id))
        if ledger is None or not indexes:
            log.info(
                "tombstone %s: no row in partition %d hour %s",
                event_id,
                sink.number,
                format_partition_hour(hour),
            )
            self._done(sink, message)
            return None
        for index in indexes:
            name = ledger.files[index].name
            _, _, nulled, messages = self.rewrites.setdefault(name, (sink.number, hour, set(), []))
            nulled.add(event_id)
            messages.append(message)
        return None

    async def _null_row(
        self, sink: PartitionSink, message: Record, tombstone: TombstoneOf
    ) -> HourBuffer | None:
        now_ms = int(self.clock() * 1000)
        ingested = tombstone.superseded_at_ms
        if ingested is None:
            ingested = now_ms
        device, session, view = tombstone.view
        row = {
            "event_id": tombstone.event_id,
            "event_time": tombstone.event_time,
            "processed_time": format_event_time(now_ms * 1000),
            "updated_time": now_ms,
            "device_id": device,
            "session_id": session,
            "view_id": view,
            "event_type": None,
            "event_properties": "{}",
            "source_type": "",
            "source_properties": "{}",
        }
        return await self._buffer(sink, hour_of(ingested), message, row, NULL_ROW_BYTES, null=True)

    # -- writing --------------------------------------------------------------------

    def _over_budget(self) -> list[tuple[PartitionSink, int, HourBuffer]]:
        """Buffers to write now: full ones, and the largest while over the byte budget."""
        out: list[tuple[PartitionSink, int, HourBuffer]] = []
        candidates = []
        total = self._held
        for sink in self.partitions.values():
            for hour, buffer in sink.buffers.items():
                total += buffer.size
                if buffer.rows >= self.settings.sink_max_rows:
                    out.append((sink, hour, buffer))
                else:
                    candidates.append((buffer.size, sink.number, hour, sink, buffer))
        total -= sum(b.size for _, _, b in out)
        candidates.sort(key=lambda c: c[:3], reverse=True)
        for size, _, hour, sink, buffer in candidates:
            if total <= self.settings.sink_max_bytes:
                break
            out.append((sink, hour, buffer))
            total -= size
        return out

    async def _flush(self, sink: PartitionSink, hour: int, buffer: HourBuffer) -> None:
        """Write one buffer as a file, record it, then acknowledge its messages."""
        columns, offsets = buffer.kept()
        name = None
        if offsets:
            name = event_file_key(
                self.settings.org_id, hour, self.prefix_topic, sink.number, offsets[0]
            )
        if hour not in sink.checked:
            await self._delete_unrecorded(sink, hour, keep=name)
            sink.checked.add(hour)
        if name is not None:
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(None, serialize_events, columns)
            await self.store.put(name, data)
            self.crash.reached("after-upload")
            ledger = sink.ledgers.setdefault(hour, HourLedger())
            ledger.files.append(FileRecord(name, offsets[0], offsets[-1], len(offsets)))
            resealed, ledger.sealed = ledger.sealed, False  # until the manifest lists it
            await self.ledgers.save(sink.number, hour, ledger)
            self.crash.reached("after-record")
            ids = await self._ids(sink, hour)
            index = len(ledger.files) - 1
            for event_id, event_type in zip(
                columns["event_id"], columns["event_type"], strict=True
            ):
                null = event_type is None and event_id in buffer.nulls
                ids.record(_id_key(event_id), index, null)
            metrics.FILES_WRITTEN.inc()
            metrics.ROWS_WRITTEN.inc(len(offsets))
            now = self.clock()
            for processed in columns["processed_time"][:: max(1, len(offsets) // 50)]:
                seconds = _seconds(processed)
                if seconds is not None:
                    metrics.SYNC_LATENCY.observe(max(0.0, now - seconds))
            if resealed:
                await self._seal(sink, hour, ledger)
        for i, message in enumerate(buffer.messages):
            if i not in buffer.dropped:
                self._done(sink, message)
        sink.buffers.pop(hour, None)
        if self.partitions.get(sink.number) is sink:  # a revoke has counted it out already
            self._size -= buffer.size

    def _done(self, sink: PartitionSink, message: Record) -> None:
        """Mark a message durable; acknowledge every message up to the first one not yet."""
        if self.partitions.get(message.partition) is not sink:
            return  # revoked meanwhile: its new owner reads it again
        sink.durable.add(message.offset)
        self._held += _weight(message)
        while sink.unacked and sink.unacked[0].offset in sink.durable:
            first = sink.unacked.popleft()
            sink.durable.discard(first.offset)
            self._held -= _weight(first)
            self.ack(first)

    def _files_prefix(self, hour: int, number: int) -> str:
        """What the names of one partition's files in one hour start with."""
        return f"{layout_hour_prefix(self.settings.org_id, hour)}{self.prefix_topic}+{number}+"

    async def _delete_unrecorded(self, sink: PartitionSink, hour: int, keep: str | None) -> None:
        """Delete the files a crash left between upload and record in this hour.

        Such a file holds rows from ``sink.start`` on, all read again since; the files
        written now hold them, but where a row the crashed run kept is now dropped (or
        the reverse), the first offset and so the name differ, and the old file would
        duplicate rows.
        """
        ledger = sink.ledgers.get(hour)
        recorded = {f.name for f in ledger.files} if ledger is not None else set()
        prefix = self._files_prefix(hour, sink.number)
        for info in await self.store.list(prefix):
            offset = info.key[len(prefix) :].removesuffix(".parquet")
            if (
                info.key not in recorded
                and info.key != keep
                and offset.isdigit()
                and int(offset) >= sink.start
            ):
                log.info("deleting %s, uploaded by a crashed run, never recorded", info.key)
                await self.store.delete(info.key)

    async def sync(self) -> None:
        """Write every buffer, recreate files hit by tombstones, seal due hours."""
        async with self.lock:
            await self._drain()
            await self._seal_due()
            self._observe()

    async def _drain(self) -> None:
        """Write every buffer and recreate the files hit by tombstones: all is durable."""
        for sink in list(self.partitions.values()):
            for hour, buffer in sorted(sink.buffers.items()):
                await self._flush(sink, hour, buffer)
        await self._rewrite()

    async def _rewrite(self) -> None:
        rewrites, self.rewrites = self.rewrites, {}
        now_ms = int(self.clock() * 1000)
        loop = asyncio.get_running_loop()
        for name, (number, _hour, ids, messages) in rewrites.items():
            sink = self.partitions.get(number)
            if sink is None:
                continue
            data = await self.store.get(name)
            if data is not None:
                rewritten, nulled = await loop.run_in_executor(
                    None, nullify, data, ids, format_event_time(now_ms * 1000), now_ms
                )
                if nulled:
                    await self.store.put(name, rewritten)
                    self.crash.reached("after-rewrite")
                    metrics.FILES_RECREATED.inc()
            for message in messages:
                self._done(sink, message)

    async def _seal_due(self) -> None:
        now_ms = int(self.clock() * 1000)
        lateness_ms = int(self.settings.allowed_lateness_s * 1000)
        oldest_due = None
        for sink in self.partitions.values():
            for hour, ledger in sorted(sink.ledgers.items()):
                due = hour + MS_PER_HOUR + lateness_ms
                if ledger.sealed or due > now_ms:
                    continue
                await self._seal(sink, hour, ledger)
                oldest_due = due if oldest_due is None else min(oldest_due, due)
            await self._prune(sink)
        unsealed = [
            hour + MS_PER_HOUR + lateness_ms
            for sink in self.partitions.values()
            for hour, ledger in sink.ledgers.items()
            if not ledger.sealed
        ]
        metrics.SEAL_LAG.set(max(0.0, (now_ms - min(unsealed)) / 1000) if unsealed else 0.0)

    async def _seal(self, sink: PartitionSink, hour: int, ledger: HourLedger) -> None:
        """Record this partition's files in the hour's marker, then rebuild the manifest."""
        org = self.settings.org_id
        prefix = layout_hour_prefix(org, hour)
        key = seal_marker_key(org, hour, self.prefix_topic, sink.number)
        files = {f.name.removeprefix(prefix): f.rows for f in ledger.files}
        previous = await self.store.get(key)
        if previous is not None:
            # The ledger forgets hours out of every tombstone's reach; a late row for one
            # must not drop the files sealed before from the marker.
            own = self._files_prefix(hour, sink.number)
            stored = {info.key.removeprefix(prefix) for info in await self.store.list(own)}
            for f in orjson.loads(previous)["files"]:
                if f["name"] in stored:
                    files.setdefault(f["name"], f["rows"])
        marker = {
            "partition": sink.number,
            "files": [{"name": name, "rows": rows} for name, rows in sorted(files.items())],
        }
        await self.store.put(key, orjson.dumps(marker))
        await write_manifest(self.store, org, hour)
        if not ledger.sealed:  # only now: a crash before seals again after the restart
            ledger.sealed = True
            await self.ledgers.save(sink.number, hour, ledger)
            metrics.PARTITIONS_SEALED.inc()

    async def _prune(self, sink: PartitionSink) -> None:
        """Forget sealed hours no tombstone can reach any more.

        A row is superseded by a batch ingested at most a view TTL after it, so hours
        older than that before the newest row of the partition are out of reach.
        """
        horizon = sink.newest_ms - int(self.settings.view_ttl_s * 1000) - 2 * MS_PER_HOUR
        for hour in [h for h, ledger in sink.ledgers.items() if ledger.sealed and h < horizon]:
            del sink.ledgers[hour]
            sink.ids.pop(hour, None)
            await self.ledgers.forget(sink.number, hour)
        idle = self.clock() - IDS_KEPT_S
        for hour, ids in list(sink.ids.items()):
            ledger = sink.ledgers.get(hour)
            if ids.touched < idle and (ledger is None or ledger.sealed):
                del sink.ids[hour]  # read again from the files if a late row comes

    def _observe(self) -> None:
        rows, size = self.buffered
        metrics.BUFFERED_ROWS.set(rows)
        metrics.BUFFERED_BYTES.set(size)
        metrics.BUFFERED_BYTES_PEAK.set(self.peak_bytes)


def _id_key(event_id: str) -> bytes:
    """An event id as kept in memory: 16 bytes for the hex ids the reorder worker makes."""
    try:
        return bytes.fromhex(event_id)
    except ValueError:
        return b"\0" + event_id.encode()


def _seconds(event_time: str) -> float | None:
    """Seconds since the epoch of a timestamp; None for one that is not (a row written by
    another producer may carry anything there)."""
    try:
        return parse_rfc3339_us(event_time) / 1e6
    except ValueError:
        return None


def _weight(message: Record) -> int:
    return len(message.value) if message.value is not None else NULL_ROW_BYTES


async def write_manifest(store: ObjectStore, org_id: str, hour: int) -> dict[str, Any]:
    """``_manifest.json`` of an hour: every file the sealed partitions wrote, with row counts.

    Rebuilt from the markers at each seal; written again if a marker appeared meanwhile,
    so concurrent sealers converge on the complete list.
    """
    prefix = layout_hour_prefix(org_id, hour)
    manifest: dict[str, Any] = {}
    for _ in range(5):
        markers = sorted(o.key for o in await store.list(f"{prefix}_sealed/"))
        files: list[dict[str, Any]] = []
        for key in markers:
            data = await store.get(key)
            if data is not None:
                files.extend(orjson.loads(data)["files"])
        files.sort(key=lambda f: f["name"])
        manifest = {
            "partition": f"ingested_time={format_partition_hour(hour)}",
            "files": files,
            "rows": sum(f["rows"] for f in files),
        }
        await store.put(
            manifest_key(org_id, hour), orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
        )
        if sorted(o.key for o in await store.list(f"{prefix}_sealed/")) == markers:
            break
    return manifest
