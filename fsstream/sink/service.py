"""The sink worker process: the events topic, in bulk, into the warehouse.

The events topic carries one record per event, so the sink reads it in batches with
aiokafka's group consumer (``<app_id>-sink``) rather than one message at a time, and
commits an offset only once every row before it is in an uploaded, recorded file.
It serves ``/health`` and ``/metrics`` like the reorder worker, follows the definitions
topic for the definition exports, and on SIGTERM writes what it holds before it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from fsstream import metrics
from fsstream.contract.dead_letters import dead_letter_of
from fsstream.contract.wire import Record
from fsstream.core.enrich import Catalog
from fsstream.infra import kafka_clients
from fsstream.infra.definitions_follower import DefinitionsFollower
from fsstream.infra.object_store import open_store
from fsstream.infra.runtime import prepare_worker
from fsstream.infra.web import serve
from fsstream.settings import Settings
from fsstream.sink.agent import SinkAgent
from fsstream.sink.definitions_export import DefinitionsExporter
from fsstream.sink.ledger import StoreLedgers

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: SinkService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.service.on_assigned({tp.partition for tp in assigned})


class SinkService:
    """One sink worker: consumer, agent, timers and web endpoints."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(
            settings,
            on_retry=lambda operation, _attempt, _error: metrics.S3_RETRIES.labels(operation).inc(),
        )
        ledgers = StoreLedgers(self.store, settings.org_id, settings.topic_events)
        self.agent = SinkAgent(
            settings, self.store, ledgers, ack=self._acknowledged, reject=self._dead_letter
        )
        self.exporter = DefinitionsExporter(settings, self.store)
        self.follower = DefinitionsFollower(settings, Catalog())
        self.follower.listeners.append(self.exporter.on_record)
        self.consumer: AIOKafkaConsumer | None = None
        self.dlq: AIOKafkaProducer | None = None
        self.stopping = asyncio.Event()
        self.assigned: set[int] = set()
        self.positions: dict[int, int] = {}  # per partition: the offset to commit next
        self.committed: dict[int, int] = {}

    def _acknowledged(self, message: Record) -> None:
        self.positions[message.partition] = message.offset + 1

    async def _dead_letter(self, message: Record, error: Exception) -> None:
        """Send a record the warehouse cannot hold to the DLQ, before it is acknowledged."""
        assert self.dlq is not None
        key, value, headers = dead_letter_of(message, error)
        await self.dlq.send_and_wait(self.settings.topic_dlq, value, key=key, headers=headers)

    # -- rebalances -------------------------------------------------------------------

    async def on_revoked(self, partitions: set[int]) -> None:
        """Commit what is durable, then forget the rest: the new owner reads it again."""
        async with self.agent.lock:
            await self.commit()
            self.agent.revoke(partitions)
        for number in partitions:
            self.positions.pop(number, None)
            self.committed.pop(number, None)
        self.assigned -= partitions

    async def on_assigned(self, partitions: set[int]) -> None:
        self.assigned |= partitions
        log.info("sink owns events partitions %s", sorted(self.assigned))

    async def commit(self) -> None:
        """Commit the offsets up to which every row is in a recorded file."""
        if self.consumer is None:
            return
        due = {
            number: offset
            for number, offset in self.positions.items()
            if number in self.assigned and self.committed.get(number) != offset
        }
        if not due:
            return
        topic = self.settings.topic_events
        try:
            await self.consumer.commit({TopicPartition(topic, n): o for n, o in due.items()})
        except Exception as error:  # a rebalance in flight: the next commit covers it
            log.warning("commit of %s failed: %s", due, error)
        else:
            self.committed.update(due)

    # -- loops ------------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self.consumer is not None
        while not self.stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=500, max_records=5_000)
            if batches:
                await self.agent.process([m for messages in batches.values() for m in messages])
                await self.commit()

    async def _sync(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.settings.sink_flush_interval_s)
            await self.agent.sync()
            await self.commit()
            if 0 in self.assigned:  # one worker exports definitions: partition 0's owner
                await self.exporter.export()

    async def _lag(self) -> None:
        assert self.consumer is not None
        while not self.stopping.is_set():
            for tp in self.consumer.assignment():
                highwater = self.consumer.highwater(tp)
                if highwater is not None:
                    position = await self.consumer.position(tp)
                    metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                        max(0, highwater - position)
                    )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 5.0)

    # -- web --------------------------------------------------------------------------

    def _health(self) -> dict[str, Any]:
        assigned = [f"{self.settings.topic_events}/{p}" for p in sorted(self.assigned)]
        return {"status": "ok", "assigned": assigned}

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        runner = await serve(self.settings, self._health)
        self.dlq = kafka_clients.producer(
            self.settings, client_id=f"{self.settings.app_id}-sink-dlq"
        )
        await self.dlq.start()
        options: dict[str, str | int] = {
            "group_id": f"{self.settings.app_id}-sink",
            "client_id": f"{self.settings.app_id}-sink",
            "max_poll_records": 5_000,
            "session_timeout_ms": int(self.settings.session_timeout_s * 1000),
            "heartbeat_interval_ms": max(int(self.settings.session_timeout_s * 100), 500),
            "max_poll_interval_ms": 3_600_000,
        }
        if self.settings.static_member_id:
            options["group_instance_id"] = self.settings.static_member_id
        self.consumer = await kafka_clients.start(kafka_clients.consumer(self.settings, **options))
        self.consumer.subscribe([self.settings.topic_events], listener=_Rebalance(self))
        tasks = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._sync(), name="sync"),
            asyncio.create_task(self._lag(), name="lag"),
            asyncio.create_task(self.follower.run(), name="definitions"),
        ]
        started = time.monotonic()
        try:
            stop = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            log.info("stopping after %.0fs: writing what is buffered", time.monotonic() - started)
            self.stopping.set()
            await tasks[0]  # the batch being consumed is finished, not cut short
            for task in tasks[1:]:
                task.cancel()
            await asyncio.gather(*tasks[1:], return_exceptions=True)
            await self.agent.sync()
            await self.commit()
        finally:
            await self.consumer.stop()
            await self.dlq.stop()
            await self.store.close()
            await runner.cleanup()


def run_sink(settings: Settings) -> None:
    """Run a sink worker until SIGTERM or SIGINT."""
    prepare_worker(settings)
    asyncio.run(SinkService(settings).run())
