"""Every worker's copy of all definitions, followed from the definitions topic.

Each worker reads every partition of the topic from the beginning with a group-less
consumer, so it holds the full version history (the topic keeps old versions as long
as raw records can be replayed), and keeps following it. ``caught_up`` is set once
the worker has read up to the end offsets seen at start; agents wait for it before
they process anything.

A record the catalog cannot take, whatever the reason, is logged and counted as
refused, and the worker goes on: no definition can stop a worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import ConsumerRecord

from fsstream import metrics
from fsstream.contract import codec
from fsstream.core.enrich import Catalog, DefinitionError
from fsstream.infra import kafka_clients
from fsstream.settings import Settings

log = logging.getLogger(__name__)

Listener = Callable[[ConsumerRecord[bytes, bytes]], None]


class DefinitionsFollower:
    """Applies the definitions topic to a Catalog, from the beginning and then live."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.caught_up = asyncio.Event()
        self.listeners: list[Listener] = []

    def apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            value = None if record.value is None else codec.decode(record.value, codec.DEFINITION)
            key = record.key.decode() if record.key is not None else ""
            self.catalog.apply_record(key, value, record.timestamp)
            metrics.DEFINITIONS_APPLIED.inc()
        except (codec.CodecError, DefinitionError, UnicodeDecodeError) as exc:
            metrics.DEFINITIONS_REFUSED.inc()
            log.warning(
                "definition %r at %d/%d refused: %s",
                record.key,
                record.partition,
                record.offset,
                _shorten(str(exc)),
            )
        except Exception as exc:
            metrics.DEFINITIONS_REFUSED.inc()
            log.error(
                "definition %r at %d/%d refused: unexpected %s: %s",
                record.key,
                record.partition,
                record.offset,
                type(exc).__name__,
                _shorten(str(exc)),
                exc_info=not isinstance(exc, RecursionError),
            )
        for listener in self.listeners:
            listener(record)

    async def run(self) -> None:
        """Follow the topic until cancelled."""
        topic = self.settings.topic_definitions
        consumer = await kafka_clients.start(
            kafka_clients.consumer(self.settings, client_id=f"{self.settings.app_id}-definitions")
        )
        try:
            while True:
                try:
                    reading = await kafka_clients.read_from_beginning(consumer, topic)
                    break
                except LookupError:
                    log.warning("definitions topic %s not found; waiting for it", topic)
                    await asyncio.sleep(2.0)
            async for records in reading.batches():
                for record in records:
                    self.apply(record)
            log.info("definitions caught up: %s", self.catalog.high_water_ms)
            self.caught_up.set()
            async for records in reading.batches(follow=True):
                for record in records:
                    self.apply(record)
        finally:
            await consumer.stop()


def _shorten(text: str, limit: int = 500) -> str:
    """A message cut to ``limit`` characters: a refused record may carry a huge rule."""
    return text if len(text) <= limit else text[:limit] + "..."
