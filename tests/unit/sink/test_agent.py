"""The sink's logic without a broker: buffers, budgets, tombstones, restarts and seals.

``SinkAgent`` is driven directly with records shaped like aiokafka's, a local store, an
in-memory ledger and a recording ``ack``. A restart is a new agent over the same store
and ledger, given the messages again from the offset Kafka would have committed: a
committed offset stands for everything before it, so the sink must acknowledge each
partition's messages in offset order, which every test checks.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from fsstream.contract import codec
from fsstream.core.layout import event_file_key, manifest_key, seal_marker_key
from fsstream.core.timefmt import MS_PER_HOUR, format_event_time, parse_rfc3339_us
from fsstream.infra.object_store import LocalStore
from fsstream.settings import Settings
from fsstream.sink.agent import HourBuffer, HourIds, SinkAgent
from fsstream.sink.ledger import MemoryLedgers
from fsstream.sink.parquet_format import read_events

ORG = "o-unit"
TOPIC = "events-unit"
H0 = parse_rfc3339_us("2024-01-01T00:00:00Z") // 1000
H1 = H0 + MS_PER_HOUR
H2 = H0 + 2 * MS_PER_HOUR
VIEW = (7, 8, 9)


@dataclass(slots=True)
class LogMessage:
    """A consumed events-topic record, shaped like aiokafka's."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int = 0


def event_time(event_id: str) -> str:
    """A distinct event time per id, so files sort deterministically."""
    return format_event_time((H0 + sum(map(ord, event_id)) * 1000) * 1000)


def row(
    partition: int, offset: int, event_id: str, ingested_ms: int, view: tuple[int, ...] = VIEW
) -> LogMessage:
    """An events-topic row, as the reorder worker publishes it."""
    device, session, view_id = view
    value = codec.encode(
        codec.EVENT,
        {
            "event_id": event_id,
            "event_time": event_time(event_id),
            "processed_time": format_event_time((ingested_ms + 100) * 1000),
            "updated_time": None,
            "device_id": device,
            "session_id": session,
            "view_id": view_id,
            "event_type": "click",
            "event_properties": orjson.dumps({"id": event_id}).decode(),
            "source_type": "web",
            "source_properties": '{"url":{"path":"/p"}}',
            "ingested_time": ingested_ms,
        },
    )
    key = f"{device}:{session}:{view_id}".encode()
    return LogMessage(TOPIC, partition, offset, event_id.encode(), value, [("fs-view", key)])


def tombstone(
    partition: int, offset: int, event_id: str, row_ingested_ms: int, superseded_at_ms: int
) -> LogMessage:
    """The tombstone of a superseded row, with the headers the reorder worker sets."""
    headers = [
        ("fs-view", ":".join(map(str, VIEW)).encode()),
        ("fs-ingested", str(row_ingested_ms).encode()),
        ("fs-event-time", event_time(event_id).encode()),
        ("fs-superseded-at", str(superseded_at_ms).encode()),
    ]
    return LogMessage(TOPIC, partition, offset, event_id.encode(), None, headers)


def file_key(hour: int, partition: int, first_offset: int) -> str:
    return event_file_key(ORG, hour, TOPIC, partition, first_offset)


class Crash(Exception):
    """The worker dies: whatever the sink was doing stops here."""


class GatedStore(LocalStore):
    """A local store that records its puts, can hold them until released, and can crash
    the sink at the ``crash_at``-th put from now, before it is stored or right after."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[str] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.crash_at: int | None = None
        self.crash_stored = True

    async def put(self, key: str, data: bytes) -> None:
        self.puts.append(key)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        crash = self.crash_at == 1
        if self.crash_at is not None:
            self.crash_at -= 1
        if crash and not self.crash_stored:
            raise Crash(key)
        await super().put(key, data)
        if crash:
            raise Crash(key)


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now_ms / 1000


class Harness:
    """One sink over a store and a ledger that outlive it, like a worker and its data dir."""

    def __init__(self, root: Path, **overrides: Any) -> None:
        values: dict[str, Any] = {"org_id": ORG, "topic_events": TOPIC, "allowed_lateness_s": 0}
        self.settings = Settings(**(values | overrides))
        self.root = root / "warehouse"
        self.store = GatedStore(self.root)
        self.ledgers = MemoryLedgers()
        self.clock = Clock(H0 + 30 * 60_000)  # half past, so hour 0 is not due to seal
        self.acked: list[LogMessage] = []
        self.next_ack: dict[int, int] = {}
        self.agent = self.restart()

    def restart(self) -> SinkAgent:
        """A new incarnation: nothing in memory survives, store and ledger do."""
        self.acked = []
        self.next_ack = {}
        self.store.crash_at = None
        self.agent = SinkAgent(self.settings, self.store, self.ledgers, self.ack, clock=self.clock)
        return self.agent

    def ack(self, message: LogMessage) -> None:
        """Record an acknowledgement; each one must be the partition's next offset."""
        expected = self.next_ack[message.partition]
        assert message.offset == expected, f"acked {message.offset} before {expected}"
        self.next_ack[message.partition] = expected + 1
        self.acked.append(message)

    async def send(self, *messages: LogMessage) -> None:
        for m in messages:
            self.next_ack.setdefault(m.partition, m.offset)
        await self.agent.process(messages)

    def acked_offsets(self, partition: int = 0) -> list[int]:
        return sorted(m.offset for m in self.acked if m.partition == partition)

    def parquet_keys(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*.parquet"))

    def files(self) -> dict[str, list[dict[str, Any]]]:
        return {key: read_events((self.root / key).read_bytes()) for key in self.parquet_keys()}

    def live(self) -> dict[str, dict[str, Any]]:
        """Rows not nulled out anywhere (append mode nulls elsewhere); fails on a duplicate."""
        rows = [r for rows in self.files().values() for r in rows]
        nulled = {r["event_id"] for r in rows if r["event_type"] is None}
        live: dict[str, dict[str, Any]] = {}
        for r in rows:
            if r["event_id"] not in nulled:
                assert r["event_id"] not in live, f"duplicate live row {r['event_id']}"
                live[r["event_id"]] = r
        return live

    def check_manifests(self) -> None:
        """Every hour with files has a manifest listing exactly them, with their rows."""
        by_hour: dict[str, dict[str, int]] = {}
        for key, rows in self.files().items():
            folder, name = key.rsplit("/", 1)
            by_hour.setdefault(folder, {})[name] = len(rows)
        for folder, files in by_hour.items():
            manifest = self.json(f"{folder}/_manifest.json")
            assert {f["name"]: f["rows"] for f in manifest["files"]} == files, folder
            assert manifest["rows"] == sum(files.values())

    def json(self, key: str) -> Any:
        return orjson.loads((self.root / key).read_bytes())


def ids(rows: Iterable[dict[str, Any]]) -> list[str]:
    return [r["event_id"] for r in rows]


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local store's durability is tested elsewhere; here fsync only slows things."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture
def sink(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


# -- buffering and budgets -----------------------------------------------------------------


async def test_rows_are_buffered_per_partition_and_hour_until_sync(sink: Harness) -> None:
    messages = [
        row(0, 0, "d", H0 + 5, view=(9, 1, 1)),
        row(0, 1, "b", H1 + 5),
        row(1, 0, "c", H0 + 7),
        row(0, 2, "a", H0 + 9, view=(1, 1, 1)),
    ]
    await sink.send(*messages)
    assert sink.parquet_keys() == [] and sink.acked == []
    assert sink.agent.buffered == (4, sum(len(m.value or b"") for m in messages))
    await sink.agent.sync()
    files = sink.files()
    assert {k: ids(v) for k, v in files.items()} == {
        file_key(H0, 0, 0): ["a", "d"],  # sorted by device, session, view, event time
        file_key(H1, 0, 1): ["b"],
        file_key(H0, 1, 0): ["c"],
    }
    written = files[file_key(H0, 0, 0)][1]
    published = codec.decode(messages[0].value or b"")
    assert written == {k: v for k, v in published.items() if k != "ingested_time"}
    assert (sink.acked_offsets(0), sink.acked_offsets(1)) == ([0, 1, 2], [0])
    assert sink.agent.buffered == (0, 0)


async def test_a_full_buffer_is_written_without_waiting_for_sync(tmp_path: Path) -> None:
    sink = Harness(tmp_path, sink_max_rows=3)
    await sink.send(*(row(0, n, f"e{n}", H0 + n) for n in range(8)))
    assert {k: len(v) for k, v in sink.files().items()} == {
        file_key(H0, 0, 0): 3,
        file_key(H0, 0, 3): 3,
    }
    assert sink.acked_offsets() == list(range(6))
    assert sink.agent.buffered[0] == 2
    await sink.agent.sync()
    assert sorted(sink.live()) == sorted(f"e{n}" for n in range(8))
    assert sink.acked_offsets() == list(range(8))


async def test_the_byte_budget_writes_the_largest_buffers_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = len(row(0, 0, "e00", H0).value or b"")
    sink = Harness(tmp_path, sink_max_bytes=5 * size)
    peaks = watch_buffered_bytes(sink, monkeypatch)
    # Hour 0 gets four rows, hour 1 two: crossing the budget writes hour 0 alone.
    plan = [H0, H0, H1, H0, H1, H0]
    await sink.send(*(row(0, n, f"e{n:02d}", hour) for n, hour in enumerate(plan)))
    assert sink.parquet_keys() == [file_key(H0, 0, 0)]
    assert ids(sink.files()[file_key(H0, 0, 0)]) == ["e00", "e01", "e03", "e05"]
    assert sink.acked_offsets() == [0, 1]  # 3 and 5 wait for 2, still buffered
    assert sink.agent.buffered == (2, 4 * size)  # and are held until then
    assert max(peaks) <= 5 * size + size


async def test_messages_held_behind_a_pending_rewrite_count_towards_the_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written rows wait for the tombstone before them, whose rewrite waits for a sync;
    the budget does not wait: it applies the rewrite early to release them."""
    size = len(row(0, 0, "r00", H1).value or b"")
    sink = Harness(tmp_path, sink_max_bytes=20 * size, sink_max_rows=5)
    await sink.send(row(0, 0, "a", H0))
    await sink.agent.sync()
    peaks = watch_buffered_bytes(sink, monkeypatch)
    await sink.send(tombstone(0, 1, "a", H0, H1))
    await sink.send(*(row(0, n, f"r{n:02d}", H1) for n in range(2, 12)))
    assert sink.acked_offsets() == [0]  # two files written, held behind the tombstone
    assert "a" in sink.live()
    await sink.send(*(row(0, n, f"r{n:02d}", H1) for n in range(12, 40)))
    assert "a" not in sink.live()  # recreated without waiting for a sync
    assert len(sink.acked_offsets()) > 20
    assert max(peaks) <= 20 * size + size


async def test_buffered_bytes_stay_within_the_budget_with_many_hours_and_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory is bounded by the budget, however many hours and views are open at once."""
    rng = random.Random(7)
    messages = []
    for n in range(1_600):
        hour = H0 + rng.randrange(12) * MS_PER_HOUR
        view = (rng.randrange(50), rng.randrange(1, 40), rng.randrange(1, 5))
        messages.append(row(n % 4, n // 4, f"id{n}", hour + n, view))
    largest = max(len(m.value or b"") for m in messages)
    budget = 150 * largest
    sink = Harness(tmp_path, sink_max_bytes=budget)
    peaks = watch_buffered_bytes(sink, monkeypatch)
    for start in range(0, len(messages), 400):  # batches as faust hands them over
        await sink.send(*messages[start : start + 400])
        assert sink.agent.buffered[1] <= budget
    assert max(peaks) <= budget + largest
    assert max(peaks) > budget - largest  # the budget, not the end of a batch, wrote files
    assert len(sink.parquet_keys()) > 48  # more than one file per partition and hour
    await sink.agent.sync()
    assert sorted(sink.live()) == sorted(f"id{n}" for n in range(1_600))
    assert sum(len(sink.acked_offsets(p)) for p in range(4)) == 1_600


async def test_a_revoked_partition_is_forgotten_unacknowledged(tmp_path: Path) -> None:
    size = len(row(0, 0, "a", H0).value or b"")
    sink = Harness(tmp_path, sink_max_bytes=3 * size)
    await sink.send(row(0, 0, "a", H0), row(1, 0, "b", H0), row(1, 1, "c", H1))
    sink.agent.revoke({1})
    assert sink.agent.buffered == (1, size)
    await sink.send(row(0, 1, "d", H0), row(0, 2, "e", H0))  # within the budget again
    assert sink.parquet_keys() == []
    await sink.agent.sync()
    assert sink.parquet_keys() == [file_key(H0, 0, 0)]
    assert (sink.acked_offsets(0), sink.acked_offsets(1)) == ([0, 1, 2], [])


def watch_buffered_bytes(sink: Harness, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the sink's buffered bytes after every row it buffers."""
    peaks: list[int] = []
    add = HourBuffer.add

    def add_and_measure(buffer: HourBuffer, *args: Any) -> None:
        add(buffer, *args)
        peaks.append(sink.agent.buffered[1])

    monkeypatch.setattr(HourBuffer, "add", add_and_measure)
    return peaks


# -- acknowledgements ------------------------------------------------------------------------


async def test_messages_are_acknowledged_only_once_their_file_is_uploaded(sink: Harness) -> None:
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0))
    sink.store.gate = asyncio.Event()
    syncing = asyncio.create_task(sink.agent.sync())
    await asyncio.wait_for(sink.store.entered.wait(), 5)
    await asyncio.sleep(0.05)
    assert sink.acked == [] and sink.parquet_keys() == []
    assert await sink.ledgers.load(0) == {}
    sink.store.gate.set()
    await syncing
    assert sink.acked_offsets() == [0, 1]
    assert sink.parquet_keys() == [file_key(H0, 0, 0)]
    assert list(await sink.ledgers.load(0)) == [H0]


async def test_a_failed_upload_acknowledges_nothing(sink: Harness) -> None:
    async def broken_put(key: str, data: bytes) -> None:
        raise OSError("disk gone")

    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H1))
    sink.store.put = broken_put  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await sink.agent.sync()
    assert sink.acked == []
    assert await sink.ledgers.load(0) == {}


# -- tombstones ------------------------------------------------------------------------------


async def test_a_tombstone_for_a_buffered_row_drops_it_and_acknowledges_both(
    sink: Harness,
) -> None:
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0))
    await sink.send(tombstone(0, 2, "a", H0, H0 + 50))
    assert sink.acked_offsets() == [0]  # the tombstone waits for "b"
    assert sink.agent.buffered[0] == 1
    await sink.agent.sync()
    assert {k: ids(v) for k, v in sink.files().items()} == {file_key(H0, 0, 1): ["b"]}
    assert sink.acked_offsets() == [0, 1, 2]


async def test_a_tombstone_for_a_written_row_recreates_its_file_with_the_row_nulled(
    sink: Harness,
) -> None:
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0), row(0, 2, "c", H0))
    await sink.agent.sync()
    key = file_key(H0, 0, 0)
    before = {r["event_id"]: r for r in sink.files()[key]}
    sink.clock.now_ms += 60_000
    await sink.send(tombstone(0, 3, "b", H0, H1 + 5))
    assert sink.acked_offsets() == [0, 1, 2]  # the tombstone waits for the rewrite
    await sink.agent.sync()
    assert sink.acked_offsets() == [0, 1, 2, 3]
    assert sink.parquet_keys() == [key]
    after = {r["event_id"]: r for r in sink.files()[key]}
    rewrite_ms = sink.clock.now_ms
    assert after["b"]["event_type"] is None
    assert after["b"]["processed_time"] == format_event_time(rewrite_ms * 1000)
    assert all(r["updated_time"] == rewrite_ms for r in after.values())
    for event_id in ("a", "c"):
        assert after[event_id] == {**before[event_id], "updated_time": rewrite_ms}
    unchanged = ("event_time", "device_id", "session_id", "view_id", "event_properties")
    assert all(after["b"][c] == before["b"][c] for c in unchanged)


async def test_many_tombstones_for_one_file_recreate_it_once_per_sync(sink: Harness) -> None:
    await sink.send(*(row(0, n, f"e{n}", H0) for n in range(5)))
    await sink.agent.sync()
    await sink.send(row(0, 5, "f5", H1), row(0, 6, "f6", H1))
    await sink.agent.sync()
    first, second = file_key(H0, 0, 0), file_key(H1, 0, 5)
    sink.store.puts.clear()
    await sink.send(tombstone(0, 7, "e0", H0, H2), tombstone(0, 8, "e1", H0, H2))
    await sink.send(tombstone(0, 9, "e2", H0, H2), tombstone(0, 10, "f5", H1, H2))
    await sink.send(tombstone(0, 11, "f6", H1, H2))
    await sink.agent.sync()
    assert sorted(sink.store.puts) == sorted([first, second])
    nulled = {r["event_id"] for rows in sink.files().values() for r in rows if not r["event_type"]}
    assert nulled == {"e0", "e1", "e2", "f5", "f6"}
    sink.store.puts.clear()
    await sink.send(tombstone(0, 12, "e3", H0, H2))
    await sink.agent.sync()
    assert sink.store.puts == [first]
    assert sink.acked_offsets() == list(range(13))


async def test_append_mode_writes_a_null_row_into_the_superseding_partition(
    tmp_path: Path,
) -> None:
    sink = Harness(tmp_path, tombstone_mode="append")
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0))
    await sink.agent.sync()
    original = (sink.root / file_key(H0, 0, 0)).read_bytes()
    await sink.send(tombstone(0, 2, "a", H0, H1 + 5), row(0, 3, "c", H1 + 5))
    await sink.send(row(0, 4, "d", H1 + 6), tombstone(0, 5, "d", H1 + 6, H1 + 9))
    await sink.agent.sync()
    assert (sink.root / file_key(H0, 0, 0)).read_bytes() == original
    new_rows = {r["event_id"]: r for r in sink.files()[file_key(H1, 0, 2)]}
    assert sorted(new_rows) == ["a", "c"]  # "d" was still buffered: dropped, no null row
    null_row = new_rows["a"]
    assert null_row["event_type"] is None
    assert null_row["event_time"] == event_time("a")
    assert (null_row["device_id"], null_row["session_id"], null_row["view_id"]) == VIEW
    assert null_row["updated_time"] == sink.clock.now_ms
    assert null_row["processed_time"] == format_event_time(sink.clock.now_ms * 1000)
    assert sorted(sink.live()) == ["b", "c"]
    assert sink.acked_offsets() == list(range(6))


# -- redeliveries ----------------------------------------------------------------------------


async def test_a_row_published_again_under_its_id_is_written_once(sink: Harness) -> None:
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0), row(0, 2, "a", H0))  # buffered
    await sink.agent.sync()
    await sink.send(row(0, 3, "b", H0), row(0, 4, "c", H0))  # "b" is in a file by now
    await sink.agent.sync()
    assert sink.acked_offsets() == list(range(5))
    assert sorted(ids(r for rows in sink.files().values() for r in rows)) == ["a", "b", "c"]


async def test_a_restarted_sink_reads_the_hours_ids_back_from_its_files(tmp_path: Path) -> None:
    sink = Harness(tmp_path)
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H1))
    await sink.agent.sync()
    sink.restart()
    await sink.send(row(0, 2, "b", H1), row(0, 3, "a", H0), row(0, 4, "c", H0))
    await sink.agent.sync()
    assert sink.acked_offsets() == [2, 3, 4]
    assert sorted(sink.live()) == ["a", "b", "c"]
    assert sum(len(rows) for rows in sink.files().values()) == 3


async def test_a_tombstone_nulls_every_copy_an_older_warehouse_holds(
    sink: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as before_dedup:
        before_dedup.setattr(HourIds, "holds", lambda self, key, null: False)
        await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0))
        await sink.agent.sync()
        await sink.send(row(0, 2, "a", H0))
        await sink.agent.sync()
    assert len(sink.parquet_keys()) == 2
    sink.restart()
    await sink.send(tombstone(0, 3, "a", H0, H1 + 5))
    await sink.agent.sync()
    rows = [r for rows in sink.files().values() for r in rows]
    assert sorted((r["event_id"], r["event_type"]) for r in rows) == [
        ("a", None),
        ("a", None),
        ("b", "click"),
    ]
    assert sorted(sink.live()) == ["b"]


async def test_a_tombstone_delivered_twice_in_append_mode_writes_one_null_row(
    tmp_path: Path,
) -> None:
    sink = Harness(tmp_path, tombstone_mode="append")
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0))
    await sink.agent.sync()
    await sink.send(tombstone(0, 2, "a", H0, H1 + 5), tombstone(0, 3, "a", H0, H1 + 5))
    await sink.agent.sync()
    sink.restart()
    await sink.send(tombstone(0, 4, "a", H0, H1 + 5), row(0, 5, "a", H0))
    await sink.agent.sync()
    nulls = [r for r in sink.files()[file_key(H1, 0, 2)] if r["event_type"] is None]
    assert ids(nulls) == ["a"]
    assert sorted(sink.live()) == ["b"]
    assert sink.acked_offsets() == [4, 5]


# -- restarts --------------------------------------------------------------------------------


async def test_a_restart_after_recording_but_before_the_commit_skips_recorded_rows(
    tmp_path: Path,
) -> None:
    sink = Harness(tmp_path, sink_max_rows=4)
    hours = [H0, H0, H0, H0, H1, H0, H0, H1]
    stream = [row(0, n, f"e{n}", hour) for n, hour in enumerate(hours)]
    await sink.send(*stream[:4])  # a full file, written and recorded
    await sink.send(*stream[4:6])  # still buffered at the crash
    assert sink.parquet_keys() == [file_key(H0, 0, 0)]
    recorded = sink.files()
    sink.restart()  # nothing was committed: Kafka hands over everything again
    await sink.send(*stream)
    assert sink.acked_offsets() == [0, 1, 2, 3]  # recorded rows are skipped at once
    await sink.agent.sync()
    assert sink.files()[file_key(H0, 0, 0)] == recorded[file_key(H0, 0, 0)]
    assert sorted(sink.parquet_keys()) == sorted(
        [file_key(H0, 0, 0), file_key(H0, 0, 5), file_key(H1, 0, 4)]
    )
    assert sorted(sink.live()) == sorted(f"e{n}" for n in range(8))
    assert sink.acked_offsets() == list(range(8))


async def test_a_restart_after_uploading_but_before_recording_rewrites_the_same_file(
    sink: Harness,
) -> None:
    stream = [row(0, n, f"e{n}", H0) for n in range(4)]
    await sink.send(*stream[:3])
    await sink.agent.sync()
    await sink.ledgers.forget(0, H0)  # the upload went through, the record did not
    sink.restart()
    await sink.send(*stream)
    await sink.agent.sync()
    assert sink.parquet_keys() == [file_key(H0, 0, 0)]
    assert sorted(sink.live()) == ["e0", "e1", "e2", "e3"]
    assert sink.acked_offsets() == [0, 1, 2, 3]


async def test_an_unrecorded_file_whose_first_row_is_superseded_on_replay_is_not_kept(
    sink: Harness,
) -> None:
    """The replay drops the first row (its tombstone now comes before the flush), so its
    file starts at another offset: the file the crash left must not stay beside it."""
    stream = [
        row(0, 0, "a", H0),
        row(0, 1, "b", H0),
        row(0, 2, "c", H0),
        tombstone(0, 3, "a", H0, H1 + 1),
        row(0, 4, "a2", H1 + 1),
    ]
    await sink.send(*stream[:3])
    await sink.agent.sync()
    await sink.ledgers.forget(0, H0)
    sink.restart()
    await sink.send(*stream)
    await sink.agent.sync()
    assert sorted(sink.live()) == ["a2", "b", "c"]
    assert sink.acked_offsets() == [0, 1, 2, 3, 4]


async def test_an_unrecorded_file_after_a_dropped_first_row_is_not_kept(sink: Harness) -> None:
    """The reverse: the crashed run dropped the first row before writing; the replay
    writes it before its tombstone arrives and nulls it afterwards."""
    stream = [
        row(0, 0, "z", H1),
        row(0, 1, "a", H0),
        row(0, 2, "b", H0),
        row(0, 3, "c", H0),
        tombstone(0, 4, "a", H0, H1 + 1),
    ]
    await sink.send(*stream)
    await sink.agent.sync()
    assert file_key(H0, 0, 2) in sink.parquet_keys()
    # Crash after uploading the hour 0 file: neither file is recorded, the hour 1 one
    # is not uploaded, so nothing was committed.
    await sink.ledgers.forget(0, H0)
    await sink.ledgers.forget(0, H1)
    (sink.root / file_key(H1, 0, 0)).unlink()
    sink.restart()
    await sink.send(*stream[:4])
    await sink.agent.sync()
    await sink.send(stream[4])
    await sink.agent.sync()
    assert sorted(sink.live()) == ["b", "c", "z"]
    assert sink.acked_offsets() == [0, 1, 2, 3, 4]


async def test_a_restart_in_append_mode_writes_each_null_row_once_and_loses_no_row(
    tmp_path: Path,
) -> None:
    sink = Harness(tmp_path, tombstone_mode="append")
    stream = [
        row(0, 0, "a", H0),
        tombstone(0, 1, "a", H0, H1 + 1),
        row(0, 2, "a2", H1 + 1),
        row(0, 3, "b", H1 + 2),
    ]
    await sink.send(stream[0])
    await sink.agent.sync()
    await sink.send(*stream[1:])
    await sink.agent.sync()
    expected = sink.files()
    sink.restart()  # recorded, not committed
    await sink.send(*stream)
    await sink.agent.sync()
    assert sink.files() == expected
    assert sorted(sink.live()) == ["a2", "b"]


@pytest.mark.parametrize("mode", ["rewrite", "append"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_crashes_at_random_moments_lose_and_duplicate_nothing(
    tmp_path: Path, mode: str, seed: int
) -> None:
    """Crash after random steps, or just before or after a random upload, and replay
    from the offset Kafka committed: in the end the same live rows, each once, and true
    manifests."""
    rng = random.Random(seed)
    stream: list[LogMessage] = []
    live: set[str] = set()
    hours: dict[str, int] = {}
    for offset in range(400):
        if live and rng.random() < 0.15:
            victim = rng.choice(sorted(live))
            live.discard(victim)
            stream.append(tombstone(0, offset, victim, hours[victim], H0 + 5 * MS_PER_HOUR))
        else:
            event_id = f"e{offset}"
            hours[event_id] = H0 + rng.randrange(4) * MS_PER_HOUR + offset
            stream.append(row(0, offset, event_id, hours[event_id]))
            live.add(event_id)
    sink = Harness(tmp_path, sink_max_rows=25, tombstone_mode=mode)
    sink.clock.now_ms = H0 + 10 * MS_PER_HOUR  # every hour seals at once
    committed = crashes = 0
    for _ in range(10):
        if rng.random() < 0.6:
            sink.store.crash_at = rng.randrange(1, 6)
            sink.store.crash_stored = rng.random() < 0.5
        end = min(len(stream), committed + rng.randrange(30, 150))
        position = committed
        try:
            while position < end:
                step = rng.randrange(1, 40)
                await sink.send(*stream[position : min(end, position + step)])
                position += step
                if rng.random() < 0.3:
                    await sink.agent.sync()
        except Crash:
            crashes += 1
        committed = first_unacked(sink.acked, committed)
        sink.restart()
    assert crashes >= 2
    await sink.send(*stream[committed:])
    await sink.agent.sync()
    assert set(sink.live()) == live
    sink.check_manifests()


def first_unacked(acked: list[LogMessage], start: int) -> int:
    """The offset Kafka would commit: the first one from ``start`` not acknowledged."""
    done = {m.offset for m in acked}
    offset = start
    while offset in done:
        offset += 1
    return offset


# -- sealing ---------------------------------------------------------------------------------


async def test_a_due_hour_is_sealed_with_a_marker_and_a_manifest(sink: Harness) -> None:
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0), row(0, 2, "c", H1))
    await sink.send(row(1, 0, "d", H0))
    await sink.agent.sync()
    assert not (sink.root / manifest_key(ORG, H0)).exists()
    sink.clock.now_ms = H1 - 1
    await sink.agent.sync()
    assert not (sink.root / manifest_key(ORG, H0)).exists()
    sink.clock.now_ms = H1
    await sink.agent.sync()
    prefix = "fullstory_o-unit/events/ingested_time=2024-01-01 00:00:00/"
    assert sink.json(seal_marker_key(ORG, H0, TOPIC, 0)) == {
        "partition": 0,
        "files": [{"name": f"{TOPIC}+0+{0:020d}.parquet", "rows": 2}],
    }
    assert sink.json(seal_marker_key(ORG, H0, TOPIC, 1))["files"] == [
        {"name": f"{TOPIC}+1+{0:020d}.parquet", "rows": 1}
    ]
    manifest = sink.json(manifest_key(ORG, H0))
    assert manifest == {
        "partition": "ingested_time=2024-01-01 00:00:00",
        "files": [
            {"name": f"{TOPIC}+0+{0:020d}.parquet", "rows": 2},
            {"name": f"{TOPIC}+1+{0:020d}.parquet", "rows": 1},
        ],
        "rows": 3,
    }
    assert all(sink.store.root.joinpath(prefix, f["name"]).exists() for f in manifest["files"])
    assert not (sink.root / manifest_key(ORG, H1)).exists()


async def test_lateness_delays_the_seal(tmp_path: Path) -> None:
    sink = Harness(tmp_path, allowed_lateness_s=600)
    await sink.send(row(0, 0, "a", H0))
    sink.clock.now_ms = H1 + 599_999
    await sink.agent.sync()
    assert not (sink.root / manifest_key(ORG, H0)).exists()
    sink.clock.now_ms = H1 + 600_000
    await sink.agent.sync()
    assert sink.json(manifest_key(ORG, H0))["rows"] == 1


async def test_a_row_for_a_sealed_hour_seals_it_again(sink: Harness) -> None:
    sink.clock.now_ms = H2
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0))
    await sink.agent.sync()
    assert sink.json(manifest_key(ORG, H0))["rows"] == 2
    await sink.send(row(0, 2, "late", H0 + 10))
    await sink.agent.sync()
    files = [
        {"name": f"{TOPIC}+0+{0:020d}.parquet", "rows": 2},
        {"name": f"{TOPIC}+0+{2:020d}.parquet", "rows": 1},
    ]
    assert sink.json(seal_marker_key(ORG, H0, TOPIC, 0))["files"] == files
    assert sink.json(manifest_key(ORG, H0)) == {
        "partition": "ingested_time=2024-01-01 00:00:00",
        "files": files,
        "rows": 3,
    }


@pytest.mark.parametrize(
    ("crash_at", "stored"),
    [(1, True), (2, False), (2, True), (3, False), (3, True)],
    ids=["file", "before-marker", "marker", "before-manifest", "manifest"],
)
async def test_a_crash_while_sealing_an_hour_again_is_repaired_after_the_restart(
    sink: Harness, crash_at: int, stored: bool
) -> None:
    """Puts for a late row: its file, the hour's marker, the manifest; a crash anywhere."""
    sink.clock.now_ms = H2
    stream = [row(0, 0, "a", H0), row(0, 1, "late", H0 + 1)]
    await sink.send(stream[0])
    await sink.agent.sync()
    sink.store.crash_at, sink.store.crash_stored = crash_at, stored
    with pytest.raises(Crash):
        await sink.send(stream[1])
        await sink.agent.sync()
    sink.restart()
    await sink.send(*stream[1:])
    await sink.agent.sync()
    sink.check_manifests()
    assert sink.json(manifest_key(ORG, H0))["rows"] == 2


async def test_a_row_for_an_hour_sealed_long_ago_keeps_its_files_in_the_manifest(
    tmp_path: Path,
) -> None:
    """Hours out of every tombstone's reach leave the ledger; a row may still come."""
    sink = Harness(tmp_path, view_ttl_s=600)
    sink.clock.now_ms = H0 + 10 * MS_PER_HOUR
    await sink.send(row(0, 0, "a", H0), row(0, 1, "b", H0))
    await sink.agent.sync()
    await sink.send(row(0, 2, "new", H0 + 5 * MS_PER_HOUR))
    await sink.agent.sync()
    assert H0 not in await sink.ledgers.load(0)
    await sink.send(row(0, 3, "late", H0 + 10))
    await sink.agent.sync()
    manifest = sink.json(manifest_key(ORG, H0))
    assert manifest["files"] == [
        {"name": f"{TOPIC}+0+{0:020d}.parquet", "rows": 2},
        {"name": f"{TOPIC}+0+{3:020d}.parquet", "rows": 1},
    ]
    assert manifest["rows"] == 3
    sink.check_manifests()
