"""Parquet encoding of the warehouse files: the Data Direct events and definition schemas.

Pure functions from rows to bytes and back, with no I/O, so the writer that uploads
them stays separate and these can be tested alone. pyarrow encoding is blocking and
CPU-heavy: callers on an event loop run these functions in an executor.

Event files are sorted by ``(device_id, session_id, view_id, event_time)`` with nulls
first (declared in the file's sorting columns), compressed with ZSTD and encoded only
with the encodings every reader has (PLAIN, dictionary, RLE): on realistic traffic about
27-31 bytes per event, of which the random 128-bit ``event_id`` alone takes 17.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", pa.string()),
        pa.field("processed_time", pa.string(), nullable=False),
        pa.field("updated_time", pa.int64()),
        pa.field("device_id", pa.int64(), nullable=False),
        pa.field("session_id", pa.int64()),
        pa.field("view_id", pa.int64()),
        # Nullable, unlike the reference table: a nulled-out row has no event type.
        pa.field("event_type", pa.string()),
        pa.field("event_properties", pa.string(), nullable=False),
        pa.field("source_type", pa.string(), nullable=False),
        pa.field("source_properties", pa.string(), nullable=False),
    ]
)

_DEFINITION_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("name", pa.string()),
    pa.field("description", pa.string()),
    pa.field("state", pa.string()),
    pa.field("created_time", pa.string()),
    pa.field("created_by", pa.string()),
    pa.field("modified_time", pa.string()),
    pa.field("modified_by", pa.string()),
]
ELEMENT_DEFINITIONS_SCHEMA = pa.schema(_DEFINITION_FIELDS)
EVENT_DEFINITIONS_SCHEMA = pa.schema(_DEFINITION_FIELDS)
PAGE_DEFINITIONS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("fs_link_id", pa.string()),
        pa.field("name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("is_user_defined", pa.bool_()),
        pa.field("state", pa.string()),
        pa.field("created_time", pa.string()),
        pa.field("created_by", pa.string()),
        pa.field("modified_time", pa.string()),
        pa.field("modified_by", pa.string()),
    ]
)
DEFINITION_SCHEMAS = {
    "element": ELEMENT_DEFINITIONS_SCHEMA,
    "event": EVENT_DEFINITIONS_SCHEMA,
    "page": PAGE_DEFINITIONS_SCHEMA,
}

SORT_COLUMNS = ("device_id", "session_id", "view_id", "event_time")
COMPRESSION = "zstd"
# Higher levels only pay off on the repetitive JSON; ids and times are near their
# entropy at level 1, and CPU per event is what a deployment pays for.
_JSON_COLUMNS = ("event_properties", "source_properties")
_EVENTS_LEVELS = {name: 6 if name in _JSON_COLUMNS else 1 for name in EVENTS_SCHEMA.names}
# Event ids are random and event times nearly unique: a dictionary only adds a page.
_EVENTS_DICTIONARY = [n for n in EVENTS_SCHEMA.names if n not in ("event_id", "event_time")]
# Large enough that a big file's properties do not fall back to plain encoding.
_DICTIONARY_PAGE_LIMIT = 16 * 1024 * 1024
# Min/max of JSON blobs prune nothing and cost bytes in every page header.
_EVENTS_STATISTICS = [n for n in EVENTS_SCHEMA.names if n not in _JSON_COLUMNS]
_EVENTS_SORTING = [
    pq.SortingColumn(EVENTS_SCHEMA.get_field_index(name), nulls_first=True) for name in SORT_COLUMNS
]

Rows = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]
"""Rows column by column (name → values), or one mapping per row."""


def serialize_events(rows: Rows) -> bytes:
    """An events parquet file of ``rows``, sorted by device, session, view and event time."""
    table = _table(EVENTS_SCHEMA, rows)
    order = pc.sort_indices(
        table,
        sort_keys=[(name, "ascending", "at_start") for name in SORT_COLUMNS],
    )
    return _write_events(table.take(order))


def read_events(data: bytes) -> list[dict[str, Any]]:
    """The rows of an events file, in file order."""
    return _read(data, EVENTS_SCHEMA).to_pylist()


def read_event_columns(data: bytes, columns: Sequence[str] | None = None) -> dict[str, list[Any]]:
    """Columns of an events file (all by default); reading only the ids is much cheaper."""
    return _read(data, EVENTS_SCHEMA, columns).to_pydict()


def nullify(
    data: bytes, event_ids: set[str], processed_time: str, updated_time_ms: int
) -> tuple[bytes, int]:
    """The events file recreated with the rows of ``event_ids`` nulled out, and their count.

    A nulled row keeps its place and columns but has a NULL ``event_type`` and the
    rewrite's ``processed_time``; every row of the file gets ``updated_time``, as Data
    Direct marks a recreated file. When no row matches, ``data`` comes back unchanged.
    """
    table = _read(data, EVENTS_SCHEMA)
    hit = pc.is_in(table["event_id"], value_set=pa.array(list(event_ids), pa.string()))
    nulled = pc.sum(hit).as_py() or 0
    if not nulled:
        return data, 0
    columns = {name: table[name] for name in EVENTS_SCHEMA.names}
    columns["event_type"] = pc.if_else(hit, pa.scalar(None, pa.string()), table["event_type"])
    columns["processed_time"] = pc.if_else(hit, processed_time, table["processed_time"])
    columns["updated_time"] = pa.repeat(pa.scalar(updated_time_ms, pa.int64()), table.num_rows)
    rewritten = pa.table(columns, schema=EVENTS_SCHEMA)
    return _write_events(rewritten), nulled


def serialize_definitions(kind: str, rows: Rows) -> bytes:
    """A definitions export file of ``kind`` (element, event or page)."""
    schema = DEFINITION_SCHEMAS.get(kind)
    if schema is None:
        raise ValueError(f"unknown definition kind {kind!r}")
    sink = pa.BufferOutputStream()
    pq.write_table(_table(schema, rows), sink, compression=COMPRESSION)
    return bytes(sink.getvalue())


def read_definitions(kind: str, data: bytes) -> list[dict[str, Any]]:
    """The rows of a definitions export file of ``kind``."""
    return _read(data, DEFINITION_SCHEMAS[kind]).to_pylist()


def _table(schema: pa.Schema, rows: Rows) -> pa.Table:
    if isinstance(rows, Mapping):
        columns = {name: rows[name] for name in schema.names}
    else:
        columns = {name: [row[name] for row in rows] for name in schema.names}
    arrays = []
    for field in schema:
        array = pa.array(columns[field.name], field.type)
        if not field.nullable and array.null_count:
            raise ValueError(f"{field.name} is NULL in {array.null_count} row(s)")
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_events(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression=COMPRESSION,
        compression_level=_EVENTS_LEVELS,
        use_dictionary=_EVENTS_DICTIONARY,
        dictionary_pagesize_limit=_DICTIONARY_PAGE_LIMIT,
        write_statistics=_EVENTS_STATISTICS,
        sorting_columns=_EVENTS_SORTING,
        store_schema=False,  # readers take the types from the parquet schema itself
    )
    return bytes(sink.getvalue())


def _read(data: bytes, schema: pa.Schema, columns: Sequence[str] | None = None) -> pa.Table:
    table = pq.read_table(pa.BufferReader(data), columns=columns)
    expected = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    if not table.schema.equals(expected):
        raise ValueError(f"not a file of the expected schema: {table.schema}")
    return table
