"""``fsstream replay``: rebuild a warehouse from the compacted events topic.

The topic holds the latest state of every event id, so reading it from the beginning
through the sink's own logic gives the same live rows as the original warehouse. File
names depend only on (topic, partition, first offset), so running it again over the
same prefix overwrites the same files with the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
        reading = await kafka_clients.read_from_beginning(consumer, settings.topic_events)
        async for batch in reading.batches(timeout_ms=1000):
            tombstones += sum(record.value is None for record in batch)
            await sink.process(batch)
            records += len(batch)
            if progress is not None:
                progress(await reading.offsets_read(), reading.total)
        await sink.sync()
        for sink_partition in sink.partitions.values():
            for ledger in sink_partition.ledgers.values():
                written["files"] += len(ledger.files)
                written["rows"] += sum(f.rows for f in ledger.files)
    finally:
        await consumer.stop()
        await store.close()
    return ReplayResult(records, tombstones, written["files"], written["rows"])
