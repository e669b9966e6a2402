"""``fsstream replay``: rebuild a warehouse from the compacted events topic.

The topic holds the latest state of every event id, so reading it from the beginning
through the sink's own logic gives the same live rows as the original warehouse. File
names depend only on (topic, partition, first offset), so running it again over the
same prefix overwrites the same files with the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fsstream.infra import kafka_clients
from fsstream.infra.object_store import open_store
from fsstream.settings import Settings
from fsstream.sink.agent import SinkAgent
from fsstream.sink.ledger import MemoryLedgers


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay read and wrote."""

    records: int
    tombstones: int
    files: int
    rows: int


async def replay(
    settings: Settings, progress: Callable[[int, int], None] | None = None
) -> ReplayResult:
    """Read the events topic to its current end and write every row into the warehouse."""
    store = open_store(settings)
    written = {"files": 0, "rows": 0}
    sink = SinkAgent(settings, store, MemoryLedgers(), ack=lambda _message: None)
    consumer = await kafka_clients.start(kafka_clients.consumer(settings, max_poll_records=5000))
    records = tombstones = 0
    try:
        tps = await kafka_clients.assign_from_beginning(consumer, settings.topic_events)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        total = sum(ends[tp] - starts[tp] for tp in tps)
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        done = 0
        while remaining:
            batch: list[Any] = []
            fetched = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, messages in fetched.items():
                for m in messages:
                    if m.offset < ends[tp]:
                        batch.append(m)
                        tombstones += m.value is None
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if batch:
                await sink.process(batch)
                records += len(batch)
                done = 0
                for tp in tps:
                    done += min(await consumer.position(tp), ends[tp]) - starts[tp]
                if progress is not None:
                    progress(done, total)
        await sink.sync()
        for sink_partition in sink.partitions.values():
            for ledger in sink_partition.ledgers.values():
                written["files"] += len(ledger.files)
                written["rows"] += sum(f.rows for f in ledger.files)
    finally:
        await consumer.stop()
        await store.close()
    return ReplayResult(records, tombstones, written["files"], written["rows"])
