"""The sink worker on the real broker, writing to moto S3 and to a local directory."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from fsstream.commands import queries
from fsstream.contract.topics import create_topics
from fsstream.core.timefmt import parse_rfc3339_us
from fsstream.settings import Settings
from tests.scenario import (
    expected_rows,
    live,
    produce,
    read_all,
    running_pipeline,
    settled_metric,
    traffic_day,
)
from tests.warehouse import (
    FILE_PATH,
    REFERENCE_EVENTS,
    Warehouse,
    wait_for_warehouse,
    warehouse_settings,
)

DAY = "2024-01-01"
DAY_START_MS = parse_rfc3339_us(f"{DAY}T00:00:00Z") // 1000


def complete(expected: set[str]) -> Callable[[Warehouse], bool]:
    def done(warehouse: Warehouse) -> bool:
        try:
            live_ids = set(warehouse.live())
        except AssertionError:
            return False
        hours = {FILE_PATH.match(k)["hour"] for k in warehouse.files}  # type: ignore[index]
        sealed = {
            m["partition"].removeprefix("ingested_time=") for m in warehouse.manifests.values()
        }
        listed = sum(len(m["files"]) for m in warehouse.manifests.values())
        return live_ids == expected and hours <= sealed and listed == len(warehouse.files)

    return done


@pytest.mark.parametrize("kind", ["s3", "local"])
async def test_a_day_of_traffic_lands_in_the_data_direct_layout(
    kind: str,
    make_settings: Callable[..., Settings],
    s3_endpoint: str,
    unique: str,
    tmp_path: Path,
) -> None:
    settings = warehouse_settings(kind, make_settings, s3_endpoint, f"lake-{unique}", tmp_path)
    await create_topics(settings)
    views, records = traffic_day(seed=3, sessions=120, day_start_ms=DAY_START_MS)
    expected = expected_rows(views)
    async with running_pipeline(settings, tmp_path) as (_, sink):
        await produce(settings, records)
        warehouse = await wait_for_warehouse(settings, complete(set(expected)))
        files_written = await settled_metric(
            sink, "fsstream_sink_files_written_total", len(warehouse.files)
        )
        rows_written = await settled_metric(
            sink, "fsstream_sink_rows_written_total", len(warehouse.rows())
        )
        sealed = sink.metric("fsstream_sink_partitions_sealed_total")
    # Exactly the expected live rows, each once, with the published content.
    live_rows = warehouse.live()
    assert set(live_rows) == set(expected)
    for event_id, row in live_rows.items():
        raw = expected[event_id]
        assert row["event_type"] == raw["event_type"]
        assert row["event_time"][:23] == raw["event_time"][:23]
        assert row["device_id"] == raw["device_id"]
        assert orjson.loads(row["source_properties"]).get("url") == orjson.loads(
            raw["source_properties"]
        ).get("url")
    # Every nulled row is a row the events topic superseded.
    events = await read_all(settings, settings.topic_events)
    tombstoned = {r.key.decode() for r in events if r.value is None}
    assert tombstoned, "the traffic has late events, so rows must have been superseded"
    assert warehouse.nulled() <= tombstoned
    # A superseded row still buffered was dropped; one already in a file is nulled there.
    assert tombstoned | set(live_rows) == {r.key.decode() for r in events}
    assert set(live(events)) == set(live_rows)
    for row in warehouse.rows():
        if row["event_type"] is None:
            assert row["updated_time"] is not None
    # Layout, schema, codec, sort order.
    for key, data in warehouse.files.items():
        match = FILE_PATH.match(key)
        assert match, key
        assert match["org"] == "o-test" and match["topic"] == settings.topic_events
        parquet = pq.ParquetFile(io.BytesIO(data))
        schema = parquet.schema_arrow
        assert [(f.name, f.type, f.nullable) for f in schema] == REFERENCE_EVENTS
        assert "ingested_time" not in schema.names
        for group in range(parquet.metadata.num_row_groups):
            for column in range(parquet.metadata.num_columns):
                assert parquet.metadata.row_group(group).column(column).compression == "ZSTD"
        rows = parquet.read().to_pylist()
        keys = [
            (r["device_id"], r["session_id"] or 0, r["view_id"] or 0, r["event_time"]) for r in rows
        ]
        assert keys == sorted(keys)
        assert match["hour"].startswith("2024-01-0")
        assert all(
            len(r["processed_time"]) == 27 and r["processed_time"].endswith("Z") for r in rows
        )
    # Every hour is sealed with a manifest listing exactly its files and row counts.
    by_hour: dict[str, dict[str, int]] = {}
    for key, data in warehouse.files.items():
        match = FILE_PATH.match(key)
        by_hour.setdefault(match["hour"], {})[key.rsplit("/", 1)[1]] = pq.ParquetFile(
            io.BytesIO(data)
        ).metadata.num_rows
    for manifest in warehouse.manifests.values():
        hour = manifest["partition"].removeprefix("ingested_time=")
        assert {f["name"]: f["rows"] for f in manifest["files"]} == by_hour[hour]
        assert manifest["rows"] == sum(by_hour[hour].values())
    assert len(warehouse.manifests) == len(by_hour)
    # The sink counted the files and rows it wrote: those the warehouse holds.
    assert files_written == len(warehouse.files) >= 1
    assert rows_written == len(warehouse.rows())
    assert sealed >= len(warehouse.manifests)

    # The documented rage-click query, run with DuckDB.
    root = tmp_path / "query"
    warehouse.write_to(root)
    connection = queries.connect()
    result = connection.execute(
        queries.rage_clicks_query(queries.events_table(root, "o-test"), DAY)
    ).fetchall()
    want: Counter[tuple[str, str]] = Counter()
    for raw in expected.values():
        if raw["event_type"] == "click" and raw["event_time"].startswith(DAY):
            props = orjson.loads(raw["event_properties"])
            if props.get("fs_rage_count", 0) > 0:
                source = orjson.loads(raw["source_properties"])
                browser = source.get("user_agent", {}).get("browser")
                want[(browser, source["url"]["path"] if "url" in source else None)] += 1
    assert want, "the generated day has rage clicks"
    assert Counter({(b, p): n for b, p, n in result}) == want
    assert [n for _, _, n in result] == sorted((n for _, _, n in result), reverse=True)


def test_the_query_is_the_documented_one() -> None:
    reference = (
        Path(__file__).parents[3] / "shared" / "reference" / "data-direct-s3-parquet.txt"
    ).read_text()
    documented = reference[reference.index("SELECT\njson_extract_scalar") :].strip()
    assert queries.rage_clicks_query("table_name", "2024-01-01") == documented
