"""The reorder worker's timers and rebalance callbacks without a broker: on partitions in
every early state, and the heartbeats that release what quiet partitions hold.

A timer or callback that raises on a partition just assigned (nothing fetched yet, no
state, no producer) used to stop the whole worker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced

from fsstream import metrics
from fsstream.contract.wire import HEARTBEAT_HEADER
from fsstream.reorder.agent import HEARTBEAT_VALUE, heartbeat_headers, is_heartbeat
from fsstream.reorder.state import PartitionState
from fsstream.reorder.worker import OwnedPartition, ReorderWorker, heartbeat_gap_s
from fsstream.settings import Settings
from tests.scenario import RawRecord, View, expected_rows, make_views


class FreshConsumer:
    """A group consumer right after an assignment: partitions, but no fetch yet."""

    def __init__(self, tps: list[TopicPartition]) -> None:
        self.tps = tps
        self.paused: list[TopicPartition] = []
        self.seeks: list[tuple[int, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.tps)

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        raise AssertionError("no position is asked for before anything was fetched")

    def pause(self, tp: TopicPartition) -> None:
        self.paused.append(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))


@dataclass
class Consumed:
    """A raw-topic record as the worker's consumer hands it over."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = "raw-timers"
    partition: int = 0


class Batch:
    """A producer batch that holds ``capacity`` records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None, list[Any]]] = []

    def append(
        self, *, key: bytes | None, value: bytes | None, timestamp: None, headers: list[Any]
    ) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, headers))
        return object()


@dataclass
class Sent:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[Any]
    timestamp_ms: int | None = None


class Producer:
    """A transactional producer that keeps what each transaction held, in order.

    The first step whose name starts with ``fail`` (``"commit"``, ``"batch events"``)
    raises ``error``.
    """

    def __init__(self, batch_capacity: int = 1_000) -> None:
        self.batch_capacity = batch_capacity
        self.steps: list[str] = []
        self.open: list[Sent] | None = None
        self.committed: list[list[Sent]] = []
        self.offsets: list[tuple[dict[int, int], str]] = []
        self.ends: dict[tuple[str, int], int] = {}
        self.fail: str | None = None
        self.error: Exception = RuntimeError("broker went away")

    def _step(self, name: str) -> None:
        self.steps.append(name)
        if self.fail is not None and name.startswith(self.fail):
            self.fail = None
            raise self.error

    async def begin_transaction(self) -> None:
        self._step("begin")
        assert self.open is None, "a transaction is already open"
        self.open = []

    def create_batch(self) -> Batch:
        return Batch(self.batch_capacity)

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        self._step(f"batch {topic}/{partition}:{len(batch.records)}")
        assert self.open is not None, "sent outside a transaction"
        base = self.ends.get((topic, partition), 0)
        self.ends[(topic, partition)] = base + len(batch.records)
        self.open.extend(Sent(topic, partition, *record) for record in batch.records)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=base))
        return future

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None,
        *,
        partition: int,
        timestamp_ms: int,
        headers: list[Any],
    ) -> None:
        self._step(f"send {topic}/{partition}")
        assert self.open is not None, "sent outside a transaction"
        self.open.append(Sent(topic, partition, None, value, headers, timestamp_ms))

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group_id: str
    ) -> None:
        self._step("offsets")
        self.offsets.append(({tp.partition: o for tp, o in offsets.items()}, group_id))

    async def commit_transaction(self) -> None:
        self._step("commit")
        assert self.open is not None
        self.committed.append(self.open)
        self.open = None

    async def abort_transaction(self) -> None:
        self.steps.append("abort")
        self.open = None

    async def stop(self) -> None:
        self.steps.append("stop")


def make_worker(tmp_path: Path, **settings: Any) -> ReorderWorker:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "topic_raw": "raw-timers",
        "app_id": "fsstream-timers",
        **settings,
    }
    return ReorderWorker(Settings(**values))


def own(worker: ReorderWorker, number: int, producer: Producer) -> OwnedPartition:
    """Make ``worker`` own raw partition ``number`` with fresh state, writing with ``producer``."""
    settings = worker.settings
    state = PartitionState(
        settings.data_dir / "reorder" / str(number),
        settings.view_cache_size,
        settings.dedup_horizon_ms,
    )
    owned = OwnedPartition(worker.agent.new_order(number, state), producer, 0)  # type: ignore[arg-type]
    worker.owned[number] = owned
    return owned


def close(worker: ReorderWorker) -> None:
    for owned in worker.owned.values():
        owned.order.state.close()


def traffic(start_ms: int, count: int = 3, per_view: int = 4) -> tuple[list[View], list[Consumed]]:
    """Views of events a minute before ``start_ms`` and one raw record per view."""
    views = make_views(random.Random(7), count=count, per_view=per_view, start_ms=start_ms - 60_000)
    records = [
        Consumed(offset, v.key.encode(), RawRecord(v.key, start_ms, v.events).encode(), start_ms)
        for offset, v in enumerate(views)
    ]
    return views, records


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[ReorderWorker]:
    worker = make_worker(tmp_path)
    yield worker
    close(worker)


def lag_samples(topic: str) -> list[Any]:
    return [
        s
        for family in metrics.REGISTRY.collect()
        if family.name == "fsstream_consumer_lag"
        for s in family.samples
        if s.labels.get("topic") == topic
    ]


async def test_the_lag_timer_skips_partitions_with_nothing_fetched_yet(
    worker: ReorderWorker,
) -> None:
    worker.consumer = FreshConsumer([TopicPartition("raw-timers", 0)])  # type: ignore[assignment]
    await worker._lag()
    assert lag_samples("raw-timers") == []


async def test_timers_and_revocations_with_no_partition_owned_do_nothing(
    worker: ReorderWorker,
) -> None:
    await worker._lag()  # no consumer yet
    await worker._heartbeats()
    await worker.on_revoked({0, 1, 2})  # never assigned here
    assert worker.owned == {} and worker.parked == {}


async def test_a_failing_timer_tick_is_logged_and_runs_again(
    worker: ReorderWorker, caplog: pytest.LogCaptureFixture
) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 3:
            worker.stopping.set()
        raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'int'")

    await asyncio.wait_for(worker._every(0.01, tick), timeout=5)
    assert ticks == 3
    assert caplog.text.count("timer tick failed; it runs again") == 3


async def test_a_partition_whose_producer_cannot_start_stays_paused_and_unowned(
    worker: ReorderWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = FreshConsumer([])
    worker.consumer = consumer  # type: ignore[assignment]

    class Producer:
        stopped = False

        async def start(self) -> None:
            raise ConnectionError("broker unreachable")

        async def stop(self) -> None:
            Producer.stopped = True

    monkeypatch.setattr(worker, "_producer", lambda number: Producer())
    await worker.on_assigned({3})
    assert worker.owned == {}
    assert consumer.paused == [TopicPartition("raw-timers", 3)]
    assert Producer.stopped


# -- heartbeats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grace_s", "gap_s"),
    [(60.0, 0.5), (5.0, 0.5), (2.0, 0.2), (1.0, 0.1), (0.5, 0.05), (0.1, 0.05), (0.0, 0.05)],
)
def test_heartbeats_come_at_most_every_tenth_of_the_grace_and_half_a_second(
    grace_s: float, gap_s: float
) -> None:
    assert heartbeat_gap_s(grace_s) == pytest.approx(gap_s)


def test_only_exactly_what_the_worker_writes_is_a_heartbeat() -> None:
    def consumed(**changes: Any) -> Consumed:
        values: dict[str, Any] = {
            "offset": 0,
            "key": None,
            "value": HEARTBEAT_VALUE,
            "timestamp": 1,
            "headers": heartbeat_headers(),
            **changes,
        }
        return Consumed(**values)

    assert is_heartbeat(consumed())
    assert not is_heartbeat(consumed(key=b"1:2:3"))
    assert not is_heartbeat(consumed(value=b"\xc3\x01"))
    assert not is_heartbeat(consumed(value=None))
    assert not is_heartbeat(consumed(headers=[]))
    assert not is_heartbeat(consumed(headers=[(HEARTBEAT_HEADER, b"2")]))
    assert not is_heartbeat(consumed(headers=[*heartbeat_headers(), ("other", b"x")]))


async def held_partition(worker: ReorderWorker, producer: Producer) -> tuple[OwnedPartition, int]:
    """A partition whose only batch left its events held; and that batch's stream time."""
    owned = own(worker, 0, producer)
    now_ms = int(time.time() * 1000)
    _, records = traffic(now_ms)
    await worker._batch(0, records)
    reorderer = owned.order.reorderer
    assert reorderer.stream_time_ms == now_ms
    assert reorderer.next_deadline_ms == now_ms + int(worker.settings.reorder_grace_s * 1000)
    assert not [s for s in producer.committed[-1] if s.topic == worker.settings.topic_events]
    return owned, now_ms


async def test_a_quiet_partition_past_its_next_deadline_gets_one_heartbeat(
    tmp_path: Path,
) -> None:
    worker = make_worker(tmp_path, reorder_grace_s=2.0)
    producer = Producer()
    try:
        owned, stream_ms = await held_partition(worker, producer)
        owned.order.advanced_at = time.monotonic() - 1.5  # quiet for less than the grace
        await worker._heartbeats()
        assert len(producer.committed) == 1, "not due: no heartbeat"

        quiet_s = 3.0
        before = time.monotonic()
        owned.order.advanced_at = before - quiet_s
        await worker._heartbeats()
        after = time.monotonic()
        assert producer.steps[-3:] == ["begin", "send raw-timers/0", "commit"]
        [heartbeat] = producer.committed[-1]
        assert (heartbeat.partition, heartbeat.key, heartbeat.value) == (0, None, HEARTBEAT_VALUE)
        assert heartbeat.headers == heartbeat_headers()
        # Stream time moved on by the time the partition has been quiet.
        assert heartbeat.timestamp_ms is not None
        assert stream_ms + quiet_s * 1000 - 1 <= heartbeat.timestamp_ms
        assert heartbeat.timestamp_ms <= stream_ms + (quiet_s + after - before) * 1000 + 1

        # Not again before the heartbeat gap has passed.
        await worker._heartbeats()
        assert len(producer.committed) == 2
        owned.order.heartbeat_at -= heartbeat_gap_s(2.0)
        await worker._heartbeats()
        assert len(producer.committed) == 3
    finally:
        close(worker)


async def test_a_heartbeat_read_back_releases_the_held_rows(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, reorder_grace_s=2.0)
    producer = Producer()
    try:
        owned, stream_ms = await held_partition(worker, producer)
        views, _ = traffic(stream_ms)
        heartbeat = Consumed(3, None, HEARTBEAT_VALUE, stream_ms + 2_100, heartbeat_headers())
        await worker._batch(0, [heartbeat])
        rows = [s for s in producer.committed[-1] if s.topic == worker.settings.topic_events]
        assert {s.key.decode() for s in rows if s.key} == set(expected_rows(views))
        assert owned.order.reorderer.stream_time_ms == stream_ms + 2_100
        assert owned.order.reorderer.next_deadline_ms is None
        assert owned.next_offset == 4
    finally:
        close(worker)


@pytest.mark.parametrize(
    "changes",
    [
        {"key": b"1:2:3"},
        {"headers": [*heartbeat_headers(), ("other", b"x")]},
        {"headers": [(HEARTBEAT_HEADER, b"0")]},
    ],
)
async def test_a_record_with_the_heartbeat_header_that_is_not_a_heartbeat_is_data(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    worker = make_worker(tmp_path, reorder_grace_s=2.0)
    producer = Producer()
    try:
        owned, stream_ms = await held_partition(worker, producer)
        values: dict[str, Any] = {
            "offset": 3,
            "key": None,
            "value": HEARTBEAT_VALUE,
            "timestamp": stream_ms + 2_100,
            "headers": heartbeat_headers(),
            **changes,
        }
        await worker._batch(0, [Consumed(**values)])
        [dead] = [s for s in producer.committed[-1] if s.topic == worker.settings.topic_dlq]
        assert dict(dead.headers)["fs-source"] == b"raw-timers/0/3"
        # Dead-lettered data moves no stream time: what was held stays held.
        assert not [s for s in producer.committed[-1] if s.topic == worker.settings.topic_events]
        assert owned.order.reorderer.stream_time_ms == stream_ms
        assert owned.order.reorderer.next_deadline_ms is not None
        assert owned.next_offset == 4
    finally:
        close(worker)


async def test_a_forged_heartbeat_carrying_events_publishes_them(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, reorder_grace_s=0.0)
    producer = Producer()
    try:
        own(worker, 0, producer)
        now_ms = int(time.time() * 1000)
        views, [record, *_] = traffic(now_ms, count=1)
        record.headers = heartbeat_headers()
        await worker._batch(0, [record])
        rows = [s for s in producer.committed[-1] if s.topic == worker.settings.topic_events]
        assert {s.key.decode() for s in rows if s.key} == set(expected_rows(views))
    finally:
        close(worker)


async def test_a_fenced_heartbeat_gives_the_partition_up(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, reorder_grace_s=2.0)
    worker.consumer = FreshConsumer([])  # type: ignore[assignment]
    producer = Producer()
    owned, _ = await held_partition(worker, producer)
    owned.order.advanced_at = time.monotonic() - 3.0
    producer.fail, producer.error = "send raw-timers/0", ProducerFenced()
    await worker._heartbeats()
    assert worker.owned == {}
    assert "stop" in producer.steps and len(producer.committed) == 1
