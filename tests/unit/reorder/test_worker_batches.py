"""The reorder worker's transactions without a broker: per raw partition and batch, one
transaction holds the rows grouped by events partition, the dead letters, the state
changelog and the raw offset; a failed one leaves nothing behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiokafka.errors import ProducerFenced
from prometheus_client import generate_latest

from fsstream import metrics
from fsstream.contract.partitioning import partition_for
from fsstream.devtools.processes import metric_value
from fsstream.reorder.agent import OutputRecord
from fsstream.reorder.worker import send_batches
from fsstream.settings import Settings
from tests.scenario import expected_rows
from tests.unit.reorder.test_worker_timers import (
    Consumed,
    FreshConsumer,
    Producer,
    close,
    make_worker,
    own,
    traffic,
)


def events_in() -> float:
    return metric_value(generate_latest(metrics.REGISTRY).decode(), "fsstream_events_in_total")


async def test_records_are_queued_per_partition_in_order_in_full_batches() -> None:
    producer = Producer(batch_capacity=2)
    records: list[OutputRecord] = [
        OutputRecord(p, f"k{n}".encode(), f"v{n}".encode(), [])
        for n, p in enumerate([1, 0, 1, 1, 0])
    ]
    await producer.begin_transaction()
    counted = await send_batches(producer, "out", records, counted=True)
    assert producer.steps == ["begin", "batch out/1:2", "batch out/1:1", "batch out/0:2"]
    assert [count for _, count in counted] == [2, 1, 2]
    assert [(await future).offset for future, _ in counted] == [0, 2, 0]
    assert producer.open is not None
    assert [(s.partition, s.key) for s in producer.open] == [
        (1, b"k0"),
        (1, b"k2"),
        (1, b"k3"),
        (0, b"k1"),
        (0, b"k4"),
    ]


async def test_one_transaction_holds_a_batch_rows_state_and_raw_offset(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, reorder_grace_s=0.0, events_partitions=4)
    settings: Settings = worker.settings
    producer = Producer()
    try:
        owned = own(worker, 2, producer)
        now_ms = int(time.time() * 1000)
        views, records = traffic(now_ms, count=6)
        for record in records:
            record.partition = 2
        bad = Consumed(len(records), b"1:2:3", b"\x00garbage", now_ms, partition=2)
        counted_before = events_in()
        await worker._batch(2, [*records, bad])

        assert producer.steps[0] == "begin" and producer.steps[-2:] == ["offsets", "commit"]
        assert producer.offsets == [({2: len(records) + 1}, "fsstream-timers-reorder")]
        [transaction] = producer.committed
        rows = [s for s in transaction if s.topic == settings.topic_events]
        assert {s.key.decode() for s in rows if s.key} == set(expected_rows(views))
        for row in rows:
            view = dict(row.headers)["fs-view"].decode()
            assert row.partition == partition_for(view, settings.events_partitions)
        [dead] = [s for s in transaction if s.topic == settings.topic_dlq]
        assert (dead.partition, dead.key, dead.value) == (0, b"1:2:3", b"\x00garbage")
        changelog = [s for s in transaction if s.topic == settings.topic_views_changelog]
        assert changelog and {s.partition for s in changelog} == {2}
        assert {s.key for s in changelog} >= {v.key.encode() for v in views}
        assert len(transaction) == len(rows) + 1 + len(changelog)

        assert owned.next_offset == len(records) + 1
        assert events_in() == counted_before + sum(len(v.events) for v in views)
        # Records already taken are skipped when fetched again.
        await worker._batch(2, [*records, bad])
        assert len(producer.committed) == 1
    finally:
        close(worker)


@pytest.mark.parametrize("step", ["begin", "batch events-timers", "offsets", "commit"])
async def test_a_failed_transaction_is_aborted_and_the_batch_taken_again(
    tmp_path: Path, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_worker(tmp_path, reorder_grace_s=0.0, topic_events="events-timers")
    consumer = FreshConsumer([])
    worker.consumer = consumer  # type: ignore[assignment]
    producer = Producer()
    monkeypatch.setattr("fsstream.reorder.worker.asyncio.sleep", _no_sleep)
    try:
        owned = own(worker, 0, producer)
        now_ms = int(time.time() * 1000)
        views, records = traffic(now_ms)
        producer.fail = step
        counted_before = events_in()
        await worker._batch(0, records)
        assert producer.committed == [] and producer.steps[-1] == "abort"
        assert owned.next_offset == 0 and consumer.seeks == [(0, 0)]
        assert events_in() == counted_before
        assert owned.order.reorderer.stream_time_ms < now_ms  # the state went back too

        await worker._batch(0, records)  # fetched again after the seek
        [transaction] = producer.committed
        rows = [s for s in transaction if s.topic == "events-timers"]
        assert {s.key.decode() for s in rows if s.key} == set(expected_rows(views))
        assert owned.next_offset == len(records)
        assert events_in() == counted_before + sum(len(v.events) for v in views)
    finally:
        close(worker)


async def test_a_fenced_batch_gives_the_partition_up(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, reorder_grace_s=0.0)
    consumer = FreshConsumer([])
    worker.consumer = consumer  # type: ignore[assignment]
    producer = Producer()
    owned = own(worker, 1, producer)
    _, records = traffic(int(time.time() * 1000))
    producer.fail, producer.error = "commit", ProducerFenced()
    await worker._batch(1, records)
    assert worker.owned == {} and producer.committed == []
    assert "stop" in producer.steps
    assert [tp.partition for tp in consumer.paused] == [1]
    assert owned.next_offset == 0


async def _no_sleep(_: float) -> None:
    return None
