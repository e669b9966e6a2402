"""The reorder worker's timers and rebalance callbacks, on partitions in every early state.

A timer or callback that raises on a partition just assigned (nothing fetched yet, no
state, no producer) used to stop the whole worker; these run without a broker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from fsstream import metrics
from fsstream.reorder.worker import ReorderWorker
from fsstream.settings import Settings


class FreshConsumer:
    """A group consumer right after an assignment: partitions, but no fetch yet."""

    def __init__(self, tps: list[TopicPartition]) -> None:
        self.tps = tps
        self.paused: list[TopicPartition] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.tps)

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        raise AssertionError("no position is asked for before anything was fetched")

    def pause(self, tp: TopicPartition) -> None:
        self.paused.append(tp)


@pytest.fixture
def worker(tmp_path: Path) -> ReorderWorker:
    settings = Settings(data_dir=tmp_path, topic_raw="raw-timers", app_id="fsstream-timers")
    return ReorderWorker(settings)


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
