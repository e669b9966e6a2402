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

from aiokafka import TopicPartition

from fsstream import kafka_clients
from fsstream.agents.sink import SinkAgent
from fsstream.settings import Settings
from fsstream.state import MemoryPartitions
from fsstream.store import open_store


@dataclass(slots=True)
class LogMessage:
    """A consumed record, shaped like the faust messages the sink reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def incref(self) -> None:
        """Nothing to acknowledge: a replay commits no offsets."""


@dataclass(slots=True)
class LogEvent:
    """The event wrapper the sink's batch handler expects."""

    message: LogMessage


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
    sink = SinkAgent(settings, store, MemoryPartitions(), ack=lambda _message: None)
    consumer = await kafka_clients.start(kafka_clients.consumer(settings, max_poll_records=5000))
    records = tombstones = 0
    try:
        topic = settings.topic_events
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise LookupError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
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
                    if m.offset >= ends[tp]:
                        continue
                    batch.append(
                        LogEvent(
                            LogMessage(
                                m.topic, m.partition, m.offset, m.key, m.value, list(m.headers)
                            )
                        )
                    )
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
