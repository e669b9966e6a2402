"""Changelog-backed state with explicit partitions, on top of faust's RocksDB tables.

faust tables pick the partition from the event being processed; fsstream writes
state after a whole batch is published, and from timers, so it names the partition
itself. ``PartitionedTable`` is the one place that reaches under faust's table API
(its RocksDB store's per-partition databases); faust still owns the changelog topic,
recovery after a rebalance or crash, and standby replicas.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

from fsstream.core.reorder import ViewState

_FAUST_OFFSET_KEY = b"__faust\0offset__"
STREAM_TIME_KEY = b"\0stream-time"


class PartitionStore(Protocol):
    """Bytes keys and values, read and written per partition."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def put(self, partition: int, key: bytes, value: bytes) -> None: ...

    def delete(self, partition: int, key: bytes) -> None: ...

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...


class PartitionedTable:
    """A PartitionStore on one faust table's RocksDB store and changelog."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = self._db(partition).get(key)
        return value

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.table.send_changelog(
            partition, key, value, key_serializer="raw", value_serializer="raw"
        )
        self._db(partition).put(key, value)

    def delete(self, partition: int, key: bytes) -> None:
        self.table.send_changelog(
            partition, key, None, key_serializer="raw", value_serializer="raw"
        )
        self._db(partition).delete(key)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every entry of the partition, faust's own bookkeeping key excluded."""
        db = self._db(partition)
        for key, value in db.items():
            if key != _FAUST_OFFSET_KEY:
                yield key, value


class TableViewStore:
    """The ViewStore of one partition: a bounded cache over the table, written per batch.

    ``put`` only marks a view changed; ``flush`` writes the changed views once the
    batch's rows are published, so stored state never runs ahead of the output topic.
    """

    def __init__(self, table: PartitionStore, partition: int, cache_size: int) -> None:
        self.table = table
        self.partition = partition
        self.cache_size = cache_size
        self._cache: OrderedDict[str, ViewState] = OrderedDict()
        self._dirty: dict[str, ViewState | None] = {}

    def get(self, key: str) -> ViewState | None:
        if key in self._dirty:
            return self._dirty[key]
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            return state
        data = self.table.get(self.partition, key.encode())
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

    @property
    def pending(self) -> int:
        return len(self._dirty)

    def flush(self, stream_time_ms: int) -> int:
        """Write the changed views and the partition's stream time; return how many views."""
        written = len(self._dirty)
        for key, state in self._dirty.items():
            if state is None:
                self.table.delete(self.partition, key.encode())
            else:
                self.table.put(self.partition, key.encode(), state.encode())
        self._dirty.clear()
        self.table.put(self.partition, STREAM_TIME_KEY, str(stream_time_ms).encode())
        return written

    def stream_time(self) -> int:
        """The partition's stored stream time (0 before its first batch)."""
        value = self.table.get(self.partition, STREAM_TIME_KEY)
        return int(value) if value is not None else 0

    def stored(self) -> Iterator[tuple[str, ViewState]]:
        """Every stored view of the partition, one at a time, to rebuild indexes from."""
        for key, value in self.table.items(self.partition):
            if key != STREAM_TIME_KEY:
                yield key.decode(), ViewState.decode(value)
