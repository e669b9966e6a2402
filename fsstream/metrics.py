"""Prometheus metrics of a worker, served at ``/metrics`` on its web port."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from fsstream.core.enrich.matcher import PATHS_TOO_LONG

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_IN = Counter("fsstream_events_in", "Raw events taken from the raw topic.", registry=REGISTRY)
RAW_RECORDS_IN = Counter(
    "fsstream_raw_records_in", "Raw records taken from the raw topic.", registry=REGISTRY
)
EVENTS_OUT = Counter(
    "fsstream_events_out", "Rows published to the events topic.", registry=REGISTRY
)
LATE_EVENTS = Counter(
    "fsstream_late_events",
    "Events that landed before rows already published, superseding them.",
    registry=REGISTRY,
)
DUPLICATE_EVENTS = Counter(
    "fsstream_duplicate_events", "Redelivered events dropped.", registry=REGISTRY
)
TOMBSTONES = Counter(
    "fsstream_tombstones", "Tombstones published for superseded rows.", registry=REGISTRY
)
EXPIRED_VIEW_EVENTS = Counter(
    "fsstream_expired_view_events",
    "Events for views whose state had expired: published, never reordered.",
    registry=REGISTRY,
)
EXPIRED_VIEWS = Counter(
    "fsstream_expired_views", "View states dropped after the view TTL.", registry=REGISTRY
)
DLQ_RECORDS = Counter(
    "fsstream_dlq_records", "Records sent to the DLQ.", ["reason"], registry=REGISTRY
)
FUTURE_RECORDS = Counter(
    "fsstream_reorder_future_records",
    "Raw records stamped further ahead of the clock than stream time may move.",
    registry=REGISTRY,
)
DEFINITIONS_APPLIED = Counter(
    "fsstream_definitions_applied",
    "Definition records applied to the catalog.",
    registry=REGISTRY,
)
DEFINITIONS_REFUSED = Counter(
    "fsstream_definitions_refused",
    "Definition records refused (invalid, or a second active page for one URL pattern).",
    registry=REGISTRY,
)


class _PathsTooLong(Collector):
    """The core's count of raw selectors too long or deep to match, read when scraped."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "fsstream_enrich_paths_too_long",
            "Raw selectors matched to no element definition because they are longer or "
            "deeper than a path is read.",
            value=PATHS_TOO_LONG.value,
        )


REGISTRY.register(_PathsTooLong())
OPEN_VIEWS = Gauge("fsstream_open_views", "Views with state on this worker.", registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "fsstream_consumer_lag",
    "Records behind the end of each assigned input partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
RAW_TO_OUT_LATENCY = Histogram(
    "fsstream_raw_to_events_latency_seconds",
    "From a raw record's timestamp to its rows being published.",
    buckets=(0.1, 0.5, 1, 2, 3, 4, 5, 5.5, 6, 7, 8, 10, 15, 30, 60, 300),
    registry=REGISTRY,
)
TRANSACTION_SECONDS = Histogram(
    "fsstream_reorder_transaction_seconds",
    "From a batch's transaction beginning to its commit: rows, state, offsets.",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    registry=REGISTRY,
)
BUFFERED_ROWS = Gauge(
    "fsstream_sink_buffered_rows",
    "Rows buffered by the sink, not yet in a file.",
    registry=REGISTRY,
)
BUFFERED_BYTES = Gauge(
    "fsstream_sink_buffered_bytes", "Approximate bytes buffered by the sink.", registry=REGISTRY
)
BUFFERED_BYTES_PEAK = Gauge(
    "fsstream_sink_buffered_bytes_peak",
    "The most bytes the sink has buffered at once since it started.",
    registry=REGISTRY,
)
FILES_WRITTEN = Counter("fsstream_sink_files_written", "Parquet files written.", registry=REGISTRY)
FILES_RECREATED = Counter(
    "fsstream_sink_files_recreated", "Parquet files recreated for tombstones.", registry=REGISTRY
)
ROWS_WRITTEN = Counter(
    "fsstream_sink_rows_written", "Rows written to parquet files.", registry=REGISTRY
)
ROWS_SKIPPED = Counter(
    "fsstream_sink_rows_skipped",
    "Rows skipped because their hour already holds their event id (redeliveries).",
    registry=REGISTRY,
)
PARTITIONS_SEALED = Counter(
    "fsstream_sink_partitions_sealed",
    "Hourly partitions sealed with a manifest.",
    registry=REGISTRY,
)
SEAL_LAG = Gauge(
    "fsstream_sink_seal_lag_seconds",
    "How long past its seal time the oldest unsealed partition is.",
    registry=REGISTRY,
)
S3_RETRIES = Counter(
    "fsstream_s3_retries", "Object store calls retried.", ["operation"], registry=REGISTRY
)
SYNC_LATENCY = Histogram(
    "fsstream_sink_sync_latency_seconds",
    "From a row's processed time to its file being uploaded.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=REGISTRY,
)
