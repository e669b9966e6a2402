"""aiokafka clients configured from settings (brokers, SASL/TLS), for the CLI commands.

A client that cannot start (wrong password, untrusted certificate, no broker) closes
itself before the error propagates, and ``connection_problem`` tells why it could not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn

from fsstream.settings import Settings

PROBE_TIMEOUT_S = 15.0


class _Producer(AIOKafkaProducer):
    """A producer that releases its connections when ``start`` fails."""

    async def start(self) -> None:
        try:
            await super().start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise


class _Admin(AIOKafkaAdminClient):
    """An admin client that releases its connections when ``start`` fails."""

    async def start(self) -> None:
        try:
            await super().start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close()
            raise


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent-acks producer with zstd compression."""
    options: dict[str, Any] = {
        "acks": "all",
        "compression_type": "zstd",
        "linger_ms": 5,
        "max_request_size": max(settings.max_record_bytes * 2, 1_048_576),
        "client_id": f"{settings.app_id}-cli",
    }
    options.update(overrides)
    return _Producer(**settings.kafka_client_options(), **options)


def consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer with no group unless one is given, reading from the earliest offset.

    It reads committed records only: the reorder worker writes in transactions, and a
    row of an aborted or still open one is not part of the events topic.
    """
    options: dict[str, Any] = {
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "client_id": f"{settings.app_id}-cli",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **settings.kafka_client_options(), **options)


async def start(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    """Start a consumer so that stopping it right away is safe.

    aiokafka's group-less coordinator starts a task that, cancelled before its first
    step, makes ``stop()`` raise CancelledError; one loop iteration lets it begin.
    """
    try:
        await consumer.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise
    await asyncio.sleep(0)
    return consumer


async def assign_from_beginning(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a group-less consumer, from the beginning."""
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer._client.force_metadata_update()  # topic may be new to this client
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise LookupError(f"topic {topic} does not exist")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


class TopicReading:
    """A topic read from the beginning up to the end offsets seen when reading began.

    ``batches`` gives every record below those offsets exactly once, each partition's
    in offset order, and none past them, then leaves the consumer positioned at them:
    reading on from there (following the topic) misses and repeats nothing.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        partitions: list[TopicPartition],
        starts: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
    ) -> None:
        self.consumer = consumer
        self.partitions = partitions
        self.starts = starts
        self.ends = ends
        self._remaining = {tp for tp in partitions if ends[tp] > starts[tp]}

    @property
    def total(self) -> int:
        """Offsets from the beginning to the end: records, and the gaps compaction and
        transaction markers leave."""
        return sum(self.ends[tp] - self.starts[tp] for tp in self.partitions)

    async def offsets_read(self) -> int:
        """How many of ``total`` are behind the consumer."""
        read = 0
        for tp in self.partitions:
            read += min(await self.consumer.position(tp), self.ends[tp]) - self.starts[tp]
        return read

    async def batches(
        self, *, follow: bool = False, timeout_ms: int = 500
    ) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
        """Records to the end, a fetch at a time; with ``follow``, then every record
        that arrives after it, until the caller stops."""
        consumer = self.consumer
        ends = self.ends
        remaining = self._remaining
        while remaining:
            batch: list[ConsumerRecord[bytes, bytes]] = []
            for tp, records in (await consumer.getmany(*remaining, timeout_ms=timeout_ms)).items():
                if records and records[-1].offset >= ends[tp]:
                    records = [record for record in records if record.offset < ends[tp]]
                    consumer.seek(tp, ends[tp])
                batch.extend(records)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if batch:
                yield batch
        while follow:
            fetched = await consumer.getmany(timeout_ms=timeout_ms)
            batch = [record for records in fetched.values() for record in records]
            if batch:
                yield batch


async def read_from_beginning(consumer: AIOKafkaConsumer, topic: str) -> TopicReading:
    """Every partition of ``topic`` assigned to a group-less consumer from the beginning,
    to be read up to its end offsets as they are now."""
    partitions = await assign_from_beginning(consumer, topic)
    starts = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)
    return TopicReading(consumer, partitions, starts, ends)


def admin(settings: Settings) -> AIOKafkaAdminClient:
    return _Admin(**settings.kafka_client_options(), client_id=f"{settings.app_id}-admin")


def describe_connection(settings: Settings) -> str:
    """Where and how fsstream connects: brokers, protocol, mechanism and user (no secret)."""
    text = f"{','.join(settings.bootstrap_servers)} ({settings.security_protocol}"
    if settings.security_protocol.startswith("SASL"):
        text += f", {settings.sasl_mechanism} as {settings.sasl_username!r}"
    return text + ")"


async def connection_problem(settings: Settings) -> str:
    """Why the brokers refuse a connection now, found by connecting to each of them.

    aiokafka only logs the reason for each broker and then raises a bare "Unable to
    bootstrap"; one direct connection attempt per broker recovers the reasons. Empty
    when every broker accepts a connection.
    """
    options = settings.kafka_client_options()
    options.pop("bootstrap_servers")
    reasons: list[str] = []
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            connection = await asyncio.wait_for(
                create_conn(
                    host or server,
                    int(port) if port.isdigit() else 9092,
                    client_id=f"{settings.app_id}-probe",
                    request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
                    **options,
                ),
                PROBE_TIMEOUT_S,
            )
        except TimeoutError:
            reasons.append(f"{server}: no answer in {PROBE_TIMEOUT_S:.0f}s")
        except Exception as error:
            reasons.append(f"{server}: {_reason(error)}")
        else:
            connection.close()
    return "; ".join(reasons)


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    # "[Error 58] SaslAuthenticationFailed: Authentication failed: ..." → the broker's words.
    name = type(error).__name__
    if f"{name}: " in text:
        text = text.split(f"{name}: ", 1)[1]
    return text
