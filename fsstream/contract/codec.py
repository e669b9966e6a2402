"""Avro single-object encoding of every fsstream record value.

The only module that touches fastavro. Schemas are parsed once at import; a
value is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's Parsing Canonical Form + the Avro binary body, so a reader needs no
schema registry and rejects anything it does not know.

Each schema file is a standalone document (a nested record is defined inline at its
first use), and its fingerprint is that of the document alone, exactly as any Avro
library computes it. A reader also knows *writer versions*: the earlier documents of a
schema, kept in ``schemas/previous/`` (named by their fingerprint), other versions added
with ``add_writer_version``, and earlier fingerprints of such a version
(``LEGACY_FINGERPRINTS``); their bodies are resolved to today's schema by Avro's rules.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.types import Schema as AvroSchema

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

RAW_EVENT = "io.fsstream.RawEvent"
RAW_EVENT_BATCH = "io.fsstream.RawEventBatch"
DEFINITION = "io.fsstream.Definition"
EVENT = "io.fsstream.Event"

_SCHEMA_FILES = {
    RAW_EVENT: "raw_event.avsc",
    RAW_EVENT_BATCH: "raw_event_batch.avsc",
    DEFINITION: "definition.avsc",
    EVENT: "event.avsc",
}

LEGACY_FINGERPRINTS = {bytes.fromhex("0a396749857dd79b"): bytes.fromhex("3fb607598001468a")}
"""Fingerprints fsstream wrote before its schemas were fingerprinted standalone (that of
``RawEventBatch`` left ``RawEvent`` as a bare name), each with the fingerprint of the
version whose bodies it names. Read, never written, while raw records written with them
may still exist."""


class CodecError(ValueError):
    """A record value that cannot be decoded; the message says why."""


class UnknownSchemaError(CodecError):
    """The value names a schema fingerprint this reader does not know."""


class NotSingleObjectError(CodecError):
    """The value does not start with the Avro single-object marker."""


class CorruptBodyError(CodecError):
    """The Avro body is truncated, has trailing bytes or does not match the schema."""


@dataclass(frozen=True, slots=True)
class Schema:
    """A parsed Avro schema with its single-object header."""

    name: str
    parsed: AvroSchema
    fingerprint: bytes
    header: bytes
    writer: Callable[[dict[str, Any]], bytes] | None = None
    reader: Callable[[bytes], dict[str, Any]] | None = None
    resolved_to: AvroSchema | None = None
    """For a writer version: today's parsed schema, which its bodies are resolved to."""


_LENGTHS = [
    bytes([n << 1]) if n < 64 else bytes([(n << 1) & 0x7F | 0x80, n >> 6]) for n in range(8192)
]
"""The Avro encoding of each length below 8192 (one or two bytes)."""

_Scalar = tuple[str, bool, bool]
"""(field name, nullable, string rather than long) of a field the flat writer and reader know."""


def _scalar(field: dict[str, Any]) -> _Scalar | None:
    kind = field["type"]
    nullable = isinstance(kind, list) and len(kind) == 2 and kind[0] == "null"
    if nullable:
        kind = kind[1]
    if kind in ("string", "long"):
        return (field["name"], nullable, kind == "string")
    return None


def _append_varint(out: bytearray, zigzag: int) -> None:
    while zigzag > 127:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)


def _flat_writer(parsed: Any) -> Callable[[dict[str, Any]], bytes] | None:
    """A writer for records of strings, longs and their nullable unions; None for others.

    Every record published goes through it: one buffer per record, lengths from a
    table, at about a third of the general writer's cost.
    """
    fields = [_scalar(field) for field in parsed["fields"]]
    if None in fields:
        return None
    frozen = tuple(field for field in fields if field is not None)
    lengths = _LENGTHS

    def write(record: dict[str, Any]) -> bytes:
        out = bytearray()
        for name, nullable, string in frozen:
            value = record[name]
            if nullable:
                if value is None:
                    out.append(0)
                    continue
                out.append(2)
            if string:
                data = value.encode()
                size = len(data)
                if size < 8192:
                    out += lengths[size]
                else:
                    _append_varint(out, size << 1)
                out += data
            else:
                _append_varint(out, (value << 1) ^ (value >> 63))
        return bytes(out)

    return write


class _Unusual(Exception):
    """A body the fast reader leaves to fastavro, which decides its value or its error."""


class _Overlong(Exception):
    """A varint longer than the ten bytes of a 64-bit long (fastavro would read it)."""


_Defaults = tuple[tuple[str, Any], ...]
"""(field name, default) of the fields a reader's record has and a writer's lacks."""


@dataclass(frozen=True, slots=True)
class _Part:
    """Consecutive scalar fields of a record, then optionally an array of flat records."""

    scalars: tuple[_Scalar, ...]
    array: str | None = None
    items: tuple[_Scalar, ...] = ()
    item_defaults: _Defaults = ()


_SHIFTS = range(7, 63, 7)


def _varint(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """(zigzag-encoded value, next position) of a varint whose first byte is ``first``,
    the rest from ``pos`` on.

    Only values fastavro decodes exactly (at most 64 bits, ten bytes) are accepted; a
    longer one is corrupt, as in Avro's Java decoder.
    """
    n = first & 0x7F
    for shift in _SHIFTS:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, pos
    byte = data[pos]
    if byte > 1:
        raise _Overlong
    return n | (byte << 63), pos + 1


def _read_scalars(
    record: dict[str, Any], data: bytes, pos: int, size: int, fields: tuple[_Scalar, ...]
) -> int:
    """Read ``fields`` into ``record``; the position after them.

    Anything but the canonical encoding (union branch 0 or 1 in one byte, a
    non-negative length within the body) is ``_Unusual``, so whatever this accepts
    fastavro decodes to the same value.
    """
    for name, nullable, string in fields:
        if nullable:
            branch = data[pos]
            pos += 1
            if branch == 0:
                record[name] = None
                continue
            if branch != 2:
                raise _Unusual
        n = data[pos]
        pos += 1
        if n > 0x7F:
            byte = data[pos]
            if byte > 0x7F:
                n, pos = _varint(data, pos, n)
            else:
                n = (n & 0x7F) | (byte << 7)
                pos += 1
        if string:
            if n & 1:
                raise _Unusual
            end = pos + (n >> 1)
            if end > size:
                raise _Unusual
            record[name] = data[pos:end].decode()
            pos = end
        else:
            record[name] = (n >> 1) ^ -(n & 1)
    return pos


def _read_parts(value: bytes, parts: tuple[_Part, ...], defaults: _Defaults) -> dict[str, Any]:
    """The record in the body of ``value``; ``_Unusual`` or ``IndexError`` if not canonical."""
    data = value
    size = len(data)
    pos = HEADER_SIZE
    record: dict[str, Any] = {}
    for part in parts:
        pos = _read_scalars(record, data, pos, size, part.scalars)
        if part.array is None:
            continue
        items = part.items
        out: list[dict[str, Any]] = []
        while True:
            n = data[pos]
            pos += 1
            if n > 0x7F:
                n, pos = _varint(data, pos, n)
            if n == 0:
                break
            # A negative count (followed by the block's size) is left to fastavro; each
            # item takes at least one byte, so a count past the body's end is corrupt.
            if n & 1 or n >> 1 > size - pos:
                raise _Unusual
            for _ in range(n >> 1):
                item: dict[str, Any] = {}
                pos = _read_scalars(item, data, pos, size, items)
                if part.item_defaults:
                    item.update(part.item_defaults)
                out.append(item)
        record[part.array] = out
    if pos != size:
        raise _Unusual
    if defaults:
        record.update(defaults)
    return record


def _flat_items(parsed: Any, field: dict[str, Any]) -> Any:
    """The flat record an array field holds; None for any other field."""
    kind = field["type"]
    if not (isinstance(kind, dict) and kind.get("type") == "array"):
        return None
    named = parsed.get("__named_schemas", {})
    items = named.get(kind["items"]) if isinstance(kind["items"], str) else kind["items"]
    if not isinstance(items, dict) or items.get("type") != "record" or not items["fields"]:
        return None
    if any(_scalar(f) is None for f in items["fields"]):
        return None
    return items


def _added_defaults(writer: Any, reader: Any) -> _Defaults | None:
    """The defaults of the flat fields a reader's record appends to a writer's (whose
    fields it starts with, unchanged); None when Avro's resolution does more than that."""
    written, read = writer["fields"], reader["fields"]
    if len(written) > len(read):
        return None
    for old, new in zip(written, read, strict=False):
        if old["name"] != new["name"] or _scalar(old) != _scalar(new):
            return None
    added = read[len(written) :]
    if any(_scalar(f) is None or "default" not in f for f in added):
        return None
    return tuple((f["name"], f["default"]) for f in added)


def _flat_reader(parsed: Any, resolved_to: Any = None) -> Callable[[bytes], dict[str, Any]] | None:
    """A reader for records of strings, longs, their nullable unions and arrays of such
    flat records; None for others.

    Every raw batch is read with it, at a fraction of the general reader's per-field
    cost; a body it does not accept is read again by fastavro. For a writer version
    (``resolved_to``: today's schema) it also fills in the fields today's schema appends
    with their defaults, as Avro's resolution does; None if resolving does more.
    """
    defaults: _Defaults = ()
    if resolved_to is not None:
        found = _added_defaults(parsed, resolved_to)
        if found is None:
            return None
        defaults = found
    parts: list[_Part] = []
    scalars: list[_Scalar] = []
    for position, field in enumerate(parsed["fields"]):
        scalar = _scalar(field)
        if scalar is not None:
            scalars.append(scalar)
            continue
        items = _flat_items(parsed, field)
        if items is None:
            return None
        item_defaults: _Defaults = ()
        if resolved_to is not None:
            today = _flat_items(resolved_to, resolved_to["fields"][position])
            found = None if today is None else _added_defaults(items, today)
            if found is None:
                return None
            item_defaults = found
        item_scalars = tuple(s for s in map(_scalar, items["fields"]) if s is not None)
        parts.append(_Part(tuple(scalars), field["name"], item_scalars, item_defaults))
        scalars = []
    if scalars or not parts:
        parts.append(_Part(tuple(scalars)))
    frozen = tuple(parts)

    def read(value: bytes) -> dict[str, Any]:
        return _read_parts(value, frozen, defaults)

    return read


def _parsed(document: dict[str, Any]) -> tuple[AvroSchema, bytes]:
    """A standalone schema document parsed, and its fingerprint."""
    parsed = parse_schema(document, named_schemas={})
    # fastavro gives the CRC-64-AVRO fingerprint's bytes little-endian, as the spec stores them.
    return parsed, bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


_FOLDER = resources.files("fsstream.contract") / "schemas"


def schema_document(name: str) -> dict[str, Any]:
    """The standalone schema document of a record, as shipped in ``schemas/``."""
    document: dict[str, Any] = json.loads(
        (_FOLDER / _SCHEMA_FILES[name]).read_text(encoding="utf-8")
    )
    return document


def previous_documents() -> dict[bytes, dict[str, Any]]:
    """fingerprint → earlier standalone document of a schema, as kept in ``schemas/previous/``
    (``<file>.<fingerprint>.avsc``)."""
    documents: dict[bytes, dict[str, Any]] = {}
    for path in sorted((_FOLDER / "previous").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".avsc"):
            fp = bytes.fromhex(path.name.removesuffix(".avsc").rpartition(".")[2])
            documents[fp] = json.loads(path.read_text(encoding="utf-8"))
    return documents


def _load() -> dict[str, Schema]:
    schemas: dict[str, Schema] = {}
    for name in _SCHEMA_FILES:
        parsed, fp = _parsed(schema_document(name))
        schemas[name] = Schema(
            name, parsed, fp, MAGIC + fp, _flat_writer(parsed), _flat_reader(parsed)
        )
    return schemas


SCHEMAS: dict[str, Schema] = _load()
_BY_FINGERPRINT: dict[bytes, Schema] = {s.fingerprint: s for s in SCHEMAS.values()}


def add_writer_version(name: str, document: dict[str, Any]) -> bytes:
    """Read records written with another version of the named record's schema too.

    Their bodies are resolved to today's schema (fields it lacks are skipped, fields the
    version lacks take their defaults); returns the version's fingerprint.
    """
    current = SCHEMAS[name]
    parsed, fp = _parsed(document)
    if fp not in _BY_FINGERPRINT:
        reader = _flat_reader(parsed, current.parsed)
        _BY_FINGERPRINT[fp] = Schema(
            name, parsed, fp, MAGIC + fp, reader=reader, resolved_to=current.parsed
        )
    return fp


def _add_previous_versions() -> None:
    for fp, document in previous_documents().items():
        name = f"{document['namespace']}.{document['name']}"
        if add_writer_version(name, document) != fp:
            raise RuntimeError(f"schemas/previous: the {name} document is not {fp.hex()}")
    _BY_FINGERPRINT.update(
        {fp: _BY_FINGERPRINT[version] for fp, version in LEGACY_FINGERPRINTS.items()}
    )


_add_previous_versions()


def encode(schema_name: str, record: dict[str, Any]) -> bytes:
    """Encode ``record`` as an Avro single object of the named schema."""
    schema = SCHEMAS[schema_name]
    if schema.writer is not None:
        return schema.header + schema.writer(record)
    buf = io.BytesIO()
    buf.write(schema.header)
    schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


def schema_of(value: bytes) -> Schema:
    """The known schema a single-object value was written with."""
    if len(value) < HEADER_SIZE or value[:2] != MAGIC:
        raise NotSingleObjectError(
            "not an Avro single-object value: expected marker C3 01,"
            f" got {value[:2].hex() or 'empty'} ({len(value)} bytes)"
        )
    fp = bytes(value[2:HEADER_SIZE])
    schema = _BY_FINGERPRINT.get(fp)
    if schema is None:
        raise UnknownSchemaError(f"unknown schema fingerprint {fp.hex()}")
    return schema


def decode(value: bytes, expected: str | None = None) -> dict[str, Any]:
    """Decode a single-object value; with ``expected``, any other schema is an error."""
    schema = schema_of(value)
    if expected is not None and schema.name != expected:
        raise UnknownSchemaError(
            f"schema {schema.name} (fingerprint {schema.fingerprint.hex()})"
            f" where {expected} was expected"
        )
    if schema.reader is not None and type(value) is bytes:
        try:
            return schema.reader(value)
        except (_Unusual, IndexError, UnicodeDecodeError):
            pass  # fastavro reads it again and says what it is
        except _Overlong:
            raise CorruptBodyError(
                f"corrupt {schema.name} body: a long encoded in more than ten bytes"
            ) from None
    buf = io.BytesIO(value)
    buf.seek(HEADER_SIZE)
    try:
        record = cast(dict[str, Any], schemaless_reader(buf, schema.parsed, schema.resolved_to))
    except (EOFError, IndexError, UnicodeDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise CorruptBodyError(f"corrupt {schema.name} body: {type(exc).__name__}: {exc}") from exc
    rest = len(value) - buf.tell()
    if rest:
        raise CorruptBodyError(f"corrupt {schema.name} body: {rest} trailing bytes")
    return record
