"""The raw-content cache: bounded by memory, and exact when it reads records back."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

import pytest

from fsstream.contract import codec
from fsstream.core.raw import Limits, check_batch
from fsstream.core.timefmt import MS_PER_HOUR, hour_floor_ms
from fsstream.devtools.bench import bench_batches
from fsstream.reorder.content import LoggedRecord, RawContent, RawRecord

LIMITS = Limits(max_age_ms=30 * 86_400_000, max_skew_ms=86_400_000)


class ListLog:
    """A raw partition as a list of (timestamp, value, key), offsets as indexes."""

    def __init__(self, records: list[LoggedRecord]) -> None:
        self.records = records
        self.reads: list[list[int]] = []

    async def read(self, partition: int, offsets: list[int]) -> dict[int, LoggedRecord]:
        self.reads.append(offsets)
        return {o: self.records[o] for o in offsets if o < len(self.records)}


def logged(events: int, per_record: int) -> list[LoggedRecord]:
    start_ms = hour_floor_ms(time.time_ns() // 1_000_000) - 3 * MS_PER_HOUR
    batches, _ = bench_batches(events, per_record, start_ms)
    return [LoggedRecord(b.ingested_time, b.encode(), b.key.encode()) for b in batches]


def checked(entry: LoggedRecord) -> RawRecord:
    timestamp, value, key = entry
    batch = codec.decode(value, expected=codec.RAW_EVENT_BATCH)
    _, events = check_batch(batch, key.decode() if key else None, timestamp, LIMITS)
    return RawRecord(timestamp, batch["ingested_time"], events, len(value))


@pytest.mark.parametrize("per_record", [1, 20])
def test_the_cache_stays_within_its_memory_budget(per_record: int) -> None:
    records = logged(20_000, per_record)
    budget = 8 * 1024 * 1024
    gc.collect()
    tracemalloc.start()
    content = RawContent(ListLog(records), LIMITS, max_bytes=budget)
    for offset, entry in enumerate(records):
        content.put(0, offset, checked(entry))
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(content._cache) < len(records), "the budget must have evicted records"
    assert held < 1.5 * budget, f"{held / 2**20:.1f} MiB held for an 8 MiB budget"


def test_evicted_records_are_read_back_from_the_log_identical() -> None:
    records = logged(2_000, 20)
    log = ListLog(records)
    content = RawContent(log, LIMITS, max_bytes=20 * len(records[0][1]))
    for offset, entry in enumerate(records):
        content.put(0, offset, checked(entry))
    wanted = [0, 1, len(records) - 1]
    got, missing = asyncio.run(content.get(0, wanted))
    assert missing == {}
    assert log.reads == [[0, 1]], "only the evicted offsets are read back"
    assert content.misses == 2
    for offset in wanted:
        assert got[offset].events == checked(records[offset]).events
    gone = len(records) + 5
    got, missing = asyncio.run(content.get(0, [1, gone]))
    assert list(got) == [1] and "gone from the raw topic" in missing[gone]
