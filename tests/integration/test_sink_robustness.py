"""The sink worker under crashes, S3 faults and a small memory budget, on the real broker.

S3 traffic of the sink goes through a fault-injecting proxy in front of moto; the test
reads the bucket, the events topic and the sink group's committed offsets directly.
Throughout, a committed offset promises that every row before it is in the warehouse.
"""

from __future__ import annotations

import asyncio
import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow.parquet as pq
import pytest

from fsstream.contract.topics import create_topics
from fsstream.core.timefmt import parse_rfc3339_us
from fsstream.devtools.localkafka import free_port
from fsstream.devtools.processes import WorkerProcess
from fsstream.infra import kafka_clients
from fsstream.settings import Settings
from tests.faulty_s3 import Fault, FaultyProxy
from tests.scenario import (
    RawRecord,
    expected_rows,
    produce,
    read_all,
    running_pipeline,
    traffic_day,
)
from tests.warehouse import (
    FILE_PATH,
    Warehouse,
    read_warehouse,
    wait_for_warehouse,
    warehouse_settings,
)

DAY_START_MS = parse_rfc3339_us("2024-01-01T00:00:00Z") // 1000


class SinkS3:
    """Decides the fate of each S3 request of the sink: an outage, or a trap set for its
    next upload of an events file, which says when it has sprung and on which path."""

    OUTAGE = (
        Fault("status", 503, "SlowDown"),
        Fault("drop"),
        Fault("status", 500, "InternalError"),
        Fault("lost_answer"),
    )

    def __init__(self) -> None:
        self.outage = threading.Event()
        self.outage_requests = 0
        self._trap: Fault | None = None
        self._lock = threading.Lock()
        self.trapped = ""

    def trap(self, kind: Any, delay_s: float = 1.5) -> threading.Event:
        sprung = threading.Event()
        with self._lock:
            self._trap = Fault(kind, delay_s=delay_s, signal=sprung)
        return sprung

    def __call__(self, number: int, line: str) -> Fault | None:
        if self.outage.is_set():
            self.outage_requests += 1
            return self.OUTAGE[number % len(self.OUTAGE)]
        if line.startswith("PUT ") and ".parquet" in line:
            with self._lock:
                fault, self._trap = self._trap, None
            if fault is not None:
                self.trapped = unquote(line.split(" ")[1])
            return fault
        return None


@pytest.fixture
def sink_s3(s3_endpoint: str) -> Iterator[tuple[SinkS3, str]]:
    rule = SinkS3()
    with FaultyProxy(s3_endpoint, rule).in_thread() as url:
        yield rule, url


def pipeline_settings(
    make_settings: Callable[..., Settings],
    s3_endpoint: str | None,
    bucket: str,
    tmp_path: Path,
    **sink_options: Any,
) -> tuple[Settings, Settings]:
    """Settings of the reorder worker and of the readers, and those of the sink."""
    kind = "local" if s3_endpoint is None else "s3"
    settings = warehouse_settings(kind, make_settings, s3_endpoint, bucket, tmp_path)
    return settings, settings.model_copy(update={"web_port": free_port(), **sink_options})


async def committed(settings: Settings) -> dict[int, int]:
    """The sink group's committed offsets on the events topic, by partition."""
    admin = kafka_clients.admin(settings)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{settings.app_id}-sink")
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.topic_events
    }


async def check_committed_rows_are_stored(settings: Settings) -> int:
    """Every row before a committed offset is in the warehouse, unless superseded since.

    Offsets are read first: the warehouse only gains what was committed. Returns how many
    committed rows were checked.
    """
    offsets = await committed(settings)
    warehouse = await read_warehouse(settings)
    stored = {row["event_id"] for row in warehouse.rows()}
    events = await read_all(settings, settings.topic_events)
    superseded = {r.key for r in events if r.value is None}
    due = [
        r
        for r in events
        if r.value is not None
        and r.offset < offsets.get(r.partition, 0)
        and r.key not in superseded
    ]
    missing = sorted(r.key.decode() for r in due if r.key.decode() not in stored)
    assert not missing, f"{len(missing)} committed rows are in no file, e.g. {missing[:3]}"
    return len(due)


async def wait_for_commits(settings: Settings, since: dict[int, int], timeout: float = 30) -> None:
    """Wait until the sink group has committed more than ``since``."""
    deadline = time.monotonic() + timeout
    while sum((await committed(settings)).values()) <= sum(since.values()):
        assert time.monotonic() < deadline, "the sink commits nothing"
        await asyncio.sleep(0.3)


async def uncommitted_rows(settings: Settings) -> int:
    """How many records of the events topic the sink has not committed yet."""
    offsets = await committed(settings)
    events = await read_all(settings, settings.topic_events)
    return sum(1 for r in events if r.offset >= offsets.get(r.partition, 0))


def settled(expected: set[str]) -> Callable[[Warehouse], bool]:
    def done(warehouse: Warehouse) -> bool:
        try:
            live = set(warehouse.live())
        except AssertionError:
            return False
        return live == expected and manifests_match(warehouse) is None

    return done


def manifests_match(warehouse: Warehouse) -> str | None:
    """None if every hour has a manifest listing exactly its files and row counts."""
    by_hour: dict[str, dict[str, int]] = {}
    for key, data in warehouse.files.items():
        match = FILE_PATH.match(key)
        assert match, key
        rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
        by_hour.setdefault(match["hour"], {})[key.rsplit("/", 1)[1]] = rows
    manifests = {
        m["partition"].removeprefix("ingested_time="): m for m in warehouse.manifests.values()
    }
    for hour, files in sorted(by_hour.items()):
        manifest = manifests.get(hour)
        if manifest is None:
            return f"no manifest for {hour}"
        listed = {f["name"]: f["rows"] for f in manifest["files"]}
        if listed != files:
            wrong = sorted(set(listed.items()) ^ set(files.items()))
            return f"the manifest of {hour} is wrong about {wrong} (in it, or in the hour)"
        if manifest["rows"] != sum(files.values()):
            return f"the manifest of {hour} counts {manifest['rows']} rows"
    return None


def chunked(records: list[RawRecord], parts: int) -> list[list[RawRecord]]:
    size = -(-len(records) // parts)
    return [records[i : i + size] for i in range(0, len(records), size)]


async def started(settings: Settings, role: str, log: Path) -> WorkerProcess:
    worker = WorkerProcess(settings, role, log).start()
    await asyncio.to_thread(worker.wait_assigned)
    return worker


async def test_sink_killed_during_uploads_and_before_commits_loses_and_duplicates_nothing(
    make_settings: Callable[..., Settings],
    s3_endpoint: str,
    sink_s3: tuple[SinkS3, str],
    unique: str,
    tmp_path: Path,
) -> None:
    """SIGKILL the sink at chosen moments of an upload, restart it with its data dir."""
    rule, proxy_url = sink_s3
    settings, sink_settings = pipeline_settings(
        make_settings,
        s3_endpoint,
        f"lake-{unique}",
        tmp_path,
        s3_endpoint_url=proxy_url,
        static_member_id="sink-1",
        session_timeout_s=10.0,
    )
    await create_topics(settings)
    views, records = traffic_day(seed=8, sessions=40, day_start_ms=DAY_START_MS, hours=3)
    expected = set(expected_rows(views))
    # Kill while an upload is held before reaching S3 (it lands after the death), while
    # S3 has stored the object but the sink has no answer yet, right after an upload
    # answered (the offsets follow up to a second later), and at a random moment.
    plan: list[tuple[str, Any]] = [
        ("in flight", "stall"),
        ("stored, unanswered", "held_answer"),
        ("answered, not committed", "answered"),
        ("at random", None),
    ]
    rng = random.Random(8)
    chunks = chunked(records, len(plan) + 1)
    log = tmp_path / "sink.log"
    kills: list[str] = []
    checked = 0
    reorder = await started(settings, "reorder", tmp_path / "reorder.log")
    sink = await started(sink_settings, "sink", log)
    try:
        for (moment, kind), chunk in zip(plan, chunks, strict=False):
            # Half the chunk goes in and gets committed, then the other half meets the trap.
            half = len(chunk) // 2
            await produce(settings, chunk[:half])
            await wait_for_commits(settings, since=await committed(settings))
            sprung = rule.trap(kind) if kind is not None else None
            await produce(settings, chunk[half:])
            if sprung is not None:
                assert await asyncio.to_thread(sprung.wait, 60), f"no upload to kill {moment}"
            else:
                await asyncio.sleep(rng.uniform(0.2, 2.0))
            sink.kill()
            kills.append(moment)
            if kind in ("stall", "held_answer"):  # S3 has (or gets) a file nobody recorded
                key = rule.trapped.split("/lake/", 1)[1]
                bucket = await wait_for_warehouse(settings, lambda w, k=key: k in w.files, 10)
                assert key in bucket.files
            checked += await check_committed_rows_are_stored(settings)
            sink = await started(sink_settings, "sink", log)
        await produce(settings, chunks[-1])
        warehouse = await wait_for_warehouse(settings, settled(expected), timeout=120)
        assert sink.alive()
    finally:
        sink.stop()
        reorder.stop()
    assert len(kills) >= 3 and checked > 0
    assert set(warehouse.live()) == expected  # live() fails on a duplicate live row
    assert manifests_match(warehouse) is None
    events = await read_all(settings, settings.topic_events)
    assert warehouse.nulled() <= {r.key.decode() for r in events if r.value is None}


async def test_s3_outage_pauses_the_sink_which_then_catches_up_with_nothing_lost(
    make_settings: Callable[..., Settings],
    s3_endpoint: str,
    sink_s3: tuple[SinkS3, str],
    unique: str,
    tmp_path: Path,
) -> None:
    """For several seconds every S3 request fails: 503s, 500s, dropped connections."""
    rule, proxy_url = sink_s3
    settings, sink_settings = pipeline_settings(
        make_settings, s3_endpoint, f"lake-{unique}", tmp_path, s3_endpoint_url=proxy_url
    )
    await create_topics(settings)
    views, records = traffic_day(seed=9, sessions=30, day_start_ms=DAY_START_MS, hours=3)
    expected = set(expected_rows(views))
    first, during, after = chunked(records, 3)
    async with running_pipeline(settings, tmp_path, sink_settings=sink_settings) as (_, sink):
        await produce(settings, first)
        await wait_for_warehouse(settings, lambda w: len(w.files) > 0, timeout=60)
        rule.outage.set()
        try:
            await produce(settings, during)
            for _ in range(3):
                await asyncio.sleep(2.0)
                await check_committed_rows_are_stored(settings)
            # The rows that came meanwhile wait, uncommitted, for S3 to come back.
            held = await uncommitted_rows(settings)
            assert held > 0
            assert rule.outage_requests > 0
            assert sink.alive()
        finally:
            rule.outage.clear()
        await produce(settings, after)
        warehouse = await wait_for_warehouse(settings, settled(expected), timeout=120)
        retries = sink.metric("fsstream_s3_retries_total")
        assert sink.alive()
    assert set(warehouse.live()) == expected
    assert manifests_match(warehouse) is None
    assert retries > 0


async def test_buffered_bytes_stay_within_a_small_budget_over_many_hours_and_views(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A whole day at once keeps every hour of every partition open in the sink."""
    budget = 40_000
    settings, sink_settings = pipeline_settings(
        make_settings,
        None,
        "",
        tmp_path,
        sink_max_bytes=budget,
        sink_flush_interval_s=5.0,  # the budget, not the timer, writes most files
    )
    await create_topics(settings)
    views, records = traffic_day(seed=10, sessions=60, day_start_ms=DAY_START_MS)
    expected = set(expected_rows(views))
    samples: list[float] = []
    async with running_pipeline(settings, tmp_path, sink_settings=sink_settings) as (_, sink):
        stop = threading.Event()
        scraper = threading.Thread(target=scrape, args=(sink, samples, stop), daemon=True)
        scraper.start()
        try:
            await produce(settings, records)  # the whole day at once: every hour open
            warehouse = await wait_for_warehouse(settings, settled(expected), timeout=120)
            peak = sink.metric("fsstream_sink_buffered_bytes_peak")
        finally:
            stop.set()
            scraper.join(10)
    events = await read_all(settings, settings.topic_events)
    largest = max(len(r.value) for r in events if r.value is not None)
    assert set(warehouse.live()) == expected
    hours = {FILE_PATH.match(key)["hour"] for key in warehouse.files}  # type: ignore[index]
    assert len(hours) >= 20
    assert len(samples) > 20
    assert max(samples) <= budget + largest
    assert budget / 2 < peak <= budget + largest  # reached, never passed by more than a row


def scrape(sink: WorkerProcess, samples: list[float], stop: threading.Event) -> None:
    """Sample the sink's buffered bytes until told to stop."""
    while not stop.wait(0.05):
        try:
            samples.append(sink.metric("fsstream_sink_buffered_bytes"))
        except OSError:
            time.sleep(0.1)
