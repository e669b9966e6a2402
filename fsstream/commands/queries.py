"""Querying the warehouse with DuckDB the way analysts query Data Direct with Athena."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RAGE_CLICKS = """SELECT
json_extract_scalar(source_properties, '$.user_agent.browser') AS browser,
json_extract_scalar(source_properties, '$.url.path') AS path,
COUNT(1) AS rage_clicks
FROM {table}
WHERE
ingested_time BETWEEN '{day} 00:00:00' AND '{day_after_next} 00:00:00'
AND event_time >= '{day}T00:00:00.000000Z' AND event_time <= '{day}T99:99:99.999999Z'
AND event_type = 'click'
AND CAST(json_extract_scalar(event_properties, '$.fs_rage_count') AS INTEGER) > 0
GROUP BY
1,
2
ORDER BY
rage_clicks DESC;"""
"""The Data Direct documentation's rage-click query, for one day."""


def rage_clicks_query(table: str, day: str) -> str:
    """The rage-click query over ``table`` for ``day`` (``yyyy-MM-dd``)."""
    after = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=2)
    return RAGE_CLICKS.format(table=table, day=day, day_after_next=after.strftime("%Y-%m-%d"))


def events_table(root: Path, org_id: str) -> str:
    """The events of a local warehouse as a DuckDB table expression, hive-partitioned."""
    pattern = root / f"fullstory_{org_id}" / "events" / "*" / "*.parquet"
    return f"read_parquet('{pattern}', hive_partitioning=true)"


def connect() -> Any:
    """A DuckDB connection that also speaks Athena's ``json_extract_scalar``."""
    import duckdb

    connection = duckdb.connect()
    connection.execute(
        "CREATE MACRO json_extract_scalar(doc, path) AS json_extract_string(doc, path)"
    )
    return connection
