"""Object names of the warehouse: the Data Direct layout, hive-partitioned by hour."""

from __future__ import annotations

from fsstream.core.enrich.definitions import KINDS
from fsstream.core.timefmt import format_partition_hour, format_partition_second, hour_floor_ms


def org_prefix(org_id: str) -> str:
    """``fullstory_<org_id>/``: everything of one org lives below it."""
    return f"fullstory_{org_id}/"


def events_prefix(org_id: str) -> str:
    return f"{org_prefix(org_id)}events/"


def hour_prefix(org_id: str, hour_ms: int) -> str:
    """The hourly partition folder: ``.../events/ingested_time=yyyy-MM-dd HH:00:00/``."""
    return f"{events_prefix(org_id)}ingested_time={format_partition_hour(hour_ms)}/"


def event_file_key(org_id: str, hour_ms: int, topic: str, partition: int, first_offset: int) -> str:
    """A deterministic file name: the same rows from the same offset land on the same key."""
    return f"{hour_prefix(org_id, hour_ms)}{topic}+{partition}+{first_offset:020d}.parquet"


def seal_marker_key(org_id: str, hour_ms: int, topic: str, partition: int) -> str:
    """Where one events-topic partition records what it wrote into a sealed hour."""
    return f"{hour_prefix(org_id, hour_ms)}_sealed/{topic}+{partition}.json"


def manifest_key(org_id: str, hour_ms: int) -> str:
    return f"{hour_prefix(org_id, hour_ms)}_manifest.json"


def definitions_file_key(org_id: str, kind: str, synced_ms: int, name: str) -> str:
    """``.../configuration/<kind>-definitions/ingested_time=yyyy-MM-dd HH:mm:ss/<name>.parquet``."""
    if kind not in KINDS:
        raise ValueError(f"unknown definition kind {kind!r}")
    return (
        f"{org_prefix(org_id)}configuration/{kind}-definitions/"
        f"ingested_time={format_partition_second(synced_ms)}/{name}.parquet"
    )


def hour_of(ms: int) -> int:
    """The hour (ms since the epoch, floored) a row with this ingested time belongs to."""
    return hour_floor_ms(ms)
