"""faust wiring of the reorder worker: its topic, view table, agent, timers and web pages.

The reorder worker is the consumer group ``<app_id>-reorder``; add worker processes to
share the raw partitions. (The sink worker reads the events topic in bulk with aiokafka
instead, see ``fsstream.sink.service``.)
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust
from faust.web import Request, Response, View

from fsstream import metrics
from fsstream.agents.reorder import Enricher, ReorderAgent, raw_limits
from fsstream.batch_producer import BatchProducer
from fsstream.catalog_follower import DefinitionsFollower
from fsstream.content import KafkaRawLog, RawContent
from fsstream.core.enrich import Catalog, enrich
from fsstream.core.raw import RawEvent
from fsstream.settings import Settings
from fsstream.state import PartitionedTable

log = logging.getLogger(__name__)


def _credentials(settings: Settings) -> Any:
    options = settings.kafka_client_options()
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"],
            ssl_context=options.get("ssl_context"),
        )
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None


def create_app(settings: Settings) -> faust.App:
    """The reorder worker's faust app, configured from settings."""
    datadir = settings.data_dir / "reorder"
    datadir.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in settings.bootstrap_servers],
        "broker_credentials": _credentials(settings),
        "store": "rocksdb://",
        "datadir": str(datadir),
        "web_port": settings.web_port,
        "web_host": settings.web_host,
        "web_bind": settings.web_host,
        "autodiscover": False,
        "topic_replication_factor": settings.replication_factor,
        "topic_allow_declare": True,
        "table_standby_replicas": settings.standby_replicas,
        "producer_acks": -1,
        "producer_compression_type": "zstd",
        "producer_linger": 0.005,
        "producer_max_request_size": max(settings.max_record_bytes * 2, 1_048_576),
        "broker_commit_interval": 1.0,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": max(settings.session_timeout_s / 10, 0.5),
        "consumer_auto_offset_reset": "earliest",
        "stream_buffer_maxsize": 8192,
        "stream_wait_empty": True,
        "web_enabled": True,
    }
    if settings.static_member_id:
        options["consumer_group_instance_id"] = settings.static_member_id
    app = faust.App(f"{settings.app_id}-reorder", **options)
    _add_web_pages(app)
    install_reorder(app, settings)
    return app


def _add_web_pages(app: faust.App) -> None:
    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            consumer = app.consumer if app.started else None
            assigned = (
                sorted(f"{tp.topic}/{tp.partition}" for tp in consumer.assignment())
                if consumer
                else []
            )
            return self.json({"status": "ok" if app.started else "starting", "assigned": assigned})


async def process_batches(
    stream: Any, process: Callable[[Sequence[Any]], Awaitable[None]], *, size: int, within: float
) -> None:
    """Feed batches of events to ``process``, one at a time, in order.

    A batch being processed when the worker stops is finished before faust acks it; a
    batch that fails ends the process, so that its records are read again after the
    restart instead of being acknowledged half done.
    """
    async for events in stream.take_events(size, within=within):
        task = asyncio.ensure_future(process(events))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise
        except Exception:
            log.exception("batch failed; exiting so that it is processed again")
            os._exit(70)


def install_definitions(app: faust.App, settings: Settings) -> DefinitionsFollower:
    """Follow the definitions topic in a task of the app; agents wait until it caught up."""
    follower = DefinitionsFollower(settings, Catalog())

    @app.task
    async def follow_definitions() -> None:
        await follower.run()

    return follower


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


def install_reorder(app: faust.App, settings: Settings) -> ReorderAgent:
    """The raw topic, the view-state table and the reorder agent with its timers."""
    raw = app.topic(
        settings.topic_raw,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.raw_partitions,
        internal=False,
    )
    views = app.Table(
        "views",
        partitions=settings.raw_partitions,
        key_type=bytes,
        value_type=bytes,
        recovery_buffer_size=10_000,
        help="View order state, per raw partition.",
    )
    raw_log = KafkaRawLog(settings)
    content = RawContent(
        raw_log,
        raw_limits(settings),
        max_bytes=settings.raw_cache_bytes,
    )
    definitions = install_definitions(app, settings)
    output = BatchProducer(settings, f"{settings.app_id}-reorder-output")
    agent = ReorderAgent(
        settings,
        None,
        PartitionedTable(views),
        content,
        catalog_enricher(definitions.catalog),
        output,
    )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        agent.revoke({tp.partition for tp in revoked if tp.topic == settings.topic_raw})

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_reader(sender: Any, **_: Any) -> None:
        await raw_log.close()
        await output.close()

    @app.agent(raw, name="reorder", concurrency=1)
    async def reorder(stream: Any) -> None:
        agent.producer = app.producer
        await definitions.caught_up.wait()
        await process_batches(stream, agent.process, size=2_000, within=0.05)

    @app.timer(interval=max(min(settings.reorder_grace_s / 4, 1.0), 0.1))
    async def heartbeat() -> None:
        if not app.consumer or not app.producer:
            return
        agent.producer = app.producer
        assigned = {
            tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic_raw
        }
        await agent.heartbeat(assigned)

    @app.timer(interval=5.0)
    async def lag() -> None:
        if not app.consumer:
            return
        for tp in app.consumer.assignment():
            position = await app.consumer.position(tp)
            if position is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                    max(0, app.consumer.highwater(tp) - position)
                )

    return agent
