"""Reading a whole topic from the beginning to its end, against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer

from fsstream.contract.topics import create_topics
from fsstream.infra import kafka_clients
from fsstream.settings import Settings

PARTITIONS = 3


async def send(settings: Settings, values: list[bytes], *, partitions: list[int]) -> None:
    """``values`` sent to the raw topic, value ``i`` to partition ``partitions[i % n]``."""
    producer = kafka_clients.producer(settings)
    await producer.start()
    try:
        sent = [
            await producer.send(
                settings.topic_raw, value, partition=partitions[i % len(partitions)]
            )
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def started_consumer(settings: Settings) -> AIOKafkaConsumer:
    return await kafka_clients.start(kafka_clients.consumer(settings, max_poll_records=7))


@pytest.fixture
async def settings(make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings(raw_partitions=PARTITIONS)
    await create_topics(settings)
    return settings


async def test_every_record_is_read_once_and_reading_stops_at_the_end(settings: Settings) -> None:
    # Partition 2 stays empty: it must not hold the reading open.
    values = [f"v{i}".encode() for i in range(250)]
    await send(settings, values, partitions=[0, 1])
    consumer = await started_consumer(settings)
    try:
        reading = await kafka_clients.read_from_beginning(consumer, settings.topic_raw)
        assert [tp.partition for tp in reading.partitions] == list(range(PARTITIONS))
        assert reading.total == len(values)
        records = [r async for batch in reading.batches(timeout_ms=200) for r in batch]
        assert sorted(r.value for r in records) == sorted(values)
        assert len({(r.partition, r.offset) for r in records}) == len(values)
        for partition in (0, 1):
            offsets = [r.offset for r in records if r.partition == partition]
            assert offsets == list(range(125))
        assert await reading.offsets_read() == reading.total
    finally:
        await consumer.stop()


async def test_records_past_the_end_are_left_for_following_and_then_read_once(
    settings: Settings,
) -> None:
    values = [f"v{i:02}".encode() for i in range(30)]
    await send(settings, values, partitions=[0, 1, 2])
    consumer = await started_consumer(settings)
    try:
        began = await kafka_clients.read_from_beginning(consumer, settings.topic_raw)
        # As if the last records had arrived after the end offsets were taken: they are
        # fetched with the ones before them.
        ends = {tp: 4 for tp in began.partitions}
        reading = kafka_clients.TopicReading(consumer, began.partitions, began.starts, ends)
        before = [r async for batch in reading.batches(timeout_ms=200) for r in batch]
        assert sorted((r.partition, r.offset) for r in before) == [
            (p, o) for p in range(PARTITIONS) for o in range(4)
        ]
        assert [await consumer.position(tp) for tp in reading.partitions] == [4] * PARTITIONS
        followed: list[bytes] = [r.value for r in before]
        async with asyncio.timeout(30):
            async for batch in reading.batches(follow=True, timeout_ms=200):
                followed.extend(r.value for r in batch)
                if len(followed) >= len(values):
                    break
        assert sorted(followed) == values
        assert not any((await consumer.getmany(timeout_ms=1_000)).values())
    finally:
        await consumer.stop()


async def test_an_empty_topic_is_read_at_once_and_a_missing_one_refused(
    settings: Settings,
) -> None:
    consumer = await started_consumer(settings)
    try:
        reading = await kafka_clients.read_from_beginning(consumer, settings.topic_raw)
        assert reading.total == 0
        assert [batch async for batch in reading.batches()] == []
        with pytest.raises(LookupError):
            await kafka_clients.read_from_beginning(consumer, f"{settings.topic_raw}-missing")
    finally:
        await consumer.stop()


async def test_aborted_transactions_are_skipped_and_do_not_hold_the_reading_open(
    settings: Settings,
) -> None:
    producer = kafka_clients.producer(
        settings, transactional_id=f"{settings.app_id}-test", enable_idempotence=True
    )
    await producer.start()
    try:
        for value, commit in ((b"kept-1", True), (b"aborted", False), (b"kept-2", True)):
            await producer.begin_transaction()
            await producer.send_and_wait(settings.topic_raw, value, partition=1)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()
    consumer = await started_consumer(settings)
    try:
        reading = await kafka_clients.read_from_beginning(consumer, settings.topic_raw)
        values = [r.value async for batch in reading.batches(timeout_ms=200) for r in batch]
        assert values == [b"kept-1", b"kept-2"]
        assert await reading.offsets_read() == reading.total
    finally:
        await consumer.stop()
