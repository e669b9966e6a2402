"""Parquet encoding of events and definitions: the reference schemas, ZSTD, order, rewrites."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fsstream.core.timefmt import format_definition_time, format_event_time
from fsstream.devtools.traffic import generate
from fsstream.sink.parquet_format import (
    ELEMENT_DEFINITIONS_SCHEMA,
    EVENT_DEFINITIONS_SCHEMA,
    EVENTS_SCHEMA,
    PAGE_DEFINITIONS_SCHEMA,
    nullify,
    read_definitions,
    read_event_columns,
    read_events,
    serialize_definitions,
    serialize_events,
)
from tests.warehouse import DEFINITION_COLUMNS, PAGE_COLUMNS, REFERENCE_EVENTS

T0_MS = 1_704_070_800_000  # 2024-01-01 01:00:00 UTC


def event_row(
    rng: random.Random,
    device_id: int,
    session_id: int | None,
    view_id: int | None,
    event_time_ms: int | None,
    event_type: str = "click",
) -> dict[str, Any]:
    return {
        "event_id": f"{rng.getrandbits(128):032x}",
        "event_time": None if event_time_ms is None else format_event_time(event_time_ms * 1000),
        "processed_time": format_event_time((T0_MS + 5_000) * 1000),
        "updated_time": None,
        "device_id": device_id,
        "session_id": session_id,
        "view_id": view_id,
        "event_type": event_type,
        "event_properties": orjson.dumps({"n": rng.randrange(100)}).decode(),
        "source_type": "web",
        "source_properties": '{"url":{"path":"/"}}',
    }


def mixed_rows(seed: int = 1, count: int = 300) -> list[dict[str, Any]]:
    """Rows over a few views, with absent session, view and event time, in random order."""
    rng = random.Random(seed)
    rows = [
        event_row(
            rng,
            rng.choice([7, 3, 12]),
            rng.choice([None, 100, 50]),
            rng.choice([None, 1, 2, 10]),
            rng.choice([None, T0_MS + rng.randrange(3_600_000)]),
            rng.choice(["click", "navigate", "load", "custom"]),
        )
        for _ in range(count)
    ]
    rng.shuffle(rows)
    return rows


def sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Ascending with NULL first, as the files are sorted."""
    return tuple(
        (value is not None, value)
        for value in (row["device_id"], row["session_id"], row["view_id"], row["event_time"])
    )


def metadata(data: bytes) -> pq.FileMetaData:
    return pq.ParquetFile(pa.BufferReader(data)).metadata


def codecs(data: bytes) -> set[str]:
    meta = metadata(data)
    return {
        meta.row_group(g).column(c).compression
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
    }


def test_events_schema_is_the_reference_table() -> None:
    assert [(f.name, f.type, f.nullable) for f in EVENTS_SCHEMA] == REFERENCE_EVENTS
    assert "ingested_time" not in EVENTS_SCHEMA.names


def test_events_file_schema_as_written() -> None:
    data = serialize_events(mixed_rows())
    schema = pq.read_schema(pa.BufferReader(data))
    assert [(f.name, f.type, f.nullable) for f in schema] == REFERENCE_EVENTS
    parquet_schema = metadata(data).schema
    physical = [parquet_schema.column(i).physical_type for i in range(len(REFERENCE_EVENTS))]
    assert physical == [
        "BYTE_ARRAY" if t == pa.string() else "INT64" for _, t, _ in REFERENCE_EVENTS
    ]


def test_every_column_chunk_is_zstd_with_statistics_on_the_filter_columns() -> None:
    data = serialize_events(mixed_rows())
    assert codecs(data) == {"ZSTD"}
    row_group = metadata(data).row_group(0)
    with_statistics = {
        row_group.column(c).path_in_schema
        for c in range(row_group.num_columns)
        if row_group.column(c).is_stats_set
    }
    assert {"event_time", "device_id", "session_id", "view_id", "event_type"} <= with_statistics


def test_rows_are_sorted_by_view_then_event_time_with_nulls_first() -> None:
    rows = mixed_rows()
    stored = read_events(serialize_events(rows))
    assert [sort_key(r) for r in stored] == sorted(sort_key(r) for r in rows)
    assert stored[0]["device_id"] == 3 and stored[0]["session_id"] is None
    declared = metadata(serialize_events(rows)).row_group(0).sorting_columns
    assert [(c.column_index, c.descending, c.nulls_first) for c in declared] == [
        (4, False, True),
        (5, False, True),
        (6, False, True),
        (1, False, True),
    ]


def test_round_trip_from_rows_or_columns() -> None:
    rows = mixed_rows()
    data = serialize_events(rows)
    assert read_events(data) == sorted(rows, key=sort_key)
    columns = {name: [row[name] for row in rows] for name in EVENTS_SCHEMA.names}
    assert serialize_events(columns) == data
    ids = read_event_columns(data, ["event_id"])
    assert ids == {"event_id": [r["event_id"] for r in sorted(rows, key=sort_key)]}


def test_extra_fields_are_ignored_and_missing_required_values_refused() -> None:
    rows = [dict(row, ingested_time=T0_MS) for row in mixed_rows(count=5)]
    assert len(read_events(serialize_events(rows))) == 5
    rows[2]["processed_time"] = None
    with pytest.raises(ValueError, match="processed_time"):
        serialize_events(rows)


def test_nullify_nulls_only_the_named_rows_and_stamps_every_row() -> None:
    rows = mixed_rows(seed=2)
    data = serialize_events(rows)
    before = read_events(data)
    targets = {before[3]["event_id"], before[40]["event_id"], before[-1]["event_id"]}
    rewrite_time = format_event_time((T0_MS + 7_200_000) * 1000)
    rewritten, nulled = nullify(data, targets | {"f" * 32}, rewrite_time, T0_MS + 7_200_000)
    assert nulled == 3
    after = read_events(rewritten)
    assert len(after) == len(before)
    for old, new in zip(before, after, strict=True):
        assert new["updated_time"] == T0_MS + 7_200_000
        if old["event_id"] in targets:
            assert new["event_type"] is None
            assert new["processed_time"] == rewrite_time
            unchanged = {k: v for k, v in new.items() if k not in ("event_type", "processed_time")}
        else:
            assert new["event_type"] == old["event_type"]
            assert new["processed_time"] == old["processed_time"]
            unchanged = dict(new)
        unchanged.pop("updated_time")
        assert unchanged == {k: v for k, v in old.items() if k in unchanged}
    assert codecs(rewritten) == {"ZSTD"}
    assert pq.read_schema(pa.BufferReader(rewritten)).equals(EVENTS_SCHEMA)


def test_nullify_again_keeps_earlier_nulls_and_a_miss_changes_nothing() -> None:
    data = serialize_events(mixed_rows(seed=3))
    first, second = (r["event_id"] for r in read_events(data)[:2])
    once, _ = nullify(data, {first}, format_event_time(T0_MS * 1000), T0_MS)
    twice, nulled = nullify(once, {second}, format_event_time(T0_MS * 1000 + 1), T0_MS + 1)
    assert nulled == 1
    assert [r["event_type"] for r in read_events(twice)[:2]] == [None, None]
    assert nullify(twice, {"0" * 32}, "2030-01-01T00:00:00.000000Z", 1) == (twice, 0)


def test_definition_schemas_are_the_reference_tables() -> None:
    for schema in (ELEMENT_DEFINITIONS_SCHEMA, EVENT_DEFINITIONS_SCHEMA):
        assert schema.names == DEFINITION_COLUMNS
        assert all(f.type == pa.string() for f in schema)
    assert PAGE_DEFINITIONS_SCHEMA.names == PAGE_COLUMNS
    types = {f.name: f.type for f in PAGE_DEFINITIONS_SCHEMA}
    assert types.pop("is_user_defined") == pa.bool_()
    assert set(types.values()) == {pa.string()}


@pytest.mark.parametrize("kind", ["element", "event", "page"])
def test_definitions_round_trip(kind: str) -> None:
    rows = [
        {
            "id": f"{kind}-{n}",
            "fs_link_id": f"link{n}",
            "name": f"Name {n}",
            "description": None if n else "first",
            "is_user_defined": n % 2 == 0,
            "state": "active",
            "created_time": format_definition_time(T0_MS + n),
            "created_by": "someone@example.com",
            "modified_time": format_definition_time(T0_MS + 1_000 + n),
            "modified_by": None,
            "rule": "{}",
        }
        for n in range(3)
    ]
    data = serialize_definitions(kind, rows)
    columns = PAGE_COLUMNS if kind == "page" else DEFINITION_COLUMNS
    assert read_definitions(kind, data) == [{c: row[c] for c in columns} for row in rows]
    assert pq.read_schema(pa.BufferReader(data)).names == columns
    assert codecs(data) == {"ZSTD"}
    assert read_definitions(kind, data)[0]["created_time"] == "2024-01-01 01:00:00.000000"


def test_unknown_definition_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        serialize_definitions("widget", [])


def realistic_rows(sessions: int) -> list[dict[str, Any]]:
    """Generated traffic as the reorder stage emits it: enriched, with random ids and the
    processed time of the publish batch that released each row."""
    rng = random.Random(11)
    rows = []
    for traffic in generate(seed=5, sessions=sessions, start_ms=T0_MS, duration_ms=3_600_000):
        event = traffic.event
        properties = dict(event["event_properties"])
        properties["event_definition_id"] = None
        properties["additional_event_definition_ids"] = []
        source_properties = dict(event["source_properties"], page_definition_id="pg-3")
        released_ms = (traffic.ingested_time + 5_000) // 200 * 200
        rows.append(
            {
                **{k: event[k] for k in ("device_id", "session_id", "view_id", "event_time")},
                "event_id": f"{rng.getrandbits(128):032x}",
                "processed_time": format_event_time(released_ms * 1000 + 137),
                "updated_time": None,
                "event_type": event["event_type"],
                "event_properties": orjson.dumps(properties).decode(),
                "source_type": event["source_type"],
                "source_properties": orjson.dumps(source_properties).decode(),
            }
        )
    return rows


def test_bytes_per_event_on_realistic_traffic() -> None:
    rows = realistic_rows(sessions=1_500)
    for count in (2_000, 20_000, len(rows)):
        data = serialize_events(rows[:count])
        print(f"{count} events: {len(data) / count:.1f} bytes/event")
        assert len(data) / count <= 50
