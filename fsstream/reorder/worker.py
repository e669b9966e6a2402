"""The reorder worker process: raw topic → ordered rows, exactly once, in Kafka transactions.

The consumer group is ``<app_id>-reorder``; add worker processes to share the raw
partitions. Each owned raw partition has its own transactional producer
(``transactional.id`` = group + raw topic + partition): starting it fences any earlier
owner of that partition (a crashed or partitioned-off worker) and aborts its open
transaction. Then the partition's view state catches up from the changelog (read
committed) and consumption resumes at the group's committed offset.

Per fetched batch and partition, one transaction holds the output rows and tombstones,
the DLQ records, the view-state changelog records and the raw offsets
(``send_offsets_to_transaction``); the local state store is written only after the
commit. Whatever is killed when, a read-committed consumer sees each batch's effects
once or not at all, and the next owner resumes right after the last committed batch.

Quiet partitions get heartbeat records on the raw topic (in a transaction of their
own), so held events are released by stream time even when no traffic comes, and a
replay of the raw topic sees the same releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ProducerFenced
from aiokafka.structs import RecordMetadata

from fsstream import metrics
from fsstream.contract.topics import STATE_RECORD_MAX_BYTES, create_topics
from fsstream.contract.wire import Record
from fsstream.core.enrich import Catalog, enrich
from fsstream.core.raw import RawEvent
from fsstream.infra import kafka_clients
from fsstream.infra.crashpoints import CrashPoints
from fsstream.infra.definitions_follower import DefinitionsFollower
from fsstream.infra.runtime import prepare_worker
from fsstream.infra.web import serve
from fsstream.reorder.agent import (
    HEARTBEAT_VALUE,
    BatchOutput,
    Enricher,
    OutputRecord,
    PartitionOrder,
    ReorderAgent,
    heartbeat_headers,
    raw_limits,
)
from fsstream.reorder.content import KafkaRawLog, RawContent
from fsstream.reorder.state import Change, PartitionState, catch_up
from fsstream.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_BATCH_BYTES = 512 * 1024
"""Producer batch size: under the broker's default message limit even uncompressed."""


def catalog_enricher(catalog: Catalog) -> Enricher:
    """Enrich with the definition versions active at the raw record's timestamp."""

    def enrich_event(event: RawEvent, at_ms: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return enrich(
            event.event_type,
            event.event_properties,
            event.source_properties,
            catalog.matcher_at(at_ms),
        )

    return enrich_event


@dataclass(slots=True)
class OwnedPartition:
    """A raw partition this worker owns: its order, its producer, the next offset to take."""

    order: PartitionOrder
    producer: AIOKafkaProducer
    next_offset: int


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: ReorderWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.worker.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.worker.on_assigned({tp.partition for tp in assigned})


class ReorderWorker:
    """One reorder worker: group consumer, per-partition transactions, timers, web pages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group_id = f"{settings.app_id}-reorder"
        self.follower = DefinitionsFollower(settings, Catalog())
        self.raw_log = KafkaRawLog(settings)
        self.content = RawContent(self.raw_log, raw_limits(settings), settings.raw_cache_bytes)
        self.agent = ReorderAgent(
            settings,
            self.content,
            catalog_enricher(self.follower.catalog),
        )
        self.crash = CrashPoints(settings.crash_point)
        self.consumer: AIOKafkaConsumer | None = None
        self.restorer: AIOKafkaConsumer | None = None
        self.owned: dict[int, OwnedPartition] = {}
        self.parked: dict[int, PartitionOrder] = {}
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()

    # -- partitions -------------------------------------------------------------------

    def raw_tp(self, number: int) -> TopicPartition:
        return TopicPartition(self.settings.topic_raw, number)

    def _producer(self, number: int) -> AIOKafkaProducer:
        return kafka_clients.producer(
            self.settings,
            client_id=f"{self.group_id}-{number}",
            transactional_id=f"{self.group_id}-{self.settings.topic_raw}-{number}",
            max_batch_size=OUTPUT_BATCH_BYTES,
            max_request_size=STATE_RECORD_MAX_BYTES,
            linger_ms=0,
        )

    async def on_assigned(self, numbers: set[int]) -> None:
        """Fence earlier owners, catch the state up, resume at the committed offsets."""
        async with self.lock:
            new = sorted(numbers - set(self.owned))
            for number in new:
                self._pause(number)  # until it is taken
            producers = {n: self._producer(n) for n in new}
            started = await asyncio.gather(
                *(p.start() for p in producers.values()), return_exceptions=True
            )
            for number, result in zip(new, started, strict=True):
                try:
                    if isinstance(result, BaseException):
                        raise result
                    await self._take(number, producers[number])
                except Exception:
                    log.exception("raw partition %d: could not be taken; it stays paused", number)
                    with contextlib.suppress(Exception):
                        await producers[number].stop()
            for number in list(self.parked):
                if number not in numbers:
                    self.parked.pop(number).state.close()
            log.info("reorder owns raw partitions %s", sorted(self.owned))

    async def _take(self, number: int, producer: AIOKafkaProducer) -> None:
        assert self.consumer is not None and self.restorer is not None
        parked = self.parked.pop(number, None)
        state = (
            parked.state
            if parked is not None
            else PartitionState(
                self.settings.data_dir / "reorder" / self.settings.topic_raw / str(number),
                self.settings.view_cache_size,
                self.settings.dedup_horizon_ms,
            )
        )
        applied = await catch_up(self.restorer, self.settings.topic_views_changelog, number, state)
        order = (
            parked if parked is not None and applied == 0 else self.agent.new_order(number, state)
        )
        tp = self.raw_tp(number)
        committed = await self.consumer.committed(tp)
        if committed is None:
            await self.consumer.seek_to_beginning(tp)
            committed = 0
        else:
            self.consumer.seek(tp, committed)
        order.advanced_at = time.monotonic()
        self.owned[number] = OwnedPartition(order, producer, committed)
        self.consumer.resume(tp)

    def _pause(self, number: int) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.pause(self.raw_tp(number))

    async def on_revoked(self, numbers: set[int]) -> None:
        """Park the revoked partitions: their state stays open in case they come back."""
        async with self.lock:
            for number in numbers:
                owned = self.owned.pop(number, None)
                if owned is None:
                    continue
                await owned.producer.stop()
                self.parked[number] = owned.order

    async def _lose(self, number: int, reason: str) -> None:
        """Give a partition up after it was fenced: another worker owns it now."""
        owned = self.owned.pop(number, None)
        if owned is None:
            return
        log.warning("raw partition %d: %s; leaving it to its new owner", number, reason)
        self._pause(number)
        with contextlib.suppress(Exception):
            await owned.producer.stop()
        owned.order.state.discard()
        owned.order.state.close()

    async def _reset(self, number: int) -> None:
        """After a failed transaction: state back to the last commit, consumer back too."""
        owned = self.owned[number]
        owned.order.state.discard()
        owned.order = self.agent.new_order(number, owned.order.state)
        if self.consumer is not None:
            self.consumer.seek(self.raw_tp(number), owned.next_offset)

    # -- batches ----------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self.consumer is not None
        await self.follower.caught_up.wait()
        while not self.stopping.is_set():
            try:
                fetched = await self.consumer.getmany(
                    timeout_ms=200, max_records=self.settings.reorder_batch_records
                )
                if not fetched:
                    continue
                async with self.lock:
                    jobs = [
                        self._batch(tp.partition, records)
                        for tp, records in fetched.items()
                        if records and tp.partition in self.owned
                    ]
                    await asyncio.gather(*jobs)
            except Exception:
                log.exception("consume loop: retrying in 1 s")
                await asyncio.sleep(1.0)

    async def _batch(self, number: int, records: list[Record]) -> None:
        owned = self.owned[number]
        records = [r for r in records if r.offset >= owned.next_offset]
        if not records:
            return
        order = owned.order
        try:
            output = await self.agent.process(order, records)
            changes = order.state.changes(order.reorderer.stream_time_ms)
            checkpoint = await self._commit(owned, number, output, changes, records[-1].offset + 1)
        except ProducerFenced:
            await self._lose(number, "fenced by a newer owner")
            return
        except Exception:
            log.exception(
                "raw partition %d: batch at %d failed; retrying", number, owned.next_offset
            )
            with contextlib.suppress(Exception):
                await owned.producer.abort_transaction()
            await self._reset(number)
            await asyncio.sleep(0.5)
            return
        order.state.applied(changes, checkpoint)
        owned.next_offset = records[-1].offset + 1
        metrics.RAW_RECORDS_IN.inc(output.raw_records)
        metrics.EVENTS_IN.inc(output.events_in)
        metrics.EVENTS_OUT.inc(output.rows)
        metrics.TOMBSTONES.inc(output.tombstones)
        self._observe()

    async def _commit(
        self,
        owned: OwnedPartition,
        number: int,
        output: BatchOutput,
        changes: list[Change],
        next_offset: int,
    ) -> int:
        """One transaction: rows, dead letters, state changes and the raw offset.

        Returns the changelog offset the committed state reaches.
        """
        producer = owned.producer
        began = time.monotonic()
        await producer.begin_transaction()
        sends: list[Awaitable[RecordMetadata]] = []
        sends.extend(await send_batches(producer, self.settings.topic_events, output.events))
        sends.extend(
            await send_batches(
                producer,
                self.settings.topic_dlq,
                [OutputRecord(0, key, value, headers) for key, value, headers in output.dlq],
            )
        )
        changelog = await send_batches(
            producer,
            self.settings.topic_views_changelog,
            [OutputRecord(number, key, value, []) for key, value in changes],
            counted=True,
        )
        await asyncio.gather(*sends)
        reached = 0
        for future, count in changelog:
            metadata = await future
            reached = max(reached, metadata.offset + count)
        self.crash.reached("after-send")
        await producer.send_offsets_to_transaction(
            {self.raw_tp(number): next_offset}, self.group_id
        )
        self.crash.reached("before-commit")
        await producer.commit_transaction()
        metrics.TRANSACTION_SECONDS.observe(time.monotonic() - began)
        self.crash.reached("after-commit")
        return reached

    # -- timers -----------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Append a heartbeat to quiet partitions whose held events are due.

        Its timestamp is the partition's stream time advanced by the wall-clock time it
        has been quiet; being in the log, it releases the same events in a replay.
        """
        now = time.monotonic()
        interval = heartbeat_gap_s(self.settings.reorder_grace_s)
        async with self.lock:
            for number, owned in list(self.owned.items()):
                order = owned.order
                deadline = order.reorderer.next_deadline_ms
                if deadline is None or now - order.heartbeat_at < interval:
                    continue
                timestamp_ms = order.reorderer.stream_time_ms + int(
                    (now - order.advanced_at) * 1000
                )
                if timestamp_ms < deadline + 100:
                    continue
                order.heartbeat_at = now
                producer = owned.producer
                try:
                    await producer.begin_transaction()
                    await producer.send_and_wait(
                        self.settings.topic_raw,
                        HEARTBEAT_VALUE,
                        partition=number,
                        timestamp_ms=timestamp_ms,
                        headers=heartbeat_headers(),
                    )
                    await producer.commit_transaction()
                except ProducerFenced:
                    await self._lose(number, "fenced by a newer owner")
                except Exception:
                    log.exception("raw partition %d: heartbeat failed", number)
                    with contextlib.suppress(Exception):
                        await producer.abort_transaction()

    async def _lag(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue  # nothing fetched yet since the assignment
            position = await consumer.position(tp)
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                max(0, highwater - position)
            )

    async def _every(self, seconds: float, tick: Callable[[], Awaitable[None]]) -> None:
        """Run ``tick`` every ``seconds`` until stopping; an error is logged, never fatal."""
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), seconds)
            if self.stopping.is_set():
                return
            try:
                await tick()
            except Exception:
                log.exception("timer %s failed; it runs again", getattr(tick, "__name__", tick))

    def _observe(self) -> None:
        orders = [o.order for o in self.owned.values()]
        metrics.OPEN_VIEWS.set(sum(o.reorderer.open_views for o in orders))
        for name, metric in (
            ("late", metrics.LATE_EVENTS),
            ("duplicates", metrics.DUPLICATE_EVENTS),
            ("detached", metrics.EXPIRED_VIEW_EVENTS),
            ("expired_views", metrics.EXPIRED_VIEWS),
        ):
            for order in orders:
                counters = order.reorderer.counters
                value = getattr(counters, name)
                if value:
                    metric.inc(value)
                    setattr(counters, name, 0)

    # -- web --------------------------------------------------------------------------

    def _health(self) -> dict[str, Any]:
        ready = self.consumer is not None and self.follower.caught_up.is_set()
        assigned = [f"{self.settings.topic_raw}/{p}" for p in sorted(self.owned)]
        return {"status": "ok" if ready else "starting", "assigned": assigned}

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await create_topics(self.settings)
        runner = await serve(self.settings, self._health)
        self.restorer = await kafka_clients.start(
            kafka_clients.consumer(
                self.settings,
                client_id=f"{self.group_id}-restore",
                max_partition_fetch_bytes=STATE_RECORD_MAX_BYTES,
                fetch_max_bytes=STATE_RECORD_MAX_BYTES * 2,
            )
        )
        options: dict[str, str | int] = {
            "group_id": self.group_id,
            "client_id": self.group_id,
            "max_poll_records": self.settings.reorder_batch_records,
            "session_timeout_ms": int(self.settings.session_timeout_s * 1000),
            "heartbeat_interval_ms": max(int(self.settings.session_timeout_s * 100), 500),
            "max_poll_interval_ms": 3_600_000,
            "rebalance_timeout_ms": 120_000,
        }
        if self.settings.static_member_id:
            options["group_instance_id"] = self.settings.static_member_id
        self.consumer = await kafka_clients.start(kafka_clients.consumer(self.settings, **options))
        self.consumer.subscribe([self.settings.topic_raw], listener=_Rebalance(self))
        tasks = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self.follower.run(), name="definitions"),
            asyncio.create_task(
                self._every(heartbeat_gap_s(self.settings.reorder_grace_s) / 2, self._heartbeats),
                name="heartbeats",
            ),
            asyncio.create_task(self._every(5.0, self._lag), name="lag"),
        ]
        try:
            stop = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    log.error("task %s ended: %r", task.get_name(), task.exception())
            self.stopping.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tasks[0], 60)  # the batch in flight is committed first
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            for owned in self.owned.values():
                with contextlib.suppress(Exception):
                    await owned.producer.stop()
                owned.order.state.close()
            for order in self.parked.values():
                order.state.close()
            await self.restorer.stop()
            await self.raw_log.close()
            await runner.cleanup()


def heartbeat_gap_s(grace_s: float) -> float:
    """The least time between two heartbeats of one quiet partition.

    Each one releases what is due by then, so it bounds how far past the grace a quiet
    partition's last events wait (the spec allows one second).
    """
    return max(min(grace_s / 10, 0.5), 0.05)


async def send_batches(
    producer: AIOKafkaProducer,
    topic: str,
    records: list[OutputRecord],
    counted: bool = False,
) -> list[Any]:
    """Queue ``records`` in producer batches per partition, in order.

    Returns the batches' delivery futures, each paired with its record count if
    ``counted``.
    """
    by_partition: dict[int, list[OutputRecord]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record)
    out: list[Any] = []
    for partition, items in by_partition.items():
        batch = producer.create_batch()
        count = 0
        for _, key, value, headers in items:
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                future = await producer.send_batch(batch, topic, partition=partition)
                out.append((future, count) if counted else future)
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)
                count = 0
            count += 1
        future = await producer.send_batch(batch, topic, partition=partition)
        out.append((future, count) if counted else future)
    return out


def run_reorder(settings: Settings) -> None:
    """Run a reorder worker until SIGTERM or SIGINT."""
    prepare_worker(settings)
    asyncio.run(ReorderWorker(settings).run())
