"""The definitions follower without a broker: catching up, following live, deleting and
refusing, with the definitions topic served by a fake consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import generate_latest

from fsstream import metrics
from fsstream.contract import codec
from fsstream.core.enrich import Catalog
from fsstream.devtools.processes import metric_value
from fsstream.infra import definitions_follower, kafka_clients
from fsstream.infra.definitions_follower import DefinitionsFollower
from fsstream.settings import Settings
from tests.unit.core.enrich.test_catalog import BUTTON, definition, element, page

TOPIC = "definitions-follower"


def record(
    partition: int, offset: int, key: bytes | str | None, value: dict[str, Any] | bytes | None
) -> ConsumerRecord[bytes, bytes]:
    """A definitions-topic record stamped ``1000 * (offset + 1)`` ms."""
    data = codec.encode(codec.DEFINITION, value) if isinstance(value, dict) else value
    key_bytes = key.encode() if isinstance(key, str) else key
    return ConsumerRecord(
        TOPIC, partition, offset, 1000 * (offset + 1), 0, key_bytes, data, None, 0, 0, []
    )


class TopicConsumer:
    """The definitions topic as the follower's group-less consumer sees it: each fetch
    returns at most one record per partition; records appended later are fetched live."""

    def __init__(self, partitions: dict[int, list[ConsumerRecord[bytes, bytes]]]) -> None:
        self.log = partitions
        self.positions = dict.fromkeys(partitions, 0)
        self.assigned: list[TopicPartition] = []
        self.stopped = False
        self._client = SimpleNamespace(force_metadata_update=self._no_op)

    async def _no_op(self) -> None:
        return None

    def partitions_for_topic(self, topic: str) -> set[int]:
        assert topic == TOPIC
        return set(self.log)

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = tps

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp.partition] = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp.partition] = offset

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.log[tp.partition]) for tp in tps}

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int
    ) -> dict[TopicPartition, list[Any]]:
        wanted = {tp.partition for tp in tps} or set(self.log)
        fetched: dict[TopicPartition, list[Any]] = {}
        for number, records in self.log.items():
            if number not in wanted:
                continue
            position = self.positions[number]
            if position < len(records):
                fetched[TopicPartition(TOPIC, number)] = [records[position]]
                self.positions[number] = position + 1
        if not fetched:
            await asyncio.sleep(0.005)
        return fetched

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp.partition]

    async def stop(self) -> None:
        self.stopped = True


def counted() -> tuple[float, float]:
    """(applied, refused) definition records, as the worker's metrics page shows them."""
    text = generate_latest(metrics.REGISTRY).decode()
    return (
        metric_value(text, "fsstream_definitions_applied_total"),
        metric_value(text, "fsstream_definitions_refused_total"),
    )


@pytest.fixture
def serve_topic(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Make the follower read ``partitions`` instead of a broker's topic."""

    def serve(partitions: dict[int, list[ConsumerRecord[bytes, bytes]]]) -> TopicConsumer:
        consumer = TopicConsumer(partitions)

        async def start(started: TopicConsumer) -> TopicConsumer:
            return started

        fake = SimpleNamespace(
            consumer=lambda settings, **_: consumer,
            start=start,
            read_from_beginning=kafka_clients.read_from_beginning,
        )
        monkeypatch.setattr(definitions_follower, "kafka_clients", fake)
        return consumer

    yield serve


async def follow(follower: DefinitionsFollower) -> asyncio.Task[None]:
    task = asyncio.create_task(follower.run())
    await asyncio.wait_for(follower.caught_up.wait(), timeout=5)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_caught_up_only_once_every_partition_is_read_to_its_end_at_start(
    serve_topic: Any,
) -> None:
    consumer = serve_topic(
        {
            0: [
                record(0, 0, "element:e1", element("e1", "button")),
                record(0, 1, "element:e1", element("e1", "form button")),
                record(0, 2, "element:e2", element("e2", "a")),
            ],
            1: [record(1, 0, "page:p1", page("p1", "/checkout"))],
            2: [],
        }
    )
    follower = DefinitionsFollower(Settings(topic_definitions=TOPIC), Catalog())
    caught_up_when_applied: list[bool] = []
    follower.listeners.append(lambda _: caught_up_when_applied.append(follower.caught_up.is_set()))
    applied, refused = counted()
    task = await follow(follower)
    try:
        assert caught_up_when_applied == [False] * 4
        assert sorted(tp.partition for tp in consumer.assigned) == [0, 1, 2]
        catalog = follower.catalog
        assert [d.id for d in catalog.current()] == ["e1", "e2", "p1"]
        assert catalog.matcher_at(1000).elements.match(BUTTON) == ("e1",)
        assert catalog.matcher_at(3000).elements.match(BUTTON) == ("e1",)
        assert catalog.matcher_at(3000).elements.match("body > a") == ("e2",)
        assert catalog.matcher_at(3000).pages.match({"full_url": "https://x.com/checkout"}) == "p1"
        assert counted() == (applied + 4, refused)

        # Followed live: a record appended later is applied without a restart.
        consumer.log[2].append(record(2, 0, "element:e3", element("e3", ".btn")))
        for _ in range(200):
            if len(caught_up_when_applied) == 5:
                break
            await asyncio.sleep(0.01)
        assert caught_up_when_applied == [False] * 4 + [True]
        assert catalog.matcher_at(3000).elements.match(BUTTON) == ("e3", "e1")
    finally:
        await stop(task)
    assert consumer.stopped


async def test_an_empty_topic_is_caught_up_at_once(serve_topic: Any) -> None:
    serve_topic({0: [], 1: []})
    follower = DefinitionsFollower(Settings(topic_definitions=TOPIC), Catalog())
    task = await follow(follower)
    await stop(task)
    assert follower.catalog.current() == [] and follower.catalog.high_water_ms is None


async def test_a_null_value_deletes_the_definition_from_its_timestamp_on(
    serve_topic: Any,
) -> None:
    serve_topic(
        {
            0: [
                record(0, 0, "page:p1", page("p1", "/checkout")),
                record(0, 1, "page:p1", None),
                record(0, 2, "page:p2", page("p2", "/checkout")),
            ]
        }
    )
    follower = DefinitionsFollower(Settings(topic_definitions=TOPIC), Catalog())
    applied, refused = counted()
    await stop(await follow(follower))
    url = {"full_url": "https://x.com/checkout"}
    catalog = follower.catalog
    assert catalog.matcher_at(1999).pages.match(url) == "p1"
    assert catalog.matcher_at(2000).pages.match(url) is None
    assert catalog.matcher_at(3000).pages.match(url) == "p2"
    assert [d.id for d in catalog.current()] == ["p2"]
    assert counted() == (applied + 3, refused)


async def test_bad_definitions_are_refused_counted_and_skipped(serve_topic: Any) -> None:
    deep = ":is(" * 241 + "a" + ")" * 241
    serve_topic(
        {
            0: [
                record(0, 0, "element:ok", element("ok", "button")),
                record(0, 1, "element:deep", definition("element", "deep", {"selector": deep})),
                record(0, 2, "element:ok2", element("other", "a")),
                record(0, 3, "widget:w1", element("w1", "a")),
                record(0, 4, b"element:\xff", element("x", "a")),
                record(0, 5, "element:garbage", b"\x00not avro"),
                record(0, 6, "page:p1", page("p1", "/a")),
                record(0, 7, "page:p2", page("p2", "/a/")),
            ]
        }
    )
    follower = DefinitionsFollower(Settings(topic_definitions=TOPIC), Catalog())
    seen: list[int] = []
    follower.listeners.append(lambda r: seen.append(r.offset))
    applied, refused = counted()
    await stop(await follow(follower))
    assert counted() == (applied + 2, refused + 6)
    assert seen == list(range(8))  # refused records reach the listeners too
    assert [d.id for d in follower.catalog.current()] == ["ok", "p1"]


def test_an_unexpected_error_is_refused_and_logged_and_the_follower_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    follower = DefinitionsFollower(Settings(), Catalog())
    seen: list[int] = []
    follower.listeners.append(lambda r: seen.append(r.offset))
    applied, refused = counted()

    def explode(*_: Any) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(follower.catalog, "apply_record", explode)
        follower.apply(record(0, 1, "element:x", element("x", "a")))
    assert counted() == (applied, refused + 1)
    assert "element:x" in caplog.text and "0/1" in caplog.text and "boom" in caplog.text

    follower.apply(record(0, 2, "element:ok", element("ok", "a")))
    assert counted() == (applied + 1, refused + 1)
    assert [d.id for d in follower.catalog.current()] == ["ok"]
    assert seen == [1, 2]
