"""View state of one raw partition: RocksDB on local disk, backed by a changelog topic.

The changelog is the truth. Every batch's state changes are sent to it inside the
batch's Kafka transaction (with the output rows and the raw offsets), and written to
the local store only once that transaction has committed, together with the changelog
position they reach (the *checkpoint*). The local store is therefore never ahead of the
committed changelog; on assignment it catches up by reading the changelog, read
committed, from its checkpoint to the end, so a restarted or rebalanced worker resumes
with exactly the state of the last committed transaction.

Keys: a view key (``device:session:view``) holds its encoded ``ViewState``; keys that
start with ``\\0`` are the partition's own: its stream time, and the time index of
compact (expired) views, by which they are deleted once past the dedup horizon. The
checkpoint is local only.
"""

from __future__ import annotations

import logging
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

from fsstream.core.reorder import ViewState

log = logging.getLogger(__name__)

STREAM_TIME_KEY = b"\0stream-time"
CHECKPOINT_KEY = b"\0checkpoint"
COMPACT_INDEX = b"\0x"
"""Prefix of ``COMPACT_INDEX + expiry ms (8 bytes, big-endian) + view key`` entries."""

Change = tuple[bytes, bytes | None]
"""A changelog record: key, value (None deletes)."""


def _items(db: Rdict, from_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """The store's entries in key order (raw mode: bytes only)."""
    items = db.items() if from_key is None else db.items(from_key=from_key)
    return cast(Iterator[tuple[bytes, bytes]], iter(items))


def _index_key(expires_ms: int, view_key: bytes) -> bytes:
    return COMPACT_INDEX + max(expires_ms, 0).to_bytes(8, "big") + view_key


class PartitionState:
    """The ``ViewStore`` of one raw partition: a bounded decoded cache over RocksDB.

    ``put`` and ``delete`` only mark a view changed; ``changes`` turns the marks into
    changelog records for the batch's transaction, ``applied`` writes them locally once
    it committed, ``discard`` forgets them when it did not.
    """

    def __init__(self, path: Path, cache_size: int, horizon_ms: int) -> None:
        self.path = path
        self.cache_size = cache_size
        self.horizon_ms = horizon_ms
        path.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path), options=Options(raw_mode=True))
        self._cache: OrderedDict[str, ViewState] = OrderedDict()
        self._dirty: dict[str, ViewState | None] = {}
        self._extra: list[Change] = []

    # -- ViewStore ------------------------------------------------------------------

    def get(self, key: str) -> ViewState | None:
        if key in self._dirty:
            return self._dirty[key]
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            return state
        data = self.db.get(key.encode())
        if data is None:
            return None
        state = ViewState.decode(data)
        self._remember(key, state)
        return state

    def put(self, key: str, state: ViewState) -> None:
        self._dirty[key] = state
        self._remember(key, state)

    def delete(self, key: str) -> None:
        self._dirty[key] = None
        self._cache.pop(key, None)

    def _remember(self, key: str, state: ViewState) -> None:
        self._cache[key] = state
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- batches --------------------------------------------------------------------

    def sweep(self, stream_time_ms: int, limit: int = 1_000) -> int:
        """Delete up to ``limit`` compact views past the dedup horizon; return how many."""
        removed = 0
        for seen, (key, _) in enumerate(_items(self.db, COMPACT_INDEX)):
            if not key.startswith(COMPACT_INDEX) or seen >= limit:
                break
            expires = int.from_bytes(key[2:10], "big")
            if expires > stream_time_ms:
                break
            self._extra.append((key, None))
            view = key[10:].decode()
            state = self.get(view)
            if (
                state is not None
                and state.compact
                and state.last_active_ms + self.horizon_ms <= stream_time_ms
            ):
                self.delete(view)
                removed += 1
        return removed

    def changes(self, stream_time_ms: int) -> list[Change]:
        """The changelog records of the batch: changed views, their index, stream time."""
        out: list[Change] = []
        for key, state in self._dirty.items():
            encoded = key.encode()
            if state is None:
                out.append((encoded, None))
                continue
            out.append((encoded, state.encode()))
            if state.compact:
                out.append((_index_key(state.last_active_ms + self.horizon_ms, encoded), b""))
        out.extend(self._extra)
        out.append((STREAM_TIME_KEY, str(stream_time_ms).encode()))
        return out

    def applied(self, changes: list[Change], checkpoint: int) -> None:
        """Write a committed batch's changes locally, with the changelog offset reached."""
        self._dirty.clear()
        self._extra.clear()
        batch = WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(CHECKPOINT_KEY, str(checkpoint).encode())
        self.db.write(batch)

    def discard(self) -> None:
        """Forget uncommitted changes and every decoded state (they may hold them)."""
        self._dirty.clear()
        self._extra.clear()
        self._cache.clear()

    # -- reading back ---------------------------------------------------------------

    @property
    def checkpoint(self) -> int:
        """The changelog offset the local store has applied up to (0: nothing)."""
        value = self.db.get(CHECKPOINT_KEY)
        return int(value) if value is not None else 0

    def stream_time(self) -> int:
        """The partition's stored stream time (0 before its first batch)."""
        value = self.db.get(STREAM_TIME_KEY)
        return int(value) if value is not None else 0

    def stored(self) -> Iterator[tuple[str, ViewState]]:
        """Every stored view, one at a time, to rebuild the reorderer's indexes from."""
        for key, value in _items(self.db):
            if not key.startswith(b"\0"):
                yield key.decode(), ViewState.decode(value)

    def close(self) -> None:
        self.db.close()

    def wipe(self) -> None:
        """Drop the local store entirely (it is rebuilt from the changelog)."""
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(self.path), options=Options(raw_mode=True))
        self._cache.clear()


async def catch_up(
    consumer: AIOKafkaConsumer, topic: str, partition: int, state: PartitionState
) -> int:
    """Apply the committed changelog records past the local checkpoint; return how many.

    ``consumer`` is a group-less read-committed consumer. Its end offset is the last
    stable offset, so a transaction still open (a fenced owner's, being aborted) is waited
    out rather than read. A checkpoint outside the log (the topic was recreated, or
    retention removed records the store never saw) rebuilds the store from the start.
    """
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    start = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    checkpoint = state.checkpoint
    if checkpoint > end or (checkpoint < start and checkpoint > 0) or (checkpoint == 0 and start):
        log.info(
            "view state of partition %d: checkpoint %d outside the changelog [%d, %d], rebuilding",
            partition,
            checkpoint,
            start,
            end,
        )
        state.wipe()
        checkpoint = start
    if checkpoint >= end:
        return 0
    consumer.seek(tp, checkpoint)
    applied = 0
    position = checkpoint
    while position < end:
        fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await consumer.getmany(
            tp, timeout_ms=1_000, max_records=10_000
        )
        batch = WriteBatch(raw_mode=True)
        for record in fetched.get(tp, []):
            if record.value is None:
                batch.delete(record.key)
            else:
                batch.put(record.key, record.value)
            applied += 1
        position = await consumer.position(tp)
        batch.put(CHECKPOINT_KEY, str(position).encode())
        state.db.write(batch)
    state.discard()
    return applied
